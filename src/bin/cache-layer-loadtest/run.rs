//! The request loop. Like `wrk`: a few OS threads, each running a single-threaded runtime that
//! owns its share of the connections; each connection is a task with its own tally. They claim
//! request numbers from one shared counter until the request count or the deadline is reached,
//! and the tallies are merged when a phase ends, so the hot loop shares no lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use crate::args::Plan;
use crate::client::{Conn, Failure, Served};
use crate::stats::Stats;
use crate::workload::Workload;

/// Set by Ctrl-C: workers stop claiming requests, and the run reports what it measured.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Watches for Ctrl-C (SIGINT) on a thread of its own: the first one ends the run after the
/// requests in flight (the summary still prints), the second exits at once.
pub fn watch_interrupts() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                INTERRUPTED.store(true, Ordering::Relaxed);
                eprintln!(
                    "cache-layer-loadtest: interrupted; finishing the requests in flight \
                     (Ctrl-C again to quit at once)"
                );
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
}

/// Whether Ctrl-C ended the run early.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

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

/// State the threads share during a phase.
struct Shared {
    /// The next request number to claim.
    next: AtomicU64,
    /// Requests answered, for the progress bar.
    done: AtomicU64,
    /// When the current phase started.
    start: Mutex<Instant>,
}

/// Runs `phases` in order on `plan.threads` threads. Every connection is opened before the
/// first phase starts. `hook(i)` runs on the calling thread while no request is in flight:
/// before phase `i` starts, and with `i == phases.len()` after the last ends. Returns each
/// phase's merged tally and how long it took.
pub fn run_phases(plan: &Plan, phases: &[Phase], mut hook: impl FnMut(usize)) -> Vec<(Stats, Duration)> {
    let threads = plan.threads.min(plan.concurrency) as usize;
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        start: Mutex::new(Instant::now()),
    });
    let ready = Barrier::new(threads + 1);
    let go = Barrier::new(threads + 1);
    let (results_tx, results) = mpsc::channel::<Stats>();
    std::thread::scope(|scope| {
        let mut first_conn = 0;
        for t in 0..threads {
            let share =
                plan.concurrency as usize / threads + usize::from(t < plan.concurrency as usize % threads);
            let (shared, ready, go, tx) = (&shared, &ready, &go, results_tx.clone());
            let ids = first_conn..first_conn + share;
            first_conn += share;
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a single-threaded tokio runtime");
                let mut conns = runtime.block_on(connect_all(plan, ids));
                for (p, phase) in phases.iter().enumerate() {
                    ready.wait();
                    go.wait();
                    let start = *shared.start.lock().unwrap();
                    let (back, stats) =
                        runtime.block_on(run_phase(plan, *phase, conns, shared, start, p as u64));
                    conns = back;
                    let _ = tx.send(stats);
                }
                ready.wait();
            });
        }
        let mut done = Vec::with_capacity(phases.len());
        for (p, phase) in phases.iter().enumerate() {
            ready.wait();
            hook(p);
            shared.next.store(0, Ordering::Relaxed);
            shared.done.store(0, Ordering::Relaxed);
            let start = Instant::now();
            *shared.start.lock().unwrap() = start;
            let bar = phase.progress.then(|| progress_bar(phase));
            go.wait();
            let mut total = Stats::default();
            let mut received = 0;
            while received < threads {
                match results.recv_timeout(Duration::from_millis(100)) {
                    Ok(stats) => {
                        total.merge(stats);
                        received += 1;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if let Some(bar) = &bar {
                    show_progress(bar, phase, &shared, start);
                }
            }
            done.push((total, start.elapsed()));
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        }
        ready.wait();
        hook(phases.len());
        done
    })
}

/// Opens the connections numbered `ids`; one that fails to open is retried on first use.
async fn connect_all(plan: &Plan, ids: std::ops::Range<usize>) -> Vec<(usize, Conn)> {
    let mut conns = Vec::with_capacity(ids.len());
    for id in ids {
        let mut conn = Conn::new(plan.addr, plan.host.clone(), plan.timeout);
        let _ = conn.connect().await;
        conns.push((id, conn));
    }
    conns
}

/// One thread's part of a phase: a task per connection.
async fn run_phase(
    plan: &Plan,
    phase: Phase,
    conns: Vec<(usize, Conn)>,
    shared: &Arc<Shared>,
    start: Instant,
    phase_no: u64,
) -> (Vec<(usize, Conn)>, Stats) {
    let deadline = start + phase.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (id, conn) in conns {
        let worker = Worker {
            id,
            conn,
            workload: plan.workload.clone(),
            rng: SmallRng::seed_from_u64(
                (plan.seed ^ phase_no.wrapping_mul(0x9e37_79b9))
                    .wrapping_mul(1_000_003)
                    .wrapping_add(id as u64),
            ),
            shared: shared.clone(),
            stats: Stats::default(),
        };
        tasks.spawn(worker.work(phase, plan.batch, plan.rate, start, deadline));
    }
    let mut back = Vec::new();
    let mut total = Stats::default();
    while let Some(joined) = tasks.join_next().await {
        let (id, conn, stats) = joined.expect("a load-test connection task panicked");
        total.merge(stats);
        back.push((id, conn));
    }
    (back, total)
}

