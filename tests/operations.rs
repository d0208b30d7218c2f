//! Operations: `/metrics`, `/api/status`, request ids, logs and the admin view, checked
//! against known load over real HTTP.

mod support;

use serde_json::json;
use support::{Proto, TestServer};

#[tokio::test]
async fn metrics_count_the_open_connections_channels_and_users() {
    let server = TestServer::secured(|_| {}).await;
    let mut streams = Vec::new();
    for (user, query) in [
        ("a", "channel=channel:one"),
        ("a", "channel=channel:one&channel=user:a"),
        ("b", "channel=channel:two"),
        ("c", "channel=channel:two"),
        ("c", "channel=system"),
    ] {
        streams.push(server.client(Proto::H2c).user(user).subscribe(query, &[]).await);
    }
    let mut c = server.client(Proto::H1);
    assert_eq!(c.metric("sse_connections_total").await, 5.0);
    assert_eq!(c.metric("sse_channels_total").await, 4.0);
    assert_eq!(c.metric("herald_users_connected").await, 3.0);
    let (_, status) = c.get_json("/api/status").await;
    assert_eq!(
        (status["connections"].as_u64(), status["channels"].as_u64(), status["users"].as_u64()),
        (Some(5), Some(4), Some(3))
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (status["engine"]["name"].as_str(), status["engine"]["healthy"].as_bool()),
        (Some("memory"), Some(true))
    );
    drop(streams);
    support::eventually("the connections to close", || server.herald.connection_count() == 0).await;
    assert_eq!(c.metric("sse_connections_total").await, 0.0);
}

#[tokio::test]
async fn events_sent_counts_every_event_written_to_every_subscriber() {
    let server = TestServer::start().await;
    let mut subs = Vec::new();
    for _ in 0..4 {
        subs.push(server.client(Proto::H1).subscribe("channel=channel:count", &[]).await);
    }
    let mut p = server.client(Proto::H1);
    for n in 0..5 {
        p.publish(&json!({"channel": "channel:count", "type": "update", "n": n})).await;
    }
    for s in &mut subs {
        for n in 0..5 {
            assert_eq!(s.expect().await.data["n"], n);
        }
    }
    assert_eq!(p.metric("sse_events_sent").await, 20.0);
    assert_eq!(p.metric("herald_publish_accepted_total").await, 5.0);
    let observed = p.metric("herald_publish_to_write_seconds_count").await;
    assert!((1.0..=20.0).contains(&observed), "one observation per write batch: {observed}");
    assert_eq!(p.metric("herald_publish_to_write_seconds_bucket{le=\"+Inf\"}").await, observed);
}

#[tokio::test]
async fn refused_publishes_and_streams_are_counted_by_reason() {
    let server = TestServer::secured(|c| {
        c.publish_rate = 0.001;
        c.publish_burst = 1.0;
        c.max_connections = 2;
    })
    .await;
    let ok = json!({"channel": "channel:r", "type": "chat"});
    let mut user = server.client(Proto::H1).user("u");
    assert_eq!(user.post_json("/api/publish", &ok).await.0, 200);
    assert_eq!(user.post_json("/api/publish", &ok).await.0, 429);
    assert_eq!(user.post_raw("/api/publish", "{nope").await.0, 400);
    assert_eq!(user.post_json("/api/publish", &json!({"channel": "user:u", "type": "x"})).await.0, 403);
    assert_eq!(server.client(Proto::H1).post_json("/api/publish", &ok).await.0, 401);
    let mut m = server.client(Proto::H1);
    for (reason, n) in
        [("rate_limited", 1.0), ("invalid", 1.0), ("forbidden", 1.0), ("unauthorized", 1.0), ("too_large", 0.0)]
    {
        assert_eq!(m.metric(&format!("herald_publish_refused_total{{reason=\"{reason}\"}}")).await, n, "{reason}");
    }

    let _a = server.client(Proto::H1).user("a").subscribe("channel=channel:r", &[]).await;
    let _b = server.client(Proto::H1).user("b").subscribe("channel=channel:r", &[]).await;
    let _ = server.client(Proto::H1).user("c").open_events("channel=channel:r", &[]).await;
    let _ = server.client(Proto::H1).open_events("channel=channel:r", &[]).await;
    let _ = server.client(Proto::H1).user("d").open_events("channel=nope", &[]).await;
    for (reason, n) in [("at_capacity", 1.0), ("unauthorized", 1.0), ("invalid", 1.0), ("forbidden", 0.0)] {
        assert_eq!(m.metric(&format!("herald_subscribe_refused_total{{reason=\"{reason}\"}}")).await, n, "{reason}");
    }
}

