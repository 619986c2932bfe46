//! The origin's circuit breaker: when too many of the origin fetches of the last
//! `ORIGIN_BREAKER_WINDOW_SECS` failed (and at least `ORIGIN_BREAKER_MIN_REQUESTS` ran), stop
//! calling the origin for a cool-down, then let one probe through.
//!
//! A time window with a minimum volume (as Envoy's outlier detection and resilience4j do), not a
//! count of consecutive failures: five failing keys among a healthy stream, or five failures
//! alone, say nothing about the origin. What counts as a failure is the caller's call (an origin
//! 4xx is its answer about a key, not a failure), a request counts at most one failure
//! ([`FailureTicket`]), and a key counts at most one failure per window (a client asking for
//! one broken key again and again is one failure), so one client cannot open the circuit for
//! everyone.

use super::labels::BreakerState;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How many slices the window is cut into: outcomes older than the window leave it a slice at a
/// time, so the window is exact to 1/`SLICES` of its length.
const SLICES: usize = 20;

/// Outcomes of the fetches that ended within one slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    /// Which slice of time (since the breaker's start) these counts belong to.
    index: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// A probe went out at `since`.
    HalfOpen {
        since: Instant,
    },
}

/// Keys whose failure was counted, remembered at most this many at once (their slice index):
/// past it, the ones outside the window are forgotten, then all.
const FAILED_KEYS_MAX: usize = 4096;

/// The phase, and while closed the outcomes of the window.
#[derive(Debug)]
struct Inner {
    phase: Phase,
    slices: [Slice; SLICES],
    /// Hashes of the keys whose failure the window counted, with the slice it fell in.
    failed_keys: HashMap<u64, u64>,
}

impl Inner {
    fn closed() -> Inner {
        Inner {
            phase: Phase::Closed,
            slices: [Slice {
                index: u64::MAX,
                ..Slice::default()
            }; SLICES],
            failed_keys: HashMap::new(),
        }
    }
}

/// When the circuit opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trip {
    /// The window the failure rate is taken over (`ORIGIN_BREAKER_WINDOW_SECS`).
    pub window: Duration,
    /// Fewer fetches than this within the window never open the circuit
    /// (`ORIGIN_BREAKER_MIN_REQUESTS`).
    pub min_calls: u32,
    /// Percentage of failed fetches within the window that opens the circuit, 1 to 100
    /// (`ORIGIN_BREAKER_FAILURE_RATE`).
    pub rate_percent: u32,
}

/// One request's right to count a failure: every fetch made for the same request (the keys of a
/// batch) shares one, and only the first failure among them is recorded.
#[derive(Debug, Default)]
pub struct FailureTicket(AtomicBool);

impl FailureTicket {
    /// Whether this failure may be counted (the first of its request).
    fn take(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }
}

/// Circuit breaker over origin fetches. Time is passed in, so unit tests need no clock.
#[derive(Debug)]
pub struct Breaker {
    trip: Trip,
    /// How long the circuit stays open.
    cooldown: Duration,
    /// Time 0 of the slice indices.
    started: Instant,
    /// Length of one slice of the window.
    slice: Duration,
    /// Guarded by a mutex: it is touched once per origin fetch, never on the hit path.
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(trip: Trip, cooldown: Duration) -> Self {
        let window = trip.window.max(Duration::from_millis(SLICES as u64));
        Breaker {
            trip: Trip {
                window,
                min_calls: trip.min_calls.max(1),
                rate_percent: trip.rate_percent.clamp(1, 100),
            },
            cooldown,
            started: Instant::now(),
            slice: window / SLICES as u32,
            inner: Mutex::new(Inner::closed()),
        }
    }

