//! The backend hooks at the HTTP edge (`docs/backend.md`): what Herald tells the application's
//! hooks about a client (its address, the transport, the user a credential proved, the
//! headers and cookies `[hooks]` names) and what it does with the answers: a user the
//! connect or publish hook names becomes the principal, a connect hook's channels join the
//! stream, a publish hook's `data` replaces the payload, an RPC hook's `data` answers a
//! Centrifugo client's `rpc` (and a connect or subscribe hook's `data` its `connect` or
//! `subscribe`). The asking itself is [`crate::hooks`]'s.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::auth::PeerAddr;
use super::error::ApiError;
use super::head::Headers;
use crate::auth::{Principal, UserIdentity};
use crate::channel::ChannelName;
use crate::event::Event;
use crate::herald::{Herald, SubscribeError};
use crate::hooks::{Hook, HookError, HookUser};

/// Longest user id a hook may name.
const MAX_USER_ID: usize = 128;

/// The client as the hooks are told about it.
pub(crate) struct Client {
    transport: &'static str,
    /// Serialized as its text (`"127.0.0.1"`); kept as an address so that a request to a
    /// node without hooks costs no allocation for it.
    ip: Option<std::net::IpAddr>,
    /// Boxed as a slice: every open socket holds one.
    passed: Box<[(HeaderName, HeaderValue)]>,
}

impl Client {
    pub(crate) fn new(
        herald: &Herald,
        transport: &'static str,
        headers: &impl Headers,
        peer: Option<PeerAddr>,
    ) -> Self {
        Self { transport, ip: peer.map(|p| p.0.ip()), passed: herald.hooks().passed(headers).into_boxed_slice() }
    }

    /// The client's address, when the server knows it.
    pub(crate) fn ip(&self) -> Option<std::net::IpAddr> {
        self.ip
    }
}

/// Runs the connect hook, then the subscribe hook for each requested channel, for a stream
/// about to open: the principal it opens as and every channel it follows. A stream opened
/// with an API key is not asked about.
pub(crate) async fn open(
    herald: &Herald,
    client: &Client,
    who: Principal,
    mut channels: Vec<ChannelName>,
) -> Result<(Principal, Vec<ChannelName>), ApiError> {
    // An API key is the application's own backend (or its admin page): not asked about.
    if matches!(who, Principal::ApiKey(_)) {
        return Ok((who, channels));
    }
    let requested = channels.len();
    let (who, added) = connect(herald, client, who, &channels, None).await?;
    for raw in added.channels {
        let ch = herald.parse_subscription(&raw).map_err(|e| {
            ApiError::from(HookError::Unavailable { hook: Hook::Connect.label(), why: format!("channel: {e}") })
        })?;
        if !channels.contains(&ch) {
            channels.push(ch);
        }
    }
    // The connect hook's own channels need no second asking.
    subscribe(herald, client, &who, &channels[..requested], None).await?;
    Ok((who, channels))
}

/// What the connect hook said of a client beside who it is: the channels it adds, as it
/// wrote them; and, for a Centrifugo client, its connection's `info` and its `connect`
/// reply's `data`.
#[derive(Default)]
pub(crate) struct Connected {
    pub channels: Vec<String>,
    pub info: Option<Value>,
    pub data: Option<serde_json::Map<String, Value>>,
}

/// Runs the connect hook, if one is set, for a client about to connect with `channels` (and
/// `data`, what a Centrifugo client's `connect` carried): the principal it connects as (the
/// user the hook names, else `who`) and what else it said.
pub(crate) async fn connect(
    herald: &Herald,
    client: &Client,
    who: Principal,
    channels: &[ChannelName],
    data: Option<&Value>,
) -> Result<(Principal, Connected), ApiError> {
    let hooks = herald.hooks();
    let Some(url) = hooks.url(Hook::Connect, None) else { return Ok((who, Connected::default())) };
    let mut req = json!({
        "transport": client.transport,
        "ip": client.ip,
        "user": user_json(&who),
        "channels": channels.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
    });
    if let Some(data) = data {
        req["data"] = data.clone();
    }
    let allowed = hooks.ask(&herald.metrics().hooks, Hook::Connect, url, &req, &client.passed).await?;
    let connected = Connected { channels: allowed.channels, info: allowed.info, data: allowed.data };
    Ok((named(Hook::Connect, who, allowed.user)?, connected))
}

