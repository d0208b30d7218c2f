//! Cutting sessions: `POST /api/disconnect` by user, connection or channel, bans
//! (`POST /api/bans`, `DELETE /api/bans/{user}`), on one node and across two nodes on Redis.
//! Every cut stream ends with a last `disconnect` event that says whether to come back.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use herald::{Config, DisconnectOptions, DisconnectTarget, StreamRequest};
use serde_json::{Value, json};
use support::{Proto, RedisServer, SseStream, TestServer, within};

fn quiet(c: &mut Config, redis: Option<String>) {
    c.redis_url = redis;
    support::no_presence(c);
}

async fn node(redis: Option<String>) -> TestServer {
    TestServer::secured(move |c| quiet(c, redis)).await
}

/// Asks `server` to disconnect as the backend; returns how many connections it cut.
async fn disconnect(server: &TestServer, body: Value) -> u64 {
    let (status, answer) = server.client(Proto::H1).backend().post_json("/api/disconnect", &body).await;
    assert_eq!(status, 200, "{answer}");
    answer["disconnected"].as_u64().unwrap_or_else(|| panic!("no count in {answer}"))
}

/// The stream ends, and its last event is a `disconnect` notice with `reason` and
/// `reconnect`.
async fn expect_cut(stream: &mut SseStream, reason: &str, reconnect: bool) {
    let events = stream.until_end().await;
    let last = events.last().unwrap_or_else(|| panic!("the stream ended without a notice"));
    assert_eq!(last.data, json!({"type": "disconnect", "reason": reason, "reconnect": reconnect}));
    assert!(!last.id.is_empty(), "the notice carries the id to resume from");
}

/// The stream is still open: a publish on `channel` reaches it.
async fn expect_alive(stream: &mut SseStream, server: &TestServer, channel: &str) {
    let sent = server.client(Proto::H1).backend().publish(&json!({"channel": channel, "type": "update"})).await;
    assert_eq!(stream.expect().await.data["id"], sent["id"], "the stream is still open");
}

#[tokio::test]
async fn a_disconnect_by_user_cuts_every_stream_of_that_user_and_no_other() {
    let server = node(None).await;
    let mut h1 = server.client(Proto::H1).user("42").subscribe("channel=user:42", &[]).await;
    let mut h2 = server.client(Proto::H2c).user("42").subscribe("channel=channel:lobby", &[]).await;
    let mut other = server.client(Proto::H1).user("43").subscribe("channel=channel:lobby", &[]).await;

    assert_eq!(disconnect(&server, json!({"user": "42"})).await, 2);
    expect_cut(&mut h1, "disconnected", true).await;
    expect_cut(&mut h2, "disconnected", true).await;
    expect_alive(&mut other, &server, "channel:lobby").await;
    support::eventually("the cut streams to leave the hub", || server.herald.connection_count() == 1).await;
    let mut m = server.client(Proto::H1);
    assert_eq!(m.metric("herald_disconnects_total{target=\"user\"}").await, 1.0);
    assert_eq!(m.metric("herald_disconnected_connections_total{target=\"user\"}").await, 2.0);
}

#[tokio::test]
async fn a_disconnect_without_reconnect_says_so_and_a_named_stream_gets_event_disconnect() {
    let server = node(None).await;
    let mut named = server.client(Proto::H1).user("7").subscribe("channel=user:7&events=named", &[]).await;
    let mut sibling = server.client(Proto::H1).user("7").subscribe("channel=user:7", &[]).await;
    let conn = named.connection_id();

    let cut = disconnect(&server, json!({"connectionId": conn, "reconnect": false})).await;
    assert_eq!(cut, 1);
    let events = named.until_end().await;
    let last = events.last().unwrap_or_else(|| panic!("no notice"));
    assert_eq!((last.event.as_str(), &last.data["reconnect"]), ("disconnect", &json!(false)));
    expect_alive(&mut sibling, &server, "user:7").await;
    assert_eq!(disconnect(&server, json!({"connectionId": conn})).await, 0, "an unknown connection cuts nothing");
}