    /// `Ok` when a call may go out now; else how long until one may.
    pub fn allow(&self, now: Instant) -> Result<(), Duration> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.phase {
            Phase::Closed => Ok(()),
            Phase::Open { until } if now >= until => {
                inner.phase = Phase::HalfOpen { since: now };
                Ok(())
            }
            Phase::Open { until } => Err(until - now),
            // A probe that never told how it ended (its request cancelled, a path that forgot
            // to record) would hold the circuit half-open for ever: after a cool-down without
            // word, another probe goes out.
            Phase::HalfOpen { since } if now >= since + self.cooldown => {
                inner.phase = Phase::HalfOpen { since: now };
                Ok(())
            }
            // The probe decides soon; callers retry in a second.
            Phase::HalfOpen { .. } => Err(Duration::from_secs(1)),
        }
    }

    /// Records how an allowed call for the key hashed `key` ended. A failure is counted only if
    /// `ticket` (the request's) has not counted one yet (`None` is a request of its own) and the
    /// key has not failed within the window already.
    pub fn record(&self, success: bool, now: Instant, ticket: Option<&FailureTicket>, key: u64) {
        let index =
            (now.saturating_duration_since(self.started).as_nanos() / self.slice.as_nanos().max(1)) as u64;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = index.saturating_sub(SLICES as u64 - 1);
        let repeated = !success
            && matches!(inner.phase, Phase::Closed)
            && inner.failed_keys.get(&key).is_some_and(|&at| at >= oldest);
        let counted_failure = !success && !repeated && ticket.is_none_or(FailureTicket::take);
        if counted_failure && matches!(inner.phase, Phase::Closed) {
            if inner.failed_keys.len() >= FAILED_KEYS_MAX {
                inner.failed_keys.retain(|_, at| *at >= oldest);
                if inner.failed_keys.len() >= FAILED_KEYS_MAX {
                    inner.failed_keys.clear();
                }
            }
            inner.failed_keys.insert(key, index);
        }
        if !matches!(inner.phase, Phase::Closed) {
            // The probe's outcome (or a call allowed before the circuit opened).
            if success {
                *inner = Inner::closed();
            } else {
                inner.phase = Phase::Open {
                    until: now + self.cooldown,
                };
            }
            return;
        }
        let slices = &mut inner.slices;
        if success || counted_failure {
            let slot = &mut slices[(index % SLICES as u64) as usize];
            if slot.index != index {
                *slot = Slice {
                    index,
                    calls: 0,
                    failures: 0,
                };
            }
            slot.calls += 1;
            slot.failures += u32::from(!success);
            // Sum the slices still inside the window (a success can bring the volume up to the
            // minimum).
            let (calls, failures) = slices
                .iter()
                .filter(|s| s.index != u64::MAX && s.index >= oldest && s.index <= index)
                .fold((0u64, 0u64), |(c, f), s| {
                    (c + u64::from(s.calls), f + u64::from(s.failures))
                });
            if calls >= u64::from(self.trip.min_calls)
                && failures * 100 >= u64::from(self.trip.rate_percent) * calls
            {
                inner.phase = Phase::Open {
                    until: now + self.cooldown,
                };
            }
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.inner.lock().unwrap_or_else(|p| p.into_inner()).phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key never used before: each failure is another key's, unless a test says otherwise.
    fn key() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 32);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn one_key_failing_again_and_again_counts_once_per_window() {
        let b = breaker(10, 20, 50);
        let t0 = Instant::now();
        for _ in 0..100 {
            b.record(false, t0, None, 7);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        // Nineteen other keys failing make twenty failures of twenty calls: open.
        for _ in 0..19 {
            b.record(false, t0, None, key());
        }
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    fn breaker(window_secs: u64, min_calls: u32, rate_percent: u32) -> Breaker {
        let trip = Trip {
            window: Duration::from_secs(window_secs),
            min_calls,
            rate_percent,
        };
        Breaker::new(trip, Duration::from_secs(10))
    }

    #[test]
    fn five_failures_alone_or_among_a_healthy_stream_never_open_it() {
        let b = breaker(10, 20, 50);
        let t0 = Instant::now();
        for _ in 0..5 {
            b.record(false, t0, None, key());
        }
        assert_eq!(
            b.state(t0),
            BreakerState::Closed,
            "5 calls: below the minimum volume"
        );
        for _ in 0..100 {
            b.record(true, t0, None, key());
        }
        for _ in 0..5 {
            b.record(false, t0, None, key());
        }
        assert_eq!(b.state(t0), BreakerState::Closed, "10 of 110 failed");
    }

    #[test]
    fn an_origin_failing_everything_opens_it_within_the_window() {
        let b = breaker(10, 20, 50);
        let t0 = Instant::now();
        for i in 0..19 {
            b.record(false, t0 + Duration::from_millis(i * 100), None, key());
            assert_eq!(b.state(t0), BreakerState::Closed);
        }
        b.record(false, t0 + Duration::from_millis(1900), None, key());
        assert_eq!(b.state(t0 + Duration::from_secs(2)), BreakerState::Open);
    }

    #[test]
    fn failures_older_than_the_window_slide_out() {
        let b = breaker(10, 4, 50);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, t0, None, key());
        }
        // 11 s later the three are outside the window: one more failure is 1 of 1, below 4 calls.
        let later = t0 + Duration::from_secs(11);
        b.record(false, later, None, key());
        assert_eq!(b.state(later), BreakerState::Closed);
        for _ in 0..3 {
            b.record(false, later, None, key());
        }
        assert_eq!(b.state(later), BreakerState::Open);
    }

    #[test]
    fn one_request_counts_one_failure() {
        let b = breaker(10, 2, 50);
        let t0 = Instant::now();
        let ticket = FailureTicket::default();
        b.record(true, t0, None, key());
        for _ in 0..1000 {
            b.record(false, t0, Some(&ticket), key());
        }
        assert_eq!(b.state(t0), BreakerState::Open, "1 failure of 2 calls is 50 %");
        let b = breaker(10, 2, 50);
        for _ in 0..1000 {
            b.record(false, t0, Some(&ticket), key());
        }
        assert_eq!(b.state(t0), BreakerState::Closed, "a spent ticket counts nothing");
    }

    #[test]
    fn probes_after_the_cooldown() {
        let b = breaker(10, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, t0, None, key());
        }
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.allow(t0 + Duration::from_secs(4)), Err(Duration::from_secs(6)));
        // After the cool-down exactly one probe goes through.
        assert_eq!(b.allow(t0 + Duration::from_secs(10)), Ok(()));
        assert!(b.allow(t0 + Duration::from_secs(10)).is_err());
        // A failed probe reopens; a good one closes with an empty window.
        b.record(false, t0 + Duration::from_secs(11), None, key());
        assert_eq!(b.state(t0 + Duration::from_secs(12)), BreakerState::Open);
        assert_eq!(b.allow(t0 + Duration::from_secs(21)), Ok(()));
        b.record(true, t0 + Duration::from_secs(21), None, key());
        assert_eq!(b.state(t0 + Duration::from_secs(21)), BreakerState::Closed);
        b.record(false, t0 + Duration::from_secs(21), None, key());
        assert_eq!(b.state(t0 + Duration::from_secs(21)), BreakerState::Closed);
    }

    #[test]
    fn a_probe_that_never_reports_lets_another_go_after_a_cooldown() {
        let b = breaker(10, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, t0, None, key());
        }
        // The probe goes out and is never heard of again (its request was cancelled).
        assert_eq!(b.allow(t0 + Duration::from_secs(10)), Ok(()));
        assert!(b.allow(t0 + Duration::from_secs(19)).is_err());
        assert_eq!(b.state(t0 + Duration::from_secs(19)), BreakerState::HalfOpen);
        assert_eq!(b.allow(t0 + Duration::from_secs(20)), Ok(()), "another probe");
        assert!(b.allow(t0 + Duration::from_secs(20)).is_err(), "one at a time");
        b.record(true, t0 + Duration::from_secs(20), None, key());
        assert_eq!(b.state(t0 + Duration::from_secs(20)), BreakerState::Closed);
    }
}
