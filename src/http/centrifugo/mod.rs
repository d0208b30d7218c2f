//! Centrifugo's client protocol (v2, JSON over WebSocket) at `GET /connection/websocket`
//! (`centrifugo.path`), so that the `centrifuge` SDKs connect to Herald unchanged and share
//! its hub with SSE and `/api/ws` clients. Opt-in with `centrifugo = true` or a
//! `[centrifugo]` table; specified in `docs/centrifugo.md`.
//!
//! Centrifugo's server HTTP API (`<api_prefix>/publish`, ...) is [`api`], for backends with
//! Herald's API keys; the unidirectional transports (`uni = true`) are [`uni`]. This module owns the upgrade; the socket's life is [`session`], its
//! messages and the channel-name mapping are [`protocol`]. Credentials come in the `connect` command, not the
//! upgrade request. It reuses the WebSocket transport's frame budget and read-error closes
//! (`http::ws`) and, like it, reads the hub only through [`crate::Connection`].

pub(super) mod api;
mod protocol;
mod session;
pub(super) mod uni;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use crate::channel::{ChannelError, ChannelName};
use crate::herald::Herald;
use crate::http::auth::PeerAddr;
use crate::http::error::ApiError;
use crate::http::refusal::Refusal;
use crate::http::ws::{READ_BUFFER, WRITE_BUFFER};
use crate::transport::DrainGuard;

/// The route of Centrifugo's WebSocket endpoint.
pub fn route() -> MethodRouter<Herald> {
    get(upgrade)
}

async fn upgrade(State(herald): State<Herald>, peer: Option<Extension<PeerAddr>>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let drain_guard = parts.extensions.remove::<DrainGuard>();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &herald).await {
        Ok(upgrade) => upgrade,
        Err(r) => return ApiError::refuse(Refusal::WebsocketRequired, r.body_text()).into_response(),
    };
    let max = herald.config().max_body_bytes;
    let peer = peer.map(|Extension(p)| p);
    // The publish hook sees a Centrifugo client's publishes like a WebSocket's.
    let hooks = crate::http::hooked::Client::new(&herald, "centrifugo", &parts.headers, peer);
    let session = session::Session::new(herald, peer, hooks, drain_guard);
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "centrifugo upgrade failed"))
        .on_upgrade(move |socket| session.run(socket))
}

/// The disconnect that follows the end of a connection, by the hub's reason for closing it.
fn disconnect_for(reason: Option<crate::hub::connection::CloseReason>) -> protocol::Disconnect {
    use crate::hub::connection::CloseReason;
    use protocol::Disconnect;
    match reason {
        Some(CloseReason::Drain { .. }) => Disconnect::Shutdown,
        Some(CloseReason::TokenExpired) => Disconnect::Expired,
        Some(CloseReason::Disconnect { reconnect: true, .. }) => Disconnect::ForceReconnect,
        Some(CloseReason::Disconnect { reconnect: false, .. }) => Disconnect::ForceNoReconnect,
        Some(CloseReason::Overflow | CloseReason::Timeout) => Disconnect::Slow,
        Some(CloseReason::Resync) | None => Disconnect::InsufficientState,
    }
}

/// The Herald channel a Centrifugo channel name stands for (`docs/centrifugo.md`).
fn channel(herald: &Herald, name: &str) -> Result<ChannelName, protocol::ClientError> {
    let known = |ns: &str| !matches!(herald.parse_channel(&format!("{ns}:a")), Err(ChannelError::UnknownNamespace(_)));
    let mapped = protocol::herald_channel(name, known).ok_or_else(protocol::ClientError::unknown_channel)?;
    herald.parse_channel(&mapped).map_err(|_| protocol::ClientError::unknown_channel())
}

/// The Herald event a Centrifugo publication of `data` on `channel` becomes: `data`'s own
/// fields, of its `type` or `publication`. `None` when `data` is not a JSON object.
fn event(channel: &ChannelName, data: serde_json::Value) -> Option<serde_json::Value> {
    let serde_json::Value::Object(mut event) = data else { return None };
    event.entry("type").or_insert_with(|| "publication".into());
    event.insert("channel".into(), channel.as_str().into());
    Some(serde_json::Value::Object(event))
}

/// `presence` (one entry a user, keyed and `client` by user id: Herald's presence is per
/// user; `conn_info`, the `info` of the connection that brought the user in) or, with
/// `stats`, `presence_stats`.
async fn presence(
    herald: &Herald,
    who: &crate::auth::Principal,
    channel: &ChannelName,
    stats: bool,
) -> Result<serde_json::Value, protocol::ClientError> {
    use serde_json::json;
    let users = herald.channel_presence(who, channel).await.map_err(ApiError::from)?;
    if stats {
        let clients: usize = users.iter().map(|u| u.connections.max(1)).sum();
        return Ok(json!({"num_clients": clients, "num_users": users.len()}));
    }
    let presence: serde_json::Map<String, serde_json::Value> = users
        .into_iter()
        .map(|u| {
            let mut client = json!({"client": u.user_id, "user": u.user_id});
            if let Some(info) = u.info {
                client["conn_info"] = info;
            }
            (u.user_id, client)
        })
        .collect();
    Ok(json!({"presence": presence}))
}

/// A Centrifugo `history` read: the channel's head and at most `limit` events after
/// `since`, oldest first, each as its JSON and position.
///
/// This reads the engine's history after a position ([`crate::engine::Broker::history`]),
/// which serves a read `since` a position and the head alone (`limit` 0). A read without
/// `since` (the channel's oldest or newest kept events) or backwards from it (`reverse`)
/// needs a paged history read, which the engine does not have yet: `108 not available`.
/// With one, Centrifugo's reads are: no `since`, the first (`reverse`: last) `limit` kept;
/// `since`, the `limit` after it (`reverse`: before it, newest first).
async fn read_history(
    herald: &Herald,
    channel: &ChannelName,
    since: Option<crate::cursor::Position>,
    limit: usize,
    reverse: bool,
) -> Result<(crate::cursor::Position, Vec<(bytes::Bytes, crate::cursor::Position)>), protocol::ClientError> {
    if limit > 0 && (since.is_none() || reverse) {
        return Err(protocol::ClientError::new(108, "history without `since`, or `reverse`, is not available yet"));
    }
    let read = herald.engine().history(channel, since.filter(|_| limit > 0)).await.map_err(|e| {
        tracing::warn!(channel = %channel, error = %e, "centrifugo history read failed");
        let mut e = protocol::ClientError::new(100, "internal server error");
        e.temporary = true;
        e
    })?;
    let events = read.events.map_err(|_| protocol::ClientError::unrecoverable_position())?;
    let mut out: Vec<_> = events
        .iter()
        .filter_map(|event| {
            let copy = event.copies.iter().find(|c| c.channel == *channel)?;
            Some((bytes::Bytes::copy_from_slice(copy.frame.json()), copy.position))
        })
        .collect();
    out.truncate(limit);
    Ok((read.head, out))
}
