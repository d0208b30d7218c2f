//! Centrifugo's client protocol, version 2, JSON (`docs/centrifugo.md`): the commands the
//! `centrifuge` SDKs send, the replies and pushes Herald sends back, the error and disconnect
//! codes they understand, and the mapping of Centrifugo channel names onto Herald's.
//!
//! A text frame holds one or more commands, one JSON object a line; the server answers with
//! one reply a line in one frame. An empty object is a ping (server to client) or its pong
//! (client to server). Nothing here touches a socket or the hub.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cursor::Position;
use crate::http::error::ApiError;
use crate::http::ws::close_frame;
use crate::transport::messages::{TEXT, websocket_frame};

/// A command from the client. Unknown fields are ignored, as Centrifugo does, so that a newer
/// SDK's additions do not break an older server.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Command {
    #[serde(default)]
    pub id: u32,
    pub connect: Option<Connect>,
    pub subscribe: Option<Subscribe>,
    pub unsubscribe: Option<ChannelOnly>,
    pub publish: Option<Publish>,
    pub presence: Option<ChannelOnly>,
    pub presence_stats: Option<ChannelOnly>,
    pub history: Option<History>,
    pub refresh: Option<Refresh>,
    pub sub_refresh: Option<SubRefresh>,
    pub rpc: Option<Rpc>,
    pub send: Option<Value>,
}

/// What a command asks for, once read.
#[derive(Debug)]
pub(super) enum Kind {
    /// An empty command: the client's pong.
    Pong,
    Connect(Connect),
    Subscribe(Subscribe),
    Unsubscribe(ChannelOnly),
    Publish(Publish),
    Presence(ChannelOnly),
    PresenceStats(ChannelOnly),
    History(History),
    Refresh(Refresh),
    SubRefresh(SubRefresh),
    Rpc(Rpc),
    /// `send`, an asynchronous message the client expects no reply to: Herald has no
    /// handler for it, and says so as Centrifugo does without one (`3508 not available`),
    /// since an error reply without an id would pass for a ping and drop it unseen.
    Send,
}

/// `rpc`: a call of the application's `method` with `data`, answered by the RPC hook.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Rpc {
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub data: Value,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Connect {
    #[serde(default)]
    pub token: String,
    /// What the client tells the application at connect: the connect hook is told it.
    pub data: Option<Value>,
    /// Where the client's server-side subscriptions were, to recover them.
    #[serde(default)]
    pub subs: std::collections::HashMap<String, Recover>,
}

