//! The example app on a real port, spoken to over real TCP and HTTP/1.1: an app route
//! publishes through the embedded Herald and an open SSE stream receives the event.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// Longest wait for anything on the network: a broken test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> TestResult<T> {
    tokio::time::timeout(WAIT, fut).await.map_err(|_| format!("timed out after {WAIT:?} waiting for {what}").into())
}

/// The example app serving on an ephemeral port until [`TestApp::stop`].
struct TestApp {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    async fn start() -> TestResult<Self> {
        let mut config = herald::Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_timeout: Duration::from_secs(1),
            ..herald::Config::default()
        };
        config.auth.jwt_secret = Some("embedded-test-secret-0123".to_owned());
        let sessions = herald_example_axum_app::Sessions::default();
        herald_example_axum_app::serve_hooks(&mut config, sessions.clone()).await?;
        let herald = herald::Herald::new(config)?;
        let app = herald_example_axum_app::app(herald.clone(), sessions);
        let server = herald::Server::bind_with_router(herald, app).await?;
        let addr = server.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, shutdown, task })
    }

    /// Sends one request on a fresh HTTP/1.1 connection.
    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> TestResult<Response<Incoming>> {
        self.request_as(None, method, path, body).await
    }

    /// Sends one request, with a bearer token if given.
    async fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> TestResult<Response<Incoming>> {
        let auth = token.map(|t| ("authorization", format!("Bearer {t}")));
        self.request_with(auth, method, path, body).await
    }

    /// Sends one request, with one more header if given.
    async fn request_with(
        &self,
        header: Option<(&str, String)>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> TestResult<Response<Incoming>> {
        let tcp = within("connect", TcpStream::connect(self.addr)).await??;
        let (mut sender, conn) = within("handshake", http1::handshake(TokioIo::new(tcp))).await??;
        tokio::spawn(conn);
        let mut builder = Request::builder().method(method).uri(path).header("host", self.addr.to_string());
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        let req = match body {
            Some(v) => {
                builder.header("content-type", "application/json").body(Full::new(Bytes::from(v.to_string())))?
            }
            None => builder.body(Full::new(Bytes::new()))?,
        };
        Ok(within("response headers", sender.send_request(req)).await??)
    }

    /// Sends a request and reads its whole body as JSON.
    async fn json(&self, method: &str, path: &str, body: Option<Value>) -> TestResult<(StatusCode, Value)> {
        let resp = self.request(method, path, body).await?;
        let status = resp.status();
        let bytes = within("response body", resp.into_body().collect()).await??.to_bytes();
        Ok((status, serde_json::from_slice(&bytes)?))
    }

    /// Opens an SSE stream and reads up to its `connected` event: from then on the
    /// connection is registered in the hub, so a publish cannot miss it.
    async fn subscribe(&self, channel: &str) -> TestResult<SseStream> {
        // `user:<id>` is private: get that user's token from the app first.
        let user = channel.strip_prefix("user:").unwrap_or("someone");
        let (status, token) = self.json("GET", &format!("/token/{user}"), None).await?;
        assert_eq!(status, StatusCode::OK, "token: {token}");
        let token = token["token"].as_str().ok_or("no token in the answer")?.to_owned();
        let resp = self.request_as(Some(&token), "GET", &format!("/api/events?channel={channel}"), None).await?;
        assert_eq!(resp.status(), StatusCode::OK, "subscribe to {channel}");
        let content_type = resp.headers().get("content-type").map(|v| v.as_bytes().to_vec());
        assert_eq!(content_type.as_deref(), Some(&b"text/event-stream"[..]));
        let mut stream = SseStream { body: resp.into_body(), buf: Vec::new() };
        let connected = stream.next_event().await?;
        assert_eq!(connected.data["type"], "connected", "first event: {connected:?}");
        Ok(stream)
    }

    async fn stop(self) -> TestResult {
        let _ = self.shutdown.send(());
        within("server shutdown", self.task).await???;
        Ok(())
    }
}

/// One SSE event: its `id:` line and its `data:` parsed as JSON.
#[derive(Debug)]
struct SseEvent {
    id: Option<String>,
    data: Value,
}

struct SseStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl SseStream {
    /// The next event with data; `retry:` hints and heartbeat comments are skipped.
    async fn next_event(&mut self) -> TestResult<SseEvent> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let (mut id, mut data) = (None, Vec::new());
                for line in std::str::from_utf8(&block)?.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    }
                }
                if !data.is_empty() {
                    let data = serde_json::from_str(&data.join("\n"))?;
                    return Ok(SseEvent { id, data });
                }
                continue;
            }
            let frame = within("an SSE event", self.body.frame()).await?.ok_or("the SSE stream ended")??;
            if let Ok(chunk) = frame.into_data() {
                self.buf.extend_from_slice(&chunk);
            }
        }
    }
}

