//! A weighted W-TinyLFU with Caffeine's adaptive window (its hill climber), written from the
//! algorithm's description (Einziger, Eytan, Friedman, Manes: "Adaptive Software Cache
//! Management", Middleware 2018; Caffeine's design notes), single-threaded, for replays.
//!
//! Layout: every entry is in one of three LRU queues.
//! - window: every new entry lands here (recency: a burst of new keys can hit here).
//! - probation: the main space's entries not yet re-used there; the eviction victims come from
//!   its head.
//! - protected: main-space entries used again while in probation (up to 80 % of main).
//!
//! When the window overflows, its oldest entries move to probation as *candidates*; while the
//! cache is over its maximum, each candidate is compared with the *victim* (probation's head) by
//! the estimated frequency of their keys (a 4-bit count-min sketch that halves itself every
//! 10 × capacity increments, so old popularity fades): the one with the lower frequency leaves
//! (TinyLFU admission). The window's share is climbed by the hit ratio (adaptive mode): every
//! sample of 10 × capacity requests, if the hit ratio went up, the window keeps moving in the same
//! direction, else it turns back; the step starts at 6.25 % of capacity and decays by 0.98 per
//! sample, and restarts at 6.25 % when the hit ratio jumps by 5 points (a change of workload).
//! A recency-biased trace (orm-night) grows the window toward LRU; a frequency-biased one (Zipf,
//! web12) shrinks it to the 1 % start.
//!
//! Weights are arbitrary (bytes): capacity, the window and the protected share are all in weight
//! units, like Caffeine's `maximumWeight`.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

const NIL: u32 = u32::MAX;

/// Share of the capacity given to the main space at the start (so the window starts at 1 %).
const PERCENT_MAIN: f64 = 0.99;
/// Share of the main space that protected may hold.
const PERCENT_MAIN_PROTECTED: f64 = 0.80;
/// A hit-ratio change at least this large restarts the climb with a full step.
const HILL_CLIMBER_RESTART_THRESHOLD: f64 = 0.05;
/// The climber's full step, as a share of the capacity.
const HILL_CLIMBER_STEP_PERCENT: f64 = 0.0625;
/// Each sample without a restart multiplies the step by this, so the window settles.
const HILL_CLIMBER_STEP_DECAY_RATE: f64 = 0.98;
/// At most this many entries move between queues per maintenance (bounds its pause).
const QUEUE_TRANSFER_THRESHOLD: usize = 1000;
/// A candidate this popular is admitted 1 time in 128 even when the victim is as popular, so an
/// attacker who keeps a victim's count high cannot pin it (hash flooding).
const ADMIT_HASHDOS_THRESHOLD: u8 = 6;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Window,
    Probation,
    Protected,
}

#[derive(Clone)]
struct Node<K> {
    key: K,
    hash: u64,
    weight: u64,
    prev: u32,
    next: u32,
    queue: Queue,
}

#[derive(Clone, Copy, Default)]
struct Deque {
    /// Least recently used (eviction end).
    head: u32,
    /// Most recently used.
    tail: u32,
}

impl Deque {
    fn new() -> Self {
        Deque { head: NIL, tail: NIL }
    }
}

/// Why an entry left, for an eviction listener.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Removal {
    Size,
    Explicit,
}

/// Counters for the report.
#[derive(Default, Clone, Debug)]
pub struct Stats {
    pub evicted: u64,
    pub climbs: u64,
    pub window_min_seen: u64,
    pub window_max_seen: u64,
}

pub struct WTinyLfu<K> {
    nodes: Vec<Node<K>>,
    free: Vec<u32>,
    map: HashMap<K, u32>,
    window: Deque,
    probation: Deque,
    protected: Deque,

    maximum: u64,
    weighted_size: u64,
    window_maximum: u64,
    window_weighted_size: u64,
    protected_maximum: u64,
    protected_weighted_size: u64,

    sketch: Sketch,
    /// Entries counted by weight (bytes): the sketch is sized by entry count, not weight.
    weighted: bool,

