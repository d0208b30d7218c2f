//! The in-memory engine: one node, no other process.
//!
//! Each channel has a log: its last position and a bounded history (size and age). A
//! publish takes the logs of its channels, assigns positions Redis-style (milliseconds and a
//! sequence), frames the event, appends it and hands it to the node's sink (the hub) while
//! still holding the logs, so that delivery order and position order agree on every channel.
//!
//! A log also remembers `covered_after`: every event after that position is still in the log.
//! A resume from before it is a gap, said plainly, never a silent one. Logs that have no
//! events left and no local subscribers are dropped by the sweep ([`Engine::sweep`]).
//!
//! A log also folds the channel's AI token streams (`ai_chat_chunk`) into snapshots, under
//! the same lock as its positions, so a snapshot and the head it is read with agree.
//! Presence lives in the `presence` submodule, tickets and bans in `sessions`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

mod presence;
mod sessions;

use super::sink::Attached;
use super::{
    AiSnapshot, BoxFuture, Broker, Engine, EngineError, GapReason, HistoryPage, HistoryRead, NodeCommand, NodeReply,
    NodeSink, PageQuery, PublishAck, StartRead,
};
use crate::catalogue::PresenceStatus;
use crate::channel::{ChannelMap, ChannelName};
use crate::cursor::Position;
use crate::event::{AiChunk, Prepared, Published};
use crate::ids::now_ms;
use crate::maps::shrink;

/// A channel's log. Within 112 bytes (a test holds it there): with its lock and the `Arc`'s
/// two counts, 128, jemalloc's size class of two cache lines, both of which a publish
/// touches (where 136 bytes took the 160 class and three lines).
struct Log {
    last: Position,
    covered_after: Position,
    /// The events kept, oldest first, each with its position in this channel (searched by
    /// it): one list, so an append grows, pushes and trims one list where two lists did
    /// each of it twice. Changed only through [`Log::push`], [`Log::pop_front`] and
    /// [`Log::clear`], which keep `oldest_ms`.
    entries: VecDeque<(Position, Arc<Published>)>,
    /// The milliseconds of the oldest entry's position (`u64::MAX` with no entries): the
    /// age check of every publish's trim reads it here, not in the entry, whose line of
    /// the list is out of cache by then (a channel's oldest event is long written).
    oldest_ms: u64,
    /// AI token streams of the channel, oldest first. Boxed: most channels never see one,
    /// and a `Vec` here takes 24 bytes of every log.
    #[allow(clippy::box_collection, reason = "8 bytes in every log, not a `Vec`'s 24")]
    streams: Option<Box<Vec<AiStream>>>,
    /// The history limits of the channel's namespace (size, age in ms), found at the first
    /// publish once the node is attached: a node's policies never change, and a publish
    /// then looks them up by the channel's namespace no more.
    limits: Option<(usize, u64)>,
}

/// An AI token stream folded so far.
struct AiStream {
    id: String,
    /// Its text so far; emptied for good once it would pass [`MAX_AI_TEXT`].
    text: String,
    /// Its text passed [`MAX_AI_TEXT`]: it is no longer snapshotted (its chunks are replayed
    /// as the events they are), and kept only so that a later chunk does not start it again.
    over: bool,
    last: Position,
    /// The last chunk, whose other fields the snapshot carries.
    last_chunk: Arc<Published>,
    /// When the stream is forgotten (ms): `history_ttl` after its last chunk while open,
    /// the retention after it finished.
    expires_ms: u64,
}

/// The events a log makes room for at its first (a channel's history is often a few events;
/// a longer one grows from there by doubling).
const FIRST_ROOM: usize = 8;

/// Open AI streams kept per channel at most; the oldest is forgotten past it.
const MAX_STREAMS: usize = 64;

/// The most text of one AI stream kept for its snapshots (1 MiB; the Redis engine's
/// `MAX_AI_TEXT` in publish_prelude.lua is the same): a publisher that goes on and on with one
/// `streamId` must not grow the node's memory without bound.
pub(crate) const MAX_AI_TEXT: usize = 1024 * 1024;

impl Log {
    fn new(now: u64) -> Self {
        let start = Position::new(now, 0);
        Self {
            last: start,
            covered_after: start,
            entries: VecDeque::new(),
            oldest_ms: u64::MAX,
            streams: None,
            limits: None,
        }
    }

