//! Reading history from Redis: a channel's Stream after a position, its floor (below which a
//! resume is a gap) and its AI-stream snapshots, read at one instant by one script; and the
//! catch-up after a reconnect, which delivers what the node missed.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use redis::Value;

use super::message::published;
use super::{RedisEngine, unavailable};
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::engine::{AiSnapshot, EngineError, GapReason, HistoryPage, HistoryRead, PageQuery, StartRead, merge};
use crate::event::{Published, json_for};

impl RedisEngine {
    pub(super) async fn read(
        &self,
        channel: &ChannelName,
        after: Option<Position>,
    ) -> Result<HistoryRead, EngineError> {
        let mut reads = self.read_many(&[StartRead { channel: channel.clone(), after, last: 0 }]).await?;
        reads.pop().ok_or_else(|| unavailable("unexpected history reply"))
    }

    /// Reads channels' histories with one script, at one instant; on a cluster, where a
    /// script reaches one slot, one channel after another.
    pub(super) async fn read_many(&self, reads: &[StartRead]) -> Result<Vec<HistoryRead>, EngineError> {
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
    async fn read_script(&self, reads: &[StartRead]) -> Result<Vec<HistoryRead>, EngineError> {
        let mut conn = self.conn.clone();
        let mut inv = self.history_script.prepare_invoke();
        for StartRead { channel, after, last } in reads {
            let (size, ttl) = self.limits(channel);
            inv.key(self.stream_key(channel)).key(self.floor_key(channel)).key(self.streams_key(channel));
            inv.arg(after.map(Position::to_stream_id).unwrap_or_default()).arg(size.max(1)).arg(ttl).arg(*last);
        }
        let reply: Value = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        let Value::Array(replies) = reply else { return Err(unavailable("unexpected history reply")) };
        if replies.len() != reads.len() {
            return Err(unavailable("unexpected history reply"));
        }
        reads
            .iter()
            .zip(&replies)
            .map(|(StartRead { channel, after, .. }, reply)| {
                let read = parse_history(channel, reply).ok_or_else(|| unavailable("unexpected history reply"))?;
                let events = match *after {
                    None => Ok(Vec::new()),
                    Some(p) => gap(p, read.head, read.floor).map(|()| stored_events(channel, read.entries)),
                };
                let mut recent = stored_events(channel, read.recent);
                recent.reverse();
                Ok(HistoryRead { head: read.head, events, streams: read.streams, recent })
            })
            .collect()
    }

    /// A page of one channel's history: one script, which reads the head and floor with it.
    pub(super) async fn page(&self, channel: &ChannelName, q: PageQuery) -> Result<HistoryPage, EngineError> {
        let mut conn = self.conn.clone();
        let (_, ttl) = self.limits(channel);
        let bound =
            |p: Option<Position>, open: &str| p.map_or_else(|| open.to_owned(), |p| format!("({}", p.to_stream_id()));
        // Nothing lies after the last id or before `0-0`, and Redis refuses a range bounded
        // there (`invalid start ID`): a client may still ask for one, and gets an empty
        // range, `+` to `-`.
        let beyond = q.after == Some(Position::MAX) || q.before == Some(Position::default());
        let (low, high) =
            if beyond { ("+".to_owned(), "-".to_owned()) } else { (bound(q.after, "-"), bound(q.before, "+")) };
        let reply: Value = self
            .page_script
            .key(self.stream_key(channel))
            .key(self.floor_key(channel))
            .arg(low)
            .arg(high)
            // One more than asked: whether there are more.
            .arg(q.limit.saturating_add(1))
            .arg(if q.newest_first { 1 } else { 0 })
            .arg(ttl)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let read = parse_history(channel, &reply).ok_or_else(|| unavailable("unexpected history reply"))?;
        if let Some(p) = q.after
            && let Err(reason) = gap(p, read.head, read.floor)
        {
            return Ok(HistoryPage { head: read.head, events: Err(reason), more: false });
        }
        let mut events = stored_events(channel, read.entries);
        let more = events.len() > q.limit;
        events.truncate(q.limit);
        Ok(HistoryPage { head: read.head, events: Ok(events), more })
    }

    /// Forgets a channel's kept events and AI streams (`history_remove.lua`).
    pub(super) async fn remove(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let mut inv = self.history_remove_script.prepare_invoke();
        inv.key(self.stream_key(channel)).key(self.floor_key(channel)).key(self.streams_key(channel));
        let _: Value = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }

    /// Moves a watched channel's catch-up point forward. Channels the node does not watch
    /// (the other channels of a multi-channel event, channels reached through a pattern) are
    /// not remembered: nothing would ever forget them.
    pub(super) fn note_seen(&self, channel: &ChannelName, pos: Position) {
        raise_seen(&mut self.last_seen.lock().unwrap_or_else(PoisonError::into_inner), channel, pos);
    }

    /// After a reconnect: delivers what the watched channels got since the last event
    /// delivered on each. They are read at one instant (one script; on a cluster, channel by
    /// channel) and merged ([`merge`]), so that each channel's events go in that channel's
    /// order and an event on several of them goes once, with its copies on all of them: a
    /// stream following several channels must not get it once per channel, out of order.
    pub(super) async fn catch_up(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        let reads: Vec<StartRead> = {
            let seen = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
            channels
                .iter()
                .filter_map(|c| Some(StartRead { channel: c.clone(), after: Some(*seen.get(c)?), last: 0 }))
                .collect()
        };
        if reads.is_empty() {
            return Ok(());
        }
        let mut lists = Vec::with_capacity(reads.len());
        for (StartRead { channel: ch, .. }, read) in reads.iter().zip(self.read_many(&reads).await?) {
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
                    let closed = self.sink.node().resync(ch);
                    tracing::warn!(channel = %ch, closed, "history no longer covers the outage; streams closed to resync");
                    self.note_seen(ch, read.head);
                    lists.push(merge::List::new());
                }
            }
        }
        // Seen and delivered under one lock, as the pub/sub loop and a publisher deliver
        // (`RedisEngine::deliver_own`): no entry is delivered ahead of the one before it.
        let mut seen = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
        for step in merge::merge(lists) {
            for t in &step.taken {
                raise_seen(&mut seen, &reads[t.list].channel, t.position);
            }
            // Not first: a copy of an event whose writes crossed another's (a cluster). Its
            // channel's subscribers still need it; the others drop it as a repeat.
            let event = if step.first { step.joined() } else { step.taken.first().map(|t| Arc::clone(&t.event)) };
            if let Some(event) = event {
                self.sink.node().deliver(&event);
            }
        }
        Ok(())
    }

    /// The head of a channel's Stream, remembered as where catch-up would start: from here
    /// on the channel is watched.
    pub(super) async fn mark_head(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let head = self.read(channel, None).await?.head;
        let mut seen = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = seen.entry(channel.clone()).or_default();
        *entry = (*entry).max(head);
        Ok(())
    }
}

