//! `GET /api/events`: open an SSE stream on one or more channels.
//!
//! Query: `channel` (repeatable), `events=named` for `event:` lines, `lastEventId` (the
//! `Last-Event-ID` header wins when both are present).

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::channel::ChannelName;
use crate::herald::{Herald, StreamRequest};
use crate::hub::connection::KillSwitch;

/// Longest `Last-Event-ID` considered.
const MAX_LAST_EVENT_ID: usize = 4096;

pub async fn subscribe(
    State(herald): State<Herald>,
    RawQuery(query): RawQuery,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let mut channels = Vec::new();
    let mut named = false;
    let mut last_event_id = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "channel" => channels.push(ChannelName::parse(&value)?),
            "events" => {
                named = match &*value {
                    "named" => true,
                    "unnamed" => false,
                    _ => {
                        return Err(ApiError::bad_request(
                            "invalid_parameter",
                            "`events` must be `named` or `unnamed`",
                        ));
                    }
                }
            }
            "lastEventId" => last_event_id = Some(value.into_owned()),
            _ => {}
        }
    }
    let headers: &HeaderMap = req.headers();
    if let Some(v) = headers.get("last-event-id") {
        let v = v.to_str().map_err(|_| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "Last-Event-ID must be visible ASCII",
            )
        })?;
        last_event_id = Some(v.to_owned());
    }
    let last_event_id = last_event_id.filter(|v| !v.trim().is_empty());
    if last_event_id
        .as_ref()
        .is_some_and(|v| v.len() > MAX_LAST_EVENT_ID)
    {
        return Err(ApiError::bad_request(
            "invalid_last_event_id",
            "Last-Event-ID is too long",
        ));
    }
    // A stalled HTTP/1.1 reader can only be freed by closing its socket; with HTTP/2 the
    // stream is dropped and the connection's other streams go on.
    let kill = match req.version() {
        Version::HTTP_10 | Version::HTTP_11 => req.extensions().get::<KillSwitch>().cloned(),
        _ => None,
    };

    let body = herald
        .open_stream(StreamRequest {
            channels,
            last_event_id,
            named,
            user_id: None,
            kill,
        })
        .await?;
    tracing::debug!(connection = body.connection_id(), "sse connection opened");
    let mut resp = (StatusCode::OK, Body::new(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
