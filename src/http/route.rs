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
use super::labels::Route;
use crate::telemetry::Metrics;

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