    fn fold_chunk(&mut self, chunk: &AiChunk, event: &Arc<Published>, pos: Position, now: u64, ttl: (u64, u64)) {
        let expires_ms = now.saturating_add(if chunk.done { ttl.1 } else { ttl.0 });
        let streams = self.streams.get_or_insert_default();
        if let Some(s) = streams.iter_mut().find(|s| s.id == chunk.stream_id) {
            if !s.over && s.text.len() + chunk.text.len() > MAX_AI_TEXT {
                s.over = true;
                s.text = String::new();
            }
            if !s.over {
                s.text.push_str(&chunk.text);
            }
            s.last = pos;
            s.last_chunk = Arc::clone(event);
            s.expires_ms = expires_ms;
            return;
        }
        if streams.len() >= MAX_STREAMS {
            streams.remove(0);
        }
        let over = chunk.text.len() > MAX_AI_TEXT;
        streams.push(AiStream {
            id: chunk.stream_id.clone(),
            text: if over { String::new() } else { chunk.text.clone() },
            over,
            last: pos,
            last_chunk: Arc::clone(event),
            expires_ms,
        });
    }

    fn snapshots(&mut self, channel: &ChannelName, now: u64) -> Vec<AiSnapshot> {
        let Some(streams) = &mut self.streams else { return Vec::new() };
        streams.retain(|s| s.expires_ms >= now);
        if streams.is_empty() {
            self.streams = None;
            return Vec::new();
        }
        streams
            .iter()
            .filter(|s| !s.over)
            .filter_map(|s| {
                let json = s.last_chunk.copy_on(channel.as_str())?.frame.json();
                AiSnapshot::from_last_chunk(s.id.clone(), s.last, json, s.text.clone())
            })
            .collect()
    }

    fn pop_front(&mut self) {
        if let Some((pos, _)) = self.entries.pop_front() {
            self.covered_after = pos;
        }
        self.oldest_ms = self.entries.front().map_or(u64::MAX, |(p, _)| p.ms);
    }

    /// Appends an event at `pos` (after every position in the log).
    fn push(&mut self, pos: Position, event: Arc<Published>) {
        if self.entries.is_empty() {
            self.oldest_ms = pos.ms;
        }
        self.entries.push_back((pos, event));
    }

    /// Forgets every event kept.
    fn clear(&mut self) {
        self.entries.clear();
        self.oldest_ms = u64::MAX;
    }

    /// Before an event is appended to a log trimmed to `size` events: the first makes room
    /// for a few, where growing from nothing reallocates the list at the 1st, 5th and 9th
    /// event.
    fn make_room(&mut self, size: usize) {
        if self.entries.capacity() == 0 {
            // One over the size: the new event is in before the oldest is trimmed.
            self.entries.reserve_exact(FIRST_ROOM.min(size.saturating_add(1)));
        }
    }

    fn trim(&mut self, (size, ttl_ms): (usize, u64), now: u64) {
        while self.entries.len() > size {
            self.pop_front();
        }
        // Positions only grow, so the oldest entry is the first to expire: its age is read
        // from `oldest_ms`, and the entry itself only when it is due.
        while self.oldest_ms.saturating_add(ttl_ms) < now {
            self.pop_front();
        }
    }
}

/// Idempotency keys held at once; past it a publish with a new key is refused (and not
/// stored) until old ones expire.
const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

/// What an idempotency key answers while its window lasts.
struct Remembered {
    fingerprint: String,
    ack: PublishAck,
    until: Instant,
}

/// The single-node engine.
#[derive(Default)]
pub struct MemoryEngine {
    /// The node this engine delivers to (attached once).
    sink: Attached,
    logs: Mutex<ChannelMap<Arc<Mutex<Log>>>>,
    tickets: Mutex<HashMap<String, (String, Instant)>>,
    /// Banned users, each until when.
    bans: Mutex<HashMap<String, Instant>>,
    presence: Mutex<HashMap<ChannelName, HashMap<String, presence::Present>>>,
    statuses: Mutex<HashMap<String, PresenceStatus>>,
    /// Channels this (only) node holds, and the occupancy changes so far.
    occupied: Mutex<(u64, std::collections::HashSet<ChannelName>)>,
    /// Idempotency keys of recent publishes, by [`crate::event::Idempotency::key`].
    idempotency: Mutex<HashMap<String, Remembered>>,
}

/// The clock of a publish call, for all its events: the time their positions and history
/// ages are counted from (the wall clock read when the batch was prepared, which its ids
/// and timestamps carry), and when the node accepted them. A position of a time before its
/// log's last stays after it (`Position::next_at`).
#[derive(Clone, Copy)]
struct Clock {
    ms: u64,
    accepted: Instant,
}

