//! The disk engine's own failures, heard from its log.
//!
//! Why it exists: foyer writes entries in the background (a fill is queued, and a flusher
//! writes whole blocks later), and a block that cannot be written (a full volume, an I/O error)
//! is only logged (`[flusher]: flush data error`): the entries are lost, nothing is returned to
//! the tier, and an entry whose page fails its checksum is dropped with a `warn` only. foyer
//! 0.22 offers no hook for either (its I/O engine and device traits name types it does not
//! export, so they cannot be wrapped). So the subscriber gets a [`layer`] that counts foyer's
//! `error` and `warn` events into [`FAILURES`], and the disk tier's upkeep, woken by it, counts
//! them in `disk_errors_total` and takes the tier down on the first failed write.
//!
//! The counts are process-wide (foyer's events do not say which store they come from): a
//! process runs one disk tier, and two in one process (tests) would each count both.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// What foyer has logged as failed since the process started.
pub struct EngineFailures {
    /// Writes of blocks that failed (their entries are lost).
    writes: AtomicU64,
    /// Reads that failed or found a corrupt entry (foyer drops the entry; a read that returns
    /// its error to the tier is counted there, not here).
    reads: AtomicU64,
    /// Woken at every failure, for the tiers' upkeep.
    changed: Notify,
}

/// The process's count of the disk engine's failures.
pub static FAILURES: EngineFailures = EngineFailures {
    writes: AtomicU64::new(0),
    reads: AtomicU64::new(0),
    changed: Notify::const_new(),
};

/// A count of failures at one moment: the tier keeps the last one it acted on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Failed block writes.
    pub writes: u64,
    /// Failed or corrupt reads foyer kept to itself.
    pub reads: u64,
}

impl EngineFailures {
    /// The counts now.
    pub fn seen(&self) -> Seen {
        Seen {
            writes: self.writes.load(Ordering::Acquire),
            reads: self.reads.load(Ordering::Acquire),
        }
    }

    /// Resolves at the next failure noted after it was created and enabled (see
    /// [`tokio::sync::futures::Notified::enable`]), so a failure noted between a look at the
    /// counts and the wait is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    fn note(&self, write: bool) {
        if write {
            self.writes.fetch_add(1, Ordering::AcqRel);
        } else {
            self.reads.fetch_add(1, Ordering::AcqRel);
        }
        self.changed.notify_waiters();
    }
}

/// Whether an event of `target` at `level` may tell of a failure (its message decides).
fn may_fail(target: &str, level: Level) -> bool {
    target.starts_with("foyer_storage") && level <= Level::WARN
}

/// What a foyer event says failed, if anything: `Some(true)` a write, `Some(false)` a read.
fn failure(target: &str, level: Level, message: &str) -> Option<bool> {
    if !may_fail(target, level) {
        return None;
    }
    if target.contains("flusher") {
        // Every error or warn of the flusher is a block (and its entries) not written.
        return Some(true);
    }
    if target.contains("engine::block::engine") {
        // A corrupt entry dropped on load counts; a failed load is returned to the tier, which
        // counts it itself; the rest are notices (a configuration foyer finds small, an entry
        // handed over after close).
        return (level == Level::WARN && message.contains("deserialize")).then_some(false);
    }
    // A block that could not be recovered or reclaimed.
    (target.contains("engine::block") || target.contains("io::")).then_some(false)
}

/// The `message` of an event.
#[derive(Default)]
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// The layer that listens to foyer's `warn` and `error` events (installed with the log layer,
/// with a filter of its own, so `RUST_LOG` does not silence it; it prints nothing).
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    EngineLog.with_filter(filter_fn(|meta| {
        meta.is_event() && may_fail(meta.target(), *meta.level())
    }))
}

struct EngineLog;

impl<S: Subscriber> Layer<S> for EngineLog {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut message = Message::default();
        event.record(&mut message);
        if let Some(write) = failure(meta.target(), *meta.level(), &message.0) {
            FAILURES.note(write);
        }
    }
}

/// What one store's engine dropped without a word: the entries it was handed and let go
/// because its write queue was full (foyer counts them in `foyer_storage_inner_op_total`,
/// `channel_overflow`, as the entry is handed over, and returns nothing), so the tier can tell
/// a fill it kept from one it did not; and those its flusher let go later because its buffer
/// was full (`buffer_overflow`, counted in the flusher: which entry is not said).
#[derive(Debug, Default)]
pub struct EngineDrops {
    queue_full: AtomicU64,
    buffer_full: AtomicU64,
}

