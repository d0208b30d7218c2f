//! The in-memory engine: one node, no other process.
//!
//! Each channel has a log: its last position and a bounded history (size and age). A
//! publish takes the logs of its channels, assigns positions Redis-style (milliseconds and a
//! sequence), frames the event, appends it and hands it to the hub while still holding the
//! logs, so that delivery order and position order agree on every channel.
//!
//! A log also remembers `covered_after`: every event after that position is still in the log.
//! A resume from before it is a gap, said plainly, never a silent one. Logs that have no
//! events left and no local subscribers are dropped by [`MemoryEngine::sweep`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{BoxFuture, Engine, EngineError, GapReason, HistoryRead, PublishAck};
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::event::{Prepared, Published};
use crate::hub::Hub;
use crate::ids::now_ms;
use crate::policy::Policies;

struct Log {
    last: Position,
    covered_after: Position,
    entries: VecDeque<Arc<Published>>,
    /// The position of `entries[i]` in this channel, kept beside it for binary search.
    positions: VecDeque<Position>,
}

impl Log {
    fn new(now: u64) -> Self {
        let start = Position::new(now, 0);
        Self { last: start, covered_after: start, entries: VecDeque::new(), positions: VecDeque::new() }
    }

    fn pop_front(&mut self) {
        if let (Some(pos), Some(_)) = (self.positions.pop_front(), self.entries.pop_front()) {
            self.covered_after = pos;
        }
    }

    fn trim(&mut self, (size, ttl_ms): (usize, u64), now: u64) {
        while self.entries.len() > size {
            self.pop_front();
        }
        while self.positions.front().is_some_and(|p| p.ms.saturating_add(ttl_ms) < now) {
            self.pop_front();
        }
    }
}

/// Tickets held at once; past it new tickets are refused until old ones expire.
const MAX_TICKETS: usize = 100_000;

