//! Purges by key and tag: applied to every tier, published to the other replicas and recorded
//! for the disk tier, and the ones other replicas publish applied here.

use tokio_util::sync::CancellationToken;

use crate::cache::fleet::bus::{Channel, MessageBus};
use crate::cache::fleet::listener::RemotePurges;
use crate::cache::purge::{MIN_HORIZON_MS, PurgeRecords, encode_record};
use crate::cache::{AnyTier, Invalidation, PurgeMode, PurgeSource, Target, Tier, TierError, TierName};
use crate::origin::Origin;

use super::ReadThrough;

/// A purge was applied here but did not reach Redis or the other replicas (Redis is down): the
/// caller should retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the purge was applied here only: Redis and the other replicas still hold the key")]
pub struct PurgeIncomplete;

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
        // First, so a fetch whose answer carries the tag and finishes now does not store it.
        self.inner.tag_purges.record(tag, self.now_ms());
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
        self.note_purge(&target, mode, now);
        let mut reached_all = true;
        let mut purged = Vec::with_capacity(inner.tiers.len());
        for tier in &inner.tiers {
            let done = purge_in(tier, &target, mode, self.now_ms()).await;
            reached_all &= done.is_ok();
            let n = done.unwrap_or(0);
            inner.metrics.invalidated_entries(target.scope(), tier.name(), n);
            purged.push((tier.name(), n));
        }
        inner
            .metrics
            .invalidated(mode, PurgeSource::Local, target.scope());
        if let Some(bus) = &inner.bus {
            // Recorded for the replicas that miss the message (their disk tier checks it).
            let member = encode_record(target.scope(), mode, target.name());
            reached_all &= bus
                .record(&member, now, self.purge_record_keep_ms())
                .await
                .is_ok();
            let message = Invalidation {
                mode,
                origin_instance: inner.instance.to_string(),
                target,
            };
            reached_all &= bus.publish(Channel::Invalidate, &message.encode()).await.is_ok();
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
            Target::Tag(tag) => inner.tag_purges.record(tag, self.now_ms()),
        }
        self.note_purge(&purge.target, purge.mode, self.now_ms());
        let scope = purge.target.scope();
        for tier in inner.tiers.iter().filter(|t| !t.shared()) {
            let n = purge_in(tier, &purge.target, purge.mode, self.now_ms())
                .await
                .unwrap_or(0);
            inner.metrics.invalidated_entries(scope, tier.name(), n);
        }
        inner.metrics.invalidated(purge.mode, PurgeSource::Remote, scope);
    }

    /// Notes a purge applied here in the tiers that keep a record of purges (the disk tier,
    /// whose entries outlive a restart), before the tiers themselves are purged.
    pub(super) fn note_purge(&self, target: &Target, mode: PurgeMode, at_ms: u64) {
        for tier in &self.inner.tiers {
            tier.note_purge(target, mode, at_ms);
        }
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

/// Tags purged lately, and when: a fetch that started before a purge of a tag its answer
/// carries must not store it. Kept for [`TAG_PURGE_HORIZON_MS`] (longer than any fetch).
#[derive(Default)]
pub(super) struct TagPurges {
    last: std::sync::Mutex<std::collections::HashMap<Box<str>, u64>>,
}

/// Longer than a fetch can take (origin timeout, fleet wait, retries).
const TAG_PURGE_HORIZON_MS: u64 = 10 * 60 * 1000;

impl TagPurges {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<str>, u64>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `tag` was purged at `at_ms`.
    pub(super) fn record(&self, tag: &str, at_ms: u64) {
        let mut last = self.lock();
        if last.len() >= 4096 {
            last.retain(|_, t| *t + TAG_PURGE_HORIZON_MS > at_ms);
        }
        last.insert(Box::from(tag), at_ms);
    }

    /// Whether any of `tags` was purged at or after `since_ms`.
    pub(super) fn any_since(&self, tags: &[Box<str>], since_ms: u64) -> bool {
        if tags.is_empty() {
            return false;
        }
        let last = self.lock();
        tags.iter().any(|t| last.get(t).is_some_and(|at| *at >= since_ms))
    }
}

impl<O: Origin> RemotePurges for ReadThrough<O> {
    async fn apply_remote(&self, purge: &Invalidation) {
        ReadThrough::apply_remote(self, purge).await
    }

    fn caught_up(&self) {
        self.clear_own_tiers()
    }
}
