//! Events: what a publisher hands in, and what the engines store and the hub fans out.
//!
//! The path of an event through this module is one-way:
//! [`Event`] (type + payload fields, from a library call or a request body)
//! → [`Prepared`] (validated, id and timestamp set, identity fields set by the server,
//! payload serialized once) → [`Published`] (positions assigned by the engine, one SSE
//! `Frame` per channel, shared by every subscriber through an `Arc`).
//!
//! The wire shape is one flat JSON object (`docs/channels.md`, "The event on the wire"):
//! `{"id","channel","type","timestamp","userId","userName", ...payload fields}`.
//! The reserved keys are always written by the server; a publisher's values for them are
//! dropped.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::channel::ChannelName;
use crate::cursor::{Position, single_entry};
use crate::sse::Frame;

/// Keys of the wire event that only the server sets, and the per-item idempotency key of a
/// batch, which is the publisher's and never part of the payload.
pub const RESERVED_FIELDS: [&str; 8] =
    ["id", "type", "channel", "channels", "timestamp", "userId", "userName", IDEMPOTENCY_FIELD];

/// The field of a batch item that carries its idempotency key (the `Idempotency-Key` header
/// of a single publish).
pub const IDEMPOTENCY_FIELD: &str = "idempotencyKey";

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Event types the server emits itself; publishers may not use them (a forged `disconnect`
/// or `token_expired` would stop or reconnect every client of the channel).
pub const SERVER_EVENT_TYPES: [&str; 7] =
    ["connected", "reset", "gap", "subscribed", "unsubscribed", "token_expired", "disconnect"];

/// Longest event type accepted.
pub const MAX_TYPE_LEN: usize = 64;

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event `type` is missing or empty")]
    MissingType,
    #[error("event `type` must be 1 to {MAX_TYPE_LEN} ASCII letters, digits or `_ - . :` characters")]
    BadType,
    #[error("event type `{0}` is reserved for events the server sends")]
    ReservedType(String),
    #[error("the event has no channel")]
    NoChannel,
    #[error("the event payload is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters")]
    BadIdempotencyKey,
}

/// An event to publish: a type and payload fields.
///
/// ```
/// let e = herald::Event::new("notification").with("title", "New follower!");
/// assert_eq!(e.event_type(), "notification");
/// ```
#[derive(Clone, Debug)]
pub struct Event {
    /// Shared: the events of a batch, and the events one thread prepares, nearly always
    /// share a handful of types (see [`shared_type`]).
    event_type: Arc<str>,
    payload: Payload,
    /// Boxed: an event without a key (nearly all) pays one null pointer.
    idempotency: Option<Box<Idempotency>>,
}

/// Two events are equal when their types, fields and keys are, however the fields are held.
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.event_type == other.event_type && self.fields() == other.fields() && self.idempotency == other.idempotency
    }
}

/// The payload fields of an event: a map, or, for an event read from a request body whose
/// fields are all plain scalars, the JSON text they are written as on the wire. The text
/// spares such an event (the usual one published over HTTP) a `String` per key, a map
/// node, and its serialization and frees; the map is parsed from the text only when
/// something asks for it (a publish hook, an idempotency fingerprint, an AI chunk).
#[derive(Clone, Debug)]
enum Payload {
    Fields(Map<String, Value>),
    Text(Written),
}

/// Payload members as written: `,"key":value` for each, sorted by key as a map iterates
/// them, with no reserved key (see [`PayloadReader`]).
#[derive(Clone, Debug)]
struct Written {
    text: Vec<u8>,
    /// Boxed: most events never parse it, and an event is moved several times.
    fields: std::sync::OnceLock<Box<Map<String, Value>>>,
}

impl Written {
    /// The fields the text was written from (the same keys and the same `Value`s: every
    /// value in it is a scalar in the form `serde_json` writes and reads back as it was).
    fn parse(text: &[u8]) -> Map<String, Value> {
        let Some(members) = text.get(1..) else { return Map::new() };
        let mut object = Vec::with_capacity(members.len() + 2);
        object.push(b'{');
        object.extend_from_slice(members);
        object.push(b'}');
        // It always parses: it is an object of members written by `PayloadReader`.
        serde_json::from_slice(&object).unwrap_or_default()
    }

    fn into_fields(self) -> Map<String, Value> {
        self.fields.into_inner().map_or_else(|| Self::parse(&self.text), |fields| *fields)
    }
}

impl Event {
    pub fn new(event_type: impl Into<String>) -> Self {
        Self::from_fields(event_type, Map::new())
    }

    /// Adds a payload field. Reserved keys (`id`, `type`, `channel`, `channels`,
    /// `timestamp`, `userId`, `userName`) are set by the server: they are dropped when the
    /// event is prepared.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        let mut fields = match self.payload {
            Payload::Fields(fields) => fields,
            Payload::Text(written) => written.into_fields(),
        };
        fields.insert(key.into(), value.into());
        self.payload = Payload::Fields(fields);
        self
    }

    /// Builds an event from a type and a JSON object of payload fields.
    pub fn from_fields(event_type: impl Into<String>, fields: Map<String, Value>) -> Self {
        Self { event_type: shared_type(&event_type.into()), payload: Payload::Fields(fields), idempotency: None }
    }

    /// Makes the publish of this event idempotent under `key` (see [`Idempotency`]).
    pub fn with_idempotency(mut self, key: Idempotency) -> Self {
        self.idempotency = Some(Box::new(key));
        self
    }

    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    pub fn fields(&self) -> &Map<String, Value> {
        match &self.payload {
            Payload::Fields(fields) => fields,
            Payload::Text(written) => written.fields.get_or_init(|| Box::new(Written::parse(&written.text))),
        }
    }

    /// Replaces the payload fields (a publish hook's replacement), keeping the type and the
    /// idempotency key, which stays that of the event as the publisher sent it.
    pub fn set_fields(&mut self, fields: Map<String, Value>) {
        self.payload = Payload::Fields(fields);
    }

    /// Whether the fields are held as the text they are written as.
    #[cfg(test)]
    pub(crate) fn is_written(&self) -> bool {
        matches!(self.payload, Payload::Text(_))
    }

    /// The text the fields are held as, if they are.
    #[cfg(test)]
    pub(crate) fn written_text(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Text(written) => Some(&written.text),
            Payload::Fields(_) => None,
        }
    }
}

