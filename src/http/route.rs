//! The routes the service answers on, and the layer that counts every request by its route
//! (`http_requests_total`, and `request_latency` for single-key `/items` requests): handlers
//! count nothing. It is the outermost layer of [`super::App`], so every request is counted,
//! the ones the hit path answers at once included.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::Response;
use pin_project_lite::pin_project;

use super::Handle;
use crate::telemetry::Metrics;

/// The routes `http_requests_total` knows; the label is the route template, never the raw path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/items/{key}` (and `/items`, `/items/`, which answer that the key is empty).
    Items,
    /// `/tags/{tag}` (and `/tags`, `/tags/`).
    Tags,
    /// `/items:batch`: many keys in one request.
    Batch,
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
    /// Every route, for label sets registered at zero.
    pub const ALL: [Route; 8] = [
        Route::Items,
        Route::Tags,
        Route::Batch,
        Route::Health,
        Route::Livez,
        Route::Readyz,
        Route::Metrics,
        Route::Unmatched,
    ];

    /// The path template the router registers for this route (the `route` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Items => "/items/{key}",
            Route::Tags => "/tags/{tag}",
            Route::Batch => "/items:batch",
            Route::Health => "/health",
            Route::Livez => "/livez",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Unmatched => "unmatched",
        }
    }

    /// The route the router matches `path` to, by the same rules (one segment after
    /// `/items/` or `/tags/`, the other routes exactly), so requests are counted by route
    /// outside the router.
    pub fn of_path(path: &str) -> Route {
        let one_segment = |rest: &str| !rest.contains('/');
        if let Some(rest) = path.strip_prefix("/items/") {
            return if one_segment(rest) {
                Route::Items
            } else {
                Route::Unmatched
            };
        }
        if let Some(rest) = path.strip_prefix("/tags/") {
            return if one_segment(rest) {
                Route::Tags
            } else {
                Route::Unmatched
            };
        }
        match path {
            "/items" => Route::Items,
            "/tags" => Route::Tags,
            "/items:batch" => Route::Batch,
            "/health" => Route::Health,
            "/livez" => Route::Livez,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            _ => Route::Unmatched,
        }
    }
}

/// The `status_class` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx.
    Success,
    /// 3xx.
    Redirection,
    /// 4xx.
    ClientError,
    /// 5xx (and anything out of range).
    ServerError,
}

impl StatusClass {
    /// Every class, for label sets registered at zero.
    pub const ALL: [StatusClass; 4] = [
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    /// The class of `status`.
    pub fn of(status: u16) -> StatusClass {
        match status {
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

/// Counts every request by its route (a 405 under the route of its path, anything the router
/// does not route under `unmatched`), around `inner`.
pub struct Counted<S> {
    /// What answers.
    pub inner: S,
    /// Where the counts go.
    pub metrics: Arc<Metrics>,
}

impl<S: Handle<B>, B> Handle<B> for Counted<S> {
    type Future = CountedFuture<S::Future>;

    fn handle(&self, request: http::Request<B>) -> Self::Future {
        let route = Route::of_path(request.uri().path());
        CountedFuture {
            inner: self.inner.handle(request),
            route,
            started: Instant::now(),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project! {
    /// The response of a counted request, counted when it is ready.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        route: Route,
        started: Instant,
        metrics: Arc<Metrics>,
    }
}

impl<F: Future<Output = Response>> Future for CountedFuture<F> {
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx));
        let status = response.status();
        // A 405 is the router's answer, not the route's work: counted, not timed.
        let took = (status != StatusCode::METHOD_NOT_ALLOWED).then(|| this.started.elapsed());
        this.metrics.request(*this.route, status.as_u16(), took);
        Poll::Ready(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_counted_under_the_route_the_router_matches() {
        for (path, route) in [
            ("/items/k", Route::Items),
            ("/items/", Route::Items),
            ("/items", Route::Items),
            ("/items/a/b", Route::Unmatched),
            ("/items:batch", Route::Batch),
            ("/tags/t", Route::Tags),
            ("/tags", Route::Tags),
            ("/tags/a/b", Route::Unmatched),
            ("/health", Route::Health),
            ("/healthz", Route::Unmatched),
            ("/", Route::Unmatched),
        ] {
            assert_eq!(Route::of_path(path), route, "{path}");
        }
    }
}
