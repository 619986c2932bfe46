//! The HTTP surface: the router, its shared state and the handlers.

mod batch;
mod conditional;
mod headers;
mod items;
mod ops;
mod route;
pub mod server;
mod tags;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::cache::ReadThrough;
use crate::config::BatchLimits;
use crate::error::AppError;
use crate::telemetry::Metrics;

pub use headers::HeaderTables;
pub use route::{CountLayer, Route, StatusClass};

/// What every handler shares; built once by [`crate::Application::build`].
pub struct AppState {
    /// The cache.
    pub cache: ReadThrough,
    /// Instruments (requests are counted by [`CountLayer`], by route).
    pub metrics: Arc<Metrics>,
    /// What `/metrics` encodes.
    pub registry: prometheus::Registry,
    /// Bearer token for purges; `None` = purging off.
    pub admin_token: Option<String>,
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Which origin answers misses: `simulated` or `http` (`/health` says so).
    pub origin_kind: &'static str,
    /// How long a purge may take before it answers `503 purge_incomplete` (`PURGE_TIMEOUT_SECS`).
    pub purge_timeout: Duration,
    /// Longest tag an entry can carry (`TAG_MAX_BYTES`): a purge of a longer one is `400`.
    pub tag_max_bytes: usize,
    /// Deadline of a `/items` request that has to wait on the origin.
    pub request_timeout: Duration,
    /// Bodies at least this long go compressed to clients that accept it (`None`: never).
    pub compression_min_bytes: Option<usize>,
    /// What one `POST /items:batch` may ask for.
    pub batch: BatchLimits,
    /// Deadline for reading a request body (`HTTP_BODY_TIMEOUT_SECS`).
    pub body_timeout: Duration,
    /// Precomputed `Age` and `Cache-Status` values, so a hit formats nothing.
    pub headers: HeaderTables,
    /// False once shutdown has begun: `/readyz` fails so load balancers stop sending.
    pub ready: AtomicBool,
}

impl AppState {
    /// Marks the service as shutting down.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// What the server hands each request to: the hit path when it can answer at once, else the
/// router. Cheap to clone (one per connection).
#[derive(Clone)]
pub struct App {
    /// What every handler shares.
    state: Arc<AppState>,
    /// Every route; see [`router`].
    router: Router,
}

impl App {
    /// The application over `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        App {
            router: router(state.clone()),
            state,
        }
    }

    /// The answer to `request` if it can be given without waiting: a `GET /items/{key}` whose
    /// key is fresh in memory, served without the router's per-request work (extensions,
    /// boxed futures, layers), and counted as the router's layers would. Anything else (a miss,
    /// a bad key, a traced request, another route) is `None`: the router answers it.
    fn answer_now<B>(&self, request: &http::Request<B>) -> Option<axum::response::Response> {
        let started = std::time::Instant::now();
        // As the router's panic layer does: no panic reaches a client as a reset connection.
        let response = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            items::answer_now(&self.state, request)
        }))
        .unwrap_or_else(|_| Some(AppError::Internal("a handler panicked".to_owned()).into_response()))?;
        self.state
            .metrics
            .request(Route::Items, response.status().as_u16(), Some(started.elapsed()));
        Some(response)
    }
}

/// The router: every endpoint, a JSON 404/405 for everything else, no panic reaching a client,
/// and every request counted by its route.
pub fn router(state: Arc<AppState>) -> Router {
    let count = CountLayer {
        metrics: state.metrics.clone(),
    };
    Router::new()
        .route("/items/{key}", get(items::get_item).delete(items::delete_item))
        // A colon, not a slash: `/items/batch` is the key `batch`.
        .route("/items:batch", post(batch::get_batch))
        .route("/items/", get(items::empty_key).delete(items::empty_key))
        .route("/items", get(items::empty_key).delete(items::empty_key))
        .route("/tags/{tag}", delete(tags::delete_tag))
        .route("/tags/", delete(tags::empty_tag))
        .route("/tags", delete(tags::empty_tag))
        .route("/health", get(ops::health))
        .route("/livez", get(ops::livez))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(CatchPanicLayer::custom(|_| {
            AppError::Internal("a handler panicked".to_owned()).into_response()
        }))
        // Outside the panic catcher, so a panic is counted as the 500 the client got.
        .layer(count)
        .with_state(state)
}