fn notice() -> Value {
    json!({"title": "New follower", "message": "Ann follows you"})
}

#[tokio::test]
async fn notify_route_delivers_a_notification_to_the_users_open_stream() -> TestResult {
    let app = TestApp::start().await?;
    let mut stream = app.subscribe("user:42").await?;

    let (status, answer) = app.json("POST", "/notify/42", Some(notice())).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["id"].as_str().ok_or(format!("no event id in {answer}"))?;

    let event = stream.next_event().await?;
    assert_eq!(event.data["type"], "notification", "{event:?}");
    assert_eq!(event.data["channel"], "user:42");
    assert_eq!(event.data["title"], "New follower");
    assert_eq!(event.data["message"], "Ann follows you");
    assert_eq!(event.data["id"], id, "the stream carries the id the route answered");
    assert!(event.id.as_deref().is_some_and(|v| !v.is_empty()), "no `id:` line: {event:?}");

    drop(stream);
    app.stop().await
}

#[tokio::test]
async fn a_cookie_session_without_a_token_follows_its_users_channel_through_the_connect_hook() -> TestResult {
    let app = TestApp::start().await?;
    let login = app.request("POST", "/login/42", None).await?;
    assert_eq!(login.status(), StatusCode::OK);
    let set_cookie = login.headers().get("set-cookie").ok_or("no session cookie")?.to_str()?;
    let session = set_cookie.split(';').next().ok_or("empty cookie")?.to_owned();

    let resp = app.request_with(Some(("cookie", session)), "GET", "/api/events?channel=user:42", None).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = SseStream { body: resp.into_body(), buf: Vec::new() };
    let connected = stream.next_event().await?;
    assert_eq!((&connected.data["type"], &connected.data["userId"]), (&"connected".into(), &"42".into()));

    let (status, answer) = app.json("POST", "/notify/42", Some(notice())).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(stream.next_event().await?.data["type"], "notification");

    // Without a session or a token, `user:42` stays private.
    let resp = app.request("GET", "/api/events?channel=user:42", None).await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    app.stop().await
}

#[tokio::test]
async fn room_announcement_reaches_the_rooms_stream() -> TestResult {
    let app = TestApp::start().await?;
    let mut stream = app.subscribe("channel:general").await?;

    let (status, answer) = app.json("POST", "/rooms/general/announce", Some(notice())).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");

    // First the subscriber's own arrival in the room (presence is on for rooms).
    let arrival = stream.next_event().await?;
    assert_eq!((&arrival.data["type"], &arrival.data["status"]), (&"presence".into(), &"online".into()));
    let event = stream.next_event().await?;
    assert_eq!(event.data["type"], "announcement", "{event:?}");
    assert_eq!(event.data["channel"], "channel:general");
    assert_eq!(event.data["message"], "Ann follows you");

    drop(stream);
    app.stop().await
}

#[tokio::test]
async fn stats_count_the_open_stream_and_its_channel() -> TestResult {
    let app = TestApp::start().await?;
    let (_, before) = app.json("GET", "/stats", None).await?;
    assert_eq!(before, json!({"connections": 0, "channels": 0}));

    let stream = app.subscribe("user:42").await?;
    let (status, open) = app.json("GET", "/stats", None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(open, json!({"connections": 1, "channels": 1}));

    drop(stream);
    app.stop().await
}

#[tokio::test]
async fn invalid_user_id_is_refused_with_a_json_error() -> TestResult {
    let app = TestApp::start().await?;
    let (status, answer) = app.json("POST", "/notify/a%20b", Some(notice())).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_channel", "{answer}");
    assert!(answer["error"]["message"].is_string(), "{answer}");
    app.stop().await
}

#[tokio::test]
async fn room_name_cannot_reach_a_users_private_channel() -> TestResult {
    let app = TestApp::start().await?;
    let (status, answer) = app.json("POST", "/rooms/user:42/announce", Some(notice())).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_channel", "{answer}");
    app.stop().await
}

#[tokio::test]
async fn malformed_body_is_refused_in_the_same_json_error_shape() -> TestResult {
    let app = TestApp::start().await?;
    let (status, answer) = app.json("POST", "/notify/42", Some(json!({"title": 1}))).await?;
    assert!(status.is_client_error(), "{status}: {answer}");
    assert_eq!(answer["error"]["code"], "invalid_body", "{answer}");
    let (status, answer) = app.json("GET", "/notify/42", None).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer["error"]["code"], "method_not_allowed", "{answer}");
    app.stop().await
}
