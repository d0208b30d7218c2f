//! The hub: this node's registry of live connections and the channels they follow.
//!
//! The hub owns membership (which connection follows which channel or pattern, including
//! live joins and leaves) and fans a [`Published`] event out to the queues of local
//! subscribers. It knows nothing about HTTP, history, presence or other nodes: the node
//! handle's engine sink calls [`Hub::deliver`] for every accepted event, and the node handle
//! registers and unregisters connections and is told of every departure. Fan-out clones one `Arc` per subscriber; the event's bytes were framed
//! once, before they got here.

pub mod connection;

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::channel::{ChannelMap, ChannelName};
use crate::engine::DisconnectTarget;
use crate::event::{Copy, Published};
use crate::histogram::Histogram;
use connection::{CloseReason, ConnShared, Item, JoinSlot, Pushed};

struct Entry {
    conn: Arc<ConnShared>,
    channels: Vec<ChannelName>,
    /// When its credential expires (ms since the epoch): the connection's own deadline
    /// until [`Hub::extend_expiry`] moves it.
    expires_at: Option<u64>,
}

#[derive(Default)]
struct Registry {
    channels: ChannelMap<Vec<Arc<ConnShared>>>,
    /// Pattern subscriptions (`channel:incidents.*`), checked against every event.
    patterns: ChannelMap<Vec<Arc<ConnShared>>>,
    conns: HashMap<u64, Entry>,
    /// Public connection id → key.
    ids: HashMap<Arc<str>, u64>,
    users: HashMap<Arc<str>, usize>,
    /// Connections whose credential expires, as `(deadline in ms since the epoch, key)`,
    /// earliest first: the node's one timer looks at the first.
    expiries: BTreeSet<(u64, u64)>,
}

impl Registry {
    /// Adds `conn` to `ch`'s subscribers. Returns the registry's own copy of the name,
    /// which every subscriber of the channel then shares (one string, read once per event
    /// for all of them, not one per subscriber), and whether `ch` had none before.
    fn subscribe(&mut self, ch: &ChannelName, conn: &Arc<ConnShared>) -> (ChannelName, bool) {
        let map = if ch.is_pattern() { &mut self.patterns } else { &mut self.channels };
        match map.entry(ch.clone()) {
            MapEntry::Occupied(mut e) => {
                e.get_mut().push(Arc::clone(conn));
                (e.key().clone(), false)
            }
            MapEntry::Vacant(e) => {
                e.insert(vec![Arc::clone(conn)]);
                (ch.clone(), true)
            }
        }
    }

    /// Removes `key` from `ch`'s subscribers; true if the channel has none left.
    fn remove_subscriber(&mut self, ch: &ChannelName, key: u64) -> bool {
        let map = if ch.is_pattern() { &mut self.patterns } else { &mut self.channels };
        let Some(subs) = map.get_mut(ch) else { return false };
        if let Some(i) = subs.iter().position(|c| c.key == key) {
            subs.swap_remove(i);
        }
        if subs.is_empty() {
            map.remove(ch);
            return true;
        }
        false
    }
}

/// Connection limits checked atomically with registration.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_per_user: usize,
}

/// Why a connection was not registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    AtCapacity,
    UserLimit,
}

/// Why a live join or leave could not be done on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotJoined {
    /// No connection with that id on this node.
    NoConnection,
    /// The connection follows as many channels as it may.
    TooManyChannels,
}

/// What a live join did.
pub(crate) enum Joined {
    /// The connection follows the channel now. The join waits at `slot` until the joiner
    /// fills in its start.
    Added { conn: Arc<ConnShared>, slot: Arc<JoinSlot> },
    /// The connection already followed the channel: nothing changed.
    Already,
}

