//! Compressed forms of an answer body: made once per body and coding, on first use, off the
//! async workers (a 1 MiB body takes brotli ~20 ms), and shared by every request that wants the
//! same form; kept beside the entry (the memory tier then weighs them), never made on every hit.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

/// Compressions made so far in this process, by coding: `cache_compressions_total`. Process-wide,
/// as the CPU they count is.
static MADE: [std::sync::atomic::AtomicU64; Coding::ALL.len()] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// Bodies shorter than this are compressed where they are asked for (tens of microseconds:
/// less than handing them to another thread); longer ones on the compression threads.
pub const INLINE_COMPRESS_BYTES: usize = 16 * 1024;

/// Threads that compress long bodies: a pool of their own, at `nice` [`POOL_NICE`].
///
/// Why not tokio's blocking pool: a compression (a 1 MiB body: brotli ~40 ms) shares its core
/// with the async workers, and at the same priority the scheduler gives it half the core in
/// slices of milliseconds, so every hit due meanwhile waited for one (issue 31's burst). At a
/// lower priority a worker that wakes takes the core at once, and the compression runs on what
/// the workers leave. A thread cannot take back a priority it gave up (unprivileged), so these
/// threads do nothing else; one per core (at most [`POOL_MAX`]), so compressions of different
/// bodies still run side by side.
struct Pool {
    jobs: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The compression threads' `nice`: far below the workers' 0 (a weight of 110 against 1024).
const POOL_NICE: libc::c_int = 10;

/// At most this many compression threads.
const POOL_MAX: usize = 8;

impl Pool {
    /// The process's pool, started on first use; `None` when no thread could be started.
    fn get() -> Option<&'static Pool> {
        static POOL: std::sync::OnceLock<Option<Pool>> = std::sync::OnceLock::new();
        POOL.get_or_init(Pool::start).as_ref()
    }

    fn start() -> Option<Pool> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(POOL_MAX);
        let mut started = 0;
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("compress-{i}"))
                .spawn(move || {
                    #[cfg(target_os = "linux")]
                    // SAFETY: setpriority on this thread's own id; it only lowers its priority.
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, POOL_NICE);
                    }
                    loop {
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(job) = job else { return };
                        // A job that panics (its `then`) must not take the thread with it.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            started += usize::from(spawned.is_ok());
        }
        (started > 0).then_some(Pool { jobs })
    }
}

/// Body bytes the compression threads may have waiting (or under way) at once. A job holds its
/// body until it is made, and the threads run at a low priority, so without a bound a flood of
/// long bodies wanted compressed (each hit on a form not yet made asks) would hold bodies the
/// memory bound does not see, and keep the threads busy long after the flood: past it, a hit
/// answers identity and a later one asks again. About a second of brotli on two cores.
pub const QUEUE_MAX_BYTES: usize = 32 << 20;

