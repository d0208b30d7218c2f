//! Lifecycle webhooks (`docs/backend.md`) against a real application: an axum app started by
//! the test on a free port receives them, checks each request's `X-Herald-Signature` with its
//! own HMAC (ring's, not Herald's code), and can fail requests or hold them.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald::Config;
use serde_json::{Value, json};
use support::{Proto, RedisServer, TestServer, within};
use tokio::sync::{Notify, Semaphore};

const SECRET: &str = "webhook-secret-0123456789";

/// What the app received.
#[derive(Default)]
struct Inbox {
    /// Every occurrence, in the order the requests arrived, with the batch's `node`.
    events: Mutex<Vec<Value>>,
    /// Requests whose signature did not verify.
    forged: AtomicUsize,
    /// Requests received, answered or not.
    requests: AtomicUsize,
    /// The statuses the next requests fail with, in order (then they succeed).
    fail: Mutex<Vec<StatusCode>>,
    /// The occurrence ids of the requests failed.
    failed_ids: Mutex<Vec<String>>,
    /// Requests wait for a permit when `hold` is set.
    hold: Option<Semaphore>,
    arrived: Notify,
}

struct App {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    _task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start(inbox: Inbox) -> Self {
        let inbox = Arc::new(inbox);
        let router = axum::Router::new().route("/webhooks", post(receive)).with_state(Arc::clone(&inbox));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, inbox, _task: task }
    }

    fn configure(&self, c: &mut Config) {
        c.webhooks.url = Some(format!("http://{}/webhooks", self.addr));
        c.webhooks.secret = Some(SECRET.to_owned());
    }

    fn events(&self) -> Vec<Value> {
        self.inbox.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Waits until the occurrences received satisfy `done`.
    async fn until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        within(what, async {
            loop {
                let arrived = self.inbox.arrived.notified();
                let events = self.events();
                if done(&events) {
                    return events;
                }
                arrived.await;
            }
        })
        .await
    }
}

/// Checks the signature as an application would: HMAC-SHA256 of `<t>.<body>`, hex.
fn signed(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers.get("x-herald-signature").and_then(|v| v.to_str().ok()) else { return false };
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_owned()),
            Some(("v1", x)) => v1 = Some(x.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let fresh = t.parse::<u64>().is_ok_and(|t| support::now().abs_diff(t) <= 300);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let expected: String = ring::hmac::sign(&key, &message).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    fresh && expected == v1
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    inbox.requests.fetch_add(1, Ordering::SeqCst);
    inbox.arrived.notify_waiters();
    if let Some(hold) = &inbox.hold {
        let _ = hold.acquire().await.map(|p| p.forget());
    }
    let batch: Value = serde_json::from_slice(&body).unwrap_or_default();
    let failing = inbox.fail.lock().ok().and_then(|mut fail| (!fail.is_empty()).then(|| fail.remove(0)));
    if let Some(status) = failing {
        if let (Ok(mut failed), Some(list)) = (inbox.failed_ids.lock(), batch["events"].as_array()) {
            failed.extend(list.iter().filter_map(|e| e["id"].as_str().map(str::to_owned)));
        }
        return status;
    }
    if !signed(&headers, &body) {
        inbox.forged.fetch_add(1, Ordering::SeqCst);
    }
    if let (Ok(mut events), Some(list)) = (inbox.events.lock(), batch["events"].as_array()) {
        for event in list {
            let mut event = event.clone();
            event["node"] = batch["node"].clone();
            events.push(event);
        }
    }
    inbox.arrived.notify_waiters();
    StatusCode::NO_CONTENT
}

