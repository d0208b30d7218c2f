//! Rate limits: token buckets keyed by who is publishing.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` per second; a publish of n
//! events takes n tokens or is refused with the time until it would fit. A batch larger
//! than the burst is let through from a full bucket and leaves it in debt, so the average
//! rate holds and no batch size is refused forever. Buckets of keys
//! that have been idle long enough to be full again are dropped by [`RateLimiter::sweep`],
//! so the map holds only recently active publishers.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per key.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes `cost` tokens from `key`'s bucket, or says how long until they would be there.
    pub fn check(&self, key: &str, cost: f64) -> Result<(), Duration> {
        self.check_at(key, cost, Instant::now())
    }

    fn check_at(&self, key: &str, cost: f64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up before it is inserted, so that a known key costs no allocation.
        let bucket = match buckets.get_mut(key) {
            Some(bucket) => bucket,
            None => buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.burst, last: now }),
        };
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        let needed = cost.min(self.burst);
        if bucket.tokens >= needed {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - bucket.tokens) / self.rate))
        }
    }

    /// Drops buckets that would be full by now (a bucket in debt after a large publish
    /// takes longer to fill than an empty one), and gives back the map's memory after a
    /// burst of publishers.
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    fn sweep_at(&self, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * self.rate < self.burst
        });
        crate::maps::shrink(&mut buckets);
    }

    /// Keys with a live bucket.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let rl = RateLimiter::new(10.0, 5.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(rl.check_at("u", 1.0, t0), Ok(()));
        }
        let wait = rl.check_at("u", 1.0, t0).err().unwrap_or_default();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(rl.check_at("other", 1.0, t0), Ok(()), "keys are independent");
        assert_eq!(rl.check_at("u", 1.0, t0 + Duration::from_millis(100)), Ok(()));
        // More than a burst fits a full bucket once, then the debt is paid back at the rate.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(rl.check_at("u", 7.0, later), Ok(()));
        let wait = rl.check_at("u", 1.0, later).err().unwrap_or_default();
        assert!((wait.as_secs_f64() - 0.3).abs() < 1e-6, "two tokens of debt and one needed: {wait:?}");
    }

    #[test]
    fn a_bucket_is_forgotten_once_full_again_and_not_while_in_debt() {
        let rl = RateLimiter::new(10.0, 5.0);
        let t0 = Instant::now();
        assert_eq!(rl.check_at("debt", 25.0, t0), Ok(()));
        assert_eq!(rl.check_at("light", 1.0, t0), Ok(()));
        // Half a second: the light bucket is full again; the indebted one is 20 short.
        rl.sweep_at(t0 + Duration::from_millis(500));
        assert_eq!(rl.len(), 1);
        assert!(rl.check_at("debt", 1.0, t0 + Duration::from_millis(500)).is_err(), "the debt was kept");
        rl.sweep_at(t0 + Duration::from_secs(3));
        assert!(rl.is_empty());
    }
}
