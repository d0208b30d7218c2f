//! The listener: accepts TCP (and TLS) connections and serves HTTP/1.1 and HTTP/2 on them.
//!
//! One port speaks HTTP/1.1 and h2c (HTTP/2 with prior knowledge); with a certificate it
//! speaks TLS and offers `h2` and `http/1.1` by ALPN. On shutdown the listener closes, every
//! stream is told to reconnect after a jittered delay ([`Herald::drain`]), and open
//! connections get `drain_timeout` to finish.
//!
//! No connection is held for free: its first request must arrive within
//! `header_read_timeout`, a connection with no request in flight is closed after
//! `idle_timeout` (HTTP/2 with a `GOAWAY`), and a request body must arrive within
//! `body_read_timeout` (then `408`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::herald::Herald;
use crate::http::auth::PeerAddr;
use crate::transport::{DrainGuard, KillSwitch};
use coalesce::Coalesce;

mod coalesce;
mod h1;
mod lean;
mod lean_publish;

/// Bytes hyper may buffer per connection (HTTP/1.1) or stream (HTTP/2) before it stops
/// polling a body: keeps a stalled reader's footprint small.
const WRITE_BUFFER: usize = 64 * 1024;

/// Largest HTTP/2 header list accepted (HTTP/1.1 headers are bounded by `WRITE_BUFFER`,
/// which is also hyper's read buffer).
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// The server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot load TLS {what} from {path}: {message}")]
    Tls { what: &'static str, path: String, message: String },
}

/// A bound, not yet running, Herald server.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    herald: Herald,
    router: Router,
    /// Whether the router is Herald's own, so that publishes may take the lean path, which
    /// serves Herald's publish routes without the router.
    own_routes: bool,
}

impl Server {
    /// Binds the configured address and loads TLS material, serving Herald's own routes.
    pub async fn bind(herald: Herald) -> Result<Self, ServerError> {
        let router = crate::http::router(herald.clone());
        let mut server = Self::bind_with_router(herald, router).await?;
        server.own_routes = true;
        Ok(server)
    }

    /// Like [`Server::bind`], with a router of the caller's (one that mounts Herald's).
    pub async fn bind_with_router(herald: Herald, router: Router) -> Result<Self, ServerError> {
        let cfg = herald.config();
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        let addr = cfg.listen;
        let listener = listen(addr, cfg.socket_send_buffer).map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Self { listener, tls, herald, router, own_routes: false })
    }

    /// Says that the router given to [`Server::bind_with_router`] serves Herald's publish
    /// routes as [`crate::http::router`] does (Herald's router with routes of the
    /// application's merged in, none of them a publish route), so that publishes may take
    /// the lean HTTP/1.1 path, which serves those routes without the router.
    pub fn with_heralds_publish_routes(mut self) -> Self {
        self.own_routes = true;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn herald(&self) -> &Herald {
        &self.herald
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Self { listener, tls, herald, router, own_routes } = self;
        let cfg = herald.config().clone();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout)
            .max_buf_size(WRITE_BUFFER);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(cfg.http2_max_concurrent_streams)
            .max_header_list_size(MAX_HEADER_BYTES)
            .max_send_buf_size(WRITE_BUFFER);
        if cfg.websocket {
            // WebSocket over HTTP/2 (RFC 8441 extended CONNECT), beside HTTP/1.1's Upgrade.
            builder.http2().enable_connect_protocol();
        }
        let shared = Arc::new(Shared {
            builder,
            router,
            lean_publish: own_routes.then(|| herald.clone()),
            tls,
            first_request_timeout: cfg.header_read_timeout,
            idle_timeout: cfg.idle_timeout,
            body_read_timeout: cfg.body_read_timeout,
        });
        // Every connection task holds a receiver: a send asks them to finish, and the
        // sender sees them all gone once the last one has.
        let (graceful, watcher) = tokio::sync::watch::channel(());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Each poll of a connection is one turn of the clock (`crate::clock`).
                        tokio::spawn(crate::clock::in_turns(Arc::clone(&shared).serve(tcp, peer, watcher.clone())));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: say so, and keep serving
                        // the connections we have.
                        tracing::warn!(error = %e, "accept failed");
                        // Out of file descriptors does not get better at once: back off
                        // instead of spinning on the error.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        drop(watcher);
        tracing::info!(connections = herald.connection_count(), "shutting down: draining streams");
        herald.drain();
        graceful.send_replace(());
        if tokio::time::timeout(cfg.drain_timeout, graceful.closed()).await.is_err() {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
        herald.settle_webhooks(cfg.drain_timeout).await;
        Ok(())
    }
}

