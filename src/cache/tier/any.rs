//! The closed set of tiers the service has, as one type: the read-through holds a list of them.

use std::sync::Arc;

use super::disk::DiskTier;
use super::memory::MemoryTier;
use super::redis::RedisTier;
use super::{Tier, TierError, TierHealth, TierName};
use crate::cache::entry::Entry;
use crate::cache::purge::{PurgeMode, Target};

/// One of the service's tiers: an enum rather than `dyn Tier`, so a lookup costs no boxed future.
#[derive(Clone)]
pub enum AnyTier {
    /// The in-process tier.
    Memory(MemoryTier),
    /// The local disk tier.
    Disk(DiskTier),
    /// The shared Redis tier.
    Redis(RedisTier),
}

/// Calls `$call` on whichever tier `$tier` is.
macro_rules! each {
    ($tier:expr, $t:ident => $call:expr) => {
        match $tier {
            AnyTier::Memory($t) => $call,
            AnyTier::Disk($t) => $call,
            AnyTier::Redis($t) => $call,
        }
    };
}

impl Tier for AnyTier {
    fn name(&self) -> TierName {
        each!(self, t => t.name())
    }

    fn shared(&self) -> bool {
        each!(self, t => t.shared())
    }

    async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, TierError> {
        each!(self, t => t.get(key).await)
    }

    async fn get_many(&self, keys: &[&str]) -> Vec<Result<Option<Arc<Entry>>, TierError>> {
        each!(self, t => t.get_many(keys).await)
    }

    fn get_now(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        each!(self, t => t.get_now(key))
    }

    fn reweigh(&self, key: &str, entry: &Arc<Entry>) {
        each!(self, t => t.reweigh(key, entry))
    }

    async fn put(&self, key: &str, entry: Arc<Entry>) -> Result<bool, TierError> {
        each!(self, t => t.put(key, entry).await)
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        each!(self, t => t.remove(key).await)
    }

    async fn mark_stale(&self, key: &str, now_ms: u64) -> Result<(), TierError> {
        each!(self, t => t.mark_stale(key, now_ms).await)
    }

    fn clear_own(&self) {
        each!(self, t => t.clear_own())
    }

    async fn purge(&self, key: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        each!(self, t => t.purge(key, mode, now_ms).await)
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        each!(self, t => t.purge_tag(tag, mode, now_ms).await)
    }

    async fn note_purge(&self, target: &Target, mode: PurgeMode, at_ms: u64) -> bool {
        each!(self, t => Tier::note_purge(t, target, mode, at_ms).await)
    }

    fn purge_horizon_ms(&self) -> Option<u64> {
        each!(self, t => Tier::purge_horizon_ms(t))
    }

    fn health(&self) -> TierHealth {
        each!(self, t => Tier::health(t))
    }

    async fn close(&self) {
        each!(self, t => Tier::close(t).await)
    }
}
