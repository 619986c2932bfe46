//! The shared tier in Redis (one server or a Redis Cluster): entries, fleet-wide fetch locks and
//! the invalidation channel. Redis being down or slow never blocks a request: every command has a
//! deadline, and a Redis known to be down is skipped until a background ping finds it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, RedisFuture, Value};
use tokio::sync::OnceCell;

use super::entry::{Entry, now_ms};
use super::tier::{Tier, TierError, TierName};
use crate::config::RedisConfig;
use crate::telemetry::Metrics;

/// Bumped when the stored format changes, so old and new releases can share one Redis.
const FORMAT_VERSION: &str = "v1";

/// The Redis tier; cheap to clone (all state is shared).
#[derive(Clone)]
pub struct RedisTier {
    shared: Arc<Shared>,
}

/// The pub/sub channels replicas talk on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Purges: `mode\ninstance\nkey`.
    Invalidate,
    /// A key whose fleet lock was let go.
    Fill,
}

struct Shared {
    /// The connection, or the cell a cluster connection lands in once made.
    conn: Connection,
    /// `{REDIS_KEY_PREFIX}:v1:`.
    key_prefix: String,
    /// `{REDIS_KEY_PREFIX}:invalidate`: purges, for every replica's memory tier.
    channel: String,
    /// `{REDIS_KEY_PREFIX}:filled`: keys whose fleet lock was let go (see `cache::fleet`).
    fill_channel: String,
    /// Deadline of one command.
    response_timeout: Duration,
    /// The largest entry this service can write (from `ORIGIN_MAX_BODY_BYTES`); larger values
    /// under an entry key are refused after reading at most one byte more than this.
    max_entry_bytes: usize,
    /// Deadline of one connection attempt.
    connect_timeout: Duration,
    /// Whether Redis answered the last ping / command; while false, requests skip Redis.
    up: AtomicBool,
    /// Whether a ping has run yet (the first failure is logged).
    pinged: AtomicBool,
    /// Where pub/sub connections are opened: every URL, tried in turn (in a cluster any node
    /// will do: classic PUBLISH reaches every node's subscribers), so losing one node does not
    /// stop purges from arriving.
    pubsub_infos: Vec<ConnectionInfo>,
    /// The next of `pubsub_infos` to try.
    next_pubsub: AtomicUsize,
    /// `REDIS_TLS_CA_FILE`'s PEM, for the pub/sub connections too.
    tls_ca_pem: Option<Vec<u8>>,
    /// Redis error counters.
    metrics: Arc<Metrics>,
    /// Writes (entry `SET`s and fleet locks) that failed while Redis answered otherwise, e.g.
    /// at `maxmemory` with `noeviction`: reads work, nothing new is stored.
    writes: WriteHealth,
}

/// How long a failed write keeps the tier `write_failing` when no write has succeeded since.
const WRITE_FAILING_FOR_MS: u64 = 10_000;

/// The last failed and the last successful write, and a rate-limited log of failures.
#[derive(Default)]
struct WriteHealth {
    /// When a write last failed (ms since the epoch; 0 = never).
    failed_ms: AtomicU64,
    /// When a write last succeeded (ms since the epoch).
    ok_ms: AtomicU64,
    /// When the last `warn` line about failing writes was written.
    logged_ms: AtomicU64,
    /// Failures since that line.
    unlogged: AtomicU64,
}

impl WriteHealth {
    fn record(&self, ok: bool, error: Option<&TierError>) {
        let now = now_ms();
        if ok {
            self.ok_ms.store(now, Ordering::Relaxed);
            return;
        }
        self.failed_ms.store(now, Ordering::Relaxed);
        let count = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WRITE_FAILING_FOR_MS
            && self
                .logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unlogged.fetch_sub(count, Ordering::Relaxed);
            let why = error.map(ToString::to_string).unwrap_or_default();
            tracing::warn!(
                failed = count,
                why,
                "redis refuses writes: new entries and fleet locks are not stored (at most one line per 10 s)"
            );
        }
    }

    /// A write failed in the last 10 s and none has succeeded since.
    fn failing(&self) -> bool {
        let failed = self.failed_ms.load(Ordering::Relaxed);
        failed != 0
            && failed >= self.ok_ms.load(Ordering::Relaxed)
            && now_ms().saturating_sub(failed) < WRITE_FAILING_FOR_MS
    }
}

