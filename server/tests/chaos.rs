//! Chaos: exactly once and in order, under the faults an operator meets.
//!
//! Three `herald` processes share one `redis-server` with AOF. Streams follow one room
//! (`channel:sJ`), a room and their own user channel (`[channel:cR, user:uK]`), or two rooms
//! (`[channel:aJ, channel:bJ]`), over raw HTTP/1.1 with a small SSE parser that reconnects
//! as a browser's `EventSource` does (`retry:`, `Last-Event-ID`), each time to the next live
//! node. Publishers post continuously through every node. Then, one after another: a node is
//! killed (SIGKILL) and its clients resume elsewhere, Redis is killed and restarted, Redis
//! is frozen (SIGSTOP) and thawed, the nodes' pub/sub connections are killed, and the node
//! holding the most streams is drained (SIGTERM) while its clients resume elsewhere.
//!
//! The checker takes each channel's order from its Redis Stream and compares it with what
//! every stream received: an accepted event after the stream's first `connected` position
//! that never came is lost; an event twice is a duplicate; an event after a later one of the
//! same channel is an inversion; a stream that got nothing for `Plan::stall` after an event
//! of its channels was sent is stalled. A publish answered `503` (or not answered) may have
//! been stored: it may come, once.
//!
//! `cargo test --test chaos` runs the short form (about a minute); `HERALD_CHAOS=long` runs
//! the long one (2,000 streams, about five minutes, a drain of over 1,000 streams). See
//! docs/operations.md, "Failure modes".

mod support;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use support::raw::{Conn, Head, Message, SseParser};
use support::{RedisServer, Running, TempDir};

const NODES: usize = 3;
/// The longest any single wait of the run may take before it fails (a fault's recovery,
/// the last deliveries).
const LONG_WAIT: Duration = Duration::from_secs(180);

/// The size of a run.
struct Plan {
    name: &'static str,
    /// Rooms `channel:sJ` with `per_single` streams each.
    singles: usize,
    per_single: usize,
    /// Users `uK`, each with a stream on `[channel:c(K mod rooms), user:uK]`.
    users: usize,
    rooms: usize,
    /// Pairs `[channel:aJ, channel:bJ]` with `per_pair` streams each.
    pairs: usize,
    per_pair: usize,
    /// Publishes per second, over all publishers.
    rate: f64,
    publishers: usize,
    /// How long traffic runs before the first fault and after each.
    soak: Duration,
    /// `drain_reconnect_window` of the nodes.
    drain_window: &'static str,
    /// A stream that got nothing for this long after an event of its channels was sent is
    /// stalled. Generous: the machine is shared, and a thousand streams resuming at once on
    /// a freshly started node (a debug build) take a while.
    stall: Duration,
}

impl Plan {
    fn from_env() -> Self {
        match std::env::var("HERALD_CHAOS").as_deref() {
            Ok("long") => Self {
                name: "long",
                singles: 20,
                per_single: 15,
                users: 1400,
                rooms: 70,
                pairs: 20,
                per_pair: 15,
                rate: 270.0,
                publishers: 12,
                soak: Duration::from_secs(30),
                drain_window: "5s",
                stall: Duration::from_secs(90),
            },
            _ => Self {
                name: "short",
                singles: 8,
                per_single: 8,
                users: 120,
                rooms: 6,
                pairs: 4,
                per_pair: 10,
                rate: 150.0,
                publishers: 6,
                soak: Duration::from_secs(5),
                drain_window: "2s",
                stall: Duration::from_secs(30),
            },
        }
    }
}

/// Every channel of the run, by index.
struct Universe {
    names: Vec<String>,
    singles: usize,
    rooms: usize,
    users: usize,
    pairs: usize,
}

impl Universe {
    fn new(plan: &Plan) -> Self {
        let mut names = Vec::new();
        names.extend((0..plan.singles).map(|j| format!("channel:s{j}")));
        names.extend((0..plan.rooms).map(|r| format!("channel:c{r}")));
        names.extend((0..plan.users).map(|k| format!("user:u{k}")));
        names.extend((0..plan.pairs).flat_map(|j| [format!("channel:a{j}"), format!("channel:b{j}")]));
        Self { names, singles: plan.singles, rooms: plan.rooms, users: plan.users, pairs: plan.pairs }
    }

    fn single(&self, j: usize) -> usize {
        j
    }

    fn room_of(&self, user: usize) -> usize {
        self.singles + user % self.rooms
    }

    fn user(&self, k: usize) -> usize {
        self.singles + self.rooms + k
    }

    fn pair(&self, j: usize) -> [usize; 2] {
        let a = self.singles + self.rooms + self.users + 2 * j;
        [a, a + 1]
    }

