//! The memory tier's eviction policy: a weighted W-TinyLFU (Einziger, Friedman, Manes, "TinyLFU:
//! A Highly Efficient Cache Admission Policy", 2017; the design Caffeine implements), single
//! threaded: the memory tier holds it behind its lock.
//!
//! Every entry is in one of three LRU queues:
//! - *window*: every new entry lands here, so a burst of new keys can hit while it is recent;
//! - *probation*: main-space entries not yet used again there; victims come from its head;
//! - *protected*: main-space entries used again while in probation (up to 80 % of main).
//!
//! When the window overflows, its oldest entries move to probation as *candidates*; while the
//! cache is over its maximum, each candidate duels the *victim* (probation's head) on the
//! estimated frequency of their keys (a 4-bit count-min sketch that halves itself every
//! 10 × entries increments, so old popularity fades), and the less frequent one leaves (TinyLFU
//! admission). The window's share of the capacity is set from outside
//! ([`WTinyLfu::set_window_share`]); at 100 % there is no main space and the policy is a plain
//! LRU. [`Adaptive`] picks the share by simulation.
//!
//! Weights are bytes: the maximum, the window and the protected space are in bytes, like
//! Caffeine's `maximumWeight`. Nodes live in an arena (`Vec`) linked by `u32` indices, looked up
//! through a `hashbrown::HashTable` of indices, so an entry costs one node and one table slot.
//! The caller hashes keys (once, before taking any lock) and passes the hash to every call; the
//! mini-simulations' keys are the real keys' hashes, used as their own hash.

use std::borrow::Borrow;
use std::hash::Hash;

use hashbrown::HashTable;

use crate::cache::sketch::{Sketch, spread};

const NIL: u32 = u32::MAX;

/// Share of the main space that protected may hold (Caffeine's and the paper's 80 %: probation
/// keeps a fifth of main for newcomers to prove themselves).
const PROTECTED_SHARE: f64 = 0.80;
/// A candidate at least this popular is admitted 1 time in 128 even when the victim is as
/// popular, so that keeping a victim's count high cannot pin it against all comers (Caffeine's
/// defence against hash flooding of the sketch).
const ADMIT_HASHDOS_THRESHOLD: u8 = 6;
/// Entries one call may move between queues to bring them back to their shares (after the
/// window share changed), and arena slots one expiry sweep step looks at: whole-tier work is
/// done in steps of this size, so that no operation holds the policy for long (a change from a
/// 1 % to a 100 % window over a million entries is spread over thousands of operations).
pub(crate) const STEP: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Window,
    Probation,
    Protected,
}

/// One cached entry and its place in a queue.
struct Node<K, V> {
    /// The key, kept so that an eviction can say what left.
    key: K,
    /// The value handed back by `get`.
    value: V,
    /// The key's hash: table slot, sketch counters and sampling all come from it.
    hash: u64,
    /// The entry's weight in bytes.
    weight: u64,
    /// Neighbours in the queue, towards the head (older) and the tail (newer).
    prev: u32,
    next: u32,
    /// Which queue the node is in.
    queue: Queue,
    /// When the entry stops being worth keeping, in the caller's units (the memory tier: ms
    /// since it started), for the expiry sweep; `NEVER` for none. Kept in the node (it fits its
    /// padding) so that a sweep reads the arena in order and nothing else.
    until: u32,
}

/// An entry's `until` when it never expires on its own.
pub(crate) const NEVER: u32 = u32::MAX;

/// An intrusive doubly linked list over the arena.
#[derive(Clone, Copy)]
struct Deque {
    /// Least recently used (the eviction end).
    head: u32,
    /// Most recently used.
    tail: u32,
}

impl Deque {
    const EMPTY: Deque = Deque { head: NIL, tail: NIL };
}