/// A top-level payload value that is written as it is read: its JSON text is one a
/// [`PayloadReader`] writes itself, byte for byte as `serde_json` would.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scalar<'a> {
    Str(&'a str),
    U64(u64),
    I64(i64),
    Bool(bool),
    Null,
}

impl From<Scalar<'_>> for Value {
    fn from(scalar: Scalar<'_>) -> Self {
        match scalar {
            Scalar::Str(s) => Value::String(s.to_owned()),
            Scalar::U64(n) => Value::from(n),
            Scalar::I64(n) => Value::from(n),
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Null => Value::Null,
        }
    }
}

/// The payload fields of an event being read from a request body, in the order they come:
/// written as text while every one is a [`Scalar`] under a new, unreserved key whose
/// strings need no escaping, made a map (the same map as inserting every field in turn) at
/// the first that is not.
pub(crate) struct PayloadReader {
    state: Reading,
}

/// The bytes a payload's text is first given room for: the room a body of the usual event
/// needs, as the text becomes its body (see `serialize_body_at`).
const TEXT_ROOM: usize = 128;

enum Reading {
    /// The text of [`Written`], and where each member starts and how long its key is.
    Text {
        text: Vec<u8>,
        members: smallvec::SmallVec<[(usize, usize); 8]>,
    },
    Fields(Map<String, Value>),
}

impl PayloadReader {
    pub(crate) fn new() -> Self {
        Self { state: Reading::Text { text: Vec::new(), members: smallvec::SmallVec::new() } }
    }

    /// Adds a field whose value is a scalar.
    pub(crate) fn scalar(&mut self, key: &str, value: Scalar<'_>) {
        let plain = |s: &str| s.bytes().fold(true, |plain, b| plain & (b >= 0x20) & (b != b'"') & (b != b'\\'));
        if let Reading::Text { text, members } = &mut self.state
            && plain(key)
            && !matches!(value, Scalar::Str(s) if !plain(s))
            && let Some(at) = Self::slot(text, members, key.as_bytes())
        {
            Self::write(text, members, at, key.len(), |text| {
                push_key(text, key.as_bytes());
                match value {
                    Scalar::Str(s) => {
                        text.push(b'"');
                        text.extend_from_slice(s.as_bytes());
                        text.push(b'"');
                    }
                    Scalar::U64(n) => push_json(text, &n),
                    Scalar::I64(n) => push_json(text, &n),
                    Scalar::Bool(b) => push_json(text, &b),
                    Scalar::Null => text.extend_from_slice(b"null"),
                }
            });
            return;
        }
        self.insert(key.to_owned(), value.into());
    }

    /// Adds a field read by hand from a body (`http::publish::body`) as the text it is
    /// written as, when [`PayloadReader::scalar`] would write it as text too; `false`, adding
    /// nothing, where it would not (a reserved key, a key there already, fields made a map).
    ///
    /// `key` is a key's text with nothing that needs escaping; `value` is a scalar's JSON
    /// text exactly as `serde_json` writes the value it reads from it (a string with nothing
    /// to escape, an integer of `u64` or `i64` in its one form, `true`, `false`, `null`), so
    /// the text is the one `scalar` writes of the value.
    pub(crate) fn written(&mut self, key: &[u8], value: &[u8]) -> bool {
        self.written_with(key, |text| {
            push_key(text, key);
            text.extend_from_slice(value);
        })
    }

    /// [`PayloadReader::written`] of a member given whole, `"key":value` with nothing
    /// between its parts (as a body nearly always writes it): one copy, not two.
    pub(crate) fn written_member(&mut self, key: &[u8], member: &[u8]) -> bool {
        self.written_with(key, |text| text.extend_from_slice(member))
    }

    fn written_with(&mut self, key: &[u8], member: impl FnOnce(&mut Vec<u8>)) -> bool {
        let Reading::Text { text, members } = &mut self.state else { return false };
        let Some(at) = Self::slot(text, members, key) else { return false };
        Self::write(text, members, at, key.len(), member);
        true
    }

    /// Adds a field of any value.
    pub(crate) fn insert(&mut self, key: String, value: Value) {
        if let Reading::Text { text, .. } = &self.state {
            self.state = Reading::Fields(Written::parse(text));
        }
        if let Reading::Fields(fields) = &mut self.state {
            fields.insert(key, value);
        }
    }

    pub(crate) fn into_event(self, event_type: Arc<str>) -> Event {
        let payload = match self.state {
            Reading::Text { text, .. } => Payload::Text(Written { text, fields: std::sync::OnceLock::new() }),
            Reading::Fields(fields) => Payload::Fields(fields),
        };
        Event { event_type, payload, idempotency: None }
    }

    /// Where the member for `key` (a key that needs no escaping) goes among the members
    /// written (sorted by key), or `None` when the field cannot be written as text: its key
    /// is reserved (dropped from the wire, but in the map) or is there already (the last
    /// value wins, in the map).
    fn slot(text: &[u8], members: &[(usize, usize)], key: &[u8]) -> Option<usize> {
        if is_reserved(key) {
            return None;
        }
        let key_of = |&(start, len): &(usize, usize)| &text[start + 2..][..len];
        // Fields nearly always come in order, or nearly: the search starts at the end.
        let mut at = members.len();
        while at > 0 {
            let other = key_of(&members[at - 1]);
            // Keys nearly always differ in their first byte: compared here, not by `memcmp`.
            let order = match (key.first(), other.first()) {
                (Some(a), Some(b)) if a != b => a.cmp(b),
                _ => key.cmp(other),
            };
            match order {
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Equal => return None,
                std::cmp::Ordering::Less => at -= 1,
            }
        }
        Some(at)
    }

    /// Writes `,` and the member (`"key":value`, written by `member`) as member `at`.
    fn write(
        text: &mut Vec<u8>,
        members: &mut smallvec::SmallVec<[(usize, usize); 8]>,
        at: usize,
        key_len: usize,
        member: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = text.len();
        // Room for the usual payload at once: growing member by member costs a `realloc` each.
        text.reserve((key_len + 24).max(TEXT_ROOM.saturating_sub(start)));
        text.push(b',');
        member(text);
        // Written at the end, then rotated into place before the members that sort after it.
        let len = text.len() - start;
        if let Some(&(before, _)) = members.get(at) {
            text[before..].rotate_right(len);
            for member in &mut members[at..] {
                member.0 += len;
            }
            members.insert(at, (before, key_len));
        } else {
            members.push((start, key_len));
        }
    }
}

