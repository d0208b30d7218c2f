//! The Redis engine: several nodes act as one.
//!
//! * **Publish**: one Lua script run per event, or per batch, appends the events to their
//!   channels' Streams (`XADD`, bounded by size and age) and `PUBLISH`es them on the channels'
//!   pub/sub channels (with `batch_messages`, a run of a batch's events on one channel as one
//!   message), atomically, so the order of ids and the order of live delivery agree. A
//!   publish is acknowledged only when Redis answered; otherwise the publisher gets `503`.
//! * **Fan-out**: the node's pub/sub subscriptions, only to the channels that have local
//!   subscribers (subscribe before the first subscriber reads history; unsubscribe, batched,
//!   once a channel has had none for a reconcile tick). On a single Redis they are on the
//!   node's one connection, which carries its commands too (RESP3), so that a publish's reply
//!   and its event's message are read together; with Sentinel, on a pub/sub connection of
//!   their own; on a cluster, sharded. Messages carry the Stream id, so every node frames the
//!   event with the same SSE id.
//! * **History**: resume reads the Stream after the client's position. A channel's *floor*
//!   is the position below which the Stream no longer vouches for completeness (the highest
//!   trimmed id, or the time the Stream was created minus its age limit); resuming from
//!   below it is a gap, said plainly.
//! * **Outage**: when the connection carrying the subscriptions drops, the node reconnects,
//!   resubscribes, and reads from each Stream what was published since the last event it
//!   delivered, before going back to live messages. Streams stay open meanwhile.
//!
//! Keys live under a configurable prefix (`redis_prefix`, default `realtime`), with the
//! channel's name as a hash tag: `realtime:channel:{general}` (pub/sub),
//! `realtime:channel:{general}:log` (Stream), `realtime:channel:{general}:floor`,
//! `realtime:{system}` for `system`.
//!
//! By concern: `publish` (and the [`crate::engine::Broker`] seam), `history` (reads and the
//! catch-up after a reconnect), `message` (the pub/sub message format, read once here),
//! `pubsub` (the one pub/sub loop), `primary` (the primary Redis Sentinel names, asked again
//! after a failure), `presence`, `occupancy` (which nodes hold a channel, for
//! the webhooks), `sessions` (tickets, bans, connection slots),
//! `commands` (between nodes); the Lua scripts are files in `scripts/`.

mod commands;
mod history;
mod message;
mod occupancy;
mod presence;
mod primary;
mod publish;
mod pubsub;
mod sessions;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::sink::Attached;
use super::{Engine, EngineError, HistoryLimits, NodeSink};
use crate::channel::ChannelName;
use crate::cursor::Position;
use primary::{Following, Primary};
use pubsub::{Command, PubSubClient};

// The Lua scripts; each file's header says what it does and which KEYS and ARGV it takes.
// The publish scripts (one event; a batch) run after the clock's prelude (Redis's clock, Stream
// ids compared) and the publish prelude (what both do to a channel's floor and AI streams).
const PUBLISH_LUA: &str = concat!(
    include_str!("scripts/clock_prelude.lua"),
    include_str!("scripts/publish_prelude.lua"),
    include_str!("scripts/publish.lua")
);
const PUBLISH_BATCH_LUA: &str = concat!(
    include_str!("scripts/clock_prelude.lua"),
    include_str!("scripts/publish_prelude.lua"),
    include_str!("scripts/publish_batch.lua")
);
// The history and page scripts run after the clock's prelude and the stream prelude, which
// reads a Stream's head and floor.
const HISTORY_LUA: &str = concat!(
    include_str!("scripts/clock_prelude.lua"),
    include_str!("scripts/stream_prelude.lua"),
    include_str!("scripts/history.lua")
);
const PAGE_LUA: &str = concat!(
    include_str!("scripts/clock_prelude.lua"),
    include_str!("scripts/stream_prelude.lua"),
    include_str!("scripts/page.lua")
);
const SLOT_LUA: &str = include_str!("scripts/slot.lua");
const HISTORY_REMOVE_LUA: &str = include_str!("scripts/history_remove.lua");

/// The command connection: one Redis (its subscriptions on it too), the primary Redis
/// Sentinel names, or a Redis Cluster (routed by key slot).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Sentinel(Following),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Sentinel(c) => c.req_packed_command(cmd),
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
            Self::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
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
    /// Send a run of a batch's events on one channel as one pub/sub batch message; off, one
    /// single message per event, which nodes of a version before batch messages read too.
    /// Batch messages are always read.
    pub batch_messages: bool,
    /// Ask these Redis Sentinels (`host:port`) for the primary of this name instead of using
    /// `url`, and ask them again after the primary fails.
    pub sentinel: Option<(Vec<String>, String)>,
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