/// A weighted W-TinyLFU cache of `K` to `V` (see the module doc), keys hashed by `S`.
pub(crate) struct WTinyLfu<K, V> {
    /// The entries; freed slots are reused through `free`.
    nodes: Vec<Option<Node<K, V>>>,
    free: Vec<u32>,
    /// Key hash → arena index.
    table: HashTable<u32>,
    window: Deque,
    probation: Deque,
    protected: Deque,
    /// Bytes the entries may weigh in all.
    maximum: u64,
    weighted_size: u64,
    window_maximum: u64,
    window_weighted_size: u64,
    protected_maximum: u64,
    protected_weighted_size: u64,
    /// The window share grew and the window has not yet taken main's entries up to it.
    growing: bool,
    /// Key popularity, for admission.
    sketch: Sketch,
    /// State of the xorshift used by the hash-flooding defence.
    rng: u64,
}

impl<K: Hash + Eq, V> WTinyLfu<K, V> {
    /// An empty cache of at most `maximum` bytes, its window at `window_share` of them.
    pub(crate) fn new(maximum: u64, window_share: f64) -> Self {
        Self::with_capacity(maximum, window_share, 0)
    }

    /// As `new`, its structures allocated at once for `entries` entries (and its sketch sized),
    /// so that a cache whose entry count is bounded never grows them.
    pub(crate) fn with_capacity(maximum: u64, window_share: f64, entries: usize) -> Self {
        let mut sketch = Sketch::default();
        if entries > 0 {
            sketch.ensure_capacity(entries as u64);
        }
        let mut c = WTinyLfu {
            nodes: Vec::with_capacity(entries + usize::from(entries > 0)),
            free: Vec::new(),
            table: HashTable::with_capacity(entries + usize::from(entries > 0)),
            window: Deque::EMPTY,
            probation: Deque::EMPTY,
            protected: Deque::EMPTY,
            maximum: maximum.max(1),
            weighted_size: 0,
            window_maximum: 0,
            window_weighted_size: 0,
            protected_maximum: 0,
            protected_weighted_size: 0,
            growing: false,
            sketch,
            rng: 0x9e37_79b9_7f4a_7c15,
        };
        c.set_window_share(window_share);
        c
    }

    /// Arena slots the expiry sweep's hand goes round (entries and free slots): a full pass of
    /// the sweep is this many divided by `STEP`, rounded up.
    pub(crate) fn slots(&self) -> usize {
        self.nodes.len()
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes the entries weigh.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.weighted_size
    }

    /// Bytes the entries may weigh in all.
    pub(crate) fn maximum(&self) -> u64 {
        self.maximum
    }

    /// Sets the window to `share` of the capacity (0..=1; 1 makes the policy a plain LRU) and
    /// protected to 80 % of the rest. Entries move between queues [`STEP`] at a time, in this
    /// call and each later insert or [`WTinyLfu::rebalance`], until the queues fit their shares.
    pub(crate) fn set_window_share(&mut self, share: f64) {
        let window = ((share.clamp(0.0, 1.0) * self.maximum as f64).round() as u64).max(1);
        self.window_maximum = window.min(self.maximum);
        self.protected_maximum = (PROTECTED_SHARE * (self.maximum - self.window_maximum) as f64) as u64;
        self.growing = self.window_weighted_size < self.window_maximum;
        self.rebalance();
    }

    /// One step (at most [`STEP`] moves each way) towards queues that fit their shares: a grown
    /// window takes main's most recent entries (they are what an LRU of that size would hold);
    /// an overfull protected space sends its oldest to probation. (A shrunk window sends its
    /// oldest to probation as inserts come, [`STEP`] at most per insert.)
    pub(crate) fn rebalance(&mut self) {
        let mut moves = 0;
        while self.growing && moves < STEP {
            moves += 1;
            let from = if self.protected.tail != NIL {
                Queue::Protected
            } else if self.probation.tail != NIL {
                Queue::Probation
            } else {
                self.growing = false;
                break;
            };
            let i = self.deque(from).tail;
            let w = self.node(i).weight;
            if self.window_weighted_size + w > self.window_maximum {
                self.growing = false;
                break;
            }
            self.unlink(i);
            if from == Queue::Protected {
                self.protected_weighted_size -= w;
            }
            self.window_weighted_size += w;
            self.push_front(Queue::Window, i);
        }
        self.demote_from_protected();
    }

