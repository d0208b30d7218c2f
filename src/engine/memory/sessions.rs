//! The in-memory engine's session state: single-use tickets and bans, each with an expiry
//! the maintenance sweep enforces. Connection slots are the hub's count on one node.

use std::time::{Duration, Instant};

use super::{MemoryEngine, lock};
use crate::engine::{BoxFuture, EngineError, SessionStore};

/// Tickets held at once; past it new tickets are refused until old ones expire.
const MAX_TICKETS: usize = 100_000;

/// Bans held at once; past it a new ban is refused until old ones expire.
const MAX_BANS: usize = 100_000;

impl SessionStore for MemoryEngine {
    fn put_ticket<'a>(
        &'a self,
        ticket: &'a str,
        payload: String,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        let mut tickets = lock(&self.tickets);
        let result = if tickets.len() >= MAX_TICKETS {
            Err(EngineError::Full("too many outstanding tickets; try again shortly".into()))
        } else {
            tickets.insert(ticket.to_owned(), (payload, Instant::now() + ttl));
            Ok(())
        };
        Box::pin(async move { result })
    }

    fn take_ticket<'a>(&'a self, ticket: &'a str) -> BoxFuture<'a, Result<Option<String>, EngineError>> {
        let taken = lock(&self.tickets).remove(ticket).filter(|(_, until)| Instant::now() < *until).map(|(p, _)| p);
        Box::pin(async move { Ok(taken) })
    }

    fn ban<'a>(&'a self, user: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), EngineError>> {
        let now = Instant::now();
        let mut bans = lock(&self.bans);
        if bans.len() >= MAX_BANS && !bans.contains_key(user) {
            bans.retain(|_, until| now < *until);
        }
        let result = if bans.len() >= MAX_BANS && !bans.contains_key(user) {
            Err(EngineError::Full(format!("{MAX_BANS} bans are in force; lift or wait out some first")))
        } else {
            bans.insert(user.to_owned(), now + ttl);
            Ok(())
        };
        Box::pin(async move { result })
    }

    fn unban<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, EngineError>> {
        let lifted = lock(&self.bans).remove(user).is_some_and(|until| Instant::now() < until);
        Box::pin(async move { Ok(lifted) })
    }

    fn is_banned<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, EngineError>> {
        let banned = lock(&self.bans).get(user).is_some_and(|until| Instant::now() < *until);
        Box::pin(async move { Ok(banned) })
    }
}
