//! Centrifugo's Protobuf protocol (the `centrifuge-protobuf` WebSocket subprotocol, which
//! the `centrifuge` SDKs for Swift, Java and Dart speak, and the JavaScript one on request):
//! each binary frame a run of length-delimited `Command`s up and `Reply`s down
//! (`centrifugal/protocol`'s `client.proto`).
//!
//! The session speaks the JSON protocol; this wire translates at its edge, field by field
//! from the schema below: a `Command` becomes the JSON command of the same fields, a JSON
//! reply the `Reply` of the same fields. A `bytes` field that holds data (`data`,
//! `conn_info`, `chan_info`) carries the JSON text of the value both ways, so a publication
//! reaches a Protobuf client as the same JSON bytes a JSON client reads. Fields Herald does
//! not use are skipped when read and never written.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::session::{End, Out, Wire};
use crate::http::ws::{Close, In, Socket, UpgradedIo, pong};
use crate::transport::messages::websocket_frame;

/// The subprotocol a client names to speak it.
pub(super) const SUBPROTOCOL: &str = "centrifuge-protobuf";

/// Whether an upgrade's query asks for Protobuf as the SDKs did before the subprotocol
/// (`format=protobuf`, or `cf_protocol=protobuf`).
pub(super) fn asked_in(query: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(k, v)| (k == "format" || k == "cf_protocol") && v == "protobuf")
}

const BINARY: u8 = 0x2;