    /// A read of the entry whose key hashes to `hash` (a read recorded by hash alone, applied
    /// later): the use recorded, its weight. Two keys of one 64-bit hash are told apart by
    /// nothing here; the cost of that (one in 2^64) is one misplaced use.
    pub(crate) fn touch(&mut self, hash: u64) -> Option<u64> {
        let nodes = &self.nodes;
        let i = *self.table.find(hash, |&i| {
            nodes[i as usize].as_ref().is_some_and(|n| n.hash == hash)
        })?;
        self.on_access(i);
        Some(self.node(i).weight)
    }

    /// One step of the expiry sweep: looks at up to [`STEP`] arena slots from `*hand` on (a
    /// clock hand that wraps) and evicts, as `Size`, each entry whose `until` is `now` or
    /// earlier. Whether the hand passed the end of the arena (a whole pass is done).
    pub(crate) fn sweep(&mut self, hand: &mut usize, now: u32, evicted: &mut Vec<Evicted<K, V>>) -> bool {
        let n = self.nodes.len();
        let mut wrapped = false;
        for _ in 0..STEP.min(n) {
            if *hand >= n {
                *hand = 0;
                wrapped = true;
            }
            let i = *hand as u32;
            *hand += 1;
            if self.nodes[i as usize]
                .as_ref()
                .is_some_and(|node| node.until <= now)
            {
                self.evict(i, evicted);
            }
        }
        wrapped || n == 0
    }

    fn find<Q>(&self, hash: u64, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.table
            .find(hash, |&i| self.node(i).key.borrow() == key)
            .copied()
    }

    /// The value for `key` without recording a use (for expiry checks).
    pub(crate) fn peek<Q>(&self, hash: u64, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.find(hash, key).map(|i| &self.node(i).value)
    }

    /// A read of `key` (of hash `hash`, the caller's hash of it): its value, the use recorded.
    pub(crate) fn get<Q>(&mut self, hash: u64, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let i = self.find(hash, key)?;
        self.on_access(i);
        Some(&self.node(i).value)
    }

