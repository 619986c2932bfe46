//! The cache: a read-through over tiers in order, one origin fetch per key (per process, and
//! with Redis per fleet), staleness, and purges that reach every replica.
//!
//! # Map
//! - `read_through`: the read-through, split by job: `lookup` (the hit path, one key or a
//!   batch), `fetch` (fetch-and-store), `purge` (purges fanned out to tiers and replicas),
//!   `writes` (stores a purge waits for), `kept` (the tiers for the proxy, which fetches for
//!   itself).
//! - `tier`: the seam every tier sits behind (`Tier`), and the tiers, each in a folder:
//!   `memory` (with its policy, `eviction`), `disk` (with its buckets and purge log), `redis`.
//! - `fleet`: what replicas share through Redis: the fleet-wide lock and the listener of
//!   purges other replicas publish.
//! - Leaves the rest builds on: `entry` (an entry and its times), `policy` (how long an
//!   entry lives), `encoding` (its compressed forms), `answer` (what a lookup yields),
//!   `coalesce` (one fetch per key in this process), `sketch` (the count-min sketch of the
//!   memory policy and disk admission).
//!
//! Everything a caller needs is re-exported here.

mod answer;
mod clock;
mod coalesce;
mod encoding;
mod entry;
mod fleet;
pub(crate) mod labels;
mod policy;
mod purge;
mod read_through;
mod redis;
mod sketch;
mod tier;

pub use answer::{
    Answer, AnswerKind, CacheError, CoalesceScope, FetchedBody, Forward, NotStored, StaleReason,
};
pub use clock::Clock;
pub use coalesce::{Abandoned, Coalescer, Role, Superseded};
pub use encoding::{Coding, Compressions, INLINE_COMPRESS_BYTES};
pub use entry::{ENTRY_OVERHEAD_BYTES, Entry, Freshness, Head, now_ms};
pub use fleet::bus::{AnyBus, BusError, Channel, MemoryBus, MessageBus, RedisBus, Subscription};
pub use fleet::listener::Invalidation;
pub use fleet::{FleetLock, Replicas};
pub use policy::{Lifetimes, Times, Uncacheable};
pub use purge::{PurgeMode, PurgeRecords, PurgeScope, PurgeSource, RecordsUnavailable, Target};
pub use redis::{CommandError, RedisClient, RedisConfig, RedisHealth, RedisOp, RedisSetupError, key_slot};
pub use tier::any::AnyTier;
pub use tier::disk::purge_log::{PurgeLog, Verdict};
pub use tier::disk::{DirLock, DiskConfig, DiskOp, DiskTier, DropReason, Layout};
pub use tier::memory::{EvictionCause, MemoryTier};
pub use tier::redis::RedisTier;
pub use tier::{Tier, TierError, TierHealth, TierName};

pub use read_through::{BATCH_WINDOW, BatchSink, FleetLease, FleetTurn, PurgeIncomplete, ReadThrough};

#[cfg(test)]
pub(crate) use encoding::slow_words;
