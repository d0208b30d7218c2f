//! `GET /api/events`: open an SSE stream on one or more channels.
//!
//! Query: `channel` (repeatable), `events=named` for `event:` lines, `lastEventId` (the
//! `Last-Event-ID` header wins when both are present), `ticket` (from `POST /api/tickets`),
//! `last` (state on subscribe: `last=5` for every channel, `last=channel:news:1` for one).
//! Other parameters are refused, so a typo (`chanel=`) is an error, not a silent no-op.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};

use super::auth::{PeerAddr, principal};
use super::error::ApiError;
use super::hooked;
use super::observe::count_subscribe_refusal;
use super::refusal::Refusal;
use crate::channel::ChannelName;
use crate::config::MAX_LAST;
use crate::herald::{Herald, LastEvents, StreamRequest};
use crate::transport::KillSwitch;

/// Most filters on one stream.
pub(crate) const MAX_FILTERS: usize = 8;

/// `field:value`, the field a top-level event field name.
pub(crate) fn parse_filter(raw: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::refuse(Refusal::InvalidFilter, "a filter is `field:value`, like `filter=severity:SEV-1`");
    let (field, value) = raw.split_once(':').ok_or_else(bad)?;
    if field.is_empty() || field.len() > 64 || value.len() > 256 {
        return Err(bad());
    }
    Ok((field.to_owned(), value.to_owned()))
}

/// Longest `Last-Event-ID` considered.
const MAX_LAST_EVENT_ID: usize = 4096;

/// The handler; it counts its own refusals (a route layer would cost a boxed clone of the
/// route per request).
pub async fn subscribe(State(herald): State<Herald>, RawQuery(query): RawQuery, req: Request<Body>) -> Response {
    let answer = open_stream(&herald, query, req).await;
    count_subscribe_refusal(&herald, answer.into_response())
}

/// What a stream request asks for: its query, with `Last-Event-ID` from the header. Shared by
/// `GET /api/events` and `GET /api/ws`, so that both take the same query the same way.
pub(crate) struct StreamQuery {
    pub channels: Vec<ChannelName>,
    pub named: bool,
    pub last_event_id: Option<String>,
    pub ticket: Option<String>,
    pub filters: Vec<(String, String)>,
    pub last: LastEvents,
}

/// One `last` value: `<n>` for every channel, `<channel>:<n>` for one of the stream's.
fn parse_last(herald: &Herald, raw: &str, last: &mut LastEvents) -> Result<(), ApiError> {
    let count = |n: &str| {
        n.parse::<usize>().ok().filter(|n| *n <= MAX_LAST).ok_or_else(|| {
            ApiError::refuse(
                Refusal::InvalidLast,
                format!("`last` is a count from 0 to {MAX_LAST}, or `<channel>:<count>` like `channel:news:1`"),
            )
        })
    };
    match raw.rsplit_once(':') {
        None => last.all = Some(count(raw)?),
        Some((channel, n)) => {
            let n = count(n)?;
            let channel = herald.parse_subscription(channel)?;
            last.per_channel.retain(|(c, _)| *c != channel);
            last.per_channel.push((channel, n));
        }
    }
    Ok(())
}

/// Parses a stream request's query and `Last-Event-ID` header.
pub(crate) fn stream_query(
    herald: &Herald,
    query: Option<String>,
    headers: &HeaderMap,
) -> Result<StreamQuery, ApiError> {
    let query = query.unwrap_or_default();
    if query.len() > herald.config().max_query_bytes {
        return Err(ApiError::refuse(Refusal::QueryTooLong, "the query string is too long"));
    }
    let mut channels = Vec::new();
    let mut named = false;
    let mut last_event_id = None;
    let mut ticket = None;
    let mut filters = Vec::new();
    let mut last = LastEvents::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "channel" => channels.push(herald.parse_subscription(&value)?),
            "events" => {
                named = match &*value {
                    "named" => true,
                    "unnamed" => false,
                    _ => {
                        return Err(ApiError::refuse(
                            Refusal::InvalidParameter,
                            "`events` must be `named` or `unnamed`",
                        ));
                    }
                }
            }
            "lastEventId" => last_event_id = Some(value.into_owned()),
            "ticket" => ticket = Some(value.into_owned()),
            "filter" => filters.push(parse_filter(&value)?),
            "last" => parse_last(herald, &value, &mut last)?,
            other => {
                return Err(ApiError::refuse(
                    Refusal::InvalidParameter,
                    format!("unknown query parameter `{}`", other.chars().take(64).collect::<String>()),
                ));
            }
        }
    }
    // Without channels (a WebSocket whose first `subscribe` names them) the check is left to
    // that command's channels: a count for a channel it does not follow is unused.
    if let Some((c, _)) = last.per_channel.iter().find(|(c, _)| !channels.is_empty() && !channels.contains(c)) {
        return Err(ApiError::refuse(
            Refusal::InvalidLast,
            format!("`last` names `{c}`, which the stream does not follow"),
        ));
    }
    if filters.len() > MAX_FILTERS {
        return Err(ApiError::refuse(Refusal::InvalidFilter, format!("at most {MAX_FILTERS} filters")));
    }
    // An empty header (some clients send one) does not cancel a `lastEventId` in the query.
    if let Some(v) = headers.get("last-event-id").filter(|v| !v.is_empty()) {
        let v = v
            .to_str()
            .map_err(|_| ApiError::refuse(Refusal::InvalidLastEventId, "Last-Event-ID must be visible ASCII"))?;
        last_event_id = Some(v.to_owned());
    }
    let last_event_id = checked_last_event_id(last_event_id)?;
    Ok(StreamQuery { channels, named, last_event_id, ticket, filters, last })
}

/// A `Last-Event-ID` as a stream takes it: blank is none, and it has a length limit.
pub(crate) fn checked_last_event_id(id: Option<String>) -> Result<Option<String>, ApiError> {
    let id = id.filter(|v| !v.trim().is_empty());
    if id.as_ref().is_some_and(|v| v.len() > MAX_LAST_EVENT_ID) {
        return Err(ApiError::refuse(Refusal::InvalidLastEventId, "Last-Event-ID is too long"));
    }
    Ok(id)
}

async fn open_stream(herald: &Herald, query: Option<String>, req: Request<Body>) -> Result<Response, ApiError> {
    let headers = req.headers();
    let StreamQuery { channels, named, last_event_id, ticket, filters, last } = stream_query(herald, query, headers)?;
    let who = principal(herald, headers, ticket.as_deref()).await?;
    let peer = req.extensions().get::<PeerAddr>().copied();
    let (who, channels) =
        hooked::open(herald, &hooked::Client::new(herald, "sse", headers, peer), who, channels).await?;
    // A stalled HTTP/1.1 reader can only be freed by closing its socket; with HTTP/2 the
    // stream is dropped and the connection's other streams go on.
    let kill = match req.version() {
        Version::HTTP_10 | Version::HTTP_11 => req.extensions().get::<KillSwitch>().cloned(),
        _ => None,
    };

    let described = who.describe();
    let body = herald
        .open_stream(StreamRequest {
            principal: who,
            channels,
            last_event_id,
            named,
            kill,
            filters,
            last,
            transport: "sse",
        })
        .await?;
    tracing::debug!(connection = body.connection_id(), who = %described, "sse connection opened");
    let mut resp = (StatusCode::OK, Body::new(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-transform"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
