//! The reader of one connection: what a transport drives (see `crate::transport`).
//!
//! A [`StreamCore`] takes everything the hub queued for its connection at once, keeps the
//! connection's cursor (its place in each channel), applies live joins and leaves, drops
//! what the connection has seen already, and hands what is new to its transport's [`Emit`]
//! with the id that lets the client resume. It runs in the transport's own task, woken by
//! the hub's pushes; dropping it unregisters the connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::emit::{Emit, event_id};
use super::replay::{self, Joining, Opening, Replay};
use super::{CloseReason, ConnShared, Gap, Item, JoinStart};
use crate::channel::ChannelName;
use crate::cursor::{Cursor, write_entry};
use crate::event::{Copy, Published};
use crate::hub::Hub;

/// Most items taken from the queue in one go; the rest follow on the next poll.
const MAX_BATCH: usize = 64;

/// Queue slots a connection keeps once its queue is empty: enough for events that arrive one
/// at a time without an allocation each, while a burst's larger queue is freed once drained,
/// so that an idle stream holds no large buffer.
const IDLE_QUEUE: usize = 8;

/// Split multi-channel events remembered per connection to drop their repeated copies.
const RECENT_SPLIT: usize = 16;

/// What one poll's items wrote: how many, and the oldest event among them.
struct Batch {
    written: u64,
    oldest: Option<Arc<Published>>,
}

/// What one poll of the queue produced besides events.
pub(crate) struct Polled {
    /// A heartbeat is due: the transport writes one if the poll wrote nothing else.
    pub heartbeat: bool,
    /// The connection is closing, and everything it is to be sent has been emitted: the
    /// transport writes its own last words, if any, and ends.
    pub close: Option<CloseReason>,
}

/// The transport-independent reader of a connection: drains the queue, keeps the cursor,
/// applies live joins and leaves, drops what the connection has already seen.
pub(crate) struct StreamCore {
    shared: Arc<ConnShared>,
    hub: Arc<Hub>,
    /// Followed channels and patterns (`channel:incidents.*`), in subscription order; inline
    /// for one, as the cursor's positions are.
    channels: Channels,
    cursor: Cursor,
    /// Items taken from the queue and not processed yet (a join waiting for its start).
    backlog: VecDeque<Item>,
    /// What a stream of one channel that is not `drop_oldest` never needs: allocated on
    /// first use, so that every idle stream does not carry it (its body is boxed whole).
    rare: Option<Box<Rare>>,
}

/// The channels and patterns a connection's reader follows, in subscription order: one
/// inline, as most connections have, several boxed. Three words (the box fits beside the
/// name's non-null pointer), where a `SmallVec` of one keeps its capacity and a tag
/// besides: the reader is in every idle stream's body.
enum Channels {
    One(ChannelName),
    Many(Box<[ChannelName]>),
}

impl Channels {
    fn new(channels: &[ChannelName]) -> Self {
        match channels {
            [one] => Self::One(one.clone()),
            _ => Self::Many(channels.into()),
        }
    }

    fn push(&mut self, channel: ChannelName) {
        let mut all = std::mem::replace(self, Self::Many(Box::default())).into_vec();
        all.push(channel);
        *self = Self::Many(all.into_boxed_slice());
    }

    fn remove(&mut self, i: usize) {
        let mut all = std::mem::replace(self, Self::Many(Box::default())).into_vec();
        all.remove(i);
        *self = Self::new(&all);
    }

    fn into_vec(self) -> Vec<ChannelName> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many.into_vec(),
        }
    }
}

impl std::ops::Deref for Channels {
    type Target = [ChannelName];

