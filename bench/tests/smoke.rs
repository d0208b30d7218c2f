//! CI smoke of `herald-bench`: every scenario with a few subscribers for a few seconds,
//! through the real binary (coordinator, worker processes, HTTP/1.1 and h2c readers)
//! against a real Herald started in this process — and, for `cluster`, two Herald nodes on
//! a real `redis-server` of the test's own. Only correctness is asserted (all connected,
//! every event once and in order), never speed.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use herald::config::ApiKeyConfig;
use herald::{Config, Herald, Server};
use herald_bench::report::Outcome;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const KEY: &str = "bench-smoke-key-0123456789";
/// Longest any one bench run may take here.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A Herald node on a free loopback port, serving until dropped.
struct Node {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn node(redis_url: Option<String>) -> Node {
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_key_publish_rate: 1e9,
        api_key_publish_burst: 1e9,
        api_keys: vec![ApiKeyConfig {
            name: "bench".into(),
            key: KEY.into(),
            channels: vec!["*".into()],
            scopes: vec![herald::config::Scope::Publish],
        }],
        redis_url,
        ..Config::default()
    };
    serve(config).await
}

/// Runs `herald-bench <args> --json`; returns its exit code and its outcome.
async fn bench(args: Vec<String>) -> (i32, Outcome) {
    let shown = args.join(" ");
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald-bench"))
            .args(&args)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("herald-bench: {e}"))
    });
    let out = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("herald-bench {shown}: still running after {RUN_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let outcome: Outcome = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("herald-bench {shown}: no JSON outcome ({e}); stderr:\n{stderr}"));
    (out.status.code().unwrap_or(-1), outcome)
}

/// The arguments that point the bench at Herald: subscribe on `sub`, publish on `publ`.
fn herald_args(scenario: &str, sub: SocketAddr, publ: SocketAddr, channel: &str) -> Vec<String> {
    let key = format!("x-api-key: {KEY}");
    [
        scenario,
        "--sub-url",
        &format!("http://{sub}/api/events?channel={channel}"),
        "--pub-url",
        &format!("http://{publ}/api/channels/{channel}/events"),
        "--sub-header",
        &key,
        "--pub-header",
        &key,
        "--ready",
        "\"connected\"",
        "--server-pid",
        &std::process::id().to_string(),
        // Several workers even for a handful of subscribers: the multi-process path runs too.
        "--per-worker",
        "7",
        "--source-ips",
        "3",
        "--connect-timeout",
        "15",
        "--drain-timeout",
        "15",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|s| (*s).to_owned()));
    args
}

fn assert_correct(code: i32, o: &Outcome, subscribers: u64, events: u64, deliveries: u64) {
    let what = format!("{} {} ({:?})", o.scenario, o.proto, o.errors);
    assert_eq!((code, o.ok), (0, true), "{what}");
    assert_eq!((o.established, o.connect_failed), (subscribers, 0), "{what}");
    assert_eq!((o.events, o.expected_deliveries, o.delivered), (events, deliveries, deliveries), "{what}");
    assert_eq!((o.lost, o.duplicates, o.gaps, o.closed_early), (0, 0, 0, 0), "{what}");
}

