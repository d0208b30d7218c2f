//! Channel occupancy in Redis, for the lifecycle webhooks: which nodes have local subscribers
//! of a channel, so that its first subscriber anywhere (occupied) and its last one leaving
//! (vacated) are each seen by exactly one node, the one whose script call made the change.
//!
//! Per channel, under its hash tag: `<channel>:occ`, a sorted set of node → lease expiry (ms),
//! and `<channel>:occ:seq`, the count of its changes. A node renews its channels every
//! heartbeat (the lease is the connection slots' one, three heartbeats); a node that dies
//! stops, and the next call on the channel (any node's) reports the vacancy.

use std::time::Duration;

use super::{RedisEngine, unavailable};
use crate::channel::ChannelName;
use crate::engine::{EngineError, OccupancyChange};

/// The script (`scripts/occupancy.lua`).
pub(super) const SCRIPT: &str = include_str!("scripts/occupancy.lua");

/// How long a channel's occupancy keys live after their last change: long enough that the
/// sequence keeps counting up across a quiet spell.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl RedisEngine {
    pub(super) async fn occupancy(
        &self,
        channel: &ChannelName,
        held: bool,
    ) -> Result<Vec<OccupancyChange>, EngineError> {
        let base = format!("{}:occ", self.pubsub_name(channel));
        let mut inv = self.occupancy_script.prepare_invoke();
        inv.key(&base).key(format!("{base}:seq"));
        inv.arg(&self.node_id).arg(u8::from(held)).arg(millis(self.slot_lease)).arg(millis(LIFETIME));
        let flat: Vec<u64> = inv.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(flat
            .chunks_exact(2)
            .filter_map(|p| match p {
                [kind, seq] => Some(OccupancyChange { occupied: *kind == 1, seq: *seq }),
                _ => None,
            })
            .collect())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
