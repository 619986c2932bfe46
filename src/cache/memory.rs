//! The in-process tier: a byte-bounded map (moka) whose entries leave when no longer servable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::entry::{Entry, now_ms};
use super::invalidation::PurgeMode;
use super::tier::{Tier, TierError, TierName};
use crate::telemetry::Metrics;

/// The in-process tier, bounded by bytes of keys, values and per-entry overhead.
#[derive(Clone)]
pub struct MemoryTier {
    /// Keys to entries; moka keeps the byte bound and removes entries past their stale window.
    map: Cache<Arc<str>, Arc<Entry>>,
}

/// Why the memory tier let an entry go on its own (purges and replacements are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionCause {
    /// Room was needed for newer entries (`MEMORY_CACHE_MAX_BYTES`).
    Size,
    /// The entry was past its stale window.
    Expired,
}

impl EvictionCause {
    /// Every cause, for label sets registered at zero.
    pub const ALL: [EvictionCause; 2] = [EvictionCause::Size, EvictionCause::Expired];

    /// The `cause` label of `cache_evictions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionCause::Size => "size",
            EvictionCause::Expired => "expired",
        }
    }
}

/// Tells moka how long each entry may stay: until it is no longer servable.
struct UntilUnservable;

impl moka::Expiry<Arc<str>, Arc<Entry>> for UntilUnservable {
    fn expire_after_create(&self, _k: &Arc<str>, e: &Arc<Entry>, _at: Instant) -> Option<Duration> {
        Some(Duration::from_millis(e.stale_until_ms.saturating_sub(now_ms())))
    }

    fn expire_after_update(
        &self,
        _k: &Arc<str>,
        e: &Arc<Entry>,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(e.stale_until_ms.saturating_sub(now_ms())))
    }
}

impl MemoryTier {
    /// Removes (or marks stale) each of `keys` whose entry passes `check` now: how many.
    fn purge_where<'a>(
        &self,
        keys: impl Iterator<Item = &'a str>,
        check: impl Fn(&Entry) -> bool,
        mode: PurgeMode,
        now_ms: u64,
    ) -> u64 {
        let mut purged = 0;
        for key in keys {
            let Some(entry) = self.map.get(key).filter(|e| check(e)) else {
                continue;
            };
            match mode {
                PurgeMode::Hard => self.map.invalidate(key),
                PurgeMode::Soft => self
                    .map
                    .insert(Arc::from(key), Arc::new(entry.marked_stale(now_ms))),
            }
            purged += 1;
        }
        self.map.run_pending_tasks();
        purged
    }
}

/// moka weighs in units of this many bytes. moka sizes its frequency sketch by the capacity in
/// weight units (8 bytes per unit, rounded up to a power of two); weighed in single bytes, a
/// 128 MiB tier would get a 1 GiB sketch that fills with use, far beyond the bound. In 128-byte
/// units the sketch is 1/16 of the bound at most and is taken off the capacity, and entries
/// (600 bytes and more each) still get several sketch counters apiece.
const WEIGHT_UNIT: u64 = 128;

/// Capacity in weight units after the frequency sketch's own bytes.
fn capacity_units(max_bytes: u64) -> u64 {
    let units = (max_bytes / WEIGHT_UNIT).max(1);
    let sketch_bytes = 8 * units.clamp(128, 1 << 30).next_power_of_two();
    (max_bytes.saturating_sub(sketch_bytes) / WEIGHT_UNIT).max(1)
}

