//! A worker process: opens its share of the subscribers (HTTP/1.1 over raw sockets, or
//! HTTP/2 streams multiplexed by hyper), reads their streams, checks every event's sequence
//! number, and reports to the coordinator over stdout. Started as `herald-bench worker`
//! (a process has at most 20,000 file descriptors here, so large runs need several).
//!
//! Everything runs on one thread: subscribers share state through `Rc<RefCell<..>>`.

use std::cell::RefCell;
use std::os::fd::AsFd as _;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::net::unix::pipe;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::spawn_local;

use crate::hist::Hist;
use crate::net::{connect_from, now_us, source_ip};
use crate::protocol::{FromWorker, Proto, ToWorker, WorkerPlan, WorkerReport};
use crate::sse::{Dechunker, Head, Numbers, Scanner, parse_head};
use crate::target::Target;
use crate::template::{Template, Vars};
use crate::ws;

/// Errors kept per worker (the first ones; the rest are counted).
const MAX_ERRORS: usize = 5;
/// Shortest gap between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_millis(2);

/// Entry point of `herald-bench worker`.
pub fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run())
}

/// Keeps the runtime from sleeping: a task that always yields makes it poll the sockets
/// without waiting, so a server's write never has a sleeping reader to wake. Ends with the
/// worker.
async fn busy_poll() {
    loop {
        tokio::task::yield_now().await;
    }
}

