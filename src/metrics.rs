//! Metrics: counters kept where the work happens, rendered in Prometheus text format.
//!
//! The hot path only bumps atomics (events written are counted once per write batch, the
//! latency histogram observes one event per batch). [`render`] reads them, plus the
//! gauges that the hub and engine already know, when `/metrics` is scraped. Labels have
//! bounded cardinality: reasons and results, never channels or users.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::Engine;
pub use crate::histogram::{Histogram, LATENCY_BUCKETS};
use crate::hub::Hub;

/// Reasons a publish is refused (the `reason` label).
pub const PUBLISH_REFUSALS: [&str; 7] =
    ["invalid", "unauthorized", "forbidden", "rate_limited", "too_large", "auth_unavailable", "engine_unavailable"];

/// Reasons a subscription is refused (the `reason` label).
pub const SUBSCRIBE_REFUSALS: [&str; 10] = [
    "invalid",
    "unauthorized",
    "forbidden",
    "banned",
    "at_capacity",
    "user_limit",
    "channel_limit",
    "draining",
    "auth_unavailable",
    "engine_unavailable",
];

/// What a disconnect names (the `target` label).
pub const DISCONNECT_TARGETS: [&str; 3] = ["user", "connection", "channel"];

/// Node-level counters that are not the hub's or the engine's.
#[derive(Debug, Default)]
pub struct Metrics {
    pub publish_accepted: AtomicU64,
    publish_refused: [AtomicU64; PUBLISH_REFUSALS.len()],
    subscribe_refused: [AtomicU64; SUBSCRIBE_REFUSALS.len()],
    pub resumes_replayed: AtomicU64,
    pub resumes_reset: AtomicU64,
    /// Disconnects asked of this node, by target.
    disconnects: [AtomicU64; DISCONNECT_TARGETS.len()],
    /// Connections this node closed for a disconnect, by target.
    disconnected: [AtomicU64; DISCONNECT_TARGETS.len()],
    /// Bans set and lifted through this node.
    pub bans: AtomicU64,
    pub unbans: AtomicU64,
}