/// Body bytes of the jobs now waiting or under way (see [`QUEUE_MAX_BYTES`]).
static QUEUED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A place in the compression queue for `len` body bytes, given back when dropped (when its job
/// is done, or dropped undone).
struct Queued(usize);

impl Queued {
    /// A place for `len` bytes, unless the queue is full; a body longer than the whole queue
    /// still gets one when the queue is empty.
    fn take(len: usize) -> Option<Queued> {
        let before = QUEUED.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > QUEUE_MAX_BYTES {
            QUEUED.fetch_sub(len, Ordering::AcqRel);
            return None;
        }
        Some(Queued(len))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        QUEUED.fetch_sub(self.0, Ordering::AcqRel);
    }
}

/// Makes the body that `body` gives (`len` bytes) in `coding` on the compression threads
/// (tokio's blocking pool if they could not be started) and puts it in `form`, whether or not
/// anyone still waits for it; then runs `then` on the async runtime (not on a low-priority
/// thread, where it could be preempted holding a lock others wait on). `body` answers `None`
/// when the form is no longer wanted (its entry is gone): then nothing is made and `then` does
/// not run, and the form goes back to not started. `false`, and nothing queued, when the queue
/// is full ([`QUEUE_MAX_BYTES`]).
fn compress_aside(
    coding: Coding,
    len: usize,
    body: impl FnOnce() -> Option<Bytes> + Send + 'static,
    form: Arc<Form>,
    then: impl FnOnce() + Send + 'static,
) -> bool {
    let Some(place) = Queued::take(len) else {
        return false;
    };
    let runtime = tokio::runtime::Handle::try_current().ok();
    let job: Job = Box::new(move || {
        let _place = place;
        let Some(body) = body() else {
            // Not wanted where it was asked for; but a copy of the entry (a soft purge's, a
            // 304's renewal) shares its forms: not started again, it would never be made.
            form.refuse();
            return;
        };
        // Compressing into memory cannot fail; were it to panic, the waiters get an empty
        // body rather than wait for ever.
        let made = std::panic::catch_unwind(|| coding.compress(&body));
        form.fill(made.unwrap_or_default());
        match runtime {
            Some(runtime) => drop(runtime.spawn(async move { then() })),
            None => then(),
        }
    });
    let job = match Pool::get() {
        Some(pool) => match pool.jobs.send(job) {
            Ok(()) => return true,
            Err(std::sync::mpsc::SendError(job)) => job,
        },
        None => job,
    };
    drop(tokio::task::spawn_blocking(job));
    true
}

/// One compressed form: empty until made, then set once; the compression under way holds it
/// too, so it lands even when every request that asked for it has gone.
#[derive(Debug, Default)]
struct Form {
    made: std::sync::OnceLock<Bytes>,
    /// Whether its compression was started: once per body and coding, whoever asks, however
    /// many of them go away before it is made.
    started: AtomicBool,
    /// Woken when `made` is set.
    done: tokio::sync::Notify,
}

impl Form {
    /// A form already made as `made` (a copy's), or not made yet.
    fn made(made: Option<&Bytes>) -> Form {
        let form = Form::default();
        if let Some(made) = made {
            let _ = form.made.set(made.clone());
            form.started.store(true, Ordering::Relaxed);
        }
        form
    }

    /// Whether the caller is the first to start it (it then must make it).
    fn start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    fn fill(&self, made: Bytes) {
        // A form is made once (`started`); a second would be the same bytes.
        let _ = self.made.set(made);
        self.done.notify_waiters();
    }

    /// Gives up a start the queue had no room for: whoever waits answers without the form, and
    /// a later asker may start it again.
    fn refuse(&self) {
        self.started.store(false, Ordering::Release);
        self.done.notify_waiters();
    }

    /// The form once made; `None` when its compression was refused (the queue was full).
    async fn wait(&self) -> Option<Bytes> {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            // Registered before looking, so a fill in between is not missed.
            done.as_mut().enable();
            if let Some(made) = self.made.get() {
                return Some(made.clone());
            }
            if !self.started.load(Ordering::Acquire) {
                return None;
            }
            done.await;
        }
    }
}

/// One body's compressed forms, each made once and shared: concurrent askers wait on the one
/// compression under way (on the compression threads for long bodies), none makes its own.
#[derive(Debug, Default)]
pub struct Compressions {
    /// The body in each [`Coding`], once made.
    forms: [Arc<Form>; Coding::ALL.len()],
}

impl Clone for Compressions {
    /// The forms made so far (a renewed entry with the same body keeps them).
    fn clone(&self) -> Self {
        Compressions {
            forms: self.forms.each_ref().map(|f| Arc::new(Form::made(f.made.get()))),
        }
    }
}

/// Derived from the body they compress: two entries are the same whatever was compressed so far.
impl PartialEq for Compressions {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Compressions {}

impl Compressions {
    /// The body in `coding`, if made already.
    pub fn ready(&self, coding: Coding) -> Option<Bytes> {
        self.forms[coding as usize].made.get().cloned()
    }

