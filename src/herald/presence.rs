//! Presence: who is in a channel, across every node, and the events that say so.
//!
//! The engine keeps the state (per channel: each user's connections and status; in Redis
//! with leases that a dead node stops renewing). This module decides what to announce:
//! `online` when a user's first connection joins a channel, `offline` when their last one
//! left and the grace period passed without a new one (so a reload does not flap), and
//! `away`/`online` when the user says so. Several tabs count once. `join`/`leave` events,
//! per connection, where a namespace enables them.

use std::time::Duration;

use super::{Herald, PublishError};
use crate::auth::Principal;
use crate::catalogue::PresenceStatus;
use crate::channel::ChannelName;
use crate::engine::{EngineError, NodeCommand, NodeReply, PresenceEntry};
use crate::event::{Event, Publisher};
use crate::hub::Departure;
use crate::hub::connection::ConnShared;
use crate::policy::Denied;

/// Statuses a user may set.
pub const USER_STATUSES: [PresenceStatus; 2] = PresenceStatus::USER_SETTABLE;

/// A presence request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("presence is not enabled on `{0}`")]
    Disabled(String),
    #[error("only a user (with a token) has a presence status")]
    NotAUser,
    #[error("status must be one of `online`, `away`")]
    BadStatus,
    #[error("too many status changes at once; wait a moment")]
    RateLimited { retry_after: std::time::Duration },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Whether a user is online anywhere.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPresence {
    pub user_id: String,
    pub online: bool,
    /// `online`, `away` or `offline`.
    pub status: PresenceStatus,
}

impl Herald {
    fn presence_on(&self, channel: &ChannelName) -> bool {
        !channel.is_pattern() && self.policies().of(channel).is_some_and(|ns| ns.presence)
    }

    pub(super) fn join_leave_on(&self, channel: &ChannelName) -> bool {
        !channel.is_pattern() && self.policies().of(channel).is_some_and(|ns| ns.join_leave)
    }

