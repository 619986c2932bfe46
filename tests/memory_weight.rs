//! The memory tier's byte bound is only as honest as the weight it gives each entry. This test
//! measures what entries really cost on the heap (a counting allocator, with the C allocator's
//! per-chunk header and rounding) and checks the weight against it, for the small entries of a
//! unique-key flood and for large values. It counts bytes, never time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use cache_layer::cache::{Entry, Lifetimes, MemoryTier, Tier, now_ms};
use cache_layer::telemetry::Metrics;

/// Live heap bytes as glibc's malloc lays them out: 8 bytes of header per chunk, chunks
/// rounded up to 16 bytes, 32 at least.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(chunk(new_size) - chunk(layout.size()), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn life() -> Lifetimes {
    Lifetimes::fixed(
        std::time::Duration::from_secs(600),
        std::time::Duration::from_secs(600),
        std::time::Duration::from_secs(5),
    )
}

/// Heap bytes per entry and weight per entry, over entries `from..to` (so fixed costs cancel).
async fn measure(tier: &MemoryTier, from: usize, to: usize, prefix: &str, value: &[u8]) -> (f64, f64) {
    measure_tagged(tier, from, to, prefix, value, 0).await
}

/// As `measure`, each entry carrying `tags` tags of its own (no other entry shares them: the
/// tag index's worst case).
async fn measure_tagged(
    tier: &MemoryTier,
    from: usize,
    to: usize,
    prefix: &str,
    value: &[u8],
    tags: usize,
) -> (f64, f64) {
    let fill = |range: std::ops::Range<usize>| {
        let tier = tier.clone();
        let value = value.to_vec();
        let prefix = prefix.to_owned();
        async move {
            let mut weight = 0u64;
            for i in range {
                // Keys and values shaped like a load test's: `key-<n>` and the value's JSON.
                let key = format!("{prefix}-{i}");
                let own: Vec<String> = (0..tags).map(|t| format!("tag-{i:06}-{t:02}")).collect();
                let e = Entry::value(&key, &value, now_ms(), &life()).with_tags(&own);
                weight += u64::from(e.weight(&key));
                tier.put(&key, Arc::new(e)).await.unwrap();
            }
            tier.settle();
            weight
        }
    };
    fill(0..from).await;
    let before = LIVE.load(Ordering::Relaxed);
    let weight = fill(from..to).await;
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(
        tier.entries(),
        to as u64,
        "nothing may be evicted while measuring"
    );
    let n = (to - from) as f64;
    ((after - before) as f64 / n, weight as f64 / n)
}

fn check(what: &str, heap: f64, weight: f64) {
    eprintln!("{what}: heap {heap:.0} B per entry, weight {weight:.0} B");
    // Generous: the weight may over-count (the bound then holds with room to spare), but must
    // not under-count by more than a little.
    assert!(
        weight >= heap * 0.95 && weight <= heap * 1.6,
        "{what}: weight {weight:.0} B against a measured {heap:.0} B per entry"
    );
}

/// Heap bytes and weight per entry for `key_prefix-<n>` keys and `value`, checked.
async fn weighs_what_it_costs(what: &str, entries: (usize, usize), key_prefix: &str, value: &[u8]) {
    let tier = MemoryTier::new(1 << 30, Arc::new(Metrics::detached()));
    let (heap, weight) = measure(&tier, entries.0, entries.1, key_prefix, value).await;
    check(what, heap, weight);
}

#[tokio::test(flavor = "current_thread")]
async fn small_entries_weigh_what_they_cost() {
    // Shaped like the load test's keys and the origin stub's values.
    let value = br#"{"path":"/items/key-123456","n":123456}"#;
    weighs_what_it_costs("small entries", (20_000, 60_000), "key", value).await;
    weighs_what_it_costs("one-byte values", (20_000, 40_000), "k", b"1").await;
}

#[tokio::test(flavor = "current_thread")]
async fn large_values_weigh_what_they_cost() {
    let value = serde_json::to_vec(&"x".repeat(500 * 1024)).unwrap();
    weighs_what_it_costs("500 KB values", (20, 220), "key", &value).await;
    let value = serde_json::to_vec(&"v".repeat(1000)).unwrap();
    weighs_what_it_costs("1 KB values", (20_000, 40_000), "k", &value).await;
}

#[tokio::test(flavor = "current_thread")]
async fn tags_of_their_own_weigh_what_they_cost() {
    // 32 tags of 13 bytes per entry, no two entries sharing one: the tag index's worst case
    // (an attack found RSS at 3 x the bound when tags were under-counted).
    let tier = MemoryTier::new(1 << 30, Arc::new(Metrics::detached()));
    let value = br#"{"path":"/items/key-123456","n":123456}"#;
    let (heap, weight) = measure_tagged(&tier, 2_000, 6_000, "key", value, 32).await;
    check("32 tags of its own", heap, weight);
}

#[tokio::test(flavor = "current_thread")]
async fn long_keys_weigh_what_they_cost() {
    weighs_what_it_costs("300-byte keys", (20_000, 40_000), &"k".repeat(300), b"1").await;
}

/// Heap bytes the tier takes in all (entries, table, policy, sketch, mini-simulations, expiry
/// heap) after a flood of unique small keys far beyond its bound.
async fn heap_after_flood(bound: u64, keys: usize) -> (isize, u64) {
    let before = LIVE.load(Ordering::Relaxed);
    let tier = MemoryTier::new(bound, Arc::new(Metrics::detached()));
    let value = br#"{"path":"/items/key-123456","n":123456}"#;
    for i in 0..keys {
        let key = format!("key-{i}");
        tier.put(&key, Arc::new(Entry::value(&key, value, now_ms(), &life())))
            .await
            .unwrap();
    }
    tier.settle();
    (LIVE.load(Ordering::Relaxed) - before, tier.entries())
}

#[tokio::test(flavor = "current_thread")]
async fn the_whole_tier_stays_within_its_bound_under_a_flood() {
    // 4 MiB: the mini-simulations at full size; 256 KiB: at an eighth of the bound.
    for (bound, keys) in [(4u64 << 20, 60_000), (256 << 10, 10_000)] {
        let (heap, entries) = heap_after_flood(bound, keys).await;
        eprintln!("bound {bound} B: heap {heap} B with {entries} entries");
        assert!(heap as u64 <= bound, "heap {heap} B over a bound of {bound} B");
        // And the bound is used: at least 80 % of it is heap.
        assert!(
            heap as u64 >= bound * 8 / 10,
            "heap {heap} B of a bound of {bound} B"
        );
    }
}