/// How a field is written on the wire and read into JSON.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    /// `uint32` or `uint64`.
    Unsigned,
    /// `int32` or `int64` (negative values as ten-byte varints).
    Signed,
    Bool,
    /// `bytes` holding JSON text.
    Json,
    Msg(&'static [Field]),
    /// `map<string, message>`.
    Map(&'static [Field]),
    /// `map<string, string>`.
    MapStr,
    /// `repeated message`.
    List(&'static [Field]),
}

#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    num: u32,
    ty: Ty,
}

const fn f(name: &'static str, num: u32, ty: Ty) -> Field {
    Field { name, num, ty }
}

const STREAM_POSITION: &[Field] = &[f("offset", 1, Ty::Unsigned), f("epoch", 2, Ty::Str)];
const CHANNEL_REQUEST: &[Field] = &[f("channel", 1, Ty::Str)];
const SUBSCRIBE_REQUEST: &[Field] = &[
    f("channel", 1, Ty::Str),
    f("token", 2, Ty::Str),
    f("recover", 3, Ty::Bool),
    f("epoch", 6, Ty::Str),
    f("offset", 7, Ty::Unsigned),
    f("data", 8, Ty::Json),
    f("positioned", 9, Ty::Bool),
    f("recoverable", 10, Ty::Bool),
    f("join_leave", 11, Ty::Bool),
    f("delta", 12, Ty::Str),
];
const CONNECT_REQUEST: &[Field] = &[
    f("token", 1, Ty::Str),
    f("data", 2, Ty::Json),
    f("subs", 3, Ty::Map(SUBSCRIBE_REQUEST)),
    f("name", 4, Ty::Str),
    f("version", 5, Ty::Str),
];
const COMMAND: &[Field] = &[
    f("id", 1, Ty::Unsigned),
    f("connect", 4, Ty::Msg(CONNECT_REQUEST)),
    f("subscribe", 5, Ty::Msg(SUBSCRIBE_REQUEST)),
    f("unsubscribe", 6, Ty::Msg(CHANNEL_REQUEST)),
    f("publish", 7, Ty::Msg(&[f("channel", 1, Ty::Str), f("data", 2, Ty::Json)])),
    f("presence", 8, Ty::Msg(CHANNEL_REQUEST)),
    f("presence_stats", 9, Ty::Msg(CHANNEL_REQUEST)),
    f(
        "history",
        10,
        Ty::Msg(&[
            f("channel", 1, Ty::Str),
            f("limit", 7, Ty::Signed),
            f("since", 8, Ty::Msg(STREAM_POSITION)),
            f("reverse", 9, Ty::Bool),
        ]),
    ),
    f("send", 12, Ty::Msg(&[f("data", 1, Ty::Json)])),
    f("rpc", 13, Ty::Msg(&[f("data", 1, Ty::Json), f("method", 2, Ty::Str)])),
    f("refresh", 14, Ty::Msg(&[f("token", 1, Ty::Str)])),
    f("sub_refresh", 15, Ty::Msg(&[f("channel", 1, Ty::Str), f("token", 2, Ty::Str)])),
];

const CLIENT_INFO: &[Field] =
    &[f("user", 1, Ty::Str), f("client", 2, Ty::Str), f("conn_info", 3, Ty::Json), f("chan_info", 4, Ty::Json)];
const PUBLICATION: &[Field] = &[
    f("data", 4, Ty::Json),
    f("info", 5, Ty::Msg(CLIENT_INFO)),
    f("offset", 6, Ty::Unsigned),
    f("tags", 7, Ty::MapStr),
    f("time", 9, Ty::Signed),
    f("channel", 10, Ty::Str),
];
const SUBSCRIBE_RESULT: &[Field] = &[
    f("expires", 1, Ty::Bool),
    f("ttl", 2, Ty::Unsigned),
    f("recoverable", 3, Ty::Bool),
    f("epoch", 6, Ty::Str),
    f("publications", 7, Ty::List(PUBLICATION)),
    f("recovered", 8, Ty::Bool),
    f("offset", 9, Ty::Unsigned),
    f("positioned", 10, Ty::Bool),
    f("data", 11, Ty::Json),
    f("was_recovering", 12, Ty::Bool),
];
const CONNECT_RESULT: &[Field] = &[
    f("client", 1, Ty::Str),
    f("version", 2, Ty::Str),
    f("expires", 3, Ty::Bool),
    f("ttl", 4, Ty::Unsigned),
    f("data", 5, Ty::Json),
    f("subs", 6, Ty::Map(SUBSCRIBE_RESULT)),
    f("ping", 7, Ty::Unsigned),
    f("pong", 8, Ty::Bool),
    f("session", 9, Ty::Str),
    f("node", 10, Ty::Str),
];
const JOIN_OR_LEAVE: &[Field] = &[f("info", 1, Ty::Msg(CLIENT_INFO))];
const PUSH: &[Field] = &[
    f("channel", 2, Ty::Str),
    f("pub", 4, Ty::Msg(PUBLICATION)),
    f("join", 5, Ty::Msg(JOIN_OR_LEAVE)),
    f("leave", 6, Ty::Msg(JOIN_OR_LEAVE)),
    f("unsubscribe", 7, Ty::Msg(&[f("code", 2, Ty::Unsigned), f("reason", 3, Ty::Str)])),
    f(
        "subscribe",
        9,
        Ty::Msg(&[
            f("recoverable", 1, Ty::Bool),
            f("epoch", 4, Ty::Str),
            f("offset", 5, Ty::Unsigned),
            f("positioned", 6, Ty::Bool),
            f("data", 7, Ty::Json),
        ]),
    ),
    f("disconnect", 11, Ty::Msg(&[f("code", 1, Ty::Unsigned), f("reason", 2, Ty::Str), f("reconnect", 3, Ty::Bool)])),
];
const REFRESH_RESULT: &[Field] =
    &[f("client", 1, Ty::Str), f("version", 2, Ty::Str), f("expires", 3, Ty::Bool), f("ttl", 4, Ty::Unsigned)];
const REPLY: &[Field] = &[
    f("id", 1, Ty::Unsigned),
    f("error", 2, Ty::Msg(&[f("code", 1, Ty::Unsigned), f("message", 2, Ty::Str), f("temporary", 3, Ty::Bool)])),
    f("push", 4, Ty::Msg(PUSH)),
    f("connect", 5, Ty::Msg(CONNECT_RESULT)),
    f("subscribe", 6, Ty::Msg(SUBSCRIBE_RESULT)),
    f("unsubscribe", 7, Ty::Msg(&[])),
    f("publish", 8, Ty::Msg(&[])),
    f("presence", 9, Ty::Msg(&[f("presence", 1, Ty::Map(CLIENT_INFO))])),
    f("presence_stats", 10, Ty::Msg(&[f("num_clients", 1, Ty::Unsigned), f("num_users", 2, Ty::Unsigned)])),
    f(
        "history",
        11,
        Ty::Msg(&[f("publications", 1, Ty::List(PUBLICATION)), f("epoch", 2, Ty::Str), f("offset", 3, Ty::Unsigned)]),
    ),
    f("rpc", 13, Ty::Msg(&[f("data", 1, Ty::Json)])),
    f("refresh", 14, Ty::Msg(REFRESH_RESULT)),
    f("sub_refresh", 15, Ty::Msg(&[f("expires", 1, Ty::Bool), f("ttl", 2, Ty::Unsigned)])),
];

// --- writing ---------------------------------------------------------------------------

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, num: u32, wire: u8) {
    varint(out, (u64::from(num) << 3) | u64::from(wire));
}

