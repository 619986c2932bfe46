//! The closed sets the origin is observed by (metrics labels and gauges). A leaf: it imports
//! nothing of the crate.

/// How one origin fetch ended: the `outcome` of `origin_requests_total` and the fetch span's
/// `origin.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginOutcome {
    /// A value.
    Ok,
    /// A 404 or 410.
    NotFound,
    /// A `304` to a conditional refresh: the stored value holds, no body travelled.
    NotModified,
    /// Any other failure at the origin.
    Error,
    /// No answer within `ORIGIN_TIMEOUT_MS`.
    Timeout,
    /// Not sent: the circuit is open, or `ORIGIN_MAX_CONCURRENCY` fetches are in flight.
    Rejected,
}

impl OriginOutcome {
    /// Every outcome, for label sets registered at zero.
    pub const ALL: [OriginOutcome; 6] = [
        OriginOutcome::Ok,
        OriginOutcome::NotFound,
        OriginOutcome::NotModified,
        OriginOutcome::Error,
        OriginOutcome::Timeout,
        OriginOutcome::Rejected,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            OriginOutcome::Ok => "ok",
            OriginOutcome::NotFound => "not_found",
            OriginOutcome::NotModified => "not_modified",
            OriginOutcome::Error => "error",
            OriginOutcome::Timeout => "timeout",
            OriginOutcome::Rejected => "rejected",
        }
    }
}

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
    /// Its name in `/health`: `closed`, `open`, `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}
