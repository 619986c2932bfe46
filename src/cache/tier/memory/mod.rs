//! The in-process tier: a byte-bounded map whose entries leave when no longer servable, evicted
//! by an adaptive W-TinyLFU (`eviction.rs`; why this policy: docs/architecture.md, "Memory-tier
//! policy").
//!
//! Built so that hits on many cores do not wait on each other (the design of moka and
//! Caffeine): a hit reads a sharded index under one shard's read lock, with the key hashed
//! before any lock is taken, and records its read in a lossy striped buffer; the policy, behind
//! its own lock, takes the buffered reads when a stripe fills (`try_lock`: a hit never waits for
//! it) and before every write. Whole-tier work is done in bounded steps under that lock (window
//! resizes, the expiry sweep), so no hit and no write waits long for it. With one thread the
//! policy sees every read, in order, as before. A tag purge's entries are found through a tag
//! index and purged a step at a time by the sweeper (`sweeper.rs`), a thread of its own, off
//! the async workers.

mod eviction;
mod sweeper;

pub use crate::cache::labels::EvictionCause;

use std::cell::Cell;
use std::collections::HashMap;

use indexmap::IndexSet;
use std::hash::{BuildHasher, RandomState};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};

use hashbrown::HashTable;

use self::eviction::{Adaptive, Evicted, NEVER, Removal};
use crate::cache::clock::Clock;
#[cfg(test)]
use crate::cache::entry::now_ms;
use crate::cache::entry::{ENTRY_OVERHEAD_BYTES, Entry};
use crate::cache::purge::PurgeMode;
use crate::cache::tier::{Tier, TierError, TierName};
use crate::telemetry::Metrics;

/// The in-process tier, bounded by bytes of keys, values and per-entry overhead.
#[derive(Clone)]
pub struct MemoryTier {
    /// The entries and their policy, shared by every clone.
    inner: Arc<Inner>,
}

/// Shards of the read index: enough that hits on different keys rarely share one at 16 cores.
const SHARDS: usize = 64;
/// Reads one stripe of the read buffer holds before it asks for a drain.
const STRIPE_READS: usize = 32;
/// Entries a tag purge handles per taking of the policy's lock: a purge of a million entries
/// is thousands of short steps, with other work (and hits, which never take that lock) between.
/// A step is about a quarter of a millisecond; with one worker thread, a hit waits for at most
/// one (300,000 entries, hot key at 5,000 req/s: p99 during the purge 1.34 ms against 0.89 ms
/// without, where 256 a step gave 3.64 ms).
const PURGE_STEP: usize = 64;

/// What the clones of one tier share.
struct Inner {
    /// Hashes keys for the index and the policy alike, seeded per process so nobody can aim
    /// keys at one slot. Hashing happens before any lock is taken.
    hasher: RandomState,
    /// The read index: key → entry, in shards chosen by hash. Changed only under `state`'s
    /// lock, in step with the policy; read by hits under one shard's read lock.
    shards: Box<[RwLock<HashTable<Slot>>]>,
    /// Reads not yet applied to the policy.
    reads: ReadBuffer,
    /// The eviction policy (which owns the entries' order and weights) and the expiry sweep.
    state: Mutex<State>,
    /// Tag → the keys whose entry carries it: a tag purge finds its entries here, not by a
    /// scan. Changed with the index (under the policy's lock); its own lock is held only for a
    /// set's update, or for taking a tag's whole set out at a purge.
    tags: Mutex<HashMap<Box<str>, IndexSet<Arc<str>>>>,
    /// Tag purges whose sweep has begun and not ended. A purge takes effect here at once: a
    /// hit on an entry a sweep has still to reach is answered as the purge will leave it, so
    /// however long a million-entry sweep takes (it yields between short steps, and another
    /// replica may be busy), no purged entry is served from this tier after the purge began.
    sweeps: Mutex<Vec<Sweep>>,
    /// How many sweeps `sweeps` holds: hits and stores look at them only when this is not 0.
    sweeping: AtomicUsize,
    /// Rounds the expiry sweep's hand has gone: the sweeper passes over a tier whose own work
    /// has not moved it round lately (an idle tier otherwise kept its expired entries, and
    /// counted them in `memory_cache_entries`, until traffic came back).
    laps: AtomicU64,
    /// Where evictions are counted.
    metrics: Arc<Metrics>,
    /// What "now" is for expiry.
    clock: Clock,
}

/// A tag purge's sweep in progress: the keys the tag's index held when the purge began, less
/// those the sweep has done and those stored again since (a store made after the purge began
/// is newer than it; the read-through does not store what a fetch begun before the purge
/// brought back).
struct Sweep {
    /// Tells this sweep from another of the same tag.
    id: u64,
    tag: Box<str>,
    /// A soft purge's time (its entries are stale from then); `None` for a hard purge.
    stale_at_ms: Option<u64>,
    /// Whether its purge counted every key when it began (a large tag, answered before its
    /// sweep), so a smaller purge whose sweep reaches a key first does not count it again.
    counted: bool,
    /// Keys still to sweep: for a hit's look-up, and taken from the end a step at a time (an
    /// `IndexSet` pops in O(1); a `HashSet` emptied from the front would scan its empty slots
    /// again at every step, and copying its keys out first stalled hits for 20 ms).
    keys: IndexSet<Arc<str>>,
}

/// What a sweep in progress makes of an entry a hit found.
enum Swept {
    /// A hard purge: as if not there.
    Gone,
    /// A soft purge: stale from this time.
    StaleAt(u64),
}

/// One entry of the read index.
struct Slot {
    /// The key's hash (so that growing a shard does not hash again).
    hash: u64,
    key: Arc<str>,
    entry: Arc<Entry>,
}

/// The policy and where the expiry sweep stands.
struct State {
    /// Keys to entries, with the eviction policy's queues.
    policy: Adaptive<Arc<str>, Arc<Entry>>,
    /// The expiry sweep's clock hand: the next arena slot of the policy it looks at. Entries
    /// past their stale window are never served; the sweep frees them (a step per lock taken)
    /// without anyone reading them.
    hand: usize,
    /// The wall-clock ms the sweep's times count from (the tier's start).
    epoch_ms: u64,
}

impl State {
    /// `ms` (wall clock) in the sweep's units: ms since the tier started, in 32 bits (49 days;
    /// an entry living longer is left to reads and evictions).
    fn until(&self, ms: u64) -> u32 {
        ms.saturating_sub(self.epoch_ms).min(u64::from(NEVER - 1)) as u32
    }
}

/// The policy's own heap bytes at most, set aside from the bound at start: its frequency sketch
/// (8 bytes per entry it can hold, rounded up to a power of two), its mini-simulations, and
/// what the tier's structures cost before their first entry (`FIXED_BYTES`).
fn reserved_bytes(max_bytes: u64) -> u64 {
    let entries = (max_bytes / ENTRY_OVERHEAD_BYTES as u64).max(1);
    8 * entries.next_power_of_two().max(8) + sim_bytes(max_bytes) + fixed_bytes()
}

/// The index's shards at their smallest (a table of 4 slots: 160 B each) and the read buffer's
/// stripes (a 384 B cache-aligned block each): paid once, whatever the bound.
fn fixed_bytes() -> u64 {
    SHARDS as u64 * 160 + stripes() as u64 * std::mem::size_of::<Stripe>() as u64
}

/// Stripes of the read buffer: four per core, so that threads rarely share one.
fn stripes() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).next_power_of_two().clamp(4, 64)
}

/// The mini-simulations' share of a bound of `max_bytes`.
fn sim_bytes(max_bytes: u64) -> u64 {
    Adaptive::<Arc<str>, Arc<Entry>>::sim_bytes(max_bytes, ENTRY_OVERHEAD_BYTES as u64)
}

/// Bytes left for entries under a bound of `max_bytes`.
fn capacity_bytes(max_bytes: u64) -> u64 {
    max_bytes.saturating_sub(reserved_bytes(max_bytes)).max(1)
}

