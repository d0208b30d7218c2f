//! Backend hooks (`docs/backend.md`) against a real application: an axum app started by the
//! test on a free port, with cookie sessions and no JWTs, that Herald asks before a stream
//! opens, before it follows a channel and before a user's event is published.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use herald::Config;
use serde_json::{Value, json};
use support::{API_KEY, Proto, SECRET, TestServer, token};

/// Every hook request the app received: its path, its headers and its body, as text.
type Seen = Arc<Mutex<Vec<String>>>;

/// The application: sessions by the `sid` cookie (`s-ann` is Ann), members-only
/// `channel:secret`, a publish hook that moderates `text`, and a hook that answers too late.
struct App {
    addr: SocketAddr,
    seen: Seen,
    _task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start() -> Self {
        let seen = Seen::default();
        let router = routes(&seen);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, seen, _task: task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Points all three hooks of `c` at this app.
    fn hooks_of(&self, c: &mut Config) {
        c.hooks.connect_url = Some(self.url("/connect"));
        c.hooks.subscribe_url = Some(self.url("/subscribe"));
        c.hooks.publish_url = Some(self.url("/publish"));
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The app's hook routes, recording every request in `seen`.
fn routes(seen: &Seen) -> axum::Router {
    axum::Router::new()
        .route("/connect", post(connect))
        .route("/subscribe", post(subscribe))
        .route("/publish", post(publish))
        .route("/slow", post(slow))
        .with_state(Arc::clone(seen))
}

fn record(seen: &Seen, path: &str, headers: &HeaderMap, body: &Value) {
    let mut text = format!("POST {path}\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    text.push_str(&body.to_string());
    if let Ok(mut s) = seen.lock() {
        s.push(text);
    }
}

/// The session's user, from the `sid` cookie.
fn session(headers: &HeaderMap) -> Option<Value> {
    let cookies = headers.get("cookie")?.to_str().ok()?;
    cookies.split(';').map(str::trim).find(|c| *c == "sid=s-ann").map(|_| json!({"id": "ann", "name": "Ann"}))
}

async fn connect(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&seen, "/connect", &headers, &body);
    Json(match session(&headers) {
        Some(user) => json!({"result": {"user": user, "channels": ["user:ann"]}}),
        None => json!({"error": {"code": "login_required", "message": "log in first", "status": 401}}),
    })
}

async fn subscribe(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&seen, "/subscribe", &headers, &body);
    Json(if body["channel"] == "channel:secret" {
        json!({"error": {"code": "not_member", "message": "members only"}})
    } else {
        json!({"result": {}})
    })
}

async fn publish(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&seen, "/publish", &headers, &body);
    let Some(user) = session(&headers) else {
        return Json(json!({"error": {"code": "login_required", "message": "log in first", "status": 401}}));
    };
    let text = body["data"]["text"].as_str().unwrap_or_default().replace("darn", "****");
    Json(json!({"result": {"user": user, "data": {"text": text, "moderated": true}}}))
}

/// Answers long after Herald's `hooks.timeout`: the slowness is the thing under test.
async fn slow(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&seen, "/slow", &headers, &body);
    tokio::time::sleep(Duration::from_secs(30)).await;
    Json(json!({"result": {}}))
}

/// A URL nothing listens on.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
    drop(listener);
    format!("http://{addr}/connect")
}

/// Herald with the app's hooks, passing the `sid` cookie and the `x-tenant` header.
async fn herald(configure: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::secured(|c| {
        support::no_presence(c);
        c.hooks.cookies = vec!["sid".to_owned()];
        c.hooks.headers = vec!["x-tenant".to_owned()];
        configure(c);
    })
    .await
}