/// Moves a watched channel's catch-up point up to `pos` (never back).
pub(super) fn raise_seen(seen: &mut HashMap<ChannelName, Position>, channel: &ChannelName, pos: Position) {
    if let Some(entry) = seen.get_mut(channel)
        && pos > *entry
    {
        *entry = pos;
    }
}

/// Whether history read up to `head`, complete above `floor`, covers what came after `p`.
fn gap(p: Position, head: Position, floor: Position) -> Result<(), GapReason> {
    if p > head {
        Err(GapReason::UnknownPosition)
    } else if p < floor {
        Err(GapReason::HistoryExpired)
    } else {
        Ok(())
    }
}

fn stored_events(channel: &ChannelName, entries: Entries) -> Vec<Arc<Published>> {
    entries.into_iter().filter_map(|(pos, fields)| stored_event(channel, pos, &fields)).collect()
}

fn stored_event(channel: &ChannelName, pos: Position, fields: &HashMap<String, String>) -> Option<Arc<Published>> {
    let fanout = fields.get("n").and_then(|n| n.parse().ok()).unwrap_or(1);
    Some(published(channel, pos, fields.get("i")?, fields.get("t")?, fields.get("b")?, fanout))
}

type Entries = Vec<(Position, HashMap<String, String>)>;

/// A channel's reply of the history script (or the page script, which leaves out the AI
/// streams and the recent entries).
struct ParsedRead {
    head: Position,
    /// Where the Stream stops vouching for completeness.
    floor: Position,
    entries: Entries,
    streams: Vec<AiSnapshot>,
    /// Newest first, as `XREVRANGE` gives them.
    recent: Entries,
}

fn text(v: &Value) -> Option<String> {
    redis::from_redis_value_ref::<String>(v).ok()
}

fn parse_entries(reply: Option<&Value>) -> Entries {
    let mut entries = Vec::new();
    let Some(Value::Array(list)) = reply else { return entries };
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
    entries
}

fn parse_history(channel: &ChannelName, reply: &Value) -> Option<ParsedRead> {
    let Value::Array(items) = reply else { return None };
    let head = Position::parse_stream_id(&text(items.first()?)?)?;
    let floor = Position::parse_stream_id(&text(items.get(1)?)?)?;
    let deleted = Position::parse_stream_id(&text(items.get(2)?)?)?;
    let entries = parse_entries(items.get(3));
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
    Some(ParsedRead { head, floor: floor.max(deleted), entries, streams, recent: parse_entries(items.get(5)) })
}
