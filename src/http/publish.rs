//! `POST /api/publish` and `POST /api/channels/{channel}/events`: publish over HTTP.
//!
//! A body is one event object (`{"channel": ..., "type": ..., ...payload}` or
//! `"channels": [...]` for one event on several channels) or a JSON array of them, which is
//! published in order as one batch: all accepted or none. The answer carries the id(s).
//!
//! A publish is safe to retry with an idempotency key: the `Idempotency-Key` header for one
//! event, an `idempotencyKey` field on each item of a batch (taken out of the payload).
//!
//! A body that comes over HTTP is read straight into events (`body`); a body that is a
//! `Value` already (a WebSocket's `publish` command, Centrifugo's) and any body the fast
//! read gives up on take the `Value` path here, which alone words the refusals.

mod body;

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::auth::{PeerAddr, check_cookie_request, principal, rate_key};
use super::error::ApiError;
use super::head::{RequestHead, text};
use super::hooked;
use super::observe::count_publish_refusal;
use super::refusal::Refusal;
use crate::auth::Principal;
use crate::channel::ChannelName;
use crate::engine::{EngineError, PublishAck};
use crate::event::{Event, EventError, IDEMPOTENCY_FIELD, Idempotency, Prepared};
use crate::herald::Herald;

/// The answer to a publish: the id of the event, or the ids of a batch's events in order.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Published {
    One { id: Option<Arc<str>> },
    Batch { ids: Vec<Arc<str>> },
}

// The handlers take the request whole and read the headers in place (a `HeaderMap`
// extractor would copy them), and the body only once the caller is known. They count their
// own refusals: a route layer would cost a boxed clone of the route per request.

pub async fn publish(State(herald): State<Herald>, peer: Option<Extension<PeerAddr>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    answer(&herald, Route::Publish, peer.map(|Extension(p)| p), parts, AxumBody(body)).await
}

pub async fn publish_to_channel(
    State(herald): State<Herald>,
    channel: Result<Path<String>, PathRejection>,
    peer: Option<Extension<PeerAddr>>,
    req: Request,
) -> Response {
    let channel = channel.map(|Path(c)| c).map_err(|e| ApiError::refuse(Refusal::InvalidChannel, e.body_text()));
    let (parts, body) = req.into_parts();
    answer(&herald, Route::Channel(channel), peer.map(|Extension(p)| p), parts, AxumBody(body)).await
}

/// Which publish endpoint a request is for.
pub(crate) enum Route {
    /// `POST /api/publish`.
    Publish,
    /// `POST /api/channels/{channel}/events`, with the path's channel as decoded (or why not).
    Channel(Result<String, ApiError>),
    /// The same, its channel parsed where the path was read (or why not): the lean HTTP/1.1
    /// path's, which then makes no copy of the channel's text to parse later.
    Parsed(Result<ChannelName, ApiError>),
}

/// Where a publish's body comes from: axum's request (under its head `H`, `Parts`), or the
/// bytes the lean HTTP/1.1 path reads off the socket itself (`server::lean_publish`). It is
/// read only once the publisher is known.
pub(crate) trait BodySource<H> {
    /// The whole body, within the size limit.
    fn read(self, herald: &Herald, head: H) -> impl Future<Output = Result<Bytes, ApiError>> + Send;
}

/// The body of a request routed by axum, under its `DefaultBodyLimit`.
struct AxumBody(axum::body::Body);

impl BodySource<Parts> for AxumBody {
    async fn read(self, herald: &Herald, parts: Parts) -> Result<Bytes, ApiError> {
        body_bytes(Bytes::from_request(Request::from_parts(parts, self.0), herald).await)
    }
}

/// The answer to a publish request, its refusal counted: the handlers'.
pub(crate) async fn answer(
    herald: &Herald,
    route: Route,
    peer: Option<PeerAddr>,
    parts: Parts,
    body: impl BodySource<Parts>,
) -> Response {
    count_publish_refusal(herald, outcome(herald, route, peer, parts, body).await.map(Json).into_response())
}

/// What a publish request comes to: the published id(s), or why not (not counted yet). The
/// lean path writes an accepted answer itself and counts refusals as [`answer`] does.
pub(crate) async fn outcome<H: RequestHead + Send>(
    herald: &Herald,
    route: Route,
    peer: Option<PeerAddr>,
    head: H,
    body: impl BodySource<H>,
) -> Result<Published, ApiError> {
    match stage(herald, route, peer, head, body).await {
        Ok(staged) => commit(herald, staged).await,
        Err(e) => Err(e),
    }
}

