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
use crate::config::MAX_LAST;
use crate::cursor::{Cursor, LastEventId, Position, Resume};
use crate::engine::{AiSnapshot, GapReason, HistoryRead, StartRead, merge};
use crate::event::Published;
use crate::hub::connection::{ConnShared, Emit, Opening, StreamCore};
use crate::hub::{ConnLimits, Place, Refused};
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
    /// SSE: send `event: <type>` lines (for `addEventListener`) instead of unnamed events.
    pub named: bool,
    /// Lets the hub tear down the socket of a transport whose writer stalls with its client
    /// (HTTP/1.1; see `transport`).
    pub kill: Option<KillSwitch>,
    /// Field filters (`docs/channels.md`, "Filters"): only events whose top-level `field`
    /// equals `value`, for every pair, reach the stream.
    pub filters: Vec<(String, String)>,
    /// How many of each channel's last events to write before the live ones, where the
    /// stream does not resume that channel (`?last=`).
    pub last: LastEvents,
    /// The transport it is opened for, as a user's connection list shows it (`sse`,
    /// `websocket`, `centrifugo`; `library` by default).
    pub transport: &'static str,
}

impl StreamRequest {
    pub fn new(principal: Principal, channels: Vec<ChannelName>) -> Self {
        Self {
            principal,
            channels,
            last_event_id: None,
            named: false,
            kill: None,
            filters: Vec::new(),
            last: LastEvents::default(),
            transport: "library",
        }
    }
}

/// State on subscribe: how many of each channel's last events a new stream gets before its
/// live ones. A channel's own count wins over `all`, which wins over its namespace's
/// `deliver_last`; at most [`MAX_LAST`]. A channel the stream resumes (its position is in
/// `Last-Event-ID`) gets what it missed instead; a channel that cannot resume gets its
/// `reset`, then its last events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastEvents {
    /// For every channel of the stream (`?last=5`); `Some(0)` turns the namespaces'
    /// `deliver_last` off.
    pub all: Option<usize>,
    /// For one channel (`?last=channel:news:1`).
    pub per_channel: Vec<(ChannelName, usize)>,
}

impl LastEvents {
    /// None, whatever the namespaces say.
    pub fn none() -> Self {
        Self { all: Some(0), per_channel: Vec::new() }
    }

    /// How many of `channel`'s last events a stream gets, `deliver_last` its namespace's.
    fn of(&self, channel: &ChannelName, deliver_last: usize) -> usize {
        let own = self.per_channel.iter().find(|(c, _)| c == channel).map(|(_, n)| *n);
        own.or(self.all).unwrap_or(deliver_last).min(MAX_LAST)
    }
}

/// What a transport that authorizes on its own (Centrifugo's protocol) adds to a
/// [`StreamRequest`].
#[derive(Debug, Default)]
pub struct Admission<'a> {
    /// Channels the application granted already (a verified subscription token, a token's
    /// server-side channels): the channel policy is not asked, as for a live join by the
    /// application.
    pub granted: &'a [ChannelName],
    /// The connection's id, when the transport told its client one before the connection
    /// opened (from [`new_connection_id`]).
    pub id: Option<Arc<str>>,
    /// What the application says of the connection (a Centrifugo token's `info`): its
    /// `join` and `leave` events carry it.
    pub info: Option<Arc<serde_json::Value>>,
    /// The place in the node's limits the client held until now ([`Herald::admit_client`]),
    /// which the connection takes over as it registers. Refused before that, the client
    /// keeps it.
    pub place: Option<&'a mut Option<Place>>,
}

/// A fresh connection id (`c` and a lowercase ULID), as `connectionId` shows it.
pub fn new_connection_id() -> Arc<str> {
    Arc::from(format!("c{}", crate::ids::new_id().to_lowercase()))
}

/// Why a resume cannot say what was missed on a pattern: patterns keep no position.
pub(super) const PATTERN_NOT_RESUMABLE: &str = "pattern_not_resumable";

impl Herald {
    /// Opens an SSE stream: checks the principal against every channel, registers the
    /// connection, resumes it from history if asked, and returns the body that delivers
    /// everything after.
    pub async fn open_stream(&self, req: StreamRequest) -> Result<SseBody, SubscribeError> {
        let mut out = SseOut::new(req.named);
        out.put_retry(self.config().retry.as_millis() as u64);
        let core = self.open(req, Admission::default(), &mut out).await?;
        Ok(SseBody::new(core, out))
    }

