//! Centrifugo's client protocol (v2, JSON or, by the `centrifuge-protobuf` subprotocol,
//! Protobuf [`protobuf`], over WebSocket) at `GET /connection/websocket`
//! (`centrifugo.path`), so that the `centrifuge` SDKs connect to Herald unchanged and share
//! its hub with SSE and `/api/ws` clients. Opt-in with `centrifugo = true` or a
//! `[centrifugo]` table; specified in `docs/centrifugo.md`.
//!
//! Centrifugo's server HTTP API (`<api_prefix>/publish`, ...) is [`api`], for backends with
//! Herald's API keys; the unidirectional transports (`uni = true`) are [`uni`], the
//! bidirectional emulation over HTTP streams (`emulation = true`) [`emulation`]. This module owns the upgrade; the socket's life is [`session`], its
//! messages and the channel-name mapping are [`protocol`]. Credentials come in the `connect` command, not the
//! upgrade request. It reuses the WebSocket transport's frame budget and read-error closes
//! (`http::ws`) and, like it, reads the hub only through [`crate::Connection`].

pub(super) mod api;
pub(super) mod emulation;
mod protobuf;
mod protocol;
mod session;
pub(super) mod uni;

use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use crate::channel::{ChannelError, ChannelName};
use crate::herald::Herald;
use crate::http::auth::PeerAddr;
use crate::http::error::ApiError;
use crate::http::refusal::Refusal;
use crate::http::ws::Upgrade;
use crate::transport::DrainGuard;

/// The route of Centrifugo's WebSocket endpoint.
pub fn route() -> MethodRouter<Herald> {
    get(upgrade)
}

