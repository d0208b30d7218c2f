//! Centrifugo's unidirectional transports, for clients without an SDK: `uni_sse` (`GET`
//! with the connect request in `cf_connect`, or `POST` with it as the body),
//! `uni_http_stream` (`POST`, one JSON push a line) and `uni_websocket` (the connect request
//! in `cf_connect` or as the first message, one push a text frame).
//!
//! The connect request's `token` says who the client is, as `connect` does on the
//! bidirectional socket; the token's `channels` claim lists the server-side subscriptions
//! (recovered from the offsets in the request's `subs`, on either engine), which open one
//! Herald connection (so live joins and leaves of the server API reach it as
//! `subscribe` and `unsubscribe` pushes). Everything is a Centrifugo push without the reply
//! around it: `{"connect":{..}}` first, then `{"channel":..,"pub":{..}}`, `join`, `leave`,
//! `{}` pings every `heartbeat_interval`, and a last `{"disconnect":{"code","reason"}}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use base64::Engine as _;
use futures_util::FutureExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::protocol::{self, Disconnect};
use crate::auth::{AuthError, Principal};
use crate::channel::ChannelName;
use crate::cursor::{LastEventId, Resume};
use crate::event::SERVER_EVENT_TYPES;
use crate::herald::{Herald, StreamRequest};
use crate::http::auth::PeerAddr;
use crate::http::error::ApiError;
use crate::http::hooked;
use crate::http::ws::{In, Socket, Upgrade, UpgradedIo, close_frame, pong};
use crate::hub::Place;
use crate::transport::{Connection, DrainGuard, KillSwitch, Message};

/// `/connection/uni_sse`.
pub fn sse_route() -> MethodRouter<crate::herald::Herald> {
    get(sse).post(sse)
}

/// `/connection/uni_http_stream`.
pub fn http_stream_route() -> MethodRouter<Herald> {
    post(http_stream)
}

/// `/connection/uni_websocket`.
pub fn websocket_route() -> MethodRouter<Herald> {
    get(websocket)
}

/// The connect request: its `token`, in `subs` where the client's server-side subscriptions
/// were, to recover them, and `data` for the connect hook (`name` and `version` are accepted
/// and ignored).
#[derive(Deserialize, Default)]
struct ConnectRequest {
    #[serde(default)]
    token: String,
    /// What the client tells the application: the connect hook is told it.
    data: Option<Value>,
    #[serde(default)]
    subs: HashMap<String, protocol::Recover>,
}

/// A disconnect: Centrifugo's code and reason.
type Bye = (u16, &'static str);

fn bye(d: Disconnect) -> Bye {
    (d.code(), d.reason())
}

const INTERNAL: Bye = (3004, "internal server error");
const PERMISSION_DENIED: Bye = (3507, "permission denied");

/// How pushes are written on a stream.
#[derive(Clone, Copy)]
pub(super) enum Framing {
    /// `data: <push>\n\n`
    Sse,
    /// `<push>\n`
    Lines,
}

impl Framing {
    fn frame(self, push: &str) -> Bytes {
        match self {
            Self::Sse => Bytes::from(format!("data: {push}\n\n")),
            Self::Lines => Bytes::from(format!("{push}\n")),
        }
    }

    /// The content type of a stream so framed.
    pub(super) fn content_type(self) -> &'static str {
        match self {
            Self::Sse => "text/event-stream; charset=utf-8",
            Self::Lines => "text/plain; charset=utf-8",
        }
    }

    /// Several pushes or replies in one frame: one SSE event of as many `data` lines (the
    /// client reads them as one message of several lines), or as many lines.
    pub(super) fn frame_lines(self, lines: &[String]) -> Bytes {
        let mut out = String::with_capacity(lines.iter().map(|l| l.len() + 7).sum::<usize>() + 1);
        for line in lines {
            if matches!(self, Self::Sse) {
                out.push_str("data: ");
            }
            out.push_str(line);
            out.push('\n');
        }
        if matches!(self, Self::Sse) {
            out.push('\n');
        }
        Bytes::from(out)
    }
}

/// What the backend hooks are told of a uni client: its headers and address at its request.
fn hooks_client(herald: &Herald, req: &Request) -> hooked::Client {
    let peer = req.extensions().get::<PeerAddr>().copied();
    hooked::Client::new(herald, "centrifugo", req.headers(), peer)
}

