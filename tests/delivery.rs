//! Publish → subscribe over real HTTP/1.1, h2c and HTTP/2 over TLS: what subscribers
//! receive, in what shape, once and in order.

mod support;

use serde_json::json;
use support::{ALL_PLAIN, Proto, RawStream, TestServer, within};

#[tokio::test]
async fn a_published_event_reaches_every_subscriber_of_its_channel_in_the_flat_shape() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let mut a = client.subscribe("channel=channel:general", &[]).await;
        let mut b = server.client(proto).subscribe("channel=channel:general", &[]).await;
        let mut other = server.client(proto).subscribe("channel=channel:other", &[]).await;
        let answer = client
            .publish(&json!({"channel": "channel:general", "type": "chat", "content": "hi", "userId": "spoofed"}))
            .await;
        for stream in [&mut a, &mut b] {
            let ev = stream.expect().await;
            assert_eq!(ev.event, "message", "unnamed by default ({proto:?})");
            assert_eq!(ev.data["id"], answer["id"]);
            assert_eq!(ev.data["type"], "chat");
            assert_eq!(ev.data["channel"], "channel:general");
            assert_eq!(ev.data["content"], "hi");
            assert!(ev.data.get("userId").is_none(), "a publisher cannot set userId: {}", ev.data);
            let ts = ev.data["timestamp"].as_str().unwrap_or_default();
            assert!(humantime::parse_rfc3339(ts).is_ok() && ts.ends_with('Z'), "RFC 3339 UTC: {ts}");
            assert!(!ev.id.is_empty(), "every event has an SSE id");
        }
        // The other channel's subscriber gets the next event on its channel, not this one.
        client.publish(&json!({"channel": "channel:other", "type": "chat", "content": "elsewhere"})).await;
        assert_eq!(other.expect().await.data["content"], "elsewhere");
    }
}

#[tokio::test]
async fn http2_over_tls_negotiated_by_alpn_delivers_events() {
    let server = TestServer::with_tls(support::secure).await;
    let mut stream = server.client(Proto::H2Tls).user("42").subscribe("channel=user:42", &[]).await;
    let mut backend = server.client(Proto::H2Tls).backend();
    let answer =
        backend.publish(&json!({"channel": "user:42", "type": "notification", "title": "New follower!"})).await;
    let ev = stream.expect().await;
    assert_eq!(ev.data["id"], answer["id"]);
    assert_eq!(ev.data["title"], "New follower!");
}

#[tokio::test]
async fn one_http2_connection_carries_hundreds_of_concurrent_streams() {
    // Well above hyper's default limit of 200 concurrent streams per connection.
    const STREAMS: usize = 300;
    let server = TestServer::with(|c| c.http2_max_concurrent_streams = 1000).await;
    let client = server.client(Proto::H2c);
    let mut first = client.clone();
    let mut streams = vec![first.subscribe("channel=channel:many", &[]).await];
    let mut opening = Vec::new();
    for _ in 1..STREAMS {
        let mut c = first.clone();
        opening.push(tokio::spawn(async move { c.subscribe("channel=channel:many", &[]).await }));
    }
    for task in opening {
        streams.push(within("a stream", task).await.unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(server.herald.connection_count(), STREAMS);
    first.publish(&json!({"channel": "channel:many", "type": "update", "n": 1})).await;
    for s in &mut streams {
        assert_eq!(s.expect().await.data["n"], 1);
    }
}

/// Opens `count` streams on one HTTP/2 connection at once (their heads reach the server in a
/// burst), each subscribed to `channel:burst`.
async fn open_burst(client: &support::Client, count: usize) -> Vec<support::SseStream> {
    let mut opening = Vec::new();
    for _ in 0..count {
        let mut c = client.clone();
        opening.push(tokio::spawn(async move { c.subscribe("channel=channel:burst", &[]).await }));
    }
    let mut streams = Vec::new();
    for task in opening {
        streams.push(within("a stream", task).await.unwrap_or_else(|e| panic!("{e}")));
    }
    streams
}

#[tokio::test]
async fn an_http2_connection_keeps_every_stream_in_order_after_its_burst_buffers_are_freed() {
    // h2 (vendor/h2) frees a frame buffer of more than 16 slots once it is empty (unless it has
    // been busy for a second, which this test never is) and grows it back at the next frame: a
    // burst of 150 heads fills the received one, each round of events fills the queued one, and
    // between rounds streams close and a burst of new ones opens.
    let server = TestServer::start().await;
    let client = server.client(Proto::H2c);
    let mut publisher = client.clone();
    let mut streams = open_burst(&client, 150).await;
    let mut next = 0u64;
    for round in 0..4 {
        let batch: Vec<_> =
            (next..next + 5).map(|n| json!({"channel": "channel:burst", "type": "update", "n": n})).collect();
        publisher.publish(&json!(batch)).await;
        for s in &mut streams {
            s.expect_ns(next..next + 5).await;
        }
        next += 5;
        // Every third stream leaves; a burst of 20 joins and takes the next round from its start.
        let mut kept = 0;
        streams.retain(|_| {
            kept += 1;
            kept % 3 != 0
        });
        streams.extend(open_burst(&client, 20 + round).await);
    }
    assert!(streams.len() > 60, "{} streams left", streams.len());
}

#[tokio::test]
async fn a_multi_channel_event_reaches_each_connection_once() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let mut both = client.subscribe("channel=channel:a&channel=channel:b", &[]).await;
    let mut only_b = server.client(Proto::H1).subscribe("channel=channel:b", &[]).await;
    let first = client.publish(&json!({"channels": ["channel:a", "channel:b"], "type": "alert", "n": 1})).await;
    let second = client.publish(&json!({"channel": "channel:b", "type": "alert", "n": 2})).await;
    let e1 = both.expect().await;
    let e2 = both.expect().await;
    assert_eq!(
        (e1.data["id"].clone(), e2.data["id"].clone()),
        (first["id"].clone(), second["id"].clone()),
        "no duplicate of the first event"
    );
    assert_eq!(only_b.expect().await.data["channel"], "channel:b", "each channel's copy names that channel");
    assert_eq!(only_b.expect().await.data["n"], 2);
}

#[tokio::test]
async fn a_batch_is_delivered_in_order_and_answers_every_id() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H2c);
    let mut stream = client.subscribe("channel=channel:batch", &[]).await;
    let batch: Vec<_> = (0..20).map(|n| json!({"channel": "channel:batch", "type": "update", "n": n})).collect();
    let answer = client.publish(&json!(batch)).await;
    let ids = answer["ids"].as_array().cloned().unwrap_or_default();
    assert_eq!(ids.len(), 20);
    for (n, id) in ids.iter().enumerate() {
        let ev = stream.expect().await;
        assert_eq!((ev.data["n"].as_u64(), &ev.data["id"]), (Some(n as u64), id));
    }
}

