//! The one typed configuration, read from environment variables only.
//!
//! Parse, don't validate: each variable is read once, here, into the type its user needs (a
//! socket address, the Redis crate's connection info, a header value, a split URL template), so
//! no other module parses a setting again or can fail on one, and every refusal is a
//! [`ConfigError`] (exit status 2). Each variable is declared once, below, with its name, its
//! default (written as the text a user would set, and as the README shows it) and its bounds;
//! the parser and the error message both read that one declaration.
//!
//! envy reads the environment (as strings, so an empty variable can count as unset and every
//! value can be refused with a message that names the variable, the value and what is expected).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderValue;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::cache::{DiskConfig, FleetLock, Lifetimes, RedisConfig};
use crate::origin::{TagRules, Trip, UrlTemplate};

/// A setting that cannot be used: start-up stops with this message (exit status 2), so an
/// operator sees the variable to fix rather than a failure further down.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {var}={value:?}: expected {expected}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// The value it was given.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

/// Every setting of the service, parsed into the types the parts are built from, so building
/// them cannot fail on a setting.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP server listens (`LISTEN_ADDR`).
    pub listen_addr: SocketAddr,
    /// `ADMIN_LISTEN_ADDR`: a second listener for the service's own endpoints (health, probes,
    /// metrics, purges), so that proxied routes may take any other path on the first; `None`:
    /// everything on `LISTEN_ADDR`.
    pub admin_listen_addr: Option<SocketAddr>,
    /// What a slow or idle client may hold of the HTTP server.
    pub server: ServerLimits,
    /// How a SIGTERM is turned into an orderly stop.
    pub shutdown: ShutdownConfig,
    /// The limits and the purge token of the `/items` routes.
    pub items: ItemsConfig,
    /// Log lines as JSON rather than text (`LOG_FORMAT=json`), for log collectors.
    pub log_json: bool,
    /// The cache policy and the in-process tier.
    pub cache: CacheConfig,
    /// The shared tier; `None` runs without Redis (and so without fleet-wide locks).
    pub redis: Option<RedisConfig>,
    /// `FLEET_LOCK_*`: fleet-wide coalescing, which only exists through Redis (`Some` exactly
    /// when `redis` is).
    pub fleet: Option<FleetLock>,
    /// Where values come from on a miss, and how the origin is protected.
    pub origin: OriginConfig,
    /// `PROXY_ROUTES`: path prefixes answered by the transparent caching proxy, each with its
    /// origin; empty = no proxy (the service is the `/items` service only).
    pub proxy: crate::proxy::Routes,
    /// `ORIGIN_TAG_HEADER`, `TAGS_MAX_PER_ENTRY`, `TAG_MAX_BYTES`: how the proxied routes'
    /// answers are tagged (for `DELETE /tags/{tag}`), as an HTTP origin's are.
    pub proxy_tags: TagRules,
    /// What start-up must tell the operator at `warn` without refusing to start: deprecated
    /// names, names that look like misspelt settings, the simulated origin standing in.
    pub notices: Vec<String>,
}

