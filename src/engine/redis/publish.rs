//! Publishing to Redis: one script run per event or per batch appends the events to their
//! channels' Streams and publishes them on the channels' pub/sub channels, atomically on one
//! Redis (with `batch_messages`, a run of a batch's events on one channel as one message);
//! idempotency keys answer a retry with the first publish's positions; a node delivers its
//! own events on one channel from the answer when nothing can come between
//! ([`RedisEngine::deliver_own`]). The engine's [`Broker`] seam is here.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use redis::AsyncCommands;
use tokio::sync::oneshot;

use super::pubsub::Command;
use super::{RedisEngine, message, unavailable};
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::engine::{
    BoxFuture, Broker, EngineError, HistoryPage, HistoryRead, NodeCommand, NodeReply, PageQuery, PublishAck, StartRead,
};
use crate::event::Prepared;

impl RedisEngine {
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

    /// The batch script for `batch` on one Redis, every event on all of its channels
    /// (`scripts/publish_batch.lua` says the arguments).
    fn batch_invocation(&self, batch: &[Prepared]) -> redis::ScriptInvocation<'_> {
        // The channels of the batch, each once, in the order they first appear.
        let mut index: HashMap<&ChannelName, usize> = HashMap::new();
        let mut channels: Vec<&ChannelName> = Vec::new();
        for ch in batch.iter().flat_map(|p| p.channels.iter()) {
            index.entry(ch).or_insert_with(|| {
                channels.push(ch);
                channels.len()
            });
        }
        let mut inv = self.publish_batch_script.prepare_invoke();
        let batch_messages = if self.batch_messages { "1" } else { "0" };
        inv.arg("PUBLISH").arg(channels.len()).arg(batch.len()).arg(batch_messages);
        for ch in &channels {
            let (size, ttl) = self.limits(ch);
            inv.key(self.stream_key(ch)).key(self.floor_key(ch)).key(self.streams_key(ch));
            inv.arg(self.pubsub_name(ch)).arg(ch.as_str()).arg(size).arg(ttl);
        }
        let mut keys = 3 * channels.len();
        for p in batch {
            let on = &p.channels;
            inv.arg(&*p.id).arg(&*p.event_type).arg(&p.body).arg(p.channels.len());
            match &p.ai {
                Some(chunk) => {
                    // Every channel of one event shares its namespace's retention, or the
                    // shortest of them.
                    let keep = on.iter().map(|c| self.stream_retention(c)).min().unwrap_or(1);
                    inv.arg(&chunk.stream_id).arg(&chunk.text).arg(if chunk.done { "1" } else { "0" }).arg(keep)
                }
                None => inv.arg("").arg("").arg("0").arg(0),
            };
            match (&p.idempotency, on.first()) {
                (Some(key), Some(first)) => {
                    keys += 1;
                    let window = u64::try_from(key.window.as_millis()).unwrap_or(u64::MAX).max(1);
                    inv.key(self.idempotency_key(first, &key.key)).arg(keys).arg(&key.fingerprint).arg(window)
                }
                _ => inv.arg(0).arg("").arg(0),
            };
            inv.arg(on.len());
            for ch in on {
                inv.arg(index.get(ch).copied().unwrap_or_default());
            }
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
        crate::engine::check_batch_keys(batch)?;
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

    /// Publishes a batch with one script run (`scripts/publish.lua` for one event,
    /// `scripts/publish_batch.lua` for several), which Redis runs whole or (Redis gone) not at
    /// all, and whose messages reach every node together. The batch may be the events of
    /// several pipelined requests (`server::lean_publish`).
    async fn publish_batch(&self, batch: &[Prepared]) -> Result<Vec<PublishAck>, EngineError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if batch.len() > 1 && batch.iter().any(|p| p.idempotency.is_some()) {
            self.check_keys(batch).await?;
        }
        if self.is_cluster() {
            return self.publish_cluster(batch).await;
        }
        let mut conn = self.conn.clone();
        // One event keeps the script of its own: the batch script's bookkeeping cost a single
        // event about 9% more of Redis's time (docs/benchmarks.md).
        let (ids, before): (Vec<Vec<String>>, Option<String>) = if let [one] = batch {
            let mut ids: Vec<String> =
                self.invocation(one, &one.channels).invoke_async(&mut conn).await.map_err(unavailable)?;
            // On one channel, the id of the entry before it there follows its own.
            let before = (one.channels.len() == 1 && replay(&ids).is_none()).then(|| ids.pop()).flatten();
            (vec![ids], before)
        } else {
            let mut ids: Vec<Vec<String>> =
                self.batch_invocation(batch).invoke_async(&mut conn).await.map_err(unavailable)?;
            // The last list: for a batch on one channel, the entry before it there; of no use
            // if an event of the batch was a retry (not published again).
            let before = ids.pop().and_then(|mut b| b.pop()).filter(|_| ids.iter().all(|i| replay(i).is_none()));
            (ids, before)
        };
        if ids.len() != batch.len() {
            return Err(unavailable("unexpected publish reply"));
        }
        let acks = batch
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
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(before) = before.as_deref().and_then(Position::parse_stream_id) {
            self.deliver_own(batch, &acks, before);
        }
        Ok(acks)
    }

