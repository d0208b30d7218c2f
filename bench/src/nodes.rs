//! The `nodes` scenario's own parts: several nodes of one cluster measured one by one.
//!
//! Subscribers are spread over the nodes' subscribe URLs (worker process `w` connects to
//! node `w % nodes`), they follow `--channels` channels (subscriber `i` follows channel
//! `i % channels`, so every channel has subscribers on every node), and channel `c` is
//! published on node `c % nodes`: every event crosses the cluster's engine to reach most
//! of its subscribers. What this module adds to a run is the reading of each server process
//! apart ([`ServerReading`]): memory before, once every subscriber is held, and at the end,
//! and CPU while connecting and while publishing.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cli::RunArgs;
use crate::procfs::{Cpu, cpu, memory};
use crate::template::Template;

/// The subscribe URLs of every node, the first one's (`--sub-url`) first.
pub fn sub_urls(args: &RunArgs) -> Vec<String> {
    std::iter::once(&args.sub_url).chain(&args.node_sub_urls).cloned().collect()
}

/// The publish URL templates of every node, the first one's (`--pub-url`) first.
pub fn pub_templates(args: &RunArgs) -> Vec<Template> {
    std::iter::once(&args.pub_url).chain(&args.node_pub_urls).map(|u| Template::parse(u)).collect()
}

/// Publishing connections for `nodes` nodes: at least one per node and a multiple of the
/// node count, so that connection `k` (on node `k % nodes`) carries only channels `c` with
/// `c % publishers == k`, which are all published on that same node.
pub fn publishers(asked: u64, nodes: u64) -> u64 {
    let nodes = nodes.max(1);
    asked.clamp(1, 256).div_ceil(nodes) * nodes
}

/// One server process, read apart from the others.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerReading {
    pub pid: u32,
    /// RSS before the first connection, once every subscriber is held, and at the end, KiB.
    pub rss_before_kb: u64,
    pub rss_held_kb: u64,
    pub rss_after_kb: u64,
    /// CPU seconds while the subscribers connected, and from the first publish to the end.
    pub connect_cpu_s: f64,
    pub cpu_s: f64,
}

/// Readings taken at one moment of every server process, in `--server-pid` order.
pub struct Snapshot(Vec<(u32, u64, Cpu)>);

impl Snapshot {
    pub fn take(pids: &[u32]) -> Self {
        Self(pids.iter().map(|&p| (p, memory(p).map_or(0, |m| m.rss_kb), cpu(p).unwrap_or_default())).collect())
    }
}

/// Each server's reading from snapshots taken before connecting, once connected and held,
/// at the first publish, and at the end.
pub fn readings(before: &Snapshot, held: &Snapshot, publish: &Snapshot, end: &Snapshot) -> Vec<ServerReading> {
    before
        .0
        .iter()
        .zip(&held.0)
        .zip(publish.0.iter().zip(&end.0))
        .map(|((b, h), (p, e))| ServerReading {
            pid: b.0,
            rss_before_kb: b.1,
            rss_held_kb: h.1,
            rss_after_kb: e.1,
            connect_cpu_s: h.2.since(b.2).total(),
            cpu_s: e.2.since(p.2).total(),
        })
        .collect()
}

/// The readings as lines for people; `per_node` connections held by each of the first
/// `nodes` processes (the rest, like Redis, hold none).
pub fn human(servers: &[ServerReading], nodes: u64, per_node: f64, delivery_s: f64) -> String {
    let mut s = String::new();
    for (k, r) in servers.iter().enumerate() {
        let what = if (k as u64) < nodes { format!("node {}", k + 1) } else { "other".to_owned() };
        let grown = r.rss_held_kb as f64 - r.rss_before_kb as f64;
        let per = if (k as u64) < nodes && per_node > 0.0 {
            format!(", {:.2} KiB per connection held", grown / per_node)
        } else {
            String::new()
        };
        let busy = if delivery_s > 0.0 { r.cpu_s / delivery_s * 100.0 } else { 0.0 };
        let _ = writeln!(
            s,
            "  {what} (pid {}): RSS {} -> {} -> {} KiB{per}; CPU connecting {:.2} s, publishing {:.2} s ({busy:.0}% of a core)",
            r.pid, r.rss_before_kb, r.rss_held_kb, r.rss_after_kb, r.connect_cpu_s, r.cpu_s
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_are_a_multiple_of_the_nodes_so_a_channel_stays_on_one_node() {
        assert_eq!(publishers(4, 6), 6);
        assert_eq!(publishers(32, 6), 36);
        assert_eq!(publishers(0, 1), 1);
        for c in 0..100u64 {
            // Channel c goes through connection c % 36, which is on node (c % 36) % 6.
            assert_eq!((c % publishers(32, 6)) % 6, c % 6);
        }
    }
}
