//! The lean HTTP/1.1 path: event-stream requests on plain TCP are served without hyper, and
//! must look exactly as if hyper had served them, but for the `connection: close` of a stream
//! (its connection ends with it). Each test speaks raw HTTP over a real socket, so that
//! framing, heads and connection handling are seen byte for byte.
//!
//! A request head bigger than the lean path's buffer (8 KB) is left to hyper: padding a
//! request with a large header is how these tests get hyper's answer to compare with.

mod support;

use std::net::SocketAddr;

use serde_json::json;
use support::{API_KEY, Proto, RedisServer, TestServer, cluster_node, eventually, redis_node, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.x connection and everything it has received.
struct Raw {
    tcp: TcpStream,
    seen: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = within("connect", TcpStream::connect(addr)).await.unwrap_or_else(|e| panic!("connect: {e}"));
        tcp.set_nodelay(true).unwrap_or_else(|e| panic!("nodelay: {e}"));
        Self { tcp, seen: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("a write", self.tcp.write_all(bytes)).await.unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Reads until `needle` has been received (anywhere in what was seen); false on EOF.
    async fn read_until(&mut self, needle: &[u8]) -> bool {
        within("bytes from the server", async {
            while !contains(&self.seen, needle) {
                let mut buf = [0u8; 4096];
                match self.tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                }
            }
            true
        })
        .await
    }

    /// Reads until the server closes the connection.
    async fn read_to_end(&mut self) {
        within("the server to close the connection", async {
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                self.seen.extend_from_slice(&buf[..n]);
            }
        })
        .await;
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// The response head (status line and headers), with the `date` line masked.
    fn head(&self) -> String {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        head.lines()
            .map(|l| if l.starts_with("date: ") { "date: <masked>" } else { l })
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A header that makes a request head too big for the lean path, so hyper serves it.
fn padding() -> String {
    format!("x-pad: {}\r\n", "p".repeat(9 * 1024))
}

/// Decodes a chunked body; returns the chunks and whether the last chunk was seen.
fn chunks(body: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { return (out, false) };
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap_or("?"), 16)
            .unwrap_or_else(|e| panic!("bad chunk size line {:?}: {e}", String::from_utf8_lossy(&rest[..eol])));
        rest = &rest[eol + 2..];
        if size == 0 {
            return (out, rest.starts_with(b"\r\n"));
        }
        if rest.len() < size + 2 {
            return (out, false);
        }
        out.push(rest[..size].to_vec());
        assert_eq!(&rest[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        rest = &rest[size + 2..];
    }
}

fn body_of(seen: &[u8]) -> &[u8] {
    let at = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no head"));
    &seen[at + 4..]
}

const STREAM: &str = "GET /api/events?channel=channel:lean HTTP/1.1\r\nHost: x\r\nx-request-id: fixed-id\r\n";

#[tokio::test]
async fn a_stream_head_sent_a_byte_at_a_time_is_served_and_delivers() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    for b in format!("{STREAM}\r\n").as_bytes() {
        raw.send(&[*b]).await;
    }
    assert!(raw.read_until(b"\"connected\"").await, "{}", raw.text());
    assert!(raw.text().starts_with("HTTP/1.1 200 OK\r\n"), "{}", raw.text());
    let answer = server.client(Proto::H1).publish(&json!({"channel": "channel:lean", "type": "t", "n": 1})).await;
    let id = answer["id"].as_str().unwrap_or_else(|| panic!("no id: {answer}")).to_owned();
    assert!(raw.read_until(id.as_bytes()).await, "the event arrives: {}", raw.text());
}

/// Byte for byte but for `connection: close`, which the lean path always says (its connection
/// ends with the stream) and hyper only when the client asked.
#[tokio::test]
async fn a_stream_head_is_byte_for_byte_the_head_hyper_writes_for_a_connection_that_closes() {
    let server = TestServer::start().await;
    let mut open = Vec::new();
    for extra in ["", "Connection: close\r\n"] {
        let mut lean = Raw::connect(server.addr).await;
        lean.send(format!("{STREAM}{extra}\r\n").as_bytes()).await;
        let mut hyper = Raw::connect(server.addr).await;
        hyper.send(format!("{STREAM}{extra}{}\r\n", padding()).as_bytes()).await;
        assert!(lean.read_until(b"\"connected\"").await && hyper.read_until(b"\"connected\"").await);
        assert_eq!(hyper.head().contains("connection: close"), !extra.is_empty(), "{}", hyper.head());
        let closing = if extra.is_empty() {
            hyper
                .head()
                .replace("\r\ntransfer-encoding: chunked", "\r\nconnection: close\r\ntransfer-encoding: chunked")
        } else {
            hyper.head()
        };
        assert_eq!(lean.head(), closing, "with {extra:?}");
        assert!(lean.head().contains("transfer-encoding: chunked"), "{}", lean.head());
        open.extend([lean, hyper]);
    }
    assert_eq!(server.herald.connection_count(), 4);
}

#[tokio::test]
async fn a_refused_stream_is_answered_byte_for_byte_as_hyper_answers_it() {
    let server = TestServer::start().await;
    for (version, extra) in
        [("1.1", ""), ("1.1", "Connection: close\r\n"), ("1.0", ""), ("1.0", "Connection: keep-alive\r\n")]
    {
        let request = |pad: &str| {
            format!(
                "GET /api/events?channel=nope HTTP/{version}\r\nHost: x\r\nx-request-id: fixed-id\r\n{extra}{pad}\r\n"
            )
        };
        let mut lean = Raw::connect(server.addr).await;
        lean.send(request("").as_bytes()).await;
        let mut hyper = Raw::connect(server.addr).await;
        hyper.send(request(&padding()).as_bytes()).await;
        assert!(lean.read_until(b"}}").await && hyper.read_until(b"}}").await, "{}", lean.text());
        assert_eq!(lean.head(), hyper.head(), "HTTP/{version} with {extra:?}");
        assert_eq!(body_of(&lean.seen), body_of(&hyper.seen));
        assert!(lean.head().starts_with(&format!("HTTP/{version} 400 Bad Request")), "{}", lean.head());
        let body: serde_json::Value =
            serde_json::from_slice(body_of(&lean.seen)).unwrap_or_else(|e| panic!("json: {e}: {}", lean.text()));
        assert_eq!(body["error"]["code"], "invalid_channel");
    }
}

#[tokio::test]
async fn a_refused_stream_request_leaves_the_connection_to_the_next_requests() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    // Pipelined: the follow-up is already in the bytes the lean path read with the head.
    raw.send(b"GET /api/events?channel=nope HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw.read_until(b"{\"status\":\"ok\"}").await, "{}", raw.text());
    assert!(raw.text().starts_with("HTTP/1.1 400 Bad Request\r\n"), "{}", raw.text());
    // And one more after that, sent on its own.
    raw.seen.clear();
    raw.send(b"GET /api/events?channel=channel:again HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw.read_until(b"\"connected\"").await, "{}", raw.text());
    assert_eq!(server.herald.connection_count(), 1);
}