/// How the HTTP server treats connections (`HTTP_*`): what a slow or idle client may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// `HTTP_HEADER_TIMEOUT_SECS`: a request head must arrive within it (from the accept, or
    /// from its first byte on a kept-alive connection), else the connection is closed.
    pub header_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_SECS`: a request body must arrive within it, else `408`.
    pub body_timeout: Duration,
    /// `HTTP_KEEPALIVE_TIMEOUT_SECS`: an idle kept-alive connection is closed after it.
    pub keepalive_timeout: Duration,
    /// `HTTP_WRITE_TIMEOUT_SECS`: a response (a streamed one included) that makes no write
    /// progress for this long is cut and its connection closed, so a client that stops
    /// reading cannot hold its connection slot (or the shutdown) forever.
    pub write_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: open connections at most; at the cap the oldest idle one is
    /// closed to make room. Lowered at start-up to fit under `RLIMIT_NOFILE`.
    pub max_connections: usize,
}

/// The two waits of a graceful stop, so a load balancer can take the replica out before its
/// listener closes, and requests in flight can finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// `SHUTDOWN_DELAY_SECS`: how long `/readyz` fails before the listener closes.
    pub delay: Duration,
    /// `SHUTDOWN_DRAIN_SECS`: how long in-flight requests may take to finish.
    pub drain: Duration,
}

/// What the `/items` handlers enforce on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemsConfig {
    /// `ADMIN_TOKEN`: bearer token for purges; `None` turns purging off. Never only whitespace.
    pub admin_token: Option<String>,
    /// `MAX_KEY_BYTES`: longest key accepted, so a key cannot blow up Redis keys or URLs.
    pub max_key_bytes: usize,
    /// `TAG_MAX_BYTES`: the longest tag an entry can carry, so a purge of a longer one (which
    /// would only fill Redis's purge records) is refused.
    pub tag_max_bytes: usize,
    /// `PURGE_TIMEOUT_SECS`: a purge not done within it answers `503 purge_incomplete`; what is
    /// left is done by a retry.
    pub purge_timeout: Duration,
    /// `REQUEST_TIMEOUT_SECS`: deadline of one request as a whole, fleet wait included (a
    /// batch shares one).
    pub request_timeout: Duration,
    /// `COMPRESSION_MIN_BYTES` when `COMPRESSION=true`: bodies at least this long are sent
    /// compressed to clients that accept it; `None` sends everything as it is.
    pub compression_min_bytes: Option<usize>,
    /// What one `POST /items:batch` may ask for.
    pub batch: BatchLimits,
}

/// The bounds of one `POST /items:batch`, so one request cannot take the service (or the
/// origin's permits) for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// `BATCH_MAX_KEYS`: keys per batch at most (duplicates included); more is `413`.
    pub max_keys: usize,
    /// `BATCH_MAX_BODY_BYTES`: longest request body; longer is `413`.
    pub max_body_bytes: usize,
    /// `BATCH_ORIGIN_CONCURRENCY`, capped at half of `ORIGIN_MAX_CONCURRENCY` (at least 1): the
    /// misses of one batch waiting on a fetch at once, so a single batch always leaves origin
    /// permits for single `GET`s.
    pub origin_concurrency: usize,
}

/// The cache policy and the in-process tier.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How long entries live (`CACHE_TTL_SECS`, `CACHE_STALE_SECS`, `CACHE_NEGATIVE_TTL_SECS`,
    /// `CACHE_TTL_JITTER_PERCENT`), ready for the cache to apply.
    pub life: Lifetimes,
    /// The in-process tier; `None` when `MEMORY_CACHE_ENABLED=false`.
    pub memory: Option<MemoryConfig>,
    /// The local disk tier, between memory and Redis; `None` when `DISK_CACHE_DIR` is unset.
    pub disk: Option<DiskConfig>,
}

/// The in-process tier's bound: it exists only when the tier does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// `MEMORY_CACHE_MAX_BYTES`: bound in bytes of keys, values and per-entry overhead.
    pub max_bytes: u64,
}

/// Where values come from on a miss, and the guard every fetch passes through.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// The origin itself.
    pub source: OriginSource,
    /// `ORIGIN_TIMEOUT_MS`: deadline of one origin request.
    pub timeout: Duration,
    /// `ORIGIN_MAX_CONCURRENCY`: origin requests in flight at most, per process.
    pub max_concurrency: usize,
    /// `ORIGIN_MAX_BODY_BYTES`: a larger origin body is refused (it also bounds Redis reads).
    pub max_body_bytes: usize,
    /// When to stop calling a failing origin for a while.
    pub breaker: BreakerConfig,
}

/// The two origins the service can sit in front of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginSource {
    /// The seed's simulated origin (`ORIGIN_URL` unset): `"value_for_{key}"` after a delay.
    Simulated {
        /// `ORIGIN_LATENCY_MS`: the delay of every fetch.
        latency: Duration,
    },
    /// An HTTP origin (`ORIGIN_URL`).
    Http {
        /// The URL template, split at `{key}` once, here.
        template: UrlTemplate,
        /// `ORIGIN_AUTHORIZATION`, sent with each fetch; marked sensitive so it never shows in
        /// logs or debug output.
        authorization: Option<HeaderValue>,
        /// `ORIGIN_TAG_HEADER`, `TAGS_MAX_PER_ENTRY`, `TAG_MAX_BYTES`: how answers are tagged.
        tags: TagRules,
    },
}

/// The origin's circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// `ORIGIN_BREAKER_WINDOW_SECS`, `ORIGIN_BREAKER_MIN_REQUESTS`, `ORIGIN_BREAKER_FAILURE_RATE`.
    pub trip: Trip,
    /// `ORIGIN_BREAKER_COOLDOWN_SECS`: how long the circuit stays open before a probe.
    pub cooldown: Duration,
}

// ---------------------------------------------------------------------------------------------
// The variables: each named once, here, with its default (the text a user would set, as the
// README's table shows it) and its bounds. Those without a default are unset unless given.

#[rustfmt::skip]
mod vars {
    use super::{Var, count, secs, millis, flag, text, Addr, LogFormat, Count, Secs, Millis, Flag, Text, SecsOrNone, OriginPolicy};

    pub const LISTEN_ADDR: Var<Addr> = Var { name: "LISTEN_ADDR", default: "0.0.0.0:5000", kind: Addr };
    pub const ADMIN_LISTEN_ADDR: &str = "ADMIN_LISTEN_ADDR";

    pub const REDIS_URL: &str = "REDIS_URL";
    pub const REDIS_HOST: &str = "REDIS_HOST";
    pub const REDIS_PORT: Var<Count> = count("REDIS_PORT", "6379", 1, 65_535);
    pub const REDIS_DB: Var<Count> = count("REDIS_DB", "0", 0, 1_000_000);
    pub const REDIS_PASSWORD: &str = "REDIS_PASSWORD";
    pub const REDIS_TLS_CA_FILE: &str = "REDIS_TLS_CA_FILE";
    pub const REDIS_CLUSTER: Var<Flag> = flag("REDIS_CLUSTER", "false");
    pub const REDIS_KEY_PREFIX: Var<Text> = text("REDIS_KEY_PREFIX", "cache-layer");
    pub const REDIS_CONNECT_TIMEOUT_MS: Var<Millis> = millis("REDIS_CONNECT_TIMEOUT_MS", "250", 1);
    pub const REDIS_RESPONSE_TIMEOUT_MS: Var<Millis> = millis("REDIS_RESPONSE_TIMEOUT_MS", "250", 1);
    pub const FLEET_LOCK_TTL_MS: Var<Millis> = millis("FLEET_LOCK_TTL_MS", "5000", 1);
    pub const FLEET_LOCK_WAIT_MS: Var<Millis> = millis("FLEET_LOCK_WAIT_MS", "3000", 0);
    pub const FLEET_LOCK_POLL_MS: Var<Millis> = millis("FLEET_LOCK_POLL_MS", "500", 1);

    pub const CACHE_TTL_SECS: Var<Secs> = secs("CACHE_TTL_SECS", "60", 1);
    /// The seed's name for `CACHE_TTL_SECS`, read when the new name is unset.
    pub const REDIS_TTL: Var<Secs> = Var { name: "REDIS_TTL", ..CACHE_TTL_SECS };
    pub const CACHE_STALE_SECS: Var<Secs> = secs("CACHE_STALE_SECS", "300", 0);
    pub const CACHE_NEGATIVE_TTL_SECS: Var<Secs> = secs("CACHE_NEGATIVE_TTL_SECS", "5", 0);
    pub const CACHE_TTL_JITTER_PERCENT: Var<Count> = count("CACHE_TTL_JITTER_PERCENT", "10", 0, 50);
    pub const CACHE_TTL_MIN_SECS: Var<Secs> = secs("CACHE_TTL_MIN_SECS", "0", 0);
    pub const CACHE_TTL_MAX_SECS: Var<SecsOrNone> = Var { name: "CACHE_TTL_MAX_SECS", default: "none", kind: SecsOrNone };
    pub const ORIGIN_CACHE_CONTROL: Var<OriginPolicy> = Var { name: "ORIGIN_CACHE_CONTROL", default: "honor", kind: OriginPolicy };
    pub const MEMORY_CACHE_ENABLED: Var<Flag> = flag("MEMORY_CACHE_ENABLED", "true");
    pub const MEMORY_CACHE_MAX_BYTES: Var<Count> = count("MEMORY_CACHE_MAX_BYTES", "67108864", 1, u64::MAX);
    pub const DISK_CACHE_DIR: &str = "DISK_CACHE_DIR";
    pub const DISK_CACHE_MAX_BYTES: Var<Count> = count("DISK_CACHE_MAX_BYTES", "1073741824", 4 << 20, u64::MAX);
    pub const DISK_CACHE_INDEX_MAX_BYTES: Var<Count> = count("DISK_CACHE_INDEX_MAX_BYTES", "33554432", 1 << 20, u64::MAX);
    pub const DISK_CACHE_ADMIT_MIN_REQUESTS: Var<Count> = count("DISK_CACHE_ADMIT_MIN_REQUESTS", "2", 1, 15);

    pub const ORIGIN_URL: &str = "ORIGIN_URL";
    pub const ORIGIN_AUTHORIZATION: &str = "ORIGIN_AUTHORIZATION";
    pub const PROXY_ROUTES: &str = "PROXY_ROUTES";
    pub const ORIGIN_TAG_HEADER: Var<Text> = text("ORIGIN_TAG_HEADER", "Surrogate-Key");
    pub const TAGS_MAX_PER_ENTRY: Var<Count> = count("TAGS_MAX_PER_ENTRY", "32", 1, 1_000);
    pub const TAG_MAX_BYTES: Var<Count> = count("TAG_MAX_BYTES", "128", 1, 1_024);
    pub const ORIGIN_LATENCY_MS: Var<Millis> = millis("ORIGIN_LATENCY_MS", "200", 0);
    pub const ORIGIN_TIMEOUT_MS: Var<Millis> = millis("ORIGIN_TIMEOUT_MS", "2000", 1);
    pub const ORIGIN_MAX_CONCURRENCY: Var<Count> = count("ORIGIN_MAX_CONCURRENCY", "64", 1, 100_000);
    pub const ORIGIN_MAX_BODY_BYTES: Var<Count> = count("ORIGIN_MAX_BODY_BYTES", "1048576", 1, 1 << 30);
    /// Deprecated (the consecutive trigger is gone): accepted and checked, then ignored.
    pub const ORIGIN_BREAKER_FAILURES: Var<Count> = count("ORIGIN_BREAKER_FAILURES", "5", 1, 1_000_000);
    /// Deprecated (the window is in seconds now): accepted and checked, then ignored.
    pub const ORIGIN_BREAKER_WINDOW: Var<Count> = count("ORIGIN_BREAKER_WINDOW", "20", 2, 64);
    pub const ORIGIN_BREAKER_WINDOW_SECS: Var<Secs> = secs("ORIGIN_BREAKER_WINDOW_SECS", "10", 1);
    pub const ORIGIN_BREAKER_MIN_REQUESTS: Var<Count> = count("ORIGIN_BREAKER_MIN_REQUESTS", "20", 1, 1_000_000);
    pub const ORIGIN_BREAKER_FAILURE_RATE: Var<Count> = count("ORIGIN_BREAKER_FAILURE_RATE", "50", 1, 100);
    pub const ORIGIN_BREAKER_COOLDOWN_SECS: Var<Secs> = secs("ORIGIN_BREAKER_COOLDOWN_SECS", "10", 1);

    pub const ADMIN_TOKEN: &str = "ADMIN_TOKEN";
    pub const MAX_KEY_BYTES: Var<Count> = count("MAX_KEY_BYTES", "512", 1, 65_536);
    pub const REQUEST_TIMEOUT_SECS: Var<Secs> = secs("REQUEST_TIMEOUT_SECS", "30", 1);
    pub const COMPRESSION: Var<Flag> = flag("COMPRESSION", "true");
    pub const COMPRESSION_MIN_BYTES: Var<Count> = count("COMPRESSION_MIN_BYTES", "1024", 1, 1 << 30);
    pub const BATCH_MAX_KEYS: Var<Count> = count("BATCH_MAX_KEYS", "1000", 1, 100_000);
    pub const BATCH_MAX_BODY_BYTES: Var<Count> = count("BATCH_MAX_BODY_BYTES", "1048576", 1024, 1 << 30);
    pub const BATCH_ORIGIN_CONCURRENCY: Var<Count> = count("BATCH_ORIGIN_CONCURRENCY", "16", 1, 100_000);
    pub const SHUTDOWN_DELAY_SECS: Var<Secs> = secs("SHUTDOWN_DELAY_SECS", "0", 0);
    pub const SHUTDOWN_DRAIN_SECS: Var<Secs> = secs("SHUTDOWN_DRAIN_SECS", "20", 0);
    pub const LOG_FORMAT: Var<LogFormat> = Var { name: "LOG_FORMAT", default: "text", kind: LogFormat };
    pub const HTTP_HEADER_TIMEOUT_SECS: Var<Secs> = secs("HTTP_HEADER_TIMEOUT_SECS", "10", 1);
    pub const HTTP_BODY_TIMEOUT_SECS: Var<Secs> = secs("HTTP_BODY_TIMEOUT_SECS", "10", 1);
    pub const HTTP_KEEPALIVE_TIMEOUT_SECS: Var<Secs> = secs("HTTP_KEEPALIVE_TIMEOUT_SECS", "60", 1);
    pub const CONFIG_STRICT: Var<Flag> = flag("CONFIG_STRICT", "false");
    pub const PURGE_TIMEOUT_SECS: Var<Secs> = secs("PURGE_TIMEOUT_SECS", "10", 1);
    pub const HTTP_WRITE_TIMEOUT_SECS: Var<Secs> = secs("HTTP_WRITE_TIMEOUT_SECS", "30", 1);
    pub const HTTP_MAX_CONNECTIONS: Var<Count> = count("HTTP_MAX_CONNECTIONS", "4096", 1, 1_000_000);
}

use vars::*;

/// Every setting of the service with its default as the README shows it (`unset` where none),
/// in the README's order: what `--help` prints, and the names the misspelling check knows.
pub const SETTINGS: &[(&str, &str)] = &[
    (LISTEN_ADDR.name, LISTEN_ADDR.default),
    (ADMIN_LISTEN_ADDR, "unset"),
    (REDIS_URL, "unset"),
    (REDIS_HOST, "unset"),
    (REDIS_PORT.name, REDIS_PORT.default),
    (REDIS_DB.name, REDIS_DB.default),
    (REDIS_PASSWORD, "unset"),
    (REDIS_TLS_CA_FILE, "unset"),
    (REDIS_CLUSTER.name, REDIS_CLUSTER.default),
    (REDIS_KEY_PREFIX.name, REDIS_KEY_PREFIX.default),
    (REDIS_CONNECT_TIMEOUT_MS.name, REDIS_CONNECT_TIMEOUT_MS.default),
    (REDIS_RESPONSE_TIMEOUT_MS.name, REDIS_RESPONSE_TIMEOUT_MS.default),
    (FLEET_LOCK_TTL_MS.name, FLEET_LOCK_TTL_MS.default),
    (FLEET_LOCK_WAIT_MS.name, FLEET_LOCK_WAIT_MS.default),
    (FLEET_LOCK_POLL_MS.name, FLEET_LOCK_POLL_MS.default),
    (CACHE_TTL_SECS.name, CACHE_TTL_SECS.default),
    (REDIS_TTL.name, "unset"),
    (CACHE_TTL_JITTER_PERCENT.name, CACHE_TTL_JITTER_PERCENT.default),
    (CACHE_STALE_SECS.name, CACHE_STALE_SECS.default),
    (ORIGIN_CACHE_CONTROL.name, ORIGIN_CACHE_CONTROL.default),
    (CACHE_TTL_MIN_SECS.name, CACHE_TTL_MIN_SECS.default),
    (CACHE_TTL_MAX_SECS.name, CACHE_TTL_MAX_SECS.default),
    (CACHE_NEGATIVE_TTL_SECS.name, CACHE_NEGATIVE_TTL_SECS.default),
    (MEMORY_CACHE_ENABLED.name, MEMORY_CACHE_ENABLED.default),
    (MEMORY_CACHE_MAX_BYTES.name, MEMORY_CACHE_MAX_BYTES.default),
    (DISK_CACHE_DIR, "unset"),
    (DISK_CACHE_MAX_BYTES.name, DISK_CACHE_MAX_BYTES.default),
    (
        DISK_CACHE_INDEX_MAX_BYTES.name,
        DISK_CACHE_INDEX_MAX_BYTES.default,
    ),
    (
        DISK_CACHE_ADMIT_MIN_REQUESTS.name,
        DISK_CACHE_ADMIT_MIN_REQUESTS.default,
    ),
    (ORIGIN_URL, "unset"),
    (ORIGIN_LATENCY_MS.name, ORIGIN_LATENCY_MS.default),
    (ORIGIN_TIMEOUT_MS.name, ORIGIN_TIMEOUT_MS.default),
    (ORIGIN_MAX_CONCURRENCY.name, ORIGIN_MAX_CONCURRENCY.default),
    (ORIGIN_MAX_BODY_BYTES.name, ORIGIN_MAX_BODY_BYTES.default),
    (ORIGIN_AUTHORIZATION, "unset"),
    (PROXY_ROUTES, "unset"),
    (
        ORIGIN_BREAKER_WINDOW_SECS.name,
        ORIGIN_BREAKER_WINDOW_SECS.default,
    ),
    (
        ORIGIN_BREAKER_MIN_REQUESTS.name,
        ORIGIN_BREAKER_MIN_REQUESTS.default,
    ),
    (
        ORIGIN_BREAKER_FAILURE_RATE.name,
        ORIGIN_BREAKER_FAILURE_RATE.default,
    ),
    (ORIGIN_BREAKER_FAILURES.name, "unset"),
    (ORIGIN_BREAKER_WINDOW.name, "unset"),
    (
        ORIGIN_BREAKER_COOLDOWN_SECS.name,
        ORIGIN_BREAKER_COOLDOWN_SECS.default,
    ),
    (ADMIN_TOKEN, "unset"),
    (MAX_KEY_BYTES.name, MAX_KEY_BYTES.default),
    (ORIGIN_TAG_HEADER.name, ORIGIN_TAG_HEADER.default),
    (TAGS_MAX_PER_ENTRY.name, TAGS_MAX_PER_ENTRY.default),
    (TAG_MAX_BYTES.name, TAG_MAX_BYTES.default),
    (COMPRESSION.name, COMPRESSION.default),
    (COMPRESSION_MIN_BYTES.name, COMPRESSION_MIN_BYTES.default),
    (REQUEST_TIMEOUT_SECS.name, REQUEST_TIMEOUT_SECS.default),
    (BATCH_MAX_KEYS.name, BATCH_MAX_KEYS.default),
    (BATCH_MAX_BODY_BYTES.name, BATCH_MAX_BODY_BYTES.default),
    (BATCH_ORIGIN_CONCURRENCY.name, BATCH_ORIGIN_CONCURRENCY.default),
    (PURGE_TIMEOUT_SECS.name, PURGE_TIMEOUT_SECS.default),
    (SHUTDOWN_DELAY_SECS.name, SHUTDOWN_DELAY_SECS.default),
    (SHUTDOWN_DRAIN_SECS.name, SHUTDOWN_DRAIN_SECS.default),
    (HTTP_HEADER_TIMEOUT_SECS.name, HTTP_HEADER_TIMEOUT_SECS.default),
    (HTTP_BODY_TIMEOUT_SECS.name, HTTP_BODY_TIMEOUT_SECS.default),
    (
        HTTP_KEEPALIVE_TIMEOUT_SECS.name,
        HTTP_KEEPALIVE_TIMEOUT_SECS.default,
    ),
    (HTTP_WRITE_TIMEOUT_SECS.name, HTTP_WRITE_TIMEOUT_SECS.default),
    (HTTP_MAX_CONNECTIONS.name, HTTP_MAX_CONNECTIONS.default),
    (CONFIG_STRICT.name, CONFIG_STRICT.default),
    (LOG_FORMAT.name, LOG_FORMAT.default),
    ("RUST_LOG", "info"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "unset"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "unset"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "unset"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
    ("OTEL_TRACES_EXPORTER", "unset"),
    ("OTEL_METRICS_EXPORTER", "unset"),
    ("OTEL_SERVICE_NAME", "cache-layer"),
    ("OTEL_RESOURCE_ATTRIBUTES", "unset"),
];

/// Names that are no setting of ours but are read by the libraries the service uses (the
/// OpenTelemetry SDK, the HTTP client's proxy settings) or set by the runtime: never reported.
const OTHER_KNOWN: &[&str] = &[
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "OTEL_LOGS_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_PROPAGATORS",
    "OTEL_SDK_DISABLED",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
];

/// Prefixes of the service's own settings: a name starting with one that is not a setting is
/// reported, however far from every known name it is.
const PREFIXES: &[&str] = &[
    "CACHE_",
    "ORIGIN_",
    "REDIS_",
    "DISK_CACHE_",
    "MEMORY_CACHE_",
    "HTTP_",
    "BATCH_",
    "FLEET_",
    "SHUTDOWN_",
    "COMPRESSION",
    "TAG",
    "PURGE_",
    "PROXY_",
    "ADMIN_",
    "CONFIG_",
    "LISTEN_",
];

/// Kubernetes service-link variables (`<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_6379_TCP_ADDR`,
/// `<SERVICE>_PORT=tcp://…`): a release named `cache` gets `CACHE_REDIS_PORT` and the like.
fn is_service_link(name: &str, value: &str) -> bool {
    name.ends_with("_SERVICE_HOST")
        || name.contains("_SERVICE_PORT")
        || name.split("_PORT_").nth(1).is_some_and(|rest| {
            rest.split('_')
                .next()
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        || (name.ends_with("_PORT")
            && ["tcp://", "udp://", "sctp://"]
                .iter()
                .any(|s| value.starts_with(s)))
}

/// Levenshtein distance of two ASCII names, giving up past `limit`.
fn edits(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The known name nearest to `name`, and how far it is.
fn nearest(name: &str) -> (&'static str, usize) {
    SETTINGS
        .iter()
        .map(|(n, _)| *n)
        .chain(OTHER_KNOWN.iter().copied())
        .map(|known| (known, edits(name, known)))
        .min_by_key(|(_, d)| *d)
        .unwrap_or(("", usize::MAX))
}

/// The environment's names that look like a misspelt setting: within two edits of a known name,
/// or starting with one of the service's prefixes, and not a known name; each with the nearest
/// known name.
fn misspelt(vars: &[(String, String)]) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    for (name, value) in vars {
        let upper = name.to_ascii_uppercase();
        if is_service_link(&upper, value) {
            continue;
        }
        let (near, distance) = nearest(&upper);
        if distance == 0 {
            continue;
        }
        if distance <= 2 || PREFIXES.iter().any(|p| upper.starts_with(p)) {
            found.push((name.clone(), near));
        }
    }
    found.sort();
    found
}

/// The levels `RUST_LOG` may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Whether the `RUST_LOG` filter `spec` lets this service's `warn` lines through: a global
/// level of at least `warn`, or a directive for a target that is (a prefix of) `cache_layer`
/// at such a level. `None` when it does; else the nearest level name for the word that was
/// probably meant as one (`debugg` → `debug`).
fn rust_log_silences_warnings(spec: &str) -> Option<String> {
    let loud = |level: &str| {
        matches!(
            level.to_ascii_lowercase().as_str(),
            "warn" | "info" | "debug" | "trace"
        )
    };
    let mut guess = None;
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.split_once('=') {
            // A level that is no level is the filter parser's to refuse (exit 2), not ours.
            Some((_, level)) if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) => return None,
            Some((target, level)) => {
                let target = target.split('[').next().unwrap_or_default();
                if "cache_layer".starts_with(target) && loud(level) {
                    return None;
                }
            }
            None if LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) => {
                if loud(directive) {
                    return None;
                }
            }
            // A bare word is a target; `cache_layer` (or a prefix) lets every level through.
            None if "cache_layer".starts_with(directive.split('[').next().unwrap_or_default()) => {
                return None;
            }
            None => {
                let near = LEVELS
                    .iter()
                    .min_by_key(|l| edits(&directive.to_ascii_lowercase(), l));
                if let Some(near) = near.filter(|l| edits(&directive.to_ascii_lowercase(), l) <= 2) {
                    guess = Some((*near).to_owned());
                }
            }
        }
    }
    Some(guess.unwrap_or_else(|| "info".to_owned()))
}

// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads the process environment: the service's only source of settings.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(process_env()?)
    }

    /// Reads the given variables, so tests need not touch the process environment; empty values
    /// count as unset (an orchestrator often cannot unset a variable, only empty it).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let env = Env::new(vars.iter().cloned());
        let strict = CONFIG_STRICT.read(&env)?;
        let mut config = env.into_config()?;
        let mut wrong: Vec<String> = misspelt(&vars)
            .into_iter()
            .map(|(name, near)| format!("`{name}` is not a setting; did you mean `{near}`?"))
            .collect();
        if let Some((_, spec)) = vars.iter().find(|(n, v)| n == "RUST_LOG" && !v.is_empty())
            && let Some(level) = rust_log_silences_warnings(spec)
        {
            wrong.push(format!(
                "`RUST_LOG={spec}` lets no warn line of this service through; did you mean `RUST_LOG={level}`?"
            ));
        }
        if strict && let Some(first) = wrong.first() {
            return Err(invalid(
                CONFIG_STRICT.name,
                "true",
                &format!("every setting's name spelt right: {first}"),
            ));
        }
        config.notices.extend(wrong);
        if matches!(config.origin.source, OriginSource::Simulated { .. }) {
            config.notices.push(
                "ORIGIN_URL is not set: answers come from the simulated origin (\"value_for_<key>\" after ORIGIN_LATENCY_MS), not from your data; set ORIGIN_URL to a URL template such as http://api.internal/items/{key} to cache a real API".to_owned(),
            );
        }
        Ok(config)
    }

    /// Where `/livez` answers, read as the service reads it, for the `healthcheck` subcommand:
    /// `ADMIN_LISTEN_ADDR` when set, else `LISTEN_ADDR`, without needing the rest of the settings.
    pub fn listen_addr_from_env() -> Result<SocketAddr, ConfigError> {
        let env = Env::new(process_env()?);
        let main = LISTEN_ADDR.read(&env)?;
        Ok(admin_addr(&env, main)?.unwrap_or(main))
    }
}