/// Writes `"key":`, for a key that needs no escaping.
fn push_key(text: &mut Vec<u8>, key: &[u8]) {
    text.push(b'"');
    text.extend_from_slice(key);
    text.extend_from_slice(b"\":");
}

/// Whether `key` is one of [`RESERVED_FIELDS`]: a match on the bytes, which the compiler
/// sorts by length first, rather than a comparison with each in turn.
fn is_reserved(key: &[u8]) -> bool {
    matches!(
        key,
        b"id" | b"type" | b"channel" | b"channels" | b"timestamp" | b"userId" | b"userName" | b"idempotencyKey"
    )
}

/// What makes a publish safe to retry: a retry under the same key, by the same publisher,
/// within `window`, answers the first publish's id and delivers nothing new; under the same
/// key with a different event it is refused (`idempotency_key_reused`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// A digest of the publisher's scope and key (hex): one publisher cannot reach another's
    /// ids, and the stored key holds nothing the publisher wrote.
    pub key: String,
    /// A digest of the event as published (channels, type, fields), to tell a retry from a
    /// different event under a reused key.
    pub fingerprint: String,
    /// How long the key is remembered.
    pub window: std::time::Duration,
}

impl Idempotency {
    /// The key `key` of publisher `scope` for `event` on `channels`.
    pub fn new(
        scope: &str,
        key: &str,
        channels: &[ChannelName],
        event: &Event,
        window: std::time::Duration,
    ) -> Result<Self, EventError> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EventError::BadIdempotencyKey);
        }
        let mut scoped = ring::digest::Context::new(&ring::digest::SHA256);
        // Length-prefixed, so that no (scope, key) pair spells another's.
        scoped.update(&(scope.len() as u64).to_be_bytes());
        scoped.update(scope.as_bytes());
        scoped.update(key.as_bytes());
        let mut print = ring::digest::Context::new(&ring::digest::SHA256);
        for ch in channels {
            print.update(ch.as_str().as_bytes());
            print.update(b"\n");
        }
        let mut json = Vec::with_capacity(128);
        push_member(&mut json, &event.event_type, event.fields());
        print.update(&json);
        Ok(Self { key: hex(scoped.finish().as_ref()), fingerprint: hex(print.finish().as_ref()), window })
    }
}

/// The first 16 bytes of a digest in hex: 128 bits, plenty against collisions here.
fn hex(digest: &[u8]) -> String {
    use std::fmt::Write as _;
    digest.iter().take(16).fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Who published an event, as established by the server (never by the request body).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publisher {
    pub user_id: Option<String>,
    pub user_name: Option<String>,
}

/// Checks an event type for use on the wire and in `event:` lines.
pub fn validate_type(event_type: &str) -> Result<(), EventError> {
    if event_type.is_empty() {
        return Err(EventError::MissingType);
    }
    if event_type.len() > MAX_TYPE_LEN
        || !event_type.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(EventError::BadType);
    }
    if SERVER_EVENT_TYPES.contains(&event_type) {
        return Err(EventError::ReservedType(event_type.to_owned()));
    }
    Ok(())
}

/// A validated event with its id and timestamp, serialized once, ready for an engine.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub id: Arc<str>,
    pub event_type: Arc<str>,
    pub channels: Vec<ChannelName>,
    /// The JSON members after `id` and `channel`, without braces:
    /// `"type":..,"timestamp":..,["userId":..,]...payload`.
    pub body: String,
    /// For an `ai_chat_chunk` with a string `streamId` and `text`: the chunk, which the
    /// engine adds to the stream's snapshot.
    pub ai: Option<AiChunk>,
    /// The publisher's idempotency key, if it gave one.
    pub idempotency: Option<Box<Idempotency>>,
    /// When the event was made (Unix milliseconds): the time of its id and its timestamp.
    pub at_ms: u64,
}

/// One chunk of an AI token stream (an `ai_chat_chunk` event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AiChunk {
    pub stream_id: String,
    pub text: String,
    pub done: bool,
}

/// The type of AI token-stream chunks.
pub const AI_CHUNK_TYPE: &str = "ai_chat_chunk";

/// Longest `streamId` whose chunks are kept as a snapshot.
pub const MAX_STREAM_ID: usize = 128;

fn ai_chunk(event: &Event) -> Option<AiChunk> {
    if &*event.event_type != AI_CHUNK_TYPE {
        return None;
    }
    let fields = event.fields();
    let stream_id = fields.get("streamId")?.as_str().filter(|s| !s.is_empty() && s.len() <= MAX_STREAM_ID)?;
    let text = fields.get("text").and_then(Value::as_str).unwrap_or_default();
    let done = fields.get("done").and_then(Value::as_bool).unwrap_or(false);
    Some(AiChunk { stream_id: stream_id.to_owned(), text: text.to_owned(), done })
}

impl Prepared {
    /// Validates and serializes an event for `channels` (deduplicated, order kept).
    pub fn new(
        channels: Vec<ChannelName>,
        event: Event,
        publisher: &Publisher,
        max_payload: usize,
    ) -> Result<Self, EventError> {
        Self::sharing_type(channels, event, publisher, max_payload, None, crate::clock::wall())
    }

    /// [`Prepared::new`] for an event of a batch made at `at` (the clock read once for the
    /// batch: its id's time and its timestamp): when its type is `previous`'s (the type of
    /// the event before it, nearly always the same), it shares that string.
    pub fn sharing_type(
        channels: Vec<ChannelName>,
        event: Event,
        publisher: &Publisher,
        max_payload: usize,
        previous: Option<&Arc<str>>,
        at: SystemTime,
    ) -> Result<Self, EventError> {
        validate_type(&event.event_type)?;
        // Deduplicated in place: the publisher's list is kept, not copied.
        let mut unique = channels;
        let mut i = 1;
        while i < unique.len() {
            if unique[..i].contains(&unique[i]) {
                unique.remove(i);
            } else {
                i += 1;
            }
        }
        if unique.is_empty() {
            return Err(EventError::NoChannel);
        }
        let ai = ai_chunk(&event);
        let Event { event_type, payload, idempotency } = event;
        // The id's time and the timestamp are one reading of the clock, turned into
        // milliseconds once.
        let ms = crate::ids::ms_of(at);
        let body = serialize_body_at(&event_type, payload, publisher, max_payload, ms)?;
        Ok(Self {
            id: crate::ids::new_shared_id_at(ms),
            event_type: match previous {
                Some(t) if **t == *event_type => Arc::clone(t),
                _ => event_type,
            },
            channels: unique,
            body,
            ai,
            idempotency,
            at_ms: ms,
        })
    }