#[tokio::test]
async fn a_disconnect_by_channel_cuts_its_subscribers_whatever_else_they_follow() {
    let server = node(None).await;
    let mut a = server.client(Proto::H1).user("1").subscribe("channel=channel:ops&channel=user:1", &[]).await;
    let mut b = server.client(Proto::H2c).user("3").subscribe("channel=channel:ops", &[]).await;
    let mut c = server.client(Proto::H1).user("2").subscribe("channel=channel:other&channel=user:2", &[]).await;

    assert_eq!(disconnect(&server, json!({"channel": "channel:ops"})).await, 2);
    expect_cut(&mut a, "disconnected", true).await;
    expect_cut(&mut b, "disconnected", true).await;
    expect_alive(&mut c, &server, "channel:other").await;
}

#[tokio::test]
async fn a_cut_stream_resumes_from_the_id_of_its_last_notice_with_nothing_lost() {
    let server = node(None).await;
    let mut p = server.client(Proto::H1).backend();
    let mut stream = server.client(Proto::H1).user("5").subscribe("channel=user:5", &[]).await;
    p.publish(&json!({"channel": "user:5", "type": "update", "n": 0})).await;
    stream.expect_ns(0..1).await;
    assert_eq!(disconnect(&server, json!({"user": "5"})).await, 1);
    let events = stream.until_end().await;
    let last_id = events.last().map(|e| e.id.clone()).unwrap_or_default();
    p.publish(&json!({"channel": "user:5", "type": "update", "n": 1})).await;
    let mut back = server.client(Proto::H1).user("5").subscribe("channel=user:5", &[("last-event-id", &last_id)]).await;
    back.expect_ns(1..2).await;
}

#[tokio::test]
async fn only_an_api_key_that_reaches_the_target_may_disconnect_or_ban() {
    let server = TestServer::secured(|c| {
        quiet(c, None);
        c.api_keys.push(herald::config::ApiKeyConfig {
            name: "ops".into(),
            key: "ops-key-0123456789abcdef".into(),
            channels: vec!["channel:ops-*".into()],
            scopes: vec![herald::config::Scope::Publish],
        });
    })
    .await;
    let mut victim = server.client(Proto::H1).user("bob").subscribe("channel=user:bob", &[]).await;
    let refusals = [
        (server.client(Proto::H1), "/api/disconnect", json!({"user": "bob"}), 401, "unauthorized"),
        (server.client(Proto::H1).user("bob"), "/api/disconnect", json!({"user": "bob"}), 403, "forbidden"),
        (server.client(Proto::H1).user("eve"), "/api/bans", json!({"user": "bob", "ttl": "1h"}), 403, "forbidden"),
        (server.client(Proto::H2c), "/api/bans", json!({"user": "bob", "ttl": "1h"}), 401, "unauthorized"),
        (
            server.client(Proto::H1).with_header("x-api-key", "ops-key-0123456789abcdef"),
            "/api/disconnect",
            json!({"user": "bob"}),
            403,
            "forbidden",
        ),
        (
            server.client(Proto::H1).with_header("x-api-key", "ops-key-0123456789abcdef"),
            "/api/disconnect",
            json!({"connectionId": victim.connection_id()}),
            403,
            "forbidden",
        ),
        (
            server.client(Proto::H1).backend(),
            "/api/disconnect",
            json!({"user": "bob", "channel": "user:bob"}),
            400,
            "invalid_target",
        ),
        (server.client(Proto::H1).backend(), "/api/disconnect", json!({"reconnect": false}), 400, "invalid_target"),
        (
            server.client(Proto::H1).backend(),
            "/api/disconnect",
            json!({"user": "bob", "reconect": false}),
            400,
            "invalid_parameter",
        ),
        (
            server.client(Proto::H1).backend(),
            "/api/disconnect",
            json!({"channel": "channel:x", "ban": {"ttl": "1h"}}),
            400,
            "invalid_ban",
        ),
        (server.client(Proto::H1).backend(), "/api/disconnect", json!({"channel": "nope:x"}), 400, "invalid_channel"),
        (
            server.client(Proto::H1).backend(),
            "/api/disconnect",
            json!({"connectionId": "c".repeat(65)}),
            400,
            "invalid_connection",
        ),
        (
            server.client(Proto::H1).backend(),
            "/api/disconnect",
            json!({"connectionId": "c 1"}),
            400,
            "invalid_connection",
        ),
        (server.client(Proto::H1).backend(), "/api/bans", json!({"user": "bob", "ttl": "forever"}), 400, "invalid_ttl"),
        (server.client(Proto::H1).backend(), "/api/bans", json!({"user": "bob", "ttl": 0}), 400, "invalid_ttl"),
        (server.client(Proto::H1).backend(), "/api/bans", json!({"user": "a b", "ttl": "1h"}), 400, "invalid_user"),
    ];
    for (mut client, path, body, status, code) in refusals {
        let (got, answer) = client.post_json(path, &body).await;
        assert_eq!((got.as_u16(), answer["error"]["code"].as_str()), (status, Some(code)), "{path} {body}: {answer}");
        assert!(answer["error"]["message"].is_string());
    }
    let (status, answer) = server.client(Proto::H1).user("bob").delete("/api/bans/bob").await;
    assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (403, Some("forbidden")));
    // Nothing was cut or banned.
    expect_alive(&mut victim, &server, "user:bob").await;
    server.client(Proto::H1).user("bob").subscribe("channel=user:bob", &[]).await;
    // A key restricted to some rooms cuts those rooms.
    let ops = server.client(Proto::H1).with_header("x-api-key", "ops-key-0123456789abcdef");
    let (status, answer) = { ops }.post_json("/api/disconnect", &json!({"channel": "channel:ops-1"})).await;
    assert_eq!((status.as_u16(), &answer), (200, &json!({"disconnected": 0})));
}

