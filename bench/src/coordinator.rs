//! The coordinator: plans a run, starts worker processes (re-executing this binary as
//! `herald-bench worker`) that hold the subscribers, publishes, and gathers the workers'
//! reports, the server's CPU and memory from `/proc`, and its own CPU into an [`Outcome`].
//!
//! Publishing happens here, over keep-alive HTTP/1.1 connections. Every wait has a
//! deadline: connecting, the publish window, draining, and the run as a whole.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::spawn_local;

use crate::cli::{MAX_EVENTS, MAX_SUBSCRIBERS, RunArgs, Scenario};
use crate::hist::Hist;
use crate::net::{Publisher, now_us, source_ip};
use crate::nodes::{self, Snapshot};
use crate::procfs::{cpu_all, kernel_slab_kb, memory_all, steal_s, writes_all};
use crate::protocol::{FromWorker, ToWorker, WorkerPlan, WorkerReport};
use crate::report::{Latency, MemoryReport, Outcome};
use crate::target::Target;
use crate::template::{Template, Vars};

/// Limit for one publish request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a scenario in a fresh single-threaded runtime.
pub fn main(scenario: Scenario, args: RunArgs) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let limit = Duration::from_secs_f64(args.max_duration);
    local.block_on(&rt, async {
        match tokio::time::timeout(limit, run(scenario, &args)).await {
            Ok(r) => r,
            Err(_) => bail!("the run took longer than --max-duration {} s", args.max_duration),
        }
    })
}

/// What the workers have said so far.
#[derive(Default)]
struct Board {
    connected: Vec<Option<(u64, u64, Vec<String>)>>,
    delivered: Vec<u64>,
    floor: Vec<u64>,
    reports: Vec<Option<WorkerReport>>,
    /// Workers whose stdout ended.
    gone: Vec<bool>,
}

impl Board {
    fn delivered(&self) -> u64 {
        self.delivered.iter().sum()
    }

    fn floor(&self) -> u64 {
        self.floor.iter().copied().min().unwrap_or(0)
    }

    fn all_connected(&self) -> bool {
        self.connected.iter().zip(&self.gone).all(|(c, g)| c.is_some() || *g)
    }

    fn all_reported(&self) -> bool {
        self.reports.iter().zip(&self.gone).all(|(r, g)| r.is_some() || *g)
    }
}

struct Workers {
    children: Vec<Child>,
    inputs: Vec<pipe::Sender>,
    board: Rc<RefCell<Board>>,
    changed: Rc<Notify>,
}

impl Workers {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    async fn send(&mut self, msg: &ToWorker) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        for input in &mut self.inputs {
            // A worker that died shows up as `gone`; its pipe error is not the story.
            let _ = input.write_all(&line).await;
        }
        Ok(())
    }

    /// Waits until `cond` holds or `limit` passes; returns whether it holds.
    async fn wait(&self, limit: Duration, cond: impl Fn(&Board) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.board.borrow()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(&self.board.borrow());
            }
        }
    }

    /// Closes the workers' stdin (they exit) and reaps them, killing any that linger.
    async fn stop(mut self) {
        self.inputs.clear();
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    }
}

async fn spawn_workers(plans: Vec<WorkerPlan>) -> anyhow::Result<Workers> {
    let exe = std::env::current_exe().context("finding this executable to start workers")?;
    let n = plans.len();
    let board = Rc::new(RefCell::new(Board {
        connected: vec![None; n],
        delivered: vec![0; n],
        floor: vec![0; n],
        reports: (0..n).map(|_| None).collect(),
        gone: vec![false; n],
    }));
    let changed = Rc::new(Notify::new());
    let mut children = Vec::new();
    let mut inputs = Vec::new();
    for (w, plan) in plans.into_iter().enumerate() {
        let mut child = std::process::Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {w}"))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        children.push(child);
        let input = pipe::Sender::from_owned_fd(OwnedFd::from(stdin))?;
        let output = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))?;
        inputs.push(input);
        spawn_local(read_worker(w, output, Rc::clone(&board), Rc::clone(&changed)));
        let mut line = serde_json::to_vec(&ToWorker::Start(plan))?;
        line.push(b'\n');
        let input = inputs.last_mut().context("no input")?;
        input.write_all(&line).await.with_context(|| format!("writing worker {w}'s plan"))?;
    }
    Ok(Workers { children, inputs, board, changed })
}

