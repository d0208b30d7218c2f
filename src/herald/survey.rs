//! What every node says of itself, gathered through the engine: each node's id, counts and
//! uptime ([`Herald::nodes`]). One node answers alone on the in-memory engine. (The active
//! channels and a user's connections are `census`.)

use super::Herald;
use crate::engine::{EngineError, NodeCommand, NodeInfo, NodeReply};

impl Herald {
    /// Every node's description of itself, this one's first, then by node id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let replies = self.engine().command(NodeCommand::Info).await?;
        let mut nodes: Vec<NodeInfo> =
            replies.into_iter().filter_map(|r| if let NodeReply::Info(n) = r { Some(n) } else { None }).collect();
        nodes.sort_by(|a, b| (a.node_id != self.node_id(), &a.node_id).cmp(&(b.node_id != self.node_id(), &b.node_id)));
        Ok(nodes)
    }

    pub(super) fn local_info(&self) -> NodeInfo {
        let hub = self.hub();
        NodeInfo {
            node_id: self.node_id().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            connections: hub.connection_count(),
            users: hub.user_count(),
            channels: hub.channel_count(),
            subscriptions: hub.channel_counts(|_| true).iter().map(|(_, n)| n).sum(),
            uptime_secs: self.uptime().as_secs(),
        }
    }
}
