//! Helpers for the node's long-lived maps (channel logs, tickets, rate-limit buckets), which
//! grow with a burst and must give their memory back after it.

use std::collections::HashMap;

/// Gives back the table of a map that held far more entries than it does now: `retain`
/// never shrinks, so a burst of channels would otherwise keep its memory for good.
pub(crate) fn shrink<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > 64 && map.capacity() / 4 > map.len() {
        map.shrink_to(map.len() * 2);
    }
}
