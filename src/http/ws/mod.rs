//! The WebSocket transport: `GET /api/ws` (HTTP/1.1 Upgrade, or HTTP/2 extended CONNECT),
//! a sibling of the SSE stream on the same hub, opt-in with `websocket = true`.
//!
//! This module owns the upgrade: the same query and credentials as `GET /api/events`, and,
//! when the query names channels, the same [`Herald::connect`] before the `101`, so that
//! every refusal is the HTTP status and JSON error an SSE client would get. The socket's
//! life (commands, events, heartbeats, closes) is `session`; its messages are
//! `protocol`; its frames and bytes on the upgraded connection, and the handshake's
//! headers, are `socket`. It builds on the library's transport-neutral [`crate::Connection`] and must
//! not reach into the hub's queue. The protocol is specified in `docs/websocket.md`.

mod protocol;
mod session;
mod socket;

// What Centrifugo's protocol (`http::centrifugo`) shares with this transport: the socket
// and its handshake, the frame budget, the heartbeat, the closes of broken frames, the
// session's own rights and the connection's next message.
pub(in crate::http) use protocol::Close;
pub(in crate::http) use protocol::close_frame;
pub(in crate::http) use session::{Bucket, Heartbeat, next, own_connection};
pub(in crate::http) use socket::{In, Socket, Upgrade, UpgradedIo, pong};

use axum::extract::{Extension, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use crate::auth::Principal;
use crate::herald::{Herald, LastEvents, StreamRequest};
use crate::http::auth::{PeerAddr, check_cookie_request, principal};
use crate::http::error::ApiError;
use crate::http::hooked;
use crate::http::observe::count_subscribe_refusal;
use crate::http::refusal::Refusal;
use crate::http::subscribe::{StreamQuery, stream_query};
use crate::transport::{DrainGuard, KillSwitch};

/// The route of `/api/ws`: `GET` for HTTP/1.1, `CONNECT` for HTTP/2 (RFC 8441).
pub fn route() -> MethodRouter<Herald> {
    get(upgrade).connect(upgrade)
}

/// The handler; it counts its refusals as stream refusals, as `GET /api/events` does.
pub async fn upgrade(
    State(herald): State<Herald>,
    RawQuery(query): RawQuery,
    peer: Option<Extension<PeerAddr>>,
    req: Request,
) -> Response {
    let answer = open(&herald, query, peer.map(|Extension(p)| p), req).await;
    count_subscribe_refusal(&herald, answer.into_response())
}

async fn open(
    herald: &Herald,
    query: Option<String>,
    peer: Option<PeerAddr>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = req.into_parts();
    // Held by the session: a drain waits for the socket's close as for a connection.
    let drain_guard = parts.extensions.remove::<DrainGuard>();
    let upgrade =
        socket::Upgrade::from_parts(&mut parts).map_err(|why| ApiError::refuse(Refusal::WebsocketRequired, why))?;
    let StreamQuery { channels, last_event_id, ticket, filters, last, named: _ } =
        stream_query(herald, query, &parts.headers)?;
    // Cross-site WebSocket hijacking: a browser attaches the cookie to a WebSocket opened by
    // any page, and no CORS preflight stands in the way. A ticket is not ambient.
    if ticket.is_none() {
        check_cookie_request(herald, &parts)?;
    }
    let who = principal(herald, &parts.headers, ticket.as_deref()).await?;
    let client = hooked::Client::new(herald, "websocket", &parts.headers, peer);
    let (who, channels) = hooked::open(herald, &client, who, channels).await?;
    let kill = KillSwitch::default();
    // Without channels, the first `subscribe` opens the stream: the query's `last` waits for it.
    let mut later = LastEvents::default();
    let conn = if channels.is_empty() {
        later = last;
        None
    } else {
        let req = StreamRequest {
            principal: who.clone(),
            channels,
            last_event_id,
            named: false,
            kill: Some(kill.clone()),
            filters,
            last,
            transport: "websocket",
        };
        // Its events come as the WebSocket messages the session sends.
        Some(herald.connect(req).await?.for_websocket())
    };
    if let Some(conn) = &conn {
        tracing::debug!(connection = conn.id(), who = %who.describe(), "websocket opened");
    }
    // Without a credential, the first message may bring one (`auth`), until a subscription
    // is open.
    let may_authenticate = matches!(who, Principal::Anonymous) && conn.is_none();
    let max = herald.config().max_body_bytes;
    let session = session::Session::new(herald.clone(), who, client, conn, kill, may_authenticate, later);
    let session = session.holding(drain_guard);
    // The socket gets a task of its own, sized for what an open socket holds: the one that
    // waits for the upgrade ends here.
    Ok(upgrade.respond(max, move |socket| {
        tokio::spawn(session.serving(socket));
    }))
}