#[tokio::test]
async fn an_http10_stream_is_close_delimited_and_ends_with_the_connection_on_drain() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(b"GET /api/events?channel=channel:old HTTP/1.0\r\n\r\n").await;
    assert!(raw.read_until(b"\"connected\"").await, "{}", raw.text());
    assert!(raw.head().starts_with("HTTP/1.0 200 OK\r\n"), "{}", raw.head());
    assert!(!raw.head().contains("transfer-encoding"), "{}", raw.head());
    let answer = server.client(Proto::H1).publish(&json!({"channel": "channel:old", "type": "t"})).await;
    let id = answer["id"].as_str().unwrap_or_default().to_owned();
    assert!(raw.read_until(id.as_bytes()).await);
    // The body is the SSE text itself, with no chunk framing around it.
    assert!(body_of(&raw.seen).starts_with(b"retry: "), "{}", raw.text());
    let stopping = tokio::spawn(server.stop());
    raw.read_to_end().await;
    assert!(raw.text().ends_with("\n\n") && raw.text().contains("\nretry: "), "{}", raw.text());
    stopping.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn an_http11_stream_is_chunked_one_chunk_per_write_and_ends_with_the_last_chunk_on_drain() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(format!("{STREAM}\r\n").as_bytes()).await;
    assert!(raw.read_until(b"\"connected\"").await);
    let mut publisher = server.client(Proto::H1);
    for n in 0..3 {
        let answer = publisher.publish(&json!({"channel": "channel:lean", "type": "t", "n": n})).await;
        let id = answer["id"].as_str().unwrap_or_default().to_owned();
        assert!(raw.read_until(id.as_bytes()).await);
    }
    let stopping = tokio::spawn(server.stop());
    raw.read_to_end().await;
    stopping.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
    let (chunks, ended) = chunks(body_of(&raw.seen));
    assert!(ended, "the body ends with the last chunk: {}", raw.text());
    let text: Vec<String> = chunks.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    assert!(text[0].starts_with("retry: ") && text[0].contains("\"connected\""), "{text:?}");
    // Every chunk holds whole SSE messages, and the last one is the drain's `retry:`.
    assert!(text.iter().all(|c| c.ends_with("\n\n")), "{text:?}");
    assert_eq!(text.iter().filter(|c| c.contains("\"type\":\"t\"")).count(), 3, "{text:?}");
    assert!(text.last().is_some_and(|c| c.starts_with("retry: ")), "{text:?}");
}

/// A stream served here closes its connection when it ends, so its head says so: a client
/// that took the connection back into its pool on the last chunk would send its next request
/// into the close and lose it (a `POST` is not retried).
#[tokio::test]
async fn a_stream_the_server_ends_says_in_its_head_that_the_connection_closes_after_it() {
    let server = TestServer::secured(|_| {}).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(format!("{STREAM}authorization: Bearer {}\r\n\r\n", support::token("ann")).as_bytes()).await;
    assert!(raw.read_until(b"\"connected\"").await, "{}", raw.text());
    let (status, answer) =
        server.client(Proto::H1).backend().post_json("/api/disconnect", &json!({"channel": "channel:lean"})).await;
    assert_eq!((status.as_u16(), &answer["disconnected"]), (200, &json!(1)), "{answer}");
    raw.read_to_end().await;
    let (_, ended) = chunks(body_of(&raw.seen));
    assert!(ended, "the body ends with the last chunk: {}", raw.text());
    assert!(raw.text().contains("\"disconnect\""), "{}", raw.text());
    assert!(raw.head().contains("\r\nconnection: close\r\n"), "{}", raw.head());
}