/// Counters the hub keeps as it works.
#[derive(Default, Debug)]
pub struct HubStats {
    /// Connections closed because their queue overflowed (`slow_consumer = "disconnect"`).
    pub slow_disconnects: AtomicU64,
    /// Events dropped from the front of full queues (`slow_consumer = "drop_oldest"`).
    pub slow_dropped: AtomicU64,
    /// `gap` notices written for such drops (one per channel and gap).
    pub slow_gaps: AtomicU64,
    /// Connections closed because they made no progress for the client timeout.
    pub timeout_disconnects: AtomicU64,
    /// Connections closed because the credential they were opened with expired.
    pub expired_disconnects: AtomicU64,
    /// Events written to clients (`sse_events_sent`).
    pub events_written: AtomicU64,
    /// Time from acceptance to write, one observation per write batch.
    pub latency: Histogram,
}

impl HubStats {
    /// Counts `n` events written in one batch whose oldest is `oldest`.
    pub(crate) fn record_write(&self, n: u64, oldest: &Published) {
        self.events_written.fetch_add(n, Ordering::Relaxed);
        self.latency.observe(oldest.accepted.elapsed());
    }
}

/// A connection left this node: who it was and what it followed.
#[derive(Clone, Debug)]
pub struct Departure {
    pub connection: Arc<str>,
    pub user: Option<Arc<str>>,
    pub user_name: Option<Arc<str>>,
    pub info: Option<Arc<serde_json::Value>>,
    pub channels: Vec<ChannelName>,
}

/// One live connection as the hub sees it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub connection: Arc<str>,
    /// The transport it was opened for (`sse`, `websocket`, ...).
    pub transport: &'static str,
    pub user: Option<Arc<str>>,
    pub user_name: Option<Arc<str>>,
    pub info: Option<Arc<serde_json::Value>>,
    pub channels: Vec<ChannelName>,
}

/// This node's registry of connections and channels.
#[derive(Default)]
pub struct Hub {
    registry: RwLock<Registry>,
    connections: AtomicUsize,
    next_key: AtomicU64,
    /// Where departures are reported (presence, connection slots).
    departures: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Departure>>,
    /// Signalled when a connection registers (or its expiry moves) with a deadline earlier
    /// than any before it.
    expiry_moved: tokio::sync::Notify,
    pub stats: HubStats,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh key for a connection about to be registered.
    pub(crate) fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a connection following `channels` (and patterns), each replaced by the name the
    /// registry keeps (equal, and shared by the channel's subscribers). Returns the ones
    /// that had no local subscriber before (the ones an engine must start receiving).
    pub fn register(
        &self,
        conn: Arc<ConnShared>,
        channels: &mut [ChannelName],
        limits: ConnLimits,
    ) -> Result<Vec<ChannelName>, Refused> {
        let mut reg = self.write();
        if reg.conns.len() >= limits.max_connections {
            return Err(Refused::AtCapacity);
        }
        if let Some(user) = &conn.user_id {
            let count = reg.users.entry(Arc::clone(user)).or_insert(0);
            if *count >= limits.max_per_user {
                return Err(Refused::UserLimit);
            }
            *count += 1;
        }
        let mut activated = Vec::new();
        for ch in channels.iter_mut() {
            let (shared, fresh) = reg.subscribe(ch, &conn);
            *ch = shared;
            if fresh {
                activated.push(ch.clone());
            }
        }
        if let Some(at) = conn.expires_at_ms {
            let earliest = reg.expiries.first().is_none_or(|&first| (at, conn.key) < first);
            reg.expiries.insert((at, conn.key));
            if earliest {
                self.expiry_moved.notify_one();
            }
        }
        reg.ids.insert(Arc::clone(&conn.id), conn.key);
        let expires_at = conn.expires_at_ms;
        reg.conns.insert(conn.key, Entry { conn, channels: channels.to_vec(), expires_at });
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(activated)
    }

