//! The transparent caching proxy (`PROXY_ROUTES`): requests under a route's path prefix go to
//! its origin unchanged, and answers come back byte for byte, stored and reused as RFC 9111
//! lets a shared cache. The second way in beside `/items/{key}`, for clients that cannot change.
//!
//! - [`routes`]: the route table and each route's options; only its origins are ever fetched.
//! - [`rules`]: what RFC 9111 (and RFC 9213's targeted fields) say about storing and reusing.
//! - this module: the request flow (look up, serve or validate, forward, store, invalidate),
//!   the fast path for fresh hits ([`Proxy::answer_now`]), per-route breakers and counts.
//!
//! Stored responses are entries ([`Entry::proxied`], format 2 in Redis and on disk) in every
//! tier, through [`crate::cache::ReadThrough::stored`] and `keep`, under keys that start with a
//! control character, which no `/items` key may hold.

pub mod routes;
pub mod rules;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request::Parts};

use crate::cache::{
    Coding, Entry, FleetLease, FleetTurn, Head, INLINE_COMPRESS_BYTES, MemoryTier, Tier, Times,
};
use crate::error::AppError;
use crate::telemetry::TRACE_TARGET;
use tracing::Instrument;

pub use routes::{Route, RouteOptions, Routes, SetCookie};
use rules::{Directives, Storable};

/// How long a stored response is kept past its freshness, to be served stale where allowed
/// (`max-stale`, `stale-while-revalidate`, `stale-if-error`) or revalidated with its
/// validators; the memory bound evicts it sooner when room is short.
const KEEP_STALE_SECS: u64 = 3600;

/// The proxy's name in `Via` and `Cache-Status`.
const NAME: &str = "cache-layer";

/// The client's address, put on the request by the server when routes are configured (for
/// `X-Forwarded-For`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The proxy: routes, the origin client, and the memory tier its responses are stored in.
pub struct Proxy {
    routes: Routes,
    client: reqwest::Client,
    /// Frees a descriptor (an idle client connection) when a connect to an origin finds none.
    relief: crate::descriptors::Relief,
    /// `None` when the memory tier is off: every request is then forwarded.
    memory: Option<MemoryTier>,
    /// A response body longer than this streams through and is not stored (decoded too).
    max_body_bytes: usize,
    /// `COMPRESSION_MIN_BYTES`: stored identity bodies at least this long go compressed to
    /// clients that accept it, where the origin says they vary by `Accept-Encoding`.
    compression_min_bytes: Option<usize>,
    /// How long the origin has to answer.
    timeout: Duration,
    /// How long a client has to send a request body (`HTTP_BODY_TIMEOUT_SECS`).
    body_timeout: Duration,
    /// Where proxied requests are counted (`proxy_requests_total`); `None` in tests.
    counts: Option<Arc<crate::telemetry::ProxyCounts>>,
    /// Keys with a background revalidation running (`stale-while-revalidate`): one at a time
    /// per key, however many requests are served the stale answer meanwhile.
    refreshing: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Bytes of origin bodies being read into memory (to be stored) across every request: past
    /// [`BUFFERED_MAX_BYTES`], a body streams through instead, unstored, so many concurrent
    /// large answers cannot hold `ORIGIN_MAX_BODY_BYTES` each in memory.
    buffered: Arc<std::sync::atomic::AtomicUsize>,
    /// Misses in flight, by key: what later misses on the same key wait for.
    inflight: std::sync::Mutex<std::collections::HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    /// One permit per request to an origin in flight (`ORIGIN_MAX_CONCURRENCY`), held until its
    /// body is read or, streamed through, ends: past it a request answers `503` at once rather
    /// than open connections until the process runs out of descriptors.
    slots: Arc<tokio::sync::Semaphore>,
    /// Bodies streamed through from an origin (too long to store) in flight: as many as client
    /// connections (`HTTP_MAX_CONNECTIONS`), each also an origin connection.
    streams: Arc<tokio::sync::Semaphore>,
    /// `HTTP_WRITE_TIMEOUT_SECS`: how long a streamed body waits for its client to take a chunk.
    write_timeout: Duration,
    /// Background refreshes (`stale-while-revalidate`) in flight: at most half of `slots`.
    refresh_slots: Arc<tokio::sync::Semaphore>,
    /// The read-through over every tier (memory, disk, Redis): where responses are stored and
    /// found behind the memory tier, and whose purges reach every replica (invalidations after
    /// unsafe methods); `None`: the memory tier alone, here only.
    cache: Option<crate::cache::ReadThrough>,
    /// How answers are tagged (`ORIGIN_TAG_HEADER`): stored answers carry their tags, so
    /// `DELETE /tags/{tag}` purges them with the `/items` entries of that tag.
    tags: crate::origin::TagRules,
    /// One circuit breaker per route (by [`Route::index`]), with the `ORIGIN_BREAKER_*`
    /// settings: one failing API does not open the circuit of another, nor of `/items`.
    breakers: Vec<crate::origin::Breaker>,
}