/// `{"recover":true,"offset":..,"epoch":"herald"}`: where a subscription was, to recover it
/// (a `subscribe` command's, or a server-side subscription's in a connect request's `subs`).
#[derive(Debug, Deserialize, Default)]
pub(super) struct Recover {
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

impl Recover {
    /// Whether this entry asks to recover from a position of Herald's.
    pub fn resumes(&self) -> bool {
        self.recover && self.epoch == EPOCH
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Subscribe {
    pub channel: String,
    /// Recover what was published since `offset` in `epoch` (`recover`, `offset`, `epoch`).
    #[serde(flatten)]
    pub from: Recover,
    /// A subscription token (`docs/centrifugo.md`, "Subscription tokens").
    #[serde(default)]
    pub token: String,
    /// What the client tells the application at subscribe: the subscribe hook is told it.
    pub data: Option<Value>,
}

/// `refresh`: a fresh connection token.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Refresh {
    #[serde(default)]
    pub token: String,
}

/// `sub_refresh`: a fresh subscription token for `channel`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SubRefresh {
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

/// `history`: at most `limit` publications of `channel` (none with 0), after `since`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct History {
    pub channel: String,
    #[serde(default)]
    pub limit: i32,
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

/// A position in a channel, as the SDK keeps it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

/// Herald's epoch: positions are comparable for as long as history keeps them (Herald's
/// resume tells a gap it cannot fill, as `recovered: false`), so there is one epoch.
pub(super) const EPOCH: &str = "herald";

#[derive(Debug, Default, Deserialize)]
pub(super) struct ChannelOnly {
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Publish {
    pub channel: String,
    #[serde(default)]
    pub data: Value,
}

impl Command {
    /// The one method a command carries; several (or an unreadable line) is a bad request.
    pub(super) fn kind(self) -> Option<Kind> {
        let Command {
            id: _,
            connect,
            subscribe,
            unsubscribe,
            publish,
            presence,
            presence_stats,
            history,
            refresh,
            sub_refresh,
            rpc,
            send,
        } = self;
        let mut kinds: Vec<Kind> = Vec::with_capacity(1);
        kinds.extend(connect.map(Kind::Connect));
        kinds.extend(subscribe.map(Kind::Subscribe));
        kinds.extend(unsubscribe.map(Kind::Unsubscribe));
        kinds.extend(publish.map(Kind::Publish));
        kinds.extend(presence.map(Kind::Presence));
        kinds.extend(presence_stats.map(Kind::PresenceStats));
        kinds.extend(history.map(Kind::History));
        kinds.extend(refresh.map(Kind::Refresh));
        kinds.extend(sub_refresh.map(Kind::SubRefresh));
        kinds.extend(rpc.map(Kind::Rpc));
        kinds.extend(send.map(|_| Kind::Send));
        match kinds.len() {
            0 => Some(Kind::Pong),
            1 => kinds.pop(),
            _ => None,
        }
    }
}

/// How many commands a text frame holds (its lines that are not blank), counted before
/// any is read.
pub(super) fn command_count(text: &str) -> usize {
    command_lines(text).count()
}

fn command_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|line| !line.trim().is_empty())
}

/// Reads the commands of one text frame: one JSON object a line, blank lines skipped.
/// `None` when a line is not a command (the SDK is then told `3501 bad request`).
pub(super) fn parse(text: &str) -> Option<Vec<(u32, Kind)>> {
    command_lines(text)
        .map(|line| {
            let cmd: Command = serde_json::from_str(line).ok()?;
            let id = cmd.id;
            Some((id, cmd.kind()?))
        })
        .collect()
}

/// A reply to command `id`: `{"id":..,"<method>":<result>}`.
pub(super) fn reply(id: u32, method: &str, result: Value) -> String {
    let mut reply = serde_json::Map::with_capacity(2);
    reply.insert("id".into(), id.into());
    reply.insert(method.into(), result);
    Value::Object(reply).to_string()
}

/// An error reply to command `id`.
pub(super) fn error(id: u32, e: ClientError) -> String {
    let mut err = json!({"code": e.code, "message": e.message});
    if e.temporary {
        err["temporary"] = true.into();
    }
    json!({"id": id, "error": err}).to_string()
}

/// A publication pushed on `channel` (the name the client subscribed with): `data` is
/// Herald's event JSON as an SSE client gets it, unchanged.
pub(super) fn publication(channel: &str, event: &[u8], position: Option<Position>) -> String {
    let mut out = String::with_capacity(event.len() + channel.len() + 48);
    out.push_str(r#"{"push":{"channel":"#);
    out.push_str(&Value::String(channel.to_owned()).to_string());
    out.push_str(r#","pub":"#);
    push_pub(&mut out, event, position);
    out.push_str("}}");
    out
}

/// A `join` or `leave` push on `channel` for `user` (Herald's join and leave are per user
/// connection, and it tells the user, so the user id stands for the client id too), with
/// the connection's `info` (JSON) as `conn_info`.
pub(super) fn join_leave(channel: &str, kind: &str, user: &str, info: Option<&str>) -> String {
    let mut client = json!({"client": user, "user": user});
    if let Some(info) = info.and_then(|i| serde_json::from_str::<Value>(i).ok()) {
        client["conn_info"] = info;
    }
    json!({"push": {"channel": channel, kind: {"info": client}}}).to_string()
}

/// The push that tells the SDK it was subscribed to `channel` by the server (a live join
/// of its connection): it then emits `subscribed` and the channel's publications on the
/// client.
pub(super) fn subscribe_push(channel: &str) -> String {
    json!({"push": {"channel": channel, "subscribe": {}}}).to_string()
}

/// The push that tells the SDK the server unsubscribed it from `channel`.
pub(super) fn unsubscribe_push(channel: &str, why: Unsubscribe) -> String {
    json!({"push": {"channel": channel, "unsubscribe": {"code": why.code(), "reason": why.reason()}}}).to_string()
}

/// Why the server ends a subscription (Centrifugo's unsubscribe codes: below 2500 the SDK
/// stays unsubscribed, from 2500 it subscribes again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unsubscribe {
    /// The application removed the channel (a live leave).
    Server,
    /// The subscription token expired and was not refreshed.
    Expired,
}

impl Unsubscribe {
    fn code(self) -> u32 {
        match self {
            Self::Server => 2000,
            Self::Expired => 2501,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Server => "server unsubscribe",
            Self::Expired => "subscription expired",
        }
    }
}

/// A publication object, `{"data":<event>,"offset":<n>}`.
pub(super) fn push_pub(out: &mut String, event: &[u8], position: Option<Position>) {
    out.push_str(r#"{"data":"#);
    out.push_str(&String::from_utf8_lossy(event));
    if let Some(pos) = position {
        out.push_str(r#","offset":"#);
        out.push_str(&offset(pos).to_string());
    }
    out.push('}');
}

/// Centrifugo's offset (an integer the SDK keeps as a JavaScript number) for a Herald
/// position: milliseconds times 1000 plus the sequence within the millisecond, which stays
/// exact (below 2^53) until the year 2255 and increases with the position: both engines give
/// a channel's events at most 1000 sequences a millisecond ([`Position::MAX_SEQ`]). A
/// position past them (a Redis channel's head once its millisecond is full, `<ms>-<u64::MAX>`)
/// is its millisecond's last offset, the offset of the last event there.
pub(super) fn offset(pos: Position) -> u64 {
    pos.ms.saturating_mul(1000).saturating_add(pos.seq.min(Position::MAX_SEQ))
}

/// The Herald position a Centrifugo offset stands for (see [`offset`]).
pub(super) fn position(offset: u64) -> Position {
    Position::new(offset / 1000, offset % 1000)
}

/// The ping: an empty command, as a whole text frame.
pub(super) const PING: Bytes = Bytes::from_static(b"\x81\x02{}");

/// Several replies in one text frame, one a line.
pub(super) fn frame(lines: &[String]) -> Bytes {
    text_frame(&lines.join("\n"))
}

/// One push (or reply) in a text frame of its own.
pub(super) fn text_frame(text: &str) -> Bytes {
    websocket_frame(TEXT, text.as_bytes())
}

/// An error in a reply: Centrifugo's client error codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ClientError {
    pub code: u32,
    pub message: String,
    pub temporary: bool,
}

impl ClientError {
    pub(super) fn new(code: u32, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), temporary: false }
    }

    pub(super) fn unknown_channel() -> Self {
        Self::new(102, "unknown channel")
    }

    pub(super) fn method_not_found() -> Self {
        Self::new(104, "method not found")
    }

    pub(super) fn already_subscribed() -> Self {
        Self::new(105, "already subscribed")
    }

    pub(super) fn token_expired() -> Self {
        Self::new(109, "token expired")
    }

    pub(super) fn permission_denied() -> Self {
        Self::new(103, "permission denied")
    }

    pub(super) fn unrecoverable_position() -> Self {
        Self::new(112, "unrecoverable position")
    }
}

/// Herald's refusal as the nearest Centrifugo error: by HTTP status, with Herald's own
/// message (which names the cause) kept.
impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> Self {
        let status = e.status().as_u16();
        let code = match status {
            401 => 101,
            403 => 103,
            404 => 102,
            429 => 111,
            413 => 106,
            s if s >= 500 => 100,
            _ => 107,
        };
        Self { code, message: e.message().to_owned(), temporary: status >= 500 || status == 429 }
    }
}