    /// Inserts or replaces `key`, then evicts down to the maximum; what left for room is pushed
    /// on `evicted` (with a replaced entry's old value, so the caller can drop it unlocked).
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u64,
        evicted: &mut Vec<Evicted<K, V>>,
    ) {
        self.insert_until(hash, key, value, weight, NEVER, evicted)
    }

    /// As `insert`, the entry to be swept once `until` has passed (see [`WTinyLfu::sweep`]).
    pub(crate) fn insert_until(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u64,
        until: u32,
        evicted: &mut Vec<Evicted<K, V>>,
    ) {
        if let Some(i) = self.find(hash, &key) {
            let node = self.nodes[i as usize].as_mut().expect("live node");
            node.until = until;
            let old_weight = std::mem::replace(&mut node.weight, weight);
            let old_value = std::mem::replace(&mut node.value, value);
            let queue = node.queue;
            self.weighted_size = self.weighted_size - old_weight + weight;
            match queue {
                Queue::Window => self.window_weighted_size = self.window_weighted_size - old_weight + weight,
                Queue::Protected => {
                    self.protected_weighted_size = self.protected_weighted_size - old_weight + weight
                }
                Queue::Probation => {}
            }
            let key = std::mem::replace(&mut self.nodes[i as usize].as_mut().expect("live").key, key);
            evicted.push(Evicted {
                key,
                value: old_value,
                hash,
                cause: Removal::Replaced,
            });
            self.on_access(i);
        } else {
            let node = Node {
                key,
                value,
                hash,
                weight,
                prev: NIL,
                next: NIL,
                queue: Queue::Window,
                until,
            };
            let i = match self.free.pop() {
                Some(i) => {
                    self.nodes[i as usize] = Some(node);
                    i
                }
                None => {
                    self.nodes.push(Some(node));
                    (self.nodes.len() - 1) as u32
                }
            };
            let nodes = &self.nodes;
            self.table
                .insert_unique(hash, i, |&j| nodes[j as usize].as_ref().expect("live").hash);
            self.push_back(Queue::Window, i);
            self.weighted_size += weight;
            self.window_weighted_size += weight;
            // Once the cache is half full, the sketch is sized to the entries it will hold when
            // full at today's mean weight (8 bytes each, aging every 10 × that many increments,
            // as Caffeine sizes it to the maximum of an unweighted cache); it grows (starting
            // afresh) only if the mean weight falls far enough to double it.
            if self.weighted_size >= self.maximum / 2 {
                let entries = self.table.len() as u128 * u128::from(self.maximum)
                    / u128::from(self.weighted_size.max(1));
                self.sketch.ensure_capacity(entries as u64);
            }
            self.sketch.increment(hash);
        }
        let candidate = self.evict_from_window();
        self.evict_from_main(candidate, evicted);
        self.rebalance();
    }

    /// Removes `key`; its key and value, if it was there.
    pub(crate) fn remove<Q>(&mut self, hash: u64, key: &Q) -> Option<(K, V)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let i = self.find(hash, key)?;
        let e = self.take(i);
        Some((e.key, e.value))
    }

    /// Empties the cache (the sketch keeps its counts: popularity outlives a purge).
    pub(crate) fn clear(&mut self) -> Vec<(K, V)> {
        let out = self.nodes.drain(..).flatten().map(|n| (n.key, n.value)).collect();
        self.free.clear();
        self.table.clear();
        self.window = Deque::EMPTY;
        self.probation = Deque::EMPTY;
        self.protected = Deque::EMPTY;
        self.weighted_size = 0;
        self.window_weighted_size = 0;
        self.protected_weighted_size = 0;
        self.growing = false;
        out
    }

    fn node(&self, i: u32) -> &Node<K, V> {
        self.nodes[i as usize].as_ref().expect("live node")
    }

    fn node_mut(&mut self, i: u32) -> &mut Node<K, V> {
        self.nodes[i as usize].as_mut().expect("live node")
    }

    fn on_access(&mut self, i: u32) {
        let (hash, queue, weight) = {
            let n = self.node(i);
            (n.hash, n.queue, n.weight)
        };
        self.sketch.increment(hash);
        match queue {
            Queue::Window => self.move_to_back(Queue::Window, i),
            Queue::Protected => self.move_to_back(Queue::Protected, i),
            Queue::Probation if weight > self.protected_maximum => self.move_to_back(Queue::Probation, i),
            Queue::Probation => {
                self.unlink(i);
                self.push_back(Queue::Protected, i);
                self.protected_weighted_size += weight;
                self.demote_from_protected();
            }
        }
    }

    /// TinyLFU's duel: whether the candidate should take the victim's place.
    fn admit(&mut self, candidate_hash: u64, victim_hash: u64) -> bool {
        let victim = self.sketch.frequency(victim_hash);
        let candidate = self.sketch.frequency(candidate_hash);
        if candidate > victim {
            true
        } else if candidate >= ADMIT_HASHDOS_THRESHOLD {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) & 127 == 0
        } else {
            false
        }
    }

    /// Moves the window's overflow to probation's tail, [`STEP`] entries at most; the first
    /// one moved (or NIL).
    fn evict_from_window(&mut self) -> u32 {
        let mut first = NIL;
        let mut moves = 0;
        while self.window_weighted_size > self.window_maximum && moves < STEP {
            moves += 1;
            let i = self.window.head;
            if i == NIL {
                break;
            }
            let w = self.node(i).weight;
            self.unlink(i);
            self.push_back(Queue::Probation, i);
            self.window_weighted_size -= w;
            if first == NIL {
                first = i;
            }
        }
        first
    }

    /// While over the maximum, candidates (from `candidate` to probation's tail) duel victims
    /// (from probation's head); with no candidate left, victims leave from probation, then
    /// protected, then the window.
    fn evict_from_main(&mut self, mut candidate: u32, evicted: &mut Vec<Evicted<K, V>>) {
        while self.weighted_size > self.maximum {
            let victim = self.probation.head;
            if candidate == NIL || victim == NIL || candidate == victim {
                // No duel to hold: the oldest of probation, protected, window leaves.
                let i = [self.probation.head, self.protected.head, self.window.head]
                    .into_iter()
                    .find(|&i| i != NIL);
                let Some(i) = i else { break };
                if i == candidate {
                    candidate = self.node(i).next;
                }
                self.evict(i, evicted);
                continue;
            }
            let next = self.node(candidate).next;
            let (ch, vh) = (self.node(candidate).hash, self.node(victim).hash);
            if self.node(candidate).weight > self.maximum || !self.admit(ch, vh) {
                self.evict(candidate, evicted);
            } else {
                self.evict(victim, evicted);
            }
            candidate = next;
        }
    }

    fn evict(&mut self, i: u32, evicted: &mut Vec<Evicted<K, V>>) {
        let n = self.take(i);
        evicted.push(Evicted {
            key: n.key,
            value: n.value,
            hash: n.hash,
            cause: Removal::Size,
        });
    }

    /// Unlinks node `i`, drops it from the table and frees its slot.
    fn take(&mut self, i: u32) -> Node<K, V> {
        let (queue, weight, hash) = {
            let n = self.node(i);
            (n.queue, n.weight, n.hash)
        };
        self.unlink(i);
        match queue {
            Queue::Window => self.window_weighted_size -= weight,
            Queue::Protected => self.protected_weighted_size -= weight,
            Queue::Probation => {}
        }
        self.weighted_size -= weight;
        if let Ok(slot) = self.table.find_entry(hash, |&j| j == i) {
            slot.remove();
        }
        self.free.push(i);
        self.nodes[i as usize].take().expect("live node")
    }

    /// Moves protected's overflow to probation, [`STEP`] entries at most.
    fn demote_from_protected(&mut self) {
        let mut moves = 0;
        while self.protected_weighted_size > self.protected_maximum && moves < STEP {
            moves += 1;
            let i = self.protected.head;
            if i == NIL {
                break;
            }
            let w = self.node(i).weight;
            self.unlink(i);
            self.push_back(Queue::Probation, i);
            self.protected_weighted_size -= w;
        }
    }

    fn deque(&mut self, q: Queue) -> &mut Deque {
        match q {
            Queue::Window => &mut self.window,
            Queue::Probation => &mut self.probation,
            Queue::Protected => &mut self.protected,
        }
    }

    fn push_back(&mut self, q: Queue, i: u32) {
        let tail = self.deque(q).tail;
        {
            let n = self.node_mut(i);
            n.prev = tail;
            n.next = NIL;
            n.queue = q;
        }
        if tail != NIL {
            self.node_mut(tail).next = i;
        }
        let d = self.deque(q);
        d.tail = i;
        if d.head == NIL {
            d.head = i;
        }
    }

    fn push_front(&mut self, q: Queue, i: u32) {
        let head = self.deque(q).head;
        {
            let n = self.node_mut(i);
            n.prev = NIL;
            n.next = head;
            n.queue = q;
        }
        if head != NIL {
            self.node_mut(head).prev = i;
        }
        let d = self.deque(q);
        d.head = i;
        if d.tail == NIL {
            d.tail = i;
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, q) = {
            let n = self.node(i);
            (n.prev, n.next, n.queue)
        };
        if prev != NIL {
            self.node_mut(prev).next = next;
        } else {
            self.deque(q).head = next;
        }
        if next != NIL {
            self.node_mut(next).prev = prev;
        } else {
            self.deque(q).tail = prev;
        }
    }

    fn move_to_back(&mut self, q: Queue, i: u32) {
        if self.deque(q).tail != i {
            self.unlink(i);
            self.push_back(q, i);
        }
    }

    /// Checks the bookkeeping (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut total = 0;
        let mut count = 0;
        for (q, d) in [
            (Queue::Window, self.window),
            (Queue::Probation, self.probation),
            (Queue::Protected, self.protected),
        ] {
            let (mut w, mut i, mut prev) = (0, d.head, NIL);
            while i != NIL {
                let n = self.node(i);
                assert_eq!(n.queue, q);
                assert_eq!(n.prev, prev);
                w += n.weight;
                count += 1;
                prev = i;
                i = n.next;
            }
            assert_eq!(prev, d.tail);
            match q {
                Queue::Window => assert_eq!(w, self.window_weighted_size),
                Queue::Protected => assert_eq!(w, self.protected_weighted_size),
                Queue::Probation => {}
            }
            total += w;
        }
        assert_eq!(total, self.weighted_size);
        assert_eq!(count, self.table.len());
        assert!(self.weighted_size <= self.maximum);
    }
}

