//! AI token streams (`ai_chat_chunk` with `streamId`, `text`, `done`): a subscriber that
//! joins or resumes mid-stream first gets one snapshot holding the whole text so far, then
//! the following chunks. On both engines.

mod support;

use std::time::Duration;

use herald::Config;
use serde_json::{Value, json};
use support::{Proto, RedisServer, SseStream, TestServer};

fn configure(c: &mut Config, redis: Option<String>) {
    c.redis_url = redis;
    c.ai_stream_retention = Duration::from_millis(600);
    support::no_presence(c);
}

async fn server(redis: Option<String>) -> TestServer {
    TestServer::secured(move |c| configure(c, redis)).await
}

const WORDS: [&str; 8] = ["The ", "answer ", "to ", "life ", "is ", "forty", "-", "two."];

fn chunk(stream: &str, i: usize) -> Value {
    let done = i + 1 == WORDS.len();
    let mut c =
        json!({"channel": "channel:ai", "type": "ai_chat_chunk", "streamId": stream, "text": WORDS[i], "done": done});
    if done {
        c["provider"] = "anthropic".into();
    }
    c
}

/// Reads a stream's text the way a client must, from what it already has: a snapshot
/// replaces, a chunk appends; returns the text once a chunk says `done`, how many
/// snapshots came, and the id of that last chunk.
async fn read_answer(s: &mut SseStream, stream_id: &str, so_far: &str) -> (String, usize, String) {
    let (mut text, mut snapshots) = (so_far.to_owned(), 0);
    loop {
        let ev = s.expect().await;
        if ev.data["type"] != "ai_chat_chunk" || ev.data["streamId"] != stream_id {
            continue;
        }
        let part = ev.data["text"].as_str().unwrap_or_else(|| panic!("no text: {:?}", ev.data));
        if ev.data["snapshot"] == true {
            snapshots += 1;
            text = part.to_owned();
        } else {
            text.push_str(part);
        }
        if ev.data["done"] == true {
            assert_eq!(ev.data["provider"], "anthropic", "the last chunk names the provider");
            return (text, snapshots, ev.id);
        }
    }
}