impl Clock {
    /// The clock of a publish of `batch` accepted at `accepted`: the wall clock is the one
    /// the batch was prepared at (its events' ids and timestamps), not read again.
    fn of(batch: &[Prepared], accepted: Instant) -> Self {
        Self { ms: batch.first().map_or_else(now_ms, |p| p.at_ms), accepted }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryEngine {
    /// An engine with no history and no node yet: [`Engine::attach`] gives it both.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes a batch of which some events carry an idempotency key: a key seen within its
    /// window answers its first publish and publishes nothing. The keys are held locked from
    /// the check to the publish, so a concurrent retry waits and then finds its key.
    fn publish_keyed(&self, batch: &[Prepared]) -> Result<Vec<PublishAck>, EngineError> {
        super::check_batch_keys(batch)?;
        let mut keys = lock(&self.idempotency);
        let now = crate::clock::mono();
        // Every key is checked before any event is published: a batch is accepted whole or
        // not at all.
        let mut fresh = 0;
        for k in batch.iter().filter_map(|p| p.idempotency.as_deref()) {
            match keys.get(&k.key).filter(|r| r.until > now) {
                Some(r) if r.fingerprint != k.fingerprint => return Err(EngineError::IdempotencyKeyReused),
                Some(_) => {}
                None => fresh += 1,
            }
        }
        if keys.len() + fresh > MAX_IDEMPOTENCY_KEYS {
            keys.retain(|_, r| r.until > now);
            if keys.len() + fresh > MAX_IDEMPOTENCY_KEYS {
                return Err(EngineError::Full("too many idempotency keys held; try again shortly".into()));
            }
        }
        let clock = Clock::of(batch, now);
        let acks = batch
            .iter()
            .map(|p| {
                // Whole acks: a key remembers its ack for every later retry, whoever asks.
                let Some(k) = p.idempotency.as_deref() else { return self.publish_one(p, clock, false) };
                if let Some(r) = keys.get(&k.key).filter(|r| r.until > now) {
                    return r.ack.clone();
                }
                let ack = self.publish_one(p, clock, false);
                let remembered =
                    Remembered { fingerprint: k.fingerprint.clone(), ack: ack.clone(), until: now + k.window };
                keys.insert(k.key.clone(), remembered);
                ack
            })
            .collect();
        Ok(acks)
    }

    /// History size and age (ms) of a channel's namespace.
    fn limits(&self, channel: &ChannelName) -> (usize, u64) {
        self.sink.node().history_limits(channel).map_or((0, 0), |l| (l.size, l.ttl_ms()))
    }

    /// How long an open and a finished AI stream of the channel are kept (ms).
    fn stream_ttls(&self, channel: &ChannelName) -> (u64, u64) {
        self.sink.node().history_limits(channel).map_or((0, 0), |l| (l.ttl_ms(), l.ai_retention_ms()))
    }

    fn log(&self, channel: &ChannelName) -> Arc<Mutex<Log>> {
        self.log_named(channel).1
    }

    /// [`Self::log`] with the name the engine keeps for the channel (the key of its log,
    /// which lives as long as the log: the name a kept event holds, see
    /// [`Published::from_prepared_on`]).
    fn log_named(&self, channel: &ChannelName) -> (ChannelName, Arc<Mutex<Log>>) {
        let mut logs = lock(&self.logs);
        // Looked up first: a channel with a log (nearly every publish) is not inserted anew.
        if let Some((name, log)) = logs.get_key_value(channel) {
            return (name.clone(), Arc::clone(log));
        }
        let log = Arc::new(Mutex::new(Log::new(now_ms())));
        logs.insert(channel.clone(), Arc::clone(&log));
        (channel.clone(), log)
    }

    /// History size and age of `channel`'s namespace, from its log once the log knows them
    /// (an engine not attached yet has no node to ask, and asks again at the next call).
    fn limits_of(&self, log: &mut Log, channel: &ChannelName) -> (usize, u64) {
        if let Some(limits) = log.limits {
            return limits;
        }
        let limits = self.limits(channel);
        if self.sink.is_attached() {
            log.limits = Some(limits);
        }
        limits
    }

    /// Publishes one event of a batch; its ack without positions when `ids_only`.
    fn publish_one(&self, p: &Prepared, clock: Clock, ids_only: bool) -> PublishAck {
        if let [channel] = p.channels.as_slice() {
            return self.publish_single(p, channel, clock, ids_only);
        }
        let logs: Vec<Arc<Mutex<Log>>> = p.channels.iter().map(|c| self.log(c)).collect();
        // Lock in channel-name order so concurrent multi-channel publishes cannot deadlock.
        let mut order: Vec<usize> = (0..logs.len()).collect();
        order.sort_by(|&a, &b| p.channels[a].cmp(&p.channels[b]));
        let mut guards: Vec<Option<MutexGuard<'_, Log>>> = (0..logs.len()).map(|_| None).collect();
        for i in order {
            guards[i] = Some(lock(&logs[i]));
        }
        let now = clock.ms;
        let mut positions = Vec::with_capacity(logs.len());
        for g in guards.iter_mut().flatten() {
            g.last = g.last.next_at(now);
            positions.push(g.last);
        }
        let event = Published::from_prepared_at(p, &positions, clock.accepted);
        for ((g, pos), ch) in guards.iter_mut().flatten().zip(&positions).zip(&p.channels) {
            let limits = self.limits_of(g, ch);
            self.append(g, p, &event, ch, *pos, limits, now);
        }
        self.sink.node().deliver(&event);
        drop(guards);
        let positions = if ids_only { Vec::new() } else { p.channels.iter().cloned().zip(positions).collect() };
        PublishAck { id: p.id.clone(), positions }
    }

    /// [`Self::publish_one`] for one channel, nearly every publish: one lock to take, so no
    /// lock order and none of the lists that keep it.
    fn publish_single(&self, p: &Prepared, channel: &ChannelName, clock: Clock, ids_only: bool) -> PublishAck {
        let (name, log) = self.log_named(channel);
        let mut g = lock(&log);
        let limits = self.limits_of(&mut g, channel);
        let now = clock.ms;
        g.last = g.last.next_at(now);
        let pos = g.last;
        let event = Published::from_prepared_on(p, name, pos, clock.accepted);
        self.append(&mut g, p, &event, channel, pos, limits, now);
        self.sink.node().deliver(&event);
        drop(g);
        let positions = if ids_only { Vec::new() } else { vec![(channel.clone(), pos)] };
        PublishAck { id: p.id.clone(), positions }
    }

    /// Appends an event at `pos` to one channel's log, whose lock the caller holds, and trims
    /// the log to the namespace's `limits` (size, age).
    #[allow(clippy::too_many_arguments, reason = "the parts of one append, each named")]
    fn append(
        &self,
        g: &mut Log,
        p: &Prepared,
        event: &Arc<Published>,
        ch: &ChannelName,
        pos: Position,
        limits: (usize, u64),
        now: u64,
    ) {
        g.make_room(limits.0);
        g.push(pos, Arc::clone(event));
        if let Some(chunk) = &p.ai {
            g.fold_chunk(chunk, event, pos, now, self.stream_ttls(ch));
        }
        g.trim(limits, now);
    }

    /// Reads every channel under all their logs' locks, taken in name order as a publish
    /// takes them: no publish falls between two of the reads.
    fn read_at_once(&self, reads: &[StartRead]) -> Vec<HistoryRead> {
        let mut names: Vec<&ChannelName> = reads.iter().map(|r| &r.channel).collect();
        names.sort();
        names.dedup();
        let logs: Vec<Arc<Mutex<Log>>> = names.iter().map(|c| self.log(c)).collect();
        let mut guards: Vec<MutexGuard<'_, Log>> = logs.iter().map(|l| lock(l)).collect();
        let now = now_ms();
        reads
            .iter()
            .filter_map(|r| {
                let g = guards.get_mut(names.binary_search(&&r.channel).ok()?)?;
                Some(self.read(g, &r.channel, r.after, r.last, now))
            })
            .collect()
    }

    /// One channel's history after `after` (or its head alone), and its last `last` events,
    /// from its log, whose lock the caller holds.
    fn read(
        &self,
        log: &mut Log,
        channel: &ChannelName,
        after: Option<Position>,
        last: usize,
        now: u64,
    ) -> HistoryRead {
        let limits = self.limits_of(log, channel);
        log.trim(limits, now);
        let head = log.last;
        let events = match after {
            None => Ok(Vec::new()),
            Some(_) => log.after(after).map(|from| log.events(from..)),
        };
        let streams = log.snapshots(channel, now);
        let recent = log.events(log.entries.len().saturating_sub(last)..);
        HistoryRead { head, events, streams, recent }
    }
}

impl Log {
    /// The events of a range of the log, oldest first.
    fn events(&self, range: impl std::ops::RangeBounds<usize>) -> Vec<Arc<Published>> {
        self.entries.range(range).map(|(_, event)| Arc::clone(event)).collect()
    }

    /// The index of the first entry after `after` (all of them for `None`), or why the log
    /// cannot say what came after it.
    fn after(&self, after: Option<Position>) -> Result<usize, GapReason> {
        match after {
            None => Ok(0),
            Some(p) if p > self.last => Err(GapReason::UnknownPosition),
            Some(p) if p < self.covered_after => Err(GapReason::HistoryExpired),
            Some(p) => Ok(self.entries.partition_point(|(q, _)| *q <= p)),
        }
    }

    /// A page of the log ([`PageQuery`]).
    fn page(&self, q: PageQuery) -> HistoryPage {
        let head = self.last;
        let from = match self.after(q.after) {
            Ok(from) => from,
            Err(reason) => return HistoryPage { head, events: Err(reason), more: false },
        };
        let to = q.before.map_or(self.entries.len(), |b| self.entries.partition_point(|(p, _)| *p < b)).max(from);
        let take = q.limit.min(to - from);
        let range = if q.newest_first { to - take..to } else { from..from + take };
        let mut events = self.events(range);
        if q.newest_first {
            events.reverse();
        }
        HistoryPage { head, events: Ok(events), more: to - from > take }
    }
}

impl MemoryEngine {
    /// A batch published: nothing here waits, so the answer is there when this returns.
    /// With `ids_only`, the acks of events without a key carry no positions.
    fn publish_batch(&self, batch: &[Prepared], ids_only: bool) -> Result<Vec<PublishAck>, EngineError> {
        if batch.iter().any(|p| p.idempotency.is_some()) {
            return self.publish_keyed(batch);
        }
        let clock = Clock::of(batch, crate::clock::mono());
        Ok(batch.iter().map(|p| self.publish_one(p, clock, ids_only)).collect())
    }
}

impl Broker for MemoryEngine {
    fn publish(&self, batch: Vec<Prepared>) -> BoxFuture<'_, Result<Vec<PublishAck>, EngineError>> {
        let acks = self.publish_batch(&batch, false);
        Box::pin(async move { acks })
    }

    fn publish_now(
        &self,
        batch: Vec<Prepared>,
        ids_only: bool,
    ) -> Result<Result<Vec<PublishAck>, EngineError>, Vec<Prepared>> {
        Ok(self.publish_batch(&batch, ids_only))
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<Position>,
    ) -> BoxFuture<'a, Result<HistoryRead, EngineError>> {
        let log = self.log(channel);
        let read = self.read(&mut lock(&log), channel, after, 0, now_ms());
        Box::pin(async move { Ok(read) })
    }

