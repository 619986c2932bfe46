//! Fleet-wide coalescing: one origin fetch per key across every replica that shares a Redis.
//!
//! The replica that misses first takes the key's lock in Redis (`SET NX PX`) and fetches; the
//! others wait for its value instead of fetching too. When the holder lets go it publishes the key
//! on the fill channel; each replica's listener wakes its waiter for that key, which then reads
//! the value. When the origin answered with an error about the key the holder says which, and
//! its waiters answer with it at once (or a stale copy, as for a failure of their own): one
//! fetch for the fleet, failed or not, rather than one replica after another calling a failing
//! origin. (What the failure is, and whether it is the origin's rather than the holder's own,
//! the caller decides: see `OriginError::shared`.) Waiters also
//! look on their own every `FLEET_LOCK_POLL_MS`, in case a message is lost, and give up after
//! `FLEET_LOCK_WAIT_MS`, fetching themselves. Redis failing never blocks a fetch: the replica
//! fetches on its own.

pub mod bus;
pub(crate) mod listener;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use self::bus::{AnyBus, Channel, MessageBus};
use crate::cache::clock::Clock;
use crate::cache::entry::{Entry, Freshness};
use crate::cache::tier::Tier;
use crate::cache::tier::any::AnyTier;

/// Marks a fill message whose fetch may not be stored. Keys never hold control characters, so
/// no key starts with it; a release that does not know it finds no waiter for such a "key" and
/// its waiters fall back to polling, as for a lost message.
const NOT_STORED: &str = "\nnot-stored\n";

/// Marks a fill message whose fetch failed at the origin: `FAILED`, the failure (a word of the
/// caller's, `status 503`, with no newline), a newline, the key. An older replica finds no
/// waiter for it and polls.
const FAILED: &str = "\nfailed\n";

/// Fleet-wide coalescing settings (`FLEET_LOCK_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetLock {
    /// Lifetime of the Redis lock key, so a dead fetcher's lock goes away.
    pub ttl: Duration,
    /// How long to wait for another replica's fetch before fetching here.
    pub wait: Duration,
    /// How often a waiter looks in Redis when no fill message has woken it.
    pub poll: Duration,
}

/// How this replica meets the others: the bus (locks, channels, purge records), the tier they
/// all read (where a fetched value lands for the others), and the lock's settings.
#[derive(Clone)]
pub struct Replicas {
    /// Locks, channels and purge records (Redis, or in process).
    pub bus: AnyBus,
    /// The tier every replica reads (Redis).
    pub shared: AnyTier,
    /// `FLEET_LOCK_*`.
    pub lock: FleetLock,
}

/// The fleet lock protocol of one replica. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    /// Where the locks and the fill channel are.
    bus: AnyBus,
    /// Where the values are.
    shared: AnyTier,
    /// Lock lifetime and waiting.
    settings: FleetLock,
    /// The keys this process waits on another replica's fetch for.
    waiters: Arc<FleetWaiters>,
    /// This process's name, the stem of its lock tokens.
    instance: Arc<str>,
    /// What "now" is when a value from another replica is judged fresh.
    clock: Clock,
}

/// What a replica about to fetch a key should do.
pub enum Turn {
    /// This replica holds the key's lock: fetch, then [`Held::release`].
    Lead(Held),
    /// Another replica fetched the key while this one waited.
    Filled(Arc<Entry>),
    /// Another replica's fetch, which this one waited for, failed at the origin, in the words
    /// it gave [`Held::fail`]: the answer is that failure, not a fetch of this replica's own.
    Failed(Box<str>),
    /// No lock in time, or Redis is failing: fetch here, unguarded.
    Alone,
}

/// How a wait on another replica's fetch ended.
enum Wait {
    /// Its value arrived in Redis.
    Value(Arc<Entry>),
    /// It released the lock without storing a value.
    Released,
    /// Its answer may not be stored (`no-store`, `private`): nothing will ever arrive, so this
    /// replica fetches at once instead of waiting out `FLEET_LOCK_WAIT_MS`.
    NotStored,
    /// Its fetch failed at the origin, this way.
    Failed(Box<str>),
    /// `FLEET_LOCK_WAIT_MS` ran out.
    TimedOut,
}

impl Fleet {
    /// The protocol among `replicas` for the process named `instance`, freshness judged by
    /// `clock`.
    pub fn new(replicas: &Replicas, instance: Arc<str>, clock: Clock) -> Self {
        Fleet {
            clock,
            bus: replicas.bus.clone(),
            shared: replicas.shared.clone(),
            settings: replicas.lock,
            waiters: Arc::default(),
            instance,
        }
    }

