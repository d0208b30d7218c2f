//! Centrifugo's server HTTP API (`POST <api_prefix>/<method>`), so that a backend that
//! published to Centrifugo publishes to Herald by changing its base URL: the same request
//! bodies, the answer `{"result":..}` or `{"error":{"code":..,"message":..}}` with Centrifugo's
//! codes, and the key in `X-API-Key` or `Authorization: apikey <key>` (Herald's API keys).
//!
//! Methods: `publish`, `broadcast`, `subscribe` and `unsubscribe` (a user's live
//! connections), `presence`, `presence_stats`, `history`, `history_remove` ([`history`]),
//! `channels`, `info`, `disconnect` (by user), `block_user`, `unblock_user` and
//! `connections` (Centrifugo PRO's user blocking and a user's connections, on Herald's bans
//! and connection listing) and `batch` of them. Publishing goes through
//! Herald's own publish (policies, payload limits, the key's rate limit), so both kinds of
//! clients get it.

use axum::extract::{Extension, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, http::StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::protocol::ClientError;
use crate::auth::Principal;
use crate::herald::{DisconnectOptions, DisconnectTarget, Herald, MAX_BAN};
use crate::http::auth::PeerAddr;
use crate::http::error::ApiError;
use crate::http::publish::{caller_and_body, publish_body};

mod history;

#[derive(Deserialize)]
struct Publish {
    channel: String,
    data: Value,
}

#[derive(Deserialize)]
struct Broadcast {
    channels: Vec<String>,
    data: Value,
}

#[derive(Deserialize)]
struct ChannelOnly {
    #[serde(default)]
    channel: String,
}

/// `subscribe` and `unsubscribe`: a user's connections, or with `client` only that one
/// (Herald's connection id), and a channel (`session` and the subscription options are not
/// supported and ignored).
#[derive(Deserialize)]
struct UserChannel {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    client: String,
}

#[derive(Deserialize)]
struct Channels {
    #[serde(default)]
    pattern: String,
}

/// `{"user":"42","disconnect":{"code":..,"reason":..}}`: a code below 3500 (or none given:
/// Centrifugo's default is `3503 force disconnect`, terminal) says whether to come back.
#[derive(Deserialize)]
struct Disconnect {
    user: String,
    disconnect: Option<DisconnectCode>,
}

#[derive(Deserialize)]
struct DisconnectCode {
    code: u32,
}

/// `{"user":"42","expire_at":1767225600}`: Centrifugo PRO's `block_user`, the block lasting
/// until `expire_at` (Unix seconds).
#[derive(Deserialize)]
struct Block {
    user: String,
    #[serde(default)]
    expire_at: i64,
}

/// `{"user":"42"}`: Centrifugo PRO's `connections` (the user's, on every node); its
/// `expression` (a CEL filter) is not supported.
#[derive(Deserialize)]
struct Connections {
    #[serde(default)]
    user: String,
    #[serde(default)]
    expression: String,
}

/// `{"user":"42"}`: `unblock_user`.
#[derive(Deserialize)]
struct Unblock {
    user: String,
}

/// `POST <api_prefix>/{method}`.
pub async fn call(
    State(herald): State<Herald>,
    Path(method): Path<String>,
    peer: Option<Extension<PeerAddr>>,
    req: Request,
) -> Response {
    let transport = req.headers().get("x-centrifugo-error-mode").is_some_and(|v| v.as_bytes() == b"transport");
    let (who, key, _, body, hooks) = match caller_and_body(&herald, peer, req).await {
        Ok(caller) => caller,
        // No or a bad key: Centrifugo answers `401` with no body of its own.
        Err(e) if e.status() == StatusCode::UNAUTHORIZED => return e.into_response(),
        Err(e) => return answer(Err(e.into()), transport),
    };
    if !matches!(who, Principal::ApiKey(_)) {
        return (StatusCode::UNAUTHORIZED, "").into_response();
    }
    let caller = Caller { herald, who, key, hooks };
    let result = match method.as_str() {
        "batch" => match params::<Batch>(body) {
            Ok(b) => Ok(batch(&caller, b).await),
            Err(e) => Err(e),
        },
        _ => caller.run(&method, body).await,
    };
    if let Err(e) = &result {
        tracing::info!(method, code = e.code, message = %e.message, "centrifugo API call refused");
    }
    answer(result, transport)
}

/// Who calls, with what they need to publish: one API request, or the commands of a batch.
struct Caller {
    herald: Herald,
    who: Principal,
    key: String,
    hooks: crate::http::hooked::Client,
}

impl Caller {
    /// One method with its parameters; `batch` is not one (Centrifugo's batch holds no batch).
    async fn run(&self, method: &str, body: Value) -> Result<Value, ClientError> {
        let herald = &self.herald;
        match method {
            "publish" => {
                let p = params::<Publish>(body)?;
                publish(herald, &self.who, &self.key, &self.hooks, &p.channel, p.data).await
            }
            "broadcast" => {
                let b = params::<Broadcast>(body)?;
                let mut responses = Vec::with_capacity(b.channels.len());
                for channel in &b.channels {
                    responses.push(
                        match publish(herald, &self.who, &self.key, &self.hooks, channel, b.data.clone()).await {
                            Ok(result) => json!({"result": result}),
                            Err(e) => json!({"error": error_body(&e)}),
                        },
                    );
                }
                Ok(json!({"responses": responses}))
            }
            "presence" | "presence_stats" => {
                let channel = super::channel(herald, &params::<ChannelOnly>(body)?.channel)?;
                super::presence(herald, &self.who, &channel, method == "presence_stats").await
            }
            "disconnect" => disconnect(herald, &self.who, params(body)?).await,
            "block_user" => block_user(herald, &self.who, params(body)?).await,
            "connections" => connections(herald, &self.who, params(body)?).await,
            "unblock_user" => {
                let user = params::<Unblock>(body)?.user;
                let target = DisconnectTarget::User(required("user", &user)?);
                herald.may_disconnect(&self.who, &target).map_err(ApiError::from)?;
                herald.unban_user(&user).await.map_err(ApiError::from)?;
                Ok(json!({}))
            }
            "subscribe" | "unsubscribe" => {
                let s = params::<UserChannel>(body)?;
                if s.user.is_empty() {
                    return Err(ClientError::new(107, "`user` is required: Herald subscribes a user's connections"));
                }
                let channel = super::channel(herald, &required("channel", &s.channel)?)?;
                let join = method == "subscribe";
                let changed = match s.client.as_str() {
                    "" => herald.change_user(&self.who, &s.user, &channel, join).await.map(|_| ()),
                    client if join => herald.join(&self.who, client, &channel).await,
                    client => herald.leave(&self.who, client, &channel).await,
                };
                match changed {
                    // Centrifugo answers success for a client that is not connected.
                    Ok(()) | Err(crate::herald::RoomError::NoConnection(_)) => Ok(json!({})),
                    Err(e) => Err(ApiError::from(e).into()),
                }
            }
            "history" => history::history(herald, &self.who, params(body)?).await,
            "history_remove" => history::remove(herald, &self.who, &params::<ChannelOnly>(body)?.channel).await,
            "channels" => channels(herald, &self.who, params::<Channels>(body)?.pattern).await,
            "info" => info(herald).await,
            _ => Err(ClientError::method_not_found()),
        }
    }
}

/// `{"commands":[{"publish":{..}}, ..],"parallel":false}`: each command an object with one
/// method's parameters under its name.
#[derive(Deserialize)]
struct Batch {
    #[serde(default)]
    commands: Vec<Value>,
    #[serde(default)]
    parallel: bool,
}

/// At most this many commands of a parallel batch run at once (Centrifugo's bound).
const BATCH_CONCURRENCY: usize = 1024;

/// `{"replies":[{"publish":{}}, {"error":{..}}, ..]}`, one a command, in order. Commands run
/// one after another, each after the last finished; with `parallel`, all at once.
async fn batch(caller: &Caller, b: Batch) -> Value {
    let one = |command: Value| async move {
        let (method, body) = match command {
            Value::Object(map) if map.len() == 1 => match map.into_iter().next() {
                Some((method, body)) => (method, body),
                None => return json!({"error": error_body(&ClientError::method_not_found())}),
            },
            Value::Object(map) if map.is_empty() => {
                return json!({"error": error_body(&ClientError::method_not_found())});
            }
            _ => {
                return json!({"error": error_body(&ClientError::new(107, "bad request: a command is an object with one method"))});
            }
        };
        let result =
            if method == "batch" { Err(ClientError::method_not_found()) } else { caller.run(&method, body).await };
        match result {
            Ok(result) => json!({method: result}),
            Err(e) => {
                tracing::info!(method, code = e.code, message = %e.message, "centrifugo API batch command refused");
                json!({"error": error_body(&e)})
            }
        }
    };
    let replies: Vec<Value> = if b.parallel {
        use futures_util::StreamExt;
        futures_util::stream::iter(b.commands.into_iter().map(one)).buffered(BATCH_CONCURRENCY).collect().await
    } else {
        let mut replies = Vec::with_capacity(b.commands.len());
        for command in b.commands {
            replies.push(one(command).await);
        }
        replies
    };
    json!({"replies": replies})
}

/// One publication, as `POST /api/publish` would publish it.
/// A publish of the server API; an API key's, so the publish hook lets it through.
async fn publish(
    herald: &Herald,
    who: &Principal,
    key: &str,
    hooks: &crate::http::hooked::Client,
    name: &str,
    data: Value,
) -> Result<Value, ClientError> {
    let channel = super::channel(herald, name)?;
    let event = super::event(&channel, data)
        .ok_or_else(|| ClientError::new(107, "Herald publishes JSON objects: `data` must be one"))?;
    publish_body(herald, who, key, None, event, hooks).await?;
    Ok(json!({}))
}

/// Cuts every connection of a user, on every node, as `POST /api/disconnect` does; the SDK
/// sees `3011 force reconnect` or `3503 force disconnect`.
async fn disconnect(herald: &Herald, who: &Principal, d: Disconnect) -> Result<Value, ClientError> {
    let reconnect = d.disconnect.is_some_and(|c| c.code < 3500);
    let target = DisconnectTarget::User(d.user);
    herald.may_disconnect(who, &target).map_err(ApiError::from)?;
    herald.disconnect(target, DisconnectOptions { reconnect, ban: None }).await.map_err(ApiError::from)?;
    Ok(json!({}))
}

/// Blocks a user as Centrifugo PRO does, on Herald's bans: banned on every node until
/// `expire_at` (without it, for the longest ban Herald keeps, a year; at least a second, at
/// most a year from now), and every connection of the user cut for good (`3503 force
/// disconnect`, as a banned user's `connect` is answered).
async fn block_user(herald: &Herald, who: &Principal, b: Block) -> Result<Value, ClientError> {
    let target = DisconnectTarget::User(required("user", &b.user)?);
    let ttl = match b.expire_at {
        0 => MAX_BAN,
        at => {
            let left_ms = i128::from(at) * 1000 - i128::from(crate::ids::now_ms());
            if left_ms <= 0 {
                return Err(ClientError::new(107, "`expire_at` is in the past: nothing to block"));
            }
            let left = std::time::Duration::from_millis(u64::try_from(left_ms).unwrap_or(u64::MAX));
            left.clamp(std::time::Duration::from_secs(1), MAX_BAN)
        }
    };
    herald.may_disconnect(who, &target).map_err(ApiError::from)?;
    herald.disconnect(target, DisconnectOptions { reconnect: false, ban: Some(ttl) }).await.map_err(ApiError::from)?;
    Ok(json!({}))
}

/// A user's connections on every node as Centrifugo PRO's `connections` lists them, by client
/// id: its `transport` Herald's (`sse`, `websocket`, `centrifugo`, `library`), `protocol`
/// `json`, `connected_at_ms`, and its channels by their Centrifugo names in `state`. A
/// Centrifugo client that follows nothing yet is listed with no channel.
async fn connections(herald: &Herald, who: &Principal, c: Connections) -> Result<Value, ClientError> {
    if !c.expression.is_empty() {
        return Err(ClientError::new(
            107,
            "bad request: Herald lists a `user`'s connections; `expression` is not supported",
        ));
    }
    let user = required("user", &c.user)?;
    let all = herald.user_connections(who, &user).await.map_err(ApiError::from)?;
    let mut connections = serde_json::Map::with_capacity(all.len());
    for conn in all {
        let channels: serde_json::Map<String, Value> =
            conn.channels.iter().map(|ch| (crate::mirror::centrifugo_name(ch), json!({}))).collect();
        let info = json!({
            "transport": conn.transport,
            "protocol": "json",
            "user": user,
            "connected_at_ms": conn.opened_ms,
            "state": {"channels": channels},
        });
        connections.insert(conn.connection_id, info);
    }
    Ok(json!({"connections": connections}))
}

/// The channels with subscribers on any node, by their Centrifugo names, with their number of
/// subscriptions; `pattern` (`*` for any run of characters) filters the names. Only channels
/// the key may subscribe to are listed.
async fn channels(herald: &Herald, who: &Principal, pattern: String) -> Result<Value, ClientError> {
    let all = herald.active_channels(who, "*").await.map_err(ApiError::from)?;
    let mut channels = serde_json::Map::new();
    for count in all {
        let name = crate::mirror::centrifugo_name(&count.channel);
        if pattern.is_empty() || crate::policy::glob(&pattern, &name) {
            channels.insert(name, json!({"num_clients": count.subscribers}));
        }
    }
    Ok(json!({"channels": channels}))
}

/// Every node: on Redis each node answers for itself.
async fn info(herald: &Herald) -> Result<Value, ClientError> {
    let nodes = herald.nodes().await.map_err(ApiError::from)?;
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|n| {
            json!({
                "uid": n.node_id,
                "name": n.node_id,
                "version": format!("herald {}", n.version),
                "num_clients": n.connections,
                "num_users": n.users,
                "num_channels": n.channels,
                "num_subs": n.subscriptions,
                "uptime": n.uptime_secs,
            })
        })
        .collect();
    Ok(json!({"nodes": nodes}))
}