    /// The channels of the next publish: a room of its own, a user's room and/or the user,
    /// or one or both rooms of a pair (both every 5th time, `b` alone 1 in 5, as in the
    /// issue's reproduction).
    fn pick(&self) -> Vec<usize> {
        let group = fastrand::f64();
        if group < 0.3 {
            vec![self.single(fastrand::usize(..self.singles))]
        } else if group < 0.75 {
            let k = fastrand::usize(..self.users);
            match fastrand::u8(..5) {
                0 => vec![self.room_of(k), self.user(k)],
                1 | 2 => vec![self.room_of(k)],
                _ => vec![self.user(k)],
            }
        } else {
            let [a, b] = self.pair(fastrand::usize(..self.pairs));
            match fastrand::u8(..5) {
                0 => vec![a, b],
                1 => vec![b],
                _ => vec![a],
            }
        }
    }

    /// The Redis Stream that holds a channel's history (docs/architecture.md, "Redis").
    fn stream_key(&self, channel: usize) -> String {
        let (ns, name) = self.names[channel].split_once(':').unwrap_or_else(|| panic!("channel name"));
        format!("realtime:{ns}:{{{name}}}:log")
    }
}

/// One subscriber: its channels, its token, and what it saw.
struct Subscriber {
    channels: Vec<usize>,
    query: String,
    token: String,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The id of the first `connected` event: the stream's subscription point.
    start: Option<String>,
    /// Every delivery of a published event: its publish number, when it came.
    deliveries: Vec<(u64, Instant)>,
    resets: Vec<String>,
    /// Events that are neither ours nor `connected` (none are expected).
    foreign: Vec<String>,
    /// Connections that resumed with `Last-Event-ID` and were answered 200.
    resumes: u64,
    /// Connections answered with another status, or that failed before an answer.
    refused: u64,
    /// The node the stream is open on now.
    open_on: Option<usize>,
    /// Each connection answered 200: its node, and when it opened and ended (seconds into
    /// the run), for the report of a failure.
    sessions: Vec<(usize, f64, f64)>,
}

/// When the run started, for times in reports.
static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn secs(at: Instant) -> f64 {
    at.saturating_duration_since(*T0.get_or_init(Instant::now)).as_secs_f64()
}

/// The nodes' addresses (`None` for a node that is down or taken out of rotation) and how
/// many streams each holds: the load balancer in front of them.
#[derive(Default)]
struct Nodes {
    addrs: Mutex<[Option<SocketAddr>; NODES]>,
    open: [AtomicUsize; NODES],
}