/// Asks the RPC hook, if one is set, to answer `method` with `data` for a Centrifugo client
/// (`id`, its client id): the request is Centrifugo's RPC proxy's (`client`,
/// `transport`, `protocol`, `encoding`, `user`: the user id or `""`, `method`, `data`), with
/// Herald's `ip`, so that an application's RPC handler written for Centrifugo answers it
/// unchanged. `None` without an RPC hook.
pub(crate) async fn rpc(
    herald: &Herald,
    client: &Client,
    id: &str,
    who: &Principal,
    method: &str,
    data: Value,
) -> Option<Result<Value, crate::hooks::RpcError>> {
    let hooks = herald.hooks();
    let url = hooks.url(Hook::Rpc, None)?;
    let req = json!({
        "client": id,
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "user": who.user_id().map_or("", |u| &**u),
        "ip": client.ip,
        "method": method,
        "data": data,
    });
    Some(hooks.rpc(&herald.metrics().hooks, url, &req, &client.passed).await)
}

/// Runs the subscribe hook for each of `channels` (where one is set) that `who` (not an API
/// key) is about to follow, on a new stream or (`connection`) joining an open one live.
pub(crate) async fn subscribe(
    herald: &Herald,
    client: &Client,
    who: &Principal,
    channels: &[ChannelName],
    connection: Option<&str>,
) -> Result<(), ApiError> {
    if matches!(who, Principal::ApiKey(_)) {
        return Ok(());
    }
    // Each channel once, and an oversized request refused before the application is asked
    // once per channel of it (repeats count once, as when the stream is admitted).
    let mut distinct: Vec<&ChannelName> = Vec::with_capacity(channels.len());
    for ch in channels {
        if !distinct.contains(&ch) {
            distinct.push(ch);
        }
    }
    let limit = herald.config().max_channels_per_connection;
    if distinct.len() > limit {
        return Err(SubscribeError::TooManyChannels { limit }.into());
    }
    for ch in distinct {
        subscribe_one(herald, client, who, ch, connection, None).await?;
    }
    Ok(())
}

/// Runs the subscribe hook of `channel`, if one is set, for `who` (not an API key), telling
/// it `data`, what a Centrifugo client's `subscribe` carried: what it answered as `data`,
/// which that client's `subscribe` reply carries (Centrifugo's subscribe proxy).
pub(crate) async fn subscribe_one(
    herald: &Herald,
    client: &Client,
    who: &Principal,
    channel: &ChannelName,
    connection: Option<&str>,
    data: Option<&Value>,
) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    let hooks = herald.hooks();
    let url = match (who, hooks.url(Hook::Subscribe, Some(channel))) {
        (Principal::ApiKey(_), _) | (_, None) => return Ok(None),
        (_, Some(url)) => url,
    };
    let mut req = json!({
        "transport": client.transport,
        "ip": client.ip,
        "user": user_json(who),
        "channel": channel.as_str(),
        "connectionId": connection,
    });
    if let Some(data) = data {
        req["data"] = data.clone();
    }
    Ok(hooks.ask(&herald.metrics().hooks, Hook::Subscribe, url, &req, &client.passed).await?.data)
}

/// Runs the publish hook on each event a user (not an API key) publishes: the principal it
/// is published as (the hook may name the user), each payload possibly replaced.
pub(crate) async fn publish(
    herald: &Herald,
    client: &Client,
    mut who: Principal,
    events: &mut [(Vec<ChannelName>, Event)],
) -> Result<Principal, ApiError> {
    if matches!(who, Principal::ApiKey(_)) {
        return Ok(who);
    }
    let hooks = herald.hooks();
    for (channels, event) in events.iter_mut() {
        let Some(url) = hooks.url(Hook::Publish, channels.first()) else { continue };
        let req = json!({
            "ip": client.ip,
            "user": user_json(&who),
            "channels": channels.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
            "type": event.event_type(),
            "data": Value::Object(event.fields().clone()),
        });
        let allowed = hooks.ask(&herald.metrics().hooks, Hook::Publish, url, &req, &client.passed).await?;
        who = named(Hook::Publish, who, allowed.user)?;
        if let Some(data) = allowed.data {
            event.set_fields(data);
        }
    }
    Ok(who)
}

/// `{"id", "name"}` of the user a credential proved, or `null`.
fn user_json(who: &Principal) -> Value {
    match who {
        Principal::User(u) => json!({"id": u.id, "name": u.name}),
        _ => Value::Null,
    }
}

/// The principal once the hook has answered: the user it names, if it names one and the
/// request is not an API key's.
fn named(hook: Hook, who: Principal, user: Option<HookUser>) -> Result<Principal, ApiError> {
    let Some(user) = user else { return Ok(who) };
    if matches!(who, Principal::ApiKey(_)) {
        return Ok(who);
    }
    if user.id.is_empty() || user.id.len() > MAX_USER_ID {
        let why = format!("a user id is 1 to {MAX_USER_ID} bytes");
        return Err(HookError::Unavailable { hook: hook.label(), why }.into());
    }
    Ok(Principal::User(Arc::new(UserIdentity {
        id: user.id.into(),
        name: user.name.map(Into::into),
        subscribe: None,
        publish: None,
        expires_at: None,
    })))
}
