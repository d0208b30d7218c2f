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
    /// Every event after the requested position, oldest first (empty for a fresh read);
    /// or why history cannot say what was missed (the client must refetch state).
    pub events: Result<Vec<Arc<Published>>, GapReason>,
    /// The channel's AI streams kept for late joiners, as of `head`.
    pub streams: Vec<AiSnapshot>,
    /// The channel's last events as of `head`, oldest first, when a [`StartRead`] asked for
    /// them (`last`); empty otherwise.
    pub recent: Vec<Arc<Published>>,
}

/// One channel of a stream that opens, for [`Broker::read_starts`]: the events after a
/// position (a resume), and the channel's last `last` events (state on subscribe), which
/// the stream writes only where it does not resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRead {
    pub channel: ChannelName,
    pub after: Option<Position>,
    pub last: usize,
}

/// A page of one channel's history ([`Broker::history_page`]): the events strictly after
/// `after` and strictly before `before`, at most `limit` of them, from the newest end of
/// that range or from its oldest end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageQuery {
    pub after: Option<Position>,
    pub before: Option<Position>,
    pub limit: usize,
    pub newest_first: bool,
}

/// The answer of [`Broker::history_page`], read at one instant.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The channel's last position.
    pub head: Position,
    /// The events in the order asked for; or why history cannot serve a page after `after`
    /// (it was trimmed past it, or never had it).
    pub events: Result<Vec<Arc<Published>>, GapReason>,
    /// More events of the range are kept than the page holds.
    pub more: bool,
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
    /// `from`: where the connection starts in the channel (absent on the wire: its head, as
    /// nodes that predate it join).
    Join {
        connection: String,
        channel: String,
        user: Option<String>,
        #[serde(default, skip_serializing_if = "JoinFrom::is_head")]
        from: JoinFrom,
    },
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
    /// List the channels with local subscribers whose names match `pattern` (a glob).
    Channels { pattern: String },
    /// List a user's connections.
    UserConnections { user: String },
    /// Add a channel to every live connection of a user (a trusted caller's).
    JoinUser { user: String, channel: String },
    /// Remove a channel from every live connection of a user.
    LeaveUser { user: String, channel: String },
    /// Describe the node: its id, counts and uptime.
    Info,
    /// Put a request's `data` into the inbox `key` of the node `node` (a session whose
    /// client writes by separate requests: Centrifugo's emulation). Other nodes pass.
    Deliver { node: String, key: String, data: String },
}

impl NodeCommand {
    /// Whether one node alone can carry the command out (the one that holds its connection,
    /// or the node it names), every other answering [`NodeReply::NotHere`]: that node's
    /// answer is the command's.
    pub fn answered_by_one(&self) -> bool {
        matches!(self, Self::Join { .. } | Self::Leave { .. } | Self::Send { .. } | Self::Deliver { .. })
    }
}

/// Where a live join starts in its channel. On the wire between nodes it is a string:
/// `"head"`, `"unknown"`, or the position as a stream id (`"1700000000123-0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum JoinFrom {
    /// At the channel's head: only what is published from now on.
    #[default]
    Head,
    /// After this position: the channel's events since, from history, then the live ones;
    /// a `reset` and the head when history does not reach back that far.
    After(Position),
    /// The client named a position that is not Herald's: the head, with a `reset`.
    Unknown,
}

impl JoinFrom {
    pub fn is_head(&self) -> bool {
        matches!(self, Self::Head)
    }
}

impl From<JoinFrom> for String {
    fn from(from: JoinFrom) -> Self {
        match from {
            JoinFrom::Head => "head".to_owned(),
            JoinFrom::Unknown => "unknown".to_owned(),
            JoinFrom::After(p) => p.to_stream_id(),
        }
    }
}

impl TryFrom<String> for JoinFrom {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "head" => Ok(Self::Head),
            "unknown" => Ok(Self::Unknown),
            id => Position::parse_stream_id(id).map(Self::After).ok_or_else(|| format!("not a join start: `{s}`")),
        }
    }
}

/// A node's answer to a [`NodeCommand`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reply", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum NodeReply {
    /// Done here.
    Done,
    /// The connection (or inbox) is not on this node.
    NotHere,
    /// The inbox holds as many unread requests as it may.
    Full,
    /// Refused, with why and a sentence for a person.
    Refused { code: CommandRefusal, message: String },
    /// This node's subscribers of the channel and the users among them.
    Count { subscribers: usize, users: Vec<String> },
    /// This node closed that many connections.
    Disconnected { connections: usize },
    /// This node's channels and their subscribers, as `(channel, subscribers)`.
    Channels { channels: Vec<(String, usize)> },
    /// This node's connections of a user.
    Connections { connections: Vec<ConnectionInfo> },
    /// This node changed that many connections of a user.
    Changed { connections: usize },
    /// What the node says of itself.
    Info(NodeInfo),
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

