//! The command line's WebSocket client (`--ws`): `GET /api/ws` on the same endpoint (plain
//! or TLS), with the same credential as the HTTP requests, and the frames of Herald's
//! WebSocket protocol (`docs/websocket.md`): events `{"id":..,"data":..}`, replies and errors
//! to commands, and the server's close with its code.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::anyhow;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Remote;
use super::http::{Endpoint, Io, Refusal};

/// How long the WebSocket handshake may take, once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub type Socket = WebSocketStream<Box<dyn Io>>;

/// Why a socket did not open.
pub enum OpenError {
    /// The network, TLS or the handshake failed.
    Network(anyhow::Error),
    /// The server answered the upgrade with an error (the same as an SSE request gets).
    Refused(Refusal),
}

/// Opens `/api/ws` with `query` (`channel=..&lastEventId=..`, or empty).
pub async fn open(remote: &Remote, endpoint: &Endpoint, query: &str) -> Result<Socket, OpenError> {
    let path = if query.is_empty() { "/api/ws".to_owned() } else { format!("/api/ws?{query}") };
    let mut req = endpoint.ws_url(&path).into_client_request().map_err(|e| OpenError::Network(e.into()))?;
    let headers = req.headers_mut();
    headers.insert("user-agent", HeaderValue::from_static(concat!("herald-cli/", env!("CARGO_PKG_VERSION"))));
    if let Some((name, value)) = remote.credential() {
        let value = HeaderValue::from_str(&value).map_err(|e| OpenError::Network(e.into()))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    let io = endpoint.connect().await.map_err(OpenError::Network)?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::client_async(req, io)).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(WsError::Http(resp))) => Err(OpenError::Refused(Refusal::upgrade_refused(&resp))),
        Ok(Err(e)) => {
            Err(OpenError::Network(anyhow!(e).context(format!("WebSocket handshake with {} failed", endpoint.url()))))
        }
        Err(_) => Err(OpenError::Network(anyhow!("WebSocket handshake timed out after {HANDSHAKE_TIMEOUT:?}"))),
    }
}

/// A frame from the server.
pub enum Frame {
    /// An event: its resume id and its JSON, byte for byte what SSE's `data:` carries.
    Event { id: String, data: String },
    /// The answer to a command (this client sends one at a time, so it needs no id).
    Reply { result: Value },
    /// A command's refusal.
    Error { code: String, message: String, retry_after: Option<Duration> },
    /// The server's close: its code and reason (`{"code":..}`, with `retryMs` on a drain).
    Closed { code: u16, reason: Value },
    /// A ping, a pong or anything else that only shows the socket is alive.
    Other,
}

/// The next frame; `None` when the socket ended without a close.
pub async fn next(socket: &mut Socket) -> Option<anyhow::Result<Frame>> {
    let msg = match socket.next().await? {
        Ok(msg) => msg,
        Err(e) => return Some(Err(e.into())),
    };
    Some(Ok(match msg {
        Message::Text(text) => read(text.as_str()),
        Message::Close(Some(close)) => Frame::Closed {
            code: u16::from(close.code),
            reason: serde_json::from_str(&close.reason).unwrap_or_default(),
        },
        Message::Close(None) => Frame::Closed { code: 1005, reason: Value::Null },
        _ => Frame::Other,
    }))
}

/// Reads a text frame by its keys (`docs/websocket.md`, "Frames").
fn read(text: &str) -> Frame {
    let Ok(fields) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(text) else { return Frame::Other };
    let value = |key: &str| fields.get(key).and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
    match value("type").as_ref().and_then(Value::as_str) {
        None => match (value("id"), fields.get("data")) {
            (Some(Value::String(id)), Some(data)) => Frame::Event { id, data: data.get().to_owned() },
            _ => Frame::Other,
        },
        Some("reply") => Frame::Reply { result: value("result").unwrap_or_default() },
        Some("error") => {
            let error = value("error").unwrap_or_default();
            let text = |k: &str| error[k].as_str().unwrap_or_default().to_owned();
            let retry_after = value("retryAfter").and_then(|v| v.as_u64()).map(Duration::from_secs);
            Frame::Error { code: text("code"), message: text("message"), retry_after }
        }
        Some(_) => Frame::Other,
    }
}

/// Sends one command.
pub async fn send(socket: &mut Socket, command: &Value) -> anyhow::Result<()> {
    socket.send(Message::text(command.to_string())).await.map_err(|e| anyhow!(e).context("the socket broke"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_frame_keeps_the_events_json_byte_for_byte() {
        let frame = read(r#"{"id":"fte:mw","data":{"type":"chat","a":{"z":1,"b":2}}}"#);
        let Frame::Event { id, data } = frame else { panic!("not an event") };
        assert_eq!((id.as_str(), data.as_str()), ("fte:mw", r#"{"type":"chat","a":{"z":1,"b":2}}"#));
        let error = read(r#"{"type":"error","id":1,"error":{"code":"rate_limited","message":"m"},"retryAfter":2}"#);
        let Frame::Error { code, retry_after, .. } = error else { panic!("not an error") };
        assert_eq!((code.as_str(), retry_after), ("rate_limited", Some(Duration::from_secs(2))));
    }
}
