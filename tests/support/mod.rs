//! Test support: a real Herald server on a free port, and a real HTTP client for it.
//!
//! The client speaks HTTP/1.1 (one TCP connection per request, as a browser's
//! `EventSource` does), h2c with prior knowledge, or HTTP/2 over TLS negotiated by ALPN
//! against a certificate made for the test. SSE streams are parsed by `eventsource-stream`,
//! an SSE parser independent of Herald's own code.
#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt, TryStreamExt};
use herald::{Config, Herald, Server};
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Defaults for tests: a free loopback port, and publish rate limits out of the way
/// (tests of rate limits set their own).
pub fn test_config() -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        publish_rate: 1e9,
        publish_burst: 1e9,
        api_key_publish_rate: 1e9,
        api_key_publish_burst: 1e9,
        ..Config::default()
    }
}

/// A user's buckets (publishes, and the other ones at the publish rate: tickets, status
/// changes, joins and leaves) small: 3 at once, then 1 a second.
pub fn buckets_of_three(config: &mut Config) {
    config.publish_rate = 1.0;
    config.publish_burst = 3.0;
}

/// A `room` namespace whose joins and leaves are announced (`join_leave`), and a user's
/// bucket of them small ([`buckets_of_three`]).
pub fn join_leave_rooms_three_at_once(config: &mut Config) {
    buckets_of_three(config);
    let room = herald::config::NamespaceConfig { join_leave: Some(true), ..Default::default() };
    config.namespaces.insert("room".to_owned(), room);
}

/// Turns presence off for rooms (`channel:`), for tests about something else.
pub fn no_presence(config: &mut Config) {
    config
        .namespaces
        .insert("channel".to_owned(), herald::config::NamespaceConfig { presence: Some(false), ..Default::default() });
}

/// The HS256 secret of [`TestServer::secured`].
pub const SECRET: &str = "test-secret-that-is-long-enough";
/// The API key of [`TestServer::secured`], with access to every channel.
pub const API_KEY: &str = "test-api-key-0123456789";

/// A JWT for user `sub`, signed with [`SECRET`], valid for an hour.
pub fn token(sub: &str) -> String {
    token_with(serde_json::json!({"sub": sub, "name": format!("User {sub}"), "exp": now() + 3600}))
}

/// A JWT with the given claims, signed with [`SECRET`].
pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("token: {e}"))
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Adds [`SECRET`] and [`API_KEY`] to a configuration.
pub fn secure(config: &mut Config) {
    config.auth.jwt_secret = Some(SECRET.to_owned());
    config.api_keys.push(herald::config::ApiKeyConfig {
        name: "test".to_owned(),
        key: API_KEY.to_owned(),
        channels: vec!["*".to_owned()],
        scopes: vec![herald::config::Scope::Publish],
    });
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub herald: Herald,
    pub ca_pem: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _tmp: Option<TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// A server with authentication: [`SECRET`] for tokens, [`API_KEY`] for publishers.
    pub async fn secured(configure: impl FnOnce(&mut Config)) -> Self {
        Self::with(|c| {
            secure(c);
            configure(c);
        })
        .await
    }

    pub async fn with(configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config();
        configure(&mut config);
        Self::from_config(config, None, None).await
    }

    /// A server with TLS, using a certificate for `localhost` made for this test.
    pub async fn with_tls(configure: impl FnOnce(&mut Config)) -> Self {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap_or_else(|e| panic!("certificate: {e}"));
        let tmp = TempDir::new();
        let cert_path = tmp.path.join("cert.pem");
        let key_path = tmp.path.join("key.pem");
        let cert_pem = key.cert.pem();
        write(&cert_path, &cert_pem);
        write(&key_path, &key.signing_key.serialize_pem());
        let mut config = Config { tls_cert: Some(cert_path), tls_key: Some(key_path), ..test_config() };
        configure(&mut config);
        Self::from_config(config, Some(cert_pem), Some(tmp)).await
    }

    async fn from_config(config: Config, ca_pem: Option<String>, tmp: Option<TempDir>) -> Self {
        let herald = Herald::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
        let server = Server::bind(herald.clone()).await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = server.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self { addr, herald, ca_pem, shutdown: Some(tx), task: Some(task), _tmp: tmp }
    }

    pub fn client(&self, proto: Proto) -> Client {
        Client { addr: self.addr, proto, ca_pem: self.ca_pem.clone(), h2: None, headers: Vec::new() }
    }

    /// A plain-TCP client of a server started some other way (the binary).
    pub fn client_at(addr: SocketAddr, proto: Proto) -> Client {
        Client { addr, proto, ca_pem: None, h2: None, headers: Vec::new() }
    }

    /// Starts the graceful shutdown and waits for the server to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => within("server shutdown", task).await.unwrap_or_else(|e| panic!("server task: {e}")),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 on plain TCP.
    H1,
    /// HTTP/2 with prior knowledge on plain TCP (h2c).
    H2c,
    /// HTTP/2 over TLS, negotiated by ALPN.
    H2Tls,
}

