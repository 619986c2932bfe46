//! Purges remembered with their time, for the tier whose entries outlive a missed message.
//!
//! Memory entries die with the process, and a replica that lost its subscription forgets them
//! ([`super::Tier::clear_own`]). The disk tier's entries survive both a restart and a gap in
//! the purge feed, and pub/sub delivers at most once: without a record, a replica that was away
//! would bring a purged value back from its disk. So every purge is recorded with its time,
//! here (for this process) and in Redis (for replicas that were away, see
//! [`crate::cache::PurgeRecords`]); an entry read from disk that was fetched before
//! a purge matching its key or one of its tags is dropped (hard) or served stale (soft).
//!
//! Records are kept only as long as an entry could live (the [`PurgeLog::horizon_ms`]), and
//! their number is bounded: when the bound is reached the oldest half is forgotten and a
//! *floor* takes their place: every entry fetched before it counts as hard-purged, which is
//! wrong only on the safe side (an extra fetch, never a purged value).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::purge::{PurgeMode, PurgeScope};
#[cfg(test)]
use crate::cache::purge::{decode_record, encode_record};

/// What a purge record says about an entry fetched at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No purge since it was fetched.
    Keep,
    /// Soft-purged since: stale from this time (ms) on.
    StaleFrom(u64),
    /// Hard-purged since (or older than the floor): drop it.
    Drop(PurgeScope),
}

/// When a key or tag was last purged, per mode (0: never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stamp {
    hard_ms: u64,
    soft_ms: u64,
}

impl Stamp {
    fn latest(&self) -> u64 {
        self.hard_ms.max(self.soft_ms)
    }
}

#[derive(Default)]
struct Records {
    keys: HashMap<Box<str>, Stamp>,
    tags: HashMap<Box<str>, Stamp>,
    /// Entries fetched before this (ms) are dropped: records older than it were forgotten.
    floor_ms: u64,
}

/// The purges of the last [`PurgeLog::horizon_ms`], by key and by tag, bounded in number.
pub struct PurgeLog {
    records: Mutex<Records>,
    max_records: usize,
    /// How long an entry could still be served after it was fetched, at most (ms).
    horizon_ms: AtomicU64,
}

/// Bytes one record costs, key and map slot included, for sizing the bound from bytes.
pub const RECORD_BYTES: u64 = 128;

