//! The memory tier's sweeper: one thread per process that purges tag purges' entries a step at
//! a time.
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

use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::MemoryTier;
use crate::cache::purge::PurgeMode;

/// The pause between two steps while only paced jobs are under way (a step is a few tenths of
/// a millisecond): a million entries are swept in about 20 s at a fifth of a core or less,
/// instead of in five seconds of a whole one.
const SWEEP_PAUSE: Duration = Duration::from_millis(1);

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

/// Hands `job` to the sweeper thread (started at first use), or, if no thread can be started,
/// runs it on the calling thread.
pub(super) fn submit(job: Job) {
    // `mpsc::Sender` is `Sync`: every worker sends on the one sender, no lock needed.
    static SWEEPER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SWEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        match std::thread::Builder::new()
            .name("cache-sweeper".into())
            .spawn(move || run(rx))
        {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "no sweeper thread: tag purges are swept on the workers");
                None
            }
        }
    });
    let job = match sender {
        Some(tx) => match tx.send(job) {
            Ok(()) => return,
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    job.run_here();
}

/// The sweeper thread: sets its scheduling policy, then runs its jobs a step each in turn, for
/// the life of the process.
fn run(jobs: mpsc::Receiver<Job>) {
    batch_policy();
    let mut active: Vec<Job> = Vec::new();
    loop {
        if active.is_empty() {
            match jobs.recv() {
                Ok(job) => active.push(job),
                Err(mpsc::RecvError) => return,
            }
        }
        active.extend(jobs.try_iter());
        // A step that panics loses its job (its drop ends the sweep), never the thread.
        active.retain_mut(|job| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.step())).unwrap_or(false)
        });
        if !active.is_empty() && active.iter().all(|job| job.done.is_none()) {
            // Only paced jobs: pause, unless a new job comes in meanwhile.
            match jobs.recv_timeout(SWEEP_PAUSE) {
                Ok(job) => active.push(job),
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
            }
        }
    }
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
