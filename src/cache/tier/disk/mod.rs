//! The disk tier: a replica's local disk between its memory and Redis, so a working set larger
//! than RAM stays one local read away, and survives a restart.
//!
//! Two stores share the disk's bytes. Small entries (key and value within a quarter of a page)
//! live in place in a file of pages, a bucket of several entries per page, set-associative by
//! a keyed hash ([`pages`], [`bucket`]): every page is live, so the same bytes hold as many of
//! them as their sizes allow. Larger entries go to foyer's block engine (log-structured blocks
//! evicted whole, an in-memory index, recovery on open, a tombstone log so deletes survive a
//! restart). foyer's own memory cache is not used as a second memory tier: entries go straight
//! to disk ([`foyer::HybridCache::storage_writer`], "phantom" entries its memory never keeps)
//! and are read straight from it ([`foyer::Store::load`]); the memory tier in front is ours.
//! How the bytes are split follows the fills, within a run ([`DiskTier::resplit`]) and across
//! restarts (the share is saved with the layout: [`Layout`], [`resize`]).
//!
//! foyer has no expiry, so the entry carries its windows (its encoded form is the Redis tier's)
//! and is judged when read: past its stale window it is dropped; fetched before a purge that
//! matches its key or a tag (the [`PurgeLog`], fed here and from Redis) it is dropped or
//! served stale. Purges reach the tier as records rather than as a scan, which foyer does not
//! offer: a tag purge touches no file.
//!
//! Not every fill is written: a fill that would push another entry out goes to disk only once
//! its key has been asked of the tier [`DiskConfig::admit_min_requests`] times lately
//! ([`Admission`]). The engine is a FIFO of blocks, so every larger entry pushes out the
//! oldest, and a full bucket its least popular entry: without it every key read once (most
//! keys, in a long-tailed workload) pushes out one read again; with it the disk keeps the keys
//! that come back. Free room in a bucket takes any fill: it pushes nothing out.
//!
//! A disk that fails (full, read-only, gone, unreadable) turns the tier off: the request goes
//! on without it, the failure is counted (`disk_errors_total`) and `/health` says `down`. A
//! probe every [`PROBE_EVERY`] writes and reads a small file; while the tier is down it tries
//! to open it again, as the Redis tier reconnects.

pub use crate::cache::labels::{DiskOp, DropReason};
pub use dir_lock::DirLock;

mod dir_lock;

pub(crate) mod bucket;
mod pages;
pub(crate) mod purge_log;
mod resize;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy,
    Load, PsyncIoEngineConfig, RecoverMode,
};
use tokio_util::sync::CancellationToken;

use self::bucket::Bucket;
use self::pages::{PageError, Pages};
use self::purge_log::{PurgeLog, RECORD_BYTES, Verdict};
use self::resize::{Saved, Transition, jump};
use crate::cache::entry::{Entry, now_ms};
use crate::cache::purge::{MIN_HORIZON_MS, PurgeMode, PurgeScope, Target, decode_record};
use crate::cache::purge::{PurgeRecords, RecordsUnavailable, after_trim};
use crate::cache::sketch::{self, Sketch};
use crate::cache::tier::{Tier, TierError, TierHealth, TierName};
use crate::telemetry::{Metrics, disk_engine};

/// How often the disk is probed (and, while it is down, opened again).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Memory the engine's index costs per entry on disk: a hash-map slot of an 8-byte hash and a
/// 32-byte address, at hashbrown's worst load (just after it doubles). The admission sketch
/// adds a word per entry, rounded up to a power of two ([`Layout::new`] counts it exactly).
pub const INDEX_BYTES_PER_ENTRY: u64 = 96;

/// Lookups between two halvings of the admission sketch, per entry the disk can hold: a key
/// is admitted when it was asked for twice within about five disk-fulls of lookups. Shorter,
/// a key must come back sooner than the disk would keep it; longer, the counts remember keys
/// long gone, and the keys read once add up to false admissions. Chosen in a simulation of the
/// tiers on bench/disk.py's Zipf against 2, 3 and 10 disk-fulls (docs/architecture.md), and
/// kept over 12 once the disk packed small entries (the same within noise in bench/disk.py).
const ADMISSION_WINDOW: u64 = 5;

/// The smallest room an entry takes on disk: foyer aligns each entry to a 4 KiB page.
pub const DISK_PAGE: u64 = 4096;

/// The share of the disk (in thousandths) a new directory gives the small entries' pages; the
/// rest goes to the engine, for the larger entries. It then follows the fills the tier takes
/// ([`Fills::share`], [`DiskTier::resplit`]): most responses of an API are small, so a new
/// disk starts with most of its bytes for them.
const DEFAULT_SHARE: u64 = 750;

/// The least change of the pages' share (thousandths) a new split makes.
const RESPLIT_AT: u64 = 50;

/// Small entries a page holds, about: what the admission counts are sized for (bench/disk.py's
/// entries of ~600 bytes fill a page with 6; larger small ones with 4).
const ENTRIES_PER_PAGE: u64 = 5;

/// The smallest and largest share the fills can move it to: neither kind of entry is ever
/// left without room, in case the traffic changes.
const SHARES: std::ops::RangeInclusive<u64> = 60..=940;

/// A bucket's key mask before the tier has written or read it: every key may be there.
const UNKNOWN: u64 = u64::MAX;

/// The largest block (the unit foyer writes and evicts); it also bounds the largest entry kept.
const MAX_BLOCK: u64 = 2 << 20;

/// Consecutive failed reads after which the disk counts as down (until the probe says
/// otherwise): one bad file is a miss, a disk that fails every read is not worth asking.
const DOWN_AFTER_READ_FAILURES: u32 = 8;

/// The file name of the probe, beside foyer's files.
const PROBE_FILE: &str = ".cache-layer-probe";

/// The file purges are appended to, beside foyer's files: one JSON array per line.
const PURGE_FILE: &str = "cache-layer-purges.jsonl";

/// The id of the purge records (`PurgeRecords::epoch`) this directory's entries were last
/// checked against, beside foyer's files: records of another id (Redis restarted empty) cannot
/// vouch for them.
const EPOCH_FILE: &str = "cache-layer-purge-epoch";

/// The scope word of a purge-file line that is a floor (`[at, "hard", "floor", ""]`): every
/// entry fetched before `at` counts as purged. Releases before it skip the line.
const FLOOR_SCOPE: &str = "floor";

/// foyer's hybrid cache, used for its disk store only.
type Store = HybridCache<String, Vec<u8>>;

/// The tier's files, open: the engine (larger entries) and the small entries' pages.
#[derive(Clone)]
struct Open {
    /// `None` while the engine is reopened at another size ([`DiskTier::resplit`]): larger
    /// entries are then misses, and fills of them not kept.
    engine: Option<Arc<Store>>,
    pages: Arc<Pages>,
}

/// How the disk's bytes are split now, and where small entries go: replaced whole when the
/// split changes ([`DiskTier::resplit`]). An operation takes it once and writes a bucket only
/// while it is still the tier's (checked under the bucket's lock), so no fill lands in a
/// bucket of a split the move of entries has already passed.
struct Geometry {
    layout: Layout,
    /// Per bucket, a bit per key it holds (the top 6 bits of the key's bucket hash), set from
    /// what was last written to it, or [`UNKNOWN`] until then (after a start): a lookup whose
    /// bit is clear is a miss without reading the page. Only ever too full (a bucket lost
    /// keeps its bits), never too empty, and changed only under the bucket's lock.
    masks: Box<[AtomicU64]>,
    /// The bucket counts before a resize, read until their entries are moved.
    transition: Transition,
}

impl Geometry {
    /// The geometry of `layout` after this one: its buckets still read until the move ends,
    /// the masks of the buckets both have kept (a mask may be too full, never too empty).
    fn resized(&self, layout: Layout) -> Geometry {
        let transition = Transition::after(self.layout.buckets);
        let masks = (0..layout.buckets as usize)
            .map(|i| {
                let kept = self.masks.get(i).map_or(UNKNOWN, |m| m.load(Ordering::Acquire));
                AtomicU64::new(kept)
            })
            .collect();
        Geometry {
            layout,
            masks,
            transition,
        }
    }

    fn new(layout: Layout, transition: Transition) -> Self {
        Geometry {
            layout,
            masks: (0..layout.buckets).map(|_| AtomicU64::new(UNKNOWN)).collect(),
            transition,
        }
    }

    /// Where the small entry of bucket hash `hash` goes: its bucket and its mask bit.
    fn slot(&self, hash: u64) -> Slot {
        Slot {
            bucket: jump(hash, self.layout.buckets) as usize,
            bit: mask_bit(hash),
            hash,
        }
    }

    /// Where the small entry whose slot is `today` went before the last resizes (newest
    /// first), while those buckets are still read, each another bucket than today's.
    fn old_slots(&self, today: Slot) -> impl Iterator<Item = Slot> + '_ {
        let mut seen = [today.bucket; resize::MAX_PREVIOUS];
        let mut n = 0;
        self.transition.previous().filter_map(move |count| {
            let bucket = jump(today.hash, count) as usize;
            if bucket == today.bucket || seen[..n].contains(&bucket) {
                return None;
            }
            seen[n] = bucket;
            n += 1;
            Some(Slot { bucket, ..today })
        })
    }

    /// The key mask of `slot`'s bucket (`None` for a bucket past today's count, left from a
    /// larger disk).
    fn mask(&self, slot: Slot) -> Option<&AtomicU64> {
        self.masks.get(slot.bucket)
    }

    /// Whether `slot`'s bucket may hold its key (false: it does not, no read needed).
    fn may_hold(&self, slot: Slot) -> bool {
        self.mask(slot)
            .is_none_or(|m| m.load(Ordering::Acquire) & slot.bit != 0)
    }
}

/// What the tier's fills took since the last split, by kind: what the next split follows.
#[derive(Default)]
struct Fills {
    /// Bytes (key and entry) of small entries written to pages.
    small: AtomicU64,
    /// Pages of larger entries handed to the engine.
    large: AtomicU64,
}

