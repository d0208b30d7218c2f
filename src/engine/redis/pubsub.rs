//! The node's pub/sub connection: subscriptions to the channels with local subscribers,
//! live messages, node commands, reconnects and catch-up.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::message::{self, LastMessage};
use super::{RedisEngine, unavailable};
use crate::channel::ChannelName;
use crate::engine::EngineError;

/// What the pub/sub task connects with.
#[allow(clippy::large_enum_variant, reason = "built once per node and moved into its task")]
pub(super) enum PubSubClient {
    Single(redis::Client),
    /// A builder, not a client: the task adds its own push sender.
    Cluster(redis::cluster::ClusterClientBuilder),
}

pub(super) enum Command {
    Watch(Vec<ChannelName>, oneshot::Sender<Result<(), EngineError>>),
}

impl RedisEngine {
    /// Delivers one pub/sub message to the node ([`message`] says its format), and moves the
    /// catch-up point of each watched channel it names.
    fn on_message(&self, channel: &ChannelName, payload: &[u8]) {
        match message::parse(channel, payload) {
            Some(msg) => {
                for (ch, pos) in &msg.positions {
                    self.note_seen(ch, *pos);
                }
                self.deliver(&msg.event);
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

/// The pub/sub side on a Redis Cluster: sharded subscriptions (`SSUBSCRIBE`) on a RESP3
/// connection whose pushes arrive on a channel. redis-rs resubscribes by itself after a
/// shard reconnects; a second subscribe confirmation for a channel is that moment, and the
/// channel catches up from its Stream.
pub(super) async fn cluster(
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
                    .filter(|(_, ch)| this.subscriber_count(ch) == 0)
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

/// The node's pub/sub connection: subscriptions (channels with `SUBSCRIBE`, patterns with
/// `PSUBSCRIBE`), live messages, node commands, reconnects and catch-up.
pub(super) async fn standalone(
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
        let active = this.active_channels();
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
                this.resync(pattern);
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
                        .filter(|(_, ch)| this.subscriber_count(ch) == 0)
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