    /// Opens a connection for a transport of the application's own: the same checks, resume
    /// and live events as an SSE stream, as messages.
    pub async fn connect(&self, req: StreamRequest) -> Result<Connection, SubscribeError> {
        self.connect_admitted(req, Admission::default()).await
    }

    /// [`Herald::connect`] for a transport that authorized part of it already
    /// ([`Admission`]).
    pub async fn connect_admitted(
        &self,
        req: StreamRequest,
        admission: Admission<'_>,
    ) -> Result<Connection, SubscribeError> {
        let mut out = MessageOut::default();
        let core = self.open(req, admission, &mut out).await?;
        Ok(Connection::new(core, out))
    }

    /// Opens a connection, step by step: nothing is registered until the request is
    /// admitted, and nothing live is written before what the connection missed.
    async fn open(
        &self,
        req: StreamRequest,
        admission: Admission<'_>,
        out: &mut impl Emit,
    ) -> Result<StreamCore, SubscribeError> {
        let StreamRequest { principal, channels, last_event_id, named: _, kill, filters, last, transport } = req;
        let mut channels = self.admit(&principal, channels, admission.granted)?;
        // Announced as a join where a namespace has `join_leave`, and its close as a leave.
        self.charge_announced_join(&principal, &channels)
            .map_err(|retry_after| SubscribeError::JoinsRateLimited { retry_after })?;
        // A place taken over gives up its slot across nodes as the connection takes its own.
        let place_slot = admission.place.as_deref().and_then(Option::as_ref).and_then(Place::slot).cloned();
        let (shared, mut core) = self.register(&principal, &mut channels, kill, filters, transport, admission)?;
        self.claim_user_slot(&principal, &shared.id, place_slot).await?;
        // Every channel, not only those this stream was first on: a channel another stream
        // opened a moment ago may still have its SUBSCRIBE in flight, and history read before
        // it took effect would miss what is published in between. The engine answers for a
        // channel it follows at once, after any subscription queued before.
        self.engine().watch(&channels).await?;
        let last_event_id = last_event_id.as_deref().map(LastEventId::parse);
        let missed = self.read_missed(&channels, &last_event_id, &last).await?;
        self.write_preamble(out, &shared, &channels, &missed, last_event_id.is_some());
        missed.start(&mut core);
        self.announce_arrival(&shared, &channels).await;
        self.report_opened(&shared, &channels);
        Ok(core)
    }