async fn upgrade(State(herald): State<Herald>, peer: Option<Extension<PeerAddr>>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let drain_guard = parts.extensions.remove::<DrainGuard>();
    let mut upgrade = match Upgrade::from_parts(&mut parts) {
        Ok(upgrade) => upgrade,
        Err(why) => return ApiError::refuse(Refusal::WebsocketRequired, why).into_response(),
    };
    // The SDKs that speak Protobuf ask for it by subprotocol (older ones by `format=protobuf`
    // or `cf_protocol=protobuf` in the query, without one); JSON is the default.
    let protobuf = upgrade.choose(protobuf::SUBPROTOCOL) || protobuf::asked_in(parts.uri.query());
    let max = herald.config().max_body_bytes;
    let peer = peer.map(|Extension(p)| p);
    // The publish hook sees a Centrifugo client's publishes like a WebSocket's.
    let hooks = crate::http::hooked::Client::new(&herald, "centrifugo", &parts.headers, peer);
    let session = session::Session::new(herald, peer, hooks, drain_guard);
    upgrade.respond(max, move |socket| {
        if protobuf {
            tokio::spawn(session.run(protobuf::ProtobufSocket(socket)));
        } else {
            tokio::spawn(session.run(socket));
        }
    })
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

/// Counts a client refused at its `connect` or its first subscription (which opens its
/// connection) in `herald_subscribe_refused_total`, by the reasons a refused stream has.
fn count_refusal(herald: &Herald, e: &ApiError) {
    let reason = e.refusal().map_or(crate::metrics::SubscribeRefusal::Invalid, Refusal::subscribe_reason);
    herald.metrics().refuse_subscribe(reason);
}

/// When a client of `who` that has no Herald connection must go (ms since the epoch): its
/// token's `exp` plus `auth.leeway`, the deadline at which the hub cuts a connection;
/// `u64::MAX` for none.
fn token_deadline(herald: &Herald, who: &crate::auth::Principal) -> u64 {
    match who {
        crate::auth::Principal::User(user) => user.session_deadline_ms(herald.config().auth.leeway).unwrap_or(u64::MAX),
        _ => u64::MAX,
    }
}

/// Sleeps until `at_ms` (milliseconds since the Unix epoch, by the clock tokens are read
/// against).
async fn sleep_until_ms(at_ms: u64) {
    let wait = std::time::Duration::from_millis(at_ms.saturating_sub(crate::auth::unix_ms()));
    tokio::time::sleep(wait).await;
}

/// Why a disconnect cut a client that holds a place and no connection yet; never, for
/// none.
async fn place_cut(place: &Option<crate::hub::Place>) -> crate::hub::connection::CloseReason {
    match place {
        Some(place) => place.cut().await,
        None => std::future::pending().await,
    }
}

/// Whether a client without a token is refused (auth configured, anonymous clients not
/// allowed), unless the connect hook names its user.
fn anonymous_refused(herald: &Herald) -> bool {
    let cfg = herald.config();
    cfg.auth_configured() && !cfg.allow_anonymous
}

/// Whether a client without a token is refused before anything is asked: anonymous clients
/// are refused and no connect hook could name its user.
fn tokenless_refused(herald: &Herald) -> bool {
    anonymous_refused(herald) && !herald.hooks().any(crate::hooks::Hook::Connect)
}

/// Why the connect hook left a client out.
enum Refused {
    /// The hook refused it, or gave no answer.
    Api(ApiError),
    /// No token and no user named by the hook, where anonymous clients are refused.
    Anonymous,
}

/// A Centrifugo client as its `connect` leaves it: who it is, its server-side subscriptions
/// (the token's `channels`, then the connect hook's, each once, as they were written), and what
/// the connect hook said of it (its connection's `info`, its `connect` reply's `data`), as
/// Centrifugo's connect proxy says them.
struct Connecting {
    who: crate::auth::Principal,
    server_side: Vec<String>,
    hook_info: Option<serde_json::Value>,
    data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Asks the connect hook, if one is set, about a Centrifugo client (either kind) that
/// connects as `who` with the server-side subscriptions `names` (its token's `channels`), as a
/// stream's open asks it (`docs/backend.md`), and with the `data` its connect carried: the
/// user the hook names, if any, is the client's (a cookie session, with no token).
async fn ask_connect_hook(
    herald: &Herald,
    hooks: &crate::http::hooked::Client,
    who: crate::auth::Principal,
    mut names: Vec<String>,
    data: Option<&serde_json::Value>,
) -> Result<Connecting, Refused> {
    if !herald.hooks().any(crate::hooks::Hook::Connect) {
        return Ok(Connecting { who, server_side: names, hook_info: None, data: None });
    }
    let channels: Vec<ChannelName> = names.iter().filter_map(|n| channel(herald, n).ok()).collect();
    let (who, said) = crate::http::hooked::connect(herald, hooks, who, &channels, data).await.map_err(Refused::Api)?;
    if anonymous_refused(herald) && matches!(who, crate::auth::Principal::Anonymous) {
        return Err(Refused::Anonymous);
    }
    for name in said.channels {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(Connecting { who, server_side: names, hook_info: said.info, data: said.data })
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

/// A Centrifugo `history` read, for the client's command and the server API alike:
/// `{"publications":[{"data","offset"}, ..],"epoch":"herald","offset":<the channel's>}`, a
/// page of the engine's history ([`crate::engine::PageQuery`]): forward from the oldest kept
/// event (or from after `since`), or with `reverse` back from the newest (or from before
/// `since`). `limit` 0 reads the position alone, `-1` all that is kept. A channel whose
/// namespace keeps no history is `108 not available`, a `since` history no longer reaches
/// (or of another epoch) `112 unrecoverable position`. The caller checks who may read.
async fn read_history(
    herald: &Herald,
    channel: &ChannelName,
    since: Option<&protocol::StreamPosition>,
    limit: i64,
    reverse: bool,
) -> Result<serde_json::Value, protocol::ClientError> {
    let kept = kept_size(herald, channel);
    if kept == 0 {
        return Err(protocol::ClientError::new(108, "not available: the channel's namespace keeps no history"));
    }
    let since = match since {
        Some(s) if s.epoch != protocol::EPOCH => return Err(protocol::ClientError::unrecoverable_position()),
        Some(s) => Some(protocol::position(s.offset)),
        None => None,
    };
    // Never more than the namespace keeps (`-1`: all of it).
    let limit = match limit {
        n if n < 0 => kept,
        n => usize::try_from(n).unwrap_or(usize::MAX).min(kept),
    };
    // `limit` counts publications, and history also keeps Herald's own notices (presence,
    // join and leave): the page is all that is kept that way, cut to `limit` below.
    let read = if limit == 0 { 0 } else { kept };
    let query = match (since, reverse) {
        (since, false) => crate::engine::PageQuery { after: since, before: None, limit: read, newest_first: false },
        (since, true) => crate::engine::PageQuery { after: None, before: since, limit: read, newest_first: true },
    };
    let page = herald.engine().history_page(channel, query).await.map_err(ApiError::from)?;
    let events = page.events.map_err(|_| protocol::ClientError::unrecoverable_position())?;
    let mut publications = Vec::new();
    // Publications only: Herald's own notices, presence and join/leave are kept in history
    // for its own clients but are not Centrifugo publications.
    for (position, json) in events
        .iter()
        .filter(|e| !is_notice(&e.event_type))
        .filter_map(|e| e.copy_on(channel.as_str()).map(|c| (c.position, c.frame.json())))
        .take(limit)
    {
        let mut publication = String::new();
        protocol::push_pub(&mut publication, json, Some(position));
        publications.extend(serde_json::from_str::<serde_json::Value>(&publication).ok());
    }
    Ok(
        serde_json::json!({"publications": publications, "epoch": protocol::EPOCH, "offset": protocol::offset(page.head)}),
    )
}

/// How many events the channel's namespace keeps (0: none, or for no time at all).
fn kept_size(herald: &Herald, channel: &ChannelName) -> usize {
    herald.policies().of(channel).filter(|ns| !ns.history_ttl.is_zero()).map_or(0, |ns| ns.history_size)
}

/// Herald's own events that history keeps but that are not Centrifugo publications.
fn is_notice(event_type: &str) -> bool {
    crate::event::SERVER_EVENT_TYPES.contains(&event_type) || matches!(event_type, "presence" | "join" | "leave")
}
