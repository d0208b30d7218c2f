//! Slow consumers under `slow_consumer = "drop_oldest"`: a client that stops reading keeps its
//! stream, the oldest queued events make room, and when it reads again it is told exactly
//! which events it missed (a `gap` naming the channel and the first and last missing ids),
//! over SSE (HTTP/1.1 and HTTP/2) and the WebSocket alike. Each test floods a channel in
//! lockstep with a healthy reader, whose ids say what every event's id is, while another
//! client of the same channel reads nothing.

mod support;

use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use herald::Config;
use herald::config::{NamespaceConfig, SlowConsumer};
use hyper::StatusCode;
use serde_json::{Value, json};
use support::{Proto, SseStream, TestServer, within};
use tokio_tungstenite::tungstenite::Message;

const CHANNEL: &str = "channel:flood";
const PAD_BYTES: usize = 32 * 1024;
/// Events dropped before the stalled client reads again.
const DROPS: u64 = 16;
const MAX_EVENTS: u64 = 2000;

/// Rooms drop their oldest events for slow readers; small queues; presence off.
fn drop_oldest(c: &mut Config) {
    c.buffer_size = 8;
    c.websocket = true;
    let ns =
        NamespaceConfig { presence: Some(false), slow_consumer: Some(SlowConsumer::DropOldest), ..Default::default() };
    c.namespaces.insert("channel".to_owned(), ns);
}

/// What the stalled client read once it read again.
#[derive(Debug)]
enum Got {
    Event(u64),
    /// A `gap` event and its resume id.
    Gap(Value, String),
}

/// Publishes padded events in lockstep with `healthy` until the hub has dropped [`DROPS`]
/// events of slow readers, then a few small ones; returns every event's SSE id, by `n`.
async fn flood(server: &TestServer, healthy: &mut SseStream) -> Vec<String> {
    let mut client = server.client(Proto::H1);
    let pad = "x".repeat(PAD_BYTES);
    let stats = &server.herald.hub().stats;
    let mut ids = Vec::new();
    let mut publish = async |n: u64, pad: &str, ids: &mut Vec<String>| {
        client.publish(&json!({"channel": CHANNEL, "type": "update", "n": n, "pad": pad})).await;
        let ev = healthy.expect().await;
        assert_eq!(ev.data["n"].as_u64(), Some(n), "the healthy reader gets every event: {:?}", ev.data);
        ids.push(ev.id);
    };
    while stats.slow_dropped.load(Ordering::Relaxed) < DROPS {
        let n = ids.len() as u64;
        assert!(n < MAX_EVENTS, "the stalled reader's queue never dropped an event");
        publish(n, &pad, &mut ids).await;
    }
    for _ in 0..4 {
        publish(ids.len() as u64, "", &mut ids).await;
    }
    ids
}

/// Checks that what the stalled client read accounts for every event exactly once: each
/// event either arrived, in order, or lies in a `gap` whose first and last ids are those of
/// the first and last missing events, whose count is right, and whose own id resumes after
/// it. Returns the events dropped and the gaps told.
fn accounts_for_every_event(got: &[Got], ids: &[String]) -> (u64, u64) {
    let (mut next, mut missed, mut gaps) = (0u64, 0u64, 0u64);
    for item in got {
        match item {
            Got::Event(n) => {
                assert_eq!(*n, next, "events come in order, none twice, none lost silently: {got:?}");
                next += 1;
            }
            Got::Gap(gap, id) => {
                assert_eq!((gap["channel"].as_str(), gap["reason"].as_str()), (Some(CHANNEL), Some("slow_consumer")));
                let count = gap["missed"].as_u64().unwrap_or_else(|| panic!("no count: {gap}"));
                assert!(count > 0, "{gap}");
                let last = next + count - 1;
                assert_eq!(gap["firstId"].as_str(), Some(ids[next as usize].as_str()), "first missing: {gap}");
                assert_eq!(gap["lastId"].as_str(), Some(ids[last as usize].as_str()), "last missing: {gap}");
                assert_eq!(id, &ids[last as usize], "a client resuming from the gap's id does not get them again");
                assert!(gap["timestamp"].is_string(), "{gap}");
                next = last + 1;
                missed += count;
                gaps += 1;
            }
        }
    }
    assert_eq!(next, ids.len() as u64, "the stalled client got as far as the last event");
    assert!(missed >= DROPS, "{missed} events missed, {DROPS} dropped: {got:?}");
    (missed, gaps)
}

/// The counters and the connections after the stalled client caught up.
async fn check_counters(server: &TestServer, missed: u64, gaps: u64) {
    let stats = &server.herald.hub().stats;
    assert_eq!(stats.slow_disconnects.load(Ordering::Relaxed), 0, "nobody was cut");
    assert_eq!(server.herald.connection_count(), 2, "both streams are still open");
    let mut client = server.client(Proto::H1);
    assert_eq!(client.metric("herald_slow_consumer_dropped_events_total").await, missed as f64);
    assert_eq!(client.metric("herald_slow_consumer_gaps_total").await, gaps as f64);
    assert_eq!(client.metric("herald_slow_consumer_disconnects_total").await, 0.0);
}

