//! Graceful shutdown: open streams are told to come back after a jittered delay and end;
//! new streams are refused while draining; the server returns within the drain timeout.

mod support;

use std::time::Duration;

use support::{Proto, RawStream, TestServer};

fn retry_of(text: &str) -> Option<u64> {
    text.lines().filter_map(|l| l.strip_prefix("retry: ")).next_back().and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn shutdown_tells_every_stream_to_reconnect_with_a_jittered_delay_and_ends_it() {
    let server = TestServer::with(|c| {
        c.retry = Duration::from_millis(1000);
        c.drain_reconnect_window = Duration::from_secs(10);
    })
    .await;
    let mut raws = Vec::new();
    for proto in [Proto::H1, Proto::H1, Proto::H2c, Proto::H2c] {
        let resp = server.client(proto).open_events("channel=channel:drain", &[]).await;
        let mut raw = RawStream::new(resp);
        assert!(raw.read_until(b"\"connected\"").await);
        raws.push(raw);
    }
    let stopping = tokio::spawn(server.stop());
    let mut delays = Vec::new();
    for raw in &mut raws {
        raw.read_to_end().await;
        let after_connected = raw.text().split("\"connected\"").nth(1).unwrap_or_default().to_owned();
        let delay = retry_of(&after_connected).unwrap_or_else(|| panic!("no retry: before the end: {}", raw.text()));
        assert!((1000..11_000).contains(&delay), "delay {delay} within retry + window");
        delays.push(delay);
    }
    stopping.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
    delays.dedup();
    assert!(delays.len() > 1, "reconnect delays are spread, not all equal: {delays:?}");
}

#[tokio::test]
async fn a_draining_node_is_not_ready_and_refuses_new_streams() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    assert_eq!(client.get_json("/readyz").await.0, 200);
    server.herald.drain();
    let (status, body) = client.get_json("/readyz").await;
    assert_eq!((status.as_u16(), body["reason"].as_str()), (503, Some("draining")));
    let resp = client.open_events("channel=channel:late", &[]).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let (_, err) = support::read_json(resp).await;
    assert_eq!(err["error"]["code"], "server_draining");
}
