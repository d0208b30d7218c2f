//! The node as its engine sees it: the [`NodeSink`] the node handle attaches to its engine.
//!
//! Deliveries, resyncs and counts go to the hub; history limits and which channels have
//! presence come from the policies; commands from other nodes run on the node handle, which
//! the sink holds weakly (the node holds its engine, and the engine its sink).

use std::sync::{Arc, Weak};

use super::{Herald, Inner};
use crate::channel::ChannelName;
use crate::engine::{BoxFuture, HistoryLimits, NodeCommand, NodeReply, NodeSink};
use crate::event::Published;
use crate::hub::Hub;
use crate::policy::Policies;

pub(super) struct HubSink {
    pub(super) hub: Arc<Hub>,
    pub(super) policies: Arc<Policies>,
    pub(super) node: Weak<Inner>,
}

impl NodeSink for HubSink {
    fn deliver(&self, event: &Arc<Published>) {
        self.hub.deliver(event);
    }

    fn resync(&self, channel: &ChannelName) -> usize {
        self.hub.disconnect_channel(channel)
    }

    fn subscriber_count(&self, channel: &ChannelName) -> usize {
        self.hub.subscriber_count(channel.as_str())
    }

    fn active_channels(&self) -> Vec<ChannelName> {
        self.hub.active_channels()
    }

    fn has_user(&self, user: &str) -> bool {
        self.hub.has_user(user)
    }

    fn user_connections(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.hub.user_connections()
    }

    fn presence_connections(&self) -> Vec<(ChannelName, Arc<str>)> {
        let mut out = Vec::new();
        for conn in self.hub.connections() {
            if conn.user.is_none() {
                continue;
            }
            for ch in conn.channels {
                if !ch.is_pattern() && self.policies.of(&ch).is_some_and(|ns| ns.presence) {
                    out.push((ch, Arc::clone(&conn.connection)));
                }
            }
        }
        out
    }

    fn history_limits(&self, channel: &ChannelName) -> Option<HistoryLimits> {
        self.policies.of(channel).map(|ns| HistoryLimits {
            size: ns.history_size,
            ttl: ns.history_ttl,
            ai_retention: ns.ai_stream_retention,
        })
    }

    fn run_command(&self, command: NodeCommand) -> BoxFuture<'static, NodeReply> {
        let node = self.node.clone();
        Box::pin(async move {
            match node.upgrade() {
                Some(inner) => Herald { inner }.handle_command(command).await,
                None => NodeReply::NotHere,
            }
        })
    }
}