impl MemoryTier {
    /// A tier holding at most `max_bytes` of heap (entries, keys and moka's structures,
    /// including its frequency sketch); evictions are counted in `metrics`.
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let map = Cache::builder()
            .max_capacity(capacity_units(max_bytes))
            .weigher(|k: &Arc<str>, e: &Arc<Entry>| e.weight(k).div_ceil(WEIGHT_UNIT as u32))
            .expire_after(UntilUnservable)
            .eviction_listener(move |_k, _e, cause| match cause {
                RemovalCause::Size => metrics.evicted(EvictionCause::Size),
                RemovalCause::Expired => metrics.evicted(EvictionCause::Expired),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        MemoryTier { map }
    }

    /// Bytes held by entries (their weights, rounded up to moka's 128-byte units), once pending
    /// bookkeeping has run. The frequency sketch is not included: it is set aside at start.
    pub fn bytes(&self) -> u64 {
        self.map.weighted_size() * WEIGHT_UNIT
    }

    /// Entries held.
    pub fn entries(&self) -> u64 {
        self.map.entry_count()
    }

    /// Runs moka's pending bookkeeping (evictions, expiries), so `bytes` is exact.
    pub fn settle(&self) {
        self.map.run_pending_tasks();
    }
}

impl Tier for MemoryTier {
    fn name(&self) -> TierName {
        TierName::Memory
    }

    fn shared(&self) -> bool {
        false
    }

    fn clear_own(&self) {
        self.map.invalidate_all();
    }

    async fn purge(&self, key: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        Ok(self.purge_where(std::iter::once(key), |_| true, mode, now_ms))
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        // A scan of the tier (no index to keep in step): milliseconds for a full tier, and only
        // on a tag purge.
        let tagged: Vec<Arc<str>> = self
            .map
            .iter()
            .filter(|(_, e)| e.has_tag(tag))
            .map(|(k, _)| (*k).clone())
            .collect();
        Ok(self.purge_where(tagged.iter().map(|k| &**k), |e| e.has_tag(tag), mode, now_ms))
    }

    async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, TierError> {
        Ok(self.map.get(key))
    }

    fn get_now(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        Some(self.map.get(key))
    }

    fn reweigh(&self, key: &str, entry: &Arc<Entry>) {
        // Put back only the very entry held now: never one a purge removed, or a newer one.
        let _ = self
            .map
            .entry(Arc::from(key))
            .and_compute_with(|held| match held {
                Some(held) if Arc::ptr_eq(held.value(), entry) => Op::Put(entry.clone()),
                _ => Op::Nop,
            });
        self.map.run_pending_tasks();
    }

    async fn put(&self, key: &str, entry: Arc<Entry>) -> Result<(), TierError> {
        self.map.insert(Arc::from(key), entry);
        // Evict now rather than at moka's next maintenance, so the byte bound holds at all times.
        self.map.run_pending_tasks();
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        self.map.invalidate(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::Lifetimes;

    fn life() -> Lifetimes {
        Lifetimes::fixed(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn byte_bound_holds_under_a_flood_of_unique_keys() {
        let tier = MemoryTier::new(64 * 1024, Arc::new(Metrics::detached()));
        for i in 0..5_000 {
            let key = format!("key-{i}");
            let e = Entry::value(&key, br#""some value of moderate length""#, now_ms(), &life());
            tier.put(&key, Arc::new(e)).await.unwrap();
            assert!(
                tier.bytes() + 8 * 512 <= 64 * 1024,
                "bytes {} over bound at {i}",
                tier.bytes()
            );
        }
        tier.settle();
        assert!(
            tier.entries() > 40,
            "the tier keeps what fits: {}",
            tier.entries()
        );
    }

    #[test]
    fn the_sketch_is_paid_for_out_of_the_bound() {
        // 32 MiB: 262,144 units, a sketch of 2^18 counters words (2 MiB) set aside.
        assert_eq!(capacity_units(32 << 20), ((32 << 20) - (2 << 20)) / WEIGHT_UNIT);
        assert_eq!(capacity_units(1), 1);
    }

    #[tokio::test]
    async fn get_put_remove_and_soft_purge() {
        let tier = MemoryTier::new(1 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        tier.put("k", Arc::new(Entry::value("k", b"1", now, &life())))
            .await
            .unwrap();
        assert!(tier.get("k").await.unwrap().is_some());
        tier.mark_stale("k", now).await.unwrap();
        let e = tier.get("k").await.unwrap().unwrap();
        assert!(matches!(e.freshness(now), crate::cache::Freshness::Stale { .. }));
        tier.remove("k").await.unwrap();
        assert_eq!(tier.get("k").await.unwrap(), None);
    }
}
