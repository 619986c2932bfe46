//! `bench-tier`: the memory tier alone, at 1 to 16 threads. What a pod with more cores should
//! expect from the hit path, measured where two cores cannot show it end to end: operations per
//! second and the per-operation latency (p50, p99, p99.9) of `get_now` (a miss followed by a
//! `put`, as the read-through does) from N threads at once, over three workloads:
//! - `hot`: every thread reads one key (the worst case for shared cache lines);
//! - `zipf`: keys drawn Zipf(0.99) over `--keys` keys, the tier holding 80 % of them, so misses
//!   write and writes evict (the policy's work);
//! - `churn`: as `zipf`, while one more thread writes unique keys as fast as it can with short
//!   lifetimes, so evictions and expiries run all the time; only the readers' operations are
//!   timed.
//!
//! And `resize` (`--workloads resize`, not in the default set): window resizes over a tier of
//! `--keys` entries, which a policy epoch (about ten tier-fulls of reads) makes too rare for an
//! HTTP run to reach. One thread reads a hot key 5,000 times a second and times each read, while
//! another reads first a recency-only workload (each key twice, 30 % of the tier apart: a window
//! of a quarter is too small for it) and then Zipf(0.99) over 1.25 × the keys (frequency pays),
//! each phase until the policy has moved the window (or `RESIZE_PHASE_MAX_SECS`); a third thread
//! notes each change of the window share. Prints the hot key's latency alone, in each phase and
//! in the second after each resize.
//!
//! Usage: `bench-tier [--keys N] [--secs S] [--threads 1,2,4,8,16] [--workloads hot,zipf,churn]
//! [--out FILE]`: prints a table, writes JSON.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cache_layer::cache::{Entry, Lifetimes, MemoryTier, Tier, now_ms};
use cache_layer::telemetry::Metrics;
use futures_util::FutureExt;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};

