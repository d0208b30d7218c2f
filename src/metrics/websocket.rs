//! The WebSocket transport's own counters: open sockets, frames in and out, closes by code.
//! They live in the node's [`crate::metrics::Metrics`] and are rendered with the rest of
//! `/metrics`; the counters shared with SSE (connections, refusals, slow consumers) count
//! sockets and streams together.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `code` label of `herald_websocket_closes_total`: the close codes the server sends,
/// `client` (the client closed, or its TCP connection ended) and `none` (the server dropped
/// the socket without a close frame: a slow consumer cut mid-write).
pub const CLOSE_CODES: [&str; 10] = ["1000", "1002", "1003", "1007", "1008", "1009", "1012", "1013", "client", "none"];

/// Per-node WebSocket counters.
#[derive(Debug, Default)]
pub struct Metrics {
    open: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    closes: [AtomicU64; CLOSE_CODES.len()],
}

impl Metrics {
    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, code: &str) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(i) = CLOSE_CODES.iter().position(|c| *c == code) {
            self.closes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn frames_out(&self, n: u64) {
        self.frames_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Appends the Prometheus text of these counters to `out`.
    pub fn render(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP herald_websocket_connections Open WebSockets on this node.\n\
             # TYPE herald_websocket_connections gauge\nherald_websocket_connections {}",
            load(&self.open)
        );
        let _ = writeln!(
            out,
            "# HELP herald_websocket_messages_total WebSocket frames received and sent, by direction.\n\
             # TYPE herald_websocket_messages_total counter\n\
             herald_websocket_messages_total{{direction=\"in\"}} {}\n\
             herald_websocket_messages_total{{direction=\"out\"}} {}",
            load(&self.frames_in),
            load(&self.frames_out)
        );
        let _ = writeln!(
            out,
            "# HELP herald_websocket_closes_total WebSockets closed, by close code.\n\
             # TYPE herald_websocket_closes_total counter"
        );
        for (code, v) in CLOSE_CODES.iter().zip(&self.closes) {
            let _ = writeln!(out, "herald_websocket_closes_total{{code=\"{code}\"}} {}", load(v));
        }
    }
}
