//! Fetch-and-store: one origin fetch per key (coalesced in this process, and with Redis in the
//! fleet), stored in the tier in front before the waiters are answered, in the others after.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::cache::fleet::{Held, Turn};
use crate::cache::{
    Answer, AnswerKind, CacheError, CoalesceScope, Entry, Forward, NotStored, Role, Tier, Uncacheable,
};
use crate::origin::{Fetched, Origin, OriginError};
use crate::telemetry::{self, TRACE_TARGET};

use super::{Fence, Fetch, Inner, Outcome, PoolShare, Previous, ReadThrough};

impl<O: Origin> ReadThrough<O> {
    /// Joins or starts the fetch of `key` (a refresh of `previous`, when there is one) and waits
    /// for it until `deadline`; counted as a miss (coalesced when it waited on another
    /// request's or replica's fetch), or as a hit of its tier when it revalidated `previous`.
    pub(super) async fn fetched(
        &self,
        key: &str,
        previous: Previous,
        deadline: Instant,
        share: Option<PoolShare>,
    ) -> Result<Answer, CacheError> {
        let refreshed_tier = previous.as_ref().map(|(_, tier)| *tier);
        let (role, waiter) = self.start_fetch(key, previous, false, share);
        let fetched = tokio::time::timeout_at(deadline, waiter.wait())
            .await
            .map_err(|_| CacheError::TimedOut)??;
        // Another replica's fetch, answered or failed (its failure is this one's).
        let by_fleet = match &fetched {
            Ok(fetch) => fetch.by_fleet,
            Err(error) => matches!(error, CacheError::Shared(_)),
        };
        let collapsed = match (role, by_fleet) {
            (Role::Follower, _) => Some(CoalesceScope::Process),
            (Role::Leader, true) => Some(CoalesceScope::Fleet),
            (Role::Leader, false) => None,
        };
        let fetch = match fetched {
            Ok(fetch) => fetch,
            Err(error) => {
                // A fetch this request waited for failed: counted as the wait it was, with no
                // miss and no origin request.
                if let Some(scope) = collapsed {
                    self.inner.metrics.coalesced(scope);
                }
                return Err(error);
            }
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
            now_ms: self.now_ms(),
            fetched,
        })
    }

    /// Joins or starts the fetch of `key` (revalidating `previous`, when the fetch starts here);
    /// the fetch span is a child of the current span.
    pub(super) fn start_fetch(
        &self,
        key: &str,
        previous: Previous,
        background: bool,
        share: Option<PoolShare>,
    ) -> (Role, crate::cache::coalesce::Waiter<Result<Fetch, CacheError>>) {
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
                started_ms: self.now_ms(),
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
}

