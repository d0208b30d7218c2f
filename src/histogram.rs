//! A latency histogram with fixed buckets: observed on the hot path, read when `/metrics` is
//! scraped. It sits below the hub, which observes into it, and the metrics exposition, which
//! renders it.
//!
//! An observation is made on every write to a subscriber. A shared atomic counter costs a
//! locked instruction per update (about 10 ns on the machines Herald is measured on, three
//! per observation), so each of the first [`SHARDS`] threads that observe gets a shard of its
//! own, which only it writes: an update there is a plain load and store. Threads after those
//! share one shard by atomic adds. A scrape sums the shards.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Threads with a shard of their own: a node's runtime workers (one per core) and a few more.
const SHARDS: usize = 16;

/// The next thread's number; a thread keeps its number for its life, so a shard's writer is
/// one thread for the life of the process.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, once it has observed: `Some(i)` for its own, `None` for the
    /// shared one.
    static SHARD: Cell<Option<Option<usize>>> = const { Cell::new(None) };
}

fn own_shard() -> Option<usize> {
    SHARD.with(|shard| match shard.get() {
        Some(known) => known,
        None => {
            let n = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            let own = (n < SHARDS).then_some(n);
            shard.set(Some(own));
            own
        }
    })
}

/// One thread's counts (or the shared ones): a bucket per bound and one above them all.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// Adds to a counter that only this thread writes.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// A histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    own: [Shard; SHARDS],
    shared: Shard,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        match own_shard() {
            Some(s) => {
                let shard = &self.own[s];
                bump(&shard.buckets[i], 1);
                bump(&shard.sum_nanos, nanos);
            }
            None => {
                self.shared.buckets[i].fetch_add(1, Ordering::Relaxed);
                self.shared.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
            }
        }
    }

    fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.own.iter().chain(std::iter::once(&self.shared))
    }

    /// Observations in bucket `i` (the last: above every bound), over every shard.
    fn bucket(&self, i: usize) -> u64 {
        self.shards().map(|s| s.buckets[i].load(Ordering::Relaxed)).fold(0, u64::wrapping_add)
    }

    pub fn count(&self) -> u64 {
        (0..=LATENCY_BUCKETS.len()).map(|i| self.bucket(i)).fold(0, u64::wrapping_add)
    }

    /// Each bucket's upper bound (seconds) with the observations at or below it (cumulative,
    /// as Prometheus counts them); observations above the last bound are in [`Self::count`].
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut total = 0;
        LATENCY_BUCKETS.iter().enumerate().map(move |(i, bound)| {
            total += self.bucket(i);
            (*bound, total)
        })
    }

    /// The sum of every observation, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        let nanos = self.shards().map(|s| s.sum_nanos.load(Ordering::Relaxed)).fold(0, u64::wrapping_add);
        nanos as f64 / 1e9
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

    #[test]
    fn observations_from_many_threads_are_all_counted() {
        // More threads than shards: some write their own shard, the rest the shared one, and
        // every observation is counted once.
        let h = std::sync::Arc::new(Histogram::default());
        let threads: Vec<_> = (0..2 * SHARDS + 3)
            .map(|_| {
                let h = std::sync::Arc::clone(&h);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        h.observe(Duration::from_micros(300));
                        h.observe(Duration::from_secs(10));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap_or_default();
        }
        let n = (2 * SHARDS + 3) as u64 * 1000;
        assert_eq!(h.count(), 2 * n);
        assert_eq!(h.cumulative().last(), Some((2.5, n)));
        assert!((h.sum_seconds() - n as f64 * 10.0003).abs() < 1e-3);
    }
}
