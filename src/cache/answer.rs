//! What the cache answers for a key, and how it came by it: the outcomes that decide `source`,
//! `Cache-Status`, span attributes and counters.

pub use super::labels::{CoalesceScope, NotStored, StaleReason};

use std::sync::Arc;

use bytes::Bytes;

use super::coalesce::Abandoned;
use super::entry::Entry;
use super::tier::TierName;
use crate::origin::OriginError;

/// What this cache asked the origin for, as RFC 9211's `fwd` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing usable was stored (`fwd=miss`).
    Miss,
    /// A stored entry was stale and had to be revalidated first (`fwd=stale`).
    Stale,
}

/// How an answer was produced; decides `source`, `Cache-Status` and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// A fresh entry from a tier.
    Hit {
        /// The tier that held it.
        tier: TierName,
        /// Whole seconds of freshness left.
        ttl_secs: u64,
    },
    /// A stale entry.
    Stale {
        /// Why it was served.
        reason: StaleReason,
        /// Whole seconds past freshness.
        over_secs: u64,
    },
    /// A remembered origin 404.
    NegativeHit,
    /// A stale entry of `tier`, revalidated with the origin in the foreground and unchanged (the
    /// origin answered `304`): served from the cache, renewed.
    Revalidated {
        /// The tier that held it.
        tier: TierName,
    },
    /// Fetched from the origin for this request, or (`collapsed`) by another request or replica.
    Fetched {
        /// Whose fetch this request waited on, when not its own.
        collapsed: Option<CoalesceScope>,
        /// A miss, or a stale entry that the origin replaced.
        forward: Forward,
        /// Why no tier holds it (the origin forbade it, every tier declined it, or a purge
        /// overtook the fetch): it answered the requests that waited, nothing more.
        not_stored: Option<NotStored>,
    },
}

impl AnswerKind {
    /// The span attribute `cache.outcome`: hit, stale, miss or coalesced.
    pub fn outcome(self) -> &'static str {
        match self {
            AnswerKind::Hit { .. } | AnswerKind::NegativeHit | AnswerKind::Revalidated { .. } => "hit",
            AnswerKind::Stale { .. } => "stale",
            AnswerKind::Fetched { collapsed: None, .. } => "miss",
            AnswerKind::Fetched {
                collapsed: Some(_), ..
            } => "coalesced",
        }
    }
}

/// What the cache answered for a key.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The entry (a value, or a remembered 404 when `entry.negative`).
    pub entry: Arc<Entry>,
    /// How it was produced.
    pub kind: AnswerKind,
    /// When (ms since the epoch), for `Age`.
    pub now_ms: u64,
    /// For an answer from a fetch: the body it answers with (`"source":"origin"`), made once
    /// and shared by the fetching request and every request coalesced on it.
    pub fetched: Option<Arc<FetchedBody>>,
}

/// The body of a fetch's answers (`"source":"origin"`, which a hit's body is not): identity
/// and each compressed form made once per fetch, whatever the number of coalesced requests.
#[derive(Debug, Default)]
pub struct FetchedBody {
    identity: std::sync::OnceLock<Bytes>,
    compressed: super::encoding::Compressions,
}

impl FetchedBody {
    /// The body as it is.
    pub fn identity(&self, entry: &Entry) -> Bytes {
        self.identity.get_or_init(|| entry.origin_body()).clone()
    }

    /// The body in `coding`, made once (off the async workers when long); `None` when the
    /// compression queue had no room for it (answer identity).
    pub async fn compressed(&self, entry: &Entry, coding: super::encoding::Coding) -> Option<Bytes> {
        self.compressed.get(coding, || self.identity(entry)).await
    }
}

/// Why no answer could be given.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The origin failed and nothing servable was cached.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The fetch another replica made of the key, which this one waited for through the fleet
    /// lock, failed at the origin (an answer about the key, see [`OriginError::shared`]): this
    /// request answers with that failure, as if it were its own, without a fetch of its own.
    /// Kept apart from `Origin` so it is counted as a wait on the fleet, not as a fetch.
    #[error("{0} (to the fetch another replica made, which this one waited for)")]
    Shared(OriginError),
    /// The fetch task ended without a result.
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
    /// The answer waited on an origin fetch for longer than `REQUEST_TIMEOUT_SECS`.
    #[error("the request took longer than REQUEST_TIMEOUT_SECS")]
    TimedOut,
}
