//! Server-Sent Events over HTTP: the transport of `GET /api/events`.
//!
//! [`SseBody`] is the streaming response body of one stream, polled by hyper or by the lean
//! HTTP/1.1 writer (`server/lean.rs`); [`SseOut`] renders what the connection's reader hands
//! it as SSE bytes. A single event of a single-channel stream is a slice of the frame its
//! event was framed into once for every subscriber (`crate::sse::Frame`); anything more is
//! gathered into one buffer, so one poll is one write. A long preamble (a resume or `last=`
//! that replays much) is the exception: past [`PREAMBLE_COPIED`] bytes it keeps the events'
//! shared frames as they are, one chunk each, so that a client that opens streams and never
//! reads them holds no copy of the history they replay.
//!
//! What it adds to the reader (see [`crate::transport`]): the `retry:` hint first, a
//! heartbeat comment when one is due and nothing else was written, the `retry:` hint of a
//! drain last. A stalled HTTP/1.1 reader is torn down through the [`super::KillSwitch`] the
//! server put on its request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::event::Copy;
use crate::hub::connection::{CloseReason, Emit, StreamCore};
use crate::sse;

/// Bytes of its write buffer a stream keeps between writes (larger ones are freed once
/// handed to the writer).
const IDLE_BUFFER: usize = 1024;

/// Bytes of a stream's preamble copied into one chunk at most; past them its events' frames
/// are kept shared, a chunk each (32 channels of 100 events of 64 KiB were 200 MB a stream).
const PREAMBLE_COPIED: usize = 64 * 1024;

/// Renders a connection's output as SSE. A single event of a single-channel connection is
/// a slice of its shared frame; anything more is gathered into one buffer.
pub(crate) struct SseOut {
    named: bool,
    /// The stream wrote its last chunk: its body's flag, kept here, where it takes no room
    /// of its own (beside `named`).
    done: bool,
    /// The stream is still writing its preamble (until its body is made).
    opening: bool,
    first: Option<Bytes>,
    buf: Buf,
}

/// Where an [`SseOut`] gathers what it writes: one buffer, or for a long preamble its chunks
/// with a buffer after them (boxed: one word, in the buffer's place, for every stream).
enum Buf {
    One(BytesMut),
    Chunks(Box<Chunks>),
}

/// A long preamble: its chunks in order (shared frames, and what was written between them),
/// then what was written since the last one. The body gives them one a poll.
struct Chunks {
    chunks: VecDeque<Bytes>,
    buf: BytesMut,
}

impl SseOut {
    /// `named`: write `event: <type>` lines (for `addEventListener`).
    pub(crate) fn new(named: bool) -> Self {
        Self { named, done: false, opening: true, first: None, buf: Buf::One(BytesMut::new()) }
    }

    /// The buffer written to now.
    fn buf(&mut self) -> &mut BytesMut {
        match &mut self.buf {
            Buf::One(buf) => buf,
            Buf::Chunks(c) => &mut c.buf,
        }
    }

    fn spill(&mut self) {
        if let Some(first) = self.first.take() {
            self.buf().extend_from_slice(&first);
        }
    }

    /// Whether a frame of `len` bytes is kept as a chunk of its own: in a preamble that is
    /// long already, or would be with it.
    fn keeps_shared(&self, len: usize) -> bool {
        self.opening
            && match &self.buf {
                Buf::Chunks(_) => true,
                Buf::One(buf) => self.first.as_ref().map_or(0, Bytes::len) + buf.len() + len > PREAMBLE_COPIED,
            }
    }

    /// Adds `chunk` after everything written so far.
    fn push_chunk(&mut self, chunk: Bytes) {
        let first = self.first.take();
        if let Buf::One(buf) = &mut self.buf {
            let buf = std::mem::take(buf);
            self.buf = Buf::Chunks(Box::new(Chunks { chunks: first.into_iter().collect(), buf }));
        }
        if let Buf::Chunks(c) = &mut self.buf {
            if !c.buf.is_empty() {
                let written = c.buf.split().freeze();
                c.chunks.push_back(written);
            }
            c.chunks.push_back(chunk);
        }
    }

    pub(crate) fn put_retry(&mut self, ms: u64) {
        self.spill();
        sse::put_retry(self.buf(), ms);
    }

    fn put_raw(&mut self, bytes: &[u8]) {
        self.spill();
        self.buf().extend_from_slice(bytes);
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && matches!(&self.buf, Buf::One(buf) if buf.is_empty())
    }

    /// Everything written so far, as one chunk, leaving no buffer behind: what a stream
    /// wrote while it opened goes out once, and an idle stream keeps no allocation for it
    /// (a `split` would keep the whole preamble's buffer alive for the stream's life). A long
    /// preamble's first chunk: [`SseOut::next_chunk`] gives the others.
    pub(crate) fn take_all(&mut self) -> Option<Bytes> {
        if let Buf::Chunks(c) = &mut self.buf {
            if !c.buf.is_empty() {
                let written = std::mem::take(&mut c.buf).freeze();
                c.chunks.push_back(written);
            }
            return self.next_chunk();
        }
        if let Some(first) = self.first.take()
            && self.is_empty()
        {
            return Some(first);
        }
        self.spill();
        let buf = self.buf();
        (!buf.is_empty()).then(|| std::mem::take(buf).freeze())
    }