/// One connection's loop.
struct Worker {
    /// The connection's number, which seeds its key sampler.
    id: usize,
    conn: Conn,
    workload: Workload,
    rng: SmallRng,
    shared: Arc<Shared>,
    stats: Stats,
}

impl Worker {
    async fn work(
        mut self,
        phase: Phase,
        batch: Option<u32>,
        rate: Option<f64>,
        start: Instant,
        deadline: Instant,
    ) -> (usize, Conn, Stats) {
        let mut path = String::with_capacity(64);
        let (mut body, mut ids, mut answers) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            if interrupted() {
                break;
            }
            let i = self.shared.next.fetch_add(1, Ordering::Relaxed);
            if phase.requests.is_some_and(|total| i >= total) {
                break;
            }
            // Open loop: request i is due at start + i/rate, and its latency counts from then,
            // however late a busy connection gets to send it.
            let due = match rate {
                Some(r) => start + Duration::from_secs_f64(i as f64 / r),
                None => Instant::now(),
            };
            // The duration is wall-clock: nothing is sent once it has passed, even a request
            // that fell due before it on a connection running late.
            if due >= deadline || Instant::now() >= deadline {
                break;
            }
            // A connection that is early waits. Its latency then counts from when the timer
            // woke it (the timer is only 1 ms fine, and that slack is the load test's, not the
            // server's); a connection that is late counts from when the request was due.
            let from = if due > Instant::now() {
                tokio::time::sleep_until(due).await;
                Instant::now()
            } else {
                due
            };
            if let Some(n) = batch {
                // N keys drawn as N single requests would draw them, sent as one batch.
                body.clear();
                body.extend_from_slice(b"{\"keys\":[");
                ids.clear();
                for k in 0..u64::from(n) {
                    let key_id = self.workload.path(i * u64::from(n) + k, &mut self.rng, &mut path);
                    if k > 0 {
                        body.push(b',');
                    }
                    let key = path.strip_prefix("/items/").unwrap_or(&path);
                    let _ = serde_json::to_writer(&mut body, key);
                    ids.push(key_id);
                }
                body.extend_from_slice(b"]}");
                let Ok(answered) =
                    tokio::time::timeout_at(deadline, self.conn.batch(&body, &mut answers)).await
                else {
                    // Still in flight when the duration ended: not measured.
                    self.conn.reset();
                    break;
                };
                let keys = match answered {
                    Ok(()) if answers.len() == ids.len() => {
                        ids.iter().copied().zip(answers.drain(..)).collect::<Vec<_>>()
                    }
                    Ok(()) => ids.iter().map(|&id| (id, Err(Failure::Protocol))).collect(),
                    Err(e) => ids.iter().map(|&id| (id, Err(e.clone()))).collect(),
                };
                self.stats.record_batch(&keys, from.elapsed());
                self.shared.done.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let key_id = self.workload.path(i, &mut self.rng, &mut path);
            let Ok(outcome) = tokio::time::timeout_at(deadline, self.conn.get(&path)).await else {
                // Still in flight when the duration ended: not measured.
                self.conn.reset();
                break;
            };
            let latency = from.elapsed();
            self.stats.record(key_id, &outcome, latency);
            self.shared.done.fetch_add(1, Ordering::Relaxed);
            if phase.per_request {
                print_line(i, phase.requests, &path, &outcome, latency);
            }
        }
        (self.id, self.conn, self.stats)
    }
}

/// The seed's per-request line: `[1/50] key=foo  | ORIGIN | 202.41 ms`.
fn print_line(i: u64, total: Option<u64>, path: &str, outcome: &Result<Served, Failure>, latency: Duration) {
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

/// A bar over the request count, or over the duration when the count is open.
fn progress_bar(phase: &Phase) -> ProgressBar {
    let (bar, template) = match phase.requests {
        Some(n) => (
            ProgressBar::new(n),
            "{bar:40} {pos}/{len} requests, {elapsed} {msg}".to_owned(),
        ),
        None => (
            ProgressBar::new(phase.duration.as_millis() as u64),
            format!("{{bar:40}} {{elapsed}} of {}s, {{msg}}", phase.duration.as_secs()),
        ),
    };
    bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

fn show_progress(bar: &ProgressBar, phase: &Phase, shared: &Shared, start: Instant) {
    let n = shared.done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    bar.set_position(match phase.requests {
        Some(_) => n,
        None => elapsed.as_millis() as u64,
    });
    bar.set_message(format!(
        "{n} answered, {:.0} req/s",
        n as f64 / elapsed.as_secs_f64().max(1e-3)
    ));
}
