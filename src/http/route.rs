//! The routes the service answers on, and the layer that counts every request by its matched
//! route (`http_requests_total`, and `request_latency` for single-key `/items` requests): handlers count nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

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

    /// The route of a template the router matched.
    fn of_template(template: &str) -> Route {
        match template {
            "/items/{key}" | "/items/" | "/items" => Route::Items,
            "/tags/{tag}" | "/tags/" | "/tags" => Route::Tags,
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

/// Counts every request by the route the router matched (set on each route by
/// `Router::layer`, so a 405 counts under its route and the fallback under `unmatched`).
#[derive(Clone)]
pub struct CountLayer {
    /// Where the counts go.
    pub metrics: Arc<Metrics>,
}

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose requests are counted; see [`CountLayer`].
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request> for Counted<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(Route::Unmatched, |m| Route::of_template(m.as_str()));
        CountedFuture {
            inner: self.inner.call(request),
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

impl<F, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let status = response.status();
            // A 405 is the router's answer, not the route's work: counted, not timed.
            let took = (status != StatusCode::METHOD_NOT_ALLOWED).then(|| this.started.elapsed());
            this.metrics.request(*this.route, status.as_u16(), took);
        }
        Poll::Ready(result)
    }
}
