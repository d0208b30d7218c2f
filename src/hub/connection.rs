//! One connection: its bounded queue, and the reader that drains it for a transport.
//!
//! The hub pushes `Item`s into [`ConnShared`]: events (`Arc<Published>` pointers, framed
//! once for every subscriber), live changes of the channel list (join, leave) and events
//! for this connection alone. The connection's [`StreamCore`] (`reader.rs`) takes them
//! for the transport reading it (`crate::transport`: SSE bytes, or messages, through an
//! [`Emit`], `emit.rs`), after what it replays from history (`replay.rs`). There is no
//! task and no channel per connection: a push wakes the transport's own task. An idle
//! connection holds an empty queue, its cursor and its channel list, nothing else.
//!
//! When a queue is full, what happens is the connection's [`SlowConsumer`] policy. Under
//! `disconnect` (the default) the connection is closed (the client resumes from history) and
//! the queue is emptied at once, so a reader that stopped never holds more than `capacity`
//! items; a transport whose writer stalls with its client is also torn down through its
//! [`KillSwitch`], since it would never poll again. Under `drop_oldest` the oldest queued
//! event makes room and is remembered as a [`Gap`] (per channel, the first and last missing
//! positions and a count, at most [`MAX_GAP_CHANNELS`] of them), which the reader tells the
//! client before anything queued after it; the queue still never holds more than `capacity`.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::channel::ChannelName;
pub use crate::config::SlowConsumer;
use crate::cursor::Position;
use crate::event::Published;

mod emit;
mod reader;
mod replay;

pub(crate) use emit::Emit;
pub(crate) use reader::StreamCore;
pub(crate) use replay::Opening;

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
    /// The credential it was opened with expired (`exp` plus `auth.leeway`): what was
    /// queued before is written, then a `token_expired` notice, and the stream ends so that
    /// the client comes back with a fresh credential.
    TokenExpired,
    /// The application cut it (`POST /api/disconnect`, [`crate::Herald::disconnect`]); the
    /// client should come back only if `reconnect`. `banned`: the user was banned with it.
    Disconnect { reconnect: bool, banned: bool },
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overflow => "slow_consumer",
            Self::Timeout => "client_timeout",
            Self::Drain { .. } => "server_draining",
            Self::Resync => "resync",
            Self::TokenExpired => "token_expired",
            Self::Disconnect { banned: false, .. } => "disconnected",
            Self::Disconnect { banned: true, .. } => "banned",
        }
    }

    /// Whether what is queued is still written before the end (the client is reading and
    /// nothing is wrong with it); otherwise it is dropped and the client resumes from history.
    fn keeps_queue(self) -> bool {
        matches!(self, Self::Drain { .. } | Self::TokenExpired)
    }

    /// The notice written as the stream's last event, as `(type, JSON)`, for the reasons a
    /// client must be told of (it cannot tell them from a network failure).
    fn last_notice(self, connection: &str) -> Option<(&'static str, String)> {
        let notice = match self {
            Self::Disconnect { reconnect, .. } => serde_json::json!({
                "type": "disconnect", "reason": self.as_str(), "reconnect": reconnect,
            }),
            Self::TokenExpired => {
                let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
                serde_json::json!({"type": "token_expired", "connectionId": connection, "timestamp": now})
            }
            _ => return None,
        };
        Some((if matches!(self, Self::TokenExpired) { "token_expired" } else { "disconnect" }, notice.to_string()))
    }

    /// Whether the stream still writes something before it ends (so its socket must not be
    /// torn down at once).
    fn has_last_words(self) -> bool {
        matches!(self, Self::Drain { .. } | Self::TokenExpired | Self::Disconnect { .. })
    }
}

/// Tells a connection's transport to tear down its socket: fired when the hub closes a
/// connection and drops its queue, for a transport whose writer stops polling once its
/// client stops reading (hyper's HTTP/1.1 body does). The transport hands it in when the
/// connection opens.
#[derive(Clone, Debug, Default)]
pub struct KillSwitch(Arc<Notify>);

impl KillSwitch {
    pub fn kill(&self) {
        self.0.notify_one();
    }

    pub async fn killed(&self) {
        self.0.notified().await;
    }

    /// The same as [`Self::killed`], owning its share of the switch: for a future that
    /// holds it beside the switch's other owners.
    pub fn killed_owned(&self) -> tokio::sync::futures::OwnedNotified {
        Arc::clone(&self.0).notified_owned()
    }
}

