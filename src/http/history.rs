//! History and listings over HTTP: `GET /api/channels/{channel}/history` (a page of a
//! channel's history, for anyone who may subscribe to it), `GET /api/channels` (active
//! channels across nodes) and `GET /api/users/{id}/connections` (a user's open connections
//! across nodes), the last two for API keys.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::request::Parts;
use axum::response::Response;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::answers;
use super::auth::{PeerAddr, principal};
use super::error::ApiError;
use super::hooked;
use super::refusal::Refusal;
use crate::channel::ChannelName;
use crate::cursor::{LastEventId, Position, Resume};
use crate::herald::{Herald, HistoryOrder, HistoryQuery, MAX_HISTORY_LIMIT};

/// One event of a history page: its position (an SSE id of the channel, which `after`,
/// `before` and `lastEventId` take) and the event's JSON as a stream delivers it.
#[derive(serde::Serialize)]
struct Entry<'a> {
    position: String,
    event: &'a RawValue,
}

/// A page of history as it is answered.
#[derive(serde::Serialize)]
struct Page<'a> {
    channel: &'a str,
    order: &'a str,
    head: String,
    more: bool,
    events: Vec<Entry<'a>>,
}

pub async fn history(
    State(herald): State<Herald>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    parts: Parts,
) -> Result<Response, ApiError> {
    let Path(channel) = path.map_err(|e| ApiError::refuse(Refusal::InvalidChannel, e.body_text()))?;
    let channel = herald.parse_channel(&channel)?;
    let query = history_query(&herald, &channel, query)?;
    let who = principal(&herald, &parts.headers, None).await?;
    // Asked about like a subscription: the connect hook may name the user (an app with
    // session cookies), the subscribe hook may refuse the channel.
    let peer = parts.extensions.get::<PeerAddr>().copied();
    let client = hooked::Client::new(&herald, "http", &parts.headers, peer);
    let (who, _) = hooked::open(&herald, &client, who, vec![channel.clone()]).await?;
    // A page may be megabytes: a client has only so many being written at once.
    let answer = answers::Client::admit(&herald, &who, peer)?;
    let page = herald.history(&who, &channel, query).await?;
    let mut events = Vec::with_capacity(page.events.len());
    for ev in &page.events {
        let Some(copy) = ev.copy_on(channel.as_str()) else { continue };
        let event = serde_json::from_slice::<&RawValue>(copy.frame.json())
            .map_err(|e| ApiError::refuse(Refusal::Internal, format!("a stored event is not JSON: {e}")))?;
        events.push(Entry { position: page.id_of(copy.position), event });
    }
    let order = query.order.as_str();
    let head = page.id_of(page.head);
    answer.json(&herald, &Page { channel: channel.as_str(), order, head, more: page.more, events })
}

/// The query of a history request: `limit`, `after`, `before`, `order`.
fn history_query(herald: &Herald, channel: &ChannelName, query: Option<String>) -> Result<HistoryQuery, ApiError> {
    let query = query.unwrap_or_default();
    if query.len() > herald.config().max_query_bytes {
        return Err(ApiError::refuse(Refusal::QueryTooLong, "the query string is too long"));
    }
    let mut q = HistoryQuery::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "limit" => {
                q.limit = value.parse().ok().filter(|n| *n <= MAX_HISTORY_LIMIT).ok_or_else(|| {
                    ApiError::refuse(Refusal::InvalidLimit, format!("`limit` is a count from 0 to {MAX_HISTORY_LIMIT}"))
                })?;
            }
            "after" => q.after = Some(position(channel, &value)?),
            "before" => q.before = Some(position(channel, &value)?),
            "order" => {
                q.order = match &*value {
                    "newest" => HistoryOrder::NewestFirst,
                    "oldest" => HistoryOrder::OldestFirst,
                    _ => return Err(ApiError::refuse(Refusal::InvalidParameter, "`order` is `newest` or `oldest`")),
                }
            }
            other => {
                return Err(ApiError::refuse(
                    Refusal::InvalidParameter,
                    format!("unknown query parameter `{}`", other.chars().take(64).collect::<String>()),
                ));
            }
        }
    }
    Ok(q)
}

/// The position in `channel` that an event id names: an id of a page's `position` or
/// `head`, or any stream's id that includes the channel.
fn position(channel: &ChannelName, raw: &str) -> Result<Position, ApiError> {
    match LastEventId::parse(raw).map(|id| id.resume_for(0, channel.as_str())) {
        Some(Resume::From(p)) => Ok(p),
        _ => Err(ApiError::refuse(
            Refusal::InvalidPosition,
            format!("`after` and `before` take an event id of `{channel}`, like a history entry's `position`"),
        )),
    }
}

pub async fn channels(
    State(herald): State<Herald>,
    RawQuery(query): RawQuery,
    parts: Parts,
) -> Result<Json<Value>, ApiError> {
    let mut pattern = "*".to_owned();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "pattern" => pattern = value.into_owned(),
            _ => return Err(ApiError::refuse(Refusal::InvalidParameter, "the only query parameter is `pattern`")),
        }
    }
    let who = principal(&herald, &parts.headers, None).await?;
    let channels = herald.active_channels(&who, &pattern).await?;
    Ok(Json(json!({"pattern": pattern, "channels": channels})))
}

pub async fn user_connections(
    State(herald): State<Herald>,
    path: Result<Path<String>, PathRejection>,
    parts: Parts,
) -> Result<Json<Value>, ApiError> {
    let Path(user) = path.map_err(|e| ApiError::refuse(Refusal::InvalidUser, e.body_text()))?;
    let who = principal(&herald, &parts.headers, None).await?;
    let connections = herald.user_connections(&who, &user).await?;
    let connections: Vec<Value> = connections
        .into_iter()
        .map(|c| {
            let opened = std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.opened_ms);
            json!({
                "connectionId": c.connection_id,
                "node": c.node,
                "channels": c.channels,
                "transport": c.transport,
                "openedAt": humantime::format_rfc3339_millis(opened).to_string(),
            })
        })
        .collect();
    Ok(Json(json!({"user": user, "connections": connections})))
}