    /// A connection of a user now follows `channels`: presence and `join` events. A user's
    /// status is one value: one who is `away` arrives `away` in a new channel.
    pub(super) async fn announce_arrival(&self, conn: &ConnShared, channels: &[ChannelName]) {
        self.nudge_occupancy(channels);
        let Some(user) = &conn.user_id else { return };
        let who =
            Publisher { user_id: Some(user.to_string()), user_name: conn.user_name.as_deref().map(str::to_owned) };
        // Read once, and only if a channel has presence.
        let mut status = None;
        for ch in channels {
            if self.presence_on(ch) {
                let status = match status {
                    Some(s) => s,
                    None => *status.insert(self.status_of(user).await),
                };
                let entry = PresenceEntry {
                    user_id: user.to_string(),
                    user_name: who.user_name.clone(),
                    status,
                    connections: 1,
                    info: conn.info.as_deref().cloned(),
                };
                match self.engine().presence_join(ch, &conn.id, &entry).await {
                    Ok(true) => {
                        self.report_presence(ch, user, who.user_name.as_deref(), true);
                        self.announce(ch, Event::presence(status), &who).await
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(channel = %ch, error = %e, "presence join not recorded"),
                }
            }
            if self.join_leave_on(ch) {
                self.announce(ch, with_info(Event::join(ch.as_str()), conn.info.as_deref()), &who).await;
            }
        }
    }

    /// The status `user` set (`away`), or `online`.
    async fn status_of(&self, user: &str) -> PresenceStatus {
        match self.engine().user_status(user).await {
            Ok(Some(PresenceStatus::Away)) => PresenceStatus::Away,
            Ok(Some(PresenceStatus::Online | PresenceStatus::Offline) | None) => PresenceStatus::Online,
            Err(e) => {
                tracing::debug!(error = %e, "could not read a user's status");
                PresenceStatus::Online
            }
        }
    }

    /// A connection left `channels` (closed, or a live leave): presence leave, with the
    /// offline announced after the grace period if no other connection of the user came.
    pub(super) async fn announce_departure(&self, departure: Departure) {
        let Some(user) = departure.user else { return };
        let who =
            Publisher { user_id: Some(user.to_string()), user_name: departure.user_name.as_deref().map(str::to_owned) };
        let grace = self.config().presence_grace;
        let mut left = Vec::new();
        for ch in &departure.channels {
            if self.presence_on(ch) {
                match self.engine().presence_leave(ch, &departure.connection, grace).await {
                    Ok(()) => left.push(ch.clone()),
                    Err(e) => {
                        tracing::warn!(channel = %ch, error = %e, "presence leave not recorded; its lease will lapse")
                    }
                }
            }
            if self.join_leave_on(ch) {
                self.announce(ch, with_info(Event::leave(ch.as_str()), departure.info.as_deref()), &who).await;
            }
        }
        if left.is_empty() {
            return;
        }
        // The offline is due when the grace period ends; whoever looks first announces it.
        let herald = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace + Duration::from_millis(20)).await;
            for ch in left {
                herald.expire_presence(&ch).await;
            }
        });
    }

    /// Announces `offline` for the users of `channel` whose offline is due.
    pub(super) async fn expire_presence(&self, channel: &ChannelName) {
        match self.engine().presence_expire(channel).await {
            Ok(gone) => {
                for entry in gone {
                    self.report_presence(channel, &entry.user_id, entry.user_name.as_deref(), false);
                    let who = Publisher { user_id: Some(entry.user_id), user_name: entry.user_name };
                    self.announce(channel, Event::presence(PresenceStatus::Offline), &who).await;
                }
            }
            Err(e) => tracing::debug!(channel = %channel, error = %e, "presence expiry deferred"),
        }
    }

    /// Checks every presence channel with local subscribers for users whose offline is due
    /// (a node that died stops renewing its users' leases).
    pub(super) async fn expire_local_presence(&self) {
        let channels: Vec<ChannelName> =
            self.hub().active_channels().into_iter().filter(|c| self.presence_on(c)).collect();
        for ch in channels {
            self.expire_presence(&ch).await;
        }
    }

    async fn announce(&self, channel: &ChannelName, event: Event, who: &Publisher) {
        if let Err(e) = self.publish_for(vec![channel.clone()], event, who).await {
            tracing::warn!(channel = %channel, error = %e, "could not publish a presence event");
        }
    }

    /// Who is in `channel` (`GET /api/channels/{channel}/presence`), for a principal who may
    /// subscribe to it.
    pub async fn channel_presence(
        &self,
        who: &Principal,
        channel: &ChannelName,
    ) -> Result<Vec<PresenceEntry>, PresenceError> {
        self.policies().can_subscribe(who, channel)?;
        if !self.presence_on(channel) {
            return Err(PresenceError::Disabled(channel.to_string()));
        }
        Ok(self.engine().presence_list(channel).await?)
    }

    /// Whether `user` is online on any node (`GET /api/users/{id}/presence`). Users and API
    /// keys may ask; anonymous callers only in dev mode.
    pub async fn user_presence(&self, who: &Principal, user: &str) -> Result<UserPresence, PresenceError> {
        if matches!(who, Principal::Anonymous) && !self.policies().dev_mode {
            return Err(
                Denied::Unauthenticated { action: "read the presence of", channel: format!("user:{user}") }.into()
            );
        }
        let (online, status) = self.engine().user_presence(user).await?;
        let status = match (online, status) {
            (false, _) => PresenceStatus::Offline,
            (true, Some(s)) => s,
            (true, None) => PresenceStatus::Online,
        };
        Ok(UserPresence { user_id: user.to_owned(), online, status })
    }

    /// Sets the caller's status (`away`, `online`) on every channel where they are present,
    /// on every node (`POST /api/presence`).
    pub async fn set_presence_status(&self, who: &Principal, status: PresenceStatus) -> Result<(), PresenceError> {
        let Principal::User(user) = who else { return Err(PresenceError::NotAUser) };
        if !USER_STATUSES.contains(&status) {
            return Err(PresenceError::BadStatus);
        }
        // Each change is announced in every room the user is present in: toggling in a loop
        // must not flood them.
        self.charge_user("status:", &user.id).map_err(|retry_after| PresenceError::RateLimited { retry_after })?;
        let stored = (status != PresenceStatus::Online).then_some(status);
        self.engine().set_user_status(&user.id, stored).await?;
        let command = NodeCommand::SetStatus {
            user: user.id.to_string(),
            user_name: user.name.as_deref().map(str::to_owned),
            status,
        };
        self.engine().command(command).await?;
        Ok(())
    }

    /// On this node: applies a status to the user's presence in their connections' channels.
    pub(super) async fn apply_status(
        &self,
        user: &str,
        user_name: Option<String>,
        status: PresenceStatus,
    ) -> NodeReply {
        let mut channels: Vec<ChannelName> = Vec::new();
        for conn in self.hub().connections() {
            if conn.user.as_deref() == Some(user) {
                for ch in conn.channels {
                    if self.presence_on(&ch) && !channels.contains(&ch) {
                        channels.push(ch);
                    }
                }
            }
        }
        let who = Publisher { user_id: Some(user.to_owned()), user_name };
        for ch in channels {
            match self.engine().presence_set_status(&ch, user, status).await {
                Ok(true) => self.announce(&ch, Event::presence(status), &who).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(channel = %ch, error = %e, "presence status not recorded"),
            }
        }
        NodeReply::Done
    }
}