async fn read_worker(w: usize, output: pipe::Receiver, board: Rc<RefCell<Board>>, changed: Rc<Notify>) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<FromWorker>(&line) else { continue };
        {
            let mut b = board.borrow_mut();
            match msg {
                FromWorker::Connected { established, failed, errors } => {
                    b.connected[w] = Some((established, failed, errors));
                }
                FromWorker::Progress { delivered, floor } => {
                    b.delivered[w] = delivered;
                    b.floor[w] = floor;
                }
                FromWorker::Report(r) => b.reports[w] = Some(r),
            }
        }
        changed.notify_waiters();
    }
    board.borrow_mut().gone[w] = true;
    changed.notify_waiters();
}

/// Subscribers of channel `c` when subscriber `i` follows channel `i % channels`.
fn subscribers_of(c: u64, subscribers: u64, channels: u64) -> u64 {
    subscribers / channels + u64::from(c < subscribers % channels)
}

async fn run(scenario: Scenario, args: &RunArgs) -> anyhow::Result<Outcome> {
    let n = args.subscribers;
    if n == 0 || n > MAX_SUBSCRIBERS {
        bail!("--subscribers must be 1..={MAX_SUBSCRIBERS}");
    }
    let events = args.events.unwrap_or(scenario.default_events());
    if events > MAX_EVENTS {
        bail!("--events must be at most {MAX_EVENTS}");
    }
    if args.proto.is_centrifugo() && args.centrifugo_channel.is_empty() {
        bail!("--proto {} needs --centrifugo-channel", args.proto.name());
    }
    if !(1..=254).contains(&args.source_ips) {
        bail!("--source-ips must be 1..=254");
    }
    let per_second = |r: f64| r > 0.0 && r <= 1e6;
    if scenario == Scenario::Latency && !per_second(args.rate) {
        bail!("--rate must be above 0 and at most 1,000,000");
    }
    if args.pace.is_some_and(|r| !per_second(r)) {
        bail!("--pace must be above 0 and at most 1,000,000");
    }
    let run_id = args
        .run
        .clone()
        .unwrap_or_else(|| (0..6).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect::<String>());
    let channels = match scenario {
        Scenario::Private => n,
        Scenario::Nodes => args.channels.clamp(1, n),
        _ => 1,
    };
    let sub_urls = nodes::sub_urls(args);
    let pub_templates = nodes::pub_templates(args);
    if sub_urls.len() != pub_templates.len() {
        bail!("--node-sub-url and --node-pub-url must name the same nodes, one of each per node");
    }
    for url in &sub_urls[1..] {
        Target::parse(&Template::parse(url).render(&Vars { run: &run_id, ..Vars::default() }))?;
    }
    let sub_template = Template::parse(&args.sub_url);
    let pub_template = Template::parse(&args.pub_url);
    let body_template = Template::parse(&args.pub_body);
    // Fail early on a bad URL, before any process starts.
    Target::parse(&sub_template.render(&Vars { run: &run_id, ..Vars::default() }))?;
    Target::parse(&pub_template.render(&Vars { run: &run_id, ..Vars::default() }))?;
    if !(1..=10_000).contains(&args.batch) {
        bail!("--batch must be 1..=10000");
    }
    if args.batch > 1 && scenario != Scenario::Private {
        bail!("--batch is for the private scenario");
    }
    let names_channel = if args.batch > 1 { body_template.uses_index() } else { pub_template.uses_index() };
    if scenario == Scenario::Private && !(sub_template.uses_index() && names_channel) {
        bail!(
            "private: --sub-url and --pub-url (with --batch, --pub-body) need `{{i}}` so that each subscriber has its own channel"
        );
    }
    if scenario == Scenario::Nodes
        && channels > 1
        && !std::iter::once(&sub_template).chain(&pub_templates).all(Template::uses_index)
    {
        bail!("nodes: --sub-url and every --pub-url need `{{i}}` to spread subscribers over --channels channels");
    }

    let per_worker = args.per_worker.clamp(1, 19_000);
    let plans: Vec<WorkerPlan> = (0..n.div_ceil(per_worker))
        .map(|w| WorkerPlan {
            first: w * per_worker,
            count: per_worker.min(n - w * per_worker),
            sub_url: sub_urls[(w as usize) % sub_urls.len()].clone(),
            channels,
            run: run_id.clone(),
            headers: args.sub_headers.clone(),
            proto: args.proto,
            ready: args.ready.clone(),
            source_ips: args.source_ips,
            connect_concurrency: args.connect_concurrency,
            connect_timeout_ms: (args.connect_timeout * 1000.0) as u64,
            h2_streams: args.h2_streams,
            floor_events: if channels == 1 { events } else { 0 },
            read_buf: args.read_buf.clamp(512, 1 << 20),
            busy_poll: args.busy_poll,
            centrifugo_channel: args.centrifugo_channel.clone(),
            centrifugo_token: args.centrifugo_token.clone(),
        })
        .collect();

    let servers = &args.server_pids;
    let mem_before = memory_all(servers);
    let snap_before = Snapshot::take(servers);
    let slab_before = kernel_slab_kb().unwrap_or(0);
    let server_cpu_start = cpu_all(servers);
    let connect_start = Instant::now();
    let mut workers = spawn_workers(plans).await?;
    let all_connected = workers.wait(Duration::from_secs_f64(args.connect_timeout + 10.0), Board::all_connected).await;
    let connect_s = connect_start.elapsed().as_secs_f64();
    let connect_server_cpu_s = cpu_all(servers).since(server_cpu_start).total();
    let mut errors = Vec::new();
    let (established, connect_failed) = {
        let b = workers.board.borrow();
        let mut est = 0;
        let mut failed = 0;
        for (w, c) in b.connected.iter().enumerate() {
            match c {
                Some((e, f, errs)) => {
                    est += e;
                    failed += f;
                    errors.extend(errs.iter().take(3).cloned());
                }
                None => errors.push(format!("worker {w} did not finish connecting")),
            }
        }
        (est, failed + n.saturating_sub(est + failed))
    };
    if !all_connected {
        errors.push(format!("not every subscriber was established within {} s", args.connect_timeout));
    }
    {
        // A worker with no subscribers holds no one back: its floor is not a limit.
        let mut b = workers.board.borrow_mut();
        for w in 0..b.floor.len() {
            if b.connected[w].as_ref().is_none_or(|(est, _, _)| *est == 0) {
                b.floor[w] = u64::MAX;
            }
        }
    }

    let measures_memory = matches!(scenario, Scenario::Idle | Scenario::Nodes);
    if measures_memory && args.hold > 0.0 {
        // The measurement itself: connections sit idle for a while before memory is read.
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    let snap_held = Snapshot::take(servers);
    let memory = (measures_memory && !servers.is_empty()).then(|| {
        let after = memory_all(servers);
        let per = |a: u64, b: u64| (a as f64 - b as f64) * 1024.0 / established.max(1) as f64;
        MemoryReport {
            before: mem_before,
            after,
            rss_per_connection: per(after.rss_kb, mem_before.rss_kb),
            pss_per_connection: per(after.pss_kb, mem_before.pss_kb),
            kernel_slab_per_connection: per(kernel_slab_kb().unwrap_or(0), slab_before),
        }
    });

    let me = std::process::id();
    let client_pids: Vec<u32> = std::iter::once(me).chain(workers.pids()).collect();
    let snap_publish = Snapshot::take(servers);
    let server_cpu0 = cpu_all(servers);
    let server_writes0 = writes_all(servers);
    let client_cpu0 = cpu_all(&client_pids);
    let steal0 = steal_s();
    let start_us = now_us();

    let ctx = PublishCtx {
        args,
        run: &run_id,
        pub_template,
        body_template,
        pub_templates,
        publishers: if scenario == Scenario::Nodes {
            nodes::publishers(args.publishers, sub_urls.len() as u64)
        } else {
            args.publishers.clamp(1, 256)
        },
        workers: &workers,
        subscribers: n,
        channels,
        published_deliveries: Cell::new(0),
    };
    let mut last_seq = vec![0u64; channels as usize];
    let published = match scenario {
        Scenario::Private | Scenario::Nodes => publish_private(&ctx, events, &mut last_seq).await,
        Scenario::Latency => publish_one_channel(&ctx, events, 0, Some(args.rate), 1, &mut last_seq).await,
        Scenario::Idle | Scenario::Fanout | Scenario::Cluster => {
            let depth = args.pipeline.clamp(1, 1024) as usize;
            publish_one_channel(&ctx, events, args.window, args.pace, depth, &mut last_seq).await
        }
    };
    if let Err(e) = &published {
        errors.push(format!("publishing stopped: {e:#}"));
    }
    let events_published: u64 = last_seq.iter().sum();
    let drain = Duration::from_secs_f64(args.drain_timeout);
    workers.send(&ToWorker::Finish { last_seq, timeout_ms: drain.as_millis() as u64 }).await?;
    if !workers.wait(drain + Duration::from_secs(5), Board::all_reported).await {
        errors.push("a worker did not report".to_owned());
    }
    let server_cpu = cpu_all(servers).since(server_cpu0);
    let server_writes = server_writes0.zip(writes_all(servers)).map(|(before, after)| after.saturating_sub(before));
    let snap_end = Snapshot::take(servers);
    let server_cpu_s = server_cpu.total();
    let client_cpu_s = cpu_all(&client_pids).since(client_cpu0).total();
    let steal_s = steal0.zip(steal_s()).map(|(before, after)| after - before);
    let worker_count = workers.children.len() as u64;

    let mut total = WorkerReport::default();
    let mut latency = Hist::default();
    {
        let b = workers.board.borrow();
        for (w, r) in b.reports.iter().enumerate() {
            let Some(r) = r else {
                errors.push(format!("worker {w} gave no report"));
                continue;
            };
            total.delivered += r.delivered;
            total.expected += r.expected;
            total.lost += r.lost;
            total.duplicates += r.duplicates;
            total.gaps += r.gaps;
            total.closed_early += r.closed_early;
            total.complete += r.complete;
            total.last_delivery_us = total.last_delivery_us.max(r.last_delivery_us);
            latency.merge(&r.latency);
            errors.extend(r.errors.iter().take(3).cloned());
        }
    }
    workers.stop().await;

    let delivery_s =
        if total.last_delivery_us > start_us { (total.last_delivery_us - start_us) as f64 / 1e6 } else { 0.0 };
    let rate = |count: u64, secs: f64| if secs > 0.0 { count as f64 / secs } else { 0.0 };
    errors.dedup();
    let ok = published.is_ok()
        && all_connected
        && established == n
        && total.lost == 0
        && total.duplicates == 0
        && total.gaps == 0
        && total.closed_early == 0
        && total.complete == n
        && total.expected == total.delivered;
    Ok(Outcome {
        label: args.label.clone(),
        case: if args.case.is_empty() { scenario.name().to_owned() } else { args.case.clone() },
        scenario: scenario.name().to_owned(),
        proto: args.proto.name().to_owned(),
        run: run_id.clone(),
        subscribers: n,
        established,
        connect_failed,
        channels,
        workers: worker_count,
        events: events_published,
        expected_deliveries: total.expected,
        delivered: total.delivered,
        lost: total.lost,
        duplicates: total.duplicates,
        gaps: total.gaps,
        closed_early: total.closed_early,
        connect_s,
        delivery_s,
        deliveries_per_s: rate(total.delivered, delivery_s),
        events_per_s: rate(events_published, delivery_s),
        latency: Latency::from_hist(&latency),
        connect_server_cpu_s,
        server_cpu_s,
        server_system_cpu_s: Some(server_cpu.system),
        server_writes,
        steal_s,
        client_cpu_s,
        deliveries_per_server_cpu_s: rate(total.delivered, server_cpu_s),
        server_busy: if delivery_s > 0.0 { server_cpu_s / delivery_s } else { 0.0 },
        client_busy: if delivery_s > 0.0 { client_cpu_s / delivery_s } else { 0.0 },
        busy_poll: args.busy_poll,
        pace: args.pace.filter(|_| matches!(scenario, Scenario::Fanout | Scenario::Cluster)),
        memory,
        nodes: if scenario == Scenario::Nodes { sub_urls.len() as u64 } else { 0 },
        servers: if scenario == Scenario::Nodes {
            nodes::readings(&snap_before, &snap_held, &snap_publish, &snap_end)
        } else {
            Vec::new()
        },
        ok,
        errors,
    })
}

struct PublishCtx<'a> {
    args: &'a RunArgs,
    run: &'a str,
    pub_template: Template,
    body_template: Template,
    /// Publish URLs of every node: publishing connection `k` goes to node `k % nodes`.
    pub_templates: Vec<Template>,
    /// Publishing connections of the private and nodes scenarios.
    publishers: u64,
    workers: &'a Workers,
    subscribers: u64,
    channels: u64,
    /// Deliveries the events published so far should cause.
    published_deliveries: Cell<u64>,
}