/// Why an entry left the policy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Removal {
    /// Evicted for room.
    Size,
    /// Replaced by a newer value for the same key.
    Replaced,
}

/// An entry that left during an insert.
pub(crate) struct Evicted<K, V> {
    /// Its key, handed out with the value so that both are dropped outside any lock.
    #[allow(dead_code)]
    pub(crate) key: K,
    /// Its value (dropped by the caller, outside any lock).
    pub(crate) value: V,
    /// Its key's hash, so that an index beside the policy can drop it without hashing again.
    pub(crate) hash: u64,
    /// Why it left.
    pub(crate) cause: Removal,
}

/// W-TinyLFU whose window share is chosen by mini-simulations (the "MiniSim" adaptation of
/// Einziger et al., "Adaptive Software Cache Management", Middleware 2018), widened so that one
/// of the choices is a plain LRU (window 100 %).
///
/// Beside the real cache run one small W-TinyLFU per candidate share, fed only the requests
/// whose key hash falls in a fixed sample (spatial sampling as in SHARDS, Waldspurger et al.,
/// FAST 2015: a key is always or never sampled, so each small cache sees the same reuse pattern
/// at a smaller scale) and sized `maximum × rate`. Every epoch the share whose small cache hit
/// the most (scores halve every epoch, so the choice follows a change of workload) becomes the
/// real cache's share.
pub(crate) struct Adaptive<K, V> {
    /// The cache that holds the entries.
    pub(crate) real: WTinyLfu<K, V>,
    /// One small cache per share in `SHARES`, keyed by the real key's hash.
    minis: Vec<WTinyLfu<u64, ()>>,
    /// A key is sampled when its spread hash is at most this.
    threshold: u64,
    /// Sampled reads this epoch has seen.
    in_epoch: u64,
    /// Hits of each small cache this epoch, and the decayed scores of the past ones.
    epoch_hits: Vec<u64>,
    scores: Vec<f64>,
    /// Index in `SHARES` of the real cache's share.
    current: usize,
    /// Scratch for the small caches' evictions (never read).
    scratch: Vec<Evicted<u64, ()>>,
}

