//! What the node reports to the lifecycle webhooks (`docs/backend.md`), and which node reports
//! what: a connection's opening and closing by the node that holds it; a user online or
//! offline by the node whose presence call made the change (the engine decides it
//! atomically, `presence.rs`); a channel occupied or vacated by the node whose occupancy call
//! made the change (the engine decides it atomically too, from which nodes hold the channel);
//! an event published by the node that published it. So each occurrence is reported once by a
//! cluster. [`crate::webhooks`] queues, signs and sends.
//!
//! Occupancy is followed by one task per node ([`track_occupancy`]), only when a channel
//! webhook is configured: told which channels a connection opened on, joined or left, it
//! checks each against the hub (any local subscriber left?) and against what it told the
//! engine it holds, and tells the engine the difference; every heartbeat it renews what it
//! holds (and lets go of any it holds without subscribers). One task, one change at a time,
//! so the engine hears a channel's changes in the order they happened on this node.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{Notify, oneshot};

use super::{Herald, Inner};
use crate::channel::ChannelName;
use crate::config::WebhookEvent;
use crate::engine::{OccupancyChange, PublishAck};
use crate::event::Prepared;
use crate::hub::Departure;
use crate::hub::connection::ConnShared;

impl Herald {
    /// A connection opened on this node, following `channels`.
    pub(super) fn report_opened(&self, conn: &ConnShared, channels: &[ChannelName]) {
        let webhooks = &self.inner.webhooks;
        if webhooks.sends(WebhookEvent::ConnectionOpened) {
            webhooks.emit(WebhookEvent::ConnectionOpened, connection(&conn.id, conn.user_id.as_deref(), channels));
        }
    }

    /// A connection closed, following `channels`.
    pub(super) fn report_closed(&self, id: &str, user: Option<&str>, channels: &[ChannelName]) {
        self.nudge_occupancy(channels);
        let webhooks = &self.inner.webhooks;
        if webhooks.sends(WebhookEvent::ConnectionClosed) {
            webhooks.emit(WebhookEvent::ConnectionClosed, connection(id, user, channels));
        }
    }

    /// A user came online (`online`) or went offline in `channel`.
    pub(super) fn report_presence(&self, channel: &ChannelName, user: &str, name: Option<&str>, online: bool) {
        let kind = if online { WebhookEvent::PresenceOnline } else { WebhookEvent::PresenceOffline };
        let webhooks = &self.inner.webhooks;
        if webhooks.sends(kind) {
            let mut fields = Map::new();
            fields.insert("channel".into(), json!(channel.as_str()));
            fields.insert("user".into(), json!(user));
            if let Some(name) = name {
                fields.insert("userName".into(), json!(name));
            }
            webhooks.emit(kind, fields);
        }
    }

    /// The events of a batch about to be published that are to be reported once accepted (an
    /// `event.published` webhook, where their namespace sets `publish_webhook`), each with
    /// its place in the batch and the channels reported; nothing is copied when none is.
    pub(super) fn to_report_published(&self, batch: &[Prepared]) -> Vec<(usize, Prepared, Vec<ChannelName>)> {
        if !self.inner.webhooks.sends(WebhookEvent::EventPublished) {
            return Vec::new();
        }
        let asks = |c: &&ChannelName| {
            self.config().namespaces.get(c.namespace()).is_some_and(|ns| ns.publish_webhook == Some(true))
        };
        batch
            .iter()
            .enumerate()
            .filter_map(|(i, event)| {
                let channels: Vec<ChannelName> = event.channels.iter().filter(asks).cloned().collect();
                (!channels.is_empty()).then(|| (i, event.clone(), channels))
            })
            .collect()
    }

    /// Reports the events [`Herald::to_report_published`] chose, now that the engine accepted
    /// them. An idempotent retry the engine answered from memory (its ack names the first
    /// publish's id) is not reported again.
    pub(super) fn report_published(&self, reported: Vec<(usize, Prepared, Vec<ChannelName>)>, acks: &[PublishAck]) {
        for (i, event, channels) in reported {
            if acks.get(i).is_none_or(|ack| ack.id != event.id) {
                continue;
            }
            // The event as subscribers get it, with the channels reported instead of one.
            let json = format!("{{\"id\":{},{}}}", json!(&*event.id), event.body);
            let Ok(Value::Object(mut fields)) = serde_json::from_str(&json) else { continue };
            fields.insert("channels".into(), json!(channels.iter().map(ChannelName::as_str).collect::<Vec<_>>()));
            let mut occurrence = Map::new();
            occurrence.insert("event".into(), Value::Object(fields));
            self.inner.webhooks.emit(WebhookEvent::EventPublished, occurrence);
        }
    }

