//! `load-test`: the seed's `load_test.py`, in Rust. It sends sequential requests to a running
//! service and shows what the cache buys: one line per request, then a summary.
//!
//! The default run is the seed's: 50 requests to `http://localhost:5000/items/<key>`; requests
//! 0–34 go to `foo`, the rest to `k{i % 10}`. On a fresh cache that is 39 hits and 11 misses.
//!
//! Usage: `load-test [--url http://localhost:5000] [--requests 50] [--quiet]`

use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What one request came back with.
struct Outcome {
    key: String,
    source: Option<String>,
    millis: f64,
}

fn main() -> ExitCode {
    let mut url = "http://localhost:5000".to_owned();
    let mut requests = 50usize;
    let mut quiet = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => url = args.next().unwrap_or_default(),
            "--requests" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => requests = n,
                _ => return usage("--requests takes a whole number above 0"),
            },
            "--quiet" => quiet = true,
            "-h" | "--help" => return usage(""),
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcomes = runtime.block_on(run(url.trim_end_matches('/'), requests, quiet));
    summarise(&outcomes);
    if outcomes.iter().all(|o| o.source.is_none()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn usage(problem: &str) -> ExitCode {
    if !problem.is_empty() {
        eprintln!("load-test: {problem}");
    }
    eprintln!("usage: load-test [--url http://localhost:5000] [--requests 50] [--quiet]");
    if problem.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// The seed's key pattern: 70 % one hot key, 30 % ten others.
fn key_for(i: usize, total: usize) -> String {
    if i < total * 7 / 10 {
        "foo".to_owned()
    } else {
        format!("k{}", i % 10)
    }
}

async fn run(base: &str, total: usize, quiet: bool) -> Vec<Outcome> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut outcomes = Vec::with_capacity(total);
    for i in 0..total {
        let key = key_for(i, total);
        let started = Instant::now();
        let source = match client.get(format!("{base}/items/{key}")).send().await {
            Ok(r) if r.status().is_success() => r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["source"].as_str().map(str::to_owned)),
            _ => None,
        };
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        if !quiet {
            let label = match source.as_deref() {
                Some("cache") => "CACHE ",
                Some(_) => "ORIGIN",
                None => "ERROR ",
            };
            println!("[{}/{total}] key={key:<4} | {label} | {millis:6.2} ms", i + 1);
        }
        outcomes.push(Outcome { key, source, millis });
    }
    outcomes
}

fn summarise(outcomes: &[Outcome]) {
    let hits = outcomes
        .iter()
        .filter(|o| o.source.as_deref() == Some("cache"))
        .count();
    let errors = outcomes.iter().filter(|o| o.source.is_none()).count();
    let misses = outcomes.len() - hits - errors;
    let mut latencies: Vec<f64> = outcomes.iter().map(|o| o.millis).collect();
    latencies.sort_by(f64::total_cmp);
    let avg = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let mean_of = |source: &str| {
        let v: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.source.as_deref() == Some(source))
            .map(|o| o.millis)
            .collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let keys: std::collections::BTreeSet<&str> = outcomes.iter().map(|o| o.key.as_str()).collect();
    println!();
    println!("=== Summary ===");
    println!("Total requests:   {}", outcomes.len());
    println!("Distinct keys:    {}", keys.len());
    println!("Cache hits:       {hits}");
    println!("Cache misses:     {misses}");
    println!("Errors:           {errors}");
    println!(
        "Cache-hit rate:   {:.2}%",
        100.0 * hits as f64 / outcomes.len().max(1) as f64
    );
    println!("Avg latency:      {avg:.2} ms");
    println!("Median latency:   {:.2} ms", pct(0.5));
    println!("p95 latency:      {:.2} ms", pct(0.95));
    println!("Avg hit latency:  {:.2} ms", mean_of("cache"));
    println!("Avg miss latency: {:.2} ms", mean_of("origin"));
}
