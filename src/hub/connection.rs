//! One SSE connection: its bounded queue, and the response body that drains it.
//!
//! The hub pushes `Arc<Published>` pointers into [`ConnShared`]; the [`SseBody`] that hyper
//! polls takes everything queued at once and writes it as one chunk. There is no task and
//! no channel per connection: a push wakes hyper's own connection task. An idle connection
//! holds an empty queue, its cursor and its channel list, nothing else.
//!
//! When a queue is full the connection is closed (the client resumes from history) and the
//! queue is emptied at once, so a reader that stopped never holds more than `capacity`
//! events. For HTTP/1.1 a stalled connection is also torn down at the socket through its
//! [`KillSwitch`], since hyper stops polling a body whose client stopped reading.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::channel::ChannelName;
use crate::cursor::Cursor;
use crate::event::Published;
use crate::hub::Hub;
use crate::sse;

/// Most events written in one chunk; the rest follow on the next poll.
const MAX_BATCH: usize = 64;

/// Split multi-channel events remembered per connection to drop their repeated copies.
const RECENT_SPLIT: usize = 16;

/// Why a connection was closed by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue overflowed: the client reads too slowly.
    Overflow,
    /// It made no progress for the client timeout.
    Timeout,
    /// The server is draining; the client should come back after `retry_ms`.
    Drain { retry_ms: u64 },
    /// The node missed events it cannot replay; the client must resume to learn of the gap.
    Resync,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overflow => "slow_consumer",
            Self::Timeout => "client_timeout",
            Self::Drain { .. } => "server_draining",
            Self::Resync => "resync",
        }
    }
}

/// Tears down the HTTP/1.1 connection a stream lives on (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct KillSwitch(Arc<Notify>);

impl KillSwitch {
    pub fn kill(&self) {
        self.0.notify_one();
    }

    pub async fn killed(&self) {
        self.0.notified().await;
    }
}

struct QueueState {
    items: VecDeque<Arc<Published>>,
    waker: Option<Waker>,
    heartbeat: bool,
    /// The writer took something since the last sweep.
    progressed: bool,
    /// Sweeps in a row with data pending and no progress.
    stalled_sweeps: u32,
    close: Option<CloseReason>,
}

/// The part of a connection the hub holds: identity and the queue.
pub struct ConnShared {
    pub(crate) key: u64,
    pub id: Arc<str>,
    pub user_id: Option<Arc<str>>,
    capacity: usize,
    kill: Option<KillSwitch>,
    /// Field filters of the subscription (document 003): all must match.
    pub filters: Filters,
    state: Mutex<QueueState>,
}

/// A subscription's field filters, `(field, value)`, all of which an event must match.
pub type Filters = Box<[(String, String)]>;

/// What happened to a pushed event.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full: the connection is now closed and must leave the hub.
    Overflowed,
    /// The connection was already closing.
    Closed,
}

impl ConnShared {
    pub(crate) fn new(
        key: u64,
        id: Arc<str>,
        user_id: Option<Arc<str>>,
        capacity: usize,
        kill: Option<KillSwitch>,
        filters: Filters,
    ) -> Self {
        Self {
            key,
            id,
            user_id,
            capacity: capacity.max(1),
            kill,
            filters,
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                waker: None,
                heartbeat: false,
                progressed: true,
                stalled_sweeps: 0,
                close: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event for this connection.
    pub fn push(&self, event: &Arc<Published>) -> Pushed {
        let mut st = self.lock();
        if st.close.is_some() {
            return Pushed::Closed;
        }
        if st.items.len() >= self.capacity {
            st.close = Some(CloseReason::Overflow);
            st.items = VecDeque::new();
            let waker = st.waker.take();
            drop(st);
            self.after_close(waker);
            return Pushed::Overflowed;
        }
        st.items.push_back(Arc::clone(event));
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Pushed::Queued
    }

    /// Closes the connection for `reason`. Returns false if it was already closing.
    /// A drain keeps what is queued so it is written before the `retry:` hint; the other
    /// reasons drop it, since the client will resume from history.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut st = self.lock();
        if st.close.is_some() {
            return false;
        }
        st.close = Some(reason);
        let drain = matches!(reason, CloseReason::Drain { .. });
        if !drain {
            st.items = VecDeque::new();
        }
        let waker = st.waker.take();
        drop(st);
        if drain {
            if let Some(w) = waker {
                w.wake();
            }
        } else {
            self.after_close(waker);
        }
        true
    }

    fn after_close(&self, waker: Option<Waker>) {
        if let Some(w) = waker {
            w.wake();
        }
        if let Some(kill) = &self.kill {
            kill.kill();
        }
    }

    /// Called by the hub's sweeper once per heartbeat interval: asks for a heartbeat and
    /// returns how many sweeps in a row the writer made no progress with data pending.
    pub(crate) fn sweep(&self) -> u32 {
        let mut st = self.lock();
        if st.progressed {
            st.stalled_sweeps = 0;
        } else if st.heartbeat || !st.items.is_empty() {
            st.stalled_sweeps += 1;
        }
        st.progressed = false;
        st.heartbeat = true;
        let stalled = st.stalled_sweeps;
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        stalled
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close
    }
}

/// The streaming response body of one SSE connection.
pub struct SseBody {
    shared: Arc<ConnShared>,
    hub: Arc<Hub>,
    channels: Vec<ChannelName>,
    cursor: Cursor,
    named: bool,
    preamble: Option<Bytes>,
    spare: VecDeque<Arc<Published>>,
    id_buf: String,
    /// Ids of recent events that reached this connection one channel copy at a time
    /// (see [`Published::fanout`]); empty unless the connection follows several channels.
    recent_split: VecDeque<Arc<str>>,
    done: bool,
}

impl SseBody {
    pub(crate) fn new(
        shared: Arc<ConnShared>,
        hub: Arc<Hub>,
        channels: Vec<ChannelName>,
        cursor: Cursor,
        named: bool,
    ) -> Self {
        Self {
            shared,
            hub,
            channels,
            cursor,
            named,
            preamble: None,
            spare: VecDeque::new(),
            id_buf: String::new(),
            recent_split: VecDeque::new(),
            done: false,
        }
    }

