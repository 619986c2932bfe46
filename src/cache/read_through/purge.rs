//! Purges by key and tag: applied to every tier, published to the other replicas and recorded
//! for the disk tier, and the ones other replicas publish applied here.

use tokio_util::sync::CancellationToken;

use crate::cache::Entry;
use crate::cache::fleet::bus::{Channel, MessageBus};
use crate::cache::fleet::listener::RemotePurges;
use crate::cache::purge::{MIN_HORIZON_MS, PurgeRecords, decode_record, encode_record};
use crate::cache::{AnyTier, Invalidation, PurgeMode, PurgeSource, Target, Tier, TierError, TierName};
use crate::origin::Origin;

use super::ReadThrough;

/// A purge that did not complete everywhere: the caller should retry (a retry is safe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PurgeIncomplete {
    /// Applied here, but Redis or the other replicas were not reached (or a tier failed).
    #[error(
        "the purge was applied here, but not everywhere: Redis or other replicas may still hold what it purges"
    )]
    Unreached,
    /// Applied, but recorded nowhere that outlives a restart: the disk tier is down and there
    /// is no Redis to record it (the disk would serve the purged entries after a restart).
    #[error(
        "the purge was applied, but no record of it outlives a restart: the disk tier is down and Redis keeps no record"
    )]
    NotRecorded,
    /// A fetch that finished while the purge ran had stored the purged value, and it could not
    /// be removed from every tier (Redis failed): a retry removes it.
    #[error(
        "the purge was applied, but a fetch that finished meanwhile stored the value and it could not be removed everywhere"
    )]
    UndoFailed,
}

impl<O: Origin> ReadThrough<O> {
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
        self.purge_everywhere(Target::Tag(tag.to_owned()), mode).await
    }

    /// Applies a purge to every tier here, counts it, and publishes it for the other replicas;
    /// `PurgeIncomplete` when a tier or the channel could not be reached.
    pub(super) async fn purge_everywhere(
        &self,
        target: Target,
        mode: PurgeMode,
    ) -> Result<Vec<(TierName, u64)>, PurgeIncomplete> {
        let inner = &*self.inner;
        let now = self.now_ms();
        // Recorded before anything is purged: a fetch that finishes now does not store its
        // answer, and an entry read from Redis before Redis is purged counts as purged.
        inner.recent.record(&target, now);
        // Durable where this replica keeps purge records (its disk), or in Redis: a purge
        // recorded nowhere that outlives a restart is incomplete.
        let noted_here = self.note_purge(&target, mode, now).await;
        let mut recorded = noted_here;
        let mut reached_all = true;
        if let Some(bus) = &inner.bus {
            // Published first, so the other replicas drop their own copies while the shared
            // tiers are purged here; recorded for the replicas that miss the message (they
            // catch up from the records).
            let member = encode_record(target.scope(), mode, target.name());
            let in_redis = bus
                .record(&member, now, self.purge_record_keep_ms())
                .await
                .is_ok();
            reached_all &= in_redis;
            recorded |= in_redis;
            let message = Invalidation {
                mode,
                origin_instance: inner.instance.to_string(),
                target: target.clone(),
            };
            reached_all &= bus.publish(Channel::Invalidate, &message.encode()).await.is_ok();
        }
        // Every tier at once: a tag of a million entries costs the slowest tier's time, not
        // the sum (an entry read from Redis meanwhile is refused: the purge is recorded).
        let now = self.now_ms();
        let done =
            futures_util::future::join_all(inner.tiers.iter().map(|tier| purge_in(tier, &target, mode, now)))
                .await;
        let mut purged = Vec::with_capacity(inner.tiers.len());
        for (tier, done) in inner.tiers.iter().zip(done) {
            reached_all &= done.is_ok();
            let n = done.unwrap_or(0);
            inner.metrics.invalidated_entries(target.scope(), tier.name(), n);
            purged.push((tier.name(), n));
        }
        // Stores this purge overtook: answered only once they wrote nothing or undid it.
        let undone = inner.writes.settled(&target).await;
        inner
            .metrics
            .invalidated(mode, PurgeSource::Local, target.scope());
        if !reached_all {
            tracing::warn!(
                "the purge was applied here, but not everywhere: Redis or other replicas may still hold what it purges"
            );
            Err(PurgeIncomplete::Unreached)
        } else if !undone {
            tracing::warn!(
                "the purge was applied, but a fetch that finished meanwhile stored the value and it could not be removed everywhere"
            );
            Err(PurgeIncomplete::UndoFailed)
        } else if !recorded {
            tracing::warn!(
                "the purge was applied, but no record of it outlives a restart: the disk tier is down and Redis keeps no record"
            );
            Err(PurgeIncomplete::NotRecorded)
        } else {
            Ok(purged)
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
        // First: from now on an entry of Redis stored before the purge is purged, here too.
        inner.recent.record(&purge.target, self.now_ms());
        if let Target::Key(key) = &purge.target {
            inner.inflight.supersede(key.as_str());
        }
        self.note_purge(&purge.target, purge.mode, self.now_ms()).await;
        let scope = purge.target.scope();
        for tier in inner.tiers.iter().filter(|t| !t.shared()) {
            let n = purge_in(tier, &purge.target, purge.mode, self.now_ms())
                .await
                .unwrap_or(0);
            inner.metrics.invalidated_entries(scope, tier.name(), n);
        }
        // Keys this replica wrote to Redis lately, that the purge names: its delete may have
        // landed before the write (they travel on different connections). Purged there again
        // (hard: a soft purge's rewrite would keep a value the purge meant to mark stale, and a
        // miss is the safe side).
        for key in inner.recent.written_lately(&purge.target, self.now_ms()) {
            for tier in inner.tiers.iter().filter(|t| t.shared()) {
                let _ = tier.purge(&key, PurgeMode::Hard, self.now_ms()).await;
            }
        }
        inner.metrics.invalidated(purge.mode, PurgeSource::Remote, scope);
    }

    /// Notes a purge applied here in the tiers that keep a record of purges (the disk tier,
    /// whose entries outlive a restart), before the tiers themselves are purged; whether every
    /// such record is durable.
    pub(super) async fn note_purge(&self, target: &Target, mode: PurgeMode, at_ms: u64) -> bool {
        let mut durable = true;
        for tier in &self.inner.tiers {
            durable &= tier.note_purge(target, mode, at_ms).await;
        }
        durable
    }

    /// How long Redis keeps a purge's record: as long as an entry could live (the configured
    /// lifetimes, or the longest this replica's disk has stored), and at least a day, since an
    /// origin may set lifetimes this replica has not seen.
    pub(super) fn purge_record_keep_ms(&self) -> u64 {
        let life = &self.inner.life;
        let configured = (life.ttl.max(life.ttl_max.unwrap_or_default()) + life.stale).as_millis() as u64;
        let stored = self
            .inner
            .tiers
            .iter()
            .filter_map(|t| t.purge_horizon_ms())
            .max()
            .unwrap_or(0);
        configured.max(stored).max(MIN_HORIZON_MS)
    }

    /// Forgets what this replica's own tiers hold (after a gap in the purge feed).
    fn clear_own_tiers(&self) {
        for tier in &self.inner.tiers {
            tier.clear_own();
        }
    }

    /// Listens on the bus, until `shutdown`, for purges from other replicas and fleet locks let
    /// go.
    pub fn spawn_listener(&self, shutdown: CancellationToken) {
        if let Some(bus) = &self.inner.bus {
            crate::cache::fleet::listener::spawn_listener(
                self.clone(),
                bus.clone(),
                self.inner.fleet.clone(),
                shutdown,
            );
        }
    }
}

