//! The WebSocket protocol's messages (`docs/websocket.md`): the commands a client sends and
//! the frames the server sends, all JSON in text frames.
//!
//! A command is an object with a `type` and an optional request `id` (a string or a number,
//! echoed in the answer). The server sends three kinds of frames, told apart by their keys:
//! an event `{"id":<resume id>,"data":<event>}` (the SSE `id:` and `data:` of the same event,
//! byte for byte), a reply `{"type":"reply","id":..,"result":..}` (`result` is what the HTTP
//! endpoint of the same action answers) and an error `{"type":"error","id":..,"error":{..}}`
//! (the HTTP API's error shape). Nothing here touches a socket: the server's messages are
//! built as whole text frames (`socket` writes them as they are).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::channel::ChannelName;
use crate::cursor::{LastEventId, Resume};
use crate::engine::JoinFrom;
use crate::http::error::ApiError;
use crate::http::refusal::Refusal;
use crate::http::subscribe::checked_last_event_id;
use crate::transport::Message;
use crate::transport::messages::{TEXT, websocket_event_frame, websocket_frame};

/// Longest request id, in bytes (a string id).
const MAX_REQUEST_ID: usize = 128;

/// A command from the client.
#[derive(Debug)]
pub(super) struct Command {
    /// The request id to echo, if the client gave one.
    pub id: Option<Value>,
    pub kind: Kind,
}

/// What a command asks for.
#[derive(Debug)]
pub(super) enum Kind {
    Auth(Auth),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Publish(Publish),
    Presence(Presence),
    Ping,
}

/// `{"type":"auth","token":"<jwt>"}`: the credential of a socket opened without one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Auth {
    pub token: Option<String>,
}

/// `{"type":"subscribe","channels":[..],"lastEventId":..,"positions":{..},"filters":["field:value"]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Subscribe {
    pub channels: Vec<String>,
    pub last_event_id: Option<String>,
    /// Per channel (as named in `channels`), the id of the last event the client has of it:
    /// where a later `subscribe` resumes that channel.
    #[serde(default)]
    pub positions: BTreeMap<String, String>,
    #[serde(default)]
    pub filters: Vec<String>,
}

impl Subscribe {
    /// Where each of `channels` (the parsed `channels`, in order) starts when a later
    /// `subscribe` joins it to the open connection: after its entry of `positions`, else
    /// after its entry of `lastEventId`, else at its head. An id that is not Herald's
    /// (or that names another channel) starts it at the head with a `reset`.
    pub(super) fn join_starts(&self, channels: &[ChannelName]) -> Result<Vec<JoinFrom>, ApiError> {
        let named =
            |key: &str| self.channels.iter().zip(channels).position(|(raw, ch)| raw == key || ch.as_str() == key);
        if let Some(key) = self.positions.keys().find(|k| named(k).is_none()) {
            let key: String = key.chars().take(64).collect();
            return Err(ApiError::refuse(
                Refusal::InvalidParameter,
                format!("`positions` names `{key}`, which is not in `channels`"),
            ));
        }
        let last = checked_last_event_id(self.last_event_id.clone())?.map(|raw| LastEventId::parse(&raw));
        let mut starts = Vec::with_capacity(channels.len());
        for (i, ch) in channels.iter().enumerate() {
            let own = self.positions.iter().find(|(k, _)| named(k) == Some(i)).map(|(_, id)| id);
            let resume = match (own, &last) {
                (Some(id), _) => {
                    let id = checked_last_event_id(Some(id.clone()))?.and_then(|raw| LastEventId::parse(&raw));
                    id.map_or(Resume::Unknown, |id| match id.resume_for(0, ch.as_str()) {
                        // An id that does not name the channel cannot say where to resume it.
                        Resume::Fresh => Resume::Unknown,
                        r => r,
                    })
                }
                (None, Some(Some(id))) => id.resume_for(i, ch.as_str()),
                (None, Some(None)) => Resume::Unknown,
                (None, None) => Resume::Fresh,
            };
            starts.push(match resume {
                Resume::From(p) => JoinFrom::After(p),
                Resume::Fresh => JoinFrom::Head,
                Resume::Unknown => JoinFrom::Unknown,
            });
        }
        Ok(starts)
    }
}

