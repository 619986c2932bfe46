//! The read-through cache: tiers in order, then one origin fetch per key (per process, and with
//! Redis per fleet), staleness, and purges that reach every replica.
//!
//! This file holds the read-through itself (look up, fetch, store; one key or a batch); the
//! parts it leans on each have a module: [`answer`] (what a lookup yields), [`policy`] (how long
//! an entry lives), [`encoding`] (its compressed forms), [`fleet`] (the fleet-wide lock),
//! [`invalidation`] (key and tag purges and their listener), [`coalesce`] (one fetch per key in
//! this process), and the tiers behind the [`Tier`] seam (the memory tier evicts by
//! [`eviction`]).

mod answer;
mod bucket;
mod coalesce;
mod disk;
mod encoding;
mod entry;
mod eviction;
mod fleet;
mod invalidation;
mod memory;
mod policy;
mod purge_log;
mod redis;
mod sketch;
mod tier;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

pub use answer::{
    Answer, AnswerKind, CacheError, CoalesceScope, FetchedBody, Forward, NotStored, StaleReason,
};
pub use coalesce::{Abandoned, Coalescer, Role, Superseded};
pub use disk::{DiskOp, DiskTier, DropReason, Layout};
pub use encoding::{Coding, Compressions, INLINE_COMPRESS_BYTES};
pub use entry::{ENTRY_OVERHEAD_BYTES, Entry, Freshness, now_ms};
pub use fleet::FleetLock;
pub use invalidation::{Invalidation, PurgeMode, PurgeScope, PurgeSource, Target};
pub use memory::{EvictionCause, MemoryTier};
pub use policy::{Lifetimes, Times, Uncacheable};
pub use purge_log::{PurgeLog, Verdict};
pub use redis::{RedisHealth, RedisOp, RedisTier, key_slot};
pub use tier::{AnyTier, Tier, TierError, TierName};

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

