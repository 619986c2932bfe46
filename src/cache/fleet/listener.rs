//! Purges that reach every replica: the message one replica publishes on Redis, and the
//! listener through which each replica applies the others' purges to its own tiers (and wakes its
//! fleet-lock waiters, whose messages share the connection).

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Fleet;
use super::bus::{AnyBus, Channel, MessageBus};
use crate::cache::entry::now_ms;
use crate::cache::purge::{PurgeMode, PurgeRecords, Target, covering};

/// How far before a gap the records are read from: replicas' clocks differ by up to this.
const CLOCK_SLACK_MS: u64 = 5_000;

/// How often the listener checks that its subscription is alive (and notes it heard it).
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How far back a replica that has just started reads the purge records: as long as a
/// replica keeps a purge in mind for its shared-tier reads (longer than any purge's sweep).
const REMEMBER_MS: u64 = 10 * 60 * 1000;

/// What a replica does with what the others tell it: the listener's seam, so the fleet
/// protocol knows nothing of the read-through that implements it.
pub trait RemotePurges: Send + Sync + 'static {
    /// Applies a purge another replica took (a replica's own purges come back too: skip them).
    fn apply_remote(&self, purge: &Invalidation) -> impl Future<Output = ()> + Send;
    /// The subscription was (re)made after a gap in which purges may have been missed, and
    /// the purge records cannot say which: forget what this replica's own tiers hold.
    fn caught_up(&self);
    /// The purges recorded lately (`(member, time)`), heard by a replica that has just started:
    /// note them so that an entry of a shared tier stored before one of them is not served or
    /// copied (a big tag's sweep of Redis may still be running), without purging any tier.
    fn remember(&self, records: Vec<(String, u64)>);
    /// The purges recorded during a gap in the subscription (`(member, time)`, as
    /// [`crate::cache::purge::encode_record`] writes them): apply them to this replica's own
    /// tiers, which keep everything else.
    fn catch_up(&self, records: Vec<(String, u64)>) -> impl Future<Output = ()> + Send;
}

/// A purge as replicas tell each other about it.
///
/// On the wire: `mode\ninstance\nkey`, the format every release so far has spoken, so replicas
/// of different releases purge each other's keys during a rolling upgrade; a tag purge's mode is
/// `hard-tag` or `soft-tag`, which releases without tags ignore (or, before 0.2, read as a key
/// purge of a key named like the tag: one needless miss at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// Remove, or mark stale.
    pub mode: PurgeMode,
    /// The replica that took the purge: it skips its own message.
    pub origin_instance: String,
    /// What to purge.
    pub target: Target,
}

impl Invalidation {
    /// The message published on the invalidation channel.
    pub fn encode(&self) -> String {
        let (suffix, name) = match &self.target {
            Target::Key(key) => ("", key),
            Target::Tag(tag) => ("-tag", tag),
        };
        format!("{}{suffix}\n{}\n{name}", self.mode.as_str(), self.origin_instance)
    }

    /// A message read from the channel; `None` for one this release does not understand (it is
    /// ignored, not guessed at).
    pub fn parse(message: &str) -> Option<Self> {
        let mut parts = message.splitn(3, '\n');
        let (mode, tag) = match parts.next()? {
            "hard" => (PurgeMode::Hard, false),
            "soft" => (PurgeMode::Soft, false),
            "hard-tag" => (PurgeMode::Hard, true),
            "soft-tag" => (PurgeMode::Soft, true),
            _ => return None,
        };
        let origin_instance = parts.next()?.to_owned();
        let name = parts.next()?.to_owned();
        Some(Invalidation {
            mode,
            origin_instance,
            target: if tag { Target::Tag(name) } else { Target::Key(name) },
        })
    }
}

/// Listens on the bus's channels until `shutdown`, subscribing again when the subscription
/// drops: purges from other replicas and fleet locks let go. A subscription made again after a
/// gap catches up from the purge records of the gap (from a little before the subscription was
/// last known alive, for clocks that differ between replicas), so this replica's own tiers keep
/// every entry that was not purged; only when the records cannot cover the gap (they were lost:
/// their id changed; or cannot be read) are its own tiers cleared, and that is logged.
pub fn spawn_listener<R: RemotePurges>(
    cache: R,
    bus: AnyBus,
    fleet: Option<Fleet>,
    shutdown: CancellationToken,
) {
    // Purges are applied by a task of their own, in order, so a slow one (a tag of a million
    // entries) never holds up the fill messages that wake fleet-lock waiters.
    let cache = std::sync::Arc::new(cache);
    let (purges, mut queued) = tokio::sync::mpsc::unbounded_channel::<Invalidation>();
    let applier = cache.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.run_until_cancelled(async move {
            while let Some(purge) = queued.recv().await {
                applier.apply_remote(&purge).await;
            }
        })
        .await
    });
    tokio::spawn(async move {
        shutdown
            .run_until_cancelled(listen(&*cache, &bus, fleet.as_ref(), &purges))
            .await
    });
}

