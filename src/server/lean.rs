//! The lean HTTP/1.1 path for event streams on plain TCP.
//!
//! hyper keeps an 8 KB read buffer, a write buffer and its dispatcher state for as long as a
//! connection lives: for an idle SSE stream that is most of the memory it costs. So a
//! plain-TCP connection whose first request is `GET /api/events` over HTTP/1.x is served
//! here instead: the request head is read into a small buffer that is freed once parsed,
//! the request goes through the same axum router as every other request (the same handler,
//! middleware, request id, refusal counters and JSON errors), and if the answer is an event
//! stream, this module writes the response head and then each body chunk straight to the
//! socket, with `Transfer-Encoding: chunked` exactly as hyper would (close-delimited for
//! HTTP/1.0). The connection ends with the stream, and the head says so (`connection:
//! close`, where hyper would keep the connection for another request). While streaming it
//! holds the socket, the body and a few words of state, in a task of their own
//! ([`StreamTask`]): the connection's first task, sized for routing and for every other
//! path, ends once the stream is handed over.
//!
//! Everything else goes to hyper, with the bytes already read replayed first ([`Prefixed`]):
//! another first request, an HTTP/2 preface, a head too big for the small buffer or one that
//! does not parse (hyper then answers 431 or 400 as it always did), and the keep-alive
//! follow-ups of a connection whose `/api/events` request was refused.
//!
//! The rules of the hyper path hold here too: the first request must arrive within the
//! header deadline; a stalled reader is cut off through its [`KillSwitch`] when its queue
//! overflows; a client that closes is noticed by a read of a tiny buffer.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version, header};
use bytes::{Buf, Bytes, BytesMut};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

use super::h1::{Framing, encode_head, starts};
use super::lean_publish::{Head, PUBLISH_PREFIX, publish_head};
use crate::herald::Herald;
use crate::transport::KillSwitch;

/// The request line every lean stream request starts with.
const STREAM_PREFIX: &[u8] = b"GET /api/events";

/// The largest request head read here; a bigger one is left to hyper (which has its own,
/// larger limit and answers 431 past it).
const MAX_HEAD: usize = 8 * 1024;

/// First allocation for a request head: a browser's `EventSource` request with a cookie
/// fits.
const INITIAL_HEAD: usize = 1024;

/// Most headers in a lean request head; more is left to hyper.
const MAX_HEADERS: usize = 64;

/// Bytes a client may send on a connection that is streaming to it before it is closed
/// (an `EventSource` sends none; hyper would stop reading instead).
const MAX_IGNORED_INPUT: usize = 16 * 1024;

/// What the first bytes of a plain-TCP connection turned out to be.
pub(super) enum Sniffed {
    /// An event-stream request to serve here; `rest` is what followed its head. Boxed, so
    /// that the connection's future is not sized for a request it has already handed on.
    Stream { request: Box<Request<Body>>, rest: BytesMut },
    /// A publish to serve here ([`serve_publishes`]): the bytes read so far, which start with
    /// its whole head.
    Publish(BytesMut),
    /// Anything else, for hyper, with the bytes read so far.
    Other(BytesMut),
    /// The client closed, failed, or did not finish its head before the deadline.
    Gone,
}

/// Reads the start of a connection until it is known whether it is a lean event-stream
/// request, or (with `publish`, the server's own routes) a lean publish. Only a connection
/// that keeps matching `GET /api/events` or `POST /api/` is read further than its first
/// bytes.
pub(super) async fn sniff(tcp: &mut TcpStream, deadline: Instant, publish: Option<&Herald>) -> Sniffed {
    let mut buf = BytesMut::with_capacity(INITIAL_HEAD);
    loop {
        match tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Sniffed::Gone,
            Ok(Ok(_)) => {}
        }
        let parsed = if starts(&buf, STREAM_PREFIX) {
            if buf.len() < STREAM_PREFIX.len() {
                continue;
            }
            parse(&buf)
        } else if let Some(herald) = publish.filter(|_| starts(&buf, PUBLISH_PREFIX)) {
            if buf.len() < PUBLISH_PREFIX.len() {
                continue;
            }
            match publish_head(&buf, herald) {
                Head::Lean(_) => return Sniffed::Publish(buf),
                Head::Partial => Parsed::Partial,
                Head::NotLean => Parsed::NotLean,
            }
        } else {
            return Sniffed::Other(buf);
        };
        match parsed {
            Parsed::Partial if buf.len() < MAX_HEAD => {
                if buf.capacity() == buf.len() {
                    buf.reserve((buf.len() * 2).min(MAX_HEAD) - buf.len());
                }
            }
            Parsed::Partial | Parsed::NotLean => return Sniffed::Other(buf),
            Parsed::Lean(request, len) => {
                // Copied out so that the head's buffer is freed now, not when the stream ends.
                let rest = BytesMut::from(&buf[len..]);
                return Sniffed::Stream { request, rest };
            }
        }
    }
}

