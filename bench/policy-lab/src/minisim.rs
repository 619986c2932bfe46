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
    pub chosen: Vec<u64>,
}

impl MiniSim {
    pub fn new(capacity: u64, mini_entries: u64) -> Self {
        let capacity = capacity.max(1);
        let rate = (mini_entries as f64 / capacity as f64).min(1.0);
        let mini_cap = ((capacity as f64 * rate).round() as u64).max(1);
        let minis = SHARES
            .iter()
            .map(|&s| {
                let mut m = WTinyLfu::new(mini_cap, false, false);
                m.set_window_share(s);
                m
            })
            .collect();
        let start = std::env::var("MINISIM_START").ok().and_then(|v| v.parse().ok()).unwrap_or(START);
        let epoch: u64 = std::env::var("MINISIM_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(EPOCH);
        let decay: f64 = std::env::var("MINISIM_DECAY").ok().and_then(|v| v.parse().ok()).unwrap_or(DECAY);
        let mut real = WTinyLfu::new(capacity, false, false);
        real.set_window_share(SHARES[start]);
        MiniSim {
            real,
            minis,
            threshold: if rate >= 1.0 { u64::MAX } else { (rate * u64::MAX as f64) as u64 },
            epoch_len: epoch * mini_cap,
            decay,
            margin: std::env::var("MINISIM_MARGIN").ok().and_then(|v| v.parse().ok()).unwrap_or(0.0),
            in_epoch: 0,
            epoch_hits: vec![0; SHARES.len()],
            scores: vec![0.0; SHARES.len()],
            current: start,
            switches: 0,
            chosen: vec![0; SHARES.len()],
        }
    }

    fn sample_hash(key: u32) -> u64 {
        let mut h = DefaultHasher::new();
        (key, 0x5eed_u32).hash(&mut h);
        h.finish()
    }

    pub fn access(&mut self, key: u32) -> bool {
        let hit = self.real.get(&key);
        if !hit {
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
                for i in 0..SHARES.len() {
                    self.scores[i] = self.decay * self.scores[i] + self.epoch_hits[i] as f64;
                    self.epoch_hits[i] = 0;
                }
                self.in_epoch = 0;
                let mut best = self.current;
                for i in 0..SHARES.len() {
                    if self.scores[i] > self.scores[best] {
                        best = i;
                    }
                }
                // Switch only for a lead beyond the noise of the current choice's count
                // (about its square root, as for a Poisson count), times MINISIM_MARGIN.
                let cur = self.scores[self.current];
                if self.scores[best] - cur <= self.margin * cur.max(1.0).sqrt() {
                    best = self.current;
                }
                self.chosen[best] += 1;
                if best != self.current {
                    self.current = best;
                    self.real.set_window_share(SHARES[best]);
                    self.switches += 1;
                }
            }
        }
        hit
    }

    pub fn len(&self) -> usize {
        if std::env::var("MINISIM_DEBUG").is_ok() {
            eprintln!("minisim: switches {} chosen per epoch {:?} over shares {:?}", self.switches, self.chosen, SHARES);
        }
        self.real.len()
    }
}
