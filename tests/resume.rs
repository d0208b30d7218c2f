//! Resume: a client that reconnects with `Last-Event-ID` gets what it missed on every
//! channel, in order, exactly once, then live events; or it is told plainly to refetch.

mod support;

use std::collections::HashMap;

use serde_json::json;
use support::{Proto, TestServer};

#[tokio::test]
async fn reconnecting_with_last_event_id_replays_exactly_the_missed_events_then_goes_live() {
    let server = TestServer::start().await;
    for (proto, via_query) in [(Proto::H1, false), (Proto::H2c, true)] {
        let channel = format!("channel:resume-{via_query}");
        let mut client = server.client(proto);
        let mut stream = client.subscribe(&format!("channel={channel}"), &[]).await;
        client.publish_ns(&channel, 0..2).await;
        let last = stream.expect_ns(0..2).await;
        drop(stream);
        client.publish_ns(&channel, 2..5).await;
        let mut resumed = if via_query {
            client.subscribe(&format!("channel={channel}&lastEventId={last}"), &[]).await
        } else {
            client.subscribe(&format!("channel={channel}"), &[("last-event-id", &last)]).await
        };
        resumed.expect_ns(2..5).await;
        client.publish_ns(&channel, 5..6).await;
        resumed.expect_ns(5..6).await;
    }
}

#[tokio::test]
async fn resuming_while_events_keep_coming_loses_and_duplicates_nothing_on_any_channel() {
    const PER_CHANNEL: u64 = 150;
    let server = TestServer::start().await;
    let channels = ["channel:seam-a", "channel:seam-b", "system"];
    let query = channels.iter().map(|c| format!("channel={c}")).collect::<Vec<_>>().join("&");
    let mut sub = server.client(Proto::H2c);
    let mut stream = sub.subscribe(&query, &[]).await;

    let mut publisher = server.client(Proto::H2c);
    let publishing = tokio::spawn(async move {
        for n in 0..PER_CHANNEL {
            for ch in channels {
                publisher.publish(&json!({"channel": ch, "type": "update", "n": n})).await;
            }
        }
    });

    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    fn record(seen: &mut HashMap<String, Vec<u64>>, ev: &support::SseEvent) {
        let ch = ev.data["channel"].as_str().unwrap_or_default().to_owned();
        seen.entry(ch).or_default().push(ev.data["n"].as_u64().unwrap_or(u64::MAX));
    }
    // Reconnect three times in the middle of the flood.
    for cut in [20, 60, 100] {
        let mut last_id;
        loop {
            let ev = stream.expect().await;
            record(&mut seen, &ev);
            last_id = ev.id.clone();
            if ev.data["n"].as_u64() >= Some(cut) {
                break;
            }
        }
        drop(stream);
        stream = sub.subscribe(&query, &[("last-event-id", &last_id)]).await;
    }
    while seen.values().map(Vec::len).sum::<usize>() < channels.len() * PER_CHANNEL as usize {
        let ev = stream.expect().await;
        assert_ne!(ev.data["type"], "reset", "history must cover the seam");
        record(&mut seen, &ev);
    }
    publishing.await.unwrap_or_else(|e| panic!("publisher: {e}"));
    for ch in channels {
        let expected: Vec<u64> = (0..PER_CHANNEL).collect();
        assert_eq!(seen.get(ch), Some(&expected), "channel {ch}: every event once, in order");
    }
}

#[tokio::test]
async fn a_garbled_last_event_id_gets_a_reset_for_each_channel() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let mut stream = client.subscribe("channel=channel:a&channel=channel:b", &[("last-event-id", "not-an-id")]).await;
    for ch in ["channel:a", "channel:b"] {
        let ev = stream.expect().await;
        assert_eq!((ev.data["type"].as_str(), ev.data["channel"].as_str()), (Some("reset"), Some(ch)));
        assert_eq!(ev.data["reason"], "unknown_position");
    }
    client.publish_ns("channel:b", 0..1).await;
    stream.expect_ns(0..1).await;
}