    /// Takes `key`'s lock, or waits for the replica holding it, for at most `FLEET_LOCK_WAIT_MS`.
    pub async fn take_turn(&self, key: &str) -> Turn {
        if !self.bus.is_up() {
            return Turn::Alone;
        }
        let token = format!("{}-{:x}", self.instance, rand::random::<u32>());
        let deadline = Instant::now() + self.settings.wait;
        // Registered before the lock is tried: the holder's message may come in on the
        // subscription before the refusal comes back on the command connection, and a wake
        // with no waiter registered is lost (the waiter then sat out a whole poll interval).
        let woken = self.waiters.register(key);
        while Instant::now() < deadline {
            match self.try_lock(key, &token).await {
                Some(true) => {
                    return Turn::Lead(Held {
                        fleet: self.clone(),
                        key: Arc::from(key),
                        token: Some(token),
                    });
                }
                Some(false) => match self.wait(&woken, key, deadline).await {
                    Wait::Value(entry) => return Turn::Filled(entry),
                    Wait::Failed(error) => return Turn::Failed(error),
                    // The holder let go without a value or word of a failure (a failure of its
                    // own, or a lost message): compete again, so that it does not turn every
                    // waiting replica loose on the origin.
                    Wait::Released => continue,
                    Wait::NotStored | Wait::TimedOut => break,
                },
                // Redis failing: fetch here rather than fail.
                None => break,
            }
        }
        Turn::Alone
    }

    /// `key`'s entry in the shared tier (Redis), if it is fresh (another replica may have stored it between this
    /// replica's miss and its lock).
    pub async fn fresh(&self, key: &str) -> Option<Arc<Entry>> {
        self.shared
            .get(key)
            .await
            .ok()
            .flatten()
            .filter(|e| matches!(e.freshness(self.clock.now_ms()), Freshness::Fresh { .. }))
    }

    /// Wakes this process's waiter for the key of a message on the fill channel: the replica
    /// holding its lock let go (having stored a value, failed, or fetched one it may not store).
    pub fn wake(&self, message: &str) {
        if let Some(key) = message.strip_prefix(NOT_STORED) {
            self.waiters.wake(key, Some(Woken::NotStored));
        } else if let Some(rest) = message.strip_prefix(FAILED) {
            if let Some((failure, key)) = rest.split_once('\n') {
                self.waiters.wake(key, Some(Woken::Failed(failure.into())));
            }
        } else {
            self.waiters.wake(message, None);
        }
    }

    /// Waits while another replica holds `key`'s lock: woken by its fill message, or looking
    /// every `FLEET_LOCK_POLL_MS` in case a message is lost.
    async fn wait(&self, woken: &Registration, key: &str, deadline: Instant) -> Wait {
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match woken.wait(self.settings.poll.min(left)).await {
                Some(Woken::NotStored) => return Wait::NotStored,
                Some(Woken::Failed(error)) => return Wait::Failed(error),
                None => {}
            }
            if let Some(entry) = self.fresh(key).await {
                return Wait::Value(entry);
            }
            if !self.is_locked(key).await.unwrap_or(false) {
                // Released: the value may have landed just before the lock went. Whatever a
                // message said of that holder is forgotten: the next one's is awaited.
                woken.forget();
                return self.fresh(key).await.map_or(Wait::Released, Wait::Value);
            }
        }
        Wait::TimedOut
    }

    /// Takes the lock for `key` if nobody holds it: `Some(true)` when taken, `None` when the bus
    /// failed.
    async fn try_lock(&self, key: &str, token: &str) -> Option<bool> {
        self.bus.try_lock(key, token, self.settings.ttl).await
    }

    /// Whether anybody holds the lock for `key`; `None` when the bus failed.
    async fn is_locked(&self, key: &str) -> Option<bool> {
        self.bus.is_locked(key).await
    }

    /// Releases the lock for `key` if `token` still holds it, and wakes the replicas waiting on
    /// it: they read the value, compete for the lock again if the fetch failed, or fetch at
    /// once if its answer may not be stored (`stored` false).
    async fn unlock(&self, key: &str, token: &str, how: Released<'_>) {
        let (message, told_first) = match how {
            Released::Stored => (key.to_owned(), false),
            Released::NotStored => (format!("{NOT_STORED}{key}"), false),
            // Told before the lock goes: a waiter that looked in between would find it free,
            // take it and call the failing origin again. (A plain release is told after: its
            // waiters look for the lock, and would find it still held.)
            Released::Failed(failure) => (format!("{FAILED}{failure}\n{key}"), true),
        };
        if told_first {
            let _ = self.bus.publish(Channel::Fill, &message).await;
        }
        self.bus.unlock(key, token).await;
        if !told_first {
            let _ = self.bus.publish(Channel::Fill, &message).await;
        }
    }
}

/// How a holder lets go of a key's lock: what its fill message tells the waiters.
enum Released<'a> {
    /// The value is in the shared tier (or nothing is: the waiters look).
    Stored,
    /// The answer may not be stored: the waiters fetch at once.
    NotStored,
    /// The origin failed this way: the waiters answer with it.
    Failed(&'a str),
}

