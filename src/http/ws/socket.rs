//! One WebSocket on its upgraded connection (RFC 6455), below any WebSocket library: the
//! opening handshake of `/api/ws` (HTTP/1.1 Upgrade, or HTTP/2 extended CONNECT), the
//! client's frames read and checked, and the server's frames written as they are given.
//!
//! It owns the socket's bytes and buffers, and nothing of what the frames mean (that is
//! `session`'s). A server's frame is unmasked, so an event's frame is the same bytes for
//! every socket shown it: the caller gives whole frames as shared [`Bytes`] (built once per
//! event, `transport::messages`), and the socket writes them with vectored writes, without
//! copying them into a write buffer of its own. Client frames are read with tungstenite's
//! frame header parser; the rest (masks, fragments, control frames, the limits and the close
//! codes they earn) is here. An idle socket holds no buffer: the bytes of a frame not yet
//! whole are kept only while one arrives, and queued frames only until they are written.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, Cursor, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, Response, StatusCode, Version};
use bytes::{Buf as _, Bytes};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use super::protocol::{Close, close_frame};
use crate::transport::messages::websocket_frame;

/// The socket of an upgraded request, as hyper hands it over.
pub(in crate::http) type UpgradedIo = TokioIo<Upgraded>;

/// Bytes read from the socket at once while no frame is partly read (on the stack: an idle
/// socket keeps no read buffer).
const READ_CHUNK: usize = 512;

/// Most bytes read at once into a frame that is partly read.
const MAX_READ_CHUNK: usize = 64 * 1024;

/// Most frames given to one vectored write.
const MAX_SLICES: usize = 64;

/// A server's ping, with no payload.
pub(in crate::http) const PING: Bytes = Bytes::from_static(&[0x89, 0x00]);

const OP_PONG: u8 = 0xA;

/// A request to open a WebSocket, checked as RFC 6455 (HTTP/1.1) or RFC 8441 (HTTP/2) asks.
pub(in crate::http) struct Upgrade {
    on_upgrade: OnUpgrade,
    /// `Sec-WebSocket-Key`, over HTTP/1.1.
    key: Option<HeaderValue>,
    /// The subprotocols the client offers (`Sec-WebSocket-Protocol`).
    offered: Option<HeaderValue>,
    /// The one the answer names, chosen among them.
    chosen: Option<&'static str>,
}

impl Upgrade {
    /// The request's upgrade, or why it is not one: an HTTP/1.1 `GET` with `Connection:
    /// upgrade`, `Upgrade: websocket`, a `Sec-WebSocket-Key`, or an HTTP/2 `CONNECT` with
    /// `:protocol` `websocket`; `Sec-WebSocket-Version: 13` either way.
    pub(in crate::http) fn from_parts(parts: &mut Parts) -> Result<Self, &'static str> {
        let key = if parts.version <= Version::HTTP_11 {
            if parts.method != Method::GET {
                return Err("a WebSocket opens with `GET` over HTTP/1.1");
            }
            if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
                return Err("the `Connection` header does not include `upgrade`");
            }
            if !header_is(&parts.headers, header::UPGRADE, "websocket") {
                return Err("the `Upgrade` header is not `websocket`");
            }
            let key =
                parts.headers.get(header::SEC_WEBSOCKET_KEY).ok_or("the `Sec-WebSocket-Key` header is missing")?;
            Some(key.clone())
        } else {
            if parts.method != Method::CONNECT {
                return Err("a WebSocket opens with `CONNECT` over HTTP/2");
            }
            if parts.extensions.get::<hyper::ext::Protocol>().is_none_or(|p| p.as_str() != "websocket") {
                return Err("the `:protocol` pseudo-header is not `websocket`");
            }
            None
        };
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err("the `Sec-WebSocket-Version` header is not `13`");
        }
        let on_upgrade =
            parts.extensions.remove::<OnUpgrade>().ok_or("the connection cannot be upgraded (no upgrade state)")?;
        let offered = parts.headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
        Ok(Self { on_upgrade, key, offered, chosen: None })
    }

    /// Takes `protocol` as the socket's subprotocol if the client offers it; whether it did.
    pub(in crate::http) fn choose(&mut self, protocol: &'static str) -> bool {
        let offers = self
            .offered
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim() == protocol));
        if offers {
            self.chosen = Some(protocol);
        }
        offers
    }

    /// The answer that opens the socket (`101` over HTTP/1.1, `200` over HTTP/2, the
    /// subprotocol [`Upgrade::choose`] took if any, no extension), and a task that waits for
    /// the upgrade and hands the socket to `open`.
    pub(in crate::http) fn respond(
        self,
        max_message: usize,
        open: impl FnOnce(Socket<UpgradedIo>) + Send + 'static,
    ) -> Response<Body> {
        let on_upgrade = self.on_upgrade;
        // A task that ends once the socket is open: the socket's own task is spawned by
        // `open`, sized for what an open socket holds.
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => open(Socket::new(TokioIo::new(upgraded), max_message)),
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut response = Response::new(Body::empty());
        if let Some(chosen) = self.chosen {
            response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(chosen));
        }
        if let Some(key) = self.key {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            // Base64: always a valid header value.
            if let Ok(accept) = HeaderValue::from_str(&accept) {
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            }
        }
        response
    }
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_contains(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// What the client sent: a whole message or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::http) enum In {
    Text(String),
    /// A binary message (Centrifugo's Protobuf protocol; `/api/ws` refuses it).
    Binary(Bytes),
    /// A ping, with the payload its pong must carry.
    Ping(Bytes),
    Pong,
    /// The client's close, with its code, if it gave one: the answer echoes it.
    Close(Option<u16>),
}