    /// The next of a long preamble's chunks, if any are left (once none are, the stream
    /// writes into one buffer again).
    fn next_chunk(&mut self) -> Option<Bytes> {
        let Buf::Chunks(c) = &mut self.buf else { return None };
        let next = c.chunks.pop_front();
        if c.chunks.is_empty() {
            let buf = std::mem::take(&mut c.buf);
            self.buf = Buf::One(buf);
        }
        next
    }

    /// What was written since the last take, as one chunk.
    pub(crate) fn take(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take()
            && self.is_empty()
        {
            return Some(first);
        }
        self.spill();
        let buf = self.buf();
        if buf.is_empty() {
            None
        } else if buf.capacity() > IDLE_BUFFER {
            Some(std::mem::take(buf).freeze())
        } else {
            Some(buf.split().freeze())
        }
    }
}

impl Emit for SseOut {
    fn event(&mut self, _event_type: &str, copy: &Copy, id: Option<&str>) {
        match id {
            None if self.is_empty() => self.first = Some(copy.frame.with_id(self.named)),
            None => {
                let frame = copy.frame.with_id(self.named);
                if self.keeps_shared(frame.len()) { self.push_chunk(frame) } else { self.put_raw(&frame) }
            }
            Some(id) => {
                self.spill();
                let named = self.named;
                if self.keeps_shared(copy.frame.wire_len()) {
                    // The connection's own id line, then the rest of the shared frame.
                    copy.frame.put_own_id_line(self.buf(), id, named);
                    self.push_chunk(copy.frame.after_id());
                } else {
                    copy.frame.put_with_own_id(self.buf(), id, named);
                }
            }
        }
    }

    fn notice(&mut self, event_type: &str, id: &str, json: &[u8]) {
        self.spill();
        let named = self.named;
        sse::one_off_event(self.buf(), event_type, id, json, named);
    }
}

/// The streaming response body of one SSE connection. An idle stream holds it for hours,
/// boxed (by axum's `Body`): every word of it is memory of every idle stream, and a test
/// holds it within an allocator size class.
pub struct SseBody {
    core: StreamCore,
    /// Between polls, holds nothing but what was written while the stream opened (`retry:`,
    /// `connected`, the replay), as one chunk in `first`, until it is taken.
    out: SseOut,
}

impl SseBody {
    /// The body of a stream opened into `out`: what `out` holds is its first chunk.
    pub(crate) fn new(core: StreamCore, mut out: SseOut) -> Self {
        out.first = out.take_all();
        out.opening = false;
        Self { core, out }
    }

