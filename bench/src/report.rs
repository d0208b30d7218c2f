//! A run's result ([`Outcome`]): printed for people, written as JSON, and gathered from
//! several JSON files into a markdown table with the median and spread of repeated runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::hist::Hist;
use crate::nodes::ServerReading;
use crate::procfs::Memory;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_hist(h: &Hist) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            samples: h.count(),
            p50_ms: ms(h.quantile(0.5)),
            p90_ms: ms(h.quantile(0.9)),
            p99_ms: ms(h.quantile(0.99)),
            p999_ms: ms(h.quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemoryReport {
    pub before: Memory,
    pub after: Memory,
    /// Growth of the server's RSS per established connection, bytes.
    pub rss_per_connection: f64,
    /// Growth of the server's Pss per established connection, bytes.
    pub pss_per_connection: f64,
    /// Growth of the kernel's slab memory per connection, bytes: both ends of each
    /// loopback connection (the bench's socket and the server's), and anything else the
    /// machine did meanwhile.
    pub kernel_slab_per_connection: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub label: String,
    pub case: String,
    pub scenario: String,
    pub proto: String,
    pub run: String,
    pub subscribers: u64,
    pub established: u64,
    pub connect_failed: u64,
    pub channels: u64,
    pub workers: u64,
    pub events: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub closed_early: u64,
    /// Seconds to establish every subscriber.
    pub connect_s: f64,
    /// Seconds from the first publish to the last delivery.
    pub delivery_s: f64,
    pub deliveries_per_s: f64,
    pub events_per_s: f64,
    pub latency: Latency,
    /// Server CPU while connecting (all --server-pid processes).
    pub connect_server_cpu_s: f64,
    /// Server CPU from the first publish to the last delivery.
    pub server_cpu_s: f64,
    /// The part of `server_cpu_s` spent in the kernel (system calls, and on loopback the
    /// receiving side's work of what the server sends). `None` in result files written
    /// before it was measured; the table shows `–` for them.
    #[serde(default)]
    pub server_system_cpu_s: Option<f64>,
    /// The servers' write system calls over the same time (`write`/`writev`, from
    /// `/proc/<pid>/io`): with the deliveries, how many events one write carried, which much
    /// of a fan-out's CPU follows. `None` in result files written before it was measured, or
    /// where `/proc/<pid>/io` could not be read.
    #[serde(default)]
    pub server_writes: Option<u64>,
    /// CPU time the hypervisor stole from the machine (all CPUs) over the same time: the
    /// servers' and the bench's CPU times leave it out, their latencies do not. `None` in
    /// result files written before it was measured.
    #[serde(default)]
    pub steal_s: Option<f64>,
    /// The bench's own CPU (coordinator and workers) over the same time.
    pub client_cpu_s: f64,
    pub deliveries_per_server_cpu_s: f64,
    /// Share of one core the server used from the first publish to the last delivery.
    pub server_busy: f64,
    /// Share of one core the bench used over the same time (near 1.0: the bench may be the
    /// bottleneck).
    pub client_busy: f64,
    /// The workers polled without sleeping (`--busy-poll`); `false` in older result files.
    #[serde(default)]
    pub busy_poll: bool,
    /// fanout, cluster: the events a second the publisher kept to (`--pace`), when it did not
    /// publish as fast as answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace: Option<f64>,
    pub memory: Option<MemoryReport>,
    /// nodes: how many nodes the subscribers were spread over (0 in other scenarios).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nodes: u64,
    /// nodes: each `--server-pid` read apart, in order (the nodes first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerReading>,
    /// Every subscriber established, every event delivered once and in order.
    pub ok: bool,
    pub errors: Vec<String>,
}

fn si(v: f64) -> String {
    if v >= 10_000.0 {
        let whole = v.round() as u64;
        let s = whole.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Outcome {
    /// How many deliveries one of the servers' write calls carried; `None` where the writes
    /// were not counted (or none were made).
    pub fn deliveries_per_write(&self) -> Option<f64> {
        self.server_writes.filter(|w| *w > 0).map(|w| self.delivered as f64 / w as f64)
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} {} [{}]{}: {} of {} subscribers established in {:.2} s ({} workers), {} channel(s)",
            self.scenario,
            self.proto,
            self.run,
            if self.label.is_empty() { String::new() } else { format!(" {}", self.label) },
            self.established,
            self.subscribers,
            self.connect_s,
            self.workers,
            self.channels
        );
        if let Some(m) = &self.memory {
            let _ = writeln!(
                s,
                "  server memory: RSS {} -> {} KiB, Pss {} -> {} KiB; per connection {:.2} KiB RSS, {:.2} KiB Pss \
                 (kernel slab, both ends: {:.2} KiB)",
                m.before.rss_kb,
                m.after.rss_kb,
                m.before.pss_kb,
                m.after.pss_kb,
                m.rss_per_connection / 1024.0,
                m.pss_per_connection / 1024.0,
                m.kernel_slab_per_connection / 1024.0
            );
        }
        if !self.servers.is_empty() {
            let per_node = self.established as f64 / self.nodes.max(1) as f64;
            s.push_str(&crate::nodes::human(&self.servers, self.nodes, per_node, self.delivery_s));
        }
        let _ = writeln!(
            s,
            "  events {}{}: deliveries {} of {} expected; lost {}, duplicates {}, gaps {}, closed early {}",
            self.events,
            self.pace.map_or_else(String::new, |r| format!(" (paced at {r} a second)")),
            self.delivered,
            self.expected_deliveries,
            self.lost,
            self.duplicates,
            self.gaps,
            self.closed_early
        );
        let _ = writeln!(
            s,
            "  {} deliveries/s ({} events/s) over {:.3} s; latency p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}",
            si(self.deliveries_per_s),
            si(self.events_per_s),
            self.delivery_s,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms
        );
        let _ = writeln!(
            s,
            "  CPU: server {:.2} s ({:.2} s in the kernel; {} deliveries per server CPU-second, {:.0}% busy), \
             client {:.2} s ({:.0}% busy{}); connecting: server {:.2} s; stolen by the hypervisor: {}",
            self.server_cpu_s,
            self.server_system_cpu_s.unwrap_or(0.0),
            si(self.deliveries_per_server_cpu_s),
            self.server_busy * 100.0,
            self.client_cpu_s,
            self.client_busy * 100.0,
            if self.busy_poll { ", polling without sleeping" } else { "" },
            self.connect_server_cpu_s,
            self.steal_s.map_or_else(|| "not measured".to_owned(), |st| format!("{:.0} ms", st * 1000.0))
        );
        if let (Some(w), Some(per)) = (self.server_writes, self.deliveries_per_write()) {
            let _ = writeln!(s, "  server writes: {} write calls, {per:.1} deliveries per call", si(w as f64));
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        let _ = writeln!(s, "  result: {}", if self.ok { "OK" } else { "FAILED" });
        s
    }
}

/// One line of the table: a name and how to read it from an outcome.
struct Metric {
    name: &'static str,
    get: fn(&Outcome) -> f64,
    /// Digits after the point.
    digits: usize,
    /// Whether the ratio of the two servers means something (not for the machine's readings).
    compare: bool,
}

fn kernel_share() -> Metric {
    Metric {
        name: "server CPU in the kernel (%)",
        get: |o| match o.server_system_cpu_s {
            Some(sys) if o.server_cpu_s > 0.0 => sys / o.server_cpu_s * 100.0,
            Some(_) => 0.0,
            None => f64::NAN,
        },
        digits: 0,
        compare: true,
    }
}

fn kernel_per_delivery() -> Metric {
    Metric {
        name: "server kernel CPU per delivery (µs)",
        get: |o| match o.server_system_cpu_s {
            Some(sys) if o.delivered > 0 => sys / o.delivered as f64 * 1e6,
            Some(_) => 0.0,
            None => f64::NAN,
        },
        digits: 2,
        compare: true,
    }
}

fn deliveries_per_write() -> Metric {
    Metric {
        name: "deliveries per server write call",
        get: |o| o.deliveries_per_write().unwrap_or(f64::NAN),
        digits: 1,
        compare: true,
    }
}

fn steal() -> Metric {
    Metric {
        name: "machine CPU stolen by the hypervisor (ms)",
        get: |o| o.steal_s.map_or(f64::NAN, |st| st * 1000.0),
        digits: 0,
        compare: false,
    }
}

/// The nodes' readings of an outcome (its servers past the nodes, like Redis, left out).
fn node_readings(o: &Outcome) -> &[ServerReading] {
    &o.servers[..(o.nodes as usize).min(o.servers.len())]
}

/// The largest growth of a node's RSS while its subscribers connected, per subscriber it
/// holds, bytes per KiB (a table row).
pub fn most_rss_per_connection(o: &Outcome) -> f64 {
    let per_node = o.established as f64 / o.nodes.max(1) as f64;
    node_readings(o)
        .iter()
        .map(|r| (r.rss_held_kb as f64 - r.rss_before_kb as f64) / per_node.max(1.0))
        .fold(0.0, f64::max)
}

/// The CPU seconds of the busiest node while publishing (a table row).
pub fn most_node_cpu(o: &Outcome) -> f64 {
    node_readings(o).iter().map(|r| r.cpu_s).fold(0.0, f64::max)
}

fn metrics_for(scenario: &str) -> Vec<Metric> {
    let m = |name, get, digits| Metric { name, get, digits, compare: true };
    let established = m("connections established", (|o: &Outcome| o.established as f64) as fn(&Outcome) -> f64, 0);
    let lost = m("events lost + duplicated + gaps", |o| (o.lost + o.duplicates + o.gaps) as f64, 0);
    match scenario {
        "idle" => vec![
            established,
            m(
                "server Pss per connection (KiB)",
                |o| o.memory.as_ref().map_or(0.0, |m| m.pss_per_connection / 1024.0),
                2,
            ),
            m(
                "server RSS per connection (KiB)",
                |o| o.memory.as_ref().map_or(0.0, |m| m.rss_per_connection / 1024.0),
                2,
            ),
            m(
                "kernel slab per connection, both ends (KiB)",
                |o| o.memory.as_ref().map_or(0.0, |m| m.kernel_slab_per_connection / 1024.0),
                2,
            ),
            m("server CPU to accept them (s)", |o| o.connect_server_cpu_s, 2),
            m("seconds to connect all", |o| o.connect_s, 2),
            lost,
        ],
        "nodes" => vec![
            established,
            m(
                "server RSS per connection, nodes and Redis (KiB)",
                |o| o.memory.as_ref().map_or(0.0, |m| m.rss_per_connection / 1024.0),
                2,
            ),
            m("largest node's RSS per connection it holds (KiB)", most_rss_per_connection, 2),
            m("deliveries per second", |o| o.deliveries_per_s, 0),
            m("deliveries per server CPU-second (nodes and Redis)", |o| o.deliveries_per_server_cpu_s, 0),
            m("server CPU, nodes and Redis (s)", |o| o.server_cpu_s, 2),
            m("busiest node's CPU (s)", most_node_cpu, 2),
            m("latency p50 (ms)", |o| o.latency.p50_ms, 2),
            m("latency p99 (ms)", |o| o.latency.p99_ms, 2),
            steal(),
            lost,
        ],
        "latency" => vec![
            m("latency p50 (ms)", |o| o.latency.p50_ms, 2),
            m("latency p99 (ms)", |o| o.latency.p99_ms, 2),
            m("latency p99.9 (ms)", |o| o.latency.p999_ms, 2),
            m("latency max (ms)", |o| o.latency.max_ms, 2),
            m("deliveries per server CPU-second", |o| o.deliveries_per_server_cpu_s, 0),
            m("server CPU (s)", |o| o.server_cpu_s, 2),
            kernel_share(),
            kernel_per_delivery(),
            deliveries_per_write(),
            steal(),
            lost,
        ],
        _ => vec![
            m("deliveries per second", |o| o.deliveries_per_s, 0),
            m("deliveries per server CPU-second", |o| o.deliveries_per_server_cpu_s, 0),
            m("server CPU (s)", |o| o.server_cpu_s, 2),
            kernel_share(),
            kernel_per_delivery(),
            deliveries_per_write(),
            m("server core busy (%)", |o| o.server_busy * 100.0, 0),
            m("client core busy (%)", |o| o.client_busy * 100.0, 0),
            m("latency p50 (ms)", |o| o.latency.p50_ms, 2),
            m("latency p99 (ms)", |o| o.latency.p99_ms, 2),
            steal(),
            lost,
        ],
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn show(v: f64, digits: usize) -> String {
    if digits == 0 { si(v.round()) } else { format!("{v:.digits$}") }
}

/// Median, with min–max when runs differ: `1.23 (1.20–1.30)`.
fn cell(values: &[f64], digits: usize) -> String {
    let mut v = values.to_vec();
    let med = median(&mut v);
    let (lo, hi) = (v.first().copied().unwrap_or(0.0), v.last().copied().unwrap_or(0.0));
    if v.len() < 2 || show(lo, digits) == show(hi, digits) {
        show(med, digits)
    } else {
        format!("{} ({}–{})", show(med, digits), show(lo, digits), show(hi, digits))
    }
}

/// The markdown table: a section per case, a column per server (in order of first
/// appearance), a row per metric, and the ratio of the first server to the second.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut cases: Vec<String> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    let mut by: BTreeMap<(String, String), Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        if !cases.contains(&o.case) {
            cases.push(o.case.clone());
        }
        if !labels.contains(&o.label) {
            labels.push(o.label.clone());
        }
        by.entry((o.case.clone(), o.label.clone())).or_default().push(o);
    }
    let mut s = String::new();
    let ratio = labels.len() == 2;
    let ratio_column = ratio.then(|| format!("{} / {}", labels[0], labels[1]));
    header(&mut s, "case", &labels, ratio_column.as_deref());
    for case in &cases {
        let Some(first) = labels.iter().find_map(|l| by.get(&(case.clone(), l.clone()))).and_then(|v| v.first()) else {
            continue;
        };
        let runs = labels.iter().filter_map(|l| by.get(&(case.clone(), l.clone())).map(Vec::len)).max().unwrap_or(0);
        let title = format!(
            "{} ({} {}, {} subs, {} events{}, {} run{}{})",
            case,
            first.scenario,
            first.proto,
            first.subscribers,
            first.events,
            first.pace.map_or_else(String::new, |r| format!(" at {r} a second")),
            runs,
            if runs == 1 { "" } else { "s" },
            if first.busy_poll { ", the generator polling without sleeping" } else { "" }
        );
        for (row, metric) in metrics_for(&first.scenario).iter().enumerate() {
            let _ = write!(s, "| {} | {} |", if row == 0 { title.as_str() } else { "" }, metric.name);
            let mut medians = Vec::new();
            for l in &labels {
                match by.get(&(case.clone(), l.clone())) {
                    Some(runs) => {
                        // NaN: not measured in that run (an older result file).
                        let values: Vec<f64> = runs.iter().map(|o| (metric.get)(o)).filter(|v| !v.is_nan()).collect();
                        if values.is_empty() {
                            medians.push(None);
                            let _ = write!(s, " – |");
                            continue;
                        }
                        medians.push(Some(median(&mut values.clone())));
                        let failed = runs.iter().filter(|o| !o.ok).count();
                        let mark = if failed > 0 { format!(" ⚠{failed} failed") } else { String::new() };
                        let _ = write!(s, " {}{} |", cell(&values, metric.digits), mark);
                    }
                    None => {
                        medians.push(None);
                        let _ = write!(s, " – |");
                    }
                }
            }
            if ratio {
                match (medians[0], medians[1]) {
                    (Some(a), Some(b)) if b != 0.0 && metric.compare => {
                        let _ = write!(s, " {:.2}x |", a / b);
                    }
                    _ => {
                        let _ = write!(s, " – |");
                    }
                }
            }
            let _ = writeln!(s);
        }
    }
    s.push_str(&engines_run_by_run(&cases, &labels, &by));
    s
}

/// A case run on both engines (`C` and `C-redis`, as `scripts/bench` interleaves them: the
/// k-th run of each back to back) compared pair by pair, for each server: the Redis run's
/// deliveries per CPU-second as a share of its in-memory neighbour's, or its p99 less the
/// neighbour's in a latency case. A load that drifts over the minutes of an invocation moves
/// both runs of a pair alike, where the ratio of two medians takes each from another time.
/// Empty when no case has its `-redis` twin with as many runs.
fn engines_run_by_run(cases: &[String], labels: &[String], by: &BTreeMap<(String, String), Vec<&Outcome>>) -> String {
    let mut rows = String::new();
    for case in cases {
        let Some(memory_case) = case.strip_suffix("-redis") else { continue };
        let Some(first) = labels.iter().find_map(|l| by.get(&(case.clone(), l.clone()))).and_then(|v| v.first()) else {
            continue;
        };
        let latency = first.scenario == "latency";
        let (name, digits) = if latency {
            ("latency p99, Redis less memory (ms)", 2)
        } else {
            ("deliveries per server CPU-second, Redis / memory (%)", 1)
        };
        let mut cells = Vec::new();
        let mut pairs = 0;
        for l in labels {
            let runs = (by.get(&(memory_case.to_owned(), l.clone())), by.get(&(case.clone(), l.clone())));
            let values: Vec<f64> = match runs {
                (Some(memory), Some(redis)) if memory.len() == redis.len() => memory
                    .iter()
                    .zip(redis.iter())
                    .map(|(m, r)| {
                        if latency {
                            r.latency.p99_ms - m.latency.p99_ms
                        } else if m.deliveries_per_server_cpu_s > 0.0 {
                            r.deliveries_per_server_cpu_s / m.deliveries_per_server_cpu_s * 100.0
                        } else {
                            f64::NAN
                        }
                    })
                    .filter(|v| !v.is_nan())
                    .collect(),
                _ => Vec::new(),
            };
            pairs = pairs.max(values.len());
            cells.push(if values.is_empty() { "–".to_owned() } else { cell(&values, digits) });
        }
        if pairs > 0 {
            let _ = writeln!(
                rows,
                "| {case} against {memory_case} ({pairs} pair{}) | {name} | {} |",
                if pairs == 1 { "" } else { "s" },
                cells.join(" | ")
            );
        }
    }
    if rows.is_empty() {
        return rows;
    }
    let mut s = String::from("\n");
    header(&mut s, "engines, run by run", labels, None);
    s.push_str(&rows);
    s
}

/// A table's two header lines: `first`, the metric, a column per server, and `extra` last.
fn header(s: &mut String, first: &str, labels: &[String], extra: Option<&str>) {
    let _ = write!(s, "| {first} | metric |");
    for l in labels.iter().map(String::as_str).chain(extra) {
        let _ = write!(s, " {l} |");
    }
    let _ = write!(s, "\n|---|---|");
    for _ in 0..labels.len() + usize::from(extra.is_some()) {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(label: &str, dps: f64, ok: bool) -> Outcome {
        Outcome {
            label: label.into(),
            case: "fanout-1k".into(),
            scenario: "fanout".into(),
            proto: "h1".into(),
            deliveries_per_s: dps,
            ok,
            ..Outcome::default()
        }
    }

    #[test]
    fn the_table_shows_median_spread_ratio_and_failures() {
        let runs = [
            outcome("herald", 300_000.0, true),
            outcome("herald", 100_000.0, true),
            outcome("herald", 200_000.0, false),
            outcome("nchan", 100_000.0, true),
        ];
        let t = table(&runs);
        let row = t.lines().find(|l| l.contains("deliveries per second")).unwrap_or_default();
        assert!(row.contains("200,000 (100,000–300,000) ⚠1 failed"), "{t}");
        assert!(row.contains("| 100,000 |") && row.contains("2.00x"), "{t}");
    }

    #[test]
    fn a_case_on_both_engines_is_also_compared_run_by_run() {
        let run = |case: &str, label: &str, per_cpu: f64, p99: f64| Outcome {
            label: label.into(),
            case: case.into(),
            scenario: if case.starts_with("latency") { "latency" } else { "fanout" }.into(),
            proto: "h1".into(),
            deliveries_per_server_cpu_s: per_cpu,
            latency: Latency { p99_ms: p99, ..Latency::default() },
            ok: true,
            ..Outcome::default()
        };
        // Interleaved as scripts/bench runs them: memory, Redis, memory, Redis, ... Herald's
        // pairs are 95%, 50% and 90% (median 90%), where the ratio of its medians would say
        // 50% (2.5 against 5 million): the pairs are what is compared.
        let runs = [
            run("fanout-1k", "herald", 2_000_000.0, 0.0),
            run("fanout-1k", "nchan", 400_000.0, 0.0),
            run("fanout-1k-redis", "herald", 1_900_000.0, 0.0),
            run("fanout-1k-redis", "nchan", 400_000.0, 0.0),
            run("fanout-1k", "herald", 5_000_000.0, 0.0),
            run("fanout-1k", "nchan", 400_000.0, 0.0),
            run("fanout-1k-redis", "herald", 2_500_000.0, 0.0),
            run("fanout-1k-redis", "nchan", 200_000.0, 0.0),
            run("fanout-1k", "herald", 6_000_000.0, 0.0),
            run("fanout-1k", "nchan", 400_000.0, 0.0),
            run("fanout-1k-redis", "herald", 5_400_000.0, 0.0),
            run("fanout-1k-redis", "nchan", 400_000.0, 0.0),
            run("latency-1k", "herald", 0.0, 5.0),
            run("latency-1k-redis", "herald", 0.0, 5.5),
        ];
        let t = table(&runs);
        assert!(t.contains("| engines, run by run | metric | herald | nchan |"), "{t}");
        assert!(
            t.contains("| fanout-1k-redis against fanout-1k (3 pairs) | deliveries per server CPU-second, Redis / memory (%) | 90.0 (50.0–95.0) | 100.0 (50.0–100.0) |"),
            "{t}"
        );
        // Nchan ran no latency case: its cell is a dash.
        assert!(
            t.contains(
                "| latency-1k-redis against latency-1k (1 pair) | latency p99, Redis less memory (ms) | 0.50 | – |"
            ),
            "{t}"
        );
        // One engine alone gives no such table.
        assert!(!table(&runs[..2]).contains("run by run"));
    }

    #[test]
    fn runs_without_kernel_time_or_steal_show_a_dash_not_zero() {
        let mut measured = outcome("herald", 100_000.0, true);
        measured.server_cpu_s = 2.0;
        measured.server_system_cpu_s = Some(1.5);
        measured.steal_s = Some(0.25);
        let old = outcome("nchan", 100_000.0, true);
        let t = table(&[measured, old]);
        let row = t.lines().find(|l| l.contains("server CPU in the kernel (%)")).unwrap_or_default();
        assert!(row.contains("| 75.00 | – | – |"), "{t}");
        let row = t.lines().find(|l| l.contains("stolen by the hypervisor")).unwrap_or_default();
        assert!(row.contains("| 250 | – | – |"), "{t}");
        // Stolen time is the machine's, not a server's: no ratio even when both have it.
        let mut other = outcome("nchan", 100_000.0, true);
        other.steal_s = Some(0.5);
        let mut again = outcome("herald", 100_000.0, true);
        again.steal_s = Some(0.25);
        let t = table(&[again, other]);
        let row = t.lines().find(|l| l.contains("stolen by the hypervisor")).unwrap_or_default();
        assert!(row.contains("| 250 | 500 | – |"), "{t}");
    }

    #[test]
    fn deliveries_per_write_are_the_deliveries_over_the_servers_write_calls() {
        let mut herald = outcome("herald", 100_000.0, true);
        herald.delivered = 5_000_000;
        herald.server_writes = Some(125_000);
        let mut nchan = outcome("nchan", 100_000.0, true);
        nchan.delivered = 5_000_000;
        nchan.server_writes = Some(5_000_000);
        let t = table(&[herald.clone(), nchan]);
        let row = t.lines().find(|l| l.contains("deliveries per server write call")).unwrap_or_default();
        assert!(row.contains("| 40.0 | 1.0 | 40.00x |"), "{t}");
        // Not measured (an older result file): a dash, not zero.
        let t = table(&[herald, outcome("nchan", 100_000.0, true)]);
        let row = t.lines().find(|l| l.contains("deliveries per server write call")).unwrap_or_default();
        assert!(row.contains("| 40.0 | – | – |"), "{t}");
    }

    #[test]
    fn a_case_measured_with_a_busy_polling_generator_says_so_in_its_title() {
        let mut busy = outcome("herald", 100_000.0, true);
        busy.busy_poll = true;
        let t = table(&[busy]);
        assert!(t.contains("1 run, the generator polling without sleeping)"), "{t}");
        let t = table(&[outcome("herald", 100_000.0, true)]);
        assert!(t.contains("1 run)") && !t.contains("polling"), "{t}");
    }

    #[test]
    fn a_paced_case_says_its_pace_in_its_title_and_its_text() {
        let mut paced = outcome("herald", 100_000.0, true);
        paced.pace = Some(1500.0);
        assert!(table(std::slice::from_ref(&paced)).contains("0 events at 1500 a second, 1 run)"));
        assert!(paced.human().contains("(paced at 1500 a second)"), "{}", paced.human());
        let unpaced = outcome("herald", 100_000.0, true);
        assert!(!table(std::slice::from_ref(&unpaced)).contains("a second") && !unpaced.human().contains("paced"));
    }

    #[test]
    fn medians_of_even_counts_are_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