fn delimited(out: &mut Vec<u8>, num: u32, bytes: &[u8]) {
    key(out, num, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Writes the fields of `schema` that `value` (a JSON object) holds.
fn encode(value: &Value, schema: &[Field], out: &mut Vec<u8>) {
    let Value::Object(obj) = value else { return };
    for field in schema {
        let Some(v) = obj.get(field.name) else { continue };
        match field.ty {
            Ty::Str => {
                if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
                    delimited(out, field.num, s.as_bytes());
                }
            }
            Ty::Unsigned => {
                if let Some(n) = v.as_u64().filter(|n| *n != 0) {
                    key(out, field.num, 0);
                    varint(out, n);
                }
            }
            Ty::Signed => {
                if let Some(n) = v.as_i64().filter(|n| *n != 0) {
                    key(out, field.num, 0);
                    varint(out, n as u64);
                }
            }
            Ty::Bool => {
                if v.as_bool() == Some(true) {
                    key(out, field.num, 0);
                    varint(out, 1);
                }
            }
            Ty::Json => {
                if !v.is_null() {
                    delimited(out, field.num, v.to_string().as_bytes());
                }
            }
            Ty::Msg(inner) => {
                if v.is_object() {
                    let mut buf = Vec::new();
                    encode(v, inner, &mut buf);
                    delimited(out, field.num, &buf);
                }
            }
            Ty::Map(inner) => {
                for (k, item) in v.as_object().into_iter().flatten() {
                    let mut entry = Vec::new();
                    delimited(&mut entry, 1, k.as_bytes());
                    let mut buf = Vec::new();
                    encode(item, inner, &mut buf);
                    delimited(&mut entry, 2, &buf);
                    delimited(out, field.num, &entry);
                }
            }
            Ty::MapStr => {
                for (k, item) in v.as_object().into_iter().flatten() {
                    let mut entry = Vec::new();
                    delimited(&mut entry, 1, k.as_bytes());
                    delimited(&mut entry, 2, item.as_str().unwrap_or_default().as_bytes());
                    delimited(out, field.num, &entry);
                }
            }
            Ty::List(inner) => {
                for item in v.as_array().into_iter().flatten() {
                    let mut buf = Vec::new();
                    encode(item, inner, &mut buf);
                    delimited(out, field.num, &buf);
                }
            }
        }
    }
}

/// Reply and push lines (JSON) as length-delimited `Reply`s; a line that is not JSON is left
/// out (the session writes none).
pub(super) fn replies(lines: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.iter().map(String::len).sum::<usize>() + 16);
    for line in lines {
        if publication(line, &mut out) {
            continue;
        }
        let Ok(reply) = serde_json::from_str::<Value>(line) else { continue };
        let mut buf = Vec::new();
        encode(&reply, REPLY, &mut buf);
        varint(&mut out, buf.len() as u64);
        out.extend_from_slice(&buf);
    }
    out
}

/// The bytes `varint` writes for `v`.
fn varint_len(v: u64) -> u64 {
    u64::from(64 - (v | 1).leading_zeros()).div_ceil(7)
}

/// The bytes a length-delimited field of `len` bytes takes, its key (one byte) included.
fn delimited_len(len: u64) -> u64 {
    1 + varint_len(len) + len
}

/// A publication push as the session writes it (`{"push":{"channel","pub":{"data","offset"}}}`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicationLine<'a> {
    #[serde(borrow)]
    push: PushLine<'a>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PushLine<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    r#pub: PubLine<'a>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PubLine<'a> {
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
    offset: Option<u64>,
}

/// Writes a publication push, length-delimited, straight from its line: the event's JSON
/// copied as it is into `out` (the hot path: every subscriber's push of every event),
/// without reading the event into a tree or building the nested messages apart; `false`
/// (and nothing written) for any other line.
fn publication(line: &str, out: &mut Vec<u8>) -> bool {
    let Ok(PublicationLine { push }) = serde_json::from_str::<PublicationLine<'_>>(line) else { return false };
    let data = push.r#pub.data.get().as_bytes();
    let offset = push.r#pub.offset.filter(|o| *o != 0);
    let channel = push.channel.as_bytes();
    let pub_len = delimited_len(data.len() as u64) + offset.map_or(0, |o| 1 + varint_len(o));
    let push_len = if channel.is_empty() { 0 } else { delimited_len(channel.len() as u64) } + delimited_len(pub_len);
    varint(out, delimited_len(push_len));
    key(out, 4, 2);
    varint(out, push_len);
    if !channel.is_empty() {
        delimited(out, 2, channel);
    }
    key(out, 4, 2);
    varint(out, pub_len);
    delimited(out, 4, data);
    if let Some(offset) = offset {
        key(out, 6, 0);
        varint(out, offset);
    }
    true
}

