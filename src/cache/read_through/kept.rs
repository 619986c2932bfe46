//! Entries of callers that fetch for themselves: the transparent proxy's stored responses.
//! They live in the same tiers as `/items` entries (memory, disk, Redis) and are purged the same
//! way, but the proxy judges their freshness by RFC 9111 and fetches them itself, so it needs
//! the tiers without the read-through's fetch: a lookup in every tier, and a store in every tier
//! with the fences a fetch's store has (a purge that overtakes it makes it undo its writes).

use std::sync::Arc;

use crate::cache::fleet::{Held, Turn};

/// What a replica about to fetch a resource for itself should do ([`ReadThrough::fleet_turn`]).
pub enum FleetTurn {
    /// This replica holds the resource's fleet lock: fetch, then hand it to
    /// [`ReadThrough::keep`] (or let it go).
    Lead(FleetLease),
    /// Another replica stored the resource while this one waited: look it up again.
    Filled,
}

/// The fleet lock this replica holds on a resource.
pub struct FleetLease(Held);

impl FleetLease {
    /// Lets the lock go; `stored` false tells the waiting replicas the answer may not be stored,
    /// so they fetch at once.
    pub async fn release(self, stored: bool) {
        self.0.release(stored).await;
    }
}
use crate::cache::{Entry, Superseded, Tier};
use crate::origin::Origin;

use super::{Fence, ReadThrough};

impl<O: Origin> ReadThrough<O> {
    /// The entry `key` holds, from the first tier that has one not past its stale window; one
    /// found behind the memory tier is copied into the tiers in front. An entry of a shared tier
    /// (Redis) stored before a purge this replica knows of is not returned (the purge reached
    /// this replica before Redis was purged).
    ///
    /// `sound` says whether an entry is one the caller could have stored: one that is not (a
    /// value something else wrote into Redis) is neither returned nor copied in front.
    pub async fn stored(&self, key: &str, sound: impl Fn(&Entry) -> bool) -> Option<Arc<Entry>> {
        let now = self.now_ms();
        let tiers = &self.inner.tiers;
        for (i, tier) in tiers.iter().enumerate() {
            let found = tier.get(key).await.ok().flatten();
            let Some(entry) = self
                .unpurged(tier, key, found)
                .filter(|e| e.stale_until_ms > now && sound(e))
            else {
                continue;
            };
            self.fill_front(i, key, &entry).await;
            return Some(entry);
        }
        None
    }

    /// Stores `entry` (an answer whose fetch started at `started_ms`) under `key` in every
    /// tier: the first that keeps it before this returns, the others in the background, tracked
    /// for shutdown. A purge of the key or of one of its tags recorded since `started_ms`
    /// stops the store or makes it undo its writes, as for a fetch. `true` when it was kept.
    /// With `held` (this replica's fleet lock on the resource), the lock is let go once every
    /// tier is written, so the replicas waiting on it find the entry in Redis.
    pub async fn keep(
        &self,
        key: &str,
        entry: Arc<Entry>,
        started_ms: u64,
        held: Option<FleetLease>,
    ) -> bool {
        let fence = Fence {
            superseded: Superseded::default(),
            started_ms,
            ticket: None,
        };
        let tiers = (0..self.inner.tiers.len()).collect();
        let mut held = held.map(|lease| lease.0);
        let kept = self
            .inner
            .store(key, &entry, &fence, tiers, &mut held)
            .await
            .is_none();
        if let Some(held) = held {
            held.release(kept).await;
        }
        kept
    }

    /// Fleet-wide coalescing for a caller that fetches for itself: with Redis, this replica's
    /// turn to fetch `key` (its lock, to hand to [`ReadThrough::keep`] or let go), or what
    /// another replica stored while this one waited (at most `FLEET_LOCK_WAIT_MS`); `None`
    /// without Redis, or when this replica should fetch unguarded.
    pub async fn fleet_turn(&self, key: &str) -> Option<FleetTurn> {
        match self.inner.fleet.as_ref()?.take_turn(key).await {
            Turn::Alone => None,
            Turn::Lead(held) => Some(FleetTurn::Lead(FleetLease(held))),
            Turn::Filled(_) => Some(FleetTurn::Filled),
            // Only an `/items` fetch tells its failure (a proxied one lets go plainly): should
            // one share a key with this caller, it fetches for itself.
            Turn::Failed(_) => None,
        }
    }
}
