//! One WebSocket's life, in one task: the connection's events out, the client's commands
//! in, ping/pong heartbeats, and the close with its code.
//!
//! The session owns the socket and, once something is subscribed, one [`Connection`]: the
//! same queue, cursor, filters, joins and leaves as an SSE stream. A slow reader is cut the
//! way an HTTP/1.1 SSE reader is: the hub closes the connection and fires its
//! [`KillSwitch`], which ends a write that waits on the socket. Commands run one at a time;
//! a client that sends too many frames (commands or pings) is closed, and nothing it sends
//! reaches another client's connection except through the hub's own checks.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{Message as Frame, WebSocket};
use axum::response::IntoResponse;
use futures_util::{FutureExt as _, SinkExt as _};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::protocol::{self, Close, Command, Kind};
use crate::auth::{ApiKey, Principal};
use crate::catalogue::PresenceStatus;
use crate::channel::ChannelName;
use crate::herald::{Herald, LastEvents, PresenceError, StreamRequest};
use crate::http::auth::{PeerAddr, rate_key};
use crate::http::error::ApiError;
use crate::http::hooked;
use crate::http::observe::{count_publish_refusal, count_subscribe_refusal};
use crate::http::publish;
use crate::http::refusal::Refusal;
use crate::http::subscribe::{MAX_FILTERS, checked_last_event_id, parse_filter};
use crate::hub::connection::CloseReason;
use crate::transport::messages::Item;
use crate::transport::{Connection, DrainGuard, KillSwitch, Message};

/// Frames a client may send per second, past the burst (commands, pings and pongs alike).
pub(in crate::http) const FRAME_RATE: f64 = 50.0;
/// Frames a client may send at once.
pub(in crate::http) const FRAME_BURST: f64 = 100.0;

/// Most events gathered into one write.
const MAX_BATCH: usize = 64;

/// Longest wait for the closing handshake: a peer that does not read or answer gets no more.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// A socket's state.
pub(super) struct Session {
    herald: Herald,
    who: Principal,
    peer: Option<PeerAddr>,
    /// The client as the backend hooks are told about it.
    client: hooked::Client,
    conn: Option<Connection>,
    kill: KillSwitch,
    /// The socket came without a credential and nothing else was asked yet: an `auth`
    /// command may still bring one.
    may_authenticate: bool,
    frames: Bucket,
    /// The open query's `last`, for the stream the first `subscribe` opens.
    last: LastEvents,
    /// Keeps the server's drain waiting until the socket is closed (`None` when the router
    /// is served by something other than Herald's server).
    _drain_guard: Option<DrainGuard>,
}

/// What woke the session.
enum Input {
    Out(Option<Item>),
    In(Option<Result<Frame, axum::Error>>),
    Tick,
    Deadline,
}

impl Session {
    pub(super) fn new(
        herald: Herald,
        who: Principal,
        peer: Option<PeerAddr>,
        client: hooked::Client,
        conn: Option<Connection>,
        kill: KillSwitch,
        may_authenticate: bool,
    ) -> Self {
        let frames = Bucket::new(FRAME_RATE, FRAME_BURST);
        let last = LastEvents::default();
        Self { herald, who, peer, client, conn, kill, may_authenticate, frames, last, _drain_guard: None }
    }

    /// The stream the first `subscribe` opens starts with these last events (the open
    /// query's `last`).
    pub(super) fn starting_with(mut self, last: LastEvents) -> Self {
        self.last = last;
        self
    }

    pub(super) fn holding(mut self, guard: Option<DrainGuard>) -> Self {
        self._drain_guard = guard;
        self
    }

    pub(super) async fn run(mut self, mut socket: WebSocket) {
        self.herald.metrics().websocket.opened();
        let end = self.serve(&mut socket).await;
        // Boxed: the closing handshake's futures need no room in an idle socket's task
        // (measured: `run`'s future 2,472 bytes before, 2,456 after; the loop's is 768).
        Box::pin(self.close(socket, end)).await;
    }