#[tokio::test]
async fn heads_too_big_for_the_lean_path_go_to_hyper_which_still_refuses_oversized_ones_with_431() {
    let server = TestServer::start().await;
    let mut big = Raw::connect(server.addr).await;
    big.send(format!("{STREAM}{}\r\n", padding()).as_bytes()).await;
    assert!(big.read_until(b"\"connected\"").await, "a 9 KB head is still served: {}", big.head());
    let mut huge = Raw::connect(server.addr).await;
    huge.send(format!("{STREAM}x-pad: {}\r\n\r\n", "p".repeat(100 * 1024)).as_bytes()).await;
    huge.read_to_end().await;
    assert!(huge.text().starts_with("HTTP/1.1 431 "), "{}", huge.head());
    assert_eq!(server.herald.connection_count(), 1);
}

#[tokio::test]
async fn a_client_that_closes_its_stream_leaves_the_hub() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(format!("{STREAM}\r\n").as_bytes()).await;
    assert!(raw.read_until(b"\"connected\"").await);
    assert_eq!(server.herald.connection_count(), 1);
    drop(raw);
    let herald = server.herald.clone();
    eventually("the closed stream to leave the hub", || herald.connection_count() == 0).await;
}

#[tokio::test]
async fn a_client_that_keeps_sending_on_its_stream_is_cut_off() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(format!("{STREAM}\r\n").as_bytes()).await;
    assert!(raw.read_until(b"\"connected\"").await);
    // A few pipelined bytes are tolerated (and ignored); a flood is not.
    raw.send(b"GET /healthz HTTP/1.1\r\n\r\n").await;
    let publish = json!({"channel": "channel:lean", "type": "t"});
    let id = server.client(Proto::H1).publish(&publish).await["id"].as_str().unwrap_or_default().to_owned();
    assert!(raw.read_until(id.as_bytes()).await, "the stream goes on after a few stray bytes");
    assert!(!raw.text().contains("{\"status\""), "stray requests are not answered on a stream");
    let flood = vec![b'x'; 64 * 1024];
    // The server may close while the flood is still being written.
    let _ = within("the flood", raw.tcp.write_all(&flood)).await;
    raw.read_to_end().await;
    let herald = server.herald.clone();
    eventually("the flooding stream to leave the hub", || herald.connection_count() == 0).await;
}

// --- Publishes -----------------------------------------------------------------------------

/// A publish request to `path` with `body` and extra header lines.
fn post(path: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// The complete responses (head with `date` masked, body) at the start of `seen`, each framed
/// by its `content-length`.
fn responses(seen: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = seen;
    while let Some(at) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..at]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no content-length in {head}"));
        if rest.len() < at + 4 + len {
            break;
        }
        let masked =
            head.lines().map(|l| if l.starts_with("date: ") { "date: <masked>" } else { l }).collect::<Vec<_>>();
        out.push((masked.join("\r\n"), rest[at + 4..at + 4 + len].to_vec()));
        rest = &rest[at + 4 + len..];
    }
    out
}

impl Raw {
    /// Reads until `n` complete responses have arrived; returns them.
    async fn responses(&mut self, n: usize) -> Vec<(String, Vec<u8>)> {
        within("responses from the server", async {
            while responses(&self.seen).len() < n {
                let mut buf = [0u8; 4096];
                match self.tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => self.seen.extend_from_slice(&buf[..k]),
                }
            }
        })
        .await;
        let got = responses(&self.seen);
        assert_eq!(got.len(), n, "responses expected, got: {}", self.text());
        got
    }
}

fn json_of(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("json: {e}: {}", String::from_utf8_lossy(body)))
}

fn key() -> String {
    format!("x-api-key: {API_KEY}\r\n")
}

