//! Centrifugo's server HTTP API (`POST <api_prefix>/<method>`), so that a backend that
//! published to Centrifugo publishes to Herald by changing its base URL: the same request
//! bodies, the answer `{"result":..}` or `{"error":{"code":..,"message":..}}` with Centrifugo's
//! codes, and the key in `X-API-Key` or `Authorization: apikey <key>` (Herald's API keys).
//!
//! Methods: `publish`, `broadcast`, `presence`, `presence_stats`, `disconnect` (by user). Publishing goes through
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
use crate::herald::{DisconnectOptions, DisconnectTarget, Herald};
use crate::http::auth::PeerAddr;
use crate::http::error::ApiError;
use crate::http::publish::{caller_and_body, publish_body};

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
    channel: String,
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

/// `POST <api_prefix>/{method}`.
pub async fn call(
    State(herald): State<Herald>,
    Path(method): Path<String>,
    peer: Option<Extension<PeerAddr>>,
    req: Request,
) -> Response {
    let (who, key, _, body, hooks) = match caller_and_body(&herald, peer, req).await {
        Ok(caller) => caller,
        // No or a bad key: Centrifugo answers `401` with no body of its own.
        Err(e) if e.status() == StatusCode::UNAUTHORIZED => return e.into_response(),
        Err(e) => return answer(Err(e.into())),
    };
    if !matches!(who, Principal::ApiKey(_)) {
        return (StatusCode::UNAUTHORIZED, "").into_response();
    }
    let result = match method.as_str() {
        "publish" => match params::<Publish>(body) {
            Ok(p) => publish(&herald, &who, &key, &hooks, &p.channel, p.data).await,
            Err(e) => Err(e),
        },
        "broadcast" => match params::<Broadcast>(body) {
            Ok(b) => {
                let mut responses = Vec::with_capacity(b.channels.len());
                for channel in &b.channels {
                    responses.push(match publish(&herald, &who, &key, &hooks, channel, b.data.clone()).await {
                        Ok(result) => json!({"result": result}),
                        Err(e) => json!({"error": error_body(&e)}),
                    });
                }
                Ok(json!({"responses": responses}))
            }
            Err(e) => Err(e),
        },
        "presence" | "presence_stats" => match params::<ChannelOnly>(body) {
            Ok(p) => match super::channel(&herald, &p.channel) {
                Ok(channel) => super::presence(&herald, &who, &channel, method == "presence_stats").await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        "disconnect" => match params::<Disconnect>(body) {
            Ok(d) => disconnect(&herald, &who, d).await,
            Err(e) => Err(e),
        },
        _ => Err(ClientError::method_not_found()),
    };
    answer(result)
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

fn params<T: DeserializeOwned>(body: Value) -> Result<T, ClientError> {
    serde_json::from_value(body).map_err(|e| ClientError::new(107, format!("bad request: {e}")))
}

fn error_body(e: &ClientError) -> Value {
    json!({"code": e.code, "message": e.message})
}

/// Centrifugo answers `200` with the result or the error in the body.
fn answer(result: Result<Value, ClientError>) -> Response {
    match result {
        Ok(result) => Json(json!({"result": result})).into_response(),
        Err(e) => Json(json!({"error": error_body(&e)})).into_response(),
    }
}
