//! The job's real work: counting the primes below a limit with a segmented sieve of
//! Eratosthenes, one slice at a time, so that progress is reported as the work gets done
//! and a cancel takes effect between slices.

use std::sync::atomic::{AtomicBool, Ordering};

/// The work is cut into this many slices; each one finished is one progress report.
pub const SLICES: u64 = 100;

/// Where the count stands after a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// 1 to 100.
    pub percent: u8,
    /// Every number below this has been checked.
    pub checked: u64,
    /// Primes found below `checked`.
    pub primes: u64,
}

/// Counts the primes below `limit`, calling `report` after each slice. Returns `None` if
/// `cancelled` was set before the count finished. CPU-bound: run it on a blocking thread.
pub fn count_below(limit: u64, cancelled: &AtomicBool, mut report: impl FnMut(Progress)) -> Option<u64> {
    let base = small_primes(isqrt(limit) + 1);
    let mut sieve = Vec::new();
    let mut primes = 0;
    for i in 0..SLICES {
        if cancelled.load(Ordering::Relaxed) {
            return None;
        }
        let (lo, hi) = (limit * i / SLICES, limit * (i + 1) / SLICES);
        primes += count_in(lo, hi, &base, &mut sieve);
        report(Progress { percent: ((i + 1) * 100 / SLICES) as u8, checked: hi, primes });
    }
    Some(primes)
}

/// Primes in `lo..hi`, striking out multiples of the `base` primes (all primes up to √hi).
fn count_in(lo: u64, hi: u64, base: &[u64], composite: &mut Vec<bool>) -> u64 {
    composite.clear();
    composite.resize((hi - lo) as usize, false);
    for &p in base {
        if p * p >= hi {
            break;
        }
        let mut m = (p * p).max(lo.div_ceil(p) * p);
        while m < hi {
            composite[(m - lo) as usize] = true;
            m += p;
        }
    }
    let skip = 2u64.saturating_sub(lo).min(hi - lo) as usize; // 0 and 1 are not prime
    composite[skip..].iter().filter(|&&c| !c).count() as u64
}

/// Every prime below `n`, by a plain sieve.
fn small_primes(n: u64) -> Vec<u64> {
    let mut composite = vec![false; n as usize];
    let mut out = Vec::new();
    for i in 2..n {
        if !composite[i as usize] {
            out.push(i);
            let mut m = i * i;
            while m < n {
                composite[m as usize] = true;
                m += i;
            }
        }
    }
    out
}

fn isqrt(n: u64) -> u64 {
    let mut r = (n as f64).sqrt() as u64;
    while r * r > n {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= n {
        r += 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_trial_division(limit: u64) -> u64 {
        (2..limit).filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)).count() as u64
    }

    #[test]
    fn the_sliced_sieve_agrees_with_trial_division_at_every_size() {
        let never = AtomicBool::new(false);
        for limit in (0..300).chain([1_000, 7_919, 7_920, 10_007, 65_536]) {
            assert_eq!(count_below(limit, &never, |_| {}), Some(by_trial_division(limit)), "below {limit}");
        }
    }

    #[test]
    fn progress_rises_to_100_with_the_running_count() {
        let never = AtomicBool::new(false);
        let mut seen = Vec::new();
        let total = count_below(20_000, &never, |p| seen.push(p));
        assert_eq!(seen.len() as u64, SLICES);
        assert!(seen.windows(2).all(|w| w[0].percent < w[1].percent && w[0].primes <= w[1].primes));
        let last = seen.last().copied();
        assert_eq!(last, Some(Progress { percent: 100, checked: 20_000, primes: by_trial_division(20_000) }));
        assert_eq!(total, Some(by_trial_division(20_000)));
    }

    #[test]
    fn a_cancel_stops_the_count_at_the_next_slice() {
        let cancelled = AtomicBool::new(false);
        let mut reports = 0;
        let result = count_below(100_000, &cancelled, |_| {
            reports += 1;
            if reports == 3 {
                cancelled.store(true, Ordering::Relaxed);
            }
        });
        assert_eq!((result, reports), (None, 3));
    }
}
