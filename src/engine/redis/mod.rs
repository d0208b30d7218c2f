//! The Redis engine: several nodes act as one.
//!
//! * **Publish**: one Lua script per batch event appends the event to each channel's Stream
//!   (`XADD`, bounded by size and age) and `PUBLISH`es it on the channel's pub/sub channel,
//!   atomically, so the order of ids and the order of live delivery agree. A publish is
//!   acknowledged only when Redis answered; otherwise the publisher gets `503`.
//! * **Fan-out**: one pub/sub connection per node, subscribed only to the channels that
//!   have local subscribers (subscribe before the first subscriber reads history;
//!   unsubscribe, batched, once a channel has had none for a reconcile tick). Messages
//!   carry the Stream id, so every node frames the event with the same SSE id.
//! * **History**: resume reads the Stream after the client's position. A channel's *floor*
//!   is the position below which the Stream no longer vouches for completeness (the highest
//!   trimmed id, or the time the Stream was created minus its age limit); resuming from
//!   below it is a gap, said plainly.
//! * **Outage**: when the pub/sub connection drops, the node reconnects with backoff,
//!   resubscribes, and reads from each Stream what was published since the last event it
//!   delivered, before going back to live messages. Streams stay open meanwhile.
//!
//! Keys live under a configurable prefix (`redis_prefix`, default `realtime`), with the
//! channel's name as a hash tag: `realtime:channel:{general}` (pub/sub),
//! `realtime:channel:{general}:log` (Stream), `realtime:channel:{general}:floor`,
//! `realtime:{system}` for `system`.

mod commands;
mod presence;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::merge;
use super::{
    AiSnapshot, BoxFuture, CommandHandler, Engine, EngineError, GapReason, HistoryRead, NodeCommand, NodeReply,
    PresenceEntry, PublishAck,
};
use crate::catalogue::PresenceStatus;
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::event::{Copy, Prepared, Published, json_for};
use crate::hub::Hub;
use crate::policy::Policies;

// The Lua scripts; each file's header says what it does and which KEYS and ARGV it takes.
const PUBLISH_LUA: &str = include_str!("scripts/publish.lua");
const HISTORY_LUA: &str = include_str!("scripts/history.lua");
const SLOT_LUA: &str = include_str!("scripts/slot.lua");

/// The command connection: one Redis, or a Redis Cluster (routed by key slot).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://` or `rediss://`; for a cluster, seed nodes separated by commas.
    pub url: String,
    /// PEM file of the CA of a `rediss://` server with a private CA.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Use Redis Cluster: sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`), one script per slot.
    pub cluster: bool,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// How long a user's connection slot (and presence) lives without renewal.
    pub slot_lease: Duration,
    /// This node's id, for commands between nodes.
    pub node_id: String,
}

/// Counters the Redis engine keeps.
#[derive(Default, Debug)]
pub struct RedisStats {
    /// Publishes that Redis did not acknowledge.
    pub publish_errors: AtomicU64,
    /// Times the pub/sub connection was re-established.
    pub reconnects: AtomicU64,
}

/// What the pub/sub task connects with.
#[allow(clippy::large_enum_variant, reason = "built once per node and moved into its task")]
enum PubSubClient {
    Single(redis::Client),
    /// A builder, not a client: the task adds its own push sender.
    Cluster(redis::cluster::ClusterClientBuilder),
}

enum Command {
    Watch(Vec<ChannelName>, oneshot::Sender<Result<(), EngineError>>),
}

/// The multi-node engine.
pub struct RedisEngine {
    hub: Arc<Hub>,
    policies: Arc<Policies>,
    prefix: String,
    conn: Conn,
    commands: mpsc::UnboundedSender<Command>,
    healthy: AtomicBool,
    publish_script: Script,
    history_script: Script,
    slot_script: Script,
    /// How long a user's connection slot lives without renewal (a dead node's slots lapse).
    slot_lease: Duration,
    /// The position of the last event delivered per watched channel: where catch-up starts.
    last_seen: Mutex<HashMap<ChannelName, Position>>,
    /// This node's id: where other nodes send replies to its commands.
    node_id: String,
    pending: commands::Pending,
    presence_scripts: presence::Scripts,
    pub stats: RedisStats,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("redis: {e}"))
}

