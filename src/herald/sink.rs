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
        self.hub.subscriber_count(channel)
    }

    fn active_channels(&self) -> Vec<ChannelName> {
        self.hub.active_channels()
    }

    fn has_user(&self, user: &str) -> bool {
        self.hub.has_user(user)
    }

    fn held_slots(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.hub.held_slots()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, NamespaceConfig};

    fn sink(config: &Config) -> HubSink {
        HubSink { hub: Arc::new(Hub::new()), policies: Arc::new(Policies::from_config(config)), node: Weak::new() }
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse_with(name, |_| true).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn history_limits_are_the_channel_namespace_settings_and_none_outside_every_namespace() {
        let mut config = Config::default();
        config.namespaces.insert(
            "brief".to_owned(),
            NamespaceConfig {
                history_size: Some(3),
                history_ttl: Some(Duration::from_secs(7)),
                ai_stream_retention: Some(Duration::from_secs(11)),
                ..NamespaceConfig::default()
            },
        );
        let sink = sink(&config);
        let limits = HistoryLimits { size: 3, ttl: Duration::from_secs(7), ai_retention: Duration::from_secs(11) };
        assert_eq!(sink.history_limits(&ch("brief:x")), Some(limits));
        let room = sink.history_limits(&ch("channel:x")).map(|l| (l.size, l.ttl));
        assert_eq!(room, Some((config.history_size, config.history_ttl)), "the defaults for a room");
        assert_eq!(sink.history_limits(&ch("nowhere:x")), None);
    }

    #[tokio::test]
    async fn a_command_for_a_node_that_is_gone_is_not_run_here() {
        let sink = sink(&Config::default());
        assert_eq!(sink.run_command(NodeCommand::Count { channel: "channel:x".into() }).await, NodeReply::NotHere);
        assert_eq!((sink.active_channels(), sink.subscriber_count(&ch("channel:x"))), (Vec::new(), 0));
    }
}
