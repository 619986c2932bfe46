//! The read-through: look a key up in the tiers in order, fetch it from the origin once (per
//! process, and with Redis per fleet) when no tier can answer, store it, and purge keys and tags
//! everywhere. Split by job:
//! - [`lookup`]: the hit path, one key or a batch (`get`, `get_many`, `answer_now`), staleness;
//! - [`fetch`]: fetch-and-store (coalescing, the fleet lock, the origin, answer first, then the
//!   other tiers' writes);
//! - [`purge`]: purges by key and tag, fanned out to every tier and replica, and the ones that
//!   come from other replicas;
//! - [`writes`]: the stores in progress, which a purge that overtakes them waits for;
//! - [`kept`]: the tiers for callers that fetch for themselves (the proxy's stored responses).
//!
//! This file holds the `ReadThrough` itself, its shared state and the types the jobs share.

mod fetch;
mod kept;
mod lookup;
mod purge;
mod writes;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::cache::Clock;
use crate::cache::fleet::bus::AnyBus;
use crate::cache::fleet::{Fleet, Replicas};
use crate::cache::{
    Answer, AnyTier, CacheError, Coalescer, Entry, FetchedBody, Lifetimes, NotStored, Superseded, Tier,
    TierName, Uncacheable,
};
use crate::origin::{AnyOrigin, BreakerState, FailureTicket, GuardedOrigin, Origin};
use crate::telemetry::Metrics;

pub use self::kept::{FleetLease, FleetTurn};
pub use self::purge::PurgeIncomplete;
use self::purge::RecentPurges;

/// Keys of a batch looked up in the tiers together: one round trip per tier per window, and no
/// more entries read ahead of what the client has taken than a window holds.
pub const BATCH_WINDOW: usize = 64;

/// Where [`ReadThrough::get_many`] hands each answer, as it is known. Its pace is the batch's:
/// while `answer` waits, nothing more is looked up or fetched.
pub trait BatchSink: Send {
    /// Takes the answer for position `at`; `false` when nobody reads the answers any more.
    fn answer(&mut self, at: usize, result: Result<Answer, CacheError>) -> impl Future<Output = bool> + Send;

    /// Resolves when nobody reads the answers any more (the client went away).
    fn closed(&self) -> impl Future<Output = ()> + Send;

    /// Hands on what the sink holds back: the batch is about to wait on its fetches. `false`
    /// when nobody reads the answers any more.
    fn flush(&mut self) -> impl Future<Output = bool> + Send {
        std::future::ready(true)
    }
}

/// The result of one fetch, shared by everyone who waited on it.
#[derive(Debug, Clone)]
struct Fetch {
    entry: Arc<Entry>,
    /// The body its answers carry, made once for every request coalesced on it.
    body: Arc<FetchedBody>,
    /// Another replica fetched it (fleet-wide coalescing).
    by_fleet: bool,
    /// What became of it.
    outcome: Outcome,
}

/// What a fetch did with the origin's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A new entry, stored in the tiers (unless a purge overtook it).
    Stored,
    /// The stored value was revalidated (`304`): renewed in the tiers, no body travelled.
    NotModified,
    /// The answer is in no tier (the origin forbade it, every tier declined it, or a purge
    /// overtook the fetch); it answers the requests that waited only.
    NotStored(NotStored),
}

/// A stale entry found by a lookup, and the tier it was in: a refresh revalidates it.
type Previous = Option<(Arc<Entry>, TierName)>;

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
    /// Where purges are published and recorded for the other replicas (Redis, when
    /// configured).
    bus: Option<AnyBus>,
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
    /// Keys and tags purged lately: for fetches in flight, and entries read from Redis.
    recent: RecentPurges,
    /// Stores in progress, which purges that overtake them wait for.
    writes: Arc<writes::Writes>,
    /// The pool batch fetches and background refreshes share: half of
    /// `ORIGIN_MAX_CONCURRENCY`, handed out first come first served, so together they never
    /// take the permits single `GET`s need.
    shared_pool: Arc<tokio::sync::Semaphore>,
    /// When each `Uncacheable` reason was last logged (ms since the epoch).
    uncacheable_logged: [AtomicU64; Uncacheable::ALL.len()],
    /// Counters.
    metrics: Arc<Metrics>,
    /// What "now" is for freshness, fetch times and purge times.
    clock: Clock,
}