async fn run() -> anyhow::Result<()> {
    let stdin = pipe::Receiver::from_owned_fd(std::io::stdin().as_fd().try_clone_to_owned()?)
        .context("stdin must be a pipe from the coordinator")?;
    let stdout = pipe::Sender::from_owned_fd(std::io::stdout().as_fd().try_clone_to_owned()?)
        .context("stdout must be a pipe to the coordinator")?;
    let mut lines = BufReader::new(stdin).lines();
    let plan = match lines.next_line().await?.map(|l| serde_json::from_str::<ToWorker>(&l)) {
        Some(Ok(ToWorker::Start(plan))) => plan,
        other => bail!("expected a start line, got {other:?}"),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    spawn_local(write_lines(stdout, rx));

    if plan.busy_poll {
        spawn_local(busy_poll());
    }
    let shared = Rc::new(RefCell::new(Shared::new(&plan)));
    let changed = Rc::clone(&shared.borrow().changed);
    let connect_done = Rc::clone(&shared.borrow().connect_done);
    let all_done = Rc::clone(&shared.borrow().all_done);
    open_subscribers(&plan, &shared)?;
    loop {
        let notified = connect_done.notified();
        if shared.borrow().attempted == plan.count {
            break;
        }
        notified.await;
    }
    {
        let sh = shared.borrow();
        let _ = tx.send(FromWorker::Connected {
            established: sh.established,
            failed: sh.failed,
            errors: sh.errors.clone(),
        });
    }
    spawn_local(report_progress(Rc::clone(&shared), changed, tx.clone()));

    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<ToWorker>(&line)? {
            ToWorker::Finish { last_seq, timeout_ms } => {
                shared.borrow_mut().finish(last_seq);
                let wait = async {
                    loop {
                        let notified = all_done.notified();
                        if shared.borrow().incomplete == 0 {
                            return;
                        }
                        notified.await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await;
                let report = shared.borrow().report();
                let _ = tx.send(FromWorker::Report(report));
            }
            ToWorker::Start(_) => bail!("a second start line"),
        }
    }
    // Stdin closed: the coordinator is done with us. Flush what is queued, then exit.
    drop(tx);
    Ok(())
}

async fn write_lines(mut out: pipe::Sender, mut rx: mpsc::UnboundedReceiver<FromWorker>) {
    while let Some(msg) = rx.recv().await {
        let mut line = serde_json::to_vec(&msg).unwrap_or_default();
        line.push(b'\n');
        if out.write_all(&line).await.is_err() {
            return;
        }
    }
}

async fn report_progress(shared: Rc<RefCell<Shared>>, changed: Rc<Notify>, tx: mpsc::UnboundedSender<FromWorker>) {
    let mut last = None;
    loop {
        changed.notified().await;
        let now = {
            let sh = shared.borrow();
            (sh.delivered, sh.floor)
        };
        if last != Some(now) {
            last = Some(now);
            if tx.send(FromWorker::Progress { delivered: now.0, floor: now.1 }).is_err() {
                return;
            }
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

/// One subscriber's view of its stream.
#[derive(Clone, Copy, Debug, Default)]
struct Sub {
    channel: u64,
    /// Highest sequence number received.
    last: u64,
    /// Events that moved `last` forward.
    received: u64,
    duplicates: u64,
    gaps: u64,
    established: bool,
    closed: bool,
    complete: bool,
}

/// Everything the worker's subscribers share.
struct Shared {
    subs: Vec<Sub>,
    attempted: u64,
    established: u64,
    failed: u64,
    errors: Vec<String>,
    delivered: u64,
    latency: Hist,
    /// With one channel: how many subscribers have each sequence number, and the highest
    /// sequence every established subscriber has (`floor`).
    counts: Vec<u32>,
    floor: u64,
    first_us: u64,
    last_us: u64,
    /// Set by `Finish`: each channel's last sequence number.
    last_seq: Option<Vec<u64>>,
    /// Established, open subscribers still missing events after `Finish`.
    incomplete: u64,
    changed: Rc<Notify>,
    connect_done: Rc<Notify>,
    all_done: Rc<Notify>,
}

impl Shared {
    fn new(plan: &WorkerPlan) -> Self {
        let channels = plan.channels.max(1);
        let subs = (0..plan.count).map(|k| Sub { channel: (plan.first + k) % channels, ..Sub::default() }).collect();
        let tracked = if channels == 1 { plan.floor_events as usize + 1 } else { 0 };
        Self {
            subs,
            attempted: 0,
            established: 0,
            failed: 0,
            errors: Vec::new(),
            delivered: 0,
            latency: Hist::default(),
            counts: vec![0; tracked],
            floor: 0,
            first_us: 0,
            last_us: 0,
            last_seq: None,
            incomplete: 0,
            changed: Rc::new(Notify::new()),
            connect_done: Rc::new(Notify::new()),
            all_done: Rc::new(Notify::new()),
        }
    }

    fn note_error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }

    fn established(&mut self, k: usize) {
        self.subs[k].established = true;
        self.established += 1;
        self.attempted += 1;
        self.connect_done.notify_one();
    }

    fn failed(&mut self, e: String) {
        self.failed += 1;
        self.attempted += 1;
        self.note_error(e);
        self.connect_done.notify_one();
    }

    fn closed(&mut self, k: usize, why: String) {
        let sub = &mut self.subs[k];
        if sub.closed {
            return;
        }
        sub.closed = true;
        if self.last_seq.is_some() && !sub.complete {
            self.incomplete -= 1;
            if self.incomplete == 0 {
                self.all_done.notify_one();
            }
        }
        self.note_error(why);
    }

    fn on_event(&mut self, k: usize, n: Numbers, now: u64) {
        self.delivered += 1;
        if let Some(ts) = n.ts {
            self.latency.record(now.saturating_sub(ts));
        }
        if self.first_us == 0 {
            self.first_us = now;
        }
        self.last_us = now;
        let sub = &mut self.subs[k];
        if n.seq <= sub.last {
            sub.duplicates += 1;
            return;
        }
        if n.seq != sub.last + 1 {
            sub.gaps += 1;
        }
        sub.last = n.seq;
        sub.received += 1;
        let (channel, last) = (sub.channel, sub.last);
        if let Some(c) = self.counts.get_mut(n.seq as usize) {
            *c += 1;
            let needed = self.established as u32;
            while self.counts.get(self.floor as usize + 1).is_some_and(|c| *c >= needed) {
                self.floor += 1;
            }
        }
        if let Some(ls) = &self.last_seq {
            let sub = &mut self.subs[k];
            if !sub.complete && last >= ls[channel as usize] {
                sub.complete = true;
                self.incomplete -= 1;
                if self.incomplete == 0 {
                    self.all_done.notify_one();
                }
            }
        }
    }

    fn finish(&mut self, last_seq: Vec<u64>) {
        let mut incomplete = 0;
        for sub in &mut self.subs {
            let target = last_seq.get(sub.channel as usize).copied().unwrap_or(0);
            if sub.established && sub.last >= target {
                sub.complete = true;
            } else if sub.established && !sub.closed {
                incomplete += 1;
            }
        }
        self.incomplete = incomplete;
        self.last_seq = Some(last_seq);
        if incomplete == 0 {
            self.all_done.notify_one();
        }
    }

    fn report(&self) -> WorkerReport {
        let mut r = WorkerReport {
            subscribers: self.subs.len() as u64,
            established: self.established,
            failed: self.failed,
            delivered: self.delivered,
            first_delivery_us: self.first_us,
            last_delivery_us: self.last_us,
            latency: self.latency.clone(),
            errors: self.errors.clone(),
            ..WorkerReport::default()
        };
        let last_seq = self.last_seq.as_deref().unwrap_or_default();
        for sub in self.subs.iter().filter(|s| s.established) {
            let expected = last_seq.get(sub.channel as usize).copied().unwrap_or(0);
            r.expected += expected;
            r.lost += expected.saturating_sub(sub.received);
            r.duplicates += sub.duplicates;
            r.gaps += sub.gaps;
            r.closed_early += u64::from(sub.closed);
            r.complete += u64::from(sub.complete && sub.received == expected && sub.gaps == 0);
        }
        r
    }
}

/// What every subscriber task needs.
struct Ctx {
    plan: WorkerPlan,
    scanner: Scanner,
    shared: Rc<RefCell<Shared>>,
    connecting: Semaphore,
    connect_timeout: Duration,
}

fn open_subscribers(plan: &WorkerPlan, shared: &Rc<RefCell<Shared>>) -> anyhow::Result<()> {
    let template = Template::parse(&plan.sub_url);
    let channels = plan.channels.max(1);
    let targets = (0..plan.count)
        .map(|k| {
            let url = template.render(&Vars { index: (plan.first + k) % channels, run: &plan.run, ..Vars::default() });
            Target::parse(&url)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ctx = Rc::new(Ctx {
        plan: plan.clone(),
        // Centrifugo's subscription is ready at the `subscribe` reply.
        scanner: Scanner::new(if plan.proto.is_centrifugo() && plan.ready.is_empty() {
            "\"subscribe\":"
        } else {
            &plan.ready
        }),
        shared: Rc::clone(shared),
        connecting: Semaphore::new(plan.connect_concurrency.max(1)),
        connect_timeout: Duration::from_millis(plan.connect_timeout_ms),
    });
    match plan.proto {
        Proto::H1 => {
            for (k, target) in targets.into_iter().enumerate() {
                spawn_local(h1_subscriber(Rc::clone(&ctx), k, target, Over::Sse));
            }
        }
        Proto::Ws | Proto::Centrifugo | Proto::CentrifugoProtobuf => {
            let channel = Template::parse(&plan.centrifugo_channel);
            for (k, target) in targets.into_iter().enumerate() {
                let vars = Vars { index: (plan.first + k as u64) % channels, run: &plan.run, ..Vars::default() };
                let (token, channel) = (&plan.centrifugo_token, channel.render(&vars));
                let hello = match plan.proto {
                    Proto::Centrifugo => Some(centrifugo_hello(token, &channel)),
                    Proto::CentrifugoProtobuf => Some(centrifugo_protobuf_hello(token, &channel)),
                    _ => None,
                };
                spawn_local(h1_subscriber(Rc::clone(&ctx), k, target, Over::Ws(hello)));
            }
        }
        Proto::H2 => {
            // Streams are grouped by global index so that connection boundaries do not
            // depend on how subscribers are split between workers.
            let per = plan.h2_streams.max(1);
            let mut group = Vec::new();
            for (i, target) in targets.into_iter().enumerate() {
                let global = plan.first + i as u64;
                group.push((i, target));
                if (global + 1).is_multiple_of(per) || i as u64 + 1 == plan.count {
                    spawn_local(h2_connection(Rc::clone(&ctx), global / per, std::mem::take(&mut group)));
                }
            }
        }
    }
    Ok(())
}

/// Feeds the frames of `buf` to the shared state; returns whether the ready frame was seen.
fn take_frames(ctx: &Ctx, k: usize, buf: &mut Vec<u8>, scanned: &mut usize, mut ready: bool) -> bool {
    let now = now_us();
    let mut sh = ctx.shared.borrow_mut();
    let mut any = false;
    ctx.scanner.frames(buf, scanned, |frame| {
        if let Some(n) = ctx.scanner.numbers(frame) {
            sh.on_event(k, n, now);
            any = true;
        } else if !ready && ctx.scanner.is_ready_frame(frame) {
            ready = true;
        }
    });
    if any {
        sh.changed.notify_one();
    }
    ready
}

// --- HTTP/1.1 --------------------------------------------------------------------------

struct H1Stream {
    tcp: TcpStream,
    dechunk: Option<Dechunker>,
    raw: Vec<u8>,
    buf: Vec<u8>,
    scanned: usize,
}

impl H1Stream {
    /// Reads once and takes the complete frames; `Ok(false)` at the end of the stream.
    async fn read(&mut self, ctx: &Ctx, k: usize, ready: &mut bool) -> anyhow::Result<bool> {
        let n = match &mut self.dechunk {
            Some(d) => {
                let n = self.tcp.read(&mut self.raw).await?;
                d.feed(&self.raw[..n], &mut self.buf).map_err(|e| anyhow::anyhow!("{e}"))?;
                n
            }
            None => {
                self.buf.reserve(ctx.plan.read_buf);
                self.tcp.read_buf(&mut self.buf).await?
            }
        };
        if n == 0 {
            return Ok(false);
        }
        *ready = take_frames(ctx, k, &mut self.buf, &mut self.scanned, *ready);
        Ok(true)
    }
}

async fn h1_open(ctx: &Ctx, k: usize, target: &Target) -> anyhow::Result<H1Stream> {
    let global = ctx.plan.first + k as u64;
    let src = source_ip(global, ctx.plan.source_ips);
    let mut tcp =
        connect_from(src, target.addr).await.with_context(|| format!("connect {} from {src}", target.addr))?;
    let mut req =
        format!("GET {} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n", target.path, target.authority);
    for h in &ctx.plan.headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let (head, head_buf) = read_head(&mut tcp, 200).await?;
    let mut s = H1Stream {
        tcp,
        dechunk: head.chunked.then(Dechunker::default),
        raw: if head.chunked { vec![0; ctx.plan.read_buf] } else { Vec::new() },
        buf: Vec::new(),
        scanned: 0,
    };
    let rest = &head_buf[head.len..];
    match &mut s.dechunk {
        Some(d) => {
            d.feed(rest, &mut s.buf).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        None => s.buf.extend_from_slice(rest),
    }
    let mut ready = take_frames(ctx, k, &mut s.buf, &mut s.scanned, false);
    while !ready {
        if !s.read(ctx, k, &mut ready).await? {
            bail!("stream ended before its ready frame");
        }
    }
    Ok(s)
}

/// Reads a response head (and what came with it) and checks that its status is `want`.
async fn read_head(tcp: &mut TcpStream, want: u16) -> anyhow::Result<(Head, Vec<u8>)> {
    let mut head_buf = Vec::with_capacity(1024);
    let head = loop {
        let mut chunk = [0u8; 2048];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the response head");
        }
        head_buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&head_buf).map_err(anyhow::Error::msg)? {
            break head;
        }
        if head_buf.len() > 16 * 1024 {
            bail!("response head too long");
        }
    };
    if head.status != want {
        let body: String = String::from_utf8_lossy(&head_buf[head.len..]).chars().take(300).collect();
        bail!("status {} (not {want}): {}", head.status, body.trim());
    }
    Ok((head, head_buf))
}

/// How a subscriber over its own TCP connection subscribes.
enum Over {
    Sse,
    /// WebSocket, with the frame to send once upgraded (Centrifugo's commands), if any.
    Ws(Option<Vec<u8>>),
}

/// An established subscriber over its own TCP connection.
enum Opened {
    Sse(H1Stream),
    Ws(WsStream),
}

impl Opened {
    async fn read(&mut self, ctx: &Ctx, k: usize, ready: &mut bool) -> anyhow::Result<bool> {
        match self {
            Self::Sse(s) => s.read(ctx, k, ready).await,
            Self::Ws(s) => s.read(ctx, k, ready).await,
        }
    }
}

async fn h1_subscriber(ctx: Rc<Ctx>, k: usize, target: Target, over: Over) {
    let opened = {
        let _permit = ctx.connecting.acquire().await;
        let open = async {
            match over {
                Over::Sse => h1_open(&ctx, k, &target).await.map(Opened::Sse),
                Over::Ws(hello) => ws_open(&ctx, k, &target, hello).await.map(Opened::Ws),
            }
        };
        tokio::time::timeout(ctx.connect_timeout, open).await
    };
    let mut stream = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return ctx.shared.borrow_mut().failed(format!("{}: {e:#}", target.url())),
        Err(_) => return ctx.shared.borrow_mut().failed(format!("{}: not established in time", target.url())),
    };
    ctx.shared.borrow_mut().established(k);
    let mut ready = true;
    let why = loop {
        match stream.read(&ctx, k, &mut ready).await {
            Ok(true) => {}
            Ok(false) => break "the server closed the stream".to_owned(),
            Err(e) => break format!("stream error: {e:#}"),
        }
    };
    ctx.shared.borrow_mut().closed(k, why);
}

// --- WebSocket -------------------------------------------------------------------------

/// Centrifugo's `connect` and `subscribe`, one command a line in one frame.
fn centrifugo_hello(token: &str, channel: &str) -> Vec<u8> {
    let hello = [
        serde_json::json!({"id": 1, "connect": {"token": token}}),
        serde_json::json!({"id": 2, "subscribe": {"channel": channel}}),
    ];
    let text = format!("{}\n{}", hello[0], hello[1]);
    let mut frame = Vec::new();
    ws::client_frame(ws::TEXT, text.as_bytes(), &mut frame);
    frame
}

/// Centrifugo's `connect` and `subscribe` as length-delimited Protobuf `Command`s in one
/// binary frame (`id` 1, `connect` 4 with `token` 1; `id` 2, `subscribe` 5 with `channel` 1).
fn centrifugo_protobuf_hello(token: &str, channel: &str) -> Vec<u8> {
    fn delimited(out: &mut Vec<u8>, field: Option<u8>, bytes: &[u8]) {
        if let Some(field) = field {
            out.push(field << 3 | 2);
        }
        let mut n = bytes.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(bytes);
    }
    let mut payload = Vec::new();
    for (id, method, value) in [(1u8, 4, token), (2, 5, channel)] {
        let mut inner = Vec::new();
        delimited(&mut inner, Some(1), value.as_bytes());
        let mut command = vec![0x08, id];
        delimited(&mut command, Some(method), &inner);
        delimited(&mut payload, None, &command);
    }
    let mut frame = Vec::new();
    ws::client_frame(ws::BINARY, &payload, &mut frame);
    frame
}

/// The length-delimited messages of a Protobuf frame; a length past the end ends them.
fn delimited_messages(mut payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let (&b, rest) = payload.split_first()?;
            payload = rest;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 || shift > 28 {
                break;
            }
        }
        let message = payload.get(..len)?;
        payload = &payload[len..];
        Some(message)
    })
}

struct WsStream {
    tcp: TcpStream,
    reader: ws::Reader,
    buf: Vec<u8>,
    /// Frames to send back (pongs), written after the read that asked for them.
    replies: Vec<u8>,
    /// Centrifugo's client protocol, if the subscriber speaks it.
    centrifugo: Option<Proto>,
}

impl WsStream {
    /// Reads once, takes the complete messages and answers pings; `Ok(false)` at the end.
    async fn read(&mut self, ctx: &Ctx, k: usize, ready: &mut bool) -> anyhow::Result<bool> {
        self.buf.reserve(ctx.plan.read_buf);
        if self.tcp.read_buf(&mut self.buf).await? == 0 {
            return Ok(false);
        }
        self.take(ctx, k, ready).await
    }

    async fn take(&mut self, ctx: &Ctx, k: usize, ready: &mut bool) -> anyhow::Result<bool> {
        let now = now_us();
        let mut closed = false;
        let mut refused = None;
        {
            let mut sh = ctx.shared.borrow_mut();
            let mut any = false;
            let (replies, centrifugo) = (&mut self.replies, self.centrifugo.is_some());
            let protobuf = self.centrifugo == Some(Proto::CentrifugoProtobuf);
            self.reader.messages(&mut self.buf, |opcode, payload| match opcode {
                ws::BINARY if protobuf => {
                    for reply in delimited_messages(payload) {
                        if reply.is_empty() {
                            // A ping: an empty `Reply`, answered with an empty `Command`.
                            ws::client_frame(ws::BINARY, &[0], replies);
                        } else if let Some(n) = ctx.scanner.numbers(reply) {
                            sh.on_event(k, n, now);
                            any = true;
                        } else if !*ready && reply.starts_with(&[0x08, 0x02, 0x32]) {
                            // `id` 2 with a `subscribe` result (field 6).
                            *ready = true;
                        } else if !*ready && reply.get(2) == Some(&0x12) {
                            refused.get_or_insert_with(|| String::from_utf8_lossy(reply).into_owned());
                        }
                    }
                }
                ws::TEXT | ws::BINARY => {
                    for line in payload.split(|b| *b == b'\n') {
                        if let Some(n) = ctx.scanner.numbers(line) {
                            sh.on_event(k, n, now);
                            any = true;
                        } else if centrifugo && line == b"{}" {
                            ws::client_frame(ws::TEXT, b"{}", replies);
                        } else if !*ready && ctx.scanner.is_ready_frame(line) {
                            *ready = true;
                        } else if !*ready && centrifugo && line.starts_with(b"{\"error\"") {
                            refused.get_or_insert_with(|| String::from_utf8_lossy(line).into_owned());
                        }
                    }
                }
                ws::PING => ws::client_frame(ws::PONG, payload, replies),
                ws::CLOSE => closed = true,
                _ => {}
            })?;
            if any {
                sh.changed.notify_one();
            }
        }
        if let Some(refused) = refused {
            bail!("refused: {refused}");
        }
        if !self.replies.is_empty() {
            self.tcp.write_all(&self.replies).await?;
            self.replies.clear();
        }
        Ok(!closed)
    }
}

async fn ws_open(ctx: &Ctx, k: usize, target: &Target, hello: Option<Vec<u8>>) -> anyhow::Result<WsStream> {
    let global = ctx.plan.first + k as u64;
    let src = source_ip(global, ctx.plan.source_ips);
    let mut tcp =
        connect_from(src, target.addr).await.with_context(|| format!("connect {} from {src}", target.addr))?;
    let centrifugo = hello.is_some().then_some(ctx.plan.proto);
    let mut headers = ctx.plan.headers.clone();
    if centrifugo == Some(Proto::CentrifugoProtobuf) {
        headers.push("sec-websocket-protocol: centrifuge-protobuf".to_owned());
    }
    tcp.write_all(ws::upgrade_request(target, &headers).as_bytes()).await?;
    let (head, head_buf) = read_head(&mut tcp, 101).await?;
    if let Some(hello) = hello {
        tcp.write_all(&hello).await?;
    }
    let mut s = WsStream {
        tcp,
        reader: ws::Reader::default(),
        buf: head_buf[head.len..].to_vec(),
        replies: Vec::new(),
        centrifugo,
    };
    // Without a ready text, the upgrade is the subscription (Nchan sends nothing before the
    // first event); Centrifugo's is the `subscribe` reply.
    let mut ready = ctx.plan.ready.is_empty() && centrifugo.is_none();
    if !s.take(ctx, k, &mut ready).await? {
        bail!("closed by the server before its ready message");
    }
    while !ready {
        if !s.read(ctx, k, &mut ready).await? {
            bail!("closed before its ready message");
        }
    }
    Ok(s)
}

// --- HTTP/2 ----------------------------------------------------------------------------

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2_handshake(ctx: &Ctx, conn_index: u64, addr: std::net::SocketAddr) -> anyhow::Result<H2Sender> {
    let src = source_ip(conn_index, ctx.plan.source_ips);
    let tcp = connect_from(src, addr).await.with_context(|| format!("connect {addr} from {src}"))?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(TokioIo::new(tcp))
        .await
        .context("h2 handshake")?;
    spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn h2_connection(ctx: Rc<Ctx>, conn_index: u64, streams: Vec<(usize, Target)>) {
    let Some(addr) = streams.first().map(|(_, t)| t.addr) else { return };
    let opened = {
        let _permit = ctx.connecting.acquire().await;
        tokio::time::timeout(ctx.connect_timeout, h2_handshake(&ctx, conn_index, addr)).await
    };
    let sender = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let mut sh = ctx.shared.borrow_mut();
            for _ in &streams {
                sh.failed(format!("{addr}: {e:#}"));
            }
            return;
        }
        Err(_) => {
            let mut sh = ctx.shared.borrow_mut();
            for _ in &streams {
                sh.failed(format!("{addr}: h2 connection not established in time"));
            }
            return;
        }
    };
    for (k, target) in streams {
        spawn_local(h2_stream(Rc::clone(&ctx), sender.clone(), k, target));
    }
}

