//! A frequency sketch: how often a key was seen lately, in 8 bytes per key it is sized for and
//! with no per-key allocation. The memory tier's policy uses it for TinyLFU admission (does a
//! newcomer beat the entry it would evict?), the disk tier to keep keys seen once off the disk.
//!
//! A count-min sketch of 4-bit counters, 16 per 64-bit word, 4 counters per key (one in each of
//! 4 words picked by 4 seeded hashes). Sized to the next power of two of the entry count, it
//! halves every counter after `10 × entries` increments (aging), as Caffeine's FrequencySketch.

/// splitmix64's finaliser: every input bit moves every output bit.
pub(crate) fn spread(hash: u64) -> u64 {
    let mut x = hash;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a 64 of `bytes`: a hash that is the same in every process and release (the standard
/// library's may change), for what is written down and compared later.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_of(&[bytes])
}

/// FNV-1a 64 of `parts` one after the other: [`fnv1a`] of their concatenation, without
/// making it.
pub(crate) fn fnv1a_of(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// SipHash of `bytes` under `keys`: a hash no client can aim keys at while the keys are
/// secret, and the same again in another process given the same (saved) keys.
pub(crate) fn keyed(keys: (u64, u64), bytes: &[u8]) -> u64 {
    #[allow(deprecated)] // std's SipHasher: keyed, needs no crate, and its keys can be saved.
    let mut h = std::hash::SipHasher::new_with_keys(keys.0, keys.1);
    std::hash::Hasher::write(&mut h, bytes);
    std::hash::Hasher::finish(&h)
}

/// The sketch; empty (every frequency 0, increments ignored) until [`Sketch::ensure_capacity`].
#[derive(Default)]
pub(crate) struct Sketch {
    table: Vec<u64>,
    mask: usize,
    /// Increments between two halvings.
    sample_size: u64,
    /// Increments since the last halving.
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

/// Bytes of sketch per entry it is sized for (before the round up to a power of two).
pub(crate) const BYTES_PER_WORD: u64 = 8;

impl Sketch {
    /// A sketch for `entries` keys that halves its counts every `sample_size` increments: a
    /// count then says how often a key was seen within about the last `sample_size` sightings.
    pub(crate) fn with_sample(entries: u64, sample_size: u64) -> Self {
        let mut sketch = Sketch::default();
        sketch.ensure_capacity(entries);
        sketch.sample_size = sample_size.max(1);
        sketch
    }

    /// Sizes the sketch for `entries` keys (counts are dropped when it grows).
    pub(crate) fn ensure_capacity(&mut self, entries: u64) {
        let maximum = entries.clamp(1, 1 << 30);
        if self.table.len() as u64 >= maximum {
            return;
        }
        let len = (maximum as usize).next_power_of_two().max(8);
        self.table = vec![0; len];
        self.mask = len - 1;
        self.sample_size = 10 * maximum;
        self.size = 0;
    }

    fn index_of(&self, item: u64, i: usize) -> usize {
        let mut h = item.wrapping_add(SEEDS[i]).wrapping_mul(SEEDS[i]);
        h = h.wrapping_add(h >> 32);
        (h as usize) & self.mask
    }

    /// How often the key of `hash` was seen lately (at most 15).
    pub(crate) fn frequency(&self, hash: u64) -> u8 {
        if self.table.is_empty() {
            return 0;
        }
        let item = spread(hash);
        let start = ((item & 3) << 2) as u32;
        (0..4)
            .map(|i| ((self.table[self.index_of(item, i)] >> ((start + i as u32) << 2)) & 0xf) as u8)
            .min()
            .unwrap_or(0)
    }

    /// Counts one sighting of the key of `hash`.
    pub(crate) fn increment(&mut self, hash: u64) {
        if self.table.is_empty() {
            return;
        }
        let item = spread(hash);
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
            if self.size >= self.sample_size {
                self.reset();
            }
        }
    }

    /// The sketch as bytes, for a file: its length in words, the increments since the last
    /// halving and between two, then every word (little-endian).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 8 * self.table.len());
        for v in [self.table.len() as u64, self.size, self.sample_size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for w in &self.table {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Puts back what [`Sketch::to_bytes`] wrote, when it is a sketch of this one's size and
    /// window; `false` (and nothing changed) otherwise.
    pub(crate) fn restore(&mut self, bytes: &[u8]) -> bool {
        let word = |i: usize| {
            bytes
                .get(8 * i..8 * i + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let (Some(len), Some(size), Some(sample)) = (word(0), word(1), word(2)) else {
            return false;
        };
        if len != self.table.len() as u64
            || sample != self.sample_size
            || bytes.len() != 24 + 8 * self.table.len()
        {
            return false;
        }
        for (i, w) in self.table.iter_mut().enumerate() {
            *w = word(3 + i).expect("length checked");
        }
        self.size = size.min(self.sample_size);
        true
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
    fn a_sketch_written_out_comes_back_only_into_one_of_its_shape() {
        let mut s = Sketch::with_sample(1000, 5000);
        for _ in 0..3 {
            s.increment(42);
        }
        let bytes = s.to_bytes();
        let mut back = Sketch::with_sample(1000, 5000);
        assert!(back.restore(&bytes));
        assert_eq!(back.frequency(42), 3);
        assert!(!Sketch::with_sample(5000, 5000).restore(&bytes), "another size");
        assert!(!Sketch::with_sample(1000, 9000).restore(&bytes), "another window");
        assert!(!back.restore(&bytes[..bytes.len() - 1]), "cut short");
    }

    #[test]
    fn counts_what_it_sees_and_forgets_it_with_age() {
        let mut s = Sketch::default();
        assert_eq!(s.frequency(7), 0);
        s.increment(7);
        assert_eq!(s.frequency(7), 0, "an empty sketch counts nothing");
        s.ensure_capacity(1024);
        s.increment(7);
        s.increment(7);
        assert_eq!(s.frequency(7), 2);
        for _ in 0..20 {
            s.increment(7);
        }
        assert_eq!(s.frequency(7), 15, "counters saturate at 15");
        // 10 × 1024 other sightings: the counts have halved at least once.
        for k in 0..10 * 1024u64 {
            s.increment(spread(k + 1_000_000));
        }
        assert!(s.frequency(7) <= 7, "{}", s.frequency(7));
    }
}