/// Reads recorded by hits, by key hash, until the policy takes them: stripes of a few reads,
/// a thread to a stripe, each behind a lock that a hit only tries. A read that finds its stripe
/// busy or full is dropped (the policy's frequencies and recency are estimates, and a popular
/// key is read again soon); Caffeine's read buffer makes the same trade.
struct ReadBuffer {
    stripes: Box<[Stripe]>,
}

/// One stripe, on a cache line of its own so that threads on different stripes do not share one.
#[repr(align(128))]
struct Stripe(Mutex<StripeReads>);

/// The reads of one stripe.
struct StripeReads {
    len: usize,
    hashes: [u64; STRIPE_READS],
}

/// Numbers threads for their stripe.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's number, for its stripe.
    static THREAD: Cell<Option<usize>> = const { Cell::new(None) };
}

fn thread_number() -> usize {
    THREAD.with(|t| match t.get() {
        Some(n) => n,
        None => {
            let n = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            t.set(Some(n));
            n
        }
    })
}

impl ReadBuffer {
    fn new() -> Self {
        ReadBuffer {
            stripes: (0..stripes())
                .map(|_| {
                    Stripe(Mutex::new(StripeReads {
                        len: 0,
                        hashes: [0; STRIPE_READS],
                    }))
                })
                .collect(),
        }
    }

    /// Records a read of `hash`; `true` when the stripe is full and should be drained.
    fn record(&self, hash: u64) -> bool {
        let stripe = &self.stripes[thread_number() & (self.stripes.len() - 1)];
        let mut reads = match stripe.0.try_lock() {
            Ok(r) => r,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if reads.len == STRIPE_READS {
            return true;
        }
        let at = reads.len;
        reads.hashes[at] = hash;
        reads.len += 1;
        reads.len == STRIPE_READS
    }

    /// Hands every recorded read to `apply` and empties the stripes.
    fn drain(&self, mut apply: impl FnMut(u64)) {
        for stripe in self.stripes.iter() {
            let mut reads = stripe.0.lock().unwrap_or_else(|p| p.into_inner());
            for &hash in &reads.hashes[..reads.len] {
                apply(hash);
            }
            reads.len = 0;
        }
    }
}

/// The policy's lock, held; what left the tier meanwhile is counted and freed once it is let go.
struct Locked<'a> {
    inner: &'a Inner,
    state: Option<MutexGuard<'a, State>>,
    /// Entries that left while locked, to count and drop unlocked.
    gone: Vec<Evicted<Arc<str>, Arc<Entry>>>,
    now: u64,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.state.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.state.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Counted under the policy's lock: a tag sweep's keys are judged as they stood when the
        // entries left (a sweep's step, which takes that lock, could otherwise take a key out of
        // its sweep in between, and an entry its purge counted would be counted again).
        self.inner.count(&self.gone, self.now);
        self.state.take();
    }
}

impl Locked<'_> {
    /// Applies the buffered reads, then one step of whole-tier work: moving entries towards the
    /// queues' shares, and the expiry sweep.
    fn maintain(&mut self) {
        let state = self.state.as_mut().expect("held");
        self.inner.reads.drain(|hash| {
            let weight = state.policy.real.touch(hash);
            state.policy.record_read(hash, weight);
        });
        state.policy.real.rebalance();
        self.sweep_step();
    }

    /// One step of the expiry sweep: frees what is past its stale window among the next `STEP`
    /// arena slots.
    fn sweep_step(&mut self) {
        let state = self.state.as_mut().expect("held");
        let now = state.until(self.now);
        let State { policy, hand, .. } = &mut **state;
        let from = self.gone.len();
        if policy.real.sweep(hand, now, &mut self.gone) {
            self.inner.laps.fetch_add(1, Ordering::Relaxed);
        }
        for e in &self.gone[from..] {
            self.inner.unindex(e);
        }
    }

    /// Stores `entry` (of `weight`, servable and no heavier than the tier) under `key` in the
    /// index and the policy; whether the policy kept it (it may lose its admission duel).
    /// `newer`: a value stored now, newer than any purge begun before it (a store), not a
    /// purge's stale copy of the value held.
    fn insert(&mut self, hash: u64, key: Arc<str>, entry: Arc<Entry>, weight: u64, newer: bool) -> bool {
        self.inner.index(hash, key.clone(), entry.clone(), newer);
        let mut gone = Vec::new();
        let until = self.until(entry.stale_until_ms);
        let state = self.state.as_mut().expect("held");
        state
            .policy
            .real
            .insert_until(hash, key.clone(), entry.clone(), weight, until, &mut gone);
        state.policy.record_write(hash, weight);
        self.inner.unindex_evicted(&gone);
        self.gone.extend(gone);
        self.policy
            .real
            .peek(hash, &*key)
            .is_some_and(|held| Arc::ptr_eq(held, &entry))
    }

    /// Purges `held`, the entry held for `key` now: removes it (hard), or puts its stale copy
    /// in its place (soft): `stale` when made unlocked beforehand, else made here.
    fn purge_held(
        &mut self,
        hash: u64,
        key: &Arc<str>,
        held: &Arc<Entry>,
        stale: Option<Arc<Entry>>,
        mode: PurgeMode,
        now_ms: u64,
    ) {
        match mode {
            PurgeMode::Hard => self.remove(hash, key, Removal::Replaced),
            PurgeMode::Soft => {
                let stale = stale.unwrap_or_else(|| Arc::new(held.marked_stale(now_ms)));
                let weight = u64::from(stale.weight(key));
                if weight <= self.policy.real.maximum() {
                    self.insert(hash, key.clone(), stale, weight, false);
                }
            }
        }
    }

    /// Removes `key` from the policy and the index; `Replaced` is not counted as an eviction.
    fn remove(&mut self, hash: u64, key: &str, cause: Removal) {
        if let Some((key, value)) = self.policy.real.remove(hash, key) {
            let e = Evicted {
                key,
                value,
                hash,
                cause,
            };
            self.inner.unindex(&e);
            self.gone.push(e);
        }
    }
}

impl Inner {
    fn shard(&self, hash: u64) -> &RwLock<HashTable<Slot>> {
        // Bits the shard's own table uses neither for its buckets (low) nor its tags (high).
        &self.shards[(hash >> 32) as usize & (SHARDS - 1)]
    }

    /// The entry the index holds for `key`.
    fn find(&self, hash: u64, key: &str) -> Option<Arc<Entry>> {
        let shard = self.shard(hash).read().unwrap_or_else(|p| p.into_inner());
        shard.find(hash, |s| &*s.key == key).map(|s| s.entry.clone())
    }

    /// Makes `entry` the index's entry for `key` (under the policy's lock).
    fn index(&self, hash: u64, key: Arc<str>, entry: Arc<Entry>, newer: bool) {
        if newer && self.sweeping.load(Ordering::Acquire) != 0 {
            // Stored after the purge began: newer than it, so no sweep may take it. (A purge's
            // stale copy is not newer: a hard sweep under way still removes it.)
            for sweep in self.sweeps().iter_mut() {
                sweep.keys.swap_remove(&key);
            }
        }
        let mut shard = self.shard(hash).write().unwrap_or_else(|p| p.into_inner());
        let tagged = !entry.tags().is_empty();
        let old = match shard.find_mut(hash, |s| s.key == key) {
            Some(slot) => Some(std::mem::replace(&mut slot.entry, entry.clone())),
            None => {
                shard.insert_unique(
                    hash,
                    Slot {
                        hash,
                        key: key.clone(),
                        entry: entry.clone(),
                    },
                    |s| s.hash,
                );
                None
            }
        };
        drop(shard);
        let untag = old.as_ref().is_some_and(|o| !o.tags().is_empty());
        if tagged || untag {
            let mut tags = self.tags();
            if let Some(old) = old {
                for t in old.tags().iter().filter(|t| !entry.has_tag(t)) {
                    forget_tag(&mut tags, t, &key);
                }
            }
            for t in entry.tags() {
                match tags.get_mut(&**t) {
                    Some(keys) => {
                        keys.insert(key.clone());
                    }
                    None => {
                        tags.insert(t.clone(), IndexSet::from([key.clone()]));
                    }
                }
            }
        }
    }

