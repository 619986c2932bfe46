//! cache-layer: a read-through cache service in front of a slow origin.
//!
//! # Layout
//! - [`config`]: the one typed `Config`, read from environment variables (envy) and parsed into
//!   the types the parts are built from, so building them cannot fail on a setting.
//! - [`app`]: builds the parts from a `Config`, serves, shuts down gracefully.
//! - [`http`]: the accept loop, the hit path answered at once, the router and handlers
//!   (`/items/{key}`, `/items:batch`, `/health`, probes, `/metrics`), and the layer that counts requests by route.
//! - [`error`]: `AppError`, the one place failures become HTTP responses.
//! - [`cache`]: the read-through and everything under it, in rooms: `read_through` (the hit
//!   path, fetch-and-store, purge fan-out), `tier` (the `Tier` seam; the memory tier with its
//!   adaptive W-TinyLFU, the disk tier, the Redis tier), `redis` (the Redis client every Redis
//!   user shares), `fleet` (the fleet lock and purge messages over a message bus: Redis, or in
//!   process), and leaves (entries and their lifetimes, compressed forms, answers, coalescing,
//!   the purge vocabulary, label sets, the clock). Nothing imports upward: see the dependency
//!   table in docs/architecture.md, checked by `scripts/check_deps.py`.
//! - [`origin`]: the `Origin` trait (the seam the cache is generic over), the simulated and HTTP
//!   origins, what an origin's headers say about caching (`cache_headers`), and the guard every
//!   fetch passes (concurrency limit, deadline, circuit breaker).
//! - [`proxy`]: the transparent caching proxy (`PROXY_ROUTES`): route table and route options,
//!   RFC 9111 rules, and the flow that forwards, stores (in every tier) and reuses responses
//!   byte for byte, with a fast path for fresh hits.
//! - [`telemetry`]: logs, metrics (Prometheus pull, OTLP push) and traces, set up once.
//! - [`tls`]: the rustls crypto provider every TLS client uses, installed once.
//! - [`descriptors`]: out of file descriptors: telling it, and the hand-over by which an
//!   origin's connect gets one back from an idle client connection.

pub mod app;
pub mod cache;
pub mod config;
pub mod descriptors;
pub mod error;
pub mod http;
pub mod origin;
pub mod proxy;
pub mod telemetry;
pub mod tls;

pub use app::{Application, StartError, shutdown_signal};
pub use config::{Config, ConfigError};