/// Centrifugo's disconnect codes (3000..3999 over a WebSocket close): 35xx tell the SDK not
/// to reconnect, the others to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Disconnect {
    Shutdown,
    Expired,
    Slow,
    InsufficientState,
    ForceReconnect,
    NoPong,
    TooManyRequests,
    InvalidToken,
    BadRequest,
    Stale,
    ForceNoReconnect,
    ConnectionLimit,
    NotAvailable,
}

impl Disconnect {
    pub(super) fn code(self) -> u16 {
        match self {
            Self::Shutdown => 3001,
            Self::Expired => 3005,
            Self::Slow => 3008,
            Self::InsufficientState => 3010,
            Self::ForceReconnect => 3011,
            Self::NoPong => 3012,
            Self::TooManyRequests => 3013,
            Self::InvalidToken => 3500,
            Self::BadRequest => 3501,
            Self::Stale => 3502,
            Self::ForceNoReconnect => 3503,
            Self::ConnectionLimit => 3504,
            Self::NotAvailable => 3508,
        }
    }

    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Expired => "connection expired",
            Self::Slow => "slow",
            Self::InsufficientState => "insufficient state",
            Self::ForceReconnect => "force reconnect",
            Self::NoPong => "no pong",
            Self::TooManyRequests => "too many requests",
            Self::InvalidToken => "invalid token",
            Self::BadRequest => "bad request",
            Self::Stale => "stale",
            Self::ForceNoReconnect => "force disconnect",
            Self::ConnectionLimit => "connection limit",
            Self::NotAvailable => "not available",
        }
    }

    /// The close frame; its reason is plain text, which the SDK shows as the reason.
    pub(super) fn frame(self) -> Bytes {
        close_frame(Some(self.code()), self.reason().as_bytes())
    }
}