impl Nodes {
    fn addrs(&self) -> MutexGuard<'_, [Option<SocketAddr>; NODES]> {
        lock(&self.addrs)
    }

    fn set(&self, node: usize, addr: Option<SocketAddr>) {
        self.addrs()[node] = addr;
    }

    fn get(&self, node: usize) -> Option<(usize, SocketAddr)> {
        self.addrs()[node].map(|a| (node, a))
    }

    /// The first node in rotation after `node` (`node` itself last): how publishes spread.
    fn after(&self, node: usize) -> Option<(usize, SocketAddr)> {
        let addrs = self.addrs();
        (1..=NODES).map(|d| (node + d) % NODES).find_map(|i| addrs[i].map(|a| (i, a)))
    }

    /// The node in rotation with the fewest open streams, `avoid` only if it is the last
    /// one: where a reconnecting stream goes, so the streams of a node that went away land on
    /// a freshly restarted one first.
    fn least_loaded(&self, avoid: Option<usize>) -> Option<(usize, SocketAddr)> {
        let addrs = self.addrs();
        (0..NODES)
            .filter_map(|i| addrs[i].map(|a| (i, a)))
            .min_by_key(|&(i, _)| (Some(i) == avoid, self.open[i].load(Ordering::SeqCst)))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every publish sent, by its number (`"n"` in the event).
#[derive(Default)]
struct Ledger {
    sent: Mutex<HashMap<u64, Sent>>,
    /// Publishes never sent: no node took the connection.
    not_sent: AtomicU64,
    /// Answers no publish should get (a 4xx, a malformed answer).
    unexpected: Mutex<Vec<String>>,
}

struct Sent {
    channels: Vec<usize>,
    /// `None`: accepted (200 with an id). `Some(why)`: maybe stored (503, or no answer).
    maybe: Option<String>,
    /// When it was sent: nothing can deliver it earlier.
    at: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_get_every_accepted_event_once_and_in_order_through_node_kills_redis_faults_and_drains() {
    let plan = Plan::from_env();
    let started = *T0.get_or_init(Instant::now);
    let mut redis = RedisServer::start().await;
    let tmp = TempDir::new();
    let config = tmp.path.join("herald.toml");
    std::fs::write(&config, node_config(&plan)).unwrap_or_else(|e| panic!("config: {e}"));
    let logs = std::env::var_os("HERALD_CHAOS_LOGS").map_or_else(|| tmp.path.clone(), Into::into);
    let nodes = Arc::new(Nodes::default());
    let mut fleet =
        Fleet { procs: Default::default(), nodes: Arc::clone(&nodes), config, redis_url: redis.url(), logs };
    for i in 0..NODES {
        fleet.start(i).await;
    }

    let universe = Arc::new(Universe::new(&plan));
    let subscribers = Arc::new(subscribers(&plan, &universe));
    let mut followers = Vec::new();
    for (i, s) in subscribers.iter().enumerate() {
        // Pages open over a few seconds, not all in the same millisecond.
        let arrival = Duration::from_millis(2 * i as u64);
        followers.push(tokio::spawn(follow(Arc::clone(s), Arc::clone(&nodes), i % NODES, arrival)));
    }
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next_n = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..plan.publishers {
        publishers.push(tokio::spawn(publisher(
            p,
            plan.publishers as f64 / plan.rate,
            Arc::clone(&universe),
            Arc::clone(&nodes),
            Arc::clone(&ledger),
            Arc::clone(&next_n),
            Arc::clone(&stop),
        )));
    }
    let say = |what: &str| println!("chaos[{}] {:>6.1}s {what}", plan.name, started.elapsed().as_secs_f64());
    say(&format!(
        "{} streams on {} channels, {} publishes/s over {} publishers",
        subscribers.len(),
        universe.names.len(),
        plan.rate,
        plan.publishers
    ));
    // When each fault began, to tell which one a failure followed.
    let mut phases = vec![(Instant::now(), "start")];
    all_open(&subscribers, None).await;
    say("every stream is open");
    tokio::time::sleep(plan.soak).await;

    // 1. A node dies without a word; its clients resume on the next node.
    let victim = 0;
    let on_victim = nodes.open[victim].load(Ordering::SeqCst);
    phases.push((Instant::now(), "node SIGKILL"));
    if let Some(mut running) = fleet.take(victim) {
        let _ = running.child.kill();
        let _ = running.child.wait();
    }
    say(&format!("SIGKILL node {victim} ({on_victim} streams)"));
    all_open(&subscribers, Some(victim)).await;
    say("its streams resumed on other nodes");
    fleet.start(victim).await;
    tokio::time::sleep(plan.soak).await;

    // 2. Redis dies and comes back with its append-only file.
    phases.push((Instant::now(), "Redis restart"));
    redis.restart().await;
    say("Redis killed and restarted");
    all_ready(&nodes).await;
    say("every node is ready again");
    tokio::time::sleep(plan.soak).await;

    // 3. Redis hangs (the fault's length is the point here, not a wait for something).
    phases.push((Instant::now(), "Redis freeze"));
    redis.signal("STOP");
    say("Redis frozen (SIGSTOP)");
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.signal("CONT");
    say("Redis thawed (SIGCONT)");
    all_ready(&nodes).await;
    tokio::time::sleep(plan.soak).await;

    // 4. Every node's pub/sub connection is cut; they reconnect and catch up.
    phases.push((Instant::now(), "pub/sub kill"));
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    say(&format!("CLIENT KILL TYPE pubsub: {}", killed.trim()));
    tokio::time::sleep(plan.soak).await;

    // 5. The node with the most streams drains (SIGTERM); its clients resume elsewhere.
    let busiest = (0..NODES).max_by_key(|&i| nodes.open[i].load(Ordering::SeqCst)).unwrap_or(0);
    let on_busiest = nodes.open[busiest].load(Ordering::SeqCst);
    phases.push((Instant::now(), "drain"));
    if let Some(running) = fleet.take(busiest) {
        sigterm_and_wait(running).await;
    }
    say(&format!("node {busiest} drained (SIGTERM) with {on_busiest} streams, and exited"));
    all_open(&subscribers, Some(busiest)).await;
    say("its streams resumed on other nodes");
    fleet.start(busiest).await;
    tokio::time::sleep(plan.soak).await;

    // The end: publishing stops, and every stream gets what it is owed.
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        let _ = tokio::time::timeout(LONG_WAIT, p).await;
    }
    let published = next_n.load(Ordering::SeqCst);
    say(&format!("publishing stopped after {published} publishes"));
    let channel_logs = read_channel_logs(&redis, &universe).await;
    let owed = owed(&subscribers, &channel_logs, &ledger);
    let mut missing = usize::MAX;
    let mut progress = Instant::now();
    while progress.elapsed() < LONG_WAIT {
        let now_missing = missing_deliveries(&subscribers, &owed);
        if now_missing == 0 {
            break;
        }
        if now_missing < missing {
            missing = now_missing;
            progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = Instant::now();
    for f in &followers {
        f.abort();
    }
    say("checking");

    let report = check(&subscribers, &channel_logs, &owed, &ledger, &phases, plan.stall, end);
    println!("chaos[{}] {:>6.1}s\n{}", plan.name, started.elapsed().as_secs_f64(), report.render());
    assert!(report.failures().is_empty(), "chaos run failed: {}\n{}", report.failures().join(", "), report.render());
}

/// The nodes' configuration: authentication, history that outlasts the run, quick
/// reconnects, rate limits and presence out of the way.
fn node_config(plan: &Plan) -> String {
    format!(
        r#"retry = "500ms"
heartbeat_interval = "5s"
history_size = 1000000
history_ttl = "1h"
drain_timeout = "10s"
drain_reconnect_window = "{window}"
max_connections_per_user = 100
api_key_publish_rate = 1000000.0
api_key_publish_burst = 1000000.0

[auth]
jwt_secret = "{secret}"

[[api_keys]]
name = "chaos"
key = "{key}"

[namespaces.channel]
presence = false
"#,
        window = plan.drain_window,
        secret = support::SECRET,
        key = support::API_KEY,
    )
}

/// The `herald` processes, and the rotation in front of them.
struct Fleet {
    procs: [Option<Running>; NODES],
    nodes: Arc<Nodes>,
    config: std::path::PathBuf,
    redis_url: String,
    /// Where each node's log goes (`node<i>.log`, appended across restarts).
    logs: std::path::PathBuf,
}

impl Fleet {
    /// Starts `node` (again), on a new port, and puts it in rotation.
    async fn start(&mut self, node: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("node{node}.log")))
            .unwrap_or_else(|e| panic!("node log: {e}"));
        let mut cmd = support::herald();
        cmd.arg("serve").arg("--config").arg(&self.config);
        cmd.args(["--listen", "127.0.0.1:0", "--redis-url", &self.redis_url, "--node-id", &format!("chaos-{node}")]);
        cmd.stderr(log);
        let running = support::start_with_stderr(cmd).await;
        self.nodes.set(node, Some(running.addr));
        self.procs[node] = Some(running);
    }

    /// Takes `node` out of rotation and hands over its process.
    fn take(&mut self, node: usize) -> Option<Running> {
        self.nodes.set(node, None);
        self.procs[node].take()
    }
}

fn subscribers(plan: &Plan, u: &Universe) -> Vec<Arc<Subscriber>> {
    let mut all = Vec::new();
    let mut add = |channels: Vec<usize>, user: String| {
        let query = channels.iter().map(|&c| format!("channel={}", u.names[c])).collect::<Vec<_>>().join("&");
        all.push(Arc::new(Subscriber { channels, query, token: support::token(&user), seen: Mutex::default() }));
    };
    for j in 0..plan.singles {
        for m in 0..plan.per_single {
            add(vec![u.single(j)], format!("s{j}-{m}"));
        }
    }
    for k in 0..plan.users {
        add(vec![u.room_of(k), u.user(k)], format!("u{k}"));
    }
    for j in 0..plan.pairs {
        for m in 0..plan.per_pair {
            add(u.pair(j).to_vec(), format!("p{j}-{m}"));
        }
    }
    all
}

/// Polls `waiting` (how many things are not there yet) until it is 0, failing after
/// [`LONG_WAIT`].
async fn wait_for(what: &str, mut waiting: impl AsyncFnMut() -> usize) {
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        let left = waiting().await;
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {left} still waiting after {LONG_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every stream is open, on another node than `not_on`.
async fn all_open(subscribers: &[Arc<Subscriber>], not_on: Option<usize>) {
    wait_for("streams to open", async || {
        subscribers
            .iter()
            .filter(|s| {
                let open = lock(&s.seen).open_on;
                open.is_none() || open == not_on
            })
            .count()
    })
    .await;
}

/// Waits until every node in rotation answers `/readyz` with 200.
async fn all_ready(nodes: &Nodes) {
    wait_for("nodes to be ready", async || {
        let addrs: Vec<SocketAddr> = nodes.addrs().iter().flatten().copied().collect();
        let mut unready = 0;
        for addr in addrs {
            unready += usize::from(get_status(addr, "/readyz").await != Some(200));
        }
        unready
    })
    .await;
}

async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let ask = async {
        let mut conn = Conn::open(addr).await.ok()?;
        conn.send(&format!("GET {path} HTTP/1.1\r\nhost: chaos\r\nconnection: close"), b"").await.ok()?;
        let mut head = conn.head().await.ok()?;
        conn.body(&mut head).await.ok()?;
        Some(head.status)
    };
    tokio::time::timeout(Duration::from_secs(5), ask).await.ok().flatten()
}

async fn sigterm_and_wait(mut running: Running) {
    let pid = running.child.id().to_string();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    let exited = tokio::time::timeout(
        LONG_WAIT,
        tokio::task::spawn_blocking(move || {
            let status = running.child.wait();
            (running, status)
        }),
    )
    .await;
    match exited {
        Ok(Ok((_, Ok(status)))) => assert!(status.success(), "a drained node exits 0, not {status}"),
        _ => panic!("the drained node did not exit within {LONG_WAIT:?}"),
    }
}

/// One stream as a browser's `EventSource` follows it: on any end or failure, wait the
/// last `retry:` and reconnect with `Last-Event-ID`, to the least loaded node. After a
/// refusal it backs off as the TypeScript client does (doubling, full jitter, at most 10 s)
/// and tries another node first, so a struggling node is not hammered by its own refusals.
async fn follow(sub: Arc<Subscriber>, nodes: Arc<Nodes>, first: usize, arrival: Duration) {
    tokio::time::sleep(arrival).await;
    let mut parser = SseParser::default();
    let mut target = nodes.get(first);
    let mut refusals = 0u32;
    loop {
        let mut refused_by = None;
        if let Some((node, addr)) = target {
            if session(&sub, &mut parser, &nodes, node, addr).await {
                refusals = 0;
            } else {
                refusals += 1;
                refused_by = Some(node);
            }
        }
        let retry = parser.retry.unwrap_or(Duration::from_secs(3));
        let wait = if refusals == 0 {
            retry
        } else {
            (retry * 2u32.pow(refusals.min(5))).min(Duration::from_secs(10)).mul_f64(fastrand::f64())
        };
        tokio::time::sleep(wait).await;
        target = nodes.least_loaded(refused_by);
    }
}

/// One connection of a stream, until it ends or fails; false if it was not answered 200.
async fn session(sub: &Subscriber, parser: &mut SseParser, nodes: &Nodes, node: usize, addr: SocketAddr) -> bool {
    let resuming = !parser.last_event_id.is_empty();
    let mut request = format!(
        "GET /api/events?{} HTTP/1.1\r\nhost: chaos\r\naccept: text/event-stream\r\nauthorization: Bearer {}",
        sub.query, sub.token
    );
    if resuming {
        let _ = write!(request, "\r\nlast-event-id: {}", parser.last_event_id);
    }
    // A browser waits for the answer as long as the connection lives; a node busy with a
    // thousand resumes may take a while.
    let opened = tokio::time::timeout(Duration::from_secs(60), async {
        let mut conn = Conn::open(addr).await?;
        conn.send(&request, b"").await?;
        let head = conn.head().await?;
        Ok::<_, std::io::Error>((conn, head))
    })
    .await;
    let Ok(Ok((mut conn, mut head))) = opened else {
        lock(&sub.seen).refused += 1;
        return false;
    };
    if head.status != 200 {
        lock(&sub.seen).refused += 1;
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.body(&mut head)).await;
        return false;
    }
    let opened_at = secs(Instant::now());
    {
        let mut seen = lock(&sub.seen);
        seen.open_on = Some(node);
        seen.resumes += u64::from(resuming);
    }
    nodes.open[node].fetch_add(1, Ordering::SeqCst);
    let mut messages = Vec::new();
    // Heartbeats come every 5 s; a stream silent for much longer is dead.
    while let Ok(Ok(Some(bytes))) = tokio::time::timeout(Duration::from_secs(30), conn.body_part(&mut head)).await {
        parser.feed(&bytes, &mut messages);
        if !messages.is_empty() {
            record(sub, &mut messages);
        }
    }
    nodes.open[node].fetch_sub(1, Ordering::SeqCst);
    let mut seen = lock(&sub.seen);
    seen.open_on = None;
    seen.sessions.push((node, opened_at, secs(Instant::now())));
    true
}

#[derive(Deserialize)]
struct EventData {
    #[serde(rename = "type")]
    kind: String,
    n: Option<u64>,
}

fn record(sub: &Subscriber, messages: &mut Vec<Message>) {
    let now = Instant::now();
    let mut seen = lock(&sub.seen);
    for m in messages.drain(..) {
        match serde_json::from_str::<EventData>(&m.data) {
            Ok(EventData { n: Some(n), .. }) => seen.deliveries.push((n, now)),
            Ok(EventData { kind, .. }) if kind == "connected" => {
                if seen.start.is_none() {
                    seen.start = Some(m.id);
                }
            }
            Ok(EventData { kind, .. }) if kind == "reset" => seen.resets.push(m.data),
            _ => seen.foreign.push(m.data),
        }
    }
}

/// Publishes at `every` per event, each time through the next node in rotation, on one
/// keep-alive connection per node, and records each outcome.
async fn publisher(
    me: usize,
    every: f64,
    universe: Arc<Universe>,
    nodes: Arc<Nodes>,
    ledger: Arc<Ledger>,
    next_n: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut conns: [Option<(SocketAddr, Conn)>; NODES] = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut node = me % NODES;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let Some((next, addr)) = nodes.after(node) else { continue };
        node = next;
        let n = next_n.fetch_add(1, Ordering::SeqCst);
        let at = Instant::now();
        let channels = universe.pick();
        let names: Vec<&str> = channels.iter().map(|&c| universe.names[c].as_str()).collect();
        let body = match names.as_slice() {
            [one] => serde_json::json!({"channel": one, "type": "update", "n": n}),
            many => serde_json::json!({"channels": many, "type": "update", "n": n}),
        };
        let outcome = publish_once(&mut conns[node], addr, &body.to_string()).await;
        let maybe = match outcome {
            Outcome::Accepted => None,
            Outcome::Maybe(why) => Some(why),
            Outcome::NotSent => {
                ledger.not_sent.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Outcome::Unexpected(what) => {
                lock(&ledger.unexpected).push(what);
                continue;
            }
        };
        lock(&ledger.sent).insert(n, Sent { channels, maybe, at });
    }
}

enum Outcome {
    Accepted,
    /// Answered 503, or sent and never answered: it may have been stored.
    Maybe(String),
    NotSent,
    Unexpected(String),
}

async fn publish_once(slot: &mut Option<(SocketAddr, Conn)>, addr: SocketAddr, body: &str) -> Outcome {
    if slot.as_ref().is_none_or(|(a, _)| *a != addr) {
        match tokio::time::timeout(Duration::from_secs(5), Conn::open(addr)).await {
            Ok(Ok(conn)) => *slot = Some((addr, conn)),
            _ => {
                *slot = None;
                return Outcome::NotSent;
            }
        }
    }
    let Some((_, conn)) = slot.as_mut() else { return Outcome::NotSent };
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nhost: chaos\r\nx-api-key: {}\r\ncontent-type: application/json",
        support::API_KEY
    );
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        conn.send(&head, body.as_bytes()).await?;
        let mut head: Head = conn.head().await?;
        let body = conn.body(&mut head).await?;
        Ok::<_, std::io::Error>((head.status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await;
    match answer {
        Ok(Ok((200, text))) if text.contains("\"id\"") => Outcome::Accepted,
        Ok(Ok((503, text))) => Outcome::Maybe(format!("503 {text}")),
        Ok(Ok((status, text))) => {
            *slot = None;
            Outcome::Unexpected(format!("{status} {text}"))
        }
        Ok(Err(e)) => {
            *slot = None;
            Outcome::Maybe(format!("no answer: {e}"))
        }
        Err(_) => {
            *slot = None;
            Outcome::Maybe("no answer within 15 s".to_owned())
        }
    }
}

/// A place in a channel's log, as Redis Stream ids order them.
type Pos = (u64, u64);

/// One channel's history as Redis holds it.
#[derive(Default)]
struct ChannelLog {
    /// Publish number → position, for every event in the Stream.
    pos: HashMap<u64, Pos>,
    /// In position order.
    order: Vec<(Pos, u64)>,
    /// Entries whose publish number was already in the Stream.
    doubled: usize,
}

async fn read_channel_logs(redis: &RedisServer, universe: &Universe) -> Vec<ChannelLog> {
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("redis url: {e}"));
    let mut conn = client.get_multiplexed_async_connection().await.unwrap_or_else(|e| panic!("redis: {e}"));
    let mut logs = Vec::new();
    for c in 0..universe.names.len() {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(universe.stream_key(c))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("XRANGE: {e}"));
        let mut log = ChannelLog::default();
        for entry in reply.ids {
            let pos = parse_stream_id(&entry.id).unwrap_or_else(|| panic!("stream id {}", entry.id));
            let body: String = entry.get("b").unwrap_or_else(|| panic!("entry {} has no body", entry.id));
            // The engine stores the event's fields without the braces (each channel's frame
            // adds its own `id` and `channel` around them).
            let json = if body.starts_with('{') { body } else { format!("{{{body}}}") };
            let data: EventData = serde_json::from_str(&json).unwrap_or_else(|e| panic!("body {json}: {e}"));
            let Some(n) = data.n else { continue };
            if log.pos.insert(n, pos).is_some() {
                log.doubled += 1;
            }
            log.order.push((pos, n));
        }
        logs.push(log);
    }
    logs
}

