//! Unique, time-sortable identifiers for events and connections.
//!
//! 48 bits of Unix milliseconds and 80 random bits, in Crockford base 32 (the ULID layout):
//! unique across nodes without coordination, and sortable by creation time.

use std::time::{SystemTime, UNIX_EPOCH};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A new 26-character identifier.
pub fn new_id() -> String {
    let value: u128 = (u128::from(now_ms() & 0xFFFF_FFFF_FFFF) << 80)
        | (u128::from(fastrand::u64(..)) << 16)
        | u128::from(fastrand::u16(..));
    let mut out = String::with_capacity(26);
    for i in (0..26).rev() {
        out.push(CROCKFORD[((value >> (i * 5)) & 31) as usize] as char);
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
    }
}
