//! The message bus replicas meet on: fleet locks, the purge and fill channels, and the purge
//! records a replica's disk tier catches up from. [`MessageBus`] is the seam; [`RedisBus`] is
//! the production one (over the shared [`RedisClient`]), [`MemoryBus`] one in process, so that
//! tests can run a fleet of read-throughs in one process without Redis.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::cache::purge::{PurgeRecords, RecordsUnavailable, TRIMMED_MEMBER};
use crate::cache::redis::{CommandError, RedisClient, RedisOp};

/// The channels replicas publish on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Purges, for every replica's own tiers.
    Invalidate,
    /// Keys whose fleet lock was let go (see `cache::fleet`).
    Fill,
}

/// The bus could not be reached (its message says why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message bus unavailable: {0}")]
pub struct BusError(pub String);

impl From<CommandError> for BusError {
    fn from(e: CommandError) -> Self {
        BusError(e.to_string())
    }
}

/// A subscription to both channels: messages in order, until it ends or is known lost.
pub struct Subscription {
    /// `(channel, message)` as published; ends when the subscription drops.
    pub messages: BoxStream<'static, (Channel, String)>,
    /// Whether the subscription is known lost though its stream is open (the node it is on is
    /// down: a hung node keeps the socket open and delivers nothing).
    pub lost: Box<dyn Fn() -> bool + Send + Sync>,
}

/// What the fleet protocol and the purge fan-out need from wherever replicas meet.
pub trait MessageBus: Clone + Send + Sync + 'static {
    /// Whether the bus is believed reachable (a lock is not even tried when it is not).
    fn is_up(&self) -> bool;
    /// Takes `key`'s lock for `ttl` with `token` if nobody holds it: `Some(true)` when taken,
    /// `None` when the bus failed.
    fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> impl Future<Output = Option<bool>> + Send;
    /// Whether anybody holds `key`'s lock; `None` when the bus failed.
    fn is_locked(&self, key: &str) -> impl Future<Output = Option<bool>> + Send;
    /// Lets go of `key`'s lock if `token` still holds it.
    fn unlock(&self, key: &str, token: &str) -> impl Future<Output = ()> + Send;
    /// Publishes `message` on `channel` to every replica subscribed (this one included).
    fn publish(&self, channel: Channel, message: &str) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Subscribes to both channels.
    fn subscribe(&self) -> impl Future<Output = Result<Subscription, BusError>> + Send;
}

/// The buses the service has.
#[derive(Clone)]
pub enum AnyBus {
    /// Through Redis: every replica that shares it.
    Redis(RedisBus),
    /// In this process: every read-through that shares the bus (tests, benchmarks).
    Memory(MemoryBus),
}

impl MessageBus for AnyBus {
    fn is_up(&self) -> bool {
        match self {
            AnyBus::Redis(b) => b.is_up(),
            AnyBus::Memory(b) => b.is_up(),
        }
    }
    async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Option<bool> {
        match self {
            AnyBus::Redis(b) => b.try_lock(key, token, ttl).await,
            AnyBus::Memory(b) => b.try_lock(key, token, ttl).await,
        }
    }
    async fn is_locked(&self, key: &str) -> Option<bool> {
        match self {
            AnyBus::Redis(b) => b.is_locked(key).await,
            AnyBus::Memory(b) => b.is_locked(key).await,
        }
    }
    async fn unlock(&self, key: &str, token: &str) {
        match self {
            AnyBus::Redis(b) => b.unlock(key, token).await,
            AnyBus::Memory(b) => b.unlock(key, token).await,
        }
    }
    async fn publish(&self, channel: Channel, message: &str) -> Result<(), BusError> {
        match self {
            AnyBus::Redis(b) => b.publish(channel, message).await,
            AnyBus::Memory(b) => b.publish(channel, message).await,
        }
    }
    async fn subscribe(&self) -> Result<Subscription, BusError> {
        match self {
            AnyBus::Redis(b) => b.subscribe().await,
            AnyBus::Memory(b) => b.subscribe().await,
        }
    }
}

impl PurgeRecords for AnyBus {
    fn record<'a>(
        &'a self,
        member: &'a str,
        at_ms: u64,
        keep_ms: u64,
    ) -> BoxFuture<'a, Result<(), RecordsUnavailable>> {
        match self {
            AnyBus::Redis(b) => b.record(member, at_ms, keep_ms),
            AnyBus::Memory(b) => b.record(member, at_ms, keep_ms),
        }
    }
    fn since(&self, since_ms: u64) -> BoxFuture<'_, Result<Vec<(String, u64)>, RecordsUnavailable>> {
        match self {
            AnyBus::Redis(b) => b.since(since_ms),
            AnyBus::Memory(b) => b.since(since_ms),
        }
    }
    fn epoch(&self) -> BoxFuture<'_, Result<String, RecordsUnavailable>> {
        match self {
            AnyBus::Redis(b) => b.epoch(),
            AnyBus::Memory(b) => b.epoch(),
        }
    }
}