/// The Centrifugo name of a Herald channel the server subscribed a client to: the inverse
/// of [`herald_channel`] (`channel:news` is `news`, `user:42` is `#42`).
pub(super) fn centrifugo_channel(herald: &str) -> String {
    if let Some(name) = herald.strip_prefix("channel:") {
        return name.to_owned();
    }
    match herald.strip_prefix("user:") {
        Some(user) => format!("#{user}"),
        None => herald.to_owned(),
    }
}

/// Centrifugo's private-channel prefix: a name that starts with it may only be subscribed
/// with a subscription token; the prefix is not part of the Herald channel.
pub(super) const PRIVATE_PREFIX: char = '$';

/// A Centrifugo channel name as Herald's: `news` is `channel:news`; `ns:rest` is Herald's
/// `ns:rest` when `known(ns)` (a configured namespace, or the built-in `channel` and
/// `user`); a user-limited `ns:#42` (or `#42`) is `user:42`. `None` for a name with an
/// unknown namespace. Herald's channel rules (characters, length) apply to the result.
pub(super) fn herald_channel(name: &str, known: impl Fn(&str) -> bool) -> Option<String> {
    let name = name.strip_prefix(PRIVATE_PREFIX).unwrap_or(name);
    let (ns, rest) = match name.split_once(':') {
        Some((ns, rest)) => (Some(ns), rest),
        None => (None, name),
    };
    if let Some((_, user)) = rest.split_once('#') {
        // One user only: `#42,43` (a channel shared by two users) has no Herald counterpart.
        return (!user.is_empty() && !user.contains(',')).then(|| format!("user:{user}"));
    }
    match ns {
        None => Some(format!("channel:{name}")),
        Some(ns) if known(ns) => Some(name.to_owned()),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(ns: &str) -> bool {
        matches!(ns, "channel" | "user" | "chat")
    }

    #[test]
    fn centrifugo_channel_names_map_onto_herald_namespaces() {
        assert_eq!(herald_channel("news", known).as_deref(), Some("channel:news"));
        assert_eq!(herald_channel("chat:index", known).as_deref(), Some("chat:index"));
        assert_eq!(herald_channel("channel:news", known).as_deref(), Some("channel:news"));
        assert_eq!(herald_channel("personal:#42", known).as_deref(), Some("user:42"));
        assert_eq!(herald_channel("#42", known).as_deref(), Some("user:42"));
        assert_eq!(herald_channel("dialog:#42,43", known), None);
        assert_eq!(herald_channel("secret:index", known), None);
        assert_eq!(herald_channel("$chat:index", known).as_deref(), Some("chat:index"));
        assert_eq!(herald_channel("$news", known).as_deref(), Some("channel:news"));
        for name in ["news", "chat:index", "#42"] {
            assert_eq!(herald_channel(name, known).map(|h| centrifugo_channel(&h)).as_deref(), Some(name));
        }
    }

    #[test]
    fn a_frame_of_several_lines_is_several_commands_and_an_empty_object_is_a_pong() {
        let cmds = parse(
            "{\"id\":1,\"connect\":{\"token\":\"t\",\"name\":\"js\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"news\"}}\n{}",
        );
        let cmds = cmds.unwrap_or_else(|| panic!("refused a well-formed frame"));
        assert_eq!(cmds.len(), 3);
        assert!(matches!(&cmds[0], (1, Kind::Connect(Connect { token, .. })) if token == "t"));
        assert!(
            matches!(&cmds[1], (2, Kind::Subscribe(Subscribe { channel, from: Recover { recover: false, .. }, .. })) if channel == "news")
        );
        assert!(matches!(cmds[2], (0, Kind::Pong)));
    }

    #[test]
    fn a_command_with_two_methods_or_no_json_is_a_bad_request_and_an_unserved_method_is_not_found() {
        assert!(parse(r#"{"id":1,"subscribe":{"channel":"a"},"publish":{"channel":"a"}}"#).is_none());
        assert!(parse("not json").is_none());
        let cmds = parse(r#"{"id":3,"send":{"data":"x"}}"#).unwrap_or_default();
        assert!(matches!(cmds.as_slice(), [(3, Kind::Send)]));
        let cmds = parse(r#"{"id":5,"rpc":{"method":"x","data":[1]}}"#).unwrap_or_default();
        assert!(matches!(cmds.as_slice(), [(5, Kind::Rpc(Rpc { method, data }))] if method == "x" && data[0] == 1));
        let cmds = parse(r#"{"id":4,"history":{"channel":"a","limit":2,"since":{"offset":7,"epoch":"herald"}}}"#);
        assert!(matches!(
            cmds.unwrap_or_default().as_slice(),
            [(
                4,
                Kind::History(History { limit: 2, since: Some(StreamPosition { offset: 7, .. }), reverse: false, .. })
            )]
        ));
    }

    #[test]
    fn a_publication_push_carries_the_event_json_unchanged_and_its_offset() {
        let push =
            publication("news", br#"{"id":"e1","channel":"channel:news","type":"t"}"#, Some(Position::new(5, 2)));
        assert_eq!(
            push,
            r#"{"push":{"channel":"news","pub":{"data":{"id":"e1","channel":"channel:news","type":"t"},"offset":5002}}}"#
        );
        assert!(offset(Position::new(5, 2)) < offset(Position::new(6, 0)));
        assert_eq!(position(offset(Position::new(1_796_308_119_032, 7))), Position::new(1_796_308_119_032, 7));
    }

    #[test]
    fn a_join_push_names_the_user_as_client_and_user() {
        let push: Option<Value> = serde_json::from_str(&join_leave("room:a", "join", "42", None)).ok();
        assert_eq!(
            push,
            Some(json!({"push": {"channel": "room:a", "join": {"info": {"client": "42", "user": "42"}}}}))
        );
        let push: Option<Value> =
            serde_json::from_str(&join_leave("room:a", "leave", "42", Some(r#"{"n":"Ann"}"#))).ok();
        assert_eq!(
            push,
            Some(
                json!({"push": {"channel": "room:a", "leave": {"info": {"client": "42", "user": "42", "conn_info": {"n": "Ann"}}}}})
            )
        );
    }

    #[test]
    fn server_side_pushes_have_the_shape_the_sdk_reads() {
        let parsed = |s: String| serde_json::from_str::<Value>(&s).ok();
        assert_eq!(parsed(subscribe_push("news")), Some(json!({"push": {"channel": "news", "subscribe": {}}})));
        assert_eq!(
            parsed(unsubscribe_push("news", Unsubscribe::Server)),
            Some(json!({"push": {"channel": "news", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}}))
        );
        // 2501 is at or above 2500: the SDK subscribes again (with a fresh token).
        assert_eq!(
            parsed(unsubscribe_push("$plans", Unsubscribe::Expired)),
            Some(
                json!({"push": {"channel": "$plans", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}})
            )
        );
    }

    #[test]
    fn an_error_reply_has_the_centrifugo_shape() {
        let parsed = |s: String| serde_json::from_str::<Value>(&s).ok();
        let err = parsed(error(4, ClientError::already_subscribed()));
        assert_eq!(err, Some(json!({"id": 4, "error": {"code": 105, "message": "already subscribed"}})));
        assert_eq!(parsed(reply(1, "subscribe", json!({}))), Some(json!({"id": 1, "subscribe": {}})));
    }
}
