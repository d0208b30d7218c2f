//! The node handle: what an application holds to publish, count, and serve streams.
//!
//! [`Herald`] ties the hub (live connections), the engine (ordering, history, other nodes),
//! the policies (who may do what), the authenticator and the rate limiters together. The
//! HTTP layer calls [`Herald::open_stream`] and [`Herald::publish_as`] with the request's
//! [`Principal`]; an embedding application, which is trusted, calls [`Herald::publish`] or
//! the document-shaped helpers [`Herald::send_to_user`], [`Herald::send_to_users`],
//! [`Herald::send_to_all`] and [`Herald::broadcast`].
//!
//! Submodules: `stream` opens and resumes connections (SSE or [`Herald::connect`] for other
//! transports), `history` reads a channel's history on request, `census` lists channels
//! and a user's connections across nodes, `rooms` changes live connections on any node, `sessions` cuts them and bans
//! users, `presence` announces who is where, `sink` is what the engine sees of the node (the
//! hub, the policies, and commands from other nodes), `lifecycle` what the node reports to the
//! lifecycle webhooks, `survey` gathers what every node says of itself (its counts, its channels),
//! `inboxes` holds what clients that write by separate requests sent their sessions.

mod census;
mod history;
mod inboxes;
mod lifecycle;
mod presence;
mod rooms;
mod sessions;
mod sink;
mod stream;
mod survey;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::auth::{Authenticator, Principal};
use crate::channel::{ChannelError, ChannelName, ROOM_NAMESPACE};
use crate::config::{Config, ConfigError, WebhookEvent};
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::{RedisEngine, RedisOptions};
use crate::engine::{Engine, EngineError, PublishAck};
use crate::event::{Event, EventError, Prepared, Publisher};
use crate::hub::Hub;
use crate::limits::RateLimiter;
use crate::policy::{Denied, Namespace, Policies};

pub use census::{CensusError, ChannelCount};
pub use history::{History, HistoryError, HistoryOrder, HistoryQuery, MAX_HISTORY_LIMIT};
pub use inboxes::{Delivery, Inbox};
pub use presence::{PresenceError, UserPresence};
pub use rooms::{ChannelInfo, RoomError};
pub use sessions::{DisconnectError, DisconnectOptions, DisconnectTarget, MAX_BAN, api_key_only};
pub use stream::{Admission, LastEvents, StreamRequest, new_connection_id};

/// The scope of the application's own idempotency keys (publishers over HTTP are scoped by
/// their credential, which never spells this).
pub const APP_SCOPE: &str = "app";

/// A publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("a batch may hold at most {limit} events, this one has {size}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("an event may name at most {limit} channels, this one names {count}")]
    TooManyChannels { count: usize, limit: usize },
    #[error("the batch is empty")]
    EmptyBatch,
    #[error("event {index} of the batch: {source}")]
    InBatch { index: usize, source: EventError },
    #[error("publish rate limit reached; retry in {} ms", retry_after.as_millis())]
    RateLimited { retry_after: Duration },
    #[error("this user is banned for now")]
    Banned,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the engine: {0}")]
    Engine(EngineError),
}

/// A stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("subscribe to at least one channel (`?channel=channel:general`)")]
    NoChannel,
    #[error("a connection may follow at most {limit} channels")]
    TooManyChannels { limit: usize },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("server at capacity")]
    AtCapacity,
    #[error("a user may hold at most {limit} connections")]
    UserLimit { limit: usize },
    #[error("the server is shutting down")]
    Draining,
    #[error("pattern subscriptions are not available with a Redis Cluster")]
    PatternsUnsupported,
    #[error("this user is banned for now")]
    Banned,
    #[error("too many tickets at once; wait a moment")]
    TicketsRateLimited { retry_after: Duration },
    #[error("too many joins and leaves at once (streams opened where arrivals are announced); wait a moment")]
    JoinsRateLimited { retry_after: Duration },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

