//! Opening a connection: policy checks, registration, resume from history, AI-stream
//! snapshots, and everything written before the live events.
//!
//! The same steps serve an SSE stream ([`Herald::open_stream`]) and a connection for
//! another transport ([`Herald::connect`]); only the output differs ([`Emit`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;

use super::{Herald, SubscribeError};
use crate::auth::Principal;
use crate::channel::ChannelName;
use crate::cursor::{Cursor, LastEventId, Position, Resume};
use crate::engine::{AiSnapshot, GapReason, merge};
use crate::event::fields_match;
use crate::hub::connection::{ConnShared, Emit, StreamCore, event_id};
use crate::hub::{ConnLimits, Refused};
use crate::transport::messages::MessageOut;
use crate::transport::sse::SseOut;
use crate::transport::{Connection, KillSwitch, SseBody};

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
    /// Field filters (`docs/channels.md`, "Filters"): only events whose top-level `field`
    /// equals `value`, for every pair, reach the stream.
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
        let mut out = SseOut::new(req.named);
        out.put_retry(self.config().retry.as_millis() as u64);
        let core = self.open(req, &mut out).await?;
        Ok(SseBody::new(core, out))
    }

    /// Opens a connection for a transport of the application's own: the same checks, resume
    /// and live events as an SSE stream, as messages.
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
        let shared = Arc::new(
            ConnShared::new(
                hub.next_key(),
                conn_id.clone(),
                user,
                cfg.buffer_size,
                req.kill,
                req.filters.into_boxed_slice(),
            )
            .expiring_at(match &req.principal {
                Principal::User(u) => u.session_deadline_ms(cfg.auth.leeway),
                _ => None,
            }),
        );
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
            // Checked once registered: a disconnect with a ban bans first, then cuts what is
            // registered, so a stream that opens meanwhile is either cut or refused here.
            if self.engine().is_banned(user).await? {
                return Err(SubscribeError::Banned);
            }
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
        let mut resumes: Vec<(usize, Resume)> = Vec::with_capacity(channels.len());
        let mut reads: Vec<(ChannelName, Option<Position>)> = Vec::with_capacity(channels.len());
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
            resumes.push((i, resume));
            reads.push((ch.clone(), after));
        }
        // All channels at one instant, so that an event on several of them is in every one
        // of their lists or in none (see `write_replay`).
        let read = self.engine().histories(&reads).await?;
        let mut missed: Vec<merge::List> = vec![merge::List::new(); channels.len()];
        let mut behind: Vec<Vec<String>> = vec![Vec::new(); channels.len()];
        let mut snapshots: Vec<AiSnapshot> = Vec::new();
        for ((i, resume), read) in resumes.into_iter().zip(read) {
            let ch = channels[i].as_str();
            cursor.positions[i] = read.head;
            match (resume, read.events) {
                (Resume::From(p), Ok(events)) => {
                    cursor.positions[i] = p;
                    // Streams the client saw all of need no snapshot; for the others, the
                    // snapshot stands for every missed chunk.
                    let streams: Vec<AiSnapshot> = read.streams.into_iter().filter(|s| s.last > p).collect();
                    behind[i] = streams.iter().map(|s| s.stream_id.clone()).collect();
                    missed[i] = events.into_iter().filter_map(|ev| Some((ev.copy_on(ch)?.position, ev))).collect();
                    snapshots.extend(streams);
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
        gaps.sort_by_key(|(i, _)| *i);

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
        let split = write_replay(out, &channels, &mut cursor, missed, &behind, &filters);
        write_snapshots(out, &cursor.encode(&channels), snapshots, &filters);
        core.set_cursor(cursor);
        for id in split {
            core.remember_split(id);
        }
        self.announce_arrival(&shared, &channels).await;
        Ok(core)
    }
}

/// Writes the missed events of each channel (`missed[i]`, in channel `i`'s order) merged so
/// that every channel's events come in that channel's order, and an event on several of the
/// connection's channels comes once, where it is in order on all of them ([`merge`]). Each
/// event's id is the cursor after it: a channel's position moves only over events of that
/// channel that were written (or passed over, see below), so a client resuming from any of
/// these ids misses nothing and gets nothing twice.
///
/// AI-stream chunks that a snapshot stands for (`behind[i]`, the streams of channel `i` the
/// client is behind on) and events the filters refuse are passed over: the cursor moves over
/// them, nothing is written.
///
/// Returns the ids of the events taken (written or passed over) that are on more channels
/// than they were read from: on Redis Cluster, where channels are read one after another,
/// their copies on the other channels may still come through the queue, one at a time, and
/// are repeats.
fn write_replay(
    out: &mut impl Emit,
    channels: &[ChannelName],
    cursor: &mut Cursor,
    missed: Vec<merge::List>,
    behind: &[Vec<String>],
    filters: &[(String, String)],
) -> Vec<Arc<str>> {
    let mut id = String::new();
    let mut split = Vec::new();
    for step in merge::merge(missed) {
        for t in &step.taken {
            if t.position > cursor.positions[t.list] {
                cursor.positions[t.list] = t.position;
            }
        }
        // Taken in head order; write the copy of the connection's first channel among them.
        let Some(t) = step.taken.iter().filter(|_| step.first).min_by_key(|t| t.list) else {
            continue;
        };
        let ev = &t.event;
        if channels.len() > 1 && usize::from(ev.fanout) > step.taken.len() {
            split.push(Arc::clone(&ev.id));
        }
        let snapshotted = ev.ai_stream_id().is_some_and(|sid| {
            step.taken.iter().any(|t| behind.get(t.list).is_some_and(|b| b.iter().any(|s| s == sid)))
        });
        let Some(copy) = ev.copy_on(channels[t.list].as_str()) else {
            continue;
        };
        if snapshotted || (!filters.is_empty() && !ev.matches_on(copy, filters)) {
            continue;
        }
        out.event(&ev.event_type, copy, event_id(channels, cursor, &mut id));
    }
    split
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Copy, Published};

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn event(id: &str, at: &[(&ChannelName, u64)]) -> Arc<Published> {
        let copies = at.iter().map(|(c, ms)| Copy::new((*c).clone(), Position::new(*ms, 0), "t", b"{}")).collect();
        Arc::new(Published::new(Arc::from(id), Arc::from("t"), copies, at.len() as u16))
    }

    fn cursor(ms: &[u64]) -> Cursor {
        Cursor { positions: ms.iter().map(|&m| Position::new(m, 0)).collect() }
    }

    #[test]
    fn a_replayed_events_id_moves_each_channel_only_over_what_was_written_on_it() {
        let channels = [ch("channel:a"), ch("channel:b")];
        let (a, b) = (&channels[0], &channels[1]);
        // Crossed writes (a cluster): `x` before `y` on a, `y` before `x` on b.
        let (x, y) = (event("x", &[(a, 10), (b, 21)]), event("y", &[(a, 11), (b, 20)]));
        let z = event("z", &[(b, 22)]);
        let mut missed = vec![merge::List::new(), merge::List::new()];
        missed[0].extend([(Position::new(10, 0), Arc::clone(&x)), (Position::new(11, 0), Arc::clone(&y))]);
        missed[1].extend([(Position::new(20, 0), y), (Position::new(21, 0), x), (Position::new(22, 0), z)]);
        let mut out = MessageOut::default();
        let mut at = cursor(&[1, 1]);
        let split = write_replay(&mut out, &channels, &mut at, missed, &[Vec::new(), Vec::new()], &[]);
        // `x` was taken from a alone when it was written: its copy on b may still come live.
        assert_eq!(split, [Arc::from("x")]);
        let ids: Vec<String> = out.queue.iter().map(|m| m.id.clone()).collect();
        let expected = [
            // `x` is written first, but b's position stays before `y`, still unwritten there.
            cursor(&[10, 1]),
            cursor(&[11, 20]),
            // `z` comes after `x`'s copy on b was passed over.
            cursor(&[11, 22]),
        ];
        assert_eq!(ids, expected.iter().map(|c| c.encode(&channels)).collect::<Vec<_>>());
        assert_eq!(at, cursor(&[11, 22]), "the live part starts after everything replayed");
    }

    #[test]
    fn filtered_events_are_passed_over_so_the_cursor_covers_them() {
        let channels = [ch("channel:a"), ch("channel:b")];
        let both = event("both", &[(&channels[0], 5), (&channels[1], 7)]);
        let mut missed = vec![merge::List::new(), merge::List::new()];
        missed[0].push_back((Position::new(5, 0), Arc::clone(&both)));
        missed[1].push_back((Position::new(7, 0), both));
        let mut out = MessageOut::default();
        let mut at = cursor(&[1, 1]);
        let filters = [("kind".to_owned(), "none".to_owned())];
        write_replay(&mut out, &channels, &mut at, missed, &[Vec::new(), Vec::new()], &filters);
        assert!(out.queue.is_empty());
        assert_eq!(at, cursor(&[5, 7]));
    }
}
