//! The node handle: what an application holds to publish, count, and serve streams.
//!
//! [`Herald`] ties the hub (live connections), the engine (ordering, history, other nodes),
//! the policies (who may do what), the authenticator and the rate limiters together. The
//! HTTP layer calls [`Herald::open_stream`] and [`Herald::publish_as`] with the request's
//! [`Principal`]; an embedding application, which is trusted, calls [`Herald::publish`] or
//! the document-shaped helpers [`Herald::send_to_user`], [`Herald::send_to_users`],
//! [`Herald::send_to_all`] and [`Herald::broadcast`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::json;

use crate::auth::{Authenticator, Principal};
use crate::channel::{ChannelError, ChannelName, ROOM_NAMESPACE};
use crate::config::{Config, ConfigError};
use crate::cursor::{Cursor, LastEventId, Position, Resume};
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::{RedisEngine, RedisOptions};
use crate::engine::{Engine, EngineError, GapReason, HistoryRead, PublishAck};
use crate::event::{Event, EventError, Prepared, Published, Publisher};
use crate::hub::connection::{ConnShared, KillSwitch, SseBody};
use crate::hub::{ConnLimits, Hub, Refused};
use crate::limits::RateLimiter;
use crate::policy::{Denied, Policies};
use crate::sse;

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
    #[error("the batch is empty")]
    EmptyBatch,
    #[error("event {index} of the batch: {source}")]
    InBatch { index: usize, source: EventError },
    #[error("publish rate limit reached; retry in {} ms", retry_after.as_millis())]
    RateLimited { retry_after: Duration },
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
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// How a client asked for its stream.
#[derive(Clone, Debug)]
pub struct StreamRequest {
    pub principal: Principal,
    pub channels: Vec<ChannelName>,
    /// The `Last-Event-ID` header or `lastEventId` query value, if any.
    pub last_event_id: Option<String>,
    /// Send `event: <type>` lines (for `addEventListener`) instead of unnamed events.
    pub named: bool,
    /// Lets the hub tear down an HTTP/1.1 connection whose reader stalled.
    pub kill: Option<KillSwitch>,
    /// Field filters (document 003): only events whose top-level `field` equals `value`,
    /// for every pair, reach the stream.
    pub filters: Vec<(String, String)>,
}

