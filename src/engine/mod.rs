//! Engines: where a publish is accepted, ordered and kept, and how it reaches every node.
//!
//! An [`Engine`] sits between publishing and the hub. It gives each event its position in
//! each of its channels, keeps bounded history for resume, and delivers accepted events to
//! the hub of every node that has subscribers ([`crate::hub::Hub::deliver`]). A publish
//! succeeds only once the engine has the event. The HTTP layer and the library API talk
//! to `dyn Engine` only, so engines can be swapped without touching them.
//!
//! An engine also holds what the nodes share besides events: AI-stream snapshots (read with
//! the head), presence, tickets, bans, per-user connection slots, and the way to run a
//! [`NodeCommand`] on the node that holds a connection.

pub mod memory;
pub(crate) mod merge;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::catalogue::PresenceStatus;
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::event::{Prepared, Published};
use crate::hub::DisconnectTarget;

/// A boxed future, as returned by [`Engine`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An engine could not do what was asked. Each variant says whose fault it is, which is
/// what the HTTP answer and the log level follow.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backend cannot be reached or did not answer as it should (Redis down, a timeout,
    /// an unexpected reply): worth a retry shortly.
    #[error("the event engine is unavailable: {0}")]
    Unavailable(String),
    /// A bounded table of the in-memory engine is full (tickets, idempotency keys, bans):
    /// worth a retry once some have expired.
    #[error("the event engine is full: {0}")]
    Full(String),
    /// A fault of this node, not of the backend or the request: no secure random source,
    /// a value it cannot encode, a command handler that failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// An idempotency key came back with a different event than the one it was first
    /// published with.
    #[error("this idempotency key was used for a different event; use a new key for a new event")]
    IdempotencyKeyReused,
}

/// An engine's counters (zero where they do not apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Publishes the engine could not accept (`redis_publish_errors`).
    pub publish_errors: u64,
    /// Times the engine reconnected to its backend.
    pub reconnects: u64,
    /// Channels the node follows on its backend, each with the point a catch-up after a
    /// reconnect would start from (a gauge).
    pub watched_channels: u64,
    /// Channels whose log (position and history) the engine holds in this process; the
    /// Redis engine keeps them in Redis, under keys that expire.
    pub channels: u64,
}

/// What an engine answers for an accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    pub id: Arc<str>,
    /// The event's position in each of its channels.
    pub positions: Vec<(ChannelName, Position)>,
}

/// Refuses a batch that names one idempotency key for two different events: checked before
/// any of it is published, so such a batch is refused whole.
pub(crate) fn check_batch_keys(batch: &[Prepared]) -> Result<(), EngineError> {
    let keyed: Vec<&crate::event::Idempotency> = batch.iter().filter_map(|p| p.idempotency.as_deref()).collect();
    for (i, a) in keyed.iter().enumerate() {
        if keyed[i + 1..].iter().any(|b| b.key == a.key && b.fingerprint != a.fingerprint) {
            return Err(EngineError::IdempotencyKeyReused);
        }
    }
    Ok(())
}

/// Why history cannot serve a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The events after that position were trimmed (size or age) or never kept here.
    HistoryExpired,
    /// The position is not one this channel ever had.
    UnknownPosition,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HistoryExpired => "history_expired",
            Self::UnknownPosition => "unknown_position",
        }
    }
}

/// The answer of [`Engine::history`], read at one instant.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    /// The channel's last position.
    pub head: Position,
    /// Every event after the requested position, oldest first (empty for a fresh read);
    /// or why history cannot say what was missed (the client must refetch state).
    pub events: Result<Vec<Arc<Published>>, GapReason>,
    /// The channel's AI streams kept for late joiners, as of `head`.
    pub streams: Vec<AiSnapshot>,
}

/// An AI token stream (`ai_chat_chunk` events sharing a `streamId`) as of its last chunk:
/// what a subscriber that joins or resumes mid-stream receives first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiSnapshot {
    pub stream_id: String,
    /// The position of the last chunk the snapshot holds.
    pub last: Position,
    /// The snapshot event's JSON: the last chunk with `text` the whole text so far and
    /// `"snapshot": true`.
    pub json: String,
}

