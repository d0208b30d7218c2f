//! The node's pub/sub link: subscriptions to the channels with local subscribers, live
//! messages, node commands, reconnects and catch-up.
//!
//! One loop ([`run`]) serves three kinds of link ([`Link`]):
//!
//! * a single Redis at a fixed address ([`Shared`]): the subscriptions are on the node's
//!   command connection, a RESP3 connection manager whose messages and confirmations arrive
//!   as pushes on a channel. A publish's reply and its event's message then come on one
//!   socket and are read by one task; with a pub/sub connection of its own, the reply's
//!   reader waited behind the stream tasks the message had woken (docs/benchmarks.md, issue
//!   22). The manager reconnects and resubscribes by itself; its disconnection push is the
//!   moment the loop catches every followed channel up from its Stream (again at each
//!   reconcile tick until that succeeds), letting the channels' live messages go until then:
//!   the catch-up reads them from the Streams.
//! * a Redis found through Sentinel ([`Standalone`]): a pub/sub connection of its own, with
//!   `SUBSCRIBE`/`PSUBSCRIBE`, which the loop opens again with backoff when it fails, then
//!   resubscribes and catches up.
//! * a Redis Cluster ([`Cluster`]): sharded `SSUBSCRIBE` on a RESP3 connection whose pushes
//!   arrive on a channel; redis-rs reconnects each shard and resubscribes by itself, and a
//!   second subscribe confirmation for a channel is that moment, when the channel catches up
//!   from its Stream.
//!
//! Subscriptions follow the node: a channel is subscribed before its first subscriber reads
//! history and unsubscribed, batched, once it has had none for a reconcile tick.
//!
//! A message whose event this node's publisher delivered already, from Redis's answer
//! (`RedisEngine::deliver_own`), is skipped when it comes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::history::raise_seen;
use super::message::{self, LastMessage};
use super::primary::Primary;
use super::{RedisEngine, unavailable};
use crate::channel::ChannelName;
use crate::engine::EngineError;

/// What the pub/sub task connects with.
#[allow(clippy::large_enum_variant, reason = "built once per node and moved into its task")]
pub(super) enum PubSubClient {
    /// A standalone Redis found through Sentinel, asked for at every (re)connect.
    Single(Primary),
    /// A single Redis at a fixed address, through the command connection (RESP3), whose
    /// pushes arrive on a channel.
    Shared(redis::aio::ConnectionManager, mpsc::UnboundedReceiver<redis::PushInfo>),
    /// A builder, not a client: the task adds its own push sender.
    Cluster(redis::cluster::ClusterClientBuilder),
}

pub(super) enum Command {
    Watch(Vec<ChannelName>, oneshot::Sender<Result<(), EngineError>>),
}

impl RedisEngine {
    /// Delivers one pub/sub message's events to the node, in order ([`message`] says the
    /// formats), and moves the catch-up point of each watched channel they name.
    fn on_message(&self, channel: &ChannelName, payload: &[u8]) {
        match message::parse(channel, payload) {
            Some(events) => {
                // Seen and delivered under one lock, as a publisher delivers its own events
                // (`RedisEngine::deliver_own`): no entry is delivered ahead of the one before it.
                let mut seen = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
                let mut ahead = self.ahead.lock().unwrap_or_else(PoisonError::into_inner);
                for msg in events {
                    // Delivered already by its publisher on this node.
                    if let [(ch, pos)] = &msg.positions[..]
                        && let Some(own) = ahead.get_mut(ch)
                    {
                        // Older ones whose messages will not come (a lost connection) go.
                        while own.front().is_some_and(|p| p < pos) {
                            own.pop_front();
                        }
                        if own.front() == Some(pos) {
                            own.pop_front();
                            continue;
                        }
                    }
                    for (ch, pos) in &msg.positions {
                        raise_seen(&mut seen, ch, *pos);
                    }
                    self.sink.node().deliver(&msg.event);
                }
            }
            None => tracing::warn!(%channel, "ignoring a malformed pub/sub message"),
        }
    }
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

/// What arrives on a link.
enum Incoming {
    /// A message on a channel, or through a pattern.
    Message(redis::Msg),
    /// Redis confirmed a subscription to this pub/sub channel.
    Subscribed(String),
    /// The connection was lost; the link reconnects and resubscribes before its next command,
    /// and what was published meanwhile is to be caught up.
    Lost,
}

/// A pub/sub connection as [`run`] uses it.
trait Link: Sized {
    /// Whether the link reconnects and resubscribes by itself. One that does not is dropped
    /// at the first failure and opened again (with backoff) by [`run`], which resubscribes.
    const HEALS_ITSELF: bool;
    /// What opens a link.
    type Opener: Send;

