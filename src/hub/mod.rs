//! The hub: this node's registry of live connections and the channels they follow.
//!
//! The hub owns membership (which connection follows which channel or pattern, including
//! live joins and leaves) and fans a [`Published`] event out to the queues of local
//! subscribers. It knows nothing about HTTP, history, presence or other nodes: the node
//! handle's engine sink calls [`Hub::deliver`] for every accepted event, and the node handle
//! registers and unregisters connections and is told of every departure. Fan-out clones one `Arc` per subscriber; the event's bytes were framed
//! once, before they got here.

pub mod connection;

use std::borrow::Borrow;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::channel::{ChannelMap, ChannelName};
use crate::engine::DisconnectTarget;
use crate::event::{Copy, Published};
use crate::histogram::Histogram;
use connection::{CloseReason, ConnShared, Item, JoinSlot, Pushed};

/// A registered connection as the key of [`Registry::conns`]: hashed and compared by its
/// public id, so that one map finds a connection by id (`Borrow<str>`) and by itself. A
/// slot is three words with its boxed channels: the table is up to twice the size of its
/// contents, and is most of what the hub costs an idle stream. (Channels held inline, one
/// word more a slot, measured 20 to 30 bytes more per idle stream at 15,000, not less:
/// a larger table, and larger tables left behind as it grew.)
struct ById(Arc<ConnShared>);

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the `str` it borrows as hashes, which `HashMap::get(&str)` requires.
        self.0.id.hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

/// A connection's identity in the registry for as long as it is registered (the registry
/// holds it, so no other connection has its address meanwhile).
fn addr(conn: &ConnShared) -> usize {
    std::ptr::from_ref(conn).addr()
}

/// The local subscribers of one channel (or pattern), in the map's slot when there is one:
/// a private channel's delivery reads its one connection from the slot it found, not from a
/// buffer of its own (one memory line less per event). Three words, as a `Vec` is (the
/// variant is told by the niche of the `Vec`'s capacity), so the map's slots do not grow.
enum Subscribers {
    One(Arc<ConnShared>),
    Many(Vec<Arc<ConnShared>>),
}

impl Subscribers {
    fn push(&mut self, conn: Arc<ConnShared>) {
        match self {
            Self::One(one) => {
                let first = std::mem::replace(one, Arc::clone(&conn));
                *self = Self::Many(vec![first, conn]);
            }
            Self::Many(many) => many.push(conn),
        }
    }

    /// Removes `conn`; true if none is left.
    fn remove(&mut self, conn: &ConnShared) -> bool {
        match self {
            Self::One(one) => std::ptr::eq(&**one, conn),
            Self::Many(many) => {
                if let Some(i) = many.iter().position(|c| std::ptr::eq(&**c, conn)) {
                    many.swap_remove(i);
                }
                if many.len() == 1
                    && let Some(last) = many.pop()
                {
                    // Back in the slot, its buffer freed.
                    *self = Self::One(last);
                    return false;
                }
                many.is_empty()
            }
        }
    }
}

impl std::ops::Deref for Subscribers {
    type Target = [Arc<ConnShared>];

