//! The seam every cache tier sits behind, and the closed set of tiers the service has.

pub(crate) mod disk;
pub(crate) mod memory;
pub(crate) mod redis;

use std::future::Future;
use std::sync::Arc;

use self::disk::DiskTier;
use self::memory::MemoryTier;
use self::redis::RedisTier;
use super::entry::Entry;
use crate::cache::purge::PurgeMode;

/// Which tier; the same strings name it in metrics, spans, `Cache-Status` and `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierName {
    /// The in-process tier.
    Memory,
    /// The local disk tier.
    Disk,
    /// The shared Redis tier.
    Redis,
}

impl TierName {
    /// Every tier, for label sets registered at zero.
    pub const ALL: [TierName; 3] = [TierName::Memory, TierName::Disk, TierName::Redis];

    /// The name as it appears outside the code.
    pub fn as_str(self) -> &'static str {
        match self {
            TierName::Memory => "memory",
            TierName::Disk => "disk",
            TierName::Redis => "redis",
        }
    }
}

/// Why a tier could not answer; the request goes on without it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TierError {
    /// The tier is known to be down; it was not asked.
    #[error("tier unavailable")]
    Unavailable,
    /// The tier did not answer within its deadline.
    #[error("tier timed out")]
    Timeout,
    /// The tier could not be reached or broke off (or, in a cluster, is between owners).
    #[error("tier error: {0}")]
    Failed(String),
    /// The tier answered and refused the command (e.g. Redis at `maxmemory` with `noeviction`).
    #[error("tier refused: {0}")]
    Refused(String),
}

/// A place entries are kept. Methods take `&self`: each tier keeps its own concurrency inside.
pub trait Tier: Send + Sync {
    /// Which tier this is.
    fn name(&self) -> TierName;
    /// Whether every replica reads this same tier (Redis), rather than holding its own copy
    /// (memory, disk). A purge reaches a shared tier once, from the replica that took it; every
    /// replica applies it to its own tiers.
    fn shared(&self) -> bool;
    /// The entry for `key`, if the tier holds one that is not yet past its stale window.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Arc<Entry>>, TierError>> + Send;
    /// The entries for `keys`, one result per key in the same order, in as few round trips as
    /// the tier can manage (a batch read). The default asks [`Tier::get`] once per key, which is
    /// right for an in-process tier; a remote tier overrides it (Redis: `MGET`).
    fn get_many(
        &self,
        keys: &[&str],
    ) -> impl Future<Output = Vec<Result<Option<Arc<Entry>>, TierError>>> + Send {
        async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.push(self.get(key).await);
            }
            found
        }
    }
    /// The entry for `key` without waiting, when the tier can answer in place (it lives in this
    /// process); `None` when it would have to wait (then ask [`Tier::get`]).
    fn get_now(&self, _key: &str) -> Option<Option<Arc<Entry>>> {
        None
    }
    /// Weighs `entry` again if it is what the tier holds for `key` (it grew a compressed body);
    /// a tier holding another entry (newer, or none after a purge) is left alone.
    fn reweigh(&self, _key: &str, _entry: &Arc<Entry>) {}
    /// Stores `entry` for `key`, for as long as it is servable: `true` when the tier keeps it,
    /// `false` when it declined (bigger than the tier, not admitted, already past its stale
    /// window), so that `Cache-Status` says `stored` only when some tier did.
    fn put(&self, key: &str, entry: Arc<Entry>) -> impl Future<Output = Result<bool, TierError>> + Send;
    /// Forgets `key`.
    fn remove(&self, key: &str) -> impl Future<Output = Result<(), TierError>> + Send;
    /// Ends the freshness of `key`'s entry, keeping it servable stale (a soft purge).
    fn mark_stale(&self, key: &str, now_ms: u64) -> impl Future<Output = Result<(), TierError>> + Send {
        async move {
            if let Some(e) = self.get(key).await? {
                self.put(key, Arc::new(e.marked_stale(now_ms))).await?;
            }
            Ok(())
        }
    }
    /// Purges `key` (removes it, or marks it stale at `now_ms`): how many entries that touched.
    fn purge(
        &self,
        key: &str,
        mode: PurgeMode,
        now_ms: u64,
    ) -> impl Future<Output = Result<u64, TierError>> + Send {
        async move {
            if self.get(key).await?.is_none() {
                return Ok(0);
            }
            match mode {
                PurgeMode::Hard => self.remove(key).await?,
                PurgeMode::Soft => self.mark_stale(key, now_ms).await?,
            }
            Ok(1)
        }
    }
    /// Purges every entry carrying exactly `tag`: how many that touched.
    fn purge_tag(
        &self,
        tag: &str,
        mode: PurgeMode,
        now_ms: u64,
    ) -> impl Future<Output = Result<u64, TierError>> + Send;
    /// Forgets every entry this replica holds on its own, after a gap in the purge feed (purges
    /// may have been missed). A shared tier keeps its entries: the purges were applied to it.
    fn clear_own(&self) {}
}

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
}