/// The multi-node engine.
pub struct RedisEngine {
    /// The node this engine delivers to (attached once).
    sink: Attached,
    prefix: String,
    conn: Conn,
    commands: mpsc::UnboundedSender<Command>,
    healthy: AtomicBool,
    publish_script: Script,
    publish_batch_script: Script,
    /// [`RedisOptions::batch_messages`].
    batch_messages: bool,
    history_script: Script,
    page_script: Script,
    slot_script: Script,
    history_remove_script: Script,
    /// How long a user's connection slot lives without renewal (a dead node's slots lapse).
    slot_lease: Duration,
    /// The position of the last event delivered per watched channel: where catch-up starts.
    last_seen: Mutex<HashMap<ChannelName, Position>>,
    /// Per watched channel, the positions a publisher on this node delivered itself whose
    /// messages have not come yet: the pub/sub loop skips them when they come
    /// ([`RedisEngine::deliver_own`]). Locked after `last_seen`, never before.
    ahead: Mutex<HashMap<ChannelName, VecDeque<Position>>>,
    /// This node's id: where other nodes send replies to its commands.
    node_id: String,
    pending: commands::Pending,
    presence_scripts: presence::Scripts,
    occupancy_script: Script,
    pub stats: RedisStats,
}

/// How long bytes sent to Redis may go unacknowledged before the kernel closes the
/// connection (`TCP_USER_TIMEOUT`).
const UNACKNOWLEDGED_LIMIT: Duration = Duration::from_secs(5);

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("redis: {e}"))
}

impl RedisEngine {
    /// Connects to Redis (or a Redis Cluster) and starts the node's pub/sub task.
    pub async fn connect(opts: RedisOptions) -> Result<Arc<Self>, EngineError> {
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
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(2);
            match &opts.sentinel {
                Some((sentinels, master)) => {
                    let primary = Primary::sentinel(sentinels, master).map_err(unavailable)?;
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(2)))
                        .set_response_timeout(Some(Duration::from_secs(2)));
                    let conn = Following::connect(primary.clone(), config).await.map_err(unavailable)?;
                    (Conn::Sentinel(conn), PubSubClient::Single(primary))
                }
                None => {
                    // One RESP3 connection for commands and pub/sub alike ([`pubsub`]): a
                    // publish's reply and its event's message come on one socket, read by one
                    // task. A connection whose bytes Redis stops acknowledging (a peer gone
                    // without a word) is closed by the kernel, so that the manager reconnects;
                    // the once-a-second `PING` keeps bytes in flight.
                    let info =
                        redis::IntoConnectionInfo::into_connection_info(opts.url.as_str()).map_err(unavailable)?;
                    let resp3 = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
                    let tcp = info.tcp_settings().clone().set_user_timeout(UNACKNOWLEDGED_LIMIT);
                    let info = info.set_redis_settings(resp3).set_tcp_settings(tcp);
                    let client = match root_cert {
                        Some(root_cert) => {
                            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                            redis::Client::build_with_tls(info, certs).map_err(unavailable)?
                        }
                        None => redis::Client::open(info).map_err(unavailable)?,
                    };
                    let (push_tx, pushes) = mpsc::unbounded_channel::<redis::PushInfo>();
                    let config = config.set_push_sender(push_tx).set_automatic_resubscription();
                    let conn = client.get_connection_manager_with_config(config).await.map_err(unavailable)?;
                    (Conn::Single(conn.clone()), PubSubClient::Shared(conn, pushes))
                }
            }
        };
        let engine = Arc::new(Self {
            sink: Attached::default(),
            prefix: opts.prefix,
            conn,
            commands: tx,
            healthy: AtomicBool::new(false),
            publish_script: Script::new(PUBLISH_LUA),
            publish_batch_script: Script::new(PUBLISH_BATCH_LUA),
            batch_messages: opts.batch_messages,
            history_script: Script::new(HISTORY_LUA),
            page_script: Script::new(PAGE_LUA),
            slot_script: Script::new(SLOT_LUA),
            history_remove_script: Script::new(HISTORY_REMOVE_LUA),
            slot_lease: opts.slot_lease,
            last_seen: Mutex::new(HashMap::new()),
            ahead: Mutex::new(HashMap::new()),
            node_id: opts.node_id,
            pending: commands::Pending::default(),
            presence_scripts: presence::Scripts::new(),
            occupancy_script: Script::new(occupancy::SCRIPT),
            stats: RedisStats::default(),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        match pubsub {
            PubSubClient::Single(client) => {
                tokio::spawn(pubsub::standalone(Arc::downgrade(&engine), client, rx, ready_tx));
            }
            PubSubClient::Shared(conn, pushes) => {
                tokio::spawn(pubsub::shared(Arc::downgrade(&engine), conn, pushes, rx, ready_tx));
            }
            PubSubClient::Cluster(builder) => {
                tokio::spawn(pubsub::cluster(Arc::downgrade(&engine), builder, rx, ready_tx));
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
        self.history_limits(channel).map_or(1, |l| l.ai_retention_ms().max(1))
    }

    fn limits(&self, channel: &ChannelName) -> (usize, u64) {
        self.history_limits(channel).map_or((0, 1), |l| (l.size, l.ttl_ms().max(1)))
    }

    fn history_limits(&self, channel: &ChannelName) -> Option<HistoryLimits> {
        self.sink.node().history_limits(channel)
    }
}

impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn attach(&self, sink: Arc<dyn NodeSink>) {
        self.sink.attach(sink);
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
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

#[cfg(test)]
mod tests;
