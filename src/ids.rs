//! Unique, time-sortable identifiers for events and connections.
//!
//! 48 bits of Unix milliseconds and 80 random bits, in Crockford base 32 (the ULID layout):
//! unique across nodes without coordination, and sortable by creation time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    ms_of(crate::clock::wall())
}

/// Milliseconds since the Unix epoch at `at`.
pub fn ms_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A new 26-character identifier.
pub fn new_id() -> String {
    IdText::new(new_id_bytes()).as_str().to_owned()
}

/// A new identifier made at `ms` (Unix milliseconds, read by the caller: the events of a
/// publish share one reading of the clock, which costs more than the rest of the id), as a
/// shared string: one allocation, not a `String` copied into an `Arc`.
pub fn new_shared_id_at(ms: u64) -> Arc<str> {
    Arc::from(IdText::new(id_bytes_at(ms)).as_str())
}

/// An id's characters where `str::from_utf8` checks them fastest: aligned to a word and
/// padded to a whole number of its two-word blocks, which it then reads a block at a time
/// (about 60 instructions an id fewer than byte by byte, for an unaligned array of 26).
#[repr(C, align(16))]
struct IdText([u8; 32]);

impl IdText {
    fn new(id: [u8; 26]) -> Self {
        let mut text = [b'0'; 32];
        text[..26].copy_from_slice(&id);
        Self(text)
    }

    /// Every byte of an id (and of the padding) is one of `CROCKFORD`'s ASCII letters and
    /// digits.
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).ok().and_then(|text| text.get(..26)).unwrap_or_default()
    }
}

/// When an identifier (or a connection id, `c` and an identifier in lower case) was made, in
/// milliseconds since the Unix epoch: its first ten characters.
pub fn id_time_ms(id: &str) -> Option<u64> {
    let id = id.strip_prefix('c').filter(|rest| rest.len() == 26).unwrap_or(id);
    let mut ms: u64 = 0;
    for b in id.bytes().take(10) {
        let digit = CROCKFORD.iter().position(|c| *c == b.to_ascii_uppercase())?;
        ms = (ms << 5) | digit as u64;
    }
    (id.len() >= 10).then_some(ms)
}

/// A new identifier's 26 ASCII characters, made in place.
pub(crate) fn new_id_bytes() -> [u8; 26] {
    id_bytes_at(now_ms())
}

/// Each pair of characters, by the ten bits they stand for: an id is 13 lookups, not 26 (and
/// no shifts of a `u128`).
static PAIRS: [[u8; 2]; 1024] = {
    let mut pairs = [[0; 2]; 1024];
    let mut bits = 0;
    while bits < 1024 {
        pairs[bits] = [CROCKFORD[bits >> 5], CROCKFORD[bits & 31]];
        bits += 1;
    }
    pairs
};

/// The id of 48 bits of `ms` then 80 random bits (a `u64`, then a `u16`), five bits a
/// character from the highest (the two above 128 are zero).
fn id_bytes_at(ms: u64) -> [u8; 26] {
    let ms = ms & 0xFFFF_FFFF_FFFF;
    let high = fastrand::u64(..);
    // The 40 random bits below `high`'s top 40: its low 24, then 16 more.
    let low = ((high & 0xFF_FFFF) << 16) | u64::from(fastrand::u16(..));
    // Ten bits a pair: the top two zeros and eight of `ms`, its other 40, the random 80.
    let tens = [
        ms >> 40,
        ms >> 30,
        ms >> 20,
        ms >> 10,
        ms,
        high >> 54,
        high >> 44,
        high >> 34,
        high >> 24,
        low >> 30,
        low >> 20,
        low >> 10,
        low,
    ];
    let mut out = [0u8; 26];
    for (pair, bits) in out.as_chunks_mut::<2>().0.iter_mut().zip(tens) {
        *pair = PAIRS[(bits & 1023) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 26);
        assert_ne!(a, b);
        assert!(a[..10] <= b[..10], "{a} then {b}");
        let shared = new_shared_id_at(now_ms());
        assert_eq!(shared.len(), 26);
        assert!(shared.bytes().all(|c| CROCKFORD.contains(&c)), "{shared}");
        assert!(a[..10] <= shared[..10], "{a} then {shared}");
        let at = new_shared_id_at(1_700_000_000_123);
        assert_eq!(id_time_ms(&at), Some(1_700_000_000_123));
    }

    /// The id of `ms` and the random `high` and `low`, a character at a time from a `u128`.
    fn id_of_u128(ms: u64, high: u64, low: u16) -> [u8; 26] {
        let value: u128 = (u128::from(ms & 0xFFFF_FFFF_FFFF) << 80) | (u128::from(high) << 16) | u128::from(low);
        std::array::from_fn(|i| CROCKFORD[((value >> ((25 - i) * 5)) & 31) as usize])
    }

    #[test]
    fn an_id_is_its_time_and_random_bits_five_bits_a_character_from_the_highest() {
        let mut cases = vec![(0, 0, 0), (u64::MAX, u64::MAX, u16::MAX), (1_700_000_000_123, 1 << 63, 1)];
        for bit in 0..64 {
            cases.push((1 << bit, 1 << bit, 1 << (bit % 16)));
        }
        let mut rng = fastrand::Rng::with_seed(22);
        cases.extend((0..10_000).map(|_| (rng.u64(..), rng.u64(..), rng.u16(..))));
        for (ms, high, low) in cases {
            // The same draws, in the same order, as `id_bytes_at` makes them.
            fastrand::seed(high ^ u64::from(low));
            let (h, l) = (fastrand::u64(..), fastrand::u16(..));
            fastrand::seed(high ^ u64::from(low));
            let id = id_bytes_at(ms);
            assert_eq!(id, id_of_u128(ms, h, l), "{ms} {h} {l}");
            assert_eq!(IdText::new(id).as_str().as_bytes(), id);
        }
    }

    #[test]
    fn an_ids_time_is_when_it_was_made_in_either_case() {
        let before = now_ms();
        let id = new_id();
        let after = now_ms();
        let made = id_time_ms(&id).unwrap_or_default();
        assert!((before..=after).contains(&made), "{before} <= {made} <= {after}");
        assert_eq!(id_time_ms(&format!("c{}", id.to_lowercase())), Some(made));
        assert_eq!(id_time_ms("short"), None);
    }
}
