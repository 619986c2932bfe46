//! Every origin fetch passes here: the concurrency limit, the circuit breaker, the deadline, and
//! the origin metrics.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::Semaphore;

use super::{AnyOrigin, Breaker, BreakerState, Fetched, Origin, OriginError};
use crate::telemetry::Metrics;

/// The origin as the cache sees it: bounded, timed and protected.
pub struct GuardedOrigin {
    /// The configured origin.
    origin: AnyOrigin,
    /// `ORIGIN_MAX_CONCURRENCY` permits; a fetch without one is refused, not queued.
    permits: Semaphore,
    /// Deadline of each fetch.
    timeout: Duration,
    /// Stops calls to a failing origin.
    breaker: Arc<Breaker>,
    /// Origin outcome counters and latency.
    metrics: Arc<Metrics>,
}

impl GuardedOrigin {
    /// Wraps `origin`.
    pub fn new(
        origin: AnyOrigin,
        max_concurrency: usize,
        timeout: Duration,
        breaker: Breaker,
        metrics: Arc<Metrics>,
    ) -> Self {
        let breaker = Arc::new(breaker);
        let gauge_breaker = breaker.clone();
        crate::telemetry::observe_gauge(
            metrics.meter(),
            "origin_breaker_state",
            "The origin circuit: 0 closed, 1 open, 2 half-open.",
            move || gauge_breaker.state(Instant::now()).as_gauge(),
        );
        GuardedOrigin {
            origin,
            permits: Semaphore::new(max_concurrency),
            timeout,
            breaker,
            metrics,
        }
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state(Instant::now())
    }

    /// Fetches `key` if a permit is free and the circuit lets the call through.
    pub async fn fetch(&self, key: &str, traceparent: Option<String>) -> Result<Fetched, OriginError> {
        let Ok(_permit) = self.permits.try_acquire() else {
            self.metrics.origin("rejected", None);
            return Err(OriginError::Saturated);
        };
        if let Err(retry_after) = self.breaker.allow(Instant::now()) {
            self.metrics.origin("rejected", None);
            return Err(OriginError::CircuitOpen { retry_after });
        }
        let started = Instant::now();
        // A panicking origin must still report to the breaker, or a half-open circuit would
        // wait for its probe forever.
        let fetch = AssertUnwindSafe(self.origin.fetch(key, traceparent)).catch_unwind();
        let result = match tokio::time::timeout(self.timeout, fetch).await {
            Ok(Ok(result)) => result,
            Ok(Err(_panic)) => Err(OriginError::Transport("the origin client panicked".to_owned())),
            Err(_) => Err(OriginError::Timeout(self.timeout)),
        };
        self.breaker.record(result.is_ok(), Instant::now());
        let outcome = match &result {
            Ok(Fetched::Value(_)) => "ok",
            Ok(Fetched::NotFound) => "not_found",
            Err(e) => {
                // Once per failed fetch, with the detail a client never sees (a redirect's
                // `Location` is not logged either: only its status).
                tracing::warn!(error = %e.detail(), "origin fetch failed");
                e.outcome()
            }
        };
        self.metrics.origin(outcome, Some(started.elapsed()));
        result
    }
}
