//! The read-through cache: tiers in order, then one origin fetch per key (per process, and with
//! Redis per fleet), staleness, and purges that reach every replica.

mod coalesce;
mod entry;
mod fleet;
mod memory;
mod redis;
mod tier;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tracing::{Instrument, Span};

pub use coalesce::{Abandoned, Coalescer, Role, Superseded};
pub use entry::{ENTRY_OVERHEAD_BYTES, Entry, Freshness, Lifetimes, now_ms};
pub use memory::MemoryTier;
pub use redis::{Channel, RedisHealth, RedisSetupError, RedisTier, key_slot};
pub use tier::{AnyTier, Tier, TierError, TierName};

use self::fleet::FleetWaiters;
use crate::origin::{BreakerState, Fetched, GuardedOrigin, OriginError};
use crate::telemetry::{self, Metrics, TRACE_TARGET};

/// Why a stale entry was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// Served at once while a background fetch refreshes it.
    WhileRevalidate,
    /// Served because the origin is failing (its circuit is open).
    IfError,
}

impl StaleReason {
    /// The name in `Cache-Status`, metrics and spans.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::WhileRevalidate => "stale-while-revalidate",
            StaleReason::IfError => "stale-if-error",
        }
    }
}

/// How an answer was produced; decides `source`, `Cache-Status` and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// A fresh entry from a tier.
    Hit {
        /// The tier that held it.
        tier: TierName,
        /// Whole seconds of freshness left.
        ttl_secs: u64,
    },
    /// A stale entry.
    Stale {
        /// Why it was served.
        reason: StaleReason,
        /// Whole seconds past freshness.
        over_secs: u64,
    },
    /// A remembered origin 404.
    NegativeHit,
    /// Fetched from the origin for this request (`collapsed`: by another request or replica).
    Fetched {
        /// This request waited on a fetch another request (or replica) made.
        collapsed: bool,
    },
}

impl AnswerKind {
    /// The span attribute `cache.outcome`: hit, stale, miss or coalesced.
    pub fn outcome(self) -> &'static str {
        match self {
            AnswerKind::Hit { .. } | AnswerKind::NegativeHit => "hit",
            AnswerKind::Stale { .. } => "stale",
            AnswerKind::Fetched { collapsed: false } => "miss",
            AnswerKind::Fetched { collapsed: true } => "coalesced",
        }
    }
}

/// What the cache answered for a key.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The entry (a value, or a remembered 404 when `entry.negative`).
    pub entry: Arc<Entry>,
    /// How it was produced.
    pub kind: AnswerKind,
    /// When (ms since the epoch), for `Age`.
    pub now_ms: u64,
}

/// Why no answer could be given.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The origin failed and nothing servable was cached.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The fetch task ended without a result.
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
}

/// The result of one fetch, shared by everyone who waited on it.
#[derive(Debug, Clone)]
struct Fetch {
    entry: Arc<Entry>,
    /// Another replica fetched it (fleet-wide coalescing).
    by_fleet: bool,
}

/// How a wait on another replica's fetch ended.
enum FleetWait {
    /// Its value arrived in Redis.
    Value(Arc<Entry>),
    /// It released the lock without storing a value.
    Released,
    /// `FLEET_LOCK_WAIT_MS` ran out.
    TimedOut,
}

/// `key`'s entry in Redis, if it is fresh.
async fn fresh_in(redis: &RedisTier, key: &str) -> Option<Arc<Entry>> {
    redis
        .get(key)
        .await
        .ok()
        .flatten()
        .filter(|e| matches!(e.freshness(now_ms()), Freshness::Fresh { .. }))
}

/// Fleet-wide coalescing settings.
#[derive(Debug, Clone, Copy)]
pub struct FleetLock {
    /// Lifetime of the Redis lock key, so a dead fetcher's lock goes away.
    pub ttl: Duration,
    /// How long to wait for another replica's fetch before fetching here.
    pub wait: Duration,
    /// How often a waiter looks in Redis when no fill message has woken it.
    pub poll: Duration,
}

/// The read-through cache. Cheap to clone.
#[derive(Clone)]
pub struct ReadThrough {
    inner: Arc<Inner>,
}

struct Inner {
    /// Tiers in lookup order: memory, then Redis (either may be absent).
    tiers: Vec<AnyTier>,
    /// The Redis tier again, for locks and invalidation messages.
    redis: Option<RedisTier>,
    /// The memory tier again, for invalidations from other replicas.
    memory: Option<MemoryTier>,
    /// The origin behind its guard.
    origin: GuardedOrigin,
    /// Fetches in flight in this process.
    inflight: Coalescer<Arc<str>, Result<Fetch, CacheError>>,
    /// Entry lifetimes.
    life: Lifetimes,
    /// The keys this process waits on another replica's fetch for.
    fleet_waiters: Arc<FleetWaiters>,
    /// This process's name on the invalidation channel, so it skips its own messages.
    instance: String,
    /// Counters.
    metrics: Arc<Metrics>,
}