    fn histories<'a>(
        &'a self,
        reads: &'a [(ChannelName, Option<Position>)],
    ) -> BoxFuture<'a, Result<Vec<HistoryRead>, EngineError>> {
        let reads: Vec<StartRead> = reads
            .iter()
            .map(|(channel, after)| StartRead { channel: channel.clone(), after: *after, last: 0 })
            .collect();
        let out = self.read_at_once(&reads);
        Box::pin(async move { Ok(out) })
    }

    fn read_starts<'a>(&'a self, reads: &'a [StartRead]) -> BoxFuture<'a, Result<Vec<HistoryRead>, EngineError>> {
        let out = self.read_at_once(reads);
        Box::pin(async move { Ok(out) })
    }

    fn remove_history<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), EngineError>> {
        let log = self.log(channel);
        let mut g = lock(&log);
        g.clear();
        g.streams = None;
        g.covered_after = g.last;
        drop(g);
        Box::pin(async { Ok(()) })
    }

    fn history_page<'a>(
        &'a self,
        channel: &'a ChannelName,
        query: PageQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, EngineError>> {
        let log = self.log(channel);
        let mut g = lock(&log);
        let limits = self.limits_of(&mut g, channel);
        g.trim(limits, now_ms());
        let page = g.page(query);
        drop(g);
        Box::pin(async move { Ok(page) })
    }

    fn watch<'a>(&'a self, _channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    fn command(&self, command: NodeCommand) -> BoxFuture<'_, Result<Vec<NodeReply>, EngineError>> {
        let sink = self.sink.get();
        Box::pin(async move {
            let Some(sink) = sink else {
                return Err(EngineError::Unavailable("the node is not ready for commands".into()));
            };
            // On a task of its own, as on Redis: a caller that goes away (a client that
            // hangs up) must not leave a live join half done.
            tokio::spawn(sink.run_command(command))
                .await
                .map(|reply| vec![reply])
                .map_err(|e| EngineError::Internal(format!("node command failed: {e}")))
        })
    }
}

impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn attach(&self, sink: Arc<dyn NodeSink>) {
        self.sink.attach(sink);
    }

    fn is_healthy(&self) -> bool {
        true
    }

    fn counters(&self) -> super::EngineCounters {
        super::EngineCounters { channels: lock(&self.logs).len() as u64, ..super::EngineCounters::default() }
    }

    /// A channel nobody follows keeps its log only while it has history: events expire
    /// after the namespace's `history_ttl`, and the log (kept that long after its last
    /// event, so that a resume from its head is not mistaken for a gap) goes with them.
    fn sweep(&self) {
        let now = now_ms();
        let mut logs = lock(&self.logs);
        logs.retain(|channel, log| {
            let mut log = lock(log);
            let limits = self.limits_of(&mut log, channel);
            log.trim(limits, now);
            !log.entries.is_empty()
                || self.sink.node().subscriber_count(channel) > 0
                || log.last.ms.saturating_add(limits.1) >= now
        });
        shrink(&mut logs);
        drop(logs);
        let instant = Instant::now();
        let mut tickets = lock(&self.tickets);
        tickets.retain(|_, (_, until)| instant < *until);
        shrink(&mut tickets);
        drop(tickets);
        let mut bans = lock(&self.bans);
        bans.retain(|_, until| instant < *until);
        shrink(&mut bans);
        drop(bans);
        let mut idempotency = lock(&self.idempotency);
        idempotency.retain(|_, r| instant < r.until);
        shrink(&mut idempotency);
        drop(idempotency);
        shrink(&mut lock(&self.presence));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SessionStore;
    use crate::engine::sink::testing::RecordingSink;
    use crate::event::{Event, Publisher};
    use std::time::Duration;

    fn engine(size: usize) -> MemoryEngine {
        engine_with(RecordingSink::new(size))
    }

    fn engine_with(sink: Arc<RecordingSink>) -> MemoryEngine {
        let e = MemoryEngine::new();
        e.attach(sink);
        e
    }

    #[tokio::test]
    async fn a_ticket_can_be_taken_once() {
        let e = engine(1);
        e.put_ticket("t1", "who".into(), Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.take_ticket("t1").await.ok().flatten().as_deref(), Some("who"));
        assert_eq!(e.take_ticket("t1").await.ok().flatten(), None);
        e.put_ticket("t2", "who".into(), Duration::ZERO).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.take_ticket("t2").await.ok().flatten(), None, "an expired ticket is refused");
    }

    #[tokio::test]
    async fn a_ban_holds_until_it_expires_or_is_lifted() {
        let e = engine(1);
        let ok = |r: Result<(), EngineError>| r.unwrap_or_else(|e| panic!("{e}"));
        ok(e.ban("42", Duration::from_secs(60)).await);
        assert_eq!((e.is_banned("42").await.ok(), e.is_banned("43").await.ok()), (Some(true), Some(false)));
        assert_eq!(e.unban("42").await.ok(), Some(true));
        assert_eq!((e.is_banned("42").await.ok(), e.unban("42").await.ok()), (Some(false), Some(false)));
        ok(e.ban("42", Duration::ZERO).await);
        assert_eq!(e.is_banned("42").await.ok(), Some(false), "an expired ban refuses nobody");
        e.sweep();
        assert!(lock(&e.bans).is_empty(), "and is forgotten at the next sweep");
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn prep(channels: &[&str], n: usize) -> Prepared {
        let event = Event::new("chat").with("n", n);
        Prepared::new(channels.iter().map(|c| ch(c)).collect(), event, &Publisher::default(), 1 << 16)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_start_read_brings_the_last_events_oldest_first_with_the_head() {
        let e = engine(3);
        for n in 0..5 {
            e.publish(vec![prep(&["channel:s"], n)]).await.unwrap_or_default();
        }
        let reads = [StartRead { channel: ch("channel:s"), after: None, last: 2 }];
        let read = e.read_starts(&reads).await.unwrap_or_else(|e| panic!("{e}")).pop();
        let read = read.unwrap_or_else(|| panic!("one read"));
        let n = |ev: &Arc<Published>| {
            let json = ev.copy_on("channel:s")?.frame.json();
            serde_json::from_slice::<serde_json::Value>(json).ok()?["n"].as_u64()
        };
        let ns: Vec<Option<u64>> = read.recent.iter().map(n).collect();
        assert_eq!(ns, [Some(3), Some(4)]);
        assert_eq!(read.recent.last().and_then(|ev| ev.copy_on("channel:s")).map(|c| c.position), Some(read.head));
    }

    async fn read(e: &MemoryEngine, c: &str, after: Option<Position>) -> HistoryRead {
        e.history(&ch(c), after).await.unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn history_replays_after_a_position_and_reports_gaps() {
        let e = engine(3);
        let start = read(&e, "channel:a", None).await.head;
        let mut acks = Vec::new();
        for n in 0..5 {
            acks.extend(e.publish(vec![prep(&["channel:a"], n)]).await.unwrap_or_default());
        }
        let pos = |i: usize| acks[i].positions[0].1;
        // Kept: events 2, 3, 4. After event 2 → 3 and 4.
        let read2 = read(&e, "channel:a", Some(pos(2))).await;
        let ids = read2.events.map(|evs| evs.iter().map(|ev| ev.id.clone()).collect::<Vec<_>>());
        assert_eq!(ids, Ok(vec![acks[3].id.clone(), acks[4].id.clone()]));
        assert_eq!(read2.head, pos(4));
        // After event 0: event 1 was trimmed.
        assert_eq!(read(&e, "channel:a", Some(pos(0))).await.events.err(), Some(GapReason::HistoryExpired));
        // From the very start: events 0 and 1 were trimmed.
        assert!(read(&e, "channel:a", Some(start)).await.events.is_err());
        // A position from the future is unknown.
        let future = Position::new(pos(4).ms + 1_000_000, 0);
        assert_eq!(read(&e, "channel:a", Some(future)).await.events.err(), Some(GapReason::UnknownPosition));
        // At the head: nothing missed.
        assert!(read(&e, "channel:a", Some(pos(4))).await.events.is_ok_and(|evs| evs.is_empty()));
    }

    #[tokio::test]
    async fn a_page_takes_its_end_of_an_exclusive_range_and_says_whether_more_is_kept() {
        let e = engine(10);
        let mut acks = Vec::new();
        for n in 0..6 {
            acks.extend(e.publish(vec![prep(&["channel:p"], n)]).await.unwrap_or_default());
        }
        let pos = |i: usize| acks[i].positions[0].1;
        let page = |after, before, limit, newest_first| {
            let q = PageQuery { after, before, limit, newest_first };
            let p = lock(&e.log(&ch("channel:p"))).page(q);
            let ids = p.events.map(|evs| evs.iter().map(|ev| ev.id.clone()).collect::<Vec<_>>());
            (ids, p.more)
        };
        let ids = |is: &[usize]| Ok(is.iter().map(|&i| acks[i].id.clone()).collect::<Vec<_>>());
        assert_eq!(page(None, None, 2, true), (ids(&[5, 4]), true));
        assert_eq!(page(None, None, 2, false), (ids(&[0, 1]), true));
        assert_eq!(page(Some(pos(1)), Some(pos(4)), 10, false), (ids(&[2, 3]), false));
        assert_eq!(page(Some(pos(1)), Some(pos(4)), 1, true), (ids(&[3]), true));
        assert_eq!(page(None, None, 0, true), (ids(&[]), true), "limit 0: the head alone");
        assert_eq!(page(Some(pos(4)), Some(pos(2)), 10, true), (ids(&[]), false), "an empty range");
        assert_eq!(page(Some(pos(5)), None, 10, true), (ids(&[]), false), "after the head: nothing yet");
    }

    #[tokio::test]
    async fn removed_history_is_a_gap_before_the_head_and_positions_go_on() {
        let e = engine(10);
        let mut acks = Vec::new();
        for n in 0..3 {
            acks.extend(e.publish(vec![prep(&["channel:a"], n)]).await.unwrap_or_default());
        }
        let first = acks[0].positions[0].1;
        let all = PageQuery { after: None, before: None, limit: 10, newest_first: false };
        let page = |q| lock(&e.log(&ch("channel:a"))).page(q);
        assert_eq!(page(all).events.map(|v| v.len()).ok(), Some(3));
        let head = read(&e, "channel:a", None).await.head;
        e.remove_history(&ch("channel:a")).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page(all).events.map(|v| v.len()).ok(), Some(0));
        assert_eq!(read(&e, "channel:a", None).await.head, head, "the position stays");
        assert_eq!(read(&e, "channel:a", Some(first)).await.events.err(), Some(GapReason::HistoryExpired));
        let later = e.publish(vec![prep(&["channel:a"], 3)]).await.unwrap_or_default();
        assert!(later[0].positions[0].1 > head);
        assert_eq!(page(all).events.map(|v| v.len()).ok(), Some(1));
    }

    /// A batch is published at one instant (one clock read), so 1,500 events on a channel
    /// fall in one millisecond: its 1,000 sequences (`Position::MAX_SEQ`, which Centrifugo
    /// offsets need) are used up, and the rest go on in the next millisecond, through the
    /// single-channel and the multi-channel path alike; history replays them all in order.
    #[tokio::test]
    async fn a_batch_past_1000_events_of_a_channel_goes_on_in_the_next_millisecond() {
        let e = engine(2_000);
        let start = read(&e, "channel:a", None).await.head;
        let batch = (0..1_500).map(|n| prep(if n % 3 == 0 { &["channel:a", "channel:b"] } else { &["channel:a"] }, n));
        let acks = e.publish(batch.collect()).await.unwrap_or_else(|e| panic!("{e}"));
        let on_a: Vec<Position> = acks.iter().map(|ack| ack.positions[0].1).collect();
        for (k, pair) in on_a.windows(2).enumerate() {
            let (ms, seq) = (pair[0].ms, pair[0].seq);
            let next = if seq == 999 { Position::new(ms + 1, 0) } else { Position::new(ms, seq + 1) };
            assert_eq!(pair[1], next, "event {}", k + 1);
        }
        assert_eq!(on_a[1_499].ms, on_a[0].ms + 1, "one millisecond's sequences used up, the next one's begun");
        let replayed = read(&e, "channel:a", Some(start)).await.events.unwrap_or_else(|gap| panic!("{gap:?}"));
        let ids: Vec<&str> = replayed.iter().map(|ev| &*ev.id).collect();
        assert_eq!(ids, acks.iter().map(|ack| &*ack.id).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_multi_channel_event_has_a_position_in_each_channel() {
        let e = engine(10);
        let acks = e.publish(vec![prep(&["channel:a", "channel:b", "channel:a"], 1)]).await.unwrap_or_default();
        assert_eq!(acks[0].positions.len(), 2, "duplicate channel names are merged");
        for c in ["channel:a", "channel:b"] {
            let head = read(&e, c, None).await.head;
            assert_eq!(Some(head), acks[0].positions.iter().find(|(n, _)| n.as_str() == c).map(|(_, p)| *p));
        }
    }

    #[tokio::test]
    async fn accepted_events_reach_the_attached_sink_in_publish_order_once_each() {
        let sink = RecordingSink::new(10);
        let e = engine_with(Arc::clone(&sink));
        let mut acks = Vec::new();
        acks.extend(
            e.publish(vec![prep(&["channel:a"], 1), prep(&["channel:a", "channel:b"], 2)]).await.unwrap_or_default(),
        );
        acks.extend(e.publish(vec![prep(&["channel:b"], 3)]).await.unwrap_or_default());
        let ids: Vec<Arc<str>> = acks.iter().map(|a| a.id.clone()).collect();
        assert_eq!(sink.delivered_ids(), ids, "one delivery per event, a multi-channel one included");
    }

    #[tokio::test]
    async fn an_engine_with_no_sink_keeps_history_and_delivers_nowhere() {
        let e = MemoryEngine::new();
        let acks = e.publish(vec![prep(&["channel:a"], 1)]).await.unwrap_or_default();
        assert_eq!(acks.len(), 1);
        assert!(e.command(NodeCommand::Count { channel: "channel:a".into() }).await.is_err(), "no node to run it");
    }

    #[tokio::test]
    async fn kept_events_hold_the_engines_name_of_their_channel() {
        // A name held in an allocation of its own (a short one is copied in the name itself).
        let e = engine(10);
        for n in 0..3 {
            e.publish(vec![prep(&["channel:a-name-too-long-to-be-inline"], n)]).await.unwrap_or_default();
        }
        let logs = lock(&e.logs);
        let Some((name, log)) = logs.get_key_value(&ch("channel:a-name-too-long-to-be-inline")) else {
            panic!("a log")
        };
        let log = lock(log);
        assert_eq!(log.entries.len(), 3);
        for (pos, event) in &log.entries {
            let copy = &event.copies[0];
            assert_eq!((&copy.channel, copy.position), (name, *pos));
            assert!(std::ptr::eq(copy.channel.as_str(), name.as_str()), "the log's name, not one of its own");
        }
    }

    #[test]
    fn a_log_stays_within_its_allocation_size_class() {
        // With the `Arc`'s two counts, 128 bytes: jemalloc's size class of two cache lines;
        // the next is 160 (three lines, every one of them touched by a publish).
        let size = std::mem::size_of::<Mutex<Log>>();
        assert!(size <= 112, "{size}");
    }

    #[test]
    fn a_trim_drops_by_size_then_by_age_and_keeps_the_oldest_entrys_time() {
        let event = Arc::new(Published::new(Arc::from("e"), Arc::from("t"), Vec::new(), 0));
        let mut log = Log::new(0);
        assert_eq!(log.oldest_ms, u64::MAX, "no entries: nothing is ever due");
        for ms in [10, 20, 20, 30, 40] {
            log.last = log.last.next_at(ms);
            log.push(log.last, Arc::clone(&event));
        }
        assert_eq!(log.oldest_ms, 10);
        log.trim((4, 100), 50);
        assert_eq!((log.entries.len(), log.oldest_ms, log.covered_after.ms), (4, 20, 10), "by size");
        // Due when the oldest is more than the age old: 20 + 15 < 36, not < 35.
        log.trim((10, 15), 35);
        assert_eq!((log.entries.len(), log.oldest_ms), (4, 20));
        log.trim((10, 15), 36);
        assert_eq!((log.entries.len(), log.oldest_ms, log.covered_after.ms), (2, 30, 20), "both of 20 ms");
        log.trim((10, 15), 1_000);
        assert_eq!((log.entries.len(), log.oldest_ms, log.covered_after), (0, u64::MAX, log.last));
        log.last = log.last.next_at(2_000);
        log.push(log.last, Arc::clone(&event));
        assert_eq!(log.oldest_ms, 2_000, "the first entry pushed into an empty log");
        log.clear();
        assert_eq!((log.entries.len(), log.oldest_ms), (0, u64::MAX));
    }

    #[test]
    fn the_sweep_keeps_an_empty_log_while_the_sink_has_subscribers_of_it() {
        let sink = RecordingSink::new(0);
        let e = engine_with(Arc::clone(&sink));
        // A log with no events, last written long ago.
        for name in ["channel:kept", "channel:gone"] {
            let mut log = Log::new(0);
            log.last = Position::new(1, 0);
            lock(&e.logs).insert(ch(name), Arc::new(Mutex::new(log)));
        }
        sink.subscribed.lock().unwrap_or_else(PoisonError::into_inner).push(ch("channel:kept"));
        e.sweep();
        let left: Vec<ChannelName> = lock(&e.logs).keys().cloned().collect();
        assert_eq!(left, vec![ch("channel:kept")]);
    }
}