/// The single-node engine.
pub struct MemoryEngine {
    hub: Arc<Hub>,
    policies: Arc<Policies>,
    logs: Mutex<HashMap<ChannelName, Arc<Mutex<Log>>>>,
    tickets: Mutex<HashMap<String, (String, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryEngine {
    pub fn new(hub: Arc<Hub>, policies: Arc<Policies>) -> Self {
        Self { hub, policies, logs: Mutex::new(HashMap::new()), tickets: Mutex::new(HashMap::new()) }
    }

    /// History size and age (ms) of a channel's namespace.
    fn limits(&self, channel: &ChannelName) -> (usize, u64) {
        self.policies
            .of(channel)
            .map_or((0, 0), |ns| (ns.history_size, u64::try_from(ns.history_ttl.as_millis()).unwrap_or(u64::MAX)))
    }

    fn log(&self, channel: &ChannelName) -> Arc<Mutex<Log>> {
        let mut logs = lock(&self.logs);
        Arc::clone(logs.entry(channel.clone()).or_insert_with(|| Arc::new(Mutex::new(Log::new(now_ms())))))
    }

    fn publish_one(&self, p: &Prepared) -> PublishAck {
        let logs: Vec<Arc<Mutex<Log>>> = p.channels.iter().map(|c| self.log(c)).collect();
        // Lock in channel-name order so concurrent multi-channel publishes cannot deadlock.
        let mut order: Vec<usize> = (0..logs.len()).collect();
        order.sort_by(|&a, &b| p.channels[a].cmp(&p.channels[b]));
        let mut guards: Vec<Option<MutexGuard<'_, Log>>> = (0..logs.len()).map(|_| None).collect();
        for i in order {
            guards[i] = Some(lock(&logs[i]));
        }
        let now = now_ms();
        let mut positions = Vec::with_capacity(logs.len());
        for g in guards.iter_mut().flatten() {
            g.last = g.last.next_at(now);
            positions.push(g.last);
        }
        let event = Published::from_prepared(p, &positions);
        for ((g, pos), ch) in guards.iter_mut().flatten().zip(&positions).zip(&p.channels) {
            g.entries.push_back(Arc::clone(&event));
            g.positions.push_back(*pos);
            g.trim(self.limits(ch), now);
        }
        self.hub.deliver(&event);
        drop(guards);
        PublishAck { id: p.id.clone(), positions: p.channels.iter().cloned().zip(positions).collect() }
    }
}

impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, batch: Vec<Prepared>) -> BoxFuture<'_, Result<Vec<PublishAck>, EngineError>> {
        let acks = batch.iter().map(|p| self.publish_one(p)).collect();
        Box::pin(async move { Ok(acks) })
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<Position>,
    ) -> BoxFuture<'a, Result<HistoryRead, EngineError>> {
        let log = self.log(channel);
        let mut log = lock(&log);
        log.trim(self.limits(channel), now_ms());
        let head = log.last;
        let read = match after {
            None => HistoryRead::Events { events: Vec::new(), head },
            Some(p) if p > head => HistoryRead::Gap { reason: GapReason::UnknownPosition, head },
            Some(p) if p < log.covered_after => HistoryRead::Gap { reason: GapReason::HistoryExpired, head },
            Some(p) => {
                let from = log.positions.partition_point(|q| *q <= p);
                HistoryRead::Events { events: log.entries.range(from..).cloned().collect(), head }
            }
        };
        Box::pin(async move { Ok(read) })
    }

    fn watch<'a>(&'a self, _channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    fn put_ticket<'a>(
        &'a self,
        ticket: &'a str,
        payload: String,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        let mut tickets = lock(&self.tickets);
        let result = if tickets.len() >= MAX_TICKETS {
            Err(EngineError::Unavailable("too many outstanding tickets; try again shortly".into()))
        } else {
            tickets.insert(ticket.to_owned(), (payload, Instant::now() + ttl));
            Ok(())
        };
        Box::pin(async move { result })
    }

    fn take_ticket<'a>(&'a self, ticket: &'a str) -> BoxFuture<'a, Result<Option<String>, EngineError>> {
        let taken = lock(&self.tickets).remove(ticket).filter(|(_, until)| Instant::now() < *until).map(|(p, _)| p);
        Box::pin(async move { Ok(taken) })
    }

    fn is_healthy(&self) -> bool {
        true
    }

    fn sweep(&self) {
        let now = now_ms();
        lock(&self.logs).retain(|channel, log| {
            let limits = self.limits(channel);
            let mut log = lock(log);
            log.trim(limits, now);
            !log.entries.is_empty()
                || self.hub.subscriber_count(channel.as_str()) > 0
                || log.last.ms.saturating_add(limits.1) >= now
        });
        let instant = Instant::now();
        lock(&self.tickets).retain(|_, (_, until)| instant < *until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Publisher};

    fn engine(size: usize) -> MemoryEngine {
        let config = crate::Config { history_size: size, ..crate::Config::default() };
        MemoryEngine::new(Arc::new(Hub::new()), Arc::new(Policies::from_config(&config)))
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

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn prep(channels: &[&str], n: usize) -> Prepared {
        let event = Event::new("chat").with("n", n);
        Prepared::new(channels.iter().map(|c| ch(c)).collect(), event, &Publisher::default(), 1 << 16)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn read(e: &MemoryEngine, c: &str, after: Option<Position>) -> HistoryRead {
        e.history(&ch(c), after).await.unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn history_replays_after_a_position_and_reports_gaps() {
        let e = engine(3);
        let HistoryRead::Events { head: start, .. } = read(&e, "channel:a", None).await else {
            panic!("fresh read is not a gap")
        };
        let mut acks = Vec::new();
        for n in 0..5 {
            acks.extend(e.publish(vec![prep(&["channel:a"], n)]).await.unwrap_or_default());
        }
        let pos = |i: usize| acks[i].positions[0].1;
        // Kept: events 2, 3, 4. After event 2 → 3 and 4.
        match read(&e, "channel:a", Some(pos(2))).await {
            HistoryRead::Events { events, head } => {
                assert_eq!(
                    events.iter().map(|ev| ev.id.clone()).collect::<Vec<_>>(),
                    vec![acks[3].id.clone(), acks[4].id.clone()]
                );
                assert_eq!(head, pos(4));
            }
            gap => panic!("unexpected {gap:?}"),
        }
        // After event 0: event 1 was trimmed.
        assert!(matches!(
            read(&e, "channel:a", Some(pos(0))).await,
            HistoryRead::Gap { reason: GapReason::HistoryExpired, .. }
        ));
        // From the very start: events 0 and 1 were trimmed.
        assert!(matches!(read(&e, "channel:a", Some(start)).await, HistoryRead::Gap { .. }));
        // A position from the future is unknown.
        let future = Position::new(pos(4).ms + 1_000_000, 0);
        assert!(matches!(
            read(&e, "channel:a", Some(future)).await,
            HistoryRead::Gap { reason: GapReason::UnknownPosition, .. }
        ));
        // At the head: nothing missed.
        assert!(
            matches!(read(&e, "channel:a", Some(pos(4))).await, HistoryRead::Events { events, .. } if events.is_empty())
        );
    }

    #[tokio::test]
    async fn a_multi_channel_event_has_a_position_in_each_channel() {
        let e = engine(10);
        let acks = e.publish(vec![prep(&["channel:a", "channel:b", "channel:a"], 1)]).await.unwrap_or_default();
        assert_eq!(acks[0].positions.len(), 2, "duplicate channel names are merged");
        for c in ["channel:a", "channel:b"] {
            let HistoryRead::Events { head, .. } = read(&e, c, None).await else { panic!() };
            assert_eq!(Some(head), acks[0].positions.iter().find(|(n, _)| n.as_str() == c).map(|(_, p)| *p));
        }
    }
}
