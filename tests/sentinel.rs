//! Redis Sentinel: nodes configured with `redis_sentinels` find the primary through a real
//! `redis-server --sentinel` the test starts (beside a real primary and its replica, on free
//! ports), and follow a failover while events are published: every publish answered `200`
//! before, during or after it reaches the subscriber exactly once, and every publish made
//! while there is no primary is refused with `503`, never accepted and lost; the new
//! primary's history holds every accepted event.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use support::{Proto, RedisServer, TempDir, TestServer, within};

const MASTER: &str = "herald-primary";
const CHANNEL: &str = "channel:failover";
/// Events accepted before the primary is killed, and after the replica took over.
const BEFORE: u64 = 40;
const AFTER: u64 = 40;

/// A `redis-server --sentinel` of the test's own, watching one primary.
struct Sentinel {
    port: u16,
    child: std::process::Child,
    _dir: TempDir,
}

impl Sentinel {
    /// Starts a Sentinel that calls `primary` down after 300 ms without an answer, and
    /// returns once it has seen the primary and its replica.
    async fn watch(primary: &RedisServer) -> Self {
        use std::io::BufRead;
        let port = free_port();
        let dir = TempDir::new();
        let conf: PathBuf = dir.path.join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor {MASTER} 127.0.0.1 {primary} 1\n\
             sentinel down-after-milliseconds {MASTER} 300\nsentinel failover-timeout {MASTER} 5000\n",
            dir = dir.path.display(),
            primary = primary.port,
        );
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("sentinel.conf: {e}"));
        let mut child = std::process::Command::new("redis-server")
            .arg(&conf)
            .args(["--sentinel", "--logfile", ""])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server --sentinel could not start: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("sentinel stdout"));
        let seen = within(
            "the sentinel to see the primary's replica",
            tokio::task::spawn_blocking(move || {
                let mut lines = std::io::BufReader::new(stdout).lines();
                let seen = lines.by_ref().map_while(Result::ok).any(|l| l.contains("+slave "));
                std::thread::spawn(move || lines.for_each(drop));
                seen
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(seen, "the sentinel exited before it saw the replica");
        Self { port, child, _dir: dir }
    }

    /// The primary's port as this Sentinel names it now.
    fn primary_port(&self) -> Option<u16> {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SENTINEL", "get-master-addr-by-name", MASTER])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

/// Waits, reading `what` again every few milliseconds, until it holds.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(limit, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

async fn node(sentinel: &Sentinel) -> TestServer {
    let addr = format!("127.0.0.1:{}", sentinel.port);
    TestServer::with(|c| {
        support::no_presence(c);
        c.redis_sentinels = vec![addr];
        c.redis_sentinel_master = Some(MASTER.to_owned());
    })
    .await
}

#[tokio::test]
async fn nodes_follow_a_sentinel_failover_and_every_accepted_event_is_delivered_once() {
    let mut primary = RedisServer::start().await;
    let primary_port = primary.port.to_string();
    let replica = RedisServer::start_with(|port, _| {
        ["--port", &port.to_string(), "--replicaof", "127.0.0.1", &primary_port].map(str::to_owned).to_vec()
    })
    .await;
    until("the replica to sync", Duration::from_secs(10), || {
        replica.cli(&["INFO", "replication"]).contains("master_link_status:up")
    })
    .await;
    let sentinel = Sentinel::watch(&primary).await;
    assert_eq!(sentinel.primary_port(), Some(primary.port));

    // The publisher's node and the subscriber's node, both finding Redis through the Sentinel.
    let (a, b) = (node(&sentinel).await, node(&sentinel).await);
    let mut subscriber = b.client(Proto::H1).subscribe(&format!("channel={CHANNEL}"), &[]).await;
    let mut publisher = a.client(Proto::H1);

    // Publish without pause; kill the primary after BEFORE accepted events, and go on until
    // AFTER more were accepted by the replica the Sentinel promoted.
    let (mut accepted, mut refused) = (BTreeMap::new(), BTreeSet::new());
    let (mut killed_at, mut promoted_at) = (None, None);
    let published = tokio::time::timeout(Duration::from_secs(60), async {
        let mut n = 0u64;
        loop {
            let (status, body) =
                publisher.post_json("/api/publish", &json!({"channel": CHANNEL, "type": "tick", "n": n})).await;
            match status {
                StatusCode::OK => {
                    let id = body["id"].as_str().unwrap_or_else(|| panic!("no id: {body}")).to_owned();
                    accepted.insert(n, id);
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(body["error"]["code"], "engine_unavailable", "{body}");
                    refused.insert(n);
                }
                other => panic!("publish {n}: {other} {body}"),
            }
            n += 1;
            if killed_at.is_none() && accepted.len() as u64 == BEFORE {
                primary.kill();
                killed_at = Some(n);
            }
            if killed_at.is_some() && promoted_at.is_none() && sentinel.primary_port() == Some(replica.port) {
                promoted_at = Some(accepted.len() as u64);
            }
            if promoted_at.is_some_and(|at| accepted.len() as u64 >= at + AFTER) {
                return;
            }
            if status != StatusCode::OK {
                // While there is no primary, one publish per Sentinel's check, not a busy loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    published.await.unwrap_or_else(|_| {
        panic!("the failover did not finish: {} accepted, {} refused", accepted.len(), refused.len())
    });
    assert!(!refused.is_empty(), "the window without a primary refused publishes");
    eprintln!("{} publishes accepted, {} refused while there was no primary", accepted.len(), refused.len());

    // Every accepted event reaches the other node's subscriber once, in order; nothing that
    // was refused does.
    let mut delivered: Vec<(u64, String)> = Vec::new();
    let last_accepted = *accepted.keys().next_back().unwrap_or(&0);
    within("every accepted event to be delivered", async {
        while delivered.last().is_none_or(|(n, _)| *n < last_accepted) {
            let ev = subscriber.expect().await;
            assert_ne!(ev.data["type"], "reset", "history covers the failover: {:?}", ev.data);
            let n = ev.data["n"].as_u64().unwrap_or_else(|| panic!("{:?}", ev.data));
            delivered.push((n, ev.data["id"].as_str().unwrap_or_default().to_owned()));
        }
    })
    .await;
    let expected: Vec<(u64, String)> = accepted.into_iter().collect();
    assert_eq!(delivered, expected, "each accepted event once, in order, with its id; no refused one");

    // And the new primary's history holds them all: a client resuming from before the first
    // one, on the publisher's node, gets exactly those again.
    let start = subscriber.connected_id();
    let mut resumed = a.client(Proto::H1).subscribe(&format!("channel={CHANNEL}"), &[("last-event-id", &start)]).await;
    let mut replayed = Vec::new();
    while replayed.len() < expected.len() {
        let ev = resumed.expect().await;
        assert_ne!(ev.data["type"], "reset", "history covers the failover: {:?}", ev.data);
        let n = ev.data["n"].as_u64().unwrap_or_else(|| panic!("{:?}", ev.data));
        replayed.push((n, ev.data["id"].as_str().unwrap_or_default().to_owned()));
    }
    assert_eq!(replayed, expected, "the history after the failover is the events accepted");
    assert!(b.herald.engine().counters().reconnects >= 1, "the subscriber's node reconnected to the new primary");
}

#[test]
fn sentinels_come_with_a_master_name_and_without_a_fixed_url() {
    let check = |toml: &str| {
        let config = herald::Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
        config.validate().map_err(|e| e.to_string())
    };
    assert!(check("redis_sentinels = [\"127.0.0.1:26000\"]\nredis_sentinel_master = \"m\"\n").is_ok());
    let no_master = check("redis_sentinels = [\"127.0.0.1:26000\"]\n").err().unwrap_or_default();
    assert!(no_master.contains("redis_sentinel_master"), "{no_master}");
    let both = check(
        "redis_url = \"redis://127.0.0.1:1\"\nredis_sentinels = [\"127.0.0.1:26000\"]\nredis_sentinel_master = \"m\"\n",
    )
    .err()
    .unwrap_or_default();
    assert!(both.contains("redis_url"), "{both}");
}
