//! The HTTP server loop: accepts connections, bounds how many stay open, and closes the ones
//! that stall, so slow or idle clients cannot hold file descriptors or the shutdown.
//!
//! `axum::serve` gives hyper no timer and never closes a connection by itself; this loop does
//! what nginx's `client_header_timeout`, `keepalive_timeout` and `worker_connections` do:
//! - a connection with no request in flight must deliver a whole request head within
//!   `HTTP_HEADER_TIMEOUT_SECS` of its first byte (of the accept, for a new connection);
//! - one that sends nothing after an answer is closed after `HTTP_KEEPALIVE_TIMEOUT_SECS`;
//! - at `HTTP_MAX_CONNECTIONS`, the oldest connection with no request in flight is closed to make
//!   room, so a flood of idle connections cannot stop the service from accepting;
//! - a response that makes no write progress for `HTTP_WRITE_TIMEOUT_SECS` (the client stopped
//!   reading) is cut and its connection closed;
//! - at shutdown, connections without a request in flight close at once; the others finish
//!   their request and then close.
//!
//! A request is in flight until its answer is written: a streamed body (an NDJSON batch) counts
//! until its last chunk, for the drain, the keep-alive timeout and the cap alike.
//!
//! Request bodies have their own deadline, applied where a handler reads one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::turns::{Turns, Writer};
use super::{App, AppFuture};
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::config::ServerLimits;

/// A request head that starts this long after the last answer wakes the watchdog; one that
/// starts sooner is caught by the watchdog's wake-up at idle + `QUIET_MS` + the header timeout.
const QUIET_MS: u64 = 1000;

/// `u64::MAX` in a millisecond slot: "not set".
const NONE: u64 = u64::MAX;

/// What the accept loop tells the connections, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Serving,
    /// Shutting down: close when no request is in flight, accept nothing new.
    Draining,
    /// The drain deadline passed: close now.
    Closing,
}

/// One open connection, as the watchdog and the cap see it.
struct Conn {
    /// When it was accepted; the millisecond slots below count from here.
    accepted: Instant,
    /// Requests handed to the router whose answer is not yet written (its body not done).
    in_flight: AtomicU32,
    /// Since when a write to the socket has been waiting for the client to read (ms since
    /// `accepted`), or `NONE`.
    write_blocked_since_ms: AtomicU64,
    /// Requests answered so far.
    answered: AtomicU64,
    /// When the last answer was made (ms since `accepted`).
    idle_since_ms: AtomicU64,
    /// When the first byte of the next request head arrived (ms since `accepted`), or `NONE`.
    head_since_ms: AtomicU64,
    /// Wakes the watchdog: a head began, or the cap chose this connection.
    wake: Notify,
    /// Set by the cap: close at the next wake-up.
    evicted: std::sync::atomic::AtomicBool,
    /// Requests in flight whose streamed body was given up (its client took nothing for
    /// `HTTP_WRITE_TIMEOUT_SECS`; over HTTP/2 hyper may never poll it again to end it): they do
    /// not keep the connection busy. Signed: its two updates may land in either order.
    given_up: std::sync::atomic::AtomicI64,
    /// The socket, to see whether a next request waits in it unread (see `is_quiet`).
    fd: std::os::fd::RawFd,
}

impl Conn {
    fn new(fd: std::os::fd::RawFd) -> Self {
        Conn {
            accepted: Instant::now(),
            in_flight: AtomicU32::new(0),
            write_blocked_since_ms: AtomicU64::new(NONE),
            answered: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(NONE),
            wake: Notify::new(),
            evicted: std::sync::atomic::AtomicBool::new(false),
            given_up: std::sync::atomic::AtomicI64::new(0),
            fd,
        }
    }