    /// The request's channels, each once, if this node takes the stream and the principal
    /// may follow every one of them (the `granted` ones without asking the policy).
    fn admit(
        &self,
        principal: &Principal,
        requested: Vec<ChannelName>,
        granted: &[ChannelName],
    ) -> Result<Vec<ChannelName>, SubscribeError> {
        let cfg = self.config();
        if self.is_draining() {
            return Err(SubscribeError::Draining);
        }
        let mut channels: Vec<ChannelName> = Vec::with_capacity(requested.len());
        for ch in requested {
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
        for ch in channels.iter().filter(|ch| !granted.contains(ch)) {
            self.policies().can_subscribe(principal, ch)?;
        }
        Ok(channels)
    }

    /// Registers the connection with the hub, within this node's limits. Registered before
    /// history is read, so nothing published in between is missed; what is both replayed
    /// and queued is dropped by the cursor. From here on, dropping the returned reader
    /// unregisters the connection.
    fn register(
        &self,
        principal: &Principal,
        channels: &mut [ChannelName],
        kill: Option<KillSwitch>,
        filters: Vec<(String, String)>,
        transport: &'static str,
        admission: Admission<'_>,
    ) -> Result<(Arc<ConnShared>, StreamCore), SubscribeError> {
        let cfg = self.config();
        let hub = self.hub();
        let conn_id = admission.id.unwrap_or_else(new_connection_id);
        let (user, deadline) = match principal {
            Principal::User(u) => (Some((Arc::clone(&u.id), u.name.clone())), u.session_deadline_ms(cfg.auth.leeway)),
            _ => (None, None),
        };
        let shared = Arc::new(
            ConnShared::new(conn_id, user, cfg.buffer_size, kill, filters)
                .expiring_at(deadline)
                .over(transport)
                .with_slow_consumer(self.policies().slow_consumer(channels.iter()))
                .with_info(admission.info),
        );
        let limits = self.conn_limits();
        let place = admission.place.and_then(Option::take);
        hub.register_placed(Arc::clone(&shared), channels, limits, place).map_err(|r| self.refusal(r))?;
        let core = StreamCore::new(Arc::clone(&shared), Arc::clone(hub), channels);
        Ok((shared, core))
    }

    /// The node's connection limits.
    fn conn_limits(&self) -> ConnLimits {
        let cfg = self.config();
        ConnLimits { max_connections: cfg.max_connections, max_per_user: cfg.max_connections_per_user }
    }

    /// Holds a place in this node's connection limits for a client of `principal` that has
    /// no connection yet (a Centrifugo socket before its first subscription): counted as a
    /// connection against `max_connections` and the user's `max_connections_per_user` until
    /// it is dropped, or until the client's connection takes it over ([`Admission::place`]).
    ///
    /// `id` is the id its connection will have: a disconnect that names it, or the user,
    /// cuts the place ([`Place::cut`]).
    fn hold_place(&self, id: &Arc<str>, principal: &Principal) -> Result<Place, SubscribeError> {
        let user = principal.user_id().cloned();
        self.hub().hold_place(Arc::clone(id), user, self.conn_limits()).map_err(|r| self.refusal(r))
    }

    /// [`Herald::hold_place`] for a client that connects: refused while its user is banned,
    /// as a stream is. Checked once the place is held: a disconnect with a ban bans first,
    /// then cuts what is held, so a client that connects meanwhile is either cut or refused
    /// here.
    ///
    /// A user's place also takes a slot of its own among the user's connections across nodes
    /// (Redis), as a stream does, given back when the place is dropped; the client's
    /// connection takes it over with the place.
    pub(crate) async fn admit_client(&self, id: &Arc<str>, principal: &Principal) -> Result<Place, SubscribeError> {
        let mut place = self.hold_place(id, principal)?;
        let Some(user) = principal.user_id() else { return Ok(place) };
        // A slot of its own, not the connection's id: a place given back and another taken
        // for the same client (after a refused subscription) never touch each other's. Its
        // release is set before it is taken, so that a client gone while it is being taken
        // gives it back too (after it, on the same connection to Redis).
        let slot: Arc<str> = Arc::from(format!("p{}", crate::ids::new_id().to_lowercase()));
        let (herald, owner, released) = (self.clone(), Arc::clone(user), Arc::clone(&slot));
        place.hold_slot(Arc::clone(&slot), move || {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { herald.release_place_slot(&owner, &released).await });
            }
        });
        self.take_user_slot(user, &slot, None).await?;
        Ok(place)
    }

    fn refusal(&self, refused: Refused) -> SubscribeError {
        match refused {
            Refused::AtCapacity => SubscribeError::AtCapacity,
            Refused::UserLimit => SubscribeError::UserLimit { limit: self.config().max_connections_per_user },
        }
    }

    /// For a user: refuses a banned one, and takes one of the user's connection slots across
    /// nodes (Redis; the hub has already checked this node), in place of `place_slot`, the
    /// slot of the place the connection took over. Refused, the place's slot is given back.
    async fn claim_user_slot(
        &self,
        principal: &Principal,
        conn_id: &str,
        place_slot: Option<Arc<str>>,
    ) -> Result<(), SubscribeError> {
        let Some(user) = principal.user_id() else { return Ok(()) };
        // Checked once registered: a disconnect with a ban bans first, then cuts what is
        // registered, so a stream that opens meanwhile is either cut or refused here.
        let claimed = self.take_user_slot(user, conn_id, place_slot.as_deref()).await;
        if claimed.is_err()
            && let Some(slot) = &place_slot
        {
            self.engine().release_slot(user, slot).await;
        }
        claimed
    }

    /// Refuses `user` while banned, else takes `slot` among the user's connection slots
    /// across nodes (in place of `replacing`), or refuses the user past the limit.
    async fn take_user_slot(&self, user: &str, slot: &str, replacing: Option<&str>) -> Result<(), SubscribeError> {
        if self.engine().is_banned(user).await? {
            return Err(SubscribeError::Banned);
        }
        let limit = self.config().max_connections_per_user;
        if !self.engine().acquire_slot(user, slot, limit, replacing).await? {
            return Err(SubscribeError::UserLimit { limit });
        }
        Ok(())
    }

    /// Reads where the connection starts in each channel and what it missed since
    /// `last_event_id` (`None`: none was given; `Some(None)`: one that is not Herald's), and
    /// the last events of the channels it does not resume, as `last` asks.
    async fn read_missed(
        &self,
        channels: &[ChannelName],
        last_event_id: &Option<Option<LastEventId>>,
        last: &LastEvents,
    ) -> Result<Missed, SubscribeError> {
        let mut missed = Missed::new(channels.len());
        let mut resumes: Vec<(usize, Resume)> = Vec::with_capacity(channels.len());
        let mut reads: Vec<StartRead> = Vec::with_capacity(channels.len());
        for (i, ch) in channels.iter().enumerate() {
            if ch.is_pattern() {
                if last_event_id.is_some() {
                    missed.gaps.push((i, PATTERN_NOT_RESUMABLE));
                }
                continue;
            }
            let resume = match last_event_id {
                None => Resume::Fresh,
                Some(None) => Resume::Unknown,
                Some(Some(id)) => id.resume_for(i, ch.as_str()),
            };
            let after = match resume {
                Resume::From(p) => Some(p),
                Resume::Fresh | Resume::Unknown => None,
            };
            resumes.push((i, resume));
            let deliver_last = self.policies().of(ch).map_or(0, |ns| ns.deliver_last);
            reads.push(StartRead { channel: ch.clone(), after, last: last.of(ch, deliver_last) });
        }
        // All channels at one instant, so that an event on several of them is in every one
        // of their lists or in none (see `write_replay`).
        let read = self.engine().read_starts(&reads).await?;
        for ((i, resume), read) in resumes.into_iter().zip(read) {
            missed.take(i, channels[i].as_str(), resume, read);
        }
        missed.gaps.sort_by_key(|(i, _)| *i);
        Ok(missed)
    }

    /// Writes the `connected` event (with the connection's user, if it has one) and a `reset`
    /// for each channel that cannot be resumed, all with the id of the connection's start,
    /// and counts a resume.
    fn write_preamble(
        &self,
        out: &mut impl Emit,
        shared: &ConnShared,
        channels: &[ChannelName],
        missed: &Missed,
        resuming: bool,
    ) {
        let conn_id = &*shared.id;
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut connected = json!({
            "type": "connected",
            "connectionId": conn_id,
            "nodeId": self.node_id(),
            "channels": channels.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
            "timestamp": now,
        });
        if let Some(user) = &shared.user_id {
            connected["userId"] = json!(user);
            connected["userName"] = json!(shared.user_name);
        }
        let id = missed.cursor.encode(channels);
        out.notice("connected", &id, connected.to_string().as_bytes());
        if resuming {
            let m = self.metrics();
            let counter = if missed.gaps.is_empty() { &m.resumes_replayed } else { &m.resumes_reset };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        for &(i, reason) in &missed.gaps {
            let reset = json!({"type": "reset", "channel": channels[i].as_str(), "reason": reason, "timestamp": now});
            tracing::debug!(connection = %conn_id, channel = %channels[i], reason, "resume not possible; sent reset");
            out.notice("reset", &id, reset.to_string().as_bytes());
        }
    }
}

