//! Live rooms (`docs/http-api.md`, "Live rooms"): channels added to and removed from an
//! open connection, on whichever node it lives, and room counts across nodes.

mod support;

use herald::Config;
use serde_json::{Value, json};
use support::{Proto, RedisServer, TestServer, token};

fn quiet(c: &mut Config, redis: Option<String>) {
    c.redis_url = redis;
    support::no_presence(c);
}

async fn on(redis: Option<String>) -> TestServer {
    TestServer::secured(move |c| quiet(c, redis)).await
}

#[tokio::test]
async fn a_connection_on_node_a_joins_a_room_through_a_call_to_node_b() {
    let redis = RedisServer::start().await;
    let (a, b) = (on(Some(redis.url())).await, on(Some(redis.url())).await);
    let mut stream = a.client(Proto::H1).user("ann").subscribe("channel=user:ann", &[]).await;
    let conn = stream.connection_id();
    let mut p = b.client(Proto::H1).backend();
    p.publish(&json!({"channel": "channel:news", "type": "update", "n": 0})).await;

    let path = format!("/api/connections/{conn}/channels");
    let (status, answer) = b.client(Proto::H1).user("ann").post_json(&path, &json!({"channel": "channel:news"})).await;
    assert_eq!((status.as_u16(), &answer), (200, &json!({"connectionId": conn, "channel": "channel:news"})));
    let joined = stream.expect().await;
    assert_eq!(
        (joined.data["type"].as_str(), joined.data["channel"].as_str()),
        (Some("subscribed"), Some("channel:news"))
    );

    // From the join on, the room's events reach the stream (not the one before), and its
    // ids cover both channels: a resume elsewhere gets what was missed on each.
    p.publish(&json!({"channel": "channel:news", "type": "update", "n": 1})).await;
    p.publish(&json!({"channel": "user:ann", "type": "update", "n": 2})).await;
    let last = stream.expect_ns(1..3).await;
    drop(stream);
    p.publish(&json!({"channel": "channel:news", "type": "update", "n": 3})).await;
    p.publish(&json!({"channel": "user:ann", "type": "update", "n": 4})).await;
    let mut resumed = b
        .client(Proto::H2c)
        .user("ann")
        .subscribe("channel=user:ann&channel=channel:news", &[("last-event-id", &last)])
        .await;
    resumed.expect_ns(3..5).await;

    // And it leaves again, through node a this time.
    let conn = resumed.connection_id();
    let (status, _) =
        a.client(Proto::H1).user("ann").delete(&format!("/api/connections/{conn}/channels/channel:news")).await;
    assert_eq!(status, 200);
    let left = resumed.expect().await;
    assert_eq!(
        (left.data["type"].as_str(), left.data["channel"].as_str()),
        (Some("unsubscribed"), Some("channel:news"))
    );
    p.publish(&json!({"channel": "channel:news", "type": "update", "n": 5})).await;
    p.publish(&json!({"channel": "user:ann", "type": "update", "n": 6})).await;
    resumed.expect_ns(6..7).await;
}