impl Fills {
    /// The pages' share (thousandths) the fills so far ask for, blended with `before` (the
    /// share they had): `before` until a fair number of fills was seen. A page is counted as
    /// four-fifths full (a bucket seldom packs to its last byte).
    fn share(&self, before: u64, capacity: u64) -> u64 {
        let small = self.small.load(Ordering::Relaxed) as f64 / (DISK_PAGE as f64 * 0.8);
        let large = self.large.load(Ordering::Relaxed) as f64;
        // At least a tenth of a disk's worth, so a start's first few fills do not swing it.
        if (small + large) * (DISK_PAGE as f64) < capacity as f64 / 10.0 {
            return before;
        }
        let seen = (1000.0 * small / (small + large)).round() as u64;
        let blend = ((before + seen) / 2).clamp(*SHARES.start(), *SHARES.end());
        // A change of the share is a resize of the pages (every page read at the next start,
        // some entries moved): not made for a few points.
        if blend.abs_diff(before) < RESPLIT_AT {
            before
        } else {
            blend
        }
    }
}

/// Which fills are worth pushing another entry out for: those whose key was asked of the tier
/// at least `min_requests` times within the sketch's window (the lookup that missed counts, so
/// 2 means "asked before"). A fill that replaces an entry the disk holds is always written, so
/// the disk never keeps an older version than the one fetched; so is a small one whose bucket
/// has free room.
struct Admission {
    /// `DISK_CACHE_ADMIT_MIN_REQUESTS`; 1 admits every fill and counts nothing.
    min_requests: u8,
    /// The keys of its hash, random per process (so no client can aim keys at the same
    /// counters) and saved with the counts, so a restart keeps both.
    seeds: (u64, u64),
    sketch: std::sync::Mutex<Sketch>,
}

/// The file the admission sketch is saved to at shutdown, beside the entries.
pub const ADMISSION_FILE: &str = "cache-layer-admission";

/// The first line of [`ADMISSION_FILE`]; another one is not read.
const ADMISSION_MAGIC: &[u8] = b"cache-layer admission 1\n";

impl Admission {
    fn new(min_requests: u8, entries: u64) -> Self {
        let sketch = if min_requests > 1 {
            Sketch::with_sample(entries, ADMISSION_WINDOW * entries)
        } else {
            Sketch::default()
        };
        Admission {
            min_requests,
            seeds: (rand::random(), rand::random()),
            sketch: std::sync::Mutex::new(sketch),
        }
    }

    /// `key`'s hash under this tier's seeds.
    fn hash_one(&self, key: &str) -> u64 {
        sketch::keyed(self.seeds, key.as_bytes())
    }

    /// The counts and seeds as [`ADMISSION_FILE`] holds them.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = ADMISSION_MAGIC.to_vec();
        out.extend_from_slice(&self.seeds.0.to_le_bytes());
        out.extend_from_slice(&self.seeds.1.to_le_bytes());
        out.extend_from_slice(&self.sketch.lock().unwrap_or_else(|p| p.into_inner()).to_bytes());
        out
    }

    /// Takes the counts and seeds of a saved file, when it is one of this layout; `false` when
    /// it is not (another release, another `DISK_CACHE_MAX_BYTES`, cut short).
    fn restore(&mut self, bytes: &[u8]) -> bool {
        let Some(rest) = bytes.strip_prefix(ADMISSION_MAGIC) else {
            return false;
        };
        if rest.len() < 16 {
            return false;
        }
        let seed = |i: usize| u64::from_le_bytes(rest[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let sketch = self.sketch.get_mut().unwrap_or_else(|p| p.into_inner());
        if !sketch.restore(&rest[16..]) {
            return false;
        }
        self.seeds = (seed(0), seed(1));
        true
    }

    /// `key` was asked of the tier.
    fn requested(&self, key: &str) {
        if self.min_requests > 1 {
            let hash = self.hash_one(key);
            self.sketch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .increment(hash);
        }
    }

    /// How often `key` was asked for lately (0 when nothing is counted): which entries of a
    /// full bucket to keep.
    fn frequency(&self, key: &str) -> u8 {
        if self.min_requests <= 1 {
            return 0;
        }
        let hash = self.hash_one(key);
        self.sketch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .frequency(hash)
    }

    /// Whether `key` was asked for often enough to be written.
    fn admits(&self, key: &str) -> bool {
        self.min_requests <= 1 || self.frequency(key) >= self.min_requests
    }
}

/// How the tier lays out its disk, from [`DiskConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Disk bytes used at most: `DISK_CACHE_MAX_BYTES`, less when the index bound needs it.
    pub capacity: u64,
    /// foyer's block size: the unit it writes and evicts, and the largest entry kept.
    pub block: u64,
    /// Purge records kept at most in this process.
    pub purge_records: usize,
    /// Buckets small entries are hashed to: the pages of the small entries' file.
    pub buckets: u64,
    /// Bytes the engine may use, for the larger entries: the capacity less the pages.
    pub large: u64,
    /// The pages' share of the capacity asked for, in thousandths ([`DEFAULT_SHARE`]).
    pub share: u64,
}

impl Layout {
    /// The layout for `max_bytes` of disk within `index_max_bytes` of memory: a sixteenth of
    /// that memory goes to purge records, two blocks to write buffers, and the rest to the
    /// index and the admission sketch, which bound how many entries (each at least a page)
    /// the disk may hold.
    /// `share`: the small entries' pages' share of it, in thousandths.
    pub fn new(max_bytes: u64, index_max_bytes: u64, share: u64) -> Self {
        Layout::with_block(
            max_bytes,
            index_max_bytes,
            Layout::block_for(max_bytes, index_max_bytes),
            share,
        )
    }

    /// The layout for `max_bytes` keeping the block size `block` of a directory written before
    /// (so its files still read), when that block size suits these bounds too; `None` when
    /// it does not (the disk is then laid out afresh, and starts empty).
    pub fn keeping(max_bytes: u64, index_max_bytes: u64, block: u64, share: u64) -> Option<Self> {
        let largest = Layout::block_for(u64::MAX, index_max_bytes);
        let fits = block.is_multiple_of(DISK_PAGE)
            && (64 << 10..=largest).contains(&block)
            && max_bytes >= 4 * block + DISK_PAGE;
        fits.then(|| Layout::with_block(max_bytes, index_max_bytes, block, share))
    }

    /// The block size for `max_bytes`: small enough that eviction takes little at a time,
    /// that the write buffers (two blocks) leave most of the index bound to the index, and
    /// that the engine's least share (four blocks, a 32nd of the disk) leaves the rest to the
    /// small entries when they are all the traffic has.
    fn block_for(max_bytes: u64, index_max_bytes: u64) -> u64 {
        let block = (max_bytes / 128).clamp(64 << 10, MAX_BLOCK.min(index_max_bytes / 8).max(64 << 10));
        block / DISK_PAGE * DISK_PAGE
    }

    /// About how many entries the disk holds when full: [`ENTRIES_PER_PAGE`] per page of
    /// small entries, one per page of the engine's (what the admission counts are sized for).
    pub fn entries(&self) -> u64 {
        self.buckets * ENTRIES_PER_PAGE + self.large / DISK_PAGE
    }

    fn with_block(max_bytes: u64, index_max_bytes: u64, block: u64, share: u64) -> Self {
        let records_bytes = index_max_bytes / 16;
        let index_bytes = index_max_bytes.saturating_sub(records_bytes + 2 * block);
        let first = index_bytes / (INDEX_BYTES_PER_ENTRY + sketch::BYTES_PER_WORD);
        let sketch_bytes = first.max(1).next_power_of_two() * sketch::BYTES_PER_WORD;
        let entries = index_bytes.saturating_sub(sketch_bytes) / INDEX_BYTES_PER_ENTRY;
        let capacity = max_bytes.min(entries * DISK_PAGE).max(4 * block + DISK_PAGE);
        // The pages' share, whole pages; the engine keeps at least four blocks (its writes
        // and evictions are a block at a time) and the rest, whole blocks.
        let share = share.min(1000);
        let capacity = capacity / DISK_PAGE * DISK_PAGE;
        let wanted = (capacity / 1000 * share / DISK_PAGE).max(1) * DISK_PAGE;
        let large = (capacity.saturating_sub(wanted) / block * block).max(4 * block);
        let pages = (capacity - large) / DISK_PAGE;
        // A page needs none of the engine's index (96 bytes counted per page above): its key
        // mask (8 bytes) and the admission counts of its entries ([`Layout::entries`]) fit
        // in that.
        Layout {
            capacity,
            block,
            purge_records: (records_bytes / RECORD_BYTES).max(1024) as usize,
            buckets: pages,
            large,
            share,
        }
    }
}

/// The disk tier's place and bounds: it exists only when `DISK_CACHE_DIR` is set, so a replica
/// with a local SSD (or a persistent volume) can hold a working set larger than its memory,
/// and keep it across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// `DISK_CACHE_DIR`: the directory the tier's files live in (created if missing).
    pub dir: std::path::PathBuf,
    /// `DISK_CACHE_MAX_BYTES`: bytes of disk the tier may use.
    pub max_bytes: u64,
    /// `DISK_CACHE_INDEX_MAX_BYTES`: bound of the tier's in-memory index and write buffers;
    /// when the disk would hold more entries than that index can track, the disk is used less.
    pub index_max_bytes: u64,
    /// `DISK_CACHE_ADMIT_MIN_REQUESTS`: a fill goes to disk only when its key has been asked of
    /// the disk tier this many times lately (1: every fill), so keys read once do not push
    /// out the ones read again.
    pub admit_min_requests: u8,
}

