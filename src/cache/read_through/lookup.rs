//! The hit path: a key (or a batch of keys) looked up in the tiers in order, fresh entries
//! answered, stale ones served while they are refreshed, misses handed to the fetch.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::cache::{Answer, AnswerKind, AnyTier, CacheError, Entry, Freshness, StaleReason, Tier, TierName};
use crate::origin::{BreakerState, FailureTicket, Origin};
use crate::telemetry::TRACE_TARGET;

use super::{BATCH_WINDOW, BatchSink, Looked, PoolShare, Previous, ReadThrough};

impl<O: Origin> ReadThrough<O> {
    /// `found` as `tier` gave it for `key`, unless it comes from a shared tier (Redis) and was
    /// stored before a purge this replica knows of: a purge is published before Redis is
    /// purged, and such an entry must not be served or copied into the tiers in front.
    pub(super) fn unpurged(
        &self,
        tier: &AnyTier,
        key: &str,
        found: Option<Arc<Entry>>,
    ) -> Option<Arc<Entry>> {
        found.filter(|e| !(tier.shared() && self.inner.recent.purged(key, e)))
    }

    /// The answer for `key`: the hit path, top to bottom. A miss waits on the origin for at most
    /// `wait` (the hit path sets no timer).
    pub async fn get(&self, key: &str, wait: Duration) -> Result<Answer, CacheError> {
        let now = self.now_ms();
        let mut stale = None;
        for (i, tier) in self.inner.tiers.iter().enumerate() {
            let span = lookup_span(tier, 1);
            // Errors are counted by the tier itself; the request goes on without it.
            let found = tier.get(key).instrument(span.clone()).await.ok().flatten();
            let found = self.unpurged(tier, key, found);
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
    pub(super) async fn look_up_window(
        &self,
        keys: &[&str],
        window: std::ops::Range<usize>,
        queued: &mut std::collections::VecDeque<(usize, Previous)>,
        sink: &mut impl BatchSink,
    ) -> bool {
        let now = self.now_ms();
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
                    self.unpurged(tier, keys[k], found.ok().flatten()),
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
    pub(super) async fn fresh_from(
        &self,
        i: usize,
        key: &str,
        entry: Arc<Entry>,
        ttl_secs: u64,
        now: u64,
    ) -> Answer {
        self.fill_front(i, key, &entry).await;
        self.hit(self.inner.tiers[i].name(), entry, ttl_secs, now)
    }

    /// Copies `entry`, found in tier number `i`, into the tiers in front of it: the memory tier
    /// before this returns, the others in the background (tracked for shutdown).
    pub(super) async fn fill_front(&self, i: usize, key: &str, entry: &Arc<Entry>) {
        for (t, front) in self.inner.tiers[..i].iter().enumerate() {
            if front.name() == TierName::Memory {
                let _ = front.put(key, entry.clone()).await;
                continue;
            }
            let (inner, key, entry) = (self.inner.clone(), key.to_owned(), entry.clone());
            self.inner.inflight.tasks().spawn(async move {
                let _ = inner.tiers[t].put(&key, entry).await;
            });
        }
    }

    /// A stale `entry` of `tier`, served at once if its windows allow: within its
    /// revalidate window with the circuit not open (and one background refresh), or within its
    /// if-error window with the circuit open; counted. `None`: it must be revalidated first.
    pub(super) fn serve_stale(
        &self,
        key: &str,
        entry: &Arc<Entry>,
        tier: TierName,
        now: u64,
    ) -> Option<Answer> {
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
    pub(super) async fn revalidated_or_fetched(
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
            Err(CacheError::Origin(_) | CacheError::Shared(_)) if entry.may_serve_if_error(self.now_ms()) => {
                Ok(self.stale(entry, tier, StaleReason::IfError, self.now_ms()))
            }
            answered => answered,
        }
    }

    /// A stale answer from `tier`, counted.
    pub(super) fn stale(&self, entry: Arc<Entry>, tier: TierName, reason: StaleReason, now: u64) -> Answer {
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

    /// The answer for `key` if the tier in front holds it fresh and can say so without waiting
    /// (an in-process tier); `None` otherwise, and then [`ReadThrough::get`] answers. Counted
    /// like the same hit through `get`.
    pub fn answer_now(&self, key: &str) -> Option<Answer> {
        let tier = self.inner.tiers.first()?;
        let entry = tier.get_now(key)??;
        let now = self.now_ms();
        match entry.freshness(now) {
            Freshness::Fresh { ttl_secs } => Some(self.hit(tier.name(), entry, ttl_secs, now)),
            _ => None,
        }
    }

    /// A fresh `entry` found in `tier`, counted.
    pub(super) fn hit(&self, tier: TierName, entry: Arc<Entry>, ttl_secs: u64, now: u64) -> Answer {
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
}

/// Judges what `tier` found for a key at `now`; the first stale entry met is kept in `stale`.
pub(super) fn look(
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
pub(super) fn lookup_span(tier: &AnyTier, keys: usize) -> Span {
    tracing::info_span!(target: TRACE_TARGET, "cache.lookup",
        cache.tier = tier.name().as_str(),
        // As i64: tracing-opentelemetry exports a u64 as a string.
        cache.keys = keys as i64,
        cache.outcome = tracing::field::Empty,
        cache.hits = tracing::field::Empty)
}
