//! One Centrifugo client's socket, in one task: `connect` first (its token, or the connect
//! hook, says who the client is), then subscriptions (the subscribe hook asked as for a
//! stream's), publications pushed as they come, client publishes, presence, RPCs (answered by
//! the application's RPC hook), Centrifugo's application-level pings (`{}` out, `{}` back)
//! and the close with a disconnect code the SDK understands.
//!
//! The same session runs over each [`Wire`]: the WebSocket (JSON, or Protobuf translated
//! to and from JSON at the wire, `protobuf.rs`), or Centrifugo's emulation (an HTTP stream
//! down, `POST /emulation` requests up; `emulation.rs`).
//!
//! The session owns the socket and, once something is subscribed, one [`Connection`] with
//! all its channels (later subscriptions join it live, as `/api/ws` does), so a Centrifugo
//! client counts against Herald's limits as one connection. It keeps the name each channel
//! was subscribed by, to push under that name. A slow reader is cut by the hub's
//! [`KillSwitch`], as for every transport.
//!
//! Tokens: the connection token's `exp` is the Herald connection's, moved by `refresh`
//! (the hub ends it, as it ends every stream); a subscription token's `exp` is kept here,
//! per channel, and ends that subscription alone (`2501`) unless `sub_refresh` moves it.
//! The application's live joins and leaves of the connection reach the SDK as server-side
//! `subscribe` and `unsubscribe` pushes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::protocol::{self, ClientError, Disconnect, Kind, Unsubscribe};
use crate::auth::{AuthError, Principal, UserIdentity, unix_ms};
use crate::channel::ChannelName;
use crate::cursor::{LastEventId, Position, Resume, single_entry};
use crate::engine::JoinFrom;
use crate::event::SERVER_EVENT_TYPES;
use crate::herald::{Admission, Herald, LastEvents, StreamRequest, SubscribeError, new_connection_id};
use crate::hooks::RpcError;
use crate::http::auth::{PeerAddr, rate_key};
use crate::http::error::ApiError;
use crate::http::hooked;
use crate::http::publish;
use crate::http::ws::{Bucket, Close, Heartbeat, In, Socket, UpgradedIo, next, own_connection, pong};
use crate::hub::Place;
use crate::transport::{Connection, DrainGuard, KillSwitch, Message};

/// Most messages gathered into one frame.
const MAX_BATCH: usize = 64;

/// Reply lines gathered past this many bytes are written before the frame's next command
/// runs: a frame of many commands (each a history page of up to `history_size` events)
/// holds one page at a time, and a client that does not read holds up its own commands.
const WRITE_REPLIES_PAST: usize = 64 * 1024;