fn parse_stream_id(id: &str) -> Option<Pos> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// A position in an SSE id: base-36 milliseconds, then `-` and a base-36 sequence if not 0.
fn parse_compact(pos: &str) -> Option<Pos> {
    let b36 = |s: &str| u64::from_str_radix(s, 36).ok();
    match pos.split_once('-') {
        Some((ms, seq)) => Some((b36(ms)?, b36(seq)?)),
        None => Some((b36(pos)?, 0)),
    }
}

/// A stream's subscription point: its first `connected` id, `tag:pos,...` in the order of
/// its channels.
fn start_positions(id: &str, channels: usize) -> Option<Vec<Pos>> {
    let positions: Option<Vec<Pos>> =
        id.split(',').map(|entry| entry.split_once(':').and_then(|(_, pos)| parse_compact(pos))).collect();
    positions.filter(|p| p.len() == channels)
}

/// What each stream is owed: the accepted events of its channels after its subscription
/// point. `None` for a stream that never connected.
fn owed(subscribers: &[Arc<Subscriber>], logs: &[ChannelLog], ledger: &Ledger) -> Vec<Option<HashSet<u64>>> {
    let sent = lock(&ledger.sent);
    subscribers
        .iter()
        .map(|s| {
            let start = lock(&s.seen).start.clone()?;
            let start = start_positions(&start, s.channels.len())?;
            let mut owed = HashSet::new();
            for (&c, from) in s.channels.iter().zip(&start) {
                let after = logs[c].order.partition_point(|(pos, _)| pos <= from);
                owed.extend(
                    logs[c].order[after..]
                        .iter()
                        .map(|&(_, n)| n)
                        .filter(|n| sent.get(n).is_some_and(|e| e.maybe.is_none())),
                );
            }
            Some(owed)
        })
        .collect()
}