/// The process environment as text. A variable whose name or value is not UTF-8 cannot be a
/// setting of this service and is left out (`std::env::vars` would panic on it, printing the
/// value, which may be a secret); a setting's own name with such a value stops start-up, the
/// value not shown.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else { continue };
        match value.into_string() {
            Ok(value) => vars.push((name, value)),
            Err(_) => {
                if let Some((setting, _)) = SETTINGS.iter().find(|(s, _)| *s == name) {
                    return Err(invalid(setting, "(not UTF-8, not shown)", "valid UTF-8 text"));
                }
            }
        }
    }
    Ok(vars)
}

/// `ADMIN_LISTEN_ADDR`, when set: an address and port other than `LISTEN_ADDR`'s.
fn admin_addr(env: &Env, main: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(text) = env.get(ADMIN_LISTEN_ADDR) else {
        return Ok(None);
    };
    match Addr.parse(text) {
        Some(addr) if addr.port() != main.port() || addr.port() == 0 => Ok(Some(addr)),
        _ => Err(invalid(
            ADMIN_LISTEN_ADDR,
            text,
            &format!("an address and port such as 0.0.0.0:9000, on another port than LISTEN_ADDR ({main})"),
        )),
    }
}

/// The variables as envy reads them (names lowercased), empty ones already dropped.
struct Env(HashMap<String, String>);

