//! The hub: this node's registry of live connections and the channels they follow.
//!
//! The hub owns membership (which connection follows which channel) and fans a
//! [`Published`] event out to the queues of local subscribers. It knows nothing about
//! HTTP, history or other nodes: engines call [`Hub::deliver`], the HTTP layer registers
//! and unregisters connections. Fan-out clones one `Arc` per subscriber; the event's bytes
//! were framed once, before they got here.

pub mod connection;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::channel::ChannelName;
use crate::event::Published;
use connection::{CloseReason, ConnShared, Pushed};

#[derive(Default)]
struct Registry {
    channels: HashMap<ChannelName, Vec<Arc<ConnShared>>>,
    conns: HashMap<u64, (Arc<ConnShared>, Vec<ChannelName>)>,
    users: HashMap<Arc<str>, usize>,
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

/// Counters the hub keeps as it works.
#[derive(Default, Debug)]
pub struct HubStats {
    /// Events queued to connections (one per event per connection).
    pub events_queued: AtomicU64,
    /// Connections closed because their queue overflowed.
    pub slow_disconnects: AtomicU64,
    /// Connections closed because they made no progress for the client timeout.
    pub timeout_disconnects: AtomicU64,
    /// Events written to clients (`sse_events_sent`).
    pub events_written: AtomicU64,
    /// Time from acceptance to write, one observation per write batch.
    pub latency: crate::metrics::Histogram,
}

impl HubStats {
    /// Counts `n` events written in one batch whose oldest is `oldest`.
    pub(crate) fn record_write(&self, n: u64, oldest: &Published) {
        self.events_written.fetch_add(n, Ordering::Relaxed);
        self.latency.observe(oldest.accepted.elapsed());
    }
}

/// This node's registry of connections and channels.
#[derive(Default)]
pub struct Hub {
    registry: RwLock<Registry>,
    connections: AtomicUsize,
    next_key: AtomicU64,
    /// Where departures of users' connections are reported, for an engine that counts
    /// them beyond this node.
    departures: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Departure>>,
    pub stats: HubStats,
}

/// A user's connection left this node: `(user id, connection id)`.
pub type Departure = (Arc<str>, Arc<str>);

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

    /// Adds a connection following `channels`. Returns the channels that had no local
    /// subscriber before (the ones an engine must start receiving).
    pub fn register(
        &self,
        conn: Arc<ConnShared>,
        channels: &[ChannelName],
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
        for ch in channels {
            let subs = reg.channels.entry(ch.clone()).or_insert_with(|| {
                activated.push(ch.clone());
                Vec::new()
            });
            subs.push(Arc::clone(&conn));
        }
        reg.conns.insert(conn.key, (conn, channels.to_vec()));
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(activated)
    }

    /// Removes a connection (idempotent). Returns the channels left with no local subscriber.
    pub fn unregister(&self, key: u64) -> Vec<ChannelName> {
        let mut reg = self.write();
        let Some((conn, channels)) = reg.conns.remove(&key) else {
            return Vec::new();
        };
        self.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(user) = &conn.user_id {
            if let Some(count) = reg.users.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    reg.users.remove(user);
                }
            }
            if let Some(tx) = self.departures.get() {
                let _ = tx.send((Arc::clone(user), Arc::clone(&conn.id)));
            }
        }
        let mut emptied = Vec::new();
        for ch in channels {
            if let Some(subs) = reg.channels.get_mut(&ch) {
                if let Some(i) = subs.iter().position(|c| c.key == key) {
                    subs.swap_remove(i);
                }
                if subs.is_empty() {
                    reg.channels.remove(&ch);
                    emptied.push(ch);
                }
            }
        }
        emptied
    }

    /// Queues `event` for every local subscriber of any of its channels, once per connection.
    pub fn deliver(&self, event: &Arc<Published>) {
        let mut overflowed = Vec::new();
        let mut queued = 0u64;
        {
            let reg = self.read();
            let mut push = |conn: &Arc<ConnShared>| {
                if !conn.filters.is_empty() && !event.matches(&conn.filters) {
                    return;
                }
                match conn.push(event) {
                    Pushed::Queued => queued += 1,
                    Pushed::Overflowed => overflowed.push(Arc::clone(conn)),
                    Pushed::Closed => {}
                }
            };
            if let [only] = event.copies.as_slice() {
                for conn in reg.channels.get(&only.channel).into_iter().flatten() {
                    push(conn);
                }
            } else {
                let mut seen = HashSet::new();
                for copy in &event.copies {
                    for conn in reg.channels.get(&copy.channel).into_iter().flatten() {
                        if seen.insert(conn.key) {
                            push(conn);
                        }
                    }
                }
            }
        }
        self.stats.events_queued.fetch_add(queued, Ordering::Relaxed);
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

    /// Asks every connection for a heartbeat, and closes those that made no progress for
    /// `max_stalled` sweeps in a row. Returns how many were closed.
    pub fn sweep(&self, max_stalled: u32) -> usize {
        let conns: Vec<Arc<ConnShared>> = self.read().conns.values().map(|(c, _)| Arc::clone(c)).collect();
        let mut closed = 0;
        for conn in conns {
            if conn.sweep() >= max_stalled && conn.close(CloseReason::Timeout) {
                closed += 1;
                self.stats.timeout_disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(connection = %conn.id, "closing a connection that made no progress for the client timeout");
                self.unregister(conn.key);
            }
        }
        closed
    }

    /// Closes every local connection following `channel`, so that each resumes from its own
    /// id (and learns of any gap). Returns how many were closed.
    pub fn disconnect_channel(&self, channel: &ChannelName) -> usize {
        let conns: Vec<Arc<ConnShared>> =
            self.read().channels.get(channel).map(|subs| subs.to_vec()).unwrap_or_default();
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
        let conns: Vec<Arc<ConnShared>> = self.read().conns.values().map(|(c, _)| Arc::clone(c)).collect();
        for conn in conns {
            conn.close(CloseReason::Drain { retry_ms: retry_ms() });
        }
    }

    /// Open connections on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Reports every later departure of a user's connection on `tx` (set once).
    pub fn report_departures(&self, tx: tokio::sync::mpsc::UnboundedSender<Departure>) {
        let _ = self.departures.set(tx);
    }

    /// Every user's connection on this node, as `(user id, connection id)`.
    pub fn user_connections(&self) -> Vec<Departure> {
        self.read()
            .conns
            .values()
            .filter_map(|(c, _)| c.user_id.as_ref().map(|u| (Arc::clone(u), Arc::clone(&c.id))))
            .collect()
    }

    /// Channels with at least one local subscriber, by name.
    pub fn active_channels(&self) -> Vec<ChannelName> {
        self.read().channels.keys().cloned().collect()
    }

    /// Distinct users with at least one connection on this node.
    pub fn user_count(&self) -> usize {
        self.read().users.len()
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.read().channels.len()
    }

    /// Local subscribers of one channel.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.read().channels.get(channel).map_or(0, Vec::len)
    }
}