/// What the hub queues for a connection. Two words wide (the rare variants are boxed):
/// every event is pushed to every subscriber's queue, so the queues' memory and the bytes
/// moved per delivery follow this size.
pub(crate) enum Item {
    /// An event of one (or several) of the connection's channels, and the index of the copy
    /// the hub pushed it for (the first one the connection follows, the one it writes).
    Event(Arc<Published>, u32),
    /// The connection now follows a channel; its starting point follows in the slot.
    Join(Arc<JoinSlot>),
    /// The connection no longer follows a channel.
    Leave(Box<ChannelName>),
    /// An event for this connection alone: its type and JSON.
    Direct(Box<(Arc<str>, Bytes)>),
    /// Here come the gaps of a `drop_oldest` queue that the reader took with the queue (only
    /// in the reader's backlog, never in the queue; the gaps wait in the reader).
    Gaps,
}

/// Most channels a `drop_oldest` connection may have dropped events of before its reader
/// takes the gaps: past this (a pattern subscription over many busy channels) it is
/// closed as under `disconnect`, so what it remembers stays bounded.
pub const MAX_GAP_CHANNELS: usize = 32;

/// Events of one channel dropped from a `drop_oldest` queue and not yet told to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    pub channel: ChannelName,
    pub first: Position,
    pub last: Position,
    pub missed: u64,
}

/// Where a live join starts, filled in by the joiner once it has read the channel's head.
/// Until then the reader waits at the join, so that nothing published after the
/// registration is lost and nothing before the head is written twice.
pub(crate) struct JoinSlot {
    pub channel: ChannelName,
    start: Mutex<Option<JoinStart>>,
}

/// The outcome of a live join.
#[derive(Debug)]
pub(crate) enum JoinStart {
    /// Follow the channel from `from` (its head, or the position a client resumes after).
    /// After the `subscribed` notice come: a `reset` if `reset` says why the position asked
    /// for could not be resumed; `replay`, the channel's events after `from`, oldest first,
    /// each with whether to write it (`false`: the cursor moves over it, nothing is written:
    /// a filter refused it, or a snapshot stands for it); then `lead`, events to write
    /// first (AI-stream snapshots), as `(type, JSON)`.
    At {
        from: Position,
        reset: Option<&'static str>,
        replay: Vec<(Arc<Published>, bool)>,
        lead: Vec<(Arc<str>, Bytes)>,
    },
    /// The join failed after registration (engine unavailable): drop the channel again.
    Failed,
}

impl JoinSlot {
    pub fn new(channel: ChannelName) -> Arc<Self> {
        Arc::new(Self { channel, start: Mutex::new(None) })
    }