impl Env {
    fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = vars.into_iter().filter(|(_, v)| !v.is_empty());
        // A map of strings takes every value, so envy cannot fail on one: only on a non-UTF-8
        // environment, which std::env::vars already refuses.
        Env(envy::from_iter(vars).unwrap_or_default())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn into_config(self) -> Result<Config, ConfigError> {
        let env = &self;
        let redis = redis_config(env)?;
        let listen_addr = LISTEN_ADDR.read(env)?;
        let admin_listen_addr = admin_addr(env, listen_addr)?;
        let ttl = if env.is_set(CACHE_TTL_SECS.name) {
            CACHE_TTL_SECS
        } else {
            REDIS_TTL
        };
        let life = Lifetimes {
            ttl: ttl.read(env)?,
            stale: CACHE_STALE_SECS.read(env)?,
            negative_ttl: CACHE_NEGATIVE_TTL_SECS.read(env)?,
            jitter_percent: CACHE_TTL_JITTER_PERCENT.read(env)? as u8,
            honor_origin: ORIGIN_CACHE_CONTROL.read(env)?,
            ttl_min: CACHE_TTL_MIN_SECS.read(env)?,
            ttl_max: CACHE_TTL_MAX_SECS.read(env)?,
        };
        if let Some(max) = life.ttl_max
            && life.ttl_min > max
        {
            return Err(invalid(
                CACHE_TTL_MIN_SECS.name,
                &life.ttl_min.as_secs().to_string(),
                &format!("at most {} ({} s)", CACHE_TTL_MAX_SECS.name, max.as_secs()),
            ));
        }
        let memory_enabled = MEMORY_CACHE_ENABLED.read(env)?;
        let memory = MemoryConfig {
            max_bytes: MEMORY_CACHE_MAX_BYTES.read(env)?,
        };
        let disk = disk_config(env)?;
        let latency = ORIGIN_LATENCY_MS.read(env)?;
        let origin_timeout = ORIGIN_TIMEOUT_MS.read(env)?;
        let fleet = match &redis {
            Some(_) => Some(FleetLock {
                ttl: FLEET_LOCK_TTL_MS.read(env)?,
                wait: FLEET_LOCK_WAIT_MS.read(env)?,
                poll: FLEET_LOCK_POLL_MS.read(env)?,
            }),
            None => None,
        };
        if let Some(f) = &fleet
            && f.ttl < origin_timeout
        {
            return Err(invalid(
                FLEET_LOCK_TTL_MS.name,
                &f.ttl.as_millis().to_string(),
                &format!(
                    "at least {} ({} ms), so the lock outlives the fetch it guards",
                    ORIGIN_TIMEOUT_MS.name,
                    origin_timeout.as_millis()
                ),
            ));
        }
        let source = match env.get(ORIGIN_URL) {
            Some(url) => OriginSource::Http {
                template: UrlTemplate::parse(url).ok_or_else(|| {
                    invalid(
                        ORIGIN_URL,
                        url,
                        "an http:// or https:// URL template containing {key}, e.g. http://api/items/{key}",
                    )
                })?,
                authorization: authorization(env)?,
                tags: tag_rules(env)?,
            },
            None => OriginSource::Simulated { latency },
        };
        let log_json = LOG_FORMAT.read(env)?;
        let mut notices = Vec::new();
        for (old, new) in [
            (ORIGIN_BREAKER_FAILURES.name, "ORIGIN_BREAKER_MIN_REQUESTS"),
            (ORIGIN_BREAKER_WINDOW.name, "ORIGIN_BREAKER_WINDOW_SECS"),
        ] {
            if env.is_set(old) {
                notices.push(format!(
                    "{old} is deprecated and ignored: the circuit opens on the failure rate over the last ORIGIN_BREAKER_WINDOW_SECS, once ORIGIN_BREAKER_MIN_REQUESTS fetches ran; see {new}"
                ));
            }
        }
        // Still checked, so a value that was refused before is refused now.
        ORIGIN_BREAKER_FAILURES.read(env)?;
        ORIGIN_BREAKER_WINDOW.read(env)?;
        let origin = OriginConfig {
            source,
            timeout: origin_timeout,
            max_concurrency: ORIGIN_MAX_CONCURRENCY.read(env)? as usize,
            max_body_bytes: ORIGIN_MAX_BODY_BYTES.read(env)? as usize,
            breaker: BreakerConfig {
                trip: Trip {
                    window: ORIGIN_BREAKER_WINDOW_SECS.read(env)?,
                    min_calls: ORIGIN_BREAKER_MIN_REQUESTS.read(env)? as u32,
                    rate_percent: ORIGIN_BREAKER_FAILURE_RATE.read(env)? as u32,
                },
                cooldown: ORIGIN_BREAKER_COOLDOWN_SECS.read(env)?,
            },
        };
        let items = ItemsConfig {
            admin_token: admin_token(env)?,
            max_key_bytes: MAX_KEY_BYTES.read(env)? as usize,
            tag_max_bytes: TAG_MAX_BYTES.read(env)? as usize,
            purge_timeout: PURGE_TIMEOUT_SECS.read(env)?,
            request_timeout: REQUEST_TIMEOUT_SECS.read(env)?,
            compression_min_bytes: COMPRESSION
                .read(env)?
                .then_some(COMPRESSION_MIN_BYTES.read(env)? as usize),
            batch: BatchLimits {
                max_keys: BATCH_MAX_KEYS.read(env)? as usize,
                max_body_bytes: BATCH_MAX_BODY_BYTES.read(env)? as usize,
                origin_concurrency: (BATCH_ORIGIN_CONCURRENCY.read(env)? as usize)
                    .min(origin.max_concurrency / 2)
                    .max(1),
            },
        };
        let shutdown = ShutdownConfig {
            delay: SHUTDOWN_DELAY_SECS.read(env)?,
            drain: SHUTDOWN_DRAIN_SECS.read(env)?,
        };
        let server = ServerLimits {
            header_timeout: HTTP_HEADER_TIMEOUT_SECS.read(env)?,
            body_timeout: HTTP_BODY_TIMEOUT_SECS.read(env)?,
            keepalive_timeout: HTTP_KEEPALIVE_TIMEOUT_SECS.read(env)?,
            write_timeout: HTTP_WRITE_TIMEOUT_SECS.read(env)?,
            max_connections: HTTP_MAX_CONNECTIONS.read(env)? as usize,
        };
        let proxy = match env.get(PROXY_ROUTES) {
            Some(text) => crate::proxy::Routes::parse(text, |var| env.get(var).map(str::to_owned))
                .map_err(|why| {
                    invalid(
                        PROXY_ROUTES,
                        &crate::proxy::routes::redacted(text),
                        &format!(
                            "PATH_PREFIX=ORIGIN_BASE_URL[;option=value…][,…], e.g. /api=http://api.internal:8080;query=sort ({why})"
                        ),
                    )
                })?,
            None => crate::proxy::Routes::default(),
        };
        Ok(Config {
            listen_addr,
            admin_listen_addr,
            server,
            shutdown,
            items,
            log_json,
            cache: CacheConfig {
                life,
                memory: memory_enabled.then_some(memory),
                disk,
            },
            redis,
            fleet,
            origin,
            proxy,
            proxy_tags: tag_rules(env)?,
            notices,
        })
    }
}

/// The disk tier's settings, when `DISK_CACHE_DIR` is set (an absolute path: a relative one
/// would move with the working directory between restarts and lose the tier).
fn disk_config(env: &Env) -> Result<Option<DiskConfig>, ConfigError> {
    let Some(dir) = env.get(DISK_CACHE_DIR) else {
        return Ok(None);
    };
    let path = std::path::PathBuf::from(dir);
    if !path.is_absolute() {
        return Err(invalid(
            DISK_CACHE_DIR,
            dir,
            "an absolute directory path, e.g. /var/cache/cache-layer",
        ));
    }
    Ok(Some(DiskConfig {
        dir: path,
        max_bytes: DISK_CACHE_MAX_BYTES.read(env)?,
        index_max_bytes: DISK_CACHE_INDEX_MAX_BYTES.read(env)?,
        // At most 15, the sketch's largest count (checked by the variable's range).
        admit_min_requests: DISK_CACHE_ADMIT_MIN_REQUESTS.read(env)? as u8,
    }))
}

/// The tag rules of an HTTP origin (`ORIGIN_TAG_HEADER`, `TAGS_MAX_PER_ENTRY`, `TAG_MAX_BYTES`).
fn tag_rules(env: &Env) -> Result<TagRules, ConfigError> {
    let name = ORIGIN_TAG_HEADER.read(env)?;
    let header = http::HeaderName::try_from(name.trim().to_ascii_lowercase()).map_err(|_| {
        invalid(
            ORIGIN_TAG_HEADER.name,
            &name,
            "an HTTP header name such as Surrogate-Key or Cache-Tag",
        )
    })?;
    Ok(TagRules {
        header,
        max_per_entry: TAGS_MAX_PER_ENTRY.read(env)? as usize,
        max_bytes: TAG_MAX_BYTES.read(env)? as usize,
    })
}

/// `ORIGIN_AUTHORIZATION` as the header it is sent as; the value is a secret, so a refusal
/// does not echo it.
fn authorization(env: &Env) -> Result<Option<HeaderValue>, ConfigError> {
    env.get(ORIGIN_AUTHORIZATION)
        .map(|a| {
            let mut value = HeaderValue::from_str(a).map_err(|_| {
                invalid(
                    ORIGIN_AUTHORIZATION,
                    "<redacted>",
                    "a header value without control characters",
                )
            })?;
            value.set_sensitive(true);
            Ok(value)
        })
        .transpose()
}

/// `ADMIN_TOKEN`, refused when it is only whitespace (a template left unfilled, which would let
/// anybody sending an empty-looking token purge), without echoing it.
fn admin_token(env: &Env) -> Result<Option<String>, ConfigError> {
    match env.get(ADMIN_TOKEN) {
        Some(t) if t.trim().is_empty() => Err(invalid(
            ADMIN_TOKEN,
            "<whitespace>",
            "a token with at least one character other than whitespace (unset it to turn purging off)",
        )),
        t => Ok(t.map(str::to_owned)),
    }
}

fn redis_config(env: &Env) -> Result<Option<RedisConfig>, ConfigError> {
    let cluster = REDIS_CLUSTER.read(env)?;
    let mut nodes = match (env.get(REDIS_URL), env.get(REDIS_HOST)) {
        (Some(url), _) => {
            let urls: Vec<&str> = url.split(',').map(str::trim).collect();
            if urls.len() > 1 && !cluster {
                return Err(invalid(
                    REDIS_URL,
                    url,
                    "one redis:// or rediss:// URL (several, comma-separated, only with REDIS_CLUSTER=true)",
                ));
            }
            urls.into_iter()
                .map(|one| redis_node(url, one))
                .collect::<Result<Vec<_>, _>>()?
        }
        (None, Some(host)) => {
            let port = REDIS_PORT.read(env)?;
            let db = REDIS_DB.read(env)?;
            let refused = || invalid(REDIS_HOST, host, "a host name or IP address");
            if host.contains(['/', '@', ' ']) {
                return Err(refused());
            }
            let info = format!("redis://{host}:{port}/{db}")
                .into_connection_info()
                .map_err(|_| refused())?;
            vec![info]
        }
        (None, None) => return Ok(None),
    };
    if let Some(password) = env.get(REDIS_PASSWORD) {
        nodes = nodes.into_iter().map(|n| with_password(n, password)).collect();
    }
    if let Some(path) = env.get(REDIS_TLS_CA_FILE) {
        nodes = trusting_ca(nodes, path)?;
    }
    Ok(Some(RedisConfig {
        nodes,
        cluster,
        key_prefix: REDIS_KEY_PREFIX.read(env)?,
        connect_timeout: REDIS_CONNECT_TIMEOUT_MS.read(env)?,
        response_timeout: REDIS_RESPONSE_TIMEOUT_MS.read(env)?,
    }))
}