    /// The body in `coding`: made now from `body()` when it is short, else on the compression
    /// threads, once; every caller waits on the same compression, and a caller that goes away
    /// does not stop it (the next one finds it made or under way). `None` when the compression
    /// queue has no room for it ([`QUEUE_MAX_BYTES`]): the caller answers identity.
    pub async fn get(&self, coding: Coding, body: impl FnOnce() -> Bytes) -> Option<Bytes> {
        let form = &self.forms[coding as usize];
        if let Some(made) = form.made.get() {
            return Some(made.clone());
        }
        if form.start() {
            let body = body();
            if body.len() < INLINE_COMPRESS_BYTES {
                form.fill(coding.compress(&body));
            } else if !compress_aside(coding, body.len(), move || Some(body), form.clone(), || ()) {
                form.refuse();
            }
        }
        form.wait().await
    }

    /// The body in `coding`, made here and now if it is not made yet (for short bodies); `None`
    /// while another caller is making it (tens of microseconds: this one answers identity rather
    /// than make it a second time).
    pub fn make_now(&self, coding: Coding, body: &[u8]) -> Option<Bytes> {
        let form = &self.forms[coding as usize];
        if let Some(made) = form.made.get() {
            return Some(made.clone());
        }
        if !form.start() {
            return form.made.get().cloned();
        }
        form.fill(coding.compress(body));
        form.made.get().cloned()
    }

    /// Starts making the body in `coding` on the compression threads, unless it is made, under
    /// way, or the queue is full; `body` gives it (`len` bytes) when a thread takes the job, or
    /// `None` if it is no longer wanted (its entry gone: then nothing is made), and `then` runs
    /// once it is made (the memory tier weighs the entry again). A request that finds it not
    /// made yet answers identity meanwhile rather than wait.
    pub fn start(
        &self,
        coding: Coding,
        len: usize,
        body: impl FnOnce() -> Option<Bytes> + Send + 'static,
        then: impl FnOnce() + Send + 'static,
    ) {
        let form = &self.forms[coding as usize];
        if form.made.get().is_some() || !form.start() {
            return;
        }
        if !compress_aside(coding, len, body, form.clone(), then) {
            form.refuse();
        }
    }

    /// Bytes held by the forms made so far.
    pub fn bytes(&self) -> usize {
        self.forms
            .iter()
            .filter_map(|f| f.made.get())
            .map(Bytes::len)
            .sum()
    }
}

/// The content codings the service answers in, besides `identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// Brotli (RFC 7932): the smaller of the two on JSON.
    Br,
    /// gzip (RFC 1952): what every client takes.
    Gzip,
}

impl Coding {
    /// Every coding, in order of preference when a client weighs them equally.
    pub const ALL: [Coding; 2] = [Coding::Br, Coding::Gzip];

    /// How many bodies this process has compressed in this coding.
    pub fn made(self) -> u64 {
        MADE[self as usize].load(Ordering::Relaxed)
    }

    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// `body`, compressed. Levels: brotli 5 and gzip 6, where both give most of their size
    /// reduction on JSON at a fraction of the top levels' time (made once per entry, but on the
    /// request that first asks).
    pub fn compress(self, body: &[u8]) -> Bytes {
        MADE[self as usize].fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(body.len() / 3 + 64);
        match self {
            Coding::Br => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: 5,
                    lgwin: 22,
                    ..Default::default()
                };
                let mut input = body;
                brotli::BrotliCompress(&mut input, &mut out, &params)
                    .expect("compressing into memory cannot fail");
            }
            Coding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
                encoder
                    .write_all(body)
                    .expect("compressing into memory cannot fail");
                out = encoder.finish().expect("compressing into memory cannot fail");
            }
        }
        Bytes::from(out)
    }

    /// The coding to answer in for a request's `Accept-Encoding` lines (read as one list, as
    /// RFC 9110 §5.3 combines a field sent on several lines): the acceptable one (q > 0, named
    /// or through `*`) with the highest weight, brotli on a tie; `None` for identity (no header,
    /// only `identity`, unknown codings, or everything refused with `q=0`). A line that is not
    /// UTF-8 is skipped.
    pub fn negotiate<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<Coding> {
        let mut named = [None::<f32>; Coding::ALL.len()];
        let mut any = None::<f32>;
        let items = lines
            .into_iter()
            .filter_map(|line| std::str::from_utf8(line).ok())
            .flat_map(|line| line.split(','));
        for item in items {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match token.as_str() {
                "*" => any = Some(q),
                t => {
                    // RFC 9110 §8.4.1.3: a recipient should take "x-gzip" as "gzip".
                    let t = if t == "x-gzip" { "gzip" } else { t };
                    if let Some(i) = Coding::ALL.iter().position(|c| c.as_str() == t) {
                        named[i].get_or_insert(q);
                    }
                }
            }
        }
        let mut best: Option<(Coding, f32)> = None;
        for (i, coding) in Coding::ALL.iter().enumerate() {
            let q = named[i].or(any).unwrap_or(0.0);
            if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((*coding, q));
            }
        }
        best.map(|(c, _)| c)
    }
}

