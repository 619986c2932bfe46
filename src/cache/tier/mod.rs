//! The seam every cache tier sits behind, and the closed set of tiers the service has.

pub(crate) mod any;
pub(crate) mod disk;
pub(crate) mod memory;
pub(crate) mod redis;

pub use crate::cache::labels::TierName;

use std::future::Future;
use std::sync::Arc;

use super::entry::Entry;
use crate::cache::purge::{PurgeMode, Target};

/// Why a tier could not answer; the request goes on without it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TierError {
    /// The tier is known to be down; it was not asked.
    #[error("tier unavailable")]
    Unavailable,
    /// The tier did not answer within its deadline.
    #[error("tier timed out")]
    Timeout,
    /// The tier could not be reached or broke off (or, in a cluster, is between owners).
    #[error("tier error: {0}")]
    Failed(String),
    /// The tier answered and refused the command (e.g. Redis at `maxmemory` with `noeviction`).
    #[error("tier refused: {0}")]
    Refused(String),
}

/// A place entries are kept. Methods take `&self`: each tier keeps its own concurrency inside.
pub trait Tier: Send + Sync {
    /// Which tier this is.
    fn name(&self) -> TierName;
    /// Whether every replica reads this same tier (Redis), rather than holding its own copy
    /// (memory, disk). A purge reaches a shared tier once, from the replica that took it; every
    /// replica applies it to its own tiers.
    fn shared(&self) -> bool;
    /// The entry for `key`, if the tier holds one that is not yet past its stale window.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Arc<Entry>>, TierError>> + Send;
    /// The entries for `keys`, one result per key in the same order, in as few round trips as
    /// the tier can manage (a batch read). The default asks [`Tier::get`] once per key, which is
    /// right for an in-process tier; a remote tier overrides it (Redis: `MGET`).
    fn get_many(
        &self,
        keys: &[&str],
    ) -> impl Future<Output = Vec<Result<Option<Arc<Entry>>, TierError>>> + Send {
        async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.push(self.get(key).await);
            }
            found
        }
    }
    /// The entry for `key` without waiting, when the tier can answer in place (it lives in this
    /// process); `None` when it would have to wait (then ask [`Tier::get`]).
    fn get_now(&self, _key: &str) -> Option<Option<Arc<Entry>>> {
        None
    }
    /// Weighs `entry` again if it is what the tier holds for `key` (it grew a compressed body);
    /// a tier holding another entry (newer, or none after a purge) is left alone.
    fn reweigh(&self, _key: &str, _entry: &Arc<Entry>) {}
    /// Stores `entry` for `key`, for as long as it is servable: `true` when the tier keeps it,
    /// `false` when it declined (bigger than the tier, not admitted, already past its stale
    /// window), so that `Cache-Status` says `stored` only when some tier did.
    fn put(&self, key: &str, entry: Arc<Entry>) -> impl Future<Output = Result<bool, TierError>> + Send;
    /// Forgets `key`.
    fn remove(&self, key: &str) -> impl Future<Output = Result<(), TierError>> + Send;
    /// Ends the freshness of `key`'s entry, keeping it servable stale (a soft purge).
    fn mark_stale(&self, key: &str, now_ms: u64) -> impl Future<Output = Result<(), TierError>> + Send {
        async move {
            if let Some(e) = self.get(key).await? {
                self.put(key, Arc::new(e.marked_stale(now_ms))).await?;
            }
            Ok(())
        }
    }
    /// Purges `key` (removes it, or marks it stale at `now_ms`): how many entries that touched.
    fn purge(
        &self,
        key: &str,
        mode: PurgeMode,
        now_ms: u64,
    ) -> impl Future<Output = Result<u64, TierError>> + Send {
        async move {
            if self.get(key).await?.is_none() {
                return Ok(0);
            }
            match mode {
                PurgeMode::Hard => self.remove(key).await?,
                PurgeMode::Soft => self.mark_stale(key, now_ms).await?,
            }
            Ok(1)
        }
    }
    /// Purges every entry carrying exactly `tag`: how many that touched.
    fn purge_tag(
        &self,
        tag: &str,
        mode: PurgeMode,
        now_ms: u64,
    ) -> impl Future<Output = Result<u64, TierError>> + Send;
    /// Forgets every entry this replica holds on its own, after a gap in the purge feed (purges
    /// may have been missed). A shared tier keeps its entries: the purges were applied to it.
    fn clear_own(&self) {}
    /// Notes a purge applied here at `at_ms`, before it is applied, in a tier whose entries
    /// outlive this process (the disk tier keeps a log of them); others keep nothing.
    /// Whether the record is durable here: `false` when the tier keeps records but could not
    /// write this one (a disk that is down keeps it in memory and writes it before serving
    /// again, but a restart meanwhile would lose it).
    fn note_purge(
        &self,
        _target: &Target,
        _mode: PurgeMode,
        _at_ms: u64,
    ) -> impl Future<Output = bool> + Send {
        async { true }
    }
    /// How long the tier has kept an entry at most (ms), when it may outlive the configured
    /// lifetimes (the disk tier, across restarts): purge records must live that long.
    fn purge_horizon_ms(&self) -> Option<u64> {
        None
    }
    /// How the tier is doing, for `/health`.
    fn health(&self) -> TierHealth {
        TierHealth::default()
    }
    /// Writes out what the tier buffers before the process ends (its tasks are done by then).
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A tier's state as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierHealth {
    /// `ok`, `down`, `partial` (some of its nodes down) or `write_failing`.
    pub status: &'static str,
    /// Of a tier spread over nodes (Redis): how many, and how many are down.
    pub nodes: Option<(usize, usize)>,
}

impl Default for TierHealth {
    fn default() -> Self {
        TierHealth {
            status: "ok",
            nodes: None,
        }
    }
}
