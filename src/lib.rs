//! cache-layer: a read-through cache service in front of a slow origin.
//!
//! # Layout
//! - [`config`]: the one typed `Config`, read from environment variables (envy) and parsed into
//!   the types the parts are built from, so building them cannot fail on a setting.
//! - [`app`]: builds the parts from a `Config`, serves, shuts down gracefully.
//! - [`http`]: the accept loop, the hit path answered at once, the router and handlers
//!   (`/items/{key}`, `/items:batch`, `/health`, probes, `/metrics`), and the layer that counts requests by route.
//! - [`error`]: `AppError`, the one place failures become HTTP responses.
//! - [`cache`]: `ReadThrough` (the read-through over an ordered list of tiers, one key or a
//!   batch), the `Tier` trait, the memory tier (with its adaptive W-TinyLFU, `eviction`) and the
//!   Redis tier, entries and how long they live (`policy`: the origin's `Cache-Control` or the
//!   configured lifetimes), their compressed forms (`encoding`), answers, in-process coalescing,
//!   the fleet lock (`fleet`), key and tag purges and their listener (`invalidation`).
//! - [`origin`]: the `Origin` trait (the seam the cache is generic over), the simulated and HTTP
//!   origins, what an origin's headers say about caching (`cache_headers`), and the guard every
//!   fetch passes (concurrency limit, deadline, circuit breaker).
//! - [`telemetry`]: logs, metrics (Prometheus pull, OTLP push) and traces, set up once.
//! - [`tls`]: the rustls crypto provider every TLS client uses, installed once.

pub mod app;
pub mod cache;
pub mod config;
pub mod error;
pub mod http;
pub mod origin;
pub mod telemetry;
pub mod tls;

pub use app::{Application, StartError, shutdown_signal};
pub use config::{Config, ConfigError};
