//! Where values come from on a miss: the `Origin` seam, its two implementations, and the guard
//! (concurrency limit, deadline, circuit breaker) every fetch passes through.

mod breaker;
mod cache_headers;
mod guard;
mod http;
pub(crate) mod labels;
mod simulated;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use breaker::{Breaker, FailureTicket, Trip};
pub use cache_headers::{
    CacheHeaders, Directives, MAX_DELTA_SECONDS, MAX_VALIDATOR_BYTES, Stated, TagRules, Validators,
    delta_seconds, http_date_ms, opaque_tag, parse_directives,
};
pub use guard::GuardedOrigin;
pub use http::{HttpOrigin, UrlTemplate};
pub use labels::{BreakerState, OriginOutcome};
pub use simulated::SimulatedOrigin;

/// What the origin said about a key, with what its headers said about caching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The value, as JSON.
    Value(Bytes, CacheHeaders),
    /// The origin answered 404 or 410.
    NotFound(CacheHeaders),
    /// The origin answered `304` to a conditional refresh: the stored value still holds.
    NotModified(CacheHeaders),
}

/// Why a fetch produced no answer; none of these is cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// The origin answered with a status other than 2xx, 3xx, 404 or 410.
    #[error("the origin answered {0}")]
    Status(u16),
    /// The origin answered a redirect (a 3xx other than 304). It is never followed: the cache
    /// fetches exactly the URL its template names (no SSRF through a `Location`).
    #[error("the origin answered {0}; redirects are not followed")]
    Redirect(u16),
    /// The origin could not be reached or broke off. The detail (which names the URL) goes to
    /// the log only, never to a client.
    #[error("the origin could not be reached")]
    Transport(String),
    /// The body was larger than `ORIGIN_MAX_BODY_BYTES`.
    #[error("the origin's body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body did not decode in the `Content-Encoding` the origin named (a corrupt gzip).
    #[error("the origin's body does not decode in its Content-Encoding")]
    BadEncoding,
    /// The origin said its body was JSON, and it was not.
    #[error("the origin's JSON body does not parse")]
    BadJson,
    /// No answer within `ORIGIN_TIMEOUT_MS`.
    #[error("the origin did not answer within {0:?}")]
    Timeout(Duration),
    /// The circuit is open: the origin is not being called for `retry_after`.
    #[error("the origin is failing; its circuit is open")]
    CircuitOpen {
        /// Until the circuit lets a probe through.
        retry_after: Duration,
    },
    /// `ORIGIN_MAX_CONCURRENCY` fetches are already in flight.
    #[error("too many origin requests are in flight")]
    Saturated,
    /// This process could not open a connection to the origin: it has no file descriptor left
    /// (`EMFILE`/`ENFILE`). Its own trouble, not the origin's: the circuit does not count it.
    #[error("this service has no file descriptor left to reach the origin with")]
    OutOfDescriptors,
}

impl OriginError {
    /// What the log says about this error: the client-facing sentence plus, for a transport
    /// error, the client library's detail (which may name the origin's address).
    pub fn detail(&self) -> String {
        match self {
            OriginError::Transport(detail) => format!("{self}: {detail}"),
            other => other.to_string(),
        }
    }

    /// Whether this error says the origin is failing (counts against the circuit breaker): a
    /// 5xx, a 429 (its overload signal), no answer, or no connection. A 4xx, a redirect or a
    /// body this service refuses is the origin's answer about one key, not a failure of the
    /// origin; counting those would let one client open the circuit for everyone.
    pub fn is_origin_failure(&self) -> bool {
        match self {
            OriginError::Status(status) => *status >= 500 || *status == 429,
            OriginError::Transport(_) | OriginError::Timeout(_) => true,
            OriginError::Redirect(_)
            | OriginError::TooLarge(_)
            | OriginError::BadJson
            | OriginError::BadEncoding
            | OriginError::CircuitOpen { .. }
            | OriginError::Saturated
            | OriginError::OutOfDescriptors => false,
        }
    }

    /// This error in a word another replica reads back with [`OriginError::from_shared`], when
    /// it is what the origin itself answered about the key, and so what every replica would get
    /// now: a status (but 429, 502, 503 and 504), a redirect, a body that does not decode or
    /// does not parse. The fleet lock's waiters answer with it instead of fetching in turn.
    /// `None` when the failure may lie between this replica and the origin, or in this
    /// replica's own settings or state: no connection, no answer in time (a partition, a wrong
    /// `ORIGIN_URL`, an overloaded holder), a 429 (a limit on this client), a 502/503/504 (a
    /// gateway or sidecar on the way may have said it), a body over this replica's
    /// `ORIGIN_MAX_BODY_BYTES`, its circuit, its concurrency limit, its file descriptors. Then
    /// the next replica to fetch may well succeed: one replica's fault must not fail the fleet.
    pub fn shared(&self) -> Option<String> {
        Some(match self {
            OriginError::Status(429 | 502 | 503 | 504) => return None,
            OriginError::Status(code) => format!("status {code}"),
            OriginError::Redirect(code) => format!("redirect {code}"),
            OriginError::BadEncoding => "bad-encoding".to_owned(),
            OriginError::BadJson => "bad-json".to_owned(),
            OriginError::Transport(_)
            | OriginError::Timeout(_)
            | OriginError::TooLarge(_)
            | OriginError::CircuitOpen { .. }
            | OriginError::Saturated
            | OriginError::OutOfDescriptors => return None,
        })
    }

