//! Metrics: counters kept where the work happens, rendered in Prometheus text format.
//!
//! The hot path only bumps atomics (events written are counted once per write batch, the
//! latency histogram observes one event per batch). [`render`] reads them, plus the
//! gauges that the hub and engine already know, when `/metrics` is scraped. Labels have
//! bounded cardinality: reasons and results, never channels or users.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub mod hooks;
pub mod webhooks;
pub mod websocket;

use crate::engine::Engine;
use crate::hub::Hub;

/// Declares a label enum: its variants, the label each renders as, and `ALL`, every variant
/// in declaration order. The counters are arrays indexed by `variant as usize`, and
/// rendering walks `ALL`, so a new variant is counted and rendered without more code.
macro_rules! labels {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order (`ALL[v as usize] == v`).
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// How many variants there are.
            pub const COUNT: usize = Self::ALL.len();

            /// The label value in the Prometheus exposition.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

labels! {
    /// Why a publish was refused (the `reason` label of `herald_publish_refused_total`).
    PublishRefusal {
        Invalid => "invalid",
        Unauthorized => "unauthorized",
        Forbidden => "forbidden",
        RateLimited => "rate_limited",
        TooLarge => "too_large",
        AuthUnavailable => "auth_unavailable",
        EngineUnavailable => "engine_unavailable",
        /// The application's hook said no.
        HookDenied => "hook_denied",
        /// The application's hook gave no usable answer in time.
        HookUnavailable => "hook_unavailable",
        /// A fault of the node itself (`500 internal_error`).
        Internal => "internal",
    }
}

labels! {
    /// Why a stream was refused (the `reason` label of `herald_subscribe_refused_total`).
    SubscribeRefusal {
        Invalid => "invalid",
        Unauthorized => "unauthorized",
        Forbidden => "forbidden",
        Banned => "banned",
        AtCapacity => "at_capacity",
        UserLimit => "user_limit",
        ChannelLimit => "channel_limit",
        Draining => "draining",
        AuthUnavailable => "auth_unavailable",
        EngineUnavailable => "engine_unavailable",
        /// The application's hook said no.
        HookDenied => "hook_denied",
        /// The application's hook gave no usable answer in time.
        HookUnavailable => "hook_unavailable",
        /// A fault of the node itself (`500 internal_error`).
        Internal => "internal",
    }
}

labels! {
    /// What a disconnect names (the `target` label).
    DisconnectKind {
        User => "user",
        Connection => "connection",
        Channel => "channel",
    }
}

/// Node-level counters that are not the hub's or the engine's.
#[derive(Debug, Default)]
pub struct Metrics {
    pub publish_accepted: AtomicU64,
    publish_refused: [AtomicU64; PublishRefusal::COUNT],
    subscribe_refused: [AtomicU64; SubscribeRefusal::COUNT],
    pub resumes_replayed: AtomicU64,
    pub resumes_reset: AtomicU64,
    /// Disconnects asked of this node, by target.
    disconnects: [AtomicU64; DisconnectKind::COUNT],
    /// Connections this node closed for a disconnect, by target.
    disconnected: [AtomicU64; DisconnectKind::COUNT],
    /// Bans set and lifted through this node.
    pub bans: AtomicU64,
    pub unbans: AtomicU64,
    /// The WebSocket transport's own counters.
    pub websocket: websocket::Metrics,
    /// The backend hooks' counters.
    pub hooks: hooks::Metrics,
    /// The lifecycle webhooks' counters, shared with their delivery task.
    pub webhooks: std::sync::Arc<webhooks::Metrics>,
    /// Events forwarded to `centrifugo.mirror_url`, by outcome (shared with the mirror's task).
    pub mirror: std::sync::Arc<MirrorCounters>,
}

/// What became of the events offered to `centrifugo.mirror_url`.
#[derive(Debug, Default)]
pub struct MirrorCounters {
    /// Accepted by the mirror's API.
    pub sent: AtomicU64,
    /// Sent, but refused or not answered.
    pub failed: AtomicU64,
    /// Dropped because the mirror's queue was full.
    pub dropped: AtomicU64,
}

impl Metrics {
    pub fn refuse_publish(&self, reason: PublishRefusal) {
        self.publish_refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refuse_subscribe(&self, reason: SubscribeRefusal) {
        self.subscribe_refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_disconnect(&self, target: DisconnectKind) {
        self.disconnects[target as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_disconnected(&self, target: DisconnectKind, connections: usize) {
        self.disconnected[target as usize].fetch_add(connections as u64, Ordering::Relaxed);
    }

    pub fn publish_refused(&self, reason: PublishRefusal) -> u64 {
        self.publish_refused[reason as usize].load(Ordering::Relaxed)
    }

    pub fn subscribe_refused(&self, reason: SubscribeRefusal) -> u64 {
        self.subscribe_refused[reason as usize].load(Ordering::Relaxed)
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
    for reason in PublishRefusal::ALL {
        let v = m.publish_refused(*reason);
        o.value("herald_publish_refused_total", &format!("reason=\"{}\"", reason.label()), v);
    }
    o.metric("herald_subscribe_refused_total", "counter", "Stream requests refused, by reason.");
    for reason in SubscribeRefusal::ALL {
        let v = m.subscribe_refused(*reason);
        o.value("herald_subscribe_refused_total", &format!("reason=\"{}\"", reason.label()), v);
    }
    o.single(
        "herald_slow_consumer_disconnects_total",
        "counter",
        "Connections closed because their queue overflowed.",
        load(&hub.stats.slow_disconnects),
    );
    o.single(
        "herald_slow_consumer_dropped_events_total",
        "counter",
        "Events dropped from full queues of drop_oldest streams.",
        load(&hub.stats.slow_dropped),
    );
    o.single(
        "herald_slow_consumer_gaps_total",
        "counter",
        "gap notices written to drop_oldest streams.",
        load(&hub.stats.slow_gaps),
    );
    o.metric("herald_disconnects_total", "counter", "Disconnects asked of this node (API or library), by target.");
    for target in DisconnectKind::ALL {
        let v = load(&m.disconnects[*target as usize]);
        o.value("herald_disconnects_total", &format!("target=\"{}\"", target.label()), v);
    }
    o.metric(
        "herald_disconnected_connections_total",
        "counter",
        "Connections this node closed because a disconnect named them, by target.",
    );
    for target in DisconnectKind::ALL {
        let v = load(&m.disconnected[*target as usize]);
        o.value("herald_disconnected_connections_total", &format!("target=\"{}\"", target.label()), v);
    }
    o.metric(
        "herald_centrifugo_mirror_events_total",
        "counter",
        "Events forwarded to centrifugo.mirror_url, by outcome.",
    );
    for (result, v) in [("sent", &m.mirror.sent), ("failed", &m.mirror.failed), ("dropped", &m.mirror.dropped)] {
        o.value("herald_centrifugo_mirror_events_total", &format!("result=\"{result}\""), load(v));
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
    m.websocket.render(&mut o.0);
    m.hooks.render(&mut o.0);
    m.webhooks.render(&mut o.0);
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_enum_lists_each_variant_once_in_order() {
        for (i, r) in PublishRefusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in SubscribeRefusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in DisconnectKind::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[tokio::test]
    async fn every_refusal_reason_is_rendered_and_counts_where_it_is_named() {
        let herald = crate::Herald::new(crate::Config::default()).unwrap_or_else(|e| panic!("{e}"));
        herald.metrics().refuse_publish(PublishRefusal::TooLarge);
        herald.metrics().refuse_subscribe(SubscribeRefusal::Banned);
        herald.metrics().refuse_subscribe(SubscribeRefusal::Banned);
        let text = render(&herald);
        for r in PublishRefusal::ALL {
            let n = u8::from(*r == PublishRefusal::TooLarge);
            let line = format!("herald_publish_refused_total{{reason=\"{}\"}} {n}\n", r.label());
            assert!(text.contains(&line), "{line}");
        }
        for r in SubscribeRefusal::ALL {
            let n = if *r == SubscribeRefusal::Banned { 2 } else { 0 };
            let line = format!("herald_subscribe_refused_total{{reason=\"{}\"}} {n}\n", r.label());
            assert!(text.contains(&line), "{line}");
        }
    }
}
