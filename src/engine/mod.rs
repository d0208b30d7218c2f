//! Engines: where a publish is accepted, ordered and kept, and how it reaches every node.
//!
//! An engine sits between publishing and the hub. It gives each event its position in each
//! of its channels, keeps bounded history for resume, and hands accepted events to every
//! node that has subscribers, through the [`NodeSink`] the node attached. A publish succeeds
//! only once the engine has the event.
//!
//! The engine layer is below the hub and the node handle and imports neither: what it needs
//! of the node (deliver an event, resync a channel, a few counts, history limits, running a
//! command from another node) it asks of the sink. Its seams are small traits, one per
//! concern, that every engine implements:
//!
//! | trait | concern |
//! |---|---|
//! | [`Broker`] | publish, history, watching channels, commands between nodes |
//! | [`PresenceStore`] | who is in each channel, and users' statuses |
//! | [`SessionStore`] | tickets, bans and per-user connection slots |
//! | [`Engine`] | all three, plus attaching the sink, health, counters and housekeeping |

mod broker;
pub mod memory;
pub(crate) mod merge;
mod presence;
pub mod redis;
mod sessions;
mod sink;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub(crate) use broker::check_batch_keys;
pub use broker::{
    AiSnapshot, Broker, CommandRefusal, ConnectionInfo, DisconnectTarget, GapReason, HistoryPage, HistoryRead,
    JoinFrom, NodeCommand, NodeInfo, NodeReply, PageQuery, PublishAck, StartRead,
};
pub use presence::{OccupancyChange, PresenceEntry, PresenceStore};
pub use sessions::SessionStore;
pub use sink::{HistoryLimits, NodeSink};

/// A boxed future, as returned by the engine traits' methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An engine could not do what was asked. Each variant says whose fault it is, which is
/// what the HTTP answer and the log level follow.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backend cannot be reached or did not answer as it should (Redis down, a timeout,
    /// an unexpected reply): worth a retry shortly.
    #[error("the event engine is unavailable: {0}")]
    Unavailable(String),
    /// A bounded table of the in-memory engine is full (tickets, idempotency keys, bans):
    /// worth a retry once some have expired.
    #[error("the event engine is full: {0}")]
    Full(String),
    /// A fault of this node, not of the backend or the request: no secure random source,
    /// a value it cannot encode, a command handler that failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// An idempotency key came back with a different event than the one it was first
    /// published with.
    #[error("this idempotency key was used for a different event; use a new key for a new event")]
    IdempotencyKeyReused,
}

/// An engine's counters (zero where they do not apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Publishes the engine could not accept (`redis_publish_errors`).
    pub publish_errors: u64,
    /// Times the engine reconnected to its backend.
    pub reconnects: u64,
    /// Channels the node follows on its backend, each with the point a catch-up after a
    /// reconnect would start from (a gauge).
    pub watched_channels: u64,
    /// Channels whose log (position and history) the engine holds in this process; the
    /// Redis engine keeps them in Redis, under keys that expire.
    pub channels: u64,
}

/// An engine: every concern's trait, and its life on a node.
pub trait Engine: Broker + PresenceStore + SessionStore {
    /// A short name for status pages (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Attaches the node this engine serves (set once, when the node handle is built): from
    /// then on accepted events are delivered to it and commands from other nodes run on it.
    fn attach(&self, sink: Arc<dyn NodeSink>);

    /// Whether the engine can accept publishes now (readiness).
    fn is_healthy(&self) -> bool;

    /// Counters for status and metrics.
    fn counters(&self) -> EngineCounters {
        EngineCounters::default()
    }

    /// Periodic housekeeping (expiring history); called by the node's maintenance task.
    fn sweep(&self) {}
}
