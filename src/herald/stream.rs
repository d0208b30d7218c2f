//! Opening a connection: policy checks, registration, resume from history, AI-stream
//! snapshots, and everything written before the live events.
//!
//! The same steps serve an SSE stream ([`Herald::open_stream`]) and a connection for
//! another transport ([`Herald::connect`]); only the output differs ([`Emit`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;

use super::{Herald, SubscribeError};
use crate::auth::Principal;
use crate::channel::ChannelName;
use crate::cursor::{Cursor, LastEventId, Position, Resume};
use crate::engine::{AiSnapshot, GapReason};
use crate::event::{Published, fields_match};
use crate::hub::connection::{ConnShared, Connection, Emit, KillSwitch, MessageOut, SseBody, SseOut, StreamCore};
use crate::hub::{ConnLimits, Refused};

/// How a client asked for its stream.
#[derive(Clone, Debug)]
pub struct StreamRequest {
    pub principal: Principal,
    /// Channels and patterns (`channel:incidents.*`).
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

/// Why a resume cannot say what was missed on a pattern: patterns keep no position.
const PATTERN_NOT_RESUMABLE: &str = "pattern_not_resumable";

impl Herald {
    /// Opens an SSE stream: checks the principal against every channel, registers the
    /// connection, resumes it from history if asked, and returns the body that delivers
    /// everything after.
    pub async fn open_stream(&self, req: StreamRequest) -> Result<SseBody, SubscribeError> {
        let named = req.named;
        let mut out = SseOut::new(named);
        out.put_retry(self.config().retry.as_millis() as u64);
        let core = self.open(req, &mut out).await?;
        let preamble = out.take().unwrap_or_default();
        Ok(SseBody::new(core, named, preamble))
    }

    /// Opens a connection for a transport of the application's own (document 000/001's
    /// `Register`): the same checks, resume and live events as an SSE stream, as messages.
    pub async fn connect(&self, req: StreamRequest) -> Result<Connection, SubscribeError> {
        let mut out = MessageOut::default();
        let core = self.open(req, &mut out).await?;
        Ok(Connection::new(core, out))
    }

