//! The read-through cache: tiers in order, then one origin fetch per key (per process, and with
//! Redis per fleet), staleness, and purges that reach every replica.
//!
//! This file holds the read-through itself (look up, fetch, store); the parts it leans on each
//! have a module: [`answer`] (what a lookup yields), [`fleet`] (the fleet-wide lock),
//! [`invalidation`] (the purge message and its listener), [`coalesce`] (one fetch per key in this
//! process), and the tiers behind the [`Tier`] seam.

mod answer;
mod coalesce;
mod entry;
mod fleet;
mod invalidation;
mod memory;
mod eviction;
mod redis;
mod tier;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

pub use answer::{Answer, AnswerKind, CacheError, CoalesceScope, StaleReason};
pub use coalesce::{Abandoned, Coalescer, Role, Superseded};
pub use entry::{ENTRY_OVERHEAD_BYTES, Entry, Freshness, Lifetimes, now_ms};
pub use fleet::FleetLock;
pub use invalidation::{Invalidation, PurgeMode, PurgeSource, Target};
pub use memory::{EvictionCause, MemoryTier};
pub use redis::{RedisHealth, RedisOp, RedisTier, key_slot};
pub use tier::{AnyTier, Tier, TierError, TierName};

use self::fleet::{Fleet, Turn};
use crate::origin::{AnyOrigin, BreakerState, Fetched, GuardedOrigin, Origin};
use crate::telemetry::{self, Metrics, TRACE_TARGET};

/// The result of one fetch, shared by everyone who waited on it.
#[derive(Debug, Clone)]
struct Fetch {
    entry: Arc<Entry>,
    /// Another replica fetched it (fleet-wide coalescing).
    by_fleet: bool,
}

/// A purge was applied here but did not reach Redis or the other replicas (Redis is down): the
/// caller should retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the purge was applied here only: Redis and the other replicas still hold the key")]
pub struct PurgeIncomplete;

/// The read-through cache over an ordered list of tiers, in front of an origin. Cheap to clone.
pub struct ReadThrough<O = AnyOrigin> {
    inner: Arc<Inner<O>>,
}