/// An empty `Reply`, length-delimited: Centrifugo's ping.
pub(super) const PING: [u8; 1] = [0];

// --- reading ---------------------------------------------------------------------------

/// A byte reader over one message.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.buf.len() {
            return None;
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(bytes)
    }

    /// Skips a field of wire type `wire`.
    fn skip(&mut self, wire: u64) -> Option<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            _ => None,
        }
    }

    fn advance(&mut self, n: usize) -> Option<()> {
        self.buf = self.buf.get(n..)?;
        Some(())
    }
}

/// Reads a message of `schema` into a JSON object; `None` when the bytes are not one.
fn decode(buf: &[u8], schema: &[Field]) -> Option<Value> {
    let mut r = Reader { buf };
    let mut obj = Map::new();
    while !r.buf.is_empty() {
        let tag = r.varint()?;
        let (num, wire) = (u32::try_from(tag >> 3).ok()?, tag & 7);
        let Some(field) = schema.iter().find(|f| f.num == num) else {
            r.skip(wire)?;
            continue;
        };
        let value = match (field.ty, wire) {
            (Ty::Str, 2) => Value::String(std::str::from_utf8(r.bytes()?).ok()?.to_owned()),
            (Ty::Unsigned, 0) => Value::from(r.varint()?),
            (Ty::Signed, 0) => Value::from(r.varint()? as i64),
            (Ty::Bool, 0) => Value::Bool(r.varint()? != 0),
            (Ty::Json, 2) => {
                let bytes = r.bytes()?;
                serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
            }
            (Ty::Msg(inner), 2) => decode(r.bytes()?, inner)?,
            (Ty::Map(inner), 2) => {
                let (k, v) = map_entry(r.bytes()?, |b| decode(b, inner))?;
                insert_entry(&mut obj, field.name, k, v);
                continue;
            }
            (Ty::MapStr, 2) => {
                let (k, v) = map_entry(r.bytes()?, |b| std::str::from_utf8(b).ok().map(Value::from))?;
                insert_entry(&mut obj, field.name, k, v);
                continue;
            }
            (Ty::List(inner), 2) => {
                let item = decode(r.bytes()?, inner)?;
                let list = obj.entry(field.name).or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(list) = list {
                    list.push(item);
                }
                continue;
            }
            _ => return None,
        };
        obj.insert(field.name.to_owned(), value);
    }
    Some(Value::Object(obj))
}

/// Adds `k: v` to the map field `name` of `obj`.
fn insert_entry(obj: &mut Map<String, Value>, name: &str, k: String, v: Value) {
    if let Value::Object(map) = obj.entry(name).or_insert_with(|| Value::Object(Map::new())) {
        map.insert(k, v);
    }
}

/// A map entry: its string key (field 1) and its value (field 2), read by `value`.
fn map_entry(buf: &[u8], value: impl Fn(&[u8]) -> Option<Value>) -> Option<(String, Value)> {
    let mut r = Reader { buf };
    let (mut k, mut v) = (String::new(), None);
    while !r.buf.is_empty() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => k = std::str::from_utf8(r.bytes()?).ok()?.to_owned(),
            (2, 2) => v = Some(value(r.bytes()?)?),
            (_, wire) => r.skip(wire)?,
        }
    }
    Some((k, v.unwrap_or_else(|| value(&[]).unwrap_or(Value::Null))))
}

/// An `EmulationRequest` (`node` 1, `session` 2, `data` 3: length-delimited `Command`s) as
/// its node, its session and its commands in the JSON protocol's lines.
pub(super) fn emulation_request(buf: &[u8]) -> Option<(String, String, String)> {
    let mut r = Reader { buf };
    let (mut node, mut session, mut data) = (String::new(), String::new(), String::new());
    while !r.buf.is_empty() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => node = std::str::from_utf8(r.bytes()?).ok()?.to_owned(),
            (2, 2) => session = std::str::from_utf8(r.bytes()?).ok()?.to_owned(),
            (3, 2) => data = command_lines(r.bytes()?)?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some((node, session, data))
}

/// The commands of a binary frame as the JSON protocol's lines; `None` when the frame is
/// not a run of length-delimited `Command`s.
pub(super) fn command_lines(frame: &[u8]) -> Option<String> {
    let mut r = Reader { buf: frame };
    let mut lines = Vec::new();
    while !r.buf.is_empty() {
        lines.push(decode(r.bytes()?, COMMAND)?.to_string());
    }
    Some(lines.join("\n"))
}