    async fn open(&self, req: StreamRequest, out: &mut impl Emit) -> Result<StreamCore, SubscribeError> {
        let cfg = self.config();
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
        if channels.iter().any(ChannelName::is_pattern) && !self.engine().supports_patterns() {
            return Err(SubscribeError::PatternsUnsupported);
        }
        for ch in &channels {
            self.policies().can_subscribe(&req.principal, ch)?;
        }

        let hub = self.hub();
        let conn_id: Arc<str> = Arc::from(format!("c{}", crate::ids::new_id().to_lowercase()));
        let user = match &req.principal {
            Principal::User(u) => Some((Arc::clone(&u.id), u.name.clone())),
            _ => None,
        };
        let shared = Arc::new(ConnShared::new(
            hub.next_key(),
            conn_id.clone(),
            user,
            cfg.buffer_size,
            req.kill,
            req.filters.into_boxed_slice(),
        ));
        let limits = ConnLimits { max_connections: cfg.max_connections, max_per_user: cfg.max_connections_per_user };
        // Registered before history is read, so nothing published in between is missed;
        // what is both replayed and queued is dropped by the cursor.
        hub.register(Arc::clone(&shared), &mut channels, limits).map_err(|r| match r {
            Refused::AtCapacity => SubscribeError::AtCapacity,
            Refused::UserLimit => SubscribeError::UserLimit { limit: cfg.max_connections_per_user },
        })?;
        // From here on, dropping `core` unregisters the connection.
        let mut core = StreamCore::new(Arc::clone(&shared), Arc::clone(hub), &channels);
        if let Some(user) = req.principal.user_id() {
            // Across nodes (Redis); the hub has already checked this node.
            if !self.engine().acquire_slot(user, &conn_id, cfg.max_connections_per_user).await? {
                return Err(SubscribeError::UserLimit { limit: cfg.max_connections_per_user });
            }
        }
        // Every channel, not only those this stream was first on: a channel another stream
        // opened a moment ago may still have its SUBSCRIBE in flight, and history read before
        // it took effect would miss what is published in between. The engine answers for a
        // channel it follows at once, after any subscription queued before.
        self.engine().watch(&channels).await?;

        let parsed = req.last_event_id.as_deref().map(LastEventId::parse);
        let mut cursor = Cursor::at_start(channels.len());
        let mut gaps: Vec<(usize, &'static str)> = Vec::new();
        let mut missed: Vec<(Position, usize, Arc<Published>)> = Vec::new();
        let mut snapshots: Vec<AiSnapshot> = Vec::new();
        for (i, ch) in channels.iter().enumerate() {
            if ch.is_pattern() {
                if parsed.is_some() {
                    gaps.push((i, PATTERN_NOT_RESUMABLE));
                }
                continue;
            }
            let resume = match &parsed {
                None => Resume::Fresh,
                Some(None) => Resume::Unknown,
                Some(Some(id)) => id.resume_for(i, ch.as_str()),
            };
            let after = match resume {
                Resume::From(p) => Some(p),
                Resume::Fresh | Resume::Unknown => None,
            };
            let read = self.engine().history(ch, after).await?;
            cursor.positions[i] = read.head;
            match (resume, read.events) {
                (Resume::From(p), Ok(events)) => {
                    cursor.positions[i] = p;
                    // Streams the client saw all of need no snapshot; for the others, the
                    // snapshot stands for every missed chunk.
                    let behind: Vec<AiSnapshot> = read.streams.into_iter().filter(|s| s.last > p).collect();
                    for ev in events {
                        if ev.ai_stream_id().is_some_and(|sid| behind.iter().any(|s| s.stream_id == sid)) {
                            continue;
                        }
                        let pos = ev.copy_on(ch.as_str()).map_or(read.head, |c| c.position);
                        missed.push((pos, i, ev));
                    }
                    snapshots.extend(behind);
                }
                (Resume::Fresh, Ok(_)) => snapshots.extend(read.streams),
                (Resume::Unknown, Ok(_)) => {
                    gaps.push((i, GapReason::UnknownPosition.as_str()));
                    snapshots.extend(read.streams);
                }
                (_, Err(reason)) => {
                    gaps.push((i, reason.as_str()));
                    snapshots.extend(read.streams);
                }
            }
        }

        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let connected = json!({
            "type": "connected",
            "connectionId": &*conn_id,
            "nodeId": self.node_id(),
            "channels": channels.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
            "timestamp": now,
        });
        let id = cursor.encode(&channels);
        out.notice("connected", &id, connected.to_string().as_bytes());
        if parsed.is_some() {
            let m = self.metrics();
            let counter = if gaps.is_empty() { &m.resumes_replayed } else { &m.resumes_reset };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        for (i, reason) in gaps {
            let reset = json!({"type": "reset", "channel": channels[i].as_str(), "reason": reason, "timestamp": now});
            tracing::debug!(connection = %conn_id, channel = %channels[i], reason, "resume not possible; sent reset");
            out.notice("reset", &id, reset.to_string().as_bytes());
        }
        let filters = shared.filters.clone();
        write_replay(out, &channels, &mut cursor, missed, &filters);
        write_snapshots(out, &cursor.encode(&channels), snapshots, &filters);
        core.set_cursor(cursor);
        self.announce_arrival(&shared, &channels).await;
        Ok(core)
    }
}

/// Writes missed events in position order, each once, with the cursor after it as its id.
fn write_replay(
    out: &mut impl Emit,
    channels: &[ChannelName],
    cursor: &mut Cursor,
    mut missed: Vec<(Position, usize, Arc<Published>)>,
    filters: &[(String, String)],
) {
    missed.sort_by_key(|m| (m.0, m.1));
    // An event on several of the connection's channels appears once per channel (and, from
    // some engines, as separate copies): advance every one of those channels together.
    let mut by_id: HashMap<Arc<str>, Vec<(usize, Position)>> = HashMap::new();
    for (pos, i, ev) in &missed {
        by_id.entry(ev.id.clone()).or_default().push((*i, *pos));
    }
    let mut id = String::new();
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
        if !filters.is_empty() && !ev.matches_on(copy, filters) {
            continue;
        }
        if channels.len() == 1 {
            out.event(&ev.event_type, copy, None);
        } else {
            id.clear();
            cursor.encode_into(channels, &mut id);
            out.event(&ev.event_type, copy, Some(&id));
        }
    }
}

/// Writes AI-stream snapshots (each an `ai_chat_chunk` marked `snapshot`) that pass the
/// connection's filters.
pub(super) fn write_snapshots(out: &mut impl Emit, id: &str, snapshots: Vec<AiSnapshot>, filters: &[(String, String)]) {
    for snap in snapshots {
        if !filters.is_empty() {
            let fields = serde_json::from_str(&snap.json).unwrap_or_default();
            if !fields_match(&fields, filters) {
                continue;
            }
        }
        out.notice(crate::event::AI_CHUNK_TYPE, id, snap.json.as_bytes());
    }
}