#[tokio::test]
async fn a_publisher_cannot_forge_the_disconnect_event() {
    let server = node(None).await;
    let mut stream = server.client(Proto::H1).user("8").subscribe("channel=channel:lobby", &[]).await;
    let forged = json!({"channel": "channel:lobby", "type": "disconnect", "reason": "banned", "reconnect": false});
    for mut publisher in [server.client(Proto::H1).user("8"), server.client(Proto::H1).backend()] {
        let (status, answer) = publisher.post_json("/api/publish", &forged).await;
        assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (400, Some("invalid_type")), "{answer}");
    }
    let (status, _) = server
        .client(Proto::H1)
        .backend()
        .post_json("/api/channels/channel:lobby/events", &json!({"type": "disconnect"}))
        .await;
    assert_eq!(status, 400);
    expect_alive(&mut stream, &server, "channel:lobby").await;
}

/// Polls until a stream for `user` on `server` opens again (its ban ran out).
async fn until_admitted(server: &TestServer, user: &str) {
    within("the ban to run out", async {
        loop {
            let resp = server.client(Proto::H1).user(user).open_events(&format!("channel=user:{user}"), &[]).await;
            if resp.status() == 200 {
                return;
            }
            let (status, answer) = support::read_json(resp).await;
            assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (403, Some("banned")));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

async fn expect_banned(server: &TestServer, user: &str) {
    let mut client = server.client(Proto::H1).user(user);
    let (status, answer) = support::read_json(client.open_events(&format!("channel=user:{user}"), &[]).await).await;
    assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (403, Some("banned")), "stream: {answer}");
    let (status, answer) = client.post_json("/api/tickets", &json!({})).await;
    assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (403, Some("banned")), "ticket: {answer}");
    // Nor may the user publish, on the lean HTTP/1.1 path or over HTTP/2.
    for proto in [Proto::H1, Proto::H2c] {
        let (status, answer) = server.client(proto).user(user).post_json("/api/publish", &chat()).await;
        assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (403, Some("banned")), "publish: {answer}");
    }
}

/// A chat event a user may publish.
fn chat() -> Value {
    json!({"channel": "channel:general", "type": "chat", "text": "hi"})
}

