//! Unique, time-sortable identifiers for events and connections.
//!
//! 48 bits of Unix milliseconds and 80 random bits, in Crockford base 32 (the ULID layout):
//! unique across nodes without coordination, and sortable by creation time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A new 26-character identifier.
pub fn new_id() -> String {
    as_str(&new_id_bytes()).to_owned()
}

/// A new identifier as a shared string: one allocation, not a `String` copied into an `Arc`.
pub fn new_shared_id() -> Arc<str> {
    Arc::from(as_str(&new_id_bytes()))
}

/// Every byte of an id is one of `CROCKFORD`'s ASCII letters and digits.
fn as_str(id: &[u8; 26]) -> &str {
    std::str::from_utf8(id).unwrap_or_default()
}

fn new_id_bytes() -> [u8; 26] {
    let value: u128 = (u128::from(now_ms() & 0xFFFF_FFFF_FFFF) << 80)
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
        let shared = new_shared_id();
        assert_eq!(shared.len(), 26);
        assert!(shared.bytes().all(|c| CROCKFORD.contains(&c)), "{shared}");
        assert!(a[..10] <= shared[..10], "{a} then {shared}");
    }
}