    adaptive: bool,
    hits_in_sample: u64,
    misses_in_sample: u64,
    previous_sample_hit_rate: f64,
    step_size: f64,
    adjustment: i64,

    rng: u64,
    pub stats: Stats,
    /// Evictions since the last `take_evicted` (key, weight, cause), standing in for a listener.
    pub evicted: Vec<(K, u64, Removal)>,
    record_evicted: bool,
}

impl<K: Hash + Eq + Clone> WTinyLfu<K> {
    /// A cache of `maximum` weight units; `adaptive` false keeps the window at 1 %.
    /// `weighted` says entries weigh more than one unit (the sketch then follows the entry count).
    pub fn new(maximum: u64, adaptive: bool, weighted: bool) -> Self {
        Self::with_window(maximum, 1.0 - PERCENT_MAIN, adaptive, weighted)
    }

    /// As `new`, with the window starting at `window_share` of the capacity.
    pub fn with_window(maximum: u64, window_share: f64, adaptive: bool, weighted: bool) -> Self {
        let max = maximum.max(1);
        let window_maximum = max - ((1.0 - window_share) * max as f64).round() as u64;
        let protected_maximum = (PERCENT_MAIN_PROTECTED * (max - window_maximum) as f64) as u64;
        WTinyLfu {
            nodes: Vec::new(),
            free: Vec::new(),
            map: HashMap::new(),
            window: Deque::new(),
            probation: Deque::new(),
            protected: Deque::new(),
            maximum: max,
            weighted_size: 0,
            window_maximum,
            window_weighted_size: 0,
            protected_maximum,
            protected_weighted_size: 0,
            sketch: Sketch::default(),
            weighted,
            adaptive,
            hits_in_sample: 0,
            misses_in_sample: 0,
            previous_sample_hit_rate: 0.0,
            step_size: -HILL_CLIMBER_STEP_PERCENT * max as f64,
            adjustment: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            stats: Stats {
                window_min_seen: window_maximum,
                window_max_seen: window_maximum,
                ..Stats::default()
            },
            evicted: Vec::new(),
            record_evicted: false,
        }
    }

    /// Sets the window to `share` of the capacity (0..=1; 1 makes the policy a plain LRU) and the
    /// protected space to 80 % of the rest; entries move between queues at the next maintenance.
    pub fn set_window_share(&mut self, share: f64) {
        let window = ((share.clamp(0.0, 1.0) * self.maximum as f64).round() as u64).max(1);
        self.window_maximum = window.min(self.maximum);
        self.protected_maximum =
            (PERCENT_MAIN_PROTECTED * (self.maximum - self.window_maximum) as f64) as u64;
        self.demote_from_protected();
    }

