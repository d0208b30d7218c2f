//! Presence over HTTP: `GET /api/channels/{channel}/presence` (who is there),
//! `GET /api/users/{id}/presence` (online anywhere?), `POST /api/presence` (set `away`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::Response;
use serde_json::{Value, json};

use super::auth::{PeerAddr, check_cookie_request, principal};
use super::error::ApiError;
use super::refusal::Refusal;
use crate::auth::Principal;
use crate::catalogue::PresenceStatus;
use crate::herald::{Herald, PresenceError};

pub async fn channel(
    State(herald): State<Herald>,
    path: Result<Path<String>, PathRejection>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let (channel, who) = super::rooms::channel_and_caller(&herald, path, &parts.headers).await?;
    // A crowded room's list may be megabytes: a client has only so many being written at once.
    let answer = super::answers::Client::admit(&herald, &who, parts.extensions.get::<PeerAddr>().copied())?;
    let users = herald.channel_presence(&who, &channel).await?;
    answer.json(&herald, &json!({"channel": channel.as_str(), "users": users}))
}

pub async fn user(
    State(herald): State<Herald>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Path(user) = path.map_err(|e| ApiError::refuse(Refusal::InvalidUser, e.body_text()))?;
    // The same rule as the id in `user:<id>`.
    crate::channel::ChannelName::user(&user).map_err(|_| ApiError::refuse(Refusal::InvalidUser, "not a user id"))?;
    let who = principal(&herald, &headers, None).await?;
    Ok(Json(json!(herald.user_presence(&who, &user).await?)))
}

pub async fn set_status(
    State(herald): State<Herald>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    check_cookie_request(&herald, &parts)?;
    let headers = parts.headers;
    let body = super::publish::parse_body(body)?;
    let Some(Value::String(status)) = body.get("status") else {
        return Err(ApiError::refuse(Refusal::InvalidStatus, "give `status`: `online` or `away`"));
    };
    let who = principal(&herald, &headers, None).await?;
    // Who asks is checked first, as `set_presence_status` does; then a name that is no
    // status is refused like one a user may not set.
    if !matches!(who, Principal::User(_)) {
        return Err(PresenceError::NotAUser.into());
    }
    let status = PresenceStatus::parse(status).ok_or(PresenceError::BadStatus)?;
    herald.set_presence_status(&who, status).await?;
    Ok(Json(json!({"status": status})))
}