impl EngineDrops {
    /// Entries let go so far for a full write queue.
    pub fn queue_full(&self) -> u64 {
        self.queue_full.load(Ordering::Acquire)
    }

    /// Entries the flusher let go so far for a full buffer.
    pub fn buffer_full(&self) -> u64 {
        self.buffer_full.load(Ordering::Acquire)
    }
}

/// A metrics registry for foyer's builder that feeds `drops` from foyer's own counters and
/// discards the rest (the tier's metrics are ours, not foyer's).
pub fn registry(drops: std::sync::Arc<EngineDrops>) -> mixtrics::metrics::BoxedRegistry {
    Box::new(DropsRegistry(drops))
}

#[derive(Debug)]
struct DropsRegistry(std::sync::Arc<EngineDrops>);

/// The vector `foyer_storage_inner_op_total`: its `channel_overflow` and `buffer_overflow`
/// counters feed the drops.
#[derive(Debug)]
struct InnerOps(std::sync::Arc<EngineDrops>);

/// One of foyer's counters, feeding one count of the drops.
#[derive(Debug)]
struct Feeds(std::sync::Arc<EngineDrops>, fn(&EngineDrops) -> &AtomicU64);

impl mixtrics::metrics::CounterOps for Feeds {
    fn increase(&self, val: u64) {
        self.1(&self.0).fetch_add(val, Ordering::AcqRel);
    }
}

impl mixtrics::metrics::CounterVecOps for InnerOps {
    fn counter(&self, labels: &[std::borrow::Cow<'static, str>]) -> mixtrics::metrics::BoxedCounter {
        if labels.iter().any(|l| l == "channel_overflow") {
            Box::new(Feeds(self.0.clone(), |d| &d.queue_full))
        } else if labels.iter().any(|l| l == "buffer_overflow") {
            Box::new(Feeds(self.0.clone(), |d| &d.buffer_full))
        } else {
            Box::new(NOOP)
        }
    }
}

const NOOP: mixtrics::registry::noop::NoopMetricsRegistry = mixtrics::registry::noop::NoopMetricsRegistry;

impl mixtrics::metrics::RegistryOps for DropsRegistry {
    fn register_counter_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        labels: &'static [&'static str],
    ) -> mixtrics::metrics::BoxedCounterVec {
        if name == "foyer_storage_inner_op_total" {
            Box::new(InnerOps(self.0.clone()))
        } else {
            NOOP.register_counter_vec(name, desc, labels)
        }
    }

    fn register_gauge_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        labels: &'static [&'static str],
    ) -> mixtrics::metrics::BoxedGaugeVec {
        NOOP.register_gauge_vec(name, desc, labels)
    }

    fn register_histogram_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        labels: &'static [&'static str],
    ) -> mixtrics::metrics::BoxedHistogramVec {
        NOOP.register_histogram_vec(name, desc, labels)
    }

    fn register_histogram_vec_with_buckets(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        labels: &'static [&'static str],
        buckets: Vec<f64>,
    ) -> mixtrics::metrics::BoxedHistogramVec {
        NOOP.register_histogram_vec_with_buckets(name, desc, labels, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foyer_events_are_told_apart() {
        let flusher = "foyer_storage::engine::block::flusher";
        let engine = "foyer_storage::engine::block::engine";
        let corrupt = "[block engine load]: deserialize read buffer raise error, remove this entry and skip";
        assert_eq!(
            failure(flusher, Level::ERROR, "[flusher]: flush data error"),
            Some(true)
        );
        assert_eq!(
            failure(engine, Level::WARN, corrupt),
            Some(false),
            "a corrupt entry dropped"
        );
        assert_eq!(
            failure(engine, Level::ERROR, "load error"),
            None,
            "returned to the tier"
        );
        let small = "[block engine]: block-based object disk cache stable blocks count is too small";
        assert_eq!(
            failure(engine, Level::WARN, small),
            None,
            "a notice, not a failure"
        );
        let recover = "foyer_storage::engine::block::recover";
        assert_eq!(
            failure(recover, Level::WARN, "error raised when recovering block 3"),
            Some(false)
        );
        assert_eq!(failure(flusher, Level::INFO, "x"), None);
        assert_eq!(failure("cache_layer::cache", Level::ERROR, "x"), None);
    }
}