async fn sse(State(herald): State<Herald>, req: Request) -> Response {
    let hooks = hooks_client(&herald, &req);
    let connect = if req.method() == Method::GET {
        match cf_connect(req.uri()) {
            Some(raw) => serde_json::from_str::<Option<ConnectRequest>>(&raw).map(Option::unwrap_or_default),
            None => Ok(ConnectRequest::default()),
        }
    } else {
        match body_request(&herald, req).await {
            Ok((connect, kill)) => return stream(herald, hooks, connect, kill, Framing::Sse).await,
            Err(status) => return status.into_response(),
        }
    };
    match connect {
        Ok(connect) => {
            let kill = kill_switch(req.version(), req.extensions());
            stream(herald, hooks, connect, kill, Framing::Sse).await
        }
        Err(e) => {
            tracing::info!(error = %e, "uni_sse: unreadable cf_connect");
            StatusCode::BAD_REQUEST.into_response()
        }
    }
}

async fn http_stream(State(herald): State<Herald>, req: Request) -> Response {
    let hooks = hooks_client(&herald, &req);
    match body_request(&herald, req).await {
        Ok((connect, kill)) => stream(herald, hooks, connect, kill, Framing::Lines).await,
        Err(status) => status.into_response(),
    }
}

/// The connect request in the `cf_connect` query parameter, if there is one.
pub(super) fn cf_connect(uri: &axum::http::Uri) -> Option<String> {
    let query = uri.query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "cf_connect").map(|(_, v)| v.into_owned())
}

/// The kill switch of a stalled HTTP/1.1 reader (HTTP/2 drops the stream alone), from a
/// request's version and extensions.
pub(super) fn kill_switch(version: Version, extensions: &axum::http::Extensions) -> Option<KillSwitch> {
    match version {
        Version::HTTP_10 | Version::HTTP_11 => extensions.get::<KillSwitch>().cloned(),
        _ => None,
    }
}

/// The connect request of a `POST` body: `413` past `max_body_bytes`, `400` unreadable.
async fn body_request(herald: &Herald, req: Request) -> Result<(ConnectRequest, Option<KillSwitch>), StatusCode> {
    let kill = kill_switch(req.version(), req.extensions());
    let body = axum::body::to_bytes(req.into_body(), herald.config().max_body_bytes)
        .await
        .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)?;
    let connect = serde_json::from_slice::<Option<ConnectRequest>>(&body).map_err(|e| {
        tracing::info!(error = %e, "centrifugo uni stream: unreadable connect request");
        StatusCode::BAD_REQUEST
    })?;
    Ok((connect.unwrap_or_default(), kill))
}

/// A `200` stream of pushes: the connect push, then publications and pings, and a last
/// disconnect push (also when the connect is refused, as Centrifugo does).
async fn stream(
    herald: Herald,
    hooks: hooked::Client,
    connect: ConnectRequest,
    kill: Option<KillSwitch>,
    framing: Framing,
) -> Response {
    let mut first = Vec::new();
    if matches!(framing, Framing::Sse) {
        first.push(Bytes::from_static(b"\r\n"));
    }
    let uni = match Uni::open(herald, &hooks, connect, kill).await {
        Ok((uni, push)) => {
            first.push(framing.frame(&push));
            Some(uni)
        }
        Err(b) => {
            first.push(framing.frame(&disconnect_push(b)));
            None
        }
    };
    let state = (first, uni);
    let body = futures_util::stream::unfold(state, move |(mut queue, mut uni)| async move {
        if !queue.is_empty() {
            let bytes = queue.remove(0);
            return Some((Ok::<_, Infallible>(bytes), (queue, uni)));
        }
        let mut u = uni.take()?;
        match u.next().await {
            Step::Push(push) => Some((Ok(framing.frame(&push)), (queue, Some(u)))),
            Step::End(b) => Some((Ok(framing.frame(&disconnect_push(b))), (queue, None))),
            Step::Gone => None,
        }
    });
    streaming(Body::from_stream(body), framing.content_type())
}