/// `{"type":"unsubscribe","channels":[..]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Unsubscribe {
    pub channels: Vec<String>,
}

/// `{"type":"publish","event":<the body of POST /api/publish>,"idempotencyKey":..}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Publish {
    pub event: Value,
    pub idempotency_key: Option<String>,
}

/// `{"type":"presence","channel":..}` (who is there), `{"type":"presence","user":..}` (is
/// the user online), `{"type":"presence","status":"away"}` (set the caller's status).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Presence {
    pub channel: Option<String>,
    pub user: Option<String>,
    pub status: Option<String>,
}

/// A command that could not be read, with the request id if it had a usable one.
#[derive(Debug)]
pub(super) struct BadCommand {
    pub id: Option<Value>,
    pub error: ApiError,
}

/// Reads one text frame as a command.
pub(super) fn parse(text: &str) -> Result<Command, BadCommand> {
    let bad =
        |id: Option<Value>, refusal, message: String| BadCommand { id, error: ApiError::refuse(refusal, message) };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| bad(None, Refusal::InvalidJson, format!("the message is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad(None, Refusal::InvalidCommand, "a command is a JSON object with a `type`".into()));
    };
    let id = match fields.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_REQUEST_ID => Some(Value::String(s)),
        Some(n @ Value::Number(_)) => Some(n),
        Some(_) => {
            return Err(bad(
                None,
                Refusal::InvalidRequestId,
                format!("`id` must be a number or a string of at most {MAX_REQUEST_ID} bytes"),
            ));
        }
    };
    let kind = match fields.remove("type") {
        Some(Value::String(t)) => t,
        _ => return Err(bad(id, Refusal::InvalidCommand, "a command needs a `type` string".into())),
    };
    let kind = match kind.as_str() {
        "auth" => Kind::Auth(body(fields, &id)?),
        "subscribe" => Kind::Subscribe(body(fields, &id)?),
        "unsubscribe" => Kind::Unsubscribe(body(fields, &id)?),
        "publish" => Kind::Publish(body(fields, &id)?),
        "presence" => Kind::Presence(body(fields, &id)?),
        "ping" if fields.is_empty() => Kind::Ping,
        "ping" => return Err(bad(id, Refusal::InvalidCommand, "`ping` takes no fields".into())),
        other => {
            let other: String = other.chars().take(64).collect();
            return Err(bad(id, Refusal::UnknownCommand, format!("unknown command `{other}`")));
        }
    };
    Ok(Command { id, kind })
}

/// A command's fields (its `type` and `id` taken out) as `T`.
fn body<T: DeserializeOwned>(fields: Map<String, Value>, id: &Option<Value>) -> Result<T, BadCommand> {
    serde_json::from_value(Value::Object(fields))
        .map_err(|e| BadCommand { id: id.clone(), error: ApiError::refuse(Refusal::InvalidCommand, e.to_string()) })
}

/// An event for the client, as its text frame: the SSE id and the SSE data of the same
/// event, in one allocation (an event written before the connection was read as WebSocket
/// items, or a notice).
pub(super) fn event(msg: &Message) -> Bytes {
    websocket_event_frame(&msg.id, &msg.json)
}

/// A command's successful answer.
pub(super) fn reply(id: Option<Value>, result: Value) -> Bytes {
    text(&json!({"type": "reply", "id": id, "result": result}))
}

/// A refusal, in the HTTP API's error shape; `retryAfter` (seconds) where HTTP would send
/// `Retry-After`.
pub(super) fn error(id: Option<Value>, e: &ApiError) -> Bytes {
    let mut frame = json!({"type": "error", "id": id, "error": {"code": e.code(), "message": e.message()}});
    if let (Some(secs), Value::Object(fields)) = (e.retry_after(), &mut frame) {
        fields.insert("retryAfter".into(), secs.into());
    }
    text(&frame)
}

fn text(v: &Value) -> Bytes {
    websocket_frame(TEXT, v.to_string().as_bytes())
}

