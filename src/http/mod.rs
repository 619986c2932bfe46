//! The HTTP surface: the router, its shared state and the handlers.

mod batch;
mod conditional;
mod headers;
mod items;
pub(crate) mod labels;
mod ops;
mod route;
pub mod server;
mod tags;
mod turns;
mod urls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::future::Future;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::FutureExt;

use crate::cache::ReadThrough;
use crate::config::BatchLimits;
use crate::error::AppError;
use crate::telemetry::Metrics;

pub use headers::HeaderTables;
pub use labels::{Route, StatusClass};
pub use route::{Counted, CountedFuture};

/// What every handler shares; built once by [`crate::Application::build`].
pub struct AppState {
    /// The cache.
    pub cache: ReadThrough,
    /// Instruments (requests are counted by [`Counted`], by route).
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
    /// The transparent proxy (`PROXY_ROUTES`): what every path no endpoint takes goes to;
    /// `None` without routes (such paths are then `404`).
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
}

impl AppState {
    /// Marks the service as shutting down.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// A request handler that answers through `&self`: the layers of [`App`], so the hit path clones
/// nothing per request.
pub trait Handle<B> {
    /// The answer, when it is ready.
    type Future: Future<Output = Response>;

    /// Starts answering `request`.
    fn handle(&self, request: http::Request<B>) -> Self::Future;
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything, on `LISTEN_ADDR` (no `ADMIN_LISTEN_ADDR`).
    All,
    /// `LISTEN_ADDR` beside an admin listener: reads of `/items` (`GET`, `HEAD`,
    /// `POST /items:batch`) and the proxied routes, which may then take any other path.
    Public,
    /// `ADMIN_LISTEN_ADDR`: health, probes, metrics and the purge API.
    Admin,
}

/// What the server hands each request to: one path for every request, outermost first: the
/// count by route ([`Counted`]), the panic catcher ([`Guarded`]), then the hit path that answers
/// a fresh in-process hit at once ([`FastHit`]) or hands the request to the router. A layer
/// added around the stack sees every request; nothing is boxed on the way to a hit.
#[derive(Clone)]
pub struct App {
    stack: Arc<Counted<Guarded<FastHit>>>,
    /// Routes are configured: requests carry the client's address (for `X-Forwarded-For`).
    proxied: bool,
}

/// The future of [`App::handle`].
pub type AppFuture = CountedFuture<GuardedFuture<FastFuture>>;

impl App {
    /// The application over `state`, every endpoint on one listener.
    pub fn new(state: Arc<AppState>) -> Self {
        Self::serving(state, Surface::All)
    }

    /// The application over `state` for a listener that serves `surface`.
    pub fn serving(state: Arc<AppState>, surface: Surface) -> Self {
        let metrics = state.metrics.clone();
        App {
            proxied: state.proxy.is_some() && surface != Surface::Admin,
            stack: Arc::new(Counted {
                inner: Guarded(FastHit {
                    router: router_for(state.clone(), surface),
                    surface,
                    state,
                }),
                metrics,
            }),
        }
    }

    /// Whether requests should carry the client's address ([`crate::proxy::ClientAddr`]).
    pub fn proxied(&self) -> bool {
        self.proxied
    }

    /// Answers `request`.
    pub fn handle<B>(&self, request: http::Request<B>) -> AppFuture
    where
        B: hyper::body::Body<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        self.stack.handle(request)
    }
}

/// Catches a panic in the layers inside it, when called or while polled: the client gets the
/// JSON 500 of [`AppError::Internal`], never a reset connection.
pub struct Guarded<S>(pub S);

impl<S: Handle<B>, B> Handle<B> for Guarded<S> {
    type Future = GuardedFuture<S::Future>;

    fn handle(&self, request: http::Request<B>) -> Self::Future {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.handle(request))) {
            Ok(inner) => GuardedFuture::Running {
                inner: std::panic::AssertUnwindSafe(inner).catch_unwind(),
            },
            Err(_) => GuardedFuture::Panicked,
        }
    }
}

fn panicked() -> Response {
    AppError::Internal("a handler panicked".to_owned()).into_response()
}

