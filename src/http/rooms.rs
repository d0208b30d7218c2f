//! Live rooms and channel facts: `POST /api/connections/{id}/channels`,
//! `DELETE /api/connections/{id}/channels/{channel}`, `GET /api/channels/{channel}`.
//!
//! A join or leave is authorized like a new subscription: the caller must be allowed to
//! subscribe to the channel, and be the connection's own user (or hold an API key with the
//! `publish` scope). An unknown connection and someone else's answer alike (`404`), so ids
//! cannot be probed. With the cookie credential, both get the guard of every cookie-borne
//! change (`check_cookie_request`). The connection may live on any node.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde_json::{Value, json};

use super::auth::{PeerAddr, check_cookie_request, principal};
use super::error::ApiError;
use super::hooked;
use super::refusal::Refusal;
use crate::auth::Principal;
use crate::herald::Herald;

pub async fn join(
    State(herald): State<Herald>,
    path: Result<Path<String>, PathRejection>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(connection) = path.map_err(|e| ApiError::refuse(Refusal::InvalidPath, e.body_text()))?;
    check_cookie_request(&herald, &parts)?;
    let body = super::publish::parse_body(body)?;
    let channel = match body.get("channel") {
        Some(Value::String(c)) => herald.parse_channel(c)?,
        Some(_) => return Err(ApiError::refuse(Refusal::InvalidChannel, "`channel` must be a string")),
        None => return Err(ApiError::refuse(Refusal::MissingChannel, "give the `channel` to join")),
    };
    let who = principal(&herald, &parts.headers, None).await?;
    // A backend (API key) joins connections to rooms of its own accord; a user's own join is
    // a subscription the subscribe hook is asked about.
    if !matches!(who, Principal::ApiKey(_)) {
        let peer = parts.extensions.get::<PeerAddr>().copied();
        let client = hooked::Client::new(&herald, "http", &parts.headers, peer);
        hooked::subscribe(&herald, &client, &who, std::slice::from_ref(&channel), Some(&connection)).await?;
    }
    herald.join(&who, &connection, &channel).await?;
    Ok(Json(json!({"connectionId": connection, "channel": channel.as_str()})))
}

pub async fn leave(
    State(herald): State<Herald>,
    path: Result<Path<(String, String)>, PathRejection>,
    parts: Parts,
) -> Result<Json<Value>, ApiError> {
    let Path((connection, channel)) = path.map_err(|e| ApiError::refuse(Refusal::InvalidPath, e.body_text()))?;
    check_cookie_request(&herald, &parts)?;
    let channel = herald.parse_channel(&channel)?;
    let who = principal(&herald, &parts.headers, None).await?;
    herald.leave(&who, &connection, &channel).await?;
    Ok(Json(json!({"connectionId": connection, "channel": channel.as_str()})))
}

pub async fn channel_info(
    State(herald): State<Herald>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (channel, who) = channel_and_caller(&herald, path, &headers).await?;
    let info = herald.channel_info(&who, &channel).await?;
    Ok(Json(json!(info)))
}

/// The channel a `/api/channels/{channel}/..` path names, and who asks.
pub(super) async fn channel_and_caller(
    herald: &Herald,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
) -> Result<(crate::channel::ChannelName, crate::auth::Principal), ApiError> {
    let Path(channel) = path.map_err(|e| ApiError::refuse(Refusal::InvalidChannel, e.body_text()))?;
    let channel = herald.parse_channel(&channel)?;
    Ok((channel, principal(herald, headers, None).await?))
}