    fn ms_now(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn is_idle(&self) -> bool {
        i64::from(self.in_flight.load(Ordering::Acquire)) <= self.given_up.load(Ordering::Acquire)
            && self.write_blocked_since_ms.load(Ordering::Relaxed) == NONE
    }

    /// Idle, and no byte of a next request has arrived, read or waiting in the socket.
    fn is_quiet(&self) -> bool {
        self.is_idle() && self.head_since_ms.load(Ordering::Relaxed) == NONE && !pending_input(self.fd)
    }

    /// A streamed body of this connection given up (`true`), or that body's end (`false`).
    fn give_up(&self, up: bool) {
        self.given_up.fetch_add(if up { 1 } else { -1 }, Ordering::AcqRel);
        if up {
            self.wake.notify_one();
        }
    }

    /// Called after every write attempt: `progress` when bytes went out. The first write that
    /// must wait wakes the watchdog, which then looks again at the write deadline.
    fn on_write(&self, progress: bool) {
        let blocked = self.write_blocked_since_ms.load(Ordering::Relaxed);
        if progress {
            if blocked != NONE {
                self.write_blocked_since_ms.store(NONE, Ordering::Relaxed);
            }
        } else if blocked == NONE {
            self.write_blocked_since_ms
                .store(self.ms_now(), Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// When the write waiting for the client must be given up, if one is waiting.
    fn write_deadline(&self, limits: &ServerLimits) -> Option<Instant> {
        let blocked = self.write_blocked_since_ms.load(Ordering::Relaxed);
        (blocked != NONE).then(|| self.accepted + Duration::from_millis(blocked) + limits.write_timeout)
    }

    /// Called on every read: the first bytes after an answer start the header deadline. The
    /// watchdog is woken only for a head that starts after a quiet spell (it is then sleeping
    /// towards the keep-alive deadline); a client that asks again at once, the hot path, costs
    /// no wake-up, and the watchdog's idle wake-up at `QUIET_MS` + the header timeout covers it.
    fn on_read(&self) {
        if self.head_since_ms.load(Ordering::Relaxed) == NONE && self.is_idle() {
            let now = self.ms_now();
            self.head_since_ms.store(now, Ordering::Relaxed);
            if self.answered.load(Ordering::Relaxed) > 0
                && now.saturating_sub(self.idle_since_ms.load(Ordering::Relaxed)) >= QUIET_MS
            {
                self.wake.notify_one();
            }
        }
    }

    fn begin_request(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end_request(&self) {
        self.idle_since_ms.store(self.ms_now(), Ordering::Relaxed);
        self.head_since_ms.store(NONE, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        // The watchdog looks whether only given-up bodies are left.
        if self.given_up.load(Ordering::Relaxed) > 0 {
            self.wake.notify_one();
        }
    }

    /// When the connection must be closed if nothing changes; `None` while a request is in
    /// flight (the request's own deadline governs then).
    fn deadline(&self, limits: &ServerLimits) -> Option<Instant> {
        if !self.is_idle() {
            return None;
        }
        let head = self.head_since_ms.load(Ordering::Relaxed);
        let at = if self.answered.load(Ordering::Relaxed) == 0 {
            // The first request head counts from the accept.
            limits.header_timeout
        } else if head != NONE {
            Duration::from_millis(head) + limits.header_timeout
        } else {
            Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed)) + limits.keepalive_timeout
        };
        Some(self.accepted + at)
    }

    /// When the watchdog looks next: the deadline, except while idle between requests, where
    /// it also looks at idle + `QUIET_MS` + the header timeout (a head may have started in the
    /// quiet spell without waking it), and while a request is in flight, where it looks after
    /// the shorter timeout (no deadline that starts when the request ends can be earlier).
    fn wake_at(&self, limits: &ServerLimits) -> Instant {
        if let Some(write) = self.write_deadline(limits) {
            return write;
        }
        let Some(deadline) = self.deadline(limits) else {
            return Instant::now() + limits.header_timeout.min(limits.keepalive_timeout);
        };
        let head = self.head_since_ms.load(Ordering::Relaxed);
        if self.answered.load(Ordering::Relaxed) == 0 || head != NONE {
            return deadline;
        }
        let idle = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        let quiet = self.accepted + idle + Duration::from_millis(QUIET_MS) + limits.header_timeout;
        // Once that look has been taken (no head began), the next wake-up is the deadline: a
        // wake-up in the past would make the watchdog spin until the keep-alive timeout.
        if quiet > Instant::now() {
            deadline.min(quiet)
        } else {
            deadline
        }
    }
}

/// Given-up bodies a connection may leave open beside requests still in flight before it is
/// closed: twice as many as it may stream at once (each holds up to two 16 KiB pieces until
/// its stream ends; a client that keeps abandoning streams is not kept).
const GIVEN_UP_MAX: i64 = 2 * crate::proxy::STREAMS_PER_CONNECTION as i64;

/// Whether bytes wait unread in the socket `fd` (a request on its way that the server has not
/// read yet); `false` for an invalid descriptor or on any error.
fn pending_input(fd: std::os::fd::RawFd) -> bool {
    if fd < 0 {
        return false;
    }
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into `byte`; `fd` is the connection's socket, open
    // while the connection is registered (the registry is left before the socket is closed).
    let n = unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n > 0
}

/// The open connections, oldest first, for the cap.
#[derive(Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    /// Notified whenever a connection ends (the drain waits on it).
    closed: Notify,
}

impl Registry {
    /// Registers a new connection, making room at the cap by evicting the oldest idle one;
    /// `None` when every open connection has a request in flight.
    fn admit(&self, id: u64, max: usize, fd: std::os::fd::RawFd) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= max && !Self::evict_oldest_idle(&mut conns) {
            return None;
        }
        let conn = Arc::new(Conn::new(fd));
        conns.insert(id, conn.clone());
        Some(conn)
    }

    /// Closes the oldest connection without a request in flight, to free its descriptor when
    /// `accept` found none left (the open-file limit reached below `HTTP_MAX_CONNECTIONS`: the
    /// limit is shared with the origins' connections, Redis and files); `false` when every
    /// connection is busy.
    fn make_room(&self) -> bool {
        Self::evict_oldest_idle(&mut self.conns.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The oldest connection with no request in flight is told to close; one whose next request
    /// has not begun to arrive first, so that a request on its way is not lost when a quiet
    /// connection can go instead (but a flood of heads that never finish cannot hold the cap).
    fn evict_oldest_idle(conns: &mut std::collections::BTreeMap<u64, Arc<Conn>>) -> bool {
        Self::evict_oldest(conns, Conn::is_quiet) || Self::evict_oldest(conns, Conn::is_idle)
    }

    fn evict_oldest(
        conns: &mut std::collections::BTreeMap<u64, Arc<Conn>>,
        which: impl Fn(&Conn) -> bool,
    ) -> bool {
        let Some(victim) = conns.iter().find(|(_, c)| which(c)).map(|(id, _)| *id) else {
            return false;
        };
        if let Some(c) = conns.remove(&victim) {
            c.evicted.store(true, Ordering::Release);
            c.wake.notify_one();
        }
        true
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        self.closed.notify_waiters();
    }

    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl crate::descriptors::IdleConnections for Registry {
    /// Only a quiet connection that has answered before: a miss is not worth a request already
    /// on its way, nor a new connection's first request (a client retries a request on a
    /// kept-alive connection closed under it, not on a new one).
    fn close_oldest_idle(&self) -> bool {
        Self::evict_oldest(
            &mut self.conns.lock().unwrap_or_else(|p| p.into_inner()),
            |c: &Conn| c.answered.load(Ordering::Relaxed) > 0 && c.is_quiet(),
        )
    }
}

/// The server: an accept loop over `listener` serving `router` within `limits`.
pub struct Server {
    registry: Arc<Registry>,
    phase: watch::Sender<Phase>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            registry: Arc::default(),
            phase: watch::channel(Phase::Serving).0,
        }
    }
}

impl Server {
    /// Its connections, for the origins' clients to free a descriptor from when a connect
    /// finds none left (held weakly: a server that ended is skipped).
    pub fn idle_connections(&self) -> std::sync::Weak<dyn crate::descriptors::IdleConnections> {
        let registry: Arc<dyn crate::descriptors::IdleConnections> = self.registry.clone();
        Arc::downgrade(&registry)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.registry.len()
    }

    /// Moves every connection to `phase` (the accept loop stops at `Draining`).
    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Resolves when no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.registry.closed.notified();
            if self.registry.len() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Accepts connections until the phase leaves `Serving`, then returns (the connections go
    /// on in their own tasks until they close).
    pub async fn accept_loop(&self, listener: TcpListener, app: App, limits: ServerLimits) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().keep_alive(true);
        let builder = Arc::new(builder);
        let turns = Turns::new(tokio::runtime::Handle::current().metrics().num_workers());
        let mut phase = self.phase.subscribe();
        let mut next_id = 0u64;
        let mut refused = RateLimitedLog::new("connection refused: every connection has a request in flight");
        let mut accept_errors = RateLimitedLog::new("accept failed");
        let mut out_of_files = RateLimitedLog::new("an idle connection closed to accept a new one");
        loop {
            let accepted = tokio::select! {
                biased;
                _ = phase.wait_for(|p| *p != Phase::Serving) => return,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors: an idle connection gives its up, so that the
                    // client waiting in the backlog gets in (its close takes a moment: the
                    // back-off). Anything else: back off briefly, keep accepting.
                    if crate::descriptors::is_exhaustion(&e) && self.registry.make_room() {
                        out_of_files.note("no descriptor left under the open-file limit (RLIMIT_NOFILE)");
                    } else {
                        accept_errors.note(&e.to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            next_id += 1;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let Some(conn) = self.registry.admit(next_id, limits.max_connections, fd) else {
                refused.note("HTTP_MAX_CONNECTIONS reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_connection(
                next_id,
                conn,
                stream,
                app.clone(),
                builder.clone(),
                limits,
                self.registry.clone(),
                self.phase.subscribe(),
                turns.writer(),
            ));
        }
    }
}

/// Serves one connection until it ends, stalls past its deadline, is evicted, or shutdown
/// closes it.
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    id: u64,
    conn: Arc<Conn>,
    stream: TcpStream,
    app: App,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ServerLimits,
    registry: Arc<Registry>,
    mut phase: watch::Receiver<Phase>,
    turn: Writer,
) {
    let peer = if app.proxied() {
        stream.peer_addr().ok()
    } else {
        None
    };
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
        turn,
    });
    let streams = peer.map(|_| {
        let conn = Arc::downgrade(&conn);
        crate::proxy::ConnectionStreams::new(move |up| {
            if let Some(conn) = conn.upgrade() {
                conn.give_up(up);
            }
        })
    });
    let service = Tracked {
        streams,
        peer,
        app,
        conn: conn.clone(),
    };
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let wake_at = conn.wake_at(&limits);
        tokio::select! {
            // Fixed order, the connection first: no random draw on every poll of the hit path.
            biased;
            _ = connection.as_mut() => break,
            () = tokio::time::sleep_until(wake_at.into()) => {
                let now = Instant::now();
                if conn.write_deadline(&limits).is_some_and(|d| d <= now) {
                    tracing::debug!("response cut: no write progress within HTTP_WRITE_TIMEOUT_SECS");
                    break;
                }
                if conn.deadline(&limits).is_some_and(|d| d <= now) {
                    break;
                }
            }
            () = conn.wake.notified() => {
                let given_up = conn.given_up.load(Ordering::Acquire);
                if given_up > 0 && (conn.is_idle() || given_up >= GIVEN_UP_MAX) {
                    // Nothing in flight but bodies given up: over HTTP/2 their streams would
                    // stay open for ever (their client grants no window), so the connection goes.
                    // So does one that keeps abandoning them (see `GIVEN_UP_MAX`).
                    tracing::debug!(given_up, "connection closed: it left streamed bodies given up");
                    break;
                }
                if conn.evicted.load(Ordering::Acquire) {
                    if conn.is_idle() {
                        break;
                    }
                    // It took a request after the cap chose it: let that one finish.
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            changed = phase.changed() => {
                let now = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Closing };
                match now {
                    Phase::Serving => {}
                    Phase::Closing => break,
                    Phase::Draining if conn.is_idle() => break,
                    Phase::Draining if !draining => {
                        // Finish the request in flight; hyper closes the connection after it.
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    Phase::Draining => {}
                }
            }
        }
    }
    registry.remove(id);
}

/// The application as a hyper service that tells the connection when a request is in flight.
#[derive(Clone)]
struct Tracked {
    /// The client's address, when the proxy wants it on every request.
    peer: Option<std::net::SocketAddr>,
    /// The connection's places among the proxy's streamed bodies (with `peer`: proxy routes).
    streams: Option<crate::proxy::ConnectionStreams>,
    app: App,
    conn: Arc<Conn>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = TrackedFuture;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        self.conn.begin_request();
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(crate::proxy::ClientAddr(peer));
        }
        if let Some(streams) = &self.streams {
            request.extensions_mut().insert(streams.clone());
        }
        TrackedFuture {
            inner: self.app.handle(request),
            conn: Some(self.conn.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// An answer, which marks the request answered when its body is written: at once for a body
    /// of known length (the socket's write state covers its writing), at the end of the stream
    /// for one that is produced as it goes (an NDJSON batch); also when the future is dropped.
    struct TrackedFuture {
        #[pin]
        inner: AppFuture,
        conn: Option<Arc<Conn>>,
    }

    impl PinnedDrop for TrackedFuture {
        fn drop(this: Pin<&mut Self>) {
            if let Some(conn) = this.project().conn.take() {
                conn.end_request();
            }
        }
    }
}

impl Future for TrackedFuture {
    type Output = Result<axum::response::Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        let Some(conn) = this.conn.take() else {
            return Poll::Ready(Ok(response));
        };
        if hyper::body::Body::size_hint(response.body()).exact().is_some() {
            conn.end_request();
            return Poll::Ready(Ok(response));
        }
        // A stream is work in progress for the drain, the keep-alive timeout and the cap.
        Poll::Ready(Ok(response.map(|body| {
            Body::new(TrackedBody {
                inner: body,
                conn: Some(conn),
            })
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's time in flight when it is done or dropped.
    struct TrackedBody {
        #[pin]
        inner: Body,
        conn: Option<Arc<Conn>>,
    }

    impl PinnedDrop for TrackedBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(conn) = this.project().conn.take() {
                conn.end_request();
            }
        }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none()
            && let Some(conn) = this.conn.take()
        {
            conn.end_request();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, reporting reads and write progress to its connection's watchdog; big writes
/// take turns with every other connection's ([`super::turns`]).
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
    turn: Writer,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.on_read();
        }
        result
    }
}

impl Watched {
    /// Tells the watchdog whether a write made progress, unless it waits for a turn (the
    /// server's doing, not a client that stopped reading); `result` as it was.
    fn noted(&self, result: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if !self.turn.waiting() {
            self.conn.on_write(result.is_ready());
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = this.turn.poll_write(&mut this.stream, cx, buf);
        this.noted(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = this.turn.poll_write_vectored(&mut this.stream, cx, bufs);
        this.noted(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.turn.flushed();
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.turn.flushed();
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A `warn` line at most every 10 s, with how many times it happened since the last one.
struct RateLimitedLog {
    what: &'static str,
    last: Option<Instant>,
    count: u64,
}

impl RateLimitedLog {
    fn new(what: &'static str) -> Self {
        RateLimitedLog {
            what,
            last: None,
            count: 0,
        }
    }

    fn note(&mut self, why: &str) {
        self.count += 1;
        if self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(times = self.count, why, "{}", self.what);
            self.last = Some(Instant::now());
            self.count = 0;
        }
    }
}

/// Raises the soft limit of open files to the hard limit, and returns it: connections must fit
/// under it beside the descriptors for everything else (Redis, the origin, logs, files).
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        Some(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Grows the process's descriptor table now so that descriptors below `count` (capped by the
/// open-file limit) never make it grow later.
///
/// Why it exists: Linux grows a process's descriptor table by doubling, and in a process with
/// more than one thread each growth waits for an RCU grace period (`expand_files` calls
/// `synchronize_rcu`), 10 to 20 ms here. The accept loop runs on an async worker, so a burst of
/// new connections (a rollout, a load balancer reconnecting) crossed 128, 256, … 2048 open
/// descriptors with an `accept` that slept that long each time, and every hit on that worker
/// waited with it (1,000 connections opened at once: three stalls of 11–20 ms). Grown once at
/// start-up, the table costs 8 bytes per descriptor (a 4,096-connection cap: ~64 KiB). Returns
/// whether it now covers them (`None` where that cannot be done).
pub fn presize_descriptor_table(count: u64) -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        let highest = count.min(lim.rlim_cur).checked_sub(1)?;
        let highest = libc::c_int::try_from(highest).ok()?;
        let probe = std::fs::File::open("/dev/null").ok()?;
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own onto the lowest free number at
        // or above `highest` (growing the table to cover it); the copy is closed at once.
        let copy = unsafe {
            use std::os::fd::AsRawFd;
            libc::fcntl(probe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest)
        };
        if copy >= 0 {
            // SAFETY: `copy` is the descriptor just made, owned by nothing else.
            unsafe { libc::close(copy) };
        }
        Some(copy >= 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = count;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServerLimits {
        ServerLimits {
            header_timeout: Duration::from_millis(50),
            body_timeout: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 10,
        }
    }

    #[test]
    fn an_idle_kept_alive_connection_wakes_its_watchdog_in_the_future_not_in_a_loop() {
        // Idle since its first answer, longer than QUIET_MS + the header timeout: the quiet
        // look is in the past, and the watchdog must sleep until the keep-alive deadline (a
        // wake-up in the past made it spin at 100 % of a core until then).
        let conn = Conn::new(-1);
        conn.begin_request();
        conn.end_request();
        std::thread::sleep(Duration::from_millis(QUIET_MS + 100));
        let at = conn.wake_at(&limits());
        assert!(at > Instant::now(), "the next wake-up is ahead");
        assert_eq!(
            Some(at),
            conn.deadline(&limits()),
            "and it is the keep-alive deadline"
        );
    }
}