    async fn open(opener: &mut Self::Opener) -> Result<Self, String>;
    /// Subscribes channels and patterns, all of them or (an error) none.
    async fn subscribe(&mut self, channels: &[String], patterns: &[String]) -> Result<(), String>;
    async fn unsubscribe(&mut self, channels: &[String], patterns: &[String]) -> Result<(), String>;
    async fn ping(&mut self) -> Result<(), String>;
    /// The next message or confirmation; `None` once the link is gone.
    async fn next(&mut self) -> Option<Incoming>;
}

/// A standalone Redis found through Sentinel: one pub/sub connection.
struct Standalone {
    sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
}

impl Link for Standalone {
    const HEALS_ITSELF: bool = false;
    type Opener = Primary;

    async fn open(primary: &mut Primary) -> Result<Self, String> {
        let client = primary.client().await?;
        let (sink, stream) = deadline(client.get_async_pubsub()).await?.split();
        Ok(Self { sink, stream })
    }

    async fn subscribe(&mut self, channels: &[String], patterns: &[String]) -> Result<(), String> {
        if !channels.is_empty() {
            deadline(self.sink.subscribe(channels)).await?;
        }
        if !patterns.is_empty() {
            deadline(self.sink.psubscribe(patterns)).await?;
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, channels: &[String], patterns: &[String]) -> Result<(), String> {
        if !channels.is_empty() {
            deadline(self.sink.unsubscribe(channels)).await?;
        }
        if !patterns.is_empty() {
            deadline(self.sink.punsubscribe(patterns)).await?;
        }
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), String> {
        deadline(self.sink.ping::<Value>()).await.map(drop)
    }

    async fn next(&mut self) -> Option<Incoming> {
        self.stream.next().await.map(Incoming::Message)
    }
}

/// A connection whose messages arrive as pushes on a channel: a link that heals itself.
struct Pushed<C> {
    conn: C,
    pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
}

/// What opens a [`Pushed`] link (a client, or the connection itself), and where its pushes
/// arrive, taken by the one link opened.
struct PushedOpener<O> {
    opens: O,
    pushes: Option<mpsc::UnboundedReceiver<redis::PushInfo>>,
}

impl<O> PushedOpener<O> {
    fn link<C>(&mut self, conn: C) -> Result<Pushed<C>, String> {
        let pushes = self.pushes.take().ok_or("the link was opened already")?;
        Ok(Pushed { conn, pushes })
    }
}

/// A Redis Cluster: sharded subscriptions.
type Cluster = Pushed<redis::cluster_async::ClusterConnection>;

impl Link for Cluster {
    const HEALS_ITSELF: bool = true;
    type Opener = PushedOpener<redis::cluster::ClusterClient>;

    async fn open(opener: &mut Self::Opener) -> Result<Self, String> {
        let conn = deadline(opener.opens.get_async_connection()).await?;
        opener.link(conn)
    }