/// What every connection task shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    /// The node whose publishes the lean path serves, when the router is Herald's own.
    lean_publish: Option<Herald>,
    tls: Option<TlsAcceptor>,
    first_request_timeout: Duration,
    idle_timeout: Duration,
    body_read_timeout: Duration,
}

/// Told when the server shuts down; dropped when the connection is done.
type Watcher = tokio::sync::watch::Receiver<()>;

impl Shared {
    async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, watcher: Watcher) {
        let _ = tcp.set_nodelay(true);
        // hyper's header timeout starts only once HTTP/1 parsing does: a client that sends
        // nothing, half an HTTP/2 preface, or an HTTP/2 connection with no request would be
        // held forever. So the whole connection must bring its first request in time.
        let deadline = tokio::time::Instant::now() + self.first_request_timeout;
        let kill = KillSwitch::default();
        match &self.tls {
            None => self.serve_plain(tcp, peer, watcher, kill, deadline).await,
            // Boxed, like every hyper connection: a TLS handshake and a hyper connection are
            // large futures, and the task of a lean stream should not be sized for them.
            Some(acceptor) => Box::pin(self.serve_tls(acceptor, tcp, peer, watcher, kill, deadline)).await,
        }
    }

    async fn serve_tls(
        &self,
        acceptor: &TlsAcceptor,
        tcp: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
        kill: KillSwitch,
        deadline: tokio::time::Instant,
    ) {
        let stream = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        self.serve_hyper(TokioIo::new(Coalesce::new(stream, h2)), peer, watcher, kill, Some(deadline)).await;
    }

    /// Plain TCP: event streams over HTTP/1.x take the lean path, the rest goes to hyper.
    async fn serve_plain(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        mut watcher: Watcher,
        kill: KillSwitch,
        deadline: tokio::time::Instant,
    ) {
        let (prefix, first_request) = match lean::sniff(&mut tcp, deadline, self.lean_publish.as_ref()).await {
            lean::Sniffed::Gone => return tracing::debug!(%peer, "no request in time; closing"),
            lean::Sniffed::Other(prefix) => (prefix, Some(deadline)),
            lean::Sniffed::Publish(buf) => {
                let Some(herald) = &self.lean_publish else { return };
                let ctx = lean_publish::Publishing {
                    herald,
                    peer,
                    next_request: self.first_request_timeout.min(self.idle_timeout),
                    body_timeout: self.body_read_timeout,
                };
                // Boxed: a publish's future is large, and a stream's task must not be sized for it.
                match Box::pin(lean_publish::serve_publishes(&mut tcp, buf, &ctx, &mut watcher, deadline)).await {
                    Ok(lean_publish::Handoff::Closed) => return,
                    Ok(lean_publish::Handoff::Hyper(rest)) => (rest, Some(Instant::now() + ctx.next_request)),
                    Err(e) => return tracing::debug!(%peer, error = %e, "connection ended with an error"),
                }
            }
            lean::Sniffed::Stream { mut request, rest } => {
                request.extensions_mut().insert(PeerAddr(peer));
                match lean::serve(&mut tcp, &self.router, request, rest, &kill).await {
                    Ok(lean::After::Closed) => return,
                    // The stream gets a task of its own, sized for what a stream holds (its
                    // socket, body, write state, kill switch and the shutdown watcher), and
                    // this one, sized for every path a connection may take, ends: most of an
                    // idle stream's memory was this task.
                    Ok(lean::After::Stream(streaming)) => {
                        let task = streaming.into_task(tcp, &kill, watcher);
                        tokio::spawn(task);
                        return;
                    }
                    // A refused stream on a keep-alive connection: its next request is due
                    // as on any idle HTTP/1.1 connection of hyper's.
                    Ok(lean::After::KeepAlive(rest)) => {
                        let next = self.first_request_timeout.min(self.idle_timeout);
                        (rest, Some(Instant::now() + next))
                    }
                    Err(e) => return tracing::debug!(%peer, error = %e, "connection ended with an error"),
                }
            }
        };
        let h2 = coalesce::starts_h2(&prefix);
        let io = TokioIo::new(Coalesce::new(lean::Prefixed::new(prefix, tcp), h2));
        Box::pin(self.serve_hyper(io, peer, watcher, kill, first_request)).await;
    }

    /// Serves a connection with hyper until it ends, its kill switch fires, no first
    /// request arrived by `first_request`, or it has been idle for `idle_timeout`.
    async fn serve_hyper<I>(
        &self,
        io: I,
        peer: SocketAddr,
        mut watcher: Watcher,
        kill: KillSwitch,
        first_request: Option<Instant>,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let kill_for_requests = kill.clone();
        let arrived = Arc::new(tokio::sync::Notify::new());
        let arrived_for_requests = Arc::clone(&arrived);
        let no_first_request = async move {
            match first_request {
                Some(deadline) if tokio::time::timeout_at(deadline, arrived.notified()).await.is_err() => {}
                _ => std::future::pending::<()>().await,
            }
        };
        let activity = Arc::new(Activity::new());
        let activity_for_requests = Arc::clone(&activity);
        let body_read_timeout = self.body_read_timeout;
        let drain_guard = DrainGuard::new(watcher.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            arrived_for_requests.notify_one();
            let in_flight = activity_for_requests.begin();
            req.extensions_mut().insert(kill_for_requests.clone());
            req.extensions_mut().insert(PeerAddr(peer));
            if req.extensions().get::<hyper::upgrade::OnUpgrade>().is_some() {
                req.extensions_mut().insert(drain_guard.clone());
            }
            let h2 = req.version() == hyper::Version::HTTP_2;
            let (req, timed_out) = TimedBody::wrap(req, body_read_timeout);
            let mut router = router.clone();
            // Boxed: hyper runs each HTTP/2 stream as a task that holds this future until the
            // response head is out and the body after it, in one allocation sized for both.
            // Unboxed, every idle HTTP/2 stream kept room for routing the request it was
            // opened by; boxed, that room is freed once the response is ready.
            Box::pin(async move {
                let Ok(mut resp) = tower::Service::call(&mut router, req).await;
                if timed_out.is_some_and(|t| t.load(Ordering::Relaxed)) {
                    tracing::debug!(%peer, "request body not received in time");
                    resp = body_timeout();
                }
                let mut held = false;
                if h2 {
                    never_index_request_id(&mut resp);
                    held = resp.body().size_hint().exact().is_none();
                }
                Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked { body, _in_flight: in_flight, held }))
            })
        });
        // With upgrades: a WebSocket (`GET /api/ws` with `Upgrade`) takes the socket over.
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        let killed = kill.killed();
        let idle = activity.idle_for(self.idle_timeout);
        tokio::pin!(conn, killed, idle, no_first_request);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                () = &mut killed => break Ok(()),
                () = &mut no_first_request => return tracing::debug!(%peer, "no request in time; closing"),
                // Graceful: HTTP/2 says `GOAWAY`, so a request that crosses the close is
                // known to be unprocessed and is retried by the client.
                () = &mut idle, if !closing => {
                    tracing::debug!(%peer, "idle; closing");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = watcher.changed(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// A connection's requests in flight and when the last one ended, for its idle deadline.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` at which the last request ended.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), in_flight: AtomicUsize::new(0), last_end_ms: AtomicU64::new(0) }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// Resolves once no request has been in flight for `idle`. Wakes once per `idle` while
    /// requests are open (a long stream), not on every request.
    async fn idle_for(&self, idle: Duration) {
        let mut deadline = self.start + idle;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = Instant::now();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                deadline = now + idle;
                continue;
            }
            let quiet_since = self.start + Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
            if quiet_since + idle <= now {
                return;
            }
            deadline = quiet_since + idle;
        }
    }
}

