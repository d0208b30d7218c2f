//! The session concern of an engine: what lets a connection in. Single-use tickets, bans,
//! and per-user connection slots, cluster-wide where the engine spans nodes.

use std::time::Duration;

use super::{BoxFuture, EngineError};

/// Tickets, bans and connection slots.
pub trait SessionStore: Send + Sync + 'static {
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
    /// user already holds `limit`. `replacing`: a slot of the same client given up in the
    /// same step (a place's, taken over by its connection). Engines of one node leave the
    /// count to the hub.
    fn acquire_slot<'a>(
        &'a self,
        _user: &'a str,
        _conn: &'a str,
        _limit: usize,
        _replacing: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async { Ok(true) })
    }

    /// Gives back a connection slot taken by [`SessionStore::acquire_slot`] (the connection left).
    fn release_slot<'a>(&'a self, _user: &'a str, _conn: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Bans `user` for `ttl` (cluster-wide where the engine spans nodes); a later ban
    /// replaces the earlier one's expiry.
    fn ban<'a>(&'a self, user: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Lifts `user`'s ban; true if there was one.
    fn unban<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, EngineError>>;

    /// Whether `user` is banned now.
    fn is_banned<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, EngineError>>;
}
