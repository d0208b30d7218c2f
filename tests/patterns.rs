//! Pattern subscriptions (`docs/channels.md`, "Patterns"): `channel=channel:incidents.*`
//! follows every channel whose name starts so, authorized like the channels it matches. On
//! both engines.

mod support;

use serde_json::json;
use support::{Proto, RedisServer, TestServer};

async fn server(redis: Option<String>) -> TestServer {
    TestServer::secured(move |c| {
        c.redis_url = redis;
        support::no_presence(c);
    })
    .await
}

async fn a_pattern_receives_exactly_the_matching_channels(redis: Option<String>) {
    let (a, b) = match &redis {
        Some(url) => (server(Some(url.clone())).await, Some(server(Some(url.clone())).await)),
        None => (server(None).await, None),
    };
    let publisher_node = b.as_ref().unwrap_or(&a);
    let mut incidents = a.client(Proto::H1).user("oncall").subscribe("channel=channel:incidents.*", &[]).await;
    // A connection following a pattern and one of its channels gets each event once.
    let mut both = a
        .client(Proto::H2c)
        .user("lead")
        .subscribe("channel=channel:incidents.*&channel=channel:incidents.INC-1&filter=severity:SEV-1", &[])
        .await;
    let mut p = publisher_node.client(Proto::H1).backend();
    let events = [
        ("channel:incidents.INC-1", "SEV-1", 0),
        ("channel:other", "SEV-1", 1),
        ("channel:incidents.INC-2", "SEV-2", 2),
        ("channel:incidentsX", "SEV-1", 3),
        ("channel:incidents.INC-1", "SEV-1", 4),
    ];
    for (channel, severity, n) in events {
        p.publish(&json!({"channel": channel, "type": "incident.updated", "severity": severity, "n": n})).await;
    }
    for n in [0, 2, 4] {
        let ev = incidents.expect().await;
        assert_eq!(ev.data["n"], n);
        assert!(ev.data["channel"].as_str().is_some_and(|c| c.starts_with("channel:incidents.")));
    }
    for n in [0, 4] {
        assert_eq!(both.expect().await.data["n"], n, "once each, filtered");
    }
}

#[tokio::test]
async fn a_pattern_subscription_receives_incidents_but_not_other_channels_in_memory() {
    a_pattern_receives_exactly_the_matching_channels(None).await;
}

#[tokio::test]
async fn a_pattern_subscription_receives_incidents_but_not_other_channels_across_redis_nodes() {
    let redis = RedisServer::start().await;
    a_pattern_receives_exactly_the_matching_channels(Some(redis.url())).await;
    let patterns = redis.cli(&["PUBSUB", "NUMPAT"]);
    assert_eq!(patterns.trim(), "1", "one PSUBSCRIBE for the node, shared by its connections");
}

#[tokio::test]
async fn patterns_are_authorized_like_every_channel_they_match() {
    let server = server(None).await;
    let granted = support::token_with(json!({"sub": "g", "exp": support::now() + 60, "subscribe": ["channel:team-*"]}));
    let cases = [
        (server.client(Proto::H1).user("u"), "channel=user:u*", 403),
        (server.client(Proto::H1), "channel=channel:*", 401),
        (server.client(Proto::H1).with_header("authorization", &format!("Bearer {granted}")), "channel=channel:*", 403),
        (
            server.client(Proto::H1).with_header("authorization", &format!("Bearer {granted}")),
            "channel=channel:team-a*",
            200,
        ),
        (server.client(Proto::H1).backend(), "channel=user:*", 200),
    ];
    for (mut client, query, status) in cases {
        let resp = client.open_events(query, &[]).await;
        assert_eq!(resp.status().as_u16(), status, "{query}");
    }
}

