//! Centrifugo's client protocol (v2, JSON over WebSocket) at `GET /connection/websocket`
//! (`centrifugo.path`), so that the `centrifuge` SDKs connect to Herald unchanged and share
//! its hub with SSE and `/api/ws` clients. Opt-in with `centrifugo = true` or a
//! `[centrifugo]` table; specified in `docs/centrifugo.md`.
//!
//! This module owns the upgrade; the socket's life is [`session`], its messages and the
//! channel-name mapping are [`protocol`]. Credentials come in the `connect` command, not the
//! upgrade request. It reuses the WebSocket transport's frame budget and read-error closes
//! (`http::ws`) and, like it, reads the hub only through [`crate::Connection`].

mod protocol;
mod session;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

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
    let session = session::Session::new(herald, peer.map(|Extension(p)| p), drain_guard);
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "centrifugo upgrade failed"))
        .on_upgrade(move |socket| session.run(socket))
}