impl<O> Clone for ReadThrough<O> {
    fn clone(&self) -> Self {
        ReadThrough {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<O> {
    /// Tiers in lookup order (memory, then Redis; either may be absent), all treated alike.
    tiers: Vec<AnyTier>,
    /// Where purges are published for the other replicas (Redis, when configured).
    channel: Option<RedisTier>,
    /// Fleet-wide coalescing (with Redis).
    fleet: Option<Fleet>,
    /// The origin behind its guard.
    origin: GuardedOrigin<O>,
    /// Fetches in flight in this process.
    inflight: Coalescer<Arc<str>, Result<Fetch, CacheError>>,
    /// Entry lifetimes.
    life: Lifetimes,
    /// This process's name on the Redis channels, so it skips its own purges.
    instance: Arc<str>,
    /// Counters.
    metrics: Arc<Metrics>,
}

impl<O: Origin> ReadThrough<O> {
    /// A cache over `tiers` (looked up in this order) in front of `origin`. With `redis`, purges
    /// reach the other replicas through it, and one replica fetches a key for the whole fleet
    /// (with the tier's `FLEET_LOCK_*` settings).
    pub fn new(
        tiers: Vec<AnyTier>,
        origin: GuardedOrigin<O>,
        life: Lifetimes,
        redis: Option<RedisTier>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let instance: Arc<str> = format!("{}-{:016x}", std::process::id(), rand::random::<u64>()).into();
        let fleet = redis
            .as_ref()
            .map(|r| Fleet::new(r.clone(), r.fleet(), instance.clone()));
        ReadThrough {
            inner: Arc::new(Inner {
                tiers,
                channel: redis,
                fleet,
                origin,
                inflight: Coalescer::default(),
                life,
                instance,
                metrics,
            }),
        }
    }

    /// The tiers, in lookup order.
    pub fn tiers(&self) -> &[AnyTier] {
        &self.inner.tiers
    }

    /// The origin circuit's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.origin.breaker_state()
    }

    /// The answer for `key`: the hit path, top to bottom. A miss waits on the origin for at most
    /// `wait` (the hit path sets no timer).
    pub async fn get(&self, key: &str, wait: Duration) -> Result<Answer, CacheError> {
        let inner = &*self.inner;
        let now = now_ms();
        let mut stale: Option<(Arc<Entry>, TierName)> = None;
        for (i, tier) in inner.tiers.iter().enumerate() {
            let span = tracing::info_span!(target: TRACE_TARGET, "cache.lookup",
                cache.tier = tier.name().as_str(), cache.outcome = tracing::field::Empty);
            // Errors are counted by the tier itself; the request goes on without it.
            let found = tier.get(key).instrument(span.clone()).await.ok().flatten();
            let Some(entry) = found else {
                span.record("cache.outcome", "miss");
                continue;
            };
            match entry.freshness(now) {
                Freshness::Fresh { ttl_secs } => {
                    span.record("cache.outcome", "hit");
                    // A hit in a later tier fills the tiers in front of it.
                    for front in &inner.tiers[..i] {
                        let _ = front.put(key, entry.clone()).await;
                    }
                    return Ok(self.hit(tier.name(), entry, ttl_secs, now));
                }
                Freshness::Stale { .. } if !entry.negative => {
                    span.record("cache.outcome", "stale");
                    // A later tier may hold a fresher copy (another replica refreshed it).
                    stale.get_or_insert((entry, tier.name()));
                }
                Freshness::Stale { .. } | Freshness::Expired => {
                    span.record("cache.outcome", "miss");
                }
            }
        }

        if let Some((entry, tier)) = stale {
            let reason = if inner.origin.breaker_state() == BreakerState::Open {
                StaleReason::IfError
            } else {
                // Refresh in the background: one fetch per key, however many stale hits.
                let _ = self.start_fetch(key);
                StaleReason::WhileRevalidate
            };
            inner.metrics.hit(tier);
            inner.metrics.stale(reason);
            let over_secs = now.saturating_sub(entry.fresh_until_ms) / 1000;
            return Ok(Answer {
                entry,
                kind: AnswerKind::Stale { reason, over_secs },
                now_ms: now,
            });
        }

        let (role, waiter) = self.start_fetch(key);
        let fetch = tokio::time::timeout(wait, waiter.wait())
            .await
            .map_err(|_| CacheError::TimedOut)???;
        let collapsed = match (role, fetch.by_fleet) {
            (Role::Follower, _) => Some(CoalesceScope::Process),
            (Role::Leader, true) => Some(CoalesceScope::Fleet),
            (Role::Leader, false) => None,
        };
        inner.metrics.miss(collapsed);
        Ok(Answer {
            entry: fetch.entry,
            kind: AnswerKind::Fetched { collapsed },
            now_ms: now_ms(),
        })
    }

    /// The answer for `key` if the tier in front holds it fresh and can say so without waiting
    /// (an in-process tier); `None` otherwise, and then [`ReadThrough::get`] answers. Counted
    /// like the same hit through `get`.
    pub fn answer_now(&self, key: &str) -> Option<Answer> {
        let tier = self.inner.tiers.first()?;
        let entry = tier.get_now(key)??;
        let now = now_ms();
        match entry.freshness(now) {
            Freshness::Fresh { ttl_secs } => Some(self.hit(tier.name(), entry, ttl_secs, now)),
            _ => None,
        }
    }

    /// A fresh `entry` found in `tier`, counted.
    fn hit(&self, tier: TierName, entry: Arc<Entry>, ttl_secs: u64, now: u64) -> Answer {
        let kind = if entry.negative {
            self.inner.metrics.negative_hit();
            AnswerKind::NegativeHit
        } else {
            self.inner.metrics.hit(tier);
            AnswerKind::Hit { tier, ttl_secs }
        };
        Answer {
            entry,
            kind,
            now_ms: now,
        }
    }

    /// Joins or starts the fetch of `key`; the fetch span is a child of the current span.
    fn start_fetch(&self, key: &str) -> (Role, coalesce::Waiter<Result<Fetch, CacheError>>) {
        let key: Arc<str> = Arc::from(key);
        let parent = Span::current();
        self.inner.inflight.join_or_start(&key, |superseded| {
            let inner = self.inner.clone();
            let key = key.clone();
            let span = tracing::info_span!(target: TRACE_TARGET, parent: &parent, "origin.fetch",
                otel.kind = "client", origin.outcome = tracing::field::Empty);
            async move { inner.fetch(&key, &superseded).await }.instrument(span)
        })
    }

    /// Purges `key` from every tier here and, through Redis, on every replica. An error means
    /// the purge was applied here but did not reach Redis or the other replicas.
    pub async fn purge(&self, key: &str, mode: PurgeMode) -> Result<(), PurgeIncomplete> {
        let inner = &*self.inner;
        // First, so a fetch that finishes while the tiers are purged does not store its value.
        inner.inflight.supersede(key);
        let mut reached_all = true;
        for tier in &inner.tiers {
            reached_all &= purge_in(tier, key, mode).await.is_ok();
        }
        inner.metrics.invalidated(mode, PurgeSource::Local);
        if let Some(channel) = &inner.channel {
            let message = Invalidation {
                mode,
                origin_instance: inner.instance.to_string(),
                target: Target::Key(key.to_owned()),
            };
            reached_all &= channel
                .publish(redis::Channel::Invalidate, &message.encode())
                .await
                .is_ok();
        }
        if reached_all {
            Ok(())
        } else {
            tracing::warn!("{PurgeIncomplete}");
            Err(PurgeIncomplete)
        }
    }

    /// Applies a purge another replica published: a fetch of the key in flight here must not
    /// store its (pre-purge) value in any tier, whether or not this replica has tiers of its
    /// own (a Redis-only replica's fetch would otherwise write the purged value back to Redis),
    /// and this replica's own tiers drop or mark the entry. Shared tiers were purged by the
    /// replica that took the purge.
    pub async fn apply_remote(&self, purge: &Invalidation) {
        let inner = &*self.inner;
        if *purge.origin_instance == *inner.instance {
            return;
        }
        let Target::Key(key) = &purge.target;
        inner.inflight.supersede(key.as_str());
        for tier in inner.tiers.iter().filter(|t| !t.shared()) {
            let _ = purge_in(tier, key, purge.mode).await;
        }
        inner.metrics.invalidated(purge.mode, PurgeSource::Remote);
    }

    /// Forgets what this replica's own tiers hold (after a gap in the purge feed).
    fn clear_own_tiers(&self) {
        for tier in &self.inner.tiers {
            tier.clear_own();
        }
    }

    /// Listens on Redis, until `shutdown`, for purges from other replicas and fleet locks let go.
    pub fn spawn_redis_listener(&self, shutdown: CancellationToken) {
        if let Some(channel) = &self.inner.channel {
            invalidation::spawn_listener(self.clone(), channel.clone(), self.inner.fleet.clone(), shutdown);
        }
    }
}

/// Applies `mode` to `key` in `tier`.
async fn purge_in(tier: &AnyTier, key: &str, mode: PurgeMode) -> Result<(), TierError> {
    match mode {
        PurgeMode::Hard => tier.remove(key).await,
        PurgeMode::Soft => tier.mark_stale(key, now_ms()).await,
    }
}

impl<O: Origin> Inner<O> {
    /// The fetch task: with Redis, take the fleet lock or wait for the replica that holds it;
    /// then fetch from the origin and store in every tier.
    async fn fetch(self: Arc<Self>, key: &str, superseded: &Superseded) -> Result<Fetch, CacheError> {
        let Some(fleet) = &self.fleet else {
            return self.fetch_from_origin(key, superseded).await;
        };
        match fleet.take_turn(key).await {
            Turn::Lead(held) => {
                // Another replica may have stored it between our miss and our lock.
                let result = match fleet.fresh(key).await {
                    Some(entry) => Ok(self.keep_fleet_value(key, entry, superseded).await),
                    None => self.fetch_from_origin(key, superseded).await,
                };
                held.release().await;
                result
            }
            Turn::Filled(entry) => Ok(self.keep_fleet_value(key, entry, superseded).await),
            Turn::Alone => self.fetch_from_origin(key, superseded).await,
        }
    }

    /// A value another replica fetched (and stored in the shared tiers): kept in this replica's
    /// own tiers too.
    async fn keep_fleet_value(&self, key: &str, entry: Arc<Entry>, superseded: &Superseded) -> Fetch {
        let own = self.tiers.iter().filter(|t| !t.shared());
        self.store(key, &entry, superseded, own).await;
        Fetch {
            entry,
            by_fleet: true,
        }
    }

    /// Stores `entry` in `tiers`, unless a purge overtook the fetch (then the entry only answers
    /// the requests that were waiting for it). A purge sets the flag before it removes the key,
    /// so looking at the flag again after the writes catches a purge that came in between them,
    /// and the writes are undone.
    async fn store<'a>(
        &'a self,
        key: &str,
        entry: &Arc<Entry>,
        superseded: &Superseded,
        tiers: impl Iterator<Item = &'a AnyTier> + Clone,
    ) {
        if superseded.is_set() {
            return;
        }
        for tier in tiers.clone() {
            let _ = tier.put(key, entry.clone()).await;
        }
        if superseded.is_set() {
            for tier in tiers {
                let _ = tier.remove(key).await;
            }
        }
    }

    /// Fetches from the origin and stores the entry in every tier, unless a purge overtook the
    /// fetch (then the entry only answers the requests that were waiting for it).
    async fn fetch_from_origin(&self, key: &str, superseded: &Superseded) -> Result<Fetch, CacheError> {
        let traceparent = telemetry::traceparent(&Span::current());
        let now = now_ms();
        let entry = match self.origin.fetch(key, traceparent).await? {
            Fetched::Value(value) => Arc::new(Entry::value(key, &value, now, &self.life)),
            Fetched::NotFound => Arc::new(Entry::not_found(now, &self.life)),
        };
        let remembered = !(entry.negative && self.life.negative_ttl.is_zero());
        if remembered {
            self.store(key, &entry, superseded, self.tiers.iter()).await;
        }
        Ok(Fetch {
            entry,
            by_fleet: false,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The read-through over a real memory tier and an in-process origin the test gates and
    //! counts: coalescing, stale serving, the breaker and purges racing fetches, without
    //! spawning processes.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use tokio::sync::{Barrier, Semaphore};

    use super::*;
    use crate::origin::{Breaker, OriginError, Trip};

    /// An origin that counts its calls and answers only when the test opens its gate.
    #[derive(Clone)]
    struct Gated {
        calls: Arc<AtomicUsize>,
        gate: Arc<Semaphore>,
        answer: Arc<Mutex<Result<Fetched, OriginError>>>,
    }

    impl Gated {
        fn new() -> Self {
            Gated {
                calls: Arc::default(),
                gate: Arc::new(Semaphore::new(0)),
                answer: Arc::new(Mutex::new(Ok(Fetched::Value(Bytes::from_static(b"\"v1\""))))),
            }
        }

        /// Lets every fetch through from now on.
        fn open(&self) {
            self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }

        fn answer_with(&self, answer: Result<Fetched, OriginError>) {
            *self.answer.lock().unwrap() = answer;
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        /// Waits until `n` fetches have reached the origin.
        async fn reached(&self, n: usize) {
            while self.calls() < n {
                tokio::task::yield_now().await;
            }
        }
    }

    impl Origin for Gated {
        async fn fetch(&self, _key: &str, _traceparent: Option<String>) -> Result<Fetched, OriginError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("the gate stays open").forget();
            self.answer.lock().unwrap().clone()
        }
    }

    fn life(ttl: Duration) -> Lifetimes {
        Lifetimes {
            ttl,
            stale: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            jitter_percent: 0,
        }
    }

    /// A cache with a memory tier (or none) over `origin`; the breaker opens after 2 failures.
    fn cache(origin: &Gated, memory: bool, ttl: Duration) -> ReadThrough<Gated> {
        let metrics = Arc::new(Metrics::detached());
        let tiers = if memory {
            vec![AnyTier::Memory(MemoryTier::new(1 << 20, metrics.clone()))]
        } else {
            Vec::new()
        };
        let breaker = Breaker::new(
            Trip {
                consecutive: 2,
                window: 20,
                rate_percent: 0,
            },
            Duration::from_secs(600),
        );
        let guarded = GuardedOrigin::new(
            origin.clone(),
            64,
            Duration::from_secs(30),
            Arc::new(breaker),
            metrics.clone(),
        );
        ReadThrough::new(tiers, guarded, life(ttl), None, metrics)
    }

    const WAIT: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn concurrent_misses_make_one_origin_fetch_and_then_hit() {
        let origin = Gated::new();
        let cache = cache(&origin, true, TTL);
        let barrier = Arc::new(Barrier::new(10));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (cache, barrier) = (cache.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    cache.get("k", WAIT).await.unwrap()
                })
            })
            .collect();
        origin.reached(1).await;
        origin.open();
        let mut collapsed = 0;
        for task in tasks {
            let answer = task.await.unwrap();
            assert_eq!(
                answer.entry.cache_body(),
                Bytes::from_static(b"{\"key\":\"k\",\"value\":\"v1\",\"source\":\"cache\"}")
            );
            collapsed += usize::from(
                answer.kind
                    == AnswerKind::Fetched {
                        collapsed: Some(CoalesceScope::Process),
                    },
            );
        }
        assert_eq!(origin.calls(), 1);
        assert_eq!(collapsed, 9);
        let hit = cache.get("k", WAIT).await.unwrap();
        assert!(matches!(
            hit.kind,
            AnswerKind::Hit {
                tier: TierName::Memory,
                ..
            }
        ));
        assert_eq!(origin.calls(), 1);
    }

    #[tokio::test]
    async fn a_stale_entry_is_served_at_once_while_one_fetch_refreshes_it() {
        let origin = Gated::new();
        origin.open();
        let cache = cache(&origin, true, Duration::from_millis(20));
        cache.get("k", WAIT).await.unwrap();
        // Past its freshness (20 ms), inside its stale window (60 s).
        tokio::time::sleep(Duration::from_millis(50)).await;
        origin.answer_with(Ok(Fetched::Value(Bytes::from_static(b"\"v2\""))));
        for _ in 0..3 {
            let answer = cache.get("k", WAIT).await.unwrap();
            if let AnswerKind::Stale { reason, .. } = answer.kind {
                assert_eq!(reason, StaleReason::WhileRevalidate);
            }
        }
        // One refresh, however many stale answers; then the new value.
        origin.reached(2).await;
        let mut value = Bytes::new();
        while !value.ends_with(b"\"v2\",\"source\":\"cache\"}") {
            tokio::task::yield_now().await;
            value = cache.get("k", WAIT).await.unwrap().entry.cache_body();
        }
        assert_eq!(origin.calls(), 2);
    }

    #[tokio::test]
    async fn an_open_circuit_serves_stale_without_calling_the_origin() {
        let origin = Gated::new();
        origin.open();
        let cache = cache(&origin, true, Duration::from_millis(20));
        cache.get("k", WAIT).await.unwrap();
        origin.answer_with(Err(OriginError::Status(500)));
        for key in ["a", "b"] {
            let e = cache.get(key, WAIT).await.unwrap_err();
            assert!(matches!(e, CacheError::Origin(OriginError::Status(500))), "{e:?}");
        }
        assert_eq!(cache.breaker_state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let calls = origin.calls();
        let answer = cache.get("k", WAIT).await.unwrap();
        assert!(matches!(
            answer.kind,
            AnswerKind::Stale {
                reason: StaleReason::IfError,
                ..
            }
        ));
        // A key with nothing stale is refused without a call.
        let e = cache.get("c", WAIT).await.unwrap_err();
        assert!(
            matches!(e, CacheError::Origin(OriginError::CircuitOpen { .. })),
            "{e:?}"
        );
        assert_eq!(origin.calls(), calls);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_cached() {
        let origin = Gated::new();
        origin.open();
        origin.answer_with(Err(OriginError::Status(503)));
        let cache = cache(&origin, true, TTL);
        assert!(cache.get("k", WAIT).await.is_err());
        origin.answer_with(Ok(Fetched::Value(Bytes::from_static(b"1"))));
        let answer = cache.get("k", WAIT).await.unwrap();
        assert_eq!(answer.kind, AnswerKind::Fetched { collapsed: None });
        assert_eq!(origin.calls(), 2);
    }

    #[tokio::test]
    async fn a_wait_longer_than_the_request_allows_times_out() {
        let origin = Gated::new();
        let cache = cache(&origin, true, TTL);
        let e = cache.get("k", Duration::from_millis(10)).await.unwrap_err();
        assert!(matches!(e, CacheError::TimedOut));
        // The fetch goes on for the next request.
        origin.open();
        assert!(cache.get("k", WAIT).await.is_ok());
        assert_eq!(origin.calls(), 1);
    }

    /// Runs a fetch of `k`, lets `purge` overtake it at the origin, then completes it: the
    /// waiting request gets the fetched value, but no tier keeps it.
    async fn purge_overtakes_a_fetch(purge: impl AsyncFnOnce(&ReadThrough<Gated>)) {
        let origin = Gated::new();
        let cache = cache(&origin, true, TTL);
        let waiting = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get("k", WAIT).await.unwrap() }
        });
        origin.reached(1).await;
        purge(&cache).await;
        origin.open();
        assert_eq!(
            waiting.await.unwrap().kind,
            AnswerKind::Fetched { collapsed: None }
        );
        let next = cache.get("k", WAIT).await.unwrap();
        assert_eq!(next.kind, AnswerKind::Fetched { collapsed: None });
        assert_eq!(origin.calls(), 2);
    }

