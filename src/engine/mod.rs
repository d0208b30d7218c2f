//! Engines: where a publish is accepted, ordered and kept, and how it reaches every node.
//!
//! An [`Engine`] sits between publishing and the hub. It gives each event its position in
//! each of its channels, keeps bounded history for resume, and delivers accepted events to
//! the hub of every node that has subscribers ([`crate::hub::Hub::deliver`]). A publish
//! succeeds only once the engine has the event. The HTTP layer and the library API talk
//! to `dyn Engine` only, so engines can be swapped without touching them.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::event::{Prepared, Published};

/// A boxed future, as returned by [`Engine`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An engine could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the event engine is unavailable: {0}")]
    Unavailable(String),
}

/// An engine's counters (zero where they do not apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Publishes the engine could not accept (`redis_publish_errors`).
    pub publish_errors: u64,
    /// Times the engine reconnected to its backend.
    pub reconnects: u64,
}

/// What an engine answers for an accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    pub id: Arc<str>,
    /// The event's position in each of its channels.
    pub positions: Vec<(ChannelName, Position)>,
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

/// The answer of [`Engine::history`].
#[derive(Debug, Clone)]
pub enum HistoryRead {
    /// Every event after the requested position, oldest first (empty for a fresh read).
    Events { events: Vec<Arc<Published>>, head: Position },
    /// History cannot say what was missed: the client must refetch state.
    Gap { reason: GapReason, head: Position },
}

/// The contract between publishing, history and the hub.
pub trait Engine: Send + Sync + 'static {
    /// A short name for status pages (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Accepts a batch in order; resolves once the engine has every event of it.
    fn publish(&self, batch: Vec<Prepared>) -> BoxFuture<'_, Result<Vec<PublishAck>, EngineError>>;

    /// The events of `channel` after `after` (or, with `None`, just its head).
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<Position>,
    ) -> BoxFuture<'a, Result<HistoryRead, EngineError>>;

    /// Makes sure this node receives live events of `channels` before it resolves.
    fn watch<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Stores a single-use ticket for `ttl` (cluster-wide where the engine spans nodes).
    fn put_ticket<'a>(
        &'a self,
        ticket: &'a str,
        payload: String,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Takes a ticket: the first caller gets its payload, every later one `None`.
    fn take_ticket<'a>(&'a self, ticket: &'a str) -> BoxFuture<'a, Result<Option<String>, EngineError>>;

    /// Takes one of `user`'s connection slots across every node, or answers `false` when the
    /// user already holds `limit`. Engines of one node leave the count to the hub.
    fn acquire_slot<'a>(
        &'a self,
        _user: &'a str,
        _conn: &'a str,
        _limit: usize,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async { Ok(true) })
    }

    /// Whether the engine can accept publishes now (readiness).
    fn is_healthy(&self) -> bool;

    /// Counters for status and metrics.
    fn counters(&self) -> EngineCounters {
        EngineCounters::default()
    }

    /// Periodic housekeeping (expiring history); called by the node's maintenance task.
    fn sweep(&self) {}
}