impl PublishCtx<'_> {
    /// Writes event `seq` of `channel` (its response is read by [`Self::accepted`]).
    async fn write(&self, p: &mut Publisher, channel: u64, seq: u64, body: &mut String) -> anyhow::Result<()> {
        let vars = Vars { index: channel, seq, ts: now_us(), run: self.run };
        let target = Target::parse(&self.pub_template.render(&vars))?;
        body.clear();
        self.body_template.render_into(&vars, body);
        p.write(&self.args.pub_method, &target.path, &self.args.pub_headers, body.as_bytes()).await?;
        let d = self.published_deliveries.get() + subscribers_of(channel, self.subscribers, self.channels);
        self.published_deliveries.set(d);
        Ok(())
    }

    /// Reads the oldest outstanding response; an error unless it is 2xx.
    async fn accepted(&self, p: &mut Publisher) -> anyhow::Result<()> {
        let (status, error) = p.read().await?;
        if !(200..300).contains(&status) {
            bail!("{}: status {status}: {}", self.args.pub_url, error.unwrap_or_default().trim());
        }
        Ok(())
    }

    async fn publish(&self, p: &mut Publisher, channel: u64, seq: u64, body: &mut String) -> anyhow::Result<()> {
        self.write(p, channel, seq, body).await?;
        self.accepted(p).await
    }

    /// Publishes `events` (channel, seq) in one request whose body is a JSON array of them.
    async fn publish_batch(&self, p: &mut Publisher, events: &[(u64, u64)], body: &mut String) -> anyhow::Result<()> {
        let target = Target::parse(&self.pub_template.render(&Vars { run: self.run, ..Vars::default() }))?;
        body.clear();
        body.push('[');
        let mut deliveries = self.published_deliveries.get();
        for (k, &(channel, seq)) in events.iter().enumerate() {
            if k > 0 {
                body.push(',');
            }
            let vars = Vars { index: channel, seq, ts: now_us(), run: self.run };
            self.body_template.render_into(&vars, body);
            deliveries += subscribers_of(channel, self.subscribers, self.channels);
        }
        body.push(']');
        p.write(&self.args.pub_method, &target.path, &self.args.pub_headers, body.as_bytes()).await?;
        self.published_deliveries.set(deliveries);
        self.accepted(p).await
    }

    fn publisher(&self, n: u64) -> anyhow::Result<Publisher> {
        let template = &self.pub_templates[(n as usize) % self.pub_templates.len()];
        let target = Target::parse(&template.render(&Vars { run: self.run, ..Vars::default() }))?;
        Ok(Publisher::new(target, source_ip(n, self.args.source_ips), REQUEST_TIMEOUT))
    }

    fn stall(&self) -> Duration {
        Duration::from_secs_f64(self.args.stall_timeout)
    }
}