impl<O: Origin> Inner<O> {
    /// The fetch task: with Redis, take the fleet lock or wait for the replica that holds it;
    /// then fetch from the origin (a conditional refresh of `previous` when it has validators)
    /// and store in every tier.
    pub(super) async fn fetch(
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
                let fresh = fleet.fresh(key).await.filter(|e| !self.recent.purged(key, e));
                let result = match fresh {
                    Some(entry) => Ok(self.keep_fleet_value(key, entry, fence).await),
                    None => self.fetch_from_origin(key, fence, previous, &mut held).await,
                };
                if let Some(held) = held {
                    match &result {
                        Err(CacheError::Origin(error)) => match error.shared() {
                            Some(failure) => held.fail(&failure).await,
                            None => held.release(true).await,
                        },
                        Ok(f) => held.release(!matches!(f.outcome, Outcome::NotStored(_))).await,
                        Err(_) => held.release(true).await,
                    }
                }
                result
            }
            // The fetch this replica waited for failed at the origin: so does this request
            // (or it is answered stale, as for a failure of its own), without a fetch here. A
            // failure this version cannot read: fetch here.
            Turn::Failed(failure) => match OriginError::from_shared(&failure) {
                Some(error) => Err(CacheError::Shared(error)),
                None => self.fetch_from_origin(key, fence, previous, &mut None).await,
            },
            // A value stored before a purge this replica knows of is not taken: Redis may still
            // hold it for a moment after the purge was published.
            Turn::Filled(entry) if !self.recent.purged(key, &entry) => {
                Ok(self.keep_fleet_value(key, entry, fence).await)
            }
            Turn::Filled(_) | Turn::Alone => self.fetch_from_origin(key, fence, previous, &mut None).await,
        }
    }

    /// A value another replica fetched (and stored in the shared tiers): kept in this replica's
    /// own tiers too.
    pub(super) async fn keep_fleet_value(
        self: &Arc<Self>,
        key: &str,
        entry: Arc<Entry>,
        fence: &Fence,
    ) -> Fetch {
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
    pub(super) fn overtaken(&self, key: &str, entry: &Entry, fence: &Fence) -> bool {
        fence.superseded.is_set()
            || self.recent.key_since(key, fence.started_ms)
            || self.recent.any_since(entry.tags(), fence.started_ms)
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
    pub(super) async fn store(
        self: &Arc<Self>,
        key: &str,
        entry: &Arc<Entry>,
        fence: &Fence,
        tiers: Vec<usize>,
        held: &mut Option<Held>,
    ) -> Option<NotStored> {
        // Registered before the first look for a purge: a purge recorded after it waits for
        // this store to end.
        let store = self.writes.begin(key, entry);
        if self.overtaken(key, entry, fence) {
            store.finish(true);
            return Some(NotStored::Purged);
        }
        if tiers.iter().any(|&t| self.tiers[t].shared()) {
            // About to write to Redis: a purge another replica makes now may delete the key
            // before this write lands (their commands travel on other connections), so a purge
            // heard soon after undoes it (`apply_remote`). Noted before the write, so a purge
            // heard the moment the write lands is not missed.
            self.recent.wrote(key, entry.tags(), self.clock.now_ms());
        }
        let mut kept = false;
        let mut written = 0;
        while written < tiers.len() && !kept {
            kept = matches!(self.tiers[tiers[written]].put(key, entry.clone()).await, Ok(true));
            written += 1;
        }
        if written == tiers.len() {
            if self.overtaken(key, entry, fence) {
                store.finish(self.undo(key, &tiers).await);
                return Some(NotStored::Purged);
            }
            store.finish(true);
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
            let purged = inner.overtaken(&owned_key, &stored, &guard);
            let clean = !purged || inner.undo(&owned_key, &tiers).await;
            store.finish(clean);
            if let Some(lock) = lock {
                lock.release(!purged).await;
            }
        });
        // A purge that came in after the first write: the background writes undo everything.
        self.overtaken(key, entry, fence).then_some(NotStored::Purged)
    }

    /// Removes `key` from the tiers numbered `tiers`: the writes of a fetch a purge overtook.
    /// A removal that fails (Redis timed out) is tried twice more, 50 ms and 200 ms later: a
    /// purged value left in Redis would be served until it expires. A tier's failures are
    /// counted by the tier (`redis_errors_total`); one that still fails is logged, and makes
    /// the undo unclean (`false`): the purge that overtook the store answers `503`.
    pub(super) async fn undo(&self, key: &str, tiers: &[usize]) -> bool {
        let mut clean = true;
        for &t in tiers {
            let tier = &self.tiers[t];
            let mut tries = [50u64, 200].into_iter();
            while let Err(e) = tier.remove(key).await {
                match tries.next() {
                    Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
                    None => {
                        tracing::warn!(tier = tier.name().as_str(), error = %e, "a purged value could not be removed from a tier; it stays until it expires");
                        clean = false;
                        break;
                    }
                }
            }
        }
        clean
    }

    /// Fetches from the origin (conditionally, when `previous` has validators), decides the
    /// entry's lifetimes from the answer, and stores it in every tier, unless the origin forbids
    /// storing it or a purge overtook the fetch (then it only answers the requests that waited).
    pub(super) async fn fetch_from_origin(
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
        let now = self.clock.now_ms();
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
    pub(super) fn not_stored(&self, reason: Uncacheable) -> Outcome {
        self.metrics.uncacheable(reason);
        let last = &self.uncacheable_logged[reason as usize];
        let now = self.clock.now_ms();
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