async fn h2_open(
    ctx: &Ctx,
    sender: &mut H2Sender,
    k: usize,
    target: &Target,
    buf: &mut Vec<u8>,
    scanned: &mut usize,
) -> anyhow::Result<hyper::body::Incoming> {
    let mut req = hyper::Request::get(target.url()).header("accept", "text/event-stream");
    for h in &ctx.plan.headers {
        if let Some((name, value)) = h.split_once(':') {
            req = req.header(name.trim(), value.trim());
        }
    }
    sender.ready().await.context("h2 connection")?;
    let resp = sender.send_request(req.body(Empty::new())?).await.context("h2 request")?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if status != 200 {
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        bail!("status {status}: {}", text.trim());
    }
    let mut ready = false;
    while !ready {
        let Some(frame) = body.frame().await else { bail!("stream ended before its ready frame") };
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            ready = take_frames(ctx, k, buf, scanned, false);
        }
    }
    Ok(body)
}

async fn h2_stream(ctx: Rc<Ctx>, mut sender: H2Sender, k: usize, target: Target) {
    let (mut buf, mut scanned) = (Vec::new(), 0);
    let opened =
        tokio::time::timeout(ctx.connect_timeout, h2_open(&ctx, &mut sender, k, &target, &mut buf, &mut scanned)).await;
    let mut body = match opened {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return ctx.shared.borrow_mut().failed(format!("{}: {e:#}", target.url())),
        Err(_) => return ctx.shared.borrow_mut().failed(format!("{}: not established in time", target.url())),
    };
    // Kept for the life of the stream: hyper closes a connection whose handles are all gone.
    let _sender = sender;
    ctx.shared.borrow_mut().established(k);
    let why = loop {
        match body.frame().await {
            None => break "the server ended the stream".to_owned(),
            Some(Err(e)) => break format!("h2 stream error: {e}"),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    take_frames(&ctx, k, &mut buf, &mut scanned, true);
                }
            }
        }
    };
    ctx.shared.borrow_mut().closed(k, why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protobuf_hello_is_two_delimited_commands_in_one_binary_frame() {
        let frame = centrifugo_protobuf_hello("t0k", "channel:b1");
        // Unmasked by the reader as the server would: a binary frame, masked by the client.
        assert_eq!(frame[0], 0x80 | ws::BINARY);
        let (len, mask) = (usize::from(frame[1] & 0x7f), &frame[2..6]);
        let payload: Vec<u8> = frame[6..6 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        let messages: Vec<&[u8]> = delimited_messages(&payload).collect();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0], [0x08, 1, 0x22, 5, 0x0a, 3, b't', b'0', b'k']);
        assert!(messages[1].starts_with(&[0x08, 2, 0x2a, 12, 0x0a, 10]) && messages[1].ends_with(b"channel:b1"));
        // A length past the end ends the messages; an empty one (a ping) is one.
        assert_eq!(delimited_messages(&[0, 9, 1]).count(), 1);
    }
}
