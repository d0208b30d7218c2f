//! The server API's `history` and `history_remove`, on Herald's history (either engine):
//! a channel's kept events as Centrifugo publications (`data` the event JSON as an SSE client
//! gets it, `offset` its position, the epoch `herald`), read with Centrifugo's `limit`,
//! `since` and `reverse`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::protocol::{self, ClientError};
use crate::auth::Principal;
use crate::channel::ChannelName;
use crate::engine::PageQuery;
use crate::event::SERVER_EVENT_TYPES;
use crate::herald::Herald;
use crate::http::error::ApiError;

/// `{"channel","limit","since":{"offset","epoch"},"reverse"}`.
#[derive(Deserialize)]
pub(super) struct History {
    #[serde(default)]
    channel: String,
    /// `0` (or none): no publications, only the position; `-1`: all kept; `n`: at most `n`.
    #[serde(default)]
    limit: i64,
    since: Option<Since>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

/// Centrifugo's `112 unrecoverable position`: history does not reach back to `since`, or
/// `since` names another epoch.
fn unrecoverable() -> ClientError {
    ClientError::new(112, "unrecoverable position")
}

/// `{"publications":[{"data","offset"}, ..],"epoch":"herald","offset":<the channel's>}`, a
/// page of the engine's history ([`PageQuery`]): forward from the oldest kept event (or from
/// after `since`), or with `reverse` back from the newest (or from before `since`).
pub(super) async fn history(herald: &Herald, who: &Principal, h: History) -> Result<Value, ClientError> {
    let channel = kept(herald, &h.channel)?;
    herald.policies().can_subscribe(who, &channel).map_err(ApiError::from)?;
    let since = match &h.since {
        Some(s) if s.epoch != protocol::EPOCH => return Err(unrecoverable()),
        Some(s) => Some(protocol::position(s.offset)),
        None => None,
    };
    // Never more than the namespace keeps (`-1`: all of it).
    let kept = herald.policies().of(&channel).map_or(0, |ns| ns.history_size);
    let limit = match h.limit {
        n if n < 0 => kept,
        n => usize::try_from(n).unwrap_or(usize::MAX).min(kept),
    };
    // Forward after `since` (or from the oldest kept); with `reverse` back from before
    // `since` (or from the newest).
    let query = match (since, h.reverse) {
        (since, false) => PageQuery { after: since, before: None, limit, newest_first: false },
        (since, true) => PageQuery { after: None, before: since, limit, newest_first: true },
    };
    let page = herald.engine().history_page(&channel, query).await.map_err(ApiError::from)?;
    let events = page.events.map_err(|_| unrecoverable())?;
    let mut publications = Vec::new();
    // Publications only: Herald's own notices, presence and join/leave are kept in history
    // for its own clients but are not Centrifugo publications.
    for (position, json) in events
        .iter()
        .filter(|e| !is_notice(&e.event_type))
        .filter_map(|e| e.copy_on(channel.as_str()).map(|c| (c.position, c.frame.json())))
    {
        let mut publication = String::new();
        protocol::push_pub(&mut publication, json, Some(position));
        publications.extend(serde_json::from_str::<Value>(&publication).ok());
    }
    Ok(json!({"publications": publications, "epoch": protocol::EPOCH, "offset": protocol::offset(page.head)}))
}

fn is_notice(event_type: &str) -> bool {
    SERVER_EVENT_TYPES.contains(&event_type) || matches!(event_type, "presence" | "join" | "leave")
}

/// `{"channel"}`: forgets the channel's kept events (either engine); its position goes on.
pub(super) async fn remove(herald: &Herald, who: &Principal, name: &str) -> Result<Value, ClientError> {
    let channel = kept(herald, name)?;
    herald.policies().can_publish(who, &channel).map_err(ApiError::from)?;
    herald.engine().remove_history(&channel).await.map_err(ApiError::from)?;
    tracing::info!(%channel, "history removed");
    Ok(json!({}))
}

/// The channel `name` stands for, when its namespace keeps history: an empty name is `107`,
/// a channel without history Centrifugo's `108 not available`.
fn kept(herald: &Herald, name: &str) -> Result<ChannelName, ClientError> {
    if name.is_empty() {
        return Err(ClientError::new(107, "bad request: `channel` is required"));
    }
    let channel = super::super::channel(herald, name)?;
    let keeps = herald.policies().of(&channel).is_some_and(|ns| ns.history_size > 0 && !ns.history_ttl.is_zero());
    if !keeps {
        return Err(ClientError::new(108, "not available: the channel's namespace keeps no history"));
    }
    Ok(channel)
}
