//! The in-memory engine's presence: per channel, each user's connections and status, and
//! the users whose last connection left and whose grace period runs; and each user's status
//! across channels.

use std::time::{Duration, Instant};

use super::{MemoryEngine, lock};
use crate::catalogue::PresenceStatus;
use crate::channel::ChannelName;
use crate::engine::{BoxFuture, EngineError, OccupancyChange, PresenceEntry, PresenceStore};

/// Users with a status (`away`) held at once.
const MAX_STATUSES: usize = 100_000;

/// One user in one channel's presence.
pub(super) struct Present {
    name: Option<String>,
    status: PresenceStatus,
    info: Option<serde_json::Value>,
    conns: Vec<String>,
    /// Set when the last connection left: the user is offline once this passes.
    leaving_until: Option<Instant>,
}

impl PresenceStore for MemoryEngine {
    fn occupancy<'a>(
        &'a self,
        channel: &'a ChannelName,
        held: bool,
    ) -> BoxFuture<'a, Result<Vec<OccupancyChange>, EngineError>> {
        // One node: its own changes are the cluster's.
        let mut occupied = lock(&self.occupied);
        let (seq, channels) = &mut *occupied;
        let changed = if held { channels.insert(channel.clone()) } else { channels.remove(channel) };
        let changes = if changed {
            *seq += 1;
            vec![OccupancyChange { occupied: held, seq: *seq }]
        } else {
            Vec::new()
        };
        Box::pin(std::future::ready(Ok(changes)))
    }

    fn presence_join<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
        user: &'a PresenceEntry,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        let mut book = lock(&self.presence);
        let present = book.entry(channel.clone()).or_default().entry(user.user_id.clone()).or_insert_with(|| Present {
            name: user.user_name.clone(),
            status: user.status,
            info: user.info.clone(),
            conns: Vec::new(),
            leaving_until: None,
        });
        // Announced when the user was absent: not after a leave still in its grace period.
        let announce = present.conns.is_empty() && present.leaving_until.is_none();
        present.leaving_until = None;
        if !present.conns.iter().any(|c| c == conn) {
            present.conns.push(conn.to_owned());
        }
        Box::pin(async move { Ok(announce) })
    }

    fn presence_leave<'a>(
        &'a self,
        channel: &'a ChannelName,
        conn: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        let mut book = lock(&self.presence);
        if let Some(present) =
            book.get_mut(channel).and_then(|users| users.values_mut().find(|p| p.conns.iter().any(|c| c == conn)))
        {
            present.conns.retain(|c| c != conn);
            if present.conns.is_empty() {
                present.leaving_until = Some(Instant::now() + grace);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn presence_expire<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Vec<PresenceEntry>, EngineError>> {
        let mut book = lock(&self.presence);
        let now = Instant::now();
        let mut gone = Vec::new();
        if let Some(users) = book.get_mut(channel) {
            users.retain(|id, p| {
                let due = p.conns.is_empty() && p.leaving_until.is_none_or(|t| t <= now);
                if due {
                    gone.push(PresenceEntry {
                        user_id: id.clone(),
                        user_name: p.name.clone(),
                        status: PresenceStatus::Offline,
                        connections: 0,
                        info: p.info.clone(),
                    });
                }
                !due
            });
            if users.is_empty() {
                book.remove(channel);
            }
        }
        Box::pin(async move { Ok(gone) })
    }

    fn presence_list<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<Vec<PresenceEntry>, EngineError>> {
        let book = lock(&self.presence);
        let mut list: Vec<PresenceEntry> = book
            .get(channel)
            .into_iter()
            .flatten()
            .map(|(id, p)| PresenceEntry {
                user_id: id.clone(),
                user_name: p.name.clone(),
                status: p.status,
                connections: p.conns.len(),
                info: p.info.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Box::pin(async move { Ok(list) })
    }

    fn presence_set_status<'a>(
        &'a self,
        channel: &'a ChannelName,
        user: &'a str,
        status: PresenceStatus,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        let mut book = lock(&self.presence);
        let changed = match book.get_mut(channel).and_then(|users| users.get_mut(user)) {
            Some(p) if p.status != status => {
                p.status = status;
                true
            }
            _ => false,
        };
        Box::pin(async move { Ok(changed) })
    }

    fn user_presence<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<(bool, Option<PresenceStatus>), EngineError>> {
        let online = self.sink.node().has_user(user);
        let status = lock(&self.statuses).get(user).copied();
        Box::pin(async move { Ok((online, status)) })
    }

    fn set_user_status<'a>(
        &'a self,
        user: &'a str,
        status: Option<PresenceStatus>,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        let mut statuses = lock(&self.statuses);
        match status {
            Some(s) => {
                if statuses.len() < MAX_STATUSES || statuses.contains_key(user) {
                    statuses.insert(user.to_owned(), s);
                }
            }
            None => {
                statuses.remove(user);
            }
        }
        Box::pin(async { Ok(()) })
    }
}