/// Applies `mode` to what `target` names in `tier`: the entries removed or marked stale.
pub(super) async fn purge_in(
    tier: &AnyTier,
    target: &Target,
    mode: PurgeMode,
    now_ms: u64,
) -> Result<u64, TierError> {
    match target {
        Target::Key(key) => tier.purge(key, mode, now_ms).await,
        Target::Tag(tag) => tier.purge_tag(tag, mode, now_ms).await,
    }
}

/// Keys and tags purged lately, and when. A fetch that started before a purge of a tag its
/// answer carries must not store it; and an entry read from a shared tier (Redis) that was
/// stored before a purge of its key or one of its tags is purged, whatever Redis still holds:
/// the purge is published before Redis is purged, so another replica (or this one) may read
/// the old entry in between, and must not copy it back into its own tiers. Kept for
/// [`PURGE_HORIZON_MS`] (longer than any fetch, or any purge of Redis).
#[derive(Default)]
pub(super) struct RecentPurges {
    recent: std::sync::Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    keys: std::collections::HashMap<Box<str>, u64>,
    tags: std::collections::HashMap<Box<str>, u64>,
    /// Keys this replica wrote to a shared tier lately (noted as the write begins), with their
    /// tags and when: a purge heard within [`WRITE_RACE_MS`] of the write undoes it there.
    wrote: Wrote,
    /// Size at which the maps are next trimmed of what is past the horizon (twice the size
    /// left by the last trim, so trimming is O(1) per purge however many come).
    trim_at: usize,
}

/// Longer than a fetch can take (origin timeout, fleet wait, retries) or a purge of Redis.
const PURGE_HORIZON_MS: u64 = 10 * 60 * 1000;