    /// Ends the socket: the close frame and its handshake, and the count of the close.
    async fn close(self, mut socket: WebSocket, end: Option<End>) {
        let label = match end {
            Some(End::Close(close)) => {
                tracing::debug!(connection = self.conn.as_ref().map(Connection::id), ?close, "websocket closed");
                // The closing handshake: what the client still sends is read (and dropped)
                // until its close, so that the socket is not reset under the client's
                // unread frames, our close among them.
                let handshake = async {
                    if socket.send(close.frame()).await.is_ok() {
                        while let Some(Ok(_)) = socket.recv().await {}
                    }
                };
                let _ = tokio::time::timeout(CLOSE_WRITE, handshake).await;
                close.code().to_string()
            }
            // The client's close is answered (by tungstenite) on the next read.
            Some(End::ByClient) => {
                let _ = tokio::time::timeout(CLOSE_WRITE, socket.recv()).await;
                "client".to_owned()
            }
            None => "none".to_owned(),
        };
        self.herald.metrics().websocket.closed(&label);
    }

    /// Serves the socket until it ends; `None` when the server tore it down (a slow reader)
    /// or could not write to it, so that no close frame can be written.
    async fn serve(&mut self, socket: &mut WebSocket) -> Option<End> {
        let cfg = self.herald.config();
        let mut heartbeat = Heartbeat::new(cfg.heartbeat_interval);
        // A socket must subscribe (and say who it is) as soon as a request's headers must
        // arrive: an idle socket holds no hub connection, so no limit counts it.
        let deadline = Instant::now() + cfg.header_read_timeout;
        // One timer for the next ping and the subscribe deadline, pinned in this future.
        let timer = tokio::time::sleep_until(self.wake_at(&heartbeat, deadline));
        tokio::pin!(timer);
        loop {
            let input = tokio::select! {
                item = next_item(&mut self.conn) => Input::Out(item),
                frame = socket.recv() => Input::In(frame),
                () = &mut timer => {
                    if self.conn.is_none() && Instant::now() >= deadline {
                        Input::Deadline
                    } else if Instant::now() >= heartbeat.due() {
                        Input::Tick
                    } else {
                        // The deadline passed with a subscription open: the ping's time is next.
                        timer.as_mut().reset(self.wake_at(&heartbeat, deadline));
                        continue;
                    }
                }
            };
            match input {
                Input::Out(Some(item)) => {
                    let frames = self.events(item);
                    self.write(socket, frames).await?;
                }
                Input::Out(None) => return Some(End::Close(self.closed_by_server())),
                Input::In(None) => return Some(End::ByClient),
                Input::In(Some(Err(e))) => return read_error(e).map(End::Close),
                Input::In(Some(Ok(frame))) => {
                    heartbeat.heard();
                    if matches!(frame, Frame::Text(_) | Frame::Binary(_)) {
                        self.herald.metrics().websocket.frame_in();
                    }
                    if !self.frames.take() {
                        let e = ApiError::refuse(Refusal::RateLimited, "too many messages");
                        self.send(socket, protocol::error(None, &e)).await?;
                        return Some(End::Close(Close::Policy("rate_limited")));
                    }
                    match frame {
                        Frame::Text(text) => {
                            // Boxed: the command's future (hooks, hub calls) lives only while
                            // it runs, not in every idle socket's task.
                            let (answer, close) = Box::pin(self.command(text.as_str())).await;
                            self.send(socket, answer).await?;
                            if let Some(close) = close {
                                return Some(End::Close(close));
                            }
                        }
                        Frame::Binary(_) => {
                            let e = ApiError::refuse(Refusal::BinaryNotSupported, "messages are JSON in text frames");
                            self.send(socket, protocol::error(None, &e)).await?;
                            return Some(End::Close(Close::Binary));
                        }
                        // tungstenite answers pings itself.
                        Frame::Ping(_) | Frame::Pong(_) => {}
                        Frame::Close(_) => return Some(End::ByClient),
                    }
                }
                Input::Tick => {
                    if !heartbeat.alive() {
                        return Some(End::Close(Close::TryAgain("client_timeout")));
                    }
                    timer.as_mut().reset(self.wake_at(&heartbeat, deadline));
                    self.send(socket, Frame::Ping(bytes::Bytes::new())).await?;
                }
                Input::Deadline => {
                    let e = ApiError::refuse(
                        Refusal::SubscribeTimeout,
                        "a socket must subscribe within `header_read_timeout` of opening",
                    );
                    self.send(socket, protocol::error(None, &e)).await?;
                    return Some(End::Close(Close::Policy("subscribe_timeout")));
                }
            }
        }
    }

    /// When the session's timer must fire next: the ping's time, or the subscribe deadline
    /// while the socket has no subscription.
    fn wake_at(&self, heartbeat: &Heartbeat, deadline: Instant) -> Instant {
        if self.conn.is_none() { heartbeat.due().min(deadline) } else { heartbeat.due() }
    }