/// Publishes `events` to channel 0 over one connection, `depth` requests in flight, while at
/// most `window` events are not yet everywhere: at a fixed `rate` (the latency case, one at a
/// time; `--pace`), or as fast as the server accepts them.
async fn publish_one_channel(
    ctx: &PublishCtx<'_>,
    events: u64,
    window: u64,
    rate: Option<f64>,
    depth: usize,
    last_seq: &mut [u64],
) -> anyhow::Result<()> {
    let mut p = ctx.publisher(0)?;
    let mut body = String::new();
    let mut ticks = rate.map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    for seq in 1..=events {
        if window > 0 && seq > window {
            let need = seq - window;
            if !ctx.workers.wait(ctx.stall(), |b| b.floor() >= need).await {
                bail!("no progress for {} s: event {need} has not reached every subscriber", ctx.args.stall_timeout);
            }
        }
        if let Some(t) = &mut ticks {
            t.tick().await;
        }
        if p.in_flight() >= depth {
            ctx.accepted(&mut p).await?;
            last_seq[0] += 1;
        }
        ctx.write(&mut p, 0, seq, &mut body).await?;
    }
    while p.in_flight() > 0 {
        ctx.accepted(&mut p).await?;
        last_seq[0] += 1;
    }
    Ok(())
}