/// The bus through Redis: locks are `SET NX PX` keys, channels are pub/sub channels, purge
/// records a sorted set, all under `REDIS_KEY_PREFIX`.
#[derive(Clone)]
pub struct RedisBus {
    client: RedisClient,
    names: Arc<ChannelNames>,
}

/// The channels' names under `REDIS_KEY_PREFIX`.
struct ChannelNames {
    /// `{REDIS_KEY_PREFIX}:invalidate`: purges, for every replica's own tiers.
    invalidate: String,
    /// `{REDIS_KEY_PREFIX}:filled`: keys whose fleet lock was let go.
    fill: String,
    /// The same two as sharded channels (`{<REDIS_KEY_PREFIX>:bus}:invalidate` and `…:filled`,
    /// one slot), used in a Redis Cluster that speaks sharded pub/sub.
    sharded_invalidate: String,
    sharded_fill: String,
}

/// The messages of a subscription by channel name, and whether it is lost.
type Heard = (
    BoxStream<'static, (String, String)>,
    Box<dyn Fn() -> bool + Send + Sync>,
);

impl RedisBus {
    /// The bus over `client`, its channels under `key_prefix` (`REDIS_KEY_PREFIX`).
    pub fn new(client: RedisClient, key_prefix: &str) -> Self {
        RedisBus {
            client,
            names: Arc::new(ChannelNames {
                invalidate: format!("{key_prefix}:invalidate"),
                fill: format!("{key_prefix}:filled"),
                sharded_invalidate: format!("{{{key_prefix}:bus}}:invalidate"),
                sharded_fill: format!("{{{key_prefix}:bus}}:filled"),
            }),
        }
    }

    fn channel_name(&self, channel: Channel) -> &str {
        match channel {
            Channel::Invalidate => &self.names.invalidate,
            Channel::Fill => &self.names.fill,
        }
    }

    fn sharded_name(&self, channel: Channel) -> &str {
        match channel {
            Channel::Invalidate => &self.names.sharded_invalidate,
            Channel::Fill => &self.names.sharded_fill,
        }
    }
}

impl MessageBus for RedisBus {
    fn is_up(&self) -> bool {
        self.client.is_up()
    }

    async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Option<bool> {
        let lock = self.client.lock_key(key);
        let cmd = redis::cmd("SET")
            .arg(&lock)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .to_owned();
        self.client
            .write::<Option<String>>(RedisOp::Lock, lock.as_bytes(), &cmd)
            .await
            .ok()
            .map(|r| r.is_some())
    }

    async fn is_locked(&self, key: &str) -> Option<bool> {
        let lock = self.client.lock_key(key);
        let cmd = redis::cmd("EXISTS").arg(&lock).to_owned();
        self.client
            .run::<i64>(RedisOp::Lock, lock.as_bytes(), &cmd)
            .await
            .ok()
            .map(|n| n > 0)
    }

    async fn unlock(&self, key: &str, token: &str) {
        const SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
        let lock = self.client.lock_key(key);
        let cmd = redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(1)
            .arg(&lock)
            .arg(token)
            .to_owned();
        let _ = self.client.run::<i64>(RedisOp::Lock, lock.as_bytes(), &cmd).await;
    }

    /// In a Redis Cluster whose masters all speak it, by sharded pub/sub (the message stays in
    /// one shard, not sent to every node over the cluster bus); else by classic `PUBLISH`.
    async fn publish(&self, channel: Channel, message: &str) -> Result<(), BusError> {
        if self.client.sharded_pubsub() {
            return Ok(self.client.spublish(self.sharded_name(channel), message).await?);
        }
        Ok(self.client.publish(self.channel_name(channel), message).await?)
    }