/// A publish request that passed every check (credentials, policies, hooks, JSON, the rate
/// limit, charged): its events prepared for the engine, and the shape of its answer.
pub(crate) struct Staged {
    events: Vec<Prepared>,
    /// Answered with `ids` (a JSON array was published), else with `id`.
    batch: bool,
}

impl Staged {
    /// Whether its events may share one engine call with other requests' events
    /// ([`commit_together`]): not when one carries an idempotency key, since the engine
    /// checks a batch's keys together, and a key held for another event would then refuse
    /// every request of the call.
    pub(crate) fn mergeable(&self) -> bool {
        self.events.iter().all(|p| p.idempotency.is_none())
    }

    /// Its events.
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    fn answer(batch: bool, acks: impl Iterator<Item = PublishAck>) -> Published {
        if batch {
            Published::Batch { ids: acks.map(|a| a.id).collect() }
        } else {
            Published::One { id: acks.map(|a| a.id).next() }
        }
    }
}

/// The caller's checks and the body, in their order: the cookie check, who is asking, the
/// rate key, the hook's client, the idempotency key, then the body read once the caller is
/// known. `(who, key, idempotency, body, client)`; a refusal returns from the function it is
/// written in. A macro, not an `async fn`, so that each publish path awaits the steps in its
/// own future: a helper's future was made and moved into the caller's for every publish.
macro_rules! caller_with_body {
    ($herald:expr, $peer:expr, $head:expr, $body:expr) => {{
        let (herald, peer, head) = ($herald, $peer, $head);
        check_cookie_request(herald, &head)?;
        let who = principal(herald, &head, None).await?;
        let key = rate_key(&who, peer);
        let client = hooked::Client::new(herald, "http", &head, peer);
        let idempotency = idempotency_key(&head)?;
        let body = $body.read(herald, head).await?;
        (who, key, idempotency, body, client)
    }};
}

/// Checks a publish request and prepares its events: everything but the engine's part.
pub(crate) async fn stage<H: RequestHead + Send>(
    herald: &Herald,
    route: Route,
    peer: Option<PeerAddr>,
    head: H,
    body: impl BodySource<H>,
) -> Result<Staged, ApiError> {
    // The path's channel first: a publish to what is no channel is refused before its caller
    // is asked about.
    let channel = match route {
        Route::Publish => None,
        Route::Channel(channel) => Some(herald.parse_channel(&channel?)?),
        Route::Parsed(channel) => Some(channel?),
    };
    let (who, key, idempotency, body, client) = caller_with_body!(herald, peer, head, body);
    let Some(channel) = channel else {
        // `POST /api/publish`: one event object, or an array of them as one batch.
        let events = match body::publish(herald, &body) {
            Some(read) => events_read(herald, &key, idempotency.as_deref(), read)?,
            None => events_of(herald, &key, idempotency.as_deref(), parse_json(&body)?)?,
        };
        return stage_parsed(herald, &who, &key, events, &client).await;
    };
    // `POST /api/channels/{channel}/events`: one event on the channel of the path.
    let event = match body::on_path(herald, &body) {
        Some(read) => (vec![channel], read.event),
        None => parse_event(herald, parse_json(&body)?, Some(channel))?,
    };
    let event = keyed(herald, &key, idempotency.as_deref(), event)?;
    stage_events(herald, &who, &key, vec![event], false, &client).await
}

/// The events of a publish body, each with its idempotency key.
#[derive(Debug, PartialEq)]
enum Events {
    One((Vec<ChannelName>, Event)),
    Batch(Vec<(Vec<ChannelName>, Event)>),
}

/// Hands a staged request's events to the engine; its answer.
pub(crate) async fn commit(herald: &Herald, staged: Staged) -> Result<Published, ApiError> {
    let batch = staged.batch;
    let acks = herald.publish_ready(staged.events).await?;
    Ok(Staged::answer(batch, acks.into_iter()))
}

/// Hands the events of several staged requests to the engine in one call, in order (all
/// accepted or none: only where [`Herald::merges_publishes`]); each request's answer in
/// order, or the engine's refusal for every one of them.
pub(crate) async fn commit_together(herald: &Herald, staged: Vec<Staged>) -> Vec<Result<Published, ApiError>> {
    let shapes: Vec<(usize, bool)> = staged.iter().map(|s| (s.events.len(), s.batch)).collect();
    let events: Vec<Prepared> = staged.into_iter().flat_map(|s| s.events).collect();
    let expected = events.len();
    let refused = |e: EngineError| shapes.iter().map(|_| Err(ApiError::from(e.clone()))).collect();
    match herald.publish_ready(events).await {
        Ok(acks) if acks.len() == expected => {
            let mut acks = acks.into_iter();
            shapes.iter().map(|&(n, batch)| Ok(Staged::answer(batch, acks.by_ref().take(n)))).collect()
        }
        Ok(_) => refused(EngineError::Internal("the engine answered a batch with the wrong number of acks".into())),
        Err(e) => refused(e),
    }
}

