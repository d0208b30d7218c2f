//! Presence: who is in a channel, on one node (in-memory engine) and across nodes (Redis).
//! Each scenario runs on both engines; the Redis runs start their own `redis-server`.

mod support;

use std::time::Duration;

use herald::Config;
use serde_json::{Value, json};
use support::{Proto, RedisServer, TestServer};

/// Long enough for a test to see a user in the grace period, short enough to wait out.
const GRACE: Duration = Duration::from_millis(1000);

fn configure(c: &mut Config, redis: Option<String>) {
    c.redis_url = redis;
    c.presence_grace = GRACE;
}

/// Two nodes: the same one twice on the in-memory engine, two on one Redis.
async fn nodes(redis: Option<&RedisServer>) -> (TestServer, Option<TestServer>) {
    let url = redis.map(RedisServer::url);
    let a = TestServer::secured({
        let url = url.clone();
        move |c| configure(c, url)
    })
    .await;
    let b = match url {
        Some(url) => Some(TestServer::secured(move |c| configure(c, Some(url))).await),
        None => None,
    };
    (a, b)
}

/// `(user, status, connections)` of a presence answer.
fn entries(list: &Value) -> Vec<(String, String, u64)> {
    list["users"]
        .as_array()
        .map(|users| {
            users
                .iter()
                .map(|u| {
                    let text = |k: &str| u[k].as_str().unwrap_or("").to_owned();
                    (text("userId"), text("status"), u["connections"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `user` is listed in `channel` with `connections` open connections.
async fn until_connections(client: &mut support::Client, channel: &str, user: &str, connections: u64) {
    let path = format!("/api/channels/{channel}/presence");
    support::within(&format!("{user} to hold {connections} connections in {channel}"), async {
        loop {
            let (_, list) = client.get_json(&path).await;
            if entries(&list).iter().any(|(u, _, n)| u == user && *n == connections) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

fn users(list: &Value) -> Vec<(String, String)> {
    list["users"]
        .as_array()
        .map(|users| {
            users
                .iter()
                .map(|u| (u["userId"].as_str().unwrap_or("").to_owned(), u["status"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

async fn two_tabs_and_a_reload_count_once(redis: Option<&RedisServer>) {
    let (a, b) = nodes(redis).await;
    let b = b.as_ref().unwrap_or(&a);
    let room = "channel=channel:lobby";
    let mut watcher = a.client(Proto::H1).user("watcher").subscribe(room, &[]).await;
    watcher.expect_presence("watcher", "online").await;

    let mut query = a.client(Proto::H1).user("watcher");
    let tab1 = b.client(Proto::H1).user("ann").subscribe(room, &[]).await;
    watcher.expect_presence("ann", "online").await;
    let tab2 = a.client(Proto::H2c).user("ann").subscribe(room, &[]).await;
    until_connections(&mut query, "channel:lobby", "ann", 2).await;
    drop(tab1);
    until_connections(&mut query, "channel:lobby", "ann", 1).await;
    // A reload: the last tab closes (ann is leaving: listed, no connection) and a new one
    // opens within the grace period.
    drop(tab2);
    until_connections(&mut query, "channel:lobby", "ann", 0).await;
    let tab3 = b.client(Proto::H1).user("ann").subscribe(room, &[]).await;
    // Let the grace period of the reload run out: any offline it wrongly announced would
    // come before the one below.
    tokio::time::sleep(GRACE * 2).await;
    let (status, list) = query.get_json("/api/channels/channel:lobby/presence").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(entries(&list), vec![("ann".into(), "online".into(), 1), ("watcher".into(), "online".into(), 1)]);

    drop(tab3);
    // Nothing about ann between her one online and this one offline.
    let offline = watcher.expect_presence("ann", "offline").await;
    assert_eq!(offline.data["userName"], "User ann");
    let (_, list) = b.client(Proto::H1).user("watcher").get_json("/api/channels/channel:lobby/presence").await;
    assert_eq!(users(&list), vec![("watcher".into(), "online".into())]);
}

#[tokio::test]
async fn two_tabs_and_a_reload_within_the_grace_period_count_as_one_user_in_memory() {
    two_tabs_and_a_reload_count_once(None).await;
}

#[tokio::test]
async fn two_tabs_and_a_reload_within_the_grace_period_count_as_one_user_across_redis_nodes() {
    let redis = RedisServer::start().await;
    two_tabs_and_a_reload_count_once(Some(&redis)).await;
}

async fn away_and_queries(redis: Option<&RedisServer>) {
    let (a, b) = nodes(redis).await;
    let b = b.as_ref().unwrap_or(&a);
    let room = "channel=channel:team";
    let mut watcher = a.client(Proto::H1).user("watcher").subscribe(room, &[]).await;
    watcher.expect_presence("watcher", "online").await;
    let _bob = b.client(Proto::H1).user("bob").subscribe(room, &[]).await;
    watcher.expect_presence("bob", "online").await;
    // A second tab of Bob's in the same room: his status is still announced once.
    let _bob_tab = b.client(Proto::H1).user("bob").subscribe(room, &[]).await;
    let carol = b.client(Proto::H1).user("carol").subscribe(room, &[]).await;
    watcher.expect_presence("carol", "online").await;

    let (status, answer) = b.client(Proto::H1).user("bob").post_json("/api/presence", &json!({"status": "away"})).await;
    assert_eq!((status.as_u16(), &answer), (200, &json!({"status": "away"})));
    watcher.expect_presence("bob", "away").await;
    drop(carol);
    watcher.expect_presence("carol", "offline").await;

    let mut c = a.client(Proto::H1).user("watcher");
    let (_, list) = c.get_json("/api/channels/channel:team/presence").await;
    assert_eq!(
        users(&list),
        vec![("bob".into(), "away".into()), ("watcher".into(), "online".into())],
        "exactly who is there"
    );
    for (user, online, status) in [("bob", true, "away"), ("watcher", true, "online"), ("carol", false, "offline")] {
        let (code, answer) = c.get_json(&format!("/api/users/{user}/presence")).await;
        assert_eq!(code, 200);
        assert_eq!(answer, json!({"userId": user, "online": online, "status": status}));
    }
    let (status, answer) =
        b.client(Proto::H1).user("bob").post_json("/api/presence", &json!({"status": "online"})).await;
    assert_eq!(status, 200, "{answer}");
    watcher.expect_presence("bob", "online").await;
}

#[tokio::test]
async fn a_presence_query_lists_exactly_who_is_there_and_away_is_announced_in_memory() {
    away_and_queries(None).await;
}

#[tokio::test]
async fn a_presence_query_lists_exactly_who_is_there_and_away_is_announced_across_redis_nodes() {
    let redis = RedisServer::start().await;
    away_and_queries(Some(&redis)).await;
}

async fn away_is_one_status_on_every_channel(redis: Option<&RedisServer>) {
    let (a, b) = nodes(redis).await;
    let b = b.as_ref().unwrap_or(&a);
    let mut r1 = a.client(Proto::H1).user("w1").subscribe("channel=channel:r1", &[]).await;
    r1.expect_presence("w1", "online").await;
    let mut r2 = a.client(Proto::H1).user("w2").subscribe("channel=channel:r2", &[]).await;
    r2.expect_presence("w2", "online").await;
    let ann = b.client(Proto::H1).user("ann").subscribe("channel=channel:r1", &[]).await;
    r1.expect_presence("ann", "online").await;
    let (status, _) = b.client(Proto::H1).user("ann").post_json("/api/presence", &json!({"status": "away"})).await;
    assert_eq!(status, 200);
    r1.expect_presence("ann", "away").await;

    // Ann, away, joins r2 (through the other node): she arrives there away.
    let path = format!("/api/connections/{}/channels", ann.connection_id());
    let (status, answer) = a.client(Proto::H1).user("ann").post_json(&path, &json!({"channel": "channel:r2"})).await;
    assert_eq!(status, 200, "{answer}");
    r2.expect_presence("ann", "away").await;
    let mut q = a.client(Proto::H1).user("w1");
    let (_, me) = q.get_json("/api/users/ann/presence").await;
    assert_eq!(me, json!({"userId": "ann", "online": true, "status": "away"}));
    for room in ["channel:r1", "channel:r2"] {
        let (_, list) = q.get_json(&format!("/api/channels/{room}/presence")).await;
        assert!(users(&list).contains(&("ann".into(), "away".into())), "{room}: {list}");
    }

    // Offline everywhere, then back: the away is over. Nothing came on r1 in between.
    drop(ann);
    r1.expect_presence("ann", "offline").await;
    r2.expect_presence("ann", "offline").await;
    let _back = b.client(Proto::H1).user("ann").subscribe("channel=channel:r1", &[]).await;
    r1.expect_presence("ann", "online").await;
    let (_, me) = q.get_json("/api/users/ann/presence").await;
    assert_eq!(me, json!({"userId": "ann", "online": true, "status": "online"}));
}

#[tokio::test]
async fn a_user_who_is_away_joins_another_channel_away_in_memory() {
    away_is_one_status_on_every_channel(None).await;
}

#[tokio::test]
async fn a_user_who_is_away_joins_another_channel_away_across_redis_nodes() {
    let redis = RedisServer::start().await;
    away_is_one_status_on_every_channel(Some(&redis)).await;
}

#[tokio::test]
async fn presence_requests_are_checked_like_subscriptions() {
    let server = TestServer::secured(|c| {
        c.namespaces.insert(
            "quiet".to_owned(),
            herald::config::NamespaceConfig { presence: Some(false), ..Default::default() },
        );
    })
    .await;
    let cases = [
        (server.client(Proto::H1), "/api/channels/channel:x/presence", 401, "unauthorized"),
        (server.client(Proto::H1).user("1"), "/api/channels/user:2/presence", 403, "forbidden"),
        (server.client(Proto::H1).user("1"), "/api/channels/quiet:x/presence", 404, "presence_disabled"),
        (server.client(Proto::H1).user("1"), "/api/channels/nope/presence", 400, "invalid_channel"),
        (server.client(Proto::H1), "/api/users/1/presence", 401, "unauthorized"),
        (server.client(Proto::H1).user("1"), "/api/users/a%20b/presence", 400, "invalid_user"),
    ];
    for (mut client, path, status, code) in cases {
        let (got, body) = client.get_json(path).await;
        assert_eq!((got.as_u16(), body["error"]["code"].as_str()), (status, Some(code)), "{path}: {body}");
    }
    for (mut client, body, status, code) in [
        (server.client(Proto::H1).user("1"), json!({"status": "busy"}), 400, "invalid_status"),
        (server.client(Proto::H1).user("1"), json!({}), 400, "invalid_status"),
        (server.client(Proto::H1).backend(), json!({"status": "away"}), 403, "forbidden"),
    ] {
        let (got, answer) = client.post_json("/api/presence", &body).await;
        assert_eq!((got.as_u16(), answer["error"]["code"].as_str()), (status, Some(code)), "{body}: {answer}");
    }
    // A publisher cannot forge presence: only the server announces it.
    let (got, answer) = server
        .client(Proto::H1)
        .user("1")
        .post_json("/api/publish", &json!({"channel": "channel:x", "type": "presence", "status": "offline"}))
        .await;
    assert_eq!((got.as_u16(), answer["error"]["code"].as_str()), (400, Some("invalid_type")));
}
