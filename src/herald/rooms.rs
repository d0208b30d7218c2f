//! Live rooms (`docs/http-api.md`, "Live rooms"): channels added to and removed from
//! an open connection, events sent to one connection, and room counts, on whichever node
//! the connection lives.
//!
//! The node that takes the request checks the caller against the channel's policy, then
//! sends a [`NodeCommand`] to every node through the engine; the node holding the
//! connection checks that it belongs to the caller (or that the caller is trusted), and
//! does it. Counts gather every node's answer.
//!
//! **Joining at a position** ([`Herald::join_at`]) is the seam a transport uses to add a
//! subscription to a connection it holds, resumed where its client left off: Herald's
//! WebSocket `subscribe` with `positions`/`lastEventId` today, a Centrifugo `recover` on a
//! later subscription tomorrow. It is transport-neutral: the caller names the connection, the
//! channel (or pattern) and a [`JoinFrom`] (the head, after a position, or a position that is
//! not Herald's), and the connection's own reader writes `subscribed`, then a `reset` if the
//! position cannot be resumed, then the channel's events after it, then the live ones. No
//! gap and no repeat while events are published during the join: the hub queues the join in
//! the connection under its registry lock (every live event of the channel comes behind it),
//! only then is history read (`join_start`), and the reader drops each queued event that the
//! history covered, by position (`hub/connection/reader.rs`, `StreamCore::replayed`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Herald;
use super::stream::PATTERN_NOT_RESUMABLE;
use crate::auth::Principal;
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::engine::{CommandRefusal, EngineError, GapReason, JoinFrom, NodeCommand, NodeReply};
use crate::event::{Event, EventError, Published, Publisher};
use crate::hub::connection::{Filters, JoinStart};
use crate::hub::{Departure, Joined, NotJoined};
use crate::policy::Denied;