/// A `200` answer that streams `body` as `content_type`, past caches and buffering proxies.
pub(super) fn streaming(body: Body, content_type: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn websocket(State(herald): State<Herald>, req: Request) -> Response {
    let hooks = hooks_client(&herald, &req);
    let (mut parts, _body) = req.into_parts();
    let drain_guard = parts.extensions.remove::<DrainGuard>();
    let connect = match cf_connect(&parts.uri).map(|raw| serde_json::from_str::<Option<ConnectRequest>>(&raw)) {
        Some(Ok(connect)) => Some(connect.unwrap_or_default()),
        Some(Err(e)) => {
            tracing::info!(error = %e, "uni_websocket: unreadable cf_connect");
            return (StatusCode::BAD_REQUEST, "invalid connect request").into_response();
        }
        None => None,
    };
    let upgrade = match Upgrade::from_parts(&mut parts) {
        Ok(upgrade) => upgrade,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let max = herald.config().max_body_bytes;
    upgrade.respond(max, move |socket| {
        tokio::spawn(serve_socket(herald, hooks, socket, connect, drain_guard));
    })
}

async fn serve_socket(
    herald: Herald,
    hooks: hooked::Client,
    mut socket: Socket<UpgradedIo>,
    connect: Option<ConnectRequest>,
    _guard: Option<DrainGuard>,
) {
    let connect = match connect {
        Some(connect) => connect,
        None => {
            // The first message, within the time a request's headers have.
            let first = tokio::time::timeout(herald.config().header_read_timeout, socket.recv()).await;
            match first {
                Ok(Some(Ok(In::Text(text)))) => match serde_json::from_str::<Option<ConnectRequest>>(&text) {
                    Ok(connect) => connect.unwrap_or_default(),
                    Err(_) => return close(&mut socket, bye(Disconnect::BadRequest)).await,
                },
                Ok(Some(Ok(_))) => return close(&mut socket, bye(Disconnect::BadRequest)).await,
                Ok(_) => return,
                Err(_) => return close(&mut socket, bye(Disconnect::Stale)).await,
            }
        }
    };
    let mut uni = match Uni::open(herald, &hooks, connect, None).await {
        Ok((uni, push)) => {
            if socket.send(protocol::text_frame(&push)).await.is_err() {
                return;
            }
            uni
        }
        Err(b) => return close(&mut socket, b).await,
    };
    loop {
        tokio::select! {
            step = uni.next() => match step {
                Step::Push(push) => {
                    if socket.send(protocol::text_frame(&push)).await.is_err() {
                        return;
                    }
                }
                Step::End(b) => return close(&mut socket, b).await,
                Step::Gone => return,
            },
            // What the client sends is not read (unidirectional), but a close or a dead
            // socket ends the session.
            frame = socket.recv() => match frame {
                Some(Ok(In::Close(code))) => {
                    let _ = tokio::time::timeout(CLOSE_WRITE, socket.answer_close(code)).await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(In::Ping(payload))) => {
                    if socket.send(pong(&payload)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The disconnect push, then the close frame with the same code and reason.
async fn close(socket: &mut Socket<UpgradedIo>, (code, reason): Bye) {
    let push = disconnect_push((code, reason));
    socket.queue(protocol::text_frame(&push));
    let _ = tokio::time::timeout(CLOSE_WRITE, socket.close_handshake(close_frame(Some(code), reason.as_bytes()))).await;
}

/// Longest wait for the closing handshake.
const CLOSE_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

fn disconnect_push((code, reason): Bye) -> String {
    json!({"disconnect": {"code": code, "reason": reason}}).to_string()
}

/// What a unidirectional session does next.
enum Step {
    Push(String),
    /// The last push: a disconnect.
    End(Bye),
    /// The client is gone (the hub cut a stalled reader).
    Gone,
}

/// One unidirectional client: its Herald connection, if its token names channels, and the
/// Centrifugo name of each of them.
struct Uni {
    herald: Herald,
    conn: Option<Connection>,
    /// Without a connection (a token with no channels), the client's place in the node's
    /// connection limits: counted as a stream is, for as long as it stays.
    place: Option<Place>,
    /// Without a connection, when the token's `exp` plus `auth.leeway` passes (ms since the
    /// epoch; `u64::MAX` for none): the client goes then, as a connection is cut.
    expiry: u64,
    kill: KillSwitch,
    /// Herald channel → the Centrifugo name pushes carry.
    names: HashMap<String, String>,
    ping: Interval,
    /// Messages read with the recovery that are not part of it: pushed first.
    pending: std::collections::VecDeque<Message>,
}

impl Uni {
    /// Verifies the token, asks the connect hook (as the bidirectional `connect` does) and
    /// opens the connection of the token's `channels` and the hook's; the connect push, or
    /// the disconnect that refuses the client.
    async fn open(
        herald: Herald,
        hooks: &hooked::Client,
        connect: ConnectRequest,
        kill: Option<KillSwitch>,
    ) -> Result<(Self, String), Bye> {
        let who = principal(&herald, &connect.token).await?;
        let super::Connecting { who, server_side, hook_info: _, data } =
            match super::ask_connect_hook(&herald, hooks, who, claimed_channels(&connect.token), connect.data.as_ref())
                .await
            {
                Ok(connecting) => connecting,
                Err(super::Refused::Api(e)) => return Err(refused(&herald, e)),
                Err(super::Refused::Anonymous) => return Err(bye(Disconnect::InvalidToken)),
            };
        let mut names = HashMap::new();
        let mut channels = Vec::new();
        for name in server_side {
            match super::channel(&herald, &name) {
                Ok(channel) => {
                    if names.insert(channel.as_str().to_owned(), name.clone()).is_none() {
                        channels.push(channel);
                    }
                }
                Err(_) => tracing::info!(
                    channel = name,
                    "uni client: a channel of the token or the connect hook is not one of Herald's"
                ),
            }
        }
        let kill = kill.unwrap_or_default();
        // Without channels the client has no connection: its id is made here.
        let client = crate::herald::new_connection_id();
        let (place, expiry) = if channels.is_empty() {
            let place = herald.admit_client(&client, &who).await.map_err(|e| refused(&herald, ApiError::from(e)))?;
            (Some(place), super::token_deadline(&herald, &who))
        } else {
            (None, u64::MAX)
        };
        let mut conn = None;
        let mut pending = Vec::new();
        let mut subs = serde_json::Map::new();
        if !channels.is_empty() {
            let (resume, recovering) = resume_subs(&channels, &names, &connect.subs);
            let mut req = StreamRequest::new(who, channels.clone());
            req.transport = "centrifugo";
            req.kill = Some(kill.clone());
            req.last_event_id = resume;
            let mut c = herald.connect(req).await.map_err(|e| refused(&herald, ApiError::from(e)))?;
            let recovered = Recovered::read(&mut c, &recovering);
            for (i, channel) in channels.iter().enumerate() {
                let name = names.get(channel.as_str()).cloned().unwrap_or_default();
                subs.insert(name, recovered.sub(i, channel.as_str(), recovering.contains(&channel.as_str())));
            }
            pending = recovered.rest;
            conn = Some(c);
        }
        let beat = herald.config().heartbeat_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + beat, beat);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut push = json!({"connect": {
            "client": conn.as_ref().map_or_else(|| client.to_string(), |c| c.id().to_owned()),
            "version": concat!("herald ", env!("CARGO_PKG_VERSION")),
            "subs": subs,
            "ping": beat.as_secs().max(1),
        }});
        if let Some(data) = data {
            push["connect"]["data"] = Value::Object(data);
        }
        let pending = pending.into();
        Ok((Self { herald, conn, place, expiry, kill, names, ping, pending }, push.to_string()))
    }

    /// The next push, ping or end.
    async fn next(&mut self) -> Step {
        while let Some(msg) = self.pending.pop_front() {
            if let Some(push) = self.push(&msg) {
                return Step::Push(push);
            }
        }
        loop {
            tokio::select! {
                msg = crate::http::ws::next(&mut self.conn) => match msg {
                    Some(msg) => {
                        if let Some(push) = self.push(&msg) {
                            return Step::Push(push);
                        }
                    }
                    None => return Step::End(self.closed()),
                },
                _ = self.ping.tick() => {
                    // A client with no channel has no hub connection for a drain to close.
                    if self.conn.is_none() && self.herald.is_draining() {
                        return Step::End(bye(Disconnect::Shutdown));
                    }
                    return Step::Push("{}".to_owned());
                }
                () = super::sleep_until_ms(self.expiry), if self.expiry < u64::MAX => {
                    return Step::End(bye(Disconnect::Expired));
                }
                reason = super::place_cut(&self.place) => return Step::End(bye(super::disconnect_for(Some(reason)))),
                () = self.kill.killed() => return Step::Gone,
            }
        }
    }

    /// The push of a message of the connection: publications, join and leave, and the
    /// server API's live subscribe and unsubscribe; `None` for Herald's other notices.
    fn push(&mut self, msg: &Message) -> Option<String> {
        let kind = msg.event_type.as_str();
        let fields: Value = serde_json::from_slice(&msg.json).ok()?;
        let channel = fields.get("channel")?.as_str()?;
        match kind {
            "subscribed" => {
                let name = crate::mirror::centrifugo_name(channel);
                self.names.insert(channel.to_owned(), name.clone());
                return Some(json!({"channel": name, "subscribe": {"epoch": protocol::EPOCH}}).to_string());
            }
            "unsubscribed" => {
                let name = self.names.remove(channel)?;
                let unsubscribe = json!({"code": 2000, "reason": "server unsubscribe"});
                return Some(json!({"channel": name, "unsubscribe": unsubscribe}).to_string());
            }
            _ if SERVER_EVENT_TYPES.contains(&kind) || kind == "presence" => return None,
            _ => {}
        }
        let name = self.names.get(channel)?;
        if matches!(kind, "join" | "leave") {
            let user = fields.get("userId")?.as_str()?;
            return Some(json!({"channel": name, kind: {"info": {"client": user, "user": user}}}).to_string());
        }
        let conn = self.conn.as_ref()?;
        let index = conn.channels().iter().position(|c| c.as_str() == channel)?;
        let position = match LastEventId::parse(&msg.id)?.resume_for(index, channel) {
            Resume::From(pos) => Some(pos),
            Resume::Fresh | Resume::Unknown => None,
        };
        let mut out = String::with_capacity(msg.json.len() + name.len() + 40);
        out.push_str(r#"{"channel":"#);
        out.push_str(&Value::String(name.clone()).to_string());
        out.push_str(r#","pub":"#);
        protocol::push_pub(&mut out, &msg.json, position);
        out.push('}');
        Some(out)
    }

    /// The disconnect that follows the end of the connection, by the hub's reason.
    fn closed(&self) -> Bye {
        bye(super::disconnect_for(self.conn.as_ref().and_then(Connection::close_reason)))
    }
}

/// What `connect` wrote before the live events: the `connected` notice (its id is each
/// channel's position), a `reset` for each channel history could not cover, and the missed
/// publications, in order.
/// The `Last-Event-ID` that resumes each server-side subscription a connect request's `subs`
/// asks to recover (`channels` Herald's, `names` their Centrifugo names), as an SSE stream
/// resumes; and the channels it recovers.
pub(super) fn resume_subs<'a>(
    channels: &'a [ChannelName],
    names: &HashMap<String, String>,
    subs: &HashMap<String, protocol::Recover>,
) -> (Option<String>, Vec<&'a str>) {
    let mut resume = String::new();
    let mut recovering = Vec::new();
    for channel in channels {
        let name = names.get(channel.as_str()).map_or("", String::as_str);
        if let Some(r) = subs.get(name).filter(|r| r.resumes()) {
            if !resume.is_empty() {
                resume.push(',');
            }
            crate::cursor::write_entry(&mut resume, channel.as_str(), protocol::position(r.offset));
            recovering.push(channel.as_str());
        }
    }
    ((!resume.is_empty()).then_some(resume), recovering)
}

/// What a connection wrote before its live events, read for the subscriptions it recovers.
pub(super) struct Recovered {
    head: Option<LastEventId>,
    reset: Vec<String>,
    /// Herald channel → its missed publications (`{"data","offset"}`) and the last position.
    missed: HashMap<String, (Vec<Value>, Option<crate::cursor::Position>)>,
    /// What else came meanwhile (live events of the channels not recovering, join and
    /// leave), in order.
    pub(super) rest: Vec<Message>,
}

impl Recovered {
    /// Reads what is ready; the publications of the `recovering` channels are the missed ones.
    pub(super) fn read(conn: &mut Connection, recovering: &[&str]) -> Self {
        let mut out = Self { head: None, reset: Vec::new(), missed: HashMap::new(), rest: Vec::new() };
        while let Some(Some(msg)) = conn.recv().now_or_never() {
            let kind = msg.event_type.as_str();
            let channel = serde_json::from_slice::<Value>(&msg.json)
                .ok()
                .and_then(|v| v.get("channel").and_then(Value::as_str).map(str::to_owned));
            match (kind, channel) {
                ("connected", _) => out.head = LastEventId::parse(&msg.id),
                ("reset", Some(channel)) => out.reset.push(channel),
                (kind, Some(channel))
                    if recovering.contains(&channel.as_str())
                        && !SERVER_EVENT_TYPES.contains(&kind)
                        && !matches!(kind, "presence" | "join" | "leave") =>
                {
                    let Some(index) = conn.channels().iter().position(|c| c.as_str() == channel) else { continue };
                    let position = match LastEventId::parse(&msg.id).map(|id| id.resume_for(index, &channel)) {
                        Some(Resume::From(pos)) => Some(pos),
                        _ => None,
                    };
                    let mut publication = String::new();
                    protocol::push_pub(&mut publication, &msg.json, position);
                    let entry = out.missed.entry(channel).or_default();
                    entry.0.extend(serde_json::from_str::<Value>(&publication).ok());
                    entry.1 = entry.1.max(position);
                }
                _ => out.rest.push(msg),
            }
        }
        out
    }

    /// The connect push's entry of the channel at `index`: its position, and with
    /// `recovering` whether it was recovered and what was missed.
    pub(super) fn sub(&self, index: usize, channel: &str, recovering: bool) -> Value {
        let mut sub = json!({"recoverable": true, "epoch": protocol::EPOCH});
        let head = match self.head.as_ref().map(|h| h.resume_for(index, channel)) {
            Some(Resume::From(pos)) => Some(pos),
            _ => None,
        };
        let (missed, last) = self.missed.get(channel).cloned().unwrap_or_default();
        if let Some(top) = head.max(last) {
            sub["offset"] = protocol::offset(top).into();
        }
        if recovering {
            sub["was_recovering"] = true.into();
            sub["recovered"] = (!self.reset.iter().any(|c| c == channel)).into();
            sub["publications"] = missed.into();
        }
        sub
    }
}

/// Who the token says the client is: as the bidirectional `connect`, but an expired token
/// ends the connection with `3005` (Centrifugo's unidirectional mapping of `109`).
async fn principal(herald: &Herald, token: &str) -> Result<Principal, Bye> {
    if token.is_empty() {
        if super::tokenless_refused(herald) {
            return Err(bye(Disconnect::InvalidToken));
        }
        return Ok(Principal::Anonymous);
    }
    match herald.auth().verify_token(token).await {
        Ok(user) => Ok(Principal::User(Arc::new(user))),
        Err(AuthError::Expired) => Err(bye(Disconnect::Expired)),
        Err(AuthError::KeysUnavailable(_)) => Err(INTERNAL),
        Err(_) => Err(bye(Disconnect::InvalidToken)),
    }
}

/// The `channels` claim of a token that verified: Centrifugo's server-side subscriptions.
fn claimed_channels(token: &str) -> Vec<String> {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let Some(Value::Array(list)) = claims.and_then(|mut c| c.get_mut("channels").map(Value::take)) else {
        return Vec::new();
    };
    list.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

/// A refused connection as Centrifugo's unidirectional disconnect (counted as a refused
/// stream is).
fn refused(herald: &Herald, e: ApiError) -> Bye {
    super::count_refusal(herald, &e);
    tracing::info!(status = %e.status(), message = e.message(), "uni client refused");
    match e.status().as_u16() {
        401 => bye(Disconnect::InvalidToken),
        403 => PERMISSION_DENIED,
        429 => bye(Disconnect::ConnectionLimit),
        503 => bye(Disconnect::Shutdown),
        s if s >= 500 => INTERNAL,
        _ => bye(Disconnect::BadRequest),
    }
}