pub const ALL_PLAIN: [Proto; 2] = [Proto::H1, Proto::H2c];

type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// A client of one test server.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    pub proto: Proto,
    ca_pem: Option<String>,
    h2: Option<H2Sender>,
    /// Sent with every request of this client.
    headers: Vec<(String, String)>,
}

impl Client {
    /// This client sends `name: value` with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// This client is user `sub`, with a bearer token.
    pub fn user(self, sub: &str) -> Self {
        self.with_header("authorization", &format!("Bearer {}", token(sub)))
    }

    /// This client is a backend with [`API_KEY`].
    pub fn backend(self) -> Self {
        self.with_header("x-api-key", API_KEY)
    }

    /// Sends one request. HTTP/1.1 uses a new connection per request; HTTP/2 shares one
    /// connection per `Client` (clones share it too, once it is open).
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        within("a response", async {
            match self.proto {
                Proto::H1 => {
                    let tcp = connect(self.addr).await;
                    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .unwrap_or_else(|e| panic!("h1 handshake: {e}"));
                    tokio::spawn(conn);
                    sender.send_request(req).await.unwrap_or_else(|e| panic!("h1 request: {e}"))
                }
                Proto::H2c | Proto::H2Tls => {
                    let mut sender = match &self.h2 {
                        Some(s) if !s.is_closed() => s.clone(),
                        _ => {
                            let s = self.open_h2().await;
                            self.h2 = Some(s.clone());
                            s
                        }
                    };
                    sender.send_request(req).await.unwrap_or_else(|e| panic!("h2 request: {e}"))
                }
            }
        })
        .await
    }

    async fn open_h2(&self) -> H2Sender {
        let tcp = connect(self.addr).await;
        match self.proto {
            Proto::H2Tls => {
                let tls = tls_connect(tcp, self.ca_pem.as_deref().unwrap_or_else(|| panic!("server has no TLS"))).await;
                let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
                tokio::spawn(conn);
                sender
            }
            _ => {
                let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap_or_else(|e| panic!("h2c handshake: {e}"));
                tokio::spawn(conn);
                sender
            }
        }
    }

    fn uri(&self, path: &str) -> String {
        match self.proto {
            Proto::H2Tls => format!("https://localhost:{}{path}", self.addr.port()),
            _ => format!("http://{}{path}", self.addr),
        }
    }

    pub fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        let mut b = Request::builder().method(method);
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        b = match self.proto {
            // HTTP/1.1 wants an origin-form target and a Host header.
            Proto::H1 => b.uri(path).header("host", self.addr.to_string()),
            _ => b.uri(self.uri(path)),
        };
        b
    }

    /// Sends a body of raw bytes; returns the status and the body parsed as JSON.
    pub async fn post_raw(&mut self, path: &str, body: impl Into<Bytes>) -> (StatusCode, Value) {
        let req = self
            .request("POST", path)
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap_or_else(|e| panic!("request: {e}"));
        let resp = self.send(req).await;
        read_json(resp).await
    }

    pub async fn post_json(&mut self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string()).await
    }

    /// Publishes, asserting success; returns the answer.
    pub async fn publish(&mut self, body: &Value) -> Value {
        let (status, answer) = self.post_json("/api/publish", body).await;
        let shown: String = body.to_string().chars().take(200).collect();
        assert_eq!(status, StatusCode::OK, "publish {shown}: {answer}");
        answer
    }

    /// Publishes one `update` event per `n` of `ns` to `channel`, one request each, asserting
    /// success; returns the answers.
    pub async fn publish_ns(&mut self, channel: &str, ns: std::ops::Range<u64>) -> Vec<Value> {
        let mut answers = Vec::new();
        for n in ns {
            answers.push(self.publish(&serde_json::json!({"channel": channel, "type": "update", "n": n})).await);
        }
        answers
    }

    pub async fn delete(&mut self, path: &str) -> (StatusCode, Value) {
        let req = self.request("DELETE", path).body(Full::new(Bytes::new())).unwrap_or_else(|e| panic!("request: {e}"));
        let resp = self.send(req).await;
        read_json(resp).await
    }

    pub async fn get_json(&mut self, path: &str) -> (StatusCode, Value) {
        let req = self.request("GET", path).body(Full::new(Bytes::new())).unwrap_or_else(|e| panic!("request: {e}"));
        let resp = self.send(req).await;
        read_json(resp).await
    }

    /// Reads `/metrics` and returns the value of the series `series` (with its labels, if
    /// any); fails the test if the series is missing.
    pub async fn metric(&mut self, series: &str) -> f64 {
        let req = self.request("GET", "/metrics").body(Full::new(Bytes::new())).unwrap_or_else(|e| panic!("{e}"));
        let resp = self.send(req).await;
        assert_eq!(
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(|v| v.starts_with("text/plain")),
            Some(true)
        );
        let body =
            http_body_util::BodyExt::collect(resp.into_body()).await.unwrap_or_else(|e| panic!("{e}")).to_bytes();
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    /// Opens `GET /api/events?<query>` with extra headers; does not check the status.
    pub async fn open_events(&mut self, query: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
        let mut b = self.request("GET", &format!("/api/events?{query}")).header("accept", "text/event-stream");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(Bytes::new())).unwrap_or_else(|e| panic!("request: {e}"))).await
    }

    /// Subscribes and waits for the `connected` event.
    pub async fn subscribe(&mut self, query: &str, headers: &[(&str, &str)]) -> SseStream {
        let resp = self.open_events(query, headers).await;
        assert_eq!(resp.status(), StatusCode::OK, "subscribe {query}");
        assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
        let mut stream = SseStream::new(resp);
        let connected = stream.next().await.unwrap_or_else(|| panic!("stream ended before `connected`"));
        assert_eq!(connected.data["type"], "connected", "first event: {:?}", connected);
        stream.connected = Some(connected);
        stream
    }
}