enum Parsed {
    Partial,
    NotLean,
    /// The request, and the length of its head.
    Lean(Box<Request<Body>>, usize),
}

/// Parses a complete head into a request if it is one the lean path serves: `GET` of
/// exactly `/api/events`, HTTP/1.0 or 1.1, no body and no upgrade.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotLean,
    };
    let (Some("GET"), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::NotLean;
    };
    let route = path.split_once('?').map_or(path, |(route, _)| route);
    if route != "/api/events" {
        return Parsed::NotLean;
    }
    let version = match minor {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => return Parsed::NotLean,
    };
    let Ok(uri) = Uri::try_from(path) else {
        return Parsed::NotLean;
    };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
        else {
            return Parsed::NotLean;
        };
        // A body or a protocol switch is hyper's business.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::UPGRADE {
            return Parsed::NotLean;
        }
        map.append(name, value);
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = map;
    Parsed::Lean(Box::new(request), len)
}

/// How the connection goes on after a lean request.
pub(super) enum After {
    /// Closed (the connection may not be reused).
    Closed,
    /// The answer was a complete response on a keep-alive connection: hyper serves what
    /// follows, starting with these bytes.
    KeepAlive(BytesMut),
    /// The answer is an event stream: its [`StreamTask`] writes it for as long as it lasts.
    Stream(Streaming),
}

/// An event stream's answer, routed and not yet written: what a stream holds for its life,
/// and nothing of the request that opened it. The server runs it in a task of its own, so
/// that the memory of an idle stream is this and its socket, not a future sized for the
/// request's routing and the connection's other paths.
pub(super) struct Streaming {
    head: Bytes,
    body: Body,
    framing: Framing,
}

impl Streaming {
    /// The stream's task over its socket, holding the shutdown watcher for its life.
    pub(super) fn into_task(
        self,
        tcp: TcpStream,
        kill: &KillSwitch,
        watcher: tokio::sync::watch::Receiver<()>,
    ) -> StreamTask {
        StreamTask {
            tcp,
            body: self.body,
            out: Pending::new(self.head),
            framing: self.framing,
            killed: Box::pin(kill.killed_owned()),
            ignored: 0,
            ended: false,
            _watcher: watcher,
        }
    }
}

/// Serves one lean request: routes it, then writes a complete answer, or hands an event
/// stream back to be run ([`After::Stream`]).
pub(super) async fn serve(
    tcp: &mut TcpStream,
    router: &Router,
    request: Box<Request<Body>>,
    rest: BytesMut,
    kill: &KillSwitch,
) -> io::Result<After> {
    // Routing and writing a complete answer are boxed: their futures are large and short-lived,
    // while this task's future lives as long as the stream.
    let (head, body, framing, keep_alive) = Box::pin(respond(router, request, kill)).await;
    match framing {
        Framing::Length(_) => {
            Box::pin(write_all(tcp, head, body)).await?;
            if keep_alive { Ok(After::KeepAlive(rest)) } else { Ok(After::Closed) }
        }
        Framing::Chunked | Framing::Close => {
            drop(rest);
            Ok(After::Stream(Streaming { head, body, framing }))
        }
    }
}