    /// The public id of this connection.
    pub fn connection_id(&self) -> &str {
        self.core.id()
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        // The preamble: every poll below takes all it wrote, so `out` holds nothing else
        // between polls.
        if let Some(pre) = this.out.first.take().or_else(|| this.out.next_chunk()) {
            return Poll::Ready(Some(Ok(http_body::Frame::data(pre))));
        }
        if this.out.done {
            return Poll::Ready(None);
        }
        loop {
            let Poll::Ready(polled) = this.core.poll(cx, &mut this.out) else {
                return Poll::Pending;
            };
            if polled.heartbeat && this.out.is_empty() {
                // The static comment itself, as an event's shared frame is: no copy, and no
                // write buffer kept by a stream that is only ever sent heartbeats.
                this.out.first = Some(Bytes::from_static(sse::HEARTBEAT));
            }
            if let Some(reason) = polled.close {
                this.out.done = true;
                if let CloseReason::Drain { retry_ms } = reason {
                    this.out.put_retry(retry_ms);
                }
            }
            if let Some(bytes) = this.out.take() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(bytes))));
            }
            if this.out.done {
                return Poll::Ready(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Waker;

    use http_body::Body as _;

    use super::*;
    use crate::channel::ChannelName;
    use crate::cursor::Position;
    use crate::event::Published;
    use crate::hub::Hub;
    use crate::hub::connection::ConnShared;

    /// A body on `channel:lobby` whose preamble is `retry: 1000`, and its queue.
    fn body() -> (Arc<ConnShared>, ChannelName, SseBody) {
        let hub = Arc::new(Hub::new());
        let lobby = ChannelName::parse("channel:lobby").unwrap_or_else(|e| panic!("{e}"));
        let shared = Arc::new(ConnShared::new(Arc::from("c1"), None, 16, None, Vec::new()));
        let core = StreamCore::new(Arc::clone(&shared), hub, std::slice::from_ref(&lobby));
        let mut out = SseOut::new(false);
        out.put_retry(1000);
        (shared, lobby, SseBody::new(core, out))
    }

    /// Every chunk the body gives until it waits or ends, and whether it ended.
    fn chunks(body: &mut SseBody) -> (Vec<Bytes>, bool) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut got = Vec::new();
        loop {
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => got.extend(frame.into_data().ok()),
                Poll::Ready(None) => return (got, true),
                Poll::Pending => return (got, false),
            }
        }
    }

    #[test]
    fn a_due_heartbeat_is_a_comment_when_nothing_else_is_written() {
        let (shared, _, mut body) = body();
        assert_eq!(chunks(&mut body), (vec![Bytes::from_static(b"retry: 1000\n\n")], false));
        shared.sweep();
        assert_eq!(chunks(&mut body), (vec![Bytes::from_static(sse::HEARTBEAT)], false));
        assert_eq!(body.out.buf().capacity(), 0, "a stream sent only heartbeats keeps no write buffer");
    }

    #[test]
    fn a_body_stays_within_its_allocation_size_class() {
        // Boxed by axum's `Body` for the stream's life: 192 bytes is one of jemalloc's size
        // classes, the next is 224. Growing it costs every idle stream the difference.
        assert!(std::mem::size_of::<SseBody>() <= 192, "{}", std::mem::size_of::<SseBody>());
    }

    #[test]
    fn a_drain_writes_what_was_queued_then_the_retry_hint_and_ends_without_a_heartbeat() {
        let (shared, lobby, mut body) = body();
        let copy = Copy::new(lobby, Position::new(5, 0), "chat", b"{}");
        let event = Arc::new(Published::new(Arc::from("e1"), Arc::from("chat"), vec![copy], 1));
        shared.push(&event);
        shared.sweep();
        shared.close(CloseReason::Drain { retry_ms: 2500 });
        let mut last = BytesMut::from(&event.copies[0].frame.with_id(false)[..]);
        sse::put_retry(&mut last, 2500);
        assert_eq!(chunks(&mut body), (vec![Bytes::from_static(b"retry: 1000\n\n"), last.freeze()], true));
    }

    #[test]
    fn a_large_batch_buffer_is_freed_once_handed_to_the_writer_and_a_small_one_is_reused() {
        let mut out = SseOut::new(false);
        // Grown in steps, as a batch of events is: the buffer ends up with room to spare.
        for _ in 0..3 {
            out.put_raw(&[b'x'; IDLE_BUFFER]);
        }
        assert_eq!(out.take().map(|b| b.len()), Some(3 * IDLE_BUFFER));
        assert_eq!(out.buf().capacity(), 0, "an idle stream keeps no large buffer");
        out.put_raw(b"data: small\n\n");
        assert!(out.take().is_some());
        assert!(out.buf().capacity() <= IDLE_BUFFER);
        assert!(out.take().is_none());
    }

    #[test]
    fn a_long_preamble_writes_the_same_bytes_with_its_later_frames_shared_not_copied() {
        let lobby = ChannelName::parse("channel:lobby").unwrap_or_else(|e| panic!("{e}"));
        let json = format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000));
        let copies: Vec<Copy> =
            (0..8).map(|n| Copy::new(lobby.clone(), Position::new(5, n), "chat", json.as_bytes())).collect();
        for (named, own_id) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut out = SseOut::new(named);
            out.put_retry(1000);
            let mut expected = BytesMut::new();
            sse::put_retry(&mut expected, 1000);
            for (n, copy) in copies.iter().enumerate() {
                let id = own_id.then(|| format!("abc:5-{n},def:9"));
                out.event("chat", copy, id.as_deref());
                match &id {
                    Some(id) => copy.frame.put_with_own_id(&mut expected, id, named),
                    None => expected.extend_from_slice(&copy.frame.with_id(named)),
                }
            }
            out.notice("reset", "abc:5-7", b"{}");
            sse::one_off_event(&mut expected, "reset", "abc:5-7", b"{}", named);
            let mut chunks: Vec<Bytes> = out.take_all().into_iter().collect();
            chunks.extend(std::iter::from_fn(|| out.next_chunk()));
            assert_eq!(chunks.concat(), expected.to_vec(), "named {named}, own id {own_id}");
            // 160 KB of events: the last ones are the frames' own bytes, not copies.
            let last = &copies[7].frame;
            let shared = if own_id { last.after_id() } else { last.with_id(named) };
            assert!(
                chunks.iter().any(|c| c.as_ptr() == shared.as_ptr() && c.len() == shared.len()),
                "named {named}, own id {own_id}: the last frame was copied"
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_stream_keeps_no_write_buffer_once_its_preamble_is_taken() {
        let mut out = SseOut::new(false);
        out.put_retry(1000);
        out.put_raw(&[b'x'; 300]);
        let preamble = out.take_all().unwrap_or_else(|| panic!("no preamble"));
        assert!(preamble.len() > 300);
        // Once written and dropped, the preamble's buffer is freed: the stream holds no
        // share of it.
        assert!(preamble.is_unique(), "the stream still holds the preamble's buffer");
        assert!(out.take_all().is_none());
    }
}
