//! Every metric instrument of the service, created once at start-up.
//!
//! Label values come from closed sets (the `as_str` of outcome enums, fixed strings), never from
//! keys, and every combination is recorded at zero at start-up so dashboards show 0, not "no data".

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider};

/// Buckets (seconds) that resolve sub-millisecond hits as well as 200 ms origin fetches.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// `tier` label values of `cache_hits_total`.
pub const HIT_TIERS: &[&str] = &["memory", "redis", "negative"];
/// `reason` label values of `cache_stale_total`.
pub const STALE_REASONS: &[&str] = &["stale-while-revalidate", "stale-if-error"];
/// `scope` label values of `cache_coalesced_total`.
pub const COALESCE_SCOPES: &[&str] = &["process", "fleet"];
/// `outcome` label values of `origin_requests_total`.
pub const ORIGIN_OUTCOMES: &[&str] = &["ok", "not_found", "error", "timeout", "rejected"];
/// `operation` label values of `redis_errors_total`.
pub const REDIS_OPERATIONS: &[&str] = &["get", "set", "del", "publish", "subscribe", "lock"];
/// `cause` label values of `cache_evictions_total`.
pub const EVICTION_CAUSES: &[&str] = &["size", "expired"];
/// `mode` label values of `cache_invalidations_total`.
pub const INVALIDATION_MODES: &[&str] = &["hard", "soft"];
/// `source` label values of `cache_invalidations_total`.
pub const INVALIDATION_SOURCES: &[&str] = &["local", "remote"];
/// `status_class` label values of `http_requests_total`.
pub const STATUS_CLASSES: &[&str] = &["2xx", "3xx", "4xx", "5xx"];

/// The routes `http_requests_total` knows; the label is the route template, never the raw path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/items/{key}`, both GET and DELETE.
    Items,
    /// `/health`.
    Health,
    /// `/livez`.
    Livez,
    /// `/readyz`.
    Readyz,
    /// `/metrics`.
    Metrics,
    /// Anything else.
    Unmatched,
}

impl Route {
    /// Every route, for registration at zero.
    pub const ALL: [Route; 6] = [
        Route::Items,
        Route::Health,
        Route::Livez,
        Route::Readyz,
        Route::Metrics,
        Route::Unmatched,
    ];

    /// The route a request path belongs to (for answers given outside the route's handler, such
    /// as a 405).
    pub fn of_path(path: &str) -> Route {
        match path {
            "/health" => Route::Health,
            "/livez" => Route::Livez,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            p if p == "/items" || p.starts_with("/items/") => Route::Items,
            _ => Route::Unmatched,
        }
    }

    /// The `route` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Items => "/items/{key}",
            Route::Health => "/health",
            Route::Livez => "/livez",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Unmatched => "unmatched",
        }
    }
}

/// The instruments; one per metric name, labels for the rest.
pub struct Metrics {
    hits: Counter<u64>,
    misses: Counter<u64>,
    request_latency: Histogram<f64>,
    stale: Counter<u64>,
    coalesced: Counter<u64>,
    origin_requests: Counter<u64>,
    origin_latency: Histogram<f64>,
    redis_errors: Counter<u64>,
    evictions: Counter<u64>,
    invalidations: Counter<u64>,
    http_requests: Counter<u64>,
    spans_dropped: Counter<u64>,
    /// Kept so observable instruments added later share the scope.
    meter: Meter,
}

impl Metrics {
    /// Creates every instrument on `meter` and records every label combination at zero.
    pub fn new(meter: Meter) -> Self {
        let counter = |name: &'static str, description: &'static str| {
            meter.u64_counter(name).with_description(description).build()
        };
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        let m = Metrics {
            hits: counter(
                "cache_hits",
                "Answers served from the cache, by tier (negative = a remembered 404).",
            ),
            misses: counter(
                "cache_misses",
                "Answers that needed an origin fetch (own or coalesced).",
            ),
            request_latency: seconds("request_latency", "Latency of /items requests."),
            stale: counter("cache_stale", "Stale answers, by reason."),
            coalesced: counter(
                "cache_coalesced",
                "Misses that waited on another request's origin fetch, by scope.",
            ),
            origin_requests: counter(
                "origin_requests",
                "Origin fetches, by outcome (rejected = circuit open or concurrency saturated).",
            ),
            origin_latency: seconds("origin_request_duration", "Latency of origin fetches."),
            redis_errors: counter(
                "redis_errors",
                "Redis operations that failed or timed out, by operation.",
            ),
            evictions: counter("cache_evictions", "Memory-tier entries removed, by cause."),
            invalidations: counter(
                "cache_invalidations",
                "Purges applied to this replica, by mode and source.",
            ),
            http_requests: counter("http_requests", "HTTP requests, by route and status class."),
            spans_dropped: counter(
                "otel_spans_dropped",
                "Spans dropped because the OTLP export queue was full (OTEL_BSP_MAX_QUEUE_SIZE).",
            ),
            meter,
        };
        m.register_at_zero();
        m
    }