/// What bounds the proxy's work, from the settings it shares with `/items`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `ORIGIN_MAX_BODY_BYTES`: a longer response streams through unstored; a longer request
    /// body is `413`.
    pub max_body_bytes: usize,
    /// `COMPRESSION_MIN_BYTES` (when `COMPRESSION` is on).
    pub compression_min_bytes: Option<usize>,
    /// `ORIGIN_TIMEOUT_MS`.
    pub timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_SECS`.
    pub body_timeout: Duration,
    /// `ORIGIN_BREAKER_*`: when a route's circuit opens, and for how long.
    pub breaker: (crate::origin::Trip, Duration),
    /// `ORIGIN_MAX_CONCURRENCY`: requests to the routes' origins in flight at most (each holds
    /// a connection, a descriptor the open-file limit must leave room for).
    pub max_concurrency: usize,
    /// `HTTP_MAX_CONNECTIONS` (as lowered to fit the open-file limit): bodies streamed through
    /// at once at most, each holding an origin connection beside its client's.
    pub max_streams: usize,
    /// `HTTP_WRITE_TIMEOUT_SECS`: a body streamed through is cut when its client takes nothing
    /// for this long (its places are let go).
    pub write_timeout: Duration,
}

/// Bodies too long to store that one client connection may stream through at once (HTTP/1.1
/// carries one request at a time; HTTP/2 many, and one connection must not take every place).
pub const STREAMS_PER_CONNECTION: usize = 8;

/// One client connection's places among the streams ([`STREAMS_PER_CONNECTION`]), and how it
/// is told of a body given up, put on each of its requests by the server.
#[derive(Clone)]
pub struct ConnectionStreams {
    places: Arc<tokio::sync::Semaphore>,
    /// `given_up(true)`: a body of this connection was given up (its client took nothing for
    /// `HTTP_WRITE_TIMEOUT_SECS`); over HTTP/2 hyper polls no body whose stream has no window,
    /// so its request would count as in flight for ever. `given_up(false)`: that body ended.
    given_up: GivenUp,
}

/// See [`ConnectionStreams`].
type GivenUp = Arc<dyn Fn(bool) + Send + Sync>;

impl ConnectionStreams {
    /// Places for one connection; `given_up` tells it of a body given up and of its end.
    pub fn new(given_up: impl Fn(bool) + Send + Sync + 'static) -> Self {
        ConnectionStreams {
            places: Arc::new(tokio::sync::Semaphore::new(STREAMS_PER_CONNECTION)),
            given_up: Arc::new(given_up),
        }
    }
}

/// The first miss on a key, fetching: when dropped (answered, failed or cancelled), the misses
/// waiting on it look again.
struct Leading<'a> {
    inflight: &'a std::sync::Mutex<std::collections::HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    key: String,
    done: tokio::sync::watch::Sender<bool>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        let _ = self.done.send(true);
    }
}

/// Bytes of origin bodies held in memory at once while they are read to be stored; a body that
/// would pass it streams through unstored (64 MiB: 64 answers of the default
/// `ORIGIN_MAX_BODY_BYTES` at once).
const BUFFERED_MAX_BYTES: usize = 64 << 20;

/// An origin body being read into memory, counted in the proxy's total until it is handed on
/// (`take`) or dropped.
struct Buffered<'a> {
    bytes: BytesMut,
    total: &'a std::sync::atomic::AtomicUsize,
}

impl Buffered<'_> {
    /// The bytes read, no longer counted.
    fn take(&mut self) -> Bytes {
        let bytes = std::mem::take(&mut self.bytes);
        self.total
            .fetch_sub(bytes.len(), std::sync::atomic::Ordering::Relaxed);
        bytes.freeze()
    }
}

impl Drop for Buffered<'_> {
    fn drop(&mut self) {
        self.total
            .fetch_sub(self.bytes.len(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// A background revalidation of a key: when it ends, the key may be revalidated again.
struct Refreshing {
    set: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    key: String,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// A response read from the origin.
struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Fetch,
    /// When the request went out and the response came back (seconds since the epoch).
    request_time: u64,
    response_time: u64,
    /// When the request went out (ms since the epoch): a purge since then overtook it.
    started_ms: u64,
    /// When the response came back (ms since the epoch): the answer made from it counts its
    /// time since then in whole seconds of ms, not by seconds' boundaries.
    received_ms: u64,
}

/// A fetched body: whole, or too long to store and streaming through.
enum Fetch {
    Whole(Bytes),
    /// Streamed through unstored, and why: `size` (too long to store) or `slow` (flowing, but
    /// not whole within `ORIGIN_TIMEOUT_MS`), for `Cache-Status`'s detail.
    Streaming(Body, &'static str),
}

impl Proxy {
    /// A proxy for `routes`, storing in `memory` (when there is one).
    pub fn new(
        routes: Routes,
        tags: crate::origin::TagRules,
        memory: Option<MemoryTier>,
        cache: Option<crate::cache::ReadThrough>,
        metrics: Option<Arc<crate::telemetry::Metrics>>,
        limits: Limits,
        relief: crate::descriptors::Relief,
    ) -> Result<Self, String> {
        let Limits {
            max_body_bytes,
            compression_min_bytes,
            timeout,
            body_timeout,
            breaker: (trip, cooldown),
            max_concurrency,
            max_streams,
            write_timeout,
        } = limits;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Idle connections are descriptors too: no more kept than may be in use.
            .pool_max_idle_per_host(max_concurrency)
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .build()
            .map_err(|e| format!("proxy HTTP client: {e}"))?;
        let counts = metrics.map(|m| {
            let names: Vec<String> = routes.iter().map(|r| r.name.clone()).collect();
            m.watch_proxy(&names, OUTCOMES)
        });
        let breakers = routes
            .iter()
            .map(|_| crate::origin::Breaker::new(trip, cooldown))
            .collect();
        Ok(Proxy {
            breakers,
            routes,
            client,
            relief,
            memory,
            max_body_bytes,
            compression_min_bytes,
            timeout,
            body_timeout,
            cache,
            counts,
            tags,
            refreshing: Default::default(),
            buffered: Default::default(),
            inflight: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(max_concurrency.max(1))),
            // Half, rounded down: with one place, none is for refreshes (a stale answer is
            // served until its window ends; the client's miss after it has the place).
            refresh_slots: Arc::new(tokio::sync::Semaphore::new(max_concurrency / 2)),
            streams: Arc::new(tokio::sync::Semaphore::new(max_streams.max(1))),
            write_timeout,
        })
    }

    /// The routes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Each route's name and the state of its circuit (for `/health`).
    pub fn circuits(&self) -> impl Iterator<Item = (&str, crate::origin::BreakerState)> {
        let now = std::time::Instant::now();
        self.routes
            .iter()
            .map(move |r| (r.name.as_str(), self.breakers[r.index].state(now)))
    }

    /// The key a proxied `path_and_query` is stored under (every variant of it hangs off it);
    /// `None` when no route takes it.
    pub fn key_for(&self, path_and_query: &str) -> Option<String> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let (route, rest) = self.routes.find(path)?;
        Some(cache_key(route, rest, route.options.query(query).as_deref()))
    }

    /// Purges (hard) the stored answers for `key` here and, through the read-through's purge
    /// fan-out, on every replica (an unsafe method's invalidation, RFC 9111 §4.4).
    async fn invalidate(&self, key: &str) {
        match &self.cache {
            Some(cache) => {
                if let Err(e) = cache.purge(key, crate::cache::PurgeMode::Hard).await {
                    tracing::debug!(error = %e, "proxy invalidation did not reach every replica");
                }
            }
            None => {
                if let Some(memory) = &self.memory {
                    let _ = memory.remove(key).await;
                }
            }
        }
    }

    /// A fresh stored answer to a plain `GET`, made at once, without the router, a span or an
    /// await, as `/items` hits are (the caller has checked that no endpoint of the service
    /// takes the path). `None` when [`Proxy::handle`] must run: another method, a traced
    /// request, request directives (`Cache-Control`, `Pragma`), `Via` (a relayed request), a
    /// transfer coding or two `Host`s, an absolute-form target, escapes, backslashes or dot
    /// segments in the path, a resource that varies on what the flow sets (`X-Forwarded-*`,
    /// `Via`) or on a header its route replaces, or anything short of a fresh hit in the memory
    /// tier. What it answers is what `handle` would: the same `serve`.
    pub fn answer_now<B>(&self, request: &http::Request<B>) -> Option<Response> {
        if request.method() != Method::GET || tracing::enabled!(target: TRACE_TARGET, tracing::Level::INFO) {
            return None;
        }
        let memory = self.memory.as_ref()?;
        let uri = request.uri();
        let path = uri.path();
        if uri.scheme().is_some()
            || uri.authority().is_some()
            || path.bytes().any(|b| b == b'%' || b == b'\\')
            || (path.contains("/.") && path.split('/').any(dot_segment))
        {
            return None;
        }
        let headers = request.headers();
        let plain_connection = headers.get_all(header::CONNECTION).iter().all(|v| {
            v.as_bytes().split(|b| *b == b',').all(|t| {
                let t = t.trim_ascii();
                t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close") || t.is_empty()
            })
        });
        if !plain_connection
            || headers.contains_key(header::CACHE_CONTROL)
            || headers.contains_key(header::PRAGMA)
            || headers.contains_key(header::VIA)
            || headers.contains_key(header::TRANSFER_ENCODING)
            || headers.get_all(header::HOST).iter().count() != 1
        {
            return None;
        }
        let (route, rest) = self.routes.find(path)?;
        let key = cache_key(route, rest, route.options.query(uri.query()).as_deref());
        let now = memory.now_ms();
        let marker = memory.get_at(&key, now)??;
        let head = marker.head()?;
        let generation = head.marker?;
        if soft_purged(&marker).is_some() {
            return None;
        }
        for (name, _) in &head.vary {
            let set_here = name.as_str().starts_with("x-forwarded-")
                || name == header::VIA
                || hop_by_hop(name, &[])
                || route.options.headers.iter().any(|(n, _)| n == name);
            if set_here {
                return None;
            }
        }
        let at = variant_key_from(key, generation, head.vary.iter().map(|(n, _)| n), headers);
        let entry = memory.get_at(&at, now)??;
        let age = fresh_age(&entry, now)?;
        let response = self.serve_to(&Method::GET, headers, Some(&at), &entry, age, "hit");
        if let Some(counts) = &self.counts {
            counts.add(route.index, HIT, response.status().as_u16());
        }
        Some(response)
    }

    /// Answers a request that no endpoint of the service took: through its route, or `404`;
    /// in a server span named by the method and the route (`GET /api`), with `http.route`
    /// (the route's prefix) and `cache.outcome`, continuing the client's trace.
    pub async fn handle(self: &Arc<Self>, request: http::Request<Body>) -> Response {
        let route = self
            .routes
            .find(request.uri().path())
            .map(|(r, _)| r.name.as_str());
        let span = tracing::info_span!(target: TRACE_TARGET, "proxy",
            otel.name = format!("{} {}", request.method(), route.unwrap_or("unrouted")),
            otel.kind = "server",
            http.request.method = %request.method(),
            http.route = route,
            http.response.status_code = tracing::field::Empty,
            cache.outcome = tracing::field::Empty);
        crate::telemetry::continue_trace(&span, request.headers());
        let response = self.handle_in_span(request).instrument(span.clone()).await;
        span.record("http.response.status_code", response.status().as_u16());
        span.record("cache.outcome", OUTCOMES[outcome(&response)]);
        response
    }

    /// [`Proxy::handle`], inside its span.
    async fn handle_in_span(self: &Arc<Self>, request: http::Request<Body>) -> Response {
        let (mut parts, body) = request.into_parts();
        // HTTP/2 carries the target's authority in every request; HTTP/1.1 only in the
        // absolute form, which only a forward proxy takes.
        let http1 = parts.version <= http::Version::HTTP_11;
        if http1 && (parts.uri.scheme().is_some() || parts.uri.authority().is_some()) {
            return AppError::BadRequest(
                "an absolute-form request target is not accepted: this is not a forward proxy".to_owned(),
            )
            .into_response();
        }
        if let Some(why) = ambiguous(&parts.headers) {
            return AppError::BadRequest(why.to_owned()).into_response();
        }
        if parts.version == http::Version::HTTP_11 && !parts.headers.contains_key(header::HOST) {
            // RFC 9112 §3.2: an HTTP/1.1 request without `Host` is refused.
            return AppError::BadRequest("an HTTP/1.1 request must carry a Host header".to_owned())
                .into_response();
        }
        if parts.headers.get_all(header::HOST).iter().count() > 1 {
            // RFC 9112 §3.2: which host was meant cannot be told, and two parties may disagree.
            return AppError::BadRequest("a request may carry one Host header".to_owned()).into_response();
        }
        if dot_segments(parts.uri.path()) {
            // `..` resolved after routing would leave the route's base path (or pick another
            // route); the same resource under another spelling would dodge invalidations.
            return AppError::BadRequest(
                "a path with `.` or `..` segments (percent-encoded or with backslashes too) is not accepted"
                    .to_owned(),
            )
            .into_response();
        }
        if hops(&parts.headers) >= MAX_HOPS {
            return AppError::LoopDetected(format!(
                "the request passed through {NAME} {MAX_HOPS} times: a route leads back to itself"
            ))
            .into_response();
        }
        // What the origin will not be sent (hop-by-hop fields, and those `Connection` lists) is
        // dropped before anything looks at the request: variants are selected by what the
        // origin was sent, and `Connection: via` must not remove the `Via` set below.
        strip_hop_by_hop(&mut parts.headers);
        forwarding(&mut parts);
        let Some((route, rest)) = self.routes.find(parts.uri.path()) else {
            return AppError::NotFound("no route or endpoint for this path".to_owned()).into_response();
        };
        // The route's own headers for the origin replace the client's: what the origin is sent
        // (and what decides storing, `Authorization` above all) is the route's.
        for (name, _) in &route.options.headers {
            parts.headers.remove(name);
        }
        let query = route.options.query(parts.uri.query());
        let url = route.upstream(rest, query.as_deref());
        let key = cache_key(route, rest, query.as_deref());
        let response = if parts.method == Method::GET || parts.method == Method::HEAD {
            self.read(&parts, route, &url, &key).await
        } else {
            self.write(parts, body, route, &url, &key).await
        };
        if let Some(counts) = &self.counts {
            counts.add(route.index, outcome(&response), response.status().as_u16());
        }
        response
    }

    /// `GET` and `HEAD`: served from the cache when RFC 9111 allows, else validated or fetched.
    async fn read(self: &Arc<Self>, parts: &Parts, route: &Route, url: &str, key: &str) -> Response {
        let req = rules::request_directives(&parts.headers);
        let now = now_secs();
        let stored = self.lookup(key, &parts.headers).await;
        if let Some((at, entry)) = &stored {
            let at = Some(at.as_str());
            let head = entry.head().expect("proxied entries have a head");
            let res = rules::response_directives(&head.headers);
            let age = current_age(head, now);
            let fresh = fresh_age(entry, crate::cache::now_ms()).is_some();
            let always_validate = res.unqualified("no-cache") || req.has("no-cache");
            let within_request = req.seconds("max-age").is_none_or(|m| age <= m)
                && req
                    .seconds("min-fresh")
                    .is_none_or(|m| head.lifetime.saturating_sub(age) >= m);
            if fresh && within_request && !always_validate {
                return self.serve(parts, at, entry, age, "hit");
            }
            let no_stale = res.has("must-revalidate") || res.has("proxy-revalidate") || res.has("s-maxage");
            let stale_by = age.saturating_sub(head.lifetime);
            if !fresh && !always_validate && !no_stale && req.seconds("max-age").is_none_or(|m| age <= m) {
                let max_stale = req
                    .has("max-stale")
                    .then(|| req.seconds("max-stale").unwrap_or(u64::MAX));
                if max_stale.is_some_and(|m| stale_by <= m) {
                    return self.serve(parts, at, entry, age, "hit; detail=stale");
                }
                if route
                    .options
                    .stale_while_revalidate
                    .or_else(|| res.seconds("stale-while-revalidate"))
                    .is_some_and(|w| stale_by <= w)
                {
                    self.revalidate_later(parts, route, url, key, entry.clone());
                    return self.serve(
                        parts,
                        at,
                        entry,
                        age,
                        "hit; fwd=stale; detail=stale-while-revalidate",
                    );
                }
            }
            if req.has("only-if-cached") {
                return gateway_timeout(
                    "only-if-cached, and the stored response may not be served without the origin",
                );
            }
            return self
                .validate(parts, route, (url, key), (at, entry.clone()), &req, &res, now)
                .await;
        }
        if req.has("only-if-cached") {
            return gateway_timeout("only-if-cached, and nothing is stored for this request");
        }
        // Concurrent misses on one resource: the first goes to the origin, the others wait for
        // it (at most the origin's deadline) and look again, so a stampede is one fetch when the
        // answer may be stored. What may not be stored, each fetches for itself.
        // A request that came through this cache before (a route leading back to a replica) is
        // never made to wait: it may be the leader's own fetch.
        let relayed = hops(&parts.headers) > 1;
        let lead = if relayed {
            Ok(None)
        } else {
            self.lead_or_follow(key).await
        };
        // A request that waited on another's fetch and found nothing it may use (another
        // variant, or an answer that may not be stored) fetches at once: waiting again, for the
        // fleet lock, would only line the waiters up one behind the other.
        let waited = lead.is_err();
        let _leading = match lead {
            Ok(leading) => leading,
            Err(()) => {
                if let Some(response) = self.fresh_now(parts, key, &req, "hit; detail=coalesced").await {
                    return response;
                }
                None
            }
        };
        // Across replicas (with Redis): one fetches, the others wait for what it stores (at most
        // FLEET_LOCK_WAIT_MS), as for `/items`.
        let held = match (&self.cache, relayed || waited) {
            (Some(cache), false) => match cache.fleet_turn(key).await {
                Some(FleetTurn::Lead(held)) => Some(held),
                Some(FleetTurn::Filled) => {
                    if let Some(response) = self.fresh_now(parts, key, &req, "hit; detail=fleet").await {
                        return response;
                    }
                    None
                }
                _ => None,
            },
            _ => None,
        };
        match self.fetch(parts, route, url, None, None).await {
            Ok(fetched) => {
                self.forwarded(parts, route, key, &req, fetched, "uri-miss", held)
                    .await
            }
            Err(e) => {
                if let Some(held) = held {
                    held.release(false).await;
                }
                e.into_response()
            }
        }
    }

    /// The stored answer for the request, if one is fresh now (another request's or replica's
    /// fetch stored it meanwhile), served with `status`.
    async fn fresh_now(&self, parts: &Parts, key: &str, req: &Directives, status: &str) -> Option<Response> {
        let (at, entry) = self.lookup(key, &parts.headers).await?;
        let age = fresh_age(&entry, crate::cache::now_ms()).filter(|_| !req.has("no-cache"))?;
        Some(self.serve(parts, Some(&at), &entry, age, status))
    }

    /// The first miss on `key` leads (`Ok`: its guard lets the others go when dropped); a later
    /// one waits for the leader to finish, at most the origin's deadline (`Err`).
    async fn lead_or_follow(&self, key: &str) -> Result<Option<Leading<'_>>, ()> {
        let waiting = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(false);
                    inflight.insert(key.to_owned(), rx);
                    return Ok(Some(Leading {
                        inflight: &self.inflight,
                        key: key.to_owned(),
                        done: tx,
                    }));
                }
            }
        };
        let mut waiting = waiting;
        let _ = tokio::time::timeout(self.timeout, waiting.wait_for(|done| *done)).await;
        Err(())
    }

    /// A stored response that may not be served as it is: a conditional request with its
    /// validators (or a plain one without), then the stored response updated by a `304`, the
    /// new response, or the stale one where the origin failed and `stale-if-error` allows.
    #[allow(clippy::too_many_arguments)]
    async fn validate(
        &self,
        parts: &Parts,
        route: &Route,
        (url, key): (&str, &str),
        (at, entry): (Option<&str>, Arc<Entry>),
        req: &Directives,
        res: &Directives,
        now: u64,
    ) -> Response {
        let head = entry.head().expect("proxied entries have a head");
        let validators = validators(&head.headers);
        let fetched = self.fetch(parts, route, url, None, validators.as_ref()).await;
        let stale_by = current_age(head, now).saturating_sub(head.lifetime);
        // Stale on error: within `stale-if-error` when given; else (RFC 9111 §4.2.4: a cache
        // cut off from the origin may serve stale unless told not to) whenever the stored
        // response may be served stale at all, as `/items` does within its stale window.
        let prohibited = res.has("must-revalidate")
            || res.has("proxy-revalidate")
            || res.has("s-maxage")
            || res.unqualified("no-cache")
            || req.has("no-cache");
        let if_error = |status: Option<StatusCode>| {
            let route_window = route.options.stale_if_error;
            let gateway = status.is_none_or(|s| {
                matches!(s.as_u16(), 502..=504)
                    || (s.is_server_error() && (route_window.is_some() || res.has("stale-if-error")))
            });
            let window = route_window
                .or_else(|| res.seconds("stale-if-error"))
                .max(req.seconds("stale-if-error"));
            gateway && !prohibited && window.is_none_or(|w| stale_by <= w)
        };
        match fetched {
            Ok(f) if f.status == StatusCode::NOT_MODIFIED && validators.is_some() => {
                match self.freshened(route, key, (&parts.headers, req), &entry, f).await {
                    Some((at, updated)) => {
                        let age = current_age(updated.head().expect("proxied"), now_secs());
                        self.serve(parts, at.as_deref(), &updated, age, "fwd=stale; fwd-status=304")
                    }
                    // A 304 for another representation: the origin is asked again, plainly.
                    None => match self.fetch(parts, route, url, None, None).await {
                        Ok(f) => self.forwarded(parts, route, key, req, f, "stale", None).await,
                        Err(e) => e.into_response(),
                    },
                }
            }
            Ok(f) if f.status.is_server_error() && if_error(Some(f.status)) => self.serve(
                parts,
                at,
                &entry,
                current_age(head, now),
                "hit; fwd=stale; detail=stale-if-error",
            ),
            Ok(f) => self.forwarded(parts, route, key, req, f, "stale", None).await,
            Err(_) if if_error(None) => self.serve(
                parts,
                at,
                &entry,
                current_age(head, now),
                "hit; fwd=stale; detail=stale-if-error",
            ),
            Err(e) => e.into_response(),
        }
    }

    /// Validates a stale response in the background (`stale-while-revalidate`).
    fn revalidate_later(
        self: &Arc<Self>,
        parts: &Parts,
        route: &Route,
        url: &str,
        key: &str,
        entry: Arc<Entry>,
    ) {
        if !self.storing()
            || !self
                .refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_owned())
        {
            return;
        }
        let (mut parts_copy, _) = http::Request::new(()).into_parts();
        parts_copy.method = Method::GET;
        parts_copy.uri = parts.uri.clone();
        parts_copy.headers = parts.headers.clone();
        for h in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::CACHE_CONTROL,
            header::PRAGMA,
        ] {
            parts_copy.headers.remove(h);
        }
        // Background refreshes take at most half the places (as `/items`'s do), so clients'
        // misses always have the other half; one that finds none is not made (the stale answer
        // was served, and the next stale hit asks again).
        let Ok(refresh_slot) = self.refresh_slots.clone().try_acquire_owned() else {
            self.refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            return;
        };
        let (this, route, url, key) = (self.clone(), route.clone(), url.to_owned(), key.to_owned());
        tokio::spawn(async move {
            let _slot = refresh_slot;
            let _done = Refreshing {
                set: this.refreshing.clone(),
                key: key.clone(),
            };
            let head = entry.head().expect("proxied");
            let validators = validators(&head.headers);
            if let Ok(f) = this
                .fetch(&parts_copy, &route, &url, None, validators.as_ref())
                .await
            {
                let req = rules::request_directives(&parts_copy.headers);
                if f.status == StatusCode::NOT_MODIFIED && validators.is_some() {
                    this.freshened(&route, &key, (&parts_copy.headers, &req), &entry, f)
                        .await;
                } else {
                    drop(
                        this.forwarded(&parts_copy, &route, &key, &req, f, "stale", None)
                            .await,
                    );
                }
            }
        });
    }

    /// The stored response updated by a `304` (RFC 9111 §4.3.4): its headers replaced by the
    /// 304's (less `Content-Length` and hop-by-hop ones), its age and freshness anew; stored again,
    /// unless the updated headers forbid it (`no-store`, `private`, …): then the stored response
    /// is invalidated and the updated one only answers this request. `None` when the 304 may
    /// not update it: its `ETag` names another representation than the stored one.
    async fn freshened(
        &self,
        route: &Route,
        key: &str,
        (request, req): (&HeaderMap, &Directives),
        entry: &Arc<Entry>,
        f: Fetched,
    ) -> Option<(Option<String>, Arc<Entry>)> {
        let old = entry.head().expect("proxied");
        if !same_representation(&old.headers, &f.headers) {
            return None;
        }
        let mut headers = old.headers.clone();
        for name in f.headers.keys() {
            // A cookie a 304 sets is stored only where the route stores cookies.
            if name == header::CONTENT_LENGTH
                || name == header::CONTENT_ENCODING
                || name == header::TRANSFER_ENCODING
                || (name == header::SET_COOKIE && route.options.set_cookie != SetCookie::Store)
            {
                continue;
            }
            headers.remove(name);
            for v in f.headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        // The updated response's age is the 304's, not the stored one's: an old `Age` left in
        // place, or an old `Date` (a 304 without one, which RFC 9110 §6.6.1 lets a recipient
        // add as the time it arrived), would make it as old as the first response for ever.
        if !f.headers.contains_key(header::AGE) {
            headers.remove(header::AGE);
        }
        if !f.headers.contains_key(header::DATE) {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(f.response_time);
            if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
                headers.insert(header::DATE, date);
            }
        }
        let tags: Vec<String> = entry.tags().iter().map(|t| t.to_string()).collect();
        // A stored body this cache decoded has a weakened `ETag`; the origin's 304 names the
        // compressed representation's, strong: it stays weak here.
        let old_weak = old
            .headers
            .get(header::ETAG)
            .is_some_and(|e| e.as_bytes().starts_with(b"W/"));
        if old_weak {
            weaken_etag(&mut headers);
        }
        let updated = Arc::new(
            make_entry(
                &route.options,
                old.status,
                end_to_end(&headers),
                entry.raw_body().clone(),
                (f.request_time, f.response_time, f.started_ms),
            )
            .with_tags(&tags),
        );
        let merged = &updated.head().expect("proxied").headers;
        let res = rules::response_directives(merged);
        let cookies = route.options.set_cookie != SetCookie::Pass;
        let storable = rules::storable(&Method::GET, request, req, old.status, merged, &res, cookies);
        let at = match rules::vary_names(merged) {
            Some(_) if storable == Storable::Yes => {
                self.store(key, request, updated.clone(), f.started_ms, None)
                    .await
            }
            _ => {
                // What is stored says it may be shared; the origin now says otherwise.
                self.invalidate(key).await;
                None
            }
        };
        Some((at, updated))
    }

    /// A response from the origin on its way to the client: stored when RFC 9111 allows; with
    /// `held` (this replica's fleet lock on the resource), the lock goes once it is stored or
    /// known not to be.
    #[allow(clippy::too_many_arguments)]
    async fn forwarded(
        &self,
        parts: &Parts,
        route: &Route,
        key: &str,
        req: &Directives,
        f: Fetched,
        why: &str,
        held: Option<FleetLease>,
    ) -> Response {
        let mut held = held;
        let res = rules::response_directives(&f.headers);
        let cookies = route.options.set_cookie != SetCookie::Pass;
        let storable = match (&f.body, self.storing()) {
            (Fetch::Streaming(_, why), _) => Storable::No(why),
            (_, false) => Storable::No("off"),
            (Fetch::Whole(_), true) => rules::storable(
                &Method::GET,
                &parts.headers,
                req,
                f.status,
                &f.headers,
                &res,
                cookies,
            ),
        };
        let storable = if parts.method == Method::HEAD {
            Storable::No("method")
        } else {
            storable
        };
        // A storable answer the origin compressed is stored decoded (one identity entry serves
        // every `Accept-Encoding`, compressed per client); one that cannot be decoded within
        // `ORIGIN_MAX_BODY_BYTES` (another coding, broken, a bomb) passes through unstored.
        let (storable, body, headers) = match (storable, f.body) {
            (Storable::Yes, Fetch::Whole(body)) if f.headers.contains_key(header::CONTENT_ENCODING) => {
                let coding = f
                    .headers
                    .get_all(header::CONTENT_ENCODING)
                    .iter()
                    .collect::<Vec<_>>();
                let coding = (coding.len() == 1).then(|| coding[0].to_str().ok()).flatten();
                let limit = self.max_body_bytes;
                let known = coding.is_some_and(|c| {
                    matches!(
                        c.trim().to_ascii_lowercase().as_str(),
                        "gzip" | "x-gzip" | "deflate" | "br"
                    )
                });
                let made = match coding.map(str::to_owned) {
                    // Another coding (or several) is stored as it came, one variant per
                    // `Accept-Encoding` where the origin varies by it.
                    _ if !known => Some(None),
                    None => None,
                    Some(c) if body.len() < INLINE_COMPRESS_BYTES => decoded(&c, &body, limit).map(Some),
                    Some(c) => {
                        let input = body.clone();
                        tokio::task::spawn_blocking(move || decoded(&c, &input, limit))
                            .await
                            .ok()
                            .flatten()
                            .map(Some)
                    }
                };
                match made {
                    Some(None) => (Storable::Yes, Fetch::Whole(body), f.headers),
                    Some(Some(identity)) => {
                        let mut headers = f.headers;
                        headers.remove(header::CONTENT_ENCODING);
                        headers.remove(header::CONTENT_LENGTH);
                        // The identity body is another representation.
                        weaken_etag(&mut headers);
                        if !rules::vary_names(&headers).is_some_and(|n| n.contains(&header::ACCEPT_ENCODING))
                        {
                            headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
                        }
                        (Storable::Yes, Fetch::Whole(identity), headers)
                    }
                    None => (Storable::No("encoding"), Fetch::Whole(body), f.headers),
                }
            }
            (storable, body) => (storable, body, f.headers),
        };
        let response = match (storable, body) {
            (Storable::Yes, Fetch::Whole(body)) => {
                let mut headers = end_to_end(&headers);
                // Fields a qualified no-cache or private names are not stored (§5.2.2.4, §5.2.2.7).
                for d in ["no-cache", "private"] {
                    for name in res.fields(d).unwrap_or_default() {
                        headers.remove(name.as_str());
                    }
                }
                // `set_cookie=strip`: the cookies go to this client only.
                let cookies: Vec<HeaderValue> = match route.options.set_cookie {
                    SetCookie::Strip => {
                        let all = headers.get_all(header::SET_COOKIE).iter().cloned().collect();
                        headers.remove(header::SET_COOKIE);
                        all
                    }
                    _ => Vec::new(),
                };
                let (tags, _) = self.tags.read(&headers);
                let entry = Arc::new(
                    make_entry(
                        &route.options,
                        f.status,
                        headers,
                        body,
                        (f.request_time, f.response_time, f.started_ms),
                    )
                    .with_tags(tags.as_deref().unwrap_or_default()),
                );
                let head = entry.head().expect("proxied");
                let keep = head.lifetime > 0
                    || validators(&head.headers).is_some()
                    || res.has("stale-while-revalidate")
                    || res.has("stale-if-error")
                    || route.options.stale_while_revalidate.is_some_and(|w| w > 0)
                    || route.options.stale_if_error.is_some_and(|w| w > 0);
                let (at, detail) = if keep {
                    let at = self
                        .store(key, &parts.headers, entry.clone(), f.started_ms, held.take())
                        .await;
                    (at, format!("fwd={why}; stored"))
                } else {
                    (None, format!("fwd={why}; detail=no-freshness"))
                };
                let age = entry.head().expect("proxied").initial_age
                    + crate::cache::now_ms().saturating_sub(f.received_ms) / 1000;
                let mut response = self.serve(parts, at.as_deref(), &entry, age, &detail);
                for cookie in cookies {
                    response.headers_mut().append(header::SET_COOKIE, cookie);
                }
                response
            }
            (Storable::No(reason), body) => {
                let status = f.status;
                // A body streamed through keeps the origin's length (its bytes pass as they
                // came): a client reading until the close (HTTP/1.0) can then tell a cut one.
                let streamed = matches!(body, Fetch::Streaming(..)) && framed_by_length(&headers);
                let mut response = match body {
                    Fetch::Whole(b) => Response::new(Body::from(b)),
                    Fetch::Streaming(s, _) => Response::new(s),
                };
                *response.status_mut() = status;
                let keep_length =
                    parts.method == Method::HEAD || status == StatusCode::NOT_MODIFIED || streamed;
                copy_headers(&headers, response.headers_mut(), keep_length);
                finish(response.headers_mut(), &format!("fwd={why}; detail={reason}"));
                response
            }
            (Storable::Yes, Fetch::Streaming(..)) => unreachable!("a streaming body is never storable"),
        };
        // Not stored: the replicas waiting on this fetch ask the origin themselves at once.
        if let Some(held) = held {
            held.release(false).await;
        }
        response
    }

    /// Methods other than `GET` and `HEAD`: forwarded, never stored; a non-error answer
    /// invalidates the target and its `Location` / `Content-Location` on this origin (§4.4).
    async fn write(&self, parts: Parts, body: Body, route: &Route, url: &str, key: &str) -> Response {
        let too_large = || {
            AppError::TooLarge(format!(
                "a request body to a proxied route may be at most {} bytes (ORIGIN_MAX_BODY_BYTES)",
                self.max_body_bytes
            ))
            .into_response()
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return too_large();
        }
        // The whole body within HTTP_BODY_TIMEOUT_SECS, as for every other body this service reads.
        let body =
            match tokio::time::timeout(self.body_timeout, axum::body::to_bytes(body, self.max_body_bytes))
                .await
            {
                Ok(Ok(b)) => b,
                Ok(Err(_)) => return too_large(),
                Err(_) => return AppError::RequestTimeout.into_response(),
            };
        let fetched = match self.fetch(&parts, route, url, Some(body), None).await {
            Ok(f) => f,
            Err(e) => return e.into_response(),
        };
        if (fetched.status.is_success() || fetched.status.is_redirection()) && self.storing() {
            self.invalidate(key).await;
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(path) = fetched
                    .headers
                    .get(&name)
                    .and_then(|v| same_origin_path(v, &parts))
                    && let Some((r, rest)) = self.routes.find(path.split('?').next().unwrap_or_default())
                    && r.name == route.name
                {
                    let query = r.options.query(path.split_once('?').map(|(_, q)| q));
                    self.invalidate(&cache_key(r, rest, query.as_deref())).await;
                }
            }
        }
        let streamed = matches!(fetched.body, Fetch::Streaming(..)) && framed_by_length(&fetched.headers);
        let mut response = match fetched.body {
            Fetch::Whole(b) => Response::new(Body::from(b)),
            Fetch::Streaming(s, _) => Response::new(s),
        };
        *response.status_mut() = fetched.status;
        copy_headers(&fetched.headers, response.headers_mut(), streamed);
        finish(response.headers_mut(), "fwd=method");
        response
    }

    /// The stored response for `key` that matches the request's `Vary`-selected headers.
    async fn lookup(&self, key: &str, request: &HeaderMap) -> Option<(String, Arc<Entry>)> {
        let entry = self.entry(key).await?;
        // Every stored answer is a variant under a marker (`Host` always selects).
        let head = entry.head()?;
        let generation = head.marker?;
        let names: Vec<HeaderName> = head.vary.iter().map(|(n, _)| n.clone()).collect();
        let at = variant_key(key, generation, &names, request);
        let variant = self.entry(&at).await?;
        // A soft purge of the resource marks its marker stale: every variant under it is older
        // than the purge (a store after it starts a new generation).
        let variant = match soft_purged(&entry) {
            Some(when) => Arc::new(variant.marked_stale(when)),
            None => variant,
        };
        Some((at, variant))
    }

    /// Stores `entry` for `key` as the variant for the request's values of the headers it
    /// `Vary`s on and `Host`, with a marker under the key naming those headers (a purge of the
    /// key removes every variant with it).
    async fn store(
        &self,
        key: &str,
        request: &HeaderMap,
        entry: Arc<Entry>,
        started_ms: u64,
        held: Option<FleetLease>,
    ) -> Option<String> {
        if !self.storing() {
            if let Some(held) = held {
                held.release(false).await;
            }
            return None;
        }
        let head = entry.head().expect("proxied");
        // `Host` always selects too: the origin is told it (`X-Forwarded-Host`), and one that
        // builds its answer from it without saying `Vary` must not hand one client's to another.
        let mut names = rules::vary_names(&head.headers).unwrap_or_default();
        // An identity body is one entry for every `Accept-Encoding`: compressed per client.
        if !head.headers.contains_key(header::CONTENT_ENCODING) {
            names.retain(|n| n != header::ACCEPT_ENCODING);
        }
        if !names.contains(&header::HOST) {
            names.push(header::HOST);
            names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        }
        let existing = self.entry(key).await;
        let generation = existing
            .as_ref()
            .and_then(|e| e.head())
            .filter(|h| h.marker.is_some() && h.vary.iter().map(|(n, _)| n).eq(names.iter()))
            .filter(|_| existing.as_ref().and_then(|e| soft_purged(e)).is_none())
            .and_then(|h| h.marker)
            .unwrap_or_else(rand::random);
        let marker = Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            response_time: head.response_time,
            initial_age: 0,
            lifetime: 0,
            vary: names.iter().map(|n| (n.clone(), None)).collect(),
            marker: Some(generation),
            served: Default::default(),
        };
        let keep_until = entry.stale_until_ms.max(existing.map_or(0, |e| e.stale_until_ms));
        let times = Times {
            stored_at_ms: entry.stored_at_ms,
            // Fresh for as long as it is kept: a soft purge is what ends it sooner.
            fresh_until_ms: keep_until,
            revalidate_until_ms: keep_until,
            if_error_until_ms: keep_until,
            stale_until_ms: keep_until,
            must_revalidate: false,
        };
        let marker = Arc::new(Entry::proxied(marker, Bytes::new(), times));
        let at = variant_key(key, generation, &names, request);
        // The variant first: a marker never points at a variant not stored yet.
        if !self.put(&at, entry, started_ms, None).await {
            if let Some(held) = held {
                held.release(false).await;
            }
            return None;
        }
        // The fleet lock goes once the marker is written everywhere: waiting replicas find both.
        self.put(key, marker, started_ms, held).await.then_some(at)
    }

    /// Whether answers are stored at all (there is a tier).
    fn storing(&self) -> bool {
        self.memory.is_some() || self.cache.as_ref().is_some_and(|c| !c.tiers().is_empty())
    }

    /// The entry under `key`: from the memory tier at once, else from the tiers behind it. One
    /// that is not what this proxy stores (a status it never stores, framing or hop-by-hop
    /// fields: written into Redis by something else) is not one.
    async fn entry(&self, key: &str) -> Option<Arc<Entry>> {
        if let Some(found) = self.memory.as_ref().and_then(|m| m.get_now(key)).flatten() {
            return Some(found);
        }
        self.cache.as_ref()?.stored(key, sound).await
    }

    /// Stores `entry` under `key` in every tier (a fetch started at `started_ms`: a purge since
    /// stops it); `true` when a tier keeps it.
    async fn put(&self, key: &str, entry: Arc<Entry>, started_ms: u64, held: Option<FleetLease>) -> bool {
        match (&self.cache, &self.memory) {
            (Some(cache), _) => cache.keep(key, entry, started_ms, held).await,
            (None, Some(memory)) => matches!(memory.put(key, entry).await, Ok(true)),
            (None, None) => false,
        }
    }

    /// Sends the request to the origin: end-to-end headers, `Via` and `X-Forwarded-*`; with
    /// `validators` (the stored response's `ETag` / `Last-Modified`) as a conditional request
    /// of this cache's own instead of the client's conditionals.
    async fn fetch(
        &self,
        parts: &Parts,
        route: &Route,
        url: &str,
        body: Option<Bytes>,
        validators: Option<&(Option<HeaderValue>, Option<HeaderValue>)>,
    ) -> Result<Fetched, AppError> {
        // The request's headers as `forwarding` set them, less hop-by-hop ones and `Host`.
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
        copy_headers(&parts.headers, &mut headers, true);
        headers.remove(header::HOST);
        if let Some((etag, lm)) = validators {
            for h in [
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
                header::IF_MATCH,
                header::IF_UNMODIFIED_SINCE,
                header::IF_RANGE,
                header::RANGE,
            ] {
                headers.remove(h);
            }
            if let Some(etag) = etag {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = lm {
                headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
            }
        }
        if body.is_none() {
            headers.remove(header::CONTENT_LENGTH);
        }
        for (name, value) in &route.options.headers {
            headers.insert(name.clone(), value.clone());
        }
        // A client span for the origin's request; the origin is told its trace context in place
        // of the client's (which still parents the server span).
        let span = tracing::info_span!(target: TRACE_TARGET, "origin.fetch",
            otel.kind = "client",
            http.request.method = %parts.method,
            http.route = route.name.as_str(),
            http.response.status_code = tracing::field::Empty);
        if let Some(tp) = crate::telemetry::traceparent(&span)
            && let Ok(v) = HeaderValue::from_str(&tp)
        {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
        let mut builder = self.client.request(parts.method.clone(), url).headers(headers);
        if let Some(body) = body {
            builder = builder.body(body);
        }
        // A place first: a half-open circuit's probe taken and then refused a place would be
        // a probe that never goes out.
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(AppError::OriginUnavailable {
                message: "ORIGIN_MAX_CONCURRENCY requests to the origins are in flight already".to_owned(),
                retry_after_secs: 1,
            });
        };
        // The route's circuit: while it is open, nothing goes to its origin (a stored answer
        // stands in where stale-on-error allows).
        let breaker = &self.breakers[route.index];
        if let Err(retry) = breaker.allow(std::time::Instant::now()) {
            return Err(AppError::OriginUnavailable {
                message: "the route's origin is failing: its circuit is open (ORIGIN_BREAKER_*)".to_owned(),
                retry_after_secs: retry.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        let target = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            parts.uri.path().hash(&mut h);
            h.finish()
        };
        // A 5xx, a 429 or no answer counts against the route; any other answer is the origin's
        // word about the resource.
        let record = |ok: bool| breaker.record(ok, std::time::Instant::now(), None, target);
        let started_ms = crate::cache::now_ms();
        // `ORIGIN_TIMEOUT_MS` bounds the head and a body read to be stored; a body streamed
        // through may take as long as it flows (its client may read slowly), and is cut only
        // when the origin sends nothing for that long (see below).
        let deadline = tokio::time::Instant::now() + self.timeout;
        // The message names no URL (the origin's address is the operator's, not the client's).
        let sent =
            tokio::time::timeout_at(deadline, self.relief.send(builder).instrument(span.clone())).await;
        match &sent {
            Ok(Ok(r)) => {
                span.record("http.response.status_code", r.status().as_u16());
                record(!r.status().is_server_error() && r.status() != StatusCode::TOO_MANY_REQUESTS);
            }
            // No descriptor to connect with: this process's trouble, not the origin's, so not
            // recorded (a half-open circuit's probe then goes again after a cool-down).
            Ok(Err(failed)) if failed.out_of_descriptors => {
                return Err(AppError::OriginUnavailable {
                    message: crate::origin::OriginError::OutOfDescriptors.to_string(),
                    retry_after_secs: 1,
                });
            }
            _ => record(false),
        }
        let Ok(sent) = sent else {
            return Err(AppError::OriginTimeout(
                "the origin did not answer within ORIGIN_TIMEOUT_MS".to_owned(),
            ));
        };
        let mut response = sent.map_err(|failed| {
            let e = failed.error.without_url();
            if e.is_timeout() {
                AppError::OriginTimeout(format!("the origin did not answer within ORIGIN_TIMEOUT_MS: {e}"))
            } else if let Some(why) = unreadable_answer(&e) {
                AppError::OriginError(format!("the origin's answer could not be read: {why}"))
            } else {
                AppError::OriginError(format!("the origin could not be reached: {e}"))
            }
        })?;
        let received_ms = crate::cache::now_ms();
        let (request_time, response_time) = exchange_secs(started_ms, received_ms);
        let status = response.status();
        if status.is_informational() {
            // A `101 Switching Protocols` nobody asked for (upgrades are not passed on).
            return Err(AppError::OriginError(format!("the origin answered {status}")));
        }
        let headers = compact(std::mem::take(response.headers_mut()));
        // What the fetch returns, once its body is settled (each path below returns it once).
        let fetched = move |body| Fetched {
            status,
            headers,
            body,
            request_time,
            response_time,
            started_ms,
            received_ms,
        };
        if parts.method == Method::HEAD
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::NO_CONTENT
        {
            return Ok(fetched(Fetch::Whole(Bytes::new())));
        }
        let mut buffer = Buffered {
            bytes: BytesMut::new(),
            total: &self.buffered,
        };
        // A body said to be too long to store streams through from its first byte.
        if response
            .content_length()
            .is_some_and(|n| n > self.max_body_bytes as u64)
        {
            return Ok(fetched(self.stream_through(
                parts,
                Vec::new(),
                response,
                slot,
                "size",
            )?));
        }
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, response.chunk()).await else {
                if buffer.bytes.is_empty() {
                    return Err(AppError::OriginTimeout(
                        "the origin's body did not arrive within ORIGIN_TIMEOUT_MS".to_owned(),
                    ));
                }
                // Flowing, but too slowly to be stored within ORIGIN_TIMEOUT_MS: what came,
                // then the rest as it comes, unstored.
                let body = self.stream_through(parts, vec![buffer.take()], response, slot, "slow")?;
                return Ok(fetched(body));
            };
            match next {
                Ok(Some(chunk)) => {
                    let all = self
                        .buffered
                        .fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed)
                        + chunk.len();
                    let buffer_full = all > BUFFERED_MAX_BYTES;
                    if buffer.bytes.len() + chunk.len() > self.max_body_bytes || buffer_full {
                        // Too long to store: what was read, then the rest as it comes.
                        self.buffered
                            .fetch_sub(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                        let read = vec![buffer.take(), chunk];
                        return Ok(fetched(self.stream_through(parts, read, response, slot, "size")?));
                    }
                    buffer.bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(AppError::OriginError(format!(
                        "the origin's body broke off: {}",
                        e.without_url()
                    )));
                }
            }
        }
        Ok(fetched(Fetch::Whole(buffer.take())))
    }

    /// A body that is not stored: `read` (what came already, in pieces), then the rest of
    /// `response` as it comes. The origin's connection is in use until the rest has gone through, as long as its
    /// client takes to read it: it holds a place among the streams (as many as client
    /// connections, at most [`STREAMS_PER_CONNECTION`] of them for one client connection, which
    /// over HTTP/2 may carry many requests) and gives back `slot`, its place among the requests
    /// to origins, so that clients that read slowly cannot keep other clients' misses from
    /// their origins. Without a stream's place: `503`, rather than hold `slot`.
    fn stream_through(
        &self,
        parts: &Parts,
        read: Vec<Bytes>,
        response: reqwest::Response,
        slot: tokio::sync::OwnedSemaphorePermit,
        why: &'static str,
    ) -> Result<Fetch, AppError> {
        let busy = |message: &str| AppError::OriginUnavailable {
            message: message.to_owned(),
            retry_after_secs: 1,
        };
        let client = parts.extensions.get::<ConnectionStreams>();
        let connection = match client {
            Some(c) => Some(c.places.clone().try_acquire_owned().map_err(|_| {
                busy("this connection streams as many bodies too long to store as one connection may")
            })?),
            None => None,
        };
        let stream = self.streams.clone().try_acquire_owned().map_err(|_| {
            busy("as many bodies too long to store as HTTP_MAX_CONNECTIONS are streaming through already")
        })?;
        drop(slot);
        let given_up = client.map(|c| c.given_up.clone());
        let body = streamed_rest(
            read,
            response,
            (stream, connection),
            self.timeout,
            self.write_timeout,
            given_up,
        );
        Ok(Fetch::Streaming(Body::from_stream(body), why))
    }
}

/// Why a request's framing could be read two ways by the parties on its path (request
/// smuggling, RFC 9112 §6.1 and §6.3), when it could: the HTTP server already refuses
/// conflicting lengths, folded and malformed header lines and other transfer codings, and
/// accepts `Content-Length` beside `Transfer-Encoding: chunked` (as the RFC lets it, reading the
/// chunks); a proxy must not pass such a request on to an origin that may read the length.
fn ambiguous(headers: &HeaderMap) -> Option<&'static str> {
    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    if codings.is_empty() {
        return None;
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Some("a request may carry Content-Length or Transfer-Encoding, not both");
    }
    (codings != ["chunked"]).then_some("the only transfer coding accepted is chunked, once")
}

/// The `cache` label of `proxy_requests_total` (and the span's `cache.outcome`), by number.
const OUTCOMES: &[&str] = &["hit", "stale", "revalidated", "miss", "pass", "error"];

/// [`OUTCOMES`]' number of a plain hit.
const HIT: usize = 0;

/// What the cache did for an answer (a number in [`OUTCOMES`]), from its `Cache-Status`.
fn outcome(response: &Response) -> usize {
    // This cache's member: the last, after those of the caches before it.
    let Some(status) = response
        .headers()
        .get_all(&CACHE_STATUS)
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(NAME))
    else {
        return 5;
    };
    if status.contains("fwd-status=304") {
        2
    } else if status.contains("; hit") && status.contains("stale") {
        1
    } else if status.contains("; hit") {
        HIT
    } else if status.contains("stored") || status.contains("fwd=uri-miss") || status.contains("fwd=stale") {
        3
    } else {
        4
    }
}

/// `headers` in a map of their own size, each value copied: the client's parsed values share
/// the connection's read buffer (kilobytes), which a stored response would otherwise hold.
fn compact(headers: HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in &headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        out.append(name.clone(), copy);
    }
    out
}

/// How many times `Via` says the request passed through this cache.
fn hops(headers: &HeaderMap) -> usize {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.matches(NAME).count())
        .sum()
}

/// Times a request may have passed through this proxy before it is refused as a loop.
const MAX_HOPS: usize = 8;

/// Puts on the request what the origin is told of it (RFC 9110 §7.6.3 `Via`, and the
/// `X-Forwarded-*` fields), so that `Vary` selects variants by the headers the origin saw.
fn forwarding(parts: &mut Parts) {
    let headers = &mut parts.headers;
    match headers.get(header::HOST).cloned() {
        Some(host) => headers.insert(HeaderName::from_static("x-forwarded-host"), host),
        None => headers.remove("x-forwarded-host"),
    };
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Some(ClientAddr(addr)) = parts.extensions.get::<ClientAddr>() {
        let ip = addr.ip().to_string();
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(before) => format!("{before}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    headers.append(header::VIA, HeaderValue::from_static("1.1 cache-layer"));
}

/// Whether `path` has a `.` or `..` segment, once percent-decoded, with `\` taken as `/`.
fn dot_segments(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded.split(['/', '\\']).any(dot_segment)
}

/// Whether `segment` is `.` or `..`, also with path parameters (`..;x`, which servlet
/// containers read as `..`).
fn dot_segment(segment: &str) -> bool {
    let name = segment.split(';').next().unwrap_or_default();
    // Also with what some servers trim from a segment (`..%20`, `..%00`, `...`): dots and
    // nothing else that counts.
    name.starts_with('.') && name.trim_end_matches(['.', ' ', '\t', '\0']).is_empty()
}

/// `text` with percent-escapes of unreserved characters decoded and other escapes in upper
/// case (RFC 3986 §6.2.2): one resource, one key, however its URL is spelled.
fn normalized(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('%') {
        return std::borrow::Cow::Borrowed(text);
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            let v = u8::from_str_radix(&text[i + 1..i + 3], 16).expect("hex digits");
            if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push_str(&text[i + 1..i + 3].to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `entry` is a response as this proxy stores them: a head, a final status other than
/// `206` and `304`, no hop-by-hop fields and no `Content-Length` (each answer gets its own).
fn sound(entry: &Entry) -> bool {
    entry.head().is_some_and(|h| {
        let code = h.status.as_u16();
        (200..600).contains(&code)
            && code != 206
            && code != 304
            && (code != 204 || entry.raw_body().is_empty())
            && !h.headers.contains_key(header::CONTENT_LENGTH)
            && !h.headers.keys().any(|n| hop_by_hop(n, &[]))
    })
}

/// Makes `headers`' `ETag` weak if it is strong: it then names another representation than
/// the one its origin gave it to (a body this cache decoded, or compresses per client), which
/// a strong validator may not (RFC 9110 §8.8.1).
fn weaken_etag(headers: &mut HeaderMap) {
    if let Some(etag) = headers
        .get(header::ETAG)
        .filter(|e| !e.as_bytes().starts_with(b"W/"))
        && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
    {
        headers.insert(header::ETAG, weak);
    }
}

/// The age (s) of a stored answer at `now_ms` if it is fresh then: within its lifetime and not
/// made stale by a soft purge (which lowers `fresh_until_ms`).
fn fresh_age(entry: &Entry, now_ms: u64) -> Option<u64> {
    let head = entry.head()?;
    let age = current_age(head, now_ms / 1000);
    (age < head.lifetime && now_ms < entry.fresh_until_ms).then_some(age)
}

/// When a soft purge marked a `Vary` marker stale, if one did.
fn soft_purged(marker: &Entry) -> Option<u64> {
    (marker.fresh_until_ms < marker.stale_until_ms).then_some(marker.fresh_until_ms)
}

/// The request and response times of an exchange in whole seconds (§4.2.3's `request_time` and
/// `response_time`), from its times in ms: the response's second, and that less the whole
/// seconds it took. Flooring each time on its own would count a 2 ms exchange across a second's
/// boundary as a second of `response_delay` and add it to the origin's `Age`.
fn exchange_secs(sent_ms: u64, received_ms: u64) -> (u64, u64) {
    let response_time = received_ms / 1000;
    (
        response_time.saturating_sub(received_ms.saturating_sub(sent_ms) / 1000),
        response_time,
    )
}

/// An origin's body, streamed through as it comes (`read`, what came already, first), holding
/// `held` (its places) until it ends. A task of its own reads the origin and hands the body over
/// in pieces of at most [`STREAM_PIECE`] as the client takes them, so the places, and what was
/// read ahead, are let go whether or not the client's side polls the body: over HTTP/2 a client
/// that grants no window is never polled, and no socket write blocks to trip
/// `HTTP_WRITE_TIMEOUT_SECS`. It is cut (the client's answer then
/// ends short, as an interrupted transfer does) when the origin sends nothing for `idle`, its
/// body breaks off, or the client takes no piece for `stall`; then the connection is told
/// (`given_up`), so that a stream its client abandoned does not keep it busy. How long the whole
/// takes is the client's pace, not bounded.
fn streamed_rest(
    read: Vec<Bytes>,
    mut response: reqwest::Response,
    held: impl Send + 'static,
    idle: Duration,
    stall: Duration,
    given_up: Option<GivenUp>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    use std::sync::atomic::AtomicU8;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let state = Arc::new(AtomicU8::new(FLOWING));
    let (pump_state, pump_given_up) = (state.clone(), given_up.clone());
    tokio::spawn(async move {
        let _held = held;
        // What came before the body went streaming first, through the same pieces.
        let mut read = read.into_iter();
        loop {
            let next = match read.next() {
                Some(chunk) => Ok(Ok(Some(chunk))),
                None => tokio::select! {
                    // A client gone lets the places go at once, not at the origin's next chunk.
                    () = tx.closed() => return,
                    next = tokio::time::timeout(idle, response.chunk()) => next,
                },
            };
            let mut chunk = match next {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(std::io::Error::other(e.without_url()))).await;
                    return;
                }
                Err(_) => {
                    let _ = tx
                        .send(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the origin sent nothing for ORIGIN_TIMEOUT_MS",
                        )))
                        .await;
                    return;
                }
            };
            // In pieces: the client's pace is seen a piece at a time (over HTTP/2 the next is
            // taken once the last has mostly gone), so a slow but steady reader is not cut.
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(STREAM_PIECE));
                if !hand_over(&tx, piece, stall, &pump_state, pump_given_up.as_ref()).await {
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold(Some(Receiving { rx, state, given_up }), |receiving| async move {
        let mut receiving = receiving?;
        match receiving.rx.recv().await {
            Some(item) => Some((item, Some(receiving))),
            // Given up on: an error, so the answer ends short rather than look whole.
            None if receiving.state.load(std::sync::atomic::Ordering::Acquire) == GIVEN_UP => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client took nothing for HTTP_WRITE_TIMEOUT_SECS",
                )),
                None,
            )),
            None => None,
        }
    })
}

/// Hands `piece` to the client's side within `stall`; `false` when the body ends here: its client
/// went away, or took nothing for `stall` (then the body is given up, and its connection told).
async fn hand_over(
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    piece: Bytes,
    stall: Duration,
    state: &std::sync::atomic::AtomicU8,
    given_up: Option<&GivenUp>,
) -> bool {
    use std::sync::atomic::Ordering;
    match tokio::time::timeout(stall, tx.send(Ok(piece))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            if state
                .compare_exchange(FLOWING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                && let Some(given_up) = given_up
            {
                given_up(true);
            }
            false
        }
    }
}

/// The most of a streamed body handed to the client's side at once (see [`streamed_rest`]).
const STREAM_PIECE: usize = 16 * 1024;

/// A streamed body's state, shared by its task and its receiving side: flowing, given up by its
/// task, or ended on the receiving side.
const FLOWING: u8 = 0;
const GIVEN_UP: u8 = 1;
const ENDED: u8 = 2;

/// The receiving side of a streamed body: when it ends after its task gave it up, the
/// connection is told the given-up body is gone.
struct Receiving {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    state: Arc<std::sync::atomic::AtomicU8>,
    given_up: Option<GivenUp>,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if self.state.swap(ENDED, std::sync::atomic::Ordering::AcqRel) == GIVEN_UP
            && let Some(given_up) = &self.given_up
        {
            given_up(false);
        }
    }
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    crate::cache::now_ms() / 1000
}

/// The age of a stored response now (RFC 9111 §4.2.3).
fn current_age(head: &Head, now: u64) -> u64 {
    head.initial_age + now.saturating_sub(head.response_time)
}

/// The memory-tier key of a proxied resource: control characters no `/items` key can hold,
/// the route's name, the path below it and the query.
fn cache_key(route: &Route, rest: &str, query: Option<&str>) -> String {
    // Room for a variant's part too ([`variant_key_from`] writes it on the end).
    let mut key = String::with_capacity(100 + route.name.len() + rest.len() + query.map_or(0, str::len));
    key.push_str("\u{1}p\u{1}");
    key.push_str(&route.name);
    key.push('\u{1}');
    key.push_str(&normalized(rest));
    if let Some(q) = query {
        key.push('?');
        key.push_str(&normalized(q));
    }
    key
}

/// The key of the variant of `key` that a request with `request`'s values of `names` selects.
fn variant_key<'n>(
    key: &str,
    generation: u64,
    names: impl IntoIterator<Item = &'n HeaderName>,
    request: &HeaderMap,
) -> String {
    let mut out = String::with_capacity(key.len() + 96);
    out.push_str(key);
    variant_key_from(out, generation, names, request)
}

/// [`variant_key`], written on the end of `key` (no second string for the hit path).
fn variant_key_from<'n>(
    mut out: String,
    generation: u64,
    names: impl IntoIterator<Item = &'n HeaderName>,
    request: &HeaderMap,
) -> String {
    out.push_str("\u{1}v");
    // The generation in hex, without leading zeros (as `{:x}` writes it).
    let digits = (64 - generation.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(char::from(
            b"0123456789abcdef"[((generation >> (i * 4)) & 0xf) as usize],
        ));
    }
    for name in names {
        out.push('\u{1}');
        out.push_str(name.as_str());
        out.push('=');
        // Whitespace around list members does not select another variant, nor the case of a
        // host or of language tags (RFC 5646 §2.1.1: tags are case-insensitive).
        let caseless = name == header::HOST || name == header::ACCEPT_LANGUAGE;
        let mut first = true;
        // Bytes, not text: a value that is not UTF-8 selects a variant of its own (skipping it
        // would make it select the variant of clients that sent nothing). Each byte is one char.
        for value in request
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        {
            // Present-but-empty and absent are different selections.
            out.push(if first { '\u{2}' } else { ',' });
            first = false;
            let value = value.trim_ascii();
            match std::str::from_utf8(value) {
                // ASCII (nearly every value): as it is, a host in lower case.
                Ok(text) if text.is_ascii() => {
                    let at = out.len();
                    out.push_str(text);
                    if caseless {
                        out[at..].make_ascii_lowercase();
                    }
                }
                _ => out.extend(
                    value
                        .iter()
                        .map(|&b| char::from(if caseless { b.to_ascii_lowercase() } else { b })),
                ),
            }
        }
    }
    out
}

/// An entry for a response: its age on arrival and lifetime from its headers (within the
/// route's TTL bounds), kept as long as its stale windows (or the route's) need.
fn make_entry(
    options: &RouteOptions,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    (request_time, response_time, started_ms): (u64, u64, u64),
) -> Entry {
    let res = rules::response_directives(&headers);
    let date = rules::date_secs(&headers, &header::DATE);
    let initial_age = rules::initial_age(&headers, date, request_time, response_time);
    let lifetime = options.bound_lifetime(rules::lifetime_secs(
        status,
        &headers,
        &res,
        date.unwrap_or(response_time),
    ));
    let born = response_time.saturating_sub(initial_age);
    let fresh_until = born.saturating_add(lifetime);
    let keep = (options.stale_while_revalidate)
        .or_else(|| res.seconds("stale-while-revalidate"))
        .unwrap_or(0)
        .max(
            options
                .stale_if_error
                .or_else(|| res.seconds("stale-if-error"))
                .unwrap_or(0),
        )
        .max(KEEP_STALE_SECS);
    // An answer that must be validated before every reuse is never fresh by the entry's times,
    // so no hit path (the fast one included) serves it without asking the origin.
    let fresh_until_ms = if res.unqualified("no-cache") {
        started_ms
    } else {
        fresh_until.saturating_mul(1000)
    };
    let times = Times {
        // When this cache asked for it (not when the origin made it): a purge since then may
        // have been meant for it, and purges are judged against this time in every tier.
        stored_at_ms: started_ms,
        fresh_until_ms,
        revalidate_until_ms: fresh_until.saturating_add(keep).saturating_mul(1000),
        if_error_until_ms: fresh_until.saturating_add(keep).saturating_mul(1000),
        stale_until_ms: fresh_until.saturating_add(keep).saturating_mul(1000),
        must_revalidate: false,
    };
    let head = Head {
        status,
        headers,
        response_time,
        initial_age,
        lifetime,
        vary: Vec::new(),
        marker: None,
        served: Default::default(),
    };
    Entry::proxied(head, body, times)
}

/// Why the origin's answer, which did arrive, could not be read as HTTP, when that is what
/// failed (reqwest says only "error sending request", as if the origin were unreachable).
fn unreadable_answer(e: &reqwest::Error) -> Option<&'static str> {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(h) = cause.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some("its head is too large (more than 100 header fields, or too long)");
            }
            if h.is_parse() {
                return Some("it is not valid HTTP/1.1");
            }
        }
        source = cause.source();
    }
    None
}

/// Whether a `304`'s `ETag` (when it has one) names the stored representation (RFC 9111
/// §4.3.4: a 304 whose strong validator no stored response has updates none). Opaque tags are
/// compared, `W/` aside: a body this cache decoded carries the origin's tag weakened.
fn same_representation(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    fn opaque(v: &HeaderValue) -> &[u8] {
        crate::origin::opaque_tag(v.as_bytes().trim_ascii())
    }
    let Some(new) = not_modified.get(header::ETAG) else {
        return true;
    };
    stored
        .get(header::ETAG)
        .is_some_and(|old| opaque(old) == opaque(new))
}

/// The stored response's validators (`ETag`, `Last-Modified`), when it has either.
fn validators(headers: &HeaderMap) -> Option<(Option<HeaderValue>, Option<HeaderValue>)> {
    let etag = headers.get(header::ETAG).cloned();
    let lm = headers.get(header::LAST_MODIFIED).cloned();
    (etag.is_some() || lm.is_some()).then_some((etag, lm))
}

/// Removes from a request the fields that belong to its connection (RFC 9110 §7.6.1): the
/// hop-by-hop ones and those its `Connection` lists (never `Host`).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| *n != header::HOST && hop_by_hop(n, &listed))
        .cloned()
        .collect();
    for name in drop {
        headers.remove(name);
    }
}

/// The field names a message's `Connection` lists, lowercased.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Header names that belong to one connection, never forwarded (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName, listed: &[String]) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "proxy-connection"
    ) || name.as_str().starts_with("proxy-")
        || listed.iter().any(|l| l == name.as_str())
}

/// Copies the end-to-end headers of `from` into `to` (`Content-Length` only if `keep_length`).
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, keep_length: bool) {
    let listed = connection_listed(from);
    for (name, value) in from {
        if hop_by_hop(name, &listed) || (!keep_length && name == header::CONTENT_LENGTH) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Whether the origin's answer was framed by its `Content-Length`: one that came with
/// `Transfer-Encoding` was framed by that (RFC 9112 §6.3), whatever length it also claimed, and
/// its length must not be passed on over the bytes streamed through.
fn framed_by_length(headers: &HeaderMap) -> bool {
    headers.contains_key(header::CONTENT_LENGTH) && !headers.contains_key(header::TRANSFER_ENCODING)
}

/// Adds `Via` and `Cache-Status` to an answer.
fn finish(headers: &mut HeaderMap, status: &str) {
    headers.append(header::VIA, HeaderValue::from_static("1.1 cache-layer"));
    let value = if status == "hit" {
        HeaderValue::from_static("cache-layer; hit")
    } else {
        match HeaderValue::from_str(&format!("{NAME}; {status}")) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    // After the members of the caches before this one, which keep theirs (RFC 9211 §2).
    headers.append(CACHE_STATUS.clone(), value);
}

/// `Cache-Status` (RFC 9211).
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The fields of `headers` a stored response keeps: end-to-end ones, without `Content-Length`
/// (every answer gets its own length), so a hit serves them as they are.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    // Room for the fields every answer adds (`Age`, `Via`, `Cache-Status`, a length): a copy
    // keeps the table's size, so adding them does not grow and rehash it on every hit.
    let mut out = HeaderMap::with_capacity(headers.len() + 4);
    copy_headers(headers, &mut out, false);
    out
}

/// Whether a stored answer may go to this client compressed, and in which coding: a `GET` for a
/// whole `200` whose identity body is at least `COMPRESSION_MIN_BYTES`, which the origin says
/// varies by `Accept-Encoding` (or sent compressed), to a client that accepts a coding.
fn coding_for(
    method: &Method,
    request: &HeaderMap,
    head: &Head,
    len: usize,
    min: Option<usize>,
) -> Option<Coding> {
    let accepted = request.get_all(header::ACCEPT_ENCODING);
    if accepted.iter().next().is_none()
        || (method != Method::GET && method != Method::HEAD)
        || head.status != StatusCode::OK
        || min.is_none_or(|m| len < m)
        || request.contains_key(header::RANGE)
        || head.headers.contains_key(header::CONTENT_ENCODING)
        || !rules::vary_names(&head.headers).is_some_and(|n| n.contains(&header::ACCEPT_ENCODING))
    {
        return None;
    }
    Coding::negotiate(accepted.iter().map(HeaderValue::as_bytes))
}

/// `body` decoded from its one `Content-Encoding` (`gzip`, `br`, `deflate`), at most `limit`
/// bytes of it; `None` for another coding, a broken body or one that decodes longer.
fn decoded(coding: &str, body: &[u8], limit: usize) -> Option<Bytes> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match coding.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(body)),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(body)),
        "br" => Box::new(brotli::Decompressor::new(body, 4096)),
        _ => return None,
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    reader.take(limit as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() <= limit).then(|| Bytes::from(out))
}

impl Proxy {
    /// A stored response as the answer to `parts`: its status, headers and body (none for
    /// `HEAD`), `Age`, or `304` when the request's own conditionals match it (§4.3.2). The body
    /// goes compressed where [`coding_for`] says, made once per entry and coding as `/items`
    /// does (a long body on the blocking pool, identity meanwhile); `at` is the entry's key, so
    /// the memory tier weighs the compressed forms it keeps.
    fn serve(&self, parts: &Parts, at: Option<&str>, entry: &Arc<Entry>, age: u64, status: &str) -> Response {
        self.serve_to(&parts.method, &parts.headers, at, entry, age, status)
    }

    /// [`Proxy::serve`] for a request's method and headers.
    fn serve_to(
        &self,
        method: &Method,
        request: &HeaderMap,
        at: Option<&str>,
        entry: &Arc<Entry>,
        age: u64,
        status: &str,
    ) -> Response {
        let head = entry.head().expect("proxied");
        let coding = coding_for(
            method,
            request,
            head,
            entry.raw_body().len(),
            self.compression_min_bytes,
        )
        .and_then(|coding| {
            let forms = entry.compressions();
            if let Some(body) = forms.ready(coding) {
                return Some((coding, body));
            }
            if entry.raw_body().len() < INLINE_COMPRESS_BYTES {
                let body = forms.make_now(coding, entry.raw_body())?;
                if let (Some(memory), Some(at)) = (&self.memory, at) {
                    memory.reweigh(at, entry);
                }
                return Some((coding, body));
            }
            if let (Some(memory), Some(at)) = (self.memory.clone(), at) {
                let at = at.to_owned();
                entry.start_compression(coding, move |entry| memory.reweigh(&at, entry));
            }
            None
        });
        serve(method, request, entry, age, status, coding)
    }
}

/// [`Proxy::serve`], with the body in `coding` when given.
fn serve(
    method: &Method,
    request: &HeaderMap,
    entry: &Entry,
    age: u64,
    status: &str,
    coding: Option<(Coding, Bytes)>,
) -> Response {
    let head = entry.head().expect("proxied");
    if head.status == StatusCode::OK && not_modified(request, head) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let h = response.headers_mut();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for v in head.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        if coding.is_some() {
            // The representation this client holds is the compressed one.
            weaken_etag(h);
        }
        h.insert(header::AGE, age_value(age));
        finish(h, status);
        return response;
    }
    let full = entry.raw_body();
    let range = (head.status == StatusCode::OK && method == Method::GET)
        .then(|| requested_range(request, &head.headers, full.len()))
        .flatten();
    let (code, body) = match (range, &coding) {
        (Some(Some((first, last))), _) => (StatusCode::PARTIAL_CONTENT, full.slice(first..=last)),
        (Some(None), _) => (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new()),
        (None, Some((_, compressed))) => (head.status, compressed.clone()),
        (None, None) => (head.status, full.clone()),
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = code;
    if range.is_none() && coding.is_none() && method == Method::GET && status == "hit" {
        // A plain hit: the head's headers with this proxy's as [`finish`] adds them, made
        // once per stored head; only `Age` differs from one hit to the next.
        let served = head.served(|stored| {
            let mut h = stored.clone();
            h.insert(header::AGE, age_value(0));
            finish(&mut h, status);
            h
        });
        let h = response.headers_mut();
        *h = served.clone();
        h.insert(header::AGE, age_value(age));
        return response;
    }
    // Stored without hop-by-hop fields or `Content-Length` ([`end_to_end`]): served as they are.
    *response.headers_mut() = head.headers.clone();
    let h = response.headers_mut();
    match range {
        Some(Some((first, last))) => {
            let value = format!("bytes {first}-{last}/{}", full.len());
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("digits"),
            );
        }
        Some(None) => {
            let value = format!("bytes */{}", full.len());
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("digits"),
            );
        }
        None => {}
    }
    if method == Method::HEAD {
        // The length `GET` would send: of the form this client gets.
        let len = coding.as_ref().map_or(entry.raw_body().len(), |(_, b)| b.len());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some((coding, _)) = coding {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(coding.as_str()),
        );
        // Another representation than the stored one.
        weaken_etag(h);
    }
    h.insert(header::AGE, age_value(age));
    finish(h, status);
    response
}

/// `Age: age`: made once for the first ten minutes' values and shared (a hit's `Age` costs no
/// allocation), made anew past them.
fn age_value(age: u64) -> HeaderValue {
    static AGES: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..=600u64).map(HeaderValue::from).collect());
    AGES.get(age as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(age))
}

/// The byte range a `Range` request asks of a stored complete body of `len` bytes (RFC 9110
/// §14): `None` to send the whole body (no `Range`, several ranges, another unit, or an
/// `If-Range` the stored response does not match); `Some(None)` when it cannot be satisfied
/// (`416`); else the first and last byte.
fn requested_range(request: &HeaderMap, stored: &HeaderMap, len: usize) -> Option<Option<(usize, usize)>> {
    let spec = request.get(header::RANGE)?.to_str().ok()?.trim();
    if let Some(if_range) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let strong_etag = stored
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|e| !e.starts_with("W/"));
        let matches = if if_range.starts_with('"') {
            strong_etag == Some(if_range)
        } else {
            stored.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()) == Some(if_range)
        };
        if !matches {
            return None;
        }
    }
    let spec = spec.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let parse = |t: &str| {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse::<u64>().unwrap_or(u64::MAX))
    };
    let len64 = len as u64;
    let range = if first.is_empty() {
        let suffix = parse(last)?;
        if suffix == 0 || len == 0 {
            return Some(None);
        }
        (len64.saturating_sub(suffix), len64 - 1)
    } else {
        let first = parse(first)?;
        let last = if last.is_empty() { u64::MAX } else { parse(last)? };
        if last < first {
            return None;
        }
        if first >= len64 {
            return Some(None);
        }
        (first, last.min(len64 - 1))
    };
    Some(Some((range.0 as usize, range.1 as usize)))
}

/// Whether the request's `If-None-Match` (or, without one, `If-Modified-Since`) says the
/// client holds the stored response already.
fn not_modified(request: &HeaderMap, head: &Head) -> bool {
    let stored = &head.headers;
    let inm: Vec<&str> = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !inm.is_empty() {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim_start_matches("W/").to_owned();
        return inm.iter().any(|t| *t == "*" || weak(t) == weak(etag));
    }
    // A date later than now is not a valid `If-Modified-Since` (RFC 9110 §13.1.3).
    let Some(since) = rules::date_secs(request, &header::IF_MODIFIED_SINCE).filter(|&s| s <= now_secs())
    else {
        return false;
    };
    // Without `Last-Modified`, the response was current when it was made: its `Date`, or when
    // it arrived (RFC 9110 §13.1.3).
    let modified = rules::date_secs(stored, &header::LAST_MODIFIED)
        .or_else(|| rules::date_secs(stored, &header::DATE))
        .unwrap_or(head.response_time);
    modified <= since
}

/// The path and query of a `Location`-like value when it names the request's own origin.
fn same_origin_path(value: &HeaderValue, parts: &Parts) -> Option<String> {
    let text = value.to_str().ok()?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let base = url::Url::parse(&format!("http://{host}{}", parts.uri.path())).ok()?;
    let target = base.join(text).ok()?;
    if target.scheme() != "http"
        || target.host_str() != base.host_str()
        || target.port_or_known_default() != base.port_or_known_default()
    {
        return None;
    }
    Some(match target.query() {
        Some(q) => format!("{}?{q}", target.path()),
        None => target.path().to_owned(),
    })
}

/// `504` for a request that cannot be answered without the origin but may not go there.
fn gateway_timeout(message: &str) -> Response {
    let mut response = AppError::OriginTimeout(message.to_owned()).into_response();
    finish(response.headers_mut(), "detail=only-if-cached");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_across_a_second_boundary_adds_no_second_to_the_age() {
        let h = {
            let mut h = HeaderMap::new();
            h.insert(header::AGE, HeaderValue::from_static("7200"));
            h
        };
        for (sent, received, delay) in [
            (999, 1_001, 0),
            (1_000, 1_999, 0),
            (1_500, 2_499, 0),
            (1_500, 2_500, 1),
            (10_999, 13_000, 2),
        ] {
            let (request_time, response_time) = exchange_secs(sent, received);
            assert_eq!(response_time, received / 1000);
            assert_eq!(
                rules::initial_age(&h, None, request_time, response_time),
                7200 + delay,
                "{sent}..{received}"
            );
        }
    }

    #[test]
    fn variant_keys_name_the_generation_in_hex_and_the_selecting_values() {
        let mut request = HeaderMap::new();
        request.append(header::HOST, HeaderValue::from_static("API.Example"));
        request.append("x-lang", HeaderValue::from_static(" en , fr"));
        request.append("x-lang", HeaderValue::from_static("de"));
        let names = [
            header::HOST,
            HeaderName::from_static("x-lang"),
            HeaderName::from_static("x-none"),
        ];
        for generation in [0, 1, 0xf, 0x10, 0xabc, u64::MAX, rand::random()] {
            assert_eq!(
                variant_key("k", generation, &names, &request),
                format!(
                    "k\u{1}v{generation:x}\u{1}host=\u{2}api.example\u{1}x-lang=\u{2}en,fr,de\u{1}x-none="
                ),
            );
        }
        let empty = {
            let mut h = HeaderMap::new();
            h.append("x-none", HeaderValue::from_static(""));
            h
        };
        assert_ne!(
            variant_key("k", 1, &names, &empty),
            variant_key("k", 1, &names, &HeaderMap::new()),
            "present-but-empty and absent select different variants"
        );
        // Language tags are case-insensitive; their order still selects (an origin may pick
        // the first of equal preferences).
        let lang = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.append(header::ACCEPT_LANGUAGE, HeaderValue::from_static(v));
            variant_key("k", 1, &[header::ACCEPT_LANGUAGE], &h)
        };
        assert_eq!(lang("en, de"), lang("eN, De"));
        assert_ne!(lang("en, de"), lang("de, en"));
    }
}