impl StreamRequest {
    pub fn new(principal: Principal, channels: Vec<ChannelName>) -> Self {
        Self { principal, channels, last_event_id: None, named: false, kill: None, filters: Vec::new() }
    }
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
    node_id: String,
    started: Instant,
    draining: AtomicBool,
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
        config.validate()?;
        let policies = Arc::new(Policies::from_config(&config));
        let hub = Arc::new(Hub::new());
        let engine = Arc::new(MemoryEngine::new(Arc::clone(&hub), Arc::clone(&policies)));
        Self::with_engine(config, policies, hub, engine)
    }

    /// A node with the engine the configuration names: Redis with `redis_url`, the
    /// in-memory engine without. Connects to Redis before it returns.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let Some(url) = config.redis_url.clone() else { return Ok(Self::new(config)?) };
        config.validate()?;
        let policies = Arc::new(Policies::from_config(&config));
        let hub = Arc::new(Hub::new());
        let opts = RedisOptions {
            url,
            tls_ca: config.redis_tls_ca.clone(),
            cluster: config.redis_cluster,
            prefix: config.redis_prefix.clone(),
            // A user's connection slot outlives three missed renewals (one per heartbeat).
            slot_lease: config.heartbeat_interval * 3,
        };
        let engine =
            RedisEngine::connect(opts, Arc::clone(&hub), Arc::clone(&policies)).await.map_err(StartError::Engine)?;
        Ok(Self::with_engine(config, policies, hub, engine)?)
    }

    /// A node with an engine built by the caller around `hub`.
    pub fn with_engine(
        config: Config,
        policies: Arc<Policies>,
        hub: Arc<Hub>,
        engine: Arc<dyn Engine>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let auth = Authenticator::from_config(&config)?;
        let node_id = config.node_id.clone().unwrap_or_else(|| {
            let id = crate::ids::new_id();
            format!("node-{}", &id[id.len() - 8..]).to_lowercase()
        });
        let inner = Arc::new(Inner {
            user_rate: RateLimiter::new(config.publish_rate, config.publish_burst),
            key_rate: RateLimiter::new(config.api_key_publish_rate, config.api_key_publish_burst),
            metrics: crate::metrics::Metrics::default(),
            config,
            policies,
            auth,
            hub,
            engine,
            node_id,
            started: Instant::now(),
            draining: AtomicBool::new(false),
        });
        tokio::spawn(maintenance(Arc::downgrade(&inner)));
        if inner.config.admin {
            tokio::spawn(publish_node_stats(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
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

    /// Publishes one event to `channels` as the application (trusted: no policy check and
    /// no rate limit). A connection following several of the channels receives it once.
    pub async fn publish(&self, channels: Vec<ChannelName>, event: Event) -> Result<PublishAck, PublishError> {
        self.publish_for(channels, event, &Publisher::default()).await
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
    /// every event is accepted or none is.
    pub async fn publish_as(
        &self,
        who: &Principal,
        rate_key: &str,
        batch: Vec<(Vec<ChannelName>, Event)>,
    ) -> Result<Vec<PublishAck>, PublishError> {
        for (channels, _) in &batch {
            for ch in channels {
                self.inner.policies.can_publish(who, ch)?;
            }
        }
        let prepared = self.prepare(batch, &who.publisher())?;
        // Charged only for valid events: a refused request costs the publisher nothing.
        let limiter = match who {
            Principal::ApiKey(_) => &self.inner.key_rate,
            _ => &self.inner.user_rate,
        };
        limiter
            .check(rate_key, prepared.len() as f64)
            .map_err(|retry_after| PublishError::RateLimited { retry_after })?;
        self.publish_ready(prepared).await
    }

    async fn publish_prepared(
        &self,
        batch: Vec<(Vec<ChannelName>, Event)>,
        publisher: &Publisher,
    ) -> Result<Vec<PublishAck>, PublishError> {
        let prepared = self.prepare(batch, publisher)?;
        self.publish_ready(prepared).await
    }

    async fn publish_ready(&self, prepared: Vec<Prepared>) -> Result<Vec<PublishAck>, PublishError> {
        let acks = self.inner.engine.publish(prepared).await?;
        self.inner.metrics.publish_accepted.fetch_add(acks.len() as u64, Ordering::Relaxed);
        Ok(acks)
    }

    /// Validates a batch and serializes each event once.
    fn prepare(
        &self,
        batch: Vec<(Vec<ChannelName>, Event)>,
        publisher: &Publisher,
    ) -> Result<Vec<Prepared>, PublishError> {
        let cfg = &self.inner.config;
        if batch.is_empty() {
            return Err(PublishError::EmptyBatch);
        }
        if batch.len() > cfg.max_batch {
            return Err(PublishError::BatchTooLarge { size: batch.len(), limit: cfg.max_batch });
        }
        let single = batch.len() == 1;
        let prepared = batch
            .into_iter()
            .enumerate()
            .map(|(index, (channels, event))| {
                let limit = channels
                    .iter()
                    .filter_map(|c| self.inner.policies.of(c).map(|ns| ns.max_payload_bytes))
                    .min()
                    .unwrap_or(cfg.max_payload_bytes);
                Prepared::new(channels, event, publisher, limit).map_err(|source| {
                    if single { PublishError::Event(source) } else { PublishError::InBatch { index, source } }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(prepared)
    }

    /// Sends an event to one user's private channel `user:<id>` (document 000's `SendToUser`).
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

    /// Issues a single-use ticket for `GET /api/events?ticket=` that stands for `who`.
    pub async fn issue_ticket(&self, who: &crate::auth::UserIdentity) -> Result<String, EngineError> {
        let ticket =
            crate::auth::new_ticket().map_err(|_| EngineError::Unavailable("no secure random source".into()))?;
        let payload = serde_json::to_string(who).map_err(|e| EngineError::Unavailable(e.to_string()))?;
        self.inner.engine.put_ticket(&ticket, payload, self.inner.config.auth.ticket_ttl).await?;
        Ok(ticket)
    }

    /// Redeems a ticket; `None` if it is unknown, expired or already used.
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

    /// Opens an SSE stream: checks the principal against every channel, registers the
    /// connection, resumes it from history if asked, and returns the body that delivers
    /// everything after.
    pub async fn open_stream(&self, req: StreamRequest) -> Result<SseBody, SubscribeError> {
        let cfg = &self.inner.config;
        if self.is_draining() {
            return Err(SubscribeError::Draining);
        }
        let mut channels: Vec<ChannelName> = Vec::with_capacity(req.channels.len());
        for ch in req.channels {
            if !channels.contains(&ch) {
                channels.push(ch);
            }
        }
        if channels.is_empty() {
            return Err(SubscribeError::NoChannel);
        }
        if channels.len() > cfg.max_channels_per_connection {
            return Err(SubscribeError::TooManyChannels { limit: cfg.max_channels_per_connection });
        }
        for ch in &channels {
            self.inner.policies.can_subscribe(&req.principal, ch)?;
        }

        let hub = &self.inner.hub;
        let conn_id: Arc<str> = Arc::from(format!("c{}", crate::ids::new_id().to_lowercase()));
        let user = req.principal.user_id().cloned();
        let filters: crate::hub::connection::Filters = req.filters.into_boxed_slice();
        let shared = Arc::new(ConnShared::new(
            hub.next_key(),
            conn_id.clone(),
            user,
            cfg.buffer_size,
            req.kill,
            filters.clone(),
        ));
        let limits = ConnLimits { max_connections: cfg.max_connections, max_per_user: cfg.max_connections_per_user };
        // Registered before history is read, so nothing published in between is missed;
        // what is both replayed and queued is dropped by the body's cursor.
        let activated = hub.register(Arc::clone(&shared), &channels, limits).map_err(|r| match r {
            Refused::AtCapacity => SubscribeError::AtCapacity,
            Refused::UserLimit => SubscribeError::UserLimit { limit: cfg.max_connections_per_user },
        })?;
        let mut body = SseBody::new(shared, Arc::clone(hub), channels.clone(), Cursor::default(), req.named);
        if let Some(user) = req.principal.user_id() {
            // Across nodes (Redis); the hub has already checked this node. On refusal the
            // body is dropped, which unregisters the connection.
            if !self.inner.engine.acquire_slot(user, &conn_id, cfg.max_connections_per_user).await? {
                return Err(SubscribeError::UserLimit { limit: cfg.max_connections_per_user });
            }
        }
        self.inner.engine.watch(&activated).await?;

        let parsed = req.last_event_id.as_deref().map(LastEventId::parse);
        let mut cursor = Cursor { positions: vec![Position::default(); channels.len()] };
        let mut gaps: Vec<(usize, &'static str)> = Vec::new();
        let mut missed: Vec<(Position, usize, Arc<Published>)> = Vec::new();
        for (i, ch) in channels.iter().enumerate() {
            let resume = match &parsed {
                None => Resume::Fresh,
                Some(None) => Resume::Unknown,
                Some(Some(id)) => id.resume_for(i, ch.as_str()),
            };
            let after = match resume {
                Resume::From(p) => Some(p),
                Resume::Fresh | Resume::Unknown => None,
            };
            match (resume, self.inner.engine.history(ch, after).await?) {
                (Resume::From(p), HistoryRead::Events { events, head }) => {
                    cursor.positions[i] = p;
                    for ev in events {
                        let pos = ev.copy_on(ch.as_str()).map_or(head, |c| c.position);
                        missed.push((pos, i, ev));
                    }
                }
                (Resume::Fresh, HistoryRead::Events { head, .. }) => cursor.positions[i] = head,
                (Resume::Unknown, HistoryRead::Events { head, .. }) => {
                    cursor.positions[i] = head;
                    gaps.push((i, GapReason::UnknownPosition.as_str()));
                }
                (_, HistoryRead::Gap { reason, head }) => {
                    cursor.positions[i] = head;
                    gaps.push((i, reason.as_str()));
                }
            }
        }

        let named = req.named;
        let mut pre = BytesMut::with_capacity(512);
        sse::put_retry(&mut pre, cfg.retry.as_millis() as u64);
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let connected = json!({
            "type": "connected",
            "connectionId": &*conn_id,
            "nodeId": self.node_id(),
            "channels": channels.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
            "timestamp": now,
        });
        let id = cursor.encode(&channels);
        sse::one_off_event(&mut pre, "connected", &id, connected.to_string().as_bytes(), named);
        if parsed.is_some() {
            let m = &self.inner.metrics;
            let counter = if gaps.is_empty() { &m.resumes_replayed } else { &m.resumes_reset };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        for (i, reason) in gaps {
            let reset = json!({
                "type": "reset",
                "channel": channels[i].as_str(),
                "reason": reason,
                "timestamp": now,
            });
            tracing::debug!(connection = %conn_id, channel = %channels[i], reason, "resume not possible; sent reset");
            sse::one_off_event(&mut pre, "reset", &id, reset.to_string().as_bytes(), named);
        }
        write_replay(&mut pre, &channels, &mut cursor, missed, named, &filters);
        body.start(cursor, pre.freeze());
        Ok(body)
    }
}

/// Writes missed events in position order, each once, with the cursor after it as its id.
fn write_replay(
    out: &mut BytesMut,
    channels: &[ChannelName],
    cursor: &mut Cursor,
    mut missed: Vec<(Position, usize, Arc<Published>)>,
    named: bool,
    filters: &[(String, String)],
) {
    missed.sort_by_key(|m| (m.0, m.1));
    // An event on several of the connection's channels appears once per channel (and, from
    // some engines, as separate copies): advance every one of those channels together.
    let mut by_id: HashMap<Arc<str>, Vec<(usize, Position)>> = HashMap::new();
    for (pos, i, ev) in &missed {
        by_id.entry(ev.id.clone()).or_default().push((*i, *pos));
    }
    for (_, i, ev) in missed {
        let Some(at) = by_id.remove(&ev.id) else {
            continue;
        };
        for (j, pos) in at {
            if pos > cursor.positions[j] {
                cursor.positions[j] = pos;
            }
        }
        if !filters.is_empty() && !ev.matches(filters) {
            continue;
        }
        let Some(copy) = ev.copy_on(channels[i].as_str()) else {
            continue;
        };
        if channels.len() == 1 {
            out.extend_from_slice(&copy.frame.with_id(named));
        } else {
            copy.frame.put_with_own_id(out, &cursor.encode(channels), named);
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
    }
}
