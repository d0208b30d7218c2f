//! History and state (`docs/http-api.md`: "GET /api/channels/{channel}/history", "State on
//! subscribe", "GET /api/channels", "GET /api/users/{id}/connections"), on the in-memory
//! engine and on a real `redis-server`.

mod support;

use std::collections::HashSet;

use herald::Config;
use herald::config::NamespaceConfig;
use serde_json::{Value, json};
use support::{Proto, RedisServer, TestServer};

fn quiet(c: &mut Config, redis: Option<String>) {
    c.redis_url = redis;
    support::no_presence(c);
}

/// A node on `redis` (or in memory), with a `prices` namespace whose streams start with the
/// channel's last event.
async fn on(redis: Option<String>) -> TestServer {
    TestServer::secured(move |c| {
        quiet(c, redis);
        c.namespaces.insert("prices".into(), NamespaceConfig { deliver_last: Some(1), ..Default::default() });
    })
    .await
}

/// One node in memory and one on a fresh Redis, for each engine's run of a test.
async fn engines() -> Vec<(&'static str, TestServer, Option<RedisServer>)> {
    let redis = RedisServer::start().await;
    let on_redis = on(Some(redis.url())).await;
    vec![("memory", on(None).await, None), ("redis", on_redis, Some(redis))]
}

/// The `n` of each event of a history answer, and their positions.
fn page(answer: &Value) -> (Vec<u64>, Vec<String>) {
    let events = answer["events"].as_array().cloned().unwrap_or_default();
    let ns = events.iter().map(|e| e["event"]["n"].as_u64().unwrap_or(u64::MAX)).collect();
    let positions = events.iter().map(|e| e["position"].as_str().unwrap_or_default().to_owned()).collect();
    (ns, positions)
}