/// What a waiter is told besides "let go" (a plain fill message tells it nothing more).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Woken {
    NotStored,
    Failed(Box<str>),
}

/// A fleet lock this replica holds. Released by [`Held::release`] once the value is stored; a
/// lock dropped without it (the fetch task panicked or was cancelled) is released in the
/// background, so waiting replicas do not sit out the lock's whole lifetime.
pub struct Held {
    fleet: Fleet,
    key: Arc<str>,
    /// `None` once released.
    token: Option<String>,
}

impl Held {
    /// Lets go of the lock and wakes the replicas waiting on it; `stored` false tells them the
    /// answer may not be stored, so they fetch at once.
    pub async fn release(mut self, stored: bool) {
        if let Some(token) = self.token.take() {
            let how = if stored {
                Released::Stored
            } else {
                Released::NotStored
            };
            self.fleet.unlock(&self.key, &token, how).await;
        }
    }

    /// Lets go of the lock after the origin failed, as `failure` says (one line; a word with a
    /// newline in it cannot be told and is sent as a plain release): the waiting replicas
    /// answer with that failure at once (see [`Turn::Failed`]). For a failure that may be this
    /// replica's own, call [`Held::release`] instead: the waiters compete for the lock again.
    pub async fn fail(mut self, failure: &str) {
        if let Some(token) = self.token.take() {
            let how = if failure.contains('\n') {
                Released::Stored
            } else {
                Released::Failed(failure)
            };
            self.fleet.unlock(&self.key, &token, how).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(token) = self.token.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (fleet, key) = (self.fleet.clone(), self.key.clone());
            runtime.spawn(async move { fleet.unlock(&key, &token, Released::Stored).await });
        }
    }
}

/// The keys this process is waiting on another replica for.
#[derive(Default)]
struct FleetWaiters {
    waiting: Mutex<HashMap<Arc<str>, Arc<Waiter>>>,
}

/// One key's waiter: woken by the holder's message, told whether its answer may be stored or
/// how its fetch failed.
#[derive(Default)]
struct Waiter {
    notify: Notify,
    told: Mutex<Option<Woken>>,
}

impl FleetWaiters {
    /// Registers interest in `key` until the returned guard is dropped.
    fn register(self: &Arc<Self>, key: &str) -> Registration {
        let key: Arc<str> = Arc::from(key);
        let waiter = self.lock().entry(key.clone()).or_default().clone();
        Registration {
            waiters: self.clone(),
            key,
            waiter,
        }
    }