#[tokio::test]
async fn lean_publishes_are_answered_byte_for_byte_as_hyper_answers_them() {
    let server = TestServer::secured(|_| {}).await;
    let ev = r#"{"type":"t","n":1}"#;
    let cases = [
        ("a publish to a channel", post("/api/channels/channel:a/events", &key(), ev), 200),
        ("a publish by body", post("/api/publish", &key(), r#"{"channel":"channel:a","type":"t"}"#), 200),
        ("a batch", post("/api/publish", &key(), r#"[{"channel":"channel:a","type":"t"}]"#), 200),
        ("bad JSON", post("/api/channels/channel:a/events", &key(), "{\"type\":"), 400),
        ("no credentials", post("/api/channels/channel:a/events", "", ev), 401),
        ("a wrong key", post("/api/channels/channel:a/events", "x-api-key: nope\r\n", ev), 401),
        ("a bad channel", post("/api/channels/no_such_ns:x!/events", &key(), ev), 400),
        (
            "a channel in the body too",
            post("/api/channels/channel:a/events", &key(), r#"{"channel":"x","type":"t"}"#),
            400,
        ),
        (
            "connection: close",
            post("/api/channels/channel:a/events", &format!("{}Connection: close\r\n", key()), ev),
            200,
        ),
    ];
    for (what, request, status) in cases {
        // The same request id on both, so that the heads can be compared whole.
        let with_id = request.replacen("Host: x\r\n", "Host: x\r\nx-request-id: fixed-id\r\n", 1);
        let mut lean = Raw::connect(server.addr).await;
        lean.send(with_id.as_bytes()).await;
        let mut hyper = Raw::connect(server.addr).await;
        hyper.send(with_id.replacen("Host: x\r\n", &format!("Host: x\r\n{}", padding()), 1).as_bytes()).await;
        let (lean_head, lean_body) = lean.responses(1).await.remove(0);
        let (hyper_head, hyper_body) = hyper.responses(1).await.remove(0);
        assert!(lean_head.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {lean_head}");
        let lean_json = json_of(&lean_body);
        let hyper_json = json_of(&hyper_body);
        if status == 200 {
            // Two events, two ids of the same shape.
            assert_eq!(lean_body.len(), hyper_body.len(), "{what}");
            assert_eq!(
                lean_json.as_object().map(|o| o.keys().collect::<Vec<_>>()),
                hyper_json.as_object().map(|o| o.keys().collect::<Vec<_>>()),
                "{what}"
            );
        } else {
            assert_eq!(lean_json, hyper_json, "{what}");
            assert!(lean_json["error"]["code"].is_string(), "{what}: {lean_json}");
        }
        assert_eq!(lean_head, hyper_head, "{what}");
        assert!(lean_head.contains("x-request-id: fixed-id"), "{what}: {lean_head}");
    }
}

#[tokio::test]
async fn several_publishes_on_one_keep_alive_connection_are_each_answered_and_delivered_in_order() {
    let server = TestServer::start().await;
    let mut stream = server.client(Proto::H1).subscribe("channel=channel:ka", &[]).await;
    let mut raw = Raw::connect(server.addr).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        raw.seen.clear();
        raw.send(post("/api/channels/channel:ka/events", "", &format!(r#"{{"type":"t","n":{n}}}"#)).as_bytes()).await;
        let (head, body) = raw.responses(1).await.remove(0);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && !head.contains("connection: close"), "{head}");
        ids.push(json_of(&body)["id"].as_str().unwrap_or_else(|| panic!("no id")).to_owned());
    }
    for (n, id) in ids.iter().enumerate() {
        let ev = stream.expect().await;
        assert_eq!((ev.data["id"].as_str(), &ev.data["n"]), (Some(id.as_str()), &json!(n)));
    }
}

#[tokio::test]
async fn pipelined_publishes_are_answered_in_order_and_a_request_for_another_route_follows() {
    let server = TestServer::start().await;
    let mut stream = server.client(Proto::H1).subscribe("channel=channel:pipe", &[]).await;
    let mut raw = Raw::connect(server.addr).await;
    let mut all = String::new();
    for n in 0..4 {
        all += &post("/api/channels/channel:pipe/events", "", &format!(r#"{{"type":"t","n":{n}}}"#));
    }
    all += &post("/api/publish", "", r#"{"channel":"channel:pipe","type":"t","n":4}"#);
    all += "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    raw.send(all.as_bytes()).await;
    let answers = raw.responses(6).await;
    for (n, (head, body)) in answers.iter().take(5).enumerate() {
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{n}: {head}");
        let ev = stream.expect().await;
        assert_eq!(ev.data["id"], json_of(body)["id"], "{n}");
        assert_eq!(ev.data["n"], json!(n));
    }
    assert_eq!(json_of(&answers[5].1)["status"], "ok");
}

#[tokio::test]
async fn a_body_that_comes_after_its_head_is_waited_for() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    let request = post("/api/channels/channel:slow/events", "", r#"{"type":"t"}"#);
    let (head, body) = request.split_at(request.find("\r\n\r\n").unwrap_or_default() + 4);
    raw.send(head.as_bytes()).await;
    raw.send(&body.as_bytes()[..3]).await;
    raw.send(&body.as_bytes()[3..]).await;
    let (head, body) = raw.responses(1).await.remove(0);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(json_of(&body)["id"].is_string());
}

#[tokio::test]
async fn a_refused_publish_keeps_the_connection_for_the_next_one() {
    let server = TestServer::secured(|_| {}).await;
    let mut raw = Raw::connect(server.addr).await;
    let ev = r#"{"type":"t"}"#;
    raw.send(post("/api/channels/channel:r/events", "", ev).as_bytes()).await;
    raw.send(post("/api/channels/channel:r/events", &key(), "{oops").as_bytes()).await;
    raw.send(post("/api/channels/channel:r/events", &key(), ev).as_bytes()).await;
    let answers = raw.responses(3).await;
    let codes: Vec<_> = answers.iter().map(|(_, b)| json_of(b)["error"]["code"].clone()).collect();
    assert_eq!(codes, [json!("unauthorized"), json!("invalid_json"), serde_json::Value::Null], "{answers:?}");
    assert!(answers[0].0.starts_with("HTTP/1.1 401 ") && answers[1].0.starts_with("HTTP/1.1 400 "));
    assert!(json_of(&answers[2].1)["id"].is_string());
}

#[tokio::test]
async fn a_wrong_key_after_a_right_one_on_the_same_connection_is_refused_and_the_right_one_still_taken() {
    let server = TestServer::secured(|_| {}).await;
    let mut raw = Raw::connect(server.addr).await;
    let ev = r#"{"type":"t"}"#;
    let wrong = format!("x-api-key: {}x\r\n", API_KEY);
    let near = format!("x-api-key: {}\r\n", &API_KEY[..API_KEY.len() - 1]);
    for extra in [key(), wrong, near, key()] {
        raw.send(post("/api/channels/channel:k/events", &extra, ev).as_bytes()).await;
    }
    let answers = raw.responses(4).await;
    let codes: Vec<_> = answers.iter().map(|(_, b)| json_of(b)["error"]["code"].clone()).collect();
    let refused = json!("invalid_api_key");
    assert_eq!(codes, [serde_json::Value::Null, refused.clone(), refused, serde_json::Value::Null], "{answers:?}");
    assert!(json_of(&answers[0].1)["id"].is_string() && json_of(&answers[3].1)["id"].is_string());
}

#[tokio::test]
async fn an_oversized_body_after_lean_publishes_is_refused_with_413() {
    let server = TestServer::with(|c| {
        c.max_payload_bytes = 64;
        c.max_body_bytes = 128;
    })
    .await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(post("/api/channels/channel:big/events", "", r#"{"type":"t"}"#).as_bytes()).await;
    let (head, _) = raw.responses(1).await.remove(0);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    raw.seen.clear();
    let big = format!(r#"{{"type":"t","pad":"{}"}}"#, "p".repeat(200));
    raw.send(post("/api/channels/channel:big/events", "", &big).as_bytes()).await;
    let (head, body) = raw.responses(1).await.remove(0);
    assert!(head.starts_with("HTTP/1.1 413 Payload Too Large\r\n"), "{head}");
    assert_eq!(json_of(&body)["error"]["code"], "body_too_large");
}

#[tokio::test]
async fn a_chunked_publish_after_a_lean_one_is_served_on_the_same_connection() {
    let server = TestServer::start().await;
    let mut stream = server.client(Proto::H1).subscribe("channel=channel:ch", &[]).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(post("/api/channels/channel:ch/events", "", r#"{"type":"t","n":0}"#).as_bytes()).await;
    let body = r#"{"type":"t","n":1}"#;
    let chunked = format!(
        "POST /api/channels/channel:ch/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:X}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    raw.send(chunked.as_bytes()).await;
    let answers = raw.responses(2).await;
    for (n, (head, body)) in answers.iter().enumerate() {
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{n}: {head}");
        let ev = stream.expect().await;
        assert_eq!((&ev.data["id"], &ev.data["n"]), (&json_of(body)["id"], &json!(n)));
    }
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_the_connection_closes() {
    let server = TestServer::with(|c| c.body_read_timeout = std::time::Duration::from_millis(200)).await;
    let mut raw = Raw::connect(server.addr).await;
    let request = post("/api/channels/channel:late/events", "", r#"{"type":"t"}"#);
    raw.send(&request.as_bytes()[..request.len() - 2]).await;
    raw.read_to_end().await;
    assert!(raw.text().starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{}", raw.text());
    assert!(raw.head().contains("connection: close"), "{}", raw.head());
    assert_eq!(json_of(body_of(&raw.seen))["error"]["code"], "body_timeout");
}

#[tokio::test]
async fn a_publish_connection_in_use_outlives_its_first_deadline_and_is_closed_once_idle_past_it() {
    let deadline = std::time::Duration::from_millis(400);
    let server = TestServer::with(|c| c.header_read_timeout = deadline).await;
    let mut raw = Raw::connect(server.addr).await;
    // Publishes 150 ms apart for twice the deadline: each is due within the deadline that
    // follows the answer before it, so the connection stays open past its first deadline.
    let started = std::time::Instant::now();
    let mut n = 0;
    let mut last = started;
    while started.elapsed() < deadline * 2 {
        raw.send(post("/api/channels/channel:kept/events", "", r#"{"type":"t"}"#).as_bytes()).await;
        n += 1;
        let answers = raw.responses(n).await;
        assert!(answers[n - 1].0.starts_with("HTTP/1.1 200 OK\r\n"), "publish {n}: {}", answers[n - 1].0);
        last = std::time::Instant::now();
        tokio::time::sleep(deadline * 3 / 8).await;
    }
    assert!(n >= 5, "only {n} publishes in twice the deadline");
    // Then idle: closed once the deadline after the last answer has passed, and not before.
    raw.read_to_end().await;
    let idle = last.elapsed();
    assert!(idle >= deadline * 3 / 4, "closed {idle:?} after the last answer, before its deadline of {deadline:?}");
}

#[tokio::test]
async fn an_idle_publish_connection_is_closed_on_shutdown() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(post("/api/channels/channel:bye/events", "", r#"{"type":"t"}"#).as_bytes()).await;
    raw.responses(1).await;
    let stopping = tokio::spawn(server.stop());
    raw.read_to_end().await;
    stopping.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_publish_connection_idle_after_several_requests_is_closed_on_shutdown_at_once() {
    // The connection waits for the shutdown through one wait kept across its requests: after
    // several requests and waits it must still be woken by the shutdown, not left to the
    // drain timeout (10 s).
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    for n in 1..=3 {
        raw.send(post("/api/channels/channel:bye/events", "", r#"{"type":"t"}"#).as_bytes()).await;
        // Answered: the connection then waits for its next request, and for the shutdown.
        raw.responses(n).await;
    }
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop());
    raw.read_to_end().await;
    let closed = started.elapsed();
    stopping.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
    assert!(closed < std::time::Duration::from_secs(5), "closed {closed:?} after the shutdown began");
}

#[tokio::test]
async fn publishes_the_lean_path_leaves_to_hyper_are_still_answered() {
    let server = TestServer::start().await;
    let ev = r#"{"type":"t"}"#;
    // `Expect: 100-continue`: hyper says continue, then answers.
    let mut raw = Raw::connect(server.addr).await;
    let request = post("/api/channels/channel:h/events", "Expect: 100-continue\r\n", ev);
    raw.send(&request.as_bytes()[..request.len() - ev.len()]).await;
    assert!(raw.read_until(b"HTTP/1.1 100 Continue\r\n\r\n").await, "{}", raw.text());
    raw.seen.clear();
    raw.send(ev.as_bytes()).await;
    let (head, body) = raw.responses(1).await.remove(0);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(json_of(&body)["id"].is_string());
    // No length: an empty body, which is not JSON.
    let mut raw = Raw::connect(server.addr).await;
    raw.send(b"POST /api/channels/channel:h/events HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, body) = raw.responses(1).await.remove(0);
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert_eq!(json_of(&body)["error"]["code"], "invalid_json");
    // HTTP/1.0, and a channel with an escape, which axum decodes.
    let mut raw = Raw::connect(server.addr).await;
    let request = post("/api/channels/channel%3Ah/events", "", ev).replacen("HTTP/1.1", "HTTP/1.0", 1);
    raw.send(request.as_bytes()).await;
    raw.read_to_end().await;
    assert!(raw.text().starts_with("HTTP/1.0 200 OK\r\n"), "{}", raw.text());
    assert!(json_of(body_of(&raw.seen))["id"].is_string());
}

// --- Pipelined publishes served together -------------------------------------------------

/// A Redis, a node `a` to publish on, and a stream on node `b` following `channel`.
async fn two_nodes(channel: &str) -> (RedisServer, TestServer, TestServer, support::SseStream) {
    let redis = RedisServer::start().await;
    let (a, b) = (redis_node(&redis).await, redis_node(&redis).await);
    let stream = b.client(Proto::H1).user("1").subscribe(&format!("channel={channel}"), &[]).await;
    (redis, a, b, stream)
}

/// Expects the next events on `stream` to be these `(n, id)`, then, after one more publish
/// (`n` = `next`) on `a`, that one: nothing was delivered twice.
async fn expect_once_in_order(
    stream: &mut support::SseStream,
    a: &TestServer,
    channel: &str,
    events: &[(u64, String)],
) {
    for (n, id) in events {
        let ev = stream.expect().await;
        assert_eq!((ev.data["id"].as_str(), ev.data["n"].as_u64()), (Some(id.as_str()), Some(*n)), "{:?}", ev.data);
    }
    let next = events.last().map_or(0, |(n, _)| n + 1);
    a.client(Proto::H1).backend().publish(&json!({"channel": channel, "type": "t", "n": next})).await;
    stream.expect_ns(next..next + 1).await;
}

/// Publishes `n` = 0, 1, ... `count - 1` to `channel`, pipelined on one new connection to
/// `addr`; each answer's `(n, id)`.
async fn publish_pipelined(addr: SocketAddr, channel: &str, count: u64) -> Vec<(u64, String)> {
    let path = format!("/api/channels/{channel}/events");
    let all: String = (0..count).map(|n| post(&path, &key(), &format!(r#"{{"type":"t","n":{n}}}"#))).collect();
    let mut raw = Raw::connect(addr).await;
    raw.send(all.as_bytes()).await;
    let answers = raw.responses(count as usize).await;
    answers.iter().enumerate().map(|(n, a)| (n as u64, id_of(&format!("{n}"), a))).collect()
}

/// The `id` of a 200 answer, or of the first event of a batch's.
fn id_of(what: &str, (head, body): &(String, Vec<u8>)) -> String {
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{what}: {head}");
    let json = json_of(body);
    json["id"]
        .as_str()
        .or_else(|| json["ids"][0].as_str())
        .unwrap_or_else(|| panic!("{what}: no id in {json}"))
        .to_owned()
}

#[tokio::test]
async fn pipelined_publishes_over_redis_go_to_redis_together_and_each_is_answered_and_delivered_once_in_order() {
    let (redis, a, _b, mut on_b) = two_nodes("channel:together").await;
    let (scripts, messages) = (redis.calls("evalsha"), redis.calls("publish"));
    let mut all = String::new();
    for n in 0..6 {
        all += &post("/api/channels/channel:together/events", &key(), &format!(r#"{{"type":"t","n":{n}}}"#));
    }
    all += &post("/api/publish", &key(), r#"{"channel":"channel:together","type":"t","n":6}"#);
    all += &post("/api/publish", &key(), r#"[{"channel":"channel:together","type":"t","n":7}]"#);
    let mut raw = Raw::connect(a.addr).await;
    raw.send(all.as_bytes()).await;
    let answers = raw.responses(8).await;
    let accepted: Vec<_> = answers.iter().enumerate().map(|(n, a)| (n as u64, id_of(&format!("{n}"), a))).collect();
    expect_once_in_order(&mut on_b, &a, "channel:together", &accepted).await;
    // Nine events: the eight, then the one `expect_once_in_order` publishes alone.
    let (scripts, messages) = (redis.calls("evalsha") - scripts, redis.calls("publish") - messages);
    assert!((1..9).contains(&scripts), "nine single-event requests ran {scripts} publish scripts (one each: 9)");
    // Without `redis_batch_messages` (the default), one single message per event.
    assert_eq!(messages, 9, "nine events went in {messages} pub/sub messages");
}

#[tokio::test]
async fn a_refused_request_among_pipelined_ones_gets_its_own_answer_and_the_others_are_delivered() {
    let (_redis, a, _b, mut on_b) = two_nodes("channel:mixed").await;
    let ev = |n: u64| format!(r#"{{"type":"t","n":{n}}}"#);
    let path = "/api/channels/channel:mixed/events";
    let all = [
        post(path, &key(), &ev(0)),
        post(path, &key(), "{\"type\":"),
        post(path, &key(), &ev(1)),
        post(path, "", &ev(98)),
        post("/api/publish", &key(), r#"{"channel":"channel:mixed","type":"t","n":2,"channels":["x"]}"#),
        post(path, &key(), &ev(3)),
    ]
    .concat();
    let mut raw = Raw::connect(a.addr).await;
    raw.send(all.as_bytes()).await;
    let answers = raw.responses(6).await;
    let statuses: Vec<_> = answers.iter().map(|(h, _)| h.split(' ').nth(1).unwrap_or_default().to_owned()).collect();
    assert_eq!(statuses, ["200", "400", "200", "401", "400", "200"], "{answers:?}");
    let codes: Vec<_> = answers.iter().map(|(_, b)| json_of(b)["error"]["code"].clone()).collect();
    assert_eq!((&codes[1], &codes[3]), (&json!("invalid_json"), &json!("unauthorized")));
    let accepted: Vec<_> = [(0, 0), (1, 2), (3, 5)].map(|(n, at)| (n, id_of("accepted", &answers[at]))).into();
    expect_once_in_order(&mut on_b, &a, "channel:mixed", &accepted).await;
}

#[tokio::test]
async fn a_pipelined_publish_with_an_idempotency_key_keeps_its_place_and_its_retry_answers_the_same_id() {
    let (_redis, a, _b, mut on_b) = two_nodes("channel:keyed").await;
    let path = "/api/channels/channel:keyed/events";
    let keyed = format!("{}Idempotency-Key: order-1\r\n", key());
    let all = [
        post(path, &key(), r#"{"type":"t","n":0}"#),
        post(path, &keyed, r#"{"type":"t","n":1}"#),
        post(path, &key(), r#"{"type":"t","n":2}"#),
        post(path, &keyed, r#"{"type":"t","n":1}"#),
        post(path, &key(), r#"{"type":"t","n":3}"#),
    ]
    .concat();
    let mut raw = Raw::connect(a.addr).await;
    raw.send(all.as_bytes()).await;
    let answers = raw.responses(5).await;
    let ids: Vec<_> = answers.iter().enumerate().map(|(i, a)| id_of(&format!("{i}"), a)).collect();
    assert_eq!(ids[1], ids[3], "the retry answers the first publish's id");
    let accepted: Vec<_> = [(0, 0), (1, 1), (2, 2), (3, 4)].map(|(n, at)| (n, ids[at].clone())).into();
    expect_once_in_order(&mut on_b, &a, "channel:keyed", &accepted).await;
}

#[tokio::test]
async fn when_redis_dies_under_pipelined_publishes_each_is_answered_503_and_none_is_delivered() {
    let (mut redis, a, b, mut on_b) = two_nodes("channel:crash").await;
    expect_once_in_order(&mut on_b, &a, "channel:crash", &[]).await;

    // Frozen, Redis reads nothing more; killed, it never runs what was sent to it.
    redis.signal("STOP");
    let all: String = (90..96)
        .map(|n| post("/api/channels/channel:crash/events", &key(), &format!(r#"{{"type":"t","n":{n}}}"#)))
        .collect();
    let mut raw = Raw::connect(a.addr).await;
    raw.send(all.as_bytes()).await;
    redis.kill();
    for (head, body) in raw.responses(6).await {
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert_eq!(json_of(&body)["error"]["code"], "engine_unavailable");
    }

    redis.restart().await;
    eventually("both nodes to reconnect", || a.herald.is_ready() && b.herald.is_ready()).await;
    // The next event is the next publish: none of the refused ones was half delivered.
    a.client(Proto::H1).backend().publish(&json!({"channel": "channel:crash", "type": "t", "n": 1})).await;
    on_b.expect_ns(1..2).await;
}

#[tokio::test]
async fn on_a_redis_cluster_pipelined_publishes_are_each_answered_and_delivered_once_in_order() {
    let cluster = support::RedisCluster::start().await;
    let (a, b) = (cluster_node(&cluster).await, cluster_node(&cluster).await);
    let mut on_b = b.client(Proto::H1).user("1").subscribe("channel=channel:sharded", &[]).await;
    let accepted = publish_pipelined(a.addr, "channel:sharded", 6).await;
    expect_once_in_order(&mut on_b, &a, "channel:sharded", &accepted).await;
}

#[tokio::test]
async fn with_a_publish_hook_set_pipelined_publishes_go_to_redis_one_at_a_time_and_in_order() {
    let redis = RedisServer::start().await;
    // Never called: a publish with an API key is the backend's own and is not asked about.
    let never = |c: &mut herald::Config| c.hooks.publish_url = Some("http://127.0.0.1:9/never-asked".into());
    let a = support::redis_node_with(&redis, never).await;
    let mut stream = a.client(Proto::H1).user("1").subscribe("channel=channel:hooked", &[]).await;
    let accepted = publish_pipelined(a.addr, "channel:hooked", 6).await;
    expect_once_in_order(&mut stream, &a, "channel:hooked", &accepted).await;
    // Seven events: the six, then the one `expect_once_in_order` publishes.
    assert_eq!(redis.calls("publish"), 7, "a hook's call would hold the requests before it: none is merged");
}

#[tokio::test]
async fn a_pipelined_request_whose_target_http_refuses_is_left_to_hyper_in_its_place() {
    // httparse takes `<` in a query, the `http` crate's `Uri` does not: such a request goes
    // to hyper, which refuses it. First in a pipeline, then after a good one.
    let server = TestServer::secured(support::no_presence).await;
    let mut stream = server.client(Proto::H1).user("u").subscribe("channel=channel:lt", &[]).await;
    let ev = |n: u64| format!(r#"{{"channel":"channel:lt","type":"t","n":{n}}}"#);
    let mut first = Raw::connect(server.addr).await;
    first.send((post("/api/publish?a<b", &key(), &ev(98)) + &post("/api/publish", &key(), &ev(99))).as_bytes()).await;
    first.read_to_end().await;
    assert!(first.text().starts_with("HTTP/1.1 400 Bad Request\r\n"), "{}", first.text());
    let mut second = Raw::connect(server.addr).await;
    second.send((post("/api/publish", &key(), &ev(0)) + &post("/api/publish?a<b", &key(), &ev(97))).as_bytes()).await;
    second.read_to_end().await;
    let text = second.text();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    // Only the good request was published.
    server.client(Proto::H1).backend().publish(&json!({"channel": "channel:lt", "type": "t", "n": 1})).await;
    stream.expect_ns(0..2).await;
}

/// A publish whose head frames its body two ways is not the lean path's to read (request
/// smuggling): two different `Content-Length`s are refused (400, the connection closed, nothing
/// published), though the second would frame a publish with a second request behind it; a
/// `Content-Length` beside `Transfer-Encoding: chunked` is read as chunked (RFC 9112, 6.3).
#[tokio::test]
async fn a_publish_whose_head_frames_its_body_two_ways_is_never_framed_by_the_lean_path() {
    let server = TestServer::start().await;
    let mut stream = server.client(Proto::H1).subscribe("channel=channel:frame", &[]).await;
    let path = "/api/channels/channel:frame/events";
    let first = r#"{"type":"t","n":9}"#;
    let body = format!("{first}{}", post(path, "", r#"{"type":"t","n":8}"#));
    let lengths = format!("content-length: {}\r\ncontent-length: {}\r\n", body.len(), first.len());
    let mut raw = Raw::connect(server.addr).await;
    raw.send(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n{lengths}\r\n{body}").as_bytes(),
    )
    .await;
    raw.read_to_end().await;
    assert!(raw.text().starts_with("HTTP/1.1 400 Bad Request\r\n"), "{}", raw.text());
    assert_eq!(raw.text().matches("HTTP/1.1 ").count(), 1, "one answer: {}", raw.text());

    let chunk = r#"{"type":"t","n":1}"#;
    let mut raw = Raw::connect(server.addr).await;
    let framed =
        format!("content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n{:X}\r\n{chunk}\r\n0\r\n\r\n", chunk.len());
    raw.send(format!("POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n{framed}").as_bytes()).await;
    raw.read_to_end().await;
    let answers = responses(&raw.seen);
    assert_eq!(answers.len(), 1, "{}", raw.text());
    assert!(answers[0].0.starts_with("HTTP/1.1 200 OK\r\n"), "{}", raw.text());
    // What reached the channel: the chunked body, then the next publish; nothing of the first.
    stream.expect_ns(1..2).await;
    server.client(Proto::H1).publish(&json!({"channel": "channel:frame", "type": "t", "n": 2})).await;
    stream.expect_ns(2..3).await;
}

/// `Connection: close` is a token in any case (RFC 9110, 7.6.1): the answer says so, and the
/// connection closes after it.
#[tokio::test]
async fn a_publish_that_says_connection_close_in_capitals_is_answered_then_its_connection_closed() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(post("/api/channels/channel:bye/events", "Connection: CLOSE\r\n", r#"{"type":"t"}"#).as_bytes()).await;
    raw.read_to_end().await;
    let answers = responses(&raw.seen);
    assert_eq!(answers.len(), 1, "{}", raw.text());
    assert!(answers[0].0.starts_with("HTTP/1.1 200 OK\r\n"), "{}", raw.text());
    assert!(answers[0].0.contains("\r\nconnection: close\r\n"), "{}", answers[0].0);
}
