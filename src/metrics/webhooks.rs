//! The lifecycle webhooks' counters (`docs/backend.md`): occurrences sent, failed (given up
//! after every try) and dropped (the queue was full), requests retried, and the queue's depth.
//! The webhooks' delivery task shares them with the node's [`crate::metrics::Metrics`], which
//! renders them with the rest of `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Occurrences the application acknowledged.
    pub sent: AtomicU64,
    /// Occurrences given up after `webhooks.max_attempts` tries.
    pub failed: AtomicU64,
    /// Occurrences not queued: the queue was full.
    pub dropped: AtomicU64,
    /// Requests sent again after a failed try.
    pub retried: AtomicU64,
    /// Occurrences waiting in the queue now.
    pub queued: AtomicU64,
}

impl Metrics {
    /// Appends the Prometheus text of these counters to `out`.
    pub fn render(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP herald_webhook_events_total Lifecycle webhook occurrences, by result.\n\
             # TYPE herald_webhook_events_total counter"
        );
        for (result, counter) in [("sent", &self.sent), ("failed", &self.failed), ("dropped", &self.dropped)] {
            let _ = writeln!(out, "herald_webhook_events_total{{result=\"{result}\"}} {}", load(counter));
        }
        let _ = writeln!(
            out,
            "# HELP herald_webhook_retries_total Webhook requests sent again after a failed try.\n\
             # TYPE herald_webhook_retries_total counter\n\
             herald_webhook_retries_total {}\n\
             # HELP herald_webhook_queue_depth Webhook occurrences waiting to be sent.\n\
             # TYPE herald_webhook_queue_depth gauge\n\
             herald_webhook_queue_depth {}",
            load(&self.retried),
            load(&self.queued)
        );
    }
}