/// Waits until `key`, a channel's occupancy set in Redis, names `nodes` nodes.
async fn until_held_by(redis: &RedisServer, key: &str, nodes: usize) {
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("redis: {e}"));
    let mut conn = client.get_multiplexed_async_connection().await.unwrap_or_else(|e| panic!("redis: {e}"));
    within("the nodes holding the channel", async {
        loop {
            let held: usize = redis::cmd("ZCARD").arg(key).query_async(&mut conn).await.unwrap_or_default();
            if held == nodes {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn of<'a>(events: &'a [Value], kind: &str, field: &str, value: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind && e[field] == value).collect()
}

#[tokio::test]
async fn on_redis_each_occurrence_arrives_once_signed_and_in_order_per_channel() {
    let redis = RedisServer::start().await;
    let app = App::start(Inbox::default()).await;
    let node = || {
        TestServer::with(|c| {
            app.configure(c);
            c.redis_url = Some(redis.url());
        })
    };
    let (a, b) = (node().await, node().await);
    let (a_id, b_id) = (a.herald.node_id().to_owned(), b.herald.node_id().to_owned());

    let first = a.client(Proto::H1).subscribe("channel=channel:lobby", &[]).await;
    let first_id = first.connection_id();
    app.until("the lobby occupied", |e| !of(e, "channel.occupied", "channel", "channel:lobby").is_empty()).await;
    let second = b.client(Proto::H2c).subscribe("channel=channel:lobby", &[]).await;
    let second_id = second.connection_id();
    app.until("the second connection", |e| !of(e, "connection.opened", "connection", &second_id).is_empty()).await;
    // Both nodes hold the lobby in Redis before the first subscriber leaves.
    until_held_by(&redis, "realtime:channel:{lobby}:occ", 2).await;
    drop(first);
    app.until("the first connection closed", |e| !of(e, "connection.closed", "connection", &first_id).is_empty()).await;
    drop(second);
    app.until("the lobby vacated", |e| !of(e, "channel.vacated", "channel", "channel:lobby").is_empty()).await;

    // Each node's occurrences arrive in the order they happened there, and each node's
    // occupancy task handles one change at a time: once a later channel's occupancy has
    // arrived from both nodes, anything the lobby could have caused twice would have too.
    let _a_marker = a.client(Proto::H1).subscribe("channel=channel:marker-a", &[]).await;
    let _b_marker = b.client(Proto::H1).subscribe("channel=channel:marker-b", &[]).await;
    let events = app
        .until("both markers", |e| {
            !of(e, "channel.occupied", "channel", "channel:marker-a").is_empty()
                && !of(e, "channel.occupied", "channel", "channel:marker-b").is_empty()
        })
        .await;

    let lobby: Vec<(&Value, &Value, &Value)> = events
        .iter()
        .filter(|e| e["channel"] == "channel:lobby")
        .map(|e| (&e["type"], &e["node"], &e["seq"]))
        .collect();
    let (occupied, vacated) = (lobby[0].2.as_u64().unwrap_or(0), lobby.get(1).map_or(0, |l| l.2.as_u64().unwrap_or(0)));
    assert_eq!(
        lobby,
        vec![
            (&json!("channel.occupied"), &json!(a_id), &json!(occupied)),
            (&json!("channel.vacated"), &json!(b_id), &json!(vacated)),
        ],
        "occupied once by the node of the first subscriber, vacated once by the node of the last"
    );
    assert!(occupied < vacated, "the sequence orders them: {occupied} < {vacated}");
    for (id, node) in [(&first_id, &a_id), (&second_id, &b_id)] {
        for kind in ["connection.opened", "connection.closed"] {
            let seen = of(&events, kind, "connection", id);
            assert_eq!(seen.len(), 1, "{kind} of {id} once: {seen:?}");
            assert_eq!(&seen[0]["node"], &json!(node));
            assert_eq!(seen[0]["channels"], json!(["channel:lobby"]));
        }
    }
    let mut ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "every occurrence has an id of its own");
    assert_eq!(app.inbox.forged.load(Ordering::SeqCst), 0, "every request was signed with the secret");
}

#[tokio::test]
async fn users_online_and_offline_are_reported_once_across_two_nodes() {
    let redis = RedisServer::start().await;
    let app = App::start(Inbox::default()).await;
    let node = || {
        TestServer::secured(|c| {
            app.configure(c);
            c.redis_url = Some(redis.url());
            c.presence_grace = std::time::Duration::from_millis(200);
            c.webhooks.events =
                vec![herald::config::WebhookEvent::PresenceOnline, herald::config::WebhookEvent::PresenceOffline];
        })
    };
    let (a, b) = (node().await, node().await);
    let tab1 = a.client(Proto::H1).user("ann").subscribe("channel=channel:lobby", &[]).await;
    let tab2 = b.client(Proto::H1).user("ann").subscribe("channel=channel:lobby", &[]).await;
    app.until("ann online", |e| !of(e, "presence.online", "user", "ann").is_empty()).await;
    drop(tab1);
    drop(tab2);
    let events = app.until("ann offline", |e| !of(e, "presence.offline", "user", "ann").is_empty()).await;
    let kinds: Vec<&Value> = events.iter().map(|e| &e["type"]).collect();
    assert_eq!(kinds, [&json!("presence.online"), &json!("presence.offline")], "{events:?}");
    assert_eq!((&events[0]["channel"], &events[0]["userName"]), (&json!("channel:lobby"), &json!("User ann")));
}

#[tokio::test]
async fn a_backend_that_fails_then_recovers_gets_the_same_occurrences_again() {
    // A server error, then a client error: neither is a 2xx, so both are tried again.
    let fail = Mutex::new(vec![StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_REQUEST]);
    let app = App::start(Inbox { fail, ..Inbox::default() }).await;
    let server = TestServer::with(|c| {
        app.configure(c);
        c.webhooks.retry_backoff = std::time::Duration::from_millis(20);
        c.webhooks.events = vec![herald::config::WebhookEvent::ConnectionOpened];
    })
    .await;
    let stream = server.client(Proto::H1).subscribe("channel=channel:lobby", &[]).await;
    let id = stream.connection_id();
    let events =
        app.until("the connection opened", |e| !of(e, "connection.opened", "connection", &id).is_empty()).await;
    let taken = of(&events, "connection.opened", "connection", &id);
    assert_eq!(taken.len(), 1);
    let failed = app.inbox.failed_ids.lock().map(|f| f.clone()).unwrap_or_default();
    let same = taken[0]["id"].as_str().unwrap_or_default();
    assert_eq!(failed, [same, same], "two failed tries carried the same occurrence, with the same id");
    let mut metrics = server.client(Proto::H1);
    assert!(metrics.metric("herald_webhook_retries_total").await >= 2.0);
    assert_eq!(metrics.metric("herald_webhook_events_total{result=\"failed\"}").await, 0.0);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_what_does_not_fit() {
    let app = App::start(Inbox { hold: Some(Semaphore::new(0)), ..Inbox::default() }).await;
    let server = TestServer::with(|c| {
        app.configure(c);
        c.webhooks.queue_size = 2;
        c.webhooks.max_batch = 1;
        c.webhooks.events = vec![herald::config::WebhookEvent::ConnectionOpened];
    })
    .await;
    let mut metrics = server.client(Proto::H1);
    // The first occurrence is taken by the delivery task, which then waits on the app.
    let _first = server.client(Proto::H1).subscribe("channel=channel:a", &[]).await;
    within("the first request", async {
        while app.inbox.requests.load(Ordering::SeqCst) == 0 {
            app.inbox.arrived.notified().await;
        }
    })
    .await;
    let mut streams = Vec::new();
    for n in 0..5 {
        streams.push(server.client(Proto::H1).subscribe(&format!("channel=channel:n{n}"), &[]).await);
    }
    // Two fit in the queue; three do not.
    assert_eq!(metrics.metric("herald_webhook_events_total{result=\"dropped\"}").await, 3.0);
    assert_eq!(metrics.metric("herald_webhook_queue_depth").await, 2.0);
    if let Some(hold) = &app.inbox.hold {
        hold.add_permits(10);
    }
    let events = app.until("the queued ones", |e| e.len() == 3).await;
    let opened: Vec<&Value> = events.iter().map(|e| &e["channels"][0]).collect();
    assert_eq!(opened, [&json!("channel:a"), &json!("channel:n0"), &json!("channel:n1")]);
    assert_eq!(metrics.metric("herald_webhook_events_total{result=\"sent\"}").await, 3.0);
}

#[tokio::test]
async fn on_one_node_a_channel_shared_by_two_streams_is_occupied_and_vacated_once() {
    let app = App::start(Inbox::default()).await;
    let server = TestServer::with(|c| {
        app.configure(c);
        c.webhooks.events =
            vec![herald::config::WebhookEvent::ChannelOccupied, herald::config::WebhookEvent::ChannelVacated];
    })
    .await;
    let one = server.client(Proto::H1).subscribe("channel=channel:lobby", &[]).await;
    let two = server.client(Proto::H1).subscribe("channel=channel:lobby&channel=channel:side", &[]).await;
    app.until("the side channel", |e| !of(e, "channel.occupied", "channel", "channel:side").is_empty()).await;
    drop(one);
    drop(two);
    let events = app
        .until("both vacated", |e| {
            of(e, "channel.vacated", "channel", "channel:side").len() == 1
                && of(e, "channel.vacated", "channel", "channel:lobby").len() == 1
        })
        .await;
    let lobby: Vec<&Value> = events.iter().filter(|e| e["channel"] == "channel:lobby").map(|e| &e["type"]).collect();
    assert_eq!(lobby, [&json!("channel.occupied"), &json!("channel.vacated")]);
}

#[tokio::test]
async fn a_node_that_reports_only_occupied_channels_never_sends_their_vacating() {
    let app = App::start(Inbox::default()).await;
    let server = TestServer::with(|c| {
        app.configure(c);
        c.webhooks.events = vec![herald::config::WebhookEvent::ChannelOccupied];
    })
    .await;
    drop(server.client(Proto::H1).subscribe("channel=channel:first", &[]).await);
    let _second = server.client(Proto::H1).subscribe("channel=channel:second", &[]).await;
    app.until("both channels", |e| of(e, "channel.occupied", "channel", "channel:second").len() == 1).await;
    // Occupancy is tracked (for `channel.occupied`), so both channels are vacated in the end:
    // the first as its stream goes, both as the node lets go of its channels. Settling sends
    // everything queued, so any `channel.vacated` would have arrived.
    server.herald.settle_webhooks(std::time::Duration::from_secs(10)).await;
    let mut kinds: Vec<String> = app.events().iter().map(|e| format!("{} {}", e["type"], e["channel"])).collect();
    kinds.sort();
    assert_eq!(kinds, [r#""channel.occupied" "channel:first""#, r#""channel.occupied" "channel:second""#]);
}

#[tokio::test]
async fn events_are_reported_published_only_where_their_namespace_asks() {
    let app = App::start(Inbox::default()).await;
    let server = TestServer::secured(|c| {
        app.configure(c);
        c.webhooks.events = vec![herald::config::WebhookEvent::EventPublished];
        c.namespaces.insert(
            "orders".to_owned(),
            herald::config::NamespaceConfig { publish_webhook: Some(true), ..Default::default() },
        );
    })
    .await;
    let mut backend = server.client(Proto::H1).backend();
    backend.publish(&json!({"channel": "channel:lobby", "type": "chat", "text": "not reported"})).await;
    let ack = backend.publish(&json!({"channel": "orders:42", "type": "paid", "amount": 12})).await;
    let events = app.until("the order", |e| !e.is_empty()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0]["event"];
    assert_eq!((&event["id"], &event["type"], &event["amount"]), (&ack["id"], &json!("paid"), &json!(12)));
    assert_eq!(event["channels"], json!(["orders:42"]));
}

#[tokio::test]
async fn a_node_that_stops_lets_go_of_its_channels_and_sends_what_is_queued_first() {
    let app = App::start(Inbox::default()).await;
    let server = TestServer::with(|c| {
        app.configure(c);
        c.drain_timeout = std::time::Duration::from_secs(5);
    })
    .await;
    let stream = server.client(Proto::H1).subscribe("channel=channel:lobby", &[]).await;
    let id = stream.connection_id();
    app.until("the lobby occupied", |e| !of(e, "channel.occupied", "channel", "channel:lobby").is_empty()).await;
    server.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
    // Delivered before the server's run returned: no wait here.
    let events = app.events();
    assert_eq!(of(&events, "connection.closed", "connection", &id).len(), 1, "{events:?}");
    assert_eq!(of(&events, "channel.vacated", "channel", "channel:lobby").len(), 1, "{events:?}");
}
