//! Memory that a node gives back: after a publish burst to thousands of channels nobody
//! follows, the process's resident memory falls back near where it started. (Closed streams
//! are measured on release builds in `docs/benchmarks.md`: on a debug build glibc gives back
//! half of a stream's memory too, its tasks being large enough to be mapped on their own, so a
//! test there cannot tell the allocators apart.) Which allocator does that is the binary's choice (`server/src/main.rs`),
//! so these tests run the `herald` binary and read its `VmRSS` from `/proc`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Proto, Running, TempDir, TestServer};

/// How long a node may take to give memory back once the work that used it is gone: the
/// allocator hands freed pages back over about ten seconds (jemalloc's decay), in a background
/// thread; 7 to 15 s were measured on a debug build, on a busy machine.
const RETURN_WITHIN: Duration = Duration::from_secs(30);

/// `herald serve` in dev mode that sweeps expired history every 100 ms, keeps history for
/// 3 s, and lets anonymous clients publish without a rate limit.
async fn node() -> (Running, TempDir) {
    let dir = TempDir::new();
    let file = dir.path.join("herald.toml");
    let toml = "history_ttl = \"3s\"\nheartbeat_interval = \"100ms\"\n\
                publish_rate = 1e9\npublish_burst = 1e9\n";
    std::fs::write(&file, toml).unwrap_or_else(|e| panic!("write config: {e}"));
    let mut cmd = support::herald();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&file);
    (support::start(cmd).await, dir)
}

/// The process's resident set size, in bytes.
fn rss(run: &Running) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", run.child.id()))
        .unwrap_or_else(|e| panic!("read /proc status: {e}"));
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    kib * 1024
}

/// Waits until `metric` reads `value`, failing after [`support::WAIT`].
async fn until_metric(addr: SocketAddr, metric: &str, value: f64) {
    let mut client = TestServer::client_at(addr, Proto::H1);
    support::within(&format!("{metric} to reach {value}"), async {
        while client.metric(metric).await != value {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Waits (at most [`RETURN_WITHIN`]) until RSS is back within a third of `grown` above
/// `base`, failing with the figures if it never is.
async fn until_returned(run: &Running, what: &str, base: u64, grown: u64) {
    let bound = base + grown / 3;
    let started = Instant::now();
    let mut now = rss(run);
    while now > bound {
        assert!(
            started.elapsed() < RETURN_WITHIN,
            "{what}: RSS stays at {} KiB after {RETURN_WITHIN:?}; it was {} KiB before and {} KiB at the peak, \
             and should be back under {} KiB",
            now / 1024,
            base / 1024,
            (base + grown) / 1024,
            bound / 1024
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = rss(run);
    }
    eprintln!("{what}: {} KiB, back under {} KiB in {:?}", now / 1024, bound / 1024, started.elapsed());
}

#[tokio::test]
async fn memory_of_a_channel_burst_returns_to_the_system() {
    const CHANNELS: usize = 20_000;
    let (run, _dir) = node().await;
    let mut publisher = TestServer::client_at(run.addr, Proto::H1);
    publisher.publish(&json!({"channel": "channel:warm", "type": "chat"})).await;
    until_metric(run.addr, "herald_engine_channels", 0.0).await;
    let base = rss(&run);

    // As many channels a publish as a publish may name (`max_channels_per_publish`).
    let text = "x".repeat(200);
    for batch in 0..CHANNELS / 100 {
        let channels: Vec<String> = (0..100).map(|i| format!("channel:burst-{batch}-{i}")).collect();
        publisher.publish(&json!({"channels": channels, "type": "chat", "text": text})).await;
    }
    assert!(publisher.metric("herald_engine_channels").await >= CHANNELS as f64 / 2.0);
    let peak = rss(&run);
    let grown = peak.saturating_sub(base);
    assert!(grown > 4 << 20, "{CHANNELS} channels grew RSS by only {} KiB: nothing to give back", grown / 1024);

    // Their history expires, the sweep frees their logs, and the memory goes back.
    until_metric(run.addr, "herald_engine_channels", 0.0).await;
    until_returned(&run, "channel burst", base, grown).await;
}
