//! Presence in Redis: who is in each channel, shared by every node.
//!
//! Per channel, under the channel's hash tag (so a cluster keeps them on one shard):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<channel>:pres` | hash | user → `{"n": name, "s": status}`, for users present or leaving |
//! | `<channel>:pres:c` | sorted set | connection → lease expiry (ms) |
//! | `<channel>:pres:o` | hash | connection → user |
//! | `<channel>:pres:n` | hash | user → live connections |
//! | `<channel>:pres:l` | sorted set | user → when their offline is due (ms) |
//!
//! Each node renews the leases of its own connections every sweep; a node that dies stops,
//! its connections lapse, and the next look (any node's) moves their users to leaving. A
//! user whose count drops to zero is leaving until the grace period ends; a connection in
//! between cancels it, so a reload announces nothing. Every change is one Lua script, so
//! two nodes never both announce the same user.

use std::time::Duration;

use redis::AsyncCommands;

use super::{Conn, RedisEngine, unavailable};
use crate::catalogue::PresenceStatus;
use crate::channel::ChannelName;
use crate::engine::{BoxFuture, EngineError, OccupancyChange, PresenceEntry, PresenceStore};

// The Lua scripts; each file's header says what it does and which KEYS and ARGV it takes.
// Every script runs after the prelude, which purges lapsed leases and defines `now`.
const PURGE: &str = include_str!("scripts/presence_prelude.lua");
const JOIN: &str = include_str!("scripts/presence_join.lua");
const LEAVE: &str = include_str!("scripts/presence_leave.lua");
const EXPIRE: &str = include_str!("scripts/presence_expire.lua");
const STATUS: &str = include_str!("scripts/presence_status.lua");
const LIST: &str = include_str!("scripts/presence_list.lua");

/// The scripts of this module, each with the shared prelude.
pub(super) struct Scripts {
    join: redis::Script,
    leave: redis::Script,
    expire: redis::Script,
    list: redis::Script,
    status: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_prelude = |body: &str| redis::Script::new(&format!("{PURGE}{body}"));
        Self {
            join: with_prelude(JOIN),
            leave: with_prelude(LEAVE),
            expire: with_prelude(EXPIRE),
            list: with_prelude(LIST),
            status: with_prelude(STATUS),
        }
    }
}

/// A presence entry as stored: short keys, since every user of every channel has one.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(rename = "s")]
    status: PresenceStatus,
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    info: Option<serde_json::Value>,
}