    /// Keep evicted keys in `self.evicted` (off by default: replays do not need them).
    pub fn record_evictions(&mut self, on: bool) {
        self.record_evicted = on;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn weighted_size(&self) -> u64 {
        self.weighted_size
    }

    pub fn window_maximum(&self) -> u64 {
        self.window_maximum
    }

    fn hash_of(key: &K) -> u64 {
        let mut h = DefaultHasher::new(); // fixed keys: deterministic across runs
        key.hash(&mut h);
        h.finish()
    }

    /// A read: true if present (and records the access), false on a miss.
    pub fn get(&mut self, key: &K) -> bool {
        let Some(&i) = self.map.get(key) else {
            return false;
        };
        self.on_access(i);
        true
    }

    /// Inserts (or replaces) `key` with `weight`, then evicts to the maximum and adapts.
    pub fn insert(&mut self, key: K, weight: u64) {
        if let Some(&i) = self.map.get(&key) {
            // Replace: adjust weight in place, count as an access.
            let old = self.nodes[i as usize].weight;
            self.nodes[i as usize].weight = weight;
            self.weighted_size = self.weighted_size - old + weight;
            match self.nodes[i as usize].queue {
                Queue::Window => self.window_weighted_size = self.window_weighted_size - old + weight,
                Queue::Protected => {
                    self.protected_weighted_size = self.protected_weighted_size - old + weight
                }
                Queue::Probation => {}
            }
            self.on_access(i);
            self.maintenance();
            return;
        }
        let hash = Self::hash_of(&key);
        let node = Node {
            key: key.clone(),
            hash,
            weight,
            prev: NIL,
            next: NIL,
            queue: Queue::Window,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.map.insert(key, i);
        self.push_back(Queue::Window, i);
        self.weighted_size += weight;
        self.window_weighted_size += weight;
        // The sketch starts once the cache is half full, sized to the entries it will hold.
        if self.weighted_size >= self.maximum / 2 {
            let capacity = if self.weighted {
                self.map.len() as u64
            } else {
                self.maximum
            };
            self.sketch.ensure_capacity(capacity);
        }
        self.sketch.increment(hash);
        self.misses_in_sample += 1;
        self.maintenance();
    }

    /// Explicit removal (invalidate).
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(&i) = self.map.get(key) else {
            return false;
        };
        self.evict_node(i, Removal::Explicit);
        true
    }

    /// Evictions, then the climb: what Caffeine does in its maintenance after a write.
    fn maintenance(&mut self) {
        let candidate = self.evict_from_window();
        self.evict_from_main(candidate);
        self.climb();
    }

    fn on_access(&mut self, i: u32) {
        let hash = self.nodes[i as usize].hash;
        self.sketch.increment(hash);
        match self.nodes[i as usize].queue {
            Queue::Window => self.move_to_back(Queue::Window, i),
            Queue::Probation => {
                let w = self.nodes[i as usize].weight;
                if w > self.protected_maximum {
                    self.move_to_back(Queue::Probation, i);
                } else {
                    self.unlink(Queue::Probation, i);
                    self.nodes[i as usize].queue = Queue::Protected;
                    self.push_back(Queue::Protected, i);
                    self.protected_weighted_size += w;
                    // Caffeine defers this to the next maintenance; doing it now is equivalent
                    // for a single thread up to the order of a few demotions.
                    self.demote_from_protected();
                }
            }
            Queue::Protected => self.move_to_back(Queue::Protected, i),
        }
        self.hits_in_sample += 1;
    }

    fn admit(&mut self, candidate_hash: u64, victim_hash: u64) -> bool {
        let victim = self.sketch.frequency(victim_hash);
        let candidate = self.sketch.frequency(candidate_hash);
        if candidate > victim {
            true
        } else if candidate >= ADMIT_HASHDOS_THRESHOLD {
            // xorshift64*: deterministic, so replays repeat exactly.
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) & 127 == 0
        } else {
            false
        }
    }

    /// Moves the window's overflow to probation's tail; returns the first one moved.
    fn evict_from_window(&mut self) -> u32 {
        let mut first = NIL;
        let mut node = self.window.head;
        while self.window_weighted_size > self.window_maximum && node != NIL {
            let next = self.nodes[node as usize].next;
            let w = self.nodes[node as usize].weight;
            if w != 0 {
                self.unlink(Queue::Window, node);
                self.nodes[node as usize].queue = Queue::Probation;
                self.push_back(Queue::Probation, node);
                if first == NIL {
                    first = node;
                }
                self.window_weighted_size -= w;
            }
            node = next;
        }
        first
    }