fn missing_deliveries(subscribers: &[Arc<Subscriber>], owed: &[Option<HashSet<u64>>]) -> usize {
    subscribers
        .iter()
        .zip(owed)
        .map(|(s, owed)| {
            let Some(owed) = owed else { return 0 };
            let got: HashSet<u64> = lock(&s.seen).deliveries.iter().map(|&(n, _)| n).collect();
            owed.iter().filter(|n| !got.contains(n)).count()
        })
        .sum()
}

#[derive(Default)]
struct Report {
    streams: usize,
    accepted: usize,
    maybe_stored: usize,
    maybe_found_stored: usize,
    not_sent: u64,
    expected: usize,
    delivered: usize,
    /// Deliveries of maybe-stored events (first ones; a repeat counts as a duplicate).
    maybe_delivered: usize,
    lost: usize,
    lost_streams: usize,
    duplicates: usize,
    duplicate_streams: usize,
    inversions: usize,
    inversion_streams: usize,
    /// Delivered, but not on the stream's channels after its subscription point, or never
    /// published.
    unexpected: usize,
    resets: usize,
    foreign: usize,
    stalled_streams: usize,
    longest_wait: Duration,
    resumes: u64,
    refused_connections: u64,
    never_connected: usize,
    /// Accepted events missing from one of their channels' Streams.
    unstored: usize,
    /// Events stored twice in one channel's Stream.
    doubled: usize,
    unexpected_answers: Vec<String>,
    /// Per fault: duplicates and inversions delivered between its start and the next one's.
    by_phase: Vec<(&'static str, usize, usize)>,
    samples: Vec<String>,
}

fn check(
    subscribers: &[Arc<Subscriber>],
    logs: &[ChannelLog],
    owed: &[Option<HashSet<u64>>],
    ledger: &Ledger,
    phases: &[(Instant, &'static str)],
    stall: Duration,
    end: Instant,
) -> Report {
    let sent = lock(&ledger.sent);
    let mut r = Report {
        streams: subscribers.len(),
        not_sent: ledger.not_sent.load(Ordering::SeqCst),
        unexpected_answers: lock(&ledger.unexpected).clone(),
        doubled: logs.iter().map(|l| l.doubled).sum(),
        by_phase: phases.iter().map(|&(_, name)| (name, 0, 0)).collect(),
        ..Report::default()
    };
    let phase_of = |at: Instant| phases.partition_point(|&(start, _)| start <= at).saturating_sub(1);
    for (&n, e) in sent.iter() {
        let stored = e.channels.iter().filter(|&&c| logs[c].pos.contains_key(&n)).count();
        if e.maybe.is_some() {
            r.maybe_stored += 1;
            r.maybe_found_stored += usize::from(stored > 0);
        } else {
            r.accepted += 1;
            r.unstored += e.channels.len() - stored;
        }
    }
    for (i, (s, owed)) in subscribers.iter().zip(owed).enumerate() {
        let seen = lock(&s.seen);
        r.resumes += seen.resumes;
        r.refused_connections += seen.refused;
        r.resets += seen.resets.len();
        r.foreign += seen.foreign.len();
        r.delivered += seen.deliveries.len();
        let (Some(owed), Some(start)) =
            (owed, seen.start.as_deref().and_then(|id| start_positions(id, s.channels.len())))
        else {
            r.never_connected += 1;
            continue;
        };
        r.expected += owed.len();

        let mut times: HashMap<u64, Instant> = HashMap::new();
        let (mut duplicates, mut unexpected) = (0, 0);
        for &(n, at) in &seen.deliveries {
            if times.insert(n, at).is_some() {
                duplicates += 1;
                r.by_phase[phase_of(at)].1 += 1;
                continue;
            }
            r.maybe_delivered += usize::from(sent.get(&n).is_some_and(|e| e.maybe.is_some()));
            let belongs = s.channels.iter().zip(&start).any(|(&c, from)| logs[c].pos.get(&n).is_some_and(|p| p > from));
            if !belongs {
                unexpected += 1;
            }
        }
        // Inversions: per channel, first deliveries only (a repeat is a duplicate), each
        // must come after every earlier-delivered event of that channel.
        let mut inversions = 0;
        for &c in &s.channels {
            let mut seen_here = HashSet::new();
            let mut highest: Option<Pos> = None;
            for &(n, at) in &seen.deliveries {
                let Some(&pos) = logs[c].pos.get(&n) else { continue };
                if !seen_here.insert(n) {
                    continue;
                }
                if highest.is_some_and(|h| pos < h) {
                    inversions += 1;
                    r.by_phase[phase_of(at)].2 += 1;
                    if r.samples.len() < 10 {
                        r.samples.push(format!(
                            "inversion in stream {i} ({}, start {}): n={n} at {pos:?} after {highest:?}",
                            s.query,
                            seen.start.as_deref().unwrap_or_default(),
                        ));
                    }
                } else {
                    highest = Some(pos);
                }
            }
        }
        let lost: Vec<u64> = owed.iter().copied().filter(|n| !times.contains_key(n)).collect();
        if let Some(n) = lost.first().filter(|_| r.samples.len() < 10) {
            let at = sent.get(n).map_or(0.0, |e| secs(e.at));
            let pos: Vec<_> = s.channels.iter().filter_map(|&c| logs[c].pos.get(n)).collect();
            r.samples.push(format!(
                "lost in stream {i} ({}): n={n} at {pos:?} sent at {at:.1}s ({} lost in this stream; start {}; sessions {:?})",
                s.query,
                lost.len(),
                seen.start.as_deref().unwrap_or_default(),
                seen.sessions
            ));
        }
        // Stalls: after each owed event was sent, the stream must get something within
        // `stall` (the run's end counts as "not yet").
        let arrivals: Vec<Instant> = seen.deliveries.iter().map(|&(_, at)| at).collect();
        let mut stalled = false;
        for n in owed {
            let Some(since) = sent.get(n).map(|e| e.at) else { continue };
            let next = arrivals.partition_point(|&at| at < since);
            let waited = arrivals.get(next).map_or(end - since, |&at| at - since);
            r.longest_wait = r.longest_wait.max(waited);
            stalled |= waited > stall;
        }
        r.stalled_streams += usize::from(stalled);
        r.lost += lost.len();
        r.lost_streams += usize::from(!lost.is_empty());
        r.duplicates += duplicates;
        r.duplicate_streams += usize::from(duplicates > 0);
        r.inversions += inversions;
        r.inversion_streams += usize::from(inversions > 0);
        r.unexpected += unexpected;
    }
    r
}

impl Report {
    fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let mut fail = |bad: bool, what: String| {
            if bad {
                f.push(what);
            }
        };
        fail(self.lost > 0, format!("{} lost deliveries", self.lost));
        fail(self.duplicates > 0, format!("{} duplicate deliveries", self.duplicates));
        fail(self.inversions > 0, format!("{} per-channel inversions", self.inversions));
        fail(self.stalled_streams > 0, format!("{} stalled streams", self.stalled_streams));
        fail(self.unexpected > 0, format!("{} unexpected deliveries", self.unexpected));
        fail(self.resets > 0, format!("{} resets", self.resets));
        fail(self.foreign > 0, format!("{} foreign events", self.foreign));
        fail(self.never_connected > 0, format!("{} streams never connected", self.never_connected));
        fail(self.unstored > 0, format!("{} accepted events missing from a Stream", self.unstored));
        fail(self.doubled > 0, format!("{} events stored twice", self.doubled));
        fail(!self.unexpected_answers.is_empty(), format!("unexpected publish answers: {:?}", self.unexpected_answers));
        fail(self.accepted == 0 || self.expected == 0, "nothing was published".to_owned());
        f
    }

    fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "  streams               {}", self.streams);
        let _ = writeln!(s, "  accepted publishes    {}", self.accepted);
        let _ = writeln!(
            s,
            "  maybe stored          {} (503 or no answer; {} of them stored)",
            self.maybe_stored, self.maybe_found_stored
        );
        let _ = writeln!(s, "  not sent              {} (no node took the connection)", self.not_sent);
        let _ = writeln!(s, "  expected deliveries   {}", self.expected);
        let _ =
            writeln!(s, "  delivered             {} ({} of maybe-stored events)", self.delivered, self.maybe_delivered);
        let _ = writeln!(s, "  lost                  {} (in {} streams)", self.lost, self.lost_streams);
        let _ = writeln!(s, "  duplicates            {} (in {} streams)", self.duplicates, self.duplicate_streams);
        let _ = writeln!(s, "  inversions            {} (in {} streams)", self.inversions, self.inversion_streams);
        let _ = writeln!(s, "  unexpected            {}", self.unexpected);
        let _ = writeln!(s, "  resets                {}", self.resets);
        let _ =
            writeln!(s, "  stalled streams       {} (longest wait {:.1?})", self.stalled_streams, self.longest_wait);
        let _ = writeln!(s, "  resumes               {}", self.resumes);
        let _ = writeln!(s, "  refused connections   {}", self.refused_connections);
        for (phase, duplicates, inversions) in &self.by_phase {
            let _ = writeln!(s, "  after {phase:<20} {duplicates} duplicates, {inversions} inversions");
        }
        for sample in &self.samples {
            let _ = writeln!(s, "  e.g. {sample}");
        }
        s
    }
}

#[test]
fn the_sse_parser_reads_ids_retry_comments_and_split_lines_as_a_browser_does() {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    p.feed(b"retry: 1500\r\n: heartbeat\n\nid: a\ndata: {\"x\"", &mut out);
    assert!(out.is_empty());
    p.feed(b":1}\ndata: two\n\nid: b\n\nevent: chat\ndata:3\n\n", &mut out);
    let got: Vec<_> = out.iter().map(|m| (m.event.as_str(), m.data.as_str(), m.id.as_str())).collect();
    assert_eq!(got, [("message", "{\"x\":1}\ntwo", "a"), ("chat", "3", "b")]);
    assert_eq!((p.retry, p.last_event_id.as_str()), (Some(Duration::from_millis(1500)), "b"));
}

#[test]
fn a_connected_id_gives_a_position_per_channel() {
    assert_eq!(
        start_positions("abc:mwrt3kh0-1,x1z:0", 2),
        Some(vec![(u64::from_str_radix("mwrt3kh0", 36).unwrap_or(0), 1), (0, 0)])
    );
    assert_eq!(start_positions("abc:mwrt3kh0", 2), None);
}