    fn take(&self) -> Option<JoinStart> {
        self.start.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn is_ready(&self) -> bool {
        self.start.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

/// A connection's queued items, oldest first: `first`, then `rest`. An item pushed into an
/// empty queue (the usual case: one event at a time, read before the next) is kept in
/// `first`, inside the connection, so its push and its read touch no other memory; the
/// buffer of `rest`, allocated once a second item waits, holds what comes behind it.
/// Three words, where a `VecDeque` is four: the connection's size class holds.
#[derive(Default)]
#[repr(C)]
struct Queue {
    /// The oldest item, if it came to an empty queue (and was not taken since).
    first: Option<Item>,
    /// The items after `first` (all of them, once `first` was taken and these were not).
    #[allow(clippy::box_collection, reason = "one word in every connection, not a `VecDeque`'s four")]
    rest: Option<Box<VecDeque<Item>>>,
}

impl Queue {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.as_ref().map_or(0, |rest| rest.len())
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.as_ref().is_none_or(|rest| rest.is_empty())
    }

    /// Queues `item` behind what the queue holds (in `rest`, whether `first` is taken or not).
    fn push_behind(&mut self, item: Item) {
        self.rest.get_or_insert_default().push_back(item);
    }

    /// The items, oldest first.
    fn iter(&self) -> impl Iterator<Item = &Item> {
        self.first.iter().chain(self.rest.iter().flat_map(|rest| rest.iter()))
    }

    fn remove(&mut self, i: usize) -> Option<Item> {
        match (i, &mut self.first, &mut self.rest) {
            (0, first @ Some(_), _) => first.take(),
            (i, Some(_), Some(rest)) => rest.remove(i - 1),
            (i, None, Some(rest)) => rest.remove(i),
            _ => None,
        }
    }
}

/// In this order (`repr(C)`): what a push reads first (see [`ConnShared`]).
#[repr(C)]
struct QueueState {
    items: Queue,
    waker: Option<Waker>,
    close: Option<CloseReason>,
    heartbeat: bool,
    /// The writer took something since the last sweep.
    progressed: bool,
    policy: SlowConsumer,
    /// Sweeps in a row with data pending and no progress.
    stalled_sweeps: u32,
    /// Events dropped under `drop_oldest` since the reader last took the queue: none (and
    /// no allocation) unless some were.
    #[allow(clippy::box_collection, reason = "one word in every connection, not a `Vec`'s three")]
    gaps: Option<Box<Vec<Gap>>>,
}

impl QueueState {
    /// Makes room under `drop_oldest`: drops the oldest queued event and remembers it as a
    /// gap. False if there is no event to drop (the queue holds only joins, leaves and
    /// direct events, none of which may be lost) or too many channels have gaps already.
    fn drop_oldest(&mut self) -> bool {
        let Some((i, Item::Event(event, ci))) =
            self.items.iter().enumerate().find(|(_, item)| matches!(item, Item::Event(..)))
        else {
            return false;
        };
        let Some(copy) = event.copies.get(*ci as usize) else { return false };
        let (channel, position) = (&copy.channel, copy.position);
        let gaps = self.gaps.get_or_insert_default();
        if let Some(gap) = gaps.iter_mut().find(|g| g.channel == *channel) {
            gap.first = gap.first.min(position);
            gap.last = gap.last.max(position);
            gap.missed += 1;
        } else if gaps.len() < MAX_GAP_CHANNELS {
            let gap = Gap { channel: channel.clone(), first: position, last: position, missed: 1 };
            gaps.push(gap);
        } else {
            return false;
        }
        self.items.remove(i);
        true
    }
}

/// The part of a connection the hub holds: identity and the queue.
///
/// One per connection for as long as it lives, idle or not, so it is kept small (a size
/// class of the allocator smaller is memory saved on every idle stream; a test holds the
/// bound): what few connections have (a user, filters, a deadline, the application's
/// info) is in [`ConnExtras`], allocated only for a connection that has some of it, and
/// read through this type (`conn.user_id`) as if it were its own.
///
/// In this order (`repr(C)`), so that what every delivery reads (`extras`, for the filters,
/// then the lock and the queue's first item, rest, waker and close reason) lies from byte 64
/// of the allocation (past the `Arc`'s counts) to byte 121. The allocator's 160-byte slots
/// start 0 or 32 bytes into a memory line, the same for most connections of a process:
/// at 0 this is one line, at 32 two. In the compiler's order it was two lines at either
/// (0.9 simulated misses a push besides the line `extras` is on, against 0.02 or 0.8 so).
#[repr(C)]
pub struct ConnShared {
    pub id: Arc<str>,
    /// The transport it was opened for (`sse`, `websocket`, `centrifugo`, `library`).
    pub transport: &'static str,
    kill: Option<KillSwitch>,
    capacity: usize,
    extras: Option<Box<ConnExtras>>,
    state: Mutex<QueueState>,
}

/// What a connection may have besides its id and queue; most have none of it (a stream of
/// a server-side API key, of an anonymous reader).
#[derive(Default)]
pub struct ConnExtras {
    pub user_id: Option<Arc<str>>,
    /// The user's display name, for presence events.
    pub user_name: Option<Arc<str>>,
    /// Field filters of the subscription: all must match.
    pub filters: Filters,
    /// When the credential it was opened with expires, plus the leeway, in milliseconds
    /// since the Unix epoch (see [`crate::hub::Hub::expire_sessions`]).
    pub expires_at_ms: Option<u64>,
    /// What the application says of this connection (a Centrifugo token's `info` claim):
    /// its `join` and `leave` events carry it.
    pub info: Option<Arc<serde_json::Value>>,
}

/// The extras of a connection that has none.
static NO_EXTRAS: ConnExtras =
    ConnExtras { user_id: None, user_name: None, filters: Vec::new(), expires_at_ms: None, info: None };

impl Deref for ConnShared {
    type Target = ConnExtras;

    fn deref(&self) -> &ConnExtras {
        self.extras.as_deref().unwrap_or(&NO_EXTRAS)
    }
}

/// A subscription's field filters, `(field, value)`, all of which an event must match.
pub type Filters = Vec<(String, String)>;

/// What happened to a pushed item.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full and the connection is `drop_oldest`: its oldest event was dropped
    /// (and will be told as a gap) to queue this one.
    DroppedOldest,
    /// The queue was full: the connection is now closed and must leave the hub.
    Overflowed,
    /// The connection was already closing.
    Closed,
}

impl ConnShared {
    pub(crate) fn new(
        id: Arc<str>,
        user: Option<(Arc<str>, Option<Arc<str>>)>,
        capacity: usize,
        kill: Option<KillSwitch>,
        filters: Filters,
    ) -> Self {
        let mut conn = Self {
            id,
            transport: "library",
            kill,
            extras: None,
            capacity: capacity.max(1),
            state: Mutex::new(QueueState {
                items: Queue::default(),
                waker: None,
                heartbeat: false,
                progressed: true,
                stalled_sweeps: 0,
                close: None,
                policy: SlowConsumer::Disconnect,
                gaps: None,
            }),
        };
        if let Some((id, name)) = user {
            let extras = conn.extras_mut();
            extras.user_id = Some(id);
            extras.user_name = name;
        }
        if !filters.is_empty() {
            conn.extras_mut().filters = filters;
        }
        conn
    }