fn entry(user: String, stored: &str, connections: usize) -> PresenceEntry {
    let stored: Stored =
        serde_json::from_str(stored).unwrap_or(Stored { name: None, status: PresenceStatus::Online, info: None });
    PresenceEntry { user_id: user, user_name: stored.name, status: stored.status, connections, info: stored.info }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisEngine {
    fn presence_keys(&self, channel: &ChannelName) -> [String; 5] {
        let base = format!("{}:pres", self.pubsub_name(channel));
        [base.clone(), format!("{base}:c"), format!("{base}:o"), format!("{base}:n"), format!("{base}:l")]
    }

    fn presence_call<'a>(&'a self, script: &'a redis::Script, channel: &ChannelName) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for key in self.presence_keys(channel) {
            inv.key(key);
        }
        inv
    }

    /// How long a channel's presence keys live without any renewal: every node that had a
    /// connection there is gone.
    fn presence_lifetime(&self) -> u64 {
        ms(self.slot_lease) * 2 + 60_000
    }

    pub(super) async fn presence_join(
        &self,
        channel: &ChannelName,
        conn: &str,
        user: &PresenceEntry,
    ) -> Result<bool, EngineError> {
        let stored = Stored { name: user.user_name.clone(), status: user.status, info: user.info.clone() };
        let stored = serde_json::to_string(&stored).map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut inv = self.presence_call(&self.presence_scripts.join, channel);
        inv.arg(conn).arg(&user.user_id).arg(stored).arg(ms(self.slot_lease)).arg(self.presence_lifetime());
        let announce: i64 = inv.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(announce == 1)
    }

    pub(super) async fn presence_leave(
        &self,
        channel: &ChannelName,
        conn: &str,
        grace: Duration,
    ) -> Result<(), EngineError> {
        let mut inv = self.presence_call(&self.presence_scripts.leave, channel);
        inv.arg(conn).arg(ms(grace));
        let _: i64 = inv.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn presence_expire(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        let inv = self.presence_call(&self.presence_scripts.expire, channel);
        let flat: Vec<String> = inv.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(flat
            .chunks(2)
            .filter_map(|p| match p {
                [user, stored] => Some(entry(user.clone(), stored, 0)),
                _ => None,
            })
            .collect())
    }

    pub(super) async fn presence_list(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        let inv = self.presence_call(&self.presence_scripts.list, channel);
        let (users, counts): (Vec<String>, Vec<String>) =
            inv.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        let counts: std::collections::HashMap<&str, usize> = counts
            .chunks(2)
            .filter_map(|p| match p {
                [user, n] => Some((user.as_str(), n.parse().unwrap_or(0))),
                _ => None,
            })
            .collect();
        let mut list: Vec<PresenceEntry> = users
            .chunks(2)
            .filter_map(|p| match p {
                [user, stored] => Some(entry(user.clone(), stored, counts.get(user.as_str()).copied().unwrap_or(0))),
                _ => None,
            })
            .collect();
        list.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(list)
    }

    pub(super) async fn presence_set_status(
        &self,
        channel: &ChannelName,
        user: &str,
        status: PresenceStatus,
    ) -> Result<bool, EngineError> {
        let mut inv = self.presence_call(&self.presence_scripts.status, channel);
        inv.arg(user).arg(status.as_str());
        let changed: i64 = inv.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(changed == 1)
    }

    fn status_key(&self, user: &str) -> String {
        format!("{}:status:{{{user}}}", self.prefix)
    }

    /// Online anywhere: the user holds a connection slot whose lease has not lapsed.
    pub(super) async fn user_presence(&self, user: &str) -> Result<(bool, Option<PresenceStatus>), EngineError> {
        let mut conn = self.conn.clone();
        let now = crate::ids::now_ms();
        let live: u64 = conn.zcount(self.slots_key(user), now, "+inf").await.map_err(unavailable)?;
        let status: Option<String> = conn.get(self.status_key(user)).await.map_err(unavailable)?;
        Ok((live > 0, status.as_deref().and_then(PresenceStatus::parse)))
    }

    pub(super) async fn user_status(&self, user: &str) -> Result<Option<PresenceStatus>, EngineError> {
        let status: Option<String> = self.conn.clone().get(self.status_key(user)).await.map_err(unavailable)?;
        Ok(status.as_deref().and_then(PresenceStatus::parse))
    }

    pub(super) async fn set_user_status(&self, user: &str, status: Option<PresenceStatus>) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let key = self.status_key(user);
        match status {
            // A status outlives a session by a day at most.
            Some(s) => conn.pset_ex::<_, _, ()>(key, s.as_str(), 86_400_000).await,
            None => conn.del::<_, ()>(key).await,
        }
        .map_err(unavailable)
    }

    /// Renews the presence leases of this node's connections (one pipeline per channel on
    /// a cluster, where a pipeline stays on one shard; one in all otherwise).
    fn presence_renewals(&self) -> Vec<redis::Pipeline> {
        let lease = ms(self.slot_lease);
        let lifetime = self.presence_lifetime();
        let expiry = crate::ids::now_ms() + lease;
        let mut by_channel: std::collections::HashMap<ChannelName, Vec<std::sync::Arc<str>>> =
            std::collections::HashMap::new();
        for (ch, conn) in self.sink.node().presence_connections() {
            by_channel.entry(ch).or_default().push(conn);
        }
        let by_channel_empty = by_channel.is_empty();
        let mut pipes = Vec::new();
        let mut pipe = redis::pipe();
        for (ch, conns) in by_channel {
            let keys = self.presence_keys(&ch);
            for conn in conns {
                pipe.cmd("ZADD").arg(&keys[1]).arg("XX").arg(expiry).arg(&*conn).ignore();
            }
            for key in &keys {
                pipe.cmd("PEXPIRE").arg(key).arg(lifetime).ignore();
            }
            if self.is_cluster() {
                pipes.push(std::mem::replace(&mut pipe, redis::pipe()));
            }
        }
        // An empty pipeline is an error to Redis (`empty command`): a node with no streams
        // sends nothing.
        if !self.is_cluster() && !by_channel_empty {
            pipes.push(pipe);
        }
        pipes
    }

    /// Renews the leases of this node's users' connection slots and presence now, as the
    /// maintenance sweep does; answers how many pipelines it sent (none when the node has no
    /// streams).
    pub async fn renew_leases(&self) -> Result<usize, EngineError> {
        send_renewals(self.conn.clone(), self.lease_renewals()).await
    }

    /// The pipelines that renew the leases of this node's presence and connection slots;
    /// none when there is nothing to renew.
    pub(super) fn lease_renewals(&self) -> Vec<redis::Pipeline> {
        let mut pipes = self.presence_renewals();
        let slots = self.sink.node().held_slots();
        if slots.is_empty() {
            return pipes;
        }
        let now = crate::ids::now_ms();
        let lease = u64::try_from(self.slot_lease.as_millis()).unwrap_or(u64::MAX);
        let renew = |pipe: &mut redis::Pipeline, user: &str, conn_id: &str| {
            let key = self.slots_key(user);
            pipe.cmd("ZADD").arg(&key).arg("XX").arg(now + lease).arg(conn_id).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(lease).ignore();
        };
        // A cluster pipeline must stay within one slot: renew user by user there.
        if self.is_cluster() {
            for (user, conn_id) in &slots {
                let mut pipe = redis::pipe();
                renew(&mut pipe, user, conn_id);
                pipes.push(pipe);
            }
        } else {
            let mut pipe = redis::pipe();
            for (user, conn_id) in &slots {
                renew(&mut pipe, user, conn_id);
            }
            pipes.push(pipe);
        }
        pipes
    }
}