pub async fn read_json(resp: Response<Incoming>) -> (StatusCode, Value) {
    let status = resp.status();
    let bytes =
        within("a response body", resp.into_body().collect()).await.unwrap_or_else(|e| panic!("body: {e}")).to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

/// One parsed SSE event.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub id: String,
    /// `message` for unnamed events, as in a browser.
    pub event: String,
    pub data: Value,
    pub raw_data: String,
    pub retry: Option<Duration>,
}

type EventItems = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// An open SSE stream, parsed by `eventsource-stream`.
pub struct SseStream {
    items: EventItems,
    pub connected: Option<SseEvent>,
}

impl SseStream {
    pub fn new(resp: Response<Incoming>) -> Self {
        let bytes =
            BodyStream::new(resp.into_body()).try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok())));
        let items = bytes.eventsource().map_err(|e| e.to_string());
        Self { items: Box::pin(items), connected: None }
    }

    /// The next event, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        match within("the next SSE event", self.items.next()).await {
            None => None,
            Some(Err(e)) => panic!("SSE stream error: {e}"),
            Some(Ok(ev)) => {
                let data = serde_json::from_str(&ev.data)
                    .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", ev.data));
                Some(SseEvent { id: ev.id, event: ev.event, data, raw_data: ev.data, retry: ev.retry })
            }
        }
    }

    /// The next event, which must exist.
    pub async fn expect(&mut self) -> SseEvent {
        self.next().await.unwrap_or_else(|| panic!("stream ended early"))
    }

    /// The id of this stream's connection, from its `connected` event.
    pub fn connection_id(&self) -> String {
        let connected = self.connected.as_ref().unwrap_or_else(|| panic!("no connected event"));
        connected.data["connectionId"].as_str().unwrap_or_else(|| panic!("no connection id")).to_owned()
    }

    /// Expects the next event to be `user`'s presence with `status` (`online`, `offline`, `away`).
    pub async fn expect_presence(&mut self, user: &str, status: &str) -> SseEvent {
        let ev = self.expect().await;
        assert_eq!(
            (ev.data["type"].as_str(), ev.data["userId"].as_str(), ev.data["status"].as_str()),
            (Some("presence"), Some(user), Some(status)),
            "{:?}",
            ev.data
        );
        ev
    }

    /// Expects the next events to carry `"n"` values `ns`, in order; returns the last id.
    pub async fn expect_ns(&mut self, ns: std::ops::Range<u64>) -> String {
        let mut last = String::new();
        for n in ns {
            let ev = self.expect().await;
            assert_eq!(ev.data["n"].as_u64(), Some(n), "{:?}", ev.data);
            last = ev.id;
        }
        last
    }

    /// Expects the next events to carry `"n"` values `ns`, in order; returns each one's SSE id.
    pub async fn expect_each(&mut self, ns: std::ops::Range<u64>) -> Vec<String> {
        let mut ids = Vec::new();
        for n in ns {
            ids.push(self.expect_ns(n..n + 1).await);
        }
        ids
    }

    /// Expects the next event to be a `reset` for `reason` (`history_expired`, `unknown_position`).
    pub async fn expect_reset(&mut self, reason: &str) {
        let ev = self.expect().await;
        assert_eq!(
            (ev.data["type"].as_str(), ev.data["reason"].as_str()),
            (Some("reset"), Some(reason)),
            "{:?}",
            ev.data
        );
    }

    /// Reads events, pushing each one's event id to `delivered`, until it holds `count`;
    /// returns the SSE id of the last one read. A `reset` fails the test.
    pub async fn read_ids(&mut self, delivered: &mut Vec<String>, count: usize) -> String {
        let mut last = String::new();
        while delivered.len() < count {
            let ev = self.expect().await;
            assert_ne!(ev.data["type"], "reset", "history must cover it: {:?}", ev.data);
            delivered.push(ev.data["id"].as_str().unwrap_or_default().to_owned());
            last = ev.id;
        }
        last
    }

    /// Waits for the server to end the stream, returning the events before the end.
    pub async fn until_end(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(ev) = self.next().await {
            events.push(ev);
        }
        events
    }

    /// The SSE id of the `connected` event.
    pub fn connected_id(&self) -> String {
        self.connected.as_ref().map(|c| c.id.clone()).unwrap_or_default()
    }
}

