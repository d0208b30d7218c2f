//! The node handle: what an application holds to publish, count, and serve streams.
//!
//! [`Herald`] ties the hub (live connections), the engine (ordering, history, other nodes)
//! and the configuration together. The HTTP layer calls [`Herald::open_stream`] and
//! [`Herald::publish_batch`]; an embedding application calls the same methods, or the
//! document-shaped helpers [`Herald::send_to_user`], [`Herald::send_to_users`],
//! [`Herald::send_to_all`] and [`Herald::broadcast`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::json;

use crate::channel::{ChannelError, ChannelName, ROOM_NAMESPACE};
use crate::config::Config;
use crate::cursor::{Cursor, LastEventId, Position, Resume};
use crate::engine::memory::{MemoryEngine, MemoryLimits};
use crate::engine::{Engine, EngineError, GapReason, HistoryRead, PublishAck};
use crate::event::{Event, EventError, Prepared, Published, Publisher};
use crate::hub::Hub;
use crate::hub::connection::{ConnShared, KillSwitch, SseBody};
use crate::sse;

/// A publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("a batch may hold at most {limit} events, this one has {size}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("the batch is empty")]
    EmptyBatch,
    #[error("event {index} of the batch: {source}")]
    InBatch { index: usize, source: EventError },
    #[error(transparent)]
    Engine(#[from] EngineError),
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
    #[error("server at capacity")]
    AtCapacity,
    #[error("the server is shutting down")]
    Draining,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// How a client asked for its stream.
#[derive(Clone, Debug, Default)]
pub struct StreamRequest {
    pub channels: Vec<ChannelName>,
    /// The `Last-Event-ID` header or `lastEventId` query value, if any.
    pub last_event_id: Option<String>,
    /// Send `event: <type>` lines (for `addEventListener`) instead of unnamed events.
    pub named: bool,
    pub user_id: Option<Arc<str>>,
    /// Lets the hub tear down an HTTP/1.1 connection whose reader stalled.
    pub kill: Option<KillSwitch>,
}

struct Inner {
    config: Config,
    hub: Arc<Hub>,
    engine: Arc<dyn Engine>,
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
    pub fn new(config: Config) -> Result<Self, crate::config::ConfigError> {
        config.validate()?;
        let hub = Arc::new(Hub::new());
        let limits = MemoryLimits {
            history_size: config.history_size,
            history_ttl: config.history_ttl,
        };
        let engine = Arc::new(MemoryEngine::new(Arc::clone(&hub), limits));
        Ok(Self::with_engine(config, hub, engine))
    }

    /// A node with an engine built by the caller around `hub`.
    pub fn with_engine(config: Config, hub: Arc<Hub>, engine: Arc<dyn Engine>) -> Self {
        let node_id = config.node_id.clone().unwrap_or_else(|| {
            let id = crate::ids::new_id();
            format!("node-{}", &id[id.len() - 8..]).to_lowercase()
        });
        let inner = Arc::new(Inner {
            config,
            hub,
            engine,
            node_id,
            started: Instant::now(),
            draining: AtomicBool::new(false),
        });
        tokio::spawn(maintenance(Arc::downgrade(&inner)));
        Self { inner }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
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

    /// Publishes one event to `channels` (one event, several channels: each subscriber
    /// receives it once).
    pub async fn publish(
        &self,
        channels: Vec<ChannelName>,
        event: Event,
        publisher: &Publisher,
    ) -> Result<PublishAck, PublishError> {
        let mut acks = self
            .publish_batch(vec![(channels, event)], publisher)
            .await?;
        acks.pop().ok_or(PublishError::EmptyBatch)
    }

    /// Publishes a batch in order; either every event is accepted or none is.
    pub async fn publish_batch(
        &self,
        batch: Vec<(Vec<ChannelName>, Event)>,
        publisher: &Publisher,
    ) -> Result<Vec<PublishAck>, PublishError> {
        let cfg = &self.inner.config;
        if batch.is_empty() {
            return Err(PublishError::EmptyBatch);
        }
        if batch.len() > cfg.max_batch {
            return Err(PublishError::BatchTooLarge {
                size: batch.len(),
                limit: cfg.max_batch,
            });
        }
        let single = batch.len() == 1;
        let prepared = batch
            .into_iter()
            .enumerate()
            .map(|(index, (channels, event))| {
                Prepared::new(channels, event, publisher, cfg.max_payload_bytes).map_err(|source| {
                    if single {
                        PublishError::Event(source)
                    } else {
                        PublishError::InBatch { index, source }
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.inner.engine.publish(prepared).await?)
    }

    /// Sends an event to one user's private channel `user:<id>` (document 000's `SendToUser`).
    pub async fn send_to_user(
        &self,
        user_id: &str,
        event: Event,
    ) -> Result<PublishAck, PublishError> {
        self.publish(
            vec![ChannelName::user(user_id)?],
            event,
            &Publisher::default(),
        )
        .await
    }

    /// Sends one event to several users' private channels.
    pub async fn send_to_users(
        &self,
        user_ids: &[&str],
        event: Event,
    ) -> Result<PublishAck, PublishError> {
        let channels = user_ids
            .iter()
            .map(|id| ChannelName::user(id))
            .collect::<Result<Vec<_>, _>>()?;
        self.publish(channels, event, &Publisher::default()).await
    }

    /// Sends an event on the `system` channel, which every client may follow.
    pub async fn send_to_all(&self, event: Event) -> Result<PublishAck, PublishError> {
        self.publish(vec![ChannelName::system()], event, &Publisher::default())
            .await
    }

    /// Sends an event to a room: `broadcast("general", ..)` and
    /// `broadcast("channel:general", ..)` both reach `channel:general`. Only rooms: a name
    /// in another namespace (`user:42`, `system`) is refused, so a room name taken from a
    /// request cannot reach a private channel.
    pub async fn broadcast(&self, room: &str, event: Event) -> Result<PublishAck, PublishError> {
        let name = room.strip_prefix("channel:").unwrap_or(room);
        let channel = ChannelName::parse(&format!("{ROOM_NAMESPACE}:{name}"))?;
        self.publish(vec![channel], event, &Publisher::default())
            .await
    }

    /// Tells every open stream to reconnect after a random delay, and refuses new ones.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        let base = self.inner.config.retry.as_millis() as u64;
        let window = (self.inner.config.drain_reconnect_window.as_millis() as u64).max(1);
        self.inner.hub.drain(|| base + fastrand::u64(0..window));
    }

    /// Opens an SSE stream: registers the connection, resumes it from history if asked,
    /// and returns the response body that delivers everything after.
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
            return Err(SubscribeError::TooManyChannels {
                limit: cfg.max_channels_per_connection,
            });
        }
        if self.inner.hub.connection_count() >= cfg.max_connections {
            return Err(SubscribeError::AtCapacity);
        }

        let hub = &self.inner.hub;
        let conn_id: Arc<str> = Arc::from(format!("c{}", crate::ids::new_id().to_lowercase()));
        let shared = Arc::new(ConnShared::new(
            hub.next_key(),
            conn_id.clone(),
            req.user_id,
            cfg.buffer_size,
            req.kill,
        ));
        // Registered before history is read, so nothing published in between is missed;
        // what is both replayed and queued is dropped by the body's cursor.
        let activated = hub.register(Arc::clone(&shared), &channels);
        let mut body = SseBody::new(
            shared,
            Arc::clone(hub),
            channels.clone(),
            Cursor::default(),
            req.named,
        );
        self.inner.engine.watch(&activated).await?;

        let parsed = req.last_event_id.as_deref().map(LastEventId::parse);
        let mut cursor = Cursor {
            positions: vec![Position::default(); channels.len()],
        };
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
            match self.inner.engine.history(ch, after).await? {
                HistoryRead::Events { events, head } => match (resume, after) {
                    (Resume::From(_), Some(p)) => {
                        cursor.positions[i] = p;
                        for ev in events {
                            let pos = ev.copy_on(ch.as_str()).map_or(head, |c| c.position);
                            missed.push((pos, i, ev));
                        }
                    }
                    (Resume::Unknown, _) => {
                        cursor.positions[i] = head;
                        gaps.push((i, GapReason::UnknownPosition.as_str()));
                    }
                    _ => cursor.positions[i] = head,
                },
                HistoryRead::Gap { reason, head } => {
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
        sse::one_off_event(
            &mut pre,
            "connected",
            &id,
            connected.to_string().as_bytes(),
            named,
        );
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
        write_replay(&mut pre, &channels, &mut cursor, missed, named);
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
        let Some(copy) = ev.copy_on(channels[i].as_str()) else {
            continue;
        };
        if channels.len() == 1 {
            out.extend_from_slice(&copy.frame.with_id(named));
        } else {
            copy.frame
                .put_with_own_id(out, &cursor.encode(channels), named);
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
        let max_stalled = cfg
            .client_timeout
            .as_millis()
            .div_ceil(period.as_millis().max(1)) as u32;
        inner.hub.sweep(max_stalled.max(1));
        inner.engine.sweep();
    }
}