    /// Writes one frame (see [`Session::write`]).
    async fn send(&self, socket: &mut WebSocket, frame: Frame) -> Option<()> {
        self.write(socket, vec![frame]).await
    }

    /// The frames of `first` and whatever else the connection has ready (up to
    /// [`MAX_BATCH`]), for one write. Not `async`: the item is gone before the write
    /// waits, so that it takes no room in the session's future.
    fn events(&mut self, first: Item) -> Vec<Frame> {
        let mut batch = vec![event_frame(first)];
        // Taken without waiting: a pending poll leaves the connection's wake-up to the next
        // `recv_item` of the main loop, which registers it again.
        while batch.len() < MAX_BATCH
            && let Some(Some(item)) = self.conn.as_mut().and_then(|conn| conn.recv_item().now_or_never())
        {
            batch.push(event_frame(item));
        }
        batch
    }

    /// Writes `frames` in one go, unless the hub tears the connection down meanwhile (its
    /// reader is too slow): `None` then, or when the socket is gone. Polled by hand: an
    /// idle session's future is as large as its largest wait, and this one is the largest.
    async fn write(&self, socket: &mut WebSocket, frames: Vec<Frame>) -> Option<()> {
        let n = frames.len() as u64;
        let mut frames = frames.into_iter();
        let killed = self.kill.killed();
        tokio::pin!(killed);
        let sent = std::future::poll_fn(|cx| {
            let written = loop {
                match socket.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                    Poll::Pending => break Poll::Pending,
                }
                let Some(frame) = frames.next() else { break socket.poll_flush_unpin(cx) };
                if let Err(e) = socket.start_send_unpin(frame) {
                    break Poll::Ready(Err(e));
                }
            };
            match written {
                Poll::Ready(r) => Poll::Ready(r.ok()),
                // Waiting on the socket: the hub may give up on this reader meanwhile.
                Poll::Pending => killed.as_mut().poll(cx).map(|()| None),
            }
        })
        .await;
        sent?;
        self.herald.metrics().websocket.frames_out(n);
        Some(())
    }

    /// The close that follows the end of the connection, by the hub's reason.
    fn closed_by_server(&self) -> Close {
        let reason = self.conn.as_ref().and_then(Connection::close_reason);
        match reason {
            Some(CloseReason::Drain { retry_ms }) => Close::Drain { retry_ms },
            Some(r @ (CloseReason::TokenExpired | CloseReason::Disconnect { .. })) => Close::Normal(r.as_str()),
            Some(r) => Close::TryAgain(r.as_str()),
            None => Close::TryAgain("closed"),
        }
    }

    /// Runs one command: the frame that answers it, and the close that follows, if any.
    async fn command(&mut self, text: &str) -> (Frame, Option<Close>) {
        let Command { id, kind } = match protocol::parse(text) {
            Ok(cmd) => cmd,
            Err(bad) => return (protocol::error(bad.id, &bad.error), None),
        };
        let may_authenticate = std::mem::take(&mut self.may_authenticate);
        let result = match kind {
            Kind::Auth(auth) if may_authenticate => match self.authenticate(auth.token).await {
                Ok(v) => Ok(v),
                // As an SSE request with a refused credential gets no stream.
                Err(e) => {
                    return (
                        protocol::error(id, &e),
                        Some(Close::Policy(e.refusal().map_or("forbidden", Refusal::code))),
                    );
                }
            },
            Kind::Auth(_) => Err(ApiError::refuse(
                Refusal::AlreadyAuthenticated,
                "`auth` must be the first message of a socket opened without a credential",
            )),
            Kind::Subscribe(s) => self.subscribe(s).await,
            Kind::Unsubscribe(u) => self.unsubscribe(u.channels).await,
            Kind::Publish(p) => self.publish(p).await,
            Kind::Presence(p) => self.presence(p).await,
            Kind::Ping => Ok(json!({})),
        };
        match result {
            Ok(result) => (protocol::reply(id, result), None),
            // A socket that could not subscribe because the node drains goes elsewhere, as
            // the subscribed ones are told to.
            Err(e) if e.refusal() == Some(Refusal::ServerDraining) && self.conn.is_none() => {
                let retry_ms = self.herald.config().retry.as_millis() as u64;
                let window = (self.herald.config().drain_reconnect_window.as_millis() as u64).max(1);
                (protocol::error(id, &e), Some(Close::Drain { retry_ms: retry_ms + fastrand::u64(0..window) }))
            }
            Err(e) => (protocol::error(id, &e), None),
        }
    }

    async fn authenticate(&mut self, token: Option<String>) -> Result<Value, ApiError> {
        let Some(token) = token else { return Ok(json!({"userId": null})) };
        let user = self.herald.auth().verify_token(&token).await?;
        let answer = json!({"userId": &*user.id});
        self.who = Principal::User(Arc::new(user));
        Ok(answer)
    }

    async fn subscribe(&mut self, s: protocol::Subscribe) -> Result<Value, ApiError> {
        if s.channels.is_empty() {
            return Err(ApiError::refuse(Refusal::MissingChannel, "give `channels`, a non-empty array"));
        }
        let channels =
            s.channels.iter().map(|c| self.herald.parse_subscription(c)).collect::<Result<Vec<ChannelName>, _>>()?;
        let names: Vec<&str> = channels.iter().map(ChannelName::as_str).collect();
        hooked::subscribe(&self.herald, &self.client, &self.who, &channels, self.conn.as_ref().map(Connection::id))
            .await?;
        let answer = |conn: &Connection| json!({"connectionId": conn.id(), "channels": names});
        let Some(conn) = &self.conn else {
            if s.filters.len() > MAX_FILTERS {
                return Err(ApiError::refuse(Refusal::InvalidFilter, format!("at most {MAX_FILTERS} filters")));
            }
            let filters = s.filters.iter().map(|f| parse_filter(f)).collect::<Result<Vec<_>, _>>()?;
            let req = StreamRequest {
                principal: self.who.clone(),
                channels: channels.clone(),
                last_event_id: checked_last_event_id(s.last_event_id)?,
                named: false,
                kill: Some(self.kill.clone()),
                filters,
                last: std::mem::take(&mut self.last),
                transport: "websocket",
            };
            let conn = self.herald.connect(req).await.map_err(ApiError::from).inspect_err(|e| {
                count_subscribe_refusal(&self.herald, e.clone().into_response());
            })?;
            let conn = conn.for_websocket();
            tracing::debug!(connection = conn.id(), who = %self.who.describe(), "websocket subscribed");
            let result = answer(&conn);
            self.conn = Some(conn);
            return Ok(result);
        };
        if !s.filters.is_empty() {
            return Err(ApiError::refuse(
                Refusal::InvalidParameter,
                "`filters` belong to the first subscribe of a socket; they hold for every channel it adds",
            ));
        }
        // Each channel joins live where the client left off (`Herald::join_at`), with the
        // checks of a subscription at open.
        let starts = s.join_starts(&channels)?;
        for ch in &channels {
            self.herald.policies().can_subscribe(&self.who, ch)?;
        }
        for (ch, from) in channels.iter().zip(starts) {
            self.herald.join_at(&own_connection(), conn.id(), ch, from).await?;
        }
        Ok(answer(conn))
    }

    async fn unsubscribe(&mut self, channels: Vec<String>) -> Result<Value, ApiError> {
        let Some(conn) = &self.conn else {
            return Err(ApiError::refuse(Refusal::NotSubscribed, "this socket has no subscription yet"));
        };
        let channels =
            channels.iter().map(|c| self.herald.parse_subscription(c)).collect::<Result<Vec<ChannelName>, _>>()?;
        for ch in &channels {
            self.herald.leave(&own_connection(), conn.id(), ch).await?;
        }
        let names: Vec<&str> = channels.iter().map(ChannelName::as_str).collect();
        Ok(json!({"connectionId": conn.id(), "channels": names}))
    }

    async fn publish(&mut self, p: protocol::Publish) -> Result<Value, ApiError> {
        let key = rate_key(&self.who, self.peer);
        let idempotency = p.idempotency_key.as_deref();
        let published =
            match publish::stage_body(&self.herald, &self.who, &key, idempotency, p.event, &self.client).await {
                Ok(staged) => publish::commit(&self.herald, staged).await,
                Err(e) => Err(e),
            };
        let published = published.inspect_err(|e| {
            count_publish_refusal(&self.herald, e.clone().into_response());
        })?;
        serde_json::to_value(published).map_err(|e| ApiError::refuse(Refusal::Internal, e.to_string()))
    }

    async fn presence(&mut self, p: protocol::Presence) -> Result<Value, ApiError> {
        let herald = &self.herald;
        match (p.channel, p.user, p.status) {
            (Some(channel), None, None) => {
                let channel = herald.parse_channel(&channel)?;
                let users = herald.channel_presence(&self.who, &channel).await?;
                Ok(json!({"channel": channel.as_str(), "users": users}))
            }
            (None, Some(user), None) => {
                ChannelName::user(&user).map_err(|_| ApiError::refuse(Refusal::InvalidUser, "not a user id"))?;
                Ok(json!(herald.user_presence(&self.who, &user).await?))
            }
            (None, None, Some(status)) => {
                // Who asks is checked first, as over HTTP; then a name that is no status.
                if !matches!(self.who, Principal::User(_)) {
                    return Err(PresenceError::NotAUser.into());
                }
                let status = PresenceStatus::parse(&status).ok_or(PresenceError::BadStatus)?;
                herald.set_presence_status(&self.who, status).await?;
                Ok(json!({"status": status}))
            }
            _ => Err(ApiError::refuse(Refusal::InvalidCommand, "`presence` takes one of `channel`, `user`, `status`")),
        }
    }
}