    #[tokio::test]
    async fn a_purge_during_a_fetch_keeps_the_fetched_value_out_of_the_tiers() {
        purge_overtakes_a_fetch(async |cache| cache.purge("k", PurgeMode::Hard).await.unwrap()).await;
    }

    #[tokio::test]
    async fn another_replicas_purge_during_a_fetch_keeps_it_out_of_the_tiers() {
        purge_overtakes_a_fetch(async |cache| {
            let purge = Invalidation {
                mode: PurgeMode::Hard,
                origin_instance: "another-replica".to_owned(),
                target: Target::Key("k".to_owned()),
            };
            cache.apply_remote(&purge).await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_replica_ignores_its_own_purge_messages() {
        let origin = Gated::new();
        origin.open();
        let cache = cache(&origin, true, TTL);
        cache.get("k", WAIT).await.unwrap();
        let own = Invalidation {
            mode: PurgeMode::Hard,
            origin_instance: cache.inner.instance.to_string(),
            target: Target::Key("k".to_owned()),
        };
        cache.apply_remote(&own).await;
        assert!(matches!(
            cache.get("k", WAIT).await.unwrap().kind,
            AnswerKind::Hit { .. }
        ));
    }

    #[tokio::test]
    async fn a_soft_purge_serves_stale_and_refreshes() {
        let origin = Gated::new();
        origin.open();
        let cache = cache(&origin, true, TTL);
        cache.get("k", WAIT).await.unwrap();
        cache.purge("k", PurgeMode::Soft).await.unwrap();
        let answer = cache.get("k", WAIT).await.unwrap();
        assert!(matches!(
            answer.kind,
            AnswerKind::Stale {
                reason: StaleReason::WhileRevalidate,
                ..
            }
        ));
        origin.reached(2).await;
    }

    #[tokio::test]
    async fn without_tiers_every_request_fetches() {
        let origin = Gated::new();
        origin.open();
        let cache = cache(&origin, false, TTL);
        cache.get("k", WAIT).await.unwrap();
        cache.get("k", WAIT).await.unwrap();
        assert_eq!(origin.calls(), 2);
    }
}