struct Args {
    keys: usize,
    secs: f64,
    threads: Vec<usize>,
    workloads: Vec<String>,
    out: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        keys: 1_000_000,
        secs: 3.0,
        threads: vec![1, 2, 4, 8, 16],
        workloads: vec!["hot".into(), "zipf".into(), "churn".into()],
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--keys" => a.keys = value().parse().expect("--keys: a count"),
            "--secs" => a.secs = value().parse().expect("--secs: seconds"),
            "--threads" => {
                a.threads = value()
                    .split(',')
                    .map(|t| t.parse().expect("--threads: counts"))
                    .collect()
            }
            "--workloads" => a.workloads = value().split(',').map(str::to_owned).collect(),
            "--out" => a.out = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn life(secs: u64) -> Lifetimes {
    Lifetimes::fixed(
        Duration::from_secs(secs),
        Duration::from_secs(secs),
        Duration::from_secs(5),
    )
}

fn key(i: usize) -> String {
    format!("k{i:08}")
}

/// One run's figures.
struct Figures {
    ops_per_sec: f64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
    hit_ratio: f64,
}

fn run(tier: &MemoryTier, keys: &Arc<Vec<String>>, workload: &str, threads: usize, secs: f64) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let churn = (workload == "churn").then(|| {
        let (tier, stop) = (tier.clone(), stop.clone());
        std::thread::spawn(move || {
            let short = life(1);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("churn-{i}");
                let e = Arc::new(Entry::value(&k, br#""churned""#, now_ms(), &short));
                let _ = tier.put(&k, e).now_or_never();
                i += 1;
            }
        })
    });
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (tier, keys, stop, workload) =
                (tier.clone(), keys.clone(), stop.clone(), workload.to_owned());
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
                let mut rng = SmallRng::seed_from_u64(t as u64 + 1);
                let zipf = Zipf::new(keys.len() as f64, 0.99).expect("zipf");
                let value = life(3600);
                let (mut ops, mut hits) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        let k = if workload == "hot" {
                            &keys[0]
                        } else {
                            &keys[zipf.sample(&mut rng) as usize - 1]
                        };
                        let t0 = Instant::now();
                        if let Some(Some(_)) = tier.get_now(k) {
                            hits += 1;
                        } else {
                            let e = Arc::new(Entry::value(k, br#""value""#, now_ms(), &value));
                            let _ = tier.put(k, e).now_or_never();
                        }
                        let _ = hist.record(t0.elapsed().as_nanos() as u64);
                        ops += 1;
                    }
                }
                (hist, ops, hits)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let (mut ops, mut hits) = (0, 0);
    for w in workers {
        let (h, o, k) = w.join().expect("worker");
        hist.add(h).expect("same bounds");
        ops += o;
        hits += k;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(c) = churn {
        c.join().expect("churn");
    }
    Figures {
        ops_per_sec: ops as f64 / elapsed,
        p50_ns: hist.value_at_quantile(0.5),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
        max_ns: hist.max(),
        hit_ratio: hits as f64 / ops.max(1) as f64,
    }
}

/// How long a phase of the `resize` workload may wait for a resize.
const RESIZE_PHASE_MAX_SECS: f64 = 90.0;

/// The `resize` workload (see the file's doc): the hot key's reads as (due s, ns), the resizes
/// as (s, share), and each phase's (name, start s, end s).
fn resize_run(keys: usize) -> serde_json::Value {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU8;
    let weight = u64::from(Entry::value(&key(0), br#""value""#, now_ms(), &life(3600)).weight(&key(0)));
    let tier = MemoryTier::new(
        MemoryTier::bound_for(weight * keys as u64),
        Arc::new(Metrics::detached()),
    );
    let value = life(3600);
    let fill = |k: &str| {
        let e = Arc::new(Entry::value(k, br#""value""#, now_ms(), &value));
        let _ = tier.put(k, e).now_or_never();
    };
    fill("hot");
    let phase = Arc::new(AtomicU8::new(0));
    let started = Instant::now();
    let resizes = Arc::new(Mutex::new(vec![(0.0, tier.window_share())]));
    let (hot, reader) = std::thread::scope(|scope| {
        let hot = scope.spawn(|| {
            let mut out = Vec::new();
            let mut due = Duration::ZERO;
            while phase.load(Ordering::Relaxed) != 3 {
                due += Duration::from_micros(200);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                let t0 = Instant::now();
                assert!(
                    matches!(tier.get_now("hot"), Some(Some(_))),
                    "the hot key is held"
                );
                out.push((due.as_secs_f64(), t0.elapsed().as_nanos() as u64));
            }
            out
        });
        let sampler = scope.spawn(|| {
            while phase.load(Ordering::Relaxed) != 3 {
                let share = tier.window_share();
                let mut r = resizes.lock().expect("resizes");
                if r.last().is_some_and(|&(_, s)| s != share) {
                    r.push((started.elapsed().as_secs_f64(), share));
                }
                drop(r);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let reader = scope.spawn(|| {
            let mut rng = SmallRng::seed_from_u64(7);
            let zipf = Zipf::new(keys as f64 * 1.25, 0.99).expect("zipf");
            let apart = (keys as u64) * 3 / 10;
            let (mut t, mut reads) = (0u64, 0u64);
            let mut phases = Vec::new();
            // The hot key alone first: the baseline.
            std::thread::sleep(Duration::from_secs(5));
            for (p, name) in [(1u8, "recency"), (2, "zipf")] {
                phase.store(p, Ordering::Relaxed);
                let from = started.elapsed().as_secs_f64();
                let seen = resizes.lock().expect("resizes").len();
                let mut moved_at = None;
                loop {
                    for _ in 0..1024 {
                        let k = if p == 1 {
                            t += 1;
                            format!(
                                "r{}",
                                if t % 2 == 0 {
                                    t / 2
                                } else {
                                    (t / 2).saturating_sub(apart)
                                }
                            )
                        } else {
                            format!("z{}", zipf.sample(&mut rng) as u64)
                        };
                        if !matches!(tier.get_now(&k), Some(Some(_))) {
                            fill(&k);
                        }
                        reads += 1;
                    }
                    let now = started.elapsed().as_secs_f64();
                    if moved_at.is_none() && resizes.lock().expect("resizes").len() > seen {
                        moved_at = Some(now);
                    }
                    // Two seconds past the resize: the window's moves are spread over the
                    // writes that follow it.
                    if moved_at.is_some_and(|m| now > m + 2.0) || now - from > RESIZE_PHASE_MAX_SECS {
                        break;
                    }
                }
                phases.push((name, from, started.elapsed().as_secs_f64(), reads));
            }
            phase.store(3, Ordering::Relaxed);
            phases
        });
        let phases = reader.join().expect("reader");
        sampler.join().expect("sampler");
        (hot.join().expect("hot"), phases)
    });
    let resizes = resizes.lock().expect("resizes").clone();
    let stats = |from: f64, to: f64| {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
        for &(_, ns) in hot.iter().filter(|&&(due, _)| due >= from && due < to) {
            let _ = h.record(ns);
        }
        serde_json::json!({"reads": h.len(), "p50_ns": h.value_at_quantile(0.5), "p99_ns": h.value_at_quantile(0.99),
            "p999_ns": h.value_at_quantile(0.999), "max_ns": h.max()})
    };
    let mut windows = vec![("alone".to_owned(), stats(0.5, 5.0))];
    for &(name, from, to, _) in &reader {
        windows.push((name.to_owned(), stats(from, to)));
    }
    for &(at, share) in resizes.iter().skip(1) {
        windows.push((
            format!("1 s after the resize to {share} at {at:.1} s"),
            stats(at, at + 1.0),
        ));
    }
    println!(
        "bench-tier resize: a tier of {} MiB ({keys} entries), window share {:?}",
        tier_mib(&tier),
        resizes
    );
    for &(name, from, to, reads) in &reader {
        println!("  phase {name}: {from:.1}-{to:.1} s, {reads} reads so far");
    }
    for (name, s) in &windows {
        println!("  hot key {name:<40} {s}");
    }
    serde_json::json!({"keys": keys, "resizes": resizes, "phases": reader, "hot": windows})
}

/// The tier's bytes held, in MiB.
fn tier_mib(tier: &MemoryTier) -> u64 {
    tier.bytes() >> 20
}

fn main() {
    let a = args();
    if a.workloads == ["resize"] {
        let doc = resize_run(a.keys);
        if let Some(out) = a.out {
            std::fs::write(&out, serde_json::to_vec_pretty(&doc).expect("json")).expect("write --out");
        }
        return;
    }
    let keys: Arc<Vec<String>> = Arc::new((0..a.keys).map(key).collect());
    let weight = u64::from(Entry::value(&keys[0], br#""value""#, now_ms(), &life(3600)).weight(&keys[0]));
    let bound = MemoryTier::bound_for(weight * (a.keys as u64 * 8 / 10));
    println!(
        "bench-tier: {} keys, tier of {} MiB (80 % of them), {} s per point, {} cores available",
        a.keys,
        bound >> 20,
        a.secs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<7} {:>7} {:>12} {:>8} {:>8} {:>9} {:>10} {:>6}",
        "load", "threads", "ops/s", "p50 ns", "p99 ns", "p99.9 ns", "max ns", "hits"
    );
    let mut rows = Vec::new();
    for workload in &a.workloads {
        // A fresh tier per workload, warmed with one pass over the keys in Zipf order.
        let tier = MemoryTier::new(bound, Arc::new(Metrics::detached()));
        let _warm = run(
            &tier,
            &keys,
            if workload == "hot" { "hot" } else { "zipf" },
            1,
            a.secs.min(2.0),
        );
        for &threads in &a.threads {
            let f = run(&tier, &keys, workload, threads, a.secs);
            println!(
                "{:<7} {:>7} {:>12.0} {:>8} {:>8} {:>9} {:>10} {:>5.1}%",
                workload,
                threads,
                f.ops_per_sec,
                f.p50_ns,
                f.p99_ns,
                f.p999_ns,
                f.max_ns,
                100.0 * f.hit_ratio
            );
            rows.push(serde_json::json!({
                "workload": workload, "threads": threads, "ops_per_sec": f.ops_per_sec.round(),
                "p50_ns": f.p50_ns, "p99_ns": f.p99_ns, "p999_ns": f.p999_ns, "max_ns": f.max_ns,
                "hit_ratio": f.hit_ratio,
            }));
        }
    }
    if let Some(out) = a.out {
        let doc = serde_json::json!({ "keys": a.keys, "secs": a.secs, "rows": rows });
        std::fs::write(&out, serde_json::to_vec_pretty(&doc).expect("json")).expect("write --out");
    }
}