/// A raw byte view of an SSE response, for what parsers hide (comments, `retry:`).
pub struct RawStream {
    body: Incoming,
    pub seen: Vec<u8>,
}

impl RawStream {
    pub fn new(resp: Response<Incoming>) -> Self {
        Self { body: resp.into_body(), seen: Vec::new() }
    }

    /// Reads until `needle` has been seen, returning false if the stream ended first.
    pub async fn read_until(&mut self, needle: &[u8]) -> bool {
        loop {
            if self.seen.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            match within("more stream bytes", self.body.frame()).await {
                None => return false,
                Some(Err(e)) => panic!("stream error: {e}"),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.seen.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Reads to the end of the stream.
    pub async fn read_to_end(&mut self) {
        while let Some(frame) = within("the end of the stream", self.body.frame()).await {
            match frame {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        self.seen.extend_from_slice(&data);
                    }
                }
                Err(e) => panic!("stream error: {e}"),
            }
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

async fn tls_connect(tcp: TcpStream, ca_pem: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap_or_else(|e| panic!("ca: {e}"));
    roots.add(ca).unwrap_or_else(|e| panic!("root: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("tls: {e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap_or_else(|e| panic!("name: {e}"));
    let tls = connector.connect(name, tcp).await.unwrap_or_else(|e| panic!("TLS handshake: {e}"));
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN must pick h2");
    tls
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    // As browsers do: without it, small requests wait on delayed ACKs.
    tcp.set_nodelay(true).unwrap_or_else(|e| panic!("nodelay: {e}"));
    tcp
}

fn write(path: &PathBuf, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A directory removed when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("herald-test-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir: {e}"));
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Polls `cond` every few milliseconds until it holds, failing the test after [`WAIT`].
/// For state that changes on its own schedule (a reconnect backoff), not for events a test
/// can wait on directly.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

/// Packets to and from a Redis server's port dropped ([`RedisServer::vanish`]) until this is
/// dropped.
pub struct Vanished {
    table: String,
}

impl Drop for Vanished {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
    }
}

/// A `redis-server` of the test's own, on a free port, with an append-only file so that a
/// restart keeps the Streams (as a production Redis with persistence would).
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    pub dir: TempDir,
    /// Arguments that choose how it listens (`--port P`, or TLS and a password).
    listen_args: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(|port, _| vec!["--port".into(), port.to_string()]).await
    }

    /// Starts with the listening arguments `listen(port, dir)` returns. A free port found by
    /// binding port 0 can be taken by another process before redis-server binds it; a start
    /// that fails is tried again on a fresh port (a restart keeps its port and does not retry).
    pub async fn start_with(listen: impl Fn(u16, &std::path::Path) -> Vec<String>) -> Self {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new();
            let listen_args = listen(port, &dir.path);
            let mut server = Self { port, child: None, dir, listen_args };
            match server.try_spawn().await {
                Ok(()) => return server,
                Err(log) => failures.push(log),
            }
        }
        panic!("redis-server exited before it was ready, five times:\n{}", failures.join("\n---\n"))
    }

    async fn spawn(&mut self) {
        if let Err(log) = self.try_spawn().await {
            panic!("redis-server exited before it was ready:\n{log}");
        }
    }

    /// Starts the process and waits for it to accept connections; on exit before that, the
    /// lines it printed (which say why: port in use, port too high, bad option).
    async fn try_spawn(&mut self) -> Result<(), String> {
        use std::io::BufRead;
        let mut child = std::process::Command::new("redis-server")
            .args(&self.listen_args)
            .args(["--bind", "127.0.0.1 -::1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--logfile", ""])
            .arg("--dir")
            .arg(&self.dir.path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not start (is it installed? scripts/test installs it): {e}")
            });
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("redis stdout"));
        let ready = within(
            "redis-server to accept connections",
            tokio::task::spawn_blocking(move || {
                let mut lines = std::io::BufReader::new(stdout).lines();
                let mut seen = Vec::new();
                for line in lines.by_ref().map_while(Result::ok) {
                    if line.contains("Ready to accept connections") {
                        // Keep draining so redis never blocks on a full pipe.
                        std::thread::spawn(move || lines.for_each(drop));
                        return Ok(());
                    }
                    seen.push(line);
                }
                Err(seen.join("\n"))
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        match ready {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(log) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(log)
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP` freezes it, `CONT` thaws it).
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = std::process::Command::new("kill").args([format!("-{sig}"), child.id().to_string()]).status();
        }
    }

    /// Drops every packet to and from its port on loopback (nftables), until the guard is
    /// dropped: as when its host vanishes without closing a connection, so that what a node
    /// sends goes unacknowledged (a frozen process, by contrast, still has its kernel
    /// acknowledge). Needs root and `nft`, which `scripts/test` installs as root.
    pub fn vanish(&self) -> Vanished {
        let table = format!("herald_test_vanish_{}", self.port);
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} input {{ type filter hook input priority -10; }}\n\
             add rule inet {table} input tcp dport {port} drop\n\
             add rule inet {table} input tcp sport {port} drop\n",
            port = self.port
        );
        let mut nft = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nft (nftables, as root) drops a vanished Redis's packets: {e}"));
        if let Some(mut stdin) = nft.stdin.take() {
            use std::io::Write as _;
            stdin.write_all(script.as_bytes()).unwrap_or_else(|e| panic!("nft reads its rules: {e}"));
        }
        let status = nft.wait().unwrap_or_else(|e| panic!("nft runs: {e}"));
        assert!(status.success(), "nft could not add {table} (root is needed): {status}");
        Vanished { table }
    }

    /// The local ports of the established TCP connections to this server (any process's;
    /// only the node under test connects to it).
    pub fn established_clients(&self) -> Vec<u16> {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_else(|e| panic!("/proc/net/tcp: {e}"));
        let port = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // Field 3 is the state: 01, ESTABLISHED.
                let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
                (*state == "01" && port(remote) == Some(self.port)).then(|| port(local)).flatten()
            })
            .collect()
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// How many times Redis has run `command` (lower case, as `INFO commandstats` names it),
    /// from clients and from scripts.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Runs a command with `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node on `redis` that takes the test API key. Presence is off: the tests that use it are
/// about events, and presence has its own (tests/presence.rs).
pub async fn redis_node(redis: &RedisServer) -> TestServer {
    redis_node_with(redis, |_| {}).await
}

/// [`redis_node`], its configuration then changed by `configure`.
pub async fn redis_node_with(redis: &RedisServer, configure: impl FnOnce(&mut Config)) -> TestServer {
    let url = redis.url();
    TestServer::secured(move |c| {
        c.redis_url = Some(url);
        no_presence(c);
        configure(c);
    })
    .await
}

/// A node on the Redis `cluster`, like [`redis_node`].
pub async fn cluster_node(cluster: &RedisCluster) -> TestServer {
    let url = cluster.url();
    TestServer::secured(move |c| {
        c.redis_url = Some(url);
        c.redis_cluster = true;
        no_presence(c);
    })
    .await
}

/// The `herald` binary running as a process of its own.
pub struct Running {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary and waits for its "listening on" line. The command comes from
/// `herald()` in `server/tests/support`: only the tests of the package that builds the binary
/// know its path.
pub async fn start(mut cmd: std::process::Command) -> Running {
    cmd.stderr(std::process::Stdio::null());
    start_with_stderr(cmd).await
}

/// Like [`start`], keeping whatever the caller set up for stderr.
pub async fn start_with_stderr(mut cmd: std::process::Command) -> Running {
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn herald: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let line = within(
        "the listening line",
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            line
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = line
        .trim()
        .rsplit("://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    Running { child, addr }
}

impl Running {
    /// Waits for the process to exit and returns everything it wrote to stderr (which the
    /// caller must have piped).
    pub async fn stderr_to_end(&mut self) -> String {
        let mut err = self.child.stderr.take().unwrap_or_else(|| panic!("stderr was not piped"));
        within(
            "the process to exit",
            tokio::task::spawn_blocking(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut err, &mut text);
                text
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A small Redis Cluster of the test's own: three masters, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(
                // The cluster bus listens on a port of its own, chosen free too (by default it
                // is the port plus 10,000, past 65,535 for ports above 55,535).
                RedisServer::start_with(|port, _| {
                    let bus = free_port().to_string();
                    ["--port", &port.to_string(), "--cluster-port", &bus, "--cluster-enabled", "yes"]
                        .into_iter()
                        .chain(["--cluster-node-timeout", "2000"])
                        .map(str::to_owned)
                        .collect()
                })
                .await,
            );
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("redis-cli --cluster create: {e}"));
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        let cluster = Self { nodes };
        eventually("the cluster to be ok on every node", || {
            cluster.nodes.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        })
        .await;
        cluster
    }

    /// Seed URLs, comma-separated, for `redis_url` with `redis_cluster`.
    pub fn url(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }
}

/// A subscriber that stops reading: a raw HTTP/1.1 socket with a small receive buffer that
/// reads the response head and the `connected` event of `GET /api/events?<query>`, then
/// nothing more (the caller may still read it later).
pub async fn stalled_subscriber(addr: SocketAddr, query: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    socket.set_recv_buffer_size(4096).unwrap_or_else(|e| panic!("{e}"));
    let mut stalled = within("connect", socket.connect(addr)).await.unwrap_or_else(|e| panic!("{e}"));
    let request = format!("GET /api/events?{query} HTTP/1.1\r\nHost: test\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains("\"connected\"") {
        let mut buf = [0u8; 1024];
        let n = within("the stalled client's first bytes", stalled.read(&mut buf)).await.unwrap_or(0);
        assert!(n > 0, "stream closed early");
        head.extend_from_slice(&buf[..n]);
    }
    stalled
}

/// The channels of event `n` in the mixed pattern of the ordering tests: every 5th to both
/// `a` and `b`, every 7th (not a 5th) to `b` alone, the rest to `a` alone.
pub fn mixed_channels(n: u64, a: &str, b: &str) -> Vec<String> {
    if n.is_multiple_of(5) {
        vec![a.to_owned(), b.to_owned()]
    } else if n.is_multiple_of(7) {
        vec![b.to_owned()]
    } else {
        vec![a.to_owned()]
    }
}

/// One event a publisher got accepted: its id and its channels.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub id: String,
    pub channels: Vec<String>,
}

/// Publishes `ns` in the mixed pattern ([`mixed_channels`]) in batches of up to 50 (so many
/// events share a millisecond, and positions of different channels interleave), and returns
/// what was accepted, in order.
pub async fn publish_mixed(client: &mut Client, a: &str, b: &str, ns: std::ops::RangeInclusive<u64>) -> Vec<Accepted> {
    let ns: Vec<u64> = ns.collect();
    let mut accepted = Vec::new();
    for batch in ns.chunks(50) {
        let events: Vec<(u64, Vec<String>)> = batch.iter().map(|&n| (n, mixed_channels(n, a, b))).collect();
        let body: Vec<Value> = events
            .iter()
            .map(|(n, channels)| serde_json::json!({"channels": channels, "type": "update", "n": n}))
            .collect();
        let answer = client.publish(&Value::Array(body)).await;
        let ids = answer["ids"].as_array().cloned().unwrap_or_default();
        assert_eq!(ids.len(), events.len(), "{answer}");
        for (id, (_, channels)) in ids.iter().zip(events) {
            accepted.push(Accepted { id: id.as_str().unwrap_or_default().to_owned(), channels });
        }
    }
    accepted
}

/// Publishes one last event to both channels and reads `stream` until it: whatever was
/// going to be written twice is written before it.
pub async fn read_to_the_end(
    stream: &mut SseStream,
    publisher: &mut Client,
    (a, b): (&str, &str),
    accepted: &mut Vec<Accepted>,
    delivered: &mut Vec<String>,
) {
    accepted.extend(publish_mixed(publisher, a, b, 10_000..=10_000).await);
    let end = accepted.last().map(|e| e.id.clone()).unwrap_or_default();
    while delivered.last() != Some(&end) {
        let next = delivered.len() + 1;
        stream.read_ids(delivered, next).await;
    }
}

/// What a stream received, checked against what was accepted (by one publisher, one event
/// after another, so the order of acceptance is every channel's order): every accepted event
/// exactly once, each channel's events in that channel's order, nothing unknown. Returns one
/// line per fault; empty when there is none.
pub fn delivery_faults(accepted: &[Accepted], delivered: &[String]) -> Vec<String> {
    use std::collections::HashMap;
    let index: HashMap<&str, usize> = accepted.iter().enumerate().map(|(i, a)| (a.id.as_str(), i)).collect();
    let mut faults = Vec::new();
    let mut count: HashMap<&str, usize> = HashMap::new();
    // The last accepted index written on each channel.
    let mut last_on: HashMap<&str, usize> = HashMap::new();
    for id in delivered {
        let Some(&i) = index.get(id.as_str()) else {
            faults.push(format!("unknown event {id}"));
            continue;
        };
        let seen = count.entry(id.as_str()).or_default();
        *seen += 1;
        if *seen > 1 {
            faults.push(format!("duplicate: event #{i} ({id}) written {} times", *seen));
            continue;
        }
        for ch in &accepted[i].channels {
            if let Some(&prev) = last_on.get(ch.as_str())
                && prev > i
            {
                faults.push(format!("inversion on {ch}: event #{i} written after #{prev}"));
            }
            let last = last_on.entry(ch.as_str()).or_insert(i);
            *last = (*last).max(i);
        }
    }
    for (i, a) in accepted.iter().enumerate() {
        if !count.contains_key(a.id.as_str()) {
            faults.push(format!("lost: event #{i} ({})", a.id));
        }
    }
    faults
}

/// Fails the test with the faults [`delivery_faults`] finds, counted by kind.
pub fn assert_exactly_once_in_order(what: &str, accepted: &[Accepted], delivered: &[String]) {
    let faults = delivery_faults(accepted, delivered);
    if faults.is_empty() {
        return;
    }
    let kinds = ["duplicate", "inversion", "lost", "unknown"];
    let counts: Vec<String> =
        kinds.iter().map(|k| format!("{k}: {}", faults.iter().filter(|f| f.starts_with(k)).count())).collect();
    let shown: Vec<&String> = faults.iter().take(20).collect();
    panic!("{what}: {} of {} accepted events, {}\n{shown:#?}", delivered.len(), accepted.len(), counts.join(", "));
}
