//! The memory tier's sweeper: one thread per process that purges tag purges' entries a step at
//! a time, and frees the expired entries of tiers that have gone quiet.
//!
//! Why a thread of its own and not a task: a million-entry sweep is seconds of CPU. On the async
//! workers it sat in the run queue in front of hits (with one worker, every hit waited for the
//! step in progress). Here it runs beside them, and hits never take the lock a step holds (see
//! the tier's module doc). The thread is `SCHED_BATCH`: it does not preempt a worker when it
//! wakes for its next step, and keeps a full share of the CPU, so a step descheduled while it
//! holds the policy's lock is back within a time slice. (Not nice 19: hits never take that lock,
//! but stores and `/metrics` do, and at nice 19 on a busy core a step holding it could wait
//! long for the CPU with a worker blocked behind it.)
//!
//! Its jobs take turns a step each, so a small purge is not queued behind a huge one. A job
//! whose purge waits for it (a small tag, see `SWEEP_INLINE_MAX`) runs without pause; a purge
//! that answered already is paced (`SWEEP_PAUSE` between steps), so that a pod's CPU quota is not
//! spent on it at once. A job always finishes, whether or not its purge still waits for it: a
//! purge, once begun, lands.
//!
//! The expiry sweep's hand moves a step each time a tier's policy lock is taken (a write, a
//! drain of buffered reads), so a tier that has gone quiet kept its expired entries, their
//! memory and their count in `memory_cache_entries`, until traffic came back. Every
//! `QUIET_PASS_EVERY` the sweeper looks at each tier, and one whose hand has not gone a whole
//! round since the last look gets a round from the sweeper: `ROUND_SLICE` takings of the lock at
//! a time, between its jobs' steps, so a purge that waits for its sweep is not kept waiting (a
//! round over a million entries is about 2 ms of work in all).

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::MemoryTier;
use crate::cache::purge::PurgeMode;

/// The pause between two steps while only paced jobs are under way (a step is a few tenths of
/// a millisecond): a million entries are swept in about 20 s at a fifth of a core or less,
/// instead of in five seconds of a whole one.
const SWEEP_PAUSE: Duration = Duration::from_millis(1);

/// How often the sweeper looks for tiers whose expiry sweep has stood still: an expired entry
/// of a quiet tier is freed within about twice this. (A second in unit tests, so that theirs
/// need not wait.)
const QUIET_PASS_EVERY: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 10 });

/// Tiers made since the sweeper last looked (it takes them into its own list).
static NEW_TIERS: Mutex<Vec<Weak<super::Inner>>> = Mutex::new(Vec::new());

/// Takings of a tier's policy lock a quiet round makes between two turns of the jobs (two steps
/// of 64 slots each).
const ROUND_SLICE: usize = 64;

/// A tier the sweeper watches: gone when its last clone is dropped.
struct Watched {
    tier: Weak<super::Inner>,
    /// Its sweep's rounds at the last look (or when the sweeper's own round ended).
    laps: u64,
    /// The sweeper's round of it under way.
    round: Option<super::Round>,
}

/// One tag purge's sweep, handed to the sweeper.
pub(super) struct Job {
    pub(super) tier: MemoryTier,
    /// The sweep (see `Inner::begin_sweep`).
    pub(super) id: u64,
    pub(super) tag: Box<str>,
    pub(super) mode: PurgeMode,
    pub(super) now_ms: u64,
    /// Where the count goes when the purge waits for it; `None` for a paced job.
    pub(super) done: Option<oneshot::Sender<u64>>,
    /// Entries purged so far.
    pub(super) purged: u64,
}

impl Job {
    /// One step: `false` once the sweep is done.
    pub(super) fn step(&mut self) -> bool {
        match self.tier.sweep_step(self.id, &self.tag, self.mode, self.now_ms) {
            Some(purged) => {
                self.purged += purged;
                true
            }
            None => false,
        }
    }

    /// Runs the whole sweep here and now (where no sweeper thread can be had).
    pub(super) fn run_here(mut self) {
        while self.step() {}
    }
}

impl Drop for Job {
    /// Ends the sweep, done or not (a step that panicked gives the keys it did not reach back to
    /// the tag's index, for a retry), and tells a waiting purge what it purged.
    fn drop(&mut self) {
        self.tier.inner.end_sweep(self.id);
        if let Some(done) = self.done.take() {
            let _ = done.send(self.purged);
        }
    }
}