/// One URL of `REDIS_URL` (`whole`, named in the error) as the redis crate will use it. The
/// scheme and host are checked first, so `http://…` gets the plain message; then the redis
/// crate's own parse, which also refuses what `url` accepts (a database that is not a number,
/// a fragment other than `#insecure`, a wildcard address, an unknown `?protocol=`).
fn redis_node(whole: &str, one: &str) -> Result<ConnectionInfo, ConfigError> {
    let expected = "a redis:// or rediss:// URL such as redis://:password@host:6379/0";
    let parsed = url::Url::parse(one).map_err(|_| invalid(REDIS_URL, whole, expected))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(REDIS_URL, whole, expected));
    }
    one.into_connection_info().map_err(|e| {
        invalid(
            REDIS_URL,
            whole,
            &format!("{expected} (the Redis client refuses it: {e})"),
        )
    })
}

/// `REDIS_PASSWORD` for a node whose URL carries none: a password in the URL wins.
fn with_password(info: ConnectionInfo, password: &str) -> ConnectionInfo {
    if info.redis_settings().password().is_some() {
        return info;
    }
    let settings = info.redis_settings().clone().set_password(password);
    info.set_redis_settings(settings)
}

/// The nodes with `REDIS_TLS_CA_FILE` as their only trusted root, parsed here by the redis crate
/// (which keeps it in each node's connection info), so a file that is not a usable CA stops
/// start-up with the variable named.
fn trusting_ca(nodes: Vec<ConnectionInfo>, path: &str) -> Result<Vec<ConnectionInfo>, ConfigError> {
    if !nodes
        .iter()
        .all(|n| matches!(n.addr(), ConnectionAddr::TcpTls { .. }))
    {
        return Err(invalid(
            REDIS_TLS_CA_FILE,
            path,
            "to be set only with rediss:// URLs in REDIS_URL",
        ));
    }
    let refused = || {
        invalid(
            REDIS_TLS_CA_FILE,
            path,
            "a readable PEM file holding a CA certificate",
        )
    };
    let pem = std::fs::read(path)
        .ok()
        .filter(|pem| pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----"))
        .ok_or_else(refused)?;
    nodes
        .into_iter()
        .map(|info| {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            };
            redis::Client::build_with_tls(info, certificates)
                .map(|client| client.get_connection_info().clone())
                .map_err(|_| refused())
        })
        .collect()
}

fn invalid(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError {
        var,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

/// One environment variable with a default: the only place its name, its default and its
/// bounds are written.
struct Var<K> {
    name: &'static str,
    /// The text an unset or empty variable stands for, parsed like a set one.
    default: &'static str,
    kind: K,
}

impl<K: Kind> Var<K> {
    fn read(&self, env: &Env) -> Result<K::Value, ConfigError> {
        let text = env.get(self.name).unwrap_or(self.default);
        self.kind
            .parse(text)
            .ok_or_else(|| invalid(self.name, text, &self.kind.expected()))
    }
}

const fn count(name: &'static str, default: &'static str, min: u64, max: u64) -> Var<Count> {
    Var {
        name,
        default,
        kind: Count { min, max },
    }
}

const fn secs(name: &'static str, default: &'static str, min: u64) -> Var<Secs> {
    Var {
        name,
        default,
        kind: Secs { min },
    }
}

const fn millis(name: &'static str, default: &'static str, min: u64) -> Var<Millis> {
    Var {
        name,
        default,
        kind: Millis { min },
    }
}

const fn flag(name: &'static str, default: &'static str) -> Var<Flag> {
    Var {
        name,
        default,
        kind: Flag,
    }
}

const fn text(name: &'static str, default: &'static str) -> Var<Text> {
    Var {
        name,
        default,
        kind: Text,
    }
}

/// What a variable holds: how its text is parsed, and what the message says is accepted.
trait Kind {
    type Value;
    fn parse(&self, text: &str) -> Option<Self::Value>;
    fn expected(&self) -> String;
}

/// A whole number within bounds.
struct Count {
    min: u64,
    max: u64,
}

impl Kind for Count {
    type Value = u64;
    fn parse(&self, text: &str) -> Option<u64> {
        text.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (self.min..=self.max).contains(n))
    }
    fn expected(&self) -> String {
        if self.max == u64::MAX {
            format!("a whole number of at least {}", self.min)
        } else {
            format!("a whole number from {} to {}", self.min, self.max)
        }
    }
}

/// Whole seconds, at least `min`.
struct Secs {
    min: u64,
}

impl Kind for Secs {
    type Value = Duration;
    fn parse(&self, text: &str) -> Option<Duration> {
        let n = text.trim().parse::<u64>().ok().filter(|n| *n >= self.min)?;
        Some(Duration::from_secs(n))
    }
    fn expected(&self) -> String {
        format!("a whole number of seconds, at least {}", self.min)
    }
}

/// Whole milliseconds, at least `min`.
struct Millis {
    min: u64,
}

impl Kind for Millis {
    type Value = Duration;
    fn parse(&self, text: &str) -> Option<Duration> {
        let n = text.trim().parse::<u64>().ok().filter(|n| *n >= self.min)?;
        Some(Duration::from_millis(n))
    }
    fn expected(&self) -> String {
        format!("a whole number of milliseconds, at least {}", self.min)
    }
}

/// `true`/`false`, `1`/`0` or `yes`/`no`, any case.
struct Flag;

impl Kind for Flag {
    type Value = bool;
    fn parse(&self, text: &str) -> Option<bool> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        }
    }
    fn expected(&self) -> String {
        "true or false".to_owned()
    }
}

/// An IP address and port.
struct Addr;

impl Kind for Addr {
    type Value = SocketAddr;
    fn parse(&self, text: &str) -> Option<SocketAddr> {
        text.trim().parse().ok()
    }
    fn expected(&self) -> String {
        "an address and port such as 0.0.0.0:5000".to_owned()
    }
}

/// Any text, taken as it is.
struct Text;

impl Kind for Text {
    type Value = String;
    fn parse(&self, text: &str) -> Option<String> {
        Some(text.to_owned())
    }
    fn expected(&self) -> String {
        "any text".to_owned()
    }
}

/// Whole seconds (at least 1), or `none` for no limit.
struct SecsOrNone;

impl Kind for SecsOrNone {
    type Value = Option<Duration>;
    fn parse(&self, text: &str) -> Option<Option<Duration>> {
        match text.trim() {
            "none" => Some(None),
            n => n
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .map(|n| Some(Duration::from_secs(n))),
        }
    }
    fn expected(&self) -> String {
        "a whole number of seconds, at least 1, or none".to_owned()
    }
}

/// `honor` or `ignore`: read as whether the origin's `Cache-Control` decides lifetimes.
struct OriginPolicy;

impl Kind for OriginPolicy {
    type Value = bool;
    fn parse(&self, text: &str) -> Option<bool> {
        match text.trim() {
            "honor" => Some(true),
            "ignore" => Some(false),
            _ => None,
        }
    }
    fn expected(&self) -> String {
        "honor or ignore".to_owned()
    }
}

/// `text` or `json`; read as whether log lines are JSON.
struct LogFormat;

impl Kind for LogFormat {
    type Value = bool;
    fn parse(&self, text: &str) -> Option<bool> {
        match text {
            "text" => Some(false),
            "json" => Some(true),
            _ => None,
        }
    }
    fn expected(&self) -> String {
        "text or json".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn redis(vars: &[(&str, &str)]) -> RedisConfig {
        config(vars).unwrap().redis.expect("Redis is configured")
    }

    #[test]
    fn defaults_run_the_seed_demo_without_redis() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:5000");
        assert!(c.redis.is_none());
        assert_eq!(c.cache.life.ttl, Duration::from_secs(60));
        assert_eq!(c.cache.life.jitter_percent, 10);
        assert_eq!(
            c.origin.source,
            OriginSource::Simulated {
                latency: Duration::from_millis(200)
            }
        );
        assert_eq!(
            c.cache.memory,
            Some(MemoryConfig {
                max_bytes: 64 * 1024 * 1024
            })
        );
        assert_eq!(c.origin.max_body_bytes, 1024 * 1024);
        assert!(!c.log_json);
    }