    /// Lets the webhooks finish as the node stops, within `within`: the channels this node
    /// holds are let go (reported vacated where it was the last to hold them), then what is
    /// queued is sent. Returns at once when webhooks are off.
    pub async fn settle_webhooks(&self, within: Duration) {
        let settle = async {
            self.departures_handled().await;
            if let Some(changed) = &self.inner.occupancy {
                let (done, released) = oneshot::channel();
                if let Ok(mut release) = changed.release.lock() {
                    release.push(done);
                }
                changed.nudge.notify_one();
                let _ = released.await;
            }
            self.inner.webhooks.flush().await;
        };
        if tokio::time::timeout(within, settle).await.is_err() {
            tracing::warn!("webhooks not settled within {within:?}; what is still queued is lost");
        }
    }

    /// Waits until the departures the hub reported so far were handled (their
    /// `connection.closed` queued), by sending a marker after them.
    async fn departures_handled(&self) {
        let handled = self.inner.departures_handled.notified();
        let mut handled = std::pin::pin!(handled);
        handled.as_mut().enable();
        let marker =
            Departure { connection: Arc::from(""), user: None, user_name: None, channels: Vec::new(), info: None };
        if self.inner.departures.send(marker).is_ok() {
            handled.await;
        }
    }

    /// A connection followed or left `channels`: the occupancy task looks at them again.
    pub(super) fn nudge_occupancy(&self, channels: &[ChannelName]) {
        if let Some(changed) = &self.inner.occupancy {
            if let Ok(mut dirty) = changed.channels.lock() {
                dirty.extend(channels.iter().filter(|c| !c.is_pattern()).cloned());
            }
            changed.nudge.notify_one();
        }
    }

    fn report_occupancy(&self, channel: &ChannelName, changes: Vec<OccupancyChange>) {
        for change in changes {
            let kind = if change.occupied { WebhookEvent::ChannelOccupied } else { WebhookEvent::ChannelVacated };
            let mut fields = Map::new();
            fields.insert("channel".into(), json!(channel.as_str()));
            fields.insert("seq".into(), json!(change.seq));
            self.inner.webhooks.emit(kind, fields);
        }
    }
}

fn connection(id: &str, user: Option<&str>, channels: &[ChannelName]) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("connection".into(), json!(id));
    if let Some(user) = user {
        fields.insert("user".into(), json!(user));
    }
    fields.insert("channels".into(), json!(channels.iter().map(ChannelName::as_str).collect::<Vec<_>>()));
    fields
}

/// Whether `departure` is the marker of [`Herald::departures_handled`] (no connection has an
/// empty id).
pub(super) fn is_marker(departure: &Departure) -> bool {
    departure.connection.is_empty()
}

/// Channels whose local subscribers changed since the occupancy task last looked.
#[derive(Default)]
pub(super) struct Changed {
    channels: Mutex<HashSet<ChannelName>>,
    /// Asks for every channel held to be let go (the node is stopping), and is answered.
    release: Mutex<Vec<oneshot::Sender<()>>>,
    nudge: Notify,
}

/// Follows this node's channels for the occupancy webhooks until the node is gone.
pub(super) async fn track_occupancy(node: Weak<Inner>, changed: Arc<Changed>, every: Duration) {
    let mut held: HashSet<ChannelName> = HashSet::new();
    let mut renew = tokio::time::interval(every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let renewing = tokio::select! {
            () = changed.nudge.notified() => false,
            _ = renew.tick() => true,
        };
        let Some(inner) = node.upgrade() else { return };
        let herald = Herald { inner };
        let mut look: HashSet<ChannelName> =
            changed.channels.lock().map(|mut dirty| dirty.drain().collect()).unwrap_or_default();
        let release: Vec<oneshot::Sender<()>> =
            changed.release.lock().map(|mut r| r.drain(..).collect()).unwrap_or_default();
        if renewing || !release.is_empty() {
            look.extend(held.iter().cloned());
        }
        for ch in look {
            let subscribed = release.is_empty() && herald.hub().subscriber_count(&ch) > 0;
            if !subscribed && held.remove(&ch) {
                match herald.engine().occupancy(&ch, false).await {
                    Ok(changes) => herald.report_occupancy(&ch, changes),
                    // Its lease lapses; the next call on the channel reports the vacancy.
                    Err(e) => tracing::warn!(channel = %ch, error = %e, "channel vacancy not recorded"),
                }
            } else if subscribed && (renewing || !held.contains(&ch)) {
                match herald.engine().occupancy(&ch, true).await {
                    Ok(changes) => {
                        held.insert(ch.clone());
                        herald.report_occupancy(&ch, changes);
                    }
                    // Tried again at the next heartbeat (a channel held stays held).
                    Err(e) => {
                        if let Ok(mut dirty) = changed.channels.lock() {
                            dirty.insert(ch.clone());
                        }
                        tracing::warn!(channel = %ch, error = %e, "channel occupancy not recorded");
                    }
                }
            }
        }
        for done in release {
            let _ = done.send(());
        }
    }
}
