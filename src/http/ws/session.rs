//! One WebSocket's life, in one task: the connection's events out, the client's commands
//! in, ping/pong heartbeats, and the close with its code.
//!
//! The session owns the socket and, once something is subscribed, one [`Connection`]: the
//! same queue, cursor, filters, joins and leaves as an SSE stream. A slow reader is cut the
//! way an HTTP/1.1 SSE reader is: the hub closes the connection and fires its
//! [`KillSwitch`], which ends a write that waits on the socket. Commands run one at a time;
//! a client that sends too many frames (commands or pings) is closed, and nothing it sends
//! reaches another client's connection except through the hub's own checks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::response::IntoResponse;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

use super::protocol::{self, Close, Command, Kind};
use super::socket::{In, PING, Socket, UpgradedIo, pong};
use crate::auth::{ApiKey, Principal};
use crate::catalogue::PresenceStatus;
use crate::channel::ChannelName;
use crate::herald::{Herald, LastEvents, PresenceError, StreamRequest};
use crate::http::auth::rate_key_of;
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

/// Bytes of frames one write gathers, about: the frame that crosses it is the write's last.
/// A socket that stops reading holds one write, so this (not [`MAX_BATCH`] frames of up to
/// 64 KiB, each a copy on a socket of several channels) is what a replay it never reads
/// costs the node.
const BATCH_BYTES: usize = 64 * 1024;

/// Longest wait for the closing handshake: a peer that does not read or answer gets no more.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// A socket's state.
pub(super) struct Session {
    herald: Herald,
    who: Principal,
    /// The client as the backend hooks are told about it.
    client: hooked::Client,
    conn: Option<Connection>,
    kill: KillSwitch,
    frames: Bucket,
    /// Until the socket's stream opens; boxed, so that an open socket holds none of it.
    opening: Option<Box<Opening>>,
    /// Keeps the server's drain waiting until the socket is closed (`None` when the router
    /// is served by something other than Herald's server).
    _drain_guard: Option<DrainGuard>,
}

/// What a socket opened without a stream holds until its first `subscribe` opens one.
struct Opening {
    /// The socket came without a credential and nothing else was asked yet: an `auth`
    /// command may still bring one.
    may_authenticate: bool,
    /// The open query's `last`, for the stream the first `subscribe` opens.
    last: LastEvents,
    /// A socket must subscribe (and say who it is) as soon as a request's headers must
    /// arrive: an idle socket holds no hub connection, so no limit counts it.
    deadline: Instant,
}

impl Session {
    /// A session on `conn`, or, without one, waiting for the first `subscribe` to open a
    /// stream that starts with the `last` events of the open query.
    pub(super) fn new(
        herald: Herald,
        who: Principal,
        client: hooked::Client,
        conn: Option<Connection>,
        kill: KillSwitch,
        may_authenticate: bool,
        last: LastEvents,
    ) -> Self {
        let frames = Bucket::new();
        let opening = conn.is_none().then(|| {
            let deadline = Instant::now() + herald.config().header_read_timeout;
            Box::new(Opening { may_authenticate, last, deadline })
        });
        Self { herald, who, client, conn, kill, frames, opening, _drain_guard: None }
    }

    pub(super) fn holding(mut self, guard: Option<DrainGuard>) -> Self {
        self._drain_guard = guard;
        self
    }

    /// The socket's task: the session serving `socket`, then the socket's close.
    pub(super) fn serving(self, socket: Socket<UpgradedIo>) -> SessionTask {
        self.herald.metrics().websocket.opened();
        let cfg = self.herald.config();
        let heartbeat = Heartbeat::new(cfg.heartbeat_interval);
        let timer = Box::pin(tokio::time::sleep_until(self.wake_at(&heartbeat)));
        SessionTask(Phase::Serving(Serving { session: Some(self), socket, heartbeat, timer, step: Step::Waiting }))
    }

    /// Ends the socket: the close frame and its handshake, and the count of the close.
    async fn close(self, mut socket: Socket<UpgradedIo>, end: Option<End>) {
        let label = match end {
            Some(End::Close(close)) => {
                tracing::debug!(connection = self.conn.as_ref().map(Connection::id), ?close, "websocket closed");
                let _ = tokio::time::timeout(CLOSE_WRITE, socket.close_handshake(close.framed())).await;
                close.code().to_string()
            }
            // The client's close is answered with its code.
            Some(End::ByClient(code)) => {
                if let Some(code) = code {
                    let _ = tokio::time::timeout(CLOSE_WRITE, socket.answer_close(code)).await;
                }
                "client".to_owned()
            }
            None => "none".to_owned(),
        };
        self.herald.metrics().websocket.closed(&label);
    }

