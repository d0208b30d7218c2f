//! Centrifugo's bidirectional emulation, for `centrifuge` SDKs where a WebSocket cannot be
//! had (a proxy that drops upgrades): the SDK's `http_stream` transport (`POST
//! /connection/http_stream` with its `connect` command as the body; replies and pushes come
//! back one JSON a line) and its `sse` transport (`GET /connection/sse?cf_connect=<connect
//! command>`; each frame an SSE event). Every later command comes up as a `POST /emulation`
//! of its own, `{"session","node","data"}`, to any node: the `connect` reply told the SDK
//! the session's key and its node, and a node that does not hold the session passes the
//! request to the one that does through the engine ([`Herald::deliver`]).
//!
//! The session is the WebSocket's ([`Session`]) over another [`Wire`]: the same commands,
//! pushes, limits, hooks and disconnect codes; a disconnect is a `disconnect` push at the
//! end of the stream. `http_stream` also speaks Protobuf (a body of `application/octet-stream`:
//! length-delimited `Command`s up, `Reply`s down, and `/emulation` an `EmulationRequest`),
//! translated at this edge as on the WebSocket ([`protobuf`]); the inbox holds JSON lines
//! either way. Opt-in with `emulation = true` in `[centrifugo]`.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::protobuf;
use super::session::{End, Out, Session, Wire};
use super::uni::{self, Framing};
use crate::herald::{Delivery, Herald, Inbox};
use crate::http::auth::PeerAddr;
use crate::http::error::ApiError;
use crate::http::hooked;
use crate::http::refusal::Refusal;
use crate::http::ws::{Close, In};
use crate::transport::DrainGuard;

/// Frames written to a session's stream before the session waits for its client to read
/// them: what a stalled client can hold of the node's memory, beside the hub's own bound.
const STREAM_FRAMES: usize = 16;

/// `/connection/http_stream`.
pub fn http_stream_route() -> MethodRouter<Herald> {
    post(http_stream)
}

/// `/connection/sse`.
pub fn sse_route() -> MethodRouter<Herald> {
    get(sse)
}

/// `/emulation`.
pub fn emulation_route() -> MethodRouter<Herald> {
    post(emulation)
}

/// Whether a request's body is Protobuf (`application/octet-stream`), as the SDK sends it.
fn is_protobuf(headers: &axum::http::HeaderMap) -> bool {
    headers.get(axum::http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"))
}

async fn http_stream(State(herald): State<Herald>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let first = match axum::body::to_bytes(body, herald.config().max_body_bytes).await {
        Ok(body) => body,
        Err(_) => return ApiError::refuse(Refusal::BodyTooLarge, "the connect command is too large").into_response(),
    };
    if is_protobuf(&parts.headers) {
        return match protobuf::command_lines(&first) {
            Some(first) => open(herald, parts, first, Encoding::Protobuf),
            None => ApiError::refuse(Refusal::InvalidBody, "the connect command is not Protobuf").into_response(),
        };
    }
    match String::from_utf8(first.to_vec()) {
        Ok(first) => open(herald, parts, first, Encoding::Json(Framing::Lines)),
        Err(_) => ApiError::refuse(Refusal::InvalidBody, "the connect command is not UTF-8").into_response(),
    }
}

/// How a session's stream is written.
#[derive(Clone, Copy)]
enum Encoding {
    /// JSON replies, as SSE events or lines.
    Json(Framing),
    /// Length-delimited Protobuf `Reply`s.
    Protobuf,
}

async fn sse(State(herald): State<Herald>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    match uni::cf_connect(&parts.uri) {
        Some(first) => open(herald, parts, first, Encoding::Json(Framing::Sse)),
        None => {
            ApiError::refuse(Refusal::InvalidParameter, "cf_connect: the connect command is missing").into_response()
        }
    }
}

/// Starts a session whose first frame is `first` (the SDK's `connect` command) and answers
/// with its stream.
fn open(herald: Herald, mut parts: Parts, first: String, encoding: Encoding) -> Response {
    let inbox = match herald.open_inbox() {
        Ok(inbox) => inbox,
        Err(_) => {
            return ApiError::refuse(Refusal::Internal, "no secure random source for a session key").into_response();
        }
    };
    let drain_guard = parts.extensions.remove::<DrainGuard>();
    let kill = uni::kill_switch(parts.version, &parts.extensions);
    let peer = parts.extensions.get::<PeerAddr>().copied();
    let hooks = hooked::Client::new(&herald, "centrifugo", &parts.headers, peer);
    let (out, rx) = mpsc::channel(STREAM_FRAMES);
    let node = herald.node_id().to_owned();
    let wire = Emulated { first: Some(first), inbox, out, encoding, node };
    let session = Session::new(herald, peer, hooks, drain_guard).killed_by(kill);
    tokio::spawn(session.run(wire));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let frame = rx.recv().await?;
        Some((Ok::<_, Infallible>(frame), rx))
    });
    let content_type = match encoding {
        Encoding::Json(framing) => framing.content_type(),
        Encoding::Protobuf => "application/octet-stream",
    };
    uni::streaming(Body::from_stream(body), content_type)
}