/// Routes the request; returns the encoded response head, the body, its framing, and
/// whether the connection may be reused after it.
async fn respond(router: &Router, request: Box<Request<Body>>, kill: &KillSwitch) -> (Bytes, Body, Framing, bool) {
    let mut request = *request;
    let version = request.version();
    let keep_alive = wants_keep_alive(version, request.headers());
    request.extensions_mut().insert(kill.clone());
    let response: Response<Body> = match tower::Service::call(&mut router.clone(), request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let framing = match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None if version == Version::HTTP_10 => Framing::Close,
        None => Framing::Chunked,
    };
    // A stream's connection closes when the stream ends ([`StreamTask`]), and its head says
    // so: a client that pooled the connection again on the last chunk would send its next
    // request into the close and lose it. (hyper keeps its connections after a stream.)
    let keep_alive = keep_alive && matches!(framing, Framing::Length(_));
    // The response's header map is dropped here: a stream keeps only its encoded head, and
    // only until it is written.
    (encode_head(version, parts.status, &parts.headers, keep_alive, framing), body, framing, keep_alive)
}

/// Writes a response whose body has a known length.
async fn write_all(tcp: &TcpStream, head: Bytes, body: Body) -> io::Result<()> {
    let bytes = http_body_util::BodyExt::collect(body).await.map_err(|e| io::Error::other(e.to_string()))?.to_bytes();
    let mut out = Pending::new(head);
    out.set_data(bytes, Framing::Length(0));
    poll_fn(|cx| out.poll_flush(tcp, cx)).await
}

/// Whether the client lets the connection be reused after this request (hyper's rule).
fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    match version {
        Version::HTTP_10 => has("keep-alive") && !has("close"),
        _ => !has("close"),
    }
}

/// A stream being written: the head, then every chunk of the body until the body ends, the
/// client goes away, or the kill switch fires. A future of its own rather than an `async fn`:
/// it is what an idle stream's task holds for hours, and a generated future keeps its
/// arguments and its inner futures' copies of them side by side (432 bytes against 208).
pub(super) struct StreamTask {
    tcp: TcpStream,
    body: Body,
    out: Pending,
    framing: Framing,
    /// Fired by the hub; boxed, since a notification waiter must not move.
    killed: Pin<Box<OwnedNotified>>,
    /// Bytes the client sent, read and dropped.
    ignored: usize,
    ended: bool,
    /// The shutdown watcher: a drain waits for it to be dropped with the stream.
    _watcher: tokio::sync::watch::Receiver<()>,
}

impl Future for StreamTask {
    type Output = ();

    /// Streams to the end; a clean end (the drain's `retry:`) then shuts the socket's
    /// writing side down, so that the client reads it all before the FIN.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match ready!(this.poll_stream(cx)) {
            Err(e) => tracing::debug!(error = %e, "event stream ended with an error"),
            Ok(()) if this.ended => {
                let _ = ready!(Pin::new(&mut this.tcp).poll_shutdown(cx));
            }
            Ok(()) => {}
        }
        Poll::Ready(())
    }
}