#[tokio::test]
async fn a_ban_refuses_new_streams_tickets_and_publishes_until_it_is_lifted_or_runs_out() {
    let server = node(None).await;
    let mut open = server.client(Proto::H1).user("9").subscribe("channel=user:9", &[]).await;
    let mut backend = server.client(Proto::H1).backend();
    let (status, answer) = backend.post_json("/api/bans", &json!({"user": "9", "ttl": "1h"})).await;
    assert_eq!((status.as_u16(), &answer), (200, &json!({"user": "9", "expiresIn": 3600})));
    expect_banned(&server, "9").await;
    expect_alive(&mut open, &server, "user:9").await;
    server.client(Proto::H1).user("10").subscribe("channel=user:10", &[]).await;
    assert_eq!(backend.metric("herald_subscribe_refused_total{reason=\"banned\"}").await, 1.0);

    assert_eq!(backend.delete("/api/bans/9").await, (hyper::StatusCode::OK, json!({"user": "9", "lifted": true})));
    server.client(Proto::H1).user("9").subscribe("channel=user:9", &[]).await;
    assert_eq!(server.client(Proto::H1).user("9").post_json("/api/publish", &chat()).await.0, 200);
    assert_eq!(backend.delete("/api/bans/9").await.1["lifted"], false);

    let (status, _) = backend.post_json("/api/bans", &json!({"user": "9", "ttl": 1})).await;
    assert_eq!(status, 200);
    expect_banned(&server, "9").await;
    until_admitted(&server, "9").await;
}

#[tokio::test]
async fn a_ban_of_a_year_written_1y_is_taken_and_a_second_more_is_not() {
    let server = node(None).await;
    let mut backend = server.client(Proto::H1).backend();
    let (status, answer) = backend.post_json("/api/bans", &json!({"user": "9", "ttl": "1y"})).await;
    assert_eq!((status.as_u16(), &answer), (200, &json!({"user": "9", "expiresIn": 31_557_600})));
    expect_banned(&server, "9").await;
    let (status, answer) = backend.post_json("/api/bans", &json!({"user": "9", "ttl": "1y 1s"})).await;
    assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (400, Some("invalid_ttl")), "{answer}");
}

#[tokio::test]
async fn a_disconnect_with_a_ban_cuts_with_reason_banned_and_refuses_the_reconnect() {
    let server = node(None).await;
    let mut stream = server.client(Proto::H2c).user("13").subscribe("channel=user:13", &[]).await;
    let body = json!({"user": "13", "reconnect": false, "ban": {"ttl": "10m"}});
    assert_eq!(disconnect(&server, body).await, 1);
    expect_cut(&mut stream, "banned", false).await;
    expect_banned(&server, "13").await;
}

#[tokio::test]
async fn a_disconnect_on_one_node_cuts_exactly_the_matching_streams_on_every_node() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(Some(redis.url())).await, node(Some(redis.url())).await);
    let mut u_a = a.client(Proto::H1).user("42").subscribe("channel=user:42", &[]).await;
    let mut u_b = b.client(Proto::H2c).user("42").subscribe("channel=user:42&channel=channel:news", &[]).await;
    let mut news_a = a.client(Proto::H1).user("1").subscribe("channel=channel:news", &[]).await;
    let mut news_b = b.client(Proto::H1).user("2").subscribe("channel=channel:news&channel=user:2", &[]).await;
    let mut calm = b.client(Proto::H1).user("3").subscribe("channel=channel:calm&channel=user:3", &[]).await;

    assert_eq!(disconnect(&a, json!({"user": "42", "reconnect": false})).await, 2);
    expect_cut(&mut u_a, "disconnected", false).await;
    expect_cut(&mut u_b, "disconnected", false).await;

    let conn = news_b.connection_id();
    assert_eq!(disconnect(&a, json!({"connectionId": conn})).await, 1, "a connection on the other node");
    expect_cut(&mut news_b, "disconnected", true).await;

    assert_eq!(disconnect(&b, json!({"channel": "channel:news"})).await, 1);
    expect_cut(&mut news_a, "disconnected", true).await;
    expect_alive(&mut calm, &a, "channel:calm").await;
}

