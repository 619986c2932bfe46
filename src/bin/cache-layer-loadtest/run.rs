//! The request loop: `concurrency` workers, each with its own connection and tally, claiming
//! request numbers from one counter until the request count or the deadline is reached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use crate::args::Plan;
use crate::client::{Conn, Served, judge};
use crate::stats::Stats;

/// One phase of a run (the warm-up or the measured part).
#[derive(Clone, Copy)]
pub struct Phase {
    /// Requests to send, if bounded by count.
    pub requests: Option<u64>,
    /// No request is started (or, open loop, scheduled) after this long.
    pub duration: Duration,
    /// Print one line per request.
    pub per_request: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Runs one phase on the given connections and returns them with the merged tally and how
/// long it took. Every connection is opened before the clock starts.
pub async fn run(plan: &Plan, phase: Phase, conns: Vec<Conn>, seed: u64) -> (Vec<Conn>, Stats, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + phase.duration;
    let bar = phase.progress.then(|| progress_bar(phase, done.clone(), start));
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(n, conn)| {
            let worker = Worker {
                conn,
                workload: plan.workload.clone(),
                rng: SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(n as u64)),
                next: next.clone(),
                done: done.clone(),
                stats: Stats::default(),
            };
            tokio::spawn(worker.work(phase, plan.rate, start, deadline))
        })
        .collect();
    let mut total = Stats::default();
    let mut conns = Vec::with_capacity(workers.len());
    for handle in workers {
        let (conn, stats) = handle.await.expect("a load-test worker panicked");
        total.merge(stats);
        conns.push(conn);
    }
    let elapsed = start.elapsed();
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    (conns, total, elapsed)
}

/// Opens `n` connections to the target; one that fails to open is retried on first use.
pub async fn connect_all(plan: &Plan, n: u32) -> Vec<Conn> {
    let mut conns = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut conn = Conn::new(plan.addr, plan.host.clone(), plan.timeout);
        let _ = conn.connect().await;
        conns.push(conn);
    }
    conns
}

/// One connection's loop.
struct Worker {
    conn: Conn,
    workload: crate::workload::Workload,
    rng: SmallRng,
    /// The next request number to claim, shared by all workers.
    next: Arc<AtomicU64>,
    /// Requests answered, for the progress bar.
    done: Arc<AtomicU64>,
    stats: Stats,
}

impl Worker {
    async fn work(
        mut self,
        phase: Phase,
        rate: Option<f64>,
        start: Instant,
        deadline: Instant,
    ) -> (Conn, Stats) {
        let mut path = String::with_capacity(64);
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if phase.requests.is_some_and(|total| i >= total) {
                break;
            }
            // Open loop: request i is due at start + i/rate, and its latency counts from then,
            // however late a busy connection sends it.
            let due = match rate {
                Some(r) => start + Duration::from_secs_f64(i as f64 / r),
                None => Instant::now(),
            };
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due).await;
            let key_id = self.workload.path(i, &mut self.rng, &mut path);
            let outcome = match self.conn.get(&path).await {
                Ok((status, headers, body)) => judge(status, &headers, &body),
                Err(failure) => Err(failure),
            };
            let latency = due.elapsed();
            self.stats.record(key_id, &outcome, latency);
            self.done.fetch_add(1, Ordering::Relaxed);
            if phase.per_request {
                print_line(i, phase.requests, &path, &outcome, latency);
            }
        }
        (self.conn, self.stats)
    }
}

/// The seed's per-request line: `[1/50] key=foo  | ORIGIN | 202.41 ms`.
fn print_line(
    i: u64,
    total: Option<u64>,
    path: &str,
    outcome: &Result<Served, crate::client::Failure>,
    latency: Duration,
) {
    let label = match outcome {
        Ok(Served::Hit(_)) => "CACHE ",
        Ok(Served::Miss) => "ORIGIN",
        Ok(Served::Unlabelled) => "OK    ",
        Err(_) => "ERROR ",
    };
    let key = path.strip_prefix("/items/").unwrap_or(path);
    let of = total.map(|t| format!("/{t}")).unwrap_or_default();
    println!(
        "[{}{of}] key={key:<4} | {label} | {:6.2} ms",
        i + 1,
        latency.as_secs_f64() * 1000.0
    );
}

/// A bar over the request count, or over the duration when the count is open; redrawn ten
/// times a second from the shared counter.
fn progress_bar(
    phase: Phase,
    done: Arc<AtomicU64>,
    start: Instant,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let by_count = phase.requests;
    let bar = match by_count {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new(phase.duration.as_millis() as u64),
    };
    let template = match by_count {
        Some(_) => "{bar:40} {pos}/{len} requests, {elapsed} {msg}".to_owned(),
        None => format!("{{bar:40}} {{elapsed}} of {}s, {{msg}}", phase.duration.as_secs()),
    };
    bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    let shown = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let n = done.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            match by_count {
                Some(_) => shown.set_position(n),
                None => shown.set_position(start.elapsed().as_millis() as u64),
            }
            shown.set_message(format!("{n} answered, {:.0} req/s", n as f64 / secs.max(1e-3)));
        }
    });
    (bar, ticker)
}