    fn tags(&self) -> MutexGuard<'_, HashMap<Box<str>, IndexSet<Arc<str>>>> {
        self.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sweeps(&self) -> MutexGuard<'_, Vec<Sweep>> {
        self.sweeps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a sweep in progress makes of `entry`, found for `key` by a hit; `None` when no
    /// sweep has it still to do.
    fn swept(&self, key: &str, entry: &Entry) -> Option<Swept> {
        let sweeps = self.sweeps();
        let sweep = sweeps
            .iter()
            .filter(|s| entry.has_tag(&s.tag) && s.keys.contains(key))
            .min_by_key(|s| s.stale_at_ms.is_some())?;
        Some(match sweep.stale_at_ms {
            None => Swept::Gone,
            Some(at) => Swept::StaleAt(at),
        })
    }

    /// Begins the sweep of `tag`'s `keys` (a purge of `mode` at `now_ms`): its id.
    fn begin_sweep(
        &self,
        tag: &str,
        keys: IndexSet<Arc<str>>,
        mode: PurgeMode,
        now_ms: u64,
        counted: bool,
    ) -> u64 {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let mut sweeps = self.sweeps();
        sweeps.push(Sweep {
            id,
            tag: tag.into(),
            stale_at_ms: (mode == PurgeMode::Soft).then_some(now_ms),
            counted,
            keys,
        });
        self.sweeping.store(sweeps.len(), Ordering::Release);
        id
    }

    /// Up to `n` keys the sweep `id` has still to do, from its end, left in it (a key leaves
    /// the sweep only once its entry is purged, so a hit never finds it in neither). Empty
    /// when it is done.
    fn sweep_keys(&self, id: u64, n: usize) -> Vec<Arc<str>> {
        let sweeps = self.sweeps();
        let Some(sweep) = sweeps.iter().find(|s| s.id == id) else {
            return Vec::new();
        };
        sweep.keys.iter().rev().take(n).cloned().collect()
    }

    /// Ends the sweep `id`. Keys it did not reach (its purge was cancelled) go back into the
    /// tag's index when their entry still carries the tag, so that a retry of the purge finds
    /// them; until then they are served again, as they were before the purge.
    fn end_sweep(&self, id: u64) {
        let locked = self.lock();
        let mut sweeps = self.sweeps();
        let Some(at) = sweeps.iter().position(|s| s.id == id) else {
            return;
        };
        let done = sweeps.swap_remove(at);
        self.sweeping.store(sweeps.len(), Ordering::Release);
        drop(sweeps);
        if !done.keys.is_empty() {
            // Under the policy's lock, so no store or removal changes the index meanwhile.
            let mut tags = self.tags();
            for key in &done.keys {
                let hash = self.hasher.hash_one(&**key);
                if self.find(hash, key).is_some_and(|e| e.has_tag(&done.tag)) {
                    tags.entry(done.tag.clone()).or_default().insert(key.clone());
                }
            }
        }
        drop(locked);
        drop(done);
    }

    /// Drops `gone` from the index if it is the entry the index holds (under the policy's lock).
    fn unindex(&self, gone: &Evicted<Arc<str>, Arc<Entry>>) {
        let mut shard = self.shard(gone.hash).write().unwrap_or_else(|p| p.into_inner());
        if let Ok(slot) = shard.find_entry(gone.hash, |s| {
            s.key == gone.key && Arc::ptr_eq(&s.entry, &gone.value)
        }) {
            slot.remove();
            drop(shard);
            if !gone.value.tags().is_empty() {
                let mut tags = self.tags();
                for t in gone.value.tags() {
                    forget_tag(&mut tags, t, &gone.key);
                }
            }
        }
    }

    /// Drops from the index what an insert evicted for room. (What it replaced is not dropped:
    /// the index holds the new value already, and a re-insert replaces an entry by itself.)
    fn unindex_evicted(&self, gone: &[Evicted<Arc<str>, Arc<Entry>>]) {
        for e in gone.iter().filter(|e| e.cause == Removal::Size) {
            self.unindex(e);
        }
    }

    /// The policy's lock, the buffered reads applied and one step of maintenance done.
    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock leaves a consistent map (every mutation completes
        // before anything can panic), so a poisoned lock is used as it is.
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.locked(state)
    }

    /// As `lock`, if nobody holds it.
    fn try_lock(&self) -> Option<Locked<'_>> {
        let state = match self.state.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(self.locked(state))
    }

    fn locked<'a>(&'a self, state: MutexGuard<'a, State>) -> Locked<'a> {
        let mut locked = Locked {
            inner: self,
            state: Some(state),
            gone: Vec::new(),
            now: self.clock.now_ms(),
        };
        locked.maintain();
        locked
    }

    /// Counts what left on its own, but not what a hard tag purge under way counted already
    /// (dropping `gone` afterwards frees the values, unlocked).
    fn count(&self, gone: &[Evicted<Arc<str>, Arc<Entry>>], now: u64) {
        for e in gone {
            match e.cause {
                Removal::Replaced => {}
                // A hard tag purge counted it when it began, though its sweep had yet to
                // reach it: not counted twice.
                Removal::Size
                    if self.sweeping.load(Ordering::Acquire) > 0
                        && matches!(self.swept(&e.key, &e.value), Some(Swept::Gone)) => {}
                // An entry past its stale window left because it expired, whatever made room.
                Removal::Size if e.value.stale_until_ms <= now => {
                    self.metrics.evicted(EvictionCause::Expired)
                }
                Removal::Size => self.metrics.evicted(EvictionCause::Size),
            }
        }
    }
}

/// A round of a tier's expiry sweep under way (see [`MemoryTier::round`]): the sweeper runs
/// a quiet tier's a slice at a time between its purge jobs' steps.
struct Round {
    tier: MemoryTier,
    /// Takings of the policy's lock left.
    left: usize,
}

impl Round {
    /// Takes the policy's lock up to `n` more times, two steps of the sweep each; whether the
    /// round has more to do.
    fn run(&mut self, n: usize) -> bool {
        for _ in 0..n.min(self.left) {
            self.tier.inner.lock().sweep_step();
            self.left -= 1;
        }
        self.left > 0
    }
}

/// Drops `key` from `tag`'s set, and the set once empty.
fn forget_tag(tags: &mut HashMap<Box<str>, IndexSet<Arc<str>>>, tag: &str, key: &Arc<str>) {
    if let Some(keys) = tags.get_mut(tag) {
        keys.swap_remove(key);
        if keys.is_empty() {
            tags.remove(tag);
        }
    }
}