    /// The complete JSON of this event as seen on one channel.
    pub fn json_for(&self, channel: &ChannelName) -> Vec<u8> {
        json_for(&self.id, channel.as_str(), &self.body)
    }
}

thread_local! {
    /// The type of the last event made on this thread.
    static LAST_TYPE: std::cell::RefCell<Option<Arc<str>>> = const { std::cell::RefCell::new(None) };
}

/// `event_type` as a shared string: the last one made on this thread when it is the same
/// type, nearly always (a publisher sends a few types, a batch nearly always one), where a
/// new one costs an allocation and, with the event, its freeing.
pub(crate) fn shared_type(event_type: &str) -> Arc<str> {
    LAST_TYPE.with_borrow_mut(|last| match last {
        Some(t) if **t == *event_type => Arc::clone(t),
        _ => Arc::clone(last.insert(Arc::from(event_type))),
    })
}

/// [`shared_type`] of a type read from a body as bytes: checked as UTF-8 only when it is not
/// the last type (`None` if it is not UTF-8).
pub(crate) fn shared_type_of(event_type: &[u8]) -> Option<Arc<str>> {
    LAST_TYPE.with_borrow_mut(|last| match last {
        Some(t) if t.as_bytes() == event_type => Some(Arc::clone(t)),
        _ => Some(Arc::clone(last.insert(Arc::from(std::str::from_utf8(event_type).ok()?)))),
    })
}

/// The JSON of an event sent to one connection alone (no channel, kept nowhere):
/// `(type, {"id","type","timestamp",...payload})`.
pub fn direct_json(event: Event, publisher: &Publisher, max_payload: usize) -> Result<(String, String), EventError> {
    validate_type(&event.event_type)?;
    let Event { event_type, payload, .. } = event;
    let body = serialize_body(&event_type, payload, publisher, max_payload)?;
    let mut out = Vec::with_capacity(body.len() + 40);
    out.push(b'{');
    push_member(&mut out, "id", crate::ids::new_id().as_str());
    out.push(b',');
    out.extend_from_slice(body.as_bytes());
    out.push(b'}');
    Ok((event_type.to_string(), into_string(out)))
}

/// The members after `id` and `channel`: type, timestamp, identity, then the payload
/// without reserved keys. Refuses a payload over `max_payload` bytes.
fn serialize_body(
    event_type: &str,
    payload: Payload,
    publisher: &Publisher,
    max_payload: usize,
) -> Result<String, EventError> {
    serialize_body_at(event_type, payload, publisher, max_payload, crate::ids::now_ms())
}

/// [`serialize_body`] of `event` with the timestamp `at` (to the millisecond).
#[cfg(test)]
pub(crate) fn body_at(
    event: &Event,
    publisher: &Publisher,
    max_payload: usize,
    at: SystemTime,
) -> Result<String, EventError> {
    validate_type(&event.event_type)?;
    serialize_body_at(&event.event_type, event.payload.clone(), publisher, max_payload, crate::ids::ms_of(at))
}

/// The body of an event whose type `validate_type` took (every caller checks it first): a
/// type of ASCII letters, digits and `_ - . :`, which is written as it is.
fn serialize_body_at(
    event_type: &str,
    payload: Payload,
    publisher: &Publisher,
    max_payload: usize,
    ms: u64,
) -> Result<String, EventError> {
    // A payload held as text becomes the body: the members before it are written after it
    // and rotated to the front, which costs less than a buffer of its own and a copy.
    let (mut body, written, fields) = match payload {
        Payload::Text(written) => {
            let len = written.text.len();
            (written.text, len, None)
        }
        Payload::Fields(fields) => (Vec::with_capacity(128), 0, Some(fields)),
    };
    body.extend_from_slice(br#""type":""#);
    body.extend_from_slice(event_type.as_bytes());
    body.extend_from_slice(br#"","timestamp":""#);
    push_timestamp(&mut body, ms);
    body.push(b'"');
    if let Some(uid) = &publisher.user_id {
        body.extend_from_slice(br#","userId":"#);
        push_json(&mut body, uid.as_str());
    }
    if let Some(name) = &publisher.user_name {
        body.extend_from_slice(br#","userName":"#);
        push_json(&mut body, name.as_str());
    }
    let fixed = body.len() - written;
    if let Some(fields) = &fields {
        push_fields(&mut body, fields);
    }
    body.rotate_left(written);
    let size = body.len() - fixed;
    if size > max_payload {
        return Err(EventError::TooLarge { size, limit: max_payload });
    }
    Ok(into_string(body))
}

/// Appends `,"key":value` for every field but the reserved ones, in the map's order.
fn push_fields(out: &mut Vec<u8>, fields: &Map<String, Value>) {
    for (k, v) in fields {
        if is_reserved(k.as_bytes()) {
            continue;
        }
        out.push(b',');
        push_plain_str(out, k);
        out.push(b':');
        push_json(out, v);
    }
}

/// The RFC 3339 text of the last millisecond a timestamp was written for, on this thread:
/// the events of a batch share one millisecond and copy its text, and the events of a
/// second share its date and time of day, and rewrite only the three digits of
/// milliseconds.
struct Stamp {
    ms: u64,
    text: [u8; STAMP_LEN],
}

/// `2026-12-04T15:44:11.123Z`: the length of every timestamp from year 1000 to 9999.
const STAMP_LEN: usize = 24;

thread_local! {
    static LAST_STAMP: std::cell::RefCell<Stamp> =
        const { std::cell::RefCell::new(Stamp { ms: u64::MAX, text: [0; STAMP_LEN] }) };
}

/// Writes `ms` (Unix milliseconds) as an RFC 3339 timestamp with milliseconds (it needs no
/// escaping), byte for byte as `humantime::format_rfc3339_millis` writes it; nothing from
/// the year 10000 on, which humantime refuses.
fn push_timestamp(out: &mut Vec<u8>, ms: u64) {
    LAST_STAMP.with_borrow_mut(|stamp| {
        if stamp.ms != ms {
            if stamp.ms / 1000 != ms / 1000 {
                let Some(text) = rfc3339_second(ms / 1000) else { return };
                stamp.text = text;
            }
            let millis = (ms % 1000) as usize;
            stamp.text[20] = b'0' + (millis / 100) as u8;
            stamp.text[21..23].copy_from_slice(two_digits(millis % 100));
            stamp.ms = ms;
        }
        out.extend_from_slice(&stamp.text);
    });
}

/// The two ASCII digits of `n` (below 100).
fn two_digits(n: usize) -> &'static [u8] {
    const DIGITS: [u8; 200] = {
        let mut table = [0; 200];
        let mut n = 0;
        while n < 100 {
            table[2 * n] = b'0' + (n / 10) as u8;
            table[2 * n + 1] = b'0' + (n % 10) as u8;
            n += 1;
        }
        table
    };
    &DIGITS[2 * n..2 * n + 2]
}

/// The second `second` (since the Unix epoch) in RFC 3339, `.000Z` for its milliseconds:
/// the civil date of a day count (Howard Hinnant's `civil_from_days`, in unsigned
/// arithmetic since the days count from 1970). `None` from the year 10000 on.
fn rfc3339_second(second: u64) -> Option<[u8; STAMP_LEN]> {
    if second >= 253_402_300_800 {
        return None;
    }
    let (days, of_day) = (second / 86_400, (second % 86_400) as usize);
    // Days since 0000-03-01, in eras of 400 years (146,097 days), each from a 1 March.
    let z = days + 719_468;
    let era = z / 146_097;
    let of_era = z - era * 146_097;
    let year_of_era = (of_era - of_era / 1_460 + of_era / 36_524 - of_era / 146_096) / 365;
    let of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * of_year + 2) / 153;
    let day = (of_year - (153 * month_from_march + 2) / 5 + 1) as usize;
    let month = (if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 }) as usize;
    let year = (year_of_era + era * 400 + u64::from(month <= 2)) as usize;
    let mut text = *b"0000-00-00T00:00:00.000Z";
    for (at, n) in [(0, year / 100), (2, year % 100), (5, month), (8, day)] {
        text[at..at + 2].copy_from_slice(two_digits(n));
    }
    for (at, n) in [(11, of_day / 3_600), (14, of_day / 60 % 60), (17, of_day % 60)] {
        text[at..at + 2].copy_from_slice(two_digits(n));
    }
    Some(text)
}

/// Assembles the wire JSON from the id, the channel and the prepared body members.
pub fn json_for(id: &str, channel: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + id.len() + channel.len() + 24);
    write_json(&mut out, id, channel, body);
    out
}