async fn an_sse_reader_that_stops_keeps_its_stream_and_learns_the_gap(proto: Proto) {
    let server = TestServer::with(drop_oldest).await;
    // Opened and never read until the flood is over.
    let stalled = server.client(proto).open_events(&format!("channel={CHANNEL}"), &[]).await;
    assert_eq!(stalled.status(), StatusCode::OK);
    let mut healthy = server.client(proto).subscribe(&format!("channel={CHANNEL}"), &[]).await;
    let ids = flood(&server, &mut healthy).await;

    let mut stalled = SseStream::new(stalled);
    assert_eq!(stalled.expect().await.data["type"], "connected");
    let mut got = Vec::new();
    while !matches!(got.last(), Some(Got::Event(n)) if *n + 1 == ids.len() as u64) {
        let ev = stalled.expect().await;
        match ev.data["type"].as_str() {
            Some("gap") => got.push(Got::Gap(ev.data, ev.id)),
            _ => got.push(Got::Event(ev.data["n"].as_u64().unwrap_or_else(|| panic!("{:?}", ev.data)))),
        }
    }
    let (missed, gaps) = accounts_for_every_event(&got, &ids);
    check_counters(&server, missed, gaps).await;
}

#[tokio::test]
async fn a_stalled_http1_reader_under_drop_oldest_keeps_its_stream_and_is_told_exactly_what_it_missed() {
    an_sse_reader_that_stops_keeps_its_stream_and_learns_the_gap(Proto::H1).await;
}

#[tokio::test]
async fn a_stalled_http2_stream_under_drop_oldest_keeps_its_stream_and_is_told_exactly_what_it_missed() {
    an_sse_reader_that_stops_keeps_its_stream_and_learns_the_gap(Proto::H2c).await;
}

#[tokio::test]
async fn a_websocket_that_stops_reading_under_drop_oldest_stays_open_and_is_told_exactly_what_it_missed() {
    let server = TestServer::with(drop_oldest).await;
    let url = format!("ws://{}/api/ws?channel={CHANNEL}", server.addr);
    let (mut ws, _) =
        within("the upgrade", tokio_tungstenite::connect_async(url)).await.unwrap_or_else(|e| panic!("websocket: {e}"));
    let mut next_event = async || loop {
        match within("the next WebSocket frame", ws.next()).await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_else(|e| panic!("{e}: {text}"));
                let id = frame["id"].as_str().unwrap_or_else(|| panic!("not an event: {text}")).to_owned();
                return (id, frame["data"].clone());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("socket ended: {other:?}"),
        }
    };
    assert_eq!(next_event().await.1["type"], "connected");
    // From here the socket is not read until the flood is over.
    let mut healthy = server.client(Proto::H1).subscribe(&format!("channel={CHANNEL}"), &[]).await;
    let ids = flood(&server, &mut healthy).await;

    let mut got = Vec::new();
    while !matches!(got.last(), Some(Got::Event(n)) if *n + 1 == ids.len() as u64) {
        let (id, data) = next_event().await;
        match data["type"].as_str() {
            Some("gap") => got.push(Got::Gap(data, id)),
            _ => got.push(Got::Event(data["n"].as_u64().unwrap_or_else(|| panic!("{data}")))),
        }
    }
    let (missed, gaps) = accounts_for_every_event(&got, &ids);
    check_counters(&server, missed, gaps).await;
}

#[tokio::test]
async fn a_stream_that_also_follows_a_disconnect_namespace_is_still_cut_when_it_falls_behind() {
    let server = TestServer::with(|c| {
        drop_oldest(c);
        c.namespaces.insert(
            "strict".to_owned(),
            NamespaceConfig { subscribe: Some(herald::config::Access::Anyone), ..Default::default() },
        );
    })
    .await;
    let _stalled = server.client(Proto::H2c).open_events(&format!("channel={CHANNEL}&channel=strict:x"), &[]).await;
    let mut healthy = server.client(Proto::H1).subscribe(&format!("channel={CHANNEL}"), &[]).await;
    let mut client = server.client(Proto::H1);
    let pad = "x".repeat(PAD_BYTES);
    let stats = &server.herald.hub().stats;
    let mut n = 0;
    while stats.slow_disconnects.load(Ordering::Relaxed) == 0 {
        assert!(n < MAX_EVENTS, "the stalled stream was never cut");
        client.publish(&json!({"channel": CHANNEL, "type": "update", "n": n, "pad": pad})).await;
        assert_eq!(healthy.expect().await.data["n"].as_u64(), Some(n));
        n += 1;
    }
    assert_eq!(stats.slow_dropped.load(Ordering::Relaxed), 0, "nothing was dropped: the stream was cut");
    assert_eq!(server.herald.connection_count(), 1);
}

#[test]
fn slow_consumer_is_read_from_a_namespace_of_the_configuration_file() {
    let config: Config = toml::from_str(
        r#"
        [namespaces.ticker]
        subscribe = "anyone"
        slow_consumer = "drop_oldest"
        [namespaces.orders]
        slow_consumer = "disconnect"
        "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.namespaces["ticker"].slow_consumer, Some(SlowConsumer::DropOldest));
    assert_eq!(config.namespaces["orders"].slow_consumer, Some(SlowConsumer::Disconnect));
    let wrong = toml::from_str::<Config>("[namespaces.ticker]\nslow_consumer = \"drop_newest\"\n");
    assert!(wrong.is_err(), "an unknown policy is refused at start");
}
