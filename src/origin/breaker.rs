//! The origin's circuit breaker: after N consecutive failures, stop calling it for a cool-down,
//! then let one probe through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state, as the `origin_breaker_state` gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe is in flight; its outcome closes or reopens the circuit.
    HalfOpen,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// Consecutive-failure circuit breaker. Time is passed in, so unit tests need no clock.
#[derive(Debug)]
pub struct Breaker {
    /// Consecutive failures that open the circuit.
    threshold: u32,
    /// How long the circuit stays open.
    cooldown: Duration,
    /// Guarded by a mutex: it is touched once per origin fetch, never on the hit path.
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    /// `Ok` when a call may go out now; else how long until one may.
    pub fn allow(&self, now: Instant) -> Result<(), Duration> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match *inner {
            Inner::Closed { .. } => Ok(()),
            Inner::Open { until } if now >= until => {
                *inner = Inner::HalfOpen;
                Ok(())
            }
            Inner::Open { until } => Err(until - now),
            // The probe decides soon; callers retry in a second.
            Inner::HalfOpen => Err(Duration::from_secs(1)),
        }
    }

    /// Records how an allowed call ended.
    pub fn record(&self, success: bool, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner = match (&*inner, success) {
            (_, true) => Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, false) if failures + 1 < self.threshold => Inner::Closed {
                failures: failures + 1,
            },
            (_, false) => Inner::Open {
                until: now + self.cooldown,
            },
        };
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match *self.inner.lock().unwrap_or_else(|p| p.into_inner()) {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if now >= until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        b.record(false, t0);
        b.record(true, t0); // a success resets the count
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.allow(t0), Ok(()));
        b.record(false, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.allow(t0 + Duration::from_secs(4)), Err(Duration::from_secs(6)));
        // After the cool-down exactly one probe goes through.
        assert_eq!(b.allow(t0 + Duration::from_secs(10)), Ok(()));
        assert!(b.allow(t0 + Duration::from_secs(10)).is_err());
        // A failed probe reopens; a good one closes.
        b.record(false, t0 + Duration::from_secs(11));
        assert_eq!(b.state(t0 + Duration::from_secs(12)), BreakerState::Open);
        assert_eq!(b.allow(t0 + Duration::from_secs(21)), Ok(()));
        b.record(true, t0 + Duration::from_secs(21));
        assert_eq!(b.state(t0 + Duration::from_secs(21)), BreakerState::Closed);
    }
}