    /// When the session's timer must fire next: the ping's time, or the subscribe deadline
    /// while the socket has no subscription.
    fn wake_at(&self, heartbeat: &Heartbeat) -> Instant {
        match self.subscribe_deadline() {
            Some(deadline) => heartbeat.due().min(deadline),
            None => heartbeat.due(),
        }
    }

    /// When the socket must have subscribed by, while it has not.
    fn subscribe_deadline(&self) -> Option<Instant> {
        self.opening.as_ref().filter(|_| self.conn.is_none()).map(|o| o.deadline)
    }

    /// Runs one command, owning the session while it runs (the socket's task holds the
    /// command's future, boxed, in the session's place).
    async fn command_owned(mut self, text: String) -> (Self, Bytes, Option<Close>) {
        let (answer, close) = self.command(&text).await;
        (self, answer, close)
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
    async fn command(&mut self, text: &str) -> (Bytes, Option<Close>) {
        let Command { id, kind } = match protocol::parse(text) {
            Ok(cmd) => cmd,
            Err(bad) => return (protocol::error(bad.id, &bad.error), None),
        };
        let may_authenticate = self.opening.as_mut().is_some_and(|o| std::mem::take(&mut o.may_authenticate));
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
                last: self.opening.as_mut().map(|o| std::mem::take(&mut o.last)).unwrap_or_default(),
                transport: "websocket",
            };
            let conn = self.herald.connect(req).await.map_err(ApiError::from).inspect_err(|e| {
                count_subscribe_refusal(&self.herald, e.clone().into_response());
            })?;
            let conn = conn.for_websocket();
            tracing::debug!(connection = conn.id(), who = %self.who.describe(), "websocket subscribed");
            let result = answer(&conn);
            self.conn = Some(conn);
            self.opening = None;
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
        self.herald.charge_socket_join(&self.who, &channels)?;
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
        let key = rate_key_of(&self.who, self.client.ip());
        let idempotency = p.idempotency_key.as_deref();
        let published = publish::publish_body(&self.herald, &self.who, &key, idempotency, p.event, &self.client)
            .await
            .inspect_err(|e| {
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
    /// The client sent a close frame (`Some`, with the close to answer it with: its code,
    /// if it gave one), or its TCP connection ended (`None`).
    ByClient(Option<Option<u16>>),
}

/// A socket's task: the session, its socket, the heartbeat and the one timer, and what the
/// socket is doing. A future of its own rather than an `async fn`: it is what an idle socket
/// holds for hours, and a generated future kept its arguments twice and room for its largest
/// wait beside them (measured in docs/benchmarks.md, issue 19). A command's future and the
/// closing handshake are boxed for the time they run.
pub(super) struct SessionTask(Phase);

#[allow(clippy::large_enum_variant, reason = "the serving state is the task; boxed it would cost a second allocation")]
enum Phase {
    Serving(Serving),
    /// The close frame and its handshake.
    Closing(Pin<Box<dyn Future<Output = ()> + Send>>),
    Done,
}

struct Serving {
    /// `None` while a command runs: the command's future owns it.
    session: Option<Session>,
    socket: Socket<UpgradedIo>,
    heartbeat: Heartbeat,
    /// One timer for the next ping and the subscribe deadline.
    timer: Pin<Box<Sleep>>,
    step: Step,
}

/// What a serving socket is doing. Commands run one at a time, and a write is finished
/// before anything else is read, as in a loop that awaits each.
enum Step {
    /// Waiting for the client's next frame, the timer or the connection's next event.
    Waiting,
    /// A command runs; its answer is written next.
    Command(Running),
    Writing(Write),
}

/// A command running, with the session it owns: the session, the answer and the close
/// that follows, if any, when it is done.
type Running = Pin<Box<dyn Future<Output = (Session, Bytes, Option<Close>)> + Send>>;

/// One write: a frame and, for an event, the events the connection has ready behind it
/// (up to [`MAX_BATCH`] frames and about [`BATCH_BYTES`]), queued on the socket and written
/// together; then the close that follows, if any.
struct Write {
    /// The frame the socket queues first.
    next: Option<Bytes>,
    /// Events the connection may still add to this write.
    more: u32,
    /// Frames queued.
    n: u32,
    /// Taken once the write waits on the socket: the hub may give up on this reader
    /// meanwhile (a notification waiter must not move, so it is boxed, and only then).
    killed: Option<Pin<Box<OwnedNotified>>>,
    /// Boxed: rare, and every socket's task has room for it.
    then: Option<Box<Close>>,
    /// The connection had nothing more when the frames were gathered: its waker is
    /// registered, and asking again in the same poll would find nothing new.
    drained: bool,
}

impl Step {
    /// Writing `frame`, then closing with `then`, if any.
    fn write(frame: Bytes, then: Option<Close>) -> Self {
        Self::Writing(Write {
            next: Some(frame),
            more: 0,
            n: 0,
            killed: None,
            then: then.map(Box::new),
            drained: false,
        })
    }

    /// Writing the event `first` and whatever else the connection has ready.
    fn events(first: Bytes) -> Self {
        let more = MAX_BATCH as u32 - 1;
        Self::Writing(Write { next: Some(first), more, n: 0, killed: None, then: None, drained: false })
    }
}

impl Write {
    /// Queues the frames and writes them: `false` when the socket failed, or when the hub
    /// tore the connection down (its reader is too slow) while the write waited.
    fn poll<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &mut self,
        socket: &mut Socket<S>,
        conn: Option<&mut Connection>,
        kill: &KillSwitch,
        cx: &mut Context<'_>,
    ) -> Poll<bool> {
        // Only a queue found empty in this very poll still holds this task's waker: one
        // found empty before a write that waited may have woken the task since.
        self.drained = false;
        if let Some(first) = self.next.take() {
            if self.more > 0 {
                socket.reserve(1 + self.more as usize);
            }
            let mut bytes = first.len();
            socket.queue(first);
            self.n += 1;
            // Not waited for: what is not ready now waits for the next write.
            if let Some(conn) = conn {
                while self.more > 0 && bytes < BATCH_BYTES {
                    let item = match conn.poll_item(cx) {
                        Poll::Ready(Some(item)) => item,
                        Poll::Ready(None) => break,
                        Poll::Pending => {
                            self.drained = true;
                            break;
                        }
                    };
                    let frame = event_frame(item);
                    bytes += frame.len();
                    socket.queue(frame);
                    self.more -= 1;
                    self.n += 1;
                }
            }
            self.more = 0;
        }
        match socket.poll_write(cx) {
            Poll::Ready(written) => Poll::Ready(written.is_ok()),
            Poll::Pending => {
                let killed = self.killed.get_or_insert_with(|| Box::pin(kill.killed_owned()));
                killed.as_mut().poll(cx).map(|()| false)
            }
        }
    }
}

impl Future for SessionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.0 {
                Phase::Serving(serving) => {
                    let end = ready!(serving.poll_serve(cx));
                    let Phase::Serving(Serving { session, socket, .. }) = std::mem::replace(&mut this.0, Phase::Done)
                    else {
                        return Poll::Ready(());
                    };
                    // Always there: a command gives the session back before the socket ends.
                    let Some(session) = session else { return Poll::Ready(()) };
                    this.0 = Phase::Closing(Box::pin(session.close(socket, end)));
                }
                Phase::Closing(close) => {
                    ready!(close.as_mut().poll(cx));
                    this.0 = Phase::Done;
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

impl Serving {
    /// Serves the socket until it ends; `None` when the server tore it down (a slow reader)
    /// or could not write to it, so that no close frame can be written.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Option<End>> {
        // What answered `Pending` in this poll has this task's waker and wakes it when it is
        // ready: after a write, only what has not said so yet is asked again (an event
        // delivered alone pays one read poll, one timer poll and one queue poll, not two).
        let (mut read_waits, mut timer_waits, mut conn_waits) = (false, false, false);
        loop {
            if let Step::Command(command) = &mut self.step {
                let (session, answer, close) = ready!(command.as_mut().poll(cx));
                self.session = Some(session);
                self.step = Step::write(answer, close);
            }
            let Some(session) = self.session.as_mut() else { return Poll::Ready(None) };
            match &mut self.step {
                Step::Writing(write) => {
                    if !ready!(write.poll(&mut self.socket, session.conn.as_mut(), &session.kill, cx)) {
                        return Poll::Ready(None);
                    }
                    session.herald.metrics().websocket.frames_out(u64::from(write.n));
                    conn_waits = write.drained;
                    let then = write.then.take();
                    self.step = Step::Waiting;
                    if let Some(close) = then {
                        return Poll::Ready(Some(End::Close(*close)));
                    }
                }
                Step::Command(_) => {}
                // The client's frames first, then the timer, then the connection: a busy
                // channel must not keep a pong or a close from being read.
                Step::Waiting => {
                    if !read_waits {
                        let Poll::Ready(frame) = self.socket.poll_next(cx) else {
                            read_waits = true;
                            continue;
                        };
                        let frame = match frame {
                            None => return Poll::Ready(Some(End::ByClient(None))),
                            Some(Err(close)) => return Poll::Ready(Some(End::Close(close))),
                            Some(Ok(frame)) => frame,
                        };
                        self.heartbeat.heard();
                        if matches!(frame, In::Text(_) | In::Binary(_)) {
                            session.herald.metrics().websocket.frame_in();
                        }
                        if !session.frames.take() {
                            let e = ApiError::refuse(Refusal::RateLimited, "too many messages");
                            self.step = Step::write(protocol::error(None, &e), Some(Close::Policy("rate_limited")));
                            continue;
                        }
                        match frame {
                            In::Text(text) => {
                                if let Some(session) = self.session.take() {
                                    self.step = Step::Command(Box::pin(session.command_owned(text)));
                                }
                            }
                            In::Binary(_) => {
                                let e =
                                    ApiError::refuse(Refusal::BinaryNotSupported, "messages are JSON in text frames");
                                self.step = Step::write(protocol::error(None, &e), Some(Close::Binary));
                            }
                            In::Ping(payload) => self.step = Step::write(pong(&payload), None),
                            In::Pong => {}
                            In::Close(code) => return Poll::Ready(Some(End::ByClient(Some(code)))),
                        }
                        continue;
                    }
                    if !timer_waits {
                        if self.timer.as_mut().poll(cx).is_pending() {
                            timer_waits = true;
                            continue;
                        }
                        let now = Instant::now();
                        if session.subscribe_deadline().is_some_and(|deadline| now >= deadline) {
                            let e = ApiError::refuse(
                                Refusal::SubscribeTimeout,
                                "a socket must subscribe within `header_read_timeout` of opening",
                            );
                            let close = Close::Policy("subscribe_timeout");
                            self.step = Step::write(protocol::error(None, &e), Some(close));
                            continue;
                        }
                        // Else the ping's time, or the deadline passed with a subscription
                        // open: the ping's time is next.
                        if now >= self.heartbeat.due() {
                            if !self.heartbeat.alive() {
                                return Poll::Ready(Some(End::Close(Close::TryAgain("client_timeout"))));
                            }
                            self.step = Step::write(PING, None);
                        }
                        self.timer.as_mut().reset(session.wake_at(&self.heartbeat));
                        continue;
                    }
                    let Some(conn) = session.conn.as_mut() else { return Poll::Pending };
                    if conn_waits {
                        return Poll::Pending;
                    }
                    match ready!(conn.poll_item(cx)) {
                        Some(item) => self.step = Step::events(event_frame(item)),
                        None => return Poll::Ready(Some(End::Close(session.closed_by_server()))),
                    }
                }
            }
        }
    }
}

/// An item of the connection as its frame: an event's shared frame as it is, a frame
/// written for the socket alone.
fn event_frame(item: Item) -> Bytes {
    match item {
        Item::WebSocket(frame) => frame,
        Item::Message(msg) => protocol::event(&msg),
    }
}

/// The next message of the connection; never, while the socket has none.
pub(in crate::http) async fn next(conn: &mut Option<Connection>) -> Option<Message> {
    match conn {
        Some(conn) => conn.recv().await,
        None => std::future::pending().await,
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

/// A token bucket for one socket's incoming frames: [`FRAME_BURST`] at once, [`FRAME_RATE`]
/// a second past that (constants, not fields: every idle socket holds its bucket).
pub(in crate::http) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(in crate::http) fn new() -> Self {
        Self { tokens: FRAME_BURST, last: Instant::now() }
    }

    pub(in crate::http) fn take(&mut self) -> bool {
        self.take_n(1)
    }

    /// Takes `n` tokens at once, or none: `false` when fewer are left.
    pub(in crate::http) fn take_n(&mut self, n: usize) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * FRAME_RATE).min(FRAME_BURST);
        self.last = now;
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::herald::{LastEvents, StreamRequest};

    #[tokio::test]
    async fn a_write_gathers_about_64_kib_of_a_replay_not_64_frames() {
        let herald = Herald::new(crate::Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let channels: Vec<ChannelName> = ["channel:a", "channel:b"]
            .iter()
            .map(|c| herald.parse_channel(c).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let pad = "x".repeat(30_000);
        for n in 0..50u64 {
            let event = crate::Event::new("note").with("n", n).with("pad", pad.as_str());
            herald.publish(vec![channels[0].clone()], event).await.unwrap_or_else(|e| panic!("{e}"));
        }
        // Two channels: each event's frame is written for this socket alone, a copy.
        let mut req = StreamRequest::new(crate::Principal::Anonymous, channels);
        req.last = LastEvents { all: Some(50), per_channel: Vec::new() };
        let mut conn = herald.connect(req).await.unwrap_or_else(|e| panic!("{e}")).for_websocket();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Some(first)) = conn.poll_item(&mut cx) else { panic!("no connected notice") };
        // A client that reads nothing: the socket takes a few KiB, then waits.
        let (io, _client) = tokio::io::duplex(4096);
        let mut socket = Socket::new(io, 1 << 20);
        let Step::Writing(mut write) = Step::events(event_frame(first)) else { panic!("not a write") };
        assert!(write.poll(&mut socket, Some(&mut conn), &KillSwitch::default(), &mut cx).is_pending());
        // The notice, then 30 KB frames up to the one that crosses 64 KiB.
        assert_eq!(write.n, 4, "frames gathered into the write");
    }
}
