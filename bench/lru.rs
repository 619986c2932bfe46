//! `bench-lru`: the yardstick of the Zipf benchmark. It replays a Zipf key stream of the same
//! shape as the load test's (`--pattern zipf`) through a strict LRU cache holding the same byte
//! budget as the memory tier, and prints the LRU's hit ratio: the memory tier's hit ratio on the
//! same workload should be at least this. It also prints the best any cache of that size could do
//! on an independent stream (always holding the most popular keys).
//!
//! Usage: `bench-lru --keys N --exponent S --budget-bytes B --entry-bytes W --warmup W --requests R
//! [--seed X]`; prints one JSON object.

use std::collections::{BTreeMap, HashMap};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};

/// A strict LRU over key ranks, each entry weighing the same.
struct Lru {
    capacity: usize,
    /// Key → the tick it was last used.
    last_used: HashMap<u64, u64>,
    /// Tick → key, oldest first.
    by_age: BTreeMap<u64, u64>,
    tick: u64,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Lru {
            capacity,
            last_used: HashMap::with_capacity(capacity + 1),
            by_age: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Looks `key` up, inserting it on a miss; true on a hit.
    fn access(&mut self, key: u64) -> bool {
        self.tick += 1;
        let hit = match self.last_used.insert(key, self.tick) {
            Some(old) => {
                self.by_age.remove(&old);
                true
            }
            None => false,
        };
        self.by_age.insert(self.tick, key);
        if self.last_used.len() > self.capacity
            && let Some((_, oldest)) = self.by_age.pop_first()
        {
            self.last_used.remove(&oldest);
        }
        hit
    }
}

fn main() {
    let mut opts: HashMap<String, f64> = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let (Some(name), Some(value)) = (args.next(), args.next()) {
        let value = value
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {value:?} is not a number"));
        opts.insert(name.trim_start_matches('-').to_owned(), value);
    }
    let get = |name: &str| -> f64 {
        *opts
            .get(name)
            .unwrap_or_else(|| panic!("--{name} is required (see the doc comment of bench/lru.rs)"))
    };
    let keys = get("keys") as u64;
    let exponent = get("exponent");
    let capacity = (get("budget-bytes") / get("entry-bytes")).floor() as usize;
    let warmup = get("warmup") as u64;
    let requests = get("requests") as u64;
    let seed = opts.get("seed").copied().unwrap_or(1.0) as u64;

    let zipf = Zipf::new(keys as f64, exponent).expect("a valid Zipf distribution");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut lru = Lru::new(capacity.max(1));
    for _ in 0..warmup {
        lru.access(zipf.sample(&mut rng) as u64);
    }
    let hits = (0..requests)
        .filter(|_| lru.access(zipf.sample(&mut rng) as u64))
        .count();
    // The most popular `capacity` keys' share of requests.
    let weight = |k: u64| (k as f64).powf(-exponent);
    let total: f64 = (1..=keys).map(weight).sum();
    let best: f64 = (1..=keys.min(capacity as u64)).map(weight).sum::<f64>() / total;
    println!(
        "{{\"capacity_entries\": {capacity}, \"requests\": {requests}, \"lru_hits\": {hits}, \
         \"lru_hit_ratio\": {:.6}, \"best_static_hit_ratio\": {best:.6}}}",
        hits as f64 / requests.max(1) as f64
    );
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        assert!(!lru.access(1));
        assert!(!lru.access(2));
        assert!(lru.access(1)); // 2 is now the oldest
        assert!(!lru.access(3)); // evicts 2
        assert!(lru.access(1));
        assert!(!lru.access(2));
    }
}