/// Sends lease renewals one pipeline after another, each even if one before it failed;
/// answers how many were sent, or the first failure.
pub(super) async fn send_renewals(mut conn: Conn, pipes: Vec<redis::Pipeline>) -> Result<usize, EngineError> {
    let mut failed = None;
    for pipe in &pipes {
        let renewed: Result<(), _> = pipe.query_async(&mut conn).await;
        if let Err(e) = renewed {
            failed.get_or_insert(unavailable(e));
        }
    }
    failed.map_or(Ok(pipes.len()), Err)
}

impl PresenceStore for RedisEngine {
    fn occupancy<'a>(
        &'a self,
        channel: &'a ChannelName,
        held: bool,
    ) -> BoxFuture<'a, Result<Vec<OccupancyChange>, EngineError>> {
        Box::pin(self.occupancy(channel, held))
    }

    fn presence_join<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
        user: &'a PresenceEntry,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(self.presence_join(channel, conn, user))
    }

    fn presence_leave<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(self.presence_leave(channel, conn, grace))
    }

    fn presence_expire<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<PresenceEntry>, EngineError>> {
        Box::pin(self.presence_expire(channel))
    }

    fn presence_list<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<Vec<PresenceEntry>, EngineError>> {
        Box::pin(self.presence_list(channel))
    }

    fn presence_set_status<'a>(
        &'a self,
        channel: &'a ChannelName,
        user: &'a str,
        status: PresenceStatus,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(self.presence_set_status(channel, user, status))
    }

    fn user_presence<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<(bool, Option<PresenceStatus>), EngineError>> {
        Box::pin(self.user_presence(user))
    }

    fn user_status<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<PresenceStatus>, EngineError>> {
        Box::pin(self.user_status(user))
    }

    fn set_user_status<'a>(
        &'a self,
        user: &'a str,
        status: Option<PresenceStatus>,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(self.set_user_status(user, status))
    }
}