impl Metrics {
    pub fn refuse_publish(&self, reason: &str) {
        if let Some(i) = PUBLISH_REFUSALS.iter().position(|r| *r == reason) {
            self.publish_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn refuse_subscribe(&self, reason: &str) {
        if let Some(i) = SUBSCRIBE_REFUSALS.iter().position(|r| *r == reason) {
            self.subscribe_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_disconnect(&self, target: &str) {
        if let Some(i) = DISCONNECT_TARGETS.iter().position(|t| *t == target) {
            self.disconnects[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_disconnected(&self, target: &str, connections: usize) {
        if let Some(i) = DISCONNECT_TARGETS.iter().position(|t| *t == target) {
            self.disconnected[i].fetch_add(connections as u64, Ordering::Relaxed);
        }
    }

    pub fn publish_refused(&self, reason: &str) -> u64 {
        PUBLISH_REFUSALS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.publish_refused[i].load(Ordering::Relaxed))
    }

    pub fn subscribe_refused(&self, reason: &str) -> u64 {
        SUBSCRIBE_REFUSALS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.subscribe_refused[i].load(Ordering::Relaxed))
    }
}

struct Out(String);

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn value(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.metric(name, kind, help);
        self.value(name, "", v);
    }
}

/// What the exposition reads from a node. The node handle implements it, so that this module
/// reads the hub and the engine without importing the node handle above it.
pub trait Source {
    fn hub(&self) -> &Hub;
    fn metrics(&self) -> &Metrics;
    fn engine(&self) -> &dyn Engine;
    fn is_draining(&self) -> bool;
    fn uptime(&self) -> Duration;
}

/// The Prometheus text exposition of this node.
pub fn render(herald: &impl Source) -> String {
    let hub = herald.hub();
    let m = herald.metrics();
    let engine = herald.engine();
    let counters = engine.counters();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut o = Out(String::with_capacity(4096));
    o.single("sse_connections_total", "gauge", "Open SSE connections on this node.", hub.connection_count());
    o.single("sse_channels_total", "gauge", "Channels with at least one subscriber on this node.", hub.channel_count());
    o.single("sse_events_sent", "counter", "Events written to SSE clients.", load(&hub.stats.events_written));
    o.single(
        "redis_publish_errors",
        "counter",
        "Publishes the Redis engine could not complete.",
        counters.publish_errors,
    );
    o.single("herald_users_connected", "gauge", "Distinct users with a connection on this node.", hub.user_count());
    o.single("herald_publish_accepted_total", "counter", "Events accepted for publishing.", load(&m.publish_accepted));
    o.metric("herald_publish_refused_total", "counter", "Publish requests refused, by reason.");
    for (reason, v) in PUBLISH_REFUSALS.iter().zip(&m.publish_refused) {
        o.value("herald_publish_refused_total", &format!("reason=\"{reason}\""), load(v));
    }
    o.metric("herald_subscribe_refused_total", "counter", "Stream requests refused, by reason.");
    for (reason, v) in SUBSCRIBE_REFUSALS.iter().zip(&m.subscribe_refused) {
        o.value("herald_subscribe_refused_total", &format!("reason=\"{reason}\""), load(v));
    }
    o.single(
        "herald_slow_consumer_disconnects_total",
        "counter",
        "Connections closed because their queue overflowed.",
        load(&hub.stats.slow_disconnects),
    );
    o.metric("herald_disconnects_total", "counter", "Disconnects asked of this node (API or library), by target.");
    for (target, v) in DISCONNECT_TARGETS.iter().zip(&m.disconnects) {
        o.value("herald_disconnects_total", &format!("target=\"{target}\""), load(v));
    }
    o.metric(
        "herald_disconnected_connections_total",
        "counter",
        "Connections this node closed because a disconnect named them, by target.",
    );
    for (target, v) in DISCONNECT_TARGETS.iter().zip(&m.disconnected) {
        o.value("herald_disconnected_connections_total", &format!("target=\"{target}\""), load(v));
    }
    o.metric("herald_bans_total", "counter", "User bans set and lifted through this node.");
    o.value("herald_bans_total", "action=\"ban\"", load(&m.bans));
    o.value("herald_bans_total", "action=\"unban\"", load(&m.unbans));
    o.single(
        "herald_client_timeout_disconnects_total",
        "counter",
        "Connections closed after making no progress for the client timeout.",
        load(&hub.stats.timeout_disconnects),
    );
    o.single(
        "herald_token_expired_disconnects_total",
        "counter",
        "Streams ended because the token they were opened with expired.",
        load(&hub.stats.expired_disconnects),
    );
    let h = &hub.stats.latency;
    o.metric("herald_publish_to_write_seconds", "histogram", "Time from acceptance by this node to the write.");
    for (bound, cumulative) in h.cumulative() {
        o.value("herald_publish_to_write_seconds_bucket", &format!("le=\"{bound}\""), cumulative);
    }
    o.value("herald_publish_to_write_seconds_bucket", "le=\"+Inf\"", h.count());
    o.value("herald_publish_to_write_seconds_sum", "", h.sum_seconds());
    o.value("herald_publish_to_write_seconds_count", "", h.count());
    o.metric("herald_resumes_total", "counter", "Streams opened with Last-Event-ID, by result.");
    o.value("herald_resumes_total", "result=\"replayed\"", load(&m.resumes_replayed));
    o.value("herald_resumes_total", "result=\"reset\"", load(&m.resumes_reset));
    o.single("herald_engine_up", "gauge", "Whether the engine accepts publishes.", u8::from(engine.is_healthy()));
    o.single(
        "herald_engine_reconnects_total",
        "counter",
        "Times the engine reconnected to its backend.",
        counters.reconnects,
    );
    o.single(
        "herald_engine_watched_channels",
        "gauge",
        "Channels this node follows on Redis, each with a catch-up point.",
        counters.watched_channels,
    );
    o.single(
        "herald_engine_channels",
        "gauge",
        "Channel logs (position and history) the engine holds in this process.",
        counters.channels,
    );
    o.single("herald_draining", "gauge", "Whether the node is shutting down.", u8::from(herald.is_draining()));
    o.single("herald_uptime_seconds", "gauge", "Seconds since the node started.", herald.uptime().as_secs());
    o.metric("herald_build_info", "gauge", "Build information.");
    o.value("herald_build_info", &format!("version=\"{}\",engine=\"{}\"", env!("CARGO_PKG_VERSION"), engine.name()), 1);
    o.0
}