/// The candidate window shares, from TinyLFU's own 1 % (frequency-biased) to 100 % (a plain LRU,
/// recency only), so that the policy can become an LRU when recency is what the workload rewards.
pub(crate) const SHARES: [f64; 6] = [0.01, 0.1, 0.25, 0.5, 0.75, 1.0];
/// Bytes of entries each small cache holds at most: with the smallest entries (the per-entry
/// overhead alone) about 1,700 of them. Smaller caches are cheaper and their hit ratios noisier;
/// at or under this budget the small caches see every request and are exact.
pub(crate) const MINI_BYTES: u64 = 1 << 20;
/// Heap bytes of one small-cache entry at most, their structures allocated once at their full
/// size: an arena slot (40 B), a table slot (4 B and a control byte, at a load of 7/8 and up to
/// 2 × for the power of two: 12 B) and sketch counters (8 B per entry, up to 2 ×: 16 B).
/// Checked against a counting allocator in `tests/memory_weight.rs`.
pub(crate) const MINI_ENTRY_BYTES: u64 = 68;
/// An epoch lasts this many times the small caches' entry count in sampled requests (as
/// Caffeine's climber samples 10 × capacity): long enough for a hit ratio of that cache size to
/// mean something, short enough to follow a change.
const EPOCH_ENTRIES: u64 = 10;
/// The share the real cache starts with: the middle one, which loses least whichever way the
/// workload turns out to lean; the first epoch corrects it.
const START: usize = 2;
/// Each epoch, the older scores count this much (a half-life of one epoch).
const DECAY: f64 = 0.5;

