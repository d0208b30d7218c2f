//! Limits trip exactly at their configured values, say so in the standard error with
//! `Retry-After`, and recover; one client's excess never slows another's delivery.

mod support;

use serde_json::json;
use support::{Proto, TestServer, within};

async fn status_and_code(resp: hyper::Response<hyper::body::Incoming>) -> (u16, String, Option<String>) {
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if status == 200 {
        return (200, String::new(), retry);
    }
    let (_, body) = support::read_json(resp).await;
    (status, body["error"]["code"].as_str().unwrap_or_default().to_owned(), retry)
}

/// `POST path` with `body` as `client`: the status, the error code and `Retry-After`.
async fn post_for_refusal(client: &mut support::Client, path: &str, body: String) -> (u16, String, Option<String>) {
    let req = client.request("POST", path).body(http_body_util::Full::new(body.into()));
    status_and_code(client.send(req.unwrap_or_else(|e| panic!("{e}"))).await).await
}

/// Waits until the server has unregistered connections down to `n`.
async fn connections_drop_to(server: &TestServer, n: usize) {
    within("connections to be released", async {
        while server.herald.connection_count() > n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_node_connection_limit_answers_503_at_capacity_and_recovers() {
    let server = TestServer::with(|c| c.max_connections = 2).await;
    let a = server.client(Proto::H1).subscribe("channel=channel:x", &[]).await;
    let _b = server.client(Proto::H1).subscribe("channel=channel:x", &[]).await;
    let (status, code, retry) =
        status_and_code(server.client(Proto::H1).open_events("channel=channel:x", &[]).await).await;
    assert_eq!((status, code.as_str()), (503, "server_at_capacity"));
    assert!(retry.is_some(), "Retry-After tells the client when to come back");
    drop(a);
    connections_drop_to(&server, 1).await;
    let _c = server.client(Proto::H1).subscribe("channel=channel:x", &[]).await;
}

#[tokio::test]
async fn the_per_user_connection_limit_answers_429_for_that_user_only_and_recovers() {
    let server = TestServer::secured(|c| c.max_connections_per_user = 2).await;
    let first = server.client(Proto::H2c).user("u").subscribe("channel=user:u", &[]).await;
    let _second = server.client(Proto::H2c).user("u").subscribe("channel=channel:x", &[]).await;
    let third = server.client(Proto::H2c).user("u").open_events("channel=user:u", &[]).await;
    let (status, code, retry) = status_and_code(third).await;
    assert_eq!((status, code.as_str()), (429, "too_many_connections"));
    assert!(retry.is_some());
    let _other = server.client(Proto::H2c).user("v").subscribe("channel=user:v", &[]).await;
    drop(first);
    connections_drop_to(&server, 2).await;
    let _again = server.client(Proto::H2c).user("u").subscribe("channel=user:u", &[]).await;
}

#[tokio::test]
async fn a_channel_limit_per_connection_is_enforced_exactly() {
    let server = TestServer::with(|c| c.max_channels_per_connection = 3).await;
    let q = |n: usize| (0..n).map(|i| format!("channel=channel:c{i}")).collect::<Vec<_>>().join("&");
    let _ok = server.client(Proto::H1).subscribe(&q(3), &[]).await;
    let (status, code, _) = status_and_code(server.client(Proto::H1).open_events(&q(4), &[]).await).await;
    assert_eq!((status, code.as_str()), (400, "too_many_channels"));
}

#[tokio::test]
async fn the_publish_rate_limit_trips_at_its_burst_for_that_user_only_and_refills() {
    // One token a second: slow enough that no token comes back while the burst is spent,
    // however loaded the machine, and the refill still comes within the test's patience.
    let server = TestServer::secured(|c| {
        c.publish_rate = 1.0;
        c.publish_burst = 5.0;
    })
    .await;
    let event = json!({"channel": "channel:general", "type": "chat"});
    let mut flooder = server.client(Proto::H1).user("flood");
    for i in 0..5 {
        assert_eq!(flooder.post_json("/api/publish", &event).await.0, 200, "publish {i} is within the burst");
    }
    let (status, code, retry) = post_for_refusal(&mut flooder, "/api/publish", event.to_string()).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    assert_eq!(retry.as_deref(), Some("1"), "Retry-After in whole seconds, rounded up");
    // A batch costs one token per event; one bigger than the burst passes a full bucket
    // once and leaves it in debt.
    let mut batcher = server.client(Proto::H1).user("batch");
    let batch = json!([event.clone(), event.clone(), event.clone(), event.clone(), event.clone(), event.clone()]);
    assert_eq!(batcher.post_json("/api/publish", &batch).await.0, 200, "6 events from a full bucket of 5");
    assert_eq!(batcher.post_json("/api/publish", &event).await.0, 429, "then the debt is paid first");
    // Invalid events cost nothing.
    let mut careful = server.client(Proto::H1).user("careful");
    for _ in 0..10 {
        assert_eq!(careful.post_json("/api/publish", &json!({"channel": "channel:general"})).await.0, 400);
    }
    assert_eq!(careful.post_json("/api/publish", &event).await.0, 200);
    // Another user is not affected.
    assert_eq!(server.client(Proto::H1).user("calm").post_json("/api/publish", &event).await.0, 200);
    // Tokens come back at the configured rate.
    within("the bucket to refill", async {
        while flooder.post_json("/api/publish", &event).await.0 != 200 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_user_minting_tickets_in_a_loop_is_refused_past_the_burst_and_keeps_publishing() {
    // Each ticket is kept `ticket_ttl` by the engine: a loop must not fill it.
    let server = TestServer::secured(support::buckets_of_three).await;
    let mut minter = server.client(Proto::H1).user("minter");
    for i in 0..3 {
        assert_eq!(minter.post_json("/api/tickets", &json!({})).await.0, 201, "ticket {i} is within the burst");
    }
    let (status, code, retry) = post_for_refusal(&mut minter, "/api/tickets", "{}".to_owned()).await;
    assert_eq!((status, code.as_str(), retry.as_deref()), (429, "rate_limited", Some("1")));
    // Its own bucket: the user still publishes, and another user still gets tickets.
    let event = json!({"channel": "channel:general", "type": "chat"});
    assert_eq!(minter.post_json("/api/publish", &event).await.0, 200);
    assert_eq!(server.client(Proto::H1).user("calm").post_json("/api/tickets", &json!({})).await.0, 201);
}

#[tokio::test]
async fn a_user_toggling_their_status_in_a_loop_is_refused_past_the_burst() {
    // Each change is announced in every room the user is in: a loop must not flood them.
    let server = TestServer::secured(support::buckets_of_three).await;
    let mut watcher = server.client(Proto::H1).user("watcher").subscribe("channel=channel:room", &[]).await;
    watcher.expect_presence("watcher", "online").await;
    let _toggler = server.client(Proto::H1).user("toggler").subscribe("channel=channel:room", &[]).await;
    watcher.expect_presence("toggler", "online").await;
    let mut toggler = server.client(Proto::H1).user("toggler");
    for status in ["away", "online", "away"] {
        assert_eq!(toggler.post_json("/api/presence", &json!({"status": status})).await.0, 200, "{status}");
        watcher.expect_presence("toggler", status).await;
    }
    let online = json!({"status": "online"}).to_string();
    let (status, code, retry) = post_for_refusal(&mut toggler, "/api/presence", online).await;
    assert_eq!((status, code.as_str(), retry.as_deref()), (429, "rate_limited", Some("1")));
    // Nothing was announced for the refused change; the user still publishes.
    let event = json!({"channel": "channel:room", "type": "chat", "n": 1});
    assert_eq!(toggler.post_json("/api/publish", &event).await.0, 200);
    assert_eq!(watcher.expect().await.data["n"], 1, "the next event is the publish, no presence");
}

#[tokio::test]
async fn a_user_opening_and_closing_streams_in_a_join_leave_room_in_a_loop_is_refused_past_the_burst() {
    // Where a namespace has `join_leave`, each stream's open is announced as a join and its
    // close as a leave: a loop of them must not flood the room. They come from the bucket of
    // the user's live joins and leaves.
    let server = TestServer::secured(support::join_leave_rooms_three_at_once).await;
    let mut watcher = server.client(Proto::H1).user("watcher").subscribe("channel=room:lobby", &[]).await;
    let mut next_of = async |user: &str| loop {
        let ev = watcher.expect().await;
        if ev.data["userId"] == user || ev.data["type"] == "note" {
            return (ev.data["type"].as_str().unwrap_or_default().to_owned(), ev.data["room"].clone());
        }
    };
    for proto in [Proto::H1, Proto::H2c, Proto::H1] {
        let stream = server.client(proto).user("hopper").subscribe("channel=room:lobby", &[]).await;
        assert_eq!(next_of("hopper").await, ("join".to_owned(), json!("room:lobby")), "{proto:?}");
        drop(stream);
        assert_eq!(next_of("hopper").await, ("leave".to_owned(), json!("room:lobby")), "{proto:?}");
    }
    let refused = server.client(Proto::H2c).user("hopper").open_events("channel=room:lobby", &[]).await;
    let (status, code, retry) = status_and_code(refused).await;
    assert_eq!((status, code.as_str(), retry.as_deref()), (429, "rate_limited", Some("1")));
    // The same bucket as live joins; a stream where nothing is announced is not charged.
    let own = server.client(Proto::H1).user("hopper").subscribe("channel=user:hopper", &[]).await;
    let path = format!("/api/connections/{}/channels", own.connection_id());
    let (status, answer) =
        server.client(Proto::H1).user("hopper").post_json(&path, &json!({"channel": "room:lobby"})).await;
    assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (429, Some("rate_limited")));
    // Nothing was announced for the refused ones: the next event is the backend's note.
    let note = json!({"channel": "room:lobby", "type": "note"});
    assert_eq!(server.client(Proto::H1).backend().post_json("/api/publish", &note).await.0, 200);
    assert_eq!(next_of("hopper").await, ("note".to_owned(), json!(null)));
}

#[tokio::test]
async fn a_user_joining_and_leaving_rooms_in_a_loop_is_refused_past_the_burst() {
    // Each live join and leave may be announced in the room: a loop must not flood it.
    let server = TestServer::secured(|c| {
        support::buckets_of_three(c);
        support::no_presence(c);
    })
    .await;
    let mut stream = server.client(Proto::H1).user("hopper").subscribe("channel=user:hopper", &[]).await;
    let path = format!("/api/connections/{}/channels", stream.connection_id());
    let mut hopper = server.client(Proto::H1).user("hopper");
    assert_eq!(hopper.post_json(&path, &json!({"channel": "channel:a"})).await.0, 200);
    assert_eq!(hopper.delete(&format!("{path}/channel:a")).await.0, 200);
    assert_eq!(hopper.post_json(&path, &json!({"channel": "channel:b"})).await.0, 200);
    let (status, answer) = hopper.post_json(&path, &json!({"channel": "channel:c"})).await;
    assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (429, Some("rate_limited")));
    // A backend still moves the user; the stream follows what it was given.
    let (status, _) = server.client(Proto::H1).backend().post_json(&path, &json!({"channel": "channel:d"})).await;
    assert_eq!(status, 200);
    let mut p = server.client(Proto::H1).backend();
    for channel in ["channel:c", "channel:b", "channel:d"] {
        p.publish(&json!({"channel": channel, "type": "note", "on": channel})).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = stream.expect().await;
        if ev.data["type"] == "note" {
            seen.push(ev.data["on"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(seen, ["channel:b", "channel:d"], "not channel:c, refused");
}

#[tokio::test]
async fn a_publish_is_charged_per_channel_and_names_at_most_max_channels_per_publish() {
    let server = TestServer::secured(|c| {
        c.publish_rate = 0.01;
        c.publish_burst = 6.0;
        c.max_channels_per_publish = 4;
    })
    .await;
    let to =
        |n: usize| json!({"channels": (0..n).map(|i| format!("channel:c{i}")).collect::<Vec<_>>(), "type": "chat"});
    let mut user = server.client(Proto::H1).user("wide");
    let (status, body) = user.post_json("/api/publish", &to(5)).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (413, Some("too_many_channels")), "{body}");
    assert_eq!(user.post_json("/api/publish", &to(4)).await.0, 200, "4 of the 6 tokens");
    let (status, body) = user.post_json("/api/publish", &to(3)).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (429, Some("rate_limited")), "3 channels, 2 tokens");
    // A channel named twice is reached once and charged once.
    let twice = json!({"channels": ["channel:c0", "channel:c0"], "type": "chat"});
    assert_eq!(user.post_json("/api/publish", &twice).await.0, 200, "charged once: 1 of the 2 tokens left");
    assert_eq!(user.post_json("/api/publish", &to(1)).await.0, 200, "the last token");
    assert_eq!(user.post_json("/api/publish", &to(1)).await.0, 429);
}

#[tokio::test]
async fn channels_nobody_follows_are_freed_once_their_history_expires() {
    let server = TestServer::with(|c| {
        // Long enough for the publishes below to be done before the first expires, on a
        // loaded machine too.
        c.history_ttl = std::time::Duration::from_secs(2);
        // The node sweeps once per heartbeat interval.
        c.heartbeat_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let mut publisher = server.client(Proto::H1);
    let mut followed = server.client(Proto::H1).subscribe("channel=channel:followed", &[]).await;
    for batch in 0..10 {
        let channels: Vec<String> = (0..100).map(|i| format!("channel:n{batch}x{i}")).collect();
        publisher.publish(&json!({"channels": channels, "type": "chat"})).await;
    }
    publisher.publish(&json!({"channel": "channel:followed", "type": "chat", "n": 1})).await;
    assert!(publisher.metric("herald_engine_channels").await >= 1001.0);
    let (_, status) = publisher.get_json("/api/status").await;
    assert!(status["engine"]["channels"].as_u64() >= Some(1001), "{status}");

    // History expires, and with it the logs of every channel but the followed one.
    within("the unfollowed channels to be freed", async {
        while publisher.metric("herald_engine_channels").await > 1.0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(followed.expect().await.data["n"], 1);
    publisher.publish(&json!({"channel": "channel:followed", "type": "chat", "n": 2})).await;
    assert_eq!(followed.expect().await.data["n"], 2);
}

#[tokio::test]
async fn api_keys_have_their_own_rate_limit() {
    let server = TestServer::secured(|c| {
        c.publish_rate = 1.0;
        c.publish_burst = 1.0;
        c.api_key_publish_rate = 1.0;
        c.api_key_publish_burst = 3.0;
    })
    .await;
    let event = json!({"channel": "channel:general", "type": "update"});
    let mut backend = server.client(Proto::H1).backend();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(backend.post_json("/api/publish", &event).await.0.as_u16());
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 200, 429]);
}

#[tokio::test]
async fn a_flooding_user_does_not_delay_another_users_delivery() {
    let server = TestServer::secured(|c| {
        c.publish_rate = 50.0;
        c.publish_burst = 10.0;
    })
    .await;
    let mut reader = server.client(Proto::H2c).user("reader").subscribe("channel=channel:quiet", &[]).await;
    reader.expect_presence("reader", "online").await;
    let mut flooder = server.client(Proto::H2c).user("flooder");
    let flood = tokio::spawn(async move {
        let mut refused = 0;
        for _ in 0..300 {
            let (status, _) =
                flooder.post_json("/api/publish", &json!({"channel": "channel:noisy", "type": "spam"})).await;
            if status == 429 {
                refused += 1;
            }
        }
        refused
    });
    let mut calm = server.client(Proto::H2c).user("calm");
    for n in 0..5 {
        calm.publish(&json!({"channel": "channel:quiet", "type": "chat", "n": n})).await;
        assert_eq!(reader.expect().await.data["n"], n);
    }
    let refused = flood.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(refused > 0, "the flood was rate limited");
}

#[tokio::test]
async fn oversized_request_headers_are_refused_with_431() {
    let server = TestServer::start().await;
    let mut c = server.client(Proto::H1).with_header("x-padding", &"p".repeat(80 * 1024));
    let resp = c.send(c.request("GET", "/healthz").body(Default::default()).unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(resp.status(), 431);
    assert_eq!(server.client(Proto::H1).get_json("/healthz").await.0, 200, "the server carries on");
}

#[tokio::test]
async fn a_stream_that_accepts_nothing_for_the_client_timeout_is_closed() {
    use std::sync::atomic::Ordering;
    // A queue too big to overflow, so only the timeout can close the stalled reader.
    let server = TestServer::with(|c| {
        c.buffer_size = 1_000_000;
        c.heartbeat_interval = std::time::Duration::from_millis(50);
        c.client_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    let _stalled = support::stalled_subscriber(server.addr, "channel=channel:t").await;
    // Fill the socket buffers so the server can write no more, then publish until the
    // sweeper notices no progress.
    let pad = "z".repeat(32 * 1024);
    let mut p = server.client(Proto::H1);
    let hub = server.herald.hub().clone();
    within("the stalled stream to time out", async {
        let mut n = 0u64;
        while hub.stats.timeout_disconnects.load(Ordering::Relaxed) == 0 {
            if n < 2000 {
                p.publish(&json!({"channel": "channel:t", "type": "update", "pad": pad})).await;
                n += 1;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    })
    .await;
    support::eventually("the stalled connection to leave the hub", || server.herald.connection_count() == 0).await;
}