async fn listen<R: RemotePurges>(
    cache: &R,
    bus: &AnyBus,
    fleet: Option<&Fleet>,
    purges: &tokio::sync::mpsc::UnboundedSender<Invalidation>,
) {
    // When the subscription was last known alive, and the id of the records then.
    let mut heard: Option<(u64, String)> = None;
    loop {
        let Ok(mut subscription) = bus.subscribe().await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        // The records' id, read on a connection that may have dropped with the subscription:
        // tried again before a failure is taken to mean the records cannot be trusted.
        let mut epoch = None;
        for wait_ms in [0u64, 200, 500, 1_000] {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            if let Ok(id) = bus.epoch().await {
                epoch = Some(id);
                break;
            }
        }
        match (&heard, &epoch) {
            (Some((alive_ms, then)), Some(now)) if then == now => {
                let since = alive_ms.saturating_sub(CLOCK_SLACK_MS);
                match bus
                    .since(since)
                    .await
                    .and_then(|records| covering(records, since))
                {
                    Ok(records) => {
                        tracing::info!(
                            purges = records.len(),
                            "caught up on the purges made while not listening"
                        );
                        cache.catch_up(records).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "purges made while not listening cannot be read; this replica's own tiers are cleared");
                        cache.caught_up();
                    }
                }
            }
            (Some(_), _) => {
                tracing::warn!(
                    "the purge records were lost (Redis restarted empty?); this replica's own tiers are cleared"
                );
                cache.caught_up();
            }
            // The first subscription: the tiers are new (the disk reads the records itself), but
            // Redis may still hold entries of a purge whose sweep is running: the recent
            // records are noted, so those entries are refused.
            (None, _) => {
                let since = now_ms().saturating_sub(REMEMBER_MS);
                match bus.since(since).await {
                    Ok(records) => cache.remember(records),
                    Err(e) => {
                        tracing::warn!(error = %e, "the recent purge records cannot be read; entries Redis still holds of a purge under way may be served")
                    }
                }
                cache.caught_up();
            }
        }
        if let Some(epoch) = &epoch {
            heard = Some((now_ms(), epoch.clone()));
        }
        tracing::info!("listening for purges and fills from other replicas");
        // A hung node keeps the socket open but delivers nothing: move when the pings say it
        // is down.
        let mut check = tokio::time::interval(CHECK_EVERY);
        // After a stall, one check, not one for every check missed.
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                // Messages first: a check runs only once nothing more is there to be read.
                biased;
                msg = subscription.messages.next() => {
                    let Some((channel, text)) = msg else { break };
                    match channel {
                        Channel::Fill => {
                            if let Some(fleet) = fleet {
                                fleet.wake(&text);
                            }
                        }
                        Channel::Invalidate => {
                            if let Some(purge) = Invalidation::parse(&text) {
                                let _ = purges.send(purge);
                            }
                        }
                    }
                }
                _ = check.tick() => {
                    if (subscription.lost)() {
                        break;
                    }
                    // The subscription counts as heard up to the check before this one, and only
                    // when this one came on time. A late check means this process stood still
                    // (stopped, paused, starved of CPU): Redis may have closed the subscription
                    // meanwhile (its output buffer for this replica full), its end still queued
                    // behind the messages sent before it. Moving `heard` then would start the
                    // catch-up after the gap, and the purges of the gap would be lost here.
                    // (The time it ran, not the one it was due at: a late tick is due on time.)
                    let at = tokio::time::Instant::now();
                    let on_time = at.saturating_duration_since(last_check) <= 2 * CHECK_EVERY;
                    last_check = at;
                    if let (true, Some(epoch)) = (on_time, &epoch) {
                        let at_ms = now_ms().saturating_sub(CHECK_EVERY.as_millis() as u64);
                        heard = Some((at_ms, epoch.clone()));
                    }
                }
            }
        }
        tracing::warn!("subscription to other replicas lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_keep_the_released_wire_format() {
        let purge = Invalidation {
            mode: PurgeMode::Soft,
            origin_instance: "42-abc".to_owned(),
            target: Target::Key("a\nkey with a newline".to_owned()),
        };
        assert_eq!(purge.encode(), "soft\n42-abc\na\nkey with a newline");
        assert_eq!(Invalidation::parse(&purge.encode()), Some(purge));
        assert_eq!(
            Invalidation::parse("hard\n1-2\nk").map(|p| p.mode),
            Some(PurgeMode::Hard)
        );
        assert_eq!(Invalidation::parse("tag\n1-2\nk"), None);
        let tag = Invalidation {
            mode: PurgeMode::Soft,
            origin_instance: "9-f".to_owned(),
            target: Target::Tag("a/b:*?".to_owned()),
        };
        assert_eq!(tag.encode(), "soft-tag\n9-f\na/b:*?");
        assert_eq!(Invalidation::parse(&tag.encode()), Some(tag));
        assert_eq!(Invalidation::parse("hard\n1-2"), None);
    }
}