/// Longest wait for the closing handshake.
const CLOSE_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest wait for a later subscription's join to reach the connection's reader (the
/// connection is this socket's, on this node: the join is queued before `join_at` returns).
const JOIN_NOTICE: std::time::Duration = std::time::Duration::from_secs(5);

/// A socket's state.
pub(super) struct Session {
    herald: Herald,
    peer: Option<PeerAddr>,
    /// Who `connect` said the client is; `None` before `connect`.
    who: Option<Principal>,
    /// The client id told in the `connect` reply: the id of the Herald connection the
    /// socket opens, so that the application's live joins and leaves name it.
    client: Arc<str>,
    conn: Option<Connection>,
    /// From `connect` until its connection opens (and takes it over): the socket's place in
    /// the node's connection limits, so that a client that connects and never subscribes is
    /// counted as one that does.
    place: Option<Place>,
    kill: KillSwitch,
    /// Herald channel → the name the client subscribed it by (or the server did, under
    /// [`protocol::centrifugo_channel`]).
    subs: HashMap<String, String>,
    /// Herald channel → when its subscription token's `exp` (plus `auth.leeway`) passes, in
    /// ms since the epoch: the subscriptions made with a token that expires.
    sub_deadlines: HashMap<String, u64>,
    /// The join and leave notices (`subscribed`, `unsubscribed` and the channel) that this
    /// session's own commands will bring back, to tell them from the application's.
    own_notices: Vec<(&'static str, String)>,
    /// Messages of the connection read while a later subscription waited for its join,
    /// pushed after the command's reply.
    held: Vec<Message>,
    /// The connection token's `info`, for the Herald connection the socket opens.
    info: Option<Arc<Value>>,
    frames: Bucket,
    /// What the application's hooks (connect, subscribe, publish, rpc) are told of this client.
    hooks: hooked::Client,
    _drain_guard: Option<DrainGuard>,
}

/// How a session ends.
pub(super) enum End {
    /// A Centrifugo disconnect code.
    Disconnect(Disconnect),
    /// A WebSocket close of the transport's own (a frame too big, not UTF-8, ...).
    Close(Close),
    /// The client's close (`Some`, with its code, if it gave one), or the end of its TCP
    /// connection (`None`).
    ByClient(Option<Option<u16>>),
}

/// What a session writes: reply and push lines, Centrifugo's ping (`{}`), or a WebSocket
/// pong.
pub(super) enum Out<'a> {
    Lines(&'a [String]),
    Ping,
    Pong(&'a [u8]),
}

/// What a session reads its client's commands from and writes to: the WebSocket, or
/// Centrifugo's emulation ([`super::emulation`]: an HTTP stream down, the emulation
/// endpoint's requests up). The session is the same over either.
pub(super) trait Wire: Send {
    /// What the client sent next; `None` once it is gone.
    fn recv(&mut self) -> impl Future<Output = Option<Result<In, Close>>> + Send;
    /// Writes `out` as one frame of this wire.
    fn send(&mut self, out: Out<'_>) -> impl Future<Output = std::io::Result<()>> + Send;
    /// What this wire adds to the `connect` reply.
    fn tell_at_connect(&self, _reply: &mut Value) {}
    /// Ends the session on this wire, as `end` says.
    fn finish(self, end: Option<End>) -> impl Future<Output = ()> + Send;
}

impl Wire for Socket<UpgradedIo> {
    async fn recv(&mut self) -> Option<Result<In, Close>> {
        Socket::recv(self).await
    }

    async fn send(&mut self, out: Out<'_>) -> std::io::Result<()> {
        let frame = match out {
            Out::Lines(lines) => protocol::frame(lines),
            Out::Ping => protocol::PING,
            Out::Pong(payload) => pong(payload),
        };
        Socket::send(self, frame).await
    }

    /// The disconnect or close frame and the closing handshake.
    async fn finish(mut self, end: Option<End>) {
        let frame = match end {
            Some(End::Disconnect(d)) => d.frame(),
            Some(End::Close(c)) => c.framed(),
            Some(End::ByClient(Some(code))) => {
                let _ = tokio::time::timeout(CLOSE_WRITE, self.answer_close(code)).await;
                return;
            }
            Some(End::ByClient(None)) | None => return,
        };
        let _ = tokio::time::timeout(CLOSE_WRITE, self.close_handshake(frame)).await;
    }
}

/// Why a command failed: an error reply, or the end of the connection.
enum Fail {
    Error(ClientError),
    Disconnect(Disconnect),
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        Self::Error(e)
    }
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        Self::Error(e.into())
    }
}

impl From<Disconnect> for Fail {
    fn from(d: Disconnect) -> Self {
        Self::Disconnect(d)
    }
}

/// The answer to a socket refused a place in the node's connection limits (counted as a
/// refused stream is): past the node's `3001 shutdown` (the SDK comes back, maybe to another
/// node), past the user's `3504 connection limit` (Centrifugo's own), a banned user `3503
/// force disconnect` (what a disconnect with a ban cuts a client with), and the engine's
/// failure a temporary `100`.
fn place_refused(herald: &Herald, e: SubscribeError) -> Fail {
    let disconnect = match e {
        SubscribeError::AtCapacity => Some(Disconnect::Shutdown),
        SubscribeError::UserLimit { .. } => Some(Disconnect::ConnectionLimit),
        SubscribeError::Banned => Some(Disconnect::ForceNoReconnect),
        _ => None,
    };
    let e = ApiError::from(e);
    super::count_refusal(herald, &e);
    disconnect.map_or_else(|| ClientError::from(e).into(), Fail::from)
}

/// A refused first subscription, which would have opened the socket's connection: counted
/// as a refused stream is, and answered with Centrifugo's error for it.
fn open_refused(herald: &Herald, e: SubscribeError) -> Fail {
    let e = ApiError::from(e);
    super::count_refusal(herald, &e);
    e.into()
}

/// The claims of a Centrifugo token beyond Herald's own.
#[derive(Default, Deserialize)]
struct Claims {
    /// A connection token's server-side subscriptions: channels the client follows from
    /// `connect` on.
    #[serde(default)]
    channels: Vec<String>,
    /// A subscription token's channel. A token with one is not a connection token.
    channel: Option<String>,
    /// A connection token's `info`: the connection's `join` and `leave` carry it.
    info: Option<Value>,
}

/// The channel of an event, read from Herald's event JSON.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    /// The user of a `join` or `leave`.
    #[serde(borrow, rename = "userId")]
    user_id: Option<Cow<'a, str>>,
    /// The connection's `info`, on a `join` or `leave`.
    #[serde(borrow)]
    info: Option<&'a serde_json::value::RawValue>,
}

impl Session {
    pub(super) fn new(
        herald: Herald,
        peer: Option<PeerAddr>,
        hooks: hooked::Client,
        drain_guard: Option<DrainGuard>,
    ) -> Self {
        Self {
            herald,
            peer,
            who: None,
            client: new_connection_id(),
            conn: None,
            place: None,
            kill: KillSwitch::default(),
            subs: HashMap::new(),
            sub_deadlines: HashMap::new(),
            own_notices: Vec::new(),
            held: Vec::new(),
            info: None,
            frames: Bucket::new(),
            hooks,
            _drain_guard: drain_guard,
        }
    }

    /// The session ends when `kill` trips, beside the hub's own switch: a stalled HTTP/1.1
    /// reader of an emulated session's stream.
    pub(super) fn killed_by(mut self, kill: Option<KillSwitch>) -> Self {
        if let Some(kill) = kill {
            self.kill = kill;
        }
        self
    }

    pub(super) async fn run<W: Wire>(mut self, mut socket: W) {
        let end = self.serve(&mut socket).await;
        tracing::debug!(client = %self.client, "centrifugo client closed");
        // Boxed, as `/api/ws` does: the closing handshake's futures take no room in an idle
        // socket's task.
        Box::pin(socket.finish(end)).await;
    }

    async fn serve<W: Wire>(&mut self, socket: &mut W) -> Option<End> {
        let cfg = self.herald.config();
        let mut heartbeat = Heartbeat::new(cfg.heartbeat_interval);
        // `connect` must come as soon as a request's headers must.
        let deadline = Instant::now() + cfg.header_read_timeout;
        // The heartbeat's timer, pinned in this future (see [`Heartbeat`]).
        let ping = tokio::time::sleep_until(heartbeat.due());
        tokio::pin!(ping);
        loop {
            let sub_deadline = self.next_sub_deadline();
            let expiry = self.expiry_without_connection();
            tokio::select! {
                msg = next(&mut self.conn) => match msg {
                    Some(msg) => self.push(socket, msg).await?,
                    None => return Some(End::Disconnect(self.closed_by_server())),
                },
                frame = socket.recv() => {
                    let frame = match frame {
                        None => return Some(End::ByClient(None)),
                        Some(Err(close)) => return Some(End::Close(close)),
                        Some(Ok(frame)) => frame,
                    };
                    heartbeat.heard();
                    if !self.frames.take() {
                        return Some(End::Disconnect(Disconnect::TooManyRequests));
                    }
                    match frame {
                        In::Text(text) => {
                            // Boxed, as `/api/ws` does: idle sockets do not carry its size.
                            let (lines, end) = Box::pin(self.commands(socket, &text)).await?;
                            if !lines.is_empty() {
                                self.write(socket, Out::Lines(&lines)).await?;
                            }
                            let held: Vec<String> =
                                std::mem::take(&mut self.held).iter().filter_map(|m| self.pushed(m)).collect();
                            if !held.is_empty() {
                                self.write(socket, Out::Lines(&held)).await?;
                            }
                            if let Some(end) = end {
                                return Some(End::Disconnect(end));
                            }
                        }
                        In::Binary(_) => return Some(End::Disconnect(Disconnect::BadRequest)),
                        In::Ping(payload) => self.write(socket, Out::Pong(&payload)).await?,
                        In::Pong => {}
                        In::Close(code) => return Some(End::ByClient(Some(code))),
                    }
                }
                () = &mut ping, if self.who.is_some() => {
                    if !heartbeat.alive() {
                        return Some(End::Disconnect(Disconnect::NoPong));
                    }
                    ping.as_mut().reset(heartbeat.due());
                    // A client with no subscription has no hub connection for the drain to
                    // close: it is sent away here, within a heartbeat of the drain's start.
                    if self.conn.is_none() && self.herald.is_draining() {
                        return Some(End::Disconnect(Disconnect::Shutdown));
                    }
                    self.write(socket, Out::Ping).await?;
                }
                () = tokio::time::sleep_until(deadline), if self.who.is_none() => {
                    return Some(End::Disconnect(Disconnect::Stale));
                }
                () = super::sleep_until_ms(expiry), if expiry < u64::MAX => {
                    return Some(End::Disconnect(Disconnect::Expired));
                }
                reason = super::place_cut(&self.place) => {
                    return Some(End::Disconnect(super::disconnect_for(Some(reason))));
                }
                () = super::sleep_until_ms(sub_deadline), if sub_deadline < u64::MAX => {
                    let lines = self.expire_subscriptions().await;
                    if !lines.is_empty() {
                        self.write(socket, Out::Lines(&lines)).await?;
                    }
                }
            }
        }
    }

    /// Pushes `first` and whatever else the connection has ready, in one frame.
    async fn push<W: Wire>(&mut self, socket: &mut W, first: Message) -> Option<()> {
        let mut lines = Vec::new();
        lines.extend(self.pushed(&first));
        while lines.len() < MAX_BATCH
            && let Some(Some(msg)) = self.conn.as_mut().and_then(|conn| conn.recv().now_or_never())
        {
            lines.extend(self.pushed(&msg));
        }
        if lines.is_empty() {
            return Some(());
        }
        self.write(socket, Out::Lines(&lines)).await
    }

    /// What a message of the connection becomes: a publication, or the server-side
    /// subscribe or unsubscribe of a live join or leave the application made.
    fn pushed(&mut self, msg: &Message) -> Option<String> {
        match msg.event_type.as_str() {
            "subscribed" => self.server_side("subscribed", msg),
            "unsubscribed" => self.server_side("unsubscribed", msg),
            _ => self.publication(msg),
        }
    }

    /// A live join (`subscribed`) or leave (`unsubscribed`) of the connection: pushed when
    /// the application made it, not when it answers one of this client's commands.
    fn server_side(&mut self, kind: &'static str, msg: &Message) -> Option<String> {
        let head: Head<'_> = serde_json::from_slice(&msg.json).ok()?;
        let channel = head.channel?.into_owned();
        if let Some(i) = self.own_notices.iter().position(|(k, c)| *k == kind && *c == channel) {
            self.own_notices.swap_remove(i);
            return None;
        }
        if kind == "subscribed" {
            if self.subs.contains_key(&channel) {
                return None;
            }
            let name = protocol::centrifugo_channel(&channel);
            self.subs.insert(channel, name.clone());
            return Some(protocol::subscribe_push(&name));
        }
        self.sub_deadlines.remove(&channel);
        let name = self.subs.remove(&channel)?;
        Some(protocol::unsubscribe_push(&name, Unsubscribe::Server))
    }

    /// The push of a published event: `pub`, or `join`/`leave` for Herald's join and leave
    /// events; `None` for Herald's own notices (`connected`, presence, ...), which
    /// Centrifugo's protocol has no place for.
    fn publication(&self, msg: &Message) -> Option<String> {
        let kind = msg.event_type.as_str();
        if SERVER_EVENT_TYPES.contains(&kind) || kind == "presence" {
            return None;
        }
        let head: Head<'_> = serde_json::from_slice(&msg.json).ok()?;
        let channel = head.channel?;
        let name = self.subs.get(channel.as_ref())?;
        if matches!(kind, "join" | "leave") {
            return Some(protocol::join_leave(name, kind, head.user_id.as_deref()?, head.info.map(|i| i.get())));
        }
        let position = self.conn.as_ref().and_then(|conn| {
            let index = conn.channels().iter().position(|c| c.as_str() == channel)?;
            position_of(&msg.id, index, &channel)
        });
        Some(protocol::publication(name, &msg.json, position))
    }

    async fn write<W: Wire>(&self, socket: &mut W, out: Out<'_>) -> Option<()> {
        tokio::select! {
            sent = socket.send(out) => sent.ok(),
            () = self.kill.killed() => None,
        }
    }

    /// The disconnect that follows the end of the connection, by the hub's reason.
    /// When a connected socket that has no Herald connection must go (ms since the epoch):
    /// its connection token's `exp` plus `auth.leeway`, as the hub cuts a connection at that
    /// deadline (`3005 connection expired`, unless a `refresh` moved it); `u64::MAX` for none.
    fn expiry_without_connection(&self) -> u64 {
        match (&self.conn, &self.who) {
            (None, Some(who)) => super::token_deadline(&self.herald, who),
            _ => u64::MAX,
        }
    }

    fn closed_by_server(&self) -> Disconnect {
        super::disconnect_for(self.conn.as_ref().and_then(Connection::close_reason))
    }

    /// Runs the commands of one frame: the reply lines not written yet, and the disconnect
    /// that follows; `None` when the socket failed. Each command past the first costs a
    /// frame of the socket's budget (the frame paid for one), taken before any is read: a
    /// frame of a thousand commands is a thousand requests.
    async fn commands<W: Wire>(&mut self, socket: &mut W, text: &str) -> Option<(Vec<String>, Option<Disconnect>)> {
        let count = protocol::command_count(text);
        if count > 1 && !self.frames.take_n(count - 1) {
            return Some((Vec::new(), Some(Disconnect::TooManyRequests)));
        }
        let Some(commands) = protocol::parse(text) else { return Some((Vec::new(), Some(Disconnect::BadRequest))) };
        let mut lines = Vec::with_capacity(commands.len());
        let mut gathered = 0;
        for (id, kind) in commands {
            let result = match kind {
                Kind::Pong => continue,
                Kind::Connect(c) => self.connect(c).await.map(|mut r| {
                    socket.tell_at_connect(&mut r);
                    ("connect", r)
                }),
                // Anything before `connect` is out of order.
                _ if self.who.is_none() => return Some((lines, Some(Disconnect::BadRequest))),
                Kind::Subscribe(s) => self.subscribe(s).await.map(|r| ("subscribe", r)),
                Kind::Unsubscribe(u) => self.unsubscribe(u.channel).await.map(|r| ("unsubscribe", r)),
                Kind::Publish(p) => self.publish(p).await.map(|r| ("publish", r)),
                Kind::Presence(p) => self.presence(p.channel, false).await.map(|r| ("presence", r)),
                Kind::PresenceStats(p) => self.presence(p.channel, true).await.map(|r| ("presence_stats", r)),
                Kind::History(h) => self.history(h).await.map(|r| ("history", r)),
                Kind::Refresh(r) => self.refresh(r.token).await.map(|r| ("refresh", r)),
                Kind::SubRefresh(r) => self.sub_refresh(r).await.map(|r| ("sub_refresh", r)),
                Kind::Rpc(r) => self.rpc(r).await.map(|r| ("rpc", r)),
                Kind::Send => {
                    tracing::info!(client = %self.client, "centrifugo send: no handler, the client is disconnected");
                    Err(Disconnect::NotAvailable.into())
                }
            };
            let line = match result {
                Ok((method, result)) => protocol::reply(id, method, result),
                Err(Fail::Error(e)) => protocol::error(id, e),
                Err(Fail::Disconnect(d)) => return Some((lines, Some(d))),
            };
            gathered += line.len();
            lines.push(line);
            if gathered > WRITE_REPLIES_PAST {
                self.write(socket, Out::Lines(&lines)).await?;
                lines.clear();
                gathered = 0;
            }
        }
        Some((lines, None))
    }

    /// `connect`: the token's `sub` is the user (an empty token is anonymous, if Herald
    /// allows it); an expired token is `109` (the SDK fetches a new one), a bad one
    /// `3500 invalid token`. The reply says when the token expires (`ttl`, for the SDK's
    /// `refresh`), and the token's `channels` are subscribed at once (`subs`).
    async fn connect(&mut self, connect: protocol::Connect) -> Result<Value, Fail> {
        let protocol::Connect { token, data: told, subs } = connect;
        if self.who.is_some() {
            return Err(Disconnect::BadRequest.into());
        }
        let (who, mut claims) = if token.is_empty() {
            if super::tokenless_refused(&self.herald) {
                return Err(Disconnect::InvalidToken.into());
            }
            (Principal::Anonymous, Claims::default())
        } else {
            let (user, claims) = self.verify_connection(&token).await?;
            (Principal::User(Arc::new(user)), claims)
        };
        let server_side = std::mem::take(&mut claims.channels);
        let super::Connecting { who, server_side, hook_info, data } =
            match super::ask_connect_hook(&self.herald, &self.hooks, who, server_side, told.as_ref()).await {
                Ok(connecting) => connecting,
                Err(super::Refused::Api(e)) => {
                    super::count_refusal(&self.herald, &e);
                    return Err(e.into());
                }
                Err(super::Refused::Anonymous) => return Err(Disconnect::InvalidToken.into()),
            };
        // Counted from here on, as a stream is, and refused as a stream is past the limits or
        // while the user is banned (see `place_refused`).
        self.place = Some(self.herald.admit_client(&self.client, &who).await.map_err(|e| {
            tracing::info!(client = %self.client, who = %who.describe(), error = %e, "centrifugo client refused");
            place_refused(&self.herald, e)
        })?);
        tracing::debug!(client = %self.client, who = %who.describe(), "centrifugo client connected");
        self.who = Some(who);
        // The connect hook's `info` over the token's, as Centrifugo's connect proxy's.
        self.info = hook_info.or(claims.info).map(Arc::new);
        let ping = self.herald.config().heartbeat_interval.as_secs().max(1);
        let mut reply = json!({
            "client": self.client,
            "version": concat!("herald ", env!("CARGO_PKG_VERSION")),
            "ping": ping,
            "pong": true,
        });
        self.tell_expiry(&mut reply);
        if let Some(data) = data {
            reply["data"] = Value::Object(data);
        }
        if !server_side.is_empty() {
            match self.subscribe_server_side(server_side, &subs).await {
                Ok(subs) => reply["subs"] = subs,
                Err(e) => {
                    self.who = None;
                    self.place = None;
                    return Err(e);
                }
            }
        }
        Ok(reply)
    }

    /// A connection token: as [`Session::verify`], and a subscription token (one with a
    /// `channel`) is `3500 invalid token` here.
    async fn verify_connection(&self, token: &str) -> Result<(UserIdentity, Claims), Fail> {
        let (user, claims) = self.verify(token).await?;
        if claims.channel.is_some() {
            tracing::info!(client = %self.client, "a subscription token presented as a connection token");
            return Err(Disconnect::InvalidToken.into());
        }
        Ok((user, claims))
    }

    /// Verifies a connection or subscription token: expired is `109` (the SDK gets
    /// another), keys out of reach a temporary `100`, anything else `3500 invalid token`.
    async fn verify(&self, token: &str) -> Result<(UserIdentity, Claims), Fail> {
        match self.herald.auth().verify_token_with::<Claims>(token).await {
            Ok(verified) => Ok(verified),
            Err(AuthError::Expired) => Err(ClientError::token_expired().into()),
            Err(AuthError::KeysUnavailable(_)) => {
                let mut e = ClientError::new(100, "internal server error");
                e.temporary = true;
                Err(e.into())
            }
            Err(e) => {
                tracing::info!(client = %self.client, error = %e, "centrifugo token refused");
                Err(Disconnect::InvalidToken.into())
            }
        }
    }

    /// Adds `expires` and `ttl` (whole seconds until the connection token's `exp`, rounded
    /// down, so that the SDK refreshes before it) to a reply.
    fn tell_expiry(&self, reply: &mut Value) {
        if let Some(Principal::User(user)) = &self.who
            && let Some(exp) = user.expires_at
        {
            reply["expires"] = true.into();
            reply["ttl"] = ttl(exp.saturating_mul(1000)).into();
        }
    }

    /// The token's `channels` and the connect hook's, subscribed by the server: the
    /// connection opens with them, granted (the application signed the list, or answered
    /// with it). A name Herald cannot map is left out.
    async fn subscribe_server_side(
        &mut self,
        names: Vec<String>,
        recover: &HashMap<String, protocol::Recover>,
    ) -> Result<Value, Fail> {
        let mut channels = Vec::with_capacity(names.len());
        let mut subs = serde_json::Map::with_capacity(names.len());
        for name in names {
            match self.channel(&name) {
                Ok(ch) if !channels.contains(&ch) => {
                    self.subs.insert(ch.as_str().to_owned(), name.clone());
                    channels.push(ch);
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::info!(client = %self.client, channel = %name, "the token or the connect hook names a channel Herald does not map")
                }
            }
        }
        if channels.is_empty() {
            return Ok(Value::Object(subs));
        }
        let (resume, recovering) = super::uni::resume_subs(&channels, &self.subs, recover);
        let req = self.stream_request(channels.clone(), resume);
        let admission = Admission {
            granted: &channels,
            id: Some(Arc::clone(&self.client)),
            info: self.info.clone(),
            place: Some(&mut self.place),
        };
        let opened = self.herald.connect_admitted(req, admission).await;
        let mut conn = match opened {
            Ok(conn) => conn,
            Err(e) => {
                self.subs.clear();
                return Err(open_refused(&self.herald, e));
            }
        };
        // What `connect` wrote before the live events: the position of each channel, and
        // what the recovered ones missed; the rest is pushed after the reply.
        let recovered = super::uni::Recovered::read(&mut conn, &recovering);
        for (i, channel) in channels.iter().enumerate() {
            let name = self.subs.get(channel.as_str()).cloned().unwrap_or_default();
            subs.insert(name, recovered.sub(i, channel.as_str(), recovering.contains(&channel.as_str())));
        }
        self.held.extend(recovered.rest);
        self.conn = Some(conn);
        Ok(Value::Object(subs))
    }

    fn stream_request(&self, channels: Vec<ChannelName>, last_event_id: Option<String>) -> StreamRequest {
        StreamRequest {
            principal: self.who(),
            channels,
            last_event_id,
            named: false,
            kill: Some(self.kill.clone()),
            filters: Vec::new(),
            // Centrifugo's own recovery says what a subscription gets first.
            last: LastEvents::none(),
            transport: "centrifugo",
        }
    }

    /// `refresh`: a fresh token of the same user moves the connection's expiry (the hub's
    /// deadline for its Herald connection) without reconnecting. An expired token is
    /// `3005`, another user's or a bad one `3500`, as Centrifugo does.
    async fn refresh(&mut self, token: String) -> Result<Value, Fail> {
        if token.is_empty() {
            return Err(Disconnect::BadRequest.into());
        }
        let user = match self.verify_connection(&token).await {
            Ok((user, _)) => user,
            Err(Fail::Error(e)) if e == ClientError::token_expired() => return Err(Disconnect::Expired.into()),
            Err(fail) => return Err(fail),
        };
        if self.who().user_id() != Some(&user.id) {
            tracing::info!(client = %self.client, "centrifugo refresh with another user's token");
            return Err(Disconnect::InvalidToken.into());
        }
        if let (Some(conn), Some(deadline)) = (&self.conn, user.session_deadline_ms(self.herald.config().auth.leeway)) {
            self.herald.hub().extend_expiry(conn.id(), deadline);
        }
        self.who = Some(Principal::User(Arc::new(user)));
        let mut reply = json!({"client": self.client, "version": concat!("herald ", env!("CARGO_PKG_VERSION"))});
        self.tell_expiry(&mut reply);
        Ok(reply)
    }

    /// A subscription token for `name`: its `sub` must be this client's user and its
    /// `channel` the name subscribed. Returns its `exp` in ms since the epoch, if it has
    /// one.
    async fn subscription_token(&self, name: &str, token: &str) -> Result<Option<u64>, Fail> {
        let (user, claims) = self.verify(token).await?;
        if self.who().user_id() != Some(&user.id) || claims.channel.as_deref() != Some(name) {
            tracing::info!(client = %self.client, channel = %name, "subscription token of another user or channel");
            return Err(Disconnect::InvalidToken.into());
        }
        Ok(user.expires_at.map(|exp| exp.saturating_mul(1000)))
    }

    /// Keeps a subscription token's expiry (`exp_ms`) for `channel`: the subscription ends
    /// at it plus `auth.leeway`. Tells the SDK when to refresh it.
    fn keep_sub_expiry(&mut self, channel: &ChannelName, exp_ms: u64, reply: &mut Value) {
        let leeway = u64::try_from(self.herald.config().auth.leeway.as_millis()).unwrap_or(u64::MAX);
        self.sub_deadlines.insert(channel.as_str().to_owned(), exp_ms.saturating_add(leeway));
        reply["expires"] = true.into();
        reply["ttl"] = ttl(exp_ms).into();
    }

    fn who(&self) -> Principal {
        self.who.clone().unwrap_or(Principal::Anonymous)
    }

    fn channel(&self, name: &str) -> Result<ChannelName, ClientError> {
        super::channel(&self.herald, name)
    }

    /// `subscribe`. A subscription token grants the channel (the application signed it);
    /// without one, Herald's policies decide, and a `$` name needs one. The first
    /// subscription of a socket opens its Herald connection and is recoverable: with
    /// `recover`, it resumes from `offset` as an SSE stream resumes from its
    /// `Last-Event-ID`, and what it missed comes in the reply (`recovered: false` when
    /// Herald's history no longer reaches back). Later ones join the connection live, from
    /// the channel's head.
    async fn subscribe(&mut self, s: protocol::Subscribe) -> Result<Value, Fail> {
        let channel = self.channel(&s.channel)?;
        if self.subs.contains_key(channel.as_str()) {
            return Err(ClientError::already_subscribed().into());
        }
        let granted = !s.token.is_empty();
        if !granted && s.channel.starts_with(protocol::PRIVATE_PREFIX) {
            return Err(ClientError::permission_denied().into());
        }
        let token_exp = if granted { self.subscription_token(&s.channel, &s.token).await? } else { None };
        // The subscribe hook is asked as for a stream's channel, unless a subscription token
        // granted it (the application's own grant); its `data` is the reply's.
        let data = match granted {
            true => None,
            false => {
                let connection = self.conn.as_ref().map(Connection::id);
                hooked::subscribe_one(&self.herald, &self.hooks, &self.who(), &channel, connection, s.data.as_ref())
                    .await?
            }
        };
        let mut reply = match self.conn.is_some() {
            true => {
                if !granted {
                    self.herald.policies().can_change_subscription(&self.who(), &channel).map_err(ApiError::from)?;
                }
                self.join(&channel, &s).await?
            }
            false => self.open(&channel, &s, granted).await?,
        };
        self.subs.insert(channel.as_str().to_owned(), s.channel);
        if let Some(exp_ms) = token_exp {
            self.keep_sub_expiry(&channel, exp_ms, &mut reply);
        }
        if let Some(data) = data {
            reply["data"] = Value::Object(data);
        }
        Ok(reply)
    }

    /// Opens the socket's Herald connection with its first channel, resumed if asked.
    async fn open(&mut self, channel: &ChannelName, s: &protocol::Subscribe, granted: bool) -> Result<Value, Fail> {
        let resume = s.from.resumes();
        let last_event_id = resume.then(|| single_entry(channel.as_str(), protocol::position(s.from.offset)));
        let req = self.stream_request(vec![channel.clone()], last_event_id);
        let admission = Admission {
            granted: if granted { std::slice::from_ref(channel) } else { &[] },
            id: Some(Arc::clone(&self.client)),
            info: self.info.clone(),
            place: Some(&mut self.place),
        };
        let mut conn = match self.herald.connect_admitted(req, admission).await {
            Ok(conn) => conn,
            Err(e) => {
                // The socket stays, without a connection: in the place it held if the refusal
                // came before the connection took it over; else in a new one, or it goes.
                if self.place.is_none() {
                    let place = self.herald.admit_client(&self.client, &self.who()).await;
                    self.place = Some(place.map_err(|e| match place_refused(&self.herald, e) {
                        banned @ Fail::Disconnect(Disconnect::ForceNoReconnect) => banned,
                        // Without a place the socket cannot stay: it comes back later, and its
                        // `connect` is answered then (the slot its failed connection took may
                        // not be given back yet).
                        _ => Fail::Disconnect(Disconnect::Shutdown),
                    })?);
                }
                return Err(open_refused(&self.herald, e));
            }
        };
        // What `connect` wrote before the live events: the `connected` notice (its id is the
        // channel's position), a `reset` if history could not cover the gap, and the missed
        // publications.
        let mut start = Start::default();
        while let Some(Some(msg)) = conn.recv().now_or_never() {
            match msg.event_type.as_str() {
                "connected" => start.top = position_of(&msg.id, 0, channel.as_str()),
                _ => start.read(&msg, 0, channel.as_str()),
            }
        }
        self.conn = Some(conn);
        Ok(start.reply(resume))
    }

    /// Adds a later subscription to the socket's Herald connection, resumed after the
    /// SDK's `offset` when it asks to recover ([`Herald::join_at`]: the channel's history
    /// after that position, then its live events, nothing missed or repeated). The
    /// connection's reader writes the join's `subscribed` notice, a `reset` when history
    /// no longer reaches back, then what was missed: read here, up to what is ready, so
    /// that the reply says `recovered` and carries the `publications`, as for the first
    /// subscription. Messages of other channels read meanwhile are pushed after the reply.
    async fn join(&mut self, channel: &ChannelName, s: &protocol::Subscribe) -> Result<Value, Fail> {
        let Some(conn) = self.conn.as_ref() else { return Err(ClientError::new(100, "internal server error").into()) };
        let resume = s.from.resumes();
        let from = if resume { JoinFrom::After(protocol::position(s.from.offset)) } else { JoinFrom::Head };
        self.herald.charge_socket_join(&self.who(), std::slice::from_ref(channel)).map_err(ApiError::from)?;
        if let Err(e) = self.herald.join_at(&own_connection(), conn.id(), channel, from).await {
            return Err(ApiError::from(e).into());
        }
        let Some(conn) = self.conn.as_mut() else { return Err(ClientError::new(100, "internal server error").into()) };
        let mut start = Start::default();
        let mut joined = false;
        loop {
            let msg = if joined {
                match conn.recv().now_or_never() {
                    Some(Some(msg)) => msg,
                    _ => break,
                }
            } else {
                // The join is queued in this connection: its notice comes as soon as the
                // reader gets to it.
                match tokio::time::timeout(JOIN_NOTICE, conn.recv()).await {
                    Ok(Some(msg)) => msg,
                    _ => break,
                }
            };
            let Some(index) = conn.channels().iter().position(|c| c == channel) else {
                self.held.push(msg);
                continue;
            };
            let head: Option<Head<'_>> = serde_json::from_slice(&msg.json).ok();
            let ours = head.as_ref().and_then(|h| h.channel.as_deref()) == Some(channel.as_str());
            match msg.event_type.as_str() {
                "subscribed" if ours && !joined => {
                    joined = true;
                    start.top = position_of(&msg.id, index, channel.as_str());
                }
                kind if ours && joined && (kind == "reset" || Start::is_publication(kind)) => {
                    start.read(&msg, index, channel.as_str());
                }
                _ => self.held.push(msg),
            }
        }
        Ok(start.reply(resume))
    }

    /// `sub_refresh`: a fresh subscription token for a channel subscribed with one moves
    /// that subscription's expiry.
    async fn sub_refresh(&mut self, r: protocol::SubRefresh) -> Result<Value, Fail> {
        let channel = self.channel(&r.channel)?;
        if !self.subs.contains_key(channel.as_str()) {
            return Err(ClientError::permission_denied().into());
        }
        if r.token.is_empty() {
            return Err(ClientError::new(107, "`sub_refresh` needs a token").into());
        }
        let mut reply = json!({});
        match self.subscription_token(&r.channel, &r.token).await? {
            Some(exp_ms) => self.keep_sub_expiry(&channel, exp_ms, &mut reply),
            None => {
                self.sub_deadlines.remove(channel.as_str());
            }
        }
        Ok(reply)
    }

    /// The earliest subscription token deadline (ms since the epoch).
    fn next_sub_deadline(&self) -> u64 {
        self.sub_deadlines.values().copied().min().unwrap_or(u64::MAX)
    }

    /// Ends the subscriptions whose token expired unrefreshed: each leaves the connection
    /// and the SDK is told `2501 subscription expired` (it subscribes again with a fresh
    /// token).
    async fn expire_subscriptions(&mut self) -> Vec<String> {
        let now = unix_ms();
        let due: Vec<String> =
            self.sub_deadlines.iter().filter(|(_, at)| **at <= now).map(|(c, _)| c.clone()).collect();
        let mut lines = Vec::with_capacity(due.len());
        for channel in due {
            self.sub_deadlines.remove(&channel);
            let Some(name) = self.subs.remove(&channel) else { continue };
            self.leave(&channel).await;
            lines.push(protocol::unsubscribe_push(&name, Unsubscribe::Expired));
        }
        lines
    }

    /// Takes `channel` (no longer in `subs`) off the connection.
    async fn leave(&mut self, channel: &str) {
        let (Some(conn), Ok(ch)) = (&self.conn, self.herald.parse_channel(channel)) else { return };
        self.own_notices.push(("unsubscribed", channel.to_owned()));
        if let Err(e) = self.herald.leave(&own_connection(), conn.id(), &ch).await {
            self.own_notices.pop();
            tracing::debug!(client = %self.client, channel, error = %e, "centrifugo leave failed");
        }
    }

    async fn unsubscribe(&mut self, name: String) -> Result<Value, Fail> {
        let channel = self.channel(&name)?;
        // Centrifugo answers an unsubscribe from a channel it does not follow with success.
        self.sub_deadlines.remove(channel.as_str());
        if self.subs.remove(channel.as_str()).is_some() {
            self.leave(channel.as_str()).await;
        }
        Ok(json!({}))
    }

    /// `rpc`: answered by the application's RPC hook (`hooks.rpc_url`, Centrifugo's RPC
    /// proxy): its `result.data` is the reply's `data`, its error (a code from 100 to 1999)
    /// the reply's error; a hook that gives no answer is `100 internal server error`, to be
    /// tried again. Without an RPC hook, `104 method not found`.
    async fn rpc(&mut self, r: protocol::Rpc) -> Result<Value, Fail> {
        let who = self.who();
        let asked = hooked::rpc(&self.herald, &self.hooks, &self.client, &who, &r.method, r.data).await;
        match asked {
            None => Err(ClientError::method_not_found().into()),
            Some(Ok(data)) => Ok(json!({ "data": data })),
            Some(Err(RpcError::Refused { code, message })) => Err(ClientError::new(code, message).into()),
            Some(Err(RpcError::Unavailable(_))) => {
                Err(ClientError { code: 100, message: "internal server error".to_owned(), temporary: true }.into())
            }
        }
    }

    /// `history`: a channel this client follows or may subscribe to, read as the server API
    /// reads it (`read_history`: `limit`, `since`, `reverse`).
    async fn history(&mut self, h: protocol::History) -> Result<Value, Fail> {
        let channel = self.channel(&h.channel)?;
        if !self.subs.contains_key(channel.as_str()) {
            // A `$` channel is read by its subscribers only, as it is subscribed: with a token.
            if h.channel.starts_with(protocol::PRIVATE_PREFIX) {
                return Err(ClientError::permission_denied().into());
            }
            self.herald.policies().can_subscribe(&self.who(), &channel).map_err(ApiError::from)?;
            // As a history read over HTTP: the subscribe hook decides as for a subscription.
            hooked::subscribe(&self.herald, &self.hooks, &self.who(), std::slice::from_ref(&channel), None).await?;
        }
        Ok(super::read_history(&self.herald, &channel, h.since.as_ref(), i64::from(h.limit), h.reverse).await?)
    }

    /// A client publication: `data` (an object) becomes a Herald event on the channel, of
    /// its own `type`, or `publication` when it has none, through Herald's policies and
    /// rate limits as `POST /api/publish`.
    async fn publish(&mut self, p: protocol::Publish) -> Result<Value, Fail> {
        let channel = self.channel(&p.channel)?;
        let event = super::event(&channel, p.data)
            .ok_or_else(|| ClientError::new(107, "Herald publishes JSON objects: `data` must be one"))?;
        let who = self.who();
        let key = rate_key(&who, self.peer);
        publish::publish_body(&self.herald, &who, &key, None, event, &self.hooks).await?;
        Ok(json!({}))
    }

    async fn presence(&mut self, name: String, stats: bool) -> Result<Value, Fail> {
        let channel = self.channel(&name)?;
        // A `$` channel's presence is its subscribers' only, as its history is.
        if name.starts_with(protocol::PRIVATE_PREFIX) && !self.subs.contains_key(channel.as_str()) {
            return Err(ClientError::permission_denied().into());
        }
        Ok(super::presence(&self.herald, &self.who(), &channel, stats).await?)
    }
}

/// A publication as a JSON value, for a reply that lists several.
/// Where a subscription starts and what it missed, read from what the connection wrote for
/// its channel before the live events: what its reply says.
#[derive(Default)]
struct Start {
    top: Option<Position>,
    reset: bool,
    missed: Vec<Value>,
}

impl Start {
    /// An event type that is a Centrifugo publication (not one of Herald's own notices).
    fn is_publication(kind: &str) -> bool {
        !SERVER_EVENT_TYPES.contains(&kind) && !matches!(kind, "presence" | "join" | "leave")
    }

    /// Takes one message of the channel at `index` of the connection: a `reset`, or a
    /// missed publication.
    fn read(&mut self, msg: &Message, index: usize, channel: &str) {
        match msg.event_type.as_str() {
            "reset" => self.reset = true,
            kind if !Self::is_publication(kind) => {}
            _ => {
                let position = position_of(&msg.id, index, channel);
                self.top = self.top.max(position);
                self.missed.extend(publication_value(&msg.json, position));
            }
        }
    }

    /// The subscribe reply: recoverable at the channel's offset, and with `resume` whether
    /// it was recovered and the publications missed.
    fn reply(self, resume: bool) -> Value {
        let mut reply = json!({"recoverable": true, "epoch": protocol::EPOCH});
        reply["offset"] = protocol::offset(self.top.unwrap_or_default()).into();
        if resume {
            reply["recovered"] = (!self.reset).into();
            reply["was_recovering"] = true.into();
            reply["publications"] = self.missed.into();
        }
        reply
    }
}

fn publication_value(event: &[u8], position: Option<Position>) -> Option<Value> {
    let mut publication = String::with_capacity(event.len() + 32);
    protocol::push_pub(&mut publication, event, position);
    serde_json::from_str(&publication).ok()
}

/// Whole seconds from now until `at_ms` (ms since the epoch), rounded down.
fn ttl(at_ms: u64) -> u64 {
    at_ms.saturating_sub(unix_ms()) / 1000
}

/// The position in `channel` (at `index` of the connection's channels) that a message's
/// resume id names.
fn position_of(id: &str, index: usize, channel: &str) -> Option<Position> {
    match LastEventId::parse(id)?.resume_for(index, channel) {
        Resume::From(pos) => Some(pos),
        Resume::Fresh | Resume::Unknown => None,
    }
}