    /// The connection's extras, allocated on the first one it gets.
    fn extras_mut(&mut self) -> &mut ConnExtras {
        self.extras.get_or_insert_default()
    }

    /// Whether the connection has field filters: a look at one word, for every delivery.
    pub(crate) fn has_filters(&self) -> bool {
        self.extras.as_ref().is_some_and(|e| !e.filters.is_empty())
    }

    /// What the connection gets when its queue is full.
    pub(crate) fn with_slow_consumer(self, policy: SlowConsumer) -> Self {
        self.lock().policy = policy;
        self
    }

    /// The connection now follows a channel whose namespace wants `policy`: a
    /// `disconnect` channel makes the whole connection `disconnect` (see
    /// [`crate::policy::Policies::slow_consumer`]).
    pub(crate) fn joined_with(&self, policy: SlowConsumer) {
        if policy == SlowConsumer::Disconnect {
            self.lock().policy = policy;
        }
    }

    /// The connection ends at `deadline_ms` (milliseconds since the Unix epoch), if any.
    pub(crate) fn expiring_at(mut self, deadline_ms: Option<u64>) -> Self {
        if deadline_ms.is_some() {
            self.extras_mut().expires_at_ms = deadline_ms;
        }
        self
    }

    /// The connection was opened for `transport`.
    pub(crate) fn over(mut self, transport: &'static str) -> Self {
        self.transport = transport;
        self
    }