#[tokio::test]
async fn a_ban_on_one_node_refuses_streams_tickets_and_publishes_on_the_other_until_it_runs_out() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(Some(redis.url())).await, node(Some(redis.url())).await);
    let mut on_b = b.client(Proto::H1).user("77").subscribe("channel=user:77", &[]).await;
    let body = json!({"user": "77", "ban": {"ttl": 2}});
    assert_eq!(disconnect(&a, body).await, 1);
    expect_cut(&mut on_b, "banned", true).await;
    expect_banned(&b, "77").await;
    expect_banned(&a, "77").await;
    assert!(
        redis.cli(&["PTTL", "realtime:ban:{77}"]).trim().parse::<i64>().is_ok_and(|ms| ms > 0 && ms <= 2000),
        "one key with a TTL, hash-tagged by user"
    );
    until_admitted(&b, "77").await;

    let (status, _) = b.client(Proto::H1).backend().post_json("/api/bans", &json!({"user": "77", "ttl": "1h"})).await;
    assert_eq!(status, 200);
    expect_banned(&a, "77").await;
    let (status, answer) = a.client(Proto::H1).backend().delete("/api/bans/77").await;
    assert_eq!((status.as_u16(), &answer["lifted"]), (200, &json!(true)));
    b.client(Proto::H1).user("77").subscribe("channel=user:77", &[]).await;
}

/// Whether the server's side of the connection from `client_port` is still established, as
/// `ss` (iproute2) reports it.
fn established(server_port: u16, client_port: u16) -> bool {
    let filter = format!("( sport = :{server_port} and dport = :{client_port} )");
    let out = std::process::Command::new("ss")
        .args(["-tnH", "state", "established", &filter])
        .output()
        .unwrap_or_else(|e| panic!("this test reads socket states with `ss` (iproute2): {e}"));
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

#[tokio::test]
async fn a_disconnected_stream_whose_reader_stopped_is_closed_at_the_client_timeout() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::with(|c| {
        c.buffer_size = 1_000_000;
        c.heartbeat_interval = Duration::from_millis(100);
        c.client_timeout = Duration::from_secs(2);
    })
    .await;
    let mut stalled = support::stalled_subscriber(server.addr, "channel=channel:s").await;
    // Publish until events pile up behind a write the socket does not take.
    let pad = "z".repeat(32 * 1024);
    let mut p = server.client(Proto::H1);
    let stats = &server.herald.hub().stats;
    let mut published = 0u64;
    while published < stats.events_written.load(Ordering::Relaxed) + 20 {
        assert!(published < 2000, "the reader never stalled");
        p.publish(&json!({"channel": "channel:s", "type": "update", "pad": pad})).await;
        published += 1;
    }
    let target = DisconnectTarget::Channel("channel:s".into());
    assert_eq!(server.herald.disconnect(target, DisconnectOptions::default()).await.ok(), Some(1));
    support::eventually("the stalled connection to leave the hub", || server.herald.connection_count() == 0).await;
    assert_eq!(stats.timeout_disconnects.load(Ordering::Relaxed), 1, "closed by the client timeout");
    // The server lets go of the socket while nothing reads it: a reader that never reads
    // again does not keep it, and the events stuck in it, for ever.
    let client_port = stalled.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
    support::eventually("the server to let go of the stalled socket", || !established(server.addr.port(), client_port))
        .await;
    within("the stalled socket to be closed", async {
        let mut sink = vec![0u8; 64 * 1024];
        while stalled.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

#[tokio::test]
async fn the_library_cuts_a_connection_of_its_own_transport_with_a_last_message() {
    let server = TestServer::start().await;
    let herald = &server.herald;
    let channel = herald.parse_channel("channel:lib").unwrap_or_else(|e| panic!("{e}"));
    let mut conn = herald
        .connect(StreamRequest::new(herald::Principal::Anonymous, vec![channel]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let connected = within("connected", conn.recv()).await.unwrap_or_else(|| panic!("closed"));
    assert_eq!(connected.event_type, "connected");
    let options = DisconnectOptions { reconnect: false, ban: None };
    let cut = herald.disconnect(DisconnectTarget::Connection(conn.id().to_owned()), options).await;
    assert_eq!(cut.ok(), Some(1));
    let last = within("the last message", conn.recv()).await.unwrap_or_else(|| panic!("no last message"));
    assert_eq!(last.event_type, "disconnect");
    let json: Value = serde_json::from_slice(&last.json).unwrap_or_default();
    assert_eq!(json, json!({"type": "disconnect", "reason": "disconnected", "reconnect": false}));
    assert!(within("the end", conn.recv()).await.is_none());
    assert!(herald.ban_user("x", Duration::from_secs(60)).await.is_ok());
    assert_eq!(herald.is_banned("x").await.ok(), Some(true));
    assert_eq!(herald.unban_user("x").await.ok(), Some(true));
}
