//! The origin's circuit breaker: after N consecutive failures, or when too many of the last W
//! fetches failed, stop calling the origin for a cool-down, then let one probe through.
//!
//! The consecutive count catches an origin that is down; the window catches one that fails
//! every other call, which never strings N failures together and would otherwise be hammered.

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
    Closed {
        /// Failures since the last success.
        failures: u32,
        /// The last `recorded` outcomes (at most the window's size), newest in bit 0; 1 = failed.
        window: u64,
        recorded: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen,
}

impl Inner {
    const CLOSED: Inner = Inner::Closed {
        failures: 0,
        window: 0,
        recorded: 0,
    };
}

/// When the circuit opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trip {
    /// Consecutive failures that open the circuit (`ORIGIN_BREAKER_FAILURES`).
    pub consecutive: u32,
    /// Size of the sliding window of recent fetches, 2 to 64 (`ORIGIN_BREAKER_WINDOW`).
    pub window: u32,
    /// Percentage of failures in a full window that opens the circuit, 1 to 100, or 0 for no
    /// window (`ORIGIN_BREAKER_FAILURE_RATE`).
    pub rate_percent: u32,
}

/// Circuit breaker over origin fetches. Time is passed in, so unit tests need no clock.
#[derive(Debug)]
pub struct Breaker {
    trip: Trip,
    /// How long the circuit stays open.
    cooldown: Duration,
    /// Guarded by a mutex: it is touched once per origin fetch, never on the hit path.
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(trip: Trip, cooldown: Duration) -> Self {
        Breaker {
            trip: Trip {
                window: trip.window.clamp(2, 64),
                ..trip
            },
            cooldown,
            inner: Mutex::new(Inner::CLOSED),
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
        let Inner::Closed {
            failures,
            window,
            recorded,
        } = *inner
        else {
            // The probe's outcome (or a call allowed before the circuit opened).
            *inner = if success {
                Inner::CLOSED
            } else {
                Inner::Open {
                    until: now + self.cooldown,
                }
            };
            return;
        };
        let size = self.trip.window;
        let mask = if size == 64 { u64::MAX } else { (1 << size) - 1 };
        let window = ((window << 1) | u64::from(!success)) & mask;
        let recorded = (recorded + 1).min(size);
        let failures = if success { 0 } else { failures + 1 };
        let rate_tripped = self.trip.rate_percent > 0
            && recorded == size
            && window.count_ones() * 100 >= self.trip.rate_percent * size;
        *inner = if failures >= self.trip.consecutive || rate_tripped {
            Inner::Open {
                until: now + self.cooldown,
            }
        } else {
            Inner::Closed {
                failures,
                window,
                recorded,
            }
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

    fn breaker(consecutive: u32, window: u32, rate_percent: u32) -> Breaker {
        let trip = Trip {
            consecutive,
            window,
            rate_percent,
        };
        Breaker::new(trip, Duration::from_secs(10))
    }

    #[test]
    fn opens_when_too_many_of_the_last_fetches_failed() {
        let b = breaker(5, 10, 50);
        let t0 = Instant::now();
        // Every other fetch fails: never two failures in a row.
        for i in 0..9 {
            b.record(i % 2 == 1, t0);
            assert_eq!(b.state(t0), BreakerState::Closed, "after {} outcomes", i + 1);
        }
        // The tenth fills the window: 5 of 10 failed.
        b.record(true, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        // After a good probe the window starts empty again.
        assert_eq!(b.allow(t0 + Duration::from_secs(10)), Ok(()));
        b.record(true, t0 + Duration::from_secs(10));
        for _ in 0..4 {
            b.record(false, t0);
            b.record(true, t0);
        }
        assert_eq!(
            b.state(t0),
            BreakerState::Closed,
            "4 of 8: the window is not full"
        );
    }

    #[test]
    fn a_window_below_the_rate_stays_closed_and_old_failures_slide_out() {
        let b = breaker(100, 4, 75);
        let t0 = Instant::now();
        for ok in [false, false, true, true, false, true, false, true] {
            b.record(ok, t0);
            assert_eq!(b.state(t0), BreakerState::Closed);
        }
        // F T F F: 3 of the last 4 failed.
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let b = breaker(3, 20, 0);
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
