//! W-TinyLFU whose window share is chosen by mini-simulations (the "MiniSim" adaptation of
//! Einziger et al., "Adaptive Software Cache Management", Middleware 2018), widened so that one
//! of the choices is a plain LRU (window 100 %).
//!
//! Beside the real cache run a few small W-TinyLFU caches, one per candidate window share, fed
//! only the requests whose key hash falls in a fixed sample (spatial sampling, as in SHARDS:
//! a key is either always or never sampled, so each small cache sees the same reuse pattern at
//! a smaller scale) and sized `capacity × rate`. Every epoch, the share whose small cache hit
//! the most (scores decay by half per epoch, so the choice follows a change of workload) becomes
//! the real cache's window share.
//!
//! Knobs and why:
//! - SHARES: the candidate window shares, spread over the whole range from frequency-biased (1 %,
//!   TinyLFU's default) to recency-only (100 %: LRU) so that the choice includes LRU itself.
//! - MINI_ENTRIES: each small cache holds about this many entries (rate = MINI_ENTRIES /
//!   capacity, at most 1); smaller caches are cheaper but their hit ratios are noisier. At or
//!   under this capacity the small caches see every request and are exact.
//! - START: the real cache starts at the middle share (25 %): with no evidence yet, the middle
//!   loses least whichever way the workload leans (1 %, Caffeine's start, suits Zipf only).
//! - DECAY 0.5: one epoch's half-life, to follow a change within a few epochs.
//! - MARGIN (env MINISIM_MARGIN, default 0): hysteresis in standard deviations; measured, it did
//!   not help (the loss is choosing late, not flapping).
//! - EPOCH: an epoch is EPOCH × the small caches' capacity of sampled requests, as Caffeine's
//!   climber samples 10 × capacity: long enough for a hit ratio of that cache size to mean
//!   something, short enough to follow a change.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use crate::wtinylfu::WTinyLfu;

pub const SHARES: [f64; 6] = [0.01, 0.1, 0.25, 0.5, 0.75, 1.0];
pub const MINI_ENTRIES: u64 = 1000;
pub const EPOCH: u64 = 10;
/// The share the real cache starts with (index into SHARES): the middle of the range, since
/// nothing is known yet; the first epoch corrects it.
pub const START: usize = 2;
/// Each epoch, the older scores count this much (half-life of one epoch).
pub const DECAY: f64 = 0.5;

pub struct MiniSim {
    shares: Vec<f64>,
    real: WTinyLfu<u32>,
    minis: Vec<WTinyLfu<u32>>,
    threshold: u64,
    epoch_len: u64,
    in_epoch: u64,
    epoch_hits: Vec<u64>,
    scores: Vec<f64>,
    current: usize,
    decay: f64,
    margin: f64,
    pub switches: u64,
    /// MINISIM_COST: switch only for a lead above cost × |share distance| × mini capacity.
    cost: f64,
    mini_cap: u64,
    /// MINISIM_STEP: move one share per epoch towards the best instead of jumping.
    step: bool,
    /// MINISIM_TRACE: print each epoch's real and small-cache hits to stderr.
    trace: bool,
    /// MINISIM_PERSIST: decisions in a row a new best must win before the real cache moves.
    persist: u32,
    pending: Option<usize>,
    pending_count: u32,
    real_hits: u64,
    epoch_last: Vec<u64>,
    pub chosen: Vec<u64>,
}