/// What a new connection missed, read from history: where it starts in each channel, and
/// what is written before its live events.
struct Missed {
    /// Where the connection is in each channel once the missed events are written.
    cursor: Cursor,
    /// Channels that cannot be resumed, and why (each gets a `reset`), in channel order.
    gaps: Vec<(usize, &'static str)>,
    /// Each channel's missed events, in that channel's order.
    events: Vec<merge::List>,
    /// Each channel's AI streams the client is behind on: a snapshot stands for their chunks.
    behind: Vec<Vec<String>>,
    /// The AI-stream snapshots to write.
    snapshots: Vec<AiSnapshot>,
}

impl Missed {
    fn new(channels: usize) -> Self {
        Self {
            cursor: Cursor::at_start(channels),
            gaps: Vec::new(),
            events: vec![merge::List::new(); channels],
            behind: vec![Vec::new(); channels],
            snapshots: Vec::new(),
        }
    }

    /// Takes channel `i`'s history `read`, as its `resume` asked for it: what it missed
    /// after its position, or (where it does not resume) its last events.
    fn take(&mut self, i: usize, ch: &str, resume: Resume, read: HistoryRead) {
        self.cursor.positions[i] = read.head;
        match (resume, read.events) {
            (Resume::From(p), Ok(events)) => {
                // Streams the client saw all of need no snapshot; for the others, the
                // snapshot stands for every missed chunk.
                let streams: Vec<AiSnapshot> = read.streams.into_iter().filter(|s| s.last > p).collect();
                self.replay(i, ch, p, events, streams);
            }
            (Resume::Fresh, Ok(_)) => self.start_recent(i, ch, read.recent, read.streams),
            (Resume::Unknown, Ok(_)) => {
                self.gaps.push((i, GapReason::UnknownPosition.as_str()));
                self.start_recent(i, ch, read.recent, read.streams);
            }
            (_, Err(reason)) => {
                self.gaps.push((i, reason.as_str()));
                self.start_recent(i, ch, read.recent, read.streams);
            }
        }
    }