impl ReadThrough {
    /// A cache over `memory` and `redis` (either optional) in front of `origin`.
    pub fn new(
        memory: Option<MemoryTier>,
        redis: Option<RedisTier>,
        origin: GuardedOrigin,
        life: Lifetimes,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut tiers = Vec::new();
        if let Some(m) = &memory {
            tiers.push(AnyTier::Memory(m.clone()));
        }
        if let Some(r) = &redis {
            tiers.push(AnyTier::Redis(r.clone()));
        }
        let instance = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        ReadThrough {
            inner: Arc::new(Inner {
                tiers,
                redis,
                memory,
                origin,
                inflight: Coalescer::default(),
                life,
                fleet_waiters: Arc::default(),
                instance,
                metrics,
            }),
        }
    }

    /// The Redis tier, if configured.
    pub fn redis(&self) -> Option<&RedisTier> {
        self.inner.redis.as_ref()
    }

    /// The memory tier, if configured.
    pub fn memory(&self) -> Option<&MemoryTier> {
        self.inner.memory.as_ref()
    }

    /// The origin circuit's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.origin.breaker_state()
    }

    /// The answer for `key`: the hit path, top to bottom.
    pub async fn get(&self, key: &str) -> Result<Answer, CacheError> {
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
                    if i > 0 {
                        // A Redis hit fills the tiers in front of it.
                        for front in &inner.tiers[..i] {
                            let _ = front.put(key, entry.clone()).await;
                        }
                    }
                    let kind = if entry.negative {
                        inner.metrics.hit("negative");
                        AnswerKind::NegativeHit
                    } else {
                        inner.metrics.hit(tier.name().as_str());
                        AnswerKind::Hit {
                            tier: tier.name(),
                            ttl_secs,
                        }
                    };
                    return Ok(Answer {
                        entry,
                        kind,
                        now_ms: now,
                    });
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
            inner.metrics.hit(tier.as_str());
            inner.metrics.stale(reason.as_str());
            let over_secs = now.saturating_sub(entry.fresh_until_ms) / 1000;
            return Ok(Answer {
                entry,
                kind: AnswerKind::Stale { reason, over_secs },
                now_ms: now,
            });
        }

        let (role, waiter) = self.start_fetch(key);
        let fetch = waiter.wait().await??;
        let collapsed = role == Role::Follower || fetch.by_fleet;
        let scope = match (role, fetch.by_fleet) {
            (Role::Follower, _) => Some("process"),
            (Role::Leader, true) => Some("fleet"),
            (Role::Leader, false) => None,
        };
        inner.metrics.miss(scope);
        Ok(Answer {
            entry: fetch.entry,
            kind: AnswerKind::Fetched { collapsed },
            now_ms: now_ms(),
        })
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

    /// Purges `key` from every tier here and, through Redis, on every replica. `soft` marks it
    /// stale instead, so the next request is served at once and refreshes it. An error means the
    /// purge was applied here but did not reach Redis or the other replicas (Redis is down):
    /// the caller should retry.
    pub async fn purge(&self, key: &str, soft: bool) -> Result<(), TierError> {
        let inner = &*self.inner;
        // First, so a fetch that finishes while the tiers are purged does not store its value.
        inner.inflight.supersede(key);
        let now = now_ms();
        let mut reached_all = Ok(());
        for tier in &inner.tiers {
            let done = if soft {
                tier.mark_stale(key, now).await
            } else {
                tier.remove(key).await
            };
            reached_all = reached_all.and(done);
        }
        let mode = if soft { "soft" } else { "hard" };
        inner.metrics.invalidated(mode, "local");
        if let Some(redis) = &inner.redis {
            let message = format!("{mode}\n{}\n{key}", inner.instance);
            reached_all = reached_all.and(redis.publish(&message).await);
        }
        if let Err(e) = &reached_all {
            tracing::warn!(error = %e, "purge applied here only: Redis and the other replicas still hold the key");
        }
        reached_all
    }

    /// Applies a purge published by another replica: a fetch of the key in flight here must not
    /// store its (pre-purge) value, in any tier, and the memory tier drops or marks the entry.
    /// The fetch is superseded whether or not this replica has a memory tier: a Redis-only
    /// replica's fetch would otherwise write the purged value back to Redis.
    async fn apply_invalidation(&self, message: &str) {
        let mut parts = message.splitn(3, '\n');
        let (Some(mode), Some(instance), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if instance == self.inner.instance {
            return;
        }
        self.inner.inflight.supersede(key);
        let soft = mode == "soft";
        if let Some(memory) = &self.inner.memory {
            let _ = if soft {
                memory.mark_stale(key, now_ms()).await
            } else {
                memory.remove(key).await
            };
        }
        self.inner
            .metrics
            .invalidated(if soft { "soft" } else { "hard" }, "remote");
    }

    /// Listens on the Redis channels for as long as the process lives, reconnecting when the
    /// subscription drops: purges from other replicas (applied to the memory tier) and fleet
    /// locks let go (waking this process's waiter for the key). Each (re)subscription clears the
    /// memory tier: purges published while this replica was not listening must not leave it
    /// serving purged values.
    pub fn spawn_redis_listener(&self) {
        let Some(redis) = self.inner.redis.clone() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match redis.subscribe().await {
                    Ok((pubsub, node)) => {
                        if let Some(memory) = &me.inner.memory {
                            memory.clear();
                        }
                        tracing::info!(%node, "listening for purges and fills from other replicas");
                        let mut messages = pubsub.into_on_message();
                        // A hung node keeps the socket open but delivers nothing: move when the
                        // pings say it is down.
                        let mut check = tokio::time::interval(Duration::from_millis(500));
                        loop {
                            tokio::select! {
                                msg = messages.next() => {
                                    let Some(msg) = msg else { break };
                                    let Ok(text) = msg.get_payload::<String>() else {
                                        continue;
                                    };
                                    match redis.channel_of(msg.get_channel_name()) {
                                        Channel::Fill => me.inner.fleet_waiters.wake(&text),
                                        Channel::Invalidate => me.apply_invalidation(&text).await,
                                    }
                                }
                                _ = check.tick() => {
                                    if redis.node_down(&node) {
                                        break;
                                    }
                                }
                            }
                        }
                        tracing::warn!(%node, "subscription to other replicas lost; reconnecting");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
    }
}

impl Inner {
    /// The fetch task: with Redis, take the fleet lock or wait for the replica that holds it;
    /// then fetch from the origin and store in every tier.
    async fn fetch(self: Arc<Self>, key: &str, superseded: &Superseded) -> Result<Fetch, CacheError> {
        let Some(redis) = self.redis.as_ref().filter(|r| r.is_up()) else {
            return self.fetch_from_origin(key, superseded).await;
        };
        let fleet = redis.fleet();
        let token = format!("{}-{:x}", self.instance, rand::random::<u32>());
        let deadline = tokio::time::Instant::now() + fleet.wait;
        while tokio::time::Instant::now() < deadline {
            match redis.try_lock(key, &token, fleet.ttl).await {
                Ok(true) => {
                    // Another replica may have stored it between our miss and our lock.
                    let result = match fresh_in(redis, key).await {
                        Some(entry) => Ok(self.keep_fleet_value(key, entry, superseded).await),
                        None => self.fetch_from_origin(key, superseded).await,
                    };
                    let _ = redis.unlock(key, &token).await;
                    // Wake the replicas waiting on this fetch: they read the value, or compete
                    // for the lock again if it failed.
                    let _ = redis.publish_fill(key).await;
                    return result;
                }
                Ok(false) => match self.wait_for_fleet(redis, key, deadline).await {
                    FleetWait::Value(entry) => {
                        return Ok(self.keep_fleet_value(key, entry, superseded).await);
                    }
                    // The holder let go without a value (its fetch failed): compete again, so
                    // a failure does not turn every waiting replica loose on the origin.
                    FleetWait::Released => continue,
                    FleetWait::TimedOut => break,
                },
                // Redis failing: fetch here rather than fail.
                Err(_) => break,
            }
        }
        self.fetch_from_origin(key, superseded).await
    }

    /// A value another replica fetched: kept in the memory tier too.
    async fn keep_fleet_value(&self, key: &str, entry: Arc<Entry>, superseded: &Superseded) -> Fetch {
        let memory = self.tiers.iter().filter(|t| t.name() == TierName::Memory);
        self.store(key, &entry, superseded, memory).await;
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

    /// Waits while another replica holds the fetch lock for `key`: woken by its message on the
    /// fill channel, or looking every `FLEET_LOCK_POLL_MS` in case a message is lost.
    async fn wait_for_fleet(
        &self,
        redis: &RedisTier,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> FleetWait {
        let woken = self.fleet_waiters.register(key);
        while tokio::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            woken.wait(redis.fleet().poll.min(left)).await;
            if let Some(entry) = fresh_in(redis, key).await {
                return FleetWait::Value(entry);
            }
            if !redis.is_locked(key).await.unwrap_or(false) {
                // Released: the value may have landed just before the lock went.
                return fresh_in(redis, key)
                    .await
                    .map_or(FleetWait::Released, FleetWait::Value);
            }
        }
        FleetWait::TimedOut
    }

    /// Fetches from the origin and stores the entry in every tier, unless a purge overtook the
    /// fetch (then the entry only answers the requests that were waiting for it).
    async fn fetch_from_origin(&self, key: &str, superseded: &Superseded) -> Result<Fetch, CacheError> {
        let span = Span::current();
        let result = self.origin.fetch(key, telemetry::traceparent(&span)).await;
        let now = now_ms();
        let entry = match result {
            Ok(Fetched::Value(value)) => Arc::new(Entry::value(key, &value, now, &self.life)),
            Ok(Fetched::NotFound) => Arc::new(Entry::not_found(now, &self.life)),
            Err(e) => {
                span.record("origin.outcome", e.outcome());
                return Err(e.into());
            }
        };
        span.record("origin.outcome", if entry.negative { "not_found" } else { "ok" });
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