impl Herald {
    /// Gives back the slot of a user's place (a Centrifugo client that followed nothing, gone
    /// or taken over by nothing), as a departure gives back a connection's.
    pub(super) async fn release_place_slot(&self, user: &str, slot: &str) {
        self.engine().release_slot(user, slot).await;
        self.forget_status_if_offline(user).await;
    }

    /// A user who comes back after being offline everywhere is no longer away: once the user
    /// holds no slot anywhere, their status is cleared.
    async fn forget_status_if_offline(&self, user: &str) {
        if let Ok((false, Some(_))) = self.engine().user_presence(user).await
            && let Err(e) = self.engine().set_user_status(user, None).await
        {
            tracing::debug!(error = %e, "could not clear a user's status");
        }
    }
}

/// Reports each departure from the hub to presence, and gives back the connection's slot.
pub(super) async fn departures(
    herald: std::sync::Weak<super::Inner>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Departure>,
) {
    while let Some(departure) = rx.recv().await {
        let Some(inner) = herald.upgrade() else { return };
        let herald = Herald { inner };
        if super::lifecycle::is_marker(&departure) {
            herald.inner.departures_handled.notify_waiters();
            continue;
        }
        herald.report_closed(&departure.connection, departure.user.as_deref(), &departure.channels);
        if let Some(user) = departure.user.clone() {
            herald.engine().release_slot(&user, &departure.connection).await;
            // Presence calls may wait on the engine; departures keep flowing meanwhile.
            tokio::spawn(async move {
                herald.forget_status_if_offline(&user).await;
                herald.announce_departure(departure).await
            });
        }
    }
}

/// Refused presence changes for publishers: only the server announces presence.
pub(super) fn check_not_presence(event: &Event) -> Result<(), PublishError> {
    const SERVER_ANNOUNCED: [&str; 3] = ["presence", "join", "leave"];
    if SERVER_ANNOUNCED.contains(&event.event_type()) {
        return Err(PublishError::Event(crate::event::EventError::ReservedType(event.event_type().to_owned())));
    }
    Ok(())
}

/// A `join` or `leave` event with the connection's `info`, if the application gave one.
fn with_info(event: Event, info: Option<&serde_json::Value>) -> Event {
    match info {
        Some(info) => event.with("info", info.clone()),
        None => event,
    }
}