#[tokio::test]
async fn a_bad_event_in_a_batch_publishes_nothing_and_names_its_index() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let mut stream = client.subscribe("channel=channel:batch", &[]).await;
    let (status, err) = client
        .post_json(
            "/api/publish",
            &json!([{"channel": "channel:batch", "type": "ok"}, {"channel": "channel:batch", "type": "bad type"}]),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_type");
    assert!(err["error"]["message"].as_str().unwrap_or_default().contains("event 1"), "{err}");
    // Nothing of the refused batch was delivered: the next event is the one after it.
    client.publish(&json!({"channel": "channel:batch", "type": "after"})).await;
    assert_eq!(stream.expect().await.data["type"], "after");
}

#[tokio::test]
async fn named_events_carry_an_event_line_with_the_type() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let mut named = client.subscribe("channel=channel:n&events=named", &[]).await;
    assert_eq!(named.connected.as_ref().map(|c| c.event.as_str()), Some("connected"));
    let mut multi = server.client(Proto::H1).subscribe("channel=channel:n&channel=system&events=named", &[]).await;
    client.publish(&json!({"channel": "channel:n", "type": "badge_update", "count": 5})).await;
    for s in [&mut named, &mut multi] {
        let ev = s.expect().await;
        assert_eq!(ev.event, "badge_update");
        assert_eq!(ev.data["count"], 5);
    }
}

#[tokio::test]
async fn the_rest_form_publishes_to_the_channel_in_the_path() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let mut stream = client.subscribe("channel=channel:general", &[]).await;
    let (status, answer) =
        client.post_json("/api/channels/channel:general/events", &json!({"type": "chat", "content": "rest"})).await;
    assert_eq!(status, 200, "{answer}");
    let ev = stream.expect().await;
    assert_eq!((ev.data["id"].clone(), ev.data["content"].clone()), (answer["id"].clone(), json!("rest")));
}

#[tokio::test]
async fn the_stream_starts_with_a_retry_hint_and_sends_heartbeat_comments() {
    let server = TestServer::with(|c| {
        c.heartbeat_interval = std::time::Duration::from_millis(100);
        c.retry = std::time::Duration::from_millis(2500);
    })
    .await;
    let resp = server.client(Proto::H1).open_events("channel=channel:hb", &[]).await;
    let mut raw = RawStream::new(resp);
    assert!(raw.read_until(b": heartbeat\n\n").await, "a heartbeat comment arrives on an idle stream");
    assert!(raw.text().starts_with("retry: 2500\n"), "{}", raw.text());
}

#[tokio::test]
async fn status_counts_connections_and_channels() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let _a = client.subscribe("channel=channel:x&channel=system", &[]).await;
    let _b = server.client(Proto::H1).subscribe("channel=channel:x", &[]).await;
    let (status, body) = client.get_json("/api/status").await;
    assert_eq!(status, 200);
    assert_eq!((body["connections"].as_u64(), body["channels"].as_u64()), (Some(2), Some(2)), "{body}");
    assert_eq!(body["engine"]["name"], "memory");
    assert!(body["nodeId"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(client.get_json("/healthz").await.0, 200);
    assert_eq!(client.get_json("/readyz").await.0, 200);
}

#[tokio::test]
async fn closed_streams_leave_the_hub() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H2c);
    let stream = client.subscribe("channel=channel:bye", &[]).await;
    assert_eq!(server.herald.connection_count(), 1);
    drop(stream);
    // The client's RST_STREAM reaches the server asynchronously; status is read until it shows.
    within("the connection to be unregistered", async {
        loop {
            let (_, body) = client.get_json("/api/status").await;
            if body["connections"] == 0 && body["channels"] == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}