/// What one tier's lookup of a key settled.
enum Looked {
    /// A fresh entry (and whole seconds of freshness left): the answer.
    Fresh(Arc<Entry>, u64),
    /// A stale entry, noted; a later tier may hold a fresher copy (another replica refreshed it).
    Stale,
    /// Nothing servable here: absent, expired, a stale negative entry, or the tier failed.
    Miss,
}

impl Looked {
    /// The `cache.outcome` of the tier's span.
    fn outcome(&self) -> &'static str {
        match self {
            Looked::Fresh(..) => "hit",
            Looked::Stale => "stale",
            Looked::Miss => "miss",
        }
    }
}

/// A batch key's share of the origin: its batch's breaker ticket, and the permit of the pool
/// batches and refreshes share, which the fetch it starts holds until it is done.
struct PoolShare {
    ticket: Arc<FailureTicket>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// What can overtake a fetch in flight, so that it must not store its answer: a purge of its
/// key (`superseded`), or a purge of a tag its answer carries since it started.
#[derive(Clone)]
struct Fence {
    superseded: Superseded,
    started_ms: u64,
    /// The breaker ticket of the request that started the fetch (a batch's, shared by all its
    /// keys), so one request counts at most one origin failure.
    ticket: Option<Arc<FailureTicket>>,
}

impl<O: Origin> ReadThrough<O> {
    /// A cache over `tiers` (looked up in this order) in front of `origin`. With `replicas`,
    /// purges reach the other replicas through its bus, and one replica fetches a key for the
    /// whole fleet.
    pub fn new(
        tiers: Vec<AnyTier>,
        origin: GuardedOrigin<O>,
        life: Lifetimes,
        replicas: Option<Replicas>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_clock(tiers, origin, life, replicas, metrics, Clock::system())
    }

    /// As [`ReadThrough::new`], with time read from `clock` (tests move a manual one; give the
    /// memory tier the same clock).
    pub fn with_clock(
        tiers: Vec<AnyTier>,
        origin: GuardedOrigin<O>,
        life: Lifetimes,
        replicas: Option<Replicas>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Self {
        let background_permits = (origin.max_concurrency() / 2).max(1);
        let instance: Arc<str> = format!("{}-{:016x}", std::process::id(), rand::random::<u64>()).into();
        let fleet = replicas
            .as_ref()
            .map(|r| Fleet::new(r, instance.clone(), clock.clone()));
        ReadThrough {
            inner: Arc::new(Inner {
                tiers,
                bus: replicas.map(|r| r.bus),
                fleet,
                origin,
                inflight: Coalescer::default(),
                life,
                instance,
                uncacheable_logged: Default::default(),
                recent: RecentPurges::default(),
                writes: Arc::default(),
                shared_pool: Arc::new(tokio::sync::Semaphore::new(background_permits)),
                metrics,
                clock,
            }),
        }
    }

    /// Now, by this read-through's clock (ms since the Unix epoch).
    pub(super) fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Runs `task` in the background, tracked with the fetches: shutdown waits for it before
    /// the tiers close (a batch's work, a purge that outlived its request).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.inflight.tasks().spawn(task)
    }

    /// Waits up to `within` for every background fetch, write, refresh and tracked task to end
    /// (new ones may still start meanwhile); `false` when some were still running.
    pub async fn settle_tasks(&self, within: Duration) -> bool {
        let tasks = self.inner.inflight.tasks();
        tasks.close();
        tokio::time::timeout(within, tasks.wait()).await.is_ok()
    }

    /// The tiers, in lookup order.
    pub fn tiers(&self) -> &[AnyTier] {
        &self.inner.tiers
    }

    /// The origin circuit's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.origin.breaker_state()
    }

