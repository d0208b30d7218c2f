//! The WebSocket transport (`docs/websocket.md`) over real sockets, with a real WebSocket
//! client (tokio-tungstenite): the same query, credentials, events and ids as SSE, resume
//! across the two transports, commands, refusals, hostile input and the server's closes.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::Config;
use hyper::StatusCode;
use serde_json::{Value, json};
use support::{Proto, SseStream, TestServer, now, token, token_with, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// ---------------------------------------------------------------------------------------
// helpers

/// WebSocket on, presence off (its events would interleave with the ones under test).
fn ws_on(c: &mut Config) {
    c.websocket = true;
    support::no_presence(c);
}

async fn dev_server() -> TestServer {
    TestServer::with(ws_on).await
}

async fn secured_server(configure: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::secured(|c| {
        ws_on(c);
        configure(c);
    })
    .await
}

/// A WebSocket client: events are kept aside while a command waits for its answer.
struct Ws {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
    events: VecDeque<(String, Value, String)>,
    next_id: u64,
}

/// Opens `/api/ws?<query>`; on a refused upgrade, the status and JSON body.
async fn open(server: &TestServer, query: &str, headers: &[(&str, &str)]) -> Result<Ws, (StatusCode, Value)> {
    open_at(server.addr, query, headers).await
}

async fn open_at(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Result<Ws, (StatusCode, Value)> {
    let mut req =
        format!("ws://{addr}/api/ws?{query}").into_client_request().unwrap_or_else(|e| panic!("request: {e}"));
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        req.headers_mut().insert(name, HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")));
    }
    match within("the upgrade", tokio_tungstenite::connect_async(req)).await {
        Ok((inner, resp)) => {
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            Ok(Ws { inner, events: VecDeque::new(), next_id: 0 })
        }
        Err(WsError::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let body = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("refusal is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
            Err((StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::IM_A_TEAPOT), body))
        }
        Err(e) => panic!("upgrade: {e}"),
    }
}

async fn open_ok(server: &TestServer, query: &str, headers: &[(&str, &str)]) -> Ws {
    open(server, query, headers).await.unwrap_or_else(|(s, body)| panic!("refused {s}: {body}"))
}

impl Ws {
    /// The next frame that is not a ping or pong.
    async fn frame(&mut self) -> Option<Message> {
        loop {
            match within("the next WebSocket frame", self.inner.next()).await {
                None => return None,
                Some(Err(e)) => panic!("websocket error: {e}"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return Some(m),
            }
        }
    }

    /// The next JSON text frame, as its text and its value.
    async fn json(&mut self) -> (String, Value) {
        match self.frame().await {
            Some(Message::Text(t)) => {
                let v = serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"));
                (t.as_str().to_owned(), v)
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next event: its resume id, its data and the whole frame's text.
    async fn event(&mut self) -> (String, Value, String) {
        if let Some(ev) = self.events.pop_front() {
            return ev;
        }
        let (text, v) = self.json().await;
        let id = v["id"].as_str().unwrap_or_else(|| panic!("not an event: {text}")).to_owned();
        assert!(v.get("type").is_none(), "an event frame has no `type`: {text}");
        (id, v["data"].clone(), text)
    }

    async fn send(&mut self, v: &Value) {
        within("a send", self.inner.send(Message::text(v.to_string()))).await.unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Sends a command with a fresh request id and returns its reply or error frame.
    async fn request(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        command["id"] = json!(id);
        self.send(&command).await;
        loop {
            let (text, v) = self.json().await;
            if v.get("type").is_some() {
                assert_eq!(v["id"], json!(id), "an answer to this request: {text}");
                return v;
            }
            self.events.push_back((v["id"].as_str().unwrap_or_default().to_owned(), v["data"].clone(), text));
        }
    }

    /// Reads until the server's close frame: its code and reason (JSON).
    async fn closed(&mut self) -> (u16, Value) {
        loop {
            match self.frame().await {
                Some(Message::Close(Some(frame))) => {
                    let reason = serde_json::from_str(&frame.reason).unwrap_or(Value::Null);
                    return (u16::from(frame.code), reason);
                }
                Some(Message::Close(None)) | None => panic!("closed without a code"),
                Some(_) => {}
            }
        }
    }

    /// Expects the next events to carry `"n"` values `ns`; returns the last resume id.
    async fn expect_ns(&mut self, ns: std::ops::Range<u64>) -> String {
        let mut last = String::new();
        for n in ns {
            let (id, data, _) = self.event().await;
            assert_eq!(data["n"].as_u64(), Some(n), "{data}");
            last = id;
        }
        last
    }
}

/// Expects `connected` on `channels` as the next event; returns its resume id.
async fn expect_connected(ws: &mut Ws, channels: &[&str]) -> String {
    let (id, data, _) = ws.event().await;
    assert_eq!(data["type"], "connected", "{data}");
    assert_eq!(data["channels"], json!(channels));
    id
}

/// Publishes events `"n": ns` on `channel`: with the API key on a secured server,
/// anonymously in dev mode.
async fn publish_ns(server: &TestServer, channel: &str, ns: std::ops::Range<u64>) {
    let mut p = publisher(server);
    for n in ns {
        p.publish(&json!({"channel": channel, "type": "note", "n": n})).await;
    }
}

fn publisher(server: &TestServer) -> support::Client {
    let client = server.client(Proto::H1);
    if server.herald.config().auth_configured() { client.backend() } else { client }
}

/// A raw WebSocket upgrade on plain TCP, for frames a proper client will not send; returns
/// the socket after the `101` and its headers.
async fn raw_upgrade(addr: SocketAddr, query: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let handshake = format!(
        "GET /api/ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        within("the 101", tcp.read_exact(&mut byte)).await.unwrap_or_else(|e| panic!("{e}"));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

/// Checks that the server's frames in `bytes` end with a close of `code` and `reason`.
fn assert_ends_with_close(bytes: &[u8], code: u16, reason: &[u8]) {
    let head = [0x88, 2 + reason.len() as u8];
    let text = String::from_utf8_lossy(bytes);
    let close = bytes.windows(2).rposition(|w| w == head).unwrap_or_else(|| panic!("no close frame: {text}"));
    assert_eq!(&bytes[close + 2..close + 4], &code.to_be_bytes(), "{text}");
    assert!(bytes.ends_with(reason), "{text}");
}

/// A client frame (masked, with a zero mask) of `opcode`, final or not.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![opcode | if fin { 0x80 } else { 0 }, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// The next whole frame the server writes on a raw socket (unmasked: its header and payload).
async fn raw_frame(tcp: &mut TcpStream) -> Vec<u8> {
    let mut frame = vec![0u8; 2];
    within("a frame", tcp.read_exact(&mut frame)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(frame[1] & 0x80, 0, "a server's frame is unmasked");
    let len = match frame[1] {
        126 | 127 => {
            let extra = if frame[1] == 126 { 2 } else { 8 };
            let mut ext = vec![0u8; extra];
            within("a frame's length", tcp.read_exact(&mut ext)).await.unwrap_or_else(|e| panic!("{e}"));
            frame.extend_from_slice(&ext);
            ext.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
        }
        n => usize::from(n),
    };
    let start = frame.len();
    frame.resize(start + len, 0);
    within("a frame's payload", tcp.read_exact(&mut frame[start..])).await.unwrap_or_else(|e| panic!("{e}"));
    frame
}

// ---------------------------------------------------------------------------------------
// opening

#[tokio::test]
async fn the_endpoint_is_off_unless_configured() {
    let server = TestServer::start().await;
    let (status, body) = server.client(Proto::H1).get_json("/api/ws?channel=channel:a").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let refused = open(&server, "channel=channel:a", &[]).await.err().map(|(s, _)| s);
    assert_eq!(refused, Some(StatusCode::NOT_FOUND));
}

#[tokio::test]
async fn a_plain_get_without_an_upgrade_is_refused_in_the_error_shape() {
    let server = dev_server().await;
    let (status, body) = server.client(Proto::H1).get_json("/api/ws?channel=channel:a").await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(body["error"]["code"], "websocket_required", "{body}");
}

#[tokio::test]
async fn a_socket_and_an_sse_stream_in_one_room_get_the_same_events_with_the_same_ids() {
    let server = dev_server().await;
    let mut sse = server.client(Proto::H1).subscribe("channel=channel:room", &[]).await;
    let mut ws = open_ok(&server, "channel=channel:room", &[]).await;
    let (_, connected, _) = ws.event().await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["channels"], json!(["channel:room"]));
    assert!(connected["connectionId"].as_str().is_some_and(|c| c.starts_with('c')), "{connected}");

    publish_ns(&server, "channel:room", 0..3).await;
    for n in 0..3 {
        let from_sse = sse.expect().await;
        let (id, data, frame) = ws.event().await;
        assert_eq!(data["n"], n);
        assert_eq!(id, from_sse.id, "the same resume id");
        // The SSE data, byte for byte, inside the frame.
        assert_eq!(frame, format!("{{\"id\":{},\"data\":{}}}", json!(from_sse.id), from_sse.raw_data));
    }
}

#[tokio::test]
async fn the_query_filters_and_multi_channel_ids_are_those_of_sse() {
    let server = dev_server().await;
    let query = "channel=channel:a&channel=channel:b&filter=kind:keep";
    let mut sse = server.client(Proto::H1).subscribe(query, &[]).await;
    let mut ws = open_ok(&server, query, &[]).await;
    expect_connected(&mut ws, &["channel:a", "channel:b"]).await;
    let mut p = publisher(&server);
    p.publish(&json!({"channel": "channel:a", "type": "note", "kind": "drop", "n": 0})).await;
    p.publish(&json!({"channels": ["channel:a", "channel:b"], "type": "note", "kind": "keep", "n": 1})).await;
    p.publish(&json!({"channel": "channel:b", "type": "note", "kind": "keep", "n": 2})).await;
    for n in 1..3 {
        let from_sse = sse.expect().await;
        let (id, data, _) = ws.event().await;
        assert_eq!((data["n"].as_u64(), &id), (Some(n), &from_sse.id));
    }
}

// ---------------------------------------------------------------------------------------
// resume across transports

#[tokio::test]
async fn a_client_moves_from_websocket_to_sse_and_back_with_nothing_lost_or_repeated() {
    let server = dev_server().await;
    let mut ws = open_ok(&server, "channel=channel:r", &[]).await;
    expect_connected(&mut ws, &["channel:r"]).await;
    publish_ns(&server, "channel:r", 0..3).await;
    let last = ws.expect_ns(0..3).await;
    drop(ws);

    publish_ns(&server, "channel:r", 3..6).await;
    let mut sse = server.client(Proto::H1).subscribe("channel=channel:r", &[("last-event-id", &last)]).await;
    let last = sse.expect_ns(3..6).await;
    drop(sse);

    publish_ns(&server, "channel:r", 6..9).await;
    let mut ws = open_ok(&server, &format!("channel=channel:r&lastEventId={last}"), &[]).await;
    expect_connected(&mut ws, &["channel:r"]).await;
    ws.expect_ns(6..9).await;
    // And nothing twice: the next event is the next one published.
    publish_ns(&server, "channel:r", 9..10).await;
    ws.expect_ns(9..10).await;
}

#[tokio::test]
async fn a_first_subscribe_command_resumes_from_an_sse_id() {
    let server = dev_server().await;
    let mut sse: SseStream = server.client(Proto::H1).subscribe("channel=channel:s", &[]).await;
    publish_ns(&server, "channel:s", 0..2).await;
    let last = sse.expect_ns(0..2).await;
    drop(sse);
    publish_ns(&server, "channel:s", 2..4).await;

    let mut ws = open_ok(&server, "", &[]).await;
    let reply = ws.request(json!({"type": "subscribe", "channels": ["channel:s"], "lastEventId": last})).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["result"]["channels"], json!(["channel:s"]));
    expect_connected(&mut ws, &["channel:s"]).await;
    ws.expect_ns(2..4).await;
}

// ---------------------------------------------------------------------------------------
// commands

#[tokio::test]
async fn a_publish_over_the_socket_reaches_an_sse_client_and_answers_the_events_id() {
    let server = dev_server().await;
    let mut sse = server.client(Proto::H1).subscribe("channel=channel:chat", &[]).await;
    let mut ws = open_ok(&server, "channel=channel:chat", &[]).await;
    expect_connected(&mut ws, &["channel:chat"]).await;
    let reply = ws
        .request(json!({"type": "publish", "event": {"channel": "channel:chat", "type": "chat", "text": "hi"}}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    let id = reply["result"]["id"].as_str().unwrap_or_else(|| panic!("no id: {reply}")).to_owned();
    let seen = sse.expect().await;
    assert_eq!((seen.data["id"].as_str(), seen.data["text"].as_str()), (Some(id.as_str()), Some("hi")));
    let (_, echoed, _) = ws.event().await;
    assert_eq!(echoed["id"], json!(id), "the publisher's own socket gets it too");

    // The same checks as `POST /api/publish`: a reserved type is refused, with the request id.
    let refused =
        ws.request(json!({"type": "publish", "event": {"channel": "channel:chat", "type": "connected"}})).await;
    assert_eq!((refused["type"].as_str(), refused["error"]["code"].as_str()), (Some("error"), Some("invalid_type")));
    // A batch answers its ids.
    let batch = json!([{"channel": "channel:chat", "type": "a"}, {"channel": "channel:chat", "type": "b"}]);
    let reply = ws.request(json!({"type": "publish", "event": batch})).await;
    assert_eq!(reply["result"]["ids"].as_array().map(Vec::len), Some(2), "{reply}");
}

#[tokio::test]
async fn subscribe_and_unsubscribe_join_and_leave_the_open_connection_live() {
    let server = dev_server().await;
    let mut ws = open_ok(&server, "channel=channel:home", &[]).await;
    expect_connected(&mut ws, &["channel:home"]).await;
    let reply = ws.request(json!({"type": "subscribe", "channels": ["channel:extra"]})).await;
    assert_eq!(reply["result"]["channels"], json!(["channel:extra"]), "{reply}");
    let (_, joined, _) = ws.event().await;
    assert_eq!((joined["type"].as_str(), joined["channel"].as_str()), (Some("subscribed"), Some("channel:extra")));
    publish_ns(&server, "channel:extra", 0..1).await;
    ws.expect_ns(0..1).await;

    let reply = ws.request(json!({"type": "unsubscribe", "channels": ["channel:extra"]})).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    let (_, left, _) = ws.event().await;
    assert_eq!((left["type"].as_str(), left["channel"].as_str()), (Some("unsubscribed"), Some("channel:extra")));
    publish_ns(&server, "channel:extra", 1..2).await;
    publish_ns(&server, "channel:home", 2..3).await;
    ws.expect_ns(2..3).await;

    // Filters belong to the first subscribe.
    let refused = ws.request(json!({"type": "subscribe", "channels": ["channel:x"], "filters": ["a:b"]})).await;
    assert_eq!(refused["error"]["code"], "invalid_parameter", "{refused}");
}

/// Two nodes with WebSockets on one Redis (kept running while the result is held).
async fn redis_nodes() -> (support::RedisServer, TestServer, TestServer) {
    let redis = support::RedisServer::start().await;
    let node = |url: String| {
        TestServer::with(move |c| {
            ws_on(c);
            c.redis_url = Some(url);
        })
    };
    let (a, b) = (node(redis.url()).await, node(redis.url()).await);
    (redis, a, b)
}

/// The id of the last of events `"n": 0..n` on `channel`, as a socket on it alone saw it.
async fn position_after(server: &TestServer, channel: &str, n: u64) -> String {
    let mut ws = open_ok(server, &format!("channel={channel}"), &[]).await;
    expect_connected(&mut ws, &[channel]).await;
    publish_ns(server, channel, 0..n).await;
    ws.expect_ns(0..n).await
}

/// Expects `subscribed` for `channel` as the next event.
async fn expect_subscribed(ws: &mut Ws, channel: &str) {
    let (_, joined, _) = ws.event().await;
    assert_eq!((joined["type"].as_str(), joined["channel"].as_str()), (Some("subscribed"), Some(channel)), "{joined}");
}

#[tokio::test]
async fn a_later_subscribe_resumes_each_channel_after_the_position_it_names() {
    let server = dev_server().await;
    let last = position_after(&server, "channel:side", 2).await;
    publish_ns(&server, "channel:side", 2..5).await;
    let mut ws = open_ok(&server, "channel=channel:home", &[]).await;
    expect_connected(&mut ws, &["channel:home"]).await;
    let positions = json!({ "channel:side": last });
    let reply = ws.request(json!({"type": "subscribe", "channels": ["channel:side"], "positions": positions})).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    expect_subscribed(&mut ws, "channel:side").await;
    ws.expect_ns(2..5).await;
    publish_ns(&server, "channel:side", 5..6).await;
    let id = ws.expect_ns(5..6).await;
    let replayed = server.client(Proto::H1).metric("herald_resumes_total{result=\"replayed\"}").await;
    assert_eq!(replayed, 1.0, "a join at a position counts as a resume");
    // The id names both channels: an SSE stream resumed from it repeats nothing.
    publish_ns(&server, "channel:side", 6..7).await;
    let mut sse = server
        .client(Proto::H1)
        .subscribe("channel=channel:home&channel=channel:side", &[("last-event-id", &id)])
        .await;
    sse.expect_ns(6..7).await;
}

#[tokio::test]
async fn a_later_subscribe_with_a_last_event_id_resumes_the_channels_it_names_and_starts_the_others_fresh() {
    let server = dev_server().await;
    let last = position_after(&server, "channel:named", 1).await;
    publish_ns(&server, "channel:named", 1..3).await;
    publish_ns(&server, "channel:fresh", 100..101).await;
    let mut ws = open_ok(&server, "channel=channel:home", &[]).await;
    expect_connected(&mut ws, &["channel:home"]).await;
    let command = json!({"type": "subscribe", "channels": ["channel:named", "channel:fresh"], "lastEventId": last});
    assert_eq!(ws.request(command).await["type"], "reply");
    expect_subscribed(&mut ws, "channel:named").await;
    ws.expect_ns(1..3).await;
    expect_subscribed(&mut ws, "channel:fresh").await;
    publish_ns(&server, "channel:fresh", 3..4).await;
    ws.expect_ns(3..4).await;
}

#[tokio::test]
async fn a_later_subscribe_that_history_cannot_cover_gets_the_reset_an_sse_stream_gets() {
    let server = TestServer::with(|c| {
        ws_on(c);
        c.history_size = 2;
    })
    .await;
    let last = position_after(&server, "channel:old", 1).await;
    publish_ns(&server, "channel:old", 1..5).await;
    let mut ws = open_ok(&server, "channel=channel:home", &[]).await;
    expect_connected(&mut ws, &["channel:home"]).await;
    let positions = json!({"channel:old": last, "channel:odd": "garbled"});
    let command = json!({"type": "subscribe", "channels": ["channel:old", "channel:odd"], "positions": positions});
    assert_eq!(ws.request(command).await["type"], "reply");
    for (channel, reason) in [("channel:old", "history_expired"), ("channel:odd", "unknown_position")] {
        expect_subscribed(&mut ws, channel).await;
        let (_, reset, _) = ws.event().await;
        assert_eq!(
            (reset["type"].as_str(), reset["channel"].as_str(), reset["reason"].as_str()),
            (Some("reset"), Some(channel), Some(reason))
        );
    }
    publish_ns(&server, "channel:old", 5..6).await;
    ws.expect_ns(5..6).await;
    let resets = server.client(Proto::H1).metric("herald_resumes_total{result=\"reset\"}").await;
    assert_eq!(resets, 2.0, "a join that cannot resume counts as a resume reset");
    // A position for a channel the command does not name is a mistake, not a no-op.
    let stray = json!({"type": "subscribe", "channels": ["channel:x"], "positions": {"channel:y": last}});
    assert_eq!(ws.request(stray).await["error"]["code"], "invalid_parameter");
}

/// A socket joins `channel:side` after the id of its event 1 while another node (or the
/// same one) keeps publishing to it: it gets every later event once, in order. The events
/// are of 2 KB, so that the join's history is written in several pieces while later ones
/// queue behind it.
async fn a_join_at_a_position_races_publishes(node: &TestServer, publisher_node: &TestServer) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    const END: u64 = 150;
    let last = position_after(node, "channel:side", 2).await;
    let mut ws = open_ok(node, "channel=channel:home", &[]).await;
    expect_connected(&mut ws, &["channel:home"]).await;
    let published = Arc::new(AtomicU64::new(2));
    let mut p = publisher(publisher_node);
    let counter = Arc::clone(&published);
    let publishing = tokio::spawn(async move {
        let pad = "p".repeat(2000);
        for n in 2..END {
            p.publish(&json!({"channel": "channel:side", "type": "note", "n": n, "pad": pad})).await;
            counter.store(n + 1, Ordering::SeqCst);
        }
    });
    within("some events to be published before the join", async {
        while published.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let positions = json!({ "channel:side": last });
    let reply = ws.request(json!({"type": "subscribe", "channels": ["channel:side"], "positions": positions})).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert!(published.load(Ordering::SeqCst) < END, "the join happened while events were being published");
    expect_subscribed(&mut ws, "channel:side").await;
    ws.expect_ns(2..END).await;
    within("the publisher", publishing).await.unwrap_or_else(|e| panic!("{e}"));
    publish_ns(publisher_node, "channel:side", END..END + 1).await;
    ws.expect_ns(END..END + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_at_a_position_during_publishes_loses_and_repeats_nothing_in_memory() {
    let server = dev_server().await;
    a_join_at_a_position_races_publishes(&server, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_at_a_position_during_publishes_on_another_node_loses_and_repeats_nothing_over_redis() {
    let (_redis, a, b) = redis_nodes().await;
    a_join_at_a_position_races_publishes(&a, &b).await;
}

#[tokio::test]
async fn a_later_subscribe_joins_a_pattern_live_with_the_policy_of_an_open() {
    let server = secured_server(|_| {}).await;
    let granted = support::token_with(json!({"sub": "g", "exp": now() + 60, "subscribe": ["channel:team-*"]}));
    let auth = format!("Bearer {granted}");
    let mut ws = open_ok(&server, "channel=user:g", &[("authorization", &auth)]).await;
    expect_connected(&mut ws, &["user:g"]).await;
    let refused = ws.request(json!({"type": "subscribe", "channels": ["channel:*"]})).await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    let reply = ws.request(json!({"type": "subscribe", "channels": ["channel:team-a*"]})).await;
    assert_eq!(reply["result"]["channels"], json!(["channel:team-a*"]), "{reply}");
    expect_subscribed(&mut ws, "channel:team-a*").await;
    publish_ns(&server, "channel:team-b", 0..1).await;
    publish_ns(&server, "channel:team-a1", 1..2).await;
    let (_, data, _) = ws.event().await;
    assert_eq!((data["n"].as_u64(), data["channel"].as_str()), (Some(1), Some("channel:team-a1")), "{data}");
    // A pattern keeps no position: asked to resume, it says so.
    let positions = json!({"channel:team-c*": "fte:mwrt3kgk"});
    let command = json!({"type": "subscribe", "channels": ["channel:team-c*"], "positions": positions});
    assert_eq!(ws.request(command).await["type"], "reply");
    expect_subscribed(&mut ws, "channel:team-c*").await;
    let (_, reset, _) = ws.event().await;
    assert_eq!(reset["reason"], "pattern_not_resumable", "{reset}");
    let reply = ws.request(json!({"type": "unsubscribe", "channels": ["channel:team-a*"]})).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    let (_, left, _) = ws.event().await;
    assert_eq!(left["type"], "unsubscribed");
    publish_ns(&server, "channel:team-a1", 2..3).await;
    publish_ns(&server, "channel:team-c1", 3..4).await;
    ws.expect_ns(3..4).await;
}

#[tokio::test]
async fn presence_is_queried_and_set_over_the_socket() {
    let server = TestServer::secured(|c| c.websocket = true).await;
    let auth = format!("Bearer {}", token("ann"));
    let mut ws = open_ok(&server, "channel=channel:lobby", &[("authorization", &auth)]).await;
    expect_connected(&mut ws, &["channel:lobby"]).await;
    let (_, online, _) = ws.event().await;
    assert_eq!((online["type"].as_str(), online["userId"].as_str()), (Some("presence"), Some("ann")), "{online}");

    let here = ws.request(json!({"type": "presence", "channel": "channel:lobby"})).await;
    assert_eq!(here["result"]["users"][0]["userId"], "ann", "{here}");
    let set = ws.request(json!({"type": "presence", "status": "away"})).await;
    assert_eq!(set["result"], json!({"status": "away"}));
    let user = ws.request(json!({"type": "presence", "user": "ann"})).await;
    assert_eq!(user["result"]["status"], "away", "{user}");
    let bad = ws.request(json!({"type": "presence", "status": "asleep"})).await;
    assert_eq!(bad["error"]["code"], "invalid_status");
}

// ---------------------------------------------------------------------------------------
// credentials

#[tokio::test]
async fn a_socket_opened_without_a_credential_authenticates_with_its_first_message() {
    let server = secured_server(|_| {}).await;
    let mut ws = open_ok(&server, "", &[]).await;
    let reply = ws.request(json!({"type": "auth", "token": token("ann")})).await;
    assert_eq!(reply["result"], json!({"userId": "ann"}), "{reply}");
    let reply = ws.request(json!({"type": "subscribe", "channels": ["user:ann"]})).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    expect_connected(&mut ws, &["user:ann"]).await;
    publish_ns(&server, "user:ann", 0..1).await;
    ws.expect_ns(0..1).await;
    let again = ws.request(json!({"type": "auth", "token": token("bob")})).await;
    assert_eq!(again["error"]["code"], "already_authenticated");
}

#[tokio::test]
async fn a_refused_first_message_credential_closes_the_socket() {
    let server = secured_server(|_| {}).await;
    let mut ws = open_ok(&server, "", &[]).await;
    let reply = ws.request(json!({"type": "auth", "token": "not-a-jwt"})).await;
    assert_eq!(reply["error"]["code"], "invalid_token", "{reply}");
    assert_eq!(ws.closed().await, (1008, json!({"code": "invalid_token"})));
}

#[tokio::test]
async fn refusals_at_open_are_the_http_answers_an_sse_request_gets() {
    let server = secured_server(|_| {}).await;
    let (status, body) = open(&server, "channel=user:bob", &[]).await.err().unwrap_or_else(|| panic!("opened"));
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let ann = format!("Bearer {}", token("ann"));
    let (status, body) =
        open(&server, "channel=user:bob", &[("authorization", &ann)]).await.err().unwrap_or_else(|| panic!("opened"));
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let (status, body) = open(&server, "chanel=user:ann", &[]).await.err().unwrap_or_else(|| panic!("opened"));
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_parameter")));
    // A ticket, as for `EventSource`.
    let (_, ticket) = server.client(Proto::H1).user("ann").post_json("/api/tickets", &json!({})).await;
    let ticket = ticket["ticket"].as_str().unwrap_or_default().to_owned();
    let mut ws = open_ok(&server, &format!("channel=user:ann&ticket={ticket}"), &[]).await;
    expect_connected(&mut ws, &["user:ann"]).await;
}

#[tokio::test]
async fn a_cookie_authenticated_upgrade_from_a_foreign_origin_is_refused() {
    const APP: &str = "https://app.example";
    let server = secured_server(|c| c.cors_origins = vec![APP.to_owned()]).await;
    let cookie = format!("herald_token={}", token("ann"));
    let evil = [("cookie", cookie.as_str()), ("origin", "https://evil.example")];
    let (status, body) = open(&server, "channel=user:ann", &evil).await.err().unwrap_or_else(|| panic!("opened"));
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("origin_not_allowed")));
    let mut ws = open_ok(&server, "channel=user:ann", &[("cookie", &cookie), ("origin", APP)]).await;
    expect_connected(&mut ws, &["user:ann"]).await;
}

#[tokio::test]
async fn a_socket_whose_token_expires_gets_token_expired_then_a_close() {
    let server = secured_server(|c| c.auth.leeway = Duration::ZERO).await;
    let short = format!("Bearer {}", token_with(json!({"sub": "ann", "exp": now() + 2})));
    let mut ws = open_ok(&server, "channel=user:ann", &[("authorization", &short)]).await;
    expect_connected(&mut ws, &["user:ann"]).await;
    publish_ns(&server, "user:ann", 0..1).await;
    let last = ws.expect_ns(0..1).await;
    let (id, expired, _) = ws.event().await;
    assert_eq!(expired["type"], "token_expired", "{expired}");
    assert_eq!(id, last, "its id is the cursor after the last event");
    assert_eq!(ws.closed().await, (1000, json!({"code": "token_expired"})));
}

// ---------------------------------------------------------------------------------------
// hostile input

#[tokio::test]
async fn bad_commands_get_error_frames_and_the_socket_goes_on() {
    let server = dev_server().await;
    let mut ws = open_ok(&server, "channel=channel:h", &[]).await;
    expect_connected(&mut ws, &["channel:h"]).await;
    let unknown = ws.request(json!({"type": "shout"})).await;
    assert_eq!(unknown["error"]["code"], "unknown_command", "{unknown}");
    let misspelt = ws.request(json!({"type": "subscribe", "chanels": ["channel:x"]})).await;
    assert_eq!(misspelt["error"]["code"], "invalid_command", "{misspelt}");
    ws.inner.send(Message::text("{not json")).await.unwrap_or_else(|e| panic!("{e}"));
    let (_, not_json) = ws.json().await;
    assert_eq!((not_json["type"].as_str(), not_json["error"]["code"].as_str()), (Some("error"), Some("invalid_json")));
    let pong = ws.request(json!({"type": "ping"})).await;
    assert_eq!(pong["result"], json!({}));
    publish_ns(&server, "channel:h", 0..1).await;
    ws.expect_ns(0..1).await;
}

/// Opens a bystander in `channel`, runs `attack` on another socket, and checks that the
/// bystander still gets the next event.
async fn bystander_survives(server: &TestServer, channel: &str, attack: impl AsyncFnOnce(Ws)) {
    let mut bystander = open_ok(server, &format!("channel={channel}"), &[]).await;
    expect_connected(&mut bystander, &[channel]).await;
    let mut attacker = open_ok(server, &format!("channel={channel}"), &[]).await;
    expect_connected(&mut attacker, &[channel]).await;
    attack(attacker).await;
    publish_ns(server, channel, 0..1).await;
    bystander.expect_ns(0..1).await;
}

#[tokio::test]
async fn a_binary_frame_is_answered_with_an_error_and_close_1003() {
    let server = dev_server().await;
    bystander_survives(&server, "channel:b", async |mut ws| {
        ws.inner.send(Message::binary(vec![1, 2, 3])).await.unwrap_or_else(|e| panic!("{e}"));
        let (_, err) = ws.json().await;
        assert_eq!(err["error"]["code"], "binary_not_supported");
        assert_eq!(ws.closed().await.0, 1003);
    })
    .await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_is_closed_with_1007() {
    let server = dev_server().await;
    bystander_survives(&server, "channel:u", async |mut ws| {
        let frame = Frame::message(Bytes::from_static(&[0xff, 0xfe, b'{']), OpCode::Data(Data::Text), true);
        ws.inner.send(Message::Frame(frame)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ws.closed().await.0, 1007);
    })
    .await;
}

#[tokio::test]
async fn a_message_over_max_body_bytes_is_closed_with_1009() {
    let server = TestServer::with(|c| {
        ws_on(c);
        c.max_payload_bytes = 1024;
        c.max_body_bytes = 2048;
    })
    .await;
    bystander_survives(&server, "channel:big", async |mut ws| {
        let big = json!({"type": "publish", "event": {"channel": "channel:big", "type": "x", "pad": "a".repeat(4096)}});
        ws.inner.send(Message::text(big.to_string())).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ws.closed().await, (1009, json!({"code": "message_too_large"})));
    })
    .await;
}

#[tokio::test]
async fn an_unmasked_frame_is_closed_with_1002() {
    let server = dev_server().await;
    bystander_survives(&server, "channel:m", async |_| {
        let mut tcp = raw_upgrade(server.addr, "channel=channel:m").await;
        // A text frame without the mask bit, which every client frame must have.
        tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = Vec::new();
        within("the server to close", tcp.read_to_end(&mut bytes)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_ends_with_close(&bytes, 1002, br#"{"code":"protocol_error"}"#);
    })
    .await;
}

#[tokio::test]
async fn a_message_fragmented_past_the_limit_is_closed_with_1009() {
    let server = TestServer::with(|c| {
        ws_on(c);
        c.max_payload_bytes = 1024;
        c.max_body_bytes = 2048;
    })
    .await;
    bystander_survives(&server, "channel:frag", async |_| {
        let mut tcp = raw_upgrade(server.addr, "channel=channel:frag").await;
        // A text message that never ends: a first fragment, then continuations, no FIN.
        let chunk = [b'a'; 100];
        tcp.write_all(&client_frame(0x1, false, &chunk)).await.unwrap_or_else(|e| panic!("{e}"));
        // Just past the limit: a client that goes on sending after the server's close
        // would have its unread frames answered by a TCP reset.
        for _ in 0..20 {
            tcp.write_all(&client_frame(0x0, false, &chunk)).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let mut bytes = Vec::new();
        within("the server to close", tcp.read_to_end(&mut bytes)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_ends_with_close(&bytes, 1009, br#"{"code":"message_too_large"}"#);
    })
    .await;
}

#[tokio::test]
async fn a_frame_length_with_its_top_bit_set_is_closed_with_1002_even_after_a_fragment() {
    let server = dev_server().await;
    bystander_survives(&server, "channel:len", async |_| {
        let mut tcp = raw_upgrade(server.addr, "channel=channel:len").await;
        // A first fragment of 10 bytes, then a continuation whose 64-bit length is 2^64 - 10:
        // added to the fragment's, a length past `u64::MAX`. RFC 6455 keeps that length's
        // top bit clear.
        tcp.write_all(&client_frame(0x1, false, b"0123456789")).await.unwrap_or_else(|e| panic!("{e}"));
        let mut continuation = vec![0x00, 0x80 | 127];
        continuation.extend_from_slice(&(u64::MAX - 9).to_be_bytes());
        continuation.extend_from_slice(&[0; 4]);
        tcp.write_all(&continuation).await.unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = Vec::new();
        within("the server to close", tcp.read_to_end(&mut bytes)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_ends_with_close(&bytes, 1002, br#"{"code":"protocol_error"}"#);
    })
    .await;
}

#[tokio::test]
async fn two_sockets_are_written_an_event_as_the_same_frame_bytes() {
    let server = dev_server().await;
    let mut one = raw_upgrade(server.addr, "channel=channel:same").await;
    let mut two = raw_upgrade(server.addr, "channel=channel:same").await;
    // Each socket's own `connected` first.
    for tcp in [&mut one, &mut two] {
        let connected = raw_frame(tcp).await;
        assert!(String::from_utf8_lossy(&connected).contains("connected"), "{connected:?}");
    }
    publish_ns(&server, "channel:same", 0..2).await;
    for _ in 0..2 {
        let (a, b) = (raw_frame(&mut one).await, raw_frame(&mut two).await);
        assert_eq!(a, b, "one frame for every socket shown the same id");
        assert_eq!(a[0], 0x81, "a final text frame");
        let head = if a[1] == 126 { 4 } else { 2 };
        let text = std::str::from_utf8(&a[head..]).unwrap_or_else(|e| panic!("{e}"));
        let event: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(event["id"].is_string() && event["data"]["n"].is_u64(), "{event}");
    }
}

#[tokio::test]
async fn a_ping_is_answered_with_its_payload_and_a_close_with_its_code() {
    let server = dev_server().await;
    let mut tcp = raw_upgrade(server.addr, "channel=channel:pp").await;
    raw_frame(&mut tcp).await;
    // Split across writes, at the mask, as a slow client's TCP may deliver it.
    let ping = client_frame(0x9, true, b"are you there");
    tcp.write_all(&ping[..4]).await.unwrap_or_else(|e| panic!("{e}"));
    tcp.flush().await.unwrap_or_else(|e| panic!("{e}"));
    tcp.write_all(&ping[4..]).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(raw_frame(&mut tcp).await, [&[0x8A, 13][..], b"are you there"].concat());
    tcp.write_all(&client_frame(0x8, true, &[0x03, 0xE9])).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(raw_frame(&mut tcp).await, [0x88, 2, 0x03, 0xE9], "the client's code (1001) echoed");
    let mut rest = Vec::new();
    within("the server to end the connection", tcp.read_to_end(&mut rest)).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(rest.is_empty(), "nothing after the close: {rest:?}");
}

#[tokio::test]
async fn a_frame_with_an_extension_bit_is_closed_with_1002() {
    let server = dev_server().await;
    bystander_survives(&server, "channel:rsv", async |_| {
        let mut tcp = raw_upgrade(server.addr, "channel=channel:rsv").await;
        // RSV1 (compression) set, with no extension agreed.
        let mut frame = client_frame(0x1, true, br#"{"type":"ping"}"#);
        frame[0] |= 0x40;
        tcp.write_all(&frame).await.unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = Vec::new();
        within("the server to close", tcp.read_to_end(&mut bytes)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_ends_with_close(&bytes, 1002, br#"{"code":"protocol_error"}"#);
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_pings_is_closed_as_rate_limited() {
    let server = dev_server().await;
    bystander_survives(&server, "channel:f", async |mut ws| {
        for _ in 0..300 {
            // The server may close in the middle: later sends may fail.
            if ws.inner.send(Message::Ping(Bytes::new())).await.is_err() {
                break;
            }
        }
        let (_, err) = ws.json().await;
        assert_eq!(err["error"]["code"], "rate_limited", "{err}");
        assert_eq!(ws.closed().await, (1008, json!({"code": "rate_limited"})));
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// the server's closes

#[tokio::test]
async fn a_socket_that_subscribes_to_nothing_is_closed_after_the_header_timeout() {
    let server = TestServer::with(|c| {
        ws_on(c);
        c.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut ws = open_ok(&server, "", &[]).await;
    let (_, err) = ws.json().await;
    assert_eq!(err["error"]["code"], "subscribe_timeout", "{err}");
    assert_eq!(ws.closed().await, (1008, json!({"code": "subscribe_timeout"})));
}

#[tokio::test]
async fn a_drain_closes_sockets_with_1012_and_a_reconnect_delay() {
    let server = TestServer::with(|c| {
        ws_on(c);
        c.retry = Duration::from_millis(500);
        c.drain_reconnect_window = Duration::from_millis(1000);
    })
    .await;
    let mut ws = open_ok(&server, "channel=channel:d", &[]).await;
    expect_connected(&mut ws, &["channel:d"]).await;
    let stopping = tokio::spawn(server.stop());
    let (code, reason) = ws.closed().await;
    assert_eq!((code, reason["code"].as_str()), (1012, Some("server_draining")));
    let retry = reason["retryMs"].as_u64().unwrap_or_default();
    assert!((500..1500).contains(&retry), "retry + jitter: {retry}");
    within("shutdown", stopping).await.ok();
}

#[tokio::test]
async fn a_peer_that_answers_no_ping_is_closed() {
    let server = TestServer::with(|c| {
        ws_on(c);
        c.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    // A raw client that does the handshake and then only reads: it never answers a ping.
    let mut tcp = raw_upgrade(server.addr, "channel=channel:p").await;
    let mut bytes = Vec::new();
    within("the server to close", tcp.read_to_end(&mut bytes)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_ends_with_close(&bytes, 1013, br#"{"code":"client_timeout"}"#);
    assert!(bytes.windows(2).any(|w| w == [0x89, 0x00]), "pings were sent first");
}

#[tokio::test]
async fn the_connection_limits_count_sockets_like_streams() {
    let server = secured_server(|c| c.max_connections_per_user = 1).await;
    let ann = format!("Bearer {}", token("ann"));
    let mut ws = open_ok(&server, "channel=user:ann", &[("authorization", &ann)]).await;
    expect_connected(&mut ws, &["user:ann"]).await;
    let refused = server.client(Proto::H1).user("ann").open_events("channel=user:ann", &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let (status, body) =
        open(&server, "channel=user:ann", &[("authorization", &ann)]).await.err().unwrap_or_else(|| panic!("opened"));
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("too_many_connections")));
}

#[tokio::test]
async fn a_socket_that_stops_reading_is_cut_as_a_slow_consumer_and_leaves_the_hub() {
    let server = TestServer::with(|c| {
        ws_on(c);
        c.buffer_size = 4;
    })
    .await;
    let mut ws = open_ok(&server, "channel=channel:slow", &[]).await;
    expect_connected(&mut ws, &["channel:slow"]).await;
    assert_eq!(server.herald.connection_count(), 1);
    // Far more than the socket buffers hold: the writer blocks and the queue overflows.
    let pad = "x".repeat(60 * 1024);
    let mut p = publisher(&server);
    for n in 0..300 {
        p.publish(&json!({"channel": "channel:slow", "type": "note", "n": n, "pad": pad})).await;
        if server.herald.connection_count() == 0 {
            break;
        }
    }
    support::eventually("the slow socket to leave the hub", || server.herald.connection_count() == 0).await;
    // What the client reads now ends early: it never gets all 300.
    let mut read = 0;
    while let Some(Ok(frame)) = within("the end of the socket", ws.inner.next()).await {
        if let Message::Close(Some(close)) = &frame {
            assert_eq!(u16::from(close.code), 1013, "{close:?}");
        }
        read += 1;
    }
    assert!(read < 300, "read {read} frames");
}

#[tokio::test]
async fn websocket_runs_over_http2_extended_connect() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let server = dev_server().await;
    let tcp = TcpStream::connect(server.addr).await.unwrap_or_else(|e| panic!("{e}"));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap_or_else(|e| panic!("h2c handshake: {e}"));
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method("CONNECT")
        .uri(format!("http://{}/api/ws?channel=channel:h2", server.addr))
        .header("sec-websocket-version", "13")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = within("the CONNECT", sender.send_request(req)).await.unwrap_or_else(|e| panic!("CONNECT: {e}"));
    assert_eq!(resp.status(), StatusCode::OK);
    let upgraded = within("the upgrade", hyper::upgrade::on(resp)).await.unwrap_or_else(|e| panic!("upgrade: {e}"));
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    let mut next_text = async || loop {
        match within("a frame over HTTP/2", ws.next()).await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str::<Value>(t.as_str()).unwrap_or_default(),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    };
    assert_eq!(next_text().await["data"]["type"], "connected");
    publish_ns(&server, "channel:h2", 0..1).await;
    assert_eq!(next_text().await["data"]["n"], 0);
    // The same HTTP/2 connection still carries other requests.
    let req = hyper::Request::builder()
        .uri(format!("http://{}/healthz", server.addr))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let health = within("healthz", sender.send_request(req)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_socket_is_joined_and_cut_by_its_connection_id_like_a_stream() {
    let server = secured_server(|_| {}).await;
    let ann = format!("Bearer {}", token("ann"));
    let mut ws = open_ok(&server, "channel=user:ann", &[("authorization", &ann)]).await;
    let (_, connected, _) = ws.event().await;
    let conn = connected["connectionId"].as_str().unwrap_or_default().to_owned();
    let mut backend = server.client(Proto::H1).backend();
    let path = format!("/api/connections/{conn}/channels");
    let (status, _) = backend.post_json(&path, &json!({"channel": "channel:news"})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, joined, _) = ws.event().await;
    assert_eq!((joined["type"].as_str(), joined["channel"].as_str()), (Some("subscribed"), Some("channel:news")));

    let (status, _) = backend.post_json("/api/disconnect", &json!({"connectionId": conn, "reconnect": false})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, cut, _) = ws.event().await;
    assert_eq!(cut, json!({"type": "disconnect", "reason": "disconnected", "reconnect": false}));
    assert_eq!(ws.closed().await, (1000, json!({"code": "disconnected"})));
}

#[tokio::test]
async fn a_socket_resumes_on_another_node_over_redis() {
    let (_redis, a, b) = redis_nodes().await;
    let mut ws = open_ok(&a, "channel=channel:x", &[]).await;
    expect_connected(&mut ws, &["channel:x"]).await;
    publish_ns(&a, "channel:x", 0..2).await;
    let last = ws.expect_ns(0..2).await;
    drop(ws);
    publish_ns(&b, "channel:x", 2..4).await;
    let mut ws = open_ok(&b, &format!("channel=channel:x&lastEventId={last}"), &[]).await;
    expect_connected(&mut ws, &["channel:x"]).await;
    ws.expect_ns(2..4).await;
    publish_ns(&a, "channel:x", 4..5).await;
    ws.expect_ns(4..5).await;
}

#[tokio::test]
async fn metrics_count_open_sockets_frames_and_closes_by_code() {
    let server = dev_server().await;
    let mut ws = open_ok(&server, "channel=channel:m", &[]).await;
    expect_connected(&mut ws, &["channel:m"]).await;
    ws.request(json!({"type": "ping"})).await;
    let mut c = server.client(Proto::H1);
    assert_eq!(c.metric("herald_websocket_connections").await, 1.0);
    assert_eq!(c.metric("herald_websocket_messages_total{direction=\"in\"}").await, 1.0);
    assert_eq!(c.metric("herald_websocket_messages_total{direction=\"out\"}").await, 2.0, "connected and the reply");
    ws.inner.send(Message::binary(vec![0])).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ws.closed().await.0, 1003);
    drop(ws);
    within("the socket to be counted closed", async {
        while c.metric("herald_websocket_connections").await != 0.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(c.metric("herald_websocket_closes_total{code=\"1003\"}").await, 1.0);
    assert_eq!(c.metric("herald_websocket_closes_total{code=\"1000\"}").await, 0.0);
}

#[tokio::test]
async fn a_socket_that_subscribes_while_the_node_drains_is_refused_and_sent_elsewhere() {
    let server = dev_server().await;
    let mut ws = open_ok(&server, "", &[]).await;
    server.herald.drain();
    let refused = ws.request(json!({"type": "subscribe", "channels": ["channel:late"]})).await;
    assert_eq!(refused["error"]["code"], "server_draining", "{refused}");
    let (code, reason) = ws.closed().await;
    assert_eq!((code, reason["code"].as_str()), (1012, Some("server_draining")));
}

#[tokio::test]
async fn an_id_that_cannot_be_resumed_gets_a_reset_as_on_sse() {
    let server = dev_server().await;
    let mut ws = open_ok(&server, "channel=channel:z&lastEventId=garbled", &[]).await;
    expect_connected(&mut ws, &["channel:z"]).await;
    let (_, reset, _) = ws.event().await;
    assert_eq!(
        (reset["type"].as_str(), reset["channel"].as_str(), reset["reason"].as_str()),
        (Some("reset"), Some("channel:z"), Some("unknown_position"))
    );
}

#[tokio::test]
async fn a_publish_over_the_socket_is_charged_to_the_users_rate_limit() {
    let server = secured_server(|c| {
        c.publish_rate = 1.0;
        c.publish_burst = 2.0;
    })
    .await;
    let ann = format!("Bearer {}", token("ann"));
    let mut ws = open_ok(&server, "channel=channel:rl", &[("authorization", &ann)]).await;
    expect_connected(&mut ws, &["channel:rl"]).await;
    let event = json!({"type": "publish", "event": {"channel": "channel:rl", "type": "chat"}});
    for _ in 0..2 {
        assert_eq!(ws.request(event.clone()).await["type"], "reply");
    }
    let refused = ws.request(event).await;
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    assert!(refused["retryAfter"].as_u64().is_some_and(|s| s >= 1), "{refused}");
    let mut c = server.client(Proto::H1);
    assert_eq!(c.metric("herald_publish_refused_total{reason=\"rate_limited\"}").await, 1.0);
}

// ---------------------------------------------------------------------------------------
// Centrifugo's client protocol (`centrifugo = true`): frames that hold many commands. The
// SDK's own behaviour is proven with the real `centrifuge` package (tests/centrifugo); these
// frames are ones it would not send.

type RawWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A Centrifugo socket that sent `connect` with `token` (empty: anonymous, in dev mode),
/// and the answer: the reply's frame, or the close that ended the socket.
async fn centrifugo_connect(server: &TestServer, token: &str) -> (RawWs, Result<Vec<Value>, Option<(u16, String)>>) {
    let url = format!("ws://{}/connection/websocket", server.addr);
    let (mut ws, _) =
        within("the upgrade", tokio_tungstenite::connect_async(url)).await.unwrap_or_else(|e| panic!("{e}"));
    let connect = json!({"id": 1, "connect": {"token": token}}).to_string();
    ws.send(Message::text(connect)).await.unwrap_or_else(|e| panic!("{e}"));
    let answer = centrifugo_frame(&mut ws).await;
    (ws, answer)
}

/// A Centrifugo socket past its `connect` with `token`, and the client id it was told.
async fn centrifugo_client(server: &TestServer, token: &str) -> (RawWs, String) {
    let (ws, answer) = centrifugo_connect(server, token).await;
    let reply = answer.unwrap_or_else(|close| panic!("closed: {close:?}"));
    let client = reply[0]["connect"]["client"].as_str().map(str::to_owned);
    assert!(reply.len() == 1 && client.is_some(), "{reply:?}");
    (ws, client.unwrap_or_default())
}

/// A Centrifugo socket past its `connect` with `token` (empty: anonymous, in dev mode).
async fn centrifugo_connected(server: &TestServer, token: &str) -> RawWs {
    centrifugo_client(server, token).await.0
}

/// The replies of the next text frame (one JSON object a line), or the close code and
/// reason that ended the socket.
async fn centrifugo_frame(ws: &mut RawWs) -> Result<Vec<Value>, Option<(u16, String)>> {
    loop {
        match within("the next Centrifugo frame", ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                let lines = t.as_str().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")));
                return Ok(lines.collect());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())));
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// One frame of `n` history reads of `news`, ids from 2.
fn history_frame(n: u32) -> Message {
    let lines: Vec<String> =
        (2..2 + n).map(|id| json!({"id": id, "history": {"channel": "news", "limit": -1}}).to_string()).collect();
    Message::text(lines.join("\n"))
}

fn centrifugo_on(c: &mut Config) {
    ws_on(c);
    c.centrifugo = Some(herald::config::CentrifugoConfig::default());
}

#[tokio::test]
async fn each_command_of_a_centrifugo_frame_is_charged_and_a_frame_past_the_budget_is_cut_with_3013() {
    let server = TestServer::with(centrifugo_on).await;
    let mut ws = centrifugo_connected(&server, "").await;
    // A frame of 50 commands is 50 requests, all answered.
    ws.send(history_frame(50)).await.unwrap_or_else(|e| panic!("{e}"));
    let mut answered = Vec::new();
    while answered.len() < 50 {
        let replies = centrifugo_frame(&mut ws).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
        answered.extend(replies.iter().map(|r| r["id"].as_u64().unwrap_or_else(|| panic!("{r}"))));
    }
    assert_eq!(answered, (2..52).collect::<Vec<u64>>());
    // One of 200 is more than is left of the socket's budget: none runs, the socket is cut
    // as Centrifugo cuts a client that sends too much.
    ws.send(history_frame(200)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(centrifugo_frame(&mut ws).await, Err(Some((3013, "too many requests".to_owned()))));
    // Others carry on.
    let mut other = centrifugo_connected(&server, "").await;
    other.send(history_frame(1)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(centrifugo_frame(&mut other).await.map(|r| r[0]["id"].clone()), Ok(json!(2)));
}

#[tokio::test]
async fn a_centrifugo_frame_of_history_reads_is_answered_page_by_page_not_gathered_whole() {
    // Each page is about 320 KB: gathered, a frame of many such reads would hold them all
    // at once.
    let server = TestServer::with(centrifugo_on).await;
    let mut p = publisher(&server);
    for n in 0..8 {
        p.publish(&json!({"channel": "channel:news", "type": "big", "n": n, "text": "x".repeat(40_000)})).await;
    }
    let mut ws = centrifugo_connected(&server, "").await;
    ws.send(history_frame(6)).await.unwrap_or_else(|e| panic!("{e}"));
    for id in 2..8 {
        let replies = centrifugo_frame(&mut ws).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
        let pages: Vec<(u64, usize)> = replies
            .iter()
            .map(|r| (r["id"].as_u64().unwrap_or(0), r["history"]["publications"].as_array().map_or(0, Vec::len)))
            .collect();
        assert_eq!(pages, [(id, 8)], "one page a frame");
    }
}

#[tokio::test]
async fn a_socket_subscribing_to_join_leave_rooms_in_a_loop_is_refused_past_the_burst() {
    // Each subscribe to a `join_leave` room is announced there as a join: a socket's own
    // commands come from the user's bucket of live joins and leaves, as a stream's open does.
    let server = secured_server(support::join_leave_rooms_three_at_once).await;
    let ann = format!("Bearer {}", token("ann"));
    let mut ws = open_ok(&server, "channel=user:ann", &[("authorization", &ann)]).await;
    expect_connected(&mut ws, &["user:ann"]).await;
    // Not charged: a channel where nothing is announced.
    let reply = ws.request(json!({"type": "subscribe", "channels": ["channel:quiet"]})).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    // One a command, whatever the number of its rooms; unsubscribes are not charged.
    for _ in 0..3 {
        let reply = ws.request(json!({"type": "subscribe", "channels": ["room:a", "room:b"]})).await;
        assert_eq!(reply["type"], "reply", "{reply}");
        let reply = ws.request(json!({"type": "unsubscribe", "channels": ["room:a", "room:b"]})).await;
        assert_eq!(reply["type"], "reply", "{reply}");
    }
    let refused = ws.request(json!({"type": "subscribe", "channels": ["room:a"]})).await;
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    assert!(refused["retryAfter"].as_u64().is_some_and(|s| s >= 1), "{refused}");
}

#[tokio::test]
async fn a_centrifugo_client_subscribing_to_a_join_leave_room_in_a_loop_is_refused_with_111() {
    let server = TestServer::secured(|c| {
        centrifugo_on(c);
        support::join_leave_rooms_three_at_once(c);
    })
    .await;
    let mut ws = centrifugo_connected(&server, &token("ann")).await;
    // Pushes (the room's join and leave) may come between the replies.
    let mut command = async |line: Value| {
        let read = centrifugo_call(&mut ws, std::slice::from_ref(&line)).await;
        read.into_iter().find(|r| r["id"] == line["id"]).unwrap_or_else(|| panic!("no reply to {line}"))
    };
    // The first subscribe opens the socket's connection (a stream's open), the later ones
    // join it: each is announced in the room, each is charged.
    for id in 0..3 {
        let reply = command(json!({"id": 10 + id, "subscribe": {"channel": "room:x"}})).await;
        assert!(reply["subscribe"].is_object(), "{reply}");
        let reply = command(json!({"id": 20 + id, "unsubscribe": {"channel": "room:x"}})).await;
        assert!(reply["unsubscribe"].is_object(), "{reply}");
    }
    let refused = command(json!({"id": 30, "subscribe": {"channel": "room:x"}})).await;
    assert_eq!((refused["error"]["code"].as_u64(), refused["error"]["temporary"].as_bool()), (Some(111), Some(true)));
}

/// Sends `commands` in one frame and reads until each has its reply: everything read, in
/// order (pushes included).
async fn centrifugo_call(ws: &mut RawWs, commands: &[Value]) -> Vec<Value> {
    let frame: Vec<String> = commands.iter().map(Value::to_string).collect();
    ws.send(Message::text(frame.join("\n"))).await.unwrap_or_else(|e| panic!("{e}"));
    let mut read: Vec<Value> = Vec::new();
    while !commands.iter().all(|c| read.iter().any(|r| r["id"] == c["id"])) {
        read.extend(centrifugo_frame(ws).await.unwrap_or_else(|close| panic!("closed: {close:?}")));
    }
    read
}

#[tokio::test]
async fn a_centrifugo_subscription_is_refused_twice_and_kept_through_an_unsubscribe_and_subscribe_in_one_frame() {
    let server = TestServer::with(centrifugo_on).await;
    let mut ws = centrifugo_connected(&server, "").await;
    let subscribe = |id: u32| json!({"id": id, "subscribe": {"channel": "news"}});
    let read = centrifugo_call(&mut ws, &[subscribe(2)]).await;
    assert!(read[0]["subscribe"].is_object(), "{read:?}");
    let read = centrifugo_call(&mut ws, &[subscribe(3)]).await;
    assert_eq!(read[0]["error"]["code"], 105, "already subscribed: {read:?}");
    // `sub_refresh` is for a channel the client follows.
    let refresh = json!({"id": 4, "sub_refresh": {"channel": "other", "token": "x"}});
    let read = centrifugo_call(&mut ws, &[refresh]).await;
    assert_eq!(read[0]["error"]["code"], 103, "{read:?}");
    // The leave's own notice comes back after the new subscription: it is the client's own,
    // not a server-side unsubscribe.
    let unsubscribe = json!({"id": 5, "unsubscribe": {"channel": "news"}});
    let read = centrifugo_call(&mut ws, &[unsubscribe, subscribe(6)]).await;
    assert!(read.iter().all(|r| r.get("push").is_none()), "{read:?}");
    publisher(&server).publish(&json!({"channel": "channel:news", "type": "note", "n": 1})).await;
    let pushes = centrifugo_frame(&mut ws).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!((&pushes[0]["push"]["channel"], &pushes[0]["push"]["pub"]["data"]["n"]), (&json!("news"), &json!(1)));
}

/// A Centrifugo socket's `connect` with `token`, and what ended the socket, if it ended.
async fn centrifugo_connect_refused(server: &TestServer, token: &str) -> Option<(u16, String)> {
    centrifugo_connect(server, token).await.1.err().unwrap_or_else(|| panic!("connected"))
}

/// Opens a stream of `user` once the node has a place for it (a place given back as a
/// socket's session ends comes a moment after the client's end of the socket), and reads
/// its `connected` notice.
async fn stream_once_placed(server: &TestServer, user: &str) -> SseStream {
    let mut stream = within("a place for the stream", async {
        loop {
            let resp = server.client(Proto::H1).user(user).open_events(&format!("channel=user:{user}"), &[]).await;
            if resp.status() == StatusCode::OK {
                return SseStream::new(resp);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let connected = stream.next().await.unwrap_or_else(|| panic!("stream ended"));
    assert_eq!(connected.data["type"], "connected");
    stream
}

/// A Centrifugo `subscribe` command with `id` for `channel`.
fn centrifugo_subscribe(id: u64, channel: &str) -> Message {
    Message::text(json!({"id": id, "subscribe": {"channel": channel}}).to_string())
}

#[tokio::test]
async fn a_centrifugo_socket_holds_one_of_its_users_connections_from_its_connect_subscribed_or_not() {
    let server = TestServer::secured(|c| {
        centrifugo_on(c);
        c.max_connections_per_user = 2;
    })
    .await;
    let ann = token("ann");
    // Two sockets that connect and never subscribe hold the user's two places: a third
    // socket is cut as Centrifugo cuts a client past its limit, a stream is refused.
    let idle = centrifugo_connected(&server, &ann).await;
    let mut second = centrifugo_connected(&server, &ann).await;
    let limit = Some((3504, "connection limit".to_owned()));
    assert_eq!(centrifugo_connect_refused(&server, &ann).await, limit);
    let refused = server.client(Proto::H1).user("ann").open_events("channel=user:ann", &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // A subscription opens the socket's connection in the place it held (no more), and a
    // refused one leaves the socket its place.
    second.send(centrifugo_subscribe(2, "user:bob")).await.unwrap_or_else(|e| panic!("{e}"));
    let denied = centrifugo_frame(&mut second).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
    assert_eq!(denied[0]["error"]["code"], 103, "{denied:?}");
    assert_eq!(centrifugo_connect_refused(&server, &ann).await, limit);
    second.send(centrifugo_subscribe(3, "news")).await.unwrap_or_else(|e| panic!("{e}"));
    let reply = centrifugo_frame(&mut second).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
    assert!(reply[0]["subscribe"].is_object(), "{reply:?}");
    assert_eq!(centrifugo_connect_refused(&server, &ann).await, limit);
    // Another user has places of their own.
    centrifugo_connected(&server, &token("bob")).await;
    // The idle socket goes: its place is given back, and the user's stream takes it.
    drop(idle);
    let _stream = stream_once_placed(&server, "ann").await;
    assert_eq!(centrifugo_connect_refused(&server, &ann).await, limit);
}

/// On Redis the per-user limit holds across nodes for Centrifugo sockets that follow nothing
/// too: each takes a slot of the user's from its `connect`, its first subscription's
/// connection takes the slot over (counted once), a refused subscription keeps it, and it is
/// given back when the socket goes. Before, such sockets were counted on their own node only,
/// so a user held `max_connections_per_user` of them on every node.
#[tokio::test]
async fn on_redis_a_centrifugo_socket_that_follows_nothing_holds_one_of_its_users_slots_on_every_node() {
    let redis = support::RedisServer::start().await;
    let node = |url: String| {
        TestServer::secured(move |c| {
            centrifugo_on(c);
            c.redis_url = Some(url);
            c.max_connections_per_user = 2;
        })
    };
    let (a, b) = (node(redis.url()).await, node(redis.url()).await);
    let ann = token("ann");
    let slots = || redis.cli(&["ZCARD", "realtime:conns:{ann}"]).trim().to_owned();
    let limit = Some((3504, "connection limit".to_owned()));
    let mut on_a = centrifugo_connected(&a, &ann).await;
    let on_b = centrifugo_connected(&b, &ann).await;
    assert_eq!(slots(), "2", "one slot each");
    // A third is refused on either node, and so is a stream.
    assert_eq!(centrifugo_connect_refused(&a, &ann).await, limit);
    assert_eq!(centrifugo_connect_refused(&b, &ann).await, limit);
    let refused = b.client(Proto::H1).user("ann").open_events("channel=user:ann", &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // A refused subscription keeps the socket its slot (the same one, not given back and
    // taken again, where another client could take it in between); a granted one takes it
    // over.
    let members = || redis.cli(&["ZRANGE", "realtime:conns:{ann}", "0", "-1"]);
    let held = members();
    on_a.send(centrifugo_subscribe(2, "user:bob")).await.unwrap_or_else(|e| panic!("{e}"));
    let denied = centrifugo_frame(&mut on_a).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
    assert_eq!(denied[0]["error"]["code"], 103, "{denied:?}");
    assert_eq!(members(), held);
    on_a.send(centrifugo_subscribe(3, "news")).await.unwrap_or_else(|e| panic!("{e}"));
    let reply = centrifugo_frame(&mut on_a).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
    assert!(reply[0]["subscribe"].is_object(), "{reply:?}");
    assert_eq!(slots(), "2", "the connection's slot in place of the socket's");
    assert_eq!(centrifugo_connect_refused(&b, &ann).await, limit);
    // The idle socket on b goes: its slot is given back, and a stream on a takes it.
    drop(on_b);
    support::eventually("node b to give the idle socket's slot back", || slots() == "1").await;
    let _stream = stream_once_placed(&a, "ann").await;
    assert_eq!(centrifugo_connect_refused(&b, &ann).await, limit);
}

#[tokio::test]
async fn a_centrifugo_socket_without_a_subscription_is_cut_when_its_token_expires_unless_refreshed() {
    let server = TestServer::secured(|c| {
        centrifugo_on(c);
        c.auth.leeway = Duration::ZERO;
    })
    .await;
    // Connected, following nothing, silent: cut at its token's expiry, as a connection is,
    // instead of publishing as its user for as long as it likes.
    let mut ws = centrifugo_connected(&server, &token_with(json!({"sub": "ann", "exp": now() + 1}))).await;
    let end = loop {
        if let Err(close) = centrifugo_frame(&mut ws).await {
            break close;
        }
    };
    assert_eq!(end, Some((3005, "connection expired".to_owned())));
    // A refresh moves the deadline: past the first one the socket still publishes.
    let mut ws = centrifugo_connected(&server, &token_with(json!({"sub": "ann", "exp": now() + 1}))).await;
    let refresh = json!({"id": 2, "refresh": {"token": token("ann")}}).to_string();
    ws.send(Message::text(refresh)).await.unwrap_or_else(|e| panic!("{e}"));
    let reply = centrifugo_frame(&mut ws).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
    assert!(reply[0]["refresh"].is_object(), "{reply:?}");
    let quiet = tokio::time::timeout(Duration::from_millis(2500), centrifugo_frame(&mut ws)).await;
    assert!(quiet.is_err(), "nothing came past the first token's expiry: {quiet:?}");
    let publish = json!({"id": 3, "publish": {"channel": "news", "data": {"text": "still here"}}}).to_string();
    ws.send(Message::text(publish)).await.unwrap_or_else(|e| panic!("{e}"));
    let reply = centrifugo_frame(&mut ws).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
    assert_eq!(reply[0]["id"], 3, "{reply:?}");
    assert!(reply[0].get("error").is_none(), "{reply:?}");
}

#[tokio::test]
async fn a_disconnect_of_a_user_or_a_client_id_cuts_its_centrifugo_sockets_that_follow_nothing() {
    let server = TestServer::secured(centrifugo_on).await;
    let ann = token("ann");
    let cut = |body: Value| {
        let server = &server;
        async move {
            let (status, answer) = server.client(Proto::H1).backend().post_json("/api/disconnect", &body).await;
            assert_eq!(status, 200, "{answer}");
            answer["disconnected"].as_u64()
        }
    };
    // By user, for good: the socket is told as a connection would be, and goes.
    let mut idle = centrifugo_connected(&server, &ann).await;
    assert_eq!(cut(json!({"user": "ann", "reconnect": false})).await, Some(1));
    assert_eq!(centrifugo_frame(&mut idle).await, Err(Some((3503, "force disconnect".to_owned()))));
    // By the client id its `connect` reply gave it, to come back. The user's connections list
    // it (with no channel) as it counts.
    let (mut idle, client) = centrifugo_client(&server, &ann).await;
    let mut other = centrifugo_connected(&server, &ann).await;
    let (status, listed) = server.client(Proto::H1).backend().get_json("/api/users/ann/connections").await;
    assert_eq!(status, 200, "{listed}");
    let mine =
        listed["connections"].as_array().and_then(|all| all.iter().find(|c| c["connectionId"] == client.as_str()));
    let shown = mine.map(|c| (c["transport"].clone(), c["channels"].clone()));
    assert_eq!(shown, Some((json!("centrifugo"), json!([]))), "{listed}");
    assert_eq!(cut(json!({"connectionId": client, "reconnect": true})).await, Some(1));
    assert_eq!(centrifugo_frame(&mut idle).await, Err(Some((3011, "force reconnect".to_owned()))));
    // The user's other socket stays.
    other
        .send(Message::text(json!({"id": 2, "presence_stats": {"channel": "news"}}).to_string()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reply = centrifugo_frame(&mut other).await.unwrap_or_else(|close| panic!("closed: {close:?}"));
    assert_eq!(reply[0]["id"], 2, "{reply:?}");
}

/// A banned user's Centrifugo client is refused at its `connect`, as a stream is (and as
/// Centrifugo PRO refuses a blocked user), with the code a disconnect with a ban cuts a
/// client with. Before, it connected, held a place and published as the user.
#[tokio::test]
async fn a_banned_users_centrifugo_connect_is_refused_with_3503_and_holds_no_place() {
    let server = TestServer::secured(centrifugo_on).await;
    let mut before = centrifugo_connected(&server, &token("ann")).await;
    let mut backend = server.client(Proto::H1).backend();
    let (status, answer) = backend.post_json("/api/bans", &json!({"user": "ann", "ttl": "1h"})).await;
    assert_eq!(status, 200, "{answer}");
    // A socket connected before the ban (a ban alone cuts nothing) is cut at its first
    // subscription, whose connection the ban refuses, with the same code.
    before.send(centrifugo_subscribe(2, "news")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(centrifugo_frame(&mut before).await, Err(Some((3503, "force disconnect".to_owned()))));
    // More refusals than the user has connections: none of them keeps one.
    let mut refused = Vec::new();
    for _ in 0..6 {
        let (ws, answer) = centrifugo_connect(&server, &token("ann")).await;
        assert_eq!(answer, Err(Some((3503, "force disconnect".to_owned()))));
        refused.push(ws);
    }
    // Counted as refused streams are, by reason.
    let refusals = |reason: &'static str| {
        let server = &server;
        async move {
            let series = format!("herald_subscribe_refused_total{{reason=\"{reason}\"}}");
            server.client(Proto::H1).metric(&series).await
        }
    };
    assert_eq!(refusals("banned").await, 7.0, "the subscription and six connects");
    let _bob = centrifugo_connected(&server, &token("bob")).await;
    let (status, answer) = backend.delete("/api/bans/ann").await;
    assert_eq!((status.as_u16(), answer["lifted"].as_bool()), (200, Some(true)), "{answer}");
    // Lifted: all five of the user's connections are there to take.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(centrifugo_connected(&server, &token("ann")).await);
    }
    let (_ws, answer) = centrifugo_connect(&server, &token("ann")).await;
    assert_eq!(answer, Err(Some((3504, "connection limit".to_owned()))), "the sixth is past the limit");
    assert_eq!(refusals("user_limit").await, 1.0);
}

// Centrifugo's bidirectional emulation (`emulation = true`): the session's replies down one
// HTTP stream, its commands up as `POST /emulation`. The SDK's transports are proven with the
// real `centrifuge` package (tests/centrifugo/test/emulation.test.mjs); this checks the wire
// over HTTP/1.1 and over HTTP/2, where the commands share the stream's connection.

/// The next line of an emulated session's `http_stream`, as JSON.
async fn next_line(stream: &mut support::RawStream) -> Value {
    assert!(stream.read_until(b"\n").await, "the stream ended: {}", stream.text());
    let at = stream.seen.iter().position(|b| *b == b'\n').unwrap_or_default();
    let line: Vec<u8> = stream.seen.drain(..=at).collect();
    serde_json::from_slice(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&line)))
}

#[tokio::test]
async fn an_emulated_centrifugo_session_answers_down_its_stream_what_comes_by_post_over_http1_and_http2() {
    for proto in support::ALL_PLAIN {
        let server = secured_server(|c| {
            c.centrifugo = Some(herald::config::CentrifugoConfig { emulation: true, ..Default::default() });
        })
        .await;
        let mut client = server.client(proto);
        let connect = json!({"id": 1, "connect": {"token": token("emi")}}).to_string();
        let req = client
            .request("POST", "/connection/http_stream")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(connect)))
            .unwrap_or_else(|e| panic!("{e}"));
        let resp = client.send(req).await;
        assert_eq!(resp.status(), StatusCode::OK, "{proto:?}");
        let mut stream = support::RawStream::new(resp);
        let reply = next_line(&mut stream).await;
        assert_eq!(reply["id"], 1, "{proto:?}: {reply}");
        let (session, node) = (reply["connect"]["session"].clone(), reply["connect"]["node"].clone());
        assert_eq!(node, json!(server.herald.node_id()));
        assert!(session.as_str().is_some_and(|s| s.len() >= 40), "a session key of 32 random bytes: {session}");

        let command = |data: String| json!({"session": session, "node": node, "data": data});
        let subscribe = json!({"id": 2, "subscribe": {"channel": "news"}}).to_string();
        let (status, _) = client.post_json("/emulation", &command(subscribe)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(next_line(&mut stream).await["id"], 2);
        publisher(&server).publish(&json!({"channel": "channel:news", "type": "note", "n": 1})).await;
        let push = next_line(&mut stream).await;
        assert_eq!(
            (push["push"]["channel"].clone(), push["push"]["pub"]["data"]["n"].clone()),
            (json!("news"), json!(1))
        );

        // A session key it was not told is no session, on this node or any.
        let forged = json!({"session": "not-the-key", "node": node, "data": "{}"});
        let (status, body) = client.post_json("/emulation", &forged).await;
        assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("session_not_found")));
        // A command Herald has no handler for ends the session with the disconnect push last.
        let (status, _) = client.post_json("/emulation", &command(json!({"send": {}}).to_string())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            next_line(&mut stream).await,
            json!({"push": {"disconnect": {"code": 3508, "reason": "not available"}}})
        );
        stream.read_to_end().await;
        assert!(stream.seen.is_empty(), "nothing after the disconnect: {}", stream.text());
        let (status, _) = client.post_json("/emulation", &command("{}".to_owned())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the session is gone with its stream");
    }
}

/// A Centrifugo socket that asked for the Protobuf protocol, and the subprotocol the answer
/// named.
async fn centrifugo_protobuf(server: &TestServer) -> (RawWs, Option<String>) {
    let mut req =
        format!("ws://{}/connection/websocket", server.addr).into_client_request().unwrap_or_else(|e| panic!("{e}"));
    req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("centrifuge-protobuf"));
    let (ws, resp) =
        within("the upgrade", tokio_tungstenite::connect_async(req)).await.unwrap_or_else(|e| panic!("{e}"));
    let chosen = resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (ws, chosen)
}

#[tokio::test]
async fn a_protobuf_centrifugo_socket_answers_in_binary_and_a_frame_that_is_not_protobuf_is_3501() {
    let server = TestServer::with(centrifugo_on).await;
    let (mut ws, chosen) = centrifugo_protobuf(&server).await;
    assert_eq!(chosen.as_deref(), Some("centrifuge-protobuf"));
    // `Command{id: 1, connect: {}}`, length-delimited: the reply is a binary `Reply` of id 1
    // with a `connect` result (field 5) that names the client.
    ws.send(Message::binary(vec![4, 0x08, 0x01, 0x22, 0x00])).await.unwrap_or_else(|e| panic!("{e}"));
    let reply = match within("the connect reply", ws.next()).await {
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        other => panic!("expected a binary frame, got {other:?}"),
    };
    assert_eq!(&reply[1..5], &[0x08, 0x01, 0x2a, reply[4]], "id 1, then the connect result: {reply:?}");
    assert_eq!(usize::from(reply[0]), reply.len() - 1, "one length-delimited reply");
    // A length past the frame's end is no Protobuf.
    ws.send(Message::binary(vec![9, 0x08])).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(centrifugo_frame(&mut ws).await.err().flatten().map(|(code, _)| code), Some(3501));

    // And a text frame on a Protobuf socket is the other protocol's.
    let (mut ws, _) = centrifugo_protobuf(&server).await;
    ws.send(Message::text(json!({"id": 1, "connect": {}}).to_string())).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(centrifugo_frame(&mut ws).await.err().flatten().map(|(code, _)| code), Some(3501));
    // A socket that does not ask for it speaks JSON, and its answer names no subprotocol.
    let url = format!("ws://{}/connection/websocket", server.addr);
    let (_, resp) =
        within("the upgrade", tokio_tungstenite::connect_async(url)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.headers().get("sec-websocket-protocol"), None);
    // An older SDK asks in the query: Protobuf, with no subprotocol named back.
    let url = format!("ws://{}/connection/websocket?format=protobuf", server.addr);
    let (mut ws, resp) =
        within("the upgrade", tokio_tungstenite::connect_async(url)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.headers().get("sec-websocket-protocol"), None);
    ws.send(Message::binary(vec![4, 0x08, 0x01, 0x22, 0x00])).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(within("the connect reply", ws.next()).await, Some(Ok(Message::Binary(_)))));
}