/// The disk tier. Cheap to clone.
#[derive(Clone)]
pub struct DiskTier {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// `DISK_CACHE_MAX_BYTES` and `DISK_CACHE_INDEX_MAX_BYTES`: what a new split is laid out in.
    bounds: (u64, u64),
    /// The split of the disk and the buckets now.
    geo: RwLock<Arc<Geometry>>,
    /// The open files; `None` while the disk is down.
    store: RwLock<Option<Open>>,
    up: AtomicBool,
    read_failures: AtomicU32,
    log: PurgeLog,
    admission: Admission,
    /// Set while the entries of a resize are being moved, or the split changed (one at a
    /// time).
    migrating: AtomicBool,
    /// Held while the engine is opened (at start, after a failure, at another size), so two
    /// are never opened on the same files.
    opening: tokio::sync::Mutex<()>,
    /// What the fills took since the last split, by kind (the next split's share).
    fills: Fills,
    /// The keys of the bucket hash ([`DiskTier::bucket_hash`]), the directory's.
    seed: (u64, u64),
    /// Set when the directory's block size could not be kept: its files are removed at the
    /// first open.
    start_empty: AtomicBool,
    /// Set by [`DiskTier::close`]: the tier is never opened again (the upkeep stops).
    closed: AtomicBool,
    /// Stripes of locks ordering the read-modify-writes of buckets.
    locks: Box<[tokio::sync::Mutex<()>]>,
    /// The close of a store taken down, awaited before another is opened on the same files.
    closing: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held while the purge file is appended to or rewritten.
    purge_file: std::sync::Mutex<()>,
    /// Purge lines noted while the purge file could not take them, written before the tier
    /// serves again.
    pending_purges: std::sync::Mutex<Vec<String>>,
    /// Where purges are recorded for replicas that miss the message.
    records: Option<Arc<dyn PurgeRecords>>,
    /// The engine's failures already counted ([`disk_engine`]).
    engine_seen: std::sync::Mutex<disk_engine::Seen>,
    /// What the engine was handed and let go (a full write queue), to tell a kept fill.
    drops: Arc<disk_engine::EngineDrops>,
    metrics: Arc<Metrics>,
}

impl DiskTier {
    /// The tier over `config.dir`, not yet open (see [`DiskTier::start`]). `horizon_ms`: how
    /// long the configured lifetimes let an entry live (purge records are kept that long).
    pub fn new(
        config: &DiskConfig,
        horizon_ms: u64,
        records: Option<Arc<dyn PurgeRecords>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let saved = Saved::read(&config.dir);
        let share = saved.as_ref().map_or(DEFAULT_SHARE, |s| s.share);
        let kept = saved
            .as_ref()
            .and_then(|s| Layout::keeping(config.max_bytes, config.index_max_bytes, s.block, share));
        let layout =
            kept.unwrap_or_else(|| Layout::new(config.max_bytes, config.index_max_bytes, DEFAULT_SHARE));
        // A directory whose block size cannot be kept, or is not known (its layout file lost
        // or unreadable, the engine's files there), starts empty: no transition from it. So
        // does one resized more often in a row than the transition remembers.
        let unknown = saved.is_none() && resize::has_blocks(&config.dir);
        let mut start_empty = unknown || (saved.is_some() && kept.is_none());
        let transition = match Transition::new(saved.as_ref().filter(|_| !start_empty), layout.buckets) {
            Some(t) => t,
            None => {
                start_empty = true;
                Transition::new(None, layout.buckets).expect("no transition")
            }
        };
        // The directory's bucket hash keys: kept with its entries, new with an empty one.
        let seed = match &saved {
            Some(s) if !start_empty => s.seed,
            _ => (rand::random(), rand::random()),
        };
        if layout.capacity < config.max_bytes {
            tracing::warn!(
                disk_cache_max_bytes = config.max_bytes,
                used = layout.capacity,
                "DISK_CACHE_INDEX_MAX_BYTES cannot index that much disk (each entry takes at least 4 KiB of \
                 disk and up to {INDEX_BYTES_PER_ENTRY} bytes of index): the disk tier uses less"
            );
        }
        DiskTier {
            inner: Arc::new(Inner {
                dir: config.dir.clone(),
                bounds: (config.max_bytes, config.index_max_bytes),
                geo: RwLock::new(Arc::new(Geometry::new(layout, transition))),
                store: RwLock::new(None),
                up: AtomicBool::new(false),
                read_failures: AtomicU32::new(0),
                log: PurgeLog::new(layout.purge_records, horizon_ms.max(MIN_HORIZON_MS)),
                admission: load_admission(&config.dir, config.admit_min_requests, layout.entries()),
                migrating: AtomicBool::new(false),
                opening: tokio::sync::Mutex::new(()),
                fills: Fills::default(),
                seed,
                start_empty: AtomicBool::new(start_empty),
                closed: AtomicBool::new(false),
                locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
                closing: std::sync::Mutex::new(None),
                purge_file: std::sync::Mutex::new(()),
                pending_purges: std::sync::Mutex::new(Vec::new()),
                records,
                engine_seen: std::sync::Mutex::new(disk_engine::FAILURES.seen()),
                drops: Arc::default(),
                metrics,
            }),
        }
    }

    /// How the disk is laid out now.
    pub fn layout(&self) -> Layout {
        self.geo().layout
    }