    fn deref(&self) -> &[Arc<ConnShared>] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

impl<'a> IntoIterator for &'a Subscribers {
    type Item = &'a Arc<ConnShared>;
    type IntoIter = std::slice::Iter<'a, Arc<ConnShared>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[derive(Default)]
struct Registry {
    channels: ChannelMap<Subscribers>,
    /// Pattern subscriptions (`channel:incidents.*`), checked against every event.
    patterns: ChannelMap<Subscribers>,
    /// Every connection, by public id, with the channels it follows.
    conns: HashMap<ById, Box<[ChannelName]>>,
    /// Connections registered with an id another registered connection has (ids are fresh
    /// ULIDs, so none is expected): the later one is found by the id, and these are still
    /// swept, listed and unregistered.
    shadowed: Vec<(Arc<ConnShared>, Box<[ChannelName]>)>,
    /// Each user's connections and [`Place`]s on this node.
    users: HashMap<Arc<str>, usize>,
    /// [`Place`]s held, by the address of their state: counted with the connections
    /// against `max_connections`, and cut by a disconnect of their user or client id.
    places: HashMap<usize, Arc<PlaceState>>,
    /// Connections whose credential expires, by `(deadline in ms since the epoch,
    /// address)`, earliest first: the node's one timer looks at the first.
    expiries: BTreeMap<(u64, usize), Arc<ConnShared>>,
    /// The deadline of each connection in `expiries`, by address: its own deadline until
    /// [`Hub::extend_expiry`] moves it.
    deadlines: HashMap<usize, u64>,
}

impl Registry {
    /// Takes one of the node's places for a connection or a [`Place`] of `user`, within
    /// `limits`.
    fn take_place(&mut self, user: Option<&Arc<str>>, limits: ConnLimits) -> Result<(), Refused> {
        if self.conns.len() + self.shadowed.len() + self.places.len() >= limits.max_connections {
            return Err(Refused::AtCapacity);
        }
        if let Some(user) = user {
            let count = self.users.entry(Arc::clone(user)).or_insert(0);
            if *count >= limits.max_per_user {
                return Err(Refused::UserLimit);
            }
            *count += 1;
        }
        Ok(())
    }

    /// Gives back one of `user`'s places (a connection's or a [`Place`]'s).
    fn forget_user_place(&mut self, user: &Arc<str>) {
        if let Some(count) = self.users.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                self.users.remove(user);
            }
        }
    }

    /// Every user's connection, as `(user id, connection id)`.
    fn user_connections(&self) -> impl Iterator<Item = (Arc<str>, Arc<str>)> {
        self.every().filter_map(|(conn, _)| conn.user_id.as_ref().map(|u| (Arc::clone(u), Arc::clone(&conn.id))))
    }

    /// Every registered connection, with the channels it follows.
    fn every(&self) -> impl Iterator<Item = (&Arc<ConnShared>, &[ChannelName])> {
        let shadowed = self.shadowed.iter().map(|(conn, channels)| (conn, &channels[..]));
        self.conns.iter().map(|(key, channels)| (&key.0, &channels[..])).chain(shadowed)
    }