impl PurgeLog {
    /// An empty log of at most `max_records` records, which keeps them for at least
    /// `horizon_ms` (raised later by [`PurgeLog::lives_until`]).
    pub fn new(max_records: usize, horizon_ms: u64) -> Self {
        PurgeLog {
            records: Mutex::new(Records::default()),
            max_records: max_records.max(16),
            horizon_ms: AtomicU64::new(horizon_ms),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long records are kept: as long as an entry could live.
    pub fn horizon_ms(&self) -> u64 {
        self.horizon_ms.load(Ordering::Relaxed)
    }

    /// An entry fetched at `stored_at_ms` may be served until `stale_until_ms`: records must
    /// outlive such entries.
    pub fn lives_until(&self, stored_at_ms: u64, stale_until_ms: u64) {
        self.horizon_ms
            .fetch_max(stale_until_ms.saturating_sub(stored_at_ms), Ordering::Relaxed);
    }

    /// Notes a purge of `name` (a key or a tag, by `scope`) at `at_ms`.
    pub fn record(&self, scope: PurgeScope, name: &str, mode: PurgeMode, at_ms: u64) {
        let mut r = self.lock();
        if r.keys.len() + r.tags.len() >= self.max_records {
            self.shrink(&mut r, at_ms);
        }
        let map = match scope {
            PurgeScope::Key => &mut r.keys,
            PurgeScope::Tag => &mut r.tags,
        };
        let stamp = match map.get_mut(name) {
            Some(s) => s,
            None => map.entry(Box::from(name)).or_default(),
        };
        let slot = match mode {
            PurgeMode::Hard => &mut stamp.hard_ms,
            PurgeMode::Soft => &mut stamp.soft_ms,
        };
        *slot = (*slot).max(at_ms);
    }

    /// Every entry fetched before `at_ms` is to be dropped (records may have been lost).
    pub fn raise_floor(&self, at_ms: u64) {
        let mut r = self.lock();
        r.floor_ms = r.floor_ms.max(at_ms);
    }

    /// Forgets records past the horizon; if that is not enough, the older half, raising the
    /// floor to the newest of them.
    fn shrink(&self, r: &mut Records, now_ms: u64) {
        let oldest_kept = now_ms.saturating_sub(self.horizon_ms());
        r.keys.retain(|_, s| s.latest() >= oldest_kept);
        r.tags.retain(|_, s| s.latest() >= oldest_kept);
        if r.keys.len() + r.tags.len() < self.max_records {
            return;
        }
        let mut times: Vec<u64> = r
            .keys
            .values()
            .chain(r.tags.values())
            .map(Stamp::latest)
            .collect();
        let half = times.len() / 2;
        let (_, cut, _) = times.select_nth_unstable(half);
        let cut = *cut;
        r.keys.retain(|_, s| s.latest() > cut);
        r.tags.retain(|_, s| s.latest() > cut);
        r.floor_ms = r.floor_ms.max(cut + 1);
        tracing::warn!(
            records = self.max_records,
            "purge log full: entries fetched before the oldest records kept are dropped from disk"
        );
    }

    /// What the records say about an entry for `key` with `tags`, fetched at `stored_at_ms`.
    pub fn verdict(&self, key: &str, tags: &[Box<str>], stored_at_ms: u64) -> Verdict {
        let r = self.lock();
        if stored_at_ms < r.floor_ms {
            return Verdict::Drop(PurgeScope::Key);
        }
        let mut stale_from = None;
        let stamps = r.keys.get(key).map(|s| (PurgeScope::Key, s)).into_iter().chain(
            tags.iter()
                .filter_map(|t| r.tags.get(t).map(|s| (PurgeScope::Tag, s))),
        );
        for (scope, stamp) in stamps {
            if stamp.hard_ms >= stored_at_ms && stamp.hard_ms != 0 {
                return Verdict::Drop(scope);
            }
            if stamp.soft_ms >= stored_at_ms && stamp.soft_ms != 0 {
                stale_from = Some(stale_from.map_or(stamp.soft_ms, |s: u64| s.min(stamp.soft_ms)));
            }
        }
        stale_from.map_or(Verdict::Keep, Verdict::StaleFrom)
    }

    /// Records held now (for tests and the bound).
    pub fn len(&self) -> usize {
        let r = self.lock();
        r.keys.len() + r.tags.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_fetched_before_a_purge_of_its_key_or_tag_is_dropped_or_stale() {
        let log = PurgeLog::new(100, 60_000);
        let tags: Vec<Box<str>> = vec!["t1".into(), "t2".into()];
        log.record(PurgeScope::Key, "a", PurgeMode::Hard, 1_000);
        log.record(PurgeScope::Tag, "t2", PurgeMode::Soft, 2_000);
        assert_eq!(log.verdict("a", &[], 999), Verdict::Drop(PurgeScope::Key));
        assert_eq!(log.verdict("a", &[], 1_001), Verdict::Keep);
        assert_eq!(log.verdict("b", &tags, 1_500), Verdict::StaleFrom(2_000));
        assert_eq!(log.verdict("b", &tags, 2_001), Verdict::Keep);
        assert_eq!(log.verdict("a", &tags, 500), Verdict::Drop(PurgeScope::Key));
        log.record(PurgeScope::Tag, "t1", PurgeMode::Hard, 3_000);
        assert_eq!(log.verdict("b", &tags, 2_500), Verdict::Drop(PurgeScope::Tag));
    }

    #[test]
    fn a_full_log_forgets_its_older_half_and_drops_what_they_could_have_named() {
        let log = PurgeLog::new(16, u64::MAX / 2);
        for i in 0..16u64 {
            log.record(PurgeScope::Key, &format!("k{i}"), PurgeMode::Hard, 1_000 + i);
        }
        log.record(PurgeScope::Key, "new", PurgeMode::Hard, 5_000);
        assert!(log.len() <= 9, "{}", log.len());
        // An entry of an unrecorded key fetched before the forgotten records: dropped.
        assert_eq!(log.verdict("other", &[], 1_003), Verdict::Drop(PurgeScope::Key));
        assert_eq!(log.verdict("other", &[], 1_020), Verdict::Keep);
        // The newest records are still exact.
        assert_eq!(log.verdict("k15", &[], 1_014), Verdict::Drop(PurgeScope::Key));
        assert_eq!(log.verdict("k15", &[], 1_016), Verdict::Keep);
    }

    #[test]
    fn records_past_the_horizon_make_room_first() {
        let log = PurgeLog::new(16, 100);
        for i in 0..16u64 {
            log.record(PurgeScope::Tag, &format!("t{i}"), PurgeMode::Soft, i);
        }
        log.record(PurgeScope::Tag, "late", PurgeMode::Soft, 10_000);
        assert_eq!(log.len(), 1);
        assert_eq!(log.verdict("x", &[], 0), Verdict::Keep, "no floor was needed");
    }

    #[test]
    fn records_survive_their_wire_form() {
        for (scope, mode, name) in [
            (PurgeScope::Key, PurgeMode::Hard, "a\nb c"),
            (PurgeScope::Tag, PurgeMode::Soft, "t:1/*?"),
        ] {
            let member = encode_record(scope, mode, name);
            assert_eq!(decode_record(&member), Some((scope, mode, name)));
        }
        assert_eq!(decode_record("purge\nkey\nx"), None);
    }
}