    /// Wakes the waiter for `key`, if any, telling it `what`. A wake before the waiter sleeps
    /// is kept for it.
    fn wake(&self, key: &str, what: Option<Woken>) {
        if let Some(waiter) = self.lock().get(key) {
            if what.is_some() {
                *waiter.told.lock().unwrap_or_else(|p| p.into_inner()) = what;
            }
            waiter.notify.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Waiter>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A waiter's interest in one key.
struct Registration {
    waiters: Arc<FleetWaiters>,
    key: Arc<str>,
    waiter: Arc<Waiter>,
}

impl Registration {
    /// Forgets what the last holder's message said (its waiter competes for the lock again).
    fn forget(&self) {
        *self.waiter.told.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Returns when the key's holder has let go (a message), or after `poll`: what the holder
    /// said besides letting go (its answer may not be stored, or its fetch failed).
    async fn wait(&self, poll: Duration) -> Option<Woken> {
        let _ = tokio::time::timeout(poll, self.waiter.notify.notified()).await;
        self.waiter.told.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        // Only this process's one fetch task per key registers, but stay safe if two did.
        if waiting
            .get(&self.key)
            .is_some_and(|w| Arc::ptr_eq(w, &self.waiter))
        {
            waiting.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wake_ends_the_wait_at_once_and_is_kept_if_early() {
        let waiters = Arc::new(FleetWaiters::default());
        let r = waiters.register("k");
        waiters.wake("k", None); // before the waiter sleeps
        let started = tokio::time::Instant::now();
        let poll = Duration::from_millis(500);
        assert_eq!(r.wait(poll).await, None);
        assert_eq!(started.elapsed(), Duration::ZERO);
        // No message: the wait ends after the poll interval.
        r.wait(poll).await;
        assert_eq!(started.elapsed(), poll);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_whose_answer_may_not_be_stored_says_so() {
        let waiters = Arc::new(FleetWaiters::default());
        let r = waiters.register("k");
        waiters.wake("k", Some(Woken::NotStored));
        assert_eq!(r.wait(Duration::from_millis(500)).await, Some(Woken::NotStored));
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_lands_before_the_refusal_does_still_wakes_the_waiter() {
        use futures_util::FutureExt;

        use crate::cache::MemoryTier;
        use crate::cache::policy::Lifetimes;
        use crate::telemetry::Metrics;

        let bus = bus::MemoryBus::new();
        let shared = AnyTier::Memory(MemoryTier::new(1 << 20, Arc::new(Metrics::detached())));
        let poll = Duration::from_millis(500);
        let replicas = Replicas {
            bus: AnyBus::Memory(bus.clone()),
            shared: shared.clone(),
            lock: FleetLock {
                ttl: Duration::from_secs(10),
                wait: Duration::from_secs(5),
                poll,
            },
        };
        let clock = Clock::system();
        let fleet = Fleet::new(&replicas, Arc::from("b"), clock.clone());
        // Replica "a" holds the lock. Once it has refused this replica's attempt, "a" stores its
        // value, lets go and publishes, and its message is taken in before the refusal is: as
        // with Redis, where the two come back on different connections.
        assert_eq!(
            bus.try_lock("k", "a-1", Duration::from_secs(10)).await,
            Some(true)
        );
        let (b, f) = (bus.clone(), fleet.clone());
        bus.on_refused(move || {
            let life = Lifetimes::fixed(Duration::from_secs(60), Duration::from_secs(60), Duration::ZERO);
            let entry = Arc::new(Entry::value("k", b"\"v\"", clock.now_ms(), &life));
            assert!(shared.put("k", entry).now_or_never().expect("memory").is_ok());
            b.unlock("k", "a-1").now_or_never().expect("in process");
            f.wake("k");
        });
        let started = Instant::now();
        assert!(matches!(fleet.take_turn("k").await, Turn::Filled(_)));
        // Woken by the message, not by the poll that looks for a lost one.
        assert!(started.elapsed() < poll, "waited {:?}", started.elapsed());
    }

    /// A fleet of one replica ("b") on an in-process bus, with `a-1` holding `k`'s lock.
    async fn waiting_on_a(poll: Duration) -> (bus::MemoryBus, Fleet) {
        use crate::cache::MemoryTier;
        use crate::telemetry::Metrics;

        let bus = bus::MemoryBus::new();
        let replicas = Replicas {
            bus: AnyBus::Memory(bus.clone()),
            shared: AnyTier::Memory(MemoryTier::new(1 << 20, Arc::new(Metrics::detached()))),
            lock: FleetLock {
                ttl: Duration::from_secs(10),
                wait: Duration::from_secs(5),
                poll,
            },
        };
        let fleet = Fleet::new(&replicas, Arc::from("b"), Clock::system());
        assert_eq!(
            bus.try_lock("k", "a-1", Duration::from_secs(10)).await,
            Some(true)
        );
        (bus, fleet)
    }

    #[tokio::test(start_paused = true)]
    async fn an_origin_failure_of_the_holder_is_the_waiters_answer_at_once() {
        use futures_util::StreamExt;

        let poll = Duration::from_millis(500);
        let (bus, fleet) = waiting_on_a(poll).await;
        let a = Held {
            fleet: Fleet::new(
                &Replicas {
                    bus: fleet.bus.clone(),
                    shared: fleet.shared.clone(),
                    lock: fleet.settings,
                },
                Arc::from("a"),
                Clock::system(),
            ),
            key: Arc::from("k"),
            token: Some("a-1".to_owned()),
        };
        let waiting = tokio::spawn({
            let fleet = fleet.clone();
            async move { fleet.take_turn("k").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // What the listener does with the message the holder publishes.
        let mut sub = bus.subscribe().await.expect("in process");
        a.fail("status 503").await;
        let (channel, message) = sub.messages.next().await.expect("a fill message");
        assert!(matches!(channel, Channel::Fill));
        fleet.wake(&message);
        let started = Instant::now();
        match waiting.await.expect("no panic") {
            Turn::Failed(failure) => assert_eq!(&*failure, "status 503"),
            _ => panic!("the waiter did not take the holder's failure"),
        }
        assert!(started.elapsed() < poll, "waited {:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_of_the_holders_own_sends_the_waiter_to_compete_for_the_lock() {
        let (bus, fleet) = waiting_on_a(Duration::from_millis(500)).await;
        let waiting = tokio::spawn({
            let fleet = fleet.clone();
            async move { fleet.take_turn("k").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The holder's own concurrency limit: a plain release; the waiter takes the lock.
        bus.unlock("k", "a-1").await;
        fleet.wake("k");
        assert!(matches!(waiting.await.expect("no panic"), Turn::Lead(_)));
    }

    #[tokio::test]
    async fn a_dropped_registration_is_forgotten() {
        let waiters = Arc::new(FleetWaiters::default());
        drop(waiters.register("k"));
        assert!(waiters.lock().is_empty());
        waiters.wake("k", None); // nobody waits: nothing happens
    }
}