/// When a key was written to a shared tier, and the tags its entry carried.
type Written = (u64, Box<[Box<str>]>);

/// The keys written lately, and for each tag the keys among them whose entry carried it: a tag
/// purge heard in a storm looks up its own keys, not all 4,096 (it scanned them, comparing
/// tags, on every remote tag purge).
#[derive(Default)]
struct Wrote {
    keys: std::collections::HashMap<Box<str>, Written>,
    by_tag: std::collections::HashMap<Box<str>, std::collections::HashSet<Box<str>>>,
}

impl Wrote {
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// `key`, carrying `tags`, was written at `at_ms` (the tags of an earlier write no longer
    /// name it).
    fn insert(&mut self, key: &str, tags: &[Box<str>], at_ms: u64) {
        if let Some((_, old)) = self.keys.insert(Box::from(key), (at_ms, tags.into())) {
            unlink(&mut self.by_tag, key, &old);
        }
        for tag in tags {
            self.by_tag.entry(tag.clone()).or_default().insert(Box::from(key));
        }
    }

    /// Keeps the writes whose time `keep` accepts.
    fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        let by_tag = &mut self.by_tag;
        self.keys.retain(|key, (at, tags)| {
            let kept = keep(*at);
            if !kept {
                unlink(by_tag, key, tags);
            }
            kept
        });
    }

    /// When `key` was written, if it was lately.
    fn at(&self, key: &str) -> Option<u64> {
        self.keys.get(key).map(|(at, _)| *at)
    }

    /// The keys written lately whose entry carried `tag`, with when.
    fn with_tag<'a>(&'a self, tag: &str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        let keys = self.by_tag.get(tag);
        keys.into_iter()
            .flatten()
            .filter_map(|key| Some((&**key, self.at(key)?)))
    }
}

/// Takes `key` out of the sets of its `tags` (and a set it leaves empty out of the index).
fn unlink(
    by_tag: &mut std::collections::HashMap<Box<str>, std::collections::HashSet<Box<str>>>,
    key: &str,
    tags: &[Box<str>],
) {
    for tag in tags {
        if let Some(keys) = by_tag.get_mut(tag) {
            keys.remove(key);
            if keys.is_empty() {
                by_tag.remove(tag);
            }
        }
    }
}

/// How long after its write a key stays exposed to a purge published by another replica whose
/// delete reached Redis first (a message, a delete and a write racing on three connections).
const WRITE_RACE_MS: u64 = 30_000;

impl RecentPurges {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `target` was purged at `at_ms`.
    pub(super) fn record(&self, target: &Target, at_ms: u64) {
        let mut recent = self.lock();
        let r = &mut *recent;
        if r.keys.len() + r.tags.len() >= r.trim_at.max(4096) {
            r.keys.retain(|_, t| *t + PURGE_HORIZON_MS > at_ms);
            r.tags.retain(|_, t| *t + PURGE_HORIZON_MS > at_ms);
            r.trim_at = 2 * (r.keys.len() + r.tags.len());
        }
        let map = match target {
            Target::Key(_) => &mut r.keys,
            Target::Tag(_) => &mut r.tags,
        };
        let at = map.entry(Box::from(target.name())).or_insert(at_ms);
        *at = (*at).max(at_ms);
    }

    /// Whether `key` was purged after `since_ms` (a fetch started in the very millisecond of a
    /// purge began after it: a purge of a fetch in flight sets its `Superseded` flag anyway).
    pub(super) fn key_since(&self, key: &str, since_ms: u64) -> bool {
        self.lock().keys.get(key).is_some_and(|at| *at > since_ms)
    }

    /// This replica wrote `key` (carrying `tags`) to a shared tier at `at_ms`.
    pub(super) fn wrote(&self, key: &str, tags: &[Box<str>], at_ms: u64) {
        let mut recent = self.lock();
        if recent.wrote.len() >= 4096 {
            recent.wrote.retain(|t| t + WRITE_RACE_MS > at_ms);
            if recent.wrote.len() >= 4096 {
                // A burst of writes: the oldest half is let go (a purge of those may race).
                let mut times: Vec<u64> = recent.wrote.keys.values().map(|(t, _)| *t).collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                recent.wrote.retain(|t| t > cut);
            }
        }
        recent.wrote.insert(key, tags, at_ms);
    }

    /// The keys this replica wrote to a shared tier within [`WRITE_RACE_MS`] before `now_ms`
    /// that `target` names: a purge heard now may have been deleted before they landed.
    pub(super) fn written_lately(&self, target: &Target, now_ms: u64) -> Vec<String> {
        let recent = self.lock();
        let lately = |t: &u64| *t + WRITE_RACE_MS > now_ms;
        match target {
            Target::Key(key) => recent
                .wrote
                .at(key)
                .filter(lately)
                .map(|_| vec![key.clone()])
                .unwrap_or_default(),
            Target::Tag(tag) => recent
                .wrote
                .with_tag(tag)
                .filter(|(_, t)| lately(t))
                .map(|(k, _)| k.to_owned())
                .collect(),
        }
    }

