//! The closed sets the cache is observed by: the values of its metrics labels, span
//! attributes and `Cache-Status` parameters. A leaf: it imports nothing of the crate, so the
//! metrics registry can name these sets without depending on the parts that count them.

/// Which tier; the same strings name it in metrics, spans, `Cache-Status` and `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierName {
    /// The in-process tier.
    Memory,
    /// The local disk tier.
    Disk,
    /// The shared Redis tier.
    Redis,
}

impl TierName {
    /// Every tier, for label sets registered at zero.
    pub const ALL: [TierName; 3] = [TierName::Memory, TierName::Disk, TierName::Redis];

    /// The name as it appears outside the code.
    pub fn as_str(self) -> &'static str {
        match self {
            TierName::Memory => "memory",
            TierName::Disk => "disk",
            TierName::Redis => "redis",
        }
    }
}

/// Why the memory tier let an entry go on its own (purges and replacements are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionCause {
    /// Room was needed for newer entries (`MEMORY_CACHE_MAX_BYTES`).
    Size,
    /// The entry was past its stale window.
    Expired,
}

impl EvictionCause {
    /// Every cause, for label sets registered at zero.
    pub const ALL: [EvictionCause; 2] = [EvictionCause::Size, EvictionCause::Expired];

    /// The `cause` label of `cache_evictions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionCause::Size => "size",
            EvictionCause::Expired => "expired",
        }
    }
}

/// The disk operations whose failures `disk_errors_total` counts, by `operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    /// Opening (and recovering) the tier's files.
    Open,
    /// Reading an entry (a file that cannot be decoded included).
    Read,
    /// Writing an entry.
    Write,
    /// The periodic write-and-read probe.
    Probe,
}

impl DiskOp {
    /// Every operation, for label sets registered at zero.
    pub const ALL: [DiskOp; 4] = [DiskOp::Open, DiskOp::Read, DiskOp::Write, DiskOp::Probe];

    /// The `operation` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskOp::Open => "open",
            DiskOp::Read => "read",
            DiskOp::Write => "write",
            DiskOp::Probe => "probe",
        }
    }
}

/// Why an entry read from disk was dropped (`disk_cache_dropped_total`, by `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Past its stale window.
    Expired,
    /// Fetched before a hard purge that matches it.
    Purged,
}

impl DropReason {
    /// Every reason, for label sets registered at zero.
    pub const ALL: [DropReason; 2] = [DropReason::Expired, DropReason::Purged];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Expired => "expired",
            DropReason::Purged => "purged",
        }
    }
}

/// The Redis operations whose failures `redis_errors_total` counts, by `operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisOp {
    /// Reading an entry.
    Get,
    /// Storing an entry.
    Set,
    /// Removing an entry.
    Del,
    /// Publishing a purge or a fill.
    Publish,
    /// Opening the pub/sub connection.
    Subscribe,
    /// Taking, looking at or releasing a fleet lock.
    Lock,
    /// A health ping that failed: counted while Redis is down, so an outage shows as a rising
    /// error rate that can be alerted on.
    Ping,
}

impl RedisOp {
    /// Every operation, for label sets registered at zero.
    pub const ALL: [RedisOp; 7] = [
        RedisOp::Get,
        RedisOp::Set,
        RedisOp::Del,
        RedisOp::Publish,
        RedisOp::Subscribe,
        RedisOp::Lock,
        RedisOp::Ping,
    ];

    /// The `operation` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisOp::Get => "get",
            RedisOp::Set => "set",
            RedisOp::Del => "del",
            RedisOp::Publish => "publish",
            RedisOp::Subscribe => "subscribe",
            RedisOp::Lock => "lock",
            RedisOp::Ping => "ping",
        }
    }
}

/// Why a stale entry was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// Served at once while a background fetch refreshes it.
    WhileRevalidate,
    /// Served because the origin is failing (its circuit is open).
    IfError,
}

impl StaleReason {
    /// Every reason, for label sets registered at zero.
    pub const ALL: [StaleReason; 2] = [StaleReason::WhileRevalidate, StaleReason::IfError];

    /// The name in `Cache-Status`, metrics and spans.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::WhileRevalidate => "stale-while-revalidate",
            StaleReason::IfError => "stale-if-error",
        }
    }
}

/// Whose fetch a miss waited on, when it was not its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoalesceScope {
    /// Another request in this process.
    Process,
    /// Another replica, through the fleet lock.
    Fleet,
}

impl CoalesceScope {
    /// Every scope, for label sets registered at zero.
    pub const ALL: [CoalesceScope; 2] = [CoalesceScope::Process, CoalesceScope::Fleet];

    /// The `scope` label of `cache_coalesced_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            CoalesceScope::Process => "process",
            CoalesceScope::Fleet => "fleet",
        }
    }
}

/// Why a fetched answer is not in any tier: the `detail` of its `Cache-Status`, which then
/// lacks `stored` (RFC 9211: `stored` says the cache kept the response, and a client or operator
/// reading it should be able to trust it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// The origin forbade storing it (also counted in `cache_uncacheable_total{reason}`).
    Origin(Uncacheable),
    /// Every tier declined it: larger than the memory tier, not (yet) admitted to the disk,
    /// Redis failing or absent, or a 404 while `CACHE_NEGATIVE_TTL_SECS` is 0.
    Declined,
    /// A purge of the key, or of one of its tags, overtook the fetch: the writes were undone.
    Purged,
}

impl NotStored {
    /// The reasons that are the cache's own (`cache_not_stored_total{reason}`); the origin's
    /// are counted in `cache_uncacheable_total`.
    pub const UNKEPT: [NotStored; 2] = [NotStored::Declined, NotStored::Purged];

    /// The `Cache-Status` detail.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Origin(reason) => reason.as_str(),
            NotStored::Declined => "declined",
            NotStored::Purged => "purged",
        }
    }
}

/// Why an origin answer was not stored (`cache_uncacheable_total{reason}`, and the
/// `Cache-Status` detail of the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncacheable {
    /// `Cache-Control: no-store`.
    NoStore,
    /// `Cache-Control: private`: for one user, and this is a shared cache.
    Private,
    /// `Vary: *`: no later request could match it.
    VaryAny,
    /// A status that is not cacheable without explicit freshness (e.g. `201`, `202`).
    Status,
}

impl Uncacheable {
    /// Every reason, for label sets registered at zero.
    pub const ALL: [Uncacheable; 4] = [
        Uncacheable::NoStore,
        Uncacheable::Private,
        Uncacheable::VaryAny,
        Uncacheable::Status,
    ];

    /// The `reason` label and the `Cache-Status` detail.
    pub fn as_str(self) -> &'static str {
        match self {
            Uncacheable::NoStore => "no-store",
            Uncacheable::Private => "private",
            Uncacheable::VaryAny => "vary-star",
            Uncacheable::Status => "status",
        }
    }
}
