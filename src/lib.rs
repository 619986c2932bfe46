//! cache-layer: a read-through cache service in front of a slow origin.
//!
//! # Layout
//! - [`config`]: the one typed `Config`, read from environment variables (envy) and parsed into
//!   the types the parts are built from, so building them cannot fail on a setting.
//! - [`app`]: builds the parts from a `Config`, serves, shuts down gracefully.
//! - [`http`]: the router and handlers (`/items/{key}`, `/health`, probes, `/metrics`).
//! - [`error`]: `AppError`, the one place failures become HTTP responses.
//! - [`cache`]: `ReadThrough` (the hit path), the `Tier` trait, the memory and Redis tiers,
//!   entries and their freshness, in-process coalescing, fleet-wide locks, purges.
//! - [`origin`]: the `Origin` trait, the simulated and HTTP origins, and the guard every fetch
//!   passes (concurrency limit, deadline, circuit breaker).
//! - [`telemetry`]: logs, metrics (Prometheus pull, OTLP push) and traces, set up once.

pub mod app;
pub mod cache;
pub mod config;
pub mod error;
pub mod http;
pub mod origin;
pub mod telemetry;

pub use app::{Application, StartError, shutdown_signal};
pub use config::{Config, ConfigError};