    /// One channel after another (they are on different shards); on a failure the ones
    /// subscribed before it are unsubscribed again, so none is left unknown to the loop.
    async fn subscribe(&mut self, channels: &[String], patterns: &[String]) -> Result<(), String> {
        if !patterns.is_empty() {
            return Err("a Redis Cluster has no pattern subscriptions".into());
        }
        for (i, name) in channels.iter().enumerate() {
            if let Err(e) = deadline(self.conn.ssubscribe(name)).await {
                for done in &channels[..i] {
                    let _ = deadline(self.conn.sunsubscribe(done)).await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Every channel is tried; an error if one failed (the loop tries them all again later).
    async fn unsubscribe(&mut self, channels: &[String], _patterns: &[String]) -> Result<(), String> {
        let mut failed = None;
        for name in channels {
            if let Err(e) = deadline(self.conn.sunsubscribe(name)).await {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn ping(&mut self) -> Result<(), String> {
        deadline(redis::cmd("PING").query_async::<String>(&mut self.conn)).await.map(drop)
    }

    async fn next(&mut self) -> Option<Incoming> {
        loop {
            let push = self.pushes.recv().await?;
            match push.kind {
                redis::PushKind::SMessage => {
                    if let Some(msg) = redis::Msg::from_push_info(push) {
                        return Some(Incoming::Message(msg));
                    }
                }
                redis::PushKind::SSubscribe => {
                    if let Some(name) = push.data.first().and_then(|v| redis::from_redis_value_ref(v).ok()) {
                        return Some(Incoming::Subscribed(name));
                    }
                }
                _ => {}
            }
        }
    }
}

/// A single Redis through the node's command connection (RESP3): subscriptions are commands
/// on it, messages pushes. The connection manager reconnects and resubscribes by itself
/// (before any other command on the new connection) and says it lost the connection with a
/// disconnection push: [`Incoming::Lost`].
type Shared = Pushed<redis::aio::ConnectionManager>;

impl Link for Shared {
    const HEALS_ITSELF: bool = true;
    type Opener = PushedOpener<redis::aio::ConnectionManager>;

    async fn open(opener: &mut Self::Opener) -> Result<Self, String> {
        let conn = opener.opens.clone();
        opener.link(conn)
    }

    async fn subscribe(&mut self, channels: &[String], patterns: &[String]) -> Result<(), String> {
        if !channels.is_empty() {
            deadline(self.conn.subscribe(channels)).await?;
        }
        if !patterns.is_empty()
            && let Err(e) = deadline(self.conn.psubscribe(patterns)).await
        {
            if !channels.is_empty() {
                let _ = deadline(self.conn.unsubscribe(channels)).await;
            }
            return Err(e);
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, channels: &[String], patterns: &[String]) -> Result<(), String> {
        if !channels.is_empty() {
            deadline(self.conn.unsubscribe(channels)).await?;
        }
        if !patterns.is_empty() {
            deadline(self.conn.punsubscribe(patterns)).await?;
        }
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), String> {
        deadline(redis::cmd("PING").query_async::<String>(&mut self.conn)).await.map(drop)
    }

    async fn next(&mut self) -> Option<Incoming> {
        loop {
            let push = self.pushes.recv().await?;
            match push.kind {
                redis::PushKind::Message | redis::PushKind::PMessage => {
                    if let Some(msg) = redis::Msg::from_push_info(push) {
                        return Some(Incoming::Message(msg));
                    }
                }
                redis::PushKind::Disconnection => return Some(Incoming::Lost),
                // Confirmations: a subscribe's answer says it is done; a resubscription
                // follows a disconnection, which said so already.
                _ => {}
            }
        }
    }
}

/// The pub/sub task on a standalone Redis, through the command connection.
pub(super) async fn shared(
    engine: Weak<RedisEngine>,
    conn: redis::aio::ConnectionManager,
    pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
    commands: mpsc::UnboundedReceiver<Command>,
    ready: oneshot::Sender<()>,
) {
    run::<Shared>(engine, PushedOpener { opens: conn, pushes: Some(pushes) }, commands, ready).await;
}

/// The pub/sub task on a standalone Redis found through Sentinel.
pub(super) async fn standalone(
    engine: Weak<RedisEngine>,
    primary: Primary,
    commands: mpsc::UnboundedReceiver<Command>,
    ready: oneshot::Sender<()>,
) {
    run::<Standalone>(engine, primary, commands, ready).await;
}

/// The pub/sub task on a Redis Cluster.
pub(super) async fn cluster(
    engine: Weak<RedisEngine>,
    builder: redis::cluster::ClusterClientBuilder,
    commands: mpsc::UnboundedReceiver<Command>,
    ready: oneshot::Sender<()>,
) {
    let (push_tx, pushes) = mpsc::unbounded_channel::<redis::PushInfo>();
    let client = match builder.push_sender(push_tx).build() {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "cannot build the redis cluster client"),
    };
    run::<Cluster>(engine, PushedOpener { opens: client, pushes: Some(pushes) }, commands, ready).await;
}

/// The pub/sub loop: opens the link (again, with backoff, after a failure of a link that
/// does not heal itself), subscribes what the node follows and catches up what it missed,
/// then serves messages, watch requests and the reconcile tick until the link fails.
async fn run<L: Link>(
    engine: Weak<RedisEngine>,
    mut opener: L::Opener,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(this) = engine.upgrade() else { return };
        let mut link = match L::open(&mut opener).await {
            Ok(link) => link,
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
        let control = this.commands_channel();
        let replies = this.replies_channel(&this.node_id);
        // Resubscribe what the node follows, then catch up what was missed while cut off.
        let active = this.sink.node().active_channels();
        {
            // Channels given up while cut off are watched no more.
            let watched: HashSet<&ChannelName> = active.iter().collect();
            this.last_seen.lock().unwrap_or_else(PoisonError::into_inner).retain(|ch, _| watched.contains(ch));
            this.ahead.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
        let mut names: HashMap<String, ChannelName> = active.iter().map(|c| (this.pubsub_name(c), c.clone())).collect();
        let (plain, patterns) = split_patterns(names.iter().map(|(n, c)| (n.clone(), c.clone())));
        let mut plain = names_of(&plain);
        // Node commands and replies, on channels of their own.
        plain.push(control.clone());
        plain.push(replies.clone());
        if let Err(e) = link.subscribe(&plain, &names_of(&patterns)).await {
            if !L::HEALS_ITSELF {
                tracing::warn!(error = %e, "resubscribing failed");
                continue;
            }
            tracing::warn!(error = %e, "cannot subscribe to node commands; live joins across nodes will fail");
        }
        if let Err(e) = this.catch_up(&active).await {
            tracing::warn!(error = %e, "catch-up after reconnect failed");
            continue;
        }
        if ready.is_none() {
            restored(&this, &active, "redis pub/sub connection restored");
        }
        this.healthy.store(true, Ordering::Relaxed);
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        backoff = Duration::from_millis(50);
        drop(this);

        // Subscriptions Redis has confirmed once; a later confirmation is a resubscription
        // after a shard reconnected (a link that heals itself).
        let mut confirmed: HashSet<String> = HashSet::new();
        let mut reconcile = tokio::time::interval(Duration::from_secs(1));
        let mut last = LastMessage::default();
        // A link that heals itself lost its connection and has not caught up since: the
        // channels' messages are let go meanwhile, since the catch-up reads every event after
        // the last one delivered (so they cannot pile up while it keeps failing).
        let mut behind = false;
        loop {
            tokio::select! {
                incoming = link.next() => {
                    let Some(incoming) = incoming else {
                        if L::HEALS_ITSELF { return }
                        break;
                    };
                    let Some(this) = engine.upgrade() else { return };
                    match incoming {
                        Incoming::Message(msg) => {
                            let name = msg.get_channel_name();
                            let channel =
                                if msg.from_pattern() { this.channel_of(name) } else { names.get(name).cloned() };
                            if let Some(ch) = channel {
                                if behind {
                                    continue;
                                }
                                // A message reaches the node once per subscription that matches
                                // it (the channel's own, each pattern), and Redis sends those
                                // copies one after another. Delivering the first and dropping the
                                // ones that repeat it holds whichever subscriptions come and go
                                // meanwhile; deciding by the subscriptions instead lost or
                                // repeated a message at the moment one started or stopped.
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
                        Incoming::Subscribed(name) => {
                            let Some(ch) = names.get(&name).cloned() else { continue };
                            if confirmed.insert(name) {
                                continue;
                            }
                            this.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = this.catch_up(std::slice::from_ref(&ch)).await {
                                tracing::warn!(channel = %ch, error = %e, "catch-up after resubscribe failed");
                            }
                        }
                        Incoming::Lost => {
                            this.healthy.store(false, Ordering::Relaxed);
                            // The messages of what its publishers delivered are gone with it.
                            this.ahead.lock().unwrap_or_else(PoisonError::into_inner).clear();
                            tracing::warn!("redis connection lost; catching up once it is back");
                            // It resubscribed before answering anything on the new connection.
                            behind = match link.ping().await {
                                Ok(()) => !recover(&this, &names).await,
                                Err(e) => {
                                    tracing::warn!(error = %e, "redis is not back yet; trying again");
                                    true
                                }
                            };
                        }
                    }
                }
                cmd = commands.recv() => {
                    let Some(Command::Watch(channels, ack)) = cmd else { return };
                    let Some(this) = engine.upgrade() else { return };
                    let fresh = channels.into_iter().filter(|c| !names.contains_key(&this.pubsub_name(c)));
                    let (wanted, wanted_patterns) = split_patterns(fresh.map(|c| (this.pubsub_name(&c), c)));
                    if wanted.is_empty() && wanted_patterns.is_empty() {
                        let _ = ack.send(Ok(()));
                        continue;
                    }
                    if let Err(e) = link.subscribe(&names_of(&wanted), &names_of(&wanted_patterns)).await {
                        let _ = ack.send(Err(unavailable(e)));
                        if L::HEALS_ITSELF { continue }
                        break;
                    }
                    let mut result = Ok(());
                    for (name, ch) in wanted {
                        if let Err(e) = this.mark_head(&ch).await {
                            result = Err(e);
                        }
                        names.insert(name, ch);
                    }
                    names.extend(wanted_patterns);
                    let _ = ack.send(result);
                }
                _ = reconcile.tick() => {
                    let Some(this) = engine.upgrade() else { return };
                    // A frozen Redis answers nothing: notice it, and reconnect (or, on a link
                    // that heals itself, say so until it answers again).
                    match link.ping().await {
                        Err(e) if !L::HEALS_ITSELF => {
                            tracing::warn!(error = %e, "redis pub/sub connection does not answer");
                            break;
                        }
                        Ok(()) if behind => behind = !recover(&this, &names).await,
                        answer => {
                            let up = answer.is_ok() && !behind;
                            if up != this.healthy.swap(up, Ordering::Relaxed) {
                                if up {
                                    tracing::info!("redis reachable again");
                                } else {
                                    tracing::warn!("redis does not answer");
                                }
                            }
                        }
                    }
                    let idle = names.iter().filter(|(_, ch)| this.sink.node().subscriber_count(ch) == 0);
                    let (idle, idle_patterns) = split_patterns(idle.map(|(n, c)| (n.clone(), c.clone())));
                    if idle.is_empty() && idle_patterns.is_empty() {
                        continue;
                    }
                    if let Err(e) = link.unsubscribe(&names_of(&idle), &names_of(&idle_patterns)).await {
                        tracing::warn!(error = %e, "unsubscribing idle channels failed");
                        if L::HEALS_ITSELF { continue }
                        break;
                    }
                    let mut seen = this.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
                    for (name, _) in idle.into_iter().chain(idle_patterns) {
                        confirmed.remove(&name);
                        if let Some(ch) = names.remove(&name) {
                            seen.remove(&ch);
                            this.ahead.lock().unwrap_or_else(PoisonError::into_inner).remove(&ch);
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

/// After a link that heals itself lost its connection, once a `PING` answered on the new one
/// (the link's own, at the loss or at a reconcile tick): delivers what the channels it follows
/// got meanwhile and is [`restored`]. `true` once done; otherwise the reconcile tick tries
/// again.
async fn recover(this: &RedisEngine, names: &HashMap<String, ChannelName>) -> bool {
    let followed: Vec<ChannelName> = names.values().cloned().collect();
    if let Err(e) = this.catch_up(&followed).await {
        tracing::warn!(error = %e, "catch-up after a lost connection failed; trying again");
        return false;
    }
    restored(this, &followed, "redis connection restored");
    true
}

/// A lost connection back and its channels caught up: counted, the node ready again, and the
/// streams of patterns told to resync (a pattern keeps no position to catch up from: its
/// streams resume, and are told plainly that they cannot replay).
fn restored(this: &RedisEngine, channels: &[ChannelName], said: &str) {
    this.stats.reconnects.fetch_add(1, Ordering::Relaxed);
    for pattern in channels.iter().filter(|c| c.is_pattern()) {
        this.sink.node().resync(pattern);
    }
    this.healthy.store(true, Ordering::Relaxed);
    tracing::info!(channels = channels.len(), "{said}");
}

/// Channels and patterns, each with its pub/sub name.
type Named = Vec<(String, ChannelName)>;

/// Channels apart from patterns (they are subscribed apart).
fn split_patterns(named: impl Iterator<Item = (String, ChannelName)>) -> (Named, Named) {
    let (patterns, plain): (Named, Named) = named.partition(|(_, ch)| ch.is_pattern());
    (plain, patterns)
}

fn names_of(named: &Named) -> Vec<String> {
    named.iter().map(|(n, _)| n.clone()).collect()
}