    /// While over the maximum, candidates (from `candidate` on, then the window) duel victims
    /// (probation's head onward, then protected, then the window).
    fn evict_from_main(&mut self, mut candidate: u32) {
        let mut victim_queue = Queue::Probation;
        let mut candidate_queue = Queue::Probation;
        let mut victim = self.probation.head;
        while self.weighted_size > self.maximum {
            if candidate == NIL && candidate_queue == Queue::Probation {
                candidate = self.window.head;
                candidate_queue = Queue::Window;
            }
            if candidate == NIL && victim == NIL {
                match victim_queue {
                    Queue::Probation => {
                        victim = self.protected.head;
                        victim_queue = Queue::Protected;
                        continue;
                    }
                    Queue::Protected => {
                        victim = self.window.head;
                        victim_queue = Queue::Window;
                        continue;
                    }
                    Queue::Window => break,
                }
            }
            if victim == NIL {
                let evict = candidate;
                candidate = self.nodes[candidate as usize].next;
                self.evict_node(evict, Removal::Size);
                continue;
            }
            if candidate == NIL {
                let evict = victim;
                victim = self.nodes[victim as usize].next;
                self.evict_node(evict, Removal::Size);
                continue;
            }
            if candidate == victim {
                victim = self.nodes[victim as usize].next;
                self.evict_node(candidate, Removal::Size);
                candidate = NIL;
                continue;
            }
            if self.nodes[candidate as usize].weight > self.maximum {
                let evict = candidate;
                candidate = self.nodes[candidate as usize].next;
                self.evict_node(evict, Removal::Size);
                continue;
            }
            let (ch, vh) = (
                self.nodes[candidate as usize].hash,
                self.nodes[victim as usize].hash,
            );
            if self.admit(ch, vh) {
                let evict = victim;
                victim = self.nodes[victim as usize].next;
                self.evict_node(evict, Removal::Size);
                candidate = self.nodes[candidate as usize].next;
            } else {
                let evict = candidate;
                candidate = self.nodes[candidate as usize].next;
                self.evict_node(evict, Removal::Size);
            }
        }
    }

    fn evict_node(&mut self, i: u32, cause: Removal) {
        let q = self.nodes[i as usize].queue;
        let w = self.nodes[i as usize].weight;
        self.unlink(q, i);
        match q {
            Queue::Window => self.window_weighted_size -= w,
            Queue::Protected => self.protected_weighted_size -= w,
            Queue::Probation => {}
        }
        self.weighted_size -= w;
        let key = self.nodes[i as usize].key.clone();
        self.map.remove(&key);
        self.free.push(i);
        if cause == Removal::Size {
            self.stats.evicted += 1;
        }
        if self.record_evicted {
            self.evicted.push((key, w, cause));
        }
    }

    fn climb(&mut self) {
        if !self.adaptive {
            self.demote_from_protected();
            return;
        }
        self.determine_adjustment();
        self.demote_from_protected();
        let amount = self.adjustment;
        if amount == 0 {
            return;
        } else if amount > 0 {
            self.increase_window();
        } else {
            self.decrease_window();
        }
        self.stats.window_min_seen = self.stats.window_min_seen.min(self.window_maximum);
        self.stats.window_max_seen = self.stats.window_max_seen.max(self.window_maximum);
    }

    fn determine_adjustment(&mut self) {
        if !self.sketch.initialized() {
            self.previous_sample_hit_rate = 0.0;
            self.misses_in_sample = 0;
            self.hits_in_sample = 0;
            return;
        }
        let requests = self.hits_in_sample + self.misses_in_sample;
        if requests < self.sketch.sample_size {
            return;
        }
        let hit_rate = self.hits_in_sample as f64 / requests as f64;
        let change = hit_rate - self.previous_sample_hit_rate;
        let amount = if change >= 0.0 { self.step_size } else { -self.step_size };
        let next_step = if change.abs() >= HILL_CLIMBER_RESTART_THRESHOLD {
            HILL_CLIMBER_STEP_PERCENT * self.maximum as f64 * if amount >= 0.0 { 1.0 } else { -1.0 }
        } else {
            HILL_CLIMBER_STEP_DECAY_RATE * amount
        };
        self.previous_sample_hit_rate = hit_rate;
        self.adjustment = amount as i64;
        self.step_size = next_step;
        self.misses_in_sample = 0;
        self.hits_in_sample = 0;
        self.stats.climbs += 1;
    }

    fn demote_from_protected(&mut self) {
        let mut n = 0;
        while self.protected_weighted_size > self.protected_maximum && n < QUEUE_TRANSFER_THRESHOLD
        {
            let d = self.protected.head;
            if d == NIL {
                break;
            }
            self.unlink(Queue::Protected, d);
            self.nodes[d as usize].queue = Queue::Probation;
            self.push_back(Queue::Probation, d);
            self.protected_weighted_size -= self.nodes[d as usize].weight;
            n += 1;
        }
    }

