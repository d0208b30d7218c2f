//! Who is connected where, across every node, for the application's backend: the active
//! channels with their subscriber counts (`GET /api/channels`) and a user's open
//! connections (`GET /api/users/{id}/connections`). Each asks every node through the
//! engine's commands and adds up the answers; API keys only.

use std::collections::BTreeMap;

use super::Herald;
use crate::auth::Principal;
use crate::channel::ChannelName;
use crate::engine::{ConnectionInfo, EngineError, NodeCommand, NodeReply};
use crate::policy::glob;

/// Longest channel pattern of a listing.
const MAX_PATTERN: usize = 256;

/// A listing was refused.
#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("an API key is required")]
    Unauthenticated,
    #[error("only API keys may list channels and connections")]
    NotAnApiKey,
    #[error("this API key does not reach `{0}`")]
    KeyCannotReach(String),
    #[error("a pattern is 1 to {MAX_PATTERN} bytes, like `channel:*`")]
    InvalidPattern,
    #[error("not a valid user id")]
    InvalidUser,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// An active channel and its subscribers on every node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChannelCount {
    pub channel: String,
    pub subscribers: usize,
}

impl Herald {
    /// The channels with at least one subscriber on some node whose names match `pattern`
    /// (a glob: `*` stands for any run of characters), by name, with their subscribers on
    /// every node. An API key lists the channels it reaches; one with the `admin` scope,
    /// every channel.
    pub async fn active_channels(&self, who: &Principal, pattern: &str) -> Result<Vec<ChannelCount>, CensusError> {
        let key = api_key(who)?;
        if pattern.is_empty() || pattern.len() > MAX_PATTERN {
            return Err(CensusError::InvalidPattern);
        }
        let replies = self.engine().command(NodeCommand::Channels { pattern: pattern.to_owned() }).await?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for reply in replies {
            if let NodeReply::Channels { channels } = reply {
                for (channel, n) in channels {
                    *counts.entry(channel).or_default() += n;
                }
            }
        }
        let reaches = |channel: &str| {
            key.admin || self.parse_channel(channel).is_ok_and(|ch| self.policies().can_subscribe(who, &ch).is_ok())
        };
        Ok(counts
            .into_iter()
            .filter(|(channel, _)| reaches(channel))
            .map(|(channel, subscribers)| ChannelCount { channel, subscribers })
            .collect())
    }

    /// A user's open connections on every node, oldest first. The API key must reach the
    /// user's channel `user:<id>`, or have the `admin` scope.
    pub async fn user_connections(&self, who: &Principal, user: &str) -> Result<Vec<ConnectionInfo>, CensusError> {
        let key = api_key(who)?;
        let channel = ChannelName::user(user).map_err(|_| CensusError::InvalidUser)?;
        if !key.admin && self.policies().can_subscribe(who, &channel).is_err() {
            return Err(CensusError::KeyCannotReach(channel.to_string()));
        }
        let replies = self.engine().command(NodeCommand::UserConnections { user: user.to_owned() }).await?;
        let mut all: Vec<ConnectionInfo> = replies
            .into_iter()
            .flat_map(|reply| match reply {
                NodeReply::Connections { connections } => connections,
                _ => Vec::new(),
            })
            .collect();
        all.sort_by(|a, b| (a.opened_ms, &a.connection_id).cmp(&(b.opened_ms, &b.connection_id)));
        Ok(all)
    }

    /// This node's share of [`NodeCommand::Channels`].
    pub(super) fn local_channels(&self, pattern: &str) -> NodeReply {
        let channels = self.hub().channel_counts(|ch| glob(pattern, ch));
        NodeReply::Channels { channels: channels.into_iter().map(|(ch, n)| (ch.to_string(), n)).collect() }
    }

    /// This node's share of [`NodeCommand::UserConnections`].
    pub(super) fn local_user_connections(&self, user: &str) -> NodeReply {
        let connections = self
            .hub()
            .connections_of(user)
            .into_iter()
            .map(|c| ConnectionInfo {
                opened_ms: crate::ids::id_time_ms(&c.connection).unwrap_or_default(),
                connection_id: c.connection.to_string(),
                node: self.node_id().to_owned(),
                channels: c.channels.iter().map(|ch| ch.to_string()).collect(),
                transport: c.transport.to_owned(),
            })
            .collect();
        NodeReply::Connections { connections }
    }
}

fn api_key(who: &Principal) -> Result<&crate::auth::ApiKey, CensusError> {
    super::api_key_only(who).map_err(|e| match e {
        super::DisconnectError::Unauthenticated => CensusError::Unauthenticated,
        _ => CensusError::NotAnApiKey,
    })
}
