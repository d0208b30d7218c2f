//! Server-Sent Events over HTTP: the transport of `GET /api/events`.
//!
//! [`SseBody`] is the streaming response body of one stream, polled by hyper or by the lean
//! HTTP/1.1 writer (`server/lean.rs`); [`SseOut`] renders what the connection's reader hands
//! it as SSE bytes. A single event of a single-channel stream is a slice of the frame its
//! event was framed into once for every subscriber (`crate::sse::Frame`); anything more is
//! gathered into one buffer, so one poll is one write. What a stream replays from history
//! (a resume, `last=`) comes from the reader a piece a poll, as the writer asks for more
//! (`hub/connection/replay.rs`), so a client that opens streams and never reads them holds
//! no copy of it.
//!
//! What it adds to the reader (see [`crate::transport`]): the `retry:` hint first, a
//! heartbeat comment when one is due and nothing else was written, the `retry:` hint of a
//! drain last. A stalled HTTP/1.1 reader is torn down through the [`super::KillSwitch`] the
//! server put on its request.

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

/// Renders a connection's output as SSE. A single event of a single-channel connection is
/// a slice of its shared frame; anything more is gathered into one buffer.
pub(crate) struct SseOut {
    named: bool,
    /// The stream wrote its last chunk: its body's flag, kept here, where it takes no room
    /// of its own (beside `named`).
    done: bool,
    first: Option<Bytes>,
    buf: BytesMut,
}

impl SseOut {
    /// `named`: write `event: <type>` lines (for `addEventListener`).
    pub(crate) fn new(named: bool) -> Self {
        Self { named, done: false, first: None, buf: BytesMut::new() }
    }

    fn spill(&mut self) {
        if let Some(first) = self.first.take() {
            self.buf.extend_from_slice(&first);
        }
    }

    pub(crate) fn put_retry(&mut self, ms: u64) {
        self.spill();
        sse::put_retry(&mut self.buf, ms);
    }

    fn put_raw(&mut self, bytes: &[u8]) {
        self.spill();
        self.buf.extend_from_slice(bytes);
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.buf.is_empty()
    }

    /// Everything written so far, as one chunk, leaving no buffer behind: what a stream
    /// wrote while it opened goes out once, and an idle stream keeps no allocation for it
    /// (a `split` would keep the whole preamble's buffer alive for the stream's life).
    pub(crate) fn take_all(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take()
            && self.is_empty()
        {
            return Some(first);
        }
        self.spill();
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf).freeze())
    }

    /// What was written since the last take, as one chunk.
    pub(crate) fn take(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take()
            && self.is_empty()
        {
            return Some(first);
        }
        self.spill();
        let buf = &mut self.buf;
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
            None => self.put_raw(&copy.frame.with_id(self.named)),
            Some(id) => {
                self.spill();
                let named = self.named;
                copy.frame.put_with_own_id(&mut self.buf, id, named);
            }
        }
    }

    fn notice(&mut self, event_type: &str, id: &str, json: &[u8]) {
        self.spill();
        let named = self.named;
        sse::one_off_event(&mut self.buf, event_type, id, json, named);
    }
}

/// The streaming response body of one SSE connection. An idle stream holds it for hours,
/// boxed (by axum's `Body`): every word of it is memory of every idle stream, and a test
/// holds it within an allocator size class.
pub struct SseBody {
    core: StreamCore,
    /// Between polls, holds nothing but what was written while the stream opened (`retry:`,
    /// `connected`, the `reset`s), as one chunk in `first`, until it is taken.
    out: SseOut,
}

impl SseBody {
    /// The body of a stream opened into `out`: what `out` holds is its first chunk.
    pub(crate) fn new(core: StreamCore, mut out: SseOut) -> Self {
        out.first = out.take_all();
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
        if let Some(pre) = this.out.first.take() {
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
        assert_eq!(body.out.buf.capacity(), 0, "a stream sent only heartbeats keeps no write buffer");
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
        assert_eq!(out.buf.capacity(), 0, "an idle stream keeps no large buffer");
        out.put_raw(b"data: small\n\n");
        assert!(out.take().is_some());
        assert!(out.buf.capacity() <= IDLE_BUFFER);
        assert!(out.take().is_none());
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

    #[tokio::test]
    async fn a_stream_that_replays_much_holds_its_preamble_alone_until_read_then_writes_a_piece_a_poll() {
        use crate::herald::{LastEvents, StreamRequest};
        let herald = crate::Herald::new(crate::Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let channels: Vec<ChannelName> =
            (0..32).map(|i| herald.parse_channel(&format!("channel:c{i}")).unwrap_or_else(|e| panic!("{e}"))).collect();
        let pad = "x".repeat(8000);
        for n in 0..10u64 {
            for ch in &channels {
                let event = crate::Event::new("note").with("n", n).with("pad", pad.as_str());
                herald.publish(vec![ch.clone()], event).await.unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let mut req = StreamRequest::new(crate::Principal::Anonymous, channels.clone());
        req.last = LastEvents { all: Some(10), per_channel: Vec::new() };
        let mut body = herald.open_stream(req).await.unwrap_or_else(|e| panic!("{e}"));
        // 2.6 MB to replay, each event with an id of 32 channels: none of it is written yet.
        let preamble = body.out.first.as_ref().map_or(0, Bytes::len);
        assert!(preamble < 4096, "the body holds {preamble} bytes before it is read");
        let (chunks, ended) = chunks(&mut body);
        assert!(!ended);
        // About 64 KiB a poll: the event that crosses it is the poll's last.
        let largest = chunks[1..].iter().map(Bytes::len).max().unwrap_or_default();
        assert!(largest <= 64 * 1024 + 8100 + 1024, "a poll wrote {largest} bytes");
        // Every event, each channel's in order, each id past the one before.
        let text = String::from_utf8(chunks.concat()).unwrap_or_else(|e| panic!("{e}"));
        let mut seen = vec![Vec::new(); 32];
        let mut ids = Vec::new();
        for frame in text.split("\n\n").filter(|f| f.contains("\"type\":\"note\"")) {
            let data = frame.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default();
            let event: serde_json::Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}"));
            let channel = event["channel"].as_str().and_then(|c| c.strip_prefix("channel:c"));
            let Some(i) = channel.and_then(|c| c.parse::<usize>().ok()) else { panic!("{event}") };
            seen[i].push(event["n"].as_u64().unwrap_or(u64::MAX));
            ids.push(frame.lines().find_map(|l| l.strip_prefix("id: ")).unwrap_or_default().to_owned());
        }
        assert!(seen.iter().all(|ns| *ns == (0..10).collect::<Vec<u64>>()), "{seen:?}");
        let mut distinct = ids.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 320, "every event has an id of its own");
    }
}