/// How a session ends.
enum End {
    /// The server closes, with this code.
    Close(Close),
    /// The client sent a close frame, or its TCP connection ended.
    ByClient,
}

/// An item of the connection as its frame: an event's shared message as it is, a message
/// written for the socket alone.
fn event_frame(item: Item) -> Frame {
    match item {
        Item::WebSocket(message) => protocol::event_message(message),
        Item::Message(msg) => protocol::event(&msg),
    }
}

/// The next item of the connection; never, while the socket has none.
async fn next_item(conn: &mut Option<Connection>) -> Option<Item> {
    match conn {
        Some(conn) => conn.recv_item().await,
        None => std::future::pending().await,
    }
}

/// The next message of the connection; never, while the socket has none.
pub(in crate::http) async fn next(conn: &mut Option<Connection>) -> Option<Message> {
    match conn {
        Some(conn) => conn.recv().await,
        None => std::future::pending().await,
    }
}

/// The close that answers a frame tungstenite refused; `None` when the socket is gone.
pub(in crate::http) fn read_error(e: axum::Error) -> Option<Close> {
    use tungstenite::error::{CapacityError, Error};
    let Ok(e) = e.into_inner().downcast::<Error>() else { return None };
    match *e {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => Some(Close::TooBig),
        Error::Capacity(_) => Some(Close::TooBig),
        Error::Utf8(_) => Some(Close::InvalidUtf8),
        Error::Protocol(_) => Some(Close::Protocol),
        _ => None,
    }
}