    fn deref(&self) -> &[ChannelName] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

/// The parts of a reader only some connections use (see [`StreamCore::rare`]).
#[derive(Default)]
struct Rare {
    /// Where an id made for this connection is written: notices, and every event of a
    /// connection of several channels (one channel shows the frame's own id).
    id_buf: String,
    /// Ids of recent events that reached this connection one channel copy at a time
    /// (see [`Published::fanout`]); empty unless the connection follows several channels.
    recent_split: VecDeque<Arc<str>>,
    /// Gaps taken from the queue, each set told at its `Item::Gaps` in the backlog.
    gaps: VecDeque<Vec<Gap>>,
    /// What is still to be written from history before anything queued (see [`Replay`]).
    replay: Option<Replay>,
}

impl Rare {
    /// Whether it holds nothing a connection of one channel needs kept.
    fn is_unused(&self) -> bool {
        self.id_buf.capacity() == 0
            && self.recent_split.capacity() == 0
            && self.gaps.capacity() == 0
            && self.replay.is_none()
    }
}

impl StreamCore {
    pub(crate) fn new(shared: Arc<ConnShared>, hub: Arc<Hub>, channels: &[ChannelName]) -> Self {
        Self {
            shared,
            hub,
            channels: Channels::new(channels),
            cursor: Cursor::at_start(channels.len()),
            backlog: VecDeque::new(),
            rare: None,
        }
    }

    /// The connection's public id.
    pub(crate) fn id(&self) -> &str {
        &self.shared.id
    }

    pub(crate) fn channels(&self) -> &[ChannelName] {
        &self.channels
    }

    /// Why the server closed the connection, once it has.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason()
    }

    pub(crate) fn set_cursor(&mut self, cursor: Cursor) {
        self.cursor = cursor;
    }

    /// Writes `opening` (what the connection missed) before anything queued, a piece a
    /// poll. The cursor is already where it ends ([`Opening::new`]): what is both replayed
    /// and queued is dropped as seen.
    pub(crate) fn replay_first(&mut self, opening: Opening) {
        self.rare.get_or_insert_default().replay = Some(Replay::Opening(Box::new(opening)));
    }

