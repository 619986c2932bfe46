//! `bench-replay`: the hit-ratio replay through the real memory tier. It reads the key
//! streams and reference figures that `bench/trace_reference.py --dump-dir DIR` writes (the
//! vendored traces and the Zipf workload, with libcachesim's LRU, W-TinyLFU, S3-FIFO, SIEVE and
//! Belady at each point) and replays each stream in order through a `MemoryTier` holding the
//! point's entry count: every request is a `get_now`, and a miss is followed by a `put`, as the
//! read-through path does. Every entry weighs the same (fixed-width keys `t00000001`, one value),
//! and the tier's bound is `MemoryTier::bound_for(count × weight)`, so it holds exactly the
//! point's count, as the reference policies do.
//!
//! The tier seeds its key hashes per process (so nobody can aim keys at a table slot), which moves
//! its mini-simulations' sample and its sketch's collisions: each point is replayed `--runs`
//! times (default 5), each with a fresh tier, and the median is reported with the range.
//!
//! Usage: `bench-replay --streams DIR [--traces a,b] [--runs N] [--out FILE]`: prints a table,
//! writes JSON.
//! `bench-replay --bound-for N`: the `MEMORY_CACHE_MAX_BYTES` that holds N such entries.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_layer::cache::{Entry, Lifetimes, MemoryTier, Tier, now_ms};
use cache_layer::telemetry::Metrics;
use serde::Deserialize;

#[derive(Deserialize)]
struct Manifest {
    traces: Vec<TraceSpec>,
}

#[derive(Deserialize)]
struct TraceSpec {
    name: String,
    file: String,
    warmup: usize,
    points: Vec<Point>,
}

#[derive(Deserialize)]
struct Point {
    budget: String,
    capacity_entries: u64,
    reference: BTreeMap<String, f64>,
    target: f64,
}

/// The value every entry holds: as long as the origin stub's answers in mode `bytes:16` for a
/// key of this width (`bench/trace_http.py`), so both replays weigh entries alike.
const VALUE: &[u8] = br#"{"n":16,"padding":"xxxxxxxxxxxxxxxx","path":"/items/t00000000"}"#;

/// The weight of every entry of the replay.
fn weight() -> u64 {
    let probe = Entry::value("t00000000", VALUE, now_ms(), &life());
    u64::from(probe.weight("t00000000"))
}

/// Lifetimes longer than any replay: nothing expires.
fn life() -> Lifetimes {
    Lifetimes::fixed(
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
        Duration::from_secs(5),
    )
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn load_stream(path: &str) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Hits of the tier over `stream` after `warmup` requests, the entries it holds at the end and
/// its window share then.
fn replay(stream: &[u32], warmup: usize, entries: u64) -> (u64, u64, f64) {
    let (life, now) = (life(), now_ms());
    let tier = MemoryTier::new(
        MemoryTier::bound_for(entries * weight()),
        Arc::new(Metrics::detached()),
    );
    let mut key = String::with_capacity(16);
    let mut hits = 0;
    for (i, &k) in stream.iter().enumerate() {
        key.clear();
        write!(key, "t{k:08}").expect("a String takes any write");
        let hit = matches!(tier.get_now(&key), Some(Some(_)));
        if !hit {
            let entry = Arc::new(Entry::value(&key, VALUE, now, &life));
            futures_executor::block_on(tier.put(&key, entry)).expect("the memory tier cannot fail");
        }
        if hit && i >= warmup {
            hits += 1;
        }
    }
    tier.settle();
    (hits, tier.entries(), tier.window_share())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(n) = arg(&args, "--bound-for") {
        let n: u64 = n.parse().expect("--bound-for ENTRIES");
        println!("{}", MemoryTier::bound_for(n * weight()));
        return;
    }
    let dir = arg(&args, "--streams").expect("--streams DIR (from trace_reference.py --dump-dir)");
    let out = arg(&args, "--out");
    let only: Option<Vec<String>> = arg(&args, "--traces").map(|s| s.split(',').map(str::to_owned).collect());
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(format!("{dir}/manifest.json")).expect("manifest.json"))
            .expect("a manifest written by trace_reference.py");
    let runs: usize = arg(&args, "--runs").map_or(5, |r| r.parse().expect("--runs N"));
    let names = ["LRU", "W-TinyLFU", "S3-FIFO", "SIEVE", "Belady"];
    println!(
        "| trace | budget | entries | {} | target | cache-layer | held | window |",
        names.join(" | ")
    );
    println!("|{}", "---|".repeat(names.len() + 7));
    let (mut rows, mut met, mut all) = (Vec::new(), 0, 0);
    for spec in &manifest.traces {
        if only.as_ref().is_some_and(|o| !o.contains(&spec.name)) {
            continue;
        }
        let stream = load_stream(&format!("{dir}/{}", spec.file));
        for p in &spec.points {
            let t0 = Instant::now();
            let mut outcomes: Vec<(f64, u64, f64)> = (0..runs.max(1))
                .map(|_| {
                    let (hits, held, share) = replay(&stream, spec.warmup, p.capacity_entries);
                    (hits as f64 / (stream.len() - spec.warmup) as f64, held, share)
                })
                .collect();
            outcomes.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (lowest, highest) = (outcomes[0].0, outcomes[outcomes.len() - 1].0);
            let (ratio, held, share) = outcomes[outcomes.len() / 2];
            // Half a request in a million of tolerance for the reference's float rounding.
            let meets = ratio + 5e-7 >= p.target;
            met += usize::from(meets);
            all += 1;
            let cells: Vec<String> = names
                .iter()
                .map(|n| {
                    p.reference
                        .get(*n)
                        .map(|v| format!("{:.2}", 100.0 * v))
                        .unwrap_or_default()
                })
                .collect();
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.2}{} | {held} | {:.0} % |",
                spec.name,
                p.budget,
                p.capacity_entries,
                cells.join(" | "),
                100.0 * p.target,
                100.0 * ratio,
                if meets { "" } else { " ✗" },
                100.0 * share,
            );
            rows.push(serde_json::json!({
                "trace": spec.name, "budget": p.budget, "capacity_entries": p.capacity_entries,
                "reference": p.reference, "target": p.target, "hit_ratio": ratio,
                "hit_ratio_min": lowest, "hit_ratio_max": highest, "runs": outcomes.len(),
                "entries_at_end": held, "window_share_at_end": share, "meets_goal": meets,
                "seconds": t0.elapsed().as_secs_f64(),
            }));
        }
    }
    println!("\npoints meeting the goal (>= LRU and >= best of W-TinyLFU/S3-FIFO/SIEVE - 1 pt): {met}/{all}");
    if let Some(out) = out {
        let doc = serde_json::json!({ "rows": rows, "met": met, "points": all });
        std::fs::write(&out, serde_json::to_string_pretty(&doc).expect("JSON")).expect("write --out");
    }
}