    /// The split of the disk and the buckets now.
    fn geo(&self) -> Arc<Geometry> {
        self.inner.geo.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `engine` is still the tier's engine (not closed since for another split).
    fn engine_is(&self, engine: &Arc<Store>) -> bool {
        let store = self.inner.store.read().unwrap_or_else(|p| p.into_inner());
        store
            .as_ref()
            .and_then(|o| o.engine.as_ref())
            .is_some_and(|e| Arc::ptr_eq(e, engine))
    }

    /// Gives the small entries' pages the share of the disk the fills since the last split
    /// ask for ([`Fills::share`]), when it moved by [`RESPLIT_AT`] or more (the upkeep asks):
    /// a disk that started with the default share for a traffic of larger entries, or of
    /// only small ones, is split as its traffic needs within the run, not at the next start
    /// (a volume emptied at every start, as an `emptyDir`, never has one).
    ///
    /// The split changes as a resize does, with the total never over the capacity: the side
    /// that shrinks first (the engine is reopened smaller, and empty: [`resize::shrink_to`];
    /// or the small entries are moved into fewer buckets and the pages file cut), then the
    /// side that grows. Larger entries are misses while the engine reopens (a second or less).
    async fn resplit(&self) {
        let inner = &self.inner;
        let g = self.geo();
        if !self.is_up() || g.transition.previous().next().is_some() {
            return;
        }
        let share = inner.fills.share(g.layout.share, g.layout.capacity);
        let (max, index) = inner.bounds;
        let Some(layout) = Layout::keeping(max, index, g.layout.block, share) else {
            return;
        };
        if layout.buckets == g.layout.buckets || inner.migrating.swap(true, Ordering::AcqRel) {
            return;
        }
        // The fills from here on ask for the next split.
        inner.fills.small.store(0, Ordering::Relaxed);
        inner.fills.large.store(0, Ordering::Relaxed);
        tracing::info!(
            from = g.layout.share,
            to = layout.share,
            small_entry_pages = layout.buckets,
            larger_entries_bytes = layout.large,
            "disk tier: the fills ask for another split of the disk between small and larger entries"
        );
        let grow = layout.buckets > g.layout.buckets;
        let done = async {
            if grow {
                // The engine gives up its bytes first; then the pages take them.
                self.reopen_engine(layout).await?;
                let pages = self.store().ok()?.pages;
                let n = layout.buckets;
                if let Err(e) =
                    blocking(move || pages.grow(n).map_err(|e| TierError::Failed(e.to_string()))).await
                {
                    tracing::warn!(error = %e, "disk tier: cannot grow the small entries' pages");
                    return None;
                }
            }
            let new = Arc::new(g.resized(layout));
            *inner.geo.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
            self.save_layout();
            // The move of the entries (which cuts the file when the pages shrink).
            if !self.migrate(&new).await {
                return None;
            }
            if !grow {
                self.reopen_engine(layout).await?;
            }
            Some(())
        }
        .await;
        if done.is_none() {
            tracing::warn!("disk tier: the new split was cut short; it goes on at the next open");
        }
        inner.migrating.store(false, Ordering::Release);
    }

    /// Closes the engine and opens it again over `layout.large` bytes (empty when that is
    /// fewer than before: [`resize::shrink_to`]); `None` when the tier went down or closed meanwhile, or it cannot be opened
    /// (then the tier goes down, and the upkeep opens it again as after any failure).
    async fn reopen_engine(&self, layout: Layout) -> Option<()> {
        let inner = &self.inner;
        let _opening = inner.opening.lock().await;
        let old = {
            let mut store = inner.store.write().unwrap_or_else(|p| p.into_inner());
            store.as_mut()?.engine.take()
        };
        close_engine(old, Duration::from_secs(30)).await;
        let opened = match resize::shrink_to(&inner.dir, layout.large / layout.block) {
            Ok(_) => open(&inner.dir, layout, inner.drops.clone()).await,
            Err(e) => Err(e.to_string()),
        };
        let engine = match opened {
            Ok(engine) => Arc::new(engine),
            Err(e) => {
                inner.metrics.disk_error(DiskOp::Open);
                self.down(&format!("the engine could not be opened at its new size: {e}"));
                return None;
            }
        };
        let unused = {
            let mut store = inner.store.write().unwrap_or_else(|p| p.into_inner());
            match store.as_mut() {
                Some(open) if !inner.closed.load(Ordering::Acquire) => {
                    open.engine = Some(engine);
                    None
                }
                _ => Some(engine),
            }
        };
        if unused.is_some() {
            close_engine(unused, Duration::from_secs(10)).await;
            return None;
        }
        Some(())
    }

    /// Whether `g` is still the tier's geometry (checked under a bucket's lock before it is
    /// written).
    fn current(&self, g: &Arc<Geometry>) -> bool {
        Arc::ptr_eq(g, &self.inner.geo.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether every small entry is in its bucket of today's layout (after a resize, once
    /// [`DiskTier::migrate`] has moved them); what tests of a resize wait for.
    pub fn moved(&self) -> bool {
        self.geo().transition.previous().next().is_none() && !self.inner.migrating.load(Ordering::Acquire)
    }

    /// Whether the tier works now (`/health`, `disk_cache_up`).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Opens the tier (recovering what the disk holds, and the purges Redis recorded since),
    /// waiting at most `wait`; then probes it, and reopens it when it failed, until `shutdown`.
    /// A disk that cannot be opened now leaves the tier down, not the service.
    pub async fn start(&self, wait: Duration, shutdown: CancellationToken) {
        if let Err(e) = std::fs::create_dir_all(&self.inner.dir) {
            tracing::warn!(dir = %self.inner.dir.display(), error = %e, "disk tier: cannot create its directory");
        }
        let _ = tokio::time::timeout(wait, self.reopen()).await;
        let weak = Arc::downgrade(&self.inner);
        let upkeep = async move {
            let mut next_probe = tokio::time::Instant::now() + PROBE_EVERY;
            loop {
                // Enabled before the counts are read: a failure noted in between wakes it.
                let failed = disk_engine::FAILURES.changed();
                tokio::pin!(failed);
                failed.as_mut().enable();
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                if inner.closed.load(Ordering::Acquire) {
                    return;
                }
                let tier = DiskTier { inner };
                tier.heed_engine_failures();
                if !tier.inner.migrating.load(Ordering::Acquire) {
                    let t = tier.clone();
                    tokio::spawn(async move { t.resplit().await });
                }
                if tokio::time::Instant::now() >= next_probe {
                    if tier.is_up() {
                        tier.probe().await;
                    } else {
                        tier.reopen().await;
                    }
                    next_probe = tokio::time::Instant::now() + PROBE_EVERY;
                }
                drop(tier);
                tokio::select! {
                    () = tokio::time::sleep_until(next_probe) => {}
                    () = &mut failed => {}
                }
            }
        };
        tokio::spawn(async move { shutdown.run_until_cancelled(upkeep).await });
    }

    /// Opens foyer's store on the directory (which must exist: a volume that went away is not
    /// recreated on the disk beneath it), after the probe, and loads the purges recorded in
    /// Redis since the oldest entry it could hold was fetched.
    async fn reopen(&self) {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = probe_dir(&inner.dir).await {
            inner.metrics.disk_error(DiskOp::Probe);
            tracing::debug!(error = %e, "disk tier: still down");
            return;
        }
        // Never two stores on the same files: the one taken down must have closed first.
        let closing = inner.closing.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(closing) = closing {
            let _ = closing.await;
        }
        if let Err(e) = check_format(&inner.dir) {
            inner.metrics.disk_error(DiskOp::Open);
            tracing::warn!(dir = %inner.dir.display(), error = %e, "disk tier: cannot check or write its format file; running without it");
            return;
        }
        if let Err(e) = self.fit_files() {
            inner.metrics.disk_error(DiskOp::Open);
            tracing::warn!(dir = %inner.dir.display(), error = %e, "disk tier: cannot fit its files to the new size; running without it");
            return;
        }
        self.load_purge_file().await;
        self.load_purge_records(false).await;
        let g = self.geo();
        match self.open_files(&g).await {
            Ok(store) if inner.closed.load(Ordering::Acquire) => {
                // Closed while it opened: this store is closed too, never served from.
                close_engine(store.engine, Duration::from_secs(10)).await;
            }
            Ok(store) => {
                *inner.store.write().unwrap_or_else(|p| p.into_inner()) = Some(store);
                inner.read_failures.store(0, Ordering::Relaxed);
                inner.up.store(true, Ordering::Relaxed);
                self.save_layout();
                tracing::info!(dir = %inner.dir.display(), capacity = g.layout.capacity, small_entry_pages = g.layout.buckets, "disk tier open");
                if g.transition.previous().next().is_some() && !inner.migrating.swap(true, Ordering::AcqRel) {
                    let tier = self.clone();
                    tokio::spawn(async move {
                        tier.migrate(&g).await;
                        tier.inner.migrating.store(false, Ordering::Release);
                    });
                }
            }
            Err(e) => {
                inner.metrics.disk_error(DiskOp::Open);
                tracing::warn!(dir = %inner.dir.display(), error = %e, "disk tier: cannot open; running without it");
            }
        }
    }

    /// Opens the engine and the pages file (as long as the longest bucket count still read, so
    /// the pages of a larger disk stay until their entries are moved).
    async fn open_files(&self, g: &Geometry) -> Result<Open, String> {
        let inner = &self.inner;
        let _opening = inner.opening.lock().await;
        let longest = g.transition.previous().fold(g.layout.buckets, u64::max);
        let dir = inner.dir.clone();
        // Only a regular file of ours: anything else put there (a FIFO, a link, a directory)
        // is removed, and the small entries start empty, rather than the tier stay down.
        let path = dir.join(pages::PAGES_FILE);
        let replaced = resize::remove_unless_file(&path).map_err(|e| {
            format!("the small entries' pages are not a regular file, and cannot be removed: {e}")
        })?;
        if replaced {
            tracing::warn!(path = %path.display(), "disk tier: the small entries' pages file was not a regular file; removed, they start empty");
        }
        // Pages past the longest count the layout knows are no bucket's: cut (a file grown
        // by hand would otherwise be read whole by the next move of entries).
        let pages = tokio::task::spawn_blocking(move || {
            let pages = Pages::open(&dir, longest)?;
            pages.cut_to(longest)?;
            Ok::<_, std::io::Error>(pages)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the small entries' pages: {e}"))?;
        let engine = open(&inner.dir, g.layout, inner.drops.clone()).await?;
        Ok(Open {
            engine: Some(Arc::new(engine)),
            pages: Arc::new(pages),
        })
    }

    /// After a resize: moves every small entry whose bucket changed to today's bucket, page by
    /// page in the background, then cuts the pages file to today's size and stops reading the
    /// old buckets. A restart before it ends starts it again (the layout file keeps the old
    /// counts until then); the tier going down pauses it until the next open.
    ///
    /// The caller holds [`Inner::migrating`]. Whether it ended.
    async fn migrate(&self, g: &Arc<Geometry>) -> bool {
        let inner = &self.inner;
        let started = std::time::Instant::now();
        let (mut page, mut moved) = (0, 0);
        let done = loop {
            let Ok(open) = self.store() else { break false };
            if inner.closed.load(Ordering::Acquire) || !self.current(g) {
                break false;
            }
            if page >= open.pages.len() {
                if let Err(e) = open.pages.cut_to(g.layout.buckets) {
                    tracing::warn!(error = %e, "disk tier: cannot cut the small entries' pages to their new size");
                }
                break true;
            }
            match self.migrate_page(&open, g, page).await {
                Ok(n) => moved += n,
                Err(_) => break false,
            }
            page += 1;
        };
        if done {
            g.transition.end();
            self.save_layout();
            tracing::info!(
                moved,
                pages = page,
                took_ms = started.elapsed().as_millis() as u64,
                "disk tier: the small entries of the resize are in their new buckets"
            );
        }
        done
    }

    /// Moves the entries of page `page` that belong in another bucket today to that bucket
    /// (unless it holds a version of the key already: written since, so newer). How many moved.
    async fn migrate_page(&self, open: &Open, g: &Arc<Geometry>, page: u64) -> Result<usize, TierError> {
        let here = Slot {
            bucket: page as usize,
            bit: 0,
            hash: 0,
        };
        // Held throughout: a fill of one of its keys waits to remove it from here until it
        // was moved, or found newer in its new bucket.
        let _order = self.lock(here).await;
        let (tier, pages, g2) = (self.clone(), open.pages.clone(), g.clone());
        let movers = blocking(move || {
            let bucket = tier.read_bucket(&pages, here)?;
            Ok(bucket
                .keys()
                .map(|k| (k.to_owned(), tier.slot(&g2, k)))
                .filter(|(_, slot)| slot.bucket as u64 != page)
                .collect::<Vec<_>>())
        })
        .await?;
        let mut moved = 0;
        for (key, to) in movers {
            let stripe = |b: usize| b % self.inner.locks.len();
            let _there = if stripe(to.bucket) == stripe(here.bucket) {
                None
            } else {
                Some(self.lock(to).await)
            };
            let (tier, pages, g) = (self.clone(), open.pages.clone(), g.clone());
            moved += blocking(move || {
                let mut from = tier.read_bucket(&pages, here)?;
                let Some(value) = from.take(&key) else {
                    return Ok(0);
                };
                let mut into = tier.read_bucket(&pages, to)?;
                let mut n = 0;
                if into.get(&key).is_none() {
                    let admission = &tier.inner.admission;
                    into.insert(&key, value, |k| admission.frequency(k));
                    if !tier.write_page(&pages, &g, to, &into) {
                        return Err(TierError::Unavailable);
                    }
                    n = 1;
                }
                if !tier.write_page(&pages, &g, here, &from) {
                    return Err(TierError::Unavailable);
                }
                Ok(n)
            })
            .await?;
        }
        Ok(moved)
    }

    /// Counts the failures foyer logged since the last look (`disk_errors_total`); a failed
    /// block write (its entries lost, the volume full or failing) takes the tier down, to be
    /// opened again once the probe finds the disk working.
    fn heed_engine_failures(&self) {
        let inner = &self.inner;
        let now = disk_engine::FAILURES.seen();
        let before = std::mem::replace(
            &mut *inner.engine_seen.lock().unwrap_or_else(|p| p.into_inner()),
            now,
        );
        for _ in before.reads..now.reads {
            inner.metrics.disk_error(DiskOp::Read);
        }
        if now.writes > before.writes {
            // One failed block write logs several lines (the data, its index, the task): one
            // failure counted per wake-up that heard any.
            inner.metrics.disk_error(DiskOp::Write);
            self.down("the disk engine failed to write a block of entries");
        }
    }

    /// Fits the files to the layout before they are opened: all removed when the layout could
    /// not be kept; the engine's removed when its share was made smaller (or a removal of them
    /// was cut short: [`resize::shrink_to`]).
    fn fit_files(&self) -> std::io::Result<()> {
        let layout = self.geo().layout;
        let (inner, blocks) = (&self.inner, layout.large / layout.block);
        if inner.start_empty.load(Ordering::Relaxed) {
            let files = resize::remove_engine_files(&inner.dir)?;
            inner.start_empty.store(false, Ordering::Relaxed);
            tracing::warn!(dir = %inner.dir.display(), files, block = layout.block, "disk tier: the directory's layout cannot be kept (its block size does not fit the new DISK_CACHE_MAX_BYTES, its layout file is lost, or it was resized too often in a row); it starts empty");
        } else {
            let files = resize::shrink_to(&inner.dir, blocks)?;
            if files > 0 {
                tracing::info!(dir = %inner.dir.display(), files, "disk tier: the larger entries' share was made smaller; they start empty (the small entries are kept)");
            }
        }
        Ok(())
    }

    /// Saves the layout beside the entries, for the next process to read them by.
    fn save_layout(&self) {
        let inner = &self.inner;
        let g = self.geo();
        let share = inner.fills.share(g.layout.share, g.layout.capacity);
        let saved = g
            .transition
            .saved(g.layout.block, g.layout.buckets, share, inner.seed);
        if let Err(e) = saved.write(&inner.dir) {
            tracing::warn!(dir = %inner.dir.display(), error = %e, "disk tier: cannot save its layout; a resize before the next start loses the small entries");
        }
    }

    /// Writes and reads back a small file; a failure takes the tier down.
    async fn probe(&self) {
        if let Err(e) = probe_dir(&self.inner.dir).await {
            self.inner.metrics.disk_error(DiskOp::Probe);
            self.down(&format!("probe failed: {e}"));
        }
    }

    /// Takes the tier down: the store is closed in the background and requests go on without
    /// it until [`DiskTier::reopen`] succeeds.
    fn down(&self, why: &str) {
        let inner = &self.inner;
        let was_up = inner.up.swap(false, Ordering::Relaxed);
        let store = inner.store.write().unwrap_or_else(|p| p.into_inner()).take();
        if was_up {
            tracing::warn!(dir = %inner.dir.display(), why, "disk tier down; running without it");
        }
        if let Some(store) = store {
            let closing = tokio::spawn(close_engine(store.engine, Duration::from_secs(30)));
            *inner.closing.lock().unwrap_or_else(|p| p.into_inner()) = Some(closing);
        }
    }

    /// The open files, while the tier is up.
    fn store(&self) -> Result<Open, TierError> {
        if !self.is_up() {
            return Err(TierError::Unavailable);
        }
        self.inner
            .store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(TierError::Unavailable)
    }

    /// Merges the purges Redis recorded within the horizon into the log, at the start and
    /// after a gap in the purge feed (`after_gap`). What the records cannot vouch for is
    /// dropped when read, by a floor kept in the purge file: entries fetched before the newest
    /// record dropped for the count (more purges than Redis keeps were made), or before now
    /// when the records are not the ones this directory was last checked against (Redis
    /// restarted empty, or a directory an older release filled) or, after a gap, cannot be
    /// read. At the start, records that cannot be read (Redis down) leave the entries checked
    /// against the purge file only, until the first subscription reads them again.
    async fn load_purge_records(&self, after_gap: bool) {
        let inner = &self.inner;
        let Some(records) = &inner.records else {
            return;
        };
        let now = now_ms();
        let since = now.saturating_sub(inner.log.horizon_ms());
        let read =
            async { Ok::<_, RecordsUnavailable>((records.epoch().await?, records.since(since).await?)) };
        let (epoch, read) = match read.await {
            Ok(read) => read,
            Err(e) if after_gap => {
                tracing::warn!(error = %e, "disk tier: cannot read the purges made while not listening; its entries fetched before now are dropped when read");
                self.raise_floor(now).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "disk tier: cannot read the purge records from Redis; until they can be, its entries are checked against its own purge file only");
                return;
            }
        };
        let (read, trimmed) = after_trim(read);
        for (member, at) in &read {
            if let Some((scope, mode, name)) = decode_record(member) {
                inner.log.record(scope, name, mode, *at);
            }
        }
        tracing::debug!(records = read.len(), "disk tier: purge records loaded from Redis");
        let dir = inner.dir.clone();
        let saved = resize::read_small_file(&dir.join(EPOCH_FILE), 256).map(|s| s.trim().to_owned());
        let floor = match saved {
            Some(saved) if saved == epoch => {
                if let Some(at) = trimmed {
                    tracing::warn!(
                        trimmed_at_ms = at,
                        "disk tier: more purges were made than Redis keeps records of; its entries fetched before the oldest kept are dropped when read"
                    );
                }
                trimmed.map(|at| at + 1)
            }
            Some(_) => {
                tracing::warn!(
                    "disk tier: the purge records were lost since it last read them (Redis restarted empty?); its entries fetched before now are dropped when read"
                );
                Some(now)
            }
            None if resize::has_blocks(&dir) => {
                tracing::warn!(
                    "disk tier: no record of which purge records its entries were checked against (a directory of an older release); its entries fetched before now are dropped when read"
                );
                Some(now)
            }
            None => None,
        };
        // The floor is in the purge file before the id is saved: a crash between the two finds
        // the old id, and drops as much again.
        if let Some(floor) = floor
            && !self.raise_floor(floor).await
        {
            return;
        }
        let written =
            tokio::task::spawn_blocking(move || resize::replace_file(&dir, EPOCH_FILE, format!("{epoch}\n")))
                .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(
                "disk tier: cannot save the id of the purge records it read; the next start drops its entries"
            );
        }
    }

    /// Drops (when read) every entry fetched before `at_ms`, from now and after a restart:
    /// the floor goes into the purge file as a line of its own. Whether the file took it.
    async fn raise_floor(&self, at_ms: u64) -> bool {
        self.inner.log.raise_floor(at_ms);
        // Written at once, even while the store opens (the directory was just probed): a line
        // that waits for the next opening would be lost by a restart before it.
        self.append_purge_line(floor_line(at_ms)).await
    }

    /// Appends `line` to the purge file; whether it took it. A line it did not take waits in
    /// memory and is written before the tier serves again (`reopen`).
    async fn append_purge_line(&self, line: String) -> bool {
        let (path, tier) = (self.inner.dir.join(PURGE_FILE), self.clone());
        let written = tokio::task::spawn_blocking(move || {
            let _file = tier.inner.purge_file.lock().unwrap_or_else(|p| p.into_inner());
            match append_line(&path, &line) {
                Ok(()) => true,
                Err(e) => {
                    tier.inner.metrics.disk_error(DiskOp::Write);
                    tracing::warn!(error = %e, "disk tier: cannot record a purge in its purge file");
                    tier.inner
                        .pending_purges
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line);
                    false
                }
            }
        })
        .await;
        written.unwrap_or(false)
    }

    /// Notes a purge applied to this replica: entries it names that were fetched before
    /// `at_ms` are dropped (hard) or served stale (soft) when next read. The record is also
    /// appended to the purge file beside the entries, so it outlives a restart (without
    /// Redis nothing else remembers it).
    ///
    /// Whether the purge file took it: while the tier is down (or the append fails) the line
    /// waits in memory and is written before the tier serves again (`reopen`), but a restart
    /// meanwhile would lose it, so the caller must have it recorded elsewhere (Redis) or say
    /// the purge is incomplete.
    pub async fn note_purge(&self, scope: PurgeScope, name: &str, mode: PurgeMode, at_ms: u64) -> bool {
        let inner = &self.inner;
        inner.log.record(scope, name, mode, at_ms);
        let line = purge_line(scope, mode, name, at_ms);
        if !self.is_up() {
            inner
                .pending_purges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line);
            return false;
        }
        self.append_purge_line(line).await
    }

    /// Loads the purge file's records within the horizon into the log, and rewrites the file
    /// with only those (so it never grows past the log's own bound for long).
    async fn load_purge_file(&self) {
        let tier = self.clone();
        let loaded = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
            let inner = &tier.inner;
            let _file = inner.purge_file.lock().unwrap_or_else(|p| p.into_inner());
            let path = inner.dir.join(PURGE_FILE);
            let text = match std::fs::symlink_metadata(&path) {
                // Read only when it is a regular file (a FIFO would block the open forever).
                Ok(m) if m.is_file() => std::fs::read_to_string(&path)?,
                Ok(_) => return Err(std::io::Error::other("the purge file is not a regular file")),
                // No file yet: the purges noted while down still go into a new one.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e),
            };
            let oldest = now_ms().saturating_sub(inner.log.horizon_ms());
            let mut kept = String::new();
            // Purges noted while the tier was down go into the file before it serves again.
            let pending = inner
                .pending_purges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for line in &pending {
                kept.push_str(line);
                kept.push('\n');
            }
            let mut n = 0;
            for line in text.lines() {
                // A floor past the horizon is below every entry that can still be served.
                if let Some(at) = parse_floor_line(line).filter(|&at| at >= oldest) {
                    inner.log.raise_floor(at);
                    kept.push_str(line);
                    kept.push('\n');
                    continue;
                }
                let Some((scope, mode, name, at)) = parse_purge_line(line) else {
                    continue;
                };
                if at >= oldest {
                    inner.log.record(scope, &name, mode, at);
                    kept.push_str(line);
                    kept.push('\n');
                    n += 1;
                }
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, kept)?;
            std::fs::rename(&tmp, &path)?;
            // Written: those noted meanwhile stay pending for the next write.
            inner
                .pending_purges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..pending.len());
            Ok(n)
        })
        .await;
        match loaded {
            Ok(Ok(n)) => tracing::debug!(records = n, "disk tier: purge file loaded"),
            Ok(Err(e)) => {
                self.inner.metrics.disk_error(DiskOp::Read);
                tracing::warn!(error = %e, "disk tier: cannot read its purge file");
            }
            Err(e) => tracing::warn!(error = %e, "disk tier: purge file task failed"),
        }
    }

    /// Writes what foyer still buffers and closes the store (at shutdown), and saves the
    /// admission counts for the next start.
    pub async fn close(&self) {
        // First: the upkeep must not open a second store on these files while this one closes.
        self.inner.closed.store(true, Ordering::Release);
        if self.inner.admission.min_requests > 1 {
            let (bytes, dir) = (self.inner.admission.to_bytes(), self.inner.dir.clone());
            let saved =
                tokio::task::spawn_blocking(move || resize::replace_file(&dir, ADMISSION_FILE, bytes)).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "disk tier: cannot save its admission counts");
            }
        }
        let store = self.inner.store.write().unwrap_or_else(|p| p.into_inner()).take();
        self.inner.up.store(false, Ordering::Relaxed);
        if store.is_some() {
            self.save_layout();
        }
        if let Some(store) = store {
            close_engine(store.engine, Duration::from_secs(10)).await;
        }
    }

    /// How long after its fetch an entry this tier stored could still be served, at most (ms).
    pub fn purge_horizon_ms(&self) -> u64 {
        self.inner.log.horizon_ms()
    }

    /// What `bytes` read for `key` is worth: the entry, stale if a soft purge says so; `None`
    /// (for the caller to remove from disk) when it cannot be decoded, is past its stale window
    /// or was purged.
    fn judge(&self, key: &str, bytes: &[u8]) -> Option<Arc<Entry>> {
        let inner = &self.inner;
        let Some(entry) = Entry::decode(key, bytes) else {
            inner.metrics.disk_error(DiskOp::Read);
            return None;
        };
        let now = now_ms();
        if entry.stale_until_ms <= now {
            inner.metrics.disk_dropped(DropReason::Expired);
            return None;
        }
        match inner.log.verdict(key, entry.tags(), entry.stored_at_ms) {
            Verdict::Keep => Some(Arc::new(entry)),
            Verdict::StaleFrom(at) => Some(Arc::new(entry.marked_stale(at))),
            Verdict::Drop(scope) => {
                inner.metrics.disk_dropped(DropReason::Purged);
                inner.metrics.invalidated_entries(scope, TierName::Disk, 1);
                None
            }
        }
    }

    /// `key`'s hash for its bucket and its bit in the bucket's mask: SipHash under the
    /// directory's seed, the same in every process that opens it (so a restart finds the
    /// buckets), unknown to clients (so none can aim keys at another key's bucket and push it
    /// out).
    fn bucket_hash(&self, key: &str) -> u64 {
        sketch::keyed(self.inner.seed, key.as_bytes())
    }

    /// Where `key`'s small entry goes under `g`: its bucket and its bit in the bucket's mask.
    fn slot(&self, g: &Geometry, key: &str) -> Slot {
        g.slot(self.bucket_hash(key))
    }

    /// Sets the mask of `slot`'s bucket to what `bucket` holds (under its lock).
    fn set_mask(&self, g: &Geometry, slot: Slot, bucket: &Bucket) {
        if let Some(mask) = g.mask(slot) {
            let bits = bucket.keys().fold(0, |m, k| m | mask_bit(self.bucket_hash(k)));
            mask.store(bits, Ordering::Release);
        }
    }

    /// The lock that orders the read-modify-writes of `slot`'s bucket.
    async fn lock(&self, slot: Slot) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.locks[slot.bucket % self.inner.locks.len()]
            .lock()
            .await
    }

    /// The value of `key`'s small entry, read from its bucket without decoding the others;
    /// `None` when the mask rules it out or the bucket or the key is not there.
    async fn find_small(&self, open: &Open, key: &str) -> Result<Option<Vec<u8>>, TierError> {
        let g = self.geo();
        let today = self.slot(&g, key);
        // Today's bucket, then the buckets before a resize whose entries are still being
        // moved (newest first: a write removes the key from the older ones).
        let slots: Vec<Slot> = std::iter::once(today)
            .chain(g.old_slots(today))
            .filter(|&s| g.may_hold(s))
            .collect();
        if slots.is_empty() {
            return Ok(None);
        }
        let (tier, pages, key) = (self.clone(), open.pages.clone(), key.to_owned());
        blocking(move || {
            for slot in slots {
                if let Some(bytes) = tier.read_page(&pages, slot)?
                    && let Some(value) = bucket::find(&bytes, &key)
                {
                    return Ok(Some(value.to_vec()));
                }
            }
            Ok(None)
        })
        .await
    }

    /// The encoding page `slot` holds (`None`: empty). A page that fails its checksum is
    /// counted and read as empty (rewritten, it loses only its own entries); a failed read is
    /// an error (and after many in a row the tier goes down).
    fn read_page(&self, pages: &Pages, slot: Slot) -> Result<Option<Vec<u8>>, TierError> {
        match pages.read(slot.bucket as u64) {
            Ok(page) => Ok(page),
            Err(PageError::Corrupt) => {
                self.inner.metrics.disk_error(DiskOp::Read);
                Ok(None)
            }
            Err(PageError::Io(e)) => Err(self.read_failed(&e.to_string())),
        }
    }

    /// The bucket page `slot` holds (empty when it is, or does not decode: counted).
    fn read_bucket(&self, pages: &Pages, slot: Slot) -> Result<Bucket, TierError> {
        Ok(match self.read_page(pages, slot)? {
            None => Bucket::default(),
            Some(bytes) => Bucket::decode(&bytes).unwrap_or_else(|| {
                self.inner.metrics.disk_error(DiskOp::Read);
                Bucket::default()
            }),
        })
    }

    /// Writes `bucket` as page `slot` (and sets its mask in `g`); whether the disk kept it. A
    /// failed write (a full volume under the sparse file, an I/O error) is counted and takes
    /// the tier down, as the engine's do.
    fn write_page(&self, pages: &Pages, g: &Geometry, slot: Slot, bucket: &Bucket) -> bool {
        let encoding = if bucket.is_empty() {
            Vec::new()
        } else {
            bucket.encode()
        };
        match pages.write(slot.bucket as u64, &encoding) {
            Ok(()) => {
                self.set_mask(g, slot, bucket);
                true
            }
            Err(e) => {
                self.inner.metrics.disk_error(DiskOp::Write);
                self.down(&format!("a write of the small entries' pages failed: {e}"));
                false
            }
        }
    }

    /// Removes `key`'s small entry from its bucket (and its buckets before a resize); whether
    /// it held one.
    async fn remove_small(&self, open: &Open, key: &str) -> bool {
        'again: loop {
            let g = self.geo();
            let slot = self.slot(&g, key);
            let mut held = false;
            for slot in std::iter::once(slot).chain(g.old_slots(slot)) {
                match self.remove_from(open, &g, key, slot).await {
                    Some(h) => held |= h,
                    // The split changed under it: start again on the new one.
                    None => continue 'again,
                }
            }
            return held;
        }
    }

    /// Removes `key`'s small entry from the bucket `slot` of `g`; whether it held one (`None`:
    /// `g` is no longer the tier's, the removal must start again).
    async fn remove_from(&self, open: &Open, g: &Arc<Geometry>, key: &str, slot: Slot) -> Option<bool> {
        if !g.may_hold(slot) {
            return Some(false);
        }
        let _order = self.lock(slot).await;
        if !self.current(g) {
            return None;
        }
        let (tier, pages, key, g) = (self.clone(), open.pages.clone(), key.to_owned(), g.clone());
        let held = blocking(move || {
            let mut bucket = tier.read_bucket(&pages, slot)?;
            let held = bucket.remove(&key);
            if held {
                tier.write_page(&pages, &g, slot, &bucket);
            } else {
                tier.set_mask(&g, slot, &bucket);
            }
            Ok(held)
        })
        .await;
        Some(held.unwrap_or(false))
    }

    /// Removes `key`'s entry, small or not; whether the disk held one.
    async fn remove_entry(&self, open: &Open, key: &str) -> bool {
        let direct = open
            .engine
            .as_ref()
            .is_some_and(|e| e.storage().may_contains(key));
        if direct && let Some(engine) = &open.engine {
            engine.remove(key);
        }
        self.remove_small(open, key).await || direct
    }

    /// Writes `key`'s `entry` to disk: small entries into their bucket's page, larger ones to
    /// the engine; what became of it.
    async fn put_entry(&self, key: &str, entry: Arc<Entry>) -> Result<Put, TierError> {
        let open = self.store()?;
        let bytes = entry.encode();
        // foyer cannot keep an entry larger than a block (with its key and header).
        if (bytes.len() + key.len() + 64) as u64 > self.geo().layout.block {
            return Ok(Put::Lost);
        }
        let admission = &self.inner.admission;
        let direct = open
            .engine
            .as_ref()
            .is_some_and(|e| e.storage().may_contains(key));
        if !bucket::is_small(key, bytes.len()) {
            if !direct && !admission.admits(key) {
                self.inner.metrics.disk_rejected();
                // A smaller version of it may be in its bucket: superseded all the same.
                let g = self.geo();
                let older = g.may_hold(self.slot(&g, key));
                return Ok(if older { Put::Lost } else { Put::NotAdmitted });
            }
            // The engine is being reopened at another size: not kept.
            let Some(engine) = &open.engine else {
                self.remove_small(&open, key).await;
                return Ok(Put::Lost);
            };
            self.inner
                .log
                .lives_until(entry.stored_at_ms, entry.stale_until_ms);
            let len = bytes.len() as u64;
            let dropped = self.inner.drops.buffer_full();
            let mut kept = self.write(engine, key.to_owned(), bytes);
            // Until its flusher has written the entry into a block and indexed it (or let it
            // go, and counted that), the engine has not kept it: a fill is said kept only
            // after. When something was let go meanwhile, a key the engine did not hold before
            // is kept if it is indexed now; one it held (an older version) is taken as let go
            // (the safe side: it is then recorded as superseding the older one).
            if kept {
                let flushed = tokio::time::timeout(FLUSH_WAIT, engine.storage().wait()).await;
                kept = flushed.is_ok()
                    && (self.inner.drops.buffer_full() == dropped
                        || (!direct && engine.storage().may_contains(key)));
            }
            // It may have been small before: no older version stays in its bucket.
            self.remove_small(&open, key).await;
            // Written to an engine closed meanwhile (reopened at another size): maybe lost.
            if !kept || !self.engine_is(engine) {
                return Ok(Put::Lost);
            }
            self.inner
                .fills
                .large
                .fetch_add(len.div_ceil(DISK_PAGE), Ordering::Relaxed);
            return Ok(Put::Kept);
        }
        let len = (key.len() + bytes.len()) as u64;
        let (stored_at, stale_until) = (entry.stored_at_ms, entry.stale_until_ms);
        let mut bytes = Some(bytes);
        let (g, slot) = loop {
            let g = self.geo();
            let slot = self.slot(&g, key);
            let order = self.lock(slot).await;
            // The split changed meanwhile: its bucket may be another.
            if !self.current(&g) {
                continue;
            }
            let (tier, pages, owned) = (self.clone(), open.pages.clone(), key.to_owned());
            let (g2, value) = (g.clone(), bytes.take().expect("one write"));
            let put = blocking(move || {
                let inner = &tier.inner;
                // A bucket known to be empty need not be read. One that cannot be read now is
                // left as it is (rewritten, it would lose its entries), and the fill not written.
                let mut bucket = if g2.mask(slot).is_some_and(|m| m.load(Ordering::Acquire) == 0) {
                    Bucket::default()
                } else {
                    tier.read_bucket(&pages, slot)?
                };
                // A bucket with room takes any fill: admission guards only what would be
                // pushed out.
                let room = bucket.has_room(&owned, value.len());
                if !direct && !room && bucket.get(&owned).is_none() && !inner.admission.admits(&owned) {
                    inner.metrics.disk_rejected();
                    return Ok(Put::NotAdmitted);
                }
                inner.log.lives_until(stored_at, stale_until);
                bucket.insert(&owned, value, |k| inner.admission.frequency(k));
                // Not kept: the page is the one before (its mask stays as it was).
                Ok(if tier.write_page(&pages, &g2, slot, &bucket) {
                    Put::Kept
                } else {
                    Put::Lost
                })
            })
            .await?;
            drop(order);
            if put != Put::Kept {
                return Ok(put);
            }
            break (g, slot);
        };
        self.inner.fills.small.fetch_add(len, Ordering::Relaxed);
        if direct && let Some(engine) = &open.engine {
            engine.remove(key);
        }
        // Written to its new bucket: an older version in its bucket before a resize must not
        // come back.
        for old in g.old_slots(slot) {
            self.remove_from(&open, &g, key, old).await;
        }
        Ok(Put::Kept)
    }

    /// Hands `bytes` to foyer's writer as `key`; whether it kept them: foyer lets an entry go
    /// without a word when its write queue is full (its `channel_overflow` counter, read
    /// before and after; a drop of another thread's meanwhile makes this one look dropped too,
    /// the safe side of `Cache-Status: stored`). A write that fails later, in the flusher,
    /// takes the tier down ([`disk_engine`]).
    fn write(&self, store: &Store, key: String, bytes: Vec<u8>) -> bool {
        let dropped = self.inner.drops.queue_full();
        let handed = store.storage_writer(key).force().insert(bytes).is_some();
        if !handed {
            self.inner.metrics.disk_error(DiskOp::Write);
        }
        handed && self.inner.drops.queue_full() == dropped
    }

    /// A failed read: counted, and after many in a row the tier goes down.
    fn read_failed(&self, e: &str) -> TierError {
        self.inner.metrics.disk_error(DiskOp::Read);
        let n = self.inner.read_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= DOWN_AFTER_READ_FAILURES {
            self.down(&format!("{n} reads failed in a row, the last: {e}"));
        }
        TierError::Failed(e.to_owned())
    }
}