impl<K: Hash + Eq, V> Adaptive<K, V> {
    /// An empty cache of at most `maximum` bytes of entries weighing at least `min_weight`,
    /// whose small caches may take `sim_bytes` of heap (see [`Adaptive::sim_bytes`]).
    pub(crate) fn new(maximum: u64, min_weight: u64, sim_bytes: u64) -> Self {
        let maximum = maximum.max(1);
        let per_mini = (sim_bytes / (SHARES.len() as u64 * MINI_ENTRY_BYTES)).max(1);
        // Each small cache holds at most `per_mini` entries of the smallest weight.
        let mini_maximum = (per_mini * min_weight.max(1)).min(maximum);
        let rate = mini_maximum as f64 / maximum as f64;
        Adaptive {
            real: WTinyLfu::new(maximum, SHARES[START]),
            minis: SHARES
                .iter()
                .map(|&s| WTinyLfu::with_capacity(mini_maximum, s, per_mini as usize))
                .collect(),
            threshold: if rate >= 1.0 {
                u64::MAX
            } else {
                (rate * u64::MAX as f64) as u64
            },
            in_epoch: 0,
            epoch_hits: vec![0; SHARES.len()],
            scores: vec![0.0; SHARES.len()],
            current: START,
            scratch: Vec::new(),
        }
    }

    /// The heap the small caches get under a bound of `bound` bytes for entries of at least
    /// `min_weight`: enough for `MINI_BYTES` of entries each, but at most an eighth of the
    /// bound, so that a small tier keeps most of its bytes for entries (its simulations are then
    /// sampled more sparsely, and noisier).
    pub(crate) fn sim_bytes(bound: u64, min_weight: u64) -> u64 {
        let per_mini = bound.min(MINI_BYTES) / min_weight.max(1) + 1;
        (SHARES.len() as u64 * per_mini * MINI_ENTRY_BYTES).min(bound / 8)
    }

    /// The window share in use now.
    pub(crate) fn window_share(&self) -> f64 {
        SHARES[self.current]
    }

    /// How far the current epoch has run, from 0 to 1: the share may next change when it ends.
    /// An epoch on a big tier takes millions of reads, so without this an operator (or a
    /// benchmark) cannot tell a policy that weighed the traffic and kept its share from one that
    /// has not yet weighed it.
    pub(crate) fn epoch_progress(&self) -> f64 {
        (self.in_epoch as f64 / self.epoch_length() as f64).min(1.0)
    }

    /// Sampled reads in an epoch: `EPOCH_ENTRIES` times the entries the current share's small
    /// cache holds (at least 16, so that a cold start ends its first epoch soon).
    fn epoch_length(&self) -> u64 {
        EPOCH_ENTRIES * self.minis[self.current].len().max(16) as u64
    }

    fn sampled(&self, hash: u64) -> bool {
        spread(hash ^ 0x5eed_5eed_5eed_5eed) <= self.threshold
    }

    /// Feeds one read of the key of hash `hash` to the small caches if the key is in the sample;
    /// a small cache that misses takes the key at once when its `weight` is known (the real
    /// cache hit), else at [`Adaptive::record_write`]. At the end of an epoch, moves the real
    /// cache to the best share.
    pub(crate) fn record_read(&mut self, hash: u64, weight: Option<u64>) {
        if !self.sampled(hash) {
            return;
        }
        for (i, m) in self.minis.iter_mut().enumerate() {
            if m.get(hash, &hash).is_some() {
                self.epoch_hits[i] += 1;
            } else if let Some(w) = weight {
                m.insert(hash, hash, (), w, &mut self.scratch);
                self.scratch.clear();
            }
        }
        self.in_epoch += 1;
        if self.in_epoch >= self.epoch_length() {
            self.in_epoch = 0;
            for (score, hits) in self.scores.iter_mut().zip(self.epoch_hits.iter_mut()) {
                *score = DECAY * *score + *hits as f64;
                *hits = 0;
            }
            let mut best = self.current;
            for (i, &s) in self.scores.iter().enumerate() {
                if s > self.scores[best] {
                    best = i;
                }
            }
            if best != self.current {
                self.current = best;
                self.real.set_window_share(SHARES[best]);
            }
        }
    }

