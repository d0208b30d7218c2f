//! The lean HTTP/1.1 path: event-stream requests on plain TCP are served without hyper, and
//! must look exactly as if hyper had served them. Each test speaks raw HTTP over a real
//! socket, so that framing, heads and connection handling are seen byte for byte.
//!
//! A request head bigger than the lean path's buffer (8 KB) is left to hyper: padding a
//! request with a large header is how these tests get hyper's answer to compare with.

mod support;

use std::net::SocketAddr;

use serde_json::json;
use support::{Proto, TestServer, eventually, within};
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

#[tokio::test]
async fn a_stream_head_is_byte_for_byte_the_head_hyper_writes() {
    let server = TestServer::start().await;
    let mut open = Vec::new();
    for extra in ["", "Connection: close\r\n"] {
        let mut lean = Raw::connect(server.addr).await;
        lean.send(format!("{STREAM}{extra}\r\n").as_bytes()).await;
        let mut hyper = Raw::connect(server.addr).await;
        hyper.send(format!("{STREAM}{extra}{}\r\n", padding()).as_bytes()).await;
        assert!(lean.read_until(b"\"connected\"").await && hyper.read_until(b"\"connected\"").await);
        assert_eq!(lean.head(), hyper.head(), "with {extra:?}");
        assert!(lean.head().contains("transfer-encoding: chunked"), "{}", lean.head());
        assert_eq!(lean.head().contains("connection: close"), !extra.is_empty(), "{}", lean.head());
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