impl StreamTask {
    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self;
        let sock = &this.tcp;
        // The client's side: EOF means it left. An event-stream client sends nothing, so
        // whatever it sends is read (to see the EOF behind it) and dropped, up to a limit.
        while sock.poll_read_ready(cx)?.is_ready() {
            let mut scratch = [0u8; 64];
            match sock.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(n) => {
                    this.ignored += n;
                    if this.ignored > MAX_IGNORED_INPUT {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        loop {
            if this.out.poll_flush(sock, cx)?.is_pending() {
                // Blocked on a full socket: the hub fires the kill switch when the queue
                // behind this write overflows or stalls too long. (While the socket takes
                // writes, a close reaches this loop through the body, which then ends; so
                // the switch, whose every poll takes a lock, is polled only here.)
                return if this.killed.as_mut().poll(cx).is_ready() { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        this.out.set_data(data, this.framing);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e.to_string()))),
                Poll::Ready(None) => {
                    this.ended = true;
                    if this.framing == Framing::Chunked {
                        this.out.set_static(b"0\r\n\r\n");
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Bytes waiting to be written: an optional head, then one body chunk (its size line, the
/// data, the chunk's CRLF), written with one vectored write and no copy of the data.
pub(super) struct Pending {
    head: Bytes,
    size: [u8; 18],
    size_len: u8,
    size_at: u8,
    data: Bytes,
    tail: &'static [u8],
}

impl Pending {
    pub(super) fn new(head: Bytes) -> Self {
        Self { head, size: [0; 18], size_len: 0, size_at: 0, data: Bytes::new(), tail: b"" }
    }

    fn is_empty(&self) -> bool {
        self.head.is_empty() && self.size_at == self.size_len && self.data.is_empty() && self.tail.is_empty()
    }

    pub(super) fn set_data(&mut self, data: Bytes, framing: Framing) {
        if framing == Framing::Chunked {
            // hyper writes chunk sizes in upper-case hex.
            let mut digits = [0u8; 16];
            let mut n = data.len();
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b"0123456789ABCDEF"[n % 16];
                n /= 16;
                if n == 0 {
                    break;
                }
            }
            let len = digits.len() - i;
            self.size[..len].copy_from_slice(&digits[i..]);
            self.size[len..len + 2].copy_from_slice(b"\r\n");
            self.size_len = (len + 2) as u8;
            self.tail = b"\r\n";
        } else {
            self.size_len = 0;
            self.tail = b"";
        }
        self.size_at = 0;
        self.data = data;
    }

    fn set_static(&mut self, bytes: &'static [u8]) {
        self.tail = bytes;
    }

    /// Writes until everything is written or the socket is full.
    pub(super) fn poll_flush(&mut self, tcp: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let size = &self.size[usize::from(self.size_at)..usize::from(self.size_len)];
            let slices =
                [IoSlice::new(&self.head), IoSlice::new(size), IoSlice::new(&self.data), IoSlice::new(self.tail)];
            match tcp.try_write_vectored(&slices) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(tcp.poll_write_ready(cx))?,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        let head = n.min(self.head.len());
        self.head.advance(head);
        n -= head;
        let size = n.min(usize::from(self.size_len - self.size_at));
        self.size_at += size as u8;
        n -= size;
        let data = n.min(self.data.len());
        self.data.advance(data);
        n -= data;
        self.tail = &self.tail[n.min(self.tail.len())..];
        if self.data.is_empty() {
            // Release the shared frame as soon as it is written.
            self.data = Bytes::new();
        }
    }
}

/// A connection whose first bytes were already read: they are replayed before the socket.
pub(super) struct Prefixed {
    prefix: BytesMut,
    io: TcpStream,
}

impl Prefixed {
    pub(super) fn new(prefix: BytesMut, io: TcpStream) -> Self {
        Self { prefix, io }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            self.prefix = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lean(head: &str) -> bool {
        matches!(parse(head.as_bytes()), Parsed::Lean(..))
    }

    #[test]
    fn only_plain_event_stream_gets_are_lean() {
        assert!(lean("GET /api/events?channel=channel:x HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(lean("GET /api/events HTTP/1.0\r\n\r\n"));
        assert!(!lean("GET /api/eventsx HTTP/1.1\r\n\r\n"));
        assert!(!lean("GET /api/events/x HTTP/1.1\r\n\r\n"));
        assert!(!lean("HEAD /api/events HTTP/1.1\r\n\r\n"));
        assert!(!lean("GET /api/events HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"));
        assert!(!lean("GET /api/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(!lean("GET /api/events HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"));
        assert!(matches!(parse(b"GET /api/events HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial));
        assert!(matches!(parse(b"GET /api/events HTTP/1.1\r\nHo st: x\r\n\r\n"), Parsed::NotLean));
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(v));
            h
        };
        assert!(wants_keep_alive(Version::HTTP_11, &HeaderMap::new()));
        assert!(!wants_keep_alive(Version::HTTP_11, &with("Close")));
        assert!(!wants_keep_alive(Version::HTTP_10, &HeaderMap::new()));
        assert!(wants_keep_alive(Version::HTTP_10, &with("keep-alive")));
    }

    #[test]
    fn chunk_sizes_are_upper_case_hex_like_hypers() {
        let mut p = Pending::new(Bytes::new());
        p.set_data(Bytes::from(vec![b'x'; 0xC0]), Framing::Chunked);
        assert_eq!(&p.size[..usize::from(p.size_len)], b"C0\r\n");
        p.set_data(Bytes::from_static(b"x"), Framing::Chunked);
        assert_eq!(&p.size[..usize::from(p.size_len)], b"1\r\n");
    }
}