impl RedisEngine {
    /// Connects to Redis (or a Redis Cluster) and starts the node's pub/sub task.
    pub async fn connect(opts: RedisOptions, hub: Arc<Hub>, policies: Arc<Policies>) -> Result<Arc<Self>, EngineError> {
        let root_cert = match &opts.tls_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?),
            None => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (conn, pubsub) = if opts.cluster {
            let seeds: Vec<&str> = opts.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
            let builder = |resp3: bool| {
                let mut b = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2));
                if let Some(root_cert) = &root_cert {
                    b = b.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert.clone()) });
                }
                if resp3 { b.use_protocol(redis::ProtocolVersion::RESP3) } else { b }
            };
            let commands = builder(false).build().map_err(unavailable)?;
            let conn = commands.get_async_connection().await.map_err(unavailable)?;
            (Conn::Cluster(conn), PubSubClient::Cluster(builder(true)))
        } else {
            let client = match root_cert {
                Some(root_cert) => {
                    let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                    redis::Client::build_with_tls(opts.url.as_str(), certs).map_err(unavailable)?
                }
                None => redis::Client::open(opts.url.as_str()).map_err(unavailable)?,
            };
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(2);
            let conn = client.get_connection_manager_with_config(config).await.map_err(unavailable)?;
            (Conn::Single(conn), PubSubClient::Single(client))
        };
        let engine = Arc::new(Self {
            hub,
            policies,
            prefix: opts.prefix,
            conn,
            commands: tx,
            healthy: AtomicBool::new(false),
            publish_script: Script::new(PUBLISH_LUA),
            history_script: Script::new(HISTORY_LUA),
            slot_script: Script::new(SLOT_LUA),
            slot_lease: opts.slot_lease,
            last_seen: Mutex::new(HashMap::new()),
            node_id: opts.node_id,
            pending: commands::Pending::default(),
            presence_scripts: presence::Scripts::new(),
            stats: RedisStats::default(),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        match pubsub {
            PubSubClient::Single(client) => {
                tokio::spawn(pubsub_task(Arc::downgrade(&engine), client, rx, ready_tx));
            }
            PubSubClient::Cluster(builder) => {
                tokio::spawn(cluster_pubsub_task(Arc::downgrade(&engine), builder, rx, ready_tx));
            }
        }
        // Wait for the first pub/sub connection, so a node starts ready or not at all.
        match tokio::time::timeout(Duration::from_secs(5), ready_rx).await {
            Ok(Ok(())) => Ok(engine),
            _ => Err(EngineError::Unavailable("redis: cannot open the pub/sub connection".into())),
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// The Herald channel of a pub/sub channel name (the inverse of [`Self::pubsub_name`]).
    fn channel_of(&self, pubsub: &str) -> Option<ChannelName> {
        let rest = pubsub.strip_prefix(self.prefix.as_str())?.strip_prefix(':')?;
        let raw = match rest.split_once(":{") {
            Some((ns, name)) => format!("{ns}:{}", name.strip_suffix('}')?),
            None => rest.strip_prefix('{')?.strip_suffix('}')?.to_owned(),
        };
        ChannelName::parse_with(&raw, |_| true).ok()
    }

    /// The pub/sub channel of a Herald channel: `realtime:channel:{general}`.
    pub fn pubsub_name(&self, channel: &ChannelName) -> String {
        match channel.as_str().split_once(':') {
            Some((ns, name)) => format!("{}:{ns}:{{{name}}}", self.prefix),
            None => format!("{}:{{{}}}", self.prefix, channel.as_str()),
        }
    }

    fn stream_key(&self, channel: &ChannelName) -> String {
        format!("{}:log", self.pubsub_name(channel))
    }

    fn floor_key(&self, channel: &ChannelName) -> String {
        format!("{}:floor", self.pubsub_name(channel))
    }

    /// The index of a channel's AI streams; each stream's snapshot is under `<key>:<id>`.
    fn streams_key(&self, channel: &ChannelName) -> String {
        format!("{}:ai", self.pubsub_name(channel))
    }

    fn stream_retention(&self, channel: &ChannelName) -> u64 {
        self.policies
            .of(channel)
            .map_or(1, |ns| u64::try_from(ns.ai_stream_retention.as_millis()).unwrap_or(u64::MAX).max(1))
    }

    fn slots_key(&self, user: &str) -> String {
        format!("{}:conns:{{{user}}}", self.prefix)
    }

    /// A user's ban: under the user's hash tag, like their connection slots.
    fn ban_key(&self, user: &str) -> String {
        format!("{}:ban:{{{user}}}", self.prefix)
    }

    fn ticket_key(&self, ticket: &str) -> String {
        format!("{}:ticket:{ticket}", self.prefix)
    }

    fn limits(&self, channel: &ChannelName) -> (usize, u64) {
        self.policies.of(channel).map_or((0, 1), |ns| {
            (ns.history_size, u64::try_from(ns.history_ttl.as_millis()).unwrap_or(u64::MAX).max(1))
        })
    }

    /// The publish script for `p` on `channels` (all of its channels on one Redis; one at a
    /// time on a cluster, where a script reaches one slot).
    fn invocation(&self, p: &Prepared, channels: &[ChannelName]) -> redis::ScriptInvocation<'_> {
        let mut inv = self.publish_script.prepare_invoke();
        let publish = if self.is_cluster() { "SPUBLISH" } else { "PUBLISH" };
        inv.arg(&*p.id).arg(&*p.event_type).arg(&p.body).arg(publish).arg(p.channels.len());
        match &p.ai {
            Some(chunk) => {
                // Every channel of one event shares its namespace's retention, or the
                // shortest of them.
                let keep = channels.iter().map(|c| self.stream_retention(c)).min().unwrap_or(1);
                inv.arg(&chunk.stream_id).arg(&chunk.text).arg(if chunk.done { "1" } else { "0" }).arg(keep)
            }
            None => inv.arg("").arg("").arg("0").arg(0),
        };
        for ch in channels {
            let (size, ttl) = self.limits(ch);
            inv.key(self.stream_key(ch)).key(self.floor_key(ch)).key(self.streams_key(ch));
            inv.arg(self.pubsub_name(ch)).arg(ch.as_str()).arg(size).arg(ttl);
        }
        // The key goes with the event's first channel, in that channel's slot: on a cluster
        // the script of the first channel decides whether the event is published at all.
        if let (Some(key), Some(first)) = (&p.idempotency, channels.first())
            && p.channels.first() == Some(first)
        {
            let window = u64::try_from(key.window.as_millis()).unwrap_or(u64::MAX).max(1);
            inv.key(self.idempotency_key(first, &key.key)).arg(&key.fingerprint).arg(window);
        }
        inv
    }

    /// Where an idempotency key is kept: `realtime:channel:{general}:idem:<digest>`, in the
    /// slot of the event's first channel.
    fn idempotency_key(&self, channel: &ChannelName, key: &str) -> String {
        format!("{}:idem:{key}", self.pubsub_name(channel))
    }

    /// Before a batch with idempotency keys: refuses it whole if one of its keys is held for
    /// a different event. (The scripts decide again, atomically, as each event is published;
    /// this check keeps a reused key from leaving the rest of the batch published.)
    async fn check_keys(&self, batch: &[Prepared]) -> Result<(), EngineError> {
        super::check_batch_keys(batch)?;
        let mut conn = self.conn.clone();
        for (first, key) in batch.iter().filter_map(|p| Some((p.channels.first()?, p.idempotency.as_deref()?))) {
            let seen: Option<String> = conn.get(self.idempotency_key(first, &key.key)).await.map_err(unavailable)?;
            if seen.is_some_and(|s| s.split(' ').next() != Some(key.fingerprint.as_str())) {
                return Err(EngineError::IdempotencyKeyReused);
            }
        }
        Ok(())
    }

    /// On a cluster: each event, channel by channel, in order. A batch or a multi-channel
    /// event spans slots there, so it is not atomic; a connection following several of an
    /// event's channels still receives it once ([`Published::fanout`]).
    async fn publish_cluster(&self, batch: &[Prepared]) -> Result<Vec<PublishAck>, EngineError> {
        let mut conn = self.conn.clone();
        let mut acks = Vec::with_capacity(batch.len());
        'events: for p in batch {
            let mut positions = Vec::with_capacity(p.channels.len());
            for ch in &p.channels {
                let ids: Vec<String> =
                    self.invocation(p, std::slice::from_ref(ch)).invoke_async(&mut conn).await.map_err(unavailable)?;
                if let Some(stored) = replay(&ids) {
                    acks.push(replayed(p, stored)?);
                    continue 'events;
                }
                let id = ids.first().ok_or_else(|| unavailable("empty publish reply"))?;
                let pos = Position::parse_stream_id(id).ok_or_else(|| unavailable(format!("bad stream id {id}")))?;
                positions.push((ch.clone(), pos));
            }
            acks.push(PublishAck { id: p.id.clone(), positions });
        }
        Ok(acks)
    }

    /// Publishes a batch: one script for one event, or every event's script inside one
    /// MULTI/EXEC, so that a batch is all accepted or (Redis gone) not at all.
    async fn publish_batch(&self, batch: &[Prepared]) -> Result<Vec<PublishAck>, EngineError> {
        if batch.len() > 1 && batch.iter().any(|p| p.idempotency.is_some()) {
            self.check_keys(batch).await?;
        }
        if self.is_cluster() {
            return self.publish_cluster(batch).await;
        }
        let mut conn = self.conn.clone();
        let ids: Vec<Vec<String>> = if let [one] = batch {
            vec![self.invocation(one, &one.channels).invoke_async(&mut conn).await.map_err(unavailable)?]
        } else {
            // EVALSHA inside MULTI cannot fall back to EVAL: load the script first.
            self.publish_script.prepare_invoke().load_async(&mut conn).await.map_err(unavailable)?;
            let invocations: Vec<_> = batch.iter().map(|p| self.invocation(p, &p.channels)).collect();
            let mut pipe = redis::pipe();
            pipe.atomic();
            for inv in &invocations {
                pipe.invoke_script(inv);
            }
            pipe.query_async(&mut conn).await.map_err(unavailable)?
        };
        batch
            .iter()
            .zip(ids)
            .map(|(p, ids)| {
                if let Some(stored) = replay(&ids) {
                    return replayed(p, stored);
                }
                let positions = ids
                    .iter()
                    .map(|id| Position::parse_stream_id(id).ok_or_else(|| unavailable(format!("bad stream id {id}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(PublishAck { id: p.id.clone(), positions: p.channels.iter().cloned().zip(positions).collect() })
            })
            .collect()
    }

    async fn read(&self, channel: &ChannelName, after: Option<Position>) -> Result<HistoryRead, EngineError> {
        let mut reads = self.read_many(&[(channel.clone(), after)]).await?;
        reads.pop().ok_or_else(|| unavailable("unexpected history reply"))
    }

    /// Reads channels' histories with one script, at one instant; on a cluster, where a
    /// script reaches one slot, one channel after another.
    async fn read_many(&self, reads: &[(ChannelName, Option<Position>)]) -> Result<Vec<HistoryRead>, EngineError> {
        if self.is_cluster() && reads.len() > 1 {
            let mut out = Vec::with_capacity(reads.len());
            for one in reads {
                out.extend(self.read_script(std::slice::from_ref(one)).await?);
            }
            return Ok(out);
        }
        self.read_script(reads).await
    }

    /// One run of the history script for `reads`, whose keys must all be in one slot on a
    /// cluster.
    async fn read_script(&self, reads: &[(ChannelName, Option<Position>)]) -> Result<Vec<HistoryRead>, EngineError> {
        let mut conn = self.conn.clone();
        let mut inv = self.history_script.prepare_invoke();
        for (channel, after) in reads {
            let (size, ttl) = self.limits(channel);
            inv.key(self.stream_key(channel)).key(self.floor_key(channel)).key(self.streams_key(channel));
            inv.arg(after.map(Position::to_stream_id).unwrap_or_default()).arg(size.max(1)).arg(ttl);
        }
        let reply: Value = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        let Value::Array(replies) = reply else { return Err(unavailable("unexpected history reply")) };
        if replies.len() != reads.len() {
            return Err(unavailable("unexpected history reply"));
        }
        reads
            .iter()
            .zip(&replies)
            .map(|((channel, after), reply)| {
                let (head, floor, entries, streams) =
                    parse_history(channel, reply).ok_or_else(|| unavailable("unexpected history reply"))?;
                let events = match *after {
                    None => Ok(Vec::new()),
                    Some(p) if p > head => Err(GapReason::UnknownPosition),
                    Some(p) if p < floor => Err(GapReason::HistoryExpired),
                    Some(_) => Ok(entries
                        .into_iter()
                        .filter_map(|(pos, fields)| stored_event(channel, pos, &fields))
                        .collect()),
                };
                Ok(HistoryRead { head, events, streams })
            })
            .collect()
    }

    /// Moves a watched channel's catch-up point forward. Channels the node does not watch
    /// (the other channels of a multi-channel event, channels reached through a pattern) are
    /// not remembered: nothing would ever forget them.
    fn note_seen(&self, channel: &ChannelName, pos: Position) {
        let mut seen = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = seen.get_mut(channel)
            && pos > *entry
        {
            *entry = pos;
        }
    }

    /// Delivers one pub/sub message to the hub. Its first line is `<stream id> <event id>
    /// <type> <channel count>`; the second, for an event on several channels, lists
    /// `<channel> <stream id>` pairs; the rest is the body.
    fn on_message(&self, channel: &ChannelName, payload: &[u8]) {
        match self.parse_message(channel, payload) {
            Some(event) => self.hub.deliver(&event),
            None => tracing::warn!(%channel, "ignoring a malformed pub/sub message"),
        }
    }

    fn parse_message(&self, channel: &ChannelName, payload: &[u8]) -> Option<Arc<Published>> {
        let text = std::str::from_utf8(payload).ok()?;
        let (head, rest) = text.split_once('\n')?;
        let (positions, body) = rest.split_once('\n')?;
        let mut parts = head.split(' ');
        let (sid, id, etype, n) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let pos = Position::parse_stream_id(sid)?;
        let fanout: u16 = n.parse().ok()?;
        if positions.is_empty() {
            self.note_seen(channel, pos);
            return Some(published(channel, pos, id, etype, body, fanout));
        }
        let mut copies = Vec::new();
        let mut words = positions.split(' ');
        while let (Some(name), Some(sid)) = (words.next(), words.next()) {
            let ch = ChannelName::parse_with(name, |_| true).ok()?;
            let pos = Position::parse_stream_id(sid)?;
            self.note_seen(&ch, pos);
            copies.push(Copy::new(ch.clone(), pos, etype, &json_for(id, ch.as_str(), body)));
        }
        Some(Arc::new(Published::new(Arc::from(id), Arc::from(etype), copies, fanout)))
    }

    /// After a reconnect: delivers what the watched channels got since the last event
    /// delivered on each. They are read at one instant (one script; on a cluster, channel by
    /// channel) and merged ([`merge`]), so that each channel's events go in that channel's
    /// order and an event on several of them goes once, with its copies on all of them: a
    /// stream following several channels must not get it once per channel, out of order.
    async fn catch_up(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        let reads: Vec<(ChannelName, Option<Position>)> = {
            let seen = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
            channels.iter().filter_map(|c| Some((c.clone(), Some(*seen.get(c)?)))).collect()
        };
        if reads.is_empty() {
            return Ok(());
        }
        let mut lists = Vec::with_capacity(reads.len());
        for ((ch, _), read) in reads.iter().zip(self.read_many(&reads).await?) {
            match read.events {
                Ok(events) => {
                    if !events.is_empty() {
                        tracing::info!(channel = %ch, events = events.len(), "delivering events published during the outage");
                    }
                    lists.push(
                        events.into_iter().filter_map(|ev| Some((ev.copy_on(ch.as_str())?.position, ev))).collect(),
                    );
                }
                Err(_) => {
                    // Events were missed and cannot be replayed here: close the channel's
                    // streams, so that each client resumes and is told to refetch (`reset`).
                    let closed = self.hub.disconnect_channel(ch);
                    tracing::warn!(channel = %ch, closed, "history no longer covers the outage; streams closed to resync");
                    self.note_seen(ch, read.head);
                    lists.push(merge::List::new());
                }
            }
        }
        for step in merge::merge(lists) {
            for t in &step.taken {
                self.note_seen(&reads[t.list].0, t.position);
            }
            // Not first: a copy of an event whose writes crossed another's (a cluster). Its
            // channel's subscribers still need it; the others drop it as a repeat.
            let event = if step.first { step.joined() } else { step.taken.first().map(|t| Arc::clone(&t.event)) };
            if let Some(event) = event {
                self.hub.deliver(&event);
            }
        }
        Ok(())
    }

    /// The head of a channel's Stream, remembered as where catch-up would start: from here
    /// on the channel is watched.
    async fn mark_head(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let head = self.read(channel, None).await?.head;
        let mut seen = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = seen.entry(channel.clone()).or_default();
        *entry = (*entry).max(head);
        Ok(())
    }
}

/// The stored answer of an idempotency key, when the publish script found one.
fn replay(reply: &[String]) -> Option<&str> {
    match reply {
        [marker, stored] if marker == "dup" => Some(stored),
        _ => None,
    }
}

/// The first publish's answer under `p`'s key, stored as `<fingerprint> <id> <stream ids>`;
/// refused if that key was first used for a different event.
fn replayed(p: &Prepared, stored: &str) -> Result<PublishAck, EngineError> {
    let mut words = stored.split(' ');
    let fingerprint = p.idempotency.as_deref().map(|k| k.fingerprint.as_str());
    if words.next() != fingerprint {
        return Err(EngineError::IdempotencyKeyReused);
    }
    let id = words.next().ok_or_else(|| unavailable("bad idempotency record"))?;
    let positions = p.channels.iter().cloned().zip(words.filter_map(Position::parse_stream_id)).collect();
    Ok(PublishAck { id: Arc::from(id), positions })
}

fn published(channel: &ChannelName, pos: Position, id: &str, etype: &str, body: &str, fanout: u16) -> Arc<Published> {
    let json = json_for(id, channel.as_str(), body);
    let copy = Copy::new(channel.clone(), pos, etype, &json);
    Arc::new(Published::new(Arc::from(id), Arc::from(etype), vec![copy], fanout))
}

fn stored_event(channel: &ChannelName, pos: Position, fields: &HashMap<String, String>) -> Option<Arc<Published>> {
    let fanout = fields.get("n").and_then(|n| n.parse().ok()).unwrap_or(1);
    Some(published(channel, pos, fields.get("i")?, fields.get("t")?, fields.get("b")?, fanout))
}

type Entries = Vec<(Position, HashMap<String, String>)>;

fn parse_history(channel: &ChannelName, reply: &Value) -> Option<(Position, Position, Entries, Vec<AiSnapshot>)> {
    let Value::Array(items) = reply else { return None };
    let text = |v: &Value| -> Option<String> { redis::from_redis_value_ref::<String>(v).ok() };
    let head = Position::parse_stream_id(&text(items.first()?)?)?;
    let floor = Position::parse_stream_id(&text(items.get(1)?)?)?;
    let deleted = Position::parse_stream_id(&text(items.get(2)?)?)?;
    let mut entries = Vec::new();
    if let Value::Array(list) = items.get(3)? {
        for entry in list {
            let Value::Array(pair) = entry else { continue };
            let (Some(id), Some(Value::Array(kv))) = (pair.first(), pair.get(1)) else { continue };
            let Some(pos) = text(id).and_then(|s| Position::parse_stream_id(&s)) else { continue };
            let mut fields = HashMap::new();
            for chunk in kv.chunks(2) {
                if let [k, v] = chunk
                    && let (Some(k), Some(v)) = (text(k), text(v))
                {
                    fields.insert(k, v);
                }
            }
            entries.push((pos, fields));
        }
    }
    let mut streams = Vec::new();
    if let Some(Value::Array(list)) = items.get(4) {
        for stream in list {
            let Value::Array(parts) = stream else { continue };
            let part = |i: usize| parts.get(i).and_then(text);
            let (Some(sid), Some(last), Some(id), Some(body), Some(all)) =
                (part(0), part(1), part(2), part(3), part(4))
            else {
                continue;
            };
            let Some(last) = Position::parse_stream_id(&last) else { continue };
            let json = json_for(&id, channel.as_str(), &body);
            streams.extend(AiSnapshot::from_last_chunk(sid, last, &json, all));
        }
    }
    Some((head, floor.max(deleted), entries, streams))
}

/// How long one pub/sub operation may take before the connection counts as lost.
const PUBSUB_DEADLINE: Duration = Duration::from_secs(2);

/// Runs a pub/sub operation with [`PUBSUB_DEADLINE`].
async fn deadline<T>(op: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(PUBSUB_DEADLINE, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PUBSUB_DEADLINE:?}")),
    }
}

/// The pub/sub side on a Redis Cluster: sharded subscriptions (`SSUBSCRIBE`) on a RESP3
/// connection whose pushes arrive on a channel. redis-rs resubscribes by itself after a
/// shard reconnects; a second subscribe confirmation for a channel is that moment, and the
/// channel catches up from its Stream.
async fn cluster_pubsub_task(
    engine: Weak<RedisEngine>,
    builder: redis::cluster::ClusterClientBuilder,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ready: oneshot::Sender<()>,
) {
    let (push_tx, mut pushes) = mpsc::unbounded_channel::<redis::PushInfo>();
    let client = match builder.push_sender(push_tx).build() {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "cannot build the redis cluster client"),
    };
    let mut backoff = Duration::from_millis(50);
    let mut conn = loop {
        match deadline(client.get_async_connection()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis cluster pub/sub connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                if engine.strong_count() == 0 {
                    return;
                }
            }
        }
    };
    let (control, replies) = match engine.upgrade() {
        Some(this) => (this.commands_channel(), this.replies_channel(&this.node_id)),
        None => return,
    };
    // Node commands and replies, on sharded channels of their own.
    for name in [&control, &replies] {
        if let Err(e) = deadline(conn.ssubscribe(name)).await {
            tracing::warn!(error = %e, "cannot subscribe to node commands; live joins across nodes will fail");
        }
    }
    if let Some(this) = engine.upgrade() {
        this.healthy.store(true, Ordering::Relaxed);
    }
    let _ = ready.send(());
    let mut names: HashMap<String, ChannelName> = HashMap::new();
    // Channels whose subscription Redis has confirmed once; a later confirmation is a
    // resubscription after a shard reconnected.
    let mut confirmed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut reconcile = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return };
                let Some(this) = engine.upgrade() else { return };
                let channel = push.data.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
                if push.kind == redis::PushKind::SMessage
                    && let Some(name) = channel.as_deref().filter(|c| *c == control || *c == replies)
                {
                    if let Some(payload) = push.data.get(1).and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok()) {
                        if name == control { this.on_command(&payload) } else { this.on_reply(&payload) }
                    }
                    continue;
                }
                let Some(ch) = channel.as_deref().and_then(|c| names.get(c)) else { continue };
                match push.kind {
                    redis::PushKind::SMessage => {
                        if let Some(payload) = push.data.get(1).and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok()) {
                            this.on_message(ch, &payload);
                        }
                    }
                    redis::PushKind::SSubscribe => {
                        let ch = ch.clone();
                        let name = this.pubsub_name(&ch);
                        if confirmed.insert(name) {
                            continue;
                        }
                        this.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = this.catch_up(std::slice::from_ref(&ch)).await {
                            tracing::warn!(channel = %ch, error = %e, "catch-up after resubscribe failed");
                        }
                    }
                    _ => {}
                }
            }
            cmd = commands.recv() => {
                let Some(Command::Watch(channels, ack)) = cmd else { return };
                let Some(this) = engine.upgrade() else { return };
                let mut result = Ok(());
                for ch in channels {
                    let name = this.pubsub_name(&ch);
                    if names.contains_key(&name) {
                        continue;
                    }
                    match deadline(conn.ssubscribe(&name)).await {
                        Ok(()) => {
                            names.insert(name, ch.clone());
                            if let Err(e) = this.mark_head(&ch).await {
                                result = Err(e);
                            }
                        }
                        Err(e) => result = Err(unavailable(e)),
                    }
                }
                let _ = ack.send(result);
            }
            _ = reconcile.tick() => {
                let Some(this) = engine.upgrade() else { return };
                let up = deadline(redis::cmd("PING").query_async::<String>(&mut conn)).await.is_ok();
                if up != this.healthy.swap(up, Ordering::Relaxed) {
                    if up {
                        tracing::info!("redis cluster reachable again");
                    } else {
                        tracing::warn!("redis cluster does not answer");
                    }
                }
                let idle: Vec<String> = names
                    .iter()
                    .filter(|(_, ch)| this.hub.subscriber_count(ch.as_str()) == 0)
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in idle {
                    if deadline(conn.sunsubscribe(&name)).await.is_ok()
                        && let Some(ch) = names.remove(&name)
                    {
                        confirmed.remove(&name);
                        this.last_seen.lock().unwrap_or_else(PoisonError::into_inner).remove(&ch);
                    }
                }
            }
        }
    }
}

