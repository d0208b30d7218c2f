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
use crate::channel::ChannelName;
use crate::engine::{EngineError, PresenceEntry};

/// Moves connections whose lease lapsed out, and their users to leaving (due now).
const PURGE: &str = r"
local function purge(now)
  for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
    redis.call('ZREM', KEYS[2], c)
    local u = redis.call('HGET', KEYS[3], c)
    redis.call('HDEL', KEYS[3], c)
    if u then
      if redis.call('HINCRBY', KEYS[4], u, -1) <= 0 then
        redis.call('HDEL', KEYS[4], u)
        redis.call('ZADD', KEYS[5], now, u)
      end
    end
  end
end
local function keep(ms)
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ms) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// ARGV: connection, user, entry JSON, lease ms, key lifetime ms. Returns 1 to announce.
const JOIN: &str = r"
purge(now)
local added = redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
keep(tonumber(ARGV[5]))
if added == 0 then return 0 end
if redis.call('HINCRBY', KEYS[4], ARGV[2], 1) > 1 then return 0 end
if redis.call('ZREM', KEYS[5], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
";

/// ARGV: connection, grace ms.
const LEAVE: &str = r"
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local u = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if u and redis.call('HINCRBY', KEYS[4], u, -1) <= 0 then
  redis.call('HDEL', KEYS[4], u)
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), u)
end
return 1
";

/// Returns `[user, entry, user, entry, ...]` of the users whose offline is due, once.
const EXPIRE: &str = r"
purge(now)
local out = {}
for _, u in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  redis.call('ZREM', KEYS[5], u)
  if not redis.call('HGET', KEYS[4], u) then
    local entry = redis.call('HGET', KEYS[1], u)
    redis.call('HDEL', KEYS[1], u)
    out[#out + 1] = u
    out[#out + 1] = entry or ''
  end
end
return out
";

/// ARGV: user, status. Returns 1 if it changed.
const STATUS: &str = r"
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
local e = cjson.decode(entry)
if e.s == ARGV[2] then return 0 end
e.s = ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(e))
return 1
";

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
            list: with_prelude("purge(now)\nreturn {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[4])}"),
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
    status: String,
}

fn entry(user: String, stored: &str, connections: usize) -> PresenceEntry {
    let stored: Stored = serde_json::from_str(stored).unwrap_or(Stored { name: None, status: "online".to_owned() });
    PresenceEntry { user_id: user, user_name: stored.name, status: stored.status, connections }
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
        let stored = Stored { name: user.user_name.clone(), status: user.status.clone() };
        let stored = serde_json::to_string(&stored).map_err(unavailable)?;
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
        status: &str,
    ) -> Result<bool, EngineError> {
        let mut inv = self.presence_call(&self.presence_scripts.status, channel);
        inv.arg(user).arg(status);
        let changed: i64 = inv.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(changed == 1)
    }

    fn status_key(&self, user: &str) -> String {
        format!("{}:status:{{{user}}}", self.prefix)
    }

    /// Online anywhere: the user holds a connection slot whose lease has not lapsed.
    pub(super) async fn user_presence(&self, user: &str) -> Result<(bool, Option<String>), EngineError> {
        let mut conn = self.conn.clone();
        let now = crate::ids::now_ms();
        let live: u64 = conn.zcount(self.slots_key(user), now, "+inf").await.map_err(unavailable)?;
        let status: Option<String> = conn.get(self.status_key(user)).await.map_err(unavailable)?;
        Ok((live > 0, status))
    }

    pub(super) async fn user_status(&self, user: &str) -> Result<Option<String>, EngineError> {
        self.conn.clone().get(self.status_key(user)).await.map_err(unavailable)
    }

    pub(super) async fn set_user_status(&self, user: &str, status: Option<&str>) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let key = self.status_key(user);
        match status {
            // A status outlives a session by a day at most.
            Some(s) => conn.pset_ex::<_, _, ()>(key, s, 86_400_000).await,
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
        for conn in self.hub.connections() {
            if conn.user.is_none() {
                continue;
            }
            for ch in conn.channels {
                if !ch.is_pattern() && self.policies.of(&ch).is_some_and(|ns| ns.presence) {
                    by_channel.entry(ch).or_default().push(conn.connection.clone());
                }
            }
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
        let slots = self.hub.user_connections();
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