/// Publishes a body that is a `Value` already (one event object, or an array of them as
/// one batch) for `who`, rate-limited under `key`: the WebSocket and Centrifugo `publish`
/// commands' path, one request, one engine call.
pub(crate) async fn publish_body(
    herald: &Herald,
    who: &Principal,
    key: &str,
    idempotency: Option<&str>,
    body: Value,
    client: &hooked::Client,
) -> Result<Published, ApiError> {
    commit(herald, stage_body(herald, who, key, idempotency, body, client).await?).await
}

/// Checks a body that is a `Value` for `who`, rate-limited under `key`, and prepares its
/// events.
async fn stage_body(
    herald: &Herald,
    who: &Principal,
    key: &str,
    idempotency: Option<&str>,
    body: Value,
    client: &hooked::Client,
) -> Result<Staged, ApiError> {
    let events = events_of(herald, key, idempotency, body)?;
    stage_parsed(herald, who, key, events, client).await
}

/// [`stage_events`] for the events of a body.
async fn stage_parsed(
    herald: &Herald,
    who: &Principal,
    key: &str,
    events: Events,
    client: &hooked::Client,
) -> Result<Staged, ApiError> {
    match events {
        Events::Batch(batch) => stage_events(herald, who, key, batch, true, client).await,
        Events::One(event) => stage_events(herald, who, key, vec![event], false, client).await,
    }
}

/// The events of a body read as a `Value`, keyed by the request's `Idempotency-Key`
/// (`idempotency`) or their own, scoped to `key`.
fn events_of(herald: &Herald, key: &str, idempotency: Option<&str>, body: Value) -> Result<Events, ApiError> {
    match body {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| parse_item(herald, key, idempotency, i, item).map_err(|e| at_index(e, i)))
            .collect::<Result<Vec<_>, _>>()
            .map(Events::Batch),
        item => Ok(Events::One(keyed(herald, key, idempotency, parse_event(herald, item, None)?)?)),
    }
}

/// [`events_of`] for a body read straight into events (`body::publish`).
fn events_read(herald: &Herald, key: &str, idempotency: Option<&str>, read: body::Body) -> Result<Events, ApiError> {
    match read {
        body::Body::Batch(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let own = item_key(item.key, idempotency, i);
                keyed(herald, key, own.as_deref(), (item.channels, item.event)).map_err(|e| at_index(e, i))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Events::Batch),
        body::Body::One(item) => Ok(Events::One(keyed(herald, key, idempotency, (item.channels, item.event))?)),
    }
}

/// Runs the publish hook, then [`Herald::admit_publish`]: the last checks before the engine.
async fn stage_events(
    herald: &Herald,
    who: &Principal,
    key: &str,
    mut events: Vec<(Vec<ChannelName>, Event)>,
    batch: bool,
    client: &hooked::Client,
) -> Result<Staged, ApiError> {
    let who = hooked::publish(herald, client, who.clone(), &mut events).await?;
    herald.refuse_banned_publisher(&who).await?;
    Ok(Staged { events: herald.admit_publish(&who, key, events)?, batch })
}

/// Item `index` of a batch, with its own idempotency key (`idempotencyKey`) if it has one,
/// else `<Idempotency-Key>/<index>` if the request has that header.
fn parse_item(
    herald: &Herald,
    scope: &str,
    batch_key: Option<&str>,
    index: usize,
    mut item: Value,
) -> Result<(Vec<ChannelName>, Event), ApiError> {
    let own = match item.as_object_mut().and_then(|fields| fields.remove(IDEMPOTENCY_FIELD)) {
        None => None,
        Some(Value::String(key)) => Some(key),
        Some(_) => return Err(ApiError::from(EventError::BadIdempotencyKey)),
    };
    let key = item_key(own, batch_key, index);
    keyed(herald, scope, key.as_deref(), parse_event(herald, item, None)?)
}

/// The idempotency key of item `index` of a batch: its own, else `<Idempotency-Key>/<index>`.
fn item_key(own: Option<String>, batch_key: Option<&str>, index: usize) -> Option<String> {
    own.or_else(|| batch_key.map(|k| format!("{k}/{index}")))
}

