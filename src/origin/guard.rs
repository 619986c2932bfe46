//! Every origin fetch passes here: the concurrency limit, the circuit breaker, the deadline, and
//! the origin metrics.

use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::Semaphore;

use super::{
    AnyOrigin, Breaker, BreakerState, FailureTicket, Fetched, Origin, OriginError, OriginOutcome, Validators,
};
use crate::telemetry::Metrics;

/// The origin as the cache sees it: bounded, timed and protected.
pub struct GuardedOrigin<O = AnyOrigin> {
    /// The configured origin.
    origin: O,
    /// `ORIGIN_MAX_CONCURRENCY` permits; a fetch without one is refused, not queued.
    permits: Semaphore,
    /// How many permits there are.
    max_concurrency: usize,
    /// Deadline of each fetch.
    timeout: Duration,
    /// Stops calls to a failing origin.
    breaker: Arc<Breaker>,
    /// Hashes keys for the breaker (which counts one failure per key and window).
    key_hasher: std::hash::RandomState,
    /// Origin outcome counters and latency.
    metrics: Arc<Metrics>,
}

impl<O: Origin> GuardedOrigin<O> {
    /// Wraps `origin`.
    pub fn new(
        origin: O,
        max_concurrency: usize,
        timeout: Duration,
        breaker: Arc<Breaker>,
        metrics: Arc<Metrics>,
    ) -> Self {
        GuardedOrigin {
            origin,
            permits: Semaphore::new(max_concurrency),
            max_concurrency,
            timeout,
            breaker,
            key_hasher: std::hash::RandomState::new(),
            metrics,
        }
    }

    /// `ORIGIN_MAX_CONCURRENCY`: fetches in flight at most.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state(Instant::now())
    }

    /// Fetches `key` if a permit is free and the circuit lets the call through. The outcome is
    /// counted and recorded on the current span (the fetch span) as `origin.outcome`. A
    /// failure counts against the breaker only if `ticket` (the request's, shared by every
    /// fetch a batch makes) has not counted one yet.
    pub async fn fetch(
        &self,
        key: &str,
        traceparent: Option<String>,
        validators: Option<&Validators>,
        ticket: Option<&FailureTicket>,
    ) -> Result<Fetched, OriginError> {
        let result = self.guarded(key, traceparent, validators, ticket).await;
        tracing::Span::current().record("origin.outcome", OriginOutcome::of(&result).as_str());
        result
    }

    async fn guarded(
        &self,
        key: &str,
        traceparent: Option<String>,
        validators: Option<&Validators>,
        ticket: Option<&FailureTicket>,
    ) -> Result<Fetched, OriginError> {
        let Ok(_permit) = self.permits.try_acquire() else {
            self.metrics.origin(OriginOutcome::Rejected, None);
            return Err(OriginError::Saturated);
        };
        if let Err(retry_after) = self.breaker.allow(Instant::now()) {
            self.metrics.origin(OriginOutcome::Rejected, None);
            return Err(OriginError::CircuitOpen { retry_after });
        }
        let started = Instant::now();
        // A panicking origin must still report to the breaker, or a half-open circuit would
        // wait for its probe forever.
        let fetch = AssertUnwindSafe(self.origin.fetch(key, traceparent, validators)).catch_unwind();
        let result = match tokio::time::timeout(self.timeout, fetch).await {
            Ok(Ok(result)) => result,
            Ok(Err(_panic)) => Err(OriginError::Transport("the origin client panicked".to_owned())),
            Err(_) => Err(OriginError::Timeout(self.timeout)),
        };
        let failed = result.as_ref().err().is_some_and(OriginError::is_origin_failure);
        // A fetch that could not even connect for want of a descriptor says nothing about the
        // origin either way (a half-open circuit's probe then goes again after a cool-down).
        if !matches!(result, Err(OriginError::OutOfDescriptors)) {
            self.breaker
                .record(!failed, Instant::now(), ticket, self.key_hasher.hash_one(key));
        }
        if let Err(e) = &result {
            // Once per failed fetch, with the detail a client never sees (a redirect's
            // `Location` is not logged either: only its status).
            tracing::warn!(error = %e.detail(), "origin fetch failed");
        }
        self.metrics
            .origin(OriginOutcome::of(&result), Some(started.elapsed()));
        result
    }
}