async fn every_scenario(proto: &str) {
    let node = node(None).await;
    let a = node.addr;
    let room = "channel:smoke{run}";
    let p = ["--proto", proto, "--h2-streams", "4"];

    let (code, o) =
        bench(with(herald_args("idle", a, a, room), &[&p[..], &["-n", "30", "--hold", "0.2"]].concat())).await;
    assert_correct(code, &o, 30, 1, 30);
    let m = o.memory.as_ref().unwrap_or_else(|| panic!("idle reports memory"));
    assert!(m.after.rss_kb > 0 && m.before.rss_kb > 0, "{m:?}");

    let (code, o) = bench(with(
        herald_args("fanout", a, a, room),
        &[&p[..], &["-n", "20", "-m", "300", "--window", "16"]].concat(),
    ))
    .await;
    assert_correct(code, &o, 20, 300, 6000);
    assert_eq!(o.latency.samples, 6000);
    // The node runs in this process (with the other tests of this file): its writes carried
    // the 6,000 deliveries, at least one on each connection.
    let connections = if proto == "h2" { 5 } else { 20 };
    assert!(o.server_writes.is_some_and(|w| w >= connections), "{:?}", o.server_writes);

    let (code, o) =
        bench(with(herald_args("latency", a, a, room), &[&p[..], &["-n", "10", "-m", "20", "--rate", "100"]].concat()))
            .await;
    assert_correct(code, &o, 10, 20, 200);
    assert!(o.latency.p50_ms > 0.0 && o.latency.p99_ms >= o.latency.p50_ms, "{:?}", o.latency);

    let private = "user:smoke{run}-{i}";
    let (code, o) = bench(with(
        herald_args("private", a, a, private),
        &[&p[..], &["-n", "25", "-m", "400", "--publishers", "3"]].concat(),
    ))
    .await;
    assert_correct(code, &o, 25, 400, 400);
    assert_eq!(o.channels, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_over_http1_delivers_every_event_once_and_in_order() {
    every_scenario("h1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_over_h2c_delivers_every_event_once_and_in_order() {
    every_scenario("h2").await;
}

/// A node of `config`, serving until dropped.
async fn serve(config: Config) -> Node {
    let herald = Herald::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
    let server = Server::bind(herald).await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = server.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Node { addr, _stop: stop, task }
}

/// A node with `/api/ws` and Centrifugo's protocol on, and no authentication (dev mode), so
/// that a Centrifugo client may `connect` without a token.
async fn websocket_node() -> Node {
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_key_publish_rate: 1e9,
        api_key_publish_burst: 1e9,
        publish_rate: 1e9,
        publish_burst: 1e9,
        websocket: true,
        centrifugo: Some(herald::config::CentrifugoConfig::default()),
        ..Config::default()
    };
    serve(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_centrifugo_subscribers_get_every_event_once_and_in_order() {
    let node = websocket_node().await;
    let a = node.addr;
    let room = "channel:ws{run}";
    // The node has no API keys: the requests go without one.
    let args_for = |scenario: &str| {
        let key = format!("x-api-key: {KEY}");
        herald_args(scenario, a, a, room)
            .into_iter()
            .map(|arg| if arg == key { "x-no-key: 1".to_owned() } else { arg })
            .collect::<Vec<_>>()
    };
    let mut ws = args_for("fanout");
    ws[2] = format!("http://{a}/api/ws?channel={room}");
    let (code, o) = bench(with(ws, &["--proto", "ws", "-n", "12", "-m", "200", "--window", "16"])).await;
    assert_correct(code, &o, 12, 200, 2400);
    assert_eq!(o.proto, "ws");

    let mut cf = args_for("fanout");
    cf[2] = format!("http://{a}/connection/websocket");
    let cf = with(cf, &["--proto", "centrifugo", "--centrifugo-channel", room, "-n", "9", "-m", "150", "--ready", ""]);
    let (code, o) = bench(cf).await;
    assert_correct(code, &o, 9, 150, 1350);
    assert_eq!(o.proto, "centrifugo");

    let mut idle = args_for("idle");
    idle[2] = format!("http://{a}/connection/websocket");
    let idle = with(idle, &["--proto", "centrifugo", "--centrifugo-channel", room, "-n", "10", "--hold", "0.2"]);
    let (code, o) = bench(with(idle, &["--ready", ""])).await;
    assert_correct(code, &o, 10, 1, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_fanout_publishes_on_schedule_and_delivers_every_event() {
    let node = node(None).await;
    let args = herald_args("fanout", node.addr, node.addr, "channel:paced{run}");
    let (code, o) = bench(with(args, &["-n", "10", "-m", "40", "--pace", "200"])).await;
    assert_correct(code, &o, 10, 40, 400);
    assert_eq!(o.pace, Some(200.0), "the result says how it was published");
    // 40 events at 200 a second: the last goes out 39 ticks of 5 ms after the first, however
    // fast the node answers (an unpaced run of this size takes a few milliseconds).
    assert!(o.delivery_s >= 0.19, "published faster than the pace: {} s", o.delivery_s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_poll_without_sleeping_still_read_every_event() {
    // The polling task must leave the sockets their turn: if it starved them, nothing
    // would arrive and the run would fail at its drain timeout.
    let node = node(None).await;
    let args = herald_args("latency", node.addr, node.addr, "channel:spin{run}");
    let (code, o) = bench(with(args, &["-n", "10", "-m", "20", "--rate", "100", "--busy-poll"])).await;
    assert_correct(code, &o, 10, 20, 200);
    assert!(o.busy_poll, "the outcome says how it was measured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_events_published_in_batches_arrive_once_and_in_order() {
    let node = node(None).await;
    let args = herald_args("private", node.addr, node.addr, "user:batch{run}-{i}");
    // Batches of 16 (and a last, shorter one) to /api/publish; the body names each channel.
    let publish = format!("http://{}/api/publish", node.addr);
    let body = r#"{"channel":"user:batch{run}-{i}","type":"bench","seq":{seq},"ts":{ts}}"#;
    let more =
        ["-n", "12", "-m", "250", "--publishers", "2", "--batch", "16", "--pub-url", &publish, "--pub-body", body];
    let (code, o) = bench(with(args, &more)).await;
    assert_correct(code, &o, 12, 250, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_needs_the_channel_in_its_body() {
    let node = node(None).await;
    // The URL names the channel, the body does not: each batch item would have none.
    let args = with(herald_args("private", node.addr, node.addr, "user:b{run}-{i}"), &["--batch", "4"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("herald-bench: {e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pub-body"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_never_arrive_are_counted_lost_and_fail_the_run() {
    let node = node(None).await;
    let mut args = herald_args("fanout", node.addr, node.addr, "channel:heard{run}");
    // Publish somewhere else: the subscribers hear nothing.
    let publish_at = args.iter().position(|a| a == "--pub-url").map_or(0, |i| i + 1);
    args[publish_at] = format!("http://{}/api/channels/channel:elsewhere/events", node.addr);
    let args = with(args, &["-n", "5", "-m", "3", "--window", "0", "--drain-timeout", "1"]);
    let (code, o) = bench(args).await;
    assert_eq!((code, o.ok), (2, false));
    assert_eq!((o.established, o.events, o.expected_deliveries, o.delivered, o.lost), (5, 3, 15, 0, 15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_is_reported_as_not_established() {
    let node = node(None).await;
    let mut args = herald_args("fanout", node.addr, node.addr, "channel:x{run}");
    // Without the API key, `user:` channels are closed to subscribers (401).
    args[2] = format!("http://{}/api/events?channel=user:nobody", node.addr);
    let key_at = args.iter().position(|a| a == "--sub-header").map_or(0, |i| i + 1);
    args[key_at] = "x-ignored: 1".to_owned();
    let (code, o) = bench(with(args, &["-n", "3", "-m", "1"])).await;
    assert_eq!((code, o.ok, o.established, o.connect_failed), (2, false, 0, 3));
    assert!(o.errors.iter().any(|e| e.contains("status 401")), "{:?}", o.errors);
}

/// A `redis-server` on a free port, killed on drop.
struct Redis {
    port: u16,
    child: std::process::Child,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis() -> Redis {
    use std::io::BufRead as _;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"));
    let mut child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--logfile", ""])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server could not start (scripts/test installs it): {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("redis stdout"));
    let redis = Redis { port, child };
    let ready = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let ready = lines.by_ref().map_while(Result::ok).any(|l| l.contains("Ready to accept connections"));
            // Keep draining so redis never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            ready
        }),
    )
    .await;
    assert!(matches!(ready, Ok(Ok(true))), "redis-server did not get ready");
    redis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_events_published_on_one_node_reach_every_subscriber_on_the_other() {
    let redis = redis().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let (a, b) = (node(Some(url.clone())).await, node(Some(url)).await);
    for proto in ["h1", "h2"] {
        let args = herald_args("cluster", b.addr, a.addr, "channel:cluster{run}");
        let (code, o) = bench(with(args, &["--proto", proto, "-n", "12", "-m", "100", "--window", "10"])).await;
        assert_correct(code, &o, 12, 100, 1200);
    }
}
