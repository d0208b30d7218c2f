//! A latency histogram with fixed buckets: observed on the hot path (one atomic add per
//! bucket hit), read when `/metrics` is scraped. It sits below the hub, which observes into
//! it, and the metrics exposition, which renders it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Each bucket's upper bound (seconds) with the observations at or below it (cumulative,
    /// as Prometheus counts them); observations above the last bound are in [`Self::count`].
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut total = 0;
        LATENCY_BUCKETS.iter().zip(&self.buckets).map(move |(bound, n)| {
            total += n.load(Ordering::Relaxed);
            (*bound, total)
        })
    }

    /// The sum of every observation, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_cumulatively_and_the_sum_is_in_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(10));
        let buckets: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(buckets.first(), Some(&(0.0005, 1)));
        assert_eq!(buckets.iter().find(|(b, _)| *b == 0.025), Some(&(0.025, 2)));
        assert_eq!(buckets.last(), Some(&(2.5, 2)), "ten seconds is above every bound");
        assert_eq!(h.count(), 3);
        assert!((h.sum_seconds() - 10.0203).abs() < 1e-9);
    }
}