/// Close codes (RFC 6455, section 7.4.1) and the reason each sends, `{"code":..}` in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::http) enum Close {
    /// The server ends the socket after a last `disconnect` or `token_expired` event.
    Normal(&'static str),
    /// A frame that breaks the WebSocket protocol (unmasked, bad opcode, ...).
    Protocol,
    /// A binary frame: the protocol is JSON text.
    Binary,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// Credentials refused, no subscription in time, or a flood.
    Policy(&'static str),
    /// A message over `max_body_bytes`.
    TooBig,
    /// The server is draining: come back after `retry_ms` and resume.
    Drain { retry_ms: u64 },
    /// Slow consumer, timeout, resync: come back now and resume.
    TryAgain(&'static str),
}

impl Close {
    /// The close code (RFC 6455, section 7.4.1).
    pub(in crate::http) fn code(self) -> u16 {
        match self {
            Self::Normal(_) => 1000,
            Self::Protocol => 1002,
            Self::Binary => 1003,
            Self::InvalidUtf8 => 1007,
            Self::Policy(_) => 1008,
            Self::TooBig => 1009,
            Self::Drain { .. } => 1012,
            Self::TryAgain(_) => 1013,
        }
    }

    /// The whole close frame, as `socket` writes it.
    pub(in crate::http) fn framed(self) -> Bytes {
        close_frame(Some(self.code()), self.reason().as_bytes())
    }

    /// The reason, `{"code":..}` (at most 123 bytes, as a close frame's).
    fn reason(self) -> String {
        let reason = match self {
            Self::Normal(why) | Self::Policy(why) | Self::TryAgain(why) => json!({"code": why}),
            Self::Protocol => json!({"code": "protocol_error"}),
            Self::Binary => json!({"code": "binary_not_supported"}),
            Self::InvalidUtf8 => json!({"code": "invalid_utf8"}),
            Self::TooBig => json!({"code": "message_too_large"}),
            Self::Drain { retry_ms } => json!({"code": "server_draining", "retryMs": retry_ms}),
        };
        reason.to_string()
    }
}

/// The opcode of a close frame (RFC 6455, section 5.5.1).
const OP_CLOSE: u8 = 0x8;

/// A close frame with `code` and `reason` (at most 123 bytes), or with no payload.
pub(in crate::http) fn close_frame(code: Option<u16>, reason: &[u8]) -> Bytes {
    match code {
        Some(code) => {
            let mut payload = Vec::with_capacity(2 + reason.len());
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason);
            websocket_frame(OP_CLOSE, &payload)
        }
        None => websocket_frame(OP_CLOSE, &[]),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn a_command_keeps_its_request_id_even_when_its_fields_are_wrong() {
        let bad = parse(r#"{"type":"subscribe","id":7,"chanels":["channel:a"]}"#).err();
        let bad = bad.unwrap_or_else(|| panic!("accepted a misspelt field"));
        assert_eq!((bad.id, bad.error.code()), (Some(json!(7)), "invalid_command"));
        let unknown = parse(r#"{"type":"shout","id":"r1"}"#).err().map(|b| (b.id, b.error.code().to_owned()));
        assert_eq!(unknown, Some((Some(json!("r1")), "unknown_command".to_owned())));
        let ok = parse(r#"{"type":"subscribe","channels":["channel:a"],"lastEventId":"x"}"#);
        assert!(matches!(ok, Ok(Command { id: None, kind: Kind::Subscribe(Subscribe { .. }) })), "{ok:?}");
    }

    #[test]
    fn an_event_frame_carries_the_sse_id_and_the_sse_data_unchanged() {
        let msg = Message { id: "fte:mwrt3kgk".into(), event_type: "chat".into(), json: Bytes::from(r#"{"a":1}"#) };
        let frame = event(&msg);
        assert_eq!(&frame[..2], [0x81, frame.len() as u8 - 2], "a final text frame, unmasked");
        assert_eq!(&frame[2..], br#"{"id":"fte:mwrt3kgk","data":{"a":1}}"#);
        let odd = Message { id: "a\"b c".into(), ..msg };
        let frame = event(&odd);
        assert_eq!(&frame[2..], br#"{"id":"a\"b c","data":{"a":1}}"#, "an unexpected id is still a JSON string");
    }

    #[test]
    fn close_reasons_fit_in_a_control_frame() {
        let frame = Close::Drain { retry_ms: u64::MAX }.framed();
        assert!(frame.len() <= 2 + 125, "{frame:?}");
        assert_eq!(&frame[..4], [0x88, frame.len() as u8 - 2, 0x03, 0xF4], "a close frame, 1012");
    }
}