impl AiSnapshot {
    /// Builds a snapshot from the wire JSON of the stream's last chunk and the whole text.
    pub fn from_last_chunk(stream_id: String, last: Position, chunk_json: &[u8], text: String) -> Option<Self> {
        let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(chunk_json).ok()?;
        fields.insert("text".into(), text.into());
        fields.insert("snapshot".into(), true.into());
        Some(Self { stream_id, last, json: serde_json::Value::Object(fields).to_string() })
    }
}

/// A presence entry: a user who is in a channel (with any number of connections).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEntry {
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// `online` or `away` (`offline` once gone).
    pub status: PresenceStatus,
    /// The user's open connections to the channel (0 while leaving, in the grace period).
    #[serde(default)]
    pub connections: usize,
}

/// A command for the node that holds a connection, or for every node (counts, status).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum NodeCommand {
    /// Add a channel to a live connection. `user`: the user asking (`None`: a trusted
    /// caller, an API key or the application); a user may only change their own connections.
    Join { connection: String, channel: String, user: Option<String> },
    /// Remove a channel from a live connection.
    Leave { connection: String, channel: String, user: Option<String> },
    /// Send an event to one connection alone.
    Send { connection: String, event_type: String, json: String },
    /// Count a channel's subscribers and users on each node.
    Count { channel: String },
    /// Set a user's presence status on every channel where their connections are.
    SetStatus { user: String, user_name: Option<String>, status: PresenceStatus },
    /// Close the connections `target` names, each with a last `disconnect` notice.
    Disconnect { target: DisconnectTarget, reconnect: bool, banned: bool },
}

/// A node's answer to a [`NodeCommand`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reply", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum NodeReply {
    /// Done here.
    Done,
    /// The connection is not on this node.
    NotHere,
    /// Refused, with why and a sentence for a person.
    Refused { code: CommandRefusal, message: String },
    /// This node's subscribers of the channel and the users among them.
    Count { subscribers: usize, users: Vec<String> },
    /// This node closed that many connections.
    Disconnected { connections: usize },
}

/// Why a node refused a [`NodeCommand`]. On the wire it is the snake_case name, which is
/// also the HTTP error code the refusal becomes; a name this node does not know (from a
/// newer node) reads as [`CommandRefusal::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandRefusal {
    /// The connection belongs to another user.
    NotYours,
    /// The channel is not one of that node's configuration.
    InvalidChannel,
    /// The connection follows as many channels as it may.
    TooManyChannels,
    /// That node's engine failed while doing it.
    EngineUnavailable,
    /// A refusal this node does not know.
    #[serde(other)]
    Unknown,
}

/// What runs [`NodeCommand`]s on a node (set by the node handle).
pub type CommandHandler = Arc<dyn Fn(NodeCommand) -> BoxFuture<'static, NodeReply> + Send + Sync>;