    /// The classic channels, and in a Redis Cluster whose shard speaks it the sharded ones too:
    /// replicas that publish either way (an older release during a rollout, or one that has not
    /// yet seen every master's version) are heard. The subscription is lost when either drops.
    async fn subscribe(&self) -> Result<Subscription, BusError> {
        let names = &self.names;
        let (pubsub, node) = self.client.subscribe(&[&names.invalidate, &names.fill]).await?;
        let classic = pubsub.into_on_message().filter_map(move |msg| {
            let text = msg.get_payload::<String>().ok();
            std::future::ready(text.map(|text| (msg.get_channel_name().to_owned(), text)))
        });
        let client = self.client.clone();
        let sharded = if self.client.shard_speaks_sharded_pubsub(&names.sharded_fill) {
            Some(
                self.client
                    .ssubscribe(&[&names.sharded_invalidate, &names.sharded_fill])
                    .await?,
            )
        } else {
            None
        };
        let (messages, lost): Heard = match sharded {
            None => (classic.boxed(), Box::new(move || client.node_down(&node))),
            Some((received, shard)) => {
                let lost_channel = names.sharded_invalidate.clone();
                let sharded = futures_util::stream::unfold(received, |mut rx| async move {
                    rx.recv().await.map(|m| (m, rx))
                });
                // Either stream's end ends the subscription (a `None` marks it).
                let either = futures_util::stream::select(
                    classic
                        .map(Some)
                        .chain(futures_util::stream::once(async { None })),
                    sharded
                        .map(Some)
                        .chain(futures_util::stream::once(async { None })),
                )
                .take_while(|m| std::future::ready(m.is_some()))
                .filter_map(std::future::ready);
                (
                    either.boxed(),
                    Box::new(move || {
                        client.node_down(&node)
                            || client.node_down(&shard)
                            || !client.serves(&shard, &lost_channel)
                    }),
                )
            }
        };
        let names = names.clone();
        let messages = messages
            .map(move |(name, text)| {
                let channel = if name == names.fill || name == names.sharded_fill {
                    Channel::Fill
                } else {
                    Channel::Invalidate
                };
                (channel, text)
            })
            .boxed();
        Ok(Subscription { messages, lost })
    }
}

impl PurgeRecords for RedisBus {
    fn record<'a>(
        &'a self,
        member: &'a str,
        at_ms: u64,
        keep_ms: u64,
    ) -> BoxFuture<'a, Result<(), RecordsUnavailable>> {
        Box::pin(async move { Ok(self.client.record_purge(member, at_ms, keep_ms).await?) })
    }
    fn since(&self, since_ms: u64) -> BoxFuture<'_, Result<Vec<(String, u64)>, RecordsUnavailable>> {
        Box::pin(async move { Ok(self.client.purge_records(since_ms).await?) })
    }
    fn epoch(&self) -> BoxFuture<'_, Result<String, RecordsUnavailable>> {
        Box::pin(async move { Ok(self.client.purge_epoch().await?) })
    }
}

/// A bus in this process: what the Redis bus does, for read-throughs that share it (each clone
/// is the same bus). It can be taken down and brought back, as Redis can.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<MemoryBusInner>,
}