/// An experiment's override of a knob from the environment (the default otherwise).
fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl MiniSim {
    pub fn new(capacity: u64, mini_entries: u64) -> Self {
        let capacity = capacity.max(1);
        let shares: Vec<f64> = std::env::var("MINISIM_SHARES")
            .ok()
            .map(|v| v.split(',').map(|x| x.parse().expect("MINISIM_SHARES: comma-separated shares")).collect())
            .unwrap_or(SHARES.to_vec());
        let mini_entries = knob("MINISIM_MINI", mini_entries);
        let mini_entries = mini_entries.min(((capacity as f64 * knob("MINISIM_FRAC", 1.0)) as u64).max(16));
        let rate = (mini_entries as f64 / capacity as f64).min(1.0);
        let mini_cap = ((capacity as f64 * rate).round() as u64).max(1);
        let minis = shares
            .iter()
            .map(|&s| {
                let mut m = WTinyLfu::new(mini_cap, false, false);
                m.set_window_share(s);
                m
            })
            .collect();
        let start = knob("MINISIM_START", START);
        let epoch = knob("MINISIM_EPOCH", EPOCH as f64);
        let trace = std::env::var("MINISIM_TRACE").is_ok();
        if trace {
            eprintln!("new {capacity} {mini_cap}");
        }
        let mut real = WTinyLfu::new(capacity, false, false);
        real.set_window_share(shares[start]);
        MiniSim {
            shares: shares.clone(),
            real,
            minis,
            threshold: if rate >= 1.0 { u64::MAX } else { (rate * u64::MAX as f64) as u64 },
            epoch_len: ((epoch * mini_cap as f64) as u64).max(1),
            cost: knob("MINISIM_COST", 0.0),
            mini_cap,
            decay: knob("MINISIM_DECAY", DECAY),
            margin: knob("MINISIM_MARGIN", 0.0),
            step: std::env::var("MINISIM_STEP").is_ok(),
            persist: knob("MINISIM_PERSIST", 1),
            pending: None,
            pending_count: 0,
            trace,
            in_epoch: 0,
            epoch_hits: vec![0; shares.len()],
            scores: vec![0.0; shares.len()],
            current: start,
            switches: 0,
            real_hits: 0,
            epoch_last: vec![0; shares.len()],
            chosen: vec![0; shares.len()],
        }
    }

    fn sample_hash(key: u32) -> u64 {
        let mut h = DefaultHasher::new();
        (key, 0x5eed_u32).hash(&mut h);
        h.finish()
    }

    pub fn access(&mut self, key: u32) -> bool {
        let hit = self.real.get(&key);
        if hit {
            self.real_hits += 1;
        } else {
            self.real.insert(key, 1);
        }
        if Self::sample_hash(key) <= self.threshold {
            for (i, m) in self.minis.iter_mut().enumerate() {
                if m.get(&key) {
                    self.epoch_hits[i] += 1;
                } else {
                    m.insert(key, 1);
                }
            }
            self.in_epoch += 1;
            if self.in_epoch >= self.epoch_len {
                for i in 0..self.shares.len() {
                    self.scores[i] = self.decay * self.scores[i] + self.epoch_hits[i] as f64;
                    self.epoch_last[i] = self.epoch_hits[i];
                    self.epoch_hits[i] = 0;
                }
                self.in_epoch = 0;
                let mut best = self.current;
                for i in 0..self.shares.len() {
                    if self.scores[i] > self.scores[best] {
                        best = i;
                    }
                }
                // Switch only for a lead beyond the noise of the current choice's count
                // (about its square root, as for a Poisson count), times MINISIM_MARGIN.
                let cur = self.scores[self.current];
                let dist = (self.shares[best] - self.shares[self.current]).abs();
                if self.scores[best] - cur <= self.margin * cur.max(1.0).sqrt()
                    || self.scores[best] - cur <= self.cost * dist * self.mini_cap as f64
                {
                    best = self.current;
                }
                if self.trace {
                    eprintln!("epoch cur={} real={} minis={:?}", self.shares[self.current], self.real_hits, self.epoch_last);
                }
                self.real_hits = 0;
                // MINISIM_PERSIST: act only on a best share that won this many decisions in a row.
                if best != self.current {
                    if Some(best) == self.pending {
                        self.pending_count += 1;
                    } else {
                        self.pending = Some(best);
                        self.pending_count = 1;
                    }
                    if self.pending_count < self.persist {
                        best = self.current;
                    }
                } else {
                    self.pending = None;
                }
                if self.step && best != self.current {
                    best = if best > self.current { self.current + 1 } else { self.current - 1 };
                }
                self.chosen[best] += 1;
                if best != self.current {
                    self.current = best;
                    self.real.set_window_share(self.shares[best]);
                    self.switches += 1;
                }
            }
        }
        hit
    }

    pub fn len(&self) -> usize {
        if std::env::var("MINISIM_DEBUG").is_ok() {
            eprintln!("minisim: switches {} chosen per epoch {:?} over shares {:?}", self.switches, self.chosen, self.shares);
        }
        self.real.len()
    }
}
