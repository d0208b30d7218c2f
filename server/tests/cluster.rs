//! A node process that dies (SIGKILL) in a cluster on one Redis: its users go offline within
//! the presence lease, and its clients resume on another node with nothing lost. The doomed
//! node is the `herald` binary, so that it can be killed like a real one.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Proto, RedisServer, SECRET, TestServer};

#[tokio::test]
async fn the_users_of_a_node_that_dies_go_offline_within_the_lease() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = TestServer::secured({
        let url = url.clone();
        move |c| {
            c.redis_url = Some(url);
            c.presence_grace = Duration::from_millis(1000);
            c.heartbeat_interval = Duration::from_millis(500);
        }
    })
    .await;
    let mut doomed = support::start({
        let mut cmd = support::herald();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--redis-url", &url, "--jwt-secret", SECRET]);
        cmd.args(["--heartbeat-interval", "500ms"]);
        cmd
    })
    .await;
    let room = "channel=channel:fragile";
    let mut watcher = a.client(Proto::H1).user("watcher").subscribe(room, &[]).await;
    watcher.expect_presence("watcher", "online").await;
    let _dan = TestServer::client_at(doomed.addr, Proto::H1).user("dan").subscribe(room, &[]).await;
    watcher.expect_presence("dan", "online").await;
    let _ = doomed.child.kill(); // SIGKILL: dan's connection is never closed properly
    // Dan's lease (3 heartbeats) lapses and node a's next sweep announces him offline.
    watcher.expect_presence("dan", "offline").await;
}

#[tokio::test]
async fn clients_of_a_node_that_dies_resume_on_another_with_nothing_lost() {
    let redis = RedisServer::start().await;
    let mut cmd = support::herald();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--redis-url", &redis.url()]).args([
        "--jwt-secret",
        support::SECRET,
        "--api-key",
        support::API_KEY,
    ]);
    let mut doomed = support::start(cmd).await;
    let b = TestServer::secured(|c| c.redis_url = Some(redis.url())).await;
    let mut on_a = TestServer::client_at(doomed.addr, Proto::H1).user("5").subscribe("channel=user:5", &[]).await;
    let mut publisher = b.client(Proto::H1).backend();
    publisher.publish(&json!({"channel": "user:5", "type": "update", "n": 0})).await;
    let last = on_a.expect_ns(0..1).await;
    let _ = doomed.child.kill(); // SIGKILL: no drain, no goodbye
    let _ = doomed.child.wait();
    publisher.publish(&json!({"channel": "user:5", "type": "update", "n": 1})).await;
    let mut on_b = b.client(Proto::H1).user("5").subscribe("channel=user:5", &[("last-event-id", &last)]).await;
    on_b.expect_ns(1..2).await;
}