impl MemoryTier {
    /// A tier holding at most `max_bytes` of heap (entries, keys and the policy's structures,
    /// including its frequency sketch and mini-simulations); evictions are counted in `metrics`.
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        Self::with_clock(max_bytes, metrics, Clock::system())
    }

    /// As [`MemoryTier::new`], with time read from `clock` (tests move a manual one).
    pub fn with_clock(max_bytes: u64, metrics: Arc<Metrics>, clock: Clock) -> Self {
        let state = State {
            policy: Adaptive::new(
                capacity_bytes(max_bytes),
                ENTRY_OVERHEAD_BYTES as u64,
                sim_bytes(max_bytes),
            ),
            hand: 0,
            epoch_ms: clock.now_ms(),
        };
        let tier = MemoryTier {
            inner: Arc::new(Inner {
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
                reads: ReadBuffer::new(),
                state: Mutex::new(state),
                tags: Mutex::default(),
                sweeps: Mutex::default(),
                sweeping: AtomicUsize::new(0),
                laps: AtomicU64::new(0),
                metrics,
                clock,
            }),
        };
        sweeper::watch(&tier);
        tier
    }

    /// The bound (`MEMORY_CACHE_MAX_BYTES`) that leaves at least `entry_bytes` for entries once
    /// the policy's own structures are set aside: for sizing a tier by what it should hold.
    pub fn bound_for(entry_bytes: u64) -> u64 {
        let mut bound = entry_bytes;
        // The reserve grows with the bound, by steps: a few rounds settle it.
        while capacity_bytes(bound) < entry_bytes {
            bound += entry_bytes - capacity_bytes(bound);
        }
        bound
    }

    /// Bytes held by entries (their weights). The policy's own structures are not included: they
    /// are set aside at start.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().policy.real.weighted_size()
    }

    /// Entries held.
    pub fn entries(&self) -> u64 {
        self.inner.lock().policy.real.len() as u64
    }

    /// Removes every entry past its stale window now (the sweep otherwise frees them a step at
    /// a time), so `bytes` and the eviction counts are exact. One whole round of the sweep's
    /// hand from wherever it stands, a step per lock taken.
    pub fn settle(&self) {
        self.round().run(usize::MAX);
    }

    /// A whole round of the expiry sweep from wherever its hand stands, to be run a few takings
    /// of the policy's lock at a time.
    fn round(&self) -> Round {
        let steps = self.inner.lock().policy.real.slots().div_ceil(eviction::STEP);
        Round {
            tier: self.clone(),
            // `lock` does a step of its own: two a taking.
            left: steps.div_ceil(2),
        }
    }

    /// Rounds the expiry sweep's hand has gone since the tier began.
    fn laps(&self) -> u64 {
        self.inner.laps.load(Ordering::Relaxed)
    }

    /// The window share the adaptive policy uses now (1.0: a plain LRU): for the replay report
    /// and the `memory_cache_window_ratio` gauge (read at each scrape, under the policy's lock).
    pub fn window_share(&self) -> f64 {
        self.inner.lock().policy.window_share()
    }

    /// How far the adaptive policy's current epoch has run (0 to 1; the share may change when it
    /// ends): the `memory_cache_window_epoch_progress` gauge, read at each scrape.
    pub fn window_epoch_progress(&self) -> f64 {
        self.inner.lock().policy.epoch_progress()
    }

    /// Checks that the index and the policy hold the same entries (tests).
    #[cfg(test)]
    fn check(&self) {
        let locked = self.inner.lock();
        let mut indexed = 0;
        for shard in self.inner.shards.iter() {
            for slot in shard.read().unwrap().iter() {
                let held = locked.policy.real.peek(slot.hash, &*slot.key);
                assert!(
                    held.is_some_and(|e| Arc::ptr_eq(e, &slot.entry)),
                    "{} indexed",
                    slot.key
                );
                indexed += 1;
            }
        }
        assert_eq!(indexed, locked.policy.real.len());
        // The tag index holds exactly the tags of the entries indexed.
        let tags = self.inner.tags();
        let mut memberships = 0;
        for shard in self.inner.shards.iter() {
            for slot in shard.read().unwrap().iter() {
                for t in slot.entry.tags() {
                    assert!(
                        tags.get(&**t).is_some_and(|k| k.contains(&slot.key)),
                        "{} in {t}",
                        slot.key
                    );
                    memberships += 1;
                }
            }
        }
        assert_eq!(
            memberships,
            tags.values().map(IndexSet::len).sum::<usize>(),
            "no stale memberships"
        );
    }

    /// Records a read for the policy; applies the buffered reads when a stripe is full and
    /// nobody holds the policy.
    fn record(&self, hash: u64) {
        if self.inner.reads.record(hash) {
            drop(self.inner.try_lock());
        }
    }

    /// The tier's time now, for [`MemoryTier::get_at`]: a hit path that looks up more than one
    /// key (the proxy's marker, then its variant) reads the clock once.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// [`Tier::get_now`] as of `now_ms` (the tier's clock, read by the caller).
    pub fn get_at(&self, key: &str, now_ms: u64) -> Option<Option<Arc<Entry>>> {
        let hash = self.inner.hasher.hash_one(key);
        // Read before the index: a sweep that ends between the look in the index and this
        // read (its last step purging the entry found) would otherwise go unseen.
        let sweeping = self.inner.sweeping.load(Ordering::Acquire) != 0;
        let found = self.inner.find(hash, key);
        let found = match found {
            Some(e) if sweeping && !e.tags().is_empty() => {
                match self.inner.swept(key, &e) {
                    // In no sweep now. A sweep's step takes the entry out of the index before
                    // the key out of the sweep, so a step that purged it between the two looks
                    // shows here as an entry no longer indexed: a miss, not the purged entry.
                    None => match self.inner.find(hash, key) {
                        Some(again) if Arc::ptr_eq(&again, &e) => Some(e),
                        _ => {
                            self.record(hash);
                            return Some(None);
                        }
                    },
                    Some(Swept::Gone) => {
                        self.record(hash);
                        return Some(None);
                    }
                    Some(Swept::StaleAt(at)) => Some(Arc::new(e.marked_stale(at))),
                }
            }
            found => found,
        };
        match found {
            Some(e) if now_ms < e.stale_until_ms => {
                self.record(hash);
                Some(Some(e))
            }
            Some(e) => {
                // Past its stale window: never served, and gone now if the policy is free
                // (else the sweep frees it).
                match self.inner.try_lock() {
                    Some(mut locked) => {
                        locked.policy.record_read(hash, None);
                        if locked
                            .policy
                            .real
                            .peek(hash, key)
                            .is_some_and(|held| Arc::ptr_eq(held, &e))
                        {
                            locked.remove(hash, key, Removal::Size);
                        }
                    }
                    None => self.record(hash),
                }
                Some(None)
            }
            None => {
                self.record(hash);
                Some(None)
            }
        }
    }
}

impl Tier for MemoryTier {
    fn name(&self) -> TierName {
        TierName::Memory
    }

    fn shared(&self) -> bool {
        false
    }

    fn clear_own(&self) {
        let mut locked = self.inner.lock();
        let gone = locked.policy.real.clear();
        let tables: Vec<HashTable<Slot>> = self
            .inner
            .shards
            .iter()
            .map(|s| std::mem::take(&mut *s.write().unwrap_or_else(|p| p.into_inner())))
            .collect();
        locked.hand = 0;
        let tags = std::mem::take(&mut *self.inner.tags());
        drop(locked);
        drop((gone, tables, tags));
    }

    async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, TierError> {
        Ok(self.get_now(key).flatten())
    }

    fn get_now(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        self.get_at(key, self.inner.clock.now_ms())
    }

    async fn put(&self, key: &str, entry: Arc<Entry>) -> Result<bool, TierError> {
        let weight = u64::from(entry.weight(key));
        let until = entry.stale_until_ms;
        let hash = self.inner.hasher.hash_one(key);
        let mut locked = self.inner.lock();
        if until <= locked.now || weight > locked.policy.real.maximum() {
            // Not servable, or bigger than the whole tier: not stored, and the value it
            // replaces (now superseded) goes too.
            locked.remove(hash, key, Removal::Replaced);
            return Ok(false);
        }
        let kept = locked.insert(hash, Arc::from(key), entry, weight, true);
        Ok(kept)
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        let hash = self.inner.hasher.hash_one(key);
        self.inner.lock().remove(hash, key, Removal::Replaced);
        Ok(())
    }

    fn reweigh(&self, key: &str, entry: &Arc<Entry>) {
        let weight = u64::from(entry.weight(key));
        let hash = self.inner.hasher.hash_one(key);
        let mut locked = self.inner.lock();
        // Put back only the very entry held now: never one a purge removed, or a newer one.
        let held = locked
            .policy
            .real
            .peek(hash, key)
            .is_some_and(|e| Arc::ptr_eq(e, entry));
        if held && weight <= locked.policy.real.maximum() {
            let mut gone = Vec::new();
            let until = locked.until(entry.stale_until_ms);
            locked
                .policy
                .real
                .insert_until(hash, Arc::from(key), entry.clone(), weight, until, &mut gone);
            self.inner.unindex_evicted(&gone);
            locked.gone.extend(gone);
        }
    }

