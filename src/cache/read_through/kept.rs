//! Entries of callers that fetch for themselves: the transparent proxy's stored responses.
//! They live in the same tiers as `/items` entries (memory, disk, Redis) and are purged the same
//! way, but the proxy judges their freshness by RFC 9111 and fetches them itself, so it needs
//! the tiers without the read-through's fetch: a lookup in every tier, and a store in every tier
//! with the fences a fetch's store has (a purge that overtakes it makes it undo its writes).

use std::sync::Arc;

use crate::cache::{Entry, Superseded, Tier, TierName};
use crate::origin::Origin;

use super::{Fence, ReadThrough};

impl<O: Origin> ReadThrough<O> {
    /// The entry `key` holds, from the first tier that has one not past its stale window; one
    /// found behind the memory tier is copied into the tiers in front. An entry of a shared tier
    /// (Redis) stored before a purge this replica knows of is not returned (the purge reached
    /// this replica before Redis was purged).
    pub async fn stored(&self, key: &str) -> Option<Arc<Entry>> {
        let now = self.now_ms();
        let tiers = &self.inner.tiers;
        for (i, tier) in tiers.iter().enumerate() {
            let found = tier.get(key).await.ok().flatten();
            let Some(entry) = self.unpurged(tier, key, found).filter(|e| e.stale_until_ms > now) else {
                continue;
            };
            for (t, front) in tiers[..i].iter().enumerate() {
                if front.name() == TierName::Memory {
                    let _ = front.put(key, entry.clone()).await;
                    continue;
                }
                let (inner, key, entry) = (self.inner.clone(), key.to_owned(), entry.clone());
                self.inner.inflight.tasks().spawn(async move {
                    let _ = inner.tiers[t].put(&key, entry).await;
                });
            }
            return Some(entry);
        }
        None
    }

    /// Stores `entry` (an answer whose fetch started at `started_ms`) under `key` in every
    /// tier: the first that keeps it before this returns, the others in the background, tracked
    /// for shutdown. A purge of the key or of one of its tags recorded since `started_ms`
    /// stops the store or makes it undo its writes, as for a fetch. `true` when it was kept.
    pub async fn keep(&self, key: &str, entry: Arc<Entry>, started_ms: u64) -> bool {
        let fence = Fence {
            superseded: Superseded::default(),
            started_ms,
            ticket: None,
        };
        let tiers = (0..self.inner.tiers.len()).collect();
        self.inner
            .store(key, &entry, &fence, tiers, &mut None)
            .await
            .is_none()
    }
}