    /// Instruments bound to no exporter, for unit tests.
    pub fn detached() -> Self {
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
        Self::new(provider.meter("cache-layer"))
    }

    fn register_at_zero(&self) {
        let one = |c: &Counter<u64>, key: &'static str, values: &[&'static str]| {
            for v in values {
                c.add(0, &[KeyValue::new(key, *v)]);
            }
        };
        one(&self.hits, "tier", HIT_TIERS);
        self.misses.add(0, &[]);
        self.spans_dropped.add(0, &[]);
        one(&self.stale, "reason", STALE_REASONS);
        one(&self.coalesced, "scope", COALESCE_SCOPES);
        one(&self.origin_requests, "outcome", ORIGIN_OUTCOMES);
        one(&self.redis_errors, "operation", REDIS_OPERATIONS);
        one(&self.evictions, "cause", EVICTION_CAUSES);
        for mode in INVALIDATION_MODES {
            for source in INVALIDATION_SOURCES {
                self.invalidations.add(
                    0,
                    &[KeyValue::new("mode", *mode), KeyValue::new("source", *source)],
                );
            }
        }
        for route in Route::ALL {
            for class in STATUS_CLASSES {
                self.http_requests.add(
                    0,
                    &[
                        KeyValue::new("route", route.as_str()),
                        KeyValue::new("status_class", *class),
                    ],
                );
            }
        }
    }

    /// The meter the instruments live on (for observable gauges registered by their owners).
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The counter the span export queue adds its drops to.
    pub fn spans_dropped(&self) -> Counter<u64> {
        self.spans_dropped.clone()
    }

    /// A hit in `tier` (`memory`, `redis` or `negative`).
    pub fn hit(&self, tier: &'static str) {
        self.hits.add(1, &[KeyValue::new("tier", tier)]);
    }

    /// A miss; `coalesced_scope` when it waited on another request's fetch.
    pub fn miss(&self, coalesced_scope: Option<&'static str>) {
        self.misses.add(1, &[]);
        if let Some(scope) = coalesced_scope {
            self.coalesced.add(1, &[KeyValue::new("scope", scope)]);
        }
    }

    /// A stale answer, by reason.
    pub fn stale(&self, reason: &'static str) {
        self.stale.add(1, &[KeyValue::new("reason", reason)]);
    }

    /// One origin fetch and how it ended.
    pub fn origin(&self, outcome: &'static str, took: Option<Duration>) {
        self.origin_requests.add(1, &[KeyValue::new("outcome", outcome)]);
        if let Some(took) = took {
            self.origin_latency.record(took.as_secs_f64(), &[]);
        }
    }

    /// A failed Redis operation.
    pub fn redis_error(&self, operation: &'static str) {
        self.redis_errors.add(1, &[KeyValue::new("operation", operation)]);
    }

    /// A memory-tier eviction.
    pub fn evicted(&self, cause: &'static str) {
        self.evictions.add(1, &[KeyValue::new("cause", cause)]);
    }

    /// A purge applied here.
    pub fn invalidated(&self, mode: &'static str, source: &'static str) {
        self.invalidations
            .add(1, &[KeyValue::new("mode", mode), KeyValue::new("source", source)]);
    }

    /// One HTTP request answered with `status`; `/items` requests also feed the latency histogram.
    pub fn request(&self, route: Route, status: u16, took: Duration) {
        self.count_request(route, status);
        if route == Route::Items {
            self.request_latency.record(took.as_secs_f64(), &[]);
        }
    }

    /// One HTTP request answered outside its route's handler (a 405): counted, not timed.
    pub fn count_request(&self, route: Route, status: u16) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests.add(
            1,
            &[
                KeyValue::new("route", route.as_str()),
                KeyValue::new("status_class", class),
            ],
        );
    }
}

/// Registers an observable gauge `name` read through `read` at each collection.
pub fn observe_gauge(
    meter: &Meter,
    name: &'static str,
    description: &'static str,
    read: impl Fn() -> u64 + Send + Sync + 'static,
) {
    let read = Arc::new(read);
    // The SDK keeps the callback for the life of the provider; the handle may be dropped.
    let _gauge = meter
        .u64_observable_gauge(name)
        .with_description(description)
        .with_callback(move |observer| observer.observe(read(), &[]))
        .build();
}
