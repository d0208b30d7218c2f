//! Idempotent publish: a retry under the same `Idempotency-Key` (or a batch item's
//! `idempotencyKey`) answers the first publish's id and delivers nothing new, on one node
//! and across nodes on Redis.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use serde_json::{Value, json};
use support::{Client, Proto, RedisServer, SseStream, TestServer, read_json, redis_node_with, within};

/// Publishes `body` to `path` with `Idempotency-Key: key`.
async fn publish_keyed(client: &mut Client, path: &str, key: &str, body: &Value) -> (StatusCode, Value) {
    let req = client
        .request("POST", path)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let resp = client.send(req).await;
    read_json(resp).await
}

async fn id_of(client: &mut Client, key: &str, body: &Value) -> String {
    let (status, answer) = publish_keyed(client, "/api/publish", key, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["id"].as_str().unwrap_or_else(|| panic!("no id in {answer}")).to_owned()
}

/// Expects an error answer with `status` and `code`.
fn assert_refused((status, answer): (StatusCode, Value), want: StatusCode, code: &str) {
    assert_eq!((status, answer["error"]["code"].as_str()), (want, Some(code)), "{answer}");
}

fn assert_key_reused(answer: (StatusCode, Value)) {
    assert_refused(answer, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
}

/// Publishes a marker without a key and expects it as the next event: whatever came before
/// it was all there was.
async fn expect_only_marker(stream: &mut SseStream, publisher: &mut Client, channel: &str) {
    let marker = publisher.publish(&json!({"channel": channel, "type": "marker"})).await;
    let next = stream.expect().await;
    assert_eq!(next.data["id"], marker["id"], "expected the marker, got {:?}", next.data);
}

/// A node without presence events, a stream of user 1 on `channel`, and a backend publisher.
async fn node_with_stream(channel: &str) -> (TestServer, SseStream, Client) {
    let server = TestServer::secured(support::no_presence).await;
    let stream = server.client(Proto::H1).user("1").subscribe(&format!("channel={channel}"), &[]).await;
    let publisher = server.client(Proto::H2c).backend();
    (server, stream, publisher)
}

#[tokio::test]
async fn a_retry_with_the_same_key_answers_the_first_id_and_delivers_once() {
    let server = TestServer::secured(support::no_presence).await;
    let mut stream = server.client(Proto::H1).user("1").subscribe("channel=channel:a", &[]).await;
    for proto in [Proto::H1, Proto::H2c] {
        let mut publisher = server.client(proto).backend();
        let key = format!("order-42-{proto:?}");
        let body = json!({"channel": "channel:a", "type": "chat", "n": 1});
        let first = id_of(&mut publisher, &key, &body).await;
        assert_eq!(id_of(&mut publisher, &key, &body).await, first, "a retry answers the first id");
        let ev = stream.expect().await;
        assert_eq!((ev.data["id"].as_str(), ev.data["n"].as_u64()), (Some(first.as_str()), Some(1)));
        expect_only_marker(&mut stream, &mut publisher, "channel:a").await;
    }
    // The REST form takes the header too.
    let mut publisher = server.client(Proto::H1).backend();
    let body = json!({"type": "chat", "n": 2});
    let (status, first) = publish_keyed(&mut publisher, "/api/channels/channel:a/events", "rest-1", &body).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, again) = publish_keyed(&mut publisher, "/api/channels/channel:a/events", "rest-1", &body).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(stream.expect().await.data["id"], first["id"]);
    expect_only_marker(&mut stream, &mut publisher, "channel:a").await;
}

#[tokio::test]
async fn a_batch_with_per_item_keys_publishes_only_the_items_not_seen_before() {
    let (_server, mut stream, mut publisher) = node_with_stream("channel:b").await;
    let batch = json!([
        {"channel": "channel:b", "type": "chat", "n": 0, "idempotencyKey": "item-0"},
        {"channel": "channel:b", "type": "chat", "n": 1},
        {"channel": "channel:b", "type": "chat", "n": 2, "idempotencyKey": "item-2"},
    ]);
    let first = publisher.publish(&batch).await;
    let again = publisher.publish(&batch).await;
    assert_eq!((again["ids"][0].clone(), again["ids"][2].clone()), (first["ids"][0].clone(), first["ids"][2].clone()));
    assert_ne!(again["ids"][1], first["ids"][1], "an item without a key is published again");
    for (n, id) in [(0, &first["ids"][0]), (1, &first["ids"][1]), (2, &first["ids"][2]), (1, &again["ids"][1])] {
        let ev = stream.expect().await;
        assert_eq!((&ev.data["id"], ev.data["n"].as_u64()), (id, Some(n)));
        assert!(ev.data.get("idempotencyKey").is_none(), "the key is not part of the payload: {:?}", ev.data);
    }
    expect_only_marker(&mut stream, &mut publisher, "channel:b").await;
    // The header on a batch keys each item by its place.
    let pair =
        json!([{"channel": "channel:b", "type": "chat", "n": 3}, {"channel": "channel:b", "type": "chat", "n": 4}]);
    let (_, one) = publish_keyed(&mut publisher, "/api/publish", "whole-batch", &pair).await;
    let (_, two) = publish_keyed(&mut publisher, "/api/publish", "whole-batch", &pair).await;
    assert_eq!(one["ids"], two["ids"]);
    stream.expect_ns(3..5).await;
    expect_only_marker(&mut stream, &mut publisher, "channel:b").await;
}

#[tokio::test]
async fn the_same_key_with_a_different_event_is_refused_and_nothing_is_published() {
    let (_server, mut stream, mut publisher) = node_with_stream("channel:c").await;
    let first = id_of(&mut publisher, "k", &json!({"channel": "channel:c", "type": "chat", "n": 0})).await;
    assert_eq!(stream.expect().await.data["id"], first.as_str());
    let changed = json!({"channel": "channel:c", "type": "chat", "n": 9});
    let answer = publish_keyed(&mut publisher, "/api/publish", "k", &changed).await;
    assert_key_reused(answer);
    // A batch with one reused key is refused whole.
    let batch = json!([
        {"channel": "channel:c", "type": "chat", "n": 5},
        {"channel": "channel:c", "type": "chat", "n": 6, "idempotencyKey": "k2"},
        {"channel": "channel:c", "type": "chat", "n": 7, "idempotencyKey": "k2"},
    ]);
    assert_key_reused(publisher.post_json("/api/publish", &batch).await);
    let batch = json!([
        {"channel": "channel:c", "type": "chat", "n": 5},
        {"channel": "channel:c", "type": "chat", "n": 6, "idempotencyKey": "k"},
    ]);
    assert_key_reused(publisher.post_json("/api/publish", &batch).await);
    expect_only_marker(&mut stream, &mut publisher, "channel:c").await;
    // A key that is no key is refused plainly.
    for bad in ["", &"x".repeat(256), "two words"] {
        assert_refused(
            publish_keyed(&mut publisher, "/api/publish", bad, &json!({"channel": "channel:c", "type": "chat"})).await,
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        );
    }
}

#[tokio::test]
async fn two_publishers_with_the_same_key_do_not_collide() {
    let server = TestServer::secured(support::no_presence).await;
    let mut stream = server.client(Proto::H1).user("9").subscribe("channel=channel:d", &[]).await;
    let body = json!({"channel": "channel:d", "type": "chat", "n": 0});
    let mut ids = Vec::new();
    for mut publisher in
        [server.client(Proto::H1).backend(), server.client(Proto::H1).user("1"), server.client(Proto::H1).user("2")]
    {
        ids.push(id_of(&mut publisher, "shared", &body).await);
    }
    for id in &ids {
        assert_eq!(stream.expect().await.data["id"], id.as_str());
    }
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
}

/// Publishes under a key, then again under it until the answer is a new id: the key
/// expired (bounded by the test's wait; each attempt before the expiry answers the first
/// id and delivers nothing). Exactly the two events reach the stream.
async fn expect_key_to_expire(stream: &mut SseStream, publisher: &mut Client, channel: &str) {
    let body = json!({"channel": channel, "type": "chat"});
    let first = id_of(publisher, "expiring", &body).await;
    let second = within("the idempotency key to expire", async {
        loop {
            let id = id_of(publisher, "expiring", &body).await;
            if id != first {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(stream.expect().await.data["id"], first.as_str());
    assert_eq!(stream.expect().await.data["id"], second.as_str());
    expect_only_marker(stream, publisher, channel).await;
}

#[tokio::test]
async fn after_the_window_the_key_is_fresh() {
    let server = TestServer::secured(|c| {
        support::no_presence(c);
        c.idempotency_window = Duration::from_millis(300);
    })
    .await;
    let mut stream = server.client(Proto::H1).user("1").subscribe("channel=channel:e", &[]).await;
    let mut publisher = server.client(Proto::H1).backend();
    expect_key_to_expire(&mut stream, &mut publisher, "channel:e").await;
}

#[tokio::test]
async fn the_library_publishes_idempotently_under_the_applications_own_keys() {
    let (server, mut stream, mut publisher) = node_with_stream("channel:f").await;
    let channel = server.herald.parse_channel("channel:f").unwrap_or_else(|e| panic!("{e}"));
    let publish = || server.herald.publish_idempotent("job-7", vec![channel.clone()], herald::Event::new("chat"));
    let first = publish().await.unwrap_or_else(|e| panic!("{e}"));
    let again = publish().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first, again);
    assert_eq!(stream.expect().await.data["id"], &*first.id);
    // An HTTP publisher's same key is its own.
    let other = id_of(&mut publisher, "job-7", &json!({"channel": "channel:f", "type": "chat"})).await;
    assert_ne!(other, &*first.id);
    assert_eq!(stream.expect().await.data["id"], other.as_str());
    expect_only_marker(&mut stream, &mut publisher, "channel:f").await;
}

#[tokio::test]
async fn on_redis_a_retry_through_another_node_answers_the_first_id_and_delivers_once() {
    let redis = RedisServer::start().await;
    let (a, b) = (redis_node_with(&redis, |_| {}).await, redis_node_with(&redis, |_| {}).await);
    let mut on_a = a.client(Proto::H1).user("1").subscribe("channel=channel:r&channel=channel:s", &[]).await;
    let mut on_b = b.client(Proto::H2c).user("2").subscribe("channel=channel:s", &[]).await;
    let (mut via_a, mut via_b) = (a.client(Proto::H1).backend(), b.client(Proto::H2c).backend());
    let one = json!({"channel": "channel:r", "type": "chat", "n": 0});
    let first = id_of(&mut via_a, "r-1", &one).await;
    assert_eq!(id_of(&mut via_b, "r-1", &one).await, first, "the key is cluster-wide");
    assert_eq!(on_a.expect().await.data["id"], first.as_str());
    // A multi-channel event: keyed in its first channel's slot, answered once.
    let both = json!({"channels": ["channel:s", "channel:r"], "type": "chat", "n": 1});
    let multi = id_of(&mut via_b, "r-2", &both).await;
    assert_eq!(id_of(&mut via_a, "r-2", &both).await, multi);
    assert_eq!(on_a.expect().await.data["id"], multi.as_str());
    assert_eq!(on_b.expect().await.data["id"], multi.as_str());
    let changed = json!({"channel": "channel:r", "type": "chat", "n": 2});
    assert_key_reused(publish_keyed(&mut via_b, "/api/publish", "r-1", &changed).await);
    expect_only_marker(&mut on_a, &mut via_b, "channel:r").await;
    expect_only_marker(&mut on_b, &mut via_a, "channel:s").await;
}

#[tokio::test]
async fn on_redis_a_batch_with_a_reused_key_is_refused_whole_and_keys_expire() {
    let redis = RedisServer::start().await;
    let a = redis_node_with(&redis, |c| c.idempotency_window = Duration::from_millis(300)).await;
    let b = redis_node_with(&redis, |c| c.idempotency_window = Duration::from_millis(300)).await;
    let mut stream = b.client(Proto::H1).user("1").subscribe("channel=channel:t", &[]).await;
    let mut publisher = a.client(Proto::H1).backend();
    let batch = json!([
        {"channel": "channel:t", "type": "chat", "n": 0, "idempotencyKey": "t-0"},
        {"channel": "channel:t", "type": "chat", "n": 1, "idempotencyKey": "t-1"},
    ]);
    let first = publisher.publish(&batch).await;
    assert_eq!(b.client(Proto::H1).backend().publish(&batch).await["ids"], first["ids"]);
    stream.expect_ns(0..2).await;
    let reused = json!([
        {"channel": "channel:t", "type": "chat", "n": 2, "idempotencyKey": "t-2"},
        {"channel": "channel:t", "type": "chat", "n": 3, "idempotencyKey": "t-1"},
    ]);
    assert_key_reused(publisher.post_json("/api/publish", &reused).await);
    expect_only_marker(&mut stream, &mut publisher, "channel:t").await;
    expect_key_to_expire(&mut stream, &mut publisher, "channel:t").await;
}