#[tokio::test]
async fn a_cookie_session_app_without_jwts_names_the_user_of_a_stream_and_of_its_events() {
    let app = App::start().await;
    let server = herald(|c| app.hooks_of(c)).await;
    let mut browser = server.client(Proto::H1).with_header("cookie", "sid=s-ann").with_header("x-tenant", "acme");
    let mut stream = browser.subscribe("channel=channel:lobby", &[]).await;
    let connected = stream.connected.clone().map(|c| c.data).unwrap_or_default();
    assert_eq!((&connected["userId"], &connected["userName"]), (&json!("ann"), &json!("Ann")));
    assert_eq!(connected["channels"], json!(["channel:lobby", "user:ann"]), "the connect hook's channel is joined");

    let (status, _) = browser
        .post_json("/api/publish", &json!({"channel": "channel:lobby", "type": "chat", "text": "darn it"}))
        .await;
    assert_eq!(status.as_u16(), 200);
    let ev = stream.expect().await;
    assert_eq!((&ev.data["userId"], &ev.data["userName"]), (&json!("ann"), &json!("Ann")));
    assert_eq!((&ev.data["text"], &ev.data["moderated"]), (&json!("**** it"), &json!(true)));

    let seen = app.requests();
    let connect = seen.iter().find(|r| r.starts_with("POST /connect")).cloned().unwrap_or_default();
    assert!(connect.contains("cookie: sid=s-ann") && connect.contains("x-tenant: acme"), "{connect}");
    assert!(
        connect.contains(r#""channels":["channel:lobby"]"#) && connect.contains(r#""transport":"sse""#),
        "{connect}"
    );
    assert!(connect.contains(r#""ip":"127.0.0.1""#) && connect.contains(r#""user":null"#), "{connect}");
    assert!(seen.iter().any(|r| r.starts_with("POST /subscribe") && r.contains(r#""channel":"channel:lobby""#)));
    assert!(!seen.iter().any(|r| r.starts_with("POST /subscribe") && r.contains("user:ann")), "{seen:?}");
}

#[tokio::test]
async fn a_denial_reaches_the_client_with_the_apps_status_and_code() {
    let app = App::start().await;
    let server = herald(|c| app.hooks_of(c)).await;
    let resp = server.client(Proto::H1).open_events("channel=channel:lobby", &[]).await;
    let (status, body) = support::read_json(resp).await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (401, &json!("login_required")));
    assert_eq!(body["error"]["message"], "log in first");

    let mut ann = server.client(Proto::H1).with_header("cookie", "sid=s-ann");
    let resp = ann.open_events("channel=channel:lobby&channel=channel:secret", &[]).await;
    let (status, body) = support::read_json(resp).await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (403, &json!("not_member")));
    let (status, body) = server
        .client(Proto::H1)
        .user("bob")
        .post_json("/api/publish", &json!({"channel": "channel:lobby", "type": "chat"}))
        .await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (401, &json!("login_required")), "the publish hook's no");
    let denied = ann.metric(r#"herald_hook_requests_total{hook="subscribe",result="denied"}"#).await;
    assert_eq!(denied, 1.0);
    let refused = ann.metric(r#"herald_subscribe_refused_total{reason="hook_denied"}"#).await;
    assert_eq!(refused, 2.0);
    let refused = ann.metric(r#"herald_publish_refused_total{reason="hook_denied"}"#).await;
    assert_eq!(refused, 1.0);
}

#[tokio::test]
async fn a_hook_that_answers_too_late_refuses_the_stream_with_hook_unavailable() {
    let app = App::start().await;
    let server = herald(|c| {
        c.hooks.connect_url = Some(app.url("/slow"));
        c.hooks.timeout = Duration::from_millis(300);
    })
    .await;
    let mut client = server.client(Proto::H1).user("ann");
    let resp = client.open_events("channel=channel:lobby", &[]).await;
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let (status, body) = support::read_json(resp).await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (503, &json!("hook_unavailable")));
    assert_eq!(client.metric(r#"herald_hook_requests_total{hook="connect",result="failed"}"#).await, 1.0);
    assert_eq!(app.requests().len(), 1, "the hook was asked");
}

#[tokio::test]
async fn a_dead_hook_refuses_the_stream_and_a_publish_with_hook_unavailable() {
    let dead = dead_url().await;
    let server = herald(|c| {
        c.hooks.connect_url = Some(dead.clone());
        c.hooks.publish_url = Some(dead.clone());
    })
    .await;
    let mut ann = server.client(Proto::H1).user("ann");
    let (status, body) = support::read_json(ann.open_events("channel=channel:lobby", &[]).await).await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (503, &json!("hook_unavailable")));
    let (status, body) = ann.post_json("/api/publish", &json!({"channel": "channel:lobby", "type": "chat"})).await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (503, &json!("hook_unavailable")));
    // A backend's own stream and publish are not the hooks' business.
    let _stream = server.client(Proto::H1).backend().subscribe("channel=channel:lobby", &[]).await;
    let (status, _) = server
        .client(Proto::H1)
        .backend()
        .post_json("/api/publish", &json!({"channel": "channel:lobby", "type": "t"}))
        .await;
    assert_eq!(status.as_u16(), 200);
}

#[tokio::test]
async fn fail_open_lets_a_stream_through_a_dead_hook() {
    let dead = dead_url().await;
    let server = herald(|c| {
        c.hooks.connect_url = Some(dead.clone());
        c.hooks.fail_open = true;
    })
    .await;
    let stream = server.client(Proto::H1).user("ann").subscribe("channel=channel:lobby", &[]).await;
    assert_eq!(stream.connected.map(|c| c.data["userId"].clone()), Some(json!("ann")), "the token's user, unchanged");
}

#[tokio::test]
async fn the_hooks_never_receive_the_api_keys_the_jwt_secret_or_heralds_token() {
    let app = App::start().await;
    let server = herald(|c| app.hooks_of(c)).await;
    let jwt = token("ann");
    let cookie = format!("sid=s-ann; herald_token={jwt}");
    let mut ann = server.client(Proto::H1).with_header("cookie", &cookie);
    let _stream = ann.subscribe("channel=channel:lobby", &[]).await;
    let mut bearer = server.client(Proto::H1).user("bob").with_header("cookie", "sid=s-ann");
    let (status, _) = bearer.post_json("/api/publish", &json!({"channel": "channel:lobby", "type": "chat"})).await;
    assert_eq!(status.as_u16(), 200);
    let mut backend = server.client(Proto::H1).backend().with_header("cookie", "sid=s-ann");
    let (status, _) = backend.post_json("/api/publish", &json!({"channel": "channel:lobby", "type": "t"})).await;
    assert_eq!(status.as_u16(), 200);

    let seen = app.requests();
    assert!(seen.iter().any(|r| r.starts_with("POST /publish")), "{seen:?}");
    for request in &seen {
        for secret in [API_KEY, SECRET, jwt.as_str(), "herald_token", "authorization", "x-api-key"] {
            assert!(!request.to_ascii_lowercase().contains(&secret.to_ascii_lowercase()), "{secret} in {request}");
        }
    }
}

#[tokio::test]
async fn an_answer_is_reused_for_an_identical_request_within_cache_ttl() {
    let app = App::start().await;
    let server = herald(|c| {
        c.hooks.connect_url = Some(app.url("/connect"));
        c.hooks.cache_ttl = Duration::from_secs(60);
    })
    .await;
    let mut ann = server.client(Proto::H1).with_header("cookie", "sid=s-ann");
    for _ in 0..2 {
        let stream = ann.subscribe("channel=channel:lobby", &[]).await;
        assert_eq!(stream.connected.map(|c| c.data["userId"].clone()), Some(json!("ann")));
    }
    assert_eq!(app.requests().len(), 1);
    assert_eq!(ann.metric(r#"herald_hook_requests_total{hook="connect",result="cached"}"#).await, 1.0);
}

#[tokio::test]
async fn a_cached_answer_is_never_given_to_a_request_with_other_cookies() {
    let app = App::start().await;
    let server = herald(|c| {
        c.hooks.connect_url = Some(app.url("/connect"));
        c.hooks.cache_ttl = Duration::from_secs(60);
    })
    .await;
    let ann = server.client(Proto::H1).with_header("cookie", "sid=s-ann").subscribe("channel=channel:lobby", &[]).await;
    assert_eq!(ann.connected.map(|c| c.data["userId"].clone()), Some(json!("ann")));
    // The same request with another session's cookie, or with none: the app is asked, and
    // says no, instead of the stream opening as Ann's.
    for cookie in ["sid=s-bob", "sid=s-ann-2", "other=s-ann"] {
        let resp =
            server.client(Proto::H1).with_header("cookie", cookie).open_events("channel=channel:lobby", &[]).await;
        let (status, body) = support::read_json(resp).await;
        assert_eq!((status.as_u16(), &body["error"]["code"]), (401, &json!("login_required")), "{cookie}");
    }
    let resp = server.client(Proto::H1).open_events("channel=channel:lobby", &[]).await;
    assert_eq!(resp.status(), 401, "no cookie at all");
    // `other` is not a cookie passed to hooks: that request and the cookie-less one are the
    // same request to the app, asked once (a denial is cached too).
    assert_eq!(app.requests().len(), 4);
}

#[tokio::test]
async fn a_publish_too_long_to_remember_is_asked_about_every_time() {
    let app = App::start().await;
    let server = herald(|c| {
        c.hooks.publish_url = Some(app.url("/publish"));
        c.hooks.cache_ttl = Duration::from_secs(60);
    })
    .await;
    let mut ann =
        server.client(Proto::H1).with_header("cookie", "sid=s-ann").with_header("content-type", "application/json");
    // Twice the same short publish: asked once. Twice the same publish of 5,000 bytes: asked
    // twice (a cache of long requests, each unique, would grow to gigabytes).
    for (text, asked) in [("hi".to_owned(), 1), ("x".repeat(5_000), 3)] {
        for _ in 0..2 {
            let (status, _) =
                ann.post_json("/api/publish", &json!({"channel": "channel:lobby", "type": "chat", "text": text})).await;
            assert_eq!(status, 200);
        }
        assert_eq!(app.requests().len(), asked, "after two publishes of {} bytes", text.len());
    }
}

#[tokio::test]
async fn a_cached_answer_is_asked_again_once_cache_ttl_has_passed() {
    let app = App::start().await;
    let ttl = Duration::from_millis(300);
    let server = herald(|c| {
        c.hooks.connect_url = Some(app.url("/connect"));
        c.hooks.cache_ttl = ttl;
    })
    .await;
    let mut ann = server.client(Proto::H1).with_header("cookie", "sid=s-ann");
    drop(ann.subscribe("channel=channel:lobby", &[]).await);
    assert_eq!(app.requests().len(), 1);
    // The passing of `cache_ttl` is what is under test.
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let stream = ann.subscribe("channel=channel:lobby", &[]).await;
    assert_eq!(stream.connected.map(|c| c.data["userId"].clone()), Some(json!("ann")));
    assert_eq!(app.requests().len(), 2, "the answer was too old to be used");
}

/// Opens `/api/ws?<query>` with a cookie; the socket, or the refusal's status.
async fn websocket(
    server: &TestServer,
    query: &str,
    cookie: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req =
        format!("ws://{}/api/ws?{query}", server.addr).into_client_request().unwrap_or_else(|e| panic!("{e}"));
    req.headers_mut().insert("cookie", cookie.parse().unwrap_or_else(|e| panic!("{e}")));
    let (ws, _) = support::within("the upgrade", tokio_tungstenite::connect_async(req))
        .await
        .unwrap_or_else(|e| panic!("upgrade: {e}"));
    ws
}

/// The next text frame of a socket, as JSON.
async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match support::within("a frame", ws.next()).await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("{e}")),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_websocket_is_named_by_the_connect_hook_and_its_later_subscribe_is_asked_about() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let app = App::start().await;
    let server = herald(|c| {
        app.hooks_of(c);
        c.websocket = true;
    })
    .await;
    let mut ws = websocket(&server, "channel=channel:lobby", "sid=s-ann").await;
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["data"]["userId"], "ann", "{connected}");
    let subscribe = json!({"type": "subscribe", "id": "r1", "channels": ["channel:secret"]});
    ws.send(Message::text(subscribe.to_string())).await.unwrap_or_else(|e| panic!("send: {e}"));
    let answer = next_json(&mut ws).await;
    assert_eq!((&answer["type"], &answer["error"]["code"]), (&json!("error"), &json!("not_member")), "{answer}");
    let seen = app.requests();
    let asked = seen.iter().find(|r| r.starts_with("POST /subscribe") && r.contains("channel:secret"));
    let asked = asked.cloned().unwrap_or_default();
    assert!(asked.contains(r#""transport":"websocket""#) && asked.contains(r#""connectionId":"c"#), "{asked}");
}

#[tokio::test]
async fn a_users_live_join_is_asked_about_with_its_connection_id() {
    let app = App::start().await;
    let server = herald(|c| c.hooks.subscribe_url = Some(app.url("/subscribe"))).await;
    let stream = server.client(Proto::H1).user("bob").subscribe("channel=channel:lobby", &[]).await;
    let conn = stream.connection_id();
    let path = format!("/api/connections/{conn}/channels");
    let mut bob = server.client(Proto::H1).user("bob");
    let (status, body) = bob.post_json(&path, &json!({"channel": "channel:secret"})).await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (403, &json!("not_member")));
    let (status, _) = bob.post_json(&path, &json!({"channel": "channel:news"})).await;
    assert_eq!(status.as_u16(), 200);
    let seen = app.requests();
    let join = seen.iter().find(|r| r.contains("channel:news")).cloned().unwrap_or_default();
    assert!(join.contains(&format!(r#""connectionId":"{conn}""#)) && join.contains(r#""id":"bob""#), "{join}");
}

#[tokio::test]
async fn a_namespace_can_turn_the_subscribe_hook_off_for_its_channels() {
    let app = App::start().await;
    let server = herald(|c| {
        c.hooks.subscribe_url = Some(app.url("/subscribe"));
        c.namespaces.entry("channel".to_owned()).or_default().subscribe_hook = Some(String::new());
    })
    .await;
    let _stream = server.client(Proto::H1).user("ann").subscribe("channel=channel:secret", &[]).await;
    assert!(app.requests().is_empty(), "{:?}", app.requests());
}

#[tokio::test]
async fn on_redis_a_cookie_users_publish_on_one_node_reaches_a_stream_on_another_named() {
    let redis = support::RedisServer::start().await;
    let app = App::start().await;
    let node = || {
        herald(|c| {
            app.hooks_of(c);
            c.redis_url = Some(redis.url());
        })
    };
    let (a, b) = (node().await, node().await);
    let mut stream =
        a.client(Proto::H1).with_header("cookie", "sid=s-ann").subscribe("channel=channel:lobby", &[]).await;
    let mut browser = b.client(Proto::H1).with_header("cookie", "sid=s-ann");
    let (status, _) =
        browser.post_json("/api/publish", &json!({"channel": "channel:lobby", "type": "chat", "text": "darn"})).await;
    assert_eq!(status.as_u16(), 200);
    let ev = stream.expect().await;
    assert_eq!((&ev.data["userId"], &ev.data["text"]), (&json!("ann"), &json!("****")));
}

#[tokio::test]
async fn a_cross_site_publish_carried_by_the_apps_session_cookie_is_refused() {
    let app = App::start().await;
    let server = herald(|c| app.hooks_of(c)).await;
    let mut forged =
        server.client(Proto::H1).with_header("cookie", "sid=s-ann").with_header("origin", "https://evil.example");
    let (status, body) = forged.post_json("/api/publish", &json!({"channel": "channel:lobby", "type": "chat"})).await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (403, &json!("origin_not_allowed")));
    assert!(!app.requests().iter().any(|r| r.starts_with("POST /publish")), "the hook was not asked");
}

#[tokio::test]
async fn an_oversized_stream_request_is_refused_before_the_application_is_asked() {
    let app = App::start().await;
    let server = herald(|c| {
        c.hooks.subscribe_url = Some(app.url("/subscribe"));
        c.max_channels_per_connection = 2;
    })
    .await;
    let query = "channel=channel:a&channel=channel:b&channel=channel:c";
    let (status, body) = support::read_json(server.client(Proto::H1).user("ann").open_events(query, &[]).await).await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (400, &json!("too_many_channels")));
    assert!(app.requests().is_empty(), "{:?}", app.requests());
}

#[tokio::test]
async fn a_hook_over_https_is_verified_against_the_configured_ca() {
    // The app's hooks over TLS, with a certificate for `localhost` made for this test (served
    // by a Herald server, which speaks TLS, with the app's router).
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
    let tmp = support::TempDir::new();
    let (cert, private) = (tmp.path.join("cert.pem"), tmp.path.join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&private, key.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    let tls = Config { tls_cert: Some(cert.clone()), tls_key: Some(private), ..support::test_config() };
    let host = herald::Herald::new(tls).unwrap_or_else(|e| panic!("{e}"));
    let seen = Seen::default();
    let app = herald::Server::bind_with_router(host, routes(&seen)).await.unwrap_or_else(|e| panic!("{e}"));
    let url = format!("https://localhost:{}/connect", app.local_addr().map(|a| a.port()).unwrap_or_default());
    let _app = tokio::spawn(app.run(std::future::pending()));

    let trusting = herald(|c| {
        c.hooks.connect_url = Some(url.clone());
        c.hooks.tls_ca = Some(cert);
    })
    .await;
    let mut ann = trusting.client(Proto::H1).with_header("cookie", "sid=s-ann");
    let stream = ann.subscribe("channel=channel:lobby", &[]).await;
    assert_eq!(stream.connected.map(|c| c.data["userId"].clone()), Some(json!("ann")));

    // Without the CA, the certificate is not trusted: the hook is unavailable.
    let doubting = herald(|c| c.hooks.connect_url = Some(url.clone())).await;
    let resp =
        doubting.client(Proto::H1).with_header("cookie", "sid=s-ann").open_events("channel=channel:lobby", &[]).await;
    let (status, body) = support::read_json(resp).await;
    assert_eq!((status.as_u16(), &body["error"]["code"]), (503, &json!("hook_unavailable")));
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 1, "only the trusting node's request arrived");
}

/// A publish sent whole on a fresh plain connection that closes after it (the lean
/// HTTP/1.1 path serves it; `pad` makes the head too big for that path, so hyper does): the
/// response's text.
async fn publish_raw(addr: SocketAddr, headers: &str, pad: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"channel":"channel:lobby","type":"chat","text":"hi"}"#;
    let pad = if pad { format!("x-pad: {}\r\n", "p".repeat(9 * 1024)) } else { String::new() };
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}{pad}\r\n{body}",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    tcp.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut seen)).await;
    read.unwrap_or_else(|_| panic!("no answer")).unwrap_or_else(|e| panic!("read: {e}"));
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_lean_publish_passes_the_hook_the_headers_and_cookies_hyper_passes_and_its_request_id_alone() {
    let app = App::start().await;
    let server = herald(|c| {
        app.hooks_of(c);
        c.hooks.headers = vec!["X-Tenant".to_owned(), "x-request-id".to_owned()];
    })
    .await;
    // Two values of a passed header, its name in another case, cookies among others, and two
    // request ids: the first one is the request's, and the hook is told that one alone.
    let headers = "x-tenant: acme\r\nCookie: a=1; sid=s-ann\r\nX-TENANT: beta\r\ncookie: b=2\r\nx-request-id: trace-1\r\nx-request-id: trace-2\r\n";
    let mut told = Vec::new();
    for pad in [false, true] {
        let answer = publish_raw(server.addr, headers, pad).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.contains("x-request-id: trace-1\r\n"), "{answer}");
        let seen = app.requests();
        told.push(seen.last().cloned().unwrap_or_default());
    }
    assert_eq!(told[0], told[1], "lean, then hyper");
    let hook = &told[0];
    assert!(hook.contains("x-tenant: acme\nx-tenant: beta\n") && hook.contains("cookie: sid=s-ann\n"), "{hook}");
    assert!(hook.contains("x-request-id: trace-1\n") && !hook.contains("trace-2"), "{hook}");
    // Without one, the hook is told the id made for the request, which its answer carries.
    let answer = publish_raw(server.addr, "cookie: sid=s-ann\r\n", false).await;
    let id = answer.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap_or_default();
    assert_eq!(id.len(), 26, "{answer}");
    let hook = app.requests().last().cloned().unwrap_or_default();
    assert!(hook.contains(&format!("x-request-id: {id}\n")), "{id}: {hook}");
}
