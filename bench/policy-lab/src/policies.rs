//! Each candidate behind one replay interface: `access(key)` is a read, and on a miss the value is
//! fetched and inserted, as cache-layer's read-through path does (memory get; on a miss, put).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::minisim::MiniSim;
use crate::wtinylfu::WTinyLfu;

pub trait Replay {
    /// One request: true on a hit; on a miss the key is inserted (weight 1).
    fn access(&mut self, key: u32) -> bool;
    /// Entries held now (after pending maintenance).
    fn entries(&mut self) -> u64;
}

/// The names `make` accepts, in report order.
pub const ALL: &[&str] = &[
    "moka",
    "moka-lru",
    "moka-bytes",
    "moka-128",
    "foyer-lfu",
    "foyer-lfu-1shard",
    "foyer-s3fifo",
    "foyer-s3fifo-1shard",
    "foyer-sieve-1shard",
    "foyer-lru-1shard",
    "wtinylfu-1pct",
    "wtinylfu-adaptive",
    "wtinylfu-minisim",
    "lru",
];

pub fn describe(name: &str) -> &'static str {
    match name {
        "moka" => "moka 0.12 sync::Cache as src/cache/memory.rs builds it (max_capacity + weigher + expire_after + eviction_listener; run_pending_tasks after each insert), weight 1",
        "moka-lru" => "the same with .eviction_policy(EvictionPolicy::lru())",
        "moka-bytes" => "moka as committed (HEAD): byte weigher, every entry 250 B, max_capacity = entries × 250",
        "moka-128" => "moka as in the work tree: 128-byte weight units, every entry 2 units, max_capacity = entries × 2",
        "foyer-lfu" => "foyer-memory Cache, LfuConfig::default() (window 10 %, protected 80 %, count-min eps 0.001), default 8 shards",
        "foyer-lfu-1shard" => "the same, .with_shards(1)",
        "foyer-s3fifo" => "foyer-memory Cache, S3FifoConfig::default() (small 10 %, ghost 100 %, threshold 1), 8 shards",
        "foyer-s3fifo-1shard" => "the same, .with_shards(1)",
        "foyer-sieve-1shard" => "foyer-memory Cache, SieveConfig, 1 shard",
        "foyer-lru-1shard" => "foyer-memory Cache, LruConfig::default(), 1 shard",
        "wtinylfu-1pct" => "src/wtinylfu.rs with the window fixed at 1 % (checks it against libcachesim's WTinyLFU)",
        "wtinylfu-adaptive" => "src/wtinylfu.rs: W-TinyLFU with Caffeine's hill-climbed window",
        "wtinylfu-minisim" => "src/minisim.rs: W-TinyLFU whose window share (1 %..100 %) is picked by sampled mini-simulations",
        "lru" => "strict LRU (checks the replay against libcachesim's LRU)",
        n if n.starts_with("wtinylfu-w") => "src/wtinylfu.rs with the window at the given share (suffix a: adaptive from there)",
        _ => "?",
    }
}

pub fn make(name: &str, capacity: u64) -> Box<dyn Replay> {
    match name {
        "moka" => Box::new(Moka::new(capacity, false)),
        "moka-lru" => Box::new(Moka::new(capacity, true)),
        // As committed before the 128-byte unit change: weights in bytes (250 B per entry, the
        // Zipf benchmark's mean), capacity in bytes, so moka sizes its sketch by bytes.
        "moka-bytes" => Box::new(Moka::weighted(capacity * 250, 250)),
        // As the work tree has it now: 128-byte units (250 B -> 2 units).
        "moka-128" => Box::new(Moka::weighted(capacity * 2, 2)),
        "foyer-lfu" => Box::new(Foyer::new(
            capacity,
            8,
            foyer_memory::LfuConfig::default().into(),
        )),
        "foyer-lfu-1shard" => Box::new(Foyer::new(
            capacity,
            1,
            foyer_memory::LfuConfig::default().into(),
        )),
        "foyer-s3fifo" => Box::new(Foyer::new(
            capacity,
            8,
            foyer_memory::S3FifoConfig::default().into(),
        )),
        "foyer-s3fifo-1shard" => Box::new(Foyer::new(
            capacity,
            1,
            foyer_memory::S3FifoConfig::default().into(),
        )),
        "foyer-sieve-1shard" => Box::new(Foyer::new(capacity, 1, foyer_memory::SieveConfig {}.into())),
        "foyer-lru-1shard" => Box::new(Foyer::new(
            capacity,
            1,
            foyer_memory::LruConfig::default().into(),
        )),
        "wtinylfu-1pct" => Box::new(Own(WTinyLfu::new(capacity, false, false))),
        "wtinylfu-adaptive" => Box::new(Own(WTinyLfu::new(capacity, true, false))),
        "lru" => Box::new(Lru::new(capacity)),
        "wtinylfu-minisim" => Box::new(Mini(MiniSim::new(capacity, crate::minisim::MINI_ENTRIES))),
        other if other.starts_with("wtinylfu-minisim-") => {
            let m: u64 = other["wtinylfu-minisim-".len()..].parse().unwrap();
            Box::new(Mini(MiniSim::new(capacity, m)))
        }
        other if other.starts_with("wtinylfu-w") => {
            // wtinylfu-w0.2: window fixed at 20 %; wtinylfu-w0.2a: starts there, adaptive.
            let rest = &other["wtinylfu-w".len()..];
            let (share, adaptive) = match rest.strip_suffix('a') {
                Some(s) => (s, true),
                None => (rest, false),
            };
            Box::new(Own(WTinyLfu::with_window(capacity, share.parse().unwrap(), adaptive, false)))
        }
        other => panic!("unknown policy {other}; known: {ALL:?}"),
    }
}

