//! Every metric instrument of the service, created once at start-up, gauges included.
//!
//! Label values come from closed sets (the `ALL` and `as_str` of outcome enums), never from keys.
//! The counters are plain atomics, one per label combination, read by observable counters at each
//! collection: a hit costs one relaxed add per counter, with no attribute lookup, and every
//! combination reads 0 from the start, so dashboards show 0, not "no data".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider};

use crate::cache::labels::{
    CoalesceScope, DiskOp, DropReason, EvictionCause, NotStored, RedisOp, StaleReason, TierName, Uncacheable,
};
use crate::cache::{Coding, PurgeMode, PurgeScope, PurgeSource};
use crate::http::labels::{Route, StatusClass};
use crate::origin::labels::{BreakerState, OriginOutcome};

/// Buckets (seconds) that resolve sub-millisecond hits as well as 200 ms origin fetches.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// Buckets (keys) of `batch_keys`: a batch is 1 to `BATCH_MAX_KEYS` (at most 100,000) keys.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 100000.0,
];

/// The `tier` label of a remembered 404 in `cache_hits_total`.
const NEGATIVE: &str = "negative";

/// One counter per value of a closed label set `E` (indexed by `E as usize`).
struct Counts<const N: usize>([AtomicU64; N]);

impl<const N: usize> Counts<N> {
    fn new() -> Self {
        Counts(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    fn add(&self, i: usize) {
        self.add_n(i, 1);
    }

    fn add_n(&self, i: usize, n: u64) {
        self.0[i].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }
}

/// The counters' values, shared with the callbacks that report them.
struct Counters {
    /// `cache_hits_total` by tier ([`TierName::ALL`], then `negative`).
    hits: Counts<{ TierName::ALL.len() + 1 }>,
    misses: Counts<1>,
    stale: Counts<{ StaleReason::ALL.len() }>,
    coalesced: Counts<{ CoalesceScope::ALL.len() }>,
    origin: Counts<{ OriginOutcome::ALL.len() }>,
    redis_errors: Counts<{ RedisOp::ALL.len() }>,
    disk_errors: Counts<{ DiskOp::ALL.len() }>,
    disk_dropped: Counts<{ DropReason::ALL.len() }>,
    disk_rejected: Counts<1>,
    evictions: Counts<{ EvictionCause::ALL.len() }>,
    /// By mode, then source, then scope.
    invalidations: Counts<{ PurgeMode::ALL.len() * PurgeSource::ALL.len() * PurgeScope::ALL.len() }>,
    /// By scope, then tier.
    invalidated_entries: Counts<{ PurgeScope::ALL.len() * TierName::ALL.len() }>,
    tags_ignored: Counts<1>,
    /// By route, then status class.
    http: Counts<{ Route::ALL.len() * StatusClass::ALL.len() }>,
    spans_dropped: Counts<1>,
    uncacheable: Counts<{ Uncacheable::ALL.len() }>,
    /// By [`NotStored::UNKEPT`].
    not_stored: Counts<{ NotStored::UNKEPT.len() }>,
}

/// `proxy_requests_total`'s counts, one per route, outcome and status class ([`Metrics::watch_proxy`]).
pub struct ProxyCounts {
    outcomes: usize,
    counts: Vec<AtomicU64>,
}

impl ProxyCounts {
    /// Counts a request of route number `route` the cache answered with outcome number
    /// `outcome` and `status`.
    pub fn add(&self, route: usize, outcome: usize, status: u16) {
        let i = (route * self.outcomes + outcome) * StatusClass::ALL.len() + StatusClass::of(status) as usize;
        if let Some(count) = self.counts.get(i) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The instruments; one per metric name, labels for the rest.
pub struct Metrics {
    counters: Arc<Counters>,
    request_latency: Histogram<f64>,
    origin_latency: Histogram<f64>,
    /// `batch_request_duration_seconds`: a whole `POST /items:batch`, until its last key.
    batch_latency: Histogram<f64>,
    /// `batch_keys`: keys per batch, as requested (duplicates included).
    batch_keys: Histogram<u64>,
    /// Kept for the gauges registered by [`Metrics::watch_memory_tier`] and
    /// [`Metrics::watch_breaker`].
    meter: Meter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers the observable counter `name` reporting `read` for each label value in `labels`.
fn observe<L: Copy + Send + Sync + 'static>(
    meter: &Meter,
    counters: &Arc<Counters>,
    name: &'static str,
    description: &'static str,
    labels: Vec<(Vec<KeyValue>, L)>,
    read: fn(&Counters, L) -> u64,
) {
    let counters = counters.clone();
    // The SDK keeps the callback for the life of the provider; the handle may be dropped.
    let _counter = meter
        .u64_observable_counter(name)
        .with_description(description)
        .with_callback(move |observer| {
            for (attributes, label) in &labels {
                observer.observe(read(&counters, *label), attributes);
            }
        })
        .build();
}

/// `(attributes, index)` for each value of a one-label set.
fn one_label<E: Copy>(
    key: &'static str,
    all: &[E],
    name: fn(E) -> &'static str,
) -> Vec<(Vec<KeyValue>, usize)> {
    all.iter()
        .enumerate()
        .map(|(i, e)| (vec![KeyValue::new(key, name(*e))], i))
        .collect()
}

/// `(attributes, index)` for each pair of values of two label sets, indexed as [`pair_index`]
/// counts them (each `ALL` lists its enum in declaration order, so position = discriminant).
fn two_labels<A: Copy, B: Copy>(
    (key_a, all_a, name_a): (&'static str, &[A], fn(A) -> &'static str),
    (key_b, all_b, name_b): (&'static str, &[B], fn(B) -> &'static str),
) -> Vec<(Vec<KeyValue>, usize)> {
    let mut labels = Vec::with_capacity(all_a.len() * all_b.len());
    for (i, a) in all_a.iter().enumerate() {
        for (j, b) in all_b.iter().enumerate() {
            labels.push((
                vec![KeyValue::new(key_a, name_a(*a)), KeyValue::new(key_b, name_b(*b))],
                pair_index(i, j, all_b.len()),
            ));
        }
    }
    labels
}

/// The counter of the pair `(a, b)` when the second label set has `b_len` values.
fn pair_index(a: usize, b: usize, b_len: usize) -> usize {
    a * b_len + b
}

impl Metrics {
    /// Creates every instrument on `meter`.
    pub fn new(meter: Meter) -> Self {
        let counters = Arc::new(Counters {
            hits: Counts::new(),
            misses: Counts::new(),
            stale: Counts::new(),
            coalesced: Counts::new(),
            origin: Counts::new(),
            redis_errors: Counts::new(),
            disk_errors: Counts::new(),
            disk_dropped: Counts::new(),
            disk_rejected: Counts::new(),
            evictions: Counts::new(),
            invalidations: Counts::new(),
            invalidated_entries: Counts::new(),
            tags_ignored: Counts::new(),
            http: Counts::new(),
            spans_dropped: Counts::new(),
            uncacheable: Counts::new(),
            not_stored: Counts::new(),
        });
        let m = &meter;
        let c = &counters;
        let mut hit_labels = one_label("tier", &TierName::ALL, TierName::as_str);
        hit_labels.push((vec![KeyValue::new("tier", NEGATIVE)], TierName::ALL.len()));
        observe(
            m,
            c,
            "cache_hits",
            "Answers served from the cache, by tier (negative = a remembered 404).",
            hit_labels,
            |c, i| c.hits.get(i),
        );
        observe(
            m,
            c,
            "cache_misses",
            "Answers that needed an origin fetch (own or coalesced).",
            vec![(vec![], 0)],
            |c, i| c.misses.get(i),
        );
        observe(
            m,
            c,
            "cache_stale",
            "Stale answers, by reason.",
            one_label("reason", &StaleReason::ALL, StaleReason::as_str),
            |c, i| c.stale.get(i),
        );
        observe(
            m,
            c,
            "cache_coalesced",
            "Misses that waited on another request's origin fetch, by scope.",
            one_label("scope", &CoalesceScope::ALL, CoalesceScope::as_str),
            |c, i| c.coalesced.get(i),
        );
        observe(
            m,
            c,
            "origin_requests",
            "Origin fetches, by outcome (rejected = circuit open or concurrency saturated).",
            one_label("outcome", &OriginOutcome::ALL, OriginOutcome::as_str),
            |c, i| c.origin.get(i),
        );
        let codings = one_label("coding", &Coding::ALL, Coding::as_str);
        let _compressions = m
            .u64_observable_counter("cache_compressions")
            .with_description("Answer bodies compressed, by coding: once per entry (or fetch) and coding.")
            .with_callback(move |observer| {
                for (attributes, i) in &codings {
                    observer.observe(Coding::ALL[*i].made(), attributes);
                }
            })
            .build();
        observe(
            m,
            c,
            "redis_errors",
            "Redis operations that failed or timed out, by operation.",
            one_label("operation", &RedisOp::ALL, RedisOp::as_str),
            |c, i| c.redis_errors.get(i),
        );
        observe(
            m,
            c,
            "disk_errors",
            "Disk-tier operations that failed, by operation (a file that cannot be decoded is a read).",
            one_label("operation", &DiskOp::ALL, DiskOp::as_str),
            |c, i| c.disk_errors.get(i),
        );
        observe(
            m,
            c,
            "disk_cache_dropped",
            "Disk-tier entries dropped when read: past their stale window, or older than a purge that matches them.",
            one_label("reason", &DropReason::ALL, DropReason::as_str),
            |c, i| c.disk_dropped.get(i),
        );
        observe(
            m,
            c,
            "disk_cache_rejected",
            "Fills not written to the disk tier: they would have pushed another entry out, and their key was asked of it fewer than DISK_CACHE_ADMIT_MIN_REQUESTS times lately.",
            vec![(vec![], 0)],
            |c, i| c.disk_rejected.get(i),
        );
        observe(
            m,
            c,
            "cache_evictions",
            "Memory-tier entries removed, by cause.",
            one_label("cause", &EvictionCause::ALL, EvictionCause::as_str),
            |c, i| c.evictions.get(i),
        );
        let mut purge_labels = Vec::new();
        for mode in PurgeMode::ALL {
            for source in PurgeSource::ALL {
                for scope in PurgeScope::ALL {
                    purge_labels.push((
                        vec![
                            KeyValue::new("mode", mode.as_str()),
                            KeyValue::new("source", source.as_str()),
                            KeyValue::new("scope", scope.as_str()),
                        ],
                        invalidation_index(mode, source, scope),
                    ));
                }
            }
        }
        observe(
            m,
            c,
            "cache_invalidations",
            "Purges applied to this replica, by mode, source and scope (key or tag).",
            purge_labels,
            |c, i| c.invalidations.get(i),
        );
        let entry_labels = two_labels(
            ("scope", &PurgeScope::ALL, PurgeScope::as_str),
            ("tier", &TierName::ALL, TierName::as_str),
        );
        observe(
            m,
            c,
            "cache_invalidated_entries",
            "Entries a purge applied here removed or marked stale, by scope and tier.",
            entry_labels,
            |c, i| c.invalidated_entries.get(i),
        );
        observe(
            m,
            c,
            "cache_tags_ignored",
            "Origin tags ignored: beyond TAGS_MAX_PER_ENTRY, longer than TAG_MAX_BYTES, or with control characters.",
            vec![(vec![], 0)],
            |c, i| c.tags_ignored.get(i),
        );
        let http_labels = two_labels(
            ("route", &Route::ALL, Route::as_str),
            ("status_class", &StatusClass::ALL, StatusClass::as_str),
        );
        observe(
            m,
            c,
            "http_requests",
            "HTTP requests, by route and status class.",
            http_labels,
            |c, i| c.http.get(i),
        );
        observe(
            m,
            c,
            "otel_spans_dropped",
            "Spans dropped because the OTLP export queue was full (OTEL_BSP_MAX_QUEUE_SIZE).",
            vec![(vec![], 0)],
            |c, i| c.spans_dropped.get(i),
        );
        observe(
            m,
            c,
            "cache_uncacheable",
            "Origin answers not stored because the origin forbids a shared cache to (no-store, private, Vary: *, status), by reason.",
            one_label("reason", &Uncacheable::ALL, Uncacheable::as_str),
            |c, i| c.uncacheable.get(i),
        );
        observe(
            m,
            c,
            "cache_not_stored",
            "Storable origin answers that no tier kept, by reason: declined (larger than the memory tier, not admitted to the disk tier, a tier down, a 404 with CACHE_NEGATIVE_TTL_SECS=0) or purged (a purge came in during the fetch).",
            one_label("reason", &NotStored::UNKEPT, NotStored::as_str),
            |c, i| c.not_stored.get(i),
        );
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        Metrics {
            request_latency: seconds("request_latency", "Latency of single-key /items requests."),
            origin_latency: seconds("origin_request_duration", "Latency of origin fetches."),
            batch_latency: seconds(
                "batch_request_duration",
                "Latency of POST /items:batch requests, until the last key is answered.",
            ),
            batch_keys: meter
                .u64_histogram("batch_keys")
                .with_description("Keys per POST /items:batch request, duplicates included.")
                .with_boundaries(BATCH_SIZE_BUCKETS.to_vec())
                .build(),
            counters,
            meter,
        }
    }

    /// Instruments bound to no exporter, for unit tests.
    pub fn detached() -> Self {
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
        Self::new(provider.meter("cache-layer"))
    }

    /// Reports the memory tier's size as `memory_cache_bytes` and `memory_cache_entries`, its
    /// policy's window share as `memory_cache_window_ratio` and how far the policy's epoch has run
    /// as `memory_cache_window_epoch_progress`, read through `bytes`, `entries`, `window` and
    /// `epoch` at each collection (closures, so that the registry need not know the tier).
    pub fn watch_memory_tier(
        &self,
        bytes: impl Fn() -> u64 + Send + Sync + 'static,
        entries: impl Fn() -> u64 + Send + Sync + 'static,
        window: impl Fn() -> f64 + Send + Sync + 'static,
        epoch: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        // The SDK keeps the callback for the life of the provider; the handle may be dropped.
        let _gauge = self
            .meter
            .f64_observable_gauge("memory_cache_window_ratio")
            .with_description(
                "Share of the memory tier's bytes its admission window may take, as the adaptive \
                 policy chose it last (0.01 leans on frequency, 1 is a plain LRU); it changes only \
                 when a policy epoch ends, about every ten tier-fulls of reads.",
            )
            .with_callback(move |observer| observer.observe(window(), &[]))
            .build();
        let _gauge = self
            .meter
            .f64_observable_gauge("memory_cache_window_epoch_progress")
            .with_description(
                "How far the memory tier's adaptive policy is into its current epoch, from 0 to 1: \
                 the window share may change when it reaches 1 (then it starts again at 0).",
            )
            .with_callback(move |observer| observer.observe(epoch(), &[]))
            .build();
        self.gauge(
            "memory_cache_bytes",
            "Bytes held by the memory tier (keys, values, overhead).",
            bytes,
        );
        self.gauge(
            "memory_cache_entries",
            "Entries held by the memory tier.",
            entries,
        );
    }

    /// Reports the disk tier as `disk_cache_up` (read through `up`) and
    /// `disk_cache_capacity_bytes`.
    pub fn watch_disk_tier(&self, up: impl Fn() -> bool + Send + Sync + 'static, capacity: u64) {
        self.gauge(
            "disk_cache_up",
            "1 while the disk tier works, 0 while it is down.",
            move || u64::from(up()),
        );
        self.gauge(
            "disk_cache_capacity_bytes",
            "Disk bytes the disk tier uses at most.",
            move || capacity,
        );
    }

    /// Reports each Redis node (the one server, or every master of a cluster, as the slot map
    /// has them now) as `redis_node_up{node="host:port"}`: 1 up, 0 down.
    pub fn watch_redis(&self, nodes_up: impl Fn() -> Vec<(String, bool)> + Send + Sync + 'static) {
        let _gauge = self
            .meter
            .u64_observable_gauge("redis_node_up")
            .with_description("1 while the Redis node answers its health pings, 0 while it does not.")
            .with_callback(move |observer| {
                for (node, up) in nodes_up() {
                    observer.observe(u64::from(up), &[KeyValue::new("node", node)]);
                }
            })
            .build();
    }

    /// Reports the origin circuit as `origin_breaker_state`, read through `state`.
    pub fn watch_breaker(&self, state: impl Fn() -> BreakerState + Send + Sync + 'static) {
        self.gauge(
            "origin_breaker_state",
            "The origin circuit: 0 closed, 1 open, 2 half-open.",
            move || state().as_gauge(),
        );
    }

    /// Registers an observable gauge `name` read through `read` at each collection.
    fn gauge(
        &self,
        name: &'static str,
        description: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        // The SDK keeps the callback for the life of the provider; the handle may be dropped.
        let _gauge = self
            .meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| observer.observe(read(), &[]))
            .build();
    }

    /// A span the export queue had no room for.
    pub fn span_dropped(&self) {
        self.counters.spans_dropped.add(0);
    }

    /// A fresh or stale value served from `tier`.
    pub fn hit(&self, tier: TierName) {
        self.counters.hits.add(tier as usize);
    }

    /// A remembered origin 404 served.
    pub fn negative_hit(&self) {
        self.counters.hits.add(TierName::ALL.len());
    }

    /// A miss; `coalesced` when it waited on another request's (or replica's) fetch.
    pub fn miss(&self, coalesced: Option<CoalesceScope>) {
        self.counters.misses.add(0);
        if let Some(scope) = coalesced {
            self.counters.coalesced.add(scope as usize);
        }
    }

    /// A request that waited on another request's (or replica's) fetch, which failed: it
    /// answers that failure, and is no miss.
    pub fn coalesced(&self, scope: CoalesceScope) {
        self.counters.coalesced.add(scope as usize);
    }

    /// A stale answer, by reason.
    pub fn stale(&self, reason: StaleReason) {
        self.counters.stale.add(reason as usize);
    }

    /// One origin fetch and how it ended; `took` when it reached the origin.
    pub fn origin(&self, outcome: OriginOutcome, took: Option<Duration>) {
        self.counters.origin.add(outcome as usize);
        if let Some(took) = took {
            self.origin_latency.record(took.as_secs_f64(), &[]);
        }
    }

    /// An origin answer the origin forbade storing.
    pub fn uncacheable(&self, reason: Uncacheable) {
        self.counters.uncacheable.add(reason as usize);
    }

    /// A storable answer that no tier kept (the origin's own refusals are [`Metrics::uncacheable`]).
    pub fn not_stored(&self, why: NotStored) {
        if let Some(i) = NotStored::UNKEPT.iter().position(|&u| u == why) {
            self.counters.not_stored.add(i);
        }
    }

    /// A failed Redis operation.
    pub fn redis_error(&self, operation: RedisOp) {
        self.counters.redis_errors.add(operation as usize);
    }

    /// A failed disk-tier operation.
    pub fn disk_error(&self, operation: DiskOp) {
        self.counters.disk_errors.add(operation as usize);
    }

    /// A disk-tier entry dropped when read.
    pub fn disk_dropped(&self, reason: DropReason) {
        self.counters.disk_dropped.add(reason as usize);
    }

    /// A fill the disk tier's admission kept off the disk.
    pub fn disk_rejected(&self) {
        self.counters.disk_rejected.add(0);
    }

    /// A memory-tier eviction.
    pub fn evicted(&self, cause: EvictionCause) {
        self.counters.evictions.add(cause as usize);
    }

    /// Evictions counted for `cause` so far (the memory tier's unit tests).
    #[cfg(test)]
    pub(crate) fn evictions(&self, cause: EvictionCause) -> u64 {
        self.counters.evictions.get(cause as usize)
    }

    /// A purge applied here.
    pub fn invalidated(&self, mode: PurgeMode, source: PurgeSource, scope: PurgeScope) {
        self.counters
            .invalidations
            .add(invalidation_index(mode, source, scope));
    }

    /// `n` entries of `tier` removed or marked stale by a purge of `scope`.
    pub fn invalidated_entries(&self, scope: PurgeScope, tier: TierName, n: u64) {
        self.counters
            .invalidated_entries
            .add_n(pair_index(scope as usize, tier as usize, TierName::ALL.len()), n);
    }

    /// `n` origin tags ignored.
    pub fn tags_ignored(&self, n: u64) {
        self.counters.tags_ignored.add_n(0, n);
    }

    /// One batch of `keys` keys (as requested), whose last key was answered after `took`.
    pub fn batch(&self, keys: usize, took: Duration) {
        self.batch_keys.record(keys as u64, &[]);
        self.batch_latency.record(took.as_secs_f64(), &[]);
    }

    /// One HTTP request answered with `status`; `/items` requests a handler answered (`took`)
    /// also feed the latency histogram.
    pub fn request(&self, route: Route, status: u16, took: Option<Duration>) {
        self.counters.http.add(http_index(route, StatusClass::of(status)));
        if route == Route::Items
            && let Some(took) = took
        {
            self.request_latency.record(took.as_secs_f64(), &[]);
        }
    }
}

impl Metrics {
    /// One proxied request of `route` (its prefix) answered with `status`: `cache` says how
    /// (`hit`, `stale`, `miss`, `revalidated`, `pass`, `error`).
    /// Registers `proxy_requests_total` for the proxy's `routes` (their names, in the order
    /// the proxy numbers them) and `outcomes` (the `cache` label's values, in the order of their
    /// numbers): plain atomics, as every other counter here, so counting a proxied hit costs one
    /// atomic add. A label set is reported once it has counted a request.
    pub fn watch_proxy(&self, routes: &[String], outcomes: &'static [&'static str]) -> Arc<ProxyCounts> {
        let counts = Arc::new(ProxyCounts {
            outcomes: outcomes.len(),
            counts: (0..routes.len() * outcomes.len() * StatusClass::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        });
        let mut labels = Vec::with_capacity(counts.counts.len());
        for route in routes {
            for outcome in outcomes {
                for class in StatusClass::ALL {
                    labels.push(vec![
                        KeyValue::new("route", route.clone()),
                        KeyValue::new("cache", *outcome),
                        KeyValue::new("status_class", class.as_str()),
                    ]);
                }
            }
        }
        let read = counts.clone();
        let _counter = self
            .meter
            .u64_observable_counter("proxy_requests")
            .with_description("Requests answered by the transparent proxy (PROXY_ROUTES), by route, cache outcome and status class.")
            .with_callback(move |observer| {
                for (count, attributes) in read.counts.iter().zip(&labels) {
                    let n = count.load(Ordering::Relaxed);
                    if n > 0 {
                        observer.observe(n, attributes);
                    }
                }
            })
            .build();
        counts
    }
}

fn invalidation_index(mode: PurgeMode, source: PurgeSource, scope: PurgeScope) -> usize {
    (mode as usize * PurgeSource::ALL.len() + source as usize) * PurgeScope::ALL.len() + scope as usize
}

fn http_index(route: Route, class: StatusClass) -> usize {
    pair_index(route as usize, class as usize, StatusClass::ALL.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters are indexed by `enum as usize`: each `ALL` must list its enum in
    /// declaration order, or a label would report another label's count.
    #[test]
    fn every_label_set_lists_its_enum_in_declaration_order() {
        fn in_order<E: Copy>(all: &[E], index: fn(E) -> usize) {
            for (i, e) in all.iter().enumerate() {
                assert_eq!(index(*e), i);
            }
        }
        in_order(&TierName::ALL, |e| e as usize);
        in_order(&StaleReason::ALL, |e| e as usize);
        in_order(&CoalesceScope::ALL, |e| e as usize);
        in_order(&OriginOutcome::ALL, |e| e as usize);
        in_order(&RedisOp::ALL, |e| e as usize);
        in_order(&DiskOp::ALL, |e| e as usize);
        in_order(&DropReason::ALL, |e| e as usize);
        in_order(&EvictionCause::ALL, |e| e as usize);
        in_order(&PurgeMode::ALL, |e| e as usize);
        in_order(&PurgeSource::ALL, |e| e as usize);
        in_order(&Route::ALL, |e| e as usize);
        in_order(&StatusClass::ALL, |e| e as usize);
        in_order(&Uncacheable::ALL, |e| e as usize);
        in_order(&PurgeScope::ALL, |e| e as usize);
    }
}