    /// Feeds one write (the value fetched after a miss) to the small caches that lack the key.
    pub(crate) fn record_write(&mut self, hash: u64, weight: u64) {
        if !self.sampled(hash) {
            return;
        }
        for m in self.minis.iter_mut() {
            if m.peek(hash, &hash).is_none() {
                m.insert(hash, hash, (), weight, &mut self.scratch);
                self.scratch.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::OnceLock;

    use super::*;

    /// The tests' key hash (the memory tier hashes with its own seeded hasher).
    fn hash_of<Q: Hash + ?Sized>(key: &Q) -> u64 {
        static HASHER: OnceLock<RandomState> = OnceLock::new();
        HASHER.get_or_init(RandomState::new).hash_one(key)
    }

    fn access(c: &mut WTinyLfu<u64, ()>, key: u64, weight: u64) -> bool {
        let h = hash_of(&key);
        if c.get(h, &key).is_some() {
            return true;
        }
        c.insert(h, key, (), weight, &mut Vec::new());
        false
    }

    #[test]
    fn bookkeeping_holds_under_random_weighted_traffic_and_share_changes() {
        let mut c = WTinyLfu::new(10_000, 0.01);
        let mut x: u64 = 1;
        for n in 0..300_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x % 3000) * (x % 7 + 1) % 5000;
            access(&mut c, key, 1 + (x >> 40) % 200);
            if x.is_multiple_of(97) {
                let k = x % 5000;
                c.remove(hash_of(&k), &k);
            }
            if n.is_multiple_of(20_000) {
                c.set_window_share(SHARES[(n / 20_000) as usize % SHARES.len()]);
                c.check();
            }
        }
        c.check();
        assert!(c.len() > 50);
    }

    #[test]
    fn admission_keeps_the_hot_set_through_scans() {
        let mut c = WTinyLfu::new(100, 0.01);
        for round in 0..50u64 {
            for k in 0..50u64 {
                access(&mut c, k, 1);
            }
            for k in 0..200u64 {
                access(&mut c, 1_000_000 + round * 1000 + k, 1);
            }
        }
        let hot = (0..50u64).filter(|k| c.peek(hash_of(k), k).is_some()).count();
        assert!(hot >= 45, "hot keys kept: {hot}");
        c.check();
    }

    #[test]
    fn a_full_window_is_a_plain_lru() {
        let mut c = WTinyLfu::new(3, 1.0);
        for k in [1, 2, 3, 1, 4] {
            access(&mut c, k, 1);
        }
        // 2 was the least recently used.
        let held: Vec<bool> = [1, 2, 3, 4]
            .iter()
            .map(|k| c.peek(hash_of(k), k).is_some())
            .collect();
        assert_eq!(held, [true, false, true, true]);
        c.check();
    }

    #[test]
    fn the_adaptive_policy_becomes_an_lru_where_recency_pays() {
        // Every key is read twice, 300 requests apart, and never again: frequency says nothing
        // (every key is seen once when it would be admitted), recency everything. A 1 % window
        // misses every second read; an LRU of 1,000 entries hits them all.
        let mut a: Adaptive<u64, ()> = Adaptive::new(1000, 1, 1 << 20);
        let mut hits = 0;
        for t in 0..100_000u64 {
            let key = if t.is_multiple_of(2) {
                t / 2
            } else {
                (t / 2).saturating_sub(300)
            };
            let h = hash_of(&key);
            a.record_read(h, None);
            if a.real.get(h, &key).is_some() {
                hits += 1;
            } else {
                a.real.insert(h, key, (), 1, &mut Vec::new());
                a.record_write(h, 1);
            }
        }
        assert!(a.window_share() >= 0.5, "share {}", a.window_share());
        assert!(hits > 45_000, "hits {hits}");
        a.real.check();
    }
}
