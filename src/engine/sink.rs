//! What an engine asks of the node it serves, and where it hands accepted events.
//!
//! An engine holds a [`NodeSink`], never the hub or the node handle: this trait is the whole
//! of what it may ask upward, so the engine layer imports nothing above it. The node handle
//! attaches one ([`super::Engine::attach`]) built over its hub and policies; tests attach
//! their own.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{BoxFuture, NodeCommand, NodeReply};
use crate::channel::ChannelName;
use crate::event::Published;

/// How much history a channel keeps (its namespace's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Events kept at most.
    pub size: usize,
    /// How long an event is kept.
    pub ttl: Duration,
    /// How long a finished AI stream's snapshot is kept.
    pub ai_retention: Duration,
}

impl HistoryLimits {
    /// [`Self::ttl`] in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// [`Self::ai_retention`] in milliseconds.
    pub fn ai_retention_ms(&self) -> u64 {
        u64::try_from(self.ai_retention.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The node as an engine sees it.
pub trait NodeSink: Send + Sync + 'static {
    /// Fans an accepted event out to this node's subscribers of any of its channels.
    fn deliver(&self, event: &Arc<Published>);

    /// Closes this node's streams of `channel` (or pattern), so that each resumes from its
    /// own position and learns of a gap the engine cannot replay. Answers how many closed.
    fn resync(&self, channel: &ChannelName) -> usize;

    /// This node's subscribers of `channel` (or pattern).
    fn subscriber_count(&self, channel: &ChannelName) -> usize;

    /// Channels and patterns with at least one subscriber on this node.
    fn active_channels(&self) -> Vec<ChannelName>;

    /// Whether `user` has a connection on this node.
    fn has_user(&self, user: &str) -> bool;

    /// The slots this node's users hold among their connections across nodes, as `(user id,
    /// slot)`: a connection's is its id, a place's its own (a Centrifugo client that follows
    /// nothing yet). Their leases are what an engine with leases renews.
    fn held_slots(&self) -> Vec<(Arc<str>, Arc<str>)>;

    /// This node's users' connections in channels with presence, as `(channel, connection
    /// id)`: the presence an engine with leases renews.
    fn presence_connections(&self) -> Vec<(ChannelName, Arc<str>)>;

    /// The history `channel` keeps; `None` for a channel of no configured namespace.
    fn history_limits(&self, channel: &ChannelName) -> Option<HistoryLimits>;

    /// Runs a command from another node (or this one) here.
    fn run_command(&self, command: NodeCommand) -> BoxFuture<'static, NodeReply>;
}

/// The node an engine serves, once attached. An engine is built before the node handle that
/// attaches itself to it; until then it talks to a node with no subscribers, no settings and
/// nobody to run a command, so no engine checks for the attachment at every call.
#[derive(Default)]
pub(crate) struct Attached(OnceLock<Arc<dyn NodeSink>>);

impl Attached {
    /// Attaches the node (the first one stays).
    pub(crate) fn attach(&self, sink: Arc<dyn NodeSink>) {
        let _ = self.0.set(sink);
    }

    /// The node, or [`NoNode`] before one is attached.
    pub(crate) fn node(&self) -> &dyn NodeSink {
        match self.0.get() {
            Some(sink) => &**sink,
            None => &NoNode,
        }
    }

    /// The node, if one is attached: for what must fail without one (a command).
    pub(crate) fn get(&self) -> Option<Arc<dyn NodeSink>> {
        self.0.get().cloned()
    }

    /// Whether a node is attached: what it answers then holds for good (the first one
    /// stays), what [`NoNode`] answers before does not.
    pub(crate) fn is_attached(&self) -> bool {
        self.0.get().is_some()
    }
}

/// The node of an engine not attached yet: it takes every event and has nobody.
struct NoNode;

impl NodeSink for NoNode {
    fn deliver(&self, _event: &Arc<Published>) {}

    fn resync(&self, _channel: &ChannelName) -> usize {
        0
    }

    fn subscriber_count(&self, _channel: &ChannelName) -> usize {
        0
    }

    fn active_channels(&self) -> Vec<ChannelName> {
        Vec::new()
    }

    fn has_user(&self, _user: &str) -> bool {
        false
    }

    fn held_slots(&self) -> Vec<(Arc<str>, Arc<str>)> {
        Vec::new()
    }

    fn presence_connections(&self) -> Vec<(ChannelName, Arc<str>)> {
        Vec::new()
    }

    fn history_limits(&self, _channel: &ChannelName) -> Option<HistoryLimits> {
        None
    }

    fn run_command(&self, _command: NodeCommand) -> BoxFuture<'static, NodeReply> {
        Box::pin(async { NodeReply::NotHere })
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A sink that records what an engine hands it, for the engines' unit tests.

    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use super::{HistoryLimits, NodeSink};
    use crate::channel::ChannelName;
    use crate::engine::{BoxFuture, NodeCommand, NodeReply};
    use crate::event::Published;

    /// Records deliveries and resyncs; every channel keeps `limits`; channels in
    /// `subscribed` have one subscriber.
    pub(crate) struct RecordingSink {
        pub(crate) limits: HistoryLimits,
        pub(crate) subscribed: Mutex<Vec<ChannelName>>,
        pub(crate) delivered: Mutex<Vec<Arc<Published>>>,
        pub(crate) resynced: Mutex<Vec<ChannelName>>,
        /// How many events were delivered, for a test that waits for them.
        count: tokio::sync::watch::Sender<usize>,
    }

    impl RecordingSink {
        pub(crate) fn new(size: usize) -> Arc<Self> {
            let ttl = Duration::from_secs(3600);
            Arc::new(Self {
                limits: HistoryLimits { size, ttl, ai_retention: ttl },
                subscribed: Mutex::new(Vec::new()),
                delivered: Mutex::new(Vec::new()),
                resynced: Mutex::new(Vec::new()),
                count: tokio::sync::watch::Sender::new(0),
            })
        }

        /// Resolves once `n` events were delivered in all.
        pub(crate) async fn delivered_at_least(&self, n: usize) {
            let _ = self.count.subscribe().wait_for(|count| *count >= n).await;
        }

        /// Every event delivered so far, in order.
        pub(crate) fn delivered(&self) -> Vec<Arc<Published>> {
            self.delivered.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }

        /// The ids of the events delivered so far, in order.
        pub(crate) fn delivered_ids(&self) -> Vec<Arc<str>> {
            self.delivered.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|e| e.id.clone()).collect()
        }
    }

    impl NodeSink for RecordingSink {
        fn deliver(&self, event: &Arc<Published>) {
            self.delivered.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(event));
            self.count.send_modify(|n| *n += 1);
        }

        fn resync(&self, channel: &ChannelName) -> usize {
            self.resynced.lock().unwrap_or_else(PoisonError::into_inner).push(channel.clone());
            0
        }

        fn subscriber_count(&self, channel: &ChannelName) -> usize {
            usize::from(self.subscribed.lock().unwrap_or_else(PoisonError::into_inner).contains(channel))
        }

        fn active_channels(&self) -> Vec<ChannelName> {
            self.subscribed.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }

        fn has_user(&self, _user: &str) -> bool {
            false
        }

        fn held_slots(&self) -> Vec<(Arc<str>, Arc<str>)> {
            Vec::new()
        }

        fn presence_connections(&self) -> Vec<(ChannelName, Arc<str>)> {
            Vec::new()
        }

        fn history_limits(&self, _channel: &ChannelName) -> Option<HistoryLimits> {
            Some(self.limits)
        }

        fn run_command(&self, _command: NodeCommand) -> BoxFuture<'static, NodeReply> {
            Box::pin(async { NodeReply::Done })
        }
    }
}