/// A fragmented message being put together.
struct Partial {
    text: bool,
    data: Vec<u8>,
}

/// One WebSocket's reading and writing over `io`.
pub(in crate::http) struct Socket<S> {
    io: S,
    /// Bytes read and not yet a whole frame; no allocation while there are none.
    buf: Vec<u8>,
    /// A fragmented message, until its last frame.
    partial: Option<Box<Partial>>,
    /// Payload bytes still to drop of a frame being skipped (while closing).
    skip: u64,
    /// How many more bytes the frame in `buf` needs, when known (at most [`MAX_READ_CHUNK`]).
    want: u32,
    /// The largest message (or frame) a client may send.
    max_message: u32,
    /// Whole frames to write, the first perhaps partly written; no allocation between writes.
    out: VecDeque<Bytes>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    pub(in crate::http) fn new(io: S, max_message: usize) -> Self {
        let max_message = u32::try_from(max_message).unwrap_or(u32::MAX);
        Self { io, buf: Vec::new(), want: 0, partial: None, skip: 0, max_message, out: VecDeque::new() }
    }

    /// The client's next message or control frame; `Err` with the close a broken frame
    /// earns; `None` once the connection ended or failed.
    pub(in crate::http) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<In, Close>>> {
        loop {
            match self.parse() {
                Ok(None) => {}
                Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                Err(close) => return Poll::Ready(Some(Err(close))),
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(None),
                Ok(_) => {}
            }
        }
    }