// ---- moka, configured like src/cache/memory.rs ----

/// Like `UntilUnservable`: every entry gets a lifetime; here far beyond the replay.
struct FarExpiry;

impl moka::Expiry<u32, Arc<u32>> for FarExpiry {
    fn expire_after_create(&self, _k: &u32, _v: &Arc<u32>, _at: Instant) -> Option<Duration> {
        Some(Duration::from_secs(24 * 3600))
    }
    fn expire_after_update(
        &self,
        _k: &u32,
        _v: &Arc<u32>,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_secs(24 * 3600))
    }
}

pub struct Moka {
    map: moka::sync::Cache<u32, Arc<u32>>,
}

impl Moka {
    fn new(capacity: u64, lru: bool) -> Self {
        let mut b = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &u32, _v: &Arc<u32>| 1u32)
            .expire_after(FarExpiry)
            .eviction_listener(|_k, _v, _cause| {});
        if lru {
            b = b.eviction_policy(moka::policy::EvictionPolicy::lru());
        }
        Moka { map: b.build() }
    }
}

impl Moka {
    fn weighted(max_capacity: u64, weight: u32) -> Self {
        let map = moka::sync::Cache::builder()
            .max_capacity(max_capacity)
            .weigher(move |_k: &u32, _v: &Arc<u32>| weight)
            .expire_after(FarExpiry)
            .eviction_listener(|_k, _v, _cause| {})
            .build();
        Moka { map }
    }
}

impl Replay for Moka {
    fn access(&mut self, key: u32) -> bool {
        if self.map.get(&key).is_some() {
            return true;
        }
        self.map.insert(key, Arc::new(key));
        // As MemoryTier::put does.
        self.map.run_pending_tasks();
        false
    }
    fn entries(&mut self) -> u64 {
        self.map.run_pending_tasks();
        self.map.entry_count()
    }
}

// ---- foyer-memory ----

pub struct Foyer {
    map: foyer_memory::Cache<u32, Arc<u32>>,
}

impl Foyer {
    fn new(capacity: u64, shards: usize, eviction: foyer_memory::EvictionConfig) -> Self {
        let map = foyer_memory::CacheBuilder::new(capacity as usize)
            .with_shards(shards)
            .with_eviction_config(eviction)
            .with_weighter(|_k: &u32, _v: &Arc<u32>| 1)
            .build();
        Foyer { map }
    }
}

impl Replay for Foyer {
    fn access(&mut self, key: u32) -> bool {
        if self.map.get(&key).is_some() {
            return true;
        }
        // The returned handle is dropped at once, as a tier that clones the Arc out would.
        drop(self.map.insert(key, Arc::new(key)));
        false
    }
    fn entries(&mut self) -> u64 {
        self.map.entries() as u64
    }
}

// ---- the scratch W-TinyLFU ----

pub struct Own(pub WTinyLfu<u32>);

impl Replay for Own {
    fn access(&mut self, key: u32) -> bool {
        if self.0.get(&key) {
            return true;
        }
        self.0.insert(key, 1);
        false
    }
    fn entries(&mut self) -> u64 {
        self.0.len() as u64
    }
}

pub struct Mini(pub MiniSim);

impl Replay for Mini {
    fn access(&mut self, key: u32) -> bool {
        self.0.access(key)
    }
    fn entries(&mut self) -> u64 {
        self.0.len() as u64
    }
}

// ---- strict LRU (the yardstick, as bench/lru.rs) ----

pub struct Lru {
    capacity: usize,
    last_used: HashMap<u32, u64>,
    by_age: BTreeMap<u64, u32>,
    tick: u64,
}

impl Lru {
    fn new(capacity: u64) -> Self {
        Lru {
            capacity: capacity.max(1) as usize,
            last_used: HashMap::new(),
            by_age: BTreeMap::new(),
            tick: 0,
        }
    }
}

impl Replay for Lru {
    fn access(&mut self, key: u32) -> bool {
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
    fn entries(&mut self) -> u64 {
        self.last_used.len() as u64
    }
}
