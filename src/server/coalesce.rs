//! One write per HTTP/2 connection per event, not one per stream.
//!
//! An event wakes every stream that follows its channel. On HTTP/2 each stream is a task of
//! its own that hands its frame to the connection's task, and tokio runs a task woken by
//! another one next (its LIFO slot). Left alone, the connection task therefore runs after
//! each stream and writes that stream's frame at once: one system call per stream per
//! event, although all the streams share one socket.
//!
//! [`Coalesce`] defers the first write after each flush by one turn of the scheduler: the
//! task wakes itself and returns `Pending`, which puts it at the back of the run queue. By
//! the time it runs again, the streams queued before it have handed over their frames, and
//! h2 writes them together (at 1,000 streams on 10 connections, about 165 `writev`s per
//! event instead of 1,000: the runtime takes the woken streams in a few batches).
//!
//! A busy server needs no help: its connection tasks already run after the streams, and a
//! wait there would only cost a poll per write (about 10% of saturated HTTP/2 fan-out when
//! every round waited). So a first write that already carries several frames goes out at
//! once, and after a wait that gathered nothing (or a connection with one stream) the next
//! rounds do too. The bytes are never copied or held here.
//!
//! Only HTTP/2 connections defer: on HTTP/1.1 one response goes out per request, and there
//! is nothing to gather.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A first write at least this big already carries several frames: it goes out at once.
const GATHERED: usize = 1024;

/// Rounds written at once after a deferral that gathered nothing. A busy server already
/// finds every stream's frames queued when its connection task runs, so deferring would
/// only cost a poll per write; the back-off keeps that cost to one poll in this many
/// rounds.
const BACKOFF: u8 = 16;

/// The HTTP/2 connection preface a client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the first bytes of a plain-TCP connection are the HTTP/2 preface. Fewer than
/// three bytes cannot tell `PRI` from `POST`; such a connection is not deferred, which
/// costs only batching.
pub(super) fn starts_h2(first: &[u8]) -> bool {
    let n = first.len().min(H2_PREFACE.len());
    n >= 3 && first[..n] == H2_PREFACE[..n]
}

/// A connection's I/O whose writes are deferred by one scheduler turn after each flush (see
/// the module docs). Reads pass straight through.
pub(super) struct Coalesce<I> {
    io: I,
    /// Whether writes are deferred at all (HTTP/2 only).
    enabled: bool,
    /// Where the current round of writes (up to a completed flush) stands.
    round: Round,
    /// Rounds still to write at once (see [`BACKOFF`]).
    skip: u8,
}

#[derive(Clone, Copy)]
enum Round {
    /// Nothing written since the last flush.
    Open,
    /// The first write was deferred; it had this many bytes.
    Deferred(usize),
    /// Writes go straight through until the next flush.
    Writing,
}

impl<I> Coalesce<I> {
    pub(super) fn new(io: I, enabled: bool) -> Self {
        Self { io, enabled, round: Round::Open, skip: 0 }
    }

    /// `Pending` (with the task woken, so that it runs again after the tasks already queued)
    /// for the first write of a round; `Ready` for the rest of it.
    fn defer(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<()> {
        match self.round {
            Round::Writing => {}
            Round::Deferred(before) => {
                if len <= before {
                    self.skip = BACKOFF;
                }
                self.round = Round::Writing;
            }
            Round::Open if !self.enabled || len >= GATHERED => self.round = Round::Writing,
            Round::Open if self.skip > 0 => {
                self.skip -= 1;
                self.round = Round::Writing;
            }
            Round::Open => {
                self.round = Round::Deferred(len);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        Poll::Ready(())
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Coalesce<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesce<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.defer(cx, buf.len()));
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.defer(cx, bufs.iter().map(|b| b.len()).sum()));
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = std::task::ready!(Pin::new(&mut self.io).poll_flush(cx));
        self.round = Round::Open;
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::*;

    /// Counts the writes that reach the socket.
    #[derive(Default)]
    struct Sink {
        writes: usize,
    }

    impl AsyncWrite for Sink {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Counts how often the task asked to be polled again.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Harness {
        io: Coalesce<Sink>,
        wakes: Arc<Wakes>,
        waker: Waker,
    }

    impl Harness {
        fn new(enabled: bool) -> Self {
            let wakes = Arc::new(Wakes::default());
            let waker = Waker::from(Arc::clone(&wakes));
            Self { io: Coalesce::new(Sink::default(), enabled), wakes, waker }
        }

        /// Polls one write of `len` bytes: whether it went out.
        fn write(&mut self, len: usize) -> bool {
            let mut cx = Context::from_waker(&self.waker);
            match Pin::new(&mut self.io).poll_write(&mut cx, &vec![b'x'; len]) {
                Poll::Ready(Ok(n)) => {
                    assert_eq!(n, len);
                    true
                }
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => false,
            }
        }

        fn flush(&mut self) {
            let mut cx = Context::from_waker(&self.waker);
            assert!(matches!(Pin::new(&mut self.io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn the_first_write_after_a_flush_waits_one_turn_and_the_rest_of_the_round_goes_through() {
        let mut h = Harness::new(true);
        assert!(!h.write(100), "the round's first write waits");
        assert_eq!((h.wakes(), h.io.io.writes), (1, 0), "the task is woken to run again, nothing written");
        assert!(h.write(300), "then it goes out, with what was gathered meanwhile");
        assert!(h.write(50), "and so does the rest of the round");
        h.flush();
        assert!(!h.write(100), "a flush starts a new round, which waits again");
        assert_eq!((h.wakes(), h.io.io.writes), (2, 2));
    }

    #[test]
    fn a_wait_that_gathered_nothing_lets_the_next_rounds_go_at_once() {
        let mut h = Harness::new(true);
        assert!(!h.write(100));
        assert!(h.write(100), "nothing more came while it waited");
        h.flush();
        for round in 0..BACKOFF {
            assert!(h.write(100), "round {round} after the back-off started is written at once");
            h.flush();
        }
        assert_eq!(h.wakes(), 1);
        assert!(!h.write(100), "after the back-off, rounds wait again");
    }

    #[test]
    fn a_first_write_that_already_carries_several_frames_goes_out_at_once() {
        let mut h = Harness::new(true);
        assert!(h.write(GATHERED), "a big first write does not wait");
        h.flush();
        assert!(!h.write(GATHERED - 1), "a small one does");
        assert_eq!((h.wakes(), h.io.io.writes), (1, 1));
    }

    #[test]
    fn writes_never_wait_when_coalescing_is_off() {
        let mut h = Harness::new(false);
        for _ in 0..3 {
            assert!(h.write(10));
            h.flush();
        }
        assert_eq!((h.wakes(), h.io.io.writes), (0, 3));
    }

    #[test]
    fn only_the_http2_preface_counts_as_http2() {
        assert!(starts_h2(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"));
        assert!(starts_h2(b"PRI * HT"));
        assert!(!starts_h2(b"PR"), "too short to tell from POST");
        assert!(!starts_h2(b"POST /api/publish HTTP/1.1\r\n"));
        assert!(!starts_h2(b"PRI / HTTP/1.1\r\n"));
        assert!(!starts_h2(b""));
    }
}