    fn is_replaying(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.replay.is_some())
    }

    /// Advances the cursor for `event` and says which copy to write; `None` if the
    /// connection has already seen it (replayed from history, queued twice across a resume
    /// seam, or another channel's copy of the same event) or does not follow it.
    fn advance(&mut self, event: &Published) -> Option<usize> {
        let mut first = None;
        for (ci, copy) in event.copies.iter().enumerate() {
            if let Some(i) = self.channels.iter().position(|c| *c == copy.channel) {
                if copy.position > self.cursor.positions[i] {
                    self.cursor.positions[i] = copy.position;
                    first.get_or_insert(ci);
                }
            } else if first.is_none() && self.channels.iter().any(|p| p.matches(&copy.channel)) {
                // A pattern keeps no position: live only (see docs/channels.md).
                first = Some(ci);
            }
        }
        if first.is_some() && self.channels.len() > 1 && usize::from(event.fanout) > event.copies.len() {
            if self.rare.as_ref().is_some_and(|r| r.recent_split.contains(&event.id)) {
                return None;
            }
            self.remember_split(Arc::clone(&event.id));
        }
        first
    }

    /// Remembers an event written to the connection whose other channels' copies may still
    /// come one at a time (a live copy, or one replayed from history), so that those copies
    /// are dropped as repeats. Only the last [`RECENT_SPLIT`] are kept.
    pub(crate) fn remember_split(&mut self, id: Arc<str>) {
        let recent = &mut self.rare.get_or_insert_default().recent_split;
        if recent.len() == RECENT_SPLIT {
            recent.pop_front();
        }
        recent.push_back(id);
    }

    /// Inlined into the poll, as it was before the id buffer moved out of line: this is
    /// every delivery's path.
    #[inline(always)]
    fn emit_event(&mut self, out: &mut impl Emit, event: &Published, ci: usize) {
        let Some(copy) = event.copies.get(ci) else { return };
        if self.channels.len() == 1 {
            // The frame's own id (see `event_id`): no buffer of this connection's is touched.
            out.event(&event.event_type, copy, None);
        } else {
            self.emit_with_cursor(out, &event.event_type, copy);
        }
    }

    /// An event's copy on a connection of several channels, shown with its cursor.
    #[inline(never)]
    fn emit_with_cursor(&mut self, out: &mut impl Emit, event_type: &str, copy: &Copy) {
        let buf = &mut self.rare.get_or_insert_default().id_buf;
        out.event(event_type, copy, event_id(&self.channels, &self.cursor, buf));
    }

    fn notice(&mut self, out: &mut impl Emit, event_type: &str, json: &[u8]) {
        let buf = &mut self.rare.get_or_insert_default().id_buf;
        buf.clear();
        self.cursor.encode_into(&self.channels, buf);
        out.notice(event_type, buf, json);
    }

    /// Applies a live join: the channel joins the cursor at `from`, its notices are
    /// written, and its history is left to write before anything queued behind it.
    fn apply_join(&mut self, out: &mut impl Emit, channel: &ChannelName, start: JoinStart) {
        let JoinStart::At { from, reset, replay, lead } = start else { return };
        let i = match self.channels.iter().position(|c| c == channel) {
            Some(i) => i,
            None => {
                self.channels.push(channel.clone());
                self.cursor.positions.push(from);
                self.channels.len() - 1
            }
        };
        let notice = serde_json::json!({"type": "subscribed", "channel": channel.as_str()});
        self.notice(out, "subscribed", notice.to_string().as_bytes());
        if let Some(reason) = reset {
            let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let reset =
                serde_json::json!({"type": "reset", "channel": channel.as_str(), "reason": reason, "timestamp": now});
            self.notice(out, "reset", reset.to_string().as_bytes());
        }
        if replay.is_empty() {
            for (event_type, json) in lead {
                self.notice(out, &event_type, &json);
            }
            return;
        }
        let joining = Joining { channel: i, events: replay.into_iter(), lead };
        self.rare.get_or_insert_default().replay = Some(Replay::Joining(Box::new(joining)));
    }

    /// Writes the next piece of a live join's history; true once all of it is written.
    fn write_join_piece(&mut self, out: &mut impl Emit, join: &mut Joining) -> bool {
        let (mut bytes, mut steps, mut written) = (0, 0, 0);
        while bytes < replay::PIECE && steps < replay::MAX_STEPS {
            let Some((event, write)) = join.events.next() else { break };
            steps += 1;
            if self.replayed(join.channel, &event) && write {
                let channel = &self.channels[join.channel];
                let Some(ci) = event.copies.iter().position(|c| c.channel == *channel) else { continue };
                bytes += event.copies[ci].frame.wire_len();
                self.emit_event(out, &event, ci);
                written += 1;
            }
        }
        self.hub.stats.events_written.fetch_add(written, std::sync::atomic::Ordering::Relaxed);
        if join.events.len() > 0 {
            return false;
        }
        for (event_type, json) in std::mem::take(&mut join.lead) {
            self.notice(out, &event_type, &json);
        }
        true
    }

    /// Writes the next piece of what the connection replays before its queue, unless it is
    /// closing and its queue was dropped (the client resumes from history: the replay is
    /// dropped too, and the poll goes on to the close). `None` once there is nothing to
    /// write.
    #[inline(never)]
    fn poll_replay(&mut self, out: &mut impl Emit) -> Option<Polled> {
        let close = {
            let mut st = self.shared.lock();
            st.progressed = true;
            st.close
        };
        let rare = self.rare.as_mut()?;
        let replay = rare.replay.take()?;
        if close.is_some_and(|reason| !reason.keeps_queue()) {
            return None;
        }
        let (done, replay) = match replay {
            Replay::Opening(mut opening) => {
                let done = opening.write_piece(out, &self.channels, &self.shared.filters, &mut rare.id_buf);
                (done, Replay::Opening(opening))
            }
            Replay::Joining(mut joining) => (self.write_join_piece(out, &mut joining), Replay::Joining(joining)),
        };
        if let Some(rare) = self.rare.as_mut() {
            if !done {
                rare.replay = Some(replay);
            } else if self.channels.len() == 1 && rare.is_unused() {
                self.rare = None;
            }
        }
        Some(Polled { heartbeat: false, close: None })
    }

    /// Counts an event replayed for the channel at `i` of a live join (the join's history,
    /// read after the join was queued: the same event may also be in the queue behind it).
    /// True if it is to be written here: new on that channel and not one the connection
    /// gets through another of its channels. An event whose copy on another followed
    /// channel is at or before the cursor was written already; one beyond it is queued
    /// behind the join and written from there, so that the other channel's events keep
    /// their order and its position never passes one of them unwritten.
    fn replayed(&mut self, i: usize, event: &Published) -> bool {
        let channel = &self.channels[i];
        let Some(copy) = event.copies.iter().find(|c| c.channel == *channel) else { return false };
        if copy.position <= self.cursor.positions[i] {
            return false;
        }
        let position = copy.position;
        let mut seen = false;
        let mut queued = false;
        for other in &event.copies {
            if let Some(j) = self.channels.iter().position(|c| *c == other.channel)
                && j != i
            {
                if other.position <= self.cursor.positions[j] {
                    seen = true;
                } else {
                    queued = true;
                }
            }
        }
        if queued && !seen {
            return false;
        }
        self.cursor.positions[i] = position;
        !seen
    }

    /// Tells the client of events its `drop_oldest` queue dropped, one `gap` per channel,
    /// and moves its cursor over them: the notice's id is past the gap, and the gap's ids
    /// say what to fetch from history. A gap wholly at or before the cursor (events it had
    /// already, queued twice across a resume seam) was no loss and is not told.
    fn tell_gaps(&mut self, out: &mut impl Emit, gaps: Vec<Gap>) {
        for gap in gaps {
            if let Some(i) = self.channels.iter().position(|c| *c == gap.channel) {
                if gap.last <= self.cursor.positions[i] {
                    continue;
                }
                self.cursor.positions[i] = gap.last;
            }
            let (mut first, mut last) = (String::new(), String::new());
            write_entry(&mut first, gap.channel.as_str(), gap.first);
            write_entry(&mut last, gap.channel.as_str(), gap.last);
            let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let notice = serde_json::json!({
                "type": "gap", "channel": gap.channel.as_str(), "reason": "slow_consumer",
                "firstId": first, "lastId": last, "missed": gap.missed, "timestamp": now,
            });
            self.notice(out, "gap", notice.to_string().as_bytes());
            self.hub.stats.slow_gaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn apply_leave(&mut self, out: &mut impl Emit, channel: &ChannelName) {
        if let Some(i) = self.channels.iter().position(|c| c == channel) {
            self.channels.remove(i);
            self.cursor.positions.remove(i);
            let notice = serde_json::json!({"type": "unsubscribed", "channel": channel.as_str()});
            self.notice(out, "unsubscribed", notice.to_string().as_bytes());
        }
    }

    /// Processes one item taken from the queue. False when the items after it must wait (a
    /// join waiting for its start, put back at the front of the backlog).
    #[inline(always)]
    fn take(&mut self, item: Item, cx: &mut Context<'_>, out: &mut impl Emit, batch: &mut Batch) -> bool {
        match item {
            Item::Event(event, _) => {
                if let Some(ci) = self.advance(&event) {
                    self.emit_event(out, &event, ci);
                    batch.written += 1;
                    batch.oldest.get_or_insert(event);
                }
            }
            Item::Join(slot) => match slot.take() {
                Some(start) => {
                    self.apply_join(out, &slot.channel, start);
                    // Its history is written before anything queued behind it.
                    return !self.is_replaying();
                }
                None => {
                    // Wait for the joiner, keeping the rest in order. The waker is
                    // stored before the second look, so a start filled in between
                    // cannot be missed.
                    self.shared.lock().waker = Some(cx.waker().clone());
                    let ready = slot.is_ready();
                    self.backlog.push_front(Item::Join(slot));
                    return ready;
                }
            },
            Item::Leave(channel) => self.apply_leave(out, &channel),
            Item::Gaps => {
                let gaps = self.rare.as_mut().and_then(|r| r.gaps.pop_front()).unwrap_or_default();
                self.tell_gaps(out, gaps);
            }
            Item::Direct(direct) => {
                let (event_type, json) = &*direct;
                self.notice(out, event_type, json);
                batch.written += 1;
            }
        }
        true
    }

    /// Takes what is queued and emits what is new. `Pending` when there is nothing to do
    /// (the waker is registered); otherwise whether a heartbeat is due, and whether the
    /// connection is closing.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, out: &mut impl Emit) -> Poll<Polled> {
        if self.is_replaying()
            && let Some(polled) = self.poll_replay(out)
        {
            return Poll::Ready(polled);
        }
        // `head`: the queue's first item, when the backlog was empty; processed before it.
        let (head, heartbeat, close) = {
            let mut st = self.shared.lock();
            st.progressed = true;
            let blocked = matches!(self.backlog.front(), Some(Item::Join(slot)) if !slot.is_ready());
            let empty = self.backlog.is_empty() && st.items.is_empty();
            if (blocked || empty) && !st.heartbeat && st.close.is_none() {
                match &st.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            let mut head = None;
            if !blocked {
                if let Some(gaps) = st.gaps.take() {
                    // The dropped events came after what the backlog holds and before
                    // everything still queued.
                    self.rare.get_or_insert_default().gaps.push_back(*gaps);
                    self.backlog.push_back(Item::Gaps);
                }
                let queue = &mut st.items;
                let mut room = MAX_BATCH.saturating_sub(self.backlog.len());
                if self.backlog.is_empty() {
                    // The usual case: the queue's first item is processed from here, with
                    // nothing written to the backlog's buffer (no memory line besides the
                    // connection's is touched for it).
                    head = queue.first.take();
                    room -= usize::from(head.is_some());
                } else if room > 0
                    && let Some(first) = queue.first.take()
                {
                    self.backlog.push_back(first);
                    room -= 1;
                }
                match queue.rest.as_deref_mut() {
                    // Nothing came behind the first item since the last poll: the buffer goes,
                    // so that a push into the empty queue reads nothing but the connection.
                    Some(rest) if rest.is_empty() => queue.rest = None,
                    Some(rest) if self.backlog.is_empty() && rest.len() <= room => {
                        // Take the rest whole, without copying its items into the backlog's
                        // buffer.
                        std::mem::swap(&mut self.backlog, rest);
                    }
                    Some(rest) => {
                        let n = rest.len().min(room);
                        self.backlog.extend(rest.drain(..n));
                    }
                    None => {}
                }
            }
            let drained = st.items.is_empty();
            if drained
                && st.items.rest.as_ref().is_some_and(|rest| rest.capacity() == 0 || rest.capacity() > IDLE_QUEUE)
            {
                st.items.rest = None;
            }
            let close = if drained { st.close } else { None };
            (head, std::mem::take(&mut st.heartbeat), close)
        };
        let dropping = close.is_some_and(|reason| !reason.keeps_queue());
        if !dropping {
            out.reserve(self.backlog.len() + usize::from(head.is_some()));
        }
        let mut batch = Batch { written: 0, oldest: None };
        if dropping {
            drop(head);
            self.backlog.clear();
        } else {
            // `head` is moved, not dropped: no drop glue runs for the empty slot it left.
            let mut more = match head {
                Some(item) => self.take(item, cx, out, &mut batch),
                None => true,
            };
            while more && let Some(item) = self.backlog.pop_front() {
                more = self.take(item, cx, out, &mut batch);
            }
        }
        let Batch { written, oldest } = batch;
        if let Some(oldest) = &oldest {
            self.hub.stats.record_write(written, oldest);
        }
        // Everything before the close is written unless items wait in the backlog, or a
        // join's history is still to be written.
        let finished = self.backlog.is_empty() && !self.is_replaying();
        if finished && let Some((event_type, json)) = close.and_then(|reason| reason.last_notice(&self.shared.id)) {
            // Its id is the cursor after everything written: a resume loses nothing.
            self.notice(out, event_type, json.as_bytes());
        }
        if self.backlog.is_empty() && self.backlog.capacity() > IDLE_QUEUE {
            self.backlog = VecDeque::new();
        }
        let close = if finished { close } else { None };
        Poll::Ready(Polled { heartbeat, close })
    }
}

impl Drop for StreamCore {
    fn drop(&mut self) {
        let reason = self.shared.close_reason();
        self.hub.unregister(&self.shared);
        tracing::debug!(
            connection = %self.shared.id,
            reason = reason.map_or("client_closed", CloseReason::as_str),
            "connection closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Position;
    use crate::hub::connection::JoinSlot;

    #[test]
    fn a_stream_of_one_channel_keeps_its_channel_and_position_inline() {
        let hub = Arc::new(Hub::new());
        let core = |names: &[&str]| {
            let channels: Vec<_> =
                names.iter().map(|n| ChannelName::parse(n).unwrap_or_else(|e| panic!("{e}"))).collect();
            let shared = Arc::new(ConnShared::new(Arc::from("c1"), None, 16, None, Vec::new()));
            StreamCore::new(shared, Arc::clone(&hub), &channels)
        };
        let one = core(&["channel:lobby"]);
        assert!(
            matches!(one.channels, Channels::One(_)) && !one.cursor.positions.spilled(),
            "no allocation of their own"
        );
        let two = core(&["channel:lobby", "channel:news"]);
        assert_eq!((two.channels.len(), two.cursor.positions.len()), (2, 2));
    }

    #[test]
    fn queued_items_come_out_in_order_whether_one_waits_inline_or_many_in_batches() {
        use crate::hub::connection::Pushed;
        let hub = Arc::new(Hub::new());
        let Ok(a) = ChannelName::parse("channel:a") else { panic!("channel name") };
        let shared = Arc::new(ConnShared::new(Arc::from("c1"), None, 200, None, Vec::new()));
        let mut core = StreamCore::new(Arc::clone(&shared), Arc::clone(&hub), std::slice::from_ref(&a));
        let event = |ms: u64| {
            let copy = Copy::new(a.clone(), Position::new(ms, 0), "t", b"{}");
            Arc::new(Published::new(Arc::from(format!("e{ms}")), Arc::from("t"), vec![copy], 1))
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = crate::transport::messages::MessageOut::default();
        let mut poll = |core: &mut StreamCore| {
            out.queue.clear();
            let polled = matches!(core.poll(&mut cx, &mut out), Poll::Ready(_));
            // Each event is written only if it is newer than the last one: out of order, fewer.
            (polled, out.queue.len(), core.cursor.positions[0])
        };
        assert!(!poll(&mut core).0, "nothing queued");
        // One at a time: each waits inside the connection, no buffer is allocated.
        for ms in 1..=3 {
            assert_eq!(shared.push(&event(ms)), Pushed::Queued);
            assert!(shared.lock().items.rest.is_none());
            assert_eq!(poll(&mut core), (true, 1, Position::new(ms, 0)));
        }
        // A burst: the first inline, the rest behind it, taken at most `MAX_BATCH` at a time.
        for ms in 4..=(3 + MAX_BATCH as u64 + 10) {
            assert_eq!(shared.push(&event(ms)), Pushed::Queued);
        }
        assert!(shared.lock().items.first.is_some());
        assert_eq!(poll(&mut core), (true, MAX_BATCH, Position::new(3 + MAX_BATCH as u64, 0)));
        assert_eq!(shared.lock().items.len(), 10);
        assert_eq!(shared.push(&event(100)), Pushed::Queued);
        assert_eq!(poll(&mut core), (true, 11, Position::new(100, 0)), "the rest, then the newer one, in order");
        assert!(shared.lock().items.is_empty() && shared.lock().items.rest.is_none(), "a large buffer is freed");
        assert!(!poll(&mut core).0);
        // Two at once, twice: a small buffer is left behind the first item (the backlog's,
        // swapped), then one alone: the poll that finds the buffer empty lets it go.
        for ms in [101, 103] {
            assert_eq!((shared.push(&event(ms)), shared.push(&event(ms + 1))), (Pushed::Queued, Pushed::Queued));
            assert_eq!(poll(&mut core), (true, 2, Position::new(ms + 1, 0)));
        }
        assert!(shared.lock().items.rest.as_ref().is_some_and(|rest| rest.is_empty()));
        assert_eq!(shared.push(&event(105)), Pushed::Queued);
        assert_eq!(poll(&mut core), (true, 1, Position::new(105, 0)));
        assert!(shared.lock().items.rest.is_none());
    }

    #[test]
    fn one_channel_shows_the_frames_own_id_and_several_show_the_cursor() {
        let (a, b) = (ChannelName::parse("channel:a"), ChannelName::parse("channel:b"));
        let (Ok(a), Ok(b)) = (a, b) else { panic!("channel names") };
        let copy = Copy::new(a.clone(), Position::new(5, 0), "t", b"{}");
        let mut buf = String::new();
        let one = Cursor { positions: [Position::new(5, 0)].into_iter().collect() };
        assert_eq!(event_id(std::slice::from_ref(&a), &one, &mut buf), None, "the shared frame's id");
        assert_eq!(copy.frame.id(), one.encode(std::slice::from_ref(&a)), "which is the cursor after the event");
        let two = Cursor { positions: [Position::new(5, 0), Position::new(3, 0)].into_iter().collect() };
        let channels = [a, b];
        assert_eq!(event_id(&channels, &two, &mut buf), Some(two.encode(&channels).as_str()));
    }

    #[test]
    fn a_copy_of_an_event_the_replay_wrote_through_another_channel_is_dropped_as_a_repeat() {
        // Redis Cluster: each channel's copy of an event comes on its own, with its own
        // position only; the replay wrote `x` from channel a, and b's copy comes live.
        let hub = Arc::new(Hub::new());
        let (a, b) = (ChannelName::parse("channel:a"), ChannelName::parse("channel:b"));
        let (Ok(a), Ok(b)) = (a, b) else { panic!("channel names") };
        let shared = Arc::new(ConnShared::new(Arc::from("c1"), None, 16, None, Vec::new()));
        let mut core = StreamCore::new(shared, Arc::clone(&hub), &[a, b.clone()]);
        let copy_on_b = |id: &str, ms: u64| {
            let copy = Copy::new(b.clone(), Position::new(ms, 0), "t", b"{}");
            Published::new(Arc::from(id), Arc::from("t"), vec![copy], 2)
        };
        core.remember_split(Arc::from("x"));
        assert_eq!(core.advance(&copy_on_b("x", 5)), None, "written once already");
        assert_eq!(core.cursor.positions[1], Position::new(5, 0), "b's position moves over it");
        assert_eq!(core.advance(&copy_on_b("y", 6)), Some(0), "another event is written");
    }

    #[test]
    fn a_join_replays_only_what_no_other_channel_of_the_connection_brings() {
        let hub = Arc::new(Hub::new());
        let (a, c) = (ChannelName::parse("channel:a"), ChannelName::parse("channel:c"));
        let (Ok(a), Ok(c)) = (a, c) else { panic!("channel names") };
        let shared = Arc::new(ConnShared::new(Arc::from("c1"), None, 16, None, Vec::new()));
        let mut core = StreamCore::new(shared, Arc::clone(&hub), std::slice::from_ref(&a));
        core.set_cursor(Cursor { positions: [Position::new(5, 0)].into_iter().collect() });
        let on = |id: &str, at: &[(&ChannelName, u64)]| {
            let copies =
                at.iter().map(|(ch, ms)| Copy::new((*ch).clone(), Position::new(*ms, 0), "t", b"{}")).collect();
            Arc::new(Published::new(Arc::from(id), Arc::from("t"), copies, at.len() as u16))
        };
        let seen = on("seen", &[(&a, 3), (&c, 1)]);
        let queued = on("queued", &[(&a, 7), (&c, 2)]);
        let only = on("only", &[(&c, 3)]);
        let replay = [&seen, &queued, &only].into_iter().map(|e| (Arc::clone(e), true)).collect();
        let start = JoinStart::At { from: Position::new(0, 0), reset: None, replay, lead: Vec::new() };
        let mut out = crate::transport::messages::MessageOut::default();
        core.apply_join(&mut out, &c, start);
        assert!(core.is_replaying(), "its history is written as the reader polls");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(core.poll(&mut cx, &mut out), Poll::Ready(_)));
        let written: Vec<&str> = out.queue.iter().filter_map(|m| m.message()).map(|m| m.id.as_str()).collect();
        let expected = Cursor { positions: [Position::new(5, 0), Position::new(3, 0)].into_iter().collect() };
        let subscribed = Cursor { positions: [Position::new(5, 0), Position::new(0, 0)].into_iter().collect() };
        let expected = [subscribed.encode(&[a.clone(), c.clone()]), expected.encode(&[a.clone(), c.clone()])];
        assert_eq!(written, expected, "the notice, then only the event no other channel brings");
        assert!(!core.is_replaying());
        assert_eq!(core.cursor.positions[1], Position::new(3, 0));
        assert_eq!(core.advance(&queued), Some(0), "the queued event comes once, through channel a");
        assert_eq!(core.advance(&seen), None);
    }

    /// A connection on `channel:a` that joins `channel:c`, whose history is 40 events of
    /// 6 KB and an AI-stream snapshot, with an event of `a` queued behind the join if `live`.
    fn joining_a_long_history(live: bool) -> (Arc<ConnShared>, StreamCore) {
        let hub = Arc::new(Hub::new());
        let (a, c) = (ChannelName::parse("channel:a"), ChannelName::parse("channel:c"));
        let (Ok(a), Ok(c)) = (a, c) else { panic!("channel names") };
        let shared = Arc::new(ConnShared::new(Arc::from("c1"), None, 16, None, Vec::new()));
        let core = StreamCore::new(Arc::clone(&shared), Arc::clone(&hub), std::slice::from_ref(&a));
        let json = format!("{{\"pad\":\"{}\"}}", "x".repeat(6000));
        let on = |ch: &ChannelName, ms: u64| {
            let copy = Copy::new(ch.clone(), Position::new(ms, 0), "t", json.as_bytes());
            Arc::new(Published::new(Arc::from(format!("e{ms}")), Arc::from("t"), vec![copy], 1))
        };
        let replay = (1..=40).map(|ms| (on(&c, ms), true)).collect();
        let lead = vec![(Arc::from("ai_chat_chunk"), bytes::Bytes::from_static(b"{}"))];
        let slot = JoinSlot::new(c);
        shared.push_item(Item::Join(Arc::clone(&slot)));
        shared.resolve_join(&slot, JoinStart::At { from: Position::new(0, 0), reset: None, replay, lead });
        if live {
            shared.push(&on(&a, 100));
        }
        (shared, core)
    }

    /// Polls once; what it wrote (the type of each event or notice), and how it ended.
    fn poll_once(core: &mut StreamCore) -> (Vec<String>, Option<CloseReason>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = crate::transport::messages::MessageOut::default();
        let Poll::Ready(polled) = core.poll(&mut cx, &mut out) else { panic!("the poll waited") };
        let types = out.queue.iter().filter_map(|m| m.message()).map(|m| m.event_type.clone()).collect();
        (types, polled.close)
    }

    #[test]
    fn a_joins_history_is_written_a_piece_a_poll_before_what_is_queued_behind_it() {
        let (_, mut core) = joining_a_long_history(true);
        let mut pieces = Vec::new();
        while core.is_replaying() || pieces.is_empty() {
            pieces.push(poll_once(&mut core).0);
        }
        // The `subscribed` notice, then 11 events of 6 KB a poll (the 11th crosses 64 KiB),
        // the snapshot after the last.
        let sizes: Vec<usize> = pieces.iter().map(|p| p.iter().filter(|t| *t == "t").count()).collect();
        assert_eq!(sizes, [0, 11, 11, 11, 7], "{pieces:?}");
        assert_eq!(pieces[0], ["subscribed"]);
        assert_eq!(pieces[4].last().map(String::as_str), Some("ai_chat_chunk"));
        assert_eq!(core.cursor.positions[1], Position::new(40, 0));
        let (after, _) = poll_once(&mut core);
        assert_eq!(after, ["t"], "the event queued behind the join, once its history is written");
        assert_eq!(core.cursor.positions[0], Position::new(100, 0));
    }

    #[test]
    fn a_connection_closed_mid_replay_drops_the_rest_unless_what_is_queued_is_still_written() {
        let (shared, mut core) = joining_a_long_history(true);
        poll_once(&mut core);
        poll_once(&mut core);
        shared.close(CloseReason::Overflow);
        assert_eq!(poll_once(&mut core), (Vec::new(), Some(CloseReason::Overflow)), "nothing more is written");
        // A drain and an expired token keep what is queued: the rest of the history, its
        // snapshot and the live event, then (for the token) its notice; whether the close came
        // before the join was applied, the join the last item queued, or after.
        for (reason, live, early) in [
            (CloseReason::Drain { retry_ms: 1000 }, true, false),
            (CloseReason::TokenExpired, false, true),
            (CloseReason::TokenExpired, true, true),
        ] {
            let (shared, mut core) = joining_a_long_history(live);
            if early {
                shared.close(reason);
            }
            let mut written = poll_once(&mut core).0;
            if !early {
                shared.close(reason);
            }
            let close = loop {
                let (more, close) = poll_once(&mut core);
                written.extend(more);
                if close.is_some() {
                    break close;
                }
            };
            let mut expected = vec!["subscribed".to_owned()];
            expected.extend(std::iter::repeat_n("t".to_owned(), 40));
            expected.push("ai_chat_chunk".to_owned());
            expected.extend(live.then(|| "t".to_owned()));
            expected.extend((reason == CloseReason::TokenExpired).then(|| "token_expired".to_owned()));
            assert_eq!((written, close), (expected, Some(reason)), "{reason:?}, live {live}, early {early}");
        }
    }
}