#[tokio::test]
async fn a_resume_from_before_the_kept_history_is_a_reset_never_a_silent_gap() {
    let server = TestServer::with(|c| c.history_size = 2).await;
    let mut client = server.client(Proto::H1);
    let mut stream = client.subscribe("channel=channel:short", &[]).await;
    client.publish_ns("channel:short", 0..1).await;
    let last = stream.expect_ns(0..1).await;
    drop(stream);
    client.publish_ns("channel:short", 1..5).await; // history keeps only 3 and 4
    let mut resumed = client.subscribe("channel=channel:short", &[("last-event-id", &last)]).await;
    let reset = resumed.expect().await;
    assert_eq!((reset.data["type"].as_str(), reset.data["reason"].as_str()), (Some("reset"), Some("history_expired")));
    // After the reset the client is at the head: the next event is the next live one.
    client.publish_ns("channel:short", 5..6).await;
    resumed.expect_ns(5..6).await;
}

#[tokio::test]
async fn an_id_from_the_future_is_unknown_and_gets_a_reset() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let stream = client.subscribe("channel=channel:f", &[]).await;
    // Take the connection's own id and move its position far ahead.
    let id = stream.connected_id();
    let (tag, _) = id.split_once(':').unwrap_or_else(|| panic!("id {id}"));
    let future = format!("{tag}:zzzzzzzzz");
    let mut resumed = client.subscribe("channel=channel:f", &[("last-event-id", &future)]).await;
    let ev = resumed.expect().await;
    assert_eq!((ev.data["type"].as_str(), ev.data["reason"].as_str()), (Some("reset"), Some("unknown_position")));
}

#[tokio::test]
async fn a_channel_added_on_reconnect_starts_fresh_while_the_others_resume() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let mut stream = client.subscribe("channel=channel:old", &[]).await;
    client.publish_ns("channel:old", 0..1).await;
    let last = stream.expect_ns(0..1).await;
    drop(stream);
    client.publish_ns("channel:old", 1..3).await;
    client.publish_ns("channel:new", 100..101).await; // before the new subscription: not replayed
    let mut resumed = client.subscribe("channel=channel:new&channel=channel:old", &[("last-event-id", &last)]).await;
    resumed.expect_ns(1..3).await;
    client.publish_ns("channel:new", 101..102).await;
    let ev = resumed.expect().await;
    assert_eq!((ev.data["channel"].as_str(), ev.data["n"].as_u64()), (Some("channel:new"), Some(101)));
}

#[tokio::test]
async fn a_multi_channel_event_missed_on_two_channels_is_replayed_once() {
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let query = "channel=channel:x&channel=channel:y";
    let stream = client.subscribe(query, &[]).await;
    let last = stream.connected_id();
    drop(stream);
    client.publish(&json!({"channels": ["channel:x", "channel:y"], "type": "update", "n": 0})).await;
    client.publish(&json!({"channel": "channel:y", "type": "update", "n": 1})).await;
    let mut resumed = client.subscribe(query, &[("last-event-id", &last)]).await;
    resumed.expect_ns(0..2).await;
    // And its id covers both channels: resuming from it replays nothing more.
    let again_id = {
        client.publish(&json!({"channel": "channel:x", "type": "update", "n": 2})).await;
        resumed.expect().await.id
    };
    drop(resumed);
    client.publish(&json!({"channel": "channel:y", "type": "update", "n": 3})).await;
    let mut third = client.subscribe(query, &[("last-event-id", &again_id)]).await;
    third.expect_ns(3..4).await;
}

#[tokio::test]
async fn a_resume_of_two_channels_replays_each_channels_events_in_that_channels_order_once() {
    let server = TestServer::with(|c| c.history_size = 1000).await;
    let mut client = server.client(Proto::H1);
    let query = "channel=channel:a&channel=channel:b";
    let stream = client.subscribe(query, &[]).await;
    let last = stream.connected_id();
    drop(stream);
    let mut accepted = support::publish_mixed(&mut client, "channel:a", "channel:b", 1..=300).await;
    let mut resumed = client.subscribe(query, &[("last-event-id", &last)]).await;
    let mut delivered = Vec::new();
    let last = resumed.read_ids(&mut delivered, accepted.len()).await;
    // Live events after the replay: each once, none of the replayed ones again.
    accepted.extend(support::publish_mixed(&mut client, "channel:a", "channel:b", 301..=310).await);
    resumed.read_ids(&mut delivered, accepted.len()).await;
    support::assert_exactly_once_in_order("replay then live", &accepted, &delivered);
    // The replay's last id says where the stream was on both channels: resuming from it
    // gives exactly the live events.
    let mut again = client.subscribe(query, &[("last-event-id", &last)]).await;
    let mut live = Vec::new();
    again.read_ids(&mut live, 10).await;
    support::assert_exactly_once_in_order("resumed from the replay's last id", &accepted[300..], &live);
}