    fn increase_window(&mut self) {
        if self.protected_maximum == 0 {
            return;
        }
        let mut quota = (self.adjustment as u64).min(self.protected_maximum);
        self.protected_maximum -= quota;
        self.window_maximum += quota;
        self.demote_from_protected();
        for _ in 0..QUEUE_TRANSFER_THRESHOLD {
            let mut c = self.probation.head;
            let mut from_probation = true;
            if c == NIL || quota < self.nodes[c as usize].weight {
                c = self.protected.head;
                from_probation = false;
            }
            if c == NIL {
                break;
            }
            let w = self.nodes[c as usize].weight;
            if quota < w {
                break;
            }
            quota -= w;
            if from_probation {
                self.unlink(Queue::Probation, c);
            } else {
                self.protected_weighted_size -= w;
                self.unlink(Queue::Protected, c);
            }
            self.window_weighted_size += w;
            self.nodes[c as usize].queue = Queue::Window;
            self.push_back(Queue::Window, c);
        }
        // What could not be moved now stays owed to the next maintenance.
        self.protected_maximum += quota;
        self.window_maximum -= quota;
        self.adjustment = quota as i64;
    }

    fn decrease_window(&mut self) {
        if self.window_maximum <= 1 {
            return;
        }
        let mut quota = ((-self.adjustment) as u64).min(self.window_maximum.saturating_sub(1));
        self.protected_maximum += quota;
        self.window_maximum -= quota;
        for _ in 0..QUEUE_TRANSFER_THRESHOLD {
            let c = self.window.head;
            if c == NIL {
                break;
            }
            let w = self.nodes[c as usize].weight;
            if quota < w {
                break;
            }
            quota -= w;
            self.window_weighted_size -= w;
            self.unlink(Queue::Window, c);
            self.nodes[c as usize].queue = Queue::Probation;
            self.push_back(Queue::Probation, c);
        }
        self.protected_maximum -= quota;
        self.window_maximum += quota;
        self.adjustment = -(quota as i64);
    }

    // ---- intrusive deques over the arena ----

    fn deque(&mut self, q: Queue) -> &mut Deque {
        match q {
            Queue::Window => &mut self.window,
            Queue::Probation => &mut self.probation,
            Queue::Protected => &mut self.protected,
        }
    }

    fn push_back(&mut self, q: Queue, i: u32) {
        let tail = self.deque(q).tail;
        self.nodes[i as usize].prev = tail;
        self.nodes[i as usize].next = NIL;
        if tail != NIL {
            self.nodes[tail as usize].next = i;
        }
        let d = self.deque(q);
        d.tail = i;
        if d.head == NIL {
            d.head = i;
        }
    }