/// A command batch of the SDK, for the session `session` of node `node`. `data` is the
/// commands as the WebSocket carries them (JSON, one a line); a Protobuf
/// `EmulationRequest` is read into the same.
#[derive(Deserialize)]
struct EmulationRequest {
    session: String,
    node: String,
    data: String,
}

/// `POST /emulation`: `200 {}` once the session has the commands (its replies come down its
/// stream), `404 session_not_found` when no node has it (the SDK then reconnects), `429`
/// when the session has as many requests unread as its inbox holds.
async fn emulation(State(herald): State<Herald>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let read = match is_protobuf(&headers) {
        true => protobuf::emulation_request(&body)
            .map(|(node, session, data)| EmulationRequest { session, node, data })
            .ok_or_else(|| "not an EmulationRequest".to_owned()),
        false => serde_json::from_slice(&body).map_err(|e| e.to_string()),
    };
    let req: EmulationRequest = match read {
        Ok(req) => req,
        Err(e) => {
            tracing::info!(error = %e, "centrifugo emulation: unreadable request");
            return ApiError::refuse(
                Refusal::InvalidJson,
                format!("an emulation request is {{\"session\",\"node\",\"data\"}}: {e}"),
            )
            .into_response();
        }
    };
    match herald.deliver(&req.node, &req.session, req.data).await {
        Ok(Delivery::Delivered) => axum::Json(json!({})).into_response(),
        Ok(Delivery::Full) => {
            ApiError::refuse(Refusal::RateLimited, "the session has too many requests unread").into_response()
        }
        Ok(Delivery::Unknown) => {
            tracing::debug!(node = %req.node, "centrifugo emulation: no such session");
            ApiError::refuse(Refusal::SessionNotFound, "no node has that session").into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A session's wire over emulation: its stream down, its inbox up.
struct Emulated {
    /// The `connect` command the stream was opened with, read first.
    first: Option<String>,
    inbox: Inbox,
    out: mpsc::Sender<Bytes>,
    encoding: Encoding,
    node: String,
}

impl Emulated {
    fn frame(&self, lines: &[String]) -> Bytes {
        match self.encoding {
            Encoding::Json(framing) => framing.frame_lines(lines),
            Encoding::Protobuf => Bytes::from(protobuf::replies(lines)),
        }
    }
}

impl Wire for Emulated {
    async fn recv(&mut self) -> Option<Result<In, Close>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(In::Text(first)));
        }
        tokio::select! {
            data = self.inbox.recv() => data.map(|d| Ok(In::Text(d))),
            // The client went away: its stream's body was dropped.
            () = self.out.closed() => None,
        }
    }

    async fn send(&mut self, out: Out<'_>) -> std::io::Result<()> {
        let frame = match (out, self.encoding) {
            (Out::Lines(lines), _) => self.frame(lines),
            (Out::Ping, Encoding::Protobuf) => Bytes::from_static(&protobuf::PING),
            (Out::Ping, Encoding::Json(framing)) => framing.frame_lines(&["{}".to_owned()]),
            (Out::Pong(_), _) => return Ok(()),
        };
        self.out.send(frame).await.map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }

    /// The key the SDK names the session by, and its node.
    fn tell_at_connect(&self, reply: &mut Value) {
        reply["session"] = self.inbox.key().as_ref().into();
        reply["node"] = self.node.as_str().into();
    }

    /// A disconnect is the stream's last push; the stream then ends.
    async fn finish(self, end: Option<End>) {
        if let Some(End::Disconnect(d)) = end {
            let push = json!({"push": {"disconnect": {"code": d.code(), "reason": d.reason()}}}).to_string();
            let frame = self.frame(&[push]);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.out.send(frame)).await;
        }
    }
}
