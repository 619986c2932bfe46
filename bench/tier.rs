//! `bench-tier`: the memory tier alone, at 1 to 16 threads. What a pod with more cores should
//! expect from the hit path, measured where two cores cannot show it end to end: operations per
//! second and the per-operation latency (p50, p99, p99.9) of `get_now` (a miss followed by a
//! `put`, as the read-through does) from N threads at once, over three workloads:
//! - `hot`: every thread reads one key (the worst case for shared cache lines);
//! - `zipf`: keys drawn Zipf(0.99) over `--keys` keys, the tier holding 80 % of them, so misses
//!   write and writes evict (the policy's work);
//! - `churn`: as `zipf`, while one more thread writes unique keys as fast as it can with short
//!   lifetimes, so evictions, window resizes and expiries run all the time; only the readers'
//!   operations are timed.
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

fn main() {
    let a = args();
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