    /// Weighs `entry` again in the tiers that hold this very entry for `key` (after a
    /// compressed body was added to it), so the memory bound counts what it holds.
    pub fn reweigh(&self, key: &str, entry: &Arc<Entry>) {
        for tier in &self.inner.tiers {
            tier.reweigh(key, entry);
        }
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

    use tokio::time::Instant;

    use super::*;
    use crate::cache::{
        AnswerKind, CoalesceScope, Forward, Invalidation, MemoryTier, PurgeMode, StaleReason, Target, now_ms,
    };
    use crate::origin::{Breaker, Fetched, OriginError, Trip};

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
                answer: Arc::new(Mutex::new(Ok(Fetched::Value(
                    Bytes::from_static(b"\"v1\""),
                    Default::default(),
                )))),
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
        async fn fetch(
            &self,
            _key: &str,
            _traceparent: Option<String>,
            _validators: Option<&crate::origin::Validators>,
        ) -> Result<Fetched, OriginError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("the gate stays open").forget();
            self.answer.lock().unwrap().clone()
        }
    }

    fn life(ttl: Duration) -> Lifetimes {
        Lifetimes::fixed(ttl, Duration::from_secs(60), Duration::from_secs(5))
    }

    /// A cache with a memory tier (or none) over `origin`; the breaker opens once 60 % of at
    /// least 3 fetches failed (after one success, 2 failures).
    fn cache(origin: &Gated, memory: bool, ttl: Duration) -> ReadThrough<Gated> {
        cache_at(origin, memory, ttl, Clock::system())
    }

    /// As `cache`, time read from `clock` (the memory tier's too).
    fn cache_at(origin: &Gated, memory: bool, ttl: Duration, clock: Clock) -> ReadThrough<Gated> {
        let metrics = Arc::new(Metrics::detached());
        let tiers = if memory {
            vec![AnyTier::Memory(MemoryTier::with_clock(
                1 << 20,
                metrics.clone(),
                clock.clone(),
            ))]
        } else {
            Vec::new()
        };
        let breaker = Breaker::new(
            Trip {
                window: Duration::from_secs(600),
                min_calls: 3,
                rate_percent: 60,
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
        ReadThrough::with_clock(tiers, guarded, life(ttl), None, metrics, clock)
    }

    const WAIT: Duration = Duration::from_secs(30);
    const MISS: AnswerKind = AnswerKind::Fetched {
        collapsed: None,
        forward: Forward::Miss,
        not_stored: None,
    };
    /// A fetch whose writes a purge undid: answered, in no tier, and said so.
    const PURGED: AnswerKind = AnswerKind::Fetched {
        collapsed: None,
        forward: Forward::Miss,
        not_stored: Some(NotStored::Purged),
    };
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
                        forward: Forward::Miss,
                        not_stored: None,
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
        let clock = Clock::manual(1_700_000_000_000);
        let cache = cache_at(&origin, true, Duration::from_secs(20), clock.clone());
        cache.get("k", WAIT).await.unwrap();
        // Past its freshness (20 s), inside its stale window (60 s).
        clock.advance(Duration::from_secs(30));
        origin.answer_with(Ok(Fetched::Value(
            Bytes::from_static(b"\"v2\""),
            Default::default(),
        )));
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
        let clock = Clock::manual(1_700_000_000_000);
        let cache = cache_at(&origin, true, Duration::from_secs(20), clock.clone());
        cache.get("k", WAIT).await.unwrap();
        origin.answer_with(Err(OriginError::Status(500)));
        for key in ["a", "b"] {
            let e = cache.get(key, WAIT).await.unwrap_err();
            assert!(matches!(e, CacheError::Origin(OriginError::Status(500))), "{e:?}");
        }
        assert_eq!(cache.breaker_state(), BreakerState::Open);
        clock.advance(Duration::from_secs(30));
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
        origin.answer_with(Ok(Fetched::Value(Bytes::from_static(b"1"), Default::default())));
        let answer = cache.get("k", WAIT).await.unwrap();
        assert_eq!(answer.kind, MISS);
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
        assert_eq!(waiting.await.unwrap().kind, PURGED);
        let next = cache.get("k", WAIT).await.unwrap();
        assert_eq!(next.kind, MISS);
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

    fn headers(status: u16, pairs: &[(&'static str, &'static str)]) -> crate::origin::CacheHeaders {
        let mut h = http::HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, http::HeaderValue::from_static(value));
        }
        crate::origin::CacheHeaders::read(status, &h)
    }

    #[tokio::test]
    async fn a_no_cache_entry_is_revalidated_and_a_304_renews_it_without_a_body() {
        let origin = Gated::new();
        origin.open();
        let validated = [("cache-control", "no-cache"), ("etag", "\"a\"")];
        origin.answer_with(Ok(Fetched::Value(
            Bytes::from_static(b"\"v1\""),
            headers(200, &validated),
        )));
        let cache = cache(&origin, true, TTL);
        assert_eq!(cache.get("k", WAIT).await.unwrap().kind, MISS);
        origin.answer_with(Ok(Fetched::NotModified(headers(304, &validated))));
        let answer = cache.get("k", WAIT).await.unwrap();
        assert_eq!(
            answer.kind,
            AnswerKind::Revalidated {
                tier: TierName::Memory
            }
        );
        assert!(
            answer
                .entry
                .cache_body()
                .ends_with(b"\"v1\",\"source\":\"cache\"}")
        );
        assert_eq!(origin.calls(), 2);
    }

    #[tokio::test]
    async fn an_answer_the_origin_forbids_storing_is_passed_through_only() {
        let origin = Gated::new();
        origin.open();
        origin.answer_with(Ok(Fetched::Value(
            Bytes::from_static(b"1"),
            headers(200, &[("cache-control", "no-store")]),
        )));
        let cache = cache(&origin, true, TTL);
        for _ in 0..2 {
            let answer = cache.get("k", WAIT).await.unwrap();
            assert!(matches!(
                answer.kind,
                AnswerKind::Fetched {
                    not_stored: Some(NotStored::Origin(Uncacheable::NoStore)),
                    ..
                }
            ));
        }
        assert_eq!(origin.calls(), 2);
    }

    /// Runs `get_many` over `keys` to its end: each key's answer (or error), by position.
    async fn get_many(
        cache: &ReadThrough<Gated>,
        keys: &[&str],
        wait: Duration,
        concurrency: usize,
    ) -> Vec<Option<Result<Answer, CacheError>>> {
        struct Collect(Vec<Option<Result<Answer, CacheError>>>);
        impl BatchSink for Collect {
            async fn answer(&mut self, k: usize, a: Result<Answer, CacheError>) -> bool {
                assert!(self.0[k].replace(a).is_none(), "{k} answered twice");
                true
            }
            async fn closed(&self) {
                std::future::pending().await
            }
        }
        let mut answers = Collect(vec![None; keys.len()]);
        let deadline = Instant::now() + wait;
        cache.get_many(keys, deadline, concurrency, &mut answers).await;
        answers.0
    }

    #[tokio::test]
    async fn a_batch_answers_hits_at_once_and_fetches_at_most_its_concurrency_at_a_time() {
        let origin = Gated::new();
        let cache = cache(&origin, true, TTL);
        let hot = Entry::value("hot", b"1", now_ms(), &life(TTL));
        cache.tiers()[0].put("hot", Arc::new(hot)).await.unwrap();
        let keys = ["a", "hot", "b", "c", "d"];
        let batch = tokio::spawn({
            let cache = cache.clone();
            async move { get_many(&cache, &keys, WAIT, 2).await }
        });
        origin.reached(2).await;
        // Two fetches of the batch at once; the rest queue.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(origin.calls(), 2);
        origin.open();
        let answers = batch.await.unwrap();
        assert!(matches!(
            answers[1].as_ref().unwrap().as_ref().unwrap().kind,
            AnswerKind::Hit {
                tier: TierName::Memory,
                ..
            }
        ));
        for k in [0, 2, 3, 4] {
            let kind = answers[k].as_ref().unwrap().as_ref().unwrap().kind;
            assert_eq!(kind, MISS);
        }
        assert_eq!(origin.calls(), 4);
    }

    #[tokio::test]
    async fn a_batch_and_a_get_for_the_same_cold_key_share_one_fetch() {
        let origin = Gated::new();
        let cache = cache(&origin, true, TTL);
        let single = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get("k", WAIT).await.unwrap() }
        });
        origin.reached(1).await;
        let batch = tokio::spawn({
            let cache = cache.clone();
            async move { get_many(&cache, &["k"], WAIT, 4).await }
        });
        while !cache.inner.inflight.in_flight("k") {
            tokio::task::yield_now().await;
        }
        origin.open();
        assert_eq!(single.await.unwrap().kind, MISS);
        let answers = batch.await.unwrap();
        let kind = answers[0].as_ref().unwrap().as_ref().unwrap().kind;
        assert_eq!(
            kind,
            AnswerKind::Fetched {
                collapsed: Some(CoalesceScope::Process),
                forward: Forward::Miss,
                not_stored: None,
            }
        );
        assert_eq!(origin.calls(), 1);
    }

    #[tokio::test]
    async fn keys_of_a_batch_past_its_deadline_time_out_and_queued_ones_are_not_fetched() {
        let origin = Gated::new();
        let cache = cache(&origin, true, TTL);
        let answers = get_many(&cache, &["a", "b", "c"], Duration::from_millis(50), 1).await;
        for a in &answers {
            assert!(matches!(a, Some(Err(CacheError::TimedOut))), "{a:?}");
        }
        // Only the first was started; the queued ones were answered without a fetch.
        assert_eq!(origin.calls(), 1);
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