    async fn purge(&self, key: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        // Under one taking of the policy's lock, on the entry held then: a store cannot come
        // between the look and the act (and be overwritten by a stale copy of an older value).
        let hash = self.inner.hasher.hash_one(key);
        // Most keys a purge names are not here: looked up in the index, without the lock.
        if self.inner.find(hash, key).is_none() {
            return Ok(0);
        }
        let mut locked = self.inner.lock();
        let Some(held) = locked.policy.real.peek(hash, key).cloned() else {
            return Ok(0);
        };
        locked.purge_held(hash, &Arc::from(key), &held, None, mode, now_ms);
        Ok(1)
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        let Some((mut job, count)) = self.begin_tag_purge(tag, mode, now_ms) else {
            return Ok(0);
        };
        if count > SWEEP_INLINE_MAX {
            // A large tag: in effect now, swept in the background at a pace that leaves the
            // cores to hits and to the rest of the purge. The count is the entries it applies
            // to: every one the tag's index held.
            sweeper::submit(job);
            return Ok(count);
        }
        let (done, swept) = tokio::sync::oneshot::channel();
        job.done = Some(done);
        sweeper::submit(job);
        // The job always reports (its drop does), even if a step panicked.
        Ok(swept.await.unwrap_or(0))
    }
}

/// A tag purge of at most this many memory-tier entries is swept before it answers; a larger
/// one answers once it is in effect (see [`Sweep`]) and is swept in the background.
const SWEEP_INLINE_MAX: u64 = 10_000;

impl MemoryTier {
    /// Puts a tag purge in effect: the tag's set is taken out whole (entries stored from now on
    /// start a new one) and becomes a sweep, which takes effect for hits at once. Its entries
    /// are then purged by the returned job, PURGE_STEP at a time on the sweeper thread: no step
    /// holds the policy's lock long, and hits never take it. With the job, how many entries
    /// it applies to; `None`: no entry carries the tag.
    fn begin_tag_purge(&self, tag: &str, mode: PurgeMode, now_ms: u64) -> Option<(sweeper::Job, u64)> {
        // Under the policy's lock, so that no step of a sweep of the tag comes between.
        let _locked = self.inner.lock();
        let keys = self.inner.tags().remove(tag);
        // A soft purge of the tag still sweeping took its keys out of the index: the ones it
        // has yet to reach would get stale copies after this hard purge began, and be served
        // (stale) after it answered. The soft sweep becomes hard: they are removed instead,
        // and gone for hits from now on.
        let mut hardened = 0;
        if mode == PurgeMode::Hard {
            let mut sweeps = self.inner.sweeps();
            for sweep in sweeps
                .iter_mut()
                .filter(|s| s.stale_at_ms.is_some() && *s.tag == *tag)
            {
                sweep.stale_at_ms = None;
                hardened += sweep.keys.len() as u64;
            }
        }
        if keys.is_none() && hardened == 0 {
            return None;
        }
        let keys = keys.unwrap_or_default();
        let count = keys.len() as u64 + hardened;
        let id = self
            .inner
            .begin_sweep(tag, keys, mode, now_ms, count > SWEEP_INLINE_MAX);
        let job = sweeper::Job {
            tier: self.clone(),
            id,
            tag: tag.into(),
            mode,
            now_ms,
            done: None,
            purged: 0,
        };
        Some((job, count))
    }

    /// One step of the sweep `id` (a `tag` purge of `mode` at `now_ms`): up to PURGE_STEP of
    /// its keys whose entry it still applies to are purged, under one taking of the policy's
    /// lock (their stale copies made before it), and leave the sweep. How many entries it
    /// purged; `None` once the sweep is done.
    fn sweep_step(&self, id: u64, tag: &str, mode: PurgeMode, now_ms: u64) -> Option<u64> {
        let keys = self.inner.sweep_keys(id, PURGE_STEP);
        if keys.is_empty() {
            return None;
        }
        // (hash, key, the entry looked at, its stale copy for a soft purge)
        type Found<'k> = (u64, &'k Arc<str>, Arc<Entry>, Option<Arc<Entry>>);
        let found: Vec<Found<'_>> = keys
            .iter()
            .filter_map(|key| {
                let hash = self.inner.hasher.hash_one(&**key);
                let entry = self.inner.find(hash, key).filter(|e| e.has_tag(tag))?;
                let stale = (mode == PurgeMode::Soft).then(|| Arc::new(entry.marked_stale(now_ms)));
                Some((hash, key, entry, stale))
            })
            .collect();
        let mut purged = 0;
        let mut locked = self.inner.lock();
        // What the lock's upkeep freed (a step of the expiry sweep) is counted now, while this
        // step's keys are still in the sweep: an expired entry among them is this purge's, which
        // counted it when it began (counted at the unlock, after the keys left, it was counted
        // again as expired).
        let upkeep = std::mem::take(&mut locked.gone);
        self.inner.count(&upkeep, locked.now);
        // Under the policy's lock no store comes between: a key still in the sweep now was
        // not stored again since the purge began (a store takes it out, see `Inner::index`).
        // (still in this sweep, counted already by a large hard purge under way that has yet
        // to reach it: purged here all the same, but not counted twice)
        let (pending, hardened): (Vec<(bool, bool)>, bool) = {
            let sweeps = self.inner.sweeps();
            let sweep = sweeps.iter().find(|s| s.id == id);
            // A soft sweep a hard purge of its tag has made hard (see `begin_tag_purge`).
            let hardened = mode == PurgeMode::Soft && sweep.is_some_and(|s| s.stale_at_ms.is_none());
            let counted = |key: &str| {
                sweeps
                    .iter()
                    .any(|s| s.id != id && s.counted && s.stale_at_ms.is_none() && s.keys.contains(key))
            };
            let pending = found
                .iter()
                .map(|(_, key, ..)| {
                    let pending = sweep.is_some_and(|s| s.keys.contains(&***key));
                    (pending, pending && counted(key))
                })
                .collect();
            (pending, hardened)
        };
        let mode = if hardened { PurgeMode::Hard } else { mode };
        for ((hash, key, entry, stale), (pending, counted)) in found.into_iter().zip(pending) {
            let stale = stale.filter(|_| !hardened);
            if !pending {
                continue;
            }
            let same = locked
                .policy
                .real
                .peek(hash, &**key)
                .is_some_and(|held| Arc::ptr_eq(held, &entry));
            if same {
                locked.purge_held(hash, key, &entry, stale, mode, now_ms);
                purged += u64::from(!counted);
                continue;
            }
            // Another purge has put its stale copy in place of the entry looked at (no store
            // has, or the key would not be pending): that copy is no newer than this purge
            // and is purged all the same.
            let Some(held) = locked.policy.real.peek(hash, &**key).cloned() else {
                continue;
            };
            if held.has_tag(tag) {
                locked.purge_held(hash, key, &held, None, mode, now_ms);
                purged += u64::from(!counted);
            }
        }
        // Only now, with their entries purged, do the keys leave the sweep.
        let mut sweeps = self.inner.sweeps();
        if let Some(sweep) = sweeps.iter_mut().find(|s| s.id == id) {
            for key in &keys {
                sweep.keys.swap_remove(key);
            }
        }
        drop(sweeps);
        drop(locked);
        Some(purged)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;
    use crate::cache::policy::Lifetimes;