struct MemoryBusInner {
    /// Lock key → (token, until).
    locks: Mutex<HashMap<String, (String, Instant)>>,
    /// Both channels, in publication order.
    messages: broadcast::Sender<(Channel, String)>,
    /// Purge records: (member, time), oldest first.
    records: Mutex<Vec<(String, u64)>>,
    /// Taken down by a test.
    down: AtomicBool,
    /// The records' id, changed when a test loses them.
    epoch: Mutex<String>,
    /// Until when subscribers hear nothing (their subscriptions are lost, new ones refused),
    /// while publishing and recording go on: one replica cut off from the others.
    deaf_until: Mutex<Option<Instant>>,
    /// The most records kept (the oldest go first, leaving the trim mark), as Redis keeps
    /// at most `PURGE_RECORDS_MAX`.
    records_max: std::sync::atomic::AtomicUsize,
    /// Run once, the next time a lock is refused, before the refusal is returned (tests: what
    /// lands between Redis refusing a lock and the refusal reaching the replica).
    #[cfg(test)]
    on_refused: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// Messages a subscriber may fall behind by before its subscription is lost (as a Redis
/// subscriber whose output buffer overflows is disconnected).
const MEMORY_BUS_BACKLOG: usize = 4096;

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus {
            inner: Arc::new(MemoryBusInner {
                locks: Mutex::default(),
                messages: broadcast::channel(MEMORY_BUS_BACKLOG).0,
                records: Mutex::default(),
                down: AtomicBool::new(false),
                epoch: Mutex::new(format!("{:016x}", rand::random::<u64>())),
                deaf_until: Mutex::new(None),
                records_max: std::sync::atomic::AtomicUsize::new(usize::MAX),
                #[cfg(test)]
                on_refused: Mutex::default(),
            }),
        }
    }
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the bus down (every call fails, subscriptions are lost) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// Cuts every subscriber off for `period`: subscriptions are lost and new ones refused, and
    /// what is published meanwhile reaches nobody; purges are still recorded.
    pub fn deafen_for(&self, period: Duration) {
        *self.inner.deaf_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + period);
    }

    fn deaf(&self) -> bool {
        self.inner
            .deaf_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// How many subscriptions are listening now.
    pub fn subscribers(&self) -> usize {
        self.inner.messages.receiver_count()
    }

    /// Keeps at most `max` purge records from now on; older ones are dropped as Redis drops
    /// those past its count.
    pub fn keep_records(&self, max: usize) {
        self.inner.records_max.store(max.max(1), Ordering::SeqCst);
    }

    /// Loses the purge records, as a Redis that restarted empty does.
    pub fn lose_records(&self) {
        self.inner
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.inner.epoch.lock().unwrap_or_else(|p| p.into_inner()) =
            format!("{:016x}", rand::random::<u64>());
    }

    /// The records can be read and written unless the bus is down.
    fn records_up(&self) -> Result<(), RecordsUnavailable> {
        match self.down() {
            true => Err(RecordsUnavailable("the in-process bus is down".to_owned())),
            false => Ok(()),
        }
    }

    fn down(&self) -> bool {
        self.inner.down.load(Ordering::SeqCst)
    }

    /// Runs `f` once, the next time a lock is refused, before the refusal is returned.
    #[cfg(test)]
    pub(crate) fn on_refused(&self, f: impl FnOnce() + Send + 'static) {
        *self.inner.on_refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.inner.locks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MessageBus for MemoryBus {
    fn is_up(&self) -> bool {
        !self.down()
    }

    async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Option<bool> {
        if self.down() {
            return None;
        }
        let now = Instant::now();
        let refused = {
            let mut locks = self.locks();
            match locks.get(key) {
                Some((_, until)) if *until > now => true,
                _ => {
                    locks.insert(key.to_owned(), (token.to_owned(), now + ttl));
                    false
                }
            }
        };
        #[cfg(test)]
        if refused {
            let hook = self
                .inner
                .on_refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(hook) = hook {
                hook();
            }
        }
        Some(!refused)
    }

    async fn is_locked(&self, key: &str) -> Option<bool> {
        if self.down() {
            return None;
        }
        Some(
            self.locks()
                .get(key)
                .is_some_and(|(_, until)| *until > Instant::now()),
        )
    }

    async fn unlock(&self, key: &str, token: &str) {
        if self.down() {
            return;
        }
        let mut locks = self.locks();
        if locks.get(key).is_some_and(|(held, _)| held == token) {
            locks.remove(key);
        }
    }

    async fn publish(&self, channel: Channel, message: &str) -> Result<(), BusError> {
        if self.down() {
            return Err(BusError("the in-process bus is down".to_owned()));
        }
        // No subscriber is not an error (as PUBLISH to nobody is not).
        if !self.deaf() {
            let _ = self.inner.messages.send((channel, message.to_owned()));
        }
        Ok(())
    }

    async fn subscribe(&self) -> Result<Subscription, BusError> {
        if self.down() || self.deaf() {
            return Err(BusError("the in-process bus is down".to_owned()));
        }
        let receiver = self.inner.messages.subscribe();
        // Falling behind loses the subscription (the listener subscribes again and catches up).
        let messages =
            futures_util::stream::unfold(
                receiver,
                |mut rx| async move { rx.recv().await.ok().map(|m| (m, rx)) },
            )
            .boxed();
        let bus = self.clone();
        Ok(Subscription {
            messages,
            lost: Box::new(move || bus.down() || bus.deaf()),
        })
    }
}

impl PurgeRecords for MemoryBus {
    fn record<'a>(
        &'a self,
        member: &'a str,
        at_ms: u64,
        keep_ms: u64,
    ) -> BoxFuture<'a, Result<(), RecordsUnavailable>> {
        Box::pin(async move {
            self.records_up()?;
            let mut records = self.inner.records.lock().unwrap_or_else(|p| p.into_inner());
            records.retain(|(_, at)| *at + keep_ms >= at_ms);
            records.push((member.to_owned(), at_ms));
            let max = self.inner.records_max.load(Ordering::SeqCst);
            if records.len() > max {
                let cut = records.len() - max;
                let newest_dropped = records[cut - 1].1;
                records.drain(..cut);
                records.retain(|(m, _)| m != TRIMMED_MEMBER);
                records.insert(0, (TRIMMED_MEMBER.to_owned(), newest_dropped));
            }
            Ok(())
        })
    }
    fn since(&self, since_ms: u64) -> BoxFuture<'_, Result<Vec<(String, u64)>, RecordsUnavailable>> {
        Box::pin(async move {
            self.records_up()?;
            let records = self.inner.records.lock().unwrap_or_else(|p| p.into_inner());
            Ok(records
                .iter()
                .filter(|(_, at)| *at >= since_ms)
                .cloned()
                .collect())
        })
    }
    fn epoch(&self) -> BoxFuture<'_, Result<String, RecordsUnavailable>> {
        Box::pin(async move {
            self.records_up()?;
            Ok(self.inner.epoch.lock().unwrap_or_else(|p| p.into_inner()).clone())
        })
    }
}