/// Appends the wire JSON of [`json_for`] to `out`.
fn write_json(out: &mut Vec<u8>, id: &str, channel: &str, body: &str) {
    // Ids and channel names never need escaping: both are checked in one go and copied
    // between constant parts, rather than each framed by a call of its own.
    if is_plain(id.as_bytes()) && is_plain(channel.as_bytes()) {
        out.reserve(id.len() + channel.len() + body.len() + 22);
        out.extend_from_slice(br#"{"id":""#);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(br#"","channel":""#);
        out.extend_from_slice(channel.as_bytes());
        out.extend_from_slice(br#"","#);
    } else {
        out.extend_from_slice(br#"{"id":"#);
        push_json(out, id);
        out.extend_from_slice(br#","channel":"#);
        push_json(out, channel);
        out.push(b',');
    }
    out.extend_from_slice(body.as_bytes());
    out.push(b'}');
}

/// A JSON string, copied as it is when nothing in it needs escaping (each key of a map
/// passes here), through the serializer otherwise.
fn push_plain_str(out: &mut Vec<u8>, s: &str) {
    if is_plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        push_json(out, s);
    }
}

/// Whether nothing in `s` needs escaping in JSON and it is printable ASCII: written
/// between quotes as it is, it is what `serde_json` writes of it.
fn is_plain(s: &[u8]) -> bool {
    // A fold with no early exit: the compiler checks many bytes at once (an id, a channel
    // name and each key of a map pass here, for every event), which costs less than eight
    // bytes at a time in a word for strings this short.
    s.iter().fold(true, |plain, &b| plain & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\'))
}

/// Appends `"key":value`, both as JSON, serialized straight into `out`: no `Value` and no
/// `String` per member.
fn push_member<V: serde::Serialize + ?Sized>(out: &mut Vec<u8>, key: &str, value: &V) {
    push_json(out, key);
    out.push(b':');
    push_json(out, value);
}

fn push_json<V: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &V) {
    // Strings and `Value`s (whose map keys are strings) always serialize, and writing to a
    // `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// JSON written by `push_member` (and `&str`s appended whole) is UTF-8; the check is one
/// pass over bytes just written.
fn into_string(json: Vec<u8>) -> String {
    String::from_utf8(json).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// An event on one of its channels: its position there and its shared frame.
#[derive(Debug)]
pub struct Copy {
    pub channel: ChannelName,
    pub position: Position,
    pub frame: Frame,
    /// The copy as a whole WebSocket frame (a server's text frame: its header, then the
    /// message `{"id":..,"data":..}` with the frame's own id), built by the first WebSocket
    /// subscriber that is shown that id and written as it is to every other such socket
    /// ([`Copy::websocket`]): a server's frames are unmasked, so the bytes are the same
    /// for all of them. Boxed: most events never have a WebSocket subscriber, and every
    /// event pays for what it holds in lines written as it is made (16 bytes here, not 40).
    websocket: std::sync::OnceLock<Box<Bytes>>,
}

/// The copies of an event, one per channel (a slice, through `Deref`): the one copy of an
/// event of one channel, nearly every one, is held in the event itself, the copies of an
/// event of several in an allocation of their own. In the space of the one copy (where a
/// `SmallVec` takes 16 bytes more), which keeps the event within 192 bytes.
#[derive(Debug)]
pub struct Copies(Held);

#[derive(Debug)]
enum Held {
    One(Copy),
    /// None, or more than one.
    Many(Box<[Copy]>),
}

impl Copies {
    pub fn as_slice(&self) -> &[Copy] {
        match &self.0 {
            Held::One(copy) => std::slice::from_ref(copy),
            Held::Many(copies) => copies,
        }
    }
}

impl std::ops::Deref for Copies {
    type Target = [Copy];

    fn deref(&self) -> &[Copy] {
        self.as_slice()
    }
}

impl<'a> IntoIterator for &'a Copies {
    type Item = &'a Copy;
    type IntoIter = std::slice::Iter<'a, Copy>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl From<Vec<Copy>> for Copies {
    fn from(mut copies: Vec<Copy>) -> Self {
        match copies.pop() {
            Some(copy) if copies.is_empty() => Self(Held::One(copy)),
            Some(copy) => {
                copies.push(copy);
                Self(Held::Many(copies.into_boxed_slice()))
            }
            None => Self(Held::Many(Box::default())),
        }
    }
}

impl FromIterator<Copy> for Copies {
    fn from_iter<I: IntoIterator<Item = Copy>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        match (iter.next(), iter.next()) {
            (Some(copy), None) => Self(Held::One(copy)),
            (first, second) => {
                Self(Held::Many(first.into_iter().chain(second).chain(iter).collect::<Vec<_>>().into_boxed_slice()))
            }
        }
    }
}

/// An event after the engine accepted it: what the hub fans out and history replays.
///
/// Within 192 bytes with the `Arc`'s two counts (a test holds it there): jemalloc's size
/// class of three cache lines, every one of them written as the event is made and kept in
/// history, where 232 bytes took the 256 class, four lines.
#[derive(Debug)]
pub struct Published {
    pub id: Arc<str>,
    pub event_type: Arc<str>,
    /// One per channel: held in the event itself for an event of one channel, nearly
    /// every one, rather than in an allocation of its own.
    pub copies: Copies,
    /// How many channels the event was published to. An engine that delivers each channel's
    /// copy separately (Redis) sets it above `copies.len()`, so that a connection following
    /// several of those channels can drop the repeats.
    pub fanout: u16,
    /// When this node accepted the event (the engine's publish, or its arrival from Redis):
    /// the start of `herald_publish_to_write_seconds`.
    pub accepted: std::time::Instant,
    /// The top-level fields, parsed on first use by a filtered subscription. Boxed: most
    /// events never parse them (16 bytes here, not 32).
    fields: std::sync::OnceLock<Box<Map<String, Value>>>,
}

impl Published {
    /// Frames a prepared event at the positions the engine gave it (one per channel).
    pub fn from_prepared(p: &Prepared, positions: &[Position]) -> Arc<Self> {
        Self::from_prepared_at(p, positions, std::time::Instant::now())
    }

    /// [`Published::from_prepared`] accepted at `accepted` (read once for a batch).
    pub fn from_prepared_at(p: &Prepared, positions: &[Position], accepted: std::time::Instant) -> Arc<Self> {
        let copies = match (p.channels.as_slice(), positions) {
            ([channel], [pos]) => Copies(Held::One(Copy::of_prepared(p, channel.clone(), *pos))),
            _ => p.channels.iter().zip(positions).map(|(ch, pos)| Copy::of_prepared(p, ch.clone(), *pos)).collect(),
        };
        let fanout = u16::try_from(copies.len()).unwrap_or(u16::MAX);
        Arc::new(Self::accepted_at(p.id.clone(), p.event_type.clone(), copies, fanout, accepted))
    }

    /// [`Published::from_prepared_at`] of an event of one channel, at `pos`, its copy holding
    /// `channel`: the event's one channel, as the engine keeps it. The engine's name lives
    /// as long as the channel, where the prepared event's was parsed for its request alone:
    /// the event kept in history holds no name of its own.
    pub fn from_prepared_on(
        p: &Prepared,
        channel: ChannelName,
        pos: Position,
        accepted: std::time::Instant,
    ) -> Arc<Self> {
        let copies = Copies(Held::One(Copy::of_prepared(p, channel, pos)));
        Arc::new(Self::accepted_at(p.id.clone(), p.event_type.clone(), copies, 1, accepted))
    }

    pub fn new(id: Arc<str>, event_type: Arc<str>, copies: Vec<Copy>, fanout: u16) -> Self {
        Self::accepted_at(id, event_type, Copies::from(copies), fanout, std::time::Instant::now())
    }

    fn accepted_at(
        id: Arc<str>,
        event_type: Arc<str>,
        copies: Copies,
        fanout: u16,
        accepted: std::time::Instant,
    ) -> Self {
        Self { id, event_type, copies, fanout, accepted, fields: std::sync::OnceLock::new() }
    }

    /// Whether every `(field, value)` filter matches a top-level field of the event as it is
    /// written on `copy`'s channel (strings compared as they are, numbers and booleans by
    /// their JSON text). `channel` is the one field that differs between an event's copies,
    /// so it is the copy's; the others are the same in every copy.
    pub fn matches_on(&self, copy: &Copy, filters: &[(String, String)]) -> bool {
        filters.iter().all(|(field, want)| {
            if field == "channel" { copy.channel.as_str() == want } else { field_matches(self.fields(), field, want) }
        })
    }

    /// The event's top-level fields, parsed once on first use.
    pub fn fields(&self) -> &Map<String, Value> {
        self.fields.get_or_init(|| {
            Box::new(self.copies.first().and_then(|c| serde_json::from_slice(c.frame.json()).ok()).unwrap_or_default())
        })
    }

    /// The `streamId` of an AI token-stream chunk.
    pub fn ai_stream_id(&self) -> Option<&str> {
        if &*self.event_type != AI_CHUNK_TYPE {
            return None;
        }
        self.fields().get("streamId").and_then(Value::as_str)
    }

    /// The copy of this event on `channel`, if it was published there.
    pub fn copy_on(&self, channel: &str) -> Option<&Copy> {
        self.copies.iter().find(|c| c.channel.as_str() == channel)
    }
}

/// Whether every `(field, value)` filter matches a top-level field of `fields` (strings
/// compared as they are, numbers and booleans by their JSON text).
pub fn fields_match(fields: &Map<String, Value>, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(field, want)| field_matches(fields, field, want))
}

fn field_matches(fields: &Map<String, Value>, field: &str, want: &str) -> bool {
    match fields.get(field) {
        Some(Value::String(s)) => s == want,
        Some(v @ (Value::Number(_) | Value::Bool(_))) => serde_json::from_str::<Value>(want).is_ok_and(|w| w == *v),
        _ => false,
    }
}

impl Copy {
    pub fn new(channel: ChannelName, position: Position, event_type: &str, json: &[u8]) -> Self {
        let id = single_entry(channel.as_str(), position);
        let frame = Frame::new(event_type, &id, json);
        Self::framed(channel, position, frame)
    }

    /// A copy around a frame built already (another copy's, shared).
    pub(crate) fn framed(channel: ChannelName, position: Position, frame: Frame) -> Self {
        Self { channel, position, frame, websocket: std::sync::OnceLock::new() }
    }

    /// The copy's WebSocket frame with its own id: `build` makes it from the SSE frame the
    /// first time, every later call shares those bytes.
    pub(crate) fn websocket(&self, build: impl FnOnce(&Frame) -> Bytes) -> Bytes {
        Bytes::clone(self.websocket.get_or_init(|| Box::new(build(&self.frame))))
    }

    /// [`Copy::new`] for a prepared event: the SSE id and the event's JSON are written
    /// straight into the frame's one buffer (no `String` for the id, no JSON built apart and
    /// copied in). The bytes are those `Copy::new` frames from [`Prepared::json_for`].
    fn of_prepared(p: &Prepared, channel: ChannelName, position: Position) -> Self {
        let (id, ch, body) = (&*p.id, channel.as_str(), p.body.as_str());
        let capacity = 2 * ch.len() + id.len() + body.len() + 48;
        let frame = Frame::build(
            &p.event_type,
            capacity,
            |out| crate::cursor::write_entry_bytes(out, ch, position),
            |out| write_json(out, id, ch, body),
        );
        Self::framed(channel, position, frame)
    }
}

/// Events made by tests.
#[cfg(test)]
impl Published {
    /// An event `id` of type `t` and JSON `{}`, at position `(ms, 0)` of each `(channel, ms)`.
    pub(crate) fn at(id: &str, at: &[(&ChannelName, u64)]) -> Arc<Self> {
        let copies = at.iter().map(|(c, ms)| Copy::new((*c).clone(), Position::new(*ms, 0), "t", b"{}")).collect();
        Arc::new(Self::new(Arc::from(id), Arc::from("t"), copies, at.len() as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reserved_fields_are_set_by_the_server_not_the_publisher() {
        let event = Event::new("chat")
            .with("content", "hi")
            .with("userId", "spoofed")
            .with("id", "forged")
            .with("timestamp", "1999");
        let me = Publisher { user_id: Some("u1".into()), user_name: Some("Ann".into()) };
        let p = Prepared::new(vec![ch("channel:general")], event, &me, 1024).unwrap_or_else(|e| panic!("{e}"));
        let v: Value = serde_json::from_slice(&p.json_for(&p.channels[0])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["userId"], "u1");
        assert_eq!(v["userName"], "Ann");
        assert_eq!(v["id"], &*p.id);
        assert_eq!(v["channel"], "channel:general");
        assert_eq!(v["type"], "chat");
        assert_eq!(v["content"], "hi");
        assert_ne!(v["timestamp"], "1999");
    }

    #[test]
    fn keys_values_and_names_that_need_escaping_survive_the_round_trip() {
        let payload = serde_json::json!({"nested": {"a\"b": [1, "x\ny", null, true, 2.5]}});
        let event = Event::new("chat")
            .with("quote\"key\n", "line one\nline two \"quoted\" \\ back </script>")
            .with("unicode", "café 🎉 \u{2028}\u{0}")
            .with("payload", payload.clone());
        let me = Publisher { user_id: Some("u\"1".into()), user_name: Some("Ann \"The\" O'Neil\n".into()) };
        let p = Prepared::new(vec![ch("channel:general")], event, &me, 4096).unwrap_or_else(|e| panic!("{e}"));
        let json = String::from_utf8(p.json_for(&p.channels[0])).unwrap_or_else(|e| panic!("{e}"));
        assert!(!json.contains('\n'), "a raw newline would break the SSE frame: {json}");
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(v["quote\"key\n"], "line one\nline two \"quoted\" \\ back </script>");
        assert_eq!(v["unicode"], "café 🎉 \u{2028}\u{0}");
        assert_eq!(v["payload"], payload);
        assert_eq!(v["userId"], "u\"1");
        assert_eq!(v["userName"], "Ann \"The\" O'Neil\n");
    }

    #[test]
    fn a_published_copy_frames_the_json_and_id_of_its_channel_as_framed_apart() {
        let me = Publisher { user_id: Some("u\"1".into()), user_name: None };
        let event = Event::new("chat").with("text", "line one\nline \"two\" \u{2028}");
        let mut p =
            Prepared::new(vec![ch("channel:a"), ch("user:42")], event, &me, 4096).unwrap_or_else(|e| panic!("{e}"));
        for id in [None, Some("not \"plain\"\n\u{e9}")] {
            if let Some(id) = id {
                p.id = Arc::from(id);
            }
            let positions = [Position::new(1_764_800_000_123, 0), Position::new(1_764_800_000_124, 7)];
            let published = Published::from_prepared(&p, &positions);
            for ((copy, channel), pos) in published.copies.iter().zip(&p.channels).zip(positions) {
                let apart = Copy::new(channel.clone(), pos, &p.event_type, &p.json_for(channel));
                assert_eq!(copy.frame.with_id(true), apart.frame.with_id(true));
                assert_eq!(copy.frame.id(), single_entry(channel.as_str(), pos));
                assert_eq!((&copy.channel, copy.position), (channel, pos));
            }
        }
    }

    #[test]
    fn a_published_event_stays_within_its_allocation_size_class() {
        // With the `Arc`'s two counts, 192 bytes: jemalloc's size class of three cache
        // lines, all written as the event is made; the next is 224 (four lines, or five).
        let size = std::mem::size_of::<Published>();
        assert!(size <= 176, "{size}");
        // 176 today (a `ChannelName` holds a short name in itself): nothing to spare.
    }

    #[test]
    fn copies_hold_one_copy_in_place_and_any_other_number_apart() {
        let copy = |n: u64| Copy::new(ch("channel:a"), Position::new(n, 0), "t", b"{}");
        for n in 0..4_u64 {
            let from_vec = Copies::from((0..n).map(copy).collect::<Vec<_>>());
            let collected: Copies = (0..n).map(copy).collect();
            for copies in [&from_vec, &collected] {
                assert_eq!(copies.len() as u64, n);
                assert_eq!(matches!(copies.0, Held::One(_)), n == 1);
                let ms: Vec<u64> = copies.into_iter().map(|c| c.position.ms).collect();
                assert_eq!(ms, (0..n).collect::<Vec<_>>(), "in order");
            }
        }
    }

    #[test]
    fn a_websocket_frame_and_the_fields_are_made_once_and_shared() {
        let json = br#"{"id":"e1","channel":"channel:a","type":"t","n":1}"#;
        let event = Published::new(
            Arc::from("e1"),
            Arc::from("t"),
            vec![Copy::new(ch("channel:a"), Position::new(1, 0), "t", json)],
            1,
        );
        let copy = &event.copies[0];
        let first = copy.websocket(|frame| Bytes::copy_from_slice(frame.json()));
        let again = copy.websocket(|_| Bytes::from_static(b"built again"));
        assert_eq!((&first[..], first.as_ptr()), (&json[..], again.as_ptr()));
        assert!(std::ptr::eq(event.fields(), event.fields()));
        assert_eq!(event.fields()["n"], 1);
        assert!(event.matches_on(copy, &[("n".into(), "1".into()), ("channel".into(), "channel:a".into())]));
    }

    #[test]
    fn a_string_copied_as_it_is_is_the_string_serde_json_writes() {
        let mut strings: Vec<String> = (0..=0x7f_u8).map(|b| format!("ab{}cd", b as char)).collect();
        for len in 0..40_usize {
            for c in ['a', '"', '\\', '\n', '\u{1f}', '\u{7f}', 'é', '\u{2028}', '🎉', '\u{0}'] {
                for at in [0, len / 2, len.saturating_sub(1)] {
                    let mut chars = vec!['x'; len];
                    if let Some(slot) = chars.get_mut(at) {
                        *slot = c;
                    }
                    strings.push(chars.into_iter().collect());
                }
            }
        }
        let json = |s: &str| serde_json::to_string(s).unwrap_or_else(|e| panic!("{e}"));
        for s in &strings {
            let by_byte = s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
            assert_eq!(is_plain(s.as_bytes()), by_byte, "{s:?}");
            let mut out = Vec::new();
            push_plain_str(&mut out, s);
            assert_eq!(String::from_utf8(out).ok(), Some(json(s)), "{s:?}");
            for (id, channel) in [(s.as_str(), "user:1"), ("01ABC", s.as_str()), (s.as_str(), s.as_str())] {
                let want = format!(r#"{{"id":{},"channel":{},"type":"t"}}"#, json(id), json(channel));
                assert_eq!(String::from_utf8(json_for(id, channel, r#""type":"t""#)).ok(), Some(want));
            }
        }
    }

    #[test]
    fn a_type_read_as_bytes_is_the_type_read_as_a_string() {
        let a = shared_type_of(b"chat").unwrap_or_else(|| panic!("UTF-8"));
        assert!(Arc::ptr_eq(&a, &shared_type("chat")), "the last type, shared");
        let b = shared_type_of("caf\u{e9}".as_bytes()).unwrap_or_else(|| panic!("UTF-8"));
        assert_eq!(&*b, "caf\u{e9}");
        assert!(Arc::ptr_eq(&b, &shared_type_of("caf\u{e9}".as_bytes()).unwrap_or_else(|| panic!("UTF-8"))));
        assert_eq!(shared_type_of(b"caf\xe9"), None);
    }

    #[test]
    fn a_reserved_key_is_one_of_the_reserved_fields() {
        for key in RESERVED_FIELDS {
            assert!(is_reserved(key.as_bytes()), "{key}");
        }
        for key in ["", "i", "ids", "Id", "typ", "types", "channelz", "userid", "idempotencykey", "timestamp "] {
            assert!(!is_reserved(key.as_bytes()), "{key}");
        }
    }

    #[test]
    fn an_events_type_is_the_string_of_the_last_event_of_that_type() {
        let prepare = |t: &str| {
            Prepared::new(vec![ch("channel:a")], Event::new(t), &Publisher::default(), 64)
                .unwrap_or_else(|e| panic!("{e}"))
                .event_type
        };
        let (a, b, c) = (prepare("chat"), prepare("chat"), prepare("typing"));
        assert!(Arc::ptr_eq(&a, &b), "one string for one type");
        assert_eq!((&*b, &*c), ("chat", "typing"));
        assert_eq!(&*prepare("chat"), "chat");
    }

    #[test]
    fn a_timestamp_reused_within_its_second_is_the_one_formatted_for_it() {
        let times = [
            1_764_863_051_123,
            1_764_863_051_123,
            1_764_863_051_124,
            1_764_863_051_009,
            0,
            1_764_863_051_999,
            1_764_863_052_000,
        ];
        for ms in times {
            let mut out = Vec::new();
            push_timestamp(&mut out, ms);
            assert_eq!(String::from_utf8(out).ok(), Some(humantime_millis(ms)));
        }
    }

    fn humantime_millis(ms: u64) -> String {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
    }

    #[test]
    fn a_timestamp_is_written_as_humantime_writes_it() {
        let day = 86_400_000u64;
        // Year, leap-day and century boundaries, then a walk over every year to 9999 with
        // odd steps that land on every hour, minute, second and millisecond digit.
        let mut times = vec![0, 1, 999, 1_000, day - 1, day, 951_782_400_000 - 1, 951_782_400_000, 951_868_800_000];
        // 2000 (a leap year of a century), 2100 (a century not leap), 2001 (not leap), 2024.
        for year_start in [946_684_800_000u64, 4_102_444_800_000, 978_307_200_000, 1_704_067_200_000] {
            for d in [0, 58, 59, 60, 364, 365] {
                times.extend([year_start + d * day - 1, year_start + d * day, year_start + d * day + 86_399_999]);
            }
        }
        let mut ms = 0u64;
        while ms < 253_402_300_800_000 {
            times.push(ms);
            ms += 3_217_123_457_u64 + ms % 7_919;
        }
        times.push(253_402_300_799_999);
        for ms in times {
            let mut out = Vec::new();
            push_timestamp(&mut out, ms);
            assert_eq!(String::from_utf8(out).ok(), Some(humantime_millis(ms)), "{ms}");
        }
        let mut out = Vec::new();
        push_timestamp(&mut out, 253_402_300_800_000);
        assert_eq!(out, b"", "humantime refuses the year 10000");
    }

    #[test]
    fn bad_types_and_oversize_payloads_are_refused() {
        let none = Publisher::default();
        let c = || vec![ch("channel:x")];
        assert_eq!(Prepared::new(c(), Event::new(""), &none, 10).err(), Some(EventError::MissingType));
        assert_eq!(Prepared::new(c(), Event::new("a b"), &none, 10).err(), Some(EventError::BadType));
        assert_eq!(
            Prepared::new(c(), Event::new("connected"), &none, 10).err(),
            Some(EventError::ReservedType("connected".into()))
        );
        let big = Event::new("chat").with("content", "x".repeat(100));
        assert!(matches!(Prepared::new(c(), big, &none, 50), Err(EventError::TooLarge { .. })));
        assert_eq!(Prepared::new(vec![], Event::new("chat"), &none, 10).err(), Some(EventError::NoChannel));
    }
}
