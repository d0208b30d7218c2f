//! One Centrifugo client's socket, in one task: `connect` first (its token says who the
//! client is), then subscriptions, publications pushed as they come, client publishes,
//! presence, Centrifugo's application-level pings (`{}` out, `{}` back) and the close with a
//! disconnect code the SDK understands.
//!
//! The session owns the socket and, once something is subscribed, one [`Connection`] with
//! all its channels (later subscriptions join it live, as `/api/ws` does), so a Centrifugo
//! client counts against Herald's limits as one connection. It keeps the name each channel
//! was subscribed by, to push under that name. A slow reader is cut by the hub's
//! [`KillSwitch`], as for every transport.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message as Frame, WebSocket};
use futures_util::FutureExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::protocol::{self, ClientError, Disconnect, Kind};
use crate::auth::{AuthError, Principal};
use crate::channel::ChannelName;
use crate::cursor::{LastEventId, Position, Resume, single_entry};
use crate::event::SERVER_EVENT_TYPES;
use crate::herald::{Herald, StreamRequest};
use crate::http::auth::{PeerAddr, rate_key};
use crate::http::error::ApiError;
use crate::http::ws::{Bucket, Close, FRAME_BURST, FRAME_RATE, Heartbeat, next, own_connection, read_error};
use crate::hub::connection::CloseReason;
use crate::transport::{Connection, DrainGuard, KillSwitch, Message};

/// Most messages gathered into one frame.
const MAX_BATCH: usize = 64;

/// Longest wait for the closing handshake.
const CLOSE_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// A socket's state.
pub(super) struct Session {
    herald: Herald,
    peer: Option<PeerAddr>,
    /// Who `connect` said the client is; `None` before `connect`.
    who: Option<Principal>,
    /// The client id told in the `connect` reply.
    client: String,
    conn: Option<Connection>,
    kill: KillSwitch,
    /// Herald channel → the name the client subscribed it by.
    subs: HashMap<String, String>,
    frames: Bucket,
    /// What the application's publish hook is told of this client.
    hooks: crate::http::hooked::Client,
    _drain_guard: Option<DrainGuard>,
}

/// How a session ends.
enum End {
    /// A Centrifugo disconnect code.
    Disconnect(Disconnect),
    /// A WebSocket close of the transport's own (a frame too big, not UTF-8, ...).
    Close(Close),
    ByClient,
}

/// The channel of an event, read from Herald's event JSON.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    /// The user of a `join` or `leave`.
    #[serde(borrow, rename = "userId")]
    user_id: Option<Cow<'a, str>>,
}

impl Session {
    pub(super) fn new(
        herald: Herald,
        peer: Option<PeerAddr>,
        hooks: crate::http::hooked::Client,
        drain_guard: Option<DrainGuard>,
    ) -> Self {
        Self {
            herald,
            peer,
            who: None,
            client: crate::ids::new_id(),
            conn: None,
            kill: KillSwitch::default(),
            subs: HashMap::new(),
            frames: Bucket::new(FRAME_RATE, FRAME_BURST),
            hooks,
            _drain_guard: drain_guard,
        }
    }

