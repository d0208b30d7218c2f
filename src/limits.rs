//! Rate limits: token buckets keyed by who is publishing, and slots held at once.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` per second; a publish of n
//! events takes n tokens or is refused with the time until it would fit. A batch larger
//! than the burst is let through from a full bucket and leaves it in debt, so the average
//! rate holds and no batch size is refused forever. Buckets of keys
//! that have been idle long enough to be full again are dropped by [`RateLimiter::sweep`],
//! so the map holds only recently active publishers.
//!
//! [`InFlight`] counts what a key holds at once rather than what it does per second: the
//! large answers being written to a client (`http::answers`), each a [`Slot`] given back when
//! it is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per key.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

/// The live buckets, each in a slot found by its key. The slot used last is tried first, by
/// one compare of its key: the publishes of a backend come under one key (its API key's),
/// which is then not hashed for each one (SipHash was about 190 instructions a publish).
#[derive(Default)]
struct Buckets {
    /// Each key's slot.
    index: HashMap<Arc<str>, usize>,
    slots: Vec<(Arc<str>, Bucket)>,
    /// The slot used last (any number if none is).
    last: usize,
}

impl Buckets {
    /// `key`'s bucket, a full one made if it has none.
    fn of(&mut self, key: &str, full: impl FnOnce() -> Bucket) -> &mut Bucket {
        let slot = match self.slots.get(self.last) {
            Some((known, _)) if crate::channel::same_bytes(known.as_bytes(), key.as_bytes()) => self.last,
            // Looked up before it is inserted, so that a known key costs no allocation.
            _ => match self.index.get(key) {
                Some(&slot) => slot,
                None => {
                    let key: Arc<str> = Arc::from(key);
                    self.index.insert(Arc::clone(&key), self.slots.len());
                    self.slots.push((key, full()));
                    self.slots.len() - 1
                }
            },
        };
        self.last = slot;
        &mut self.slots[slot].1
    }
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, buckets: Mutex::new(Buckets::default()) }
    }

    /// Takes `cost` tokens from `key`'s bucket, or says how long until they would be there.
    pub fn check(&self, key: &str, cost: f64) -> Result<(), Duration> {
        self.check_at(key, cost, crate::clock::mono())
    }

    fn check_at(&self, key: &str, cost: f64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.of(key, || Bucket { tokens: self.burst, last: now });
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
        let Buckets { index, slots, .. } = &mut *buckets;
        let live = slots.len();
        slots.retain(|(_, b)| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * self.rate < self.burst
        });
        if slots.len() == live {
            return;
        }
        // The slots left have moved: each key's is found anew.
        index.clear();
        index.extend(slots.iter().enumerate().map(|(slot, (key, _))| (Arc::clone(key), slot)));
        crate::maps::shrink(index);
        if slots.capacity() > 64 && slots.capacity() / 4 > slots.len() {
            slots.shrink_to(slots.len() * 2);
        }
    }

    /// Keys with a live bucket.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner).slots.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Slots per key, each held by a [`Slot`] until it is dropped: how many of a client's large
/// answers are being written at once (`http::answers`).
#[derive(Default)]
pub struct InFlight {
    counts: Mutex<HashMap<Box<str>, usize>>,
}

impl InFlight {
    /// Whether `key` holds `max` slots already.
    pub fn full(&self, key: &str, max: usize) -> bool {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).get(key).is_some_and(|n| *n >= max)
    }

    /// One of `key`'s `max` slots, or `None` when it holds them all.
    pub fn take(self: &Arc<Self>, key: &str, max: usize) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let held = counts.entry(key.into()).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(Slot { owner: Arc::clone(self), key: key.into() })
    }

    /// Keys holding a slot.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// A slot of [`InFlight`], given back when dropped (a key holding none is forgotten).
pub struct Slot {
    owner: Arc<InFlight>,
    key: Box<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = counts.get_mut(&*self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&*self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_slots_and_gets_one_back_when_one_is_dropped() {
        let in_flight = Arc::new(InFlight::default());
        let held: Vec<Slot> = (0..3).filter_map(|_| in_flight.take("ann", 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(in_flight.full("ann", 3) && in_flight.take("ann", 3).is_none());
        assert!(in_flight.take("bob", 3).is_some(), "another key has its own");
        let mut held = held;
        held.pop();
        assert!(!in_flight.full("ann", 3));
        assert!(in_flight.take("ann", 3).is_some());
        drop(held);
        assert_eq!(in_flight.keys(), 0, "a key that holds nothing is forgotten");
    }

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

    #[test]
    fn each_key_keeps_its_own_bucket_whichever_was_used_last_and_after_a_sweep_moves_them() {
        let rl = RateLimiter::new(10.0, 5.0);
        let t0 = Instant::now();
        assert_eq!(rl.check_at("a", 25.0, t0), Ok(()));
        assert_eq!(rl.check_at("b", 1.0, t0), Ok(()));
        assert_eq!(rl.check_at("c", 15.0, t0), Ok(()));
        // Alternating keys: each is charged in its own bucket.
        assert_eq!(rl.check_at("b", 4.0, t0), Ok(()));
        assert!(rl.check_at("b", 1.0, t0).is_err(), "b's burst is spent");
        // After a second b is full again and swept; a and c move to other slots.
        let t1 = t0 + Duration::from_secs(1);
        rl.sweep_at(t1);
        assert_eq!(rl.len(), 2);
        let wait = |key: &str| rl.check_at(key, 1.0, t1).err().unwrap_or_default().as_secs_f64();
        assert!((wait("c") - 0.1).abs() < 1e-6, "c is empty after a second: {}", wait("c"));
        assert!((wait("a") - 1.1).abs() < 1e-6, "a is 10 short after a second: {}", wait("a"));
        assert_eq!(rl.check_at("b", 5.0, t1), Ok(()), "b starts again from a full bucket");
        assert_eq!(rl.len(), 3);
    }
}