/// The session's own rights over its connection: the caller's policy was checked already,
/// and a socket may change its own subscription whoever it is (anonymous included, which
/// owns no connection for `POST /api/connections/..`).
pub(in crate::http) fn own_connection() -> Principal {
    Principal::ApiKey(Arc::new(ApiKey::publisher("websocket", vec!["*".to_owned()])))
}

/// Dead-peer detection for a socket: a ping every `heartbeat_interval`, and a peer from
/// which nothing was heard since the last ping, not even its pong, is gone.
///
/// It keeps the time of the next ping and no timer of its own: the session sleeps on one
/// timer for this and its other deadlines, since every idle socket holds what it sleeps on.
pub(in crate::http) struct Heartbeat {
    beat: Duration,
    next_ping: Instant,
    last_heard: Instant,
    ping_sent: Option<Instant>,
}

impl Heartbeat {
    pub(in crate::http) fn new(beat: Duration) -> Self {
        let now = Instant::now();
        Self { beat, next_ping: now + beat, last_heard: now, ping_sent: None }
    }

    /// When the next ping is due.
    pub(in crate::http) fn due(&self) -> Instant {
        self.next_ping
    }

    /// Something came from the peer.
    pub(in crate::http) fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// At the ping's time: whether the peer answered since the last ping; if so, the ping
    /// about to be sent is the one the next one checks, a `heartbeat_interval` from now.
    pub(in crate::http) fn alive(&mut self) -> bool {
        if self.ping_sent.is_some_and(|sent| self.last_heard < sent) {
            return false;
        }
        let now = Instant::now();
        self.ping_sent = Some(now);
        self.next_ping = now + self.beat;
        true
    }
}

/// A token bucket for one socket's incoming frames.
pub(in crate::http) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(in crate::http) fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, tokens: burst, last: Instant::now() }
    }

    pub(in crate::http) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
