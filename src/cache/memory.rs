//! The in-process tier: a byte-bounded map whose entries leave when no longer servable, evicted
//! by an adaptive W-TinyLFU (`eviction.rs`; why this policy: docs/architecture.md, "Memory-tier
//! policy").

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::entry::{ENTRY_OVERHEAD_BYTES, Entry, now_ms};
use super::eviction::{Adaptive, Evicted, Removal};
use super::invalidation::PurgeMode;
use super::tier::{Tier, TierError, TierName};
use crate::telemetry::Metrics;

/// The in-process tier, bounded by bytes of keys, values and per-entry overhead.
#[derive(Clone)]
pub struct MemoryTier {
    /// The entries and their policy, shared by every clone.
    inner: Arc<Inner>,
}

/// What the clones of one tier share.
struct Inner {
    /// One lock over the map and the policy: a hit holds it for a table lookup, a queue move and
    /// a sketch increment (tens of nanoseconds), so that the policy sees every access in order.
    state: Mutex<State>,
    /// Where evictions are counted.
    metrics: Arc<Metrics>,
}

/// The entries, their eviction order and their expiry order.
struct State {
    /// Keys to entries, with the eviction policy's queues.
    policy: Adaptive<Arc<str>, Arc<Entry>>,
    /// `(stale_until_ms, key)` of every stored entry, soonest first, so entries past their stale
    /// window leave without being read. Replaced or removed entries leave theirs behind; they
    /// are skipped when popped and dropped when the heap outgrows twice the entries.
    expiries: BinaryHeap<Reverse<(u64, Arc<str>)>>,
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

/// The policy's own heap bytes at most, set aside from the bound at start: its frequency sketch
/// (8 bytes per entry it can hold, rounded up to a power of two) and its mini-simulations.
fn reserved_bytes(max_bytes: u64) -> u64 {
    let entries = (max_bytes / ENTRY_OVERHEAD_BYTES as u64).max(1);
    8 * entries.next_power_of_two().max(8) + sim_bytes(max_bytes)
}

/// The mini-simulations' share of a bound of `max_bytes`.
fn sim_bytes(max_bytes: u64) -> u64 {
    Adaptive::<Arc<str>, Arc<Entry>>::sim_bytes(max_bytes, ENTRY_OVERHEAD_BYTES as u64)
}

/// Bytes left for entries under a bound of `max_bytes`.
fn capacity_bytes(max_bytes: u64) -> u64 {
    max_bytes.saturating_sub(reserved_bytes(max_bytes)).max(1)
}

impl MemoryTier {
    /// A tier holding at most `max_bytes` of heap (entries, keys and the policy's structures,
    /// including its frequency sketch and mini-simulations); evictions are counted in `metrics`.
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let state = State {
            policy: Adaptive::new(
                capacity_bytes(max_bytes),
                ENTRY_OVERHEAD_BYTES as u64,
                sim_bytes(max_bytes),
            ),
            expiries: BinaryHeap::new(),
        };
        MemoryTier {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                metrics,
            }),
        }
    }

    /// The bound (`MEMORY_CACHE_MAX_BYTES`) that leaves at least `entry_bytes` for entries once
    /// the policy's own structures are set aside: for sizing a tier by what it should hold.
    pub fn bound_for(entry_bytes: u64) -> u64 {
        let mut bound = entry_bytes;
        // The reserve grows with the bound, by steps: a few rounds settle it.
        while capacity_bytes(bound) < entry_bytes {
            bound += entry_bytes - capacity_bytes(bound);
        }
        bound
    }

    /// Bytes held by entries (their weights). The policy's own structures are not included: they
    /// are set aside at start.
    pub fn bytes(&self) -> u64 {
        self.lock().policy.real.weighted_size()
    }

    /// Entries held.
    pub fn entries(&self) -> u64 {
        self.lock().policy.real.len() as u64
    }

    /// Removes every entry past its stale window now (they are otherwise removed as later writes
    /// come in, or when read), so `bytes` and the eviction counts are exact.
    pub fn settle(&self) {
        let mut gone = Vec::new();
        self.lock().expire(now_ms(), &mut gone);
        self.count(&gone, now_ms());
    }

    /// The window share the adaptive policy uses now (1.0: a plain LRU), for the replay report.
    pub fn window_share(&self) -> f64 {
        self.lock().policy.window_share()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map (every mutation completes
        // before anything can panic), so a poisoned lock is used as it is.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts what left on its own; dropping `gone` afterwards frees the values, outside the lock.
    fn count(&self, gone: &[Evicted<Arc<str>, Arc<Entry>>], now: u64) {
        for e in gone {
            match e.cause {
                Removal::Replaced => {}
                // An entry past its stale window left because it expired, whatever made room.
                Removal::Size if e.value.stale_until_ms <= now => {
                    self.inner.metrics.evicted(EvictionCause::Expired)
                }
                Removal::Size => self.inner.metrics.evicted(EvictionCause::Size),
            }
        }
    }
}

impl State {
    /// Removes the entries whose stale window has ended by `now`, into `gone` (as `Size`
    /// removals of expired entries, which `count` books as expiries).
    fn expire(&mut self, now: u64, gone: &mut Vec<Evicted<Arc<str>, Arc<Entry>>>) {
        while let Some(Reverse((until, _))) = self.expiries.peek() {
            if *until > now {
                break;
            }
            let Some(Reverse((_, key))) = self.expiries.pop() else {
                break;
            };
            let hash = self.policy.real.hash_of(&*key);
            // Only if the entry there now is the one that expired (not a newer value).
            if self
                .policy
                .real
                .peek(hash, &*key)
                .is_some_and(|e| e.stale_until_ms <= now)
                && let Some((key, value)) = self.policy.real.remove(hash, &*key)
            {
                gone.push(Evicted {
                    key,
                    value,
                    cause: Removal::Size,
                });
            }
        }
        // Compacting costs one pass; doing it when the heap has doubled keeps that at O(1) per
        // write and the heap within the two items per entry that ENTRY_OVERHEAD_BYTES allows.
        if self.expiries.len() > 2 * self.policy.real.len() + 16 {
            let policy = &self.policy.real;
            self.expiries.retain(|Reverse((until, key))| {
                policy
                    .peek(policy.hash_of(&**key), &**key)
                    .is_some_and(|e| e.stale_until_ms == *until)
            });
        }
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
        let gone = {
            let mut state = self.lock();
            state.expiries.clear();
            state.policy.real.clear()
        };
        drop(gone);
    }

    async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, TierError> {
        Ok(self.get_now(key).flatten())
    }

    fn get_now(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        let now = now_ms();
        let mut state = self.lock();
        let hash = state.policy.real.hash_of(key);
        let found = state.policy.real.get(hash, key).cloned();
        match found {
            Some(e) if now < e.stale_until_ms => {
                let weight = u64::from(e.weight(key));
                state.policy.record_read(hash, Some(weight));
                Some(Some(e))
            }
            Some(_) => {
                // Past its stale window: never served, gone now.
                state.policy.record_read(hash, None);
                let gone = state.policy.real.remove(hash, key);
                drop(state);
                if gone.is_some() {
                    self.inner.metrics.evicted(EvictionCause::Expired);
                }
                Some(None)
            }
            None => {
                state.policy.record_read(hash, None);
                Some(None)
            }
        }
    }

    async fn put(&self, key: &str, entry: Arc<Entry>) -> Result<bool, TierError> {
        let now = now_ms();
        let weight = u64::from(entry.weight(key));
        let until = entry.stale_until_ms;
        let mut gone = Vec::new();
        let kept = {
            let mut state = self.lock();
            let hash = state.policy.real.hash_of(key);
            let kept = until > now && weight <= state.policy.real.maximum();
            if !kept {
                // Not servable, or bigger than the whole tier: not stored, and the value it
                // replaces (now superseded) goes too.
                if let Some((key, value)) = state.policy.real.remove(hash, key) {
                    gone.push(Evicted {
                        key,
                        value,
                        cause: Removal::Replaced,
                    });
                }
            } else {
                let key: Arc<str> = Arc::from(key);
                state.expiries.push(Reverse((until, key.clone())));
                state.policy.real.insert(hash, key, entry, weight, &mut gone);
                state.policy.record_write(hash, weight);
            }
            state.expire(now, &mut gone);
            kept
        };
        self.count(&gone, now);
        Ok(kept)
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        let gone = {
            let mut state = self.lock();
            let hash = state.policy.real.hash_of(key);
            state.policy.real.remove(hash, key)
        };
        drop(gone);
        Ok(())
    }

    fn reweigh(&self, key: &str, entry: &Arc<Entry>) {
        let weight = u64::from(entry.weight(key));
        let mut gone = Vec::new();
        {
            let mut state = self.lock();
            let hash = state.policy.real.hash_of(key);
            // Put back only the very entry held now: never one a purge removed, or a newer one.
            let held = state
                .policy
                .real
                .peek(hash, key)
                .is_some_and(|e| Arc::ptr_eq(e, entry));
            if held && weight <= state.policy.real.maximum() {
                state
                    .policy
                    .real
                    .insert(hash, Arc::from(key), entry.clone(), weight, &mut gone);
            }
        }
        self.count(&gone, now_ms());
    }

    async fn purge(&self, key: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        Ok(self
            .purge_where(vec![Arc::from(key)], |_| true, mode, now_ms)
            .await)
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        // Every stored entry has its key in the expiry heap: a scan of it (no index to keep in
        // step), milliseconds for a full tier, and only on a tag purge.
        let tagged: Vec<Arc<str>> = {
            let state = self.lock();
            let mut keys: Vec<Arc<str>> = state
                .expiries
                .iter()
                .map(|Reverse((_, key))| key.clone())
                .filter(|key| {
                    let hash = state.policy.real.hash_of(&**key);
                    state
                        .policy
                        .real
                        .peek(hash, &**key)
                        .is_some_and(|e| e.has_tag(tag))
                })
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        Ok(self.purge_where(tagged, |e| e.has_tag(tag), mode, now_ms).await)
    }
}

impl MemoryTier {
    /// Removes (or marks stale) each of `keys` whose entry passes `check` now: how many.
    async fn purge_where(
        &self,
        keys: Vec<Arc<str>>,
        check: impl Fn(&Entry) -> bool,
        mode: PurgeMode,
        now_ms: u64,
    ) -> u64 {
        let mut purged = 0;
        for key in keys {
            let entry = {
                let state = self.lock();
                let hash = state.policy.real.hash_of(&*key);
                state.policy.real.peek(hash, &*key).filter(|e| check(e)).cloned()
            };
            let Some(entry) = entry else {
                continue;
            };
            let _ = match mode {
                PurgeMode::Hard => self.remove(&key).await,
                PurgeMode::Soft => self
                    .put(&key, Arc::new(entry.marked_stale(now_ms)))
                    .await
                    .map(drop),
            };
            purged += 1;
        }
        purged
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
                tier.bytes() <= capacity_bytes(64 * 1024),
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
    fn the_policy_is_paid_for_out_of_the_bound() {
        // 32 MiB: up to 69,905 entries of 480 B, a sketch of 2^17 words (1 MiB), and six
        // mini-simulations of 1 MiB / 480 B entries each.
        let minis =
            6 * ((1 << 20) / ENTRY_OVERHEAD_BYTES as u64 + 1) * super::super::eviction::MINI_ENTRY_BYTES;
        assert_eq!(capacity_bytes(32 << 20), (32 << 20) - (1 << 20) - minis);
        // A small tier gives its simulations an eighth of its bound at most.
        assert_eq!(sim_bytes(64 << 10), 8 << 10);
        assert_eq!(capacity_bytes(1), 1);
        let bound = MemoryTier::bound_for(1_000_000);
        assert_eq!(capacity_bytes(bound), 1_000_000);
    }

    fn entry(key: &str, now: u64, life: &Lifetimes) -> Arc<Entry> {
        Arc::new(Entry::value(key, br#""v""#, now, life))
    }

    #[tokio::test]
    async fn entries_past_their_stale_window_are_never_served_and_counted_as_expired() {
        let metrics = Arc::new(Metrics::detached());
        let tier = MemoryTier::new(1 << 20, metrics.clone());
        let short = Lifetimes {
            ttl: Duration::from_millis(20),
            stale: Duration::from_millis(20),
            ..life()
        };
        let now = now_ms();
        tier.put("read", entry("read", now, &short)).await.unwrap();
        tier.put("unread", entry("unread", now, &short)).await.unwrap();
        tier.put("long", entry("long", now, &life())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Read after expiry: not served, removed at once.
        assert_eq!(tier.get_now("read"), Some(None));
        assert_eq!(metrics.evictions(EvictionCause::Expired), 1);
        // Never read: removed by the next write (or settle), without a read.
        tier.put("other", entry("other", now_ms(), &life()))
            .await
            .unwrap();
        assert_eq!(metrics.evictions(EvictionCause::Expired), 2);
        assert_eq!(tier.entries(), 2);
        assert_eq!(metrics.evictions(EvictionCause::Size), 0);
        assert!(tier.get("long").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_replaced_entry_keeps_its_newer_expiry() {
        let metrics = Arc::new(Metrics::detached());
        let tier = MemoryTier::new(1 << 20, metrics.clone());
        let short = Lifetimes {
            ttl: Duration::from_millis(10),
            stale: Duration::from_millis(10),
            ..life()
        };
        tier.put("k", entry("k", now_ms(), &short)).await.unwrap();
        tier.put("k", entry("k", now_ms(), &life())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        tier.settle();
        assert!(tier.get_now("k").unwrap().is_some());
        assert_eq!(metrics.evictions(EvictionCause::Expired), 0);
    }

    #[tokio::test]
    async fn size_evictions_are_counted_and_popular_keys_survive_a_scan() {
        let metrics = Arc::new(Metrics::detached());
        let weight = u64::from(entry("hot-00", now_ms(), &life()).weight("hot-00"));
        let tier = MemoryTier::new(MemoryTier::bound_for(100 * weight), metrics.clone());
        // 50 popular keys read again and again between bursts of one-off keys (a scan).
        for round in 0..40 {
            for k in 0..50 {
                let key = format!("hot-{k:02}");
                if tier.get_now(&key) == Some(None) {
                    tier.put(&key, entry(&key, now_ms(), &life())).await.unwrap();
                }
            }
            for k in 0..200 {
                let key = format!("cold-{round:03}-{k:03}");
                tier.put(&key, entry(&key, now_ms(), &life())).await.unwrap();
            }
        }
        let hot = (0..50)
            .filter(|k| matches!(tier.get_now(&format!("hot-{k:02}")), Some(Some(_))))
            .count();
        assert!(hot >= 45, "popular keys kept: {hot} of 50");
        assert!(tier.entries() <= 100);
        assert!(metrics.evictions(EvictionCause::Size) >= 40 * 200 - 100);
        assert_eq!(metrics.evictions(EvictionCause::Expired), 0);
    }

    #[tokio::test]
    async fn an_entry_bigger_than_the_tier_is_not_stored_and_supersedes_the_old_one() {
        let tier = MemoryTier::new(MemoryTier::bound_for(4096), Arc::new(Metrics::detached()));
        tier.put("k", entry("k", now_ms(), &life())).await.unwrap();
        let big = serde_json::to_vec(&"x".repeat(8192)).unwrap();
        tier.put("k", Arc::new(Entry::value("k", &big, now_ms(), &life())))
            .await
            .unwrap();
        assert_eq!(tier.get_now("k"), Some(None));
        assert_eq!(tier.bytes(), 0);
    }

    #[tokio::test]
    async fn clear_own_forgets_everything() {
        let tier = MemoryTier::new(1 << 20, Arc::new(Metrics::detached()));
        for k in 0..10 {
            let key = format!("k{k}");
            tier.put(&key, entry(&key, now_ms(), &life())).await.unwrap();
        }
        tier.clear_own();
        assert_eq!((tier.entries(), tier.bytes()), (0, 0));
        assert_eq!(tier.get_now("k1"), Some(None));
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
