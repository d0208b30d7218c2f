//! `POST /api/publish` and `POST /api/channels/{channel}/events`: publish over HTTP.
//!
//! A body is one event object (`{"channel": ..., "type": ..., ...payload}` or
//! `"channels": [...]` for one event on several channels) or a JSON array of them, which is
//! published in order as one batch: all accepted or none. The answer carries the id(s).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::auth::{PeerAddr, check_cookie_publish, principal, rate_key};
use super::error::ApiError;
use crate::channel::ChannelName;
use crate::event::Event;
use crate::herald::Herald;

pub async fn publish(
    State(herald): State<Herald>,
    headers: HeaderMap,
    peer: Option<Extension<PeerAddr>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    check_cookie_publish(&herald, &headers)?;
    let who = principal(&herald, &headers, None).await?;
    let key = rate_key(&who, peer.map(|Extension(p)| p));
    match parse_body(body)? {
        Value::Array(items) => {
            let batch = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| parse_event(&herald, item, None).map_err(|e| at_index(e, i)))
                .collect::<Result<Vec<_>, _>>()?;
            let acks = herald.publish_as(&who, &key, batch).await?;
            Ok(Json(json!({"ids": acks.iter().map(|a| &*a.id).collect::<Vec<_>>()})))
        }
        item => {
            let event = parse_event(&herald, item, None)?;
            let acks = herald.publish_as(&who, &key, vec![event]).await?;
            Ok(Json(json!({"id": acks.first().map(|a| &*a.id)})))
        }
    }
}

pub async fn publish_to_channel(
    State(herald): State<Herald>,
    channel: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    peer: Option<Extension<PeerAddr>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(channel) = channel.map_err(|e| ApiError::bad_request("invalid_channel", e.body_text()))?;
    let channel = herald.parse_channel(&channel)?;
    check_cookie_publish(&herald, &headers)?;
    let who = principal(&herald, &headers, None).await?;
    let key = rate_key(&who, peer.map(|Extension(p)| p));
    let event = parse_event(&herald, parse_body(body)?, Some(channel))?;
    let acks = herald.publish_as(&who, &key, vec![event]).await?;
    Ok(Json(json!({"id": acks.first().map(|a| &*a.id)})))
}

pub(super) fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is too large")
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))
}

fn at_index(mut e: ApiError, i: usize) -> ApiError {
    e.message = format!("event {i} of the batch: {}", e.message);
    e
}

/// Splits one event object into its channels, type and payload fields.
fn parse_event(
    herald: &Herald,
    item: Value,
    path_channel: Option<ChannelName>,
) -> Result<(Vec<ChannelName>, Event), ApiError> {
    let Value::Object(mut fields) = item else {
        return Err(ApiError::bad_request("invalid_event", "an event must be a JSON object"));
    };
    let channels = match (path_channel, fields.remove("channel"), fields.remove("channels")) {
        (Some(ch), None, None) => vec![ch],
        (Some(_), _, _) => {
            return Err(ApiError::bad_request(
                "invalid_event",
                "the channel is in the URL; the body must not name one",
            ));
        }
        (None, Some(Value::String(ch)), None) => vec![herald.parse_channel(&ch)?],
        (None, None, Some(Value::Array(list))) if !list.is_empty() => list
            .iter()
            .map(|v| match v {
                Value::String(s) => herald.parse_channel(s).map_err(ApiError::from),
                _ => Err(ApiError::bad_request("invalid_channel", "`channels` must be an array of strings")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        (None, None, None) => {
            return Err(ApiError::bad_request("missing_channel", "give `channel` or `channels`"));
        }
        (None, Some(_), Some(_)) => {
            return Err(ApiError::bad_request("invalid_event", "give `channel` or `channels`, not both"));
        }
        (None, _, _) => {
            return Err(ApiError::bad_request(
                "invalid_channel",
                "`channel` must be a string and `channels` a non-empty array of strings",
            ));
        }
    };
    let event_type = match fields.remove("type") {
        Some(Value::String(t)) => t,
        None => {
            return Err(ApiError::bad_request("missing_type", "event `type` is missing"));
        }
        Some(_) => {
            return Err(ApiError::bad_request("invalid_type", "event `type` must be a string"));
        }
    };
    Ok((channels, Event::from_fields(event_type, fields)))
}
