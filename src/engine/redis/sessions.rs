//! Tickets, bans and per-user connection slots in Redis: keys under the user's hash tag
//! (a cluster keeps a user's keys on one shard), each with an expiry. A slot is a member of
//! the user's sorted set, scored by its lease's end, which the node renews while the
//! connection lives.

use std::time::Duration;

use redis::{AsyncCommands, Value};

use super::{RedisEngine, unavailable};
use crate::engine::{BoxFuture, EngineError, SessionStore};

impl RedisEngine {
    pub(super) fn slots_key(&self, user: &str) -> String {
        format!("{}:conns:{{{user}}}", self.prefix)
    }

    /// A user's ban: under the user's hash tag, like their connection slots.
    fn ban_key(&self, user: &str) -> String {
        format!("{}:ban:{{{user}}}", self.prefix)
    }

    fn ticket_key(&self, ticket: &str) -> String {
        format!("{}:ticket:{ticket}", self.prefix)
    }
}

impl SessionStore for RedisEngine {
    fn put_ticket<'a>(
        &'a self,
        ticket: &'a str,
        payload: String,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let opts = redis::SetOptions::default()
                .conditional_set(redis::ExistenceCheck::NX)
                .with_expiration(redis::SetExpiry::PX(ms));
            let _: Value = conn.set_options(self.ticket_key(ticket), payload, opts).await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn take_ticket<'a>(&'a self, ticket: &'a str) -> BoxFuture<'a, Result<Option<String>, EngineError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            conn.get_del(self.ticket_key(ticket)).await.map_err(unavailable)
        })
    }

    fn acquire_slot<'a>(
        &'a self,
        user: &'a str,
        conn_id: &'a str,
        limit: usize,
        replacing: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let lease = u64::try_from(self.slot_lease.as_millis()).unwrap_or(u64::MAX);
            let mut call = self.slot_script.key(self.slots_key(user));
            call.arg(conn_id).arg(limit).arg(lease);
            if let Some(replaced) = replacing {
                call.arg(replaced);
            }
            let taken: i64 = call.invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(taken == 1)
        })
    }

    fn release_slot<'a>(&'a self, user: &'a str, conn_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let released: Result<i64, _> = self.conn.clone().zrem(self.slots_key(user), conn_id).await;
            if let Err(e) = released {
                tracing::debug!(error = %e, "could not release a connection slot; its lease will lapse");
            }
        })
    }

    fn ban<'a>(&'a self, user: &'a str, ttl: Duration) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let opts = redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(ms));
            let _: Value = self.conn.clone().set_options(self.ban_key(user), 1, opts).await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn unban<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move {
            let removed: i64 = self.conn.clone().del(self.ban_key(user)).await.map_err(unavailable)?;
            Ok(removed > 0)
        })
    }

    fn is_banned<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move { self.conn.clone().exists(self.ban_key(user)).await.map_err(unavailable) })
    }
}