#[tokio::test]
async fn resuming_a_pattern_says_plainly_that_it_cannot_replay() {
    let server = server(None).await;
    let s = server.client(Proto::H1).user("u").subscribe("channel=channel:inc.*&channel=user:u", &[]).await;
    let last = s.connected_id();
    drop(s);
    server.client(Proto::H1).backend().publish(&json!({"channel": "user:u", "type": "update", "n": 0})).await;
    let mut resumed = server
        .client(Proto::H1)
        .user("u")
        .subscribe("channel=channel:inc.*&channel=user:u", &[("last-event-id", &last)])
        .await;
    let reset = resumed.expect().await;
    assert_eq!(
        (reset.data["type"].as_str(), reset.data["channel"].as_str(), reset.data["reason"].as_str()),
        (Some("reset"), Some("channel:inc.*"), Some("pattern_not_resumable"))
    );
    resumed.expect_ns(0..1).await;
}

/// On Redis a node hears a message once per subscription that matches it (the channel's own,
/// each pattern). A channel's own subscription starting or stopping beside a pattern that
/// covers it must not make the pattern's followers lose or repeat an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_loses_and_repeats_nothing_while_a_channel_it_covers_is_followed_and_given_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const PUBLISHERS: usize = 4;
    const CHANNEL: &str = "channel:incidents.INC-1";
    let redis = RedisServer::start().await;
    let a = server(Some(redis.url())).await;
    let b = server(Some(redis.url())).await;
    let mut follower = a.client(Proto::H1).user("oncall").subscribe("channel=channel:incidents.*", &[]).await;
    // The follower is read all along (a reader that stopped would be cut off as too slow):
    // each publisher's events once and in order, up to the last one.
    let reader = tokio::spawn(async move {
        let mut next = [0u64; PUBLISHERS];
        loop {
            let ev = follower.expect().await;
            if ev.data["last"] == true {
                return next;
            }
            let (p, n) = (ev.data["p"].as_u64().unwrap_or(u64::MAX), ev.data["n"].as_u64().unwrap_or(u64::MAX));
            let p = usize::try_from(p).unwrap_or(usize::MAX);
            assert!(p < PUBLISHERS, "an event of the test: {:?}", ev.data);
            assert_eq!(n, next[p], "publisher {p}'s events arrive once each and in order");
            next[p] += 1;
        }
    });
    // Publishers on node B, as fast as they go, each numbering its own events.
    let done = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let mut client = b.client(Proto::H1).backend();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    client.publish(&json!({"channel": CHANNEL, "type": "incident.updated", "p": p, "n": n})).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    // On node A the channel itself is followed and given up, three times: each start is a
    // SUBSCRIBE beside the pattern, each end an UNSUBSCRIBE at the node's next sweep.
    let subscribers = || redis.cli(&["PUBSUB", "NUMSUB", "realtime:channel:{incidents.INC-1}"]);
    for _ in 0..3 {
        let lead = a.client(Proto::H1).user("lead").subscribe(&format!("channel={CHANNEL}"), &[]).await;
        drop(lead);
        support::within("the node to give up the channel's own subscription", async {
            while !tokio::task::block_in_place(subscribers).trim_end().ends_with("\n0") {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    done.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for p in publishers {
        sent.push(p.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let mut last = b.client(Proto::H1).backend();
    last.publish(&json!({"channel": CHANNEL, "type": "incident.updated", "last": true})).await;
    let received = reader.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(received.to_vec(), sent, "everything published arrived");
}

/// A pattern keeps no position, so a node that lost its connection to Redis cannot replay what
/// a pattern's stream missed meanwhile: once the node is back it ends the pattern's streams
/// (their clients resume and are told plainly), and a stream opened then hears the events
/// published after it.
#[tokio::test]
async fn after_its_node_lost_its_redis_connection_a_pattern_stream_ends_and_a_new_one_is_live() {
    let redis = RedisServer::start().await;
    let node = server(Some(redis.url())).await;
    let mut lost = node.client(Proto::H1).user("u").subscribe("channel=channel:inc.*", &[]).await;
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "1", "the node's connection");
    assert!(lost.until_end().await.is_empty(), "nothing but the end");
    assert!(node.herald.engine().counters().reconnects >= 1, "the node did reconnect");
    let mut live = node.client(Proto::H1).user("u").subscribe("channel=channel:inc.*", &[]).await;
    node.client(Proto::H1).backend().publish(&json!({"channel": "channel:inc.db", "type": "update", "n": 7})).await;
    live.expect_ns(7..8).await;
}