/// Publishes `events` to random channels over `--publishers` connections; channel `c`
/// always goes through connection `c % publishers`, so each channel's order holds.
async fn publish_private(ctx: &PublishCtx<'_>, events: u64, last_seq: &mut [u64]) -> anyhow::Result<()> {
    let publishers = ctx.publishers;
    let mut plans: Vec<Vec<(u64, u64)>> = vec![Vec::new(); publishers as usize];
    let mut rng = fastrand::Rng::new();
    let mut next = vec![0u64; ctx.channels as usize];
    for _ in 0..events {
        let c = rng.u64(0..ctx.channels);
        next[c as usize] += 1;
        plans[(c % publishers) as usize].push((c, next[c as usize]));
    }
    let sent = Rc::new(RefCell::new(vec![0u64; ctx.channels as usize]));
    // Window in deliveries: a channel has subscribers/channels subscribers.
    let per_event = ctx.subscribers.div_ceil(ctx.channels);
    let window = ctx.args.window.saturating_mul(per_event);
    let tasks = plans.into_iter().enumerate().map(|(k, plan)| {
        let sent = Rc::clone(&sent);
        async move {
            let mut p = ctx.publisher(k as u64)?;
            let mut body = String::new();
            let batch = ctx.args.batch.max(1) as usize;
            if batch > 1 {
                for chunk in plan.chunks(batch) {
                    if window > 0 {
                        let ok = ctx
                            .workers
                            .wait(ctx.stall(), |b| {
                                ctx.published_deliveries.get().saturating_sub(b.delivered()) < window
                            })
                            .await;
                        if !ok {
                            bail!("no progress for {} s: deliveries stopped", ctx.args.stall_timeout);
                        }
                    }
                    ctx.publish_batch(&mut p, chunk, &mut body).await?;
                    let mut sent = sent.borrow_mut();
                    for &(c, seq) in chunk {
                        sent[c as usize] = seq;
                    }
                }
                return anyhow::Ok(());
            }
            for (c, seq) in plan {
                if window > 0 {
                    let ok = ctx
                        .workers
                        .wait(ctx.stall(), |b| ctx.published_deliveries.get().saturating_sub(b.delivered()) < window)
                        .await;
                    if !ok {
                        bail!("no progress for {} s: deliveries stopped", ctx.args.stall_timeout);
                    }
                }
                ctx.publish(&mut p, c, seq, &mut body).await?;
                sent.borrow_mut()[c as usize] = seq;
            }
            anyhow::Ok(())
        }
    });
    let results = futures_util::future::join_all(tasks).await;
    last_seq.copy_from_slice(&sent.borrow());
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_are_spread_evenly_over_channels() {
        let counts: Vec<u64> = (0..4).map(|c| subscribers_of(c, 10, 4)).collect();
        assert_eq!(counts, [3, 3, 2, 2]);
        assert_eq!(subscribers_of(0, 7, 1), 7);
    }
}