/// One line of the purge file.
fn purge_line(scope: PurgeScope, mode: PurgeMode, name: &str, at_ms: u64) -> String {
    serde_json::json!([at_ms, mode.as_str(), scope.as_str(), name]).to_string()
}

/// The purge file's line for a floor at `at_ms` (see [`FLOOR_SCOPE`]).
fn floor_line(at_ms: u64) -> String {
    serde_json::json!([at_ms, PurgeMode::Hard.as_str(), FLOOR_SCOPE, ""]).to_string()
}

/// The time of a floor line of the purge file.
fn parse_floor_line(line: &str) -> Option<u64> {
    let (at, _, scope, _): (u64, String, String, String) = serde_json::from_str(line).ok()?;
    (scope == FLOOR_SCOPE).then_some(at)
}

/// A line of the purge file; `None` for one this release cannot read (or a torn last line).
fn parse_purge_line(line: &str) -> Option<(PurgeScope, PurgeMode, String, u64)> {
    let (at, mode, scope, name): (u64, String, String, String) = serde_json::from_str(line).ok()?;
    Some((PurgeScope::parse(&scope)?, PurgeMode::parse(&mode)?, name, at))
}

/// Appends `line` (and a newline) to `path`, synced: purges are rare and must not be lost.
fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

/// The admission of a tier over `dir`: the counts and seeds saved at the last shutdown when
/// they fit this layout, else new ones (a file that does not fit is ignored with a `warn`).
fn load_admission(dir: &Path, min_requests: u8, entries: u64) -> Admission {
    let mut admission = Admission::new(min_requests, entries);
    if min_requests <= 1 {
        return admission;
    }
    let path = dir.join(ADMISSION_FILE);
    if !path.exists() {
        return admission;
    }
    // A regular file of at most 256 MiB (the sketch of the largest disk is far smaller).
    match resize::read_small(&path, 256 << 20) {
        Some(bytes) if admission.restore(&bytes) => {}
        Some(_) => {
            tracing::warn!(dir = %dir.display(), "disk tier: the saved admission counts are of another layout or unreadable; counting starts afresh");
        }
        None => {
            tracing::warn!(dir = %dir.display(), "disk tier: cannot read the saved admission counts; counting starts afresh")
        }
    }
    admission
}