/// The contract between publishing, history and the hub.
pub trait Engine: Send + Sync + 'static {
    /// A short name for status pages (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Accepts a batch in order; resolves once the engine has every event of it.
    fn publish(&self, batch: Vec<Prepared>) -> BoxFuture<'_, Result<Vec<PublishAck>, EngineError>>;

    /// The events of `channel` after `after` (or, with `None`, just its head), with its AI
    /// streams, read at one instant.
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<Position>,
    ) -> BoxFuture<'a, Result<HistoryRead, EngineError>>;

    /// [`Engine::history`] of several channels (each after its own position), read at one
    /// instant where the engine can: then an event published to several of them is in all of
    /// their lists or in none, which a resume needs to write each event once and in every
    /// channel's order. The default reads one channel after another, which is not one
    /// instant: an engine that can read them together overrides it.
    fn histories<'a>(
        &'a self,
        reads: &'a [(ChannelName, Option<Position>)],
    ) -> BoxFuture<'a, Result<Vec<HistoryRead>, EngineError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(reads.len());
            for (channel, after) in reads {
                out.push(self.history(channel, *after).await?);
            }
            Ok(out)
        })
    }

    /// Makes sure this node receives live events of `channels` before it resolves.
    fn watch<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Stores a single-use ticket for `ttl` (cluster-wide where the engine spans nodes).
    fn put_ticket<'a>(
        &'a self,
        ticket: &'a str,
        payload: String,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Takes a ticket: the first caller gets its payload, every later one `None`.
    fn take_ticket<'a>(&'a self, ticket: &'a str) -> BoxFuture<'a, Result<Option<String>, EngineError>>;

    /// Takes one of `user`'s connection slots across every node, or answers `false` when the
    /// user already holds `limit`. Engines of one node leave the count to the hub.
    fn acquire_slot<'a>(
        &'a self,
        _user: &'a str,
        _conn: &'a str,
        _limit: usize,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async { Ok(true) })
    }

    /// Gives back a connection slot taken by [`Engine::acquire_slot`] (the connection left).
    fn release_slot<'a>(&'a self, _user: &'a str, _conn: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Runs `command` on every node, this one included, and gathers their replies.
    fn command(&self, command: NodeCommand) -> BoxFuture<'_, Result<Vec<NodeReply>, EngineError>>;

    /// Sets what runs the commands of [`Engine::command`] on this node (set once).
    fn set_command_handler(&self, handler: CommandHandler);

    /// Bans `user` for `ttl` (cluster-wide where the engine spans nodes); a later ban
    /// replaces the earlier one's expiry.
    fn ban<'a>(&'a self, user: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Lifts `user`'s ban; true if there was one.
    fn unban<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, EngineError>>;

    /// Whether `user` is banned now.
    fn is_banned<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, EngineError>>;

    /// Whether pattern subscriptions (`channel:incidents.*`) can be served.
    fn supports_patterns(&self) -> bool {
        true
    }

    /// Presence: `conn` of `user` is in `channel`. True if the user was not there before
    /// (and was not in the grace period of leaving): announce them online.
    fn presence_join<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
        user: &'a PresenceEntry,
    ) -> BoxFuture<'a, Result<bool, EngineError>>;

    /// Presence: `conn` left `channel`. A user whose last connection left is offline once
    /// `grace` has passed without a new one ([`Engine::presence_expire`] says when).
    fn presence_leave<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Presence: takes the users of `channel` whose offline is due (grace passed, or their
    /// node stopped renewing them), once: the caller announces them offline.
    fn presence_expire<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<PresenceEntry>, EngineError>>;

    /// Presence: who is in `channel`.
    fn presence_list<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<Vec<PresenceEntry>, EngineError>>;

    /// Presence: sets `user`'s status in `channel`; true if it changed (announce it).
    fn presence_set_status<'a>(
        &'a self,
        channel: &'a ChannelName,
        user: &'a str,
        status: PresenceStatus,
    ) -> BoxFuture<'a, Result<bool, EngineError>>;

    /// Presence across channels: whether `user` has a connection on any node, and their
    /// status if set (`away`).
    fn user_presence<'a>(&'a self, user: &'a str)
    -> BoxFuture<'a, Result<(bool, Option<PresenceStatus>), EngineError>>;

    /// The status `user` set across channels (`away`), if any.
    fn user_status<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<PresenceStatus>, EngineError>> {
        Box::pin(async move { Ok(self.user_presence(user).await?.1) })
    }

    /// Records `user`'s status across channels (`None` clears it).
    fn set_user_status<'a>(
        &'a self,
        user: &'a str,
        status: Option<PresenceStatus>,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Whether the engine can accept publishes now (readiness).
    fn is_healthy(&self) -> bool;

    /// Counters for status and metrics.
    fn counters(&self) -> EngineCounters {
        EngineCounters::default()
    }

    /// Periodic housekeeping (expiring history); called by the node's maintenance task.
    fn sweep(&self) {}
}