    fn unlink(&mut self, q: Queue, i: u32) {
        let (prev, next) = (self.nodes[i as usize].prev, self.nodes[i as usize].next);
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.deque(q).head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            self.deque(q).tail = prev;
        }
        self.nodes[i as usize].prev = NIL;
        self.nodes[i as usize].next = NIL;
    }

    fn move_to_back(&mut self, q: Queue, i: u32) {
        if self.deque(q).tail == i {
            return;
        }
        self.unlink(q, i);
        self.push_back(q, i);
    }

    /// Checks the bookkeeping (tests).
    #[cfg(test)]
    fn check(&self) {
        let mut total = 0;
        for (q, d) in [
            (Queue::Window, self.window),
            (Queue::Probation, self.probation),
            (Queue::Protected, self.protected),
        ] {
            let mut w = 0;
            let mut i = d.head;
            let mut prev = NIL;
            while i != NIL {
                let n = &self.nodes[i as usize];
                assert_eq!(n.queue, q);
                assert_eq!(n.prev, prev);
                w += n.weight;
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
        assert!(self.weighted_size <= self.maximum);
        assert_eq!(self.window_maximum + self.protected_maximum <= self.maximum, true);
    }
}

/// A count-min sketch of 4-bit counters, 16 per 64-bit word, 4 counters per key (one in each of
/// 4 words picked by 4 seeded hashes). Sized to the next power of two of the capacity, it halves
/// every counter after `10 × capacity` increments (aging), as in Caffeine's FrequencySketch.
#[derive(Default)]
pub struct Sketch {
    table: Vec<u64>,
    mask: usize,
    pub sample_size: u64,
    size: u64,
}

const SEEDS: [u64; 4] = [
    0xc3a5_c85c_97cb_3127,
    0xb492_b66f_be98_f273,
    0x9ae1_6a3b_2f90_404f,
    0xcbf2_9ce4_8422_2325,
];
const RESET_MASK: u64 = 0x7777_7777_7777_7777;
const ONE_MASK: u64 = 0x1111_1111_1111_1111;

impl Sketch {
    pub fn initialized(&self) -> bool {
        !self.table.is_empty()
    }

    pub fn ensure_capacity(&mut self, capacity: u64) {
        let maximum = capacity.min(i32::MAX as u64 >> 1).max(1);
        if self.table.len() as u64 >= maximum {
            return;
        }
        let len = (maximum as usize).next_power_of_two().max(8);
        self.table = vec![0; len];
        self.mask = len - 1;
        self.sample_size = 10 * maximum;
        self.size = 0;
    }

    fn spread(hash: u64) -> u64 {
        // splitmix64's finaliser: every input bit moves every output bit.
        let mut x = hash;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn index_of(&self, item: u64, i: usize) -> usize {
        let mut h = item.wrapping_add(SEEDS[i]).wrapping_mul(SEEDS[i]);
        h = h.wrapping_add(h >> 32);
        (h as usize) & self.mask
    }

    pub fn frequency(&self, hash: u64) -> u8 {
        if self.table.is_empty() {
            return 0;
        }
        let item = Self::spread(hash);
        let start = ((item & 3) << 2) as u32;
        let mut f = u8::MAX;
        for i in 0..4 {
            let idx = self.index_of(item, i);
            let c = ((self.table[idx] >> ((start + i as u32) << 2)) & 0xf) as u8;
            f = f.min(c);
        }
        f
    }

    pub fn increment(&mut self, hash: u64) {
        if self.table.is_empty() {
            return;
        }
        let item = Self::spread(hash);
        let start = ((item & 3) << 2) as u32;
        let mut added = false;
        for i in 0..4 {
            let idx = self.index_of(item, i);
            let offset = (start + i as u32) << 2;
            let mask = 0xf_u64 << offset;
            if self.table[idx] & mask != mask {
                self.table[idx] += 1 << offset;
                added = true;
            }
        }
        if added {
            self.size += 1;
            if self.size == self.sample_size {
                self.reset();
            }
        }
    }

    fn reset(&mut self) {
        let mut odd = 0u64;
        for t in self.table.iter_mut() {
            odd += (*t & ONE_MASK).count_ones() as u64;
            *t = (*t >> 1) & RESET_MASK;
        }
        self.size = (self.size - (odd >> 2)) >> 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_holds_under_random_weighted_traffic() {
        let mut c = WTinyLfu::new(10_000, true, true);
        let mut x: u64 = 1;
        for _ in 0..300_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x % 3000) * (x % 7 + 1) % 5000;
            if !c.get(&key) {
                c.insert(key, 1 + (x >> 40) % 200);
            }
            if x % 97 == 0 {
                c.remove(&(x % 5000));
            }
        }
        c.check();
        assert!(c.len() > 50);
    }

    #[test]
    fn scan_resistance_keeps_the_hot_set() {
        let mut c = WTinyLfu::new(100, false, false);
        for round in 0..50u64 {
            for k in 0..50u64 {
                if !c.get(&k) {
                    c.insert(k, 1);
                }
            }
            for k in 0..200u64 {
                let k = 1_000_000 + round * 1000 + k;
                if !c.get(&k) {
                    c.insert(k, 1);
                }
            }
        }
        let hot = (0..50u64).filter(|k| c.map.contains_key(k)).count();
        assert!(hot >= 45, "hot keys kept: {hot}");
        c.check();
    }
}