    /// The README's configuration table is the contract: every variable declared here is in
    /// it, with the default declared here (so a default cannot drift from the documentation).
    #[test]
    fn every_variable_and_default_is_the_readmes() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = &readme[readme
            .find("\n## Configuration")
            .expect("a Configuration section")
            + 1..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        // The row whose first cell names the variable, else the one whose meaning does (an alias).
        let row = |name: &str| {
            let names = |line: &&str, cell: usize| {
                line.split('|')
                    .nth(cell)
                    .is_some_and(|c| c.contains(&format!("`{name}`")))
            };
            let rows = || section.lines().filter(|l| l.starts_with("| "));
            rows()
                .find(|l| names(l, 1))
                .or_else(|| rows().find(|l| names(l, 3)))
                .unwrap_or_else(|| panic!("{name} is not in the README's table"))
                .to_owned()
        };
        // Every setting with a default (SETTINGS is what --help prints); the OTel SDK's own
        // names are described in prose rows.
        let with_default = SETTINGS.iter().filter(|(name, default)| {
            *default != "unset" && !name.starts_with("OTEL_") && *name != "RUST_LOG"
        });
        for &(name, default) in with_default {
            let row = row(name);
            assert!(row.contains(&format!("`{default}`")), "{name}={default}: {row}");
        }
        for name in SETTINGS
            .iter()
            .filter(|(n, d)| {
                *d == "unset"
                    && !n.starts_with("OTEL_")
                    && !n.starts_with("ORIGIN_BREAKER_")
                    && *n != REDIS_TTL.name
            })
            .map(|(n, _)| *n)
        {
            assert!(row(name).contains("unset"), "{name}");
        }
    }

