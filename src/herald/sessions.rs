//! Cutting sessions: the application ends a user's streams (logout, password change, abuse)
//! on every node, and bans a user for a while.
//!
//! A disconnect is a [`NodeCommand::Disconnect`] that the engine runs on every node; each
//! node closes the connections it holds that the target names, each with a last
//! `disconnect` notice (`reconnect` tells the client whether to come back), and answers how
//! many it closed. A ban is kept by the engine (in memory on one node, a key with a TTL in
//! Redis) and checked when a stream opens and when a ticket is issued.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Herald;
use crate::auth::{ApiKey, Principal};
use crate::channel::{ChannelError, ChannelName};
pub use crate::engine::DisconnectTarget;
use crate::engine::{EngineError, NodeCommand, NodeReply};
use crate::hub::connection::CloseReason;
use crate::metrics::DisconnectKind;

/// The longest ban: a year, as a duration reads it (`"1y"`, 365.25 days). Longer belongs in
/// the application's own user records.
pub const MAX_BAN: Duration = Duration::from_secs(31_557_600);

/// How a disconnect ends the streams it cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DisconnectOptions {
    /// Whether the clients should come back (and resume). Default: true.
    pub reconnect: bool,
    /// Also ban the user for this long (a [`DisconnectTarget::User`] only).
    pub ban: Option<Duration>,
}

impl Default for DisconnectOptions {
    fn default() -> Self {
        Self { reconnect: true, ban: None }
    }
}

/// A disconnect or ban was refused.
#[derive(Debug, thiserror::Error)]
pub enum DisconnectError {
    #[error("disconnects and bans need an API key")]
    Unauthenticated,
    #[error("only API keys may disconnect streams and ban users")]
    NotAnApiKey,
    #[error("this API key does not reach `{0}`")]
    KeyCannotReach(String),
    #[error("not a user id")]
    InvalidUser,
    #[error("{0}")]
    Channel(#[from] ChannelError),
    #[error("a connection id is 1 to 64 visible characters")]
    InvalidConnection,
    #[error("a ban names a user: disconnect by `user` to ban")]
    BanNeedsUser,
    #[error("a ban lasts from 1 second to a year (`1y`)")]
    InvalidTtl,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Herald {
    /// Whether `who` may disconnect `target` (or ban the user it names): an API key that
    /// reaches the user's channel `user:<id>`, or the channel; for one connection, whose
    /// user the asking node cannot know, a key that reaches every channel (`*`).
    pub fn may_disconnect(&self, who: &Principal, target: &DisconnectTarget) -> Result<(), DisconnectError> {
        let key = api_key_only(who)?;
        let reached = match target {
            DisconnectTarget::User(user) => user_channel(user)?,
            DisconnectTarget::Channel(channel) => self.parse_subscription(channel)?,
            DisconnectTarget::Connection(_) => {
                return if key.channels.iter().any(|p| p == "*") {
                    Ok(())
                } else {
                    Err(DisconnectError::KeyCannotReach("*".to_owned()))
                };
            }
        };
        self.policies().can_subscribe(who, &reached).map_err(|_| DisconnectError::KeyCannotReach(reached.to_string()))
    }

    /// Closes, on every node, the streams (and [`crate::Connection`]s) `target` names; each
    /// gets a last `disconnect` notice first. With `options.ban` the user is banned before
    /// their streams are cut, so a reconnect cannot slip in between. Returns how many
    /// connections were closed, summed over the nodes that answered. Trusted: the caller
    /// has checked [`Herald::may_disconnect`].
    pub async fn disconnect(
        &self,
        target: DisconnectTarget,
        options: DisconnectOptions,
    ) -> Result<usize, DisconnectError> {
        match &target {
            DisconnectTarget::User(user) => {
                user_channel(user)?;
            }
            DisconnectTarget::Channel(channel) => {
                self.parse_subscription(channel)?;
            }
            DisconnectTarget::Connection(id) => {
                if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(DisconnectError::InvalidConnection);
                }
            }
        }
        if let Some(ttl) = options.ban {
            let DisconnectTarget::User(user) = &target else { return Err(DisconnectError::BanNeedsUser) };
            self.ban_user(user, ttl).await?;
        }
        let kind = kind_of(&target);
        let command = NodeCommand::Disconnect { target, reconnect: options.reconnect, banned: options.ban.is_some() };
        let replies = self.engine().command(command).await?;
        let cut = replies
            .iter()
            .map(|r| match r {
                NodeReply::Disconnected { connections } => *connections,
                _ => 0,
            })
            .sum();
        self.metrics().count_disconnect(kind);
        tracing::info!(target = kind.label(), connections = cut, reconnect = options.reconnect, "disconnect");
        Ok(cut)
    }

    /// Bans `user` for `ttl` on every node: their new streams, tickets and publishes are refused
    /// (`403 banned`) until it ends. Streams already open stay open: cut them with
    /// [`Herald::disconnect`] (or pass the ban to it).
    pub async fn ban_user(&self, user: &str, ttl: Duration) -> Result<(), DisconnectError> {
        user_channel(user)?;
        if ttl < Duration::from_secs(1) || ttl > MAX_BAN {
            return Err(DisconnectError::InvalidTtl);
        }
        self.engine().ban(user, ttl).await?;
        self.metrics().bans.fetch_add(1, Ordering::Relaxed);
        tracing::info!(user, ttl = %humantime::format_duration(ttl), "user banned");
        Ok(())
    }

    /// Lifts `user`'s ban; true if there was one.
    pub async fn unban_user(&self, user: &str) -> Result<bool, DisconnectError> {
        user_channel(user)?;
        let lifted = self.engine().unban(user).await?;
        if lifted {
            self.metrics().unbans.fetch_add(1, Ordering::Relaxed);
            tracing::info!(user, "user ban lifted");
        }
        Ok(lifted)
    }

    /// Whether `user` is banned now.
    pub async fn is_banned(&self, user: &str) -> Result<bool, EngineError> {
        self.engine().is_banned(user).await
    }

    /// Runs a disconnect from any node (this one included) on this node.
    pub(super) fn local_disconnect(&self, target: &DisconnectTarget, reconnect: bool, banned: bool) -> NodeReply {
        let connections = self.hub().disconnect(target, CloseReason::Disconnect { reconnect, banned });
        if connections > 0 {
            let kind = kind_of(target);
            self.metrics().count_disconnected(kind, connections);
            tracing::info!(target = kind.label(), connections, reconnect, "closing connections the application cut");
        }
        NodeReply::Disconnected { connections }
    }
}

/// The key of a caller who may disconnect and ban at all: API keys only.
pub fn api_key_only(who: &Principal) -> Result<&ApiKey, DisconnectError> {
    match who {
        Principal::ApiKey(key) => Ok(key),
        Principal::Anonymous => Err(DisconnectError::Unauthenticated),
        Principal::User(_) => Err(DisconnectError::NotAnApiKey),
    }
}

/// What `target` names, as the metrics count it.
fn kind_of(target: &DisconnectTarget) -> DisconnectKind {
    match target {
        DisconnectTarget::User(_) => DisconnectKind::User,
        DisconnectTarget::Connection(_) => DisconnectKind::Connection,
        DisconnectTarget::Channel(_) => DisconnectKind::Channel,
    }
}

/// `user:<id>`, which also checks the id (the same rule as for the channel).
fn user_channel(user: &str) -> Result<ChannelName, DisconnectError> {
    ChannelName::user(user).map_err(|_| DisconnectError::InvalidUser)
}