/// The file naming the on-disk format, beside the entries.
pub const FORMAT_FILE: &str = "cache-layer-format";

/// What this release writes: the storage engine (its major version decides the block format)
/// and the entry encoding. Changed by hand when either changes; a directory written in another
/// format starts empty rather than be misread.
pub const FORMAT: &str =
    "cache-layer disk 4; foyer 0.22; entry v1; small entries in place in pages by keyed jump hash";

/// Makes sure `dir` holds entries in [`FORMAT`]: a directory written in another one (a foyer or
/// encoding upgrade, or a downgrade) loses its entries (foyer's files; the purge file stays,
/// purges are format-free), with a `warn`; a directory without the file (new, or written before
/// the file existed, which is this format) gets it.
fn check_format(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(FORMAT_FILE);
    // Not a file of ours (a FIFO, a link, a directory): replaced, the entries dropped.
    let read = if resize::remove_unless_file(&path)? {
        Ok(String::new())
    } else {
        std::fs::symlink_metadata(&path).map(|_| resize::read_small_file(&path, 4096).unwrap_or_default())
    };
    match read {
        Ok(found) if found.trim() == FORMAT => return Ok(()),
        Ok(found) => {
            let files = resize::remove_engine_files(dir)?;
            let found = found.trim();
            tracing::warn!(dir = %dir.display(), found, expected = FORMAT, files, "disk tier: the directory holds entries of another format; it starts empty");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::File::create(&path)?;
    std::io::Write::write_all(&mut f, format!("{FORMAT}\n").as_bytes())?;
    f.sync_all()
}

/// Closes the engine (writing what it buffers), within `wait`; a failure is logged.
async fn close_engine(engine: Option<Arc<Store>>, wait: Duration) {
    if let Some(engine) = engine
        && let Ok(Err(e)) = tokio::time::timeout(wait, engine.close()).await
    {
        tracing::warn!(error = %e, "disk tier: close failed");
    }
}

/// Runs `f` (a read or write of the pages file) on a thread that may block, off the runtime's.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TierError> + Send + 'static,
) -> Result<T, TierError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(TierError::Failed(format!("disk tier task: {e}"))))
}