#[tokio::test]
async fn resuming_two_channels_while_publishing_goes_on_writes_every_event_once_in_each_channels_order() {
    const EVENTS: u64 = 900;
    let server = TestServer::with(|c| c.history_size = 1000).await;
    let (a, b) = ("channel:flow-a", "channel:flow-b");
    let query = format!("channel={a}&channel={b}");
    let mut sub = server.client(Proto::H2c);
    let mut stream = sub.subscribe(&query, &[]).await;
    let mut publisher = server.client(Proto::H2c);
    let (progress, mut published) = tokio::sync::watch::channel(0);
    let publishing = tokio::spawn(async move {
        let mut accepted = Vec::new();
        for n in (1..=EVENTS).step_by(10) {
            accepted.extend(support::publish_mixed(&mut publisher, a, b, n..=n + 9).await);
            progress.send_replace(n + 9);
        }
        accepted
    });
    let mut delivered = Vec::new();
    // Every 100 events, leave, let 50 more be published, and resume while more keep coming.
    for cut in (100..EVENTS as usize).step_by(100) {
        let last = stream.read_ids(&mut delivered, cut).await;
        drop(stream);
        let missed = (cut as u64 + 50).min(EVENTS);
        support::within("the publisher", published.wait_for(|&n| n >= missed)).await.unwrap_or_else(|e| panic!("{e}"));
        stream = sub.subscribe(&query, &[("last-event-id", &last)]).await;
    }
    let mut accepted = publishing.await.unwrap_or_else(|e| panic!("publisher: {e}"));
    support::read_to_the_end(&mut stream, &mut sub, (a, b), &mut accepted, &mut delivered).await;
    support::assert_exactly_once_in_order("resumes during a flood", &accepted, &delivered);
}

#[tokio::test]
async fn a_replay_of_several_pieces_comes_whole_in_order_with_resumable_ids_and_the_live_events_after_it() {
    // 40 events of 4 KB: 160 KB to replay, written about 64 KiB a poll as the client reads
    // (src/hub/connection/replay.rs), while an event published after the stream opened
    // waits in its queue.
    let server = TestServer::start().await;
    let pad = "p".repeat(4000);
    let cases = [
        (Proto::H1, "channel:long-1", "channel=channel:long-1"),
        (Proto::H2c, "channel:long-2", "channel=channel:long-2"),
        // Two channels: each event is written with the connection's own id.
        (Proto::H1, "channel:long-3", "channel=channel:long-3&channel=channel:long-3b"),
        (Proto::H2c, "channel:long-4", "channel=channel:long-4&channel=channel:long-4b"),
    ];
    for (proto, channel, query) in cases {
        let mut client = server.client(proto);
        let start = client.subscribe(query, &[]).await.connected_id();
        for n in 0..40 {
            client.publish(&json!({"channel": channel, "type": "note", "n": n, "pad": pad})).await;
        }
        let mut resumed = client.subscribe(query, &[("last-event-id", &start)]).await;
        client.publish(&json!({"channel": channel, "type": "note", "n": 40, "pad": pad})).await;
        let mut ids = Vec::new();
        for n in 0..41 {
            let ev = resumed.expect().await;
            assert_eq!(
                (ev.data["n"].as_u64(), ev.data["pad"].as_str().map(str::len)),
                (Some(n), Some(4000)),
                "{query}"
            );
            ids.push(ev.id);
        }
        drop(resumed);
        let mut again = client.subscribe(query, &[("last-event-id", &ids[19])]).await;
        again.expect_ns(20..41).await;
    }
}