    /// The connection's [`ConnShared::info`].
    pub(crate) fn with_info(mut self, info: Option<Arc<serde_json::Value>>) -> Self {
        if info.is_some() {
            self.extras_mut().info = info;
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event for this connection, which writes its first copy.
    pub fn push(&self, event: &Arc<Published>) -> Pushed {
        self.push_copy(event, 0)
    }

    /// Queues an event for this connection, which writes its copy `copy` (the first of the
    /// event's channels it follows).
    pub fn push_copy(&self, event: &Arc<Published>, copy: usize) -> Pushed {
        self.push_item(Item::Event(Arc::clone(event), u32::try_from(copy).unwrap_or(u32::MAX)))
    }

    pub(crate) fn push_item(&self, item: Item) -> Pushed {
        let mut st = self.lock();
        if st.close.is_some() {
            return Pushed::Closed;
        }
        let mut pushed = Pushed::Queued;
        if st.items.is_empty() {
            // The usual case (the capacity is at least one): it waits inside the connection.
            st.items.first = Some(item);
        } else {
            if st.items.len() >= self.capacity {
                if !(st.policy == SlowConsumer::DropOldest && st.drop_oldest()) {
                    st.close = Some(CloseReason::Overflow);
                    st.items = Queue::default();
                    st.gaps = None;
                    let waker = st.waker.take();
                    drop(st);
                    self.after_close(waker);
                    return Pushed::Overflowed;
                }
                pushed = Pushed::DroppedOldest;
            }
            st.items.push_behind(item);
        }
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        pushed
    }

    /// Wakes the reader (a join's start was filled in).
    pub(crate) fn wake(&self) {
        let waker = self.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Resolves a live join of this connection and wakes its reader.
    pub(crate) fn resolve_join(&self, slot: &JoinSlot, start: JoinStart) {
        *slot.start.lock().unwrap_or_else(PoisonError::into_inner) = Some(start);
        self.wake();
    }

    /// Closes the connection for `reason`. Returns false if it was already closing.
    /// A drain or an expired credential keeps what is queued, so it is written before the
    /// last words (`retry:` hint, `token_expired`); the other reasons drop it, since the
    /// client will resume from history. A reason with last words (a drain's `retry:`, a
    /// `token_expired` or `disconnect` notice) leaves the socket open until they are written;
    /// the others tear an HTTP/1.1 connection down.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut st = self.lock();
        if st.close.is_some() {
            return false;
        }
        st.close = Some(reason);
        if !reason.keeps_queue() {
            st.items = Queue::default();
            st.gaps = None;
        }
        let waker = st.waker.take();
        drop(st);
        if reason.has_last_words() {
            if let Some(w) = waker {
                w.wake();
            }
        } else {
            self.after_close(waker);
        }
        true
    }

    /// Tears down the connection's socket (HTTP/1.1) without waiting for its last words:
    /// for a closing connection whose reader stopped reading.
    pub(crate) fn kill(&self) {
        if let Some(kill) = &self.kill {
            kill.kill();
        }
    }

    fn after_close(&self, waker: Option<Waker>) {
        if let Some(w) = waker {
            w.wake();
        }
        self.kill();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Copy;

    fn event(channel: &ChannelName, ms: u64) -> Arc<Published> {
        let copy = Copy::new(channel.clone(), Position::new(ms, 0), "t", b"{}");
        Arc::new(Published::new(Arc::from(format!("e{ms}")), Arc::from("t"), vec![copy], 1))
    }

    fn conn(capacity: usize, policy: SlowConsumer) -> ConnShared {
        ConnShared::new(Arc::from("c1"), None, capacity, None, Vec::new()).with_slow_consumer(policy)
    }

    #[test]
    fn a_drop_oldest_queue_never_holds_more_than_its_capacity_and_keeps_one_gap_per_channel() {
        let (a, b) = (ChannelName::parse("channel:a"), ChannelName::parse("channel:b"));
        let (Ok(a), Ok(b)) = (a, b) else { panic!("channel names") };
        let conn = conn(8, SlowConsumer::DropOldest);
        for ms in 1..=1000 {
            let pushed = conn.push(&event(if ms % 2 == 0 { &a } else { &b }, ms));
            assert_eq!(pushed, if ms <= 8 { Pushed::Queued } else { Pushed::DroppedOldest }, "event {ms}");
        }
        let st = conn.lock();
        assert_eq!((st.items.len(), st.close), (8, None), "still open, never over capacity");
        let gaps = st.gaps.as_deref().map_or(&[][..], Vec::as_slice);
        let gap = |c: &ChannelName| gaps.iter().find(|g| g.channel == *c).cloned();
        let b_gap = Gap { channel: b.clone(), first: Position::new(1, 0), last: Position::new(991, 0), missed: 496 };
        let a_gap = Gap { channel: a.clone(), first: Position::new(2, 0), last: Position::new(992, 0), missed: 496 };
        assert_eq!((gap(&a), gap(&b), gaps.len()), (Some(a_gap), Some(b_gap), 2));
    }

    #[test]
    fn a_drop_oldest_queue_that_fell_behind_on_too_many_channels_is_closed_as_a_disconnect_one_is() {
        let conn = conn(2, SlowConsumer::DropOldest);
        let channels: Vec<ChannelName> = (0..=MAX_GAP_CHANNELS + 2)
            .map(|i| ChannelName::parse(&format!("channel:c{i}")).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let mut results = Vec::new();
        for (i, channel) in channels.iter().enumerate() {
            results.push(conn.push(&event(channel, i as u64 + 1)));
        }
        // Two fit, then one drop per channel until the gaps are full.
        assert_eq!(results.iter().filter(|r| **r == Pushed::DroppedOldest).count(), MAX_GAP_CHANNELS);
        assert_eq!(results.last(), Some(&Pushed::Overflowed));
        assert_eq!(conn.push(&event(&channels[0], 100)), Pushed::Closed);
        assert_eq!(conn.close_reason(), Some(CloseReason::Overflow));
        assert!(conn.lock().gaps.is_none() && conn.lock().items.is_empty(), "its memory is freed");
    }

    #[test]
    fn a_drop_oldest_queue_keeps_a_join_waiting_inline_and_drops_the_oldest_event_behind_it() {
        let Ok(a) = ChannelName::parse("channel:a") else { panic!("channel name") };
        let conn = conn(3, SlowConsumer::DropOldest);
        let join = JoinSlot::new(a.clone());
        assert_eq!(conn.push_item(Item::Join(Arc::clone(&join))), Pushed::Queued);
        for ms in 1..=4 {
            let expected = if ms <= 2 { Pushed::Queued } else { Pushed::DroppedOldest };
            assert_eq!(conn.push(&event(&a, ms)), expected, "event {ms}");
        }
        let st = conn.lock();
        let queued: Vec<Option<u64>> = st
            .items
            .iter()
            .map(|item| match item {
                Item::Event(event, _) => Some(event.copies[0].position.ms),
                _ => None,
            })
            .collect();
        assert_eq!(queued, [None, Some(3), Some(4)], "the join first, then the newest events");
        assert!(matches!(st.items.first, Some(Item::Join(_))));
    }

    #[test]
    fn a_connection_stays_within_its_allocation_size_class_and_keeps_its_extras_apart() {
        // With the `Arc`'s two counts, 160 bytes: one of jemalloc's size classes, which the
        // next is 192. Growing it costs every idle stream the difference.
        assert!(std::mem::size_of::<ConnShared>() <= 144, "{}", std::mem::size_of::<ConnShared>());
        let plain = conn(4, SlowConsumer::Disconnect);
        assert!(plain.extras.is_none() && plain.user_id.is_none() && !plain.has_filters());
        let filters = vec![("kind".to_owned(), "a".to_owned())];
        let user = Some((Arc::from("u1"), Some(Arc::from("Ann"))));
        let rich = ConnShared::new(Arc::from("c2"), user, 4, None, filters.clone())
            .expiring_at(Some(5))
            .with_info(Some(Arc::new(serde_json::json!({"a": 1}))));
        assert_eq!((rich.user_id.as_deref(), rich.user_name.as_deref()), (Some("u1"), Some("Ann")));
        assert_eq!((&rich.filters, rich.expires_at_ms, rich.has_filters()), (&filters, Some(5), true));
        assert_eq!(rich.info.as_deref(), Some(&serde_json::json!({"a": 1})));
    }

    #[test]
    fn what_a_push_reads_lies_from_byte_64_to_byte_121_of_the_allocation() {
        let conn = conn(4, SlowConsumer::Disconnect);
        let at = |field: usize| field - std::ptr::from_ref(&conn).addr();
        let st = conn.lock();
        let extras = at(std::ptr::from_ref(&conn.extras).addr());
        let lock = at(std::ptr::from_ref(&conn.state).addr());
        let first = at(std::ptr::from_ref(&st.items.first).addr());
        let (rest, waker) = (at(std::ptr::from_ref(&st.items.rest).addr()), at(std::ptr::from_ref(&st.waker).addr()));
        let close = at(std::ptr::from_ref(&st.close).addr());
        // With the `Arc`'s two counts (16 bytes) before it: from byte 64 (the close
        // reason's tag is its first byte, at 120).
        assert_eq!((extras, lock, first, rest, waker, close), (48, 56, 64, 80, 88, 104));
    }

    #[test]
    fn a_disconnect_queue_is_closed_at_its_first_overflow_and_a_joined_disconnect_channel_makes_it_so() {
        let Ok(a) = ChannelName::parse("channel:a") else { panic!("channel name") };
        let conn = conn(1, SlowConsumer::DropOldest);
        conn.joined_with(SlowConsumer::DropOldest);
        assert_eq!(conn.push(&event(&a, 1)), Pushed::Queued);
        assert_eq!(conn.push(&event(&a, 2)), Pushed::DroppedOldest);
        conn.joined_with(SlowConsumer::Disconnect);
        assert_eq!(conn.push(&event(&a, 3)), Pushed::Overflowed);
    }
}