async fn late_joiner_and_resume(redis: Option<String>) {
    let node = server(redis).await;
    let mut p = node.client(Proto::H1).backend();
    let mut early = node.client(Proto::H1).user("early").subscribe("channel=channel:ai", &[]).await;
    for i in 0..3 {
        p.publish(&chunk("s1", i)).await;
    }
    // The early reader takes two chunks, then its connection drops.
    let _ = early.expect().await;
    let second = early.expect().await;
    assert_eq!(second.data["text"], "answer ");
    drop(early);
    p.publish(&chunk("s1", 3)).await;
    p.publish(&json!({"channel": "channel:ai", "type": "chat", "content": "meanwhile"})).await;

    // A late joiner: one snapshot of the text so far, then the rest.
    let mut late = node.client(Proto::H2c).user("late").subscribe("channel=channel:ai", &[]).await;
    let snap = late.expect().await;
    assert_eq!(
        (snap.data["type"].as_str(), snap.data["snapshot"].as_bool(), snap.data["text"].as_str()),
        (Some("ai_chat_chunk"), Some(true), Some("The answer to life ")),
    );
    // The early reader resumes from its last id: the missed chunks come as one snapshot.
    let mut resumed =
        node.client(Proto::H1).user("early").subscribe("channel=channel:ai", &[("last-event-id", &second.id)]).await;
    let meanwhile = resumed.expect().await;
    assert_eq!(meanwhile.data["content"], "meanwhile", "other missed events are replayed as they were");
    let resumed_snap = resumed.expect().await;
    assert_eq!(
        (resumed_snap.data["snapshot"].as_bool(), resumed_snap.data["text"].as_str()),
        (Some(true), Some("The answer to life "))
    );

    for i in 4..WORDS.len() {
        p.publish(&chunk("s1", i)).await;
    }
    let full: String = WORDS.concat();
    let (text, snapshots, _) = read_answer(&mut late, "s1", "The answer to life ").await;
    assert_eq!((text.as_str(), snapshots), (full.as_str(), 0), "late joiner: the snapshot, then every chunk once");
    let (text, snapshots, done) = read_answer(&mut resumed, "s1", "The answer to life ").await;
    assert_eq!((text.as_str(), snapshots), (full.as_str(), 0), "resumed reader");
    // Back again from the last chunk: the reader has the whole answer, and gets no snapshot.
    drop(resumed);
    let mut again =
        node.client(Proto::H1).user("early").subscribe("channel=channel:ai", &[("last-event-id", &done)]).await;
    p.publish(&json!({"channel": "channel:ai", "type": "chat", "content": "after the answer"})).await;
    assert_eq!(again.expect().await.data["content"], "after the answer", "no snapshot of an answer read to its end");

    // A finished stream is kept for the retention, then forgotten.
    let mut after = node.client(Proto::H1).user("after").subscribe("channel=channel:ai", &[]).await;
    let (text, snapshots, _) = read_answer(&mut after, "s1", "").await;
    assert_eq!((text.as_str(), snapshots), (full.as_str(), 1));
    support::within("the finished stream to be forgotten", async {
        loop {
            let mut s = node.client(Proto::H1).user("later").subscribe("channel=channel:ai", &[]).await;
            p.publish(&json!({"channel": "channel:ai", "type": "chat", "content": "marker"})).await;
            if s.expect().await.data["content"] == "marker" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_late_joiner_and_a_resumed_reader_get_the_text_so_far_then_the_rest_in_memory() {
    late_joiner_and_resume(None).await;
}

#[tokio::test]
async fn a_late_joiner_and_a_resumed_reader_get_the_text_so_far_then_the_rest_on_redis() {
    let redis = RedisServer::start().await;
    late_joiner_and_resume(Some(redis.url())).await;
}

#[tokio::test]
async fn a_live_join_mid_stream_starts_with_the_snapshot() {
    let redis = RedisServer::start().await;
    let (a, b) = (server(Some(redis.url())).await, server(Some(redis.url())).await);
    let mut p = a.client(Proto::H1).backend();
    for i in 0..4 {
        p.publish(&chunk("s2", i)).await;
    }
    let mut s = b.client(Proto::H1).user("u").subscribe("channel=user:u", &[]).await;
    let path = format!("/api/connections/{}/channels", s.connection_id());
    let (status, _) = a.client(Proto::H1).user("u").post_json(&path, &json!({"channel": "channel:ai"})).await;
    assert_eq!(status, 200);
    assert_eq!(s.expect().await.data["type"], "subscribed");
    for i in 4..WORDS.len() {
        p.publish(&chunk("s2", i)).await;
    }
    let (text, snapshots, _) = read_answer(&mut s, "s2", "").await;
    assert_eq!((text, snapshots), (WORDS.concat(), 1));
}

/// An answer that goes on past the 1 MiB kept for snapshots: from there it is no longer
/// snapshotted (its text is let go of), and its chunks are replayed as the events they are.
async fn an_answer_past_the_snapshot_limit(redis: Option<&RedisServer>) {
    let node = server(redis.map(RedisServer::url)).await;
    let mut p = node.client(Proto::H1).backend();
    let mut reader = node.client(Proto::H1).user("r").subscribe("channel=channel:ai", &[]).await;
    let short = json!({"channel": "channel:ai", "type": "ai_chat_chunk", "streamId": "short", "text": "kept"});
    p.publish(&short).await;
    // 60,000 bytes a chunk: seventeen are 1,020,000 bytes, the eighteenth passes 1 MiB.
    let piece = "x".repeat(60_000);
    let long = |n: usize| {
        let done = n == 19;
        json!({"channel": "channel:ai", "type": "ai_chat_chunk", "streamId": "long", "text": piece, "n": n, "done": done})
    };
    for n in 0..17 {
        p.publish(&long(n)).await;
    }
    assert_eq!(reader.expect().await.data["streamId"], "short");
    let mut after_15 = String::new();
    for n in 0..17 {
        let ev = reader.expect().await;
        assert_eq!(ev.data["n"], n);
        if n == 15 {
            after_15 = ev.id;
        }
    }
    for n in 17..20 {
        p.publish(&long(n)).await;
    }
    // A late joiner: the short answer's snapshot, none of the long one's.
    let mut late = node.client(Proto::H1).user("late").subscribe("channel=channel:ai", &[]).await;
    let snap = late.expect().await;
    assert_eq!((snap.data["streamId"].as_str(), snap.data["text"].as_str()), (Some("short"), Some("kept")));
    p.publish(&json!({"channel": "channel:ai", "type": "chat", "content": "marker"})).await;
    assert_eq!(late.expect().await.data["content"], "marker", "no snapshot of the answer past the limit");
    // A reader back from chunk 15 gets 16 to 19 as they were, no snapshot standing for them.
    drop(reader);
    let mut back =
        node.client(Proto::H1).user("r").subscribe("channel=channel:ai", &[("last-event-id", &after_15)]).await;
    for n in 16..20u64 {
        let ev = back.expect().await;
        assert_eq!((ev.data["n"].as_u64(), ev.data.get("snapshot")), (Some(n), None));
    }
    if let Some(redis) = redis {
        let texts = redis.cli(&["KEYS", "*:ai:long:text"]);
        assert!(texts.trim().is_empty(), "the long answer's text is let go of: {texts}");
    }
}

#[tokio::test]
async fn an_answer_past_the_snapshot_limit_is_replayed_chunk_by_chunk_and_its_text_let_go_in_memory() {
    an_answer_past_the_snapshot_limit(None).await;
}

#[tokio::test]
async fn an_answer_past_the_snapshot_limit_is_replayed_chunk_by_chunk_and_its_text_let_go_on_redis() {
    let redis = RedisServer::start().await;
    an_answer_past_the_snapshot_limit(Some(&redis)).await;
}
