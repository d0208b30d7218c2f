//! The server API's `history` and `history_remove`, on Herald's history (either engine):
//! a channel's kept events as Centrifugo publications (`data` the event JSON as an SSE client
//! gets it, `offset` its position, the epoch `herald`), read with Centrifugo's `limit`,
//! `since` and `reverse`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::protocol::{self, ClientError};
use crate::auth::Principal;
use crate::channel::ChannelName;
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
    since: Option<protocol::StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

/// The channel's history as Centrifugo's server API reads it (see `read_history`).
pub(super) async fn history(herald: &Herald, who: &Principal, h: History) -> Result<Value, ClientError> {
    let channel = kept(herald, &h.channel)?;
    herald.policies().can_subscribe(who, &channel).map_err(ApiError::from)?;
    super::super::read_history(herald, &channel, h.since.as_ref(), h.limit, h.reverse).await
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
    if super::super::kept_size(herald, &channel) == 0 {
        return Err(ClientError::new(108, "not available: the channel's namespace keeps no history"));
    }
    Ok(channel)
}
