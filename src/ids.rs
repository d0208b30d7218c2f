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
    as_str(&new_id_bytes()).to_owned()
}

/// A new identifier made at `ms` (Unix milliseconds, read by the caller: the events of a
/// publish share one reading of the clock, which costs more than the rest of the id), as a
/// shared string: one allocation, not a `String` copied into an `Arc`.
pub fn new_shared_id_at(ms: u64) -> Arc<str> {
    Arc::from(as_str(&id_bytes_at(ms)))
}

/// Every byte of an id is one of `CROCKFORD`'s ASCII letters and digits.
fn as_str(id: &[u8; 26]) -> &str {
    std::str::from_utf8(id).unwrap_or_default()
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

fn id_bytes_at(ms: u64) -> [u8; 26] {
    let value: u128 = (u128::from(ms & 0xFFFF_FFFF_FFFF) << 80)
        | (u128::from(fastrand::u64(..)) << 16)
        | u128::from(fastrand::u16(..));
    let mut out = [0u8; 26];
    for (i, b) in out.iter_mut().enumerate() {
        *b = CROCKFORD[((value >> ((25 - i) * 5)) & 31) as usize];
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