    fn life() -> Lifetimes {
        Lifetimes::fixed(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn byte_bound_holds_under_a_flood_of_unique_keys() {
        let tier = MemoryTier::new(64 * 1024, Arc::new(Metrics::detached()));
        for i in 0..5_000 {
            let key = format!("key-{i}");
            let e = Entry::value(&key, br#""some value of moderate length""#, now_ms(), &life());
            tier.put(&key, Arc::new(e)).await.unwrap();
            assert!(
                tier.bytes() <= capacity_bytes(64 * 1024),
                "bytes {} over bound at {i}",
                tier.bytes()
            );
        }
        tier.settle();
        assert!(
            tier.entries() > 40,
            "the tier keeps what fits: {}",
            tier.entries()
        );
    }

    #[test]
    fn the_policy_is_paid_for_out_of_the_bound() {
        // 32 MiB: up to 69,905 entries of 480 B, a sketch of 2^17 words (1 MiB), and six
        // mini-simulations of 1 MiB / 480 B entries each.
        let minis = 6 * ((1 << 20) / ENTRY_OVERHEAD_BYTES as u64 + 1) * super::eviction::MINI_ENTRY_BYTES;
        assert_eq!(
            capacity_bytes(32 << 20),
            (32 << 20) - (1 << 20) - minis - fixed_bytes()
        );
        assert_eq!(std::mem::size_of::<Stripe>(), 384);
        // A small tier gives its simulations an eighth of its bound at most.
        assert_eq!(sim_bytes(64 << 10), 8 << 10);
        assert_eq!(capacity_bytes(1), 1);
        let bound = MemoryTier::bound_for(1_000_000);
        assert_eq!(capacity_bytes(bound), 1_000_000);
    }

    fn entry(key: &str, now: u64, life: &Lifetimes) -> Arc<Entry> {
        Arc::new(Entry::value(key, br#""v""#, now, life))
    }

    /// Fresh for `ttl`, then stale for as long, then gone.
    fn short(ttl: Duration) -> Lifetimes {
        Lifetimes {
            ttl,
            stale: ttl,
            ..life()
        }
    }

    /// An entry of `key` stored at `now` that carries `tags`.
    fn tagged(key: &str, tags: &[&str], now: u64, life: &Lifetimes) -> Arc<Entry> {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        Arc::new(Entry::value(key, b"1", now, life).with_tags(&tags))
    }

    /// A tier of `bound` bytes on a manual clock, with its metrics.
    fn manual_tier(bound: u64) -> (MemoryTier, Arc<Metrics>, Clock) {
        let metrics = Arc::new(Metrics::detached());
        let clock = Clock::manual(1_700_000_000_000);
        (
            MemoryTier::with_clock(bound, metrics.clone(), clock.clone()),
            metrics,
            clock,
        )
    }

    #[tokio::test]
    async fn entries_past_their_stale_window_are_never_served_and_counted_as_expired() {
        let (tier, metrics, clock) = manual_tier(1 << 20);
        let short = short(Duration::from_secs(20));
        let now = clock.now_ms();
        tier.put("read", entry("read", now, &short)).await.unwrap();
        tier.put("unread", entry("unread", now, &short)).await.unwrap();
        tier.put("long", entry("long", now, &life())).await.unwrap();
        clock.advance(Duration::from_secs(41));
        // Read after expiry: not served, removed at once (and the sweep step its removal
        // takes may free the other one too).
        assert_eq!(tier.get_now("read"), Some(None));
        assert!(metrics.evictions(EvictionCause::Expired) >= 1);
        // Never read: removed by the sweep by the next write at the latest, without a read.
        tier.put("other", entry("other", clock.now_ms(), &life()))
            .await
            .unwrap();
        assert_eq!(metrics.evictions(EvictionCause::Expired), 2);
        assert_eq!(tier.entries(), 2);
        assert_eq!(metrics.evictions(EvictionCause::Size), 0);
        assert!(tier.get("long").await.unwrap().is_some());
    }

    #[test]
    fn a_quiet_tier_frees_its_expired_entries_with_no_traffic() {
        let (tier, metrics, clock) = manual_tier(1 << 24);
        let short = short(Duration::from_secs(10));
        for i in 0..10_000 {
            let key = format!("k{i}");
            let e = entry(&key, clock.now_ms(), &short);
            tier.put(&key, e).now_or_never().expect("in memory").unwrap();
        }
        clock.advance(Duration::from_secs(60));
        // From now on nothing reads or writes the tier (nor looks at it: that takes its lock and
        // moves the sweep): the sweeper finds its sweep standing still and frees them.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while metrics.evictions(EvictionCause::Expired) < 10_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of 10,000 expired entries freed after 60 s",
                metrics.evictions(EvictionCause::Expired)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(tier.entries(), 0);
    }

    #[tokio::test]
    async fn a_replaced_entry_keeps_its_newer_expiry() {
        let (tier, metrics, clock) = manual_tier(1 << 20);
        let short = short(Duration::from_secs(10));
        tier.put("k", entry("k", clock.now_ms(), &short)).await.unwrap();
        tier.put("k", entry("k", clock.now_ms(), &life())).await.unwrap();
        clock.advance(Duration::from_secs(40));
        tier.settle();
        assert!(tier.get_now("k").unwrap().is_some());
        assert_eq!(metrics.evictions(EvictionCause::Expired), 0);
    }

    #[tokio::test]
    async fn size_evictions_are_counted_and_popular_keys_survive_a_scan() {
        let metrics = Arc::new(Metrics::detached());
        let weight = u64::from(entry("hot-00", now_ms(), &life()).weight("hot-00"));
        let tier = MemoryTier::new(MemoryTier::bound_for(100 * weight), metrics.clone());
        // 50 popular keys read again and again between bursts of one-off keys (a scan).
        for round in 0..40 {
            for k in 0..50 {
                let key = format!("hot-{k:02}");
                if tier.get_now(&key) == Some(None) {
                    tier.put(&key, entry(&key, now_ms(), &life())).await.unwrap();
                }
            }
            for k in 0..200 {
                let key = format!("cold-{round:03}-{k:03}");
                tier.put(&key, entry(&key, now_ms(), &life())).await.unwrap();
            }
        }
        let hot = (0..50)
            .filter(|k| matches!(tier.get_now(&format!("hot-{k:02}")), Some(Some(_))))
            .count();
        assert!(hot >= 45, "popular keys kept: {hot} of 50");
        assert!(tier.entries() <= 100);
        assert!(metrics.evictions(EvictionCause::Size) >= 40 * 200 - 100);
        assert_eq!(metrics.evictions(EvictionCause::Expired), 0);
    }

    #[tokio::test]
    async fn an_entry_bigger_than_the_tier_is_not_stored_and_supersedes_the_old_one() {
        let tier = MemoryTier::new(MemoryTier::bound_for(4096), Arc::new(Metrics::detached()));
        tier.put("k", entry("k", now_ms(), &life())).await.unwrap();
        let big = serde_json::to_vec(&"x".repeat(8192)).unwrap();
        tier.put("k", Arc::new(Entry::value("k", &big, now_ms(), &life())))
            .await
            .unwrap();
        assert_eq!(tier.get_now("k"), Some(None));
        assert_eq!(tier.bytes(), 0);
    }

    #[tokio::test]
    async fn a_reweighed_entry_is_still_served() {
        let tier = MemoryTier::new(1 << 20, Arc::new(Metrics::detached()));
        let e = entry("k", now_ms(), &life());
        tier.put("k", e.clone()).await.unwrap();
        tier.reweigh("k", &e);
        assert!(
            tier.get_now("k")
                .unwrap()
                .is_some_and(|held| Arc::ptr_eq(&held, &e))
        );
        tier.check();
    }

    #[test]
    fn hits_writes_purges_and_expiries_from_many_threads_keep_index_and_policy_in_step() {
        let weight = u64::from(entry("k-0000", now_ms(), &life()).weight("k-0000"));
        let tier = MemoryTier::new(MemoryTier::bound_for(500 * weight), Arc::new(Metrics::detached()));
        let short = short(Duration::from_millis(1));
        std::thread::scope(|s| {
            for t in 0..6u64 {
                let tier = tier.clone();
                s.spawn(move || {
                    let mut x = t + 1;
                    for _ in 0..20_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = format!("k-{:04}", x % 1_000);
                        let tag = [format!("t{}", x % 7)];
                        match x % 12 {
                            0 => drop(tier.remove(&key).now_or_never()),
                            10 => drop(
                                tier.put(
                                    &key,
                                    Arc::new(Entry::value(&key, b"1", now_ms(), &life()).with_tags(&tag)),
                                )
                                .now_or_never(),
                            ),
                            11 => drop(tier.purge_tag(&tag[0], PurgeMode::Soft, now_ms()).now_or_never()),
                            1 => drop(tier.put(&key, entry(&key, now_ms(), &short)).now_or_never()),
                            2 | 3 => drop(tier.put(&key, entry(&key, now_ms(), &life())).now_or_never()),
                            4 => {
                                if let Some(Some(e)) = tier.get_now(&key) {
                                    tier.reweigh(&key, &e);
                                }
                            }
                            _ => drop(tier.get_now(&key)),
                        }
                    }
                });
            }
        });
        // The purges' sweeps outlive the calls that began them (a purge, once begun, lands).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while tier.inner.sweeping.load(Ordering::Acquire) != 0 {
            assert!(std::time::Instant::now() < deadline, "the sweeps end");
            std::thread::sleep(Duration::from_millis(5));
        }
        tier.check();
        tier.settle();
        tier.check();
        assert!(tier.entries() > 0 && tier.entries() <= 500);
    }

    #[tokio::test]
    async fn a_tag_purge_finds_its_entries_through_the_index_and_spares_the_rest() {
        let tier = MemoryTier::new(64 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        for i in 0..10_000 {
            let key = format!("k{i}");
            let tags: &[&str] = if i % 2 == 0 { &["even"] } else { &["odd", "all"] };
            tier.put(&key, tagged(&key, tags, now, &life())).await.unwrap();
        }
        // A key that changed tags is purged by its new tag only.
        tier.put("k1", tagged("k1", &["even"], now, &life()))
            .await
            .unwrap();
        tier.check();
        assert_eq!(tier.purge_tag("odd", PurgeMode::Hard, now).await.unwrap(), 4_999);
        assert!(tier.get_now("k3").unwrap().is_none());
        assert!(tier.get_now("k1").unwrap().is_some(), "k1 carries even now");
        assert_eq!(tier.purge_tag("nobody", PurgeMode::Hard, now).await.unwrap(), 0);
        assert_eq!(tier.purge_tag("even", PurgeMode::Soft, now).await.unwrap(), 5_001);
        let e = tier.get_now("k2").unwrap().unwrap();
        assert!(matches!(e.freshness(now), crate::cache::Freshness::Stale { .. }));
        assert_eq!(tier.entries(), 5_001);
        tier.check();
        // Stale copies carry their tag still: a hard purge of it finds them.
        assert_eq!(tier.purge_tag("even", PurgeMode::Hard, now).await.unwrap(), 5_001);
        assert_eq!(tier.entries(), 0);
        tier.check();
        assert!(tier.inner.tags().is_empty(), "empty sets are dropped");
    }

    /// A purge takes effect for hits when it begins, not when its sweep reaches each entry: a
    /// second replica (or this one) may take seconds to sweep a million entries.
    #[tokio::test]
    async fn a_tag_purge_is_in_effect_for_every_entry_before_its_sweep_reaches_it() {
        let n = 3 * SWEEP_INLINE_MAX as usize;
        let tier = MemoryTier::new(256 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        let tagged = |key: &str, tags: &[&str], v: &[u8]| {
            let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
            Arc::new(Entry::value(key, v, now, &life()).with_tags(&tags))
        };
        for i in 0..n {
            let key = format!("k{i}");
            tier.put(&key, tagged(&key, &["big"], b"1")).await.unwrap();
        }
        tier.put("other", tagged("other", &["small"], b"1"))
            .await
            .unwrap();
        for mode in [PurgeMode::Soft, PurgeMode::Hard] {
            // Begun, and one step made, as the sweeper would.
            let (mut job, count) = tier.begin_tag_purge("big", mode, now).expect("tagged");
            assert_eq!(count, n as u64, "{mode:?}: the entries it applies to");
            assert!(job.step());
            assert_eq!(tier.inner.sweeping.load(Ordering::Acquire), 1);
            assert!(
                tier.entries() > (n - 2 * PURGE_STEP) as u64,
                "most entries are not swept yet"
            );
            let mut served_fresh = 0;
            for i in 0..n {
                match (mode, tier.get_now(&format!("k{i}"))) {
                    (PurgeMode::Hard, Some(None)) => {}
                    (PurgeMode::Soft, Some(Some(e)))
                        if matches!(e.freshness(now + 1), crate::cache::Freshness::Stale { .. }) => {}
                    _ => served_fresh += 1,
                }
            }
            assert_eq!(served_fresh, 0, "{mode:?}: no entry of the tag is served fresh");
            assert!(
                tier.get_now("other").unwrap().is_some(),
                "other tags are untouched"
            );
            // Stored again after the purge began: newer than it, served and never swept.
            tier.put("k7", tagged("k7", &["big"], b"2")).await.unwrap();
            let again = tier.get_now("k7").unwrap().expect("stored after the purge");
            assert!(matches!(
                again.freshness(now),
                crate::cache::Freshness::Fresh { .. }
            ));
            job.run_here();
            assert_eq!(tier.inner.sweeping.load(Ordering::Acquire), 0);
            let after = tier.get_now("k7").unwrap().expect("the sweep left it");
            assert!(Arc::ptr_eq(&after, &again));
            tier.check();
        }
        assert_eq!(tier.entries(), 2, "k7 and other");
    }

    /// Two tag purges under way at once that share entries count each entry once: a small
    /// purge whose sweep reaches an entry before the large purge that counted it when it began
    /// (and answered with that count) purges it, and does not count it again.
    #[tokio::test]
    async fn overlapping_tag_purges_count_each_shared_entry_once() {
        let tier = MemoryTier::new(256 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        let n = 3 * SWEEP_INLINE_MAX as usize;
        for i in 0..n {
            let key = format!("k{i}");
            // Every tenth entry also carries "tenth".
            let tags: &[&str] = if i % 10 == 0 { &["all", "tenth"] } else { &["all"] };
            tier.put(&key, tagged(&key, tags, now, &life())).await.unwrap();
        }
        tier.put("alone", tagged("alone", &["tenth"], now, &life()))
            .await
            .unwrap();
        // The large purge counts all it applies to when it begins, and has swept one step.
        let (mut all, counted) = tier.begin_tag_purge("all", PurgeMode::Hard, now).expect("tagged");
        assert_eq!(counted, n as u64);
        assert!(all.step());
        // The small one, swept whole meanwhile: it counts only what the large one did not.
        let (mut tenth, _) = tier
            .begin_tag_purge("tenth", PurgeMode::Hard, now)
            .expect("tagged");
        while tenth.step() {}
        assert_eq!(
            tenth.purged, 1,
            "only `alone`: the rest were counted by the large purge"
        );
        drop(tenth);
        assert!(
            (0..n)
                .step_by(10)
                .all(|i| tier.get_now(&format!("k{i}")).unwrap().is_none())
        );
        all.run_here();
        assert_eq!(tier.entries(), 0);
        tier.check();
    }

    /// An entry a hard tag purge counted when it began leaves, if it expires before the purge's
    /// sweep reaches it, uncounted: not as purged and expired both.
    #[tokio::test]
    async fn an_entry_a_tag_purge_counted_is_not_counted_again_when_it_expires() {
        let (tier, metrics, clock) = manual_tier(256 << 20);
        let short = short(Duration::from_secs(10));
        let n = 3 * SWEEP_INLINE_MAX;
        for i in 0..n {
            let key = format!("big-{i}");
            tier.put(&key, tagged(&key, &["big"], clock.now_ms(), &short))
                .await
                .unwrap();
        }
        // A large tag: answered at once with its count, swept in the background, paced.
        let purged = tier
            .purge_tag("big", PurgeMode::Hard, clock.now_ms())
            .await
            .unwrap();
        assert_eq!(purged, n);
        // Before the sweep is done, the entries expire and the expiry sweep takes them.
        clock.advance(Duration::from_secs(60));
        tier.settle();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while tier.inner.sweeping.load(Ordering::Acquire) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the tag's sweep never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(tier.entries(), 0);
        assert_eq!(metrics.evictions(EvictionCause::Expired), 0);
    }

    /// A hard purge of a tag whose soft purge is still sweeping removes every entry of the tag,
    /// the ones the soft sweep has yet to reach included: they were left to get stale copies
    /// after the hard purge began, and were served (stale) after it answered.
    #[tokio::test]
    async fn a_hard_purge_during_a_soft_sweep_of_the_same_tag_removes_every_entry() {
        let tier = MemoryTier::new(256 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        let n = 3 * SWEEP_INLINE_MAX as usize;
        for i in 0..n {
            let key = format!("k{i}");
            tier.put(&key, tagged(&key, &["x"], now, &life())).await.unwrap();
        }
        let (mut soft, _) = tier.begin_tag_purge("x", PurgeMode::Soft, now).expect("tagged");
        assert!(soft.step());
        // The hard purge begins after one soft step: it applies to every entry.
        let (hard, count) = tier
            .begin_tag_purge("x", PurgeMode::Hard, now + 1)
            .expect("tagged");
        assert_eq!(count, n as u64);
        assert!((0..n).all(|i| tier.get_now(&format!("k{i}")).unwrap().is_none()));
        hard.run_here();
        soft.run_here();
        assert_eq!(tier.entries(), 0, "no stale copy left");
        assert!(tier.inner.tags().is_empty());
        tier.check();
    }

    /// A hit that races a sweep's step over the very entry it found never serves it: the step
    /// may take the key out of the sweep between the hit's look in the index and its look in
    /// the sweep (it did: a purged entry was served, about once in a few hundred runs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hit_racing_the_sweep_step_of_its_entry_never_serves_it() {
        let tier = MemoryTier::new(256 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        let n = 2 * SWEEP_INLINE_MAX as usize;
        let keys: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("r{i}")).collect());
        for key in keys.iter() {
            tier.put(key, tagged(key, &["race"], now, &life())).await.unwrap();
        }
        assert_eq!(
            tier.purge_tag("race", PurgeMode::Hard, now).await.unwrap(),
            n as u64
        );
        // The sweep takes the keys from the last stored back; readers follow it closely.
        let served = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (tier, keys, served) = (tier.clone(), keys.clone(), served.clone());
                std::thread::spawn(move || {
                    let deadline = std::time::Instant::now() + Duration::from_secs(30);
                    while tier.inner.sweeping.load(Ordering::Acquire) != 0
                        && std::time::Instant::now() < deadline
                    {
                        for key in keys.iter().rev() {
                            if matches!(tier.get_now(key), Some(Some(_))) {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().expect("no panic");
        }
        assert_eq!(tier.entries(), 0, "swept");
        assert_eq!(served.load(Ordering::Relaxed), 0, "purged entries served");
    }

    /// Through the sweeper thread: a small tag is swept before the purge answers, with the
    /// count it purged; a large one answers at once with the count it applies to and is swept
    /// in the background; a purge whose caller went away lands all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tag_purges_are_swept_on_the_sweeper_thread_and_always_land() {
        let tier = MemoryTier::new(256 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        let fill = |tag: &'static str, n: usize| {
            let tier = tier.clone();
            async move {
                for i in 0..n {
                    let key = format!("{tag}-{i}");
                    let e = Entry::value(&key, b"1", now, &life()).with_tags(&[tag.to_string()]);
                    tier.put(&key, Arc::new(e)).await.unwrap();
                }
            }
        };
        fill("small", 1_000).await;
        fill("large", 2 * SWEEP_INLINE_MAX as usize).await;
        fill("dropped", 5_000).await;
        fill("kept", 10).await;
        assert_eq!(
            tier.purge_tag("small", PurgeMode::Hard, now).await.unwrap(),
            1_000
        );
        assert!((0..1_000).all(|i| tier.get_now(&format!("small-{i}")).unwrap().is_none()));
        assert_eq!(
            tier.purge_tag("large", PurgeMode::Hard, now).await.unwrap(),
            2 * SWEEP_INLINE_MAX
        );
        let _ = tier.purge_tag("dropped", PurgeMode::Hard, now).now_or_never();
        assert!((0..5_000).all(|i| tier.get_now(&format!("dropped-{i}")).unwrap().is_none()));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while tier.inner.sweeping.load(Ordering::Acquire) != 0 || tier.entries() != 10 {
            assert!(std::time::Instant::now() < deadline, "swept: {}", tier.entries());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!((0..10).all(|i| tier.get_now(&format!("kept-{i}")).unwrap().is_some()));
        tier.check();
    }

    /// A soft purge's stale copy is not a store: a hard purge under way at the same time, of
    /// another tag the entries carry (or of the key), still removes them, whichever goes first.
    #[tokio::test]
    async fn a_soft_purge_does_not_rescue_entries_from_a_hard_purge_under_way() {
        let tier = MemoryTier::new(64 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        let both = || ["soft".to_string(), "hard".to_string()];
        for order in ["soft first", "hard first", "soft key purges"] {
            for i in 0..1_000 {
                let key = format!("k{i}");
                let e = Entry::value(&key, b"1", now, &life()).with_tags(&both());
                tier.put(&key, Arc::new(e)).await.unwrap();
            }
            let (mut hard, _) = tier.begin_tag_purge("hard", PurgeMode::Hard, now).unwrap();
            assert!(hard.step(), "{order}: the hard sweep has begun");
            match order {
                "soft first" => {
                    let (soft, _) = tier.begin_tag_purge("soft", PurgeMode::Soft, now).unwrap();
                    soft.run_here();
                    hard.run_here();
                }
                "hard first" => {
                    let (mut soft, _) = tier.begin_tag_purge("soft", PurgeMode::Soft, now).unwrap();
                    assert!(soft.step());
                    hard.run_here();
                    soft.run_here();
                }
                _ => {
                    for i in 0..1_000 {
                        tier.purge(&format!("k{i}"), PurgeMode::Soft, now).await.unwrap();
                    }
                    hard.run_here();
                }
            }
            let served = (0..1_000)
                .filter(|i| tier.get_now(&format!("k{i}")).unwrap().is_some())
                .count();
            assert_eq!(served, 0, "{order}: every entry was hard-purged");
            assert_eq!(tier.entries(), 0, "{order}");
            tier.check();
        }
    }

    /// A sweep that ends before it is done (its step panicked) gives the entries it did not
    /// reach back, served as before and found by a retry, and leaves no sweep behind.
    #[tokio::test]
    async fn a_sweep_ended_half_way_leaves_the_rest_for_a_retry() {
        let tier = MemoryTier::new(64 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        for i in 0..1_000 {
            let key = format!("k{i}");
            let e = Entry::value(&key, b"1", now, &life()).with_tags(&["t".to_string()]);
            tier.put(&key, Arc::new(e)).await.unwrap();
        }
        let (mut job, _) = tier.begin_tag_purge("t", PurgeMode::Hard, now).unwrap();
        assert!(job.step());
        drop(job);
        assert_eq!(
            tier.inner.sweeping.load(Ordering::Acquire),
            0,
            "the sweep ended with it"
        );
        assert_eq!(tier.entries(), 1_000 - PURGE_STEP as u64, "one step was made");
        let served = (0..1_000)
            .filter(|i| tier.get_now(&format!("k{i}")).unwrap().is_some())
            .count();
        assert_eq!(served, 1_000 - PURGE_STEP);
        tier.check();
        assert_eq!(
            tier.purge_tag("t", PurgeMode::Hard, now).await.unwrap(),
            (1_000 - PURGE_STEP) as u64
        );
        assert_eq!(tier.entries(), 0);
        tier.check();
    }

    #[tokio::test]
    async fn clear_own_forgets_everything() {
        let tier = MemoryTier::new(1 << 20, Arc::new(Metrics::detached()));
        for k in 0..10 {
            let key = format!("k{k}");
            tier.put(&key, entry(&key, now_ms(), &life())).await.unwrap();
        }
        tier.clear_own();
        assert_eq!((tier.entries(), tier.bytes()), (0, 0));
        assert_eq!(tier.get_now("k1"), Some(None));
    }

    #[tokio::test]
    async fn get_put_remove_and_soft_purge() {
        let tier = MemoryTier::new(1 << 20, Arc::new(Metrics::detached()));
        let now = now_ms();
        tier.put("k", Arc::new(Entry::value("k", b"1", now, &life())))
            .await
            .unwrap();
        assert!(tier.get("k").await.unwrap().is_some());
        tier.mark_stale("k", now).await.unwrap();
        let e = tier.get("k").await.unwrap().unwrap();
        assert!(matches!(e.freshness(now), crate::cache::Freshness::Stale { .. }));
        tier.remove("k").await.unwrap();
        assert_eq!(tier.get("k").await.unwrap(), None);
    }
}