struct Inner {
    config: Config,
    policies: Arc<Policies>,
    auth: Authenticator,
    hub: Arc<Hub>,
    engine: Arc<dyn Engine>,
    metrics: crate::metrics::Metrics,
    user_rate: RateLimiter,
    key_rate: RateLimiter,
    /// Each client's large answers being written (`http::answers`).
    answers: Arc<crate::limits::InFlight>,
    node_id: String,
    started: Instant,
    draining: AtomicBool,
    /// The application's backend hooks.
    hooks: crate::hooks::Hooks,
    /// The lifecycle webhooks.
    webhooks: crate::webhooks::Webhooks,
    /// The channels the occupancy task is to look at, when channel webhooks are on
    /// (`lifecycle.rs`).
    occupancy: Option<Arc<lifecycle::Changed>>,
    /// The hub's departures queue, for a marker that says when those before it were handled
    /// (`lifecycle.rs`, at shutdown), and the signal that it was.
    departures: tokio::sync::mpsc::UnboundedSender<crate::hub::Departure>,
    departures_handled: tokio::sync::Notify,
    /// Where published events are also sent during a migration (`centrifugo.mirror_url`).
    mirror: Option<crate::mirror::Mirror>,
    /// The inboxes of this node's sessions whose clients write by separate requests.
    inboxes: inboxes::Inboxes,
}

/// A Herald node. Cheap to clone; all clones share one hub and engine.
#[derive(Clone)]
pub struct Herald {
    inner: Arc<Inner>,
}