    /// The error another replica named with [`OriginError::shared`]; `None` for a word this
    /// version does not know.
    pub fn from_shared(word: &str) -> Option<Self> {
        let (kind, arg) = word.split_once(' ').unwrap_or((word, ""));
        let number = || arg.parse::<u64>().ok();
        Some(match kind {
            "status" => OriginError::Status(u16::try_from(number()?).ok()?),
            "redirect" => OriginError::Redirect(u16::try_from(number()?).ok()?),
            "bad-encoding" => OriginError::BadEncoding,
            "bad-json" => OriginError::BadJson,
            _ => return None,
        })
    }

    /// The outcome this error counts as.
    pub fn outcome(&self) -> OriginOutcome {
        match self {
            OriginError::Timeout(_) => OriginOutcome::Timeout,
            OriginError::CircuitOpen { .. } | OriginError::Saturated | OriginError::OutOfDescriptors => {
                OriginOutcome::Rejected
            }
            _ => OriginOutcome::Error,
        }
    }
}

/// A source of values. `fetch` is called at most once per key at a time per process. The seam
/// the cache is generic over: the service plugs in [`AnyOrigin`], unit tests an origin they gate
/// and count.
pub trait Origin: Send + Sync + 'static {
    /// Fetches `key`'s value; `traceparent` is the W3C header of the fetch span, when traced.
    /// With `validators` (a refresh of a stored value), the request is conditional and the
    /// origin may answer [`Fetched::NotModified`].
    fn fetch(
        &self,
        key: &str,
        traceparent: Option<String>,
        validators: Option<&Validators>,
    ) -> impl Future<Output = Result<Fetched, OriginError>> + Send;
}

/// The configured origin: an enum rather than `dyn Origin`, the set being closed.
pub enum AnyOrigin {
    /// `"value_for_{key}"` after `ORIGIN_LATENCY_MS`.
    Simulated(SimulatedOrigin),
    /// An HTTP API.
    Http(HttpOrigin),
}

impl Origin for AnyOrigin {
    async fn fetch(
        &self,
        key: &str,
        traceparent: Option<String>,
        validators: Option<&Validators>,
    ) -> Result<Fetched, OriginError> {
        match self {
            AnyOrigin::Simulated(o) => o.fetch(key, traceparent, validators).await,
            AnyOrigin::Http(o) => o.fetch(key, traceparent, validators).await,
        }
    }
}

impl OriginOutcome {
    /// The outcome of a fetch's result.
    pub fn of(result: &Result<Fetched, OriginError>) -> OriginOutcome {
        match result {
            Ok(Fetched::Value(..)) => OriginOutcome::Ok,
            Ok(Fetched::NotFound(_)) => OriginOutcome::NotFound,
            Ok(Fetched::NotModified(_)) => OriginOutcome::NotModified,
            Err(e) => e.outcome(),
        }
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    #[test]
    fn what_the_origin_answered_is_shared_and_what_may_be_this_replicas_own_is_not() {
        for e in [
            OriginError::Status(500),
            OriginError::Status(501),
            OriginError::Status(403),
            OriginError::Redirect(302),
            OriginError::BadEncoding,
            OriginError::BadJson,
        ] {
            let word = e.shared().expect("the origin's answer");
            assert!(!word.contains('\n'), "{word:?}");
            assert_eq!(OriginError::from_shared(&word), Some(e));
        }
        for e in [
            OriginError::Status(429),
            OriginError::Status(502),
            OriginError::Status(503),
            OriginError::Status(504),
            OriginError::Transport("dns: no such host origin.internal".into()),
            OriginError::Timeout(Duration::from_millis(2500)),
            OriginError::TooLarge(1 << 20),
            OriginError::Saturated,
            OriginError::OutOfDescriptors,
            OriginError::CircuitOpen {
                retry_after: Duration::from_secs(1),
            },
        ] {
            assert_eq!(e.shared(), None, "{e:?}");
        }
        assert_eq!(OriginError::from_shared("status 99999"), None);
        assert_eq!(OriginError::from_shared("timeout 2500"), None);
        assert_eq!(OriginError::from_shared("a word from the future"), None);
    }
}