#[tokio::test]
async fn resumes_are_counted_as_replayed_or_reset() {
    let server = TestServer::start().await;
    let mut c = server.client(Proto::H1);
    let s = c.subscribe("channel=channel:z", &[]).await;
    let id = s.connected_id();
    drop(s);
    let _replayed = c.subscribe("channel=channel:z", &[("last-event-id", &id)]).await;
    let _reset = c.subscribe("channel=channel:z", &[("last-event-id", "garbage")]).await;
    let _fresh = c.subscribe("channel=channel:z", &[]).await;
    assert_eq!(c.metric("herald_resumes_total{result=\"replayed\"}").await, 1.0);
    assert_eq!(c.metric("herald_resumes_total{result=\"reset\"}").await, 1.0);
    assert_eq!(c.metric("herald_engine_up").await, 1.0);
    assert_eq!(c.metric("herald_draining").await, 0.0);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_sane_one_is_kept() {
    let server = TestServer::start().await;
    let mut c = server.client(Proto::H1);
    let resp = c.send(c.request("GET", "/healthz").body(Default::default()).unwrap_or_else(|e| panic!("{e}"))).await;
    let generated = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(generated.len(), 26, "{generated}");
    let mut tagged = server.client(Proto::H2c).with_header("x-request-id", "trace-42");
    let req = tagged.request("POST", "/api/publish").body("{".into()).unwrap_or_else(|e| panic!("{e}"));
    let resp = tagged.send(req).await;
    assert_eq!(resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-42"));
    // An id too long, or with spaces, is replaced by a generated one (it goes into the logs).
    for insane in ["x".repeat(65), "two words".to_owned()] {
        let mut c = server.client(Proto::H1).with_header("x-request-id", &insane);
        let resp =
            c.send(c.request("GET", "/healthz").body(Default::default()).unwrap_or_else(|e| panic!("{e}"))).await;
        let id = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert_eq!(id.len(), 26, "{insane:?} gave {id:?}");
    }
}

#[tokio::test]
async fn the_admin_view_is_off_unless_configured_and_its_data_needs_an_api_key() {
    let off = TestServer::secured(|_| {}).await;
    assert_eq!(off.client(Proto::H1).get_json("/admin").await.0, 404);

    let server = TestServer::secured(|c| {
        c.admin = true;
        c.admin_interval = std::time::Duration::from_millis(50);
    })
    .await;
    let mut page = server.client(Proto::H1);
    let resp =
        page.send(page.request("GET", "/admin").body(Default::default()).unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html"))
    );
    assert_eq!(server.client(Proto::H1).open_events("channel=admin:nodes", &[]).await.status(), 401);
    assert_eq!(server.client(Proto::H1).user("u").open_events("channel=admin:nodes", &[]).await.status(), 403);

    let _viewer = server.client(Proto::H1).user("u").subscribe("channel=channel:x", &[]).await;
    let mut admin = server.client(Proto::H1).backend().subscribe("channel=admin:nodes", &[]).await;
    // The stats include the admin stream itself: two connections, two channels.
    loop {
        let ev = admin.expect().await;
        assert_eq!(ev.data["type"], "node_stats");
        assert_eq!(ev.data["nodeId"], server.herald.node_id());
        if ev.data["connections"] == 2 {
            assert_eq!((ev.data["channelCount"].as_u64(), ev.data["engineUp"].as_bool()), (Some(2), Some(true)));
            break;
        }
    }
}
