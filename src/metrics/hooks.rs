//! The backend hooks' counters (`docs/backend.md`): answers by hook and result, and the time
//! spent waiting for them. They live in the node's [`crate::metrics::Metrics`] and are
//! rendered with the rest of `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `hook` label: which hook was asked.
pub const HOOKS: [&str; 4] = ["connect", "subscribe", "publish", "rpc"];

/// The `result` label: `allowed`, `denied` (the app said no), `failed` (no usable answer in
/// time; the request was refused or, with `fail_open`, let through), `cached` (answered
/// from the cache, not asked).
pub const RESULTS: [&str; 4] = ["allowed", "denied", "failed", "cached"];

/// Per-node hook counters, indexed by [`HOOKS`] and [`RESULTS`].
#[derive(Debug, Default)]
pub struct Metrics {
    results: [[AtomicU64; RESULTS.len()]; HOOKS.len()],
    /// Microseconds spent waiting for answers (asked, not cached), per hook.
    wait_us: [AtomicU64; HOOKS.len()],
    asked: [AtomicU64; HOOKS.len()],
}

impl Metrics {
    /// Counts one outcome of hook `hook` ([`HOOKS`] index) as `result` ([`RESULTS`] index).
    pub(crate) fn count(&self, hook: usize, result: usize) {
        if let Some(c) = self.results.get(hook).and_then(|r| r.get(result)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the time one request to hook `hook` took, answered or not.
    pub(crate) fn waited(&self, hook: usize, took: Duration) {
        if let (Some(us), Some(n)) = (self.wait_us.get(hook), self.asked.get(hook)) {
            us.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends the Prometheus text of these counters to `out`.
    pub fn render(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP herald_hook_requests_total Backend hook outcomes, by hook and result.\n\
             # TYPE herald_hook_requests_total counter"
        );
        for (h, hook) in HOOKS.iter().enumerate() {
            for (r, result) in RESULTS.iter().enumerate() {
                let v = load(&self.results[h][r]);
                let _ = writeln!(out, "herald_hook_requests_total{{hook=\"{hook}\",result=\"{result}\"}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP herald_hook_duration_seconds Time spent waiting for backend hooks, by hook.\n\
             # TYPE herald_hook_duration_seconds summary"
        );
        for (h, hook) in HOOKS.iter().enumerate() {
            let secs = load(&self.wait_us[h]) as f64 / 1e6;
            let _ = writeln!(out, "herald_hook_duration_seconds_sum{{hook=\"{hook}\"}} {secs}");
            let _ = writeln!(out, "herald_hook_duration_seconds_count{{hook=\"{hook}\"}} {}", load(&self.asked[h]));
        }
    }
}
