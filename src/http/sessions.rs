//! Cutting sessions: `POST /api/disconnect`, `POST /api/bans`, `DELETE /api/bans/{user}`.
//! API keys only; a user's own token cannot call them, and neither can the cookie.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{Map, Value, json};

use super::auth::principal;
use super::error::ApiError;
use super::refusal::Refusal;
use crate::auth::Principal;
use crate::herald::{DisconnectOptions, DisconnectTarget, Herald, api_key_only};

/// `{"user"|"connectionId"|"channel": "...", "reconnect": false, "ban": {"ttl": "10m"}}`
pub async fn disconnect(
    State(herald): State<Herald>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (who, mut body) = caller_and_body(&herald, &headers, body).await?;
    let mut targets = Vec::new();
    for (field, make) in [
        ("user", DisconnectTarget::User as fn(String) -> DisconnectTarget),
        ("connectionId", DisconnectTarget::Connection),
        ("channel", DisconnectTarget::Channel),
    ] {
        match body.remove(field) {
            None => {}
            Some(Value::String(s)) => targets.push(make(s)),
            Some(_) => return Err(ApiError::refuse(Refusal::InvalidTarget, format!("`{field}` must be a string"))),
        }
    }
    let target = match (targets.pop(), targets.is_empty()) {
        (Some(target), true) => target,
        _ => {
            return Err(ApiError::refuse(
                Refusal::InvalidTarget,
                "name exactly one of `user`, `connectionId` or `channel`",
            ));
        }
    };
    let reconnect = match body.remove("reconnect") {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::refuse(Refusal::InvalidParameter, "`reconnect` must be true or false")),
    };
    let ban = match body.remove("ban") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut ban)) => {
            let ttl = ttl(ban.remove("ttl"))?;
            no_other_fields(&ban, "ban.")?;
            Some(ttl)
        }
        Some(_) => return Err(ApiError::refuse(Refusal::InvalidBan, "`ban` is an object like {\"ttl\": \"10m\"}")),
    };
    no_other_fields(&body, "")?;
    herald.may_disconnect(&who, &target)?;
    let cut = herald.disconnect(target, DisconnectOptions { reconnect, ban }).await?;
    Ok(Json(json!({"disconnected": cut})))
}

/// `{"user": "42", "ttl": "1h"}`
pub async fn ban(
    State(herald): State<Herald>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (who, mut body) = caller_and_body(&herald, &headers, body).await?;
    let user = match body.remove("user") {
        Some(Value::String(user)) => user,
        _ => return Err(ApiError::refuse(Refusal::InvalidUser, "give the `user` id to ban, as a string")),
    };
    let ttl = ttl(body.remove("ttl"))?;
    no_other_fields(&body, "")?;
    herald.may_disconnect(&who, &DisconnectTarget::User(user.clone()))?;
    herald.ban_user(&user, ttl).await?;
    Ok(Json(json!({"user": user, "expiresIn": ttl.as_secs()})))
}

pub async fn unban(
    State(herald): State<Herald>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = principal(&herald, &headers, None).await?;
    api_key_only(&who)?;
    let Path(user) = path.map_err(|e| ApiError::refuse(Refusal::InvalidUser, e.body_text()))?;
    herald.may_disconnect(&who, &DisconnectTarget::User(user.clone()))?;
    let lifted = herald.unban_user(&user).await?;
    Ok(Json(json!({"user": user, "lifted": lifted})))
}

/// The caller, who must hold an API key (checked before the body is looked at), and the
/// body's JSON object.
async fn caller_and_body(
    herald: &Herald,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Principal, Map<String, Value>), ApiError> {
    let who = principal(herald, headers, None).await?;
    api_key_only(&who)?;
    match super::publish::parse_body(body)? {
        Value::Object(map) => Ok((who, map)),
        _ => Err(ApiError::refuse(Refusal::InvalidBody, "the body must be a JSON object")),
    }
}

/// Refuses what is left, so a typo (`reconect`) is an error, not a silent default.
fn no_other_fields(rest: &Map<String, Value>, prefix: &str) -> Result<(), ApiError> {
    match rest.keys().next() {
        None => Ok(()),
        Some(field) => Err(ApiError::refuse(
            Refusal::InvalidParameter,
            format!("unknown field `{prefix}{}`", field.chars().take(64).collect::<String>()),
        )),
    }
}

/// A ban's length: `"10m"`, `"1h 30m"` (as in the configuration) or a number of seconds.
fn ttl(raw: Option<Value>) -> Result<Duration, ApiError> {
    let bad = || ApiError::refuse(Refusal::InvalidTtl, "give `ttl` like \"10m\" or a number of seconds");
    match raw {
        Some(Value::String(s)) => humantime::parse_duration(&s).map_err(|_| bad()),
        Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}
