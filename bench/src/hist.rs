//! A latency histogram in microseconds: exact below 128 µs, then 64 buckets per power of
//! two (under 1.6% error). Small to merge and to send between processes.

use serde::{Deserialize, Serialize};

const LINEAR: u64 = 128;
const PER_OCTAVE: u64 = 64;
/// Up to 2^40 µs (12 days): more than any run.
const OCTAVES: u64 = 40 - 7;
const BUCKETS: usize = (LINEAR + OCTAVES * PER_OCTAVE) as usize;

#[derive(Clone, Debug)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - u64::from(v.leading_zeros()); // >= 7
    let mantissa = v >> (exp - 6); // in [64, 128)
    let i = LINEAR + (exp - 7) * PER_OCTAVE + (mantissa - PER_OCTAVE);
    (i as usize).min(BUCKETS - 1)
}

/// The smallest value of bucket `i`.
fn lower(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let exp = (i - LINEAR) / PER_OCTAVE + 7;
    let mantissa = (i - LINEAR) % PER_OCTAVE + PER_OCTAVE;
    mantissa << (exp - 6)
}

impl Hist {
    pub fn record(&mut self, micros: u64) {
        self.counts[index(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), as the lower edge of its bucket; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower(i).min(self.max);
            }
        }
        self.max
    }
}

/// On the wire: only the non-empty buckets.
#[derive(Serialize, Deserialize)]
struct Sparse {
    buckets: Vec<(u32, u64)>,
    max: u64,
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buckets = self.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i as u32, *c)).collect();
        Sparse { buckets, max: self.max }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sparse = Sparse::deserialize(d)?;
        let mut h = Hist { max: sparse.max, ..Hist::default() };
        for (i, c) in sparse.buckets {
            let slot = h.counts.get_mut(i as usize).ok_or_else(|| serde::de::Error::custom("bucket out of range"))?;
            *slot += c;
            h.total += c;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_two_percent_and_ordered() {
        let mut last = 0;
        for v in (0..200_000u64).chain([1 << 30, (1 << 39) + 12345]) {
            let lo = lower(index(v));
            assert!(lo <= v && v - lo <= v / 50, "{v} -> {lo}");
            assert!(index(v) >= last);
            last = index(v);
        }
    }

    #[test]
    fn quantiles_survive_a_round_trip_through_json() {
        let mut h = Hist::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let back: Hist =
            serde_json::from_str(&serde_json::to_string(&h).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((back.count(), back.max()), (1000, 1000));
        assert_eq!(back.quantile(0.5), 500); // the bucket [500, 504)
        assert_eq!(back.quantile(0.0), 1);
        assert_eq!(back.quantile(1.0), 1000);
    }
}