// One value per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Connection {
    Single(ConnectionManager),
    Cluster {
        client: ClusterClient,
        cell: OnceCell<ClusterConnection>,
    },
}

/// A connection handle of either kind, so commands are written once.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Why the Redis tier could not be set up (only a malformed URL; an absent Redis is fine).
#[derive(Debug, thiserror::Error)]
#[error("REDIS_URL: {0}")]
pub struct RedisSetupError(String);

fn with_password(url: &str, password: Option<&str>) -> Result<ConnectionInfo, RedisSetupError> {
    let info = url
        .into_connection_info()
        .map_err(|e| RedisSetupError(e.to_string()))?;
    Ok(match password {
        Some(pw) if info.redis_settings().password().is_none() => {
            let settings = info.redis_settings().clone().set_password(pw);
            info.set_redis_settings(settings)
        }
        _ => info,
    })
}

/// A client for one server, trusting `ca_pem` for `rediss://` when given.
fn open_client(info: &ConnectionInfo, ca_pem: Option<&[u8]>) -> redis::RedisResult<Client> {
    match ca_pem {
        Some(pem) => Client::build_with_tls(
            info.clone(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => Client::open(info.clone()),
    }
}

impl RedisTier {
    /// Prepares the tier without connecting; call [`RedisTier::start`] to connect in the background.
    /// `max_entry_bytes` bounds what a read of one entry transfers (see [`Entry::max_encoded_len`]).
    pub fn new(
        config: &RedisConfig,
        max_entry_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RedisSetupError> {
        let infos = config
            .urls
            .iter()
            .map(|u| with_password(u, config.password.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: config.tls_ca_pem.clone(),
        };
        let conn = if config.cluster {
            let mut builder = ClusterClient::builder(infos.clone());
            if config.tls_ca_pem.is_some() {
                builder = builder.certs(certs());
            }
            let client = builder
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout)
                .build()
                .map_err(|e| RedisSetupError(e.to_string()))?;
            Connection::Cluster {
                client,
                cell: OnceCell::new(),
            }
        } else {
            let client = open_client(&infos[0], config.tls_ca_pem.as_deref())
                .map_err(|e| RedisSetupError(e.to_string()))?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.response_timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
                .map_err(|e| RedisSetupError(e.to_string()))?;
            Connection::Single(manager)
        };
        Ok(RedisTier {
            shared: Arc::new(Shared {
                conn,
                key_prefix: format!("{}:{FORMAT_VERSION}:", config.key_prefix),
                channel: format!("{}:invalidate", config.key_prefix),
                fill_channel: format!("{}:filled", config.key_prefix),
                response_timeout: config.response_timeout,
                max_entry_bytes,
                connect_timeout: config.connect_timeout,
                up: AtomicBool::new(false),
                pinged: AtomicBool::new(false),
                pubsub_infos: infos.clone(),
                tls_ca_pem: config.tls_ca_pem.clone(),
                next_pubsub: AtomicUsize::new(0),
                metrics,
                writes: WriteHealth::default(),
            }),
        })
    }

    /// Pings Redis once (bounded by the connect and response timeouts), then keeps pinging in
    /// the background so a Redis that went away is found again without a restart.
    pub async fn start(&self) {
        self.ping().await;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let pause = if me.is_up() { 1000 } else { 250 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                me.ping().await;
            }
        });
    }

    async fn ping(&self) {
        let s = &self.shared;
        let budget = s.connect_timeout + s.response_timeout;
        let outcome = match tokio::time::timeout(budget, self.connection()).await {
            Ok(Some(mut conn)) => {
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut conn);
                match tokio::time::timeout(s.response_timeout, ping).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer to PING within REDIS_RESPONSE_TIMEOUT_MS".to_owned()),
                }
            }
            Ok(None) => Err("cannot connect".to_owned()),
            Err(_) => Err("no connection within REDIS_CONNECT_TIMEOUT_MS".to_owned()),
        };
        let was = s.up.swap(outcome.is_ok(), Ordering::Relaxed);
        // Log changes only, and the first failure, so an outage is one line, not one per ping.
        let first = !s.pinged.swap(true, Ordering::Relaxed);
        match outcome {
            Ok(()) if !was => tracing::info!("redis is reachable"),
            Err(why) if was || first => {
                tracing::warn!(%why, "redis is unreachable; serving from memory and origin")
            }
            _ => {}
        }
    }

    /// Whether Redis answered lately; `/health` reports it.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Whether Redis answers but refuses writes (a `SET` or a lock failed in the last 10 s and
    /// none has succeeded since); `/health` reports it as `write_failing`.
    pub fn writes_failing(&self) -> bool {
        self.shared.writes.failing()
    }

    /// Runs a write, remembering whether it failed for [`RedisTier::writes_failing`]. Writes
    /// skipped because Redis is down are not counted: the tier is `down` then.
    async fn write<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Result<T, TierError> {
        let result = self.run(op, cmd).await;
        match &result {
            Err(TierError::Unavailable) => {}
            Ok(_) => self.shared.writes.record(true, None),
            Err(e) => self.shared.writes.record(false, Some(e)),
        }
        result
    }

    async fn connection(&self) -> Option<Conn> {
        match &self.shared.conn {
            Connection::Single(m) => Some(Conn::Single(m.clone())),
            Connection::Cluster { client, cell } => {
                let conn = cell
                    .get_or_try_init(|| client.get_async_connection())
                    .await
                    .ok()?;
                Some(Conn::Cluster(conn.clone()))
            }
        }
    }

    /// Runs `cmd` within the response timeout; failures are counted under `op` and mark Redis down.
    async fn run<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Result<T, TierError> {
        if !self.is_up() {
            return Err(TierError::Unavailable);
        }
        let s = &self.shared;
        let mut conn = match &s.conn {
            Connection::Single(m) => Conn::Single(m.clone()),
            Connection::Cluster { cell, .. } => {
                Conn::Cluster(cell.get().ok_or(TierError::Unavailable)?.clone())
            }
        };
        let result = tokio::time::timeout(s.response_timeout, cmd.query_async::<T>(&mut conn)).await;
        let error = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                self.mark_down(op, &e.to_string());
                TierError::Failed(e.to_string())
            }
            Ok(Err(e)) => TierError::Failed(e.to_string()),
            Err(_) => {
                self.mark_down(op, "no answer within REDIS_RESPONSE_TIMEOUT_MS");
                TierError::Timeout
            }
        };
        s.metrics.redis_error(op);
        tracing::debug!(op, %error, "redis command failed");
        Err(error)
    }

    /// Skips Redis until the background ping finds it again.
    fn mark_down(&self, op: &'static str, why: &str) {
        if self.shared.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                op,
                why,
                "redis failed; serving from memory and origin until it answers again"
            );
        }
    }

    fn entry_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.shared.key_prefix.len() + 2 + key.len());
        k.push_str(&self.shared.key_prefix);
        k.push_str("k:");
        k.push_str(key);
        k
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}l:{key}", self.shared.key_prefix)
    }

    /// Publishes `message` on the invalidation channel.
    pub async fn publish(&self, message: &str) -> Result<(), TierError> {
        self.publish_on(&self.shared.channel, message).await
    }

    /// Tells the replicas waiting on this process's fetch of `key` that the lock was let go.
    pub async fn publish_fill(&self, key: &str) -> Result<(), TierError> {
        self.publish_on(&self.shared.fill_channel, key).await
    }

    async fn publish_on(&self, channel: &str, message: &str) -> Result<(), TierError> {
        let cmd = redis::cmd("PUBLISH").arg(channel).arg(message).to_owned();
        self.run::<i64>("publish", &cmd).await.map(drop)
    }

    /// Which channel a pub/sub message came from.
    pub fn channel_of(&self, name: &str) -> Channel {
        if name == self.shared.fill_channel {
            Channel::Fill
        } else {
            Channel::Invalidate
        }
    }

    /// Takes the fleet-wide fetch lock for `key` if nobody holds it; `true` when taken.
    pub async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, TierError> {
        let cmd = redis::cmd("SET")
            .arg(self.lock_key(key))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .to_owned();
        self.write::<Option<String>>("lock", &cmd)
            .await
            .map(|r| r.is_some())
    }

    /// Whether anybody holds the fetch lock for `key`.
    pub async fn is_locked(&self, key: &str) -> Result<bool, TierError> {
        let cmd = redis::cmd("EXISTS").arg(self.lock_key(key)).to_owned();
        self.run::<i64>("lock", &cmd).await.map(|n| n > 0)
    }

    /// Releases the fetch lock for `key` if `token` still holds it.
    pub async fn unlock(&self, key: &str, token: &str) -> Result<(), TierError> {
        const SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
        let cmd = redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(1)
            .arg(self.lock_key(key))
            .arg(token)
            .to_owned();
        self.run::<i64>("lock", &cmd).await.map(drop)
    }

    /// Opens a pub/sub connection subscribed to the invalidation and fill channels.
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub, TierError> {
        let s = &self.shared;
        let next = s.next_pubsub.fetch_add(1, Ordering::Relaxed);
        let info = &s.pubsub_infos[next % s.pubsub_infos.len()];
        let open = async {
            let client = open_client(info, s.tls_ca_pem.as_deref())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[&s.channel, &s.fill_channel]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(s.connect_timeout + s.response_timeout, open).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => {
                s.metrics.redis_error("subscribe");
                Err(TierError::Failed(e.to_string()))
            }
            Err(_) => {
                s.metrics.redis_error("subscribe");
                Err(TierError::Timeout)
            }
        }
    }
}