#[tokio::test]
async fn nothing_published_around_a_live_join_is_lost_or_repeated() {
    let server = on(None).await;
    let mut stream = server.client(Proto::H1).user("u").subscribe("channel=user:u", &[]).await;
    let conn = stream.connection_id();
    // A publisher keeps publishing while the join happens.
    let mut p = server.client(Proto::H2c).backend();
    let publisher = tokio::spawn(async move {
        for n in 0..200 {
            p.publish(&json!({"channel": "channel:busy", "type": "update", "n": n})).await;
        }
    });
    let path = format!("/api/connections/{conn}/channels");
    let (status, _) = server.client(Proto::H1).user("u").post_json(&path, &json!({"channel": "channel:busy"})).await;
    assert_eq!(status, 200);
    publisher.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stream.expect().await.data["type"], "subscribed");
    // Every event after the join, once, in order, ending with the last one.
    let mut ns = Vec::new();
    while ns.last() != Some(&199) {
        ns.push(stream.expect().await.data["n"].as_u64().unwrap_or_else(|| panic!("not an update")));
    }
    let first = ns[0];
    assert_eq!(ns, (first..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn only_the_connections_own_user_or_a_backend_may_change_it() {
    let server = TestServer::secured(|c| {
        support::no_presence(c);
        c.max_channels_per_connection = 2;
    })
    .await;
    let mut stream = server.client(Proto::H1).user("ann").subscribe("channel=user:ann", &[]).await;
    let conn = stream.connection_id();
    let path = format!("/api/connections/{conn}/channels");
    let join = |c: &str| json!({"channel": c});
    let cases = [
        (server.client(Proto::H1).user("bob"), join("channel:x"), 404, "connection_not_found"),
        (server.client(Proto::H1), join("channel:x"), 401, "unauthorized"),
        (server.client(Proto::H1).user("ann"), join("user:bob"), 403, "forbidden"),
        (server.client(Proto::H1).user("ann"), join("channel:*"), 400, "invalid_channel"),
        (server.client(Proto::H1).user("ann"), json!({}), 400, "missing_channel"),
    ];
    for (mut client, body, status, code) in cases {
        let (got, answer) = client.post_json(&path, &body).await;
        assert_eq!((got.as_u16(), answer["error"]["code"].as_str()), (status, Some(code)), "{body}: {answer}");
    }
    let (got, answer) =
        server.client(Proto::H1).user("ann").post_json("/api/connections/cnope/channels", &join("channel:x")).await;
    assert_eq!((got.as_u16(), answer["error"]["code"].as_str()), (404, Some("connection_not_found")));
    // A backend may; the channel limit holds.
    let (got, _) = server.client(Proto::H1).backend().post_json(&path, &join("channel:x")).await;
    assert_eq!(got, 200);
    assert_eq!(stream.expect().await.data["channel"], "channel:x");
    let (got, answer) = server.client(Proto::H1).user("ann").post_json(&path, &join("channel:y")).await;
    assert_eq!((got.as_u16(), answer["error"]["code"].as_str()), (400, Some("too_many_channels")));
    // Joining twice changes nothing.
    let (got, _) = server.client(Proto::H1).user("ann").post_json(&path, &join("channel:x")).await;
    assert_eq!(got, 200);
    server.client(Proto::H1).backend().publish(&json!({"channel": "channel:x", "type": "update", "n": 0})).await;
    stream.expect_ns(0..1).await;
}

#[tokio::test]
async fn a_live_join_is_answered_by_the_node_holding_the_connection_without_waiting_for_a_node_that_never_answers() {
    let redis = RedisServer::start().await;
    let (a, b) = (on(Some(redis.url())).await, on(Some(redis.url())).await);
    // A third "node" on the command channel that takes every command and never answers (a
    // node stuck in a long pause): counted among the receivers, its reply never comes.
    let mut mute = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "SUBSCRIBE", "realtime:{nodes}"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-cli: {e}"));
    let mut stream = a.client(Proto::H1).user("ann").subscribe("channel=user:ann", &[]).await;
    let conn = stream.connection_id();
    let path = format!("/api/connections/{conn}/channels");
    // Until the mute subscriber is counted, a command settles with the two real nodes alone.
    while redis.cli(&["PUBSUB", "NUMSUB", "realtime:{nodes}"]).lines().nth(1).map(str::trim) != Some("3") {
        tokio::task::yield_now().await;
    }
    // The nodes wait for every receiver's reply for 3 seconds at most; the node that holds
    // the connection answers at once, and its answer is the join's.
    let mut client = b.client(Proto::H1).user("ann");
    let body = json!({"channel": "channel:news"});
    let (status, _) = tokio::time::timeout(std::time::Duration::from_secs(2), client.post_json(&path, &body))
        .await
        .unwrap_or_else(|_| panic!("the join waited for the node that never answers"));
    assert_eq!(status.as_u16(), 200);
    assert_eq!(stream.expect().await.data["type"], "subscribed");
    let _ = mute.kill();
    let _ = mute.wait();
}

#[tokio::test]
async fn room_counts_add_up_subscribers_and_users_across_nodes() {
    let redis = RedisServer::start().await;
    let (a, b) = (on(Some(redis.url())).await, on(Some(redis.url())).await);
    let room = "channel=channel:count";
    let _s = [
        a.client(Proto::H1).user("ann").subscribe(room, &[]).await,
        a.client(Proto::H1).user("ann").subscribe(room, &[]).await,
        b.client(Proto::H1).user("ann").subscribe(room, &[]).await,
        b.client(Proto::H1).user("bob").subscribe(room, &[]).await,
        b.client(Proto::H1).backend().subscribe(room, &[]).await,
    ];
    let (status, info) = a.client(Proto::H1).user("bob").get_json("/api/channels/channel:count").await;
    assert_eq!(status, 200);
    assert_eq!(info, json!({"channel": "channel:count", "subscribers": 5, "users": 2}));
    assert_eq!((a.herald.room_count("channel:count"), b.herald.room_count("channel:count")), (2, 3));
    let (status, _) = a.client(Proto::H1).user("bob").get_json("/api/channels/user:ann").await;
    assert_eq!(status, 403, "counts are read like subscriptions");
}

#[tokio::test]
async fn the_library_sends_to_one_connection_and_serves_other_transports() {
    let server = on(None).await;
    let h = &server.herald;
    let ann = herald::Principal::User(std::sync::Arc::new(herald::UserIdentity {
        id: "ann".into(),
        name: None,
        subscribe: None,
        publish: None,
        expires_at: None,
    }));
    // A transport of the application's own (a WebSocket, say) registers a connection.
    let channel = h.parse_channel("user:ann").unwrap_or_else(|e| panic!("{e}"));
    let mut conn =
        h.connect(herald::StreamRequest::new(ann.clone(), vec![channel])).await.unwrap_or_else(|e| panic!("{e}"));
    let connected = conn.recv().await.unwrap_or_else(|| panic!("no connected message"));
    assert_eq!(connected.event_type, "connected");
    assert_eq!(h.stats().connections, 1);

    let room = h.parse_channel("channel:lib").unwrap_or_else(|e| panic!("{e}"));
    h.join(&ann, conn.id(), &room).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conn.recv().await.map(|m| m.event_type), Some("subscribed".to_owned()));
    assert_eq!(conn.channels().len(), 2);
    h.broadcast("lib", herald::Event::chat("hello")).await.unwrap_or_else(|e| panic!("{e}"));
    let msg = conn.recv().await.unwrap_or_else(|| panic!("no chat"));
    let json: serde_json::Value = serde_json::from_slice(&msg.json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((msg.event_type.as_str(), json["content"].as_str()), ("chat", Some("hello")));
    assert!(msg.id.contains(','), "the id covers both channels: {}", msg.id);

    // One connection alone, over SSE too.
    let mut sse = server.client(Proto::H1).user("bob").subscribe("channel=user:bob", &[]).await;
    let sse_id = sse.connection_id();
    h.send_to_connection(&sse_id, herald::Event::notification("dm", "Hi Bob", "just you"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ev = sse.expect().await;
    assert_eq!((ev.data["type"].as_str(), ev.data["title"].as_str()), (Some("notification"), Some("Hi Bob")));
    assert!(ev.data.get("channel").is_none(), "sent to the connection, on no channel");
    assert!(matches!(
        h.send_to_connection("cgone", herald::Event::chat("x")).await,
        Err(herald::RoomError::NoConnection(_))
    ));
    assert_eq!(h.stats().connections, 2);
    drop(conn);
    assert_eq!(h.stats().connections, 1, "dropping the connection unregisters it");
}

/// Adds the API keys of a TOML snippet (`[[api_keys]]` tables) to a configuration.
fn add_keys(c: &mut Config, toml: &str) {
    let extra = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
    c.api_keys.extend(extra.api_keys);
}

const OPS_KEY: &str = "ops-key-0123456789abcdef";

#[tokio::test]
async fn a_live_leave_is_checked_against_the_channel_like_a_join() {
    let server = TestServer::secured(|c| {
        support::no_presence(c);
        add_keys(c, &format!("[[api_keys]]\nname = \"ops\"\nkey = \"{OPS_KEY}\"\nchannels = [\"channel:ops-*\"]\n"));
    })
    .await;
    let mut bob = server.client(Proto::H1).user("bob").subscribe("channel=user:bob", &[]).await;
    let conn = bob.connection_id();
    let mut ops = server.client(Proto::H1).with_header("x-api-key", OPS_KEY);
    let (status, answer) = ops.delete(&format!("/api/connections/{conn}/channels/user:bob")).await;
    assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (403, Some("forbidden")), "{answer}");
    // Bob still follows his channel: the next event on it reaches him.
    server.client(Proto::H1).backend().publish(&json!({"channel": "user:bob", "type": "update", "n": 0})).await;
    bob.expect_ns(0..1).await;
    // Within its patterns the key may join and leave.
    let path = format!("/api/connections/{conn}/channels");
    assert_eq!(ops.post_json(&path, &json!({"channel": "channel:ops-1"})).await.0, 200);
    assert_eq!(bob.expect().await.data["type"], "subscribed");
    assert_eq!(ops.delete(&format!("{path}/channel:ops-1")).await.0, 200);
    assert_eq!(bob.expect().await.data["type"], "unsubscribed");
}

/// Status, error code and message of an answer.
fn refusal((status, answer): (hyper::StatusCode, Value)) -> (u16, String, String) {
    let text = |k: &str| answer["error"][k].as_str().unwrap_or_default().to_owned();
    (status.as_u16(), text("code"), text("message"))
}

#[tokio::test]
async fn joins_and_leaves_on_an_unknown_or_someone_elses_connection_answer_alike() {
    let server = on(None).await;
    let ann = server.client(Proto::H1).user("ann").subscribe("channel=user:ann", &[]).await;
    let conn = ann.connection_id();
    let unknown = format!("{}{}", &conn[..conn.len() - 1], if conn.ends_with('x') { 'y' } else { 'x' });
    let mut bob = server.client(Proto::H1).user("bob");
    let mut answers = Vec::new();
    for id in [&conn, &unknown] {
        let joined = bob.post_json(&format!("/api/connections/{id}/channels"), &json!({"channel": "channel:x"})).await;
        let left = bob.delete(&format!("/api/connections/{id}/channels/channel:x")).await;
        // The id itself is in the message; the rest must not differ.
        answers.push([refusal(joined), refusal(left)].map(|(s, c, m)| (s, c, m.replace(id.as_str(), "ID"))));
    }
    assert_eq!(answers[0], answers[1], "someone else's connection and an unknown one");
    assert_eq!((answers[0][0].0, answers[0][0].1.as_str()), (404, "connection_not_found"));
    assert_eq!((answers[0][1].0, answers[0][1].1.as_str()), (404, "connection_not_found"));
}

#[tokio::test]
async fn outside_dev_mode_an_anonymous_caller_changes_no_anonymous_connection() {
    let server = TestServer::secured(|c| {
        support::no_presence(c);
        let open = herald::config::Access::Anyone;
        let lobby =
            herald::config::NamespaceConfig { subscribe: Some(open), publish: Some(open), ..Default::default() };
        c.namespaces.insert("lobby".to_owned(), lobby);
    })
    .await;
    let mut stream = server.client(Proto::H1).subscribe("channel=lobby:a", &[]).await;
    let conn = stream.connection_id();
    // Connection ids are not secrets: an anonymous caller owns no connection, not even an
    // anonymous one, once Herald is out of dev mode.
    let mut anonymous = server.client(Proto::H1);
    let joined =
        anonymous.post_json(&format!("/api/connections/{conn}/channels"), &json!({"channel": "lobby:b"})).await;
    let left = anonymous.delete(&format!("/api/connections/{conn}/channels/lobby:a")).await;
    for (status, answer) in [joined, left] {
        assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (404, Some("connection_not_found")));
    }
    // The stream still follows `lobby:a` alone.
    anonymous.publish(&json!({"channel": "lobby:b", "type": "note", "n": 9})).await;
    anonymous.publish(&json!({"channel": "lobby:a", "type": "note", "n": 0})).await;
    stream.expect_ns(0..1).await;
}

#[tokio::test]
async fn a_refusal_by_the_node_holding_the_connection_keeps_its_code_on_the_node_asked() {
    let redis = RedisServer::start().await;
    // Node a knows the namespace `team`; node b, which holds the stream, does not, and lets
    // a stream follow one channel only.
    let a = TestServer::secured(|c| {
        quiet(c, Some(redis.url()));
        c.namespaces.insert("team".to_owned(), herald::config::NamespaceConfig::default());
    })
    .await;
    let b = TestServer::secured(|c| {
        quiet(c, Some(redis.url()));
        c.max_channels_per_connection = 1;
    })
    .await;
    let ann = b.client(Proto::H1).user("ann").subscribe("channel=user:ann", &[]).await;
    let path = format!("/api/connections/{}/channels", ann.connection_id());
    let mut backend = a.client(Proto::H1).backend();

    let unknown_there = refusal(backend.post_json(&path, &json!({"channel": "team:x"})).await);
    assert_eq!((unknown_there.0, unknown_there.1.as_str()), (400, "invalid_channel"), "{unknown_there:?}");
    let full = refusal(backend.post_json(&path, &json!({"channel": "channel:news"})).await);
    assert_eq!((full.0, full.1.as_str()), (400, "too_many_channels"), "{full:?}");
    let not_bobs = refusal(a.client(Proto::H1).user("bob").post_json(&path, &json!({"channel": "user:bob"})).await);
    assert_eq!((not_bobs.0, not_bobs.1.as_str()), (404, "connection_not_found"), "{not_bobs:?}");
}

const APP: &str = "http://app.test:5173";

#[tokio::test]
async fn a_cookie_borne_live_join_or_leave_needs_json_and_an_allowed_origin() {
    let server = TestServer::secured(|c| {
        support::no_presence(c);
        c.cors_origins = vec![APP.to_owned()];
    })
    .await;
    let mut stream = server.client(Proto::H1).user("ann").subscribe("channel=user:ann", &[]).await;
    let conn = stream.connection_id();
    let path = format!("/api/connections/{conn}/channels");
    let mut victim = server.client(Proto::H1).with_header("cookie", &format!("herald_token={}", token("ann")));
    let body = json!({"channel": "channel:attacker"}).to_string();
    let send = |c: &mut support::Client, method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut b = c.request(method, path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body = if method == "POST" { body.clone() } else { String::new() };
        b.body(body.into()).unwrap_or_else(|e| panic!("{e}"))
    };
    let own = format!("http://{}", server.addr);
    let refused = [
        ("POST", path.clone(), vec![("content-type", "text/plain")], 415, "json_required"),
        ("POST", path.clone(), vec![("content-type", "text/plain"), ("origin", APP)], 415, "json_required"),
        (
            "POST",
            path.clone(),
            vec![("content-type", "application/json"), ("origin", "http://evil.test")],
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            path.clone(),
            vec![("content-type", "application/json"), ("origin", "null")],
            403,
            "origin_not_allowed",
        ),
        ("DELETE", format!("{path}/user:ann"), vec![("origin", "http://evil.test")], 403, "origin_not_allowed"),
    ];
    for (method, p, headers, status, code) in refused {
        let req = send(&mut victim, method, &p, &headers);
        let (got, answer) = support::read_json(victim.send(req).await).await;
        assert_eq!((got.as_u16(), answer["error"]["code"].as_str()), (status, Some(code)), "{method} {headers:?}");
    }
    // JSON from Herald's own origin or a listed one goes through; nothing came before it.
    for (origin, channel) in [(own.as_str(), "channel:own"), (APP, "channel:app")] {
        let req = victim
            .request("POST", &path)
            .header("content-type", "application/json")
            .header("origin", origin)
            .body(json!({"channel": channel}).to_string().into())
            .unwrap_or_else(|e| panic!("{e}"));
        let (got, answer) = support::read_json(victim.send(req).await).await;
        assert_eq!(got, 200, "{origin}: {answer}");
        let ev = stream.expect().await;
        assert_eq!((ev.data["type"].as_str(), ev.data["channel"].as_str()), (Some("subscribed"), Some(channel)));
    }
    let req = send(&mut victim, "DELETE", &format!("{path}/channel:app"), &[("origin", APP)]);
    assert_eq!(victim.send(req).await.status(), 200);
    assert_eq!(stream.expect().await.data["channel"], "channel:app");
}