/// Status and error code of an answer.
fn code((status, answer): (hyper::StatusCode, Value)) -> (u16, String) {
    (status.as_u16(), answer["error"]["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_history_page_is_newest_first_by_default_pages_both_ways_and_hands_over_to_a_stream() {
    for (engine, server, _redis) in engines().await {
        let mut p = server.client(Proto::H1).backend();
        p.publish_ns("channel:h", 0..5).await;
        let mut ann = server.client(Proto::H1).user("ann");
        let (status, first) = ann.get_json("/api/channels/channel:h/history?limit=2").await;
        assert_eq!(status, 200, "{engine}: {first}");
        let (ns, positions) = page(&first);
        assert_eq!((ns, first["more"].as_bool(), first["order"].as_str()), (vec![4, 3], Some(true), Some("newest")));
        // The event is as a stream delivers it, and its position is its SSE id.
        assert_eq!(first["events"][0]["event"]["channel"], "channel:h", "{engine}");
        assert_eq!(first["head"].as_str(), Some(positions[0].as_str()), "{engine}: the head is the newest event");

        let (_, back) = ann.get_json(&format!("/api/channels/channel:h/history?limit=2&before={}", positions[1])).await;
        assert_eq!((page(&back).0, back["more"].as_bool()), (vec![2, 1], Some(true)), "{engine}");
        let oldest = page(&back).1[1].clone();
        let path = format!("/api/channels/channel:h/history?order=oldest&after={oldest}&limit=10");
        let (_, forward) = ann.get_json(&path).await;
        assert_eq!((page(&forward).0, forward["more"].as_bool()), (vec![2, 3, 4], Some(false)), "{engine}");
        let (_, range) = ann
            .get_json(&format!("/api/channels/channel:h/history?order=oldest&after={oldest}&before={}", positions[1]))
            .await;
        assert_eq!(page(&range).0, vec![2], "{engine}: both bounds are exclusive");
        let (_, head_only) = ann.get_json("/api/channels/channel:h/history?limit=0").await;
        assert_eq!((page(&head_only).0, &head_only["head"]), (vec![], &first["head"]), "{engine}");

        // A stream opened at the head follows on from the page: nothing missed, nothing twice.
        let head = first["head"].as_str().unwrap_or_default().to_owned();
        p.publish_ns("channel:h", 5..6).await;
        let mut stream = ann.subscribe(&format!("channel=channel:h&lastEventId={head}"), &[]).await;
        p.publish_ns("channel:h", 6..7).await;
        stream.expect_ns(5..7).await;

        // The library answers the same.
        let channel = server.herald.parse_channel("channel:h").unwrap_or_else(|e| panic!("{e}"));
        let query = herald::HistoryQuery { limit: 3, order: herald::HistoryOrder::OldestFirst, ..Default::default() };
        let lib = server.herald.history(&herald::Principal::Anonymous, &channel, query).await;
        assert!(matches!(lib, Err(herald::HistoryError::Denied(_))), "{engine}: anonymous on a secured node");
        let key = herald::Principal::ApiKey(std::sync::Arc::new(herald::ApiKey::publisher("t", vec!["*".into()])));
        let lib = server.herald.history(&key, &channel, query).await.unwrap_or_else(|e| panic!("{engine}: {e}"));
        assert_eq!((lib.events.len(), lib.more), (3, true), "{engine}");
    }
}

#[tokio::test]
async fn history_is_allowed_to_whoever_may_subscribe_to_the_channel() {
    for (engine, server, _redis) in engines().await {
        let mut p = server.client(Proto::H1).backend();
        p.publish_ns("user:ann", 0..2).await;
        let path = "/api/channels/user:ann/history";
        let (status, own) = server.client(Proto::H1).user("ann").get_json(path).await;
        assert_eq!((status.as_u16(), page(&own).0), (200, vec![1, 0]), "{engine}");
        assert_eq!(code(server.client(Proto::H1).user("bob").get_json(path).await), (403, "forbidden".into()));
        assert_eq!(code(server.client(Proto::H2c).get_json(path).await), (401, "unauthorized".into()), "{engine}");
        assert_eq!(p.get_json(path).await.0, 200, "{engine}: an API key reaching the channel");
        let (status, answer) = server.client(Proto::H1).user("ann").get_json("/api/channels/rooms:x/history").await;
        assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (400, Some("invalid_channel")));
    }
}

#[tokio::test]
async fn bad_history_requests_get_their_own_codes_and_change_nothing() {
    for (engine, server, _redis) in engines().await {
        let mut p = server.client(Proto::H1).backend();
        p.publish_ns("channel:bad", 0..3).await;
        let (_, all) = p.get_json("/api/channels/channel:bad/history").await;
        let (_, positions) = page(&all);
        let mut other = server.client(Proto::H1).user("ann").subscribe("channel=channel:other", &[]).await;
        let other_id = other.connected_id();
        let ask = |q: String| {
            let mut p = p.clone();
            async move { code(p.get_json(&format!("/api/channels/channel:bad/history?{q}")).await) }
        };
        let cases = [
            ("limit=1001".to_owned(), (400, "invalid_limit")),
            ("limit=ten".to_owned(), (400, "invalid_limit")),
            ("limit=-1".to_owned(), (400, "invalid_limit")),
            ("after=garbage".to_owned(), (400, "invalid_position")),
            (format!("before={other_id}"), (400, "invalid_position")),
            ("order=sideways".to_owned(), (400, "invalid_parameter")),
            ("chanel=x".to_owned(), (400, "invalid_parameter")),
        ];
        for (q, (status, c)) in cases {
            assert_eq!(ask(q.clone()).await, (status, c.to_owned()), "{engine}: {q}");
        }
        // A position ahead of the head: from somewhere else.
        let ahead = positions[0].replace(':', ":z");
        assert_eq!(ask(format!("after={ahead}")).await, (409, "unknown_position".into()), "{engine}");
        // Nothing of it reached anyone, and the channel is as it was.
        p.publish_ns("channel:other", 7..8).await;
        other.expect_ns(7..8).await;
        assert_eq!(p.get_json("/api/channels/channel:bad/history").await.1["events"], all["events"]);
    }
}

#[tokio::test]
async fn a_history_page_after_a_trimmed_position_is_gone_not_silently_short() {
    let redis = RedisServer::start().await;
    for url in [None, Some(redis.url())] {
        let server = TestServer::secured(|c| {
            quiet(c, url);
            c.history_size = 3;
        })
        .await;
        let mut p = server.client(Proto::H1).backend();
        p.publish_ns("channel:trim", 0..1).await;
        let (_, first) = p.get_json("/api/channels/channel:trim/history").await;
        let trimmed = page(&first).1[0].clone();
        p.publish_ns("channel:trim", 1..6).await;
        let after = format!("/api/channels/channel:trim/history?after={trimmed}");
        assert_eq!(code(p.get_json(&after).await), (410, "history_expired".into()));
        let (_, kept) = p.get_json("/api/channels/channel:trim/history?order=oldest").await;
        assert_eq!(page(&kept).0, vec![3, 4, 5]);
        // A stream resuming from there gets its reset, then the last events it asked for.
        let mut ann = server.client(Proto::H1).user("ann");
        let mut stream = ann.subscribe("channel=channel:trim&last=2", &[("last-event-id", &trimmed)]).await;
        let reset = stream.expect().await;
        assert_eq!(
            (reset.data["type"].as_str(), reset.data["reason"].as_str()),
            (Some("reset"), Some("history_expired"))
        );
        stream.expect_ns(4..6).await;
    }
}

/// `history_size = 0`: nothing is kept, so a stream resuming from any event but the newest
/// missed something and is told so, whether the events came one at a time or as a batch
/// (each of the Redis engine's publish scripts); one resuming from the newest missed nothing.
#[tokio::test]
async fn on_a_channel_that_keeps_no_history_a_resume_from_before_the_newest_event_is_a_reset() {
    let redis = RedisServer::start().await;
    for url in [None, Some(redis.url())] {
        let engine = if url.is_some() { "redis" } else { "memory" };
        let server = TestServer::secured(|c| {
            quiet(c, url);
            c.namespaces.insert("ticks".into(), NamespaceConfig { history_size: Some(0), ..Default::default() });
        })
        .await;
        let mut p = server.client(Proto::H1).backend();
        let mut ann = server.client(Proto::H1).user("ann");
        for (channel, batch) in [("ticks:one", false), ("ticks:batch", true)] {
            let query = format!("channel={channel}");
            let mut stream = ann.subscribe(&query, &[]).await;
            p.publish_ns(channel, 0..1).await;
            let seen = stream.expect_ns(0..1).await;
            drop(stream);
            if batch {
                let events: Vec<_> = (1..3).map(|n| json!({"channel": channel, "type": "update", "n": n})).collect();
                p.publish(&json!(events)).await;
            } else {
                p.publish_ns(channel, 1..3).await;
            }
            let (_, kept) = p.get_json(&format!("/api/channels/{channel}/history")).await;
            assert_eq!(page(&kept).0, Vec::<u64>::new(), "{engine} {channel}: {kept}");
            let newest = kept["head"].as_str().unwrap_or_default().to_owned();
            assert!(!newest.is_empty(), "{engine} {channel}: the head is the newest event's position: {kept}");

            // Events 1 and 2 are kept nowhere.
            let mut missed = ann.subscribe(&query, &[("last-event-id", &seen)]).await;
            missed.expect_reset("history_expired").await;
            let mut current = ann.subscribe(&query, &[("last-event-id", &newest)]).await;
            p.publish_ns(channel, 3..4).await;
            missed.expect_ns(3..4).await;
            current.expect_ns(3..4).await;
        }
    }
}

/// A position ahead of the channel's newest event (from another deployment, or made up) is
/// `unknown_position`; the stream then gets the last events it asked for, as after any reset.
#[tokio::test]
async fn a_resume_from_ahead_of_the_channel_gets_its_reset_then_the_last_events_asked_for() {
    for (engine, server, _redis) in engines().await {
        let mut p = server.client(Proto::H1).backend();
        let mut ann = server.client(Proto::H1).user("ann");
        let mut stream = ann.subscribe("channel=channel:ahead", &[]).await;
        p.publish_ns("channel:ahead", 0..5).await;
        let newest = stream.expect_ns(0..5).await;
        drop(stream);
        // `tag:<position>`: the same tag, a day later.
        let (tag, pos) = newest.split_once(':').unwrap_or_default();
        let ms = herald::Position::parse_compact(pos).map_or(0, |p| p.ms);
        assert!(ms > 0, "{engine}: a single channel's id is `tag:<position>`: {newest}");
        let mut ahead = format!("{tag}:");
        herald::Position::new(ms + 86_400_000, 0).write_compact(&mut ahead);
        let mut resumed = ann.subscribe("channel=channel:ahead&last=2", &[("last-event-id", &ahead)]).await;
        resumed.expect_reset("unknown_position").await;
        resumed.expect_ns(3..5).await;
    }
}

#[tokio::test]
async fn positions_past_either_end_of_the_id_space_are_answered_like_any_other() {
    for (engine, server, _redis) in engines().await {
        let mut p = server.client(Proto::H1).backend();
        let mut ann = server.client(Proto::H1).user("ann");
        let connected = ann.subscribe("channel=channel:ends", &[]).await.connected_id();
        let (tag, _) = connected.split_once(':').unwrap_or_default();
        p.publish_ns("channel:ends", 0..3).await;
        // Positions no event can have: the last there is, and the first (`0-0`).
        let mut last = format!("{tag}:");
        herald::Position::MAX.write_compact(&mut last);
        let first = format!("{tag}:0");
        let history = |q: String| {
            let mut p = p.clone();
            async move { p.get_json(&format!("/api/channels/channel:ends/history?{q}")).await }
        };
        assert_eq!(code(history(format!("after={last}")).await), (409, "unknown_position".into()), "{engine}");
        for order in ["newest", "oldest"] {
            let (status, answer) = history(format!("before={first}&order={order}")).await;
            let got = (status.as_u16(), &answer["events"], &answer["more"]);
            assert_eq!(got, (200, &json!([]), &json!(false)), "{engine}, {order}: {answer}");
        }
        // A stream resuming from the last position is ahead of the channel, as from any.
        let mut resumed = ann.subscribe("channel=channel:ends&last=2", &[("last-event-id", &last)]).await;
        resumed.expect_reset("unknown_position").await;
        resumed.expect_ns(1..3).await;
    }
}

#[tokio::test]
async fn last_writes_each_channels_last_events_before_the_live_ones_and_a_resume_wins() {
    for (engine, server, _redis) in engines().await {
        let mut p = server.client(Proto::H1).backend();
        p.publish_ns("channel:a", 0..5).await;
        p.publish_ns("channel:b", 10..13).await;
        let mut ann = server.client(Proto::H1).user("ann");
        let mut s = ann.subscribe("channel=channel:a&channel=channel:b&last=1&last=channel:a:2", &[]).await;
        let mut got: Vec<u64> = Vec::new();
        for _ in 0..3 {
            got.push(s.expect().await.data["n"].as_u64().unwrap_or(u64::MAX));
        }
        got.sort_unstable();
        assert_eq!(got, vec![3, 4, 12], "{engine}: a's last two, b's last one");
        p.publish_ns("channel:b", 13..14).await;
        let last = s.expect_ns(13..14).await;
        drop(s);

        // Reconnecting with its id: a and b resume (no `last` again), c is new and gets its last.
        p.publish_ns("channel:c", 20..23).await;
        p.publish_ns("channel:a", 5..6).await;
        let q = "channel=channel:a&channel=channel:b&channel=channel:c&last=2";
        let mut resumed = ann.subscribe(q, &[("last-event-id", &last)]).await;
        let mut got: Vec<u64> = Vec::new();
        for _ in 0..3 {
            got.push(resumed.expect().await.data["n"].as_u64().unwrap_or(u64::MAX));
        }
        got.sort_unstable();
        assert_eq!(got, vec![5, 21, 22], "{engine}: what a missed, and c's last two");
        p.publish_ns("channel:c", 23..24).await;
        resumed.expect_ns(23..24).await;
    }
}

#[tokio::test]
async fn deliver_last_turns_a_channel_into_current_state_then_updates() {
    for (engine, server, _redis) in engines().await {
        let mut p = server.client(Proto::H1).backend();
        let mut ann = server.client(Proto::H2c).user("ann");
        // Nothing published yet: nothing to deliver, and the stream opens.
        let mut empty = ann.subscribe("channel=prices:eur", &[]).await;
        p.publish_ns("prices:eur", 0..3).await;
        empty.expect_ns(0..3).await;

        let mut state = ann.subscribe("channel=prices:eur", &[]).await;
        let first = state.expect_ns(2..3).await;
        assert_ne!(first, state.connected_id(), "{engine}: the state event has its own id");
        p.publish_ns("prices:eur", 3..4).await;
        state.expect_ns(3..4).await;

        // `last=0` turns the default off; the next event is the first one.
        let mut live = ann.subscribe("channel=prices:eur&last=0", &[]).await;
        p.publish_ns("prices:eur", 4..5).await;
        live.expect_ns(4..5).await;

        // A resume that history cannot serve gets its reset, then the state.
        let mut reset = ann.subscribe("channel=prices:eur", &[("last-event-id", "not-ours")]).await;
        let ev = reset.expect().await;
        assert_eq!((ev.data["type"].as_str(), ev.data["reason"].as_str()), (Some("reset"), Some("unknown_position")));
        reset.expect_ns(4..5).await;
    }
}

#[tokio::test]
async fn a_stream_opened_with_last_while_events_pour_in_gets_each_event_once_in_order() {
    const EVENTS: u64 = 300;
    for (engine, server, _redis) in engines().await {
        let mut p = server.client(Proto::H2c).backend();
        p.publish_ns("channel:pour", 0..10).await;
        let publishing = tokio::spawn(async move {
            p.publish_ns("channel:pour", 10..EVENTS).await;
        });
        let mut ann = server.client(Proto::H1).user("ann");
        let mut streams = Vec::new();
        for _ in 0..5 {
            streams.push(ann.subscribe("channel=channel:pour&last=5", &[]).await);
        }
        for mut s in streams {
            let start = s.expect().await.data["n"].as_u64().unwrap_or(u64::MAX);
            assert!(start < EVENTS, "{engine}");
            s.expect_ns(start + 1..EVENTS).await;
        }
        publishing.await.unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test]
async fn bad_last_values_are_refused_with_invalid_last() {
    let server = on(None).await;
    let mut ann = server.client(Proto::H1).user("ann");
    for q in ["last=101", "last=x", "last=channel:zz:1", "last=channel:a:-1", "last=rooms:x:1"] {
        let resp = ann.open_events(&format!("channel=channel:a&{q}"), &[]).await;
        let (status, answer) = support::read_json(resp).await;
        let expected = if q.starts_with("last=rooms") { "invalid_channel" } else { "invalid_last" };
        assert_eq!((status.as_u16(), answer["error"]["code"].as_str()), (400, Some(expected)), "{q}");
    }
}

#[tokio::test]
async fn active_channels_and_a_users_connections_are_listed_across_nodes() {
    let redis = RedisServer::start().await;
    let (a, b) = (on(Some(redis.url())).await, on(Some(redis.url())).await);
    let _ann_a = a.client(Proto::H1).user("ann").subscribe("channel=channel:team-a&channel=user:ann", &[]).await;
    let _bob_b = b.client(Proto::H2c).user("bob").subscribe("channel=channel:team-a&channel=channel:x", &[]).await;
    let ann_channel = herald::ChannelName::parse("user:ann").unwrap_or_else(|e| panic!("{e}"));
    let ann_key = herald::Principal::User(std::sync::Arc::new(herald::UserIdentity {
        id: "ann".into(),
        name: None,
        subscribe: None,
        publish: None,
        expires_at: None,
    }));
    let _ann_b = b
        .herald
        .connect(herald::StreamRequest::new(ann_key, vec![ann_channel]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mut backend = a.client(Proto::H1).backend();
    let (status, listed) = backend.get_json("/api/channels?pattern=channel:team-*").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["channels"], json!([{"channel": "channel:team-a", "subscribers": 2}]));
    let (_, all) = backend.get_json("/api/channels").await;
    let names: Vec<&str> =
        all["channels"].as_array().into_iter().flatten().filter_map(|c| c["channel"].as_str()).collect();
    assert_eq!(names, ["channel:team-a", "channel:x", "user:ann"]);

    let (status, conns) = backend.get_json("/api/users/ann/connections").await;
    assert_eq!(status, 200, "{conns}");
    let conns = conns["connections"].as_array().cloned().unwrap_or_default();
    let seen: HashSet<(String, String)> = conns
        .iter()
        .map(|c| {
            (c["node"].as_str().unwrap_or_default().to_owned(), c["transport"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    let expected: HashSet<(String, String)> =
        [(a.herald.node_id().to_owned(), "sse".to_owned()), (b.herald.node_id().to_owned(), "library".to_owned())]
            .into_iter()
            .collect();
    assert_eq!(seen, expected);
    assert_eq!(conns[0]["channels"], json!(["channel:team-a", "user:ann"]), "oldest first");
    let opened = conns[0]["openedAt"].as_str().unwrap_or_default();
    assert!(humantime::parse_rfc3339(opened).is_ok(), "{opened}");

    // API keys only.
    let mut ann = a.client(Proto::H1).user("ann");
    assert_eq!(code(ann.get_json("/api/users/ann/connections").await), (403, "forbidden".into()));
    assert_eq!(code(ann.get_json("/api/channels").await), (403, "forbidden".into()));
    assert_eq!(code(a.client(Proto::H1).get_json("/api/channels").await), (401, "unauthorized".into()));
    assert_eq!(code(backend.get_json("/api/channels?pattern=").await), (400, "invalid_pattern".into()));
    assert_eq!(code(backend.get_json("/api/users/a%20b/connections").await), (400, "invalid_user".into()));
}

/// The `n` of the next `count` event frames of a WebSocket carrying one (`connected` and
/// command replies are passed over).
async fn ws_ns(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    count: usize,
) -> Vec<u64> {
    use futures_util::StreamExt;
    let mut ns = Vec::new();
    while ns.len() < count {
        let frame = support::within("a WebSocket frame", ws.next()).await;
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = frame else { continue };
        let v: Value = serde_json::from_str(text.as_str()).unwrap_or_else(|e| panic!("{e}: {text}"));
        ns.extend(v["data"]["n"].as_u64());
    }
    ns
}

#[tokio::test]
async fn a_websockets_open_query_takes_last_for_its_stream_or_its_first_subscribe() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::secured(|c| {
        quiet(c, None);
        c.websocket = true;
    })
    .await;
    let mut p = server.client(Proto::H1).backend();
    p.publish_ns("channel:w", 0..4).await;
    let open = |query: &str| {
        let mut req =
            format!("ws://{}/api/ws?{query}", server.addr).into_client_request().unwrap_or_else(|e| panic!("{e}"));
        let bearer = format!("Bearer {}", support::token("ann")).parse().unwrap_or_else(|e| panic!("{e}"));
        req.headers_mut().insert("authorization", bearer);
        async move {
            support::within("the upgrade", tokio_tungstenite::connect_async(req))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .0
        }
    };
    let mut ws = open("channel=channel:w&last=2").await;
    assert_eq!(ws_ns(&mut ws, 2).await, vec![2, 3]);

    let mut later = open("last=1").await;
    let subscribe = json!({"type": "subscribe", "id": "r1", "channels": ["channel:w"]});
    later
        .send(tokio_tungstenite::tungstenite::Message::text(subscribe.to_string()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ws_ns(&mut later, 1).await, vec![3]);
    p.publish_ns("channel:w", 4..5).await;
    assert_eq!(ws_ns(&mut later, 1).await, vec![4]);
    assert_eq!(ws_ns(&mut ws, 1).await, vec![4]);
}

/// A cookie-session application's hooks: `sid=s-ann` is Ann, `channel:secret` is refused.
async fn hook_app() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::routing::post;
    async fn connect(headers: axum::http::HeaderMap) -> axum::Json<Value> {
        let ann = headers.get("cookie").and_then(|c| c.to_str().ok()).is_some_and(|c| c.contains("sid=s-ann"));
        axum::Json(if ann {
            json!({"result": {"user": {"id": "ann", "name": "Ann"}}})
        } else {
            json!({"error": {"code": "login_required", "message": "log in first", "status": 401}})
        })
    }
    async fn subscribe(axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
        axum::Json(if body["channel"] == "channel:secret" {
            json!({"error": {"code": "not_member", "message": "members only"}})
        } else {
            json!({"result": {}})
        })
    }
    let app = axum::Router::new().route("/connect", post(connect)).route("/subscribe", post(subscribe));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
    (addr, tokio::spawn(async move { axum::serve(listener, app).await.unwrap_or_default() }))
}

#[tokio::test]
async fn a_history_read_asks_the_backend_hooks_as_a_stream_would() {
    let (app, _task) = hook_app().await;
    let server = TestServer::secured(|c| {
        quiet(c, None);
        c.hooks.connect_url = Some(format!("http://{app}/connect"));
        c.hooks.subscribe_url = Some(format!("http://{app}/subscribe"));
        c.hooks.cookies = vec!["sid".to_owned()];
    })
    .await;
    let mut p = server.client(Proto::H1).backend();
    p.publish_ns("user:ann", 0..1).await;
    p.publish_ns("channel:secret", 0..1).await;
    // No JWT: the connect hook names the user from the application's own session cookie.
    let mut browser = server.client(Proto::H1).with_header("cookie", "sid=s-ann");
    let (status, own) = browser.get_json("/api/channels/user:ann/history").await;
    assert_eq!((status.as_u16(), page(&own).0), (200, vec![0]), "{own}");
    assert_eq!(code(browser.get_json("/api/channels/channel:secret/history").await), (403, "not_member".into()));
    let stranger = server.client(Proto::H1).get_json("/api/channels/channel:lobby/history").await;
    assert_eq!(code(stranger), (401, "login_required".into()));
    // An API key is the application itself: not asked about.
    assert_eq!(p.get_json("/api/channels/channel:secret/history").await.0, 200);
}

/// Sends `GET <path>` as `user` on a raw HTTP/1.1 connection and reads the answer's head
/// alone, never its body: a client that asks and does not read.
async fn ask_and_read_nothing(addr: std::net::SocketAddr, path: &str, user: &str) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", support::token(user));
    tcp.write_all(head.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = support::within("the answer's head", tcp.read(&mut buf)).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(&got[9..12]).parse().unwrap_or(0);
    (status, tcp)
}

#[tokio::test]
async fn a_client_that_reads_none_of_its_large_history_pages_holds_eight_at_most() {
    // Each page is about 6 MB: a client asking for pages without reading them made the node
    // hold every one.
    let server = on(None).await;
    let mut p = server.client(Proto::H1).backend();
    for n in 0..100 {
        p.publish(&json!({"channel": "channel:big", "type": "big", "n": n, "text": "x".repeat(60_000)})).await;
    }
    let path = "/api/channels/channel:big/history?limit=100";
    let mut unread = Vec::new();
    for _ in 0..8 {
        let (status, tcp) = ask_and_read_nothing(server.addr, path, "ann").await;
        assert_eq!(status, 200);
        unread.push(tcp);
    }
    // The ninth is refused before anything is read for it, over either protocol; others are
    // not held up.
    for proto in [Proto::H1, Proto::H2c] {
        let refused = server.client(proto).user("ann").get_json(path).await;
        assert_eq!(code(refused.clone()), (429, "rate_limited".to_owned()), "{proto:?}: {}", refused.1);
        let (status, answer) = server.client(proto).user("bob").get_json(path).await;
        assert_eq!((status.as_u16(), page(&answer).0.len()), (200, 100), "{proto:?}");
    }
    // A presence list may be as large: it waits for the same slots.
    let presence = server.client(Proto::H1).user("ann").get_json("/api/channels/channel:big/presence").await;
    assert_eq!(code(presence), (429, "rate_limited".to_owned()));
    // One read to its end, or given up, gives its place back.
    drop(unread.pop());
    support::within("a slot to come back", async {
        while server.client(Proto::H1).user("ann").get_json(path).await.0 != 200 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