    /// Delivers a batch of events on one channel to this node at once, as the in-memory engine
    /// delivers before it answers, when the node has delivered the entry just before the
    /// batch there (`before`), or some of the batch's first events: nothing can then come
    /// between. Otherwise, and on a channel the node does not watch, the pub/sub loop
    /// delivers them when their messages come, as it delivers every other node's; the ones
    /// delivered here it skips when they come (`ahead`). The node's catch-up point and its
    /// deliveries move under one lock, here, in the loop and in a catch-up, so that no entry
    /// is delivered ahead of the one before it.
    ///
    /// Why: the message of a publish reaches the loop through two tasks (redis-rs's
    /// connection manager forwards pushes from a task of its own), each run after the
    /// subscribers' writers the last event woke, so the loop delivered after those writers had
    /// written: in a fan-out the new events missed the writes in progress and took writes of
    /// their own, 39 events a write where the in-memory engine's publisher, which delivers,
    /// made 48 (docs/benchmarks.md, issue 22, the tenth session).
    fn deliver_own(&self, batch: &[Prepared], acks: &[PublishAck], before: Position) {
        let Some(channel) = batch.first().and_then(|p| p.channels.first()) else { return };
        let one_channel = batch
            .iter()
            .zip(acks)
            .all(|(p, a)| p.channels.len() == 1 && a.positions.len() == 1 && p.channels[0] == *channel && a.id == p.id);
        if !one_channel {
            return;
        }
        let mut seen = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(last) = seen.get_mut(channel) else { return };
        // Where the node is on the channel: just before the batch, or within it (the loop
        // delivered its first events already, from messages that came before this answer).
        let from = if *last == before {
            0
        } else {
            match acks.iter().position(|a| a.positions[0].1 == *last) {
                Some(i) => i + 1,
                None => return,
            }
        };
        let mut ahead = self.ahead.lock().unwrap_or_else(PoisonError::into_inner);
        let own = ahead.entry(channel.clone()).or_default();
        for (p, ack) in batch.iter().zip(acks).skip(from) {
            let pos = ack.positions[0].1;
            let event = message::published(channel, pos, &p.id, &p.event_type, &p.body, 1);
            *last = pos;
            if own.len() == AHEAD_LIMIT {
                // Its message is late beyond reason: if it comes, it is delivered again, and
                // each stream drops it as seen.
                own.pop_front();
            }
            own.push_back(pos);
            self.sink.node().deliver(&event);
        }
    }
}

/// How many of a channel's positions a node keeps as delivered ahead of their messages.
const AHEAD_LIMIT: usize = 4096;

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

impl Broker for RedisEngine {
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

    /// One script on a single Redis; event by event on a cluster.
    fn batches_are_atomic(&self) -> bool {
        !self.is_cluster()
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
        let reads: Vec<StartRead> = reads
            .iter()
            .map(|(channel, after)| StartRead { channel: channel.clone(), after: *after, last: 0 })
            .collect();
        Box::pin(async move { self.read_many(&reads).await })
    }

    /// Like [`Broker::histories`]: one script on a single Redis.
    fn read_starts<'a>(&'a self, reads: &'a [StartRead]) -> BoxFuture<'a, Result<Vec<HistoryRead>, EngineError>> {
        Box::pin(self.read_many(reads))
    }

    fn history_page<'a>(
        &'a self,
        channel: &'a ChannelName,
        query: PageQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, EngineError>> {
        Box::pin(self.page(channel, query))
    }

    fn remove_history<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(self.remove(channel))
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

    fn command(&self, command: NodeCommand) -> BoxFuture<'_, Result<Vec<NodeReply>, EngineError>> {
        Box::pin(self.send_command(command))
    }

    /// Sharded pub/sub has no pattern subscriptions.
    fn supports_patterns(&self) -> bool {
        !self.is_cluster()
    }
}
