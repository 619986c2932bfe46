//! Running out of file descriptors: telling it from other failures, and getting one back.
//!
//! Why a module of its own: the open-file limit (`RLIMIT_NOFILE`) is shared by the client
//! connections the server accepts and the connections the origins' clients open. When it is
//! reached, the one descriptor that can be given back at once is an idle client connection's,
//! and the server owns those. The server answers an `accept` that failed this way by closing
//! its oldest idle connection; an origin's connect that failed this way asks the same through
//! [`Relief`], so a miss is fetched rather than refused while kept-alive clients sit idle. This
//! leaf lets both sides share the test and the hand-over without the origin side depending on
//! the server.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How many times a fetch that found no descriptor asks for one and tries again.
const RETRIES: usize = 3;

/// How long a closed idle connection's task is given to let its socket go before the retry
/// (the close is that task's next step; under load it may wait for a worker).
const CLOSE_WAIT: Duration = Duration::from_millis(5);

/// Whether `error` is the process or the system out of file descriptors (`EMFILE`/`ENFILE`).
pub fn is_exhaustion(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether `error` or one of its causes is [`is_exhaustion`]: then a connection could not even
/// be attempted, and whoever was to be reached is not to blame.
pub fn caused_by_exhaustion(error: &(dyn std::error::Error + 'static)) -> bool {
    any_io_cause(error, is_exhaustion)
}

/// Whether `error` or one of its causes is an I/O error that `which` picks.
fn any_io_cause(error: &(dyn std::error::Error + 'static), which: impl Fn(&std::io::Error) -> bool) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>().is_some_and(&which) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// How close to the open-file limit counts as out of descriptors for a failure whose causes do
/// not say (other requests may free a few between the failure and the look).
const NEAR_LIMIT: usize = 16;

/// Whether this process is out of descriptors, or within [`NEAR_LIMIT`] of its limit, now. For
/// a failure whose causes do not say why: a host name's lookup under `EMFILE` fails as "name or
/// service not known" (the resolver could not open its files or socket either), and by the time
/// it is looked at, other requests may have given back a descriptor or two.
pub fn exhausted_now() -> bool {
    let Some(limit) = soft_limit() else {
        return false;
    };
    match std::fs::read_dir("/proc/self/fd") {
        Ok(open) => open.count() + NEAR_LIMIT >= limit,
        Err(e) => is_exhaustion(&e),
    }
}

/// The open-file soft limit, if it can be read and is finite.
fn soft_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (read == 0 && lim.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

/// Whether a request to an origin failed for want of a descriptor: its causes say so, or it
/// failed to connect (a lookup included) without a system error of its own (a refused or reset
/// connection says what it is) while none, or nearly none, is left.
pub fn failed_for_want(error: &reqwest::Error) -> bool {
    // A system error among the causes (`ECONNREFUSED`, …) says what the failure was.
    caused_by_exhaustion(error)
        || (error.is_connect() && !any_io_cause(error, |io| io.raw_os_error().is_some()) && exhausted_now())
}

/// A request to an origin that got no answer: the error, and whether it was for want of a
/// descriptor (judged once, when it failed: a second look later may see another state).
#[derive(Debug)]
pub struct SendFailed {
    /// The client's error.
    pub error: reqwest::Error,
    /// No descriptor was left to connect with (or to look the host up with).
    pub out_of_descriptors: bool,
}

/// What holds client connections that can be closed to free a descriptor (the server's
/// connection registry).
pub trait IdleConnections: Send + Sync {
    /// Closes the oldest connection with no request in flight nor on its way; `false` when
    /// there is none.
    fn close_oldest_idle(&self) -> bool;
}

/// The hand-over between the origins' clients and the servers: the servers register their
/// connections, a fetch that found no descriptor asks for one. Cheap to clone; a server that
/// ended is skipped (held weakly).
#[derive(Clone, Default)]
pub struct Relief {
    holders: Arc<Mutex<Vec<Weak<dyn IdleConnections>>>>,
}

impl Relief {
    /// Registers `holder`'s idle connections as descriptors that may be given back.
    pub fn add(&self, holder: Weak<dyn IdleConnections>) {
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        holders.retain(|h| h.strong_count() > 0);
        holders.push(holder);
    }

    /// Closes one idle client connection (the first holder's with one) and gives its task a
    /// moment to let the socket go; whether one was closed.
    pub async fn free_one(&self) -> bool {
        let closed = {
            let holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
            holders
                .iter()
                .filter_map(Weak::upgrade)
                .any(|h| h.close_oldest_idle())
        };
        if closed {
            tracing::debug!(
                "an idle client connection closed to free a descriptor for an origin's connection"
            );
            tokio::time::sleep(CLOSE_WAIT).await;
        }
        closed
    }

    /// Sends `request`; when no descriptor was left to connect with, frees one (an idle
    /// client connection) and sends again, up to `RETRIES` times. Only a request that can be
    /// sent twice is retried (a streamed body cannot); what is still an exhaustion is the
    /// caller's to answer, as the error says.
    pub async fn send(&self, mut request: reqwest::RequestBuilder) -> Result<reqwest::Response, SendFailed> {
        let mut retries = RETRIES;
        loop {
            let again = if retries > 0 { request.try_clone() } else { None };
            let error = match request.send().await {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            let out_of_descriptors = failed_for_want(&error);
            match again {
                Some(next) if out_of_descriptors && self.free_one().await => {
                    request = next;
                    retries -= 1;
                }
                _ => {
                    return Err(SendFailed {
                        error,
                        out_of_descriptors,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Idle(AtomicUsize);

    impl IdleConnections for Idle {
        fn close_oldest_idle(&self) -> bool {
            self.0
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        }
    }

    #[test]
    fn exhaustion_is_told_through_a_chain_of_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapped(#[source] std::io::Error);
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_exhaustion(&emfile));
        assert!(caused_by_exhaustion(&Wrapped(emfile)));
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(!caused_by_exhaustion(&Wrapped(refused)));
    }

    #[tokio::test]
    async fn relief_closes_idle_connections_while_there_are_some_and_skips_ended_servers() {
        let relief = Relief::default();
        let ended: Arc<dyn IdleConnections> = Arc::new(Idle(AtomicUsize::new(5)));
        relief.add(Arc::downgrade(&ended));
        drop(ended);
        let live: Arc<dyn IdleConnections> = Arc::new(Idle(AtomicUsize::new(2)));
        relief.add(Arc::downgrade(&live));
        assert!(relief.free_one().await);
        assert!(relief.free_one().await);
        assert!(!relief.free_one().await, "no idle connection is left");
        assert_eq!(
            relief.holders.lock().unwrap().len(),
            1,
            "the ended server was let go"
        );
    }
}
