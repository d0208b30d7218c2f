//! The presence concern of an engine: who is in each channel (users, their connections and
//! status) and each user's status across channels. The node decides what to announce; the
//! store keeps the state, shared by every node where the engine spans several.

use std::time::Duration;

use super::{BoxFuture, EngineError};
use crate::catalogue::PresenceStatus;
use crate::channel::ChannelName;

/// A presence entry: a user who is in a channel (with any number of connections).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEntry {
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// `online` or `away`.
    pub status: PresenceStatus,
    /// The user's open connections to the channel (0 while leaving, in the grace period).
    #[serde(default)]
    pub connections: usize,
    /// What the application said of the connection that brought the user in (a Centrifugo
    /// token's `info`), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// A channel's occupancy changed across every node: its first subscriber arrived
/// (`occupied`) or its last one left (not `occupied`). `seq` counts the channel's changes, so
/// that reports sent by different nodes can be put in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OccupancyChange {
    pub occupied: bool,
    pub seq: u64,
}

/// Presence state, per channel and per user.
pub trait PresenceStore: Send + Sync + 'static {
    /// Presence: `conn` of `user` is in `channel`. True if the user was not there before
    /// (and was not in the grace period of leaving): announce them online.
    fn presence_join<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
        user: &'a PresenceEntry,
    ) -> BoxFuture<'a, Result<bool, EngineError>>;

    /// Presence: `conn` left `channel`. A user whose last connection left is offline once
    /// `grace` has passed without a new one ([`PresenceStore::presence_expire`] says when).
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

    /// Channel occupancy: this node has local subscribers of `channel` (`held`), or has none
    /// left. The changes across every node that this call made, in order: the node that
    /// makes one is the one that reports it, so each is reported once. A node renews the
    /// channels it holds (calls again with `held`) at least once a heartbeat; a node that
    /// stops renewing leaves them when its lease lapses, and the next call on the channel
    /// reports the vacancy.
    fn occupancy<'a>(
        &'a self,
        channel: &'a ChannelName,
        held: bool,
    ) -> BoxFuture<'a, Result<Vec<OccupancyChange>, EngineError>>;

    /// Records `user`'s status across channels (`None` clears it).
    fn set_user_status<'a>(
        &'a self,
        user: &'a str,
        status: Option<PresenceStatus>,
    ) -> BoxFuture<'a, Result<(), EngineError>>;
}