    /// The connection with public id `id`.
    fn by_id(&self, id: &str) -> Option<&Arc<ConnShared>> {
        self.conns.get_key_value(id).map(|(key, _)| &key.0)
    }

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
                e.insert(Subscribers::One(Arc::clone(conn)));
                (ch.clone(), true)
            }
        }
    }

    /// Removes `conn` from `ch`'s subscribers; true if the channel has none left.
    fn remove_subscriber(&mut self, ch: &ChannelName, conn: &ConnShared) -> bool {
        let map = if ch.is_pattern() { &mut self.patterns } else { &mut self.channels };
        let Some(subs) = map.get_mut(ch) else { return false };
        if subs.remove(conn) {
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

/// A place in this node's connection limits (`max_connections`, and the user's
/// `max_connections_per_user`) held by a client that has no connection yet: a Centrifugo
/// socket between its `connect` and its first subscription, or a unidirectional Centrifugo
/// stream with no channel. Its client's first connection takes it over
/// ([`Hub::register_placed`]); dropped, it is given back.
pub struct Place {
    /// `None` once a connection took it over.
    hub: Option<Arc<Hub>>,
    state: Arc<PlaceState>,
    /// Gives back what the place holds beyond this node (its user's slot across nodes, see
    /// [`Place::hold_slot`]) when it is dropped, not when a connection takes it over.
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

/// What the hub keeps of a [`Place`]: whose it is, and whether a disconnect cut it.
pub(crate) struct PlaceState {
    /// The id its client's connection will have.
    id: Arc<str>,
    user: Option<Arc<str>>,
    cut: std::sync::Mutex<Option<CloseReason>>,
    cut_notify: tokio::sync::Notify,
    /// The place's own slot among its user's connections across nodes (Redis), once taken:
    /// renewed with the connections' slots ([`Hub::held_slots`]).
    slot: std::sync::OnceLock<Arc<str>>,
}

impl PlaceState {
    fn cut(&self, reason: CloseReason) -> bool {
        let mut cut = self.cut.lock().unwrap_or_else(PoisonError::into_inner);
        if cut.is_some() {
            return false;
        }
        *cut = Some(reason);
        self.cut_notify.notify_one();
        true
    }
}

impl Place {
    /// Records the place's `slot` among its user's connections across nodes, renewed while
    /// the place is held, and how to give it back when the place is dropped without a
    /// connection taking it over (the connection's own slot replaces it then).
    pub fn hold_slot(&mut self, slot: Arc<str>, release: impl FnOnce() + Send + Sync + 'static) {
        if self.state.slot.set(slot).is_ok() {
            self.release = Some(Box::new(release));
        }
    }

    /// The place's slot among its user's connections across nodes, if it holds one.
    pub fn slot(&self) -> Option<&Arc<str>> {
        self.state.slot.get()
    }

    /// Why a disconnect cut the place's client (`POST /api/disconnect` of its user or its
    /// id), once one has: its client must go, as a connection would.
    pub async fn cut(&self) -> CloseReason {
        loop {
            if let Some(reason) = *self.state.cut.lock().unwrap_or_else(PoisonError::into_inner) {
                return reason;
            }
            self.state.cut_notify.notified().await;
        }
    }
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = &self.state;
        f.debug_struct("Place")
            .field("id", &state.id)
            .field("user", &state.user)
            .field("held", &self.hub.is_some())
            .finish()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.take() {
            let mut reg = hub.write();
            reg.places.remove(&place_addr(&self.state));
            if let Some(user) = &self.state.user {
                reg.forget_user_place(user);
            }
            drop(reg);
            if let Some(release) = self.release.take() {
                release();
            }
        }
    }
}

/// The key of a place's state in the registry.
fn place_addr(state: &Arc<PlaceState>) -> usize {
    Arc::as_ptr(state).addr()
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

    /// Holds a place in this node's limits for a client of `user` (anonymous: `None`) that
    /// has no connection yet (see [`Place`]).
    pub fn hold_place(
        self: &Arc<Self>,
        id: Arc<str>,
        user: Option<Arc<str>>,
        limits: ConnLimits,
    ) -> Result<Place, Refused> {
        let state = Arc::new(PlaceState {
            id,
            user,
            cut: std::sync::Mutex::new(None),
            cut_notify: Default::default(),
            slot: Default::default(),
        });
        let mut reg = self.write();
        reg.take_place(state.user.as_ref(), limits)?;
        reg.places.insert(place_addr(&state), Arc::clone(&state));
        drop(reg);
        Ok(Place { hub: Some(Arc::clone(self)), state, release: None })
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(PoisonError::into_inner)
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
        self.register_placed(conn, channels, limits, None)
    }

    /// [`Hub::register`] for a client that holds a `place` already: the connection takes it
    /// over, within the limits it was taken in (the place must be this hub's and the
    /// connection's user's).
    pub fn register_placed(
        &self,
        conn: Arc<ConnShared>,
        channels: &mut [ChannelName],
        limits: ConnLimits,
        place: Option<Place>,
    ) -> Result<Vec<ChannelName>, Refused> {
        // A place handed over: its counts (the node's, its user's) are the connection's
        // from now on, so it is not given back when dropped.
        let handed = place.and_then(|mut place| place.hub.take().map(|_| Arc::clone(&place.state)));
        let mut reg = self.write();
        // A disconnect that cut the place before it was handed over cuts its connection.
        let cut = match handed {
            Some(state) => {
                reg.places.remove(&place_addr(&state));
                *state.cut.lock().unwrap_or_else(PoisonError::into_inner)
            }
            None => {
                reg.take_place(conn.user_id.as_ref(), limits)?;
                None
            }
        };
        let mut activated = Vec::new();
        for ch in channels.iter_mut() {
            let (shared, fresh) = reg.subscribe(ch, &conn);
            *ch = shared;
            if fresh {
                activated.push(ch.clone());
            }
        }
        if let Some(at) = conn.expires_at_ms {
            let key = (at, addr(&conn));
            let earliest = reg.expiries.first_key_value().is_none_or(|(&first, _)| key < first);
            reg.expiries.insert(key, Arc::clone(&conn));
            reg.deadlines.insert(key.1, at);
            if earliest {
                self.expiry_moved.notify_one();
            }
        }
        if let Some((taken, theirs)) = reg.conns.remove_entry(&*conn.id) {
            reg.shadowed.push((taken.0, theirs));
        }
        reg.conns.insert(ById(Arc::clone(&conn)), channels.into());
        self.connections.fetch_add(1, Ordering::Relaxed);
        drop(reg);
        if let Some(reason) = cut {
            conn.close(reason);
        }
        Ok(activated)
    }

    /// Removes a connection (idempotent). Returns the channels left with no local subscriber.
    pub fn unregister(&self, conn: &ConnShared) -> Vec<ChannelName> {
        let mut reg = self.write();
        let channels = match reg.conns.get_key_value(&*conn.id) {
            Some((key, _)) if std::ptr::eq(&*key.0, conn) => reg.conns.remove(&*conn.id),
            _ => reg.shadowed.iter().position(|(c, _)| std::ptr::eq(&**c, conn)).map(|i| reg.shadowed.swap_remove(i).1),
        };
        let Some(channels) = channels else {
            return Vec::new();
        };
        let channels = channels.into_vec();
        if let Some(at) = reg.deadlines.remove(&addr(conn)) {
            reg.expiries.remove(&(at, addr(conn)));
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(user) = &conn.user_id {
            reg.forget_user_place(user);
        }
        let emptied = channels.iter().filter(|ch| reg.remove_subscriber(ch, conn)).cloned().collect();
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
        let (key, channels) = reg.conns.get_key_value(connection).ok_or(NotJoined::NoConnection)?;
        if channels.contains(channel) {
            return Ok(Joined::Already);
        }
        if channels.len() >= max_channels {
            return Err(NotJoined::TooManyChannels);
        }
        let conn = Arc::clone(&key.0);
        let (channel, _) = reg.subscribe(channel, &conn);
        if let Some(channels) = reg.conns.get_mut(connection) {
            // Boxed to their number, since most never change: a join allocates anew.
            let mut more = std::mem::take(channels).into_vec();
            more.push(channel.clone());
            *channels = more.into_boxed_slice();
        }
        let slot = JoinSlot::new(channel);
        match conn.push_item(Item::Join(Arc::clone(&slot))) {
            Pushed::Overflowed => {
                drop(reg);
                self.unregister(&conn);
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
        let (key, channels) = reg.conns.get_key_value(connection).ok_or(NotJoined::NoConnection)?;
        let Some(i) = channels.iter().position(|c| c == channel) else {
            return Ok(None);
        };
        let conn = Arc::clone(&key.0);
        if let Some(channels) = reg.conns.get_mut(connection) {
            let mut fewer = std::mem::take(channels).into_vec();
            fewer.remove(i);
            *channels = fewer.into_boxed_slice();
        }
        let emptied = reg.remove_subscriber(channel, &conn);
        let _ = conn.push_item(Item::Leave(Box::new(channel.clone())));
        Ok(Some((conn, emptied)))
    }

    /// Queues an event for one connection alone. False if it is not on this node.
    pub fn send_to(&self, connection: &str, event_type: Arc<str>, json: Bytes) -> bool {
        let conn = {
            let reg = self.read();
            let Some(conn) = reg.by_id(connection) else { return false };
            Arc::clone(conn)
        };
        match conn.push_item(Item::Direct(Box::new((event_type, json)))) {
            Pushed::Overflowed => {
                self.stats.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                self.unregister(&conn);
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
        let (key, channels) = reg.conns.get_key_value(connection)?;
        Some(info(&key.0, channels))
    }

    /// Every connection of this node.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.read().every().map(|(conn, channels)| info(conn, channels)).collect()
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
                if conn.has_filters() && !event.matches_on(copy, &conn.filters) {
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
                            if seen.insert(addr(conn)) {
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
            self.unregister(&conn);
        }
    }

    fn all(&self) -> Vec<Arc<ConnShared>> {
        self.read().every().map(|(conn, _)| Arc::clone(conn)).collect()
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
            self.unregister(&conn);
        }
        closed
    }

    /// The earliest deadline of a connection's credential, in ms since the Unix epoch.
    pub fn next_expiry(&self) -> Option<u64> {
        self.read().expiries.first_key_value().map(|(&(at, _), _)| at)
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
        let Some(conn) = reg.by_id(connection).cloned() else { return false };
        let key = (deadline_ms, addr(&conn));
        if let Some(at) = reg.deadlines.insert(key.1, deadline_ms) {
            reg.expiries.remove(&(at, key.1));
        }
        let earliest = reg.expiries.first_key_value().is_none_or(|(&first, _)| key < first);
        reg.expiries.insert(key, conn);
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
            reg.expiries.range(..=(now_ms, usize::MAX)).map(|(_, conn)| Arc::clone(conn)).collect()
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
            self.unregister(&conn);
        }
        closed
    }

    /// Closes this node's connections that `target` names, each with `reason` (and the last
    /// notice the reason writes). Returns how many it closed.
    pub fn disconnect(&self, target: &DisconnectTarget, reason: CloseReason) -> usize {
        // Connections and places are read under one lock, and the places cut under it: a
        // place handed to its client's connection meanwhile is either cut here (and the
        // connection closed as it registers) or already that connection, named here.
        let (conns, places_cut) = {
            let reg = self.read();
            let conns: Vec<Arc<ConnShared>> = match target {
                DisconnectTarget::User(user) => reg
                    .every()
                    .filter(|(conn, _)| conn.user_id.as_deref() == Some(user.as_str()))
                    .map(|(conn, _)| Arc::clone(conn))
                    .collect(),
                DisconnectTarget::Connection(id) => reg.by_id(id.as_str()).cloned().into_iter().collect(),
                DisconnectTarget::Channel(channel) => reg
                    .channels
                    .get(&ChannelName::key(channel))
                    .or_else(|| reg.patterns.get(&ChannelName::key(channel)))
                    .map(|subs| subs.to_vec())
                    .unwrap_or_default(),
            };
            // Clients that hold a place and no connection yet (a Centrifugo socket that has
            // not subscribed) go too.
            let named = |p: &&Arc<PlaceState>| match target {
                DisconnectTarget::User(user) => p.user.as_deref() == Some(user.as_str()),
                DisconnectTarget::Connection(id) => *p.id == **id,
                DisconnectTarget::Channel(_) => false,
            };
            let cut = reg.places.values().filter(named).filter(|p| p.cut(reason)).count();
            (conns, cut)
        };
        // Each leaves the hub once its last notice is written (or at the next sweeps, if
        // its reader stopped reading).
        conns.iter().filter(|conn| conn.close(reason)).count() + places_cut
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
            self.unregister(&conn);
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
        self.read().user_connections().collect()
    }

    /// The slots this node's users hold across nodes, as `(user id, slot)`: each connection's
    /// (its id), and each place's that took one ([`Place::hold_slot`]). What the node renews
    /// the leases of.
    pub fn held_slots(&self) -> Vec<(Arc<str>, Arc<str>)> {
        let reg = self.read();
        let places =
            reg.places.values().filter_map(|p| Some((Arc::clone(p.user.as_ref()?), Arc::clone(p.slot.get()?))));
        reg.user_connections().chain(places).collect()
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
        reg.channels.get(channel).or_else(|| reg.patterns.get(channel)).map_or(0, |subs| subs.len())
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
        let conns = reg
            .every()
            .filter(|(conn, _)| conn.user_id.as_deref() == Some(user))
            .map(|(conn, channels)| info(conn, channels));
        // A client that holds a place (a Centrifugo client that follows nothing yet) is one
        // of the user's connections too, with no channel.
        let places = reg.places.values().filter(|p| p.user.as_deref() == Some(user)).map(|p| ConnInfo {
            connection: Arc::clone(&p.id),
            transport: "centrifugo",
            user: p.user.clone(),
            user_name: None,
            info: None,
            channels: Vec::new(),
        });
        conns.chain(places).collect()
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

fn info(conn: &ConnShared, channels: &[ChannelName]) -> ConnInfo {
    ConnInfo {
        connection: Arc::clone(&conn.id),
        transport: conn.transport,
        user: conn.user_id.clone(),
        user_name: conn.user_name.clone(),
        info: conn.info.clone(),
        channels: channels.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnLimits = ConnLimits { max_connections: 10, max_per_user: 10 };

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn connection(id: &str) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(Arc::from(id), None, 16, None, Vec::new()))
    }

    #[test]
    fn a_moved_expiry_ends_the_connection_at_the_new_deadline_not_the_old_one() {
        let hub = Hub::new();
        let conn = Arc::new(ConnShared::new(Arc::from("c1"), None, 16, None, Vec::new()).expiring_at(Some(1_000)));
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
    fn a_connection_registered_with_a_taken_id_is_still_swept_listed_and_unregistered() {
        let hub = Hub::new();
        let (first, second) = (connection("c1"), connection("c1"));
        assert!(hub.register(Arc::clone(&first), &mut [channel("channel:a")], LIMITS).is_ok());
        assert!(hub.register(Arc::clone(&second), &mut [channel("channel:b")], LIMITS).is_ok());
        assert_eq!((hub.connection_count(), hub.connections().len(), hub.all().len()), (2, 2, 2));
        // The id finds the later one.
        assert_eq!(hub.connection("c1").map(|c| c.channels), Some(vec![channel("channel:b")]));
        assert_eq!(hub.unregister(&first), vec![channel("channel:a")]);
        assert!(hub.unregister(&first).is_empty(), "idempotent");
        assert_eq!(hub.connection("c1").map(|c| c.channels), Some(vec![channel("channel:b")]));
        assert_eq!(hub.unregister(&second), vec![channel("channel:b")]);
        assert_eq!((hub.connection_count(), hub.connections().len()), (0, 0));
    }

    #[test]
    fn live_joins_and_leaves_change_the_channels_the_hub_lists() {
        let hub = Hub::new();
        assert!(hub.register(connection("c1"), &mut [channel("channel:a")], LIMITS).is_ok());
        assert!(matches!(hub.join("c1", &channel("channel:b"), 8), Ok(Joined::Added { .. })));
        assert!(matches!(hub.join("c1", &channel("channel:b"), 8), Ok(Joined::Already)));
        assert!(matches!(hub.join("c1", &channel("channel:c"), 2), Err(NotJoined::TooManyChannels)));
        assert!(matches!(hub.join("c9", &channel("channel:c"), 8), Err(NotJoined::NoConnection)));
        let listed = || hub.connection("c1").map(|c| c.channels).unwrap_or_default();
        assert_eq!(listed(), [channel("channel:a"), channel("channel:b")]);
        assert!(matches!(hub.leave("c1", &channel("channel:a")), Ok(Some((_, true)))));
        assert!(matches!(hub.leave("c1", &channel("channel:a")), Ok(None)));
        assert_eq!(listed(), [channel("channel:b")]);
        assert_eq!(hub.subscriber_count(&channel("channel:a")), 0);
    }

    #[test]
    fn a_channel_of_one_subscriber_keeps_it_in_the_maps_slot_and_comes_back_to_that() {
        assert_eq!(std::mem::size_of::<Subscribers>(), std::mem::size_of::<Vec<Arc<ConnShared>>>());
        let hub = Hub::new();
        let lobby = channel("channel:lobby");
        let subs = |hub: &Hub| match hub.read().channels.get(&lobby) {
            None => (0, None),
            Some(Subscribers::One(one)) => (1, Some(Arc::clone(&one.id))),
            Some(Subscribers::Many(many)) => (many.len(), None),
        };
        let conns = [connection("c1"), connection("c2"), connection("c3")];
        for conn in &conns {
            assert!(hub.register(Arc::clone(conn), &mut [lobby.clone()], LIMITS).is_ok());
        }
        assert_eq!(subs(&hub), (3, None));
        assert!(hub.unregister(&conns[1]).is_empty());
        assert_eq!(subs(&hub), (2, None));
        assert!(hub.unregister(&conns[0]).is_empty());
        assert_eq!(subs(&hub), (1, Some(Arc::from("c3"))), "the last one back in the slot");
        assert_eq!(hub.subscriber_count(&lobby), 1);
        assert!(matches!(hub.join("c3", &channel("channel:other"), 8), Ok(Joined::Added { .. })));
        assert!(matches!(hub.leave("c3", &channel("channel:other")), Ok(Some((_, true)))));
        assert_eq!(hub.unregister(&conns[2]), vec![lobby.clone()]);
        assert_eq!(subs(&hub), (0, None));
    }

    #[test]
    fn subscribers_of_a_channel_share_one_copy_of_its_name() {
        // A name too long to be held in the `ChannelName` itself (short ones are copied).
        let hub = Hub::new();
        let (mut first, mut second) =
            (vec![channel("channel:lobby-of-the-east-wing")], vec![channel("channel:lobby-of-the-east-wing")]);
        assert_ne!(first[0].as_str().as_ptr(), second[0].as_str().as_ptr(), "parsed apart, stored apart");
        assert_eq!(
            hub.register(connection("c1"), &mut first, LIMITS),
            Ok(vec![channel("channel:lobby-of-the-east-wing")])
        );
        assert_eq!(hub.register(connection("c2"), &mut second, LIMITS), Ok(vec![]));
        assert_eq!(second, first);
        assert_eq!(second[0].as_str().as_ptr(), first[0].as_str().as_ptr());

        // A live join follows the same name.
        let mut elsewhere = vec![channel("channel:elsewhere")];
        assert!(hub.register(connection("c3"), &mut elsewhere, LIMITS).is_ok());
        match hub.join("c3", &channel("channel:lobby-of-the-east-wing"), 8) {
            Ok(Joined::Added { slot, .. }) => {
                assert_eq!(slot.channel.as_str().as_ptr(), first[0].as_str().as_ptr());
            }
            _ => panic!("c3 joins channel:lobby-of-the-east-wing"),
        }
        assert_eq!(hub.subscriber_count(&channel("channel:lobby-of-the-east-wing")), 3);
    }

    /// A connection of `user` with id `id`.
    fn of_user(id: &str, user: &Arc<str>) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(Arc::from(id), Some((Arc::clone(user), None)), 16, None, Vec::new()))
    }

    #[test]
    fn a_place_counts_as_a_connection_until_given_back_or_taken_over_by_its_clients_connection() {
        let hub = Arc::new(Hub::new());
        let limits = ConnLimits { max_connections: 3, max_per_user: 2 };
        let ann: Arc<str> = Arc::from("ann");
        let of_ann = |id: &str| of_user(id, &ann);
        let place = hub.hold_place(Arc::from("p"), Some(Arc::clone(&ann)), limits).unwrap_or_else(|r| panic!("{r:?}"));
        let other = hub.hold_place(Arc::from("p"), Some(Arc::clone(&ann)), limits).unwrap_or_else(|r| panic!("{r:?}"));
        assert_eq!(hub.hold_place(Arc::from("p"), Some(Arc::clone(&ann)), limits).err(), Some(Refused::UserLimit));
        assert_eq!(hub.register(of_ann("c1"), &mut [channel("channel:a")], limits).err(), Some(Refused::UserLimit));
        // Its client's connection takes it over: still two of Ann's, and three in all with an
        // anonymous place, past which the node is full.
        let conn = of_ann("c2");
        assert!(hub.register_placed(Arc::clone(&conn), &mut [channel("channel:a")], limits, Some(place)).is_ok());
        let anonymous = hub.hold_place(Arc::from("p"), None, limits).unwrap_or_else(|r| panic!("{r:?}"));
        assert_eq!(hub.hold_place(Arc::from("p"), None, limits).err(), Some(Refused::AtCapacity));
        assert_eq!(
            hub.register(connection("c3"), &mut [channel("channel:a")], limits).err(),
            Some(Refused::AtCapacity)
        );
        // Given back when dropped, and a connection's count when it leaves.
        drop((other, anonymous));
        assert!(hub.register(of_ann("c4"), &mut [channel("channel:a")], limits).is_ok());
        hub.unregister(&conn);
        assert!(hub.hold_place(Arc::from("p"), Some(Arc::clone(&ann)), limits).is_ok());
        assert_eq!(hub.read().users.get("ann"), Some(&1), "the dropped place went back at once");
    }

    /// A disconnect that lands while a client's first connection is opening (its place cut
    /// before the connection takes it over) cuts that connection as it registers; one that
    /// lands after finds the connection. Before, the cut was lost with the place and the new
    /// connection lived.
    #[test]
    fn a_place_cut_before_its_connection_takes_it_over_closes_that_connection() {
        let hub = Arc::new(Hub::new());
        let limits = ConnLimits { max_connections: 10, max_per_user: 5 };
        let ann: Arc<str> = Arc::from("ann");
        let of_ann = |id: &str| of_user(id, &ann);
        let reason = CloseReason::Disconnect { reconnect: false, banned: true };
        let place = hub.hold_place(Arc::from("c1"), Some(Arc::clone(&ann)), limits).unwrap_or_else(|r| panic!("{r:?}"));
        assert_eq!(hub.disconnect(&DisconnectTarget::User("ann".into()), reason), 1, "the place is cut");
        let conn = of_ann("c1");
        assert!(hub.register_placed(Arc::clone(&conn), &mut [channel("channel:a")], limits, Some(place)).is_ok());
        assert_eq!(conn.close_reason(), Some(reason), "registered closed, with the cut's reason");
        // An uncut place's connection opens, and a disconnect after finds it (once).
        let place = hub.hold_place(Arc::from("c2"), Some(Arc::clone(&ann)), limits).unwrap_or_else(|r| panic!("{r:?}"));
        let open = of_ann("c2");
        assert!(hub.register_placed(Arc::clone(&open), &mut [channel("channel:a")], limits, Some(place)).is_ok());
        assert_eq!(open.close_reason(), None);
        assert_eq!(hub.disconnect(&DisconnectTarget::Connection("c2".into()), reason), 1);
        assert_eq!(open.close_reason(), Some(reason));
    }

    /// A place's slot across nodes is renewed with the connections' while the place is held,
    /// given back when the place is dropped, and left to the connection that takes it over
    /// (whose own slot replaced it).
    #[test]
    fn a_places_slot_is_renewed_while_held_and_given_back_only_when_the_place_is_dropped() {
        let hub = Arc::new(Hub::new());
        let limits = ConnLimits { max_connections: 10, max_per_user: 5 };
        let ann: Arc<str> = Arc::from("ann");
        let released = Arc::new(std::sync::Mutex::new(Vec::new()));
        let slotted = |id: &str, slot: &str| {
            let mut place =
                hub.hold_place(Arc::from(id), Some(Arc::clone(&ann)), limits).unwrap_or_else(|r| panic!("{r:?}"));
            let (released, slot) = (Arc::clone(&released), Arc::<str>::from(slot));
            place.hold_slot(Arc::clone(&slot), move || {
                released.lock().unwrap_or_else(PoisonError::into_inner).push(slot)
            });
            place
        };
        let dropped = slotted("c1", "p1");
        let handed = slotted("c2", "p2");
        let _anonymous = hub.hold_place(Arc::from("c3"), None, limits).unwrap_or_else(|r| panic!("{r:?}"));
        let conn = of_user("c0", &ann);
        assert!(hub.register(Arc::clone(&conn), &mut [channel("channel:a")], limits).is_ok());
        let mut held = hub.held_slots();
        held.sort();
        let pair = |slot: &str| (Arc::clone(&ann), Arc::<str>::from(slot));
        assert_eq!(held, vec![pair("c0"), pair("p1"), pair("p2")], "the connection's and each slotted place's");
        drop(dropped);
        let conn2 = of_user("c2", &ann);
        assert!(hub.register_placed(conn2, &mut [channel("channel:a")], limits, Some(handed)).is_ok());
        let released: Vec<Arc<str>> = released.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(released, vec![Arc::<str>::from("p1")], "the dropped place's slot only");
        let mut held = hub.held_slots();
        held.sort();
        assert_eq!(held, vec![pair("c0"), pair("c2")], "the places' slots are no longer renewed");
    }
}