    /// Sets the cursor reached by the replay, and the bytes written before live events
    /// (`retry:`, `connected`, resets, replayed events).
    pub(crate) fn start(&mut self, cursor: Cursor, preamble: Bytes) {
        self.cursor = cursor;
        self.preamble = Some(preamble);
    }

    /// The public id of this connection.
    pub fn connection_id(&self) -> &str {
        &self.shared.id
    }

    /// Advances the cursor for `event` and says where to write it from; `None` if the
    /// connection has already seen it (replayed from history, queued twice across a resume
    /// seam, or another channel's copy of the same event).
    fn advance(&mut self, event: &Published) -> Option<usize> {
        let mut first = None;
        for copy in &event.copies {
            if let Some(i) = self.channels.iter().position(|c| *c == copy.channel)
                && copy.position > self.cursor.positions[i]
            {
                self.cursor.positions[i] = copy.position;
                first.get_or_insert(i);
            }
        }
        if first.is_some() && self.channels.len() > 1 && usize::from(event.fanout) > event.copies.len() {
            if self.recent_split.contains(&event.id) {
                return None;
            }
            if self.recent_split.len() == RECENT_SPLIT {
                self.recent_split.pop_front();
            }
            self.recent_split.push_back(Arc::clone(&event.id));
        }
        first
    }

    fn write_event(&mut self, out: &mut BytesMut, event: &Published, at: usize) {
        let channel = &self.channels[at];
        let Some(copy) = event.copy_on(channel.as_str()) else {
            return;
        };
        if self.channels.len() == 1 {
            out.extend_from_slice(&copy.frame.with_id(self.named));
        } else {
            self.id_buf.clear();
            self.cursor.encode_into(&self.channels, &mut self.id_buf);
            copy.frame.put_with_own_id(out, &self.id_buf, self.named);
        }
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
        if let Some(pre) = this.preamble.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(pre))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let (heartbeat, close) = {
                let mut st = this.shared.lock();
                st.progressed = true;
                if st.items.is_empty() && !st.heartbeat && st.close.is_none() {
                    match &st.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => st.waker = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                if st.items.len() <= MAX_BATCH {
                    std::mem::swap(&mut st.items, &mut this.spare);
                } else {
                    this.spare.extend(st.items.drain(..MAX_BATCH));
                }
                let close = if st.items.is_empty() { st.close } else { None };
                (std::mem::take(&mut st.heartbeat), close)
            };

            let mut items = std::mem::take(&mut this.spare);
            // Fast path: one event for a single-channel connection is a shared slice.
            if items.len() == 1 && this.channels.len() == 1 && close.is_none() {
                let event = items.pop_front();
                this.spare = items;
                if let Some(event) = event
                    && this.advance(&event).is_some()
                    && let Some(copy) = event.copy_on(this.channels[0].as_str())
                {
                    this.hub.stats.record_write(1, &event);
                    return Poll::Ready(Some(Ok(http_body::Frame::data(copy.frame.with_id(this.named)))));
                }
                if heartbeat {
                    return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(sse::HEARTBEAT)))));
                }
                continue;
            }

            let mut out = BytesMut::new();
            let mut written = 0;
            if let Some(oldest) = items.front().cloned() {
                for event in items.drain(..) {
                    if let Some(at) = this.advance(&event) {
                        this.write_event(&mut out, &event, at);
                        written += 1;
                    }
                }
                if written > 0 {
                    this.hub.stats.record_write(written, &oldest);
                }
            }
            this.spare = if items.capacity() > 4 * MAX_BATCH { VecDeque::new() } else { items };
            if heartbeat && out.is_empty() {
                out.extend_from_slice(sse::HEARTBEAT);
            }
            if let Some(reason) = close {
                this.done = true;
                if let CloseReason::Drain { retry_ms } = reason {
                    sse::put_retry(&mut out, retry_ms);
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(out.freeze()))));
            }
            if this.done {
                return Poll::Ready(None);
            }
        }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        let reason = self.shared.close_reason();
        self.hub.unregister(self.shared.key);
        tracing::debug!(
            connection = %self.shared.id,
            reason = reason.map_or("client_closed", CloseReason::as_str),
            "sse connection closed"
        );
    }
}