/// One open connection as [`NodeCommand::UserConnections`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    pub connection_id: String,
    /// The node that holds it.
    pub node: String,
    pub channels: Vec<String>,
    /// `sse`, `websocket`, `centrifugo`, or `library` (a [`crate::Connection`] of the
    /// application's own transport).
    pub transport: String,
    /// When it opened, in milliseconds since the Unix epoch.
    pub opened_ms: u64,
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

    /// [`Broker::publish`] for an engine that accepts a batch without waiting on anything
    /// (the in-memory one): done before it returns, which spares the caller a boxed future
    /// and its poll for each publish. With `ids_only` the caller reads each ack's id alone,
    /// and the engine may leave its positions empty. An engine that must wait gives the
    /// batch back (`Err`), for [`Broker::publish`]; so does this default.
    #[allow(clippy::type_complexity, reason = "the answer of `publish`, or its batch back")]
    fn publish_now(
        &self,
        batch: Vec<Prepared>,
        ids_only: bool,
    ) -> Result<Result<Vec<PublishAck>, EngineError>, Vec<Prepared>> {
        let _ = ids_only;
        Err(batch)
    }

    /// Whether [`Broker::publish`] takes a batch all or nothing. Only then may the events of
    /// several requests share one call (a refusal then answers each of them truly).
    fn batches_are_atomic(&self) -> bool {
        true
    }

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

    /// The channels of a stream that opens, each with the events after its position and
    /// its last `last` events, read at one instant where the engine can (see
    /// [`Broker::histories`]). The default reads one channel after another.
    fn read_starts<'a>(&'a self, reads: &'a [StartRead]) -> BoxFuture<'a, Result<Vec<HistoryRead>, EngineError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(reads.len());
            for r in reads {
                let mut read = self.history(&r.channel, r.after).await?;
                if r.last > 0 {
                    let query = PageQuery { after: None, before: None, limit: r.last, newest_first: true };
                    let mut recent = self.history_page(&r.channel, query).await?.events.unwrap_or_default();
                    recent.reverse();
                    read.recent = recent;
                }
                out.push(read);
            }
            Ok(out)
        })
    }

    /// Forgets every kept event of `channel` (and its AI streams); its position stays, so
    /// later events go on from it and a resume from before now is a gap.
    fn remove_history<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), EngineError>>;

    /// A page of `channel`'s history ([`PageQuery`]), read at one instant.
    fn history_page<'a>(
        &'a self,
        channel: &'a ChannelName,
        query: PageQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, EngineError>>;

    /// Makes sure this node receives live events of `channels` before it resolves.
    fn watch<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Runs `command` on every node, this one included, and gathers their replies.
    fn command(&self, command: NodeCommand) -> BoxFuture<'_, Result<Vec<NodeReply>, EngineError>>;

    /// Whether pattern subscriptions (`channel:incidents.*`) can be served.
    fn supports_patterns(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_says_where_it_starts_on_the_wire_and_an_older_nodes_join_starts_at_the_head() {
        let join = |from| NodeCommand::Join { connection: "c1".into(), channel: "channel:a".into(), user: None, from };
        let at = join(JoinFrom::After(Position::new(1_700_000_000_123, 2)));
        let wire = serde_json::to_value(&at).unwrap_or_default();
        assert_eq!(wire["from"], "1700000000123-2");
        assert_eq!(serde_json::from_value::<NodeCommand>(wire).ok(), Some(at));
        let head = serde_json::to_value(join(JoinFrom::Head)).unwrap_or_default();
        assert!(head.get("from").is_none(), "as nodes that predate it send it: {head}");
        assert_eq!(serde_json::from_value::<NodeCommand>(head).ok(), Some(join(JoinFrom::Head)));
        let unknown = serde_json::to_value(join(JoinFrom::Unknown)).unwrap_or_default();
        assert_eq!(serde_json::from_value::<NodeCommand>(unknown).ok(), Some(join(JoinFrom::Unknown)));
        let garbled =
            serde_json::json!({"op": "join", "connection": "c1", "channel": "channel:a", "user": null, "from": "x"});
        assert!(serde_json::from_value::<NodeCommand>(garbled).is_err());
    }
}
