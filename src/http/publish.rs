//! `POST /api/publish` and `POST /api/channels/{channel}/events`: publish over HTTP.
//!
//! A body is one event object (`{"channel": ..., "type": ..., ...payload}` or
//! `"channels": [...]` for one event on several channels) or a JSON array of them, which is
//! published in order as one batch: all accepted or none. The answer carries the id(s).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use crate::channel::ChannelName;
use crate::event::{Event, Publisher};
use crate::herald::Herald;

pub async fn publish(
    State(herald): State<Herald>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let value = parse_body(body)?;
    let publisher = Publisher::default();
    match value {
        Value::Array(items) => {
            let batch = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| parse_event(item, None).map_err(|e| at_index(e, i)))
                .collect::<Result<Vec<_>, _>>()?;
            let acks = herald.publish_batch(batch, &publisher).await?;
            Ok(Json(
                json!({"ids": acks.iter().map(|a| &*a.id).collect::<Vec<_>>()}),
            ))
        }
        item => {
            let (channels, event) = parse_event(item, None)?;
            let ack = herald.publish(channels, event, &publisher).await?;
            Ok(Json(json!({"id": &*ack.id})))
        }
    }
}

pub async fn publish_to_channel(
    State(herald): State<Herald>,
    Path(channel): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let channel = ChannelName::parse(&channel)?;
    let (channels, event) = parse_event(parse_body(body)?, Some(channel))?;
    let ack = herald
        .publish(channels, event, &Publisher::default())
        .await?;
    Ok(Json(json!({"id": &*ack.id})))
}

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            )
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })
}

fn at_index(mut e: ApiError, i: usize) -> ApiError {
    e.message = format!("event {i} of the batch: {}", e.message);
    e
}

/// Splits one event object into its channels, type and payload fields.
fn parse_event(
    item: Value,
    path_channel: Option<ChannelName>,
) -> Result<(Vec<ChannelName>, Event), ApiError> {
    let Value::Object(mut fields) = item else {
        return Err(ApiError::bad_request(
            "invalid_event",
            "an event must be a JSON object",
        ));
    };
    let channels = match (
        path_channel,
        fields.remove("channel"),
        fields.remove("channels"),
    ) {
        (Some(ch), None, None) => vec![ch],
        (Some(_), _, _) => {
            return Err(ApiError::bad_request(
                "invalid_event",
                "the channel is in the URL; the body must not name one",
            ));
        }
        (None, Some(Value::String(ch)), None) => vec![ChannelName::parse(&ch)?],
        (None, None, Some(Value::Array(list))) if !list.is_empty() => list
            .iter()
            .map(|v| match v {
                Value::String(s) => ChannelName::parse(s).map_err(ApiError::from),
                _ => Err(ApiError::bad_request(
                    "invalid_channel",
                    "`channels` must be an array of strings",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        (None, None, None) => {
            return Err(ApiError::bad_request(
                "missing_channel",
                "give `channel` or `channels`",
            ));
        }
        (None, Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_event",
                "give `channel` or `channels`, not both",
            ));
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
            return Err(ApiError::bad_request(
                "missing_type",
                "event `type` is missing",
            ));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_type",
                "event `type` must be a string",
            ));
        }
    };
    Ok((
        channels,
        Event::from_fields(event_type, strip_reserved(fields)),
    ))
}

fn strip_reserved(mut fields: Map<String, Value>) -> Map<String, Value> {
    for key in crate::event::RESERVED_FIELDS {
        fields.remove(key);
    }
    fields
}