/// A channel name that must be there: an empty one is Centrifugo's `107 bad request`.
/// The parameter `field` (`channel`, `user`), which must not be empty.
fn required(field: &str, value: &str) -> Result<String, ClientError> {
    if value.is_empty() {
        return Err(ClientError::new(107, format!("bad request: `{field}` is required")));
    }
    Ok(value.to_owned())
}

fn params<T: DeserializeOwned>(body: Value) -> Result<T, ClientError> {
    serde_json::from_value(body).map_err(|e| ClientError::new(107, format!("bad request: {e}")))
}

fn error_body(e: &ClientError) -> Value {
    json!({"code": e.code, "message": e.message})
}

/// Centrifugo answers `200` with the result or the error in the body; in its transport
/// error mode (`X-Centrifugo-Error-Mode: transport`), an error is the HTTP status its code
/// maps to, with the error alone as the body.
fn answer(result: Result<Value, ClientError>, transport: bool) -> Response {
    match result {
        Ok(result) => Json(json!({"result": result})).into_response(),
        Err(e) if transport => (transport_status(e.code), Json(error_body(&e))).into_response(),
        Err(e) => Json(json!({"error": error_body(&e)})).into_response(),
    }
}

/// Centrifugo's HTTP status for an error code (and the nearest for Herald's client codes).
fn transport_status(code: u32) -> StatusCode {
    match code {
        101 => StatusCode::UNAUTHORIZED,
        102 | 104 => StatusCode::NOT_FOUND,
        103 => StatusCode::FORBIDDEN,
        106 => StatusCode::PAYLOAD_TOO_LARGE,
        107 | 108 => StatusCode::BAD_REQUEST,
        111 => StatusCode::TOO_MANY_REQUESTS,
        112 => StatusCode::RANGE_NOT_SATISFIABLE,
        113 => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