    /// Removes a connection (idempotent). Returns the channels left with no local subscriber.
    pub fn unregister(&self, key: u64) -> Vec<ChannelName> {
        let mut reg = self.write();
        let Some(Entry { conn, channels, expires_at }) = reg.conns.remove(&key) else {
            return Vec::new();
        };
        reg.ids.remove(&conn.id);
        if let Some(at) = expires_at {
            reg.expiries.remove(&(at, key));
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(user) = &conn.user_id
            && let Some(count) = reg.users.get_mut(user)
        {
            *count -= 1;
            if *count == 0 {
                reg.users.remove(user);
            }
        }
        let emptied = channels.iter().filter(|ch| reg.remove_subscriber(ch, key)).cloned().collect();
        drop(reg);
        if let Some(tx) = self.departures.get() {
            let _ = tx.send(Departure {
                connection: Arc::clone(&conn.id),
                user: conn.user_id.clone(),
                user_name: conn.user_name.clone(),
                info: conn.info.clone(),
                channels,
            });
        }
        emptied
    }

    /// Adds `channel` to a live connection. Registration and the join marker in the
    /// connection's queue happen under one lock, so every event of the channel queued
    /// for it comes after the marker.
    pub(crate) fn join(
        &self,
        connection: &str,
        channel: &ChannelName,
        max_channels: usize,
    ) -> Result<Joined, NotJoined> {
        let mut reg = self.write();
        let key = *reg.ids.get(connection).ok_or(NotJoined::NoConnection)?;
        let entry = reg.conns.get_mut(&key).ok_or(NotJoined::NoConnection)?;
        if entry.channels.contains(channel) {
            return Ok(Joined::Already);
        }
        if entry.channels.len() >= max_channels {
            return Err(NotJoined::TooManyChannels);
        }
        let conn = Arc::clone(&entry.conn);
        let (channel, _) = reg.subscribe(channel, &conn);
        if let Some(entry) = reg.conns.get_mut(&key) {
            entry.channels.push(channel.clone());
        }
        let slot = JoinSlot::new(channel);
        match conn.push_item(Item::Join(Arc::clone(&slot))) {
            Pushed::Overflowed => {
                drop(reg);
                self.unregister(key);
                return Err(NotJoined::NoConnection);
            }
            Pushed::DroppedOldest => {
                self.stats.slow_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Queued | Pushed::Closed => {}
        }
        Ok(Joined::Added { conn, slot })
    }

    /// Removes `channel` from a live connection. `Ok(None)` if it did not follow it;
    /// otherwise the connection and whether the channel has no local subscriber left.
    pub fn leave(&self, connection: &str, channel: &ChannelName) -> Result<Option<(Arc<ConnShared>, bool)>, NotJoined> {
        let mut reg = self.write();
        let key = *reg.ids.get(connection).ok_or(NotJoined::NoConnection)?;
        let entry = reg.conns.get_mut(&key).ok_or(NotJoined::NoConnection)?;
        let Some(i) = entry.channels.iter().position(|c| c == channel) else {
            return Ok(None);
        };
        entry.channels.remove(i);
        let conn = Arc::clone(&entry.conn);
        let emptied = reg.remove_subscriber(channel, key);
        let _ = conn.push_item(Item::Leave(Box::new(channel.clone())));
        Ok(Some((conn, emptied)))
    }

    /// Queues an event for one connection alone. False if it is not on this node.
    pub fn send_to(&self, connection: &str, event_type: Arc<str>, json: Bytes) -> bool {
        let conn = {
            let reg = self.read();
            let Some(entry) = reg.ids.get(connection).and_then(|k| reg.conns.get(k)) else { return false };
            Arc::clone(&entry.conn)
        };
        match conn.push_item(Item::Direct(Box::new((event_type, json)))) {
            Pushed::Overflowed => {
                self.stats.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                self.unregister(conn.key);
            }
            Pushed::DroppedOldest => {
                self.stats.slow_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Queued | Pushed::Closed => {}
        }
        true
    }

    /// One connection of this node, by its public id.
    pub fn connection(&self, connection: &str) -> Option<ConnInfo> {
        let reg = self.read();
        let entry = reg.ids.get(connection).and_then(|k| reg.conns.get(k))?;
        Some(info(entry))
    }

    /// Every connection of this node.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.read().conns.values().map(info).collect()
    }

    /// Queues `event` for every local subscriber of any of its channels (and of every
    /// pattern matching one), once per connection.
    pub fn deliver(&self, event: &Arc<Published>) {
        let mut overflowed = Vec::new();
        let mut dropped = 0;
        {
            let reg = self.read();
            // A connection is pushed at the first copy it follows, the one it will write (see
            // `StreamCore::advance`), and its filters are matched on that copy.
            let mut push = |conn: &Arc<ConnShared>, ci: usize, copy: &Copy| {
                if !conn.filters.is_empty() && !event.matches_on(copy, &conn.filters) {
                    return;
                }
                match conn.push_copy(event, ci) {
                    Pushed::Queued | Pushed::Closed => {}
                    Pushed::DroppedOldest => dropped += 1,
                    Pushed::Overflowed => overflowed.push(Arc::clone(conn)),
                }
            };
            match event.copies.as_slice() {
                [only] if reg.patterns.is_empty() => {
                    for conn in reg.channels.get(&only.channel).into_iter().flatten() {
                        push(conn, 0, only);
                    }
                }
                copies => {
                    let mut seen = HashSet::new();
                    for (ci, copy) in copies.iter().enumerate() {
                        let matching = reg.patterns.iter().filter(|(p, _)| p.matches(&copy.channel));
                        let exact = reg.channels.get(&copy.channel).into_iter();
                        for conn in exact.chain(matching.map(|(_, subs)| subs)).flatten() {
                            if seen.insert(conn.key) {
                                push(conn, ci, copy);
                            }
                        }
                    }
                }
            }
        }
        if dropped > 0 {
            self.stats.slow_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        for conn in overflowed {
            self.stats.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                connection = %conn.id,
                user = conn.user_id.as_deref().unwrap_or("-"),
                "disconnecting a slow consumer: its queue is full; it will resume from history"
            );
            self.unregister(conn.key);
        }
    }

    fn all(&self) -> Vec<Arc<ConnShared>> {
        self.read().conns.values().map(|e| Arc::clone(&e.conn)).collect()
    }

    /// Asks every connection for a heartbeat, and closes those that made no progress for
    /// `max_stalled` sweeps in a row. Returns how many were closed.
    pub fn sweep(&self, max_stalled: u32) -> usize {
        let mut closed = 0;
        for conn in self.all() {
            if conn.sweep() < max_stalled {
                continue;
            }
            if !conn.close(CloseReason::Timeout) {
                // Closing already, its last words (a disconnect notice) never read: the
                // socket goes without them, or a client that stopped reading would keep it.
                conn.kill();
            }
            closed += 1;
            self.stats.timeout_disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(connection = %conn.id, "closing a connection that made no progress for the client timeout");
            self.unregister(conn.key);
        }
        closed
    }

    /// The earliest deadline of a connection's credential, in ms since the Unix epoch.
    pub fn next_expiry(&self) -> Option<u64> {
        self.read().expiries.first().map(|&(at, _)| at)
    }

    /// Resolves when a connection registered, or had its expiry moved, with a deadline
    /// earlier than [`Hub::next_expiry`] was (a permit is kept if nobody waits, so none is
    /// missed).
    pub async fn expiry_moved(&self) {
        self.expiry_moved.notified().await;
    }

    /// Moves the expiry of connection `connection` to `deadline_ms` (its client presented a
    /// fresh credential without reconnecting). `false` when no such connection is here.
    pub fn extend_expiry(&self, connection: &str, deadline_ms: u64) -> bool {
        let mut reg = self.write();
        let Some(&key) = reg.ids.get(connection) else { return false };
        let Some(old) = reg.conns.get_mut(&key).map(|e| e.expires_at.replace(deadline_ms)) else { return false };
        if let Some(at) = old {
            reg.expiries.remove(&(at, key));
        }
        let earliest = reg.expiries.first().is_none_or(|&first| (deadline_ms, key) < first);
        reg.expiries.insert((deadline_ms, key));
        if earliest {
            self.expiry_moved.notify_one();
        }
        true
    }

    /// Ends every connection whose credential expired at or before `now_ms`: each writes
    /// what was queued before, then `token_expired`, and leaves the hub, so no event
    /// published later reaches it. Returns how many were closed.
    pub fn expire_sessions(&self, now_ms: u64) -> usize {
        let due: Vec<Arc<ConnShared>> = {
            let reg = self.read();
            reg.expiries
                .range(..=(now_ms, u64::MAX))
                .filter_map(|(_, key)| reg.conns.get(key).map(|e| Arc::clone(&e.conn)))
                .collect()
        };
        let mut closed = 0;
        for conn in due {
            if conn.close(CloseReason::TokenExpired) {
                closed += 1;
                self.stats.expired_disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    connection = %conn.id,
                    user = conn.user_id.as_deref().unwrap_or("-"),
                    "closing a stream whose token expired; the client reconnects with a fresh one"
                );
            }
            self.unregister(conn.key);
        }
        closed
    }

    /// Closes this node's connections that `target` names, each with `reason` (and the last
    /// notice the reason writes). Returns how many it closed.
    pub fn disconnect(&self, target: &DisconnectTarget, reason: CloseReason) -> usize {
        let conns: Vec<Arc<ConnShared>> = {
            let reg = self.read();
            match target {
                DisconnectTarget::User(user) => reg
                    .conns
                    .values()
                    .filter(|e| e.conn.user_id.as_deref() == Some(user.as_str()))
                    .map(|e| Arc::clone(&e.conn))
                    .collect(),
                DisconnectTarget::Connection(id) => reg
                    .ids
                    .get(id.as_str())
                    .and_then(|k| reg.conns.get(k))
                    .map(|e| Arc::clone(&e.conn))
                    .into_iter()
                    .collect(),
                DisconnectTarget::Channel(channel) => reg
                    .channels
                    .get(&ChannelName::key(channel))
                    .or_else(|| reg.patterns.get(&ChannelName::key(channel)))
                    .map(|subs| subs.to_vec())
                    .unwrap_or_default(),
            }
        };
        // Each leaves the hub once its last notice is written (or at the next sweeps, if
        // its reader stopped reading).
        conns.iter().filter(|conn| conn.close(reason)).count()
    }

    /// Closes every local connection following `channel` (or a pattern), so that each
    /// resumes from its own id (and learns of any gap). Returns how many were closed.
    pub fn disconnect_channel(&self, channel: &ChannelName) -> usize {
        let conns: Vec<Arc<ConnShared>> = {
            let reg = self.read();
            let map = if channel.is_pattern() { &reg.patterns } else { &reg.channels };
            map.get(channel).map(|subs| subs.to_vec()).unwrap_or_default()
        };
        let mut closed = 0;
        for conn in conns {
            if conn.close(CloseReason::Resync) {
                closed += 1;
            }
            self.unregister(conn.key);
        }
        closed
    }

    /// Closes every connection with a drain notice carrying a reconnect delay from `retry_ms`.
    pub fn drain(&self, mut retry_ms: impl FnMut() -> u64) {
        for conn in self.all() {
            conn.close(CloseReason::Drain { retry_ms: retry_ms() });
        }
    }

    /// Open connections on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Reports every later departure of a connection on `tx` (set once).
    pub fn report_departures(&self, tx: tokio::sync::mpsc::UnboundedSender<Departure>) {
        let _ = self.departures.set(tx);
    }

    /// Every user's connection on this node, as `(user id, connection id)`.
    pub fn user_connections(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.read()
            .conns
            .values()
            .filter_map(|e| e.conn.user_id.as_ref().map(|u| (Arc::clone(u), Arc::clone(&e.conn.id))))
            .collect()
    }

    /// Channels and patterns with at least one local subscriber, by name.
    pub fn active_channels(&self) -> Vec<ChannelName> {
        let reg = self.read();
        reg.channels.keys().chain(reg.patterns.keys()).cloned().collect()
    }

    /// Whether `user` has a connection on this node.
    pub fn has_user(&self, user: &str) -> bool {
        self.read().users.contains_key(user)
    }

    /// Distinct users with at least one connection on this node.
    pub fn user_count(&self) -> usize {
        self.read().users.len()
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.read().channels.len()
    }

    /// Local subscribers of one channel (or pattern).
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        let reg = self.read();
        reg.channels.get(channel).or_else(|| reg.patterns.get(channel)).map_or(0, Vec::len)
    }