    /// Channel `i` starts just before its last events (`recent`, none for a stream that
    /// did not ask for them) and replays them. The client saw none of the AI streams, so
    /// each snapshot stands for its chunks among them.
    fn start_recent(&mut self, i: usize, ch: &str, recent: Vec<Arc<Published>>, streams: Vec<AiSnapshot>) {
        match recent.first().and_then(|ev| ev.copy_on(ch)).map(|c| c.position) {
            Some(first) => self.replay(i, ch, first.prev(), recent, streams),
            None => self.snapshots.extend(streams),
        }
    }

    /// Channel `i` starts at `from` and replays `events` (those after it) with `streams`,
    /// whose snapshots stand for their chunks among the events.
    fn replay(&mut self, i: usize, ch: &str, from: Position, events: Vec<Arc<Published>>, streams: Vec<AiSnapshot>) {
        self.cursor.positions[i] = from;
        self.behind[i] = streams.iter().map(|s| s.stream_id.clone()).collect();
        self.events[i] = events.into_iter().filter_map(|ev| Some((ev.copy_on(ch)?.position, ev))).collect();
        self.snapshots.extend(streams);
    }

    /// Starts the connection's reader where the missed events end, with them (then the
    /// snapshots) to write before anything queued: the reader writes them a piece at a time,
    /// as its client reads ([`Opening`]).
    fn start(self, core: &mut StreamCore) {
        let (opening, end) = Opening::new(self.cursor, self.events, self.behind, self.snapshots);
        core.set_cursor(end.cursor);
        for id in end.split {
            core.remember_split(id);
        }
        if !opening.is_empty() {
            core.replay_first(opening);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Published;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_resumed_channel_starts_at_its_id_and_a_channel_that_cannot_resume_starts_at_its_head_with_a_gap() {
        let (a, b) = (ch("channel:a"), ch("channel:b"));
        let snap = |id: &str, ms| AiSnapshot { stream_id: id.into(), last: Position::new(ms, 0), json: "{}".into() };
        let mut missed = Missed::new(2);
        let read = HistoryRead {
            head: Position::new(9, 0),
            events: Ok(vec![Published::at("x", &[(&a, 7)])]),
            streams: vec![snap("seen", 4), snap("behind", 8)],
            recent: Vec::new(),
        };
        missed.take(0, a.as_str(), Resume::From(Position::new(5, 0)), read);
        assert_eq!(missed.cursor.positions[0], Position::new(5, 0), "the replay moves it on from there");
        assert_eq!(missed.events[0].len(), 1);
        assert_eq!(missed.behind[0], ["behind"], "a stream the client saw all of needs no snapshot");
        let read = HistoryRead {
            head: Position::new(3, 0),
            events: Ok(Vec::new()),
            streams: vec![snap("s", 2)],
            recent: Vec::new(),
        };
        missed.take(1, b.as_str(), Resume::Unknown, read);
        assert_eq!(missed.cursor.positions[1], Position::new(3, 0));
        assert_eq!(missed.gaps, [(1, "unknown_position")]);
        let snapshots: Vec<&str> = missed.snapshots.iter().map(|s| s.stream_id.as_str()).collect();
        assert_eq!(snapshots, ["behind", "s"]);
    }
}