/// Attaches the publisher's idempotency key, scoped to the publisher (`scope`, its rate-limit
/// key: its API key's name, user id, or address), to an event.
///
/// Inlined, so that an event without a key (most are) is not moved into a call and back out.
#[inline]
fn keyed(
    herald: &Herald,
    scope: &str,
    key: Option<&str>,
    event: (Vec<ChannelName>, Event),
) -> Result<(Vec<ChannelName>, Event), ApiError> {
    match key {
        None => Ok(event),
        Some(key) => with_key(herald, scope, key, event),
    }
}

/// [`keyed`] with a key.
fn with_key(
    herald: &Herald,
    scope: &str,
    key: &str,
    (channels, event): (Vec<ChannelName>, Event),
) -> Result<(Vec<ChannelName>, Event), ApiError> {
    let key = Idempotency::new(scope, key, &channels, &event, herald.config().idempotency_window)?;
    Ok((channels, event.with_idempotency(key)))
}

/// The publisher, its rate-limit key, its `Idempotency-Key`, and the body as JSON, read only
/// once the publisher is known: for a request routed by axum.
pub(crate) async fn caller_and_body(
    herald: &Herald,
    peer: Option<Extension<PeerAddr>>,
    req: Request,
) -> Result<(Principal, String, Option<String>, Value, hooked::Client), ApiError> {
    let (parts, body) = req.into_parts();
    let (who, key, idempotency, body, client) =
        caller_with_body!(herald, peer.map(|Extension(p)| p), parts, AxumBody(body));
    Ok((who, key.to_string(), idempotency, parse_json(&body)?, client))
}

/// The request's `Idempotency-Key`, if it has one that is text.
fn idempotency_key(head: &impl RequestHead) -> Result<Option<String>, ApiError> {
    match head.idempotency_key() {
        None => Ok(None),
        Some(v) => Ok(Some(text(v).ok_or_else(|| ApiError::from(EventError::BadIdempotencyKey))?.to_owned())),
    }
}

pub(super) fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    parse_json(&body_bytes(body)?)
}

/// The body, or the refusal for a body that could not be read.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::refuse(Refusal::BodyTooLarge, "the request body is too large")
        } else {
            ApiError::refuse(Refusal::InvalidBody, rejection.body_text())
        }
    })
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::refuse(Refusal::InvalidJson, format!("the body is not valid JSON: {e}")))
}

fn at_index(e: ApiError, i: usize) -> ApiError {
    e.prefixed(&format!("event {i} of the batch"))
}

/// Splits one event object into its channels, type and payload fields.
fn parse_event(
    herald: &Herald,
    item: Value,
    path_channel: Option<ChannelName>,
) -> Result<(Vec<ChannelName>, Event), ApiError> {
    let Value::Object(mut fields) = item else {
        return Err(ApiError::refuse(Refusal::InvalidEvent, "an event must be a JSON object"));
    };
    let channels = match (path_channel, fields.remove("channel"), fields.remove("channels")) {
        (Some(ch), None, None) => vec![ch],
        (Some(_), _, _) => {
            return Err(ApiError::refuse(
                Refusal::InvalidEvent,
                "the channel is in the URL; the body must not name one",
            ));
        }
        (None, Some(Value::String(ch)), None) => vec![herald.parse_channel(&ch)?],
        (None, None, Some(Value::Array(list))) if !list.is_empty() => list
            .iter()
            .map(|v| match v {
                Value::String(s) => herald.parse_channel(s).map_err(ApiError::from),
                _ => Err(ApiError::refuse(Refusal::InvalidChannel, "`channels` must be an array of strings")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        (None, None, None) => {
            return Err(ApiError::refuse(Refusal::MissingChannel, "give `channel` or `channels`"));
        }
        (None, Some(_), Some(_)) => {
            return Err(ApiError::refuse(Refusal::InvalidEvent, "give `channel` or `channels`, not both"));
        }
        (None, _, _) => {
            return Err(ApiError::refuse(
                Refusal::InvalidChannel,
                "`channel` must be a string and `channels` a non-empty array of strings",
            ));
        }
    };
    let event_type = match fields.remove("type") {
        Some(Value::String(t)) => t,
        None => {
            return Err(ApiError::refuse(Refusal::MissingType, "event `type` is missing"));
        }
        Some(_) => {
            return Err(ApiError::refuse(Refusal::InvalidType, "event `type` must be a string"));
        }
    };
    Ok((channels, Event::from_fields(event_type, fields)))
}