    /// Reads what the socket has into `buf`: the number of bytes, 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            self.buf.extend_from_slice(read.filled());
            return Poll::Ready(Ok(read.filled().len()));
        }
        let start = self.buf.len();
        let chunk = (self.want as usize).clamp(READ_CHUNK, MAX_READ_CHUNK);
        self.buf.resize(start + chunk, 0);
        let mut read = ReadBuf::new(&mut self.buf[start..]);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut read);
        let n = read.filled().len();
        self.buf.truncate(start + n);
        ready!(polled)?;
        Poll::Ready(Ok(n))
    }

    /// The next whole message or control frame in `buf`, if there is one. A frame that
    /// breaks the protocol is left in `buf`, for [`Socket::poll_closed`] to skip.
    fn parse(&mut self) -> Result<Option<In>, Close> {
        loop {
            if self.buf.is_empty() {
                if self.buf.capacity() > 0 {
                    self.buf = Vec::new();
                }
                return Ok(None);
            }
            let mut cursor = Cursor::new(&self.buf[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(|_| Close::Protocol)? else {
                self.want = 14;
                return Ok(None);
            };
            let head = cursor.position() as usize;
            // No extension was agreed, and a client's frames are masked (RFC 6455, 5.1).
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(Close::Protocol);
            }
            let Some(mask) = header.mask else { return Err(Close::Protocol) };
            // A 64-bit length has its most significant bit clear (RFC 6455, 5.2): with it
            // set, a continuation's length would overflow the message's length so far.
            if len > i64::MAX as u64 {
                return Err(Close::Protocol);
            }
            match header.opcode {
                OpCode::Control(_) if !header.is_final || len > 125 => return Err(Close::Protocol),
                OpCode::Control(_) => {}
                OpCode::Data(Data::Continue) if self.partial.is_none() => return Err(Close::Protocol),
                OpCode::Data(Data::Text | Data::Binary) if self.partial.is_some() => return Err(Close::Protocol),
                OpCode::Data(_) => {
                    let so_far = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
                    if so_far.saturating_add(len) > u64::from(self.max_message) {
                        return Err(Close::TooBig);
                    }
                }
            }
            // Within `max_message` (or 125), so it fits in memory.
            let end = head + len as usize;
            if self.buf.len() < end {
                self.want = u32::try_from(end - self.buf.len()).unwrap_or(u32::MAX);
                return Ok(None);
            }
            let mut payload = self.buf[head..end].to_vec();
            self.buf.drain(..end);
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(Control::Ping) => return Ok(Some(In::Ping(Bytes::from(payload)))),
                OpCode::Control(Control::Pong) => return Ok(Some(In::Pong)),
                OpCode::Control(Control::Close) => return close_of(&payload).map(|code| Some(In::Close(code))),
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    return Err(Close::Protocol);
                }
                OpCode::Data(data) => {
                    let whole = match (data, self.partial.take()) {
                        (Data::Continue, Some(mut partial)) => {
                            partial.data.extend_from_slice(&payload);
                            partial
                        }
                        (data, _) => Box::new(Partial { text: data == Data::Text, data: payload }),
                    };
                    if !header.is_final {
                        self.partial = Some(whole);
                        continue;
                    }
                    if !whole.text {
                        return Ok(Some(In::Binary(Bytes::from(whole.data))));
                    }
                    return match String::from_utf8(whole.data) {
                        Ok(text) => Ok(Some(In::Text(text))),
                        Err(_) => Err(Close::InvalidUtf8),
                    };
                }
            }
        }
    }

    /// Reads after the server's close, dropping every frame, until the client's close, the
    /// end of the connection, or bytes that are not frames (then until the end).
    pub(in crate::http) fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.partial = None;
        loop {
            let skip = self.skip.min(self.buf.len() as u64) as usize;
            self.buf.drain(..skip);
            self.skip -= skip as u64;
            if self.skip == 0 && !self.buf.is_empty() {
                match FrameHeader::parse(&mut Cursor::new(&self.buf[..])) {
                    Ok(Some((header, _))) if header.opcode == OpCode::Control(Control::Close) => {
                        return Poll::Ready(());
                    }
                    Ok(Some((header, len))) => {
                        let head = header.len(len);
                        self.buf.drain(..head);
                        self.skip = len;
                        continue;
                    }
                    Ok(None) => {}
                    Err(_) => {
                        self.buf.clear();
                        self.skip = u64::MAX;
                    }
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
    }

    /// Queues a whole frame (see `transport::messages::websocket_frame`), written by the
    /// next [`Socket::poll_write`].
    pub(in crate::http) fn queue(&mut self, frame: Bytes) {
        self.out.push_back(frame);
    }

    /// Room for `n` more frames in the queue, so that a burst grows it once.
    pub(in crate::http) fn reserve(&mut self, n: usize) {
        self.out.reserve(n);
    }

    /// Writes the queued frames, as many at once as the socket takes (each frame's bytes as
    /// they are: an event's are shared by every socket it is written to), and flushes them.
    pub(in crate::http) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (slice, frame) in slices.iter_mut().zip(&self.out) {
                *slice = IoSlice::new(frame);
                n += 1;
            }
            let mut written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while let Some(front) = self.out.front_mut() {
                if written < front.len() {
                    front.advance(written);
                    break;
                }
                written -= front.len();
                self.out.pop_front();
            }
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        // The queue's buffer held what the largest burst needed; an idle socket keeps none.
        if self.out.capacity() > 0 {
            self.out = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    /// [`Socket::poll_next`], awaited; cancelled, it loses nothing (what was read stays).
    pub(in crate::http) async fn recv(&mut self) -> Option<Result<In, Close>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Queues `frame` and writes everything queued.
    pub(in crate::http) async fn send(&mut self, frame: Bytes) -> io::Result<()> {
        self.queue(frame);
        poll_fn(|cx| self.poll_write(cx)).await
    }

    /// The server's side of the closing handshake: its close `frame` (after whatever else
    /// is queued), then what the client still sends is read and dropped until its close, so
    /// that the socket is not reset under the client's unread frames, the close among them;
    /// then the server ends the connection first (RFC 6455, 7.1.1). Not bounded in time:
    /// the caller bounds it.
    pub(in crate::http) async fn close_handshake(&mut self, frame: Bytes) {
        if self.send(frame).await.is_ok() {
            poll_fn(|cx| self.poll_closed(cx)).await;
            let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
        }
    }

    /// Answers the client's close (with its `code`, if it gave one) and ends the connection.
    pub(in crate::http) async fn answer_close(&mut self, code: Option<u16>) {
        if self.send(close_frame(code, b"")).await.is_ok() {
            let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
        }
    }
}

/// A client's close frame's payload: nothing, or a code and a UTF-8 reason.
fn close_of(payload: &[u8]) -> Result<Option<u16>, Close> {
    match payload {
        [] => Ok(None),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() || std::str::from_utf8(reason).is_err() {
                return Err(Close::Protocol);
            }
            Ok(Some(code))
        }
        [_] => Err(Close::Protocol),
    }
}

/// Unmasks a client frame's payload (RFC 6455, 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A pong answering a ping with `payload` (at most 125 bytes, as the ping's).
pub(in crate::http) fn pong(payload: &[u8]) -> Bytes {
    websocket_frame(OP_PONG, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's frame, masked with `mask`: a server's frame of the same payload (its
    /// header is checked in `transport::messages`) with `first` as its first byte, the mask
    /// bit and the mask.
    fn masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let server = websocket_frame(first & 0x0F, payload);
        let mut frame = server[..server.len() - payload.len()].to_vec();
        frame[0] = first;
        frame[1] |= 0x80;
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        frame
    }

    /// What the server reads from `bytes`, given in pieces of `at` bytes.
    async fn read_all(bytes: &[u8], at: usize, max: usize) -> Vec<Result<In, Close>> {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut socket = Socket::new(server, max);
        let pieces: Vec<Vec<u8>> = bytes.chunks(at.max(1)).map(<[u8]>::to_vec).collect();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut client = client;
            for piece in pieces {
                client.write_all(&piece).await.unwrap_or_else(|e| panic!("{e}"));
                client.flush().await.unwrap_or_else(|e| panic!("{e}"));
                tokio::task::yield_now().await;
            }
        });
        let mut got = Vec::new();
        while let Some(msg) = std::future::poll_fn(|cx| socket.poll_next(cx)).await {
            let end = msg.is_err();
            got.push(msg);
            if end {
                break;
            }
        }
        writer.await.unwrap_or_else(|e| panic!("{e}"));
        got
    }

    #[tokio::test]
    async fn a_client_frame_split_at_every_byte_boundary_reads_the_same() {
        let mut stream = masked(0x81, br#"{"type":"ping"}"#, [1, 2, 3, 4]);
        stream.extend(masked(0x89, b"hb", [9, 8, 7, 6]));
        // A text message in three fragments, with a ping between two of them.
        stream.extend(masked(0x01, "héllo ".as_bytes(), [5, 5, 5, 5]));
        stream.extend(masked(0x8A, b"", [0, 0, 0, 0]));
        stream.extend(masked(0x00, &[b'w'; 300], [7, 0, 7, 0]));
        stream.extend(masked(0x80, b"!", [1, 1, 1, 1]));
        stream.extend(masked(0x88, &[0x03, 0xe8, b'o', b'k'], [3, 3, 3, 3]));
        let expected = vec![
            Ok(In::Text(r#"{"type":"ping"}"#.into())),
            Ok(In::Ping(Bytes::from_static(b"hb"))),
            Ok(In::Pong),
            Ok(In::Text(format!("héllo {}!", "w".repeat(300)))),
            Ok(In::Close(Some(1000))),
        ];
        for at in 1..=stream.len() {
            assert_eq!(read_all(&stream, at, 4096).await, expected, "in pieces of {at} bytes");
        }
    }

    #[tokio::test]
    async fn frames_that_break_the_protocol_earn_their_close_codes() {
        let cases: [(Vec<u8>, Close); 9] = [
            // Unmasked.
            (vec![0x81, 0x02, b'h', b'i'], Close::Protocol),
            // An extension bit with no extension agreed.
            (masked(0xC1, b"hi", [1, 2, 3, 4]), Close::Protocol),
            // A continuation with nothing to continue.
            (masked(0x80, b"hi", [1, 2, 3, 4]), Close::Protocol),
            // A new message in the middle of a fragmented one.
            ([masked(0x01, b"a", [1; 4]), masked(0x81, b"b", [1; 4])].concat(), Close::Protocol),
            // A fragmented ping, and one over 125 bytes.
            (masked(0x09, b"", [1; 4]), Close::Protocol),
            (masked(0x89, &[0; 126], [1; 4]), Close::Protocol),
            // Not UTF-8.
            (masked(0x81, &[0xff, 0xfe], [1; 4]), Close::InvalidUtf8),
            // One frame over the limit, told by its header before its payload arrives.
            (masked(0x81, &[b'a'; 100], [1; 4])[..8].to_vec(), Close::TooBig),
            // Fragments that together pass it.
            ([masked(0x01, &[b'a'; 40], [1; 4]), masked(0x00, &[b'a'; 40], [1; 4])].concat(), Close::TooBig),
        ];
        for (bytes, close) in cases {
            let got = read_all(&bytes, bytes.len(), 64).await;
            assert_eq!(got.last(), Some(&Err(close)), "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn after_the_servers_close_frames_are_skipped_until_the_clients_close() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut socket = Socket::new(server, 64);
        use tokio::io::AsyncWriteExt as _;
        // A frame over the limit: its payload is skipped, not read as frames.
        let mut bytes = masked(0x81, &[0x88; 100], [0; 4]);
        bytes.extend(masked(0x81, b"late", [1; 4]));
        let close = masked(0x88, &[0x03, 0xe8], [1; 4]);
        bytes.extend(&close);
        client.write_all(&bytes).await.unwrap_or_else(|e| panic!("{e}"));
        let first = std::future::poll_fn(|cx| socket.poll_next(cx)).await;
        assert_eq!(first, Some(Err(Close::TooBig)));
        std::future::poll_fn(|cx| socket.poll_closed(cx)).await;
        // Had the payload of close opcodes been read as frames, the first would have ended it.
        assert_eq!(socket.buf, close, "it stopped at the client's close");
        drop(client);
    }

    #[tokio::test]
    async fn queued_frames_are_written_whole_and_in_order_through_short_writes() {
        let (mut client, server) = tokio::io::duplex(7);
        let mut socket = Socket::new(server, 64);
        let shared = Bytes::from(vec![0x81, 3, b'a', b'b', b'c']);
        for frame in [shared.clone(), PING, shared.clone(), pong(b"x")] {
            socket.queue(frame);
        }
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut got = vec![0; 15];
            client.read_exact(&mut got).await.unwrap_or_else(|e| panic!("{e}"));
            got
        });
        std::future::poll_fn(|cx| socket.poll_write(cx)).await.unwrap_or_else(|e| panic!("{e}"));
        let got = reader.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, [&shared[..], &[0x89, 0], &shared[..], &[0x8A, 1, b'x']].concat());
        assert_eq!(shared.len(), 5, "the shared frame itself is not consumed by the write");
    }
}
