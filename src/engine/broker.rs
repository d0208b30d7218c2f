//! The broker concern of an engine: accepting publishes in order, reading history, making
//! sure this node receives a channel's live events, and carrying commands between nodes.

use std::sync::Arc;

use super::{BoxFuture, EngineError};
use crate::catalogue::PresenceStatus;
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::event::{Prepared, Published};

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

/// The answer of [`Broker::history`], read at one instant.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    /// The channel's last position.
    pub head: Position,
    /// Every event after this position is still kept: a read after it is complete (the
    /// oldest history there is starts right after it).
    pub floor: Position,
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
    /// Add a channel to every live connection of a user (a trusted caller's).
    JoinUser { user: String, channel: String },
    /// Remove a channel from every live connection of a user.
    LeaveUser { user: String, channel: String },
    /// Describe the node: its id, counts and uptime.
    Info,
    /// List the channels with subscribers on the node, with their counts.
    Channels,
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
    /// This node changed that many connections of a user.
    Changed { connections: usize },
    /// What the node says of itself.
    Info(NodeInfo),
    /// The node's channels with subscribers, each with their number.
    Channels { channels: Vec<(String, usize)> },
}

/// A node as it describes itself to [`NodeCommand::Info`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub node_id: String,
    pub version: String,
    pub connections: usize,
    pub users: usize,
    pub channels: usize,
    /// Subscriptions: each connection counted once per channel it follows.
    pub subscriptions: usize,
    pub uptime_secs: u64,
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

/// Which connections a disconnect cuts: a user's, one connection, or a channel's
/// subscribers (or a pattern's, named as such). On the wire between nodes it is
/// `{"user":"42"}`, `{"connection":"c01..."}` or `{"channel":"channel:general"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DisconnectTarget {
    User(String),
    Connection(String),
    Channel(String),
}

impl DisconnectTarget {
    /// `user`, `connection` or `channel`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Connection(_) => "connection",
            Self::Channel(_) => "channel",
        }
    }
}

/// Publishing, history, watching and commands between nodes.
pub trait Broker: Send + Sync + 'static {
    /// Accepts a batch in order; resolves once the engine has every event of it.
    fn publish(&self, batch: Vec<Prepared>) -> BoxFuture<'_, Result<Vec<PublishAck>, EngineError>>;

    /// The events of `channel` after `after` (or, with `None`, just its head), with its AI
    /// streams, read at one instant.
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<Position>,
    ) -> BoxFuture<'a, Result<HistoryRead, EngineError>>;

    /// [`Broker::history`] of several channels (each after its own position), read at one
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

    /// Forgets every kept event of `channel` (and its AI streams); its position stays, so
    /// later events go on from it and a resume from before now is a gap.
    fn remove_history<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Makes sure this node receives live events of `channels` before it resolves.
    fn watch<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Runs `command` on every node, this one included, and gathers their replies.
    fn command(&self, command: NodeCommand) -> BoxFuture<'_, Result<Vec<NodeReply>, EngineError>>;

    /// Whether pattern subscriptions (`channel:incidents.*`) can be served.
    fn supports_patterns(&self) -> bool {
        true
    }
}