/// A request in flight: from its head until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stored before the count drops, so that a reader who sees none in flight sees it.
        a.last_end_ms.fetch_max(ms, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// HTTP/2: a response's `x-request-id` is sent as never indexed. Each is unique, so HPACK's
/// dynamic table (4 KiB of entries, and h2's index of them, kept for the connection's life)
/// would fill with ids that are never sent again, evicting the headers that are.
fn never_index_request_id(resp: &mut axum::response::Response) {
    if let Some(id) = resp.headers_mut().get_mut(crate::http::observe::LeanRequestId::name()) {
        id.set_sensitive(true);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
    /// An HTTP/2 stream's body (one of no known length: an event stream) whose first poll
    /// yields once, so that the connection writes the response heads of a burst of streams
    /// before their first data. h2 queues every frame in one slab per connection that is
    /// never shrunk: a burst of 100 streams queued 100 heads and 100 first chunks at once
    /// (256 slots of 312 bytes); yielding, it queues the heads, writes them, then the chunks
    /// (128 slots).
    held: bool,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.held {
            self.held = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that must arrive by a deadline: a body that trickles in would otherwise
/// hold its connection (and the handler reading it) for as long as the client likes.
struct TimedBody {
    body: Incoming,
    deadline: Instant,
    /// Set up on the first read that has to wait: a body already received costs no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Option<Arc<AtomicBool>>,
}

impl TimedBody {
    /// The request with its body under `timeout`, and the flag that says it ran out.
    fn wrap(req: hyper::Request<Incoming>, timeout: Duration) -> (hyper::Request<Self>, Option<Arc<AtomicBool>>) {
        let timed_out = (!req.body().is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let flag = timed_out.clone();
        let deadline = Instant::now() + timeout;
        (req.map(|body| Self { body, deadline, sleep: None, timed_out }), flag)
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        if let Some(flag) = &this.timed_out {
            flag.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Some(Err("request body not received in time".into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The answer to a request whose body did not arrive in time; the connection is not reused.
fn body_timeout() -> axum::response::Response {
    let mut resp =
        crate::http::ApiError::refuse(crate::http::Refusal::BodyTimeout, "the request body did not arrive in time")
            .into_response();
    resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    resp
}

/// Binds with a listen backlog fit for reconnect storms (the kernel caps it at somaxconn),
/// and the send buffer every accepted socket inherits (`0`: the kernel's autotuning). Set
/// once on the listener rather than on each accepted socket: no system call per connection.
fn listen(addr: SocketAddr, send_buffer: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if send_buffer > 0 {
        socket.set_send_buffer_size(send_buffer)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pending connections the kernel may queue for `accept`.
const LISTEN_BACKLOG: u32 = 4096;

fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServerError> {
    let tls_err =
        |what, path: &Path, message: String| ServerError::Tls { what, path: path.display().to_string(), message };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_err("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err("certificate", cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err("private key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("configuration", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| tls_err("certificate and key", cert, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_answers_request_id_is_kept_and_marked_never_indexed() {
        let mut resp = axum::response::Response::new(axum::body::Body::empty());
        crate::http::observe::answer_with_id(&mut resp, axum::http::HeaderValue::from_static("01abc"));
        never_index_request_id(&mut resp);
        let id = resp.headers().get("x-request-id");
        assert_eq!(id.map(|v| v.as_bytes()), Some(b"01abc".as_slice()));
        assert!(id.is_some_and(|v| v.is_sensitive()));
    }

    #[test]
    fn a_held_body_yields_once_and_wakes_itself_then_gives_its_first_chunk() {
        let activity = Arc::new(Activity::new());
        let mut body =
            Tracked { body: axum::body::Body::from("data: x\n\n"), _in_flight: activity.begin(), held: true };
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(woken.0.load(Ordering::Relaxed), "a held body must wake its task, or the stream never starts");
        let frame = Pin::new(&mut body).poll_frame(&mut cx);
        let data = match frame {
            Poll::Ready(Some(Ok(f))) => f.into_data().ok(),
            _ => None,
        };
        assert_eq!(data.as_deref(), Some(b"data: x\n\n".as_slice()));
    }

    #[derive(Default)]
    struct Woken(AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}