/// The sweeper thread's inbox, the thread started at first use; `None` if no thread could be.
fn sweeper() -> &'static Option<mpsc::Sender<Job>> {
    // `mpsc::Sender` is `Sync`: every worker sends on the one sender, no lock needed.
    static SWEEPER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    SWEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        match std::thread::Builder::new()
            .name("cache-sweeper".into())
            .spawn(move || run(rx))
        {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no sweeper thread: tag purges are swept on the workers, and a quiet tier keeps its expired entries until traffic comes back"
                );
                None
            }
        }
    })
}

/// Has the sweeper watch `tier` for as long as it lives (see the module's doc).
pub(super) fn watch(tier: &MemoryTier) {
    if sweeper().is_some() {
        NEW_TIERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(std::sync::Arc::downgrade(&tier.inner));
    }
}

/// Hands `job` to the sweeper thread (started at first use), or, if no thread can be started,
/// runs it on the calling thread.
pub(super) fn submit(job: Job) {
    let job = match sweeper() {
        Some(tx) => match tx.send(job) {
            Ok(()) => return,
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    job.run_here();
}

/// The sweeper thread: sets its scheduling policy, then runs its jobs a step each in turn, and
/// looks at the tiers every `QUIET_PASS_EVERY`, for the life of the process.
fn run(jobs: mpsc::Receiver<Job>) {
    batch_policy();
    let mut active: Vec<Job> = Vec::new();
    let mut watched: Vec<Watched> = Vec::new();
    let mut next_look = Instant::now() + QUIET_PASS_EVERY;
    loop {
        if Instant::now() >= next_look {
            look_for_quiet_tiers(&mut watched);
            next_look = Instant::now() + QUIET_PASS_EVERY;
        }
        let rounds = run_rounds(&mut watched);
        if active.is_empty() && !rounds {
            match jobs.recv_timeout(next_look.saturating_duration_since(Instant::now())) {
                Ok(job) => active.push(job),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        active.extend(jobs.try_iter());
        // A step that panics loses its job (its drop ends the sweep), never the thread.
        active.retain_mut(|job| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.step())).unwrap_or(false)
        });
        if !rounds && !active.is_empty() && active.iter().all(|job| job.done.is_none()) {
            // Only paced jobs: pause, unless a new job comes in meanwhile.
            match jobs.recv_timeout(SWEEP_PAUSE) {
                Ok(job) => active.push(job),
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
            }
        }
    }
}

/// Starts a round of each watched tier whose sweep has not gone a whole round since the last
/// look, and forgets the tiers that are gone.
fn look_for_quiet_tiers(watched: &mut Vec<Watched>) {
    let new = std::mem::take(&mut *NEW_TIERS.lock().unwrap_or_else(|p| p.into_inner()));
    watched.extend(new.into_iter().map(|tier| Watched {
        tier,
        laps: 0,
        round: None,
    }));
    watched.retain_mut(|w| {
        let Some(inner) = w.tier.upgrade() else {
            return false;
        };
        let tier = MemoryTier { inner };
        if w.round.is_none() {
            if tier.laps() == w.laps {
                w.round = Some(tier.round());
            } else {
                w.laps = tier.laps();
            }
        }
        true
    });
}

/// A slice of each round under way; whether any is left.
fn run_rounds(watched: &mut [Watched]) -> bool {
    let mut more = false;
    for w in watched.iter_mut() {
        let Some(round) = &mut w.round else {
            continue;
        };
        // A round that panics is given up, never the thread.
        let go_on = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| round.run(ROUND_SLICE)))
            .unwrap_or(false);
        if go_on {
            more = true;
        } else {
            w.laps = round.tier.laps();
            w.round = None;
        }
    }
    more
}

/// Puts the calling thread under `SCHED_BATCH` (Linux keeps a policy per thread; any thread may
/// choose it for itself). If it cannot, the sweeper runs as any thread, paced as before.
#[cfg(target_os = "linux")]
fn batch_policy() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads `param`; pid 0 is the calling thread.
    let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if set != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "the sweeper keeps the default scheduling policy"
        );
    }
}

/// Elsewhere the sweeper runs as any thread (paced all the same).
#[cfg(not(target_os = "linux"))]
fn batch_policy() {}