use self::fleet::{Fleet, Held, Turn};
use crate::origin::{AnyOrigin, BreakerState, FailureTicket, Fetched, GuardedOrigin, Origin, OriginError};
use crate::telemetry::{self, Metrics, TRACE_TARGET};

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
    /// Tags purged lately, for fetches in flight.
    tag_purges: TagPurges,
    /// The pool batch fetches and background refreshes share: half of
    /// `ORIGIN_MAX_CONCURRENCY`, handed out first come first served, so together they never
    /// take the permits single `GET`s need.
    shared_pool: Arc<tokio::sync::Semaphore>,
    /// When each `Uncacheable` reason was last logged (ms since the epoch).
    uncacheable_logged: [AtomicU64; Uncacheable::ALL.len()],
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
        let background_permits = (origin.max_concurrency() / 2).max(1);
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
                uncacheable_logged: Default::default(),
                tag_purges: TagPurges::default(),
                shared_pool: Arc::new(tokio::sync::Semaphore::new(background_permits)),
                metrics,
            }),
        }
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

    /// The answer for `key`: the hit path, top to bottom. A miss waits on the origin for at most
    /// `wait` (the hit path sets no timer).
    pub async fn get(&self, key: &str, wait: Duration) -> Result<Answer, CacheError> {
        let now = now_ms();
        let mut stale = None;
        for (i, tier) in self.inner.tiers.iter().enumerate() {
            let span = lookup_span(tier, 1);
            // Errors are counted by the tier itself; the request goes on without it.
            let found = tier.get(key).instrument(span.clone()).await.ok().flatten();
            let looked = look(found, tier.name(), &mut stale, now);
            span.record("cache.outcome", looked.outcome());
            if let Looked::Fresh(entry, ttl_secs) = looked {
                return Ok(self.fresh_from(i, key, entry, ttl_secs, now).await);
            }
        }
        match stale
            .as_ref()
            .and_then(|(entry, tier)| self.serve_stale(key, entry, *tier, now))
        {
            Some(served) => Ok(served),
            None => {
                self.revalidated_or_fetched(key, stale, Instant::now() + wait, None)
                    .await
            }
        }
    }

    /// The answers for `keys` (distinct), each handed to `sink` with its position in `keys` as
    /// soon as it is known. Keys are looked up a window of [`BATCH_WINDOW`] at a time (one
    /// [`Tier::get_many`] per tier for the keys the tiers in front did not hold fresh), hits and
    /// servable stale entries answered at once, misses queued for a fetch. At most
    /// `concurrency` misses of this batch wait on a fetch at once, and each first waits for a
    /// permit of the pool batches share with background refreshes (half of
    /// `ORIGIN_MAX_CONCURRENCY`, first come first served), so batches together never take the
    /// permits single `GET`s need. A miss not answered by `deadline` is
    /// [`CacheError::TimedOut`], and one still queued then is not fetched. Each key is looked
    /// up, fetched (or coalesced with a fetch in flight, here or on another replica) and counted
    /// as [`ReadThrough::get`] does; a batch counts at most one origin failure against the
    /// breaker.
    ///
    /// The sink applies backpressure: nothing more is looked up or fetched while it is busy, and
    /// once it is closed (the client went away) no new fetch starts; fetches already in flight
    /// finish in their own tasks and are stored.
    pub async fn get_many(
        &self,
        keys: &[&str],
        deadline: Instant,
        concurrency: usize,
        sink: &mut impl BatchSink,
    ) {
        let ticket = Arc::new(FailureTicket::default());
        let concurrency = concurrency.max(1);
        let mut queued: std::collections::VecDeque<(usize, Previous)> = std::collections::VecDeque::new();
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut looked_up = 0;
        loop {
            // Look up the next window once the queue runs low, so fetches never wait on lookups
            // and lookups never run far ahead of what the sink has taken.
            if looked_up < keys.len() && queued.len() < concurrency {
                let window = looked_up..(looked_up + BATCH_WINDOW).min(keys.len());
                looked_up = window.end;
                if !self.look_up_window(keys, window, &mut queued, sink).await {
                    return;
                }
                continue;
            }
            while running.len() < concurrency
                && let Some((k, stale)) = queued.pop_front()
            {
                let ticket = &ticket;
                running.push(async move {
                    // Queued past the deadline: answered, and no fetch is started for it.
                    let pool = self.inner.shared_pool.clone();
                    let permit = tokio::time::timeout_at(deadline, pool.acquire_owned()).await;
                    let Ok(Ok(permit)) = permit else {
                        return (k, Err(CacheError::TimedOut));
                    };
                    let share = PoolShare {
                        ticket: ticket.clone(),
                        permit,
                    };
                    (
                        k,
                        self.revalidated_or_fetched(keys[k], stale, deadline, Some(share))
                            .await,
                    )
                });
            }
            if running.is_empty() {
                return;
            }
            // What was answered so far leaves before the wait on the origin.
            if !sink.flush().await {
                return;
            }
            let next = tokio::select! {
                next = running.next() => next,
                () = sink.closed() => return,
            };
            let Some((k, result)) = next else { continue };
            // While the sink is busy (a client reading slowly), the fetches already running are
            // driven to their end (at most `concurrency` answers wait here), so the pool permits
            // they were handed are used and given back, not held by futures nobody polls.
            let mut done = std::collections::VecDeque::from([(k, result)]);
            while let Some((k, result)) = done.pop_front() {
                let answered = sink.answer(k, result);
                tokio::pin!(answered);
                loop {
                    tokio::select! {
                        ok = &mut answered => {
                            if !ok {
                                return;
                            }
                            break;
                        }
                        Some(more) = running.next(), if !running.is_empty() => done.push_back(more),
                    }
                }
            }
        }
    }

    /// Looks up `keys[window]` in every tier: fresh hits and servable stale entries go to the
    /// sink, the rest to `queued` (with their stale entry, if any). `false`: the sink closed.
    async fn look_up_window(
        &self,
        keys: &[&str],
        window: std::ops::Range<usize>,
        queued: &mut std::collections::VecDeque<(usize, Previous)>,
        sink: &mut impl BatchSink,
    ) -> bool {
        let now = now_ms();
        let mut stale: Vec<Previous> = vec![None; window.len()];
        let mut open: Vec<usize> = window.clone().collect();
        for (i, tier) in self.inner.tiers.iter().enumerate() {
            if open.is_empty() {
                break;
            }
            let asked: Vec<&str> = open.iter().map(|&k| keys[k]).collect();
            let span = lookup_span(tier, asked.len());
            let found = tier.get_many(&asked).instrument(span.clone()).await;
            let (mut hits, mut left) = (0, Vec::with_capacity(open.len()));
            for (k, found) in open.into_iter().zip(found) {
                match look(
                    found.ok().flatten(),
                    tier.name(),
                    &mut stale[k - window.start],
                    now,
                ) {
                    Looked::Fresh(entry, ttl_secs) => {
                        hits += 1;
                        let answer = self.fresh_from(i, keys[k], entry, ttl_secs, now).await;
                        if !sink.answer(k, Ok(answer)).await {
                            return false;
                        }
                    }
                    Looked::Stale | Looked::Miss => left.push(k),
                }
            }
            span.record("cache.hits", hits as i64);
            open = left;
        }
        for k in open {
            let stale = stale[k - window.start].take();
            match stale
                .as_ref()
                .and_then(|(entry, tier)| self.serve_stale(keys[k], entry, *tier, now))
            {
                Some(served) => {
                    if !sink.answer(k, Ok(served)).await {
                        return false;
                    }
                }
                None => queued.push_back((k, stale)),
            }
        }
        true
    }

    /// A fresh `entry` found in tier `i`: the tiers in front of it keep a copy (the memory tier
    /// at once, the disk in the background: a Redis hit does not wait for the disk); counted.
    async fn fresh_from(&self, i: usize, key: &str, entry: Arc<Entry>, ttl_secs: u64, now: u64) -> Answer {
        let tiers = &self.inner.tiers;
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
        self.hit(tiers[i].name(), entry, ttl_secs, now)
    }

    /// A stale `entry` of `tier`, served at once if its windows allow: within its
    /// revalidate window with the circuit not open (and one background refresh), or within its
    /// if-error window with the circuit open; counted. `None`: it must be revalidated first.
    fn serve_stale(&self, key: &str, entry: &Arc<Entry>, tier: TierName, now: u64) -> Option<Answer> {
        let breaker_open = self.inner.origin.breaker_state() == BreakerState::Open;
        if !breaker_open && entry.may_serve_while_revalidating(now) {
            // Refresh in the background: one fetch per key, however many stale hits.
            let _ = self.start_fetch(key, Some((entry.clone(), tier)), true, None);
            return Some(self.stale(entry.clone(), tier, StaleReason::WhileRevalidate, now));
        }
        if breaker_open && entry.may_serve_if_error(now) {
            return Some(self.stale(entry.clone(), tier, StaleReason::IfError, now));
        }
        None
    }

    /// Nothing servable at once for `key`: its fetch (a revalidation of the `stale` entry, when
    /// there is one: must-revalidate, max-age=0, or past its revalidate window) waited on until
    /// `deadline`, with the stale entry's stale-if-error window covering an origin failure.
    async fn revalidated_or_fetched(
        &self,
        key: &str,
        stale: Previous,
        deadline: Instant,
        share: Option<PoolShare>,
    ) -> Result<Answer, CacheError> {
        let Some((entry, tier)) = stale else {
            return self.fetched(key, None, deadline, share).await;
        };
        match self
            .fetched(key, Some((entry.clone(), tier)), deadline, share)
            .await
        {
            Err(CacheError::Origin(_)) if entry.may_serve_if_error(now_ms()) => {
                Ok(self.stale(entry, tier, StaleReason::IfError, now_ms()))
            }
            answered => answered,
        }
    }

    /// A stale answer from `tier`, counted.
    fn stale(&self, entry: Arc<Entry>, tier: TierName, reason: StaleReason, now: u64) -> Answer {
        self.inner.metrics.hit(tier);
        self.inner.metrics.stale(reason);
        let over_secs = now.saturating_sub(entry.fresh_until_ms) / 1000;
        Answer {
            entry,
            kind: AnswerKind::Stale { reason, over_secs },
            now_ms: now,
            fetched: None,
        }
    }

    /// Joins or starts the fetch of `key` (a refresh of `previous`, when there is one) and waits
    /// for it until `deadline`; counted as a miss (coalesced when it waited on another
    /// request's or replica's fetch), or as a hit of its tier when it revalidated `previous`.
    async fn fetched(
        &self,
        key: &str,
        previous: Previous,
        deadline: Instant,
        share: Option<PoolShare>,
    ) -> Result<Answer, CacheError> {
        let refreshed_tier = previous.as_ref().map(|(_, tier)| *tier);
        let (role, waiter) = self.start_fetch(key, previous, false, share);
        let fetch = tokio::time::timeout_at(deadline, waiter.wait())
            .await
            .map_err(|_| CacheError::TimedOut)???;
        let collapsed = match (role, fetch.by_fleet) {
            (Role::Follower, _) => Some(CoalesceScope::Process),
            (Role::Leader, true) => Some(CoalesceScope::Fleet),
            (Role::Leader, false) => None,
        };
        let kind = match (fetch.outcome, refreshed_tier) {
            (Outcome::NotModified, Some(tier)) => {
                self.inner.metrics.hit(tier);
                AnswerKind::Revalidated { tier }
            }
            (outcome, _) => {
                self.inner.metrics.miss(collapsed);
                AnswerKind::Fetched {
                    collapsed,
                    forward: if refreshed_tier.is_some() {
                        Forward::Stale
                    } else {
                        Forward::Miss
                    },
                    not_stored: match outcome {
                        Outcome::NotStored(reason) => Some(reason),
                        _ => None,
                    },
                }
            }
        };
        let fetched = matches!(kind, AnswerKind::Fetched { .. }).then_some(fetch.body);
        Ok(Answer {
            entry: fetch.entry,
            kind,
            now_ms: now_ms(),
            fetched,
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

    /// Weighs `entry` again in the tiers that hold this very entry for `key` (after a
    /// compressed body was added to it), so the memory bound counts what it holds.
    pub fn reweigh(&self, key: &str, entry: &Arc<Entry>) {
        for tier in &self.inner.tiers {
            tier.reweigh(key, entry);
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
            fetched: None,
        }
    }

    /// Joins or starts the fetch of `key` (revalidating `previous`, when the fetch starts here);
    /// the fetch span is a child of the current span.
    fn start_fetch(
        &self,
        key: &str,
        previous: Previous,
        background: bool,
        share: Option<PoolShare>,
    ) -> (Role, coalesce::Waiter<Result<Fetch, CacheError>>) {
        let key: Arc<str> = Arc::from(key);
        let parent = Span::current();
        self.inner.inflight.join_or_start(&key, |superseded| {
            let inner = self.inner.clone();
            let key = key.clone();
            let span = tracing::info_span!(target: TRACE_TARGET, parent: &parent, "origin.fetch",
                otel.kind = "client", origin.outcome = tracing::field::Empty);
            let previous = previous.map(|(entry, _)| entry);
            let (ticket, permit) = match share {
                Some(PoolShare { ticket, permit }) => (Some(ticket), Some(permit)),
                None => (None, None),
            };
            let fence = Fence {
                superseded,
                started_ms: now_ms(),
                ticket,
            };
            async move {
                // The fetch holds its pool permit (a batch's, or a refresh's) until it is done,
                // even when the request that started it gave up waiting. Refreshes of entries
                // served stale wait for one here, so a soft purge of many keys never takes the
                // permits cold keys need.
                let _permit = match (permit, background) {
                    (Some(permit), _) => Some(permit),
                    (None, true) => inner.shared_pool.clone().acquire_owned().await.ok(),
                    (None, false) => None,
                };
                inner.clone().fetch(&key, &fence, previous).await
            }
            .instrument(span)
        })
    }

    /// Purges `key` from every tier here and, through Redis, on every replica. An error means
    /// the purge was applied here but did not reach Redis or the other replicas.
    pub async fn purge(&self, key: &str, mode: PurgeMode) -> Result<(), PurgeIncomplete> {
        let inner = &*self.inner;
        // First, so a fetch that finishes while the tiers are purged does not store its value.
        inner.inflight.supersede(key);
        self.purge_everywhere(Target::Key(key.to_owned()), mode)
            .await
            .map(drop)
    }

    /// Purges every entry carrying exactly `tag`, from every tier here and, through Redis, on
    /// every replica; the entries purged per tier here (memory) and in the shared tiers.
    pub async fn purge_tag(
        &self,
        tag: &str,
        mode: PurgeMode,
    ) -> Result<Vec<(TierName, u64)>, PurgeIncomplete> {
        // First, so a fetch whose answer carries the tag and finishes now does not store it.
        self.inner.tag_purges.record(tag, now_ms());
        self.purge_everywhere(Target::Tag(tag.to_owned()), mode).await
    }

    /// Applies a purge to every tier here, counts it, and publishes it for the other replicas;
    /// `PurgeIncomplete` when a tier or the channel could not be reached.
    async fn purge_everywhere(
        &self,
        target: Target,
        mode: PurgeMode,
    ) -> Result<Vec<(TierName, u64)>, PurgeIncomplete> {
        let inner = &*self.inner;
        let now = now_ms();
        self.note_purge(&target, mode, now);
        let mut reached_all = true;
        let mut purged = Vec::with_capacity(inner.tiers.len());
        for tier in &inner.tiers {
            let done = purge_in(tier, &target, mode).await;
            reached_all &= done.is_ok();
            let n = done.unwrap_or(0);
            inner.metrics.invalidated_entries(target.scope(), tier.name(), n);
            purged.push((tier.name(), n));
        }
        inner
            .metrics
            .invalidated(mode, PurgeSource::Local, target.scope());
        if let Some(channel) = &inner.channel {
            // Recorded for the replicas that miss the message (their disk tier checks it).
            let member = purge_log::encode_record(target.scope(), mode, target.name());
            reached_all &= channel
                .record_purge(&member, now, self.purge_record_keep_ms())
                .await
                .is_ok();
            let message = Invalidation {
                mode,
                origin_instance: inner.instance.to_string(),
                target,
            };
            reached_all &= channel
                .publish(redis::Channel::Invalidate, &message.encode())
                .await
                .is_ok();
        }
        if reached_all {
            Ok(purged)
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
        match &purge.target {
            Target::Key(key) => inner.inflight.supersede(key.as_str()),
            Target::Tag(tag) => inner.tag_purges.record(tag, now_ms()),
        }
        self.note_purge(&purge.target, purge.mode, now_ms());
        let scope = purge.target.scope();
        for tier in inner.tiers.iter().filter(|t| !t.shared()) {
            let n = purge_in(tier, &purge.target, purge.mode).await.unwrap_or(0);
            inner.metrics.invalidated_entries(scope, tier.name(), n);
        }
        inner.metrics.invalidated(purge.mode, PurgeSource::Remote, scope);
    }

    /// Notes a purge applied here in the tiers that keep a record of purges (the disk tier,
    /// whose entries outlive a restart), before the tiers themselves are purged.
    fn note_purge(&self, target: &Target, mode: PurgeMode, at_ms: u64) {
        for tier in &self.inner.tiers {
            if let AnyTier::Disk(disk) = tier {
                disk.note_purge(target.scope(), target.name(), mode, at_ms);
            }
        }
    }

    /// How long Redis keeps a purge's record: as long as an entry could live (the configured
    /// lifetimes, or the longest this replica's disk has stored), and at least a day, since an
    /// origin may set lifetimes this replica has not seen.
    fn purge_record_keep_ms(&self) -> u64 {
        let life = &self.inner.life;
        let configured = (life.ttl.max(life.ttl_max.unwrap_or_default()) + life.stale).as_millis() as u64;
        let stored = self
            .inner
            .tiers
            .iter()
            .filter_map(|t| match t {
                AnyTier::Disk(disk) => Some(disk.purge_horizon_ms()),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        configured.max(stored).max(disk::MIN_HORIZON_MS)
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

/// Judges what `tier` found for a key at `now`; the first stale entry met is kept in `stale`.
fn look(
    found: Option<Arc<Entry>>,
    tier: TierName,
    stale: &mut Option<(Arc<Entry>, TierName)>,
    now: u64,
) -> Looked {
    let Some(entry) = found else {
        return Looked::Miss;
    };
    match entry.freshness(now) {
        Freshness::Fresh { ttl_secs } => Looked::Fresh(entry, ttl_secs),
        Freshness::Stale { .. } if !entry.negative => {
            stale.get_or_insert((entry, tier));
            Looked::Stale
        }
        Freshness::Stale { .. } | Freshness::Expired => Looked::Miss,
    }
}

/// The `cache.lookup` span of one round trip to `tier` for `keys` keys.
fn lookup_span(tier: &AnyTier, keys: usize) -> Span {
    tracing::info_span!(target: TRACE_TARGET, "cache.lookup",
        cache.tier = tier.name().as_str(),
        // As i64: tracing-opentelemetry exports a u64 as a string.
        cache.keys = keys as i64,
        cache.outcome = tracing::field::Empty,
        cache.hits = tracing::field::Empty)
}

/// Applies `mode` to what `target` names in `tier`: the entries removed or marked stale.
async fn purge_in(tier: &AnyTier, target: &Target, mode: PurgeMode) -> Result<u64, TierError> {
    match target {
        Target::Key(key) => tier.purge(key, mode, now_ms()).await,
        Target::Tag(tag) => tier.purge_tag(tag, mode, now_ms()).await,
    }
}

/// What can overtake a fetch in flight, so that it must not store its answer: a purge of its
/// key (`superseded`), or a purge of a tag its answer carries since it started.
/// A batch key's share of the origin: its batch's breaker ticket, and the permit of the pool
/// batches and refreshes share, which the fetch it starts holds until it is done.
struct PoolShare {
    ticket: Arc<FailureTicket>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Clone)]
struct Fence {
    superseded: Superseded,
    started_ms: u64,
    /// The breaker ticket of the request that started the fetch (a batch's, shared by all its
    /// keys), so one request counts at most one origin failure.
    ticket: Option<Arc<FailureTicket>>,
}

/// Tags purged lately, and when: a fetch that started before a purge of a tag its answer
/// carries must not store it. Kept for [`TAG_PURGE_HORIZON_MS`] (longer than any fetch).
#[derive(Default)]
struct TagPurges {
    last: std::sync::Mutex<std::collections::HashMap<Box<str>, u64>>,
}

/// Longer than a fetch can take (origin timeout, fleet wait, retries).
const TAG_PURGE_HORIZON_MS: u64 = 10 * 60 * 1000;

impl TagPurges {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<str>, u64>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `tag` was purged at `at_ms`.
    fn record(&self, tag: &str, at_ms: u64) {
        let mut last = self.lock();
        if last.len() >= 4096 {
            last.retain(|_, t| *t + TAG_PURGE_HORIZON_MS > at_ms);
        }
        last.insert(Box::from(tag), at_ms);
    }

    /// Whether any of `tags` was purged at or after `since_ms`.
    fn any_since(&self, tags: &[Box<str>], since_ms: u64) -> bool {
        if tags.is_empty() {
            return false;
        }
        let last = self.lock();
        tags.iter().any(|t| last.get(t).is_some_and(|at| *at >= since_ms))
    }
}

impl<O: Origin> Inner<O> {
    /// The fetch task: with Redis, take the fleet lock or wait for the replica that holds it;
    /// then fetch from the origin (a conditional refresh of `previous` when it has validators)
    /// and store in every tier.
    async fn fetch(
        self: Arc<Self>,
        key: &str,
        fence: &Fence,
        previous: Option<Arc<Entry>>,
    ) -> Result<Fetch, CacheError> {
        let Some(fleet) = &self.fleet else {
            return self.fetch_from_origin(key, fence, previous, &mut None).await;
        };
        match fleet.take_turn(key).await {
            Turn::Lead(held) => {
                // Let go once the shared tier holds the value: the store may hand the lock to
                // its background writes, which let go when they are done.
                let mut held = Some(held);
                // Another replica may have stored it between our miss and our lock.
                let result = match fleet.fresh(key).await {
                    Some(entry) => Ok(self.keep_fleet_value(key, entry, fence).await),
                    None => self.fetch_from_origin(key, fence, previous, &mut held).await,
                };
                if let Some(held) = held {
                    let not_stored = matches!(&result, Ok(f) if matches!(f.outcome, Outcome::NotStored(_)));
                    held.release(!not_stored).await;
                }
                result
            }
            Turn::Filled(entry) => Ok(self.keep_fleet_value(key, entry, fence).await),
            Turn::Alone => self.fetch_from_origin(key, fence, previous, &mut None).await,
        }
    }

    /// A value another replica fetched (and stored in the shared tiers): kept in this replica's
    /// own tiers too.
    async fn keep_fleet_value(self: &Arc<Self>, key: &str, entry: Arc<Entry>, fence: &Fence) -> Fetch {
        let own = (0..self.tiers.len())
            .filter(|&t| !self.tiers[t].shared())
            .collect();
        // The shared tier holds it already, whatever this replica's own tiers decide.
        self.store(key, &entry, fence, own, &mut None).await;
        Fetch {
            body: Arc::default(),
            entry,
            by_fleet: true,
            outcome: Outcome::Stored,
        }
    }

    /// Whether a purge of the key, or of one of `entry`'s tags, overtook the fetch `fence` guards.
    fn overtaken(&self, entry: &Entry, fence: &Fence) -> bool {
        fence.superseded.is_set() || self.tag_purges.any_since(entry.tags(), fence.started_ms)
    }

    /// Stores `entry` in the tiers numbered `tiers` (in lookup order), unless a purge overtook
    /// the fetch (then the entry only answers the requests that were waiting for it). The fetch
    /// waits only for the first tier that keeps the entry (memory, when there is one), so its
    /// waiters are answered without paying for Redis or the disk; the other tiers are written
    /// in the background, tracked so shutdown waits for them, and the fleet lock in `held` (if
    /// any) is let go only after them, so waiting replicas find the value in Redis. A purge
    /// sets the flag before it removes the key, so looking at the flag again after the writes
    /// catches a purge that came in between them, and every write is undone. `None` when a
    /// tier keeps it; else why none does.
    async fn store(
        self: &Arc<Self>,
        key: &str,
        entry: &Arc<Entry>,
        fence: &Fence,
        tiers: Vec<usize>,
        held: &mut Option<Held>,
    ) -> Option<NotStored> {
        if self.overtaken(entry, fence) {
            return Some(NotStored::Purged);
        }
        let mut kept = false;
        let mut written = 0;
        while written < tiers.len() && !kept {
            kept = matches!(self.tiers[tiers[written]].put(key, entry.clone()).await, Ok(true));
            written += 1;
        }
        if written == tiers.len() {
            if self.overtaken(entry, fence) {
                self.undo(key, &tiers).await;
                return Some(NotStored::Purged);
            }
            return (!kept).then_some(NotStored::Declined);
        }
        let (inner, owned_key, stored, guard, lock) = (
            self.clone(),
            key.to_owned(),
            entry.clone(),
            fence.clone(),
            held.take(),
        );
        self.inflight.tasks().spawn(async move {
            for &t in &tiers[written..] {
                let _ = inner.tiers[t].put(&owned_key, stored.clone()).await;
            }
            let purged = inner.overtaken(&stored, &guard);
            if purged {
                inner.undo(&owned_key, &tiers).await;
            }
            if let Some(lock) = lock {
                lock.release(!purged).await;
            }
        });
        // A purge that came in after the first write: the background writes undo everything.
        self.overtaken(entry, fence).then_some(NotStored::Purged)
    }

    /// Removes `key` from the tiers numbered `tiers`: the writes of a fetch a purge overtook.
    async fn undo(&self, key: &str, tiers: &[usize]) {
        for &t in tiers {
            let _ = self.tiers[t].remove(key).await;
        }
    }

    /// Fetches from the origin (conditionally, when `previous` has validators), decides the
    /// entry's lifetimes from the answer, and stores it in every tier, unless the origin forbids
    /// storing it or a purge overtook the fetch (then it only answers the requests that waited).
    async fn fetch_from_origin(
        self: &Arc<Self>,
        key: &str,
        fence: &Fence,
        previous: Option<Arc<Entry>>,
        held: &mut Option<Held>,
    ) -> Result<Fetch, CacheError> {
        let traceparent = telemetry::traceparent(&Span::current());
        let validators = previous.as_deref().map(Entry::validators).filter(|v| v.any());
        let fetched = self
            .origin
            .fetch(key, traceparent, validators, fence.ticket.as_deref())
            .await?;
        let now = now_ms();
        let headers = match &fetched {
            Fetched::Value(_, h) | Fetched::NotFound(h) | Fetched::NotModified(h) => h,
        };
        if headers.tags_ignored > 0 {
            self.metrics.tags_ignored(u64::from(headers.tags_ignored));
        }
        let tags = headers.tags.clone();
        let (entry, decided) = match fetched {
            Fetched::Value(value, headers) => {
                let decided = self.life.decide(&headers, false, now);
                let times = decided.unwrap_or_else(|_| self.life.heuristic(false, now));
                let entry = Entry::new(key, &value, times, headers.validators);
                (entry.with_tags(tags.as_deref().unwrap_or_default()), decided)
            }
            Fetched::NotFound(headers) => {
                let decided = self.life.decide(&headers, true, now);
                let times = decided.unwrap_or_else(|_| self.life.heuristic(true, now));
                (Entry::new_not_found(times), decided)
            }
            Fetched::NotModified(headers) => {
                // Only a conditional refresh can be answered 304; unasked, it is an error.
                let Some(previous) = previous else {
                    return Err(OriginError::Status(304).into());
                };
                let decided = if headers.states_freshness() {
                    self.life.decide(&headers, false, now)
                } else {
                    // The 304 restates nothing: the stored answer's lifetimes run again from now.
                    Ok(previous.times_again(now))
                };
                let times = decided.unwrap_or_else(|_| self.life.heuristic(false, now));
                let mut entry = previous.renewed(times, headers.validators);
                // Tags from a 304 replace the entry's (its headers update the stored ones).
                if let Some(tags) = &tags {
                    entry = entry.with_tags(tags);
                }
                let entry = Arc::new(entry);
                if decided.is_ok() {
                    self.store(key, &entry, fence, (0..self.tiers.len()).collect(), held)
                        .await;
                }
                let outcome = match decided {
                    Ok(_) => Outcome::NotModified,
                    Err(reason) => self.not_stored(reason),
                };
                return Ok(Fetch {
                    body: Arc::default(),
                    entry,
                    by_fleet: false,
                    outcome,
                });
            }
        };
        let entry = Arc::new(entry);
        let outcome = match decided {
            Ok(_) => {
                // CACHE_NEGATIVE_TTL_SECS=0: 404s are never remembered, whatever the origin says.
                let why = if entry.negative && self.life.negative_ttl.is_zero() {
                    Some(NotStored::Declined)
                } else {
                    self.store(key, &entry, fence, (0..self.tiers.len()).collect(), held)
                        .await
                };
                match why {
                    None => Outcome::Stored,
                    Some(why) => {
                        self.metrics.not_stored(why);
                        Outcome::NotStored(why)
                    }
                }
            }
            Err(reason) => self.not_stored(reason),
        };
        Ok(Fetch {
            body: Arc::default(),
            entry,
            by_fleet: false,
            outcome,
        })
    }

    /// Counts an answer the origin forbade storing, and says why in the log at most once a
    /// minute per reason (an operator whose framework sends `private` by default sees why
    /// nothing is cached, without a line per request).
    fn not_stored(&self, reason: Uncacheable) -> Outcome {
        self.metrics.uncacheable(reason);
        let last = &self.uncacheable_logged[reason as usize];
        let now = now_ms();
        let before = last.load(Ordering::Relaxed);
        if now.saturating_sub(before) >= 60_000
            && last
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                reason = reason.as_str(),
                "the origin's answer may not be stored by a shared cache; it is passed through uncached (logged at most once a minute per reason)"
            );
        }
        Outcome::NotStored(NotStored::Origin(reason))
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
    use crate::origin::{Breaker, Trip};

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
        let metrics = Arc::new(Metrics::detached());
        let tiers = if memory {
            vec![AnyTier::Memory(MemoryTier::new(1 << 20, metrics.clone()))]
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
        ReadThrough::new(tiers, guarded, life(ttl), None, metrics)
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
        let cache = cache(&origin, true, Duration::from_millis(20));
        cache.get("k", WAIT).await.unwrap();
        // Past its freshness (20 ms), inside its stale window (60 s).
        tokio::time::sleep(Duration::from_millis(50)).await;
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