    /// The channels with local subscribers whose names `keep` accepts, with how many each
    /// has, read under one lock.
    pub fn channel_counts(&self, keep: impl Fn(&str) -> bool) -> Vec<(ChannelName, usize)> {
        let reg = self.read();
        reg.channels.iter().filter(|(ch, _)| keep(ch.as_str())).map(|(ch, subs)| (ch.clone(), subs.len())).collect()
    }

    /// This node's connections of one user.
    pub fn connections_of(&self, user: &str) -> Vec<ConnInfo> {
        let reg = self.read();
        if !reg.users.contains_key(user) {
            return Vec::new();
        }
        reg.conns.values().filter(|e| e.conn.user_id.as_deref() == Some(user)).map(info).collect()
    }

    /// Local subscribers of one channel, and the distinct users among them.
    pub fn channel_members(&self, channel: &str) -> (usize, Vec<Arc<str>>) {
        let reg = self.read();
        let Some(subs) = reg.channels.get(&ChannelName::key(channel)) else { return (0, Vec::new()) };
        let mut users: Vec<Arc<str>> = subs.iter().filter_map(|c| c.user_id.clone()).collect();
        users.sort_unstable();
        users.dedup();
        (subs.len(), users)
    }
}

fn info(entry: &Entry) -> ConnInfo {
    ConnInfo {
        connection: Arc::clone(&entry.conn.id),
        transport: entry.conn.transport,
        user: entry.conn.user_id.clone(),
        user_name: entry.conn.user_name.clone(),
        info: entry.conn.info.clone(),
        channels: entry.channels.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnLimits = ConnLimits { max_connections: 10, max_per_user: 10 };

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn connection(hub: &Hub, id: &str) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(hub.next_key(), Arc::from(id), None, 16, None, Box::new([])))
    }

    #[test]
    fn a_moved_expiry_ends_the_connection_at_the_new_deadline_not_the_old_one() {
        let hub = Hub::new();
        let conn = Arc::new(
            ConnShared::new(hub.next_key(), Arc::from("c1"), None, 16, None, Box::new([])).expiring_at(Some(1_000)),
        );
        let mut channels = vec![channel("channel:lobby")];
        assert!(hub.register(Arc::clone(&conn), &mut channels, LIMITS).is_ok());
        assert!(hub.extend_expiry("c1", 5_000));
        assert!(!hub.extend_expiry("c2", 5_000));
        assert_eq!(hub.next_expiry(), Some(5_000));
        assert_eq!(hub.expire_sessions(1_000), 0);
        assert_eq!(hub.connection_count(), 1);
        assert_eq!(hub.expire_sessions(5_000), 1);
        assert_eq!(hub.connection_count(), 0);
        assert_eq!(hub.next_expiry(), None);
    }

    #[test]
    fn subscribers_of_a_channel_share_one_copy_of_its_name() {
        let hub = Hub::new();
        let (mut first, mut second) = (vec![channel("channel:lobby")], vec![channel("channel:lobby")]);
        assert_ne!(first[0].as_str().as_ptr(), second[0].as_str().as_ptr(), "parsed apart, stored apart");
        assert_eq!(hub.register(connection(&hub, "c1"), &mut first, LIMITS), Ok(vec![channel("channel:lobby")]));
        assert_eq!(hub.register(connection(&hub, "c2"), &mut second, LIMITS), Ok(vec![]));
        assert_eq!(second, first);
        assert_eq!(second[0].as_str().as_ptr(), first[0].as_str().as_ptr());

        // A live join follows the same name.
        let mut elsewhere = vec![channel("channel:elsewhere")];
        assert!(hub.register(connection(&hub, "c3"), &mut elsewhere, LIMITS).is_ok());
        match hub.join("c3", &channel("channel:lobby"), 8) {
            Ok(Joined::Added { slot, .. }) => {
                assert_eq!(slot.channel.as_str().as_ptr(), first[0].as_str().as_ptr());
            }
            _ => panic!("c3 joins channel:lobby"),
        }
        assert_eq!(hub.subscriber_count(&channel("channel:lobby")), 3);
    }
}