pin_project_lite::pin_project! {
    /// The answer of [`Guarded`]: the inner one, or a 500 if it panicked.
    #[project = GuardedProj]
    pub enum GuardedFuture<F> {
        /// The inner future, its panics caught.
        Running { #[pin] inner: futures_util::future::CatchUnwind<std::panic::AssertUnwindSafe<F>> },
        /// The inner layer panicked when called.
        Panicked,
    }
}

impl<F: Future<Output = Response>> Future for GuardedFuture<F> {
    type Output = Response;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Response> {
        match self.project() {
            GuardedProj::Running { inner } => inner.poll(cx).map(|r| r.unwrap_or_else(|_| panicked())),
            GuardedProj::Panicked => std::task::Poll::Ready(panicked()),
        }
    }
}

/// The hit path: a `GET /items/{key}` whose key is fresh in the tier in front (memory) is
/// answered at once, without the router's per-request work (extensions, boxed futures); anything
/// else (a miss, a bad key, a traced request, another route) goes to the router.
pub struct FastHit {
    /// What the handlers share.
    state: Arc<AppState>,
    /// Every route; see [`router`].
    router: Router,
    /// Which endpoints this listener serves: whether it answers `GET /items/{key}` (not the
    /// admin one), and which paths a proxied fast hit may not take.
    surface: Surface,
}

impl FastHit {
    /// A proxied request answered at once ([`crate::proxy::Proxy::answer_now`]), when no
    /// endpoint of this listener takes its path (the router would hand it to the proxy).
    fn proxied_now<B>(&self, request: &http::Request<B>) -> Option<Response> {
        let proxy = self.state.proxy.as_ref()?;
        let own = match labels::Route::of_path(request.uri().path()) {
            labels::Route::Unmatched => false,
            labels::Route::Items | labels::Route::Batch => true,
            _ => self.surface == Surface::All,
        };
        if own {
            return None;
        }
        proxy.answer_now(request)
    }
}

impl<B> Handle<B> for FastHit
where
    B: hyper::body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Future = FastFuture;

    fn handle(&self, request: http::Request<B>) -> FastFuture {
        if self.surface != Surface::Admin
            && let Some(response) =
                items::answer_now(&self.state, &request).or_else(|| self.proxied_now(&request))
        {
            return FastFuture::Now {
                response: Some(response),
            };
        }
        let mut router = self.router.clone();
        FastFuture::Routed {
            inner: tower::Service::call(&mut router, request.map(axum::body::Body::new)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`FastHit`]: ready at once, or the router's.
    #[project = FastProj]
    pub enum FastFuture {
        /// A hit answered at once.
        Now { response: Option<Response> },
        /// The router's answer.
        Routed { #[pin] inner: <Router as tower::Service<axum::extract::Request>>::Future },
    }
}

impl Future for FastFuture {
    type Output = Response;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Response> {
        match self.project() {
            FastProj::Now { response } => {
                std::task::Poll::Ready(response.take().expect("a ready answer is polled once"))
            }
            FastProj::Routed { inner } => inner.poll(cx).map(|r| match r {
                Ok(response) => response,
                Err(never) => match never {},
            }),
        }
    }
}

/// The router: every endpoint, and a JSON 404/405 for everything else. Counting and catching
/// panics are [`App`]'s layers around it.
pub fn router(state: Arc<AppState>) -> Router {
    router_for(state, Surface::All)
}

/// The router of a listener that serves `surface`.
pub fn router_for(state: Arc<AppState>, surface: Surface) -> Router {
    match surface {
        Surface::All => all_routes(state),
        Surface::Public => Router::new()
            .route("/items/{key}", get(items::get_item))
            .route("/items:batch", post(batch::get_batch))
            .route("/items/", get(items::empty_key))
            .route("/items", get(items::empty_key))
            .fallback(ops::not_found_or_proxied)
            .method_not_allowed_fallback(ops::method_not_allowed)
            .with_state(state),
        Surface::Admin => Router::new()
            .route("/items/{key}", delete(items::delete_item))
            .route("/items/", delete(items::empty_key))
            .route("/items", delete(items::empty_key))
            .route("/tags/{tag}", delete(tags::delete_tag))
            .route("/tags/", delete(tags::empty_tag))
            .route("/tags", delete(tags::empty_tag))
            .route("/purge", delete(urls::delete_url))
            .route("/health", get(ops::health))
            .route("/livez", get(ops::livez))
            .route("/readyz", get(ops::readyz))
            .route("/metrics", get(ops::metrics))
            .fallback(ops::not_found)
            .method_not_allowed_fallback(ops::method_not_allowed)
            .with_state(state),
    }
}

fn all_routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/items/{key}", get(items::get_item).delete(items::delete_item))
        // A colon, not a slash: `/items/batch` is the key `batch`.
        .route("/items:batch", post(batch::get_batch))
        .route("/items/", get(items::empty_key).delete(items::empty_key))
        .route("/items", get(items::empty_key).delete(items::empty_key))
        .route("/tags/{tag}", delete(tags::delete_tag))
        .route("/purge", delete(urls::delete_url))
        .route("/tags/", delete(tags::empty_tag))
        .route("/tags", delete(tags::empty_tag))
        .route("/health", get(ops::health))
        .route("/livez", get(ops::livez))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found_or_proxied)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{AnyTier, Lifetimes, MemoryTier};
    use crate::origin::{AnyOrigin, Breaker, GuardedOrigin, SimulatedOrigin, Trip};
    use tower::ServiceExt;

    /// The state of a service with a memory tier in front of the simulated origin (no delay).
    fn state() -> Arc<AppState> {
        let metrics = Arc::new(Metrics::detached());
        let tiers = vec![AnyTier::Memory(MemoryTier::new(1 << 20, metrics.clone()))];
        let trip = Trip {
            window: Duration::from_secs(10),
            min_calls: 20,
            rate_percent: 50,
        };
        let origin = GuardedOrigin::new(
            AnyOrigin::Simulated(SimulatedOrigin::new(Duration::ZERO)),
            64,
            Duration::from_secs(2),
            Arc::new(Breaker::new(trip, Duration::from_secs(10))),
            metrics.clone(),
        );
        let life = Lifetimes::fixed(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(5),
        );
        Arc::new(AppState {
            cache: ReadThrough::new(tiers, origin, life, None, metrics.clone()),
            metrics,
            registry: prometheus::Registry::new(),
            admin_token: None,
            max_key_bytes: 512,
            origin_kind: "simulated",
            purge_timeout: Duration::from_secs(10),
            tag_max_bytes: 128,
            request_timeout: Duration::from_secs(30),
            compression_min_bytes: Some(16),
            batch: BatchLimits {
                max_keys: 10,
                max_body_bytes: 1 << 20,
                origin_concurrency: 4,
            },
            body_timeout: Duration::from_secs(10),
            headers: HeaderTables::new(),
            ready: AtomicBool::new(true),
            proxy: None,
        })
    }

    fn get(path: &str, accept_encoding: Option<&str>) -> http::Request<axum::body::Body> {
        let mut r = http::Request::get(path);
        if let Some(coding) = accept_encoding {
            r = r.header("accept-encoding", coding);
        }
        r.body(axum::body::Body::empty()).unwrap()
    }

    async fn parts(response: Response) -> (http::StatusCode, http::HeaderMap, axum::body::Bytes) {
        let (head, body) = response.into_parts();
        let bytes = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
        (head.status, head.headers, bytes)
    }

    #[tokio::test]
    async fn a_hit_answered_at_once_is_the_routers_answer() {
        let state = state();
        let app = App::new(state.clone());
        // A miss goes through the router and stores the key.
        let (status, headers, _) = parts(app.handle(get("/items/k", None)).await).await;
        assert_eq!(
            (status.as_u16(), headers["cache-status"].to_str().unwrap()),
            (200, "cache-layer; fwd=miss; stored")
        );
        for coding in [None, Some("gzip"), Some("br")] {
            let fast = parts(app.handle(get("/items/k", coding)).await).await;
            let routed = parts(
                router(state.clone())
                    .oneshot(get("/items/k", coding))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(fast.0, routed.0, "{coding:?}");
            assert_eq!(fast.2, routed.2, "{coding:?}");
            // The router sets Content-Length itself; on the wire hyper writes it for both from the
            // body's exact length.
            let names = |h: &http::HeaderMap| {
                let mut n: Vec<String> = h
                    .keys()
                    .filter(|k| *k != "content-length")
                    .map(|k| k.to_string())
                    .collect();
                n.sort();
                n
            };
            assert_eq!(names(&fast.1), names(&routed.1), "{coding:?}");
            // Age and the ttl in Cache-Status count seconds: a second may tick between the two.
            let timeless = |v: &http::HeaderValue| -> String {
                let v = v.to_str().unwrap_or_default();
                v.split("; ")
                    .filter(|p| !p.starts_with("ttl="))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            for (name, value) in fast.1.iter().filter(|(n, _)| *n != "age") {
                assert_eq!(
                    Some(timeless(value)),
                    routed.1.get(name).map(timeless),
                    "{name} ({coding:?})"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_panic_anywhere_in_the_stack_is_a_json_500() {
        struct Panics;
        impl Handle<()> for Panics {
            type Future = std::future::Ready<Response>;
            fn handle(&self, _: http::Request<()>) -> Self::Future {
                panic!("at once")
            }
        }
        let guarded = Guarded(Panics);
        let response = guarded.handle(http::Request::new(())).await;
        assert_eq!(response.status(), 500);
        struct PanicsLater;
        impl Handle<()> for PanicsLater {
            type Future = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;
            fn handle(&self, _: http::Request<()>) -> Self::Future {
                Box::pin(async { panic!("while polled") })
            }
        }
        let response = Guarded(PanicsLater).handle(http::Request::new(())).await;
        assert_eq!(response.status(), 500);
    }
}