/// The channel and first line (stream id, event id) of the last message delivered from
/// pub/sub: what a copy of it through another subscription repeats.
#[derive(Default)]
struct LastMessage {
    channel: String,
    head: Vec<u8>,
}

impl LastMessage {
    /// Whether `payload` on `channel` is the message delivered last; if not, it becomes it.
    fn repeats(&mut self, channel: &str, payload: &[u8]) -> bool {
        let head = payload.split(|b| *b == b'\n').next().unwrap_or(payload);
        if self.channel == channel && self.head == head {
            return true;
        }
        self.channel.clear();
        self.channel.push_str(channel);
        self.head.clear();
        self.head.extend_from_slice(head);
        false
    }
}

/// The node's pub/sub connection: subscriptions (channels with `SUBSCRIBE`, patterns with
/// `PSUBSCRIBE`), live messages, node commands, reconnects and catch-up.
async fn pubsub_task(
    engine: Weak<RedisEngine>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(this) = engine.upgrade() else { return };
        let pubsub = match deadline(client.get_async_pubsub()).await {
            Ok(p) => p,
            Err(e) => {
                this.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub connection failed");
                drop(this);
                // Refuse new subscriptions while down; existing streams stay open.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        cmd = commands.recv() => match cmd {
                            Some(Command::Watch(_, ack)) => {
                                let _ = ack.send(Err(EngineError::Unavailable("redis is unreachable".into())));
                            }
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let control = this.commands_channel();
        let replies = this.replies_channel(&this.node_id);
        // Resubscribe what the hub has, then catch up what was missed while cut off.
        let active = this.hub.active_channels();
        {
            // Channels given up while cut off are watched no more.
            let watched: std::collections::HashSet<&ChannelName> = active.iter().collect();
            this.last_seen.lock().unwrap_or_else(PoisonError::into_inner).retain(|ch, _| watched.contains(ch));
        }
        let mut names: HashMap<String, ChannelName> = active.iter().map(|c| (this.pubsub_name(c), c.clone())).collect();
        let mut subscribed: Vec<String> =
            names.iter().filter(|(_, c)| !c.is_pattern()).map(|(n, _)| n.clone()).collect();
        subscribed.push(control.clone());
        subscribed.push(replies.clone());
        let patterns: Vec<String> = names.iter().filter(|(_, c)| c.is_pattern()).map(|(n, _)| n.clone()).collect();
        if let Err(e) = deadline(sink.subscribe(&subscribed)).await {
            tracing::warn!(error = %e, "resubscribing failed");
            continue;
        }
        if !patterns.is_empty()
            && let Err(e) = deadline(sink.psubscribe(&patterns)).await
        {
            tracing::warn!(error = %e, "resubscribing patterns failed");
            continue;
        }
        if let Err(e) = this.catch_up(&active).await {
            tracing::warn!(error = %e, "catch-up after reconnect failed");
            continue;
        }
        if ready.is_none() {
            this.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            // Patterns keep no position to catch up from: their streams resume, and are
            // told plainly that they cannot replay.
            for pattern in active.iter().filter(|c| c.is_pattern()) {
                this.hub.disconnect_channel(pattern);
            }
            tracing::info!(channels = active.len(), "redis pub/sub connection restored");
        }
        this.healthy.store(true, Ordering::Relaxed);
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        backoff = Duration::from_millis(50);
        drop(this);

        let mut reconcile = tokio::time::interval(Duration::from_secs(1));
        let mut last = LastMessage::default();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(this) = engine.upgrade() else { return };
                    let name = msg.get_channel_name();
                    let channel = if msg.from_pattern() { this.channel_of(name) } else { names.get(name).cloned() };
                    if let Some(ch) = channel {
                        // A message reaches the node once per subscription that matches it
                        // (the channel's own, each pattern), and Redis sends those copies
                        // one after another. Delivering the first and dropping the ones
                        // that repeat it holds whichever subscriptions come and go
                        // meanwhile; deciding by the subscriptions instead lost or repeated
                        // a message at the moment one started or stopped.
                        let payload = msg.get_payload_bytes();
                        if last.repeats(name, payload) {
                            continue;
                        }
                        this.on_message(&ch, payload);
                    } else if name == control {
                        this.on_command(msg.get_payload_bytes());
                    } else if name == replies {
                        this.on_reply(msg.get_payload_bytes());
                    }
                }
                cmd = commands.recv() => {
                    let Some(Command::Watch(channels, ack)) = cmd else { return };
                    let Some(this) = engine.upgrade() else { return };
                    let fresh: Vec<ChannelName> =
                        channels.into_iter().filter(|c| !names.contains_key(&this.pubsub_name(c))).collect();
                    if fresh.is_empty() {
                        let _ = ack.send(Ok(()));
                        continue;
                    }
                    let (patterns, plain): (Vec<ChannelName>, Vec<ChannelName>) =
                        fresh.into_iter().partition(ChannelName::is_pattern);
                    let wanted: Vec<String> = plain.iter().map(|c| this.pubsub_name(c)).collect();
                    let wanted_patterns: Vec<String> = patterns.iter().map(|c| this.pubsub_name(c)).collect();
                    let subscribed = async {
                        if !wanted.is_empty() {
                            deadline(sink.subscribe(&wanted)).await?;
                        }
                        if !wanted_patterns.is_empty() {
                            deadline(sink.psubscribe(&wanted_patterns)).await?;
                        }
                        Ok::<(), String>(())
                    };
                    if let Err(e) = subscribed.await {
                        let _ = ack.send(Err(unavailable(e)));
                        break;
                    }
                    let mut result = Ok(());
                    for (name, ch) in wanted.into_iter().zip(plain) {
                        if let Err(e) = this.mark_head(&ch).await {
                            result = Err(e);
                        }
                        names.insert(name, ch);
                    }
                    names.extend(wanted_patterns.into_iter().zip(patterns));
                    let _ = ack.send(result);
                }
                _ = reconcile.tick() => {
                    // A frozen Redis answers nothing: notice it, and reconnect.
                    if let Err(e) = deadline(sink.ping::<Value>()).await {
                        tracing::warn!(error = %e, "redis pub/sub connection does not answer");
                        break;
                    }
                    let Some(this) = engine.upgrade() else { return };
                    type Named = Vec<(String, ChannelName)>;
                    let (idle_patterns, idle): (Named, Named) = names
                        .iter()
                        .filter(|(_, ch)| this.hub.subscriber_count(ch.as_str()) == 0)
                        .map(|(name, ch)| (name.clone(), ch.clone()))
                        .partition(|(_, ch)| ch.is_pattern());
                    if idle.is_empty() && idle_patterns.is_empty() {
                        continue;
                    }
                    let idle_names: Vec<&String> = idle.iter().map(|(n, _)| n).collect();
                    let idle_pattern_names: Vec<&String> = idle_patterns.iter().map(|(n, _)| n).collect();
                    let unsubscribed = async {
                        if !idle_names.is_empty() {
                            deadline(sink.unsubscribe(&idle_names)).await?;
                        }
                        if !idle_pattern_names.is_empty() {
                            deadline(sink.punsubscribe(&idle_pattern_names)).await?;
                        }
                        Ok::<(), String>(())
                    };
                    if let Err(e) = unsubscribed.await {
                        tracing::warn!(error = %e, "unsubscribing idle channels failed");
                        break;
                    }
                    let mut seen = this.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
                    for (name, _) in idle.into_iter().chain(idle_patterns) {
                        if let Some(ch) = names.remove(&name) {
                            seen.remove(&ch);
                        }
                    }
                }
            }
        }
        if let Some(this) = engine.upgrade() {
            this.healthy.store(false, Ordering::Relaxed);
        }
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, batch: Vec<Prepared>) -> BoxFuture<'_, Result<Vec<PublishAck>, EngineError>> {
        Box::pin(async move {
            let acks = self.publish_batch(&batch).await;
            if let Err(e) = &acks {
                self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, events = batch.len(), "publish refused: Redis did not take it");
            }
            acks
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        after: Option<Position>,
    ) -> BoxFuture<'a, Result<HistoryRead, EngineError>> {
        Box::pin(self.read(channel, after))
    }

    /// One script for every channel on a single Redis; one channel after another on a cluster.
    fn histories<'a>(
        &'a self,
        reads: &'a [(ChannelName, Option<Position>)],
    ) -> BoxFuture<'a, Result<Vec<HistoryRead>, EngineError>> {
        Box::pin(self.read_many(reads))
    }

    fn watch<'a>(&'a self, channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            if channels.is_empty() {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            self.commands.send(Command::Watch(channels.to_vec(), tx)).map_err(|_| unavailable("engine stopped"))?;
            rx.await.map_err(|_| unavailable("engine stopped"))?
        })
    }

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

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn release_slot<'a>(&'a self, user: &'a str, conn_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let released: Result<i64, _> = self.conn.clone().zrem(self.slots_key(user), conn_id).await;
            if let Err(e) = released {
                tracing::debug!(error = %e, "could not release a connection slot; its lease will lapse");
            }
        })
    }

    fn command(&self, command: NodeCommand) -> BoxFuture<'_, Result<Vec<NodeReply>, EngineError>> {
        Box::pin(self.send_command(command))
    }

    fn set_command_handler(&self, handler: CommandHandler) {
        let _ = self.pending.handler.set(handler);
    }

    /// Sharded pub/sub has no pattern subscriptions.
    fn supports_patterns(&self) -> bool {
        !self.is_cluster()
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

    fn acquire_slot<'a>(
        &'a self,
        user: &'a str,
        conn_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let lease = u64::try_from(self.slot_lease.as_millis()).unwrap_or(u64::MAX);
            let taken: i64 = self
                .slot_script
                .key(self.slots_key(user))
                .arg(conn_id)
                .arg(limit)
                .arg(lease)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(taken == 1)
        })
    }

    /// Renews the leases of this node's users' connection slots and presence.
    fn sweep(&self) {
        let renewals = self.lease_renewals();
        if renewals.is_empty() {
            return;
        }
        let conn = self.conn.clone();
        tokio::spawn(async move {
            if let Err(e) = presence::send_renewals(conn, renewals).await {
                tracing::warn!(error = %e, "could not renew leases");
            }
        });
    }

    fn counters(&self) -> super::EngineCounters {
        super::EngineCounters {
            publish_errors: self.stats.publish_errors.load(Ordering::Relaxed),
            reconnects: self.stats.reconnects.load(Ordering::Relaxed),
            watched_channels: u64::try_from(self.last_seen.lock().unwrap_or_else(PoisonError::into_inner).len())
                .unwrap_or(u64::MAX),
            ..super::EngineCounters::default()
        }
    }
}