/// Opens foyer's store on `dir` (recovering its blocks and tombstones).
async fn open(dir: &Path, layout: Layout, drops: Arc<disk_engine::EngineDrops>) -> Result<Store, String> {
    let device = FsDeviceBuilder::new(dir)
        .with_capacity(layout.large as usize)
        .build()
        .map_err(|e| e.to_string())?;
    let engine = BlockEngineConfig::new(device)
        .with_block_size(layout.block as usize)
        .with_buffer_pool_size(layout.block as usize)
        .with_submit_queue_size_threshold(layout.block as usize)
        .with_indexer_shards(16)
        .with_tombstone_log(true);
    HybridCacheBuilder::new()
        .with_name("disk")
        .with_metrics_registry(disk_engine::registry(drops))
        .with_policy(HybridCachePolicy::WriteOnInsertion)
        // Entries go to disk only ("phantom" inserts): foyer's memory cache holds none.
        .memory(1)
        .storage()
        .with_io_engine_config(PsyncIoEngineConfig::new())
        .with_engine_config(engine)
        .with_recover_mode(RecoverMode::Quiet)
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// The longest a larger fill waits for the engine's flusher to take it (a fill not taken by
/// then is not said kept, and counts as superseded).
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// What became of a fill handed to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Put {
    /// Written (handed to the engine, which kept it).
    Kept,
    /// Not asked for often enough to be written (no version of it is on disk).
    NotAdmitted,
    /// Not written: dropped by the engine, too large, or its bucket could not be read.
    Lost,
}

