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
                        job();
                    }
                });
            started += usize::from(spawned.is_ok());
        }
        (started > 0).then_some(Pool { jobs })
    }
}

/// `body` in `coding`, made on the compression threads (tokio's blocking pool if they could not
/// be started); an empty body only if the compression panicked, which it cannot.
async fn compress_aside(coding: Coding, body: Bytes) -> Bytes {
    let Some(pool) = Pool::get() else {
        let made = tokio::task::spawn_blocking(move || coding.compress(&body)).await;
        return made.unwrap_or_default();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let made = std::panic::catch_unwind(|| coding.compress(&body));
        let _ = tx.send(made.unwrap_or_default());
    });
    if pool.jobs.send(job).is_err() {
        return Bytes::new();
    }
    rx.await.unwrap_or_default()
}

/// One body's compressed forms, each made once and shared: concurrent askers wait on the one
/// compression under way (on the compression threads for long bodies), none makes its own.
#[derive(Debug, Default)]
pub struct Compressions {
    /// The body in each [`Coding`], once made.
    forms: [tokio::sync::OnceCell<Bytes>; Coding::ALL.len()],
    /// Whether a background compression of each coding was started ([`Compressions::start`]).
    started: [AtomicBool; Coding::ALL.len()],
}

impl Clone for Compressions {
    /// The forms made so far (a renewed entry with the same body keeps them).
    fn clone(&self) -> Self {
        Compressions {
            forms: self.forms.clone(),
            started: Default::default(),
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
        self.forms[coding as usize].get().cloned()
    }

    /// The body in `coding`: made now from `body()` when it is short, else on the compression
    /// threads, once; every concurrent caller waits on the same compression.
    pub async fn get(&self, coding: Coding, body: impl FnOnce() -> Bytes) -> Bytes {
        let cell = &self.forms[coding as usize];
        cell.get_or_init(|| async move {
            let body = body();
            if body.len() < INLINE_COMPRESS_BYTES {
                return coding.compress(&body);
            }
            compress_aside(coding, body).await
        })
        .await
        .clone()
    }

    /// The body in `coding`, made here and now if it is not made yet (for short bodies).
    pub fn make_now(&self, coding: Coding, body: &[u8]) -> Bytes {
        let cell = &self.forms[coding as usize];
        if let Some(made) = cell.get() {
            return made.clone();
        }
        let made = coding.compress(body);
        // Another caller may have set it meanwhile: either form is the same bytes.
        let _ = cell.set(made.clone());
        made
    }

    /// Starts making the body in `coding` on the compression threads, unless it is made or under way;
    /// `then` runs once it is made (the memory tier weighs the entry again). A request that
    /// finds it not made yet answers identity meanwhile rather than wait.
    pub fn start(self: &Arc<Self>, coding: Coding, body: Bytes, then: impl FnOnce() + Send + 'static) {
        if self.forms[coding as usize].initialized()
            || self.started[coding as usize].swap(true, Ordering::AcqRel)
        {
            return;
        }
        let forms = self.clone();
        tokio::spawn(async move {
            forms.get(coding, || body).await;
            then();
        });
    }

    /// Bytes held by the forms made so far.
    pub fn bytes(&self) -> usize {
        self.forms.iter().filter_map(|f| f.get()).map(Bytes::len).sum()
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

    /// The coding to answer in for an `Accept-Encoding` value: the acceptable one (q > 0, named
    /// or through `*`) with the highest weight, brotli on a tie; `None` for identity (no header,
    /// only `identity`, unknown codings, or everything refused with `q=0`).
    pub fn negotiate(accept_encoding: Option<&[u8]>) -> Option<Coding> {
        let accept = std::str::from_utf8(accept_encoding?).ok()?;
        let mut named = [None::<f32>; Coding::ALL.len()];
        let mut any = None::<f32>;
        for item in accept.split(',') {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(header: &str) -> Option<Coding> {
        Coding::negotiate(Some(header.as_bytes()))
    }

    #[test]
    fn negotiation_follows_weights_and_refusals() {
        assert_eq!(Coding::negotiate(None), None);
        assert_eq!(pick("gzip, deflate, br"), Some(Coding::Br));
        assert_eq!(pick("gzip"), Some(Coding::Gzip));
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
