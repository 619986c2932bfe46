//! The purge vocabulary every part of the cache speaks: what a purge does (`PurgeMode`), what
//! it names (`Target`, `PurgeScope`) and where it came from (`PurgeSource`). A leaf: it imports
//! nothing of the crate, so every tier may use it.

/// What a purge does to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// The entry is removed: the next request fetches.
    Hard,
    /// The entry is marked stale: the next request is served at once and refreshes it.
    Soft,
}

impl PurgeMode {
    /// Every mode, for label sets registered at zero.
    pub const ALL: [PurgeMode; 2] = [PurgeMode::Hard, PurgeMode::Soft];

    /// The `mode` label, and the mode's word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeMode::Hard => "hard",
            PurgeMode::Soft => "soft",
        }
    }

    /// The mode [`PurgeMode::as_str`] names.
    pub fn parse(word: &str) -> Option<Self> {
        PurgeMode::ALL.into_iter().find(|m| m.as_str() == word)
    }
}

/// Where a purge applied here came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeSource {
    /// A `DELETE` this replica took.
    Local,
    /// Another replica's message.
    Remote,
}

impl PurgeSource {
    /// Every source, for label sets registered at zero.
    pub const ALL: [PurgeSource; 2] = [PurgeSource::Local, PurgeSource::Remote];

    /// The `source` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeSource::Local => "local",
            PurgeSource::Remote => "remote",
        }
    }
}

/// What a purge is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One key.
    Key(String),
    /// Every entry carrying exactly this tag.
    Tag(String),
}

impl Target {
    /// The target of `scope` named `name` (the inverse of [`Target::scope`] and
    /// [`Target::name`]: what a purge record names).
    pub fn new(scope: PurgeScope, name: &str) -> Self {
        match scope {
            PurgeScope::Key => Target::Key(name.to_owned()),
            PurgeScope::Tag => Target::Tag(name.to_owned()),
        }
    }

    /// The key or the tag.
    pub fn name(&self) -> &str {
        match self {
            Target::Key(name) | Target::Tag(name) => name,
        }
    }

    /// The purge's `scope` label: `key` or `tag`.
    pub fn scope(&self) -> PurgeScope {
        match self {
            Target::Key(_) => PurgeScope::Key,
            Target::Tag(_) => PurgeScope::Tag,
        }
    }
}

/// What a purge names: one key, or every entry with a tag (`scope` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeScope {
    /// `DELETE /items/{key}`.
    Key,
    /// `DELETE /tags/{tag}`.
    Tag,
}

impl PurgeScope {
    /// Every scope, for label sets registered at zero.
    pub const ALL: [PurgeScope; 2] = [PurgeScope::Key, PurgeScope::Tag];

    /// The `scope` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeScope::Key => "key",
            PurgeScope::Tag => "tag",
        }
    }

    /// The scope [`PurgeScope::as_str`] names.
    pub fn parse(word: &str) -> Option<Self> {
        PurgeScope::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// Purge records could not be read or written (the message says why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("purge records unavailable: {0}")]
pub struct RecordsUnavailable(pub String);

/// Where purges are recorded with their time, so that a replica that was not listening (its
/// disk tier outlived a restart or a gap in the feed) can catch up: the handle the disk tier
/// gets, rather than the Redis tier itself.
pub trait PurgeRecords: Send + Sync {
    /// Records `member` (a purge, as the disk's purge log encodes it) at `at_ms`; records older
    /// than `keep_ms` may go.
    fn record<'a>(
        &'a self,
        member: &'a str,
        at_ms: u64,
        keep_ms: u64,
    ) -> futures_util::future::BoxFuture<'a, Result<(), RecordsUnavailable>>;
    /// An id of the records as they are kept: it changes when they are lost (Redis restarted
    /// empty), so a replica that was away knows whether they cover its gap.
    fn epoch(&self) -> futures_util::future::BoxFuture<'_, Result<String, RecordsUnavailable>>;
    /// The purges recorded since `since_ms`: `(member, time)`, oldest first, with
    /// [`TRIMMED_MEMBER`] among them when records made since were dropped for the count (see
    /// [`covering`] and [`after_trim`]); an error when they cannot be read.
    fn since(
        &self,
        since_ms: u64,
    ) -> futures_util::future::BoxFuture<'_, Result<Vec<(String, u64)>, RecordsUnavailable>>;
}

/// The member that marks where records were dropped because more purges were made than the
/// records keep (scored with the newest one dropped): records read from before it cannot cover
/// a gap, and [`PurgeRecords::since`] says so.
pub const TRIMMED_MEMBER: &str = "!trimmed";

/// `records` (as [`PurgeRecords::since`] reads them from `since_ms`) without the trim mark, or
/// an error when records made since `since_ms` were dropped.
pub fn covering(
    records: Vec<(String, u64)>,
    since_ms: u64,
) -> Result<Vec<(String, u64)>, RecordsUnavailable> {
    match after_trim(records) {
        (_, Some(at)) if at >= since_ms => Err(RecordsUnavailable(format!(
            "more purges were made since then than the records keep (the oldest dropped was made at {at} ms)"
        ))),
        // A mark older than `since_ms`: every record read is after it, so all are kept.
        (records, _) => Ok(records),
    }
}

/// `records` (as [`PurgeRecords::since`] reads them) split at the newest trim mark: the records
/// made after it, which are whole, and the mark's time (the newest record dropped), before
/// which some are missing; `None` when nothing was dropped.
pub fn after_trim(records: Vec<(String, u64)>) -> (Vec<(String, u64)>, Option<u64>) {
    let trimmed = records
        .iter()
        .filter(|(m, _)| m == TRIMMED_MEMBER)
        .map(|&(_, at)| at)
        .max();
    let kept = records
        .into_iter()
        .filter(|(m, at)| m != TRIMMED_MEMBER && trimmed.is_none_or(|t| *at > t))
        .collect();
    (kept, trimmed)
}

/// Purge records are kept at least this long (ms), a day: an origin may give entries longer
/// lifetimes than the configured ones, and the tier learns them only as it stores them.
pub const MIN_HORIZON_MS: u64 = 24 * 60 * 60 * 1000;

/// A purge as it is recorded ([`PurgeRecords`]): the member of the sorted set (its score is
/// the time).
pub fn encode_record(scope: PurgeScope, mode: PurgeMode, name: &str) -> String {
    format!("{}\n{}\n{name}", mode.as_str(), scope.as_str())
}

/// The purge a sorted-set member names; `None` for a member this release cannot read.
pub fn decode_record(member: &str) -> Option<(PurgeScope, PurgeMode, &str)> {
    let mut parts = member.splitn(3, '\n');
    let mode = PurgeMode::parse(parts.next()?)?;
    let scope = PurgeScope::parse(parts.next()?)?;
    Some((scope, mode, parts.next()?))
}