impl Herald {
    /// A node with the in-memory engine. Starts its maintenance task, so call it inside a
    /// Tokio runtime.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::with_engine(config, Arc::new(MemoryEngine::new()))
    }

    /// A node with the engine the configuration names: Redis with `redis_url`, the
    /// in-memory engine without. Connects to Redis before it returns.
    pub async fn start(mut config: Config) -> Result<Self, StartError> {
        let url = match &config.redis_url {
            Some(url) => url.clone(),
            None if !config.redis_sentinels.is_empty() => String::new(),
            None => return Ok(Self::new(config)?),
        };
        config.validate()?;
        let sentinel = config.redis_sentinel_master.clone().map(|master| (config.redis_sentinels.clone(), master));
        // Other nodes address this one by its id: fix it before the engine starts.
        let node_id = config.node_id.get_or_insert_with(random_node_id).clone();
        let opts = RedisOptions {
            url,
            tls_ca: config.redis_tls_ca.clone(),
            cluster: config.redis_cluster,
            batch_messages: config.redis_batch_messages,
            sentinel: sentinel.filter(|(sentinels, _)| !sentinels.is_empty()),
            prefix: config.redis_prefix.clone(),
            // A user's connection slot outlives three missed renewals (one per heartbeat).
            slot_lease: config.heartbeat_interval * 3,
            node_id,
        };
        let engine = RedisEngine::connect(opts).await.map_err(StartError::Engine)?;
        Ok(Self::with_engine(config, engine)?)
    }

    /// A node with an engine built by the caller; the node attaches itself to it (an engine
    /// serves one node). Starts its maintenance task, so call it inside a Tokio runtime.
    pub fn with_engine(config: Config, engine: Arc<dyn Engine>) -> Result<Self, ConfigError> {
        config.validate()?;
        let policies = Arc::new(Policies::from_config(&config));
        let hub = Arc::new(Hub::new());
        let auth = Authenticator::from_config(&config)?;
        let node_id = config.node_id.clone().unwrap_or_else(random_node_id);
        let metrics = crate::metrics::Metrics::default();
        let webhooks = crate::webhooks::Webhooks::start(&config, &node_id, Arc::clone(&metrics.webhooks))?;
        let occupancy = [WebhookEvent::ChannelOccupied, WebhookEvent::ChannelVacated]
            .into_iter()
            .any(|kind| webhooks.sends(kind))
            .then(|| Arc::new(lifecycle::Changed::default()));
        let (departed_tx, departed_rx) = tokio::sync::mpsc::unbounded_channel();
        let mirror =
            config.centrifugo.as_ref().and_then(|c| crate::mirror::Mirror::start(c, Arc::clone(&metrics.mirror)));
        let inner = Arc::new(Inner {
            mirror,
            inboxes: inboxes::Inboxes::default(),
            user_rate: RateLimiter::new(config.publish_rate, config.publish_burst),
            key_rate: RateLimiter::new(config.api_key_publish_rate, config.api_key_publish_burst),
            answers: Arc::default(),
            metrics,
            hooks: crate::hooks::Hooks::from_config(&config)?,
            webhooks,
            occupancy,
            departures: departed_tx.clone(),
            departures_handled: tokio::sync::Notify::new(),
            config,
            policies,
            auth,
            hub,
            engine,
            node_id,
            started: Instant::now(),
            draining: AtomicBool::new(false),
        });
        inner.hub.report_departures(departed_tx);
        tokio::spawn(presence::departures(Arc::downgrade(&inner), departed_rx));
        inner.engine.attach(Arc::new(sink::HubSink {
            hub: Arc::clone(&inner.hub),
            policies: Arc::clone(&inner.policies),
            node: Arc::downgrade(&inner),
        }));
        tokio::spawn(maintenance(Arc::downgrade(&inner)));
        tokio::spawn(expire_sessions(Arc::downgrade(&inner)));
        if let Some(changed) = &inner.occupancy {
            let every = inner.config.heartbeat_interval;
            tokio::spawn(lifecycle::track_occupancy(Arc::downgrade(&inner), Arc::clone(changed), every));
        }
        if inner.config.admin {
            tokio::spawn(publish_node_stats(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Each client's large answers being written (`http::answers`).
    pub(crate) fn answers_in_flight(&self) -> &Arc<crate::limits::InFlight> {
        &self.inner.answers
    }

    /// The application's backend hooks (`docs/backend.md`).
    pub fn hooks(&self) -> &crate::hooks::Hooks {
        &self.inner.hooks
    }

    pub fn policies(&self) -> &Policies {
        &self.inner.policies
    }

    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Open SSE connections on this node.
    pub fn connection_count(&self) -> usize {
        self.inner.hub.connection_count()
    }

    /// Channels with at least one subscriber on this node.
    pub fn channel_count(&self) -> usize {
        self.inner.hub.channel_count()
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Ready to take traffic: engine healthy and not draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.inner.engine.is_healthy()
    }

    /// Parses a channel name against the configured namespaces.
    pub fn parse_channel(&self, raw: &str) -> Result<ChannelName, ChannelError> {
        self.inner.policies.parse_channel(raw)
    }

    /// Parses what a subscription names: a channel, or a pattern (`channel:incidents.*`).
    pub fn parse_subscription(&self, raw: &str) -> Result<ChannelName, ChannelError> {
        self.inner.policies.parse_subscription(raw)
    }

    /// This node's numbers: connections, channels, events in and out.
    pub fn stats(&self) -> Stats {
        let hub = &self.inner.hub;
        Stats {
            connections: hub.connection_count(),
            channels: hub.channel_count(),
            users: hub.user_count(),
            events_sent: hub.stats.events_written.load(Ordering::Relaxed),
            events_published: self.inner.metrics.publish_accepted.load(Ordering::Relaxed),
            slow_disconnects: hub.stats.slow_disconnects.load(Ordering::Relaxed),
        }
    }

    /// Open connections on this node following `channel` (the room count).
    pub fn room_count(&self, channel: &str) -> usize {
        self.inner.hub.subscriber_count(&ChannelName::key(channel))
    }

    /// Publishes one event to `channels` as the application (trusted: no policy check and
    /// no rate limit). A connection following several of the channels receives it once.
    pub async fn publish(&self, channels: Vec<ChannelName>, event: Event) -> Result<PublishAck, PublishError> {
        self.publish_for(channels, event, &Publisher::default()).await
    }

    /// Like [`Herald::publish`], safe to retry: every retry of one logical publish under the
    /// same `key`, within `idempotency_window`, answers the first publish's id and delivers
    /// nothing new, on every node. Generate one key per logical publish (a UUID, or an id the
    /// application already has) and reuse it on each retry.
    pub async fn publish_idempotent(
        &self,
        key: &str,
        channels: Vec<ChannelName>,
        event: Event,
    ) -> Result<PublishAck, PublishError> {
        let window = self.inner.config.idempotency_window;
        let key = crate::event::Idempotency::new(APP_SCOPE, key, &channels, &event, window)?;
        self.publish(channels, event.with_idempotency(key)).await
    }

    /// Like [`Herald::publish`], with the identity the event carries (`userId`, `userName`)
    /// set by the application, which the library trusts: for presence, join/leave, or a chat
    /// message the application has authenticated itself.
    pub async fn publish_for(
        &self,
        channels: Vec<ChannelName>,
        event: Event,
        publisher: &Publisher,
    ) -> Result<PublishAck, PublishError> {
        let mut acks = self.publish_prepared(vec![(channels, event)], publisher).await?;
        acks.pop().ok_or(PublishError::EmptyBatch)
    }

    /// Publishes a batch on behalf of `who`: every channel is checked against the policies,
    /// the publisher's rate limit is charged, and identity fields come from `who`. Either
    /// every event is accepted or none is. A user who is banned is refused
    /// ([`PublishError::Banned`]).
    pub async fn publish_as(
        &self,
        who: &Principal,
        rate_key: &str,
        batch: Vec<(Vec<ChannelName>, Event)>,
    ) -> Result<Vec<PublishAck>, PublishError> {
        self.refuse_banned_publisher(who).await?;
        let prepared = self.admit_publish(who, rate_key, batch)?;
        Ok(self.publish_acked(prepared, false).await?)
    }

    /// Refuses a user who is banned ([`Herald::ban_user`]): a ban keeps the user from
    /// publishing, as from opening streams, whatever tokens they still hold.
    pub(crate) async fn refuse_banned_publisher(&self, who: &Principal) -> Result<(), PublishError> {
        if let Principal::User(user) = who
            && self.inner.engine.is_banned(&user.id).await?
        {
            return Err(PublishError::Banned);
        }
        Ok(())
    }

    /// The checks of [`Herald::publish_as`] without the engine: policies, limits, payloads,
    /// then the rate limit charged; the batch prepared for [`Herald::publish_ready`].
    pub(crate) fn admit_publish(
        &self,
        who: &Principal,
        rate_key: &str,
        batch: Vec<(Vec<ChannelName>, Event)>,
    ) -> Result<Vec<Prepared>, PublishError> {
        let limit = self.inner.config.max_channels_per_publish;
        let mut namespaces = NamespaceMemo::default();
        for (channels, event) in &batch {
            if channels.len() > limit {
                return Err(PublishError::TooManyChannels { count: channels.len(), limit });
            }
            presence::check_not_presence(event)?;
            for ch in channels {
                let ns = namespaces.of(&self.inner.policies, ch);
                self.inner.policies.can_publish_in(who, ch, ns)?;
            }
        }
        let prepared = self.prepare(batch, &who.publisher(), &mut namespaces)?;
        // Charged only for valid events, and per channel reached (after duplicates are
        // merged): each one costs the node a log entry and a fan-out. A refused request
        // costs the publisher nothing.
        let cost = prepared.iter().map(|p| p.channels.len()).sum();
        self.charge(who, rate_key, cost)?;
        Ok(prepared)
    }

    /// Takes `cost` tokens from the publish rate limit of `who` (kept under `rate_key`),
    /// for work done on its behalf that publishes `cost` events.
    pub fn charge(&self, who: &Principal, rate_key: &str, cost: usize) -> Result<(), PublishError> {
        let limiter = match who {
            Principal::ApiKey(_) => &self.inner.key_rate,
            _ => &self.inner.user_rate,
        };
        limiter.check(rate_key, cost as f64).map_err(|retry_after| PublishError::RateLimited { retry_after })
    }

    async fn publish_prepared(
        &self,
        batch: Vec<(Vec<ChannelName>, Event)>,
        publisher: &Publisher,
    ) -> Result<Vec<PublishAck>, PublishError> {
        let prepared = self.prepare(batch, publisher, &mut NamespaceMemo::default())?;
        Ok(self.publish_acked(prepared, false).await?)
    }

    /// Hands prepared events to the engine in one call, in order; all accepted or none
    /// (where the engine's [`Broker::batches_are_atomic`](crate::engine::Broker::batches_are_atomic)).
    /// For an answer that names each event's id alone (the HTTP publishes'): an ack's
    /// positions may be left out, which spares the engine a list for each event.
    pub(crate) fn publish_ready(
        &self,
        prepared: Vec<Prepared>,
    ) -> impl Future<Output = Result<Vec<PublishAck>, EngineError>> + Send + '_ {
        // `publish_acked`'s own future, not one around it.
        self.publish_acked(prepared, true)
    }

    /// [`Herald::publish_ready`], with each ack whole unless `ids_only`.
    async fn publish_acked(&self, prepared: Vec<Prepared>, ids_only: bool) -> Result<Vec<PublishAck>, EngineError> {
        let reported = self.to_report_published(&prepared);
        // Offered once accepted, without the events (the engine takes them): a copy of the
        // few fields the mirror needs only when it is on.
        let mirrored = self.inner.mirror.as_ref().map(|_| prepared.clone());
        // An engine that needs not wait (the in-memory one) publishes at once, without the
        // boxed future of `publish`.
        let acks = match self.inner.engine.publish_now(prepared, ids_only) {
            Ok(acks) => acks?,
            Err(prepared) => self.inner.engine.publish(prepared).await?,
        };
        if let (Some(mirror), Some(events)) = (&self.inner.mirror, mirrored) {
            mirror.offer(&events);
        }
        self.inner.metrics.publish_accepted.fetch_add(acks.len() as u64, Ordering::Relaxed);
        // Nothing chosen to report (no `event.published` webhook, nearly always): no call.
        if !reported.is_empty() {
            self.report_published(reported, &acks);
        }
        Ok(acks)
    }

    /// Whether the events of several publish requests may go to the engine in one call: the
    /// engine takes a batch all or nothing (a Redis cluster does not), and no publish hook
    /// is configured (a hook's call would hold the requests before it).
    pub(crate) fn merges_publishes(&self) -> bool {
        self.inner.engine.batches_are_atomic() && !self.inner.hooks.any(crate::hooks::Hook::Publish)
    }

    /// Validates a batch and serializes each event once. `namespaces` is the memo of the
    /// checks before (a publish's channel is looked up once for both).
    fn prepare<'p>(
        &'p self,
        batch: Vec<(Vec<ChannelName>, Event)>,
        publisher: &Publisher,
        namespaces: &mut NamespaceMemo<'p>,
    ) -> Result<Vec<Prepared>, PublishError> {
        let cfg = &self.inner.config;
        if batch.is_empty() {
            return Err(PublishError::EmptyBatch);
        }
        if batch.len() > cfg.max_batch {
            return Err(PublishError::BatchTooLarge { size: batch.len(), limit: cfg.max_batch });
        }
        let single = batch.len() == 1;
        let mut prepared: Vec<Prepared> = Vec::with_capacity(batch.len());
        // One reading of the clock for the batch: every event's id time and timestamp.
        let at = crate::clock::wall();
        for (index, (channels, event)) in batch.into_iter().enumerate() {
            let mut limit: Option<usize> = None;
            for c in &channels {
                let of = namespaces.of(&self.inner.policies, c).map(|ns| ns.max_payload_bytes);
                limit = match (limit, of) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let previous = prepared.last().map(|p| &p.event_type);
            let max_payload = limit.unwrap_or(cfg.max_payload_bytes);
            let p =
                Prepared::sharing_type(channels, event, publisher, max_payload, previous, at).map_err(|source| {
                    if single { PublishError::Event(source) } else { PublishError::InBatch { index, source } }
                })?;
            prepared.push(p);
        }
        Ok(prepared)
    }

    /// Sends an event to one user's private channel `user:<id>`, on every node.
    pub async fn send_to_user(&self, user_id: &str, event: Event) -> Result<PublishAck, PublishError> {
        self.publish(vec![ChannelName::user(user_id)?], event).await
    }

    /// Sends one event to several users' private channels.
    pub async fn send_to_users(&self, user_ids: &[&str], event: Event) -> Result<PublishAck, PublishError> {
        let channels = user_ids.iter().map(|id| ChannelName::user(id)).collect::<Result<Vec<_>, _>>()?;
        self.publish(channels, event).await
    }

    /// Sends an event on the `system` channel, which every client may follow.
    pub async fn send_to_all(&self, event: Event) -> Result<PublishAck, PublishError> {
        self.publish(vec![ChannelName::system()], event).await
    }

    /// Sends an event to a room: `broadcast("general", ..)` and
    /// `broadcast("channel:general", ..)` both reach `channel:general`. Only rooms: a name
    /// in another namespace (`user:42`, `system`) is refused, so a room name taken from a
    /// request cannot reach a private channel.
    pub async fn broadcast(&self, room: &str, event: Event) -> Result<PublishAck, PublishError> {
        let name = room.strip_prefix("channel:").unwrap_or(room);
        let channel = ChannelName::parse(&format!("{ROOM_NAMESPACE}:{name}"))?;
        self.publish(vec![channel], event).await
    }

    /// Takes one token from `user`'s bucket for `kind` (`ticket:`, `status:`, `rooms:`): what
    /// a user does besides publishing that costs the node or other clients (each kept, or
    /// announced to a room) comes from a bucket of its own at the publish rate, or is refused
    /// with the time until it would fit.
    pub(super) fn charge_user(&self, kind: &str, user: &str) -> Result<(), Duration> {
        self.inner.user_rate.check(&[kind, user].concat(), 1.0)
    }

    /// Issues a single-use ticket for `GET /api/events?ticket=` that stands for `who`
    /// (refused while `who` is banned).
    pub async fn issue_ticket(&self, who: &crate::auth::UserIdentity) -> Result<String, SubscribeError> {
        if self.inner.engine.is_banned(&who.id).await? {
            return Err(SubscribeError::Banned);
        }
        // Each is kept `ticket_ttl`: a user minting them in a loop must not fill the engine
        // (a stream needs one at each open).
        self.charge_user("ticket:", &who.id)
            .map_err(|retry_after| SubscribeError::TicketsRateLimited { retry_after })?;
        let ticket = crate::auth::new_ticket().map_err(|_| EngineError::Internal("no secure random source".into()))?;
        let payload = serde_json::to_string(who).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.inner.engine.put_ticket(&ticket, payload, self.inner.config.auth.ticket_ttl).await?;
        Ok(ticket)
    }

    /// Redeems a ticket; `None` if it is unknown, expired or already used. The identity
    /// carries the expiry of the token the ticket was issued for (the caller refuses it once
    /// that has passed: [`crate::auth::UserIdentity::session_deadline_ms`]).
    pub async fn redeem_ticket(&self, ticket: &str) -> Result<Option<crate::auth::UserIdentity>, EngineError> {
        Ok(self.inner.engine.take_ticket(ticket).await?.and_then(|p| serde_json::from_str(&p).ok()))
    }

    /// Tells every open stream to reconnect after a random delay, and refuses new ones.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        let base = self.inner.config.retry.as_millis() as u64;
        let window = (self.inner.config.drain_reconnect_window.as_millis() as u64).max(1);
        self.inner.hub.drain(|| base + fastrand::u64(0..window));
    }
}

impl crate::metrics::Source for Herald {
    fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    fn engine(&self) -> &dyn Engine {
        &*self.inner.engine
    }

    fn is_draining(&self) -> bool {
        Herald::is_draining(self)
    }

    fn uptime(&self) -> Duration {
        Herald::uptime(self)
    }
}

/// The policy of the last namespace a batch's channel was looked up in, with the name it is
/// configured under: a batch's events nearly always go to one namespace, which is then
/// looked up once, not once per event, and a channel is known to be in it by one compare of
/// its first bytes.
#[derive(Default)]
struct NamespaceMemo<'p>(Option<(&'p str, &'p Namespace)>);

impl<'p> NamespaceMemo<'p> {
    fn of(&mut self, policies: &'p Policies, channel: &ChannelName) -> Option<&'p Namespace> {
        match self.0 {
            Some((name, ns)) if channel.is_in(name) => Some(ns),
            _ => {
                // A channel of no configured namespace is looked up each time (a trusted
                // publish can name one; it finds nothing, and nothing is kept of it).
                let found = policies.of_named(channel);
                if found.is_some() {
                    self.0 = found;
                }
                found.map(|(_, ns)| ns)
            }
        }
    }
}

/// For the admin view: this node's numbers on `admin:nodes`, every `admin_interval`.
async fn publish_node_stats(inner: Weak<Inner>) {
    let Some(period) = inner.upgrade().map(|i| i.config.admin_interval) else { return };
    let Ok(channel) = ChannelName::parse_with("admin:nodes", |ns| ns == crate::policy::ADMIN_NAMESPACE) else { return };
    let mut ticker = tokio::time::interval(period);
    let mut last_sent = 0u64;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let herald = Herald { inner };
        let sent = herald.hub().stats.events_written.load(Ordering::Relaxed);
        let per_second = (sent - last_sent.min(sent)) as f64 / period.as_secs_f64().max(0.001);
        last_sent = sent;
        let engine = herald.engine();
        let event = Event::new("node_stats")
            .with("nodeId", herald.node_id())
            .with("engine", engine.name())
            .with("engineUp", engine.is_healthy())
            .with("draining", herald.is_draining())
            .with("connections", herald.connection_count())
            .with("users", herald.hub().user_count())
            .with("channelCount", herald.channel_count())
            .with("eventsSent", sent)
            .with("eventsPerSecond", (per_second * 10.0).round() / 10.0)
            .with("publishAccepted", herald.metrics().publish_accepted.load(Ordering::Relaxed))
            .with("uptimeSeconds", herald.uptime().as_secs());
        if let Err(e) = herald.publish(vec![channel.clone()], event).await {
            tracing::debug!(error = %e, "could not publish node stats");
        }
    }
}

/// Heartbeats, stalled-client timeouts and history expiry, once per heartbeat interval.
async fn maintenance(inner: Weak<Inner>) {
    let Some(period) = inner.upgrade().map(|i| i.config.heartbeat_interval) else {
        return;
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let cfg = &inner.config;
        let max_stalled = cfg.client_timeout.as_millis().div_ceil(period.as_millis().max(1)) as u32;
        inner.hub.sweep(max_stalled.max(1));
        inner.engine.sweep();
        inner.user_rate.sweep();
        inner.key_rate.sweep();
        let herald = Herald { inner };
        tokio::spawn(async move { herald.expire_local_presence().await });
    }
}

/// Ends streams whose credential expired. One timer per node, set to the earliest deadline
/// of its connections (moved earlier when a connection with an earlier one registers), so a
/// stream ends within milliseconds of its `exp` plus `auth.leeway`, at no cost per
/// connection. It also wakes every `heartbeat_interval`, so that a change of the system
/// clock (deadlines are wall-clock times) is seen within one interval.
async fn expire_sessions(inner: Weak<Inner>) {
    let Some((hub, period)) = inner.upgrade().map(|i| (Arc::clone(&i.hub), i.config.heartbeat_interval)) else {
        return;
    };
    loop {
        let now = crate::auth::unix_ms();
        if hub.next_expiry().is_some_and(|at| at <= now) {
            hub.expire_sessions(now);
        }
        let wait = hub.next_expiry().map_or(period, |at| Duration::from_millis(at.saturating_sub(now)).min(period));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = hub.expiry_moved() => {}
        }
        if inner.strong_count() == 0 {
            return;
        }
    }
}

/// A node id for a node that was given none: `node-` and 8 random characters.
fn random_node_id() -> String {
    let id = crate::ids::new_id();
    format!("node-{}", &id[id.len() - 8..]).to_lowercase()
}

/// A node's numbers, as [`Herald::stats`] reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Open connections.
    pub connections: usize,
    /// Channels with at least one local subscriber.
    pub channels: usize,
    /// Distinct users with a connection.
    pub users: usize,
    /// Events written to connections.
    pub events_sent: u64,
    /// Events accepted for publishing on this node.
    pub events_published: u64,
    /// Connections closed as slow consumers.
    pub slow_disconnects: u64,
}