impl Tier for RedisTier {
    fn name(&self) -> TierName {
        TierName::Redis
    }

    async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, TierError> {
        // GETRANGE rather than GET: a value larger than this service could have written (put
        // there by something else) is never transferred whole, so it cannot hold up the other
        // commands sharing the connection. A missing key reads as empty.
        let max = self.shared.max_entry_bytes;
        let cmd = redis::cmd("GETRANGE")
            .arg(self.entry_key(key))
            .arg(0)
            .arg(max)
            .to_owned();
        let bytes: Vec<u8> = self.run("get", &cmd).await?;
        if bytes.len() > max {
            self.shared.metrics.redis_error("get");
            tracing::warn!(
                limit = max,
                "redis holds a value larger than this service can write under an entry key; removed, and replaced by the next fetch"
            );
            // No replica can use it: UNLINK (freed in the background, not blocking Redis) so
            // the next read, here or elsewhere, does not pay for it again.
            let unlink = redis::cmd("UNLINK").arg(self.entry_key(key)).to_owned();
            let _ = self.run::<i64>("del", &unlink).await;
            return Ok(None);
        }
        Ok(Some(bytes)
            .filter(|b| !b.is_empty())
            .and_then(|b| Entry::decode(key, &b))
            .filter(|e| e.stale_until_ms > now_ms())
            .map(Arc::new))
    }

    async fn put(&self, key: &str, entry: Arc<Entry>) -> Result<(), TierError> {
        let keep_ms = entry.stale_until_ms.saturating_sub(now_ms());
        if keep_ms == 0 {
            return Ok(());
        }
        let cmd = redis::cmd("SET")
            .arg(self.entry_key(key))
            .arg(entry.encode())
            .arg("PX")
            .arg(keep_ms)
            .to_owned();
        self.write::<()>("set", &cmd).await
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        let cmd = redis::cmd("DEL").arg(self.entry_key(key)).to_owned();
        self.run::<i64>("del", &cmd).await.map(drop)
    }
}
