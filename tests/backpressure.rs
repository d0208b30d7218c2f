//! Backpressure: a subscriber that stops reading never blocks publishing or other
//! subscribers, never holds more than its queue, and is disconnected (to resume from history).

mod support;

use std::sync::atomic::Ordering;

use serde_json::json;
use support::{Proto, TestServer, within};
use tokio::io::AsyncReadExt;

const EVENT_BYTES: usize = 32 * 1024;
const MAX_EVENTS: u64 = 2000;

#[tokio::test]
async fn a_stalled_http1_reader_is_disconnected_while_a_healthy_one_gets_everything() {
    let server = TestServer::with(|c| c.buffer_size = 8).await;

    let mut stalled = support::stalled_subscriber(server.addr, "channel=channel:flood").await;

    let mut client = server.client(Proto::H1);
    let mut healthy = server.client(Proto::H1).subscribe("channel=channel:flood", &[]).await;
    let payload = "x".repeat(EVENT_BYTES);
    let hub = server.herald.hub().clone();
    let mut published = 0;
    // Lockstep with the healthy reader: it never lags, so only the stalled one can overflow.
    while hub.stats.slow_disconnects.load(Ordering::Relaxed) == 0 {
        assert!(published < MAX_EVENTS, "the stalled reader was never disconnected");
        client.publish(&json!({"channel": "channel:flood", "type": "update", "n": published, "pad": payload})).await;
        let ev = healthy.expect().await;
        assert_eq!(ev.data["n"].as_u64(), Some(published));
        published += 1;
    }
    assert_eq!(server.herald.connection_count(), 1, "only the healthy reader is left");
    // Publishing goes on, and the healthy reader still gets every event.
    for n in published..published + 5 {
        client.publish(&json!({"channel": "channel:flood", "type": "update", "n": n})).await;
        assert_eq!(healthy.expect().await.data["n"].as_u64(), Some(n));
    }
    // The stalled socket was closed by the server: reading what is buffered ends in EOF.
    within("the stalled socket to be closed", async {
        let mut sink = vec![0u8; 64 * 1024];
        while stalled.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

#[tokio::test]
async fn a_stalled_http2_stream_leaves_the_hub_without_disturbing_its_connection_siblings() {
    let server = TestServer::with(|c| c.buffer_size = 8).await;
    let mut client = server.client(Proto::H2c);
    // Two streams on one HTTP/2 connection; the first is never read.
    let _stalled = client.open_events("channel=channel:h2flood", &[]).await;
    let mut healthy = client.subscribe("channel=channel:h2flood", &[]).await;
    assert_eq!(server.herald.connection_count(), 2);
    let payload = "y".repeat(EVENT_BYTES);
    let hub = server.herald.hub().clone();
    let mut n = 0;
    while hub.stats.slow_disconnects.load(Ordering::Relaxed) == 0 {
        assert!(n < MAX_EVENTS, "the stalled stream was never disconnected");
        client.publish(&json!({"channel": "channel:h2flood", "type": "update", "n": n, "pad": payload})).await;
        assert_eq!(healthy.expect().await.data["n"].as_u64(), Some(n));
        n += 1;
    }
    assert_eq!(server.herald.connection_count(), 1);
    client.publish(&json!({"channel": "channel:h2flood", "type": "update", "n": n})).await;
    assert_eq!(healthy.expect().await.data["n"].as_u64(), Some(n), "the sibling stream goes on");
}

/// The kernel's send buffer (`tb`) and the bytes queued in it (`w`) on the server's side of
/// the connection from `client_port`, as `ss -tmn` reports them.
fn server_socket_memory(server_port: u16, client_port: u16) -> Option<(u64, u64)> {
    let filter = format!("( sport = :{server_port} and dport = :{client_port} )");
    let out = std::process::Command::new("ss")
        .args(["-tmnH", "state", "established", &filter])
        .output()
        .unwrap_or_else(|e| panic!("this test reads socket memory with `ss` (iproute2): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let skmem = text.split("skmem:(").nth(1)?.split(')').next()?;
    let field = |name: &str| skmem.split(',').find_map(|f| f.strip_prefix(name)?.parse::<u64>().ok());
    Some((field("tb")?, field("w")?))
}

#[tokio::test]
async fn a_stalled_reader_holds_no_more_kernel_send_buffer_than_configured_before_it_is_cut() {
    const SEND_BUFFER: u32 = 32 * 1024;
    let server = TestServer::with(|c| {
        c.buffer_size = 8;
        c.socket_send_buffer = SEND_BUFFER;
    })
    .await;
    let stalled = support::stalled_subscriber(server.addr, "channel=channel:flood").await;
    let client_port = stalled.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let mut client = server.client(Proto::H1);
    let payload = "x".repeat(EVENT_BYTES);
    let hub = server.herald.hub().clone();
    let (mut buffer, mut most_queued, mut published) = (0, 0, 0);
    while hub.stats.slow_disconnects.load(Ordering::Relaxed) == 0 {
        assert!(published < MAX_EVENTS, "the stalled reader was never disconnected");
        client.publish(&json!({"channel": "channel:flood", "type": "update", "n": published, "pad": payload})).await;
        if let Some((tb, w)) = server_socket_memory(server.addr.port(), client_port) {
            buffer = buffer.max(tb);
            most_queued = most_queued.max(w);
        }
        published += 1;
    }
    assert!(buffer > 0, "ss never showed the server's side of the stalled connection");
    // Linux doubles SO_SNDBUF for its bookkeeping; left to autotuning it grows to megabytes.
    let bound = 2 * u64::from(SEND_BUFFER);
    assert!(buffer <= bound, "the send buffer grew to {buffer} bytes, over {bound}");
    // A write may overshoot the buffer by the one segment that crossed it.
    assert!(most_queued <= bound + 64 * 1024, "{most_queued} bytes queued in the kernel");
}

/// Reads `stream` until `needle` has come; returns all that was read.
async fn read_until(stream: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let mut buf = [0u8; 1024];
        let n = within("the stalled client's bytes", stream.read(&mut buf)).await.unwrap_or(0);
        assert!(n > 0, "stream closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_stalled_http1_reader_of_an_emulated_centrifugo_session_is_disconnected_while_a_healthy_one_gets_everything()
{
    use tokio::io::AsyncWriteExt;
    let server = TestServer::with(|c| {
        c.buffer_size = 8;
        c.centrifugo = Some(herald::config::CentrifugoConfig { emulation: true, ..Default::default() });
    })
    .await;
    // The SDK's http_stream, read through a small receive buffer, then not at all.
    let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    socket.set_recv_buffer_size(4096).unwrap_or_else(|e| panic!("{e}"));
    let mut stalled = within("connect", socket.connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    let connect = r#"{"id":1,"connect":{}}"#;
    let request = format!(
        "POST /connection/http_stream HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{connect}",
        connect.len()
    );
    stalled.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
    let head = read_until(&mut stalled, "\"session\"").await;
    let reply: serde_json::Value = head
        .lines()
        .find_map(|l| serde_json::from_str(l.trim_start_matches(|c: char| c.is_ascii_hexdigit()).trim()).ok())
        .unwrap_or_else(|| panic!("no connect reply in {head}"));
    let (session, node) = (reply["connect"]["session"].clone(), reply["connect"]["node"].clone());
    let mut client = server.client(Proto::H1);
    let subscribe = json!({"session": session, "node": node, "data": r#"{"id":2,"subscribe":{"channel":"flood"}}"#});
    assert_eq!(client.post_json("/emulation", &subscribe).await.0, hyper::StatusCode::OK);
    read_until(&mut stalled, "\"id\":2").await;

    let mut healthy = server.client(Proto::H1).subscribe("channel=channel:flood", &[]).await;
    let payload = "x".repeat(EVENT_BYTES);
    let hub = server.herald.hub().clone();
    let mut published = 0;
    while hub.stats.slow_disconnects.load(Ordering::Relaxed) == 0 {
        assert!(published < MAX_EVENTS, "the stalled session was never disconnected");
        client.publish(&json!({"channel": "channel:flood", "type": "update", "n": published, "pad": payload})).await;
        assert_eq!(healthy.expect().await.data["n"].as_u64(), Some(published));
        published += 1;
    }
    assert_eq!(server.herald.connection_count(), 1, "only the healthy reader is left");
    // The stalled socket was closed by the server, and its session with it.
    within("the stalled socket to be closed", async {
        let mut sink = vec![0u8; 64 * 1024];
        while stalled.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    let gone = json!({"session": session, "node": node, "data": "{}"});
    assert_eq!(client.post_json("/emulation", &gone).await.0, hyper::StatusCode::NOT_FOUND);
}