    pub(super) async fn run(mut self, mut socket: WebSocket) {
        let end = self.serve(&mut socket).await;
        tracing::debug!(client = %self.client, "centrifugo client closed");
        let frame = match end {
            Some(End::Disconnect(d)) => d.frame(),
            Some(End::Close(c)) => c.frame(),
            Some(End::ByClient) => {
                let _ = tokio::time::timeout(CLOSE_WRITE, socket.recv()).await;
                return;
            }
            None => return,
        };
        let handshake = async {
            if socket.send(frame).await.is_ok() {
                while let Some(Ok(_)) = socket.recv().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_WRITE, handshake).await;
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> Option<End> {
        let cfg = self.herald.config();
        let mut heartbeat = Heartbeat::new(cfg.heartbeat_interval);
        // `connect` must come as soon as a request's headers must.
        let deadline = Instant::now() + cfg.header_read_timeout;
        loop {
            tokio::select! {
                msg = next(&mut self.conn) => match msg {
                    Some(msg) => self.push(socket, msg).await?,
                    None => return Some(End::Disconnect(self.closed_by_server())),
                },
                frame = socket.recv() => {
                    let frame = match frame {
                        None => return Some(End::ByClient),
                        Some(Err(e)) => return read_error(e).map(End::Close),
                        Some(Ok(frame)) => frame,
                    };
                    heartbeat.heard();
                    if !self.frames.take() {
                        return Some(End::Disconnect(Disconnect::TooManyRequests));
                    }
                    match frame {
                        Frame::Text(text) => {
                            // Boxed, as `/api/ws` does: idle sockets do not carry its size.
                            let (lines, end) = Box::pin(self.commands(text.as_str())).await;
                            if !lines.is_empty() {
                                self.write(socket, protocol::frame(lines)).await?;
                            }
                            if let Some(end) = end {
                                return Some(End::Disconnect(end));
                            }
                        }
                        Frame::Binary(_) => return Some(End::Disconnect(Disconnect::BadRequest)),
                        Frame::Ping(_) | Frame::Pong(_) => {}
                        Frame::Close(_) => return Some(End::ByClient),
                    }
                }
                () = heartbeat.tick(), if self.who.is_some() => {
                    if !heartbeat.alive() {
                        return Some(End::Disconnect(Disconnect::NoPong));
                    }
                    // A client with no subscription has no hub connection for the drain to
                    // close: it is sent away here, within a heartbeat of the drain's start.
                    if self.conn.is_none() && self.herald.is_draining() {
                        return Some(End::Disconnect(Disconnect::Shutdown));
                    }
                    self.write(socket, protocol::ping()).await?;
                }
                () = tokio::time::sleep_until(deadline), if self.who.is_none() => {
                    return Some(End::Disconnect(Disconnect::Stale));
                }
            }
        }
    }

    /// Pushes `first` and whatever else the connection has ready, in one frame.
    async fn push(&mut self, socket: &mut WebSocket, first: Message) -> Option<()> {
        let mut lines = Vec::new();
        lines.extend(self.publication(&first));
        while lines.len() < MAX_BATCH
            && let Some(Some(msg)) = self.conn.as_mut().and_then(|conn| conn.recv().now_or_never())
        {
            lines.extend(self.publication(&msg));
        }
        if lines.is_empty() {
            return Some(());
        }
        self.write(socket, protocol::frame(lines)).await
    }

    /// The push of a published event: `pub`, or `join`/`leave` for Herald's join and leave
    /// events; `None` for Herald's own notices (`connected`, `subscribed`, presence, ...),
    /// which Centrifugo's protocol has no place for.
    fn publication(&self, msg: &Message) -> Option<String> {
        let kind = msg.event_type.as_str();
        if SERVER_EVENT_TYPES.contains(&kind) || kind == "presence" {
            return None;
        }
        let head: Head<'_> = serde_json::from_slice(&msg.json).ok()?;
        let channel = head.channel?;
        let name = self.subs.get(channel.as_ref())?;
        if matches!(kind, "join" | "leave") {
            return Some(protocol::join_leave(name, kind, head.user_id.as_deref()?));
        }
        let position = self.conn.as_ref().and_then(|conn| {
            let index = conn.channels().iter().position(|c| c.as_str() == channel)?;
            position_of(&msg.id, index, &channel)
        });
        Some(protocol::publication(name, &msg.json, position))
    }

    async fn write(&self, socket: &mut WebSocket, frame: Frame) -> Option<()> {
        tokio::select! {
            sent = socket.send(frame) => sent.ok(),
            () = self.kill.killed() => None,
        }
    }

    /// The disconnect that follows the end of the connection, by the hub's reason.
    fn closed_by_server(&self) -> Disconnect {
        match self.conn.as_ref().and_then(Connection::close_reason) {
            Some(CloseReason::Drain { .. }) => Disconnect::Shutdown,
            Some(CloseReason::TokenExpired) => Disconnect::Expired,
            Some(CloseReason::Disconnect { reconnect: true, .. }) => Disconnect::ForceReconnect,
            Some(CloseReason::Disconnect { reconnect: false, .. }) => Disconnect::ForceNoReconnect,
            Some(CloseReason::Overflow | CloseReason::Timeout) => Disconnect::Slow,
            Some(CloseReason::Resync) | None => Disconnect::InsufficientState,
        }
    }

    /// Runs the commands of one frame: the reply lines, and the disconnect that follows.
    async fn commands(&mut self, text: &str) -> (Vec<String>, Option<Disconnect>) {
        let Some(commands) = protocol::parse(text) else { return (Vec::new(), Some(Disconnect::BadRequest)) };
        let mut lines = Vec::with_capacity(commands.len());
        for (id, kind) in commands {
            let result = match kind {
                Kind::Pong => continue,
                Kind::Connect(c) => match self.connect(c.token).await {
                    Ok(result) => Ok(("connect", result)),
                    Err(Ok(e)) => Err(e),
                    Err(Err(d)) => return (lines, Some(d)),
                },
                // Anything before `connect` is out of order.
                _ if self.who.is_none() => return (lines, Some(Disconnect::BadRequest)),
                Kind::Subscribe(s) => self.subscribe(s).await.map(|r| ("subscribe", r)),
                Kind::Unsubscribe(u) => self.unsubscribe(u.channel).await.map(|r| ("unsubscribe", r)),
                Kind::Publish(p) => self.publish(p).await.map(|r| ("publish", r)),
                Kind::Presence(p) => self.presence(p.channel, false).await.map(|r| ("presence", r)),
                Kind::PresenceStats(p) => self.presence(p.channel, true).await.map(|r| ("presence_stats", r)),
                Kind::Unsupported => Err(ClientError::method_not_found()),
            };
            lines.push(match result {
                Ok((method, result)) => protocol::reply(id, method, result),
                Err(e) => protocol::error(id, e),
            });
        }
        (lines, None)
    }

    /// `connect`: the token's `sub` is the user (an empty token is anonymous, if Herald
    /// allows it); an expired token is `109` (the SDK fetches a new one), a bad one
    /// `3500 invalid token`.
    async fn connect(&mut self, token: String) -> Result<Value, Result<ClientError, Disconnect>> {
        if self.who.is_some() {
            return Err(Err(Disconnect::BadRequest));
        }
        let who = if token.is_empty() {
            let cfg = self.herald.config();
            if cfg.auth_configured() && !cfg.allow_anonymous {
                return Err(Err(Disconnect::InvalidToken));
            }
            Principal::Anonymous
        } else {
            match self.herald.auth().verify_token(&token).await {
                Ok(user) => Principal::User(Arc::new(user)),
                Err(AuthError::Expired) => return Err(Ok(ClientError::token_expired())),
                Err(AuthError::KeysUnavailable(_)) => {
                    let mut e = ClientError::new(100, "internal server error");
                    e.temporary = true;
                    return Err(Ok(e));
                }
                Err(_) => return Err(Err(Disconnect::InvalidToken)),
            }
        };
        tracing::debug!(client = %self.client, who = %who.describe(), "centrifugo client connected");
        self.who = Some(who);
        let ping = self.herald.config().heartbeat_interval.as_secs().max(1);
        Ok(json!({
            "client": self.client,
            "version": concat!("herald ", env!("CARGO_PKG_VERSION")),
            "ping": ping,
            "pong": true,
        }))
    }

    fn who(&self) -> Principal {
        self.who.clone().unwrap_or(Principal::Anonymous)
    }

    fn channel(&self, name: &str) -> Result<ChannelName, ClientError> {
        super::channel(&self.herald, name)
    }

    /// `subscribe`. The first subscription of a socket opens its Herald connection and is
    /// recoverable: with `recover`, it resumes from `offset` as an SSE stream resumes from its
    /// `Last-Event-ID`, and what it missed comes in the reply (`recovered: false` when
    /// Herald's history no longer reaches back). Later ones join the connection live, from
    /// the channel's head.
    async fn subscribe(&mut self, s: protocol::Subscribe) -> Result<Value, ClientError> {
        let channel = self.channel(&s.channel)?;
        if self.subs.contains_key(channel.as_str()) {
            return Err(ClientError::already_subscribed());
        }
        let who = self.who();
        if let Some(conn) = &self.conn {
            self.herald.policies().can_change_subscription(&who, &channel).map_err(ApiError::from)?;
            self.herald.join(&own_connection(), conn.id(), &channel).await.map_err(ApiError::from)?;
            self.subs.insert(channel.as_str().to_owned(), s.channel);
            return Ok(json!({}));
        }
        let resume = s.recover && s.epoch == protocol::EPOCH;
        let req = StreamRequest {
            principal: who,
            channels: vec![channel.clone()],
            last_event_id: resume.then(|| single_entry(channel.as_str(), protocol::position(s.offset))),
            named: false,
            kill: Some(self.kill.clone()),
            filters: Vec::new(),
        };
        let mut conn = self.herald.connect(req).await.map_err(|e| ClientError::from(ApiError::from(e)))?;
        self.subs.insert(channel.as_str().to_owned(), s.channel);
        // What `connect` wrote before the live events: the `connected` notice (its id is the
        // channel's position), a `reset` if history could not cover the gap, and the missed
        // publications.
        let mut top = None;
        let mut reset = false;
        let mut missed = Vec::new();
        while let Some(Some(msg)) = conn.recv().now_or_never() {
            match msg.event_type.as_str() {
                "connected" => top = position_of(&msg.id, 0, channel.as_str()),
                "reset" => reset = true,
                _ if SERVER_EVENT_TYPES.contains(&msg.event_type.as_str()) => {}
                _ => {
                    let position = position_of(&msg.id, 0, channel.as_str());
                    top = top.max(position);
                    let mut publication = String::new();
                    protocol::push_pub(&mut publication, &msg.json, position);
                    missed.extend(serde_json::from_str::<Value>(&publication).ok());
                }
            }
        }
        self.conn = Some(conn);
        let mut reply = json!({"recoverable": true, "epoch": protocol::EPOCH});
        reply["offset"] = protocol::offset(top.unwrap_or_default()).into();
        if resume {
            reply["recovered"] = (!reset).into();
            reply["was_recovering"] = true.into();
            reply["publications"] = missed.into();
        }
        Ok(reply)
    }

    async fn unsubscribe(&mut self, name: String) -> Result<Value, ClientError> {
        let channel = self.channel(&name)?;
        // Centrifugo answers an unsubscribe from a channel it does not follow with success.
        if self.subs.remove(channel.as_str()).is_some()
            && let Some(conn) = &self.conn
        {
            self.herald.leave(&own_connection(), conn.id(), &channel).await.map_err(ApiError::from)?;
        }
        Ok(json!({}))
    }

    /// A client publication: `data` (an object) becomes a Herald event on the channel, of
    /// its own `type`, or `publication` when it has none, through Herald's policies and
    /// rate limits as `POST /api/publish`.
    async fn publish(&mut self, p: protocol::Publish) -> Result<Value, ClientError> {
        let channel = self.channel(&p.channel)?;
        let event = super::event(&channel, p.data)
            .ok_or_else(|| ClientError::new(107, "Herald publishes JSON objects: `data` must be one"))?;
        let who = self.who();
        let key = rate_key(&who, self.peer);
        crate::http::publish::publish_body(&self.herald, &who, &key, None, event, &self.hooks).await?;
        Ok(json!({}))
    }

    async fn presence(&mut self, name: String, stats: bool) -> Result<Value, ClientError> {
        let channel = self.channel(&name)?;
        super::presence(&self.herald, &self.who(), &channel, stats).await
    }
}

/// The position in `channel` (at `index` of the connection's channels) that a message's
/// resume id names.
fn position_of(id: &str, index: usize, channel: &str) -> Option<Position> {
    match LastEventId::parse(id)?.resume_for(index, channel) {
        Resume::From(pos) => Some(pos),
        Resume::Fresh | Resume::Unknown => None,
    }
}