/// A Centrifugo socket that speaks Protobuf.
pub(super) struct ProtobufSocket(pub Socket<UpgradedIo>);

impl Wire for ProtobufSocket {
    async fn recv(&mut self) -> Option<Result<In, Close>> {
        match self.0.recv().await {
            Some(Ok(In::Binary(frame))) => match command_lines(&frame) {
                Some(lines) => Some(Ok(In::Text(lines))),
                // Not Protobuf: the session answers it as it answers a frame it cannot read.
                None => Some(Ok(In::Binary(Bytes::new()))),
            },
            // Text on a Protobuf socket is a frame of the other protocol.
            Some(Ok(In::Text(_))) => Some(Ok(In::Binary(Bytes::new()))),
            other => other,
        }
    }

    async fn send(&mut self, out: Out<'_>) -> std::io::Result<()> {
        let frame = match out {
            Out::Lines(lines) => websocket_frame(BINARY, &replies(lines)),
            Out::Ping => websocket_frame(BINARY, &PING),
            Out::Pong(payload) => pong(payload),
        };
        self.0.send(frame).await
    }

    async fn finish(self, end: Option<End>) {
        self.0.finish(end).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delimited_message(value: &Value, schema: &[Field]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(value, schema, &mut buf);
        let mut out = Vec::new();
        varint(&mut out, buf.len() as u64);
        out.extend_from_slice(&buf);
        out
    }

    #[test]
    fn commands_read_as_the_json_protocols_and_replies_written_field_by_field() {
        // Two commands in one frame, as the SDK batches them; the JSON text of `data` read
        // as JSON, an unknown field (`ping`, 11) skipped.
        let connect = json!({"id": 1, "connect": {"token": "t", "data": {"device": "phone"},
            "subs": {"news": {"recover": true, "offset": 1796686303381000u64, "epoch": "herald"}}}});
        let history =
            json!({"id": 2, "history": {"channel": "news", "limit": -1, "since": {"offset": 7, "epoch": "herald"}}});
        let mut frame = delimited_message(&connect, COMMAND);
        frame.extend(delimited_message(&history, COMMAND));
        frame.extend([3, 0x5a, 0x01, 0x00]);
        let lines = command_lines(&frame).unwrap_or_default();
        let read: Vec<Value> = lines.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(read, [connect, history, json!({})]);
        assert_eq!(command_lines(&[5, 1, 2]), None, "a length past the frame");

        // A publication push: the event's JSON as bytes, its offset as a varint; written
        // straight from the line as the schema writes it.
        let push = json!({"push": {"channel": "news", "pub": {"data": {"type": "note", "n": 1}, "offset": 300}}});
        let mut buf = Vec::new();
        encode(&push, REPLY, &mut buf);
        let mut fast = Vec::new();
        assert!(publication(&push.to_string(), &mut fast));
        assert_eq!(
            (usize::from(fast[0]), &fast[1..]),
            (buf.len(), &buf[..]),
            "length-delimited, as the schema writes it"
        );
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut written = Vec::new();
            varint(&mut written, v);
            assert_eq!(varint_len(v), written.len() as u64, "{v}");
        }
        assert!(!publication(r#"{"push":{"channel":"news","join":{"info":{}}}}"#, &mut Vec::new()));
        let data = br#"{"n":1,"type":"note"}"#;
        let mut publication = vec![0x22, data.len() as u8];
        publication.extend_from_slice(data);
        publication.extend([0x30, 0xac, 0x02]);
        let mut inner = vec![0x12, 4];
        inner.extend_from_slice(b"news");
        inner.extend([0x22, publication.len() as u8]);
        inner.extend(publication);
        let mut expected = vec![0x22, inner.len() as u8];
        expected.extend(inner);
        assert_eq!(buf, expected);
        // An empty result is still there (the SDK reads `publish` as done); zeros are not.
        let mut buf = Vec::new();
        encode(&json!({"id": 3, "publish": {}, "error": {"code": 0}}), REPLY, &mut buf);
        assert_eq!(buf, [0x08, 3, 0x12, 0, 0x42, 0]);
        // Decoding a reply gives back what was encoded, maps and lists included.
        let reply = json!({"id": 4, "connect": {"client": "c1", "ping": 25, "pong": true,
            "subs": {"news": {"recoverable": true, "offset": 9, "publications": [{"data": [1, 2], "offset": 9}]}}}});
        let mut buf = Vec::new();
        encode(&reply, REPLY, &mut buf);
        assert_eq!(decode(&buf, REPLY), Some(reply));
    }
}