    /// Whether any of `tags` was purged at or after `since_ms`.
    pub(super) fn any_since(&self, tags: &[Box<str>], since_ms: u64) -> bool {
        if tags.is_empty() {
            return false;
        }
        let recent = self.lock();
        tags.iter()
            .any(|t| recent.tags.get(t).is_some_and(|at| *at >= since_ms))
    }

    /// Whether `key`'s `entry` was stored before a purge of its key or one of its tags.
    pub(super) fn purged(&self, key: &str, entry: &Entry) -> bool {
        let recent = self.lock();
        if recent.keys.is_empty() && recent.tags.is_empty() {
            return false;
        }
        let since = entry.stored_at_ms;
        recent.keys.get(key).is_some_and(|at| *at >= since)
            || entry
                .tags()
                .iter()
                .any(|t| recent.tags.get(t).is_some_and(|at| *at >= since))
    }
}

impl<O: Origin> RemotePurges for ReadThrough<O> {
    async fn apply_remote(&self, purge: &Invalidation) {
        ReadThrough::apply_remote(self, purge).await
    }

    fn caught_up(&self) {
        self.clear_own_tiers()
    }

    fn remember(&self, records: Vec<(String, u64)>) {
        for (member, at_ms) in records {
            if let Some((scope, _, name)) = decode_record(&member) {
                self.inner.recent.record(&Target::new(scope, name), at_ms);
            }
        }
    }

    async fn catch_up(&self, records: Vec<(String, u64)>) {
        let inner = &*self.inner;
        for (member, at_ms) in records {
            let Some((scope, mode, name)) = decode_record(&member) else {
                continue;
            };
            let target = Target::new(scope, name);
            inner.recent.record(&target, at_ms);
            self.note_purge(&target, mode, at_ms).await;
            for tier in inner.tiers.iter().filter(|t| !t.shared()) {
                let n = purge_in(tier, &target, mode, self.now_ms()).await.unwrap_or(0);
                inner.metrics.invalidated_entries(scope, tier.name(), n);
            }
            inner.metrics.invalidated(mode, PurgeSource::Remote, scope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&str]) -> Vec<Box<str>> {
        names.iter().map(|&t| Box::from(t)).collect()
    }

    fn lately(recent: &RecentPurges, tag: &str, now_ms: u64) -> Vec<String> {
        let mut keys = recent.written_lately(&Target::Tag(tag.to_owned()), now_ms);
        keys.sort();
        keys
    }

    #[test]
    fn a_tag_purge_finds_the_keys_written_lately_with_that_tag_and_only_those() {
        let recent = RecentPurges::default();
        recent.wrote("a", &tags(&["red", "blue"]), 1_000);
        recent.wrote("b", &tags(&["blue"]), 1_000);
        recent.wrote("c", &tags(&[]), 1_000);
        assert_eq!(lately(&recent, "blue", 2_000), ["a", "b"]);
        assert_eq!(lately(&recent, "red", 2_000), ["a"]);
        assert!(lately(&recent, "green", 2_000).is_empty());
        // Written again without the tag: the tag no longer names it.
        recent.wrote("a", &tags(&["green"]), 3_000);
        assert_eq!(lately(&recent, "blue", 4_000), ["b"]);
        assert!(lately(&recent, "red", 4_000).is_empty());
        assert_eq!(lately(&recent, "green", 4_000), ["a"]);
        // Past the race window a write is not named at all.
        assert_eq!(
            lately(&recent, "blue", 1_000 + WRITE_RACE_MS + 1),
            Vec::<String>::new()
        );
        assert_eq!(recent.written_lately(&Target::Key("b".to_owned()), 2_000), ["b"]);
    }

    #[test]
    fn writes_let_go_in_a_burst_leave_the_tag_index_too() {
        let recent = RecentPurges::default();
        for i in 0..10_000u64 {
            recent.wrote(&format!("k{i}"), &tags(&["t", &format!("own{i}")]), i);
        }
        let r = recent.lock();
        assert!(r.wrote.len() < 4096 + 1);
        // The index holds exactly the keys still kept, no tag set left empty.
        let indexed: usize = r.wrote.by_tag.get("t").map_or(0, |s| s.len());
        assert_eq!(indexed, r.wrote.len());
        assert_eq!(r.wrote.by_tag.len(), r.wrote.len() + 1);
        assert!(r.wrote.by_tag.values().all(|s| !s.is_empty()));
    }
}