/// What a read of one foyer key found.
enum Stored {
    Value(Vec<u8>),
    Absent,
    /// foyer throttled the read: the key may be there.
    Unknown,
}

/// Reads `key` from the store (the disk, or foyer's write queue).
async fn load(store: &Store, key: &str) -> Result<Stored, foyer::Error> {
    Ok(match store.storage().load(key).await? {
        Load::Entry { value, .. } => Stored::Value(value),
        Load::Piece { piece, .. } => Stored::Value(piece.value().clone()),
        Load::Miss => Stored::Absent,
        Load::Throttled => Stored::Unknown,
    })
}

/// Where a small entry goes: its bucket, and its key's bit in the bucket's mask; with the
/// key's bucket hash, so its buckets before a resize are found without hashing it again.
#[derive(Clone, Copy)]
struct Slot {
    bucket: usize,
    bit: u64,
    hash: u64,
}

/// A key's bit in its bucket's mask, from its bucket hash ([`DiskTier::bucket_hash`]): the top
/// 6 bits, which the bucket index hardly depends on.
fn mask_bit(hash: u64) -> u64 {
    1 << (hash >> 58)
}

/// Writes, syncs, reads back and removes a small file in `dir` (off the runtime's threads).
async fn probe_dir(dir: &Path) -> Result<(), String> {
    let path = dir.join(PROBE_FILE);
    let probe = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let stamp = now_ms().to_string();
        let mut f = std::fs::File::create(&path)?;
        f.write_all(stamp.as_bytes())?;
        f.sync_all()?;
        let back = std::fs::read(&path)?;
        std::fs::remove_file(&path)?;
        if back != stamp.as_bytes() {
            return Err(std::io::Error::other("the probe read back other bytes"));
        }
        Ok(())
    });
    match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the probe took over 10 s".into()),
    }
}

impl Tier for DiskTier {
    fn name(&self) -> TierName {
        TierName::Disk
    }

    async fn note_purge(&self, target: &Target, mode: PurgeMode, at_ms: u64) -> bool {
        DiskTier::note_purge(self, target.scope(), target.name(), mode, at_ms).await
    }

    fn purge_horizon_ms(&self) -> Option<u64> {
        Some(DiskTier::purge_horizon_ms(self))
    }

    fn health(&self) -> TierHealth {
        TierHealth {
            status: if self.is_up() { "ok" } else { "down" },
            nodes: None,
        }
    }

    async fn close(&self) {
        DiskTier::close(self).await
    }

    fn shared(&self) -> bool {
        false
    }

    async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, TierError> {
        let open = self.store()?;
        self.inner.admission.requested(key);
        // A small entry is in its bucket; a larger one on its own, under its key.
        let read = match self.find_small(&open, key).await? {
            Some(bytes) => Some((bytes, true)),
            None if let Some(engine) = open.engine.as_ref().filter(|e| e.storage().may_contains(key)) => {
                match load(engine, key).await {
                    Ok(Stored::Value(bytes)) => Some((bytes, false)),
                    Ok(Stored::Absent | Stored::Unknown) => None,
                    Err(e) => return Err(self.read_failed(&e.to_string())),
                }
            }
            None => None,
        };
        self.inner.read_failures.store(0, Ordering::Relaxed);
        let Some((bytes, small)) = read else {
            return Ok(None);
        };
        let found = self.judge(key, &bytes);
        if found.is_none() {
            if small {
                self.remove_small(&open, key).await;
            } else if let Some(engine) = &open.engine {
                engine.remove(key);
            }
        }
        Ok(found)
    }

    async fn get_many(&self, keys: &[&str]) -> Vec<Result<Option<Arc<Entry>>, TierError>> {
        futures_util::future::join_all(keys.iter().map(|k| self.get(k))).await
    }

    async fn put(&self, key: &str, entry: Arc<Entry>) -> Result<bool, TierError> {
        let stored_at_ms = entry.stored_at_ms;
        let put = self.put_entry(key, entry).await;
        if !matches!(put, Ok(Put::Kept | Put::NotAdmitted)) {
            // Not written (the tier down, the write dropped or failed, too large): a version
            // the disk still holds is older than this one, and must not be served after it.
            self.inner
                .log
                .record(PurgeScope::Key, key, PurgeMode::Hard, stored_at_ms);
        }
        put.map(|p| p == Put::Kept)
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        let open = self.store()?;
        self.remove_entry(&open, key).await;
        Ok(())
    }

    async fn purge(&self, key: &str, mode: PurgeMode, _now_ms: u64) -> Result<u64, TierError> {
        // The purge is recorded (by the read-through, before the tiers are purged): a soft
        // purge marks the entry stale when it is next read. A hard one removes it now. A disk
        // that is down is not a failed purge: the record applies when it is back.
        let Ok(open) = self.store() else {
            return Ok(0);
        };
        let held = if mode == PurgeMode::Hard {
            self.remove_entry(&open, key).await
        } else {
            open.engine
                .as_ref()
                .is_some_and(|e| e.storage().may_contains(key))
                || matches!(self.find_small(&open, key).await, Ok(Some(_)))
        };
        Ok(u64::from(held))
    }

    async fn purge_tag(&self, _tag: &str, _mode: PurgeMode, _now_ms: u64) -> Result<u64, TierError> {
        // Recorded, and applied to each entry when it is next read (and counted then): foyer
        // offers no scan, and a purge should not read the whole disk.
        Ok(0)
    }

    fn clear_own(&self) {
        // The disk is not cleared after a gap in the purge feed: the purges missed are read
        // from Redis's record instead.
        let tier = self.clone();
        tokio::spawn(async move { tier.load_purge_records(true).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_directory_places_keys_by_its_own_secret_hash() {
        let tier = |dir: &Path| {
            let config = DiskConfig {
                dir: dir.to_owned(),
                max_bytes: 64 << 20,
                index_max_bytes: 16 << 20,
                admit_min_requests: 1,
            };
            DiskTier::new(&config, 3_600_000, None, Arc::new(Metrics::detached()))
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ta, tb) = (tier(a.path()), tier(b.path()));
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        let same = keys
            .iter()
            .filter(|k| ta.slot(&ta.geo(), k).bucket == tb.slot(&tb.geo(), k).bucket)
            .count();
        // Placed independently: about one key in the bucket count lands alike by chance.
        assert!(
            same < 20,
            "{same} of 1000 keys in the same bucket under two seeds"
        );
        // The seed is the directory's: saved with the layout, the same placement after a restart.
        ta.save_layout();
        let again = tier(a.path());
        assert!(
            keys.iter()
                .all(|k| ta.slot(&ta.geo(), k).bucket == again.slot(&again.geo(), k).bucket)
        );
    }

    #[test]
    fn the_layout_keeps_the_index_within_its_bound() {
        // 1 GiB of disk within the default 32 MiB: all of it.
        let l = Layout::new(1 << 30, 32 << 20, DEFAULT_SHARE);
        assert_eq!(l.capacity, 1 << 30);
        assert_eq!(l.block, MAX_BLOCK);
        // Three quarters pages, the rest the engine's, in whole blocks.
        assert_eq!(l.buckets * DISK_PAGE + l.large, l.capacity);
        assert_eq!(l.large % l.block, 0);
        assert!((l.buckets * DISK_PAGE) as f64 / l.capacity as f64 > 0.74, "{l:?}");
        // 1 GiB within 4 MiB: the disk is cut to what the index can track.
        let l = Layout::new(1 << 30, 4 << 20, DEFAULT_SHARE);
        let pages = l.capacity / DISK_PAGE;
        let sketch = l.entries().next_power_of_two() * sketch::BYTES_PER_WORD;
        let masks = l.buckets * 8;
        let index = (l.large / DISK_PAGE) * INDEX_BYTES_PER_ENTRY;
        assert!(pages * INDEX_BYTES_PER_ENTRY <= 4 << 20, "{l:?}");
        assert!(
            index + masks + sketch + 2 * l.block + (4 << 20) / 16 <= 4 << 20,
            "{l:?}"
        );
        assert!(l.large >= 4 * l.block);
        // 8 MiB: small blocks, so eviction takes little at a time.
        let l = Layout::new(8 << 20, 16 << 20, DEFAULT_SHARE);
        assert_eq!((l.capacity, l.block), (8 << 20, 64 << 10));
        // 32 MiB, all of it asked for pages: the engine still has four blocks, a 32nd.
        let l = Layout::new(32 << 20, 16 << 20, 1000);
        assert_eq!((l.large, l.buckets), (1 << 20, 31 << 8));
        // Resized to 16 MiB, the directory's 256 KiB blocks are kept (its files still read);
        // to less than four of them, they cannot be.
        let l = Layout::keeping(16 << 20, 16 << 20, 256 << 10, 500).unwrap();
        assert_eq!((l.capacity, l.block, l.large), (16 << 20, 256 << 10, 8 << 20));
        assert_eq!(Layout::keeping(512 << 10, 16 << 20, 256 << 10, 500), None);
        assert_eq!(
            Layout::keeping(16 << 20, 16 << 20, 100_000, 500),
            None,
            "not page-aligned"
        );
    }

    #[test]
    fn the_pages_share_follows_the_fills() {
        let fills = Fills::default();
        let capacity = 32 << 20;
        assert_eq!(fills.share(750, capacity), 750, "nothing seen: as before");
        // Only small fills, a disk's worth: up towards all pages.
        fills.small.store(capacity, Ordering::Relaxed);
        assert_eq!(fills.share(750, capacity), 875);
        assert_eq!(fills.share(860, capacity), 930);
        assert_eq!(fills.share(885, capacity), 940, "never all of it");
        assert_eq!(fills.share(900, capacity), 900, "not moved for a few points");
        // Mostly large ones: down.
        fills.large.store(capacity / DISK_PAGE * 4, Ordering::Relaxed);
        assert!(fills.share(750, capacity) < 500);
    }
}