    #[test]
    fn misspelt_names_are_reported_with_the_nearest_setting() {
        let c = config(&[
            ("CACHE_TTL_SEC", "5"),
            ("ORGIN_URL", "http://x/{key}"),
            ("POD_NAME", "p"),
        ])
        .unwrap();
        assert!(
            c.notices
                .contains(&"`CACHE_TTL_SEC` is not a setting; did you mean `CACHE_TTL_SECS`?".to_owned()),
            "{:?}",
            c.notices
        );
        assert!(
            c.notices
                .contains(&"`ORGIN_URL` is not a setting; did you mean `ORIGIN_URL`?".to_owned()),
            "{:?}",
            c.notices
        );
        assert!(
            c.notices.iter().any(|n| n.starts_with("ORIGIN_URL is not set")),
            "{:?}",
            c.notices
        );
        assert!(!c.notices.iter().any(|n| n.contains("POD_NAME")));
        // A prefix of ours, far from every name.
        let c = config(&[("REDIS_SOMETHING_ELSE", "1")]).unwrap();
        assert!(
            c.notices[0].starts_with("`REDIS_SOMETHING_ELSE` is not a setting"),
            "{:?}",
            c.notices
        );
        // Service links, the SDK's own names and proxies are never reported.
        let quiet = config(&[
            ("CACHE_REDIS_PORT", "tcp://10.0.0.1:6379"),
            ("CACHE_REDIS_PORT_6379_TCP_ADDR", "10.0.0.1"),
            ("CACHE_LAYER_SERVICE_HOST", "10.0.0.2"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
            ("HTTP_PROXY", "http://proxy:3128"),
            ("ORIGIN_URL", "http://x/{key}"),
        ])
        .unwrap();
        assert!(quiet.notices.is_empty(), "{:?}", quiet.notices);
    }

    #[test]
    fn strict_mode_stops_start_up_on_a_misspelt_name() {
        let e = config(&[("CONFIG_STRICT", "true"), ("REDIS_ULR", "redis://r")]).unwrap_err();
        assert_eq!(e.var, "CONFIG_STRICT");
        assert!(
            e.to_string()
                .contains("`REDIS_ULR` is not a setting; did you mean `REDIS_URL`?"),
            "{e}"
        );
        // Deprecated names are known: an upgrade never breaks strict mode.
        let c = config(&[("CONFIG_STRICT", "true"), ("ORIGIN_BREAKER_FAILURES", "5")]).unwrap();
        assert!(c.notices.iter().any(|n| n.contains("deprecated")));
        let e = config(&[("CONFIG_STRICT", "true"), ("RUST_LOG", "debugg")]).unwrap_err();
        assert!(e.to_string().contains("did you mean `RUST_LOG=debug`?"), "{e}");
    }

    #[test]
    fn a_rust_log_that_silences_warnings_is_found() {
        assert_eq!(rust_log_silences_warnings("debugg"), Some("debug".to_owned()));
        assert_eq!(rust_log_silences_warnings("error"), Some("info".to_owned()));
        assert_eq!(rust_log_silences_warnings("info"), None);
        assert_eq!(rust_log_silences_warnings("warn,hyper=off"), None);
        assert_eq!(rust_log_silences_warnings("error,cache_layer=debug"), None);
        assert_eq!(rust_log_silences_warnings("cache_layer"), None);
    }

    #[test]
    fn every_setting_is_in_the_readme() {
        let readme = include_str!("../README.md");
        // The per-signal protocols are named as forms of `OTEL_EXPORTER_OTLP_PROTOCOL`.
        for (name, _) in SETTINGS.iter().filter(|(n, _)| !n.ends_with("S_PROTOCOL")) {
            assert!(readme.contains(&format!("`{name}`")), "{name}");
        }
    }

    #[test]
    fn every_default_parses() {
        // With Redis and an HTTP origin, so every variable is read.
        let vars = [("REDIS_URL", "redis://r"), ("ORIGIN_URL", "http://o/{key}")];
        let c = config(&vars).unwrap();
        let r = c.redis.unwrap();
        assert_eq!(r.key_prefix, "cache-layer");
        assert_eq!(r.response_timeout, Duration::from_millis(250));
        assert_eq!(c.origin.breaker.trip.window, Duration::from_secs(10));
        assert_eq!(c.origin.breaker.trip.min_calls, 20);
        assert!(c.notices.is_empty(), "{:?}", c.notices);
        let old = config(&[("ORIGIN_BREAKER_FAILURES", "3")]).unwrap();
        assert!(old.notices[0].starts_with("ORIGIN_BREAKER_FAILURES is deprecated and ignored"));
        assert_eq!(c.server.max_connections, 4096);
        assert_eq!(
            c.items.batch,
            BatchLimits {
                max_keys: 1000,
                max_body_bytes: 1 << 20,
                origin_concurrency: 16,
            }
        );
        let seed = redis(&[("REDIS_HOST", "r")]);
        assert_eq!(seed.nodes[0].addr(), &ConnectionAddr::Tcp("r".into(), 6379));
    }

    #[test]
    fn one_batch_never_holds_more_than_half_the_origin_permits() {
        let batch = |vars: &[(&str, &str)]| config(vars).unwrap().items.batch.origin_concurrency;
        assert_eq!(batch(&[("BATCH_ORIGIN_CONCURRENCY", "40")]), 32);
        assert_eq!(batch(&[("ORIGIN_MAX_CONCURRENCY", "2")]), 1);
        assert_eq!(batch(&[("ORIGIN_MAX_CONCURRENCY", "1")]), 1);
        assert_eq!(batch(&[("BATCH_ORIGIN_CONCURRENCY", "4")]), 4);
        assert!(config(&[("BATCH_MAX_KEYS", "0")]).is_err());
        assert!(config(&[("BATCH_MAX_BODY_BYTES", "100")]).is_err());
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let c = config(&[("CACHE_TTL_SECS", ""), ("REDIS_URL", ""), ("LISTEN_ADDR", "")]).unwrap();
        assert_eq!(c.cache.life.ttl, Duration::from_secs(60));
        assert!(c.redis.is_none());
    }

    #[test]
    fn redis_ttl_is_an_alias_and_cache_ttl_secs_wins() {
        let ttl = |vars: &[(&str, &str)]| config(vars).unwrap().cache.life.ttl;
        assert_eq!(ttl(&[("REDIS_TTL", "7")]), Duration::from_secs(7));
        assert_eq!(
            ttl(&[("REDIS_TTL", "7"), ("CACHE_TTL_SECS", "9")]),
            Duration::from_secs(9)
        );
        assert_eq!(config(&[("REDIS_TTL", "x")]).unwrap_err().var, "REDIS_TTL");
    }

    #[test]
    fn bad_values_name_the_variable_value_and_expectation() {
        let e = config(&[("CACHE_TTL_SECS", "abc")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: CACHE_TTL_SECS=\"abc\": expected a whole number of seconds, at least 1"
        );
        assert_eq!(
            config(&[("ORIGIN_BREAKER_WINDOW", "65")])
                .unwrap_err()
                .to_string(),
            "invalid configuration: ORIGIN_BREAKER_WINDOW=\"65\": expected a whole number from 2 to 64"
        );
        assert_eq!(config(&[("LISTEN_ADDR", "nope")]).unwrap_err().var, "LISTEN_ADDR");
        assert_eq!(config(&[("REDIS_URL", "http://x")]).unwrap_err().var, "REDIS_URL");
        assert_eq!(
            config(&[("ORIGIN_URL", "http://x/items")]).unwrap_err().var,
            "ORIGIN_URL"
        );
        assert_eq!(
            config(&[("MEMORY_CACHE_MAX_BYTES", "0")]).unwrap_err().var,
            "MEMORY_CACHE_MAX_BYTES"
        );
        assert_eq!(config(&[("LOG_FORMAT", "xml")]).unwrap_err().var, "LOG_FORMAT");
        let disk = |n| {
            [
                ("DISK_CACHE_DIR", "/var/cache/cl"),
                ("DISK_CACHE_ADMIT_MIN_REQUESTS", n),
            ]
        };
        assert_eq!(
            config(&disk("16")).unwrap_err().to_string(),
            "invalid configuration: DISK_CACHE_ADMIT_MIN_REQUESTS=\"16\": expected a whole number from 1 to 15"
        );
        assert_eq!(
            config(&disk("3")).unwrap().cache.disk.unwrap().admit_min_requests,
            3
        );
        assert_eq!(
            config(&[("ORIGIN_URL", "http://o/{key}"), ("ORIGIN_LATENCY_MS", "x")])
                .unwrap_err()
                .var,
            "ORIGIN_LATENCY_MS"
        );
        let short_lock = [
            ("REDIS_URL", "redis://r"),
            ("FLEET_LOCK_TTL_MS", "100"),
            ("ORIGIN_TIMEOUT_MS", "500"),
        ];
        assert_eq!(
            config(&short_lock).unwrap_err().to_string(),
            "invalid configuration: FLEET_LOCK_TTL_MS=\"100\": expected at least ORIGIN_TIMEOUT_MS (500 ms), so the lock outlives the fetch it guards"
        );
    }

    #[test]
    fn a_whitespace_admin_token_is_refused_without_echoing_it() {
        let e = config(&[("ADMIN_TOKEN", "  \t ")]).unwrap_err();
        assert_eq!(e.var, "ADMIN_TOKEN");
        assert_eq!(e.value, "<whitespace>");
        let c = config(&[("ADMIN_TOKEN", "short")]).unwrap();
        assert_eq!(c.items.admin_token.as_deref(), Some("short"));
    }

    #[test]
    fn seed_redis_variables_build_the_connection_info() {
        let r = redis(&[("REDIS_HOST", "redis"), ("REDIS_PORT", "6380"), ("REDIS_DB", "2")]);
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(r.nodes[0].addr(), &ConnectionAddr::Tcp("redis".into(), 6380));
        assert_eq!(r.nodes[0].redis_settings().db(), 2);
        assert_eq!(
            config(&[("REDIS_HOST", "0.0.0.0")]).unwrap_err().var,
            "REDIS_HOST"
        );
    }

    #[test]
    fn redis_url_and_password_become_the_connection_info() {
        let r = redis(&[("REDIS_URL", "redis://cache:6390/3"), ("REDIS_PASSWORD", "pw")]);
        let node = &r.nodes[0];
        assert_eq!(node.addr(), &ConnectionAddr::Tcp("cache".into(), 6390));
        assert_eq!(node.redis_settings().db(), 3);
        assert_eq!(node.redis_settings().password(), Some("pw"));
        // A password in the URL wins; it is percent-decoded.
        let r = redis(&[("REDIS_URL", "redis://:a%40b@cache"), ("REDIS_PASSWORD", "pw")]);
        assert_eq!(r.nodes[0].redis_settings().password(), Some("a@b"));
        let tls = redis(&[("REDIS_URL", "rediss://cache:6380/#insecure")]);
        assert!(matches!(
            tls.nodes[0].addr(),
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
    }

    /// URLs that `url` parses but the redis crate would refuse used to pass this module and
    /// then stop `RedisTier::new` with exit 1: they are now refused here, naming `REDIS_URL`.
    #[test]
    fn redis_urls_the_redis_crate_refuses_are_refused_here() {
        for url in [
            "redis://cache:6379/not-a-db",
            "rediss://cache:6379/#secure-please",
            "redis://0.0.0.0:6379",
            "redis://cache:6379/0?protocol=9",
        ] {
            let e = config(&[("REDIS_URL", url)]).unwrap_err();
            assert_eq!((e.var, e.value.as_str()), ("REDIS_URL", url));
            assert!(e.expected.starts_with("a redis:// or rediss:// URL"), "{e}");
        }
    }

    #[test]
    fn several_redis_urls_need_cluster_mode() {
        let urls = "redis://a:1, redis://b:2";
        assert_eq!(config(&[("REDIS_URL", urls)]).unwrap_err().var, "REDIS_URL");
        let r = redis(&[("REDIS_URL", urls), ("REDIS_CLUSTER", "true")]);
        assert!(r.cluster);
        assert_eq!(r.nodes[1].addr(), &ConnectionAddr::Tcp("b".into(), 2));
    }

    #[test]
    fn a_tls_ca_needs_rediss_and_a_usable_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bogus.pem");
        std::fs::write(
            &bogus,
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let bogus = bogus.to_str().unwrap();
        let plain = [("REDIS_URL", "redis://r"), ("REDIS_TLS_CA_FILE", bogus)];
        assert_eq!(config(&plain).unwrap_err().var, "REDIS_TLS_CA_FILE");
        // A file that looks like PEM but holds no certificate the TLS stack can use used to stop
        // RedisTier::new (exit 1); it is refused here.
        let tls = [("REDIS_URL", "rediss://r"), ("REDIS_TLS_CA_FILE", bogus)];
        let e = config(&tls).unwrap_err();
        assert_eq!(e.var, "REDIS_TLS_CA_FILE");
        assert!(e.expected.contains("readable PEM file"), "{e}");
    }

    #[test]
    fn fleet_settings_exist_only_with_redis() {
        let fleet = [
            ("FLEET_LOCK_TTL_MS", "6000"),
            ("FLEET_LOCK_WAIT_MS", "0"),
            ("FLEET_LOCK_POLL_MS", "50"),
        ];
        assert!(config(&fleet).unwrap().redis.is_none());
        let with_redis = [fleet.as_slice(), &[("REDIS_URL", "redis://r")]].concat();
        let f = config(&with_redis)
            .unwrap()
            .fleet
            .expect("fleet settings with Redis");
        assert_eq!(
            (f.ttl, f.wait, f.poll),
            (
                Duration::from_millis(6000),
                Duration::ZERO,
                Duration::from_millis(50)
            )
        );
    }

    #[test]
    fn origin_authorization_becomes_a_sensitive_header_value() {
        let base = [("ORIGIN_URL", "http://o/items/{key}")];
        let Ok(Config { origin, .. }) = config(&[base[0], ("ORIGIN_AUTHORIZATION", "Bearer s3cret")]) else {
            panic!("an authorization header value is accepted");
        };
        let OriginSource::Http { authorization, .. } = origin.source else {
            panic!("ORIGIN_URL makes an HTTP origin");
        };
        let value = authorization.expect("ORIGIN_AUTHORIZATION is set");
        assert_eq!(value, "Bearer s3cret");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("s3cret"));
        let e = config(&[base[0], ("ORIGIN_AUTHORIZATION", "Bearer a\nb")]).unwrap_err();
        assert_eq!((e.var, e.value.as_str()), ("ORIGIN_AUTHORIZATION", "<redacted>"));
        // Without an HTTP origin it is not used, so it is not read.
        assert!(config(&[("ORIGIN_AUTHORIZATION", "a\nb")]).is_ok());
    }

    #[test]
    fn the_origin_template_is_split_once_at_start_up() {
        let c = config(&[("ORIGIN_URL", "https://o/items/{key}?v=1&k={key}")]).unwrap();
        let OriginSource::Http { template, .. } = c.origin.source else {
            panic!("ORIGIN_URL makes an HTTP origin");
        };
        assert_eq!(template.url_for("a/b"), "https://o/items/a%2Fb?v=1&k=a%2Fb");
        for bad in ["http://o/items", "ftp://o/{key}", "{key}", "http:// /{key}"] {
            assert_eq!(
                config(&[("ORIGIN_URL", bad)]).unwrap_err().var,
                "ORIGIN_URL",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_disabled_memory_tier_has_no_bound_but_a_bad_bound_is_still_refused() {
        let c = config(&[("MEMORY_CACHE_ENABLED", "no")]).unwrap();
        assert_eq!(c.cache.memory, None);
        let bad = [("MEMORY_CACHE_ENABLED", "false"), ("MEMORY_CACHE_MAX_BYTES", "x")];
        assert_eq!(config(&bad).unwrap_err().var, "MEMORY_CACHE_MAX_BYTES");
    }
}