/// A live join, leave or send was refused.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error(transparent)]
    Denied(#[from] Denied),
    /// No open connection with that id, or one the caller may not change: the two answer
    /// the same, so that ids cannot be probed.
    #[error("no open connection `{0}` that you may change")]
    NoConnection(String),
    #[error("a connection may follow at most {0} channels")]
    TooManyChannels(usize),
    #[error("pattern subscriptions cannot be added to a live connection")]
    Pattern,
    #[error("this engine cannot follow patterns")]
    PatternsUnsupported,
    /// The node that holds the connection does not know the channel (its configuration
    /// differs from this node's).
    #[error("the node that holds the connection refused the channel: {0}")]
    ChannelRefused(String),
    #[error("{0}")]
    Event(#[from] EventError),
    #[error("too many joins and leaves at once; wait a moment")]
    RateLimited { retry_after: Duration },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl RoomError {
    /// What the node holding `connection` refused, as this node answers it: each refusal
    /// keeps its meaning (and so its HTTP code). `max_channels`: this node's limit, for the
    /// message.
    pub(crate) fn refused_by_node(
        code: CommandRefusal,
        message: String,
        connection: &str,
        max_channels: usize,
    ) -> Self {
        match code {
            CommandRefusal::NotYours => {
                tracing::info!(connection, "refused a change to another user's connection");
                Self::NoConnection(connection.to_owned())
            }
            CommandRefusal::TooManyChannels => Self::TooManyChannels(max_channels),
            CommandRefusal::InvalidChannel => Self::ChannelRefused(message),
            CommandRefusal::EngineUnavailable | CommandRefusal::Unknown => {
                Self::Engine(EngineError::Unavailable(message))
            }
        }
    }
}

/// A channel's subscribers and users, across every node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelInfo {
    pub channel: String,
    pub subscribers: usize,
    pub users: usize,
}

/// The kind of the user's bucket ([`Herald::charge_user`]) that their joins and leaves come
/// from, live or by a stream's open or a socket's subscribe.
const JOINS_BUCKET: &str = "rooms:";

impl Herald {
    /// Adds `channel` to the open connection `connection`, wherever it lives, from the
    /// channel's head. The caller must be allowed to subscribe to the channel, and be the
    /// connection's user or trusted (an API key, or the application with
    /// [`Principal::ApiKey`]). Patterns are refused: see [`Herald::join_at`].
    pub async fn join(&self, who: &Principal, connection: &str, channel: &ChannelName) -> Result<(), RoomError> {
        if channel.is_pattern() {
            return Err(RoomError::Pattern);
        }
        self.join_at(who, connection, channel, JoinFrom::Head).await
    }

    /// Joins `channel` (or a pattern) to the open connection `connection` at a position:
    /// the seam a transport uses to add a subscription to a connection it holds, resumed
    /// where its client left off. Checked like [`Herald::join`].
    ///
    /// With [`JoinFrom::After`], the connection gets exactly the channel's events after
    /// that position, then the live ones, nothing missed and nothing twice, even while
    /// events are published during the join: the join is queued in the connection first
    /// (every live event of the channel comes behind it), then the history after the
    /// position is read, and the connection's reader writes that history at the join and
    /// drops the queued events it covered, by position (see `hub/connection/reader.rs`).
    /// When history does not reach back that far ([`JoinFrom::Unknown`] included), the
    /// connection gets the `reset` an SSE stream gets for the channel, and starts at the
    /// head. A pattern keeps no position: it starts live, with a `reset`
    /// (`pattern_not_resumable`) if a position was asked for.
    pub async fn join_at(
        &self,
        who: &Principal,
        connection: &str,
        channel: &ChannelName,
        from: JoinFrom,
    ) -> Result<(), RoomError> {
        if channel.is_pattern() && !self.engine().supports_patterns() {
            return Err(RoomError::PatternsUnsupported);
        }
        self.policies().can_change_subscription(who, channel)?;
        self.charge_change(who)?;
        let command = NodeCommand::Join {
            connection: connection.to_owned(),
            channel: channel.to_string(),
            user: asking_user(who),
            from,
        };
        self.run_on_connection(command, connection).await
    }

    /// Removes `channel` from the open connection `connection`, wherever it lives. Checked
    /// like [`Herald::join`]: a caller may only remove what it could have added.
    pub async fn leave(&self, who: &Principal, connection: &str, channel: &ChannelName) -> Result<(), RoomError> {
        self.policies().can_change_subscription(who, channel)?;
        self.charge_change(who)?;
        let command = NodeCommand::Leave {
            connection: connection.to_owned(),
            channel: channel.to_string(),
            user: asking_user(who),
        };
        self.run_on_connection(command, connection).await
    }

    /// Sends an event to one connection alone, wherever it lives (trusted: the
    /// application's call). Its JSON has `id`, `type`, `timestamp` and the payload, no
    /// channel; it is not kept in any history.
    pub async fn send_to_connection(&self, connection: &str, event: Event) -> Result<(), RoomError> {
        let json = crate::event::direct_json(event, &Publisher::default(), self.config().max_payload_bytes)?;
        let (event_type, json) = json;
        let command = NodeCommand::Send { connection: connection.to_owned(), event_type, json };
        self.run_on_connection(command, connection).await
    }

    /// A user's live joins and leaves come from a bucket of their own ([`Herald::charge_user`]):
    /// each may be announced in the room (`join_leave`, presence), and a loop must not flood
    /// it. (The application, API keys and a socket's own subscribe commands are not charged:
    /// a socket's frames have their own limit.)
    fn charge_change(&self, who: &Principal) -> Result<(), RoomError> {
        if let Principal::User(user) = who {
            self.charge_user(JOINS_BUCKET, &user.id).map_err(|retry_after| RoomError::RateLimited { retry_after })?;
        }
        Ok(())
    }

    /// A socket's own subscribe (`/api/ws`, Centrifugo's) joins its connection as the socket
    /// itself, which [`Herald::join_at`] does not charge; where a namespace has `join_leave`
    /// it is announced like any join, so it takes one from the user's bucket of live joins
    /// and leaves (`429 rate_limited` past it), as a stream's open does. Its unsubscribe is
    /// not charged, as a stream's close is not: each follows a join that was.
    pub fn charge_socket_join(&self, who: &Principal, channels: &[ChannelName]) -> Result<(), RoomError> {
        self.charge_announced_join(who, channels).map_err(|retry_after| RoomError::RateLimited { retry_after })
    }

    /// A user's stream open or socket subscribe that is announced as a `join` (a channel
    /// whose namespace has `join_leave`) comes from the bucket of their live joins and
    /// leaves, one a stream or command whatever the number of its channels (each room is
    /// told once), so that a loop of them cannot flood a room. (Presence alone is not
    /// charged: a user's `offline` waits out `presence_grace` and a user back within it is
    /// not announced again, so such a loop announces at most twice a grace period.)
    pub(super) fn charge_announced_join(&self, who: &Principal, channels: &[ChannelName]) -> Result<(), Duration> {
        let Principal::User(user) = who else { return Ok(()) };
        if !channels.iter().any(|ch| self.join_leave_on(ch)) {
            return Ok(());
        }
        self.charge_user(JOINS_BUCKET, &user.id)
    }

    async fn run_on_connection(&self, command: NodeCommand, connection: &str) -> Result<(), RoomError> {
        let replies = self.engine().command(command).await?;
        let mut refused = None;
        for reply in replies {
            match reply {
                NodeReply::Done => return Ok(()),
                NodeReply::Refused { code, message } => refused = Some((code, message)),
                NodeReply::NotHere
                | NodeReply::Full
                | NodeReply::Count { .. }
                | NodeReply::Disconnected { .. }
                | NodeReply::Channels { .. }
                | NodeReply::Connections { .. }
                | NodeReply::Changed { .. }
                | NodeReply::Info(_) => {}
            }
        }
        match refused {
            Some((code, message)) => {
                Err(RoomError::refused_by_node(code, message, connection, self.config().max_channels_per_connection))
            }
            None => Err(RoomError::NoConnection(connection.to_owned())),
        }
    }

    /// A channel's subscribers and distinct users on every node, for a principal who may
    /// subscribe to it.
    pub async fn channel_info(&self, who: &Principal, channel: &ChannelName) -> Result<ChannelInfo, RoomError> {
        self.policies().can_subscribe(who, channel)?;
        let replies = self.engine().command(NodeCommand::Count { channel: channel.to_string() }).await?;
        let mut subscribers = 0;
        let mut users: Vec<String> = Vec::new();
        for reply in replies {
            if let NodeReply::Count { subscribers: s, users: u } = reply {
                subscribers += s;
                users.extend(u);
            }
        }
        users.sort_unstable();
        users.dedup();
        Ok(ChannelInfo { channel: channel.to_string(), subscribers, users: users.len() })
    }

    /// Runs a command from any node (this one included) on this node.
    pub(super) async fn handle_command(&self, command: NodeCommand) -> NodeReply {
        match command {
            NodeCommand::Join { connection, channel, user, from } => {
                self.local_join(&connection, &channel, user, from).await
            }
            NodeCommand::Leave { connection, channel, user } => self.local_leave(&connection, &channel, user).await,
            NodeCommand::Send { connection, event_type, json } => {
                if self.hub().send_to(&connection, Arc::from(event_type), Bytes::from(json)) {
                    NodeReply::Done
                } else {
                    NodeReply::NotHere
                }
            }
            NodeCommand::Count { channel } => {
                let (subscribers, users) = self.hub().channel_members(&channel);
                NodeReply::Count { subscribers, users: users.iter().map(|u| u.to_string()).collect() }
            }
            NodeCommand::SetStatus { user, user_name, status } => self.apply_status(&user, user_name, status).await,
            NodeCommand::Disconnect { target, reconnect, banned } => self.local_disconnect(&target, reconnect, banned),
            NodeCommand::Channels { pattern } => self.local_channels(&pattern),
            NodeCommand::UserConnections { user } => self.local_user_connections(&user),
            NodeCommand::JoinUser { user, channel } => self.local_user_change(&user, &channel, true).await,
            NodeCommand::LeaveUser { user, channel } => self.local_user_change(&user, &channel, false).await,
            NodeCommand::Info => NodeReply::Info(self.local_info()),
            NodeCommand::Deliver { node, key, data } => self.local_deliver(&node, &key, data),
        }
    }

    /// Adds `channel` to (or, with `join` false, removes it from) every connection of `user`
    /// on every node, as [`Herald::join`] and [`Herald::leave`] do for one (a trusted
    /// caller's: the application or an API key that may subscribe to the channel). Answers
    /// how many connections were changed; a user with none is no error.
    pub async fn change_user(
        &self,
        who: &Principal,
        user: &str,
        channel: &ChannelName,
        join: bool,
    ) -> Result<usize, RoomError> {
        if channel.is_pattern() {
            return Err(RoomError::Pattern);
        }
        self.policies().can_change_subscription(who, channel)?;
        let (user, channel) = (user.to_owned(), channel.to_string());
        let command =
            if join { NodeCommand::JoinUser { user, channel } } else { NodeCommand::LeaveUser { user, channel } };
        let replies = self.engine().command(command).await?;
        Ok(replies.iter().map(|r| if let NodeReply::Changed { connections } = r { *connections } else { 0 }).sum())
    }

    /// [`Herald::change_user`] on this node: each connection of the user in turn; one that
    /// cannot take the channel (too many channels) is logged and skipped.
    async fn local_user_change(&self, user: &str, channel: &str, join: bool) -> NodeReply {
        let mine: Vec<Arc<str>> =
            self.hub().user_connections().into_iter().filter(|(u, _)| &**u == user).map(|(_, c)| c).collect();
        let mut connections = 0;
        for connection in mine {
            let reply = if join {
                self.local_join(&connection, channel, None, JoinFrom::Head).await
            } else {
                self.local_leave(&connection, channel, None).await
            };
            match reply {
                NodeReply::Done => connections += 1,
                NodeReply::Refused { code, message } => {
                    tracing::info!(%connection, channel, ?code, message, "a user's connection could not change");
                }
                _ => {}
            }
        }
        NodeReply::Changed { connections }
    }

    /// The connection is here and `user` may change it: its own user; for an anonymous
    /// caller (`""`), an anonymous connection in dev mode only (connection ids are not
    /// secrets).
    fn owned_here(&self, connection: &str, user: Option<&str>) -> Result<crate::hub::ConnInfo, NodeReply> {
        let info = self.hub().connection(connection).ok_or(NodeReply::NotHere)?;
        let allowed = match user {
            None => true,
            Some("") => info.user.is_none() && self.policies().dev_mode,
            Some(user) => info.user.as_deref() == Some(user),
        };
        if !allowed {
            return Err(refused(CommandRefusal::NotYours, "the connection belongs to another user"));
        }
        Ok(info)
    }

    async fn local_join(&self, connection: &str, channel: &str, user: Option<String>, from: JoinFrom) -> NodeReply {
        if let Err(reply) = self.owned_here(connection, user.as_deref()) {
            return reply;
        }
        let Ok(channel) = self.parse_subscription(channel) else {
            return refused(CommandRefusal::InvalidChannel, "not a channel of this node's configuration");
        };
        let max = self.config().max_channels_per_connection;
        let (conn, slot) = match self.hub().join(connection, &channel, max) {
            Ok(Joined::Already) => return NodeReply::Done,
            Ok(Joined::Added { conn, slot }) => {
                conn.joined_with(self.policies().slow_consumer([&channel]));
                (conn, slot)
            }
            Err(NotJoined::NoConnection) => return NodeReply::NotHere,
            Err(NotJoined::TooManyChannels) => {
                return refused(CommandRefusal::TooManyChannels, "the connection follows too many channels");
            }
        };
        match self.join_start(&channel, from, &conn.filters).await {
            Ok(start) => {
                if let (false, JoinStart::At { reset, .. }) = (from.is_head(), &start) {
                    let m = self.metrics();
                    let counter = if reset.is_none() { &m.resumes_replayed } else { &m.resumes_reset };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                conn.resolve_join(&slot, start);
                tracing::debug!(connection, %channel, ?from, "live join");
                self.announce_arrival(&conn, std::slice::from_ref(&channel)).await;
                NodeReply::Done
            }
            Err(e) => {
                conn.resolve_join(&slot, JoinStart::Failed);
                let _ = self.hub().leave(connection, &channel);
                refused(CommandRefusal::EngineUnavailable, &e.to_string())
            }
        }
    }

    /// Where a live join of `channel` starts, read once the join is queued: the head, or
    /// the history after `from` (see [`Herald::join_at`]).
    async fn join_start(
        &self,
        channel: &ChannelName,
        from: JoinFrom,
        filters: &Filters,
    ) -> Result<JoinStart, EngineError> {
        // Even when another connection follows it already: its SUBSCRIBE may still be in
        // flight (see `open_stream`).
        self.engine().watch(std::slice::from_ref(channel)).await?;
        if channel.is_pattern() {
            let reset = (!from.is_head()).then_some(PATTERN_NOT_RESUMABLE);
            return Ok(JoinStart::At { from: Position::default(), reset, replay: Vec::new(), lead: Vec::new() });
        }
        let after = match from {
            JoinFrom::After(p) => Some(p),
            JoinFrom::Head | JoinFrom::Unknown => None,
        };
        let read = self.engine().history(channel, after).await?;
        let passes = |json: &str| {
            filters.is_empty() || crate::event::fields_match(&serde_json::from_str(json).unwrap_or_default(), filters)
        };
        let (mut start, mut reset, mut replay, mut streams) = (read.head, None, Vec::new(), read.streams);
        match (from, read.events) {
            (JoinFrom::After(p), Ok(events)) => {
                start = p;
                // As at open: a snapshot stands for the chunks of a stream the client is
                // behind on; a stream it saw all of needs none.
                streams.retain(|s| s.last > p);
                let behind =
                    |ev: &Published| ev.ai_stream_id().is_some_and(|id| streams.iter().any(|s| s.stream_id == id));
                for ev in events {
                    let Some(copy) = ev.copy_on(channel.as_str()) else { continue };
                    let write = !behind(&ev) && (filters.is_empty() || ev.matches_on(copy, filters));
                    replay.push((ev, write));
                }
            }
            (JoinFrom::After(_), Err(gap)) => reset = Some(gap.as_str()),
            (JoinFrom::Unknown, _) => reset = Some(GapReason::UnknownPosition.as_str()),
            (JoinFrom::Head, _) => {}
        }
        let lead = streams
            .into_iter()
            .filter(|s| passes(&s.json))
            .map(|s| (Arc::from(crate::event::AI_CHUNK_TYPE), Bytes::from(s.json)))
            .collect();
        Ok(JoinStart::At { from: start, reset, replay, lead })
    }

    async fn local_leave(&self, connection: &str, channel: &str, user: Option<String>) -> NodeReply {
        let info = match self.owned_here(connection, user.as_deref()) {
            Ok(info) => info,
            Err(reply) => return reply,
        };
        let Some(channel) = info.channels.iter().find(|c| c.as_str() == channel).cloned() else {
            return NodeReply::Done;
        };
        match self.hub().leave(connection, &channel) {
            Ok(Some(_)) => {
                tracing::debug!(connection, %channel, "live leave");
                let departure = Departure {
                    connection: info.connection,
                    user: info.user,
                    user_name: info.user_name,
                    info: info.info,
                    channels: vec![channel],
                };
                // A closed connection's channels are nudged when its close is reported.
                self.nudge_occupancy(&departure.channels);
                self.announce_departure(departure).await;
                NodeReply::Done
            }
            Ok(None) => NodeReply::Done,
            Err(_) => NodeReply::NotHere,
        }
    }
}

/// The user on whose behalf a live change is asked; `None` for trusted callers.
fn asking_user(who: &Principal) -> Option<String> {
    match who {
        Principal::User(u) => Some(u.id.to_string()),
        // Anonymous callers own no connection; see `owned_here`.
        Principal::Anonymous => Some(String::new()),
        Principal::ApiKey(_) => None,
    }
}

fn refused(code: CommandRefusal, message: &str) -> NodeReply {
    NodeReply::Refused { code, message: message.to_owned() }
}