/// About `len` bytes of words from a seeded generator: text that brotli takes tens of
/// milliseconds over at 2 MiB, for tests that need a compression to be under way a while.
#[cfg(test)]
pub(crate) fn slow_words(len: usize) -> String {
    let (mut x, mut text) = (7u64, String::with_capacity(len + 8));
    while text.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push_str(&format!("w{} ", x % 50_000));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_compression_whose_asker_went_away_lands_once_for_the_next() {
        let body = Bytes::from(slow_words(2 << 20));
        let forms = Arc::new(Compressions::default());
        let before = Coding::Br.made();
        let (f, b) = (forms.clone(), body.clone());
        let asker = tokio::spawn(async move { f.get(Coding::Br, || b).await });
        while !forms.forms[Coding::Br as usize].started.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        // The client went away while its compression was under way.
        asker.abort();
        let made = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            forms.get(Coding::Br, || unreachable!("the body is not asked for again")),
        )
        .await
        .expect("the compression lands")
        .expect("the queue had room");
        assert_eq!(
            Coding::Br.made() - before,
            1,
            "made once, not again for the next asker"
        );
        let mut back = Vec::new();
        brotli::BrotliDecompress(&mut &made[..], &mut back).unwrap();
        assert_eq!(back, body);
        assert_eq!(forms.ready(Coding::Br), Some(made));
    }

    /// Polls `done` until it holds (a minute at most: the machine may be busy).
    async fn until(done: impl Fn() -> bool, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within a minute"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_refuses_what_it_has_no_room_for_and_skips_entries_gone() {
        // Jobs whose bodies are held back by a gate stay queued, so the count is exact.
        const LEN: usize = 4 << 20;
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let forms: Vec<Compressions> = (0..12).map(|_| Compressions::default()).collect();
        let before = Coding::Gzip.made();
        for f in &forms {
            let (gate, ran) = (gate.clone(), ran.clone());
            f.start(
                Coding::Gzip,
                LEN,
                move || {
                    let (open, wake) = &*gate;
                    let mut open = open.lock().unwrap();
                    while !*open {
                        open = wake.wait(open).unwrap();
                    }
                    Some(Bytes::from(vec![b'x'; LEN]))
                },
                move || {
                    ran.fetch_add(1, Ordering::AcqRel);
                },
            );
        }
        let started = |forms: &[Compressions]| {
            forms
                .iter()
                .filter(|f| f.forms[Coding::Gzip as usize].started.load(Ordering::Acquire))
                .count()
        };
        assert_eq!(started(&forms), QUEUE_MAX_BYTES / LEN, "8 queued, 4 refused");
        assert_eq!(QUEUED.load(Ordering::Acquire), QUEUE_MAX_BYTES);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        until(|| ran.load(Ordering::Acquire) == 8, "the queued ones made").await;
        assert_eq!(Coding::Gzip.made() - before, 8);
        until(|| QUEUED.load(Ordering::Acquire) == 0, "the queue emptied").await;
        // A refused form may be started again, now that there is room.
        let refused = forms
            .iter()
            .find(|f| f.ready(Coding::Gzip).is_none())
            .expect("a refused form");
        let again = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let a = again.clone();
        refused.start(
            Coding::Gzip,
            LEN,
            || Some(Bytes::from(vec![b'y'; LEN])),
            move || a.store(true, Ordering::Release),
        );
        until(|| again.load(Ordering::Acquire), "the retried one made").await;
        // An entry gone before its turn: nothing made, nothing run, its place given back.
        let gone = Compressions::default();
        gone.start(Coding::Gzip, LEN, || None, || panic!("not for an entry gone"));
        until(|| QUEUED.load(Ordering::Acquire) == 0, "the place given back").await;
        assert!(gone.ready(Coding::Gzip).is_none());
        // A copy sharing the forms (a soft purge's) may start it again.
        until(
            || !gone.forms[Coding::Gzip as usize].started.load(Ordering::Acquire),
            "the form not started again",
        )
        .await;
        assert_eq!(Coding::Gzip.made() - before, 9);
    }

    #[tokio::test]
    async fn a_waiter_on_a_refused_compression_answers_without_it() {
        let forms = Compressions::default();
        let form = &forms.forms[Coding::Br as usize];
        assert!(form.start());
        let waiter = forms.get(Coding::Br, || unreachable!("started already"));
        tokio::pin!(waiter);
        assert!(futures_util::poll!(waiter.as_mut()).is_pending());
        form.refuse();
        assert_eq!(waiter.await, None);
    }

    #[test]
    fn a_short_body_being_made_is_not_made_twice() {
        let forms = Compressions::default();
        let before = Coding::Gzip.made();
        // Another caller is making it now.
        assert!(forms.forms[Coding::Gzip as usize].start());
        assert_eq!(forms.make_now(Coding::Gzip, b"some body"), None);
        assert_eq!(Coding::Gzip.made(), before);
    }

    fn pick(header: &str) -> Option<Coding> {
        Coding::negotiate([header.as_bytes()])
    }

    #[test]
    fn negotiation_follows_weights_and_refusals() {
        assert_eq!(Coding::negotiate([]), None);
        // One field on two lines is one list.
        assert_eq!(Coding::negotiate([&b"br;q=0"[..], b"gzip"]), Some(Coding::Gzip));
        assert_eq!(Coding::negotiate([&b"identity"[..], b"br"]), Some(Coding::Br));
        assert_eq!(Coding::negotiate([&b"\xff"[..], b"gzip"]), Some(Coding::Gzip));
        assert_eq!(pick("gzip, deflate, br"), Some(Coding::Br));
        assert_eq!(pick("gzip"), Some(Coding::Gzip));
        assert_eq!(pick("x-gzip"), Some(Coding::Gzip));
        assert_eq!(pick("X-GZIP;q=0.9, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0.5, gzip;q=0.8"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0, gzip;q=0"), None);
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("compress, deflate"), None);
        assert_eq!(pick("*"), Some(Coding::Br));
        assert_eq!(pick("*;q=0.5, br;q=0"), Some(Coding::Gzip));
        assert_eq!(pick("GZIP;Q=1"), Some(Coding::Gzip));
        assert_eq!(pick("zstd, gzip;q=0.1"), Some(Coding::Gzip));
    }

    #[test]
    fn both_codings_round_trip_and_shrink_json() {
        let body: Vec<u8> = (0..200)
            .flat_map(|i| {
                format!("{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"]}},").into_bytes()
            })
            .collect();
        let gz = Coding::Gzip.compress(&body);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, body);
        let br = Coding::Br.compress(&body);
        let mut back = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut back).unwrap();
        assert_eq!(back, body);
        assert!(br.len() * 5 < body.len() && gz.len() * 5 < body.len());
    }
}
