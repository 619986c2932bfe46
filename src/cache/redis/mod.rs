//! The Redis client every Redis user of the cache shares (the tier, the fleet lock, the purge
//! channel and purge records): one set of connections and one view of node health, for one
//! server or a Redis Cluster. Redis being down or slow never blocks a request: every command
//! has a deadline, and a node known to be down is skipped until a background ping finds it again.
//!
//! Health is kept per node (per master, in a cluster), not for Redis as a whole: a hung or
//! dead master costs only the keys in its slots. Commands go to the node that serves the key over
//! that node's own connection, routed by this module's slot map rather than by the `redis`
//! crate's cluster client, whose single pipeline let one hung node hold up every other node's
//! commands (and could wedge for good after a failover). A maintenance task (see
//! [`RedisClient::start`]) keeps the slot map from `CLUSTER SLOTS` (at once after a `MOVED`), pings
//! every master over a fresh connection of its own, and rebuilds a node's command connection when
//! commands keep failing on a node that answers pings (a wedged connection), with backoff.

mod sharded;

pub use crate::cache::labels::RedisOp;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cache::entry::now_ms;
use crate::cache::purge::TRIMMED_MEMBER;
use crate::telemetry::Metrics;

/// Bumped when the stored format changes, so old and new releases can share one Redis.
const FORMAT_VERSION: &str = "v1";

/// Slots in a Redis Cluster.
const SLOTS: usize = 16384;

/// Purge records Redis keeps at most; past it the oldest go (a replica away for that many
/// purges drops what it cannot check, see `cache::tier::disk::purge_log`).
const PURGE_RECORDS_MAX: u64 = 100_000;

/// Purge records read per command (see `RedisClient::purge_records`): with keys of a
/// kilobyte, 5 MB, read well within a response timeout.
const PURGE_RECORDS_PAGE: usize = 5_000;

/// Pages read at most: the records Redis keeps, twice over (records are added while they are
/// read).
const PURGE_RECORDS_PAGES_MAX: usize = 2 * PURGE_RECORDS_MAX as usize / PURGE_RECORDS_PAGE;

/// Adds a purge record, drops those past the horizon and beyond the count, and lets the set
/// expire when no purge came for a whole horizon. Records dropped for the count leave a mark
/// ([`TRIMMED_MEMBER`], scored with the newest one dropped): a replica catching up from before
/// it knows that the records no longer cover its gap.
const RECORD_PURGE: &str = "redis.call('zadd', KEYS[1], ARGV[1], ARGV[2]) \
    redis.call('zremrangebyscore', KEYS[1], '-inf', '(' .. ARGV[3]) \
    local n = redis.call('zcard', KEYS[1]) \
    local max = tonumber(ARGV[4]) \
    if n > max then \
      local cut = redis.call('zrange', KEYS[1], n - max - 1, n - max - 1, 'WITHSCORES') \
      redis.call('zremrangebyrank', KEYS[1], 0, n - max - 1) \
      redis.call('zadd', KEYS[1], cut[2], ARGV[6]) \
    end \
    redis.call('pexpire', KEYS[1], ARGV[5]) \
    return n";

/// Commands failing on a node that answers pings for this long mean its command connection is
/// wedged: it is rebuilt.
const WEDGED_AFTER_MS: u64 = 2_000;

/// Backoff between rebuilds of a node's command connection: from this, doubling, up to `REBUILD_MAX_MS`.
const REBUILD_MIN_MS: u64 = 500;

const REBUILD_MAX_MS: u64 = 30_000;

/// How the service reaches Redis: connection info ready for the redis crate (URLs parsed,
/// `REDIS_PASSWORD` applied, the TLS CA loaded), so setting the tier up cannot fail on it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The one server, or the seed nodes of a cluster (never empty).
    pub nodes: Vec<ConnectionInfo>,
    /// `REDIS_CLUSTER`: treat `nodes` as the seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// `REDIS_KEY_PREFIX`: namespace of keys, lock keys and the channels, so several services
    /// can share one Redis.
    pub key_prefix: String,
    /// `REDIS_CONNECT_TIMEOUT_MS`: how long one connection attempt may take.
    pub connect_timeout: Duration,
    /// `REDIS_RESPONSE_TIMEOUT_MS`: how long one command may take before the request goes on
    /// without Redis.
    pub response_timeout: Duration,
}

/// The Redis client; cheap to clone (all state is shared).
#[derive(Clone)]
pub struct RedisClient {
    shared: Arc<Shared>,
}

impl From<CommandError> for crate::cache::purge::RecordsUnavailable {
    fn from(e: CommandError) -> Self {
        crate::cache::purge::RecordsUnavailable(e.to_string())
    }
}

/// Why a Redis command did not succeed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// The node is known to be down; it was not asked.
    #[error("redis node unavailable")]
    Unavailable,
    /// The node did not answer within the deadline.
    #[error("redis timed out")]
    Timeout,
    /// The node could not be reached or broke off (or, in a cluster, is between owners).
    #[error("redis error: {0}")]
    Failed(String),
    /// The node answered and refused the command (e.g. at `maxmemory` with `noeviction`).
    #[error("redis refused: {0}")]
    Refused(String),
}

/// How much of Redis answers: `/health` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisHealth {
    /// Nodes that serve keys (the masters, in a cluster; the one server otherwise).
    pub nodes: usize,
    /// Of those, how many are unreachable now.
    pub down: usize,
}

impl RedisHealth {
    /// `ok`, `partial` (some nodes down: only their keys go without Redis) or `down`.
    pub fn as_str(self) -> &'static str {
        match self.down {
            0 if self.nodes > 0 => "ok",
            d if d < self.nodes => "partial",
            _ => "down",
        }
    }
}

/// One Redis server the tier sends commands to: its health and its own ping connection.
pub(crate) struct Node {
    /// `host:port` as the cluster names it (or as configured, for one server).
    pub(crate) addr: String,
    /// How to reach it (the seed's credentials and TLS settings, with this address).
    pub(crate) info: ConnectionInfo,
    /// Whether it answered its last ping, and no command has failed on it since.
    pub(crate) up: AtomicBool,
    /// Whether a ping has run yet (the first failure is logged).
    pub(crate) pinged: AtomicBool,
    /// A ping asked for by a failed command is on its way (one at a time).
    pub(crate) ping_requested: AtomicBool,
    /// When a command on its command connection first failed since the last success
    /// (ms since the epoch; 0 = none), for the wedge check.
    pub(crate) failing_since_ms: AtomicU64,
    /// The ping connection, made again when it fails.
    pub(crate) ping_conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// The command connection (it reconnects by itself; replaced when wedged).
    pub(crate) cmd: RwLock<ConnectionManager>,
    /// The connection of writes made after the answer (entries and their tags): a connection of
    /// their own, so that a slow write never holds up the lookups behind it (Redis answers a
    /// connection's commands in order).
    pub(crate) writes: RwLock<ConnectionManager>,
    /// Whether the server speaks sharded pub/sub (`SPUBLISH`, Redis ≥ 7): one of
    /// [`SHARDED_UNKNOWN`], [`SHARDED_NO`], [`SHARDED_YES`], asked when the ping connection is made.
    pub(crate) sharded_pubsub: std::sync::atomic::AtomicU8,
    /// When the command connection may next be replaced (ms since the epoch), and the backoff.
    pub(crate) rebuild_at_ms: AtomicU64,
    pub(crate) rebuild_backoff_ms: AtomicU64,
}

impl Node {
    fn new(addr: String, info: ConnectionInfo, settings: &Settings) -> redis::RedisResult<Arc<Self>> {
        let cmd = settings.command_connection(&info)?;
        let writes = settings.command_connection(&info)?;
        Ok(Arc::new(Node {
            addr,
            info,
            up: AtomicBool::new(false),
            pinged: AtomicBool::new(false),
            ping_requested: AtomicBool::new(false),
            failing_since_ms: AtomicU64::new(0),
            ping_conn: tokio::sync::Mutex::new(None),
            sharded_pubsub: std::sync::atomic::AtomicU8::new(SHARDED_UNKNOWN),
            cmd: RwLock::new(cmd),
            writes: RwLock::new(writes),
            rebuild_at_ms: AtomicU64::new(0),
            rebuild_backoff_ms: AtomicU64::new(REBUILD_MIN_MS),
        }))
    }

    fn command_connection(&self) -> ConnectionManager {
        self.cmd.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn write_connection(&self) -> ConnectionManager {
        self.writes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the command connection (wedged: commands fail while pings succeed), no more
    /// often than the backoff allows.
    fn rebuild(&self, settings: &Settings) {
        let now = now_ms();
        if now < self.rebuild_at_ms.load(Ordering::Relaxed) {
            return;
        }
        let backoff = self.rebuild_backoff_ms.load(Ordering::Relaxed);
        self.rebuild_at_ms.store(now + backoff, Ordering::Relaxed);
        self.rebuild_backoff_ms
            .store((backoff * 2).min(REBUILD_MAX_MS), Ordering::Relaxed);
        match settings
            .command_connection(&self.info)
            .and_then(|c| Ok((c, settings.command_connection(&self.info)?)))
        {
            Ok((fresh, writes)) => {
                *self.cmd.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                *self.writes.write().unwrap_or_else(|p| p.into_inner()) = writes;
                self.failing_since_ms.store(0, Ordering::Relaxed);
                tracing::warn!(node = %self.addr, "redis command connection rebuilt: commands kept failing while the node answered pings");
            }
            Err(e) => tracing::debug!(node = %self.addr, error = %e, "redis command connection not rebuilt"),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// Which node serves which slot. One server serves them all.
pub(crate) struct Topology {
    pub(crate) nodes: Vec<Arc<Node>>,
    /// Index into `nodes` per slot; empty for one server.
    pub(crate) slots: Vec<u16>,
}

impl Topology {
    pub(crate) fn node_for(&self, redis_key: &[u8]) -> &Arc<Node> {
        if self.slots.is_empty() {
            return &self.nodes[0];
        }
        &self.nodes[usize::from(self.slots[usize::from(key_slot(redis_key))])]
    }

    /// The first node that is up, for commands that any node can run (PUBLISH).
    fn any_up(&self) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.is_up())
    }

    /// Slot owners as addresses, to tell whether a refresh changed anything.
    fn owners(&self) -> Vec<&str> {
        if self.slots.is_empty() {
            return vec![self.nodes[0].addr.as_str()];
        }
        self.slots
            .iter()
            .map(|&i| self.nodes[usize::from(i)].addr.as_str())
            .collect()
    }
}

/// The cluster slot of a Redis key (CRC16/XMODEM of the key or its `{hash tag}`, mod 16384).
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS as u16
}

struct Shared {
    /// Node health and the slot map.
    topology: RwLock<Arc<Topology>>,
    /// What the topology is read from.
    seeds: Seeds,
    /// How connections are made.
    settings: Settings,
    /// Wakes the maintenance task to read the slot map now (after a `MOVED`).
    refresh: Notify,
    /// `{REDIS_KEY_PREFIX}:v1:`.
    key_prefix: String,
    /// The next node to subscribe on.
    next_pubsub: AtomicUsize,
    /// Redis error counters.
    metrics: Arc<Metrics>,
    /// Writes (entry `SET`s and fleet locks) that failed while Redis answered otherwise, e.g.
    /// at `maxmemory` with `noeviction`: reads work, nothing new is stored.
    writes: WriteHealth,
}

/// How every connection is made (credentials and the TLS CA travel in each node's
/// `ConnectionInfo`).
struct Settings {
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Settings {
    /// A command connection to one server: made lazily, reconnecting by itself with backoff.
    fn command_connection(&self, info: &ConnectionInfo) -> redis::RedisResult<ConnectionManager> {
        let client = Client::open(no_delay(info))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_lazy_with_config(client, config)
    }

    /// A connection of its own to one server (pings, `CLUSTER SLOTS`), made within the connect
    /// and response timeouts.
    async fn direct_connection(&self, info: &ConnectionInfo) -> redis::RedisResult<MultiplexedConnection> {
        let connect = async {
            let client = Client::open(no_delay(info))?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.response_timeout));
            client.get_multiplexed_async_connection_with_config(&config).await
        };
        tokio::time::timeout(self.connect_timeout + self.response_timeout, connect)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no connection within REDIS_CONNECT_TIMEOUT_MS",
                ))
            })?
    }
}

/// The configured servers: the one server, or a cluster's seed nodes.
struct Seeds {
    /// The configured servers, passwords and the TLS CA applied.
    infos: Vec<ConnectionInfo>,
    cluster: bool,
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
    fn record(&self, ok: bool, error: Option<&CommandError>) {
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

/// Why the Redis tier could not be set up: the redis crate refused to prepare a lazy connection.
/// Not a setting (those are parsed in `config`), and not an absent Redis (that is fine).
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare the Redis connections: {0}")]
pub struct RedisSetupError(String);

/// Why a connection to a node failed, named as what it is (a wrong password, a TLS mismatch, an
/// unknown host, a refused connection), for the log line an operator acts on.
fn why_unreachable(e: &redis::RedisError, tls: bool) -> String {
    let detail = e.to_string();
    let lower = detail.to_ascii_lowercase();
    let kind = if e.kind() == redis::ErrorKind::AuthenticationFailed
        || lower.contains("wrongpass")
        || lower.contains("noauth")
        || lower.contains("invalid password")
        || lower.contains("invalid username-password")
    {
        "authentication failed (check the password in REDIS_URL or REDIS_PASSWORD)"
    } else if lower.contains("tls")
        || (tls && (e.is_timeout() || lower.contains("timed out") || e.is_connection_dropped()))
        || lower.contains("certificate")
        || lower.contains("handshake")
        || lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
    {
        "TLS failed (no TLS handshake: a rediss:// URL against a plain-text server? or a certificate not trusted: see REDIS_TLS_CA_FILE)"
    } else if lower.contains("failed to lookup")
        || lower.contains("name or service not known")
        || lower.contains("no such host")
        || lower.contains("nodename nor servname")
        || lower.contains("temporary failure in name resolution")
    {
        "unknown host (the name in REDIS_URL does not resolve)"
    } else if lower.contains("connection refused") {
        "connection refused (nothing listens at that address)"
    } else if e.is_timeout() {
        "timed out (REDIS_CONNECT_TIMEOUT_MS)"
    } else {
        "cannot connect"
    };
    format!("{kind}: {detail}")
}

/// Whether connections to `info` use TLS (`rediss://`).
fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

/// `info` with its host and port replaced (credentials and TLS settings kept).
fn info_at(seed: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match seed.addr() {
        ConnectionAddr::TcpTls {
            insecure, tls_params, ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    seed.clone().set_addr(addr)
}

/// `info` with `TCP_NODELAY` set: a command is sent at once, not held back by Nagle's algorithm
/// until the previous one is acknowledged (up to the peer's delayed ACK, ~40 ms on Linux).
fn no_delay(info: &ConnectionInfo) -> ConnectionInfo {
    info.clone()
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
}

/// `host:port` of a connection address.
fn addr_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. } => format!("{h}:{p}"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "unknown".to_owned(),
    }
}

/// [`Node::sharded_pubsub`]: not asked yet (or the answer did not come).
pub(crate) const SHARDED_UNKNOWN: u8 = 0;
/// [`Node::sharded_pubsub`]: a server older than Redis 7.
pub(crate) const SHARDED_NO: u8 = 1;
/// [`Node::sharded_pubsub`]: `SPUBLISH` and `SSUBSCRIBE` are known.
pub(crate) const SHARDED_YES: u8 = 2;

/// Whether the server on `conn` knows `SPUBLISH` (`COMMAND INFO` answers nil for an unknown
/// command); [`SHARDED_UNKNOWN`] when it does not answer in time.
async fn speaks_sharded_pubsub(conn: &mut MultiplexedConnection, within: Duration) -> u8 {
    let ask = redis::cmd("COMMAND").arg("INFO").arg("SPUBLISH").to_owned();
    match tokio::time::timeout(within, ask.query_async::<Vec<Value>>(conn)).await {
        Ok(Ok(info)) if info.first().is_some_and(|v| !matches!(v, Value::Nil)) => SHARDED_YES,
        Ok(Ok(_)) => SHARDED_NO,
        _ => SHARDED_UNKNOWN,
    }
}

impl RedisClient {
    /// Prepares the client without connecting; call [`RedisClient::start`] to connect.
    pub fn new(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<Self, RedisSetupError> {
        let infos = config.nodes.clone();
        let settings = Settings {
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
        };
        // Until the first CLUSTER SLOTS, the seeds stand in as the nodes (all slots on the first).
        let nodes = infos
            .iter()
            .map(|i| Node::new(addr_of(i), i.clone(), &settings))
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|e| RedisSetupError(e.to_string()))?;
        Ok(RedisClient {
            shared: Arc::new(Shared {
                topology: RwLock::new(Arc::new(Topology {
                    nodes,
                    slots: Vec::new(),
                })),
                seeds: Seeds {
                    infos,
                    cluster: config.cluster,
                },
                settings,
                refresh: Notify::new(),
                key_prefix: format!("{}:{FORMAT_VERSION}:", config.key_prefix),
                next_pubsub: AtomicUsize::new(0),
                metrics,
                writes: WriteHealth::default(),
            }),
        })
    }

    /// Connects (bounded by the timeouts), then keeps the slot map and the node health current
    /// in the background, so a Redis that went away, a failover, or a wedged connection is found
    /// and followed without a restart. The task ends at `shutdown`, or with the tier's last clone.
    pub async fn start(&self, shutdown: CancellationToken) {
        self.maintain().await;
        let weak = Arc::downgrade(&self.shared);
        let upkeep = async move {
            loop {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let tier = RedisClient { shared };
                let pause = if tier.health().down == 0 { 1000 } else { 250 };
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    () = tier.shared.refresh.notified() => {}
                }
                tier.maintain().await;
            }
        };
        tokio::spawn(async move { shutdown.run_until_cancelled(upkeep).await });
    }

    /// One round of upkeep: the slot map (cluster), a ping of every node, and a new command
    /// connection for a node whose commands keep failing while it answers pings.
    async fn maintain(&self) {
        let s = &self.shared;
        if s.seeds.cluster
            && let Some(fresh) = self.read_topology().await
            && fresh.owners() != self.topology().owners()
        {
            let masters: Vec<&str> = fresh.nodes.iter().map(|n| n.addr.as_str()).collect();
            tracing::info!(?masters, "redis cluster slot map changed; following it");
            *s.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        }
        let topology = self.topology();
        let pings = topology.nodes.iter().map(|n| self.ping(n));
        futures_util::future::join_all(pings).await;
        let now = now_ms();
        for node in &topology.nodes {
            let since = node.failing_since_ms.load(Ordering::Relaxed);
            if node.is_up() && since != 0 && now.saturating_sub(since) >= WEDGED_AFTER_MS {
                node.rebuild(&s.settings);
            } else if since == 0 {
                node.rebuild_backoff_ms.store(REBUILD_MIN_MS, Ordering::Relaxed);
            }
        }
    }

    /// The slot map from the first node that answers `CLUSTER SLOTS` (nodes up first, then the
    /// seeds). Nodes already known keep their state.
    async fn read_topology(&self) -> Option<Topology> {
        let current = self.topology();
        let mut asked: Vec<ConnectionInfo> = current
            .nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| n.info.clone())
            .collect();
        asked.extend(self.shared.seeds.infos.iter().cloned());
        asked.extend(
            current
                .nodes
                .iter()
                .filter(|n| !n.is_up())
                .map(|n| n.info.clone()),
        );
        for info in asked {
            let Some(slots) = self
                .query_once::<Value>(&info, redis::cmd("CLUSTER").arg("SLOTS"))
                .await
            else {
                continue;
            };
            if let Some(t) = self.topology_from(&slots, &current) {
                return Some(t);
            }
        }
        None
    }

    /// Builds a topology from a `CLUSTER SLOTS` answer.
    fn topology_from(&self, answer: &Value, current: &Topology) -> Option<Topology> {
        let Value::Array(ranges) = answer else {
            return None;
        };
        let known: HashMap<&str, &Arc<Node>> = current.nodes.iter().map(|n| (n.addr.as_str(), n)).collect();
        let seed = &self.shared.seeds.infos[0];
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        let mut slots = vec![0u16; SLOTS];
        let mut covered = 0;
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let (Some(from), Some(to), Some(Value::Array(master))) = (
                parts.first().and_then(as_int),
                parts.get(1).and_then(as_int),
                parts.get(2),
            ) else {
                continue;
            };
            let (Some(host), Some(port)) = (master.first().and_then(as_text), master.get(1).and_then(as_int))
            else {
                continue;
            };
            let addr = format!("{host}:{port}");
            let index = match nodes.iter().position(|n| n.addr == addr) {
                Some(i) => i,
                None => {
                    let node = match known.get(addr.as_str()) {
                        Some(n) => Arc::clone(n),
                        None => Node::new(
                            addr.clone(),
                            info_at(seed, &host, port as u16),
                            &self.shared.settings,
                        )
                        .ok()?,
                    };
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            let range = (from.max(0) as usize).min(SLOTS)..=(to.max(0) as usize).min(SLOTS - 1);
            for owner in slots.get_mut(range).unwrap_or_default() {
                *owner = index as u16;
                covered += 1;
            }
        }
        (!nodes.is_empty() && covered > 0).then_some(Topology { nodes, slots })
    }

    /// Runs one command on a fresh connection to `info` within the timeouts.
    async fn query_once<T: FromRedisValue>(&self, info: &ConnectionInfo, cmd: &Cmd) -> Option<T> {
        let settings = &self.shared.settings;
        let work = async {
            let mut conn = settings.direct_connection(info).await.ok()?;
            cmd.query_async::<T>(&mut conn).await.ok()
        };
        tokio::time::timeout(settings.connect_timeout + settings.response_timeout, work)
            .await
            .ok()
            .flatten()
    }

    /// Pings `node` over its own connection (made again when it fails) and records the result.
    async fn ping(&self, node: &Arc<Node>) {
        let s = &self.shared;
        let outcome = {
            let mut slot = node.ping_conn.lock().await;
            let mut connect_error = None;
            if slot.is_none() {
                match s.settings.direct_connection(&node.info).await {
                    Ok(mut c) => {
                        if s.seeds.cluster {
                            node.sharded_pubsub.store(
                                speaks_sharded_pubsub(&mut c, s.settings.response_timeout).await,
                                Ordering::Relaxed,
                            );
                        }
                        *slot = Some(c);
                    }
                    Err(e) => connect_error = Some(why_unreachable(&e, is_tls(&node.info))),
                }
            }
            match slot.as_mut() {
                None => Err(connect_error.unwrap_or_else(|| "cannot connect".to_owned())),
                Some(conn) => {
                    let cmd = redis::cmd("PING");
                    match tokio::time::timeout(s.settings.response_timeout, cmd.query_async::<String>(conn))
                        .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => {
                            *slot = None;
                            Err(why_unreachable(&e, is_tls(&node.info)))
                        }
                        Err(_) => {
                            *slot = None;
                            Err("no answer to PING within REDIS_RESPONSE_TIMEOUT_MS".to_owned())
                        }
                    }
                }
            }
        };
        if outcome.is_err() {
            s.metrics.redis_error(RedisOp::Ping);
        }
        let was = node.up.swap(outcome.is_ok(), Ordering::Relaxed);
        // Log changes only, and the first failure, so an outage is one line per node.
        let first = !node.pinged.swap(true, Ordering::Relaxed);
        match outcome {
            Ok(()) if !was => tracing::info!(node = %node.addr, "redis is reachable"),
            Err(why) if was || first => tracing::warn!(
                node = %node.addr,
                %why,
                "redis is unreachable; its keys are served from memory and origin"
            ),
            _ => {}
        }
    }

    pub(crate) fn topology(&self) -> Arc<Topology> {
        self.shared
            .topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether any node answers: fleet locks and purges are worth trying.
    pub fn is_up(&self) -> bool {
        self.topology().nodes.iter().any(|n| n.is_up())
    }

    /// Each node's address and whether it is up, for the `redis_node_up` gauge.
    pub fn nodes_up(&self) -> Vec<(String, bool)> {
        self.topology()
            .nodes
            .iter()
            .map(|n| (n.addr.clone(), n.is_up()))
            .collect()
    }

    /// Nodes, and how many are down; `/health` reports it.
    pub fn health(&self) -> RedisHealth {
        let t = self.topology();
        RedisHealth {
            nodes: t.nodes.len(),
            down: t.nodes.iter().filter(|n| !n.is_up()).count(),
        }
    }

    /// Whether Redis answers but refuses writes (a `SET` or a lock failed in the last 10 s and
    /// none has succeeded since); `/health` reports it as `write_failing`.
    pub fn writes_failing(&self) -> bool {
        self.shared.writes.failing()
    }

    /// Runs a write, remembering whether Redis refused it, for [`RedisClient::writes_failing`].
    /// Writes that did not reach Redis (a node down, a timeout, a failover) are not counted: the
    /// node's health shows those.
    pub(crate) async fn write<T: FromRedisValue>(
        &self,
        op: RedisOp,
        key: &[u8],
        cmd: &Cmd,
    ) -> Result<T, CommandError> {
        let result = self.run(op, key, cmd).await;
        match &result {
            Ok(_) => self.shared.writes.record(true, None),
            // Redis answered and said no: it is up but not storing anything.
            Err(e @ CommandError::Refused(_)) => self.shared.writes.record(false, Some(e)),
            // Down, timed out, broke off: the node's health shows that.
            Err(_) => {}
        }
        result
    }

    /// Runs a pipeline of writes on `node` over its write connection (never ahead of, or behind,
    /// the lookups on its command connection), remembering whether Redis refused it, as
    /// [`RedisClient::write`] does for one command.
    pub(crate) async fn write_pipe<T: FromRedisValue>(
        &self,
        node: &Arc<Node>,
        pipe: &redis::Pipeline,
    ) -> Result<T, CommandError> {
        let mut conn = node.write_connection();
        let timeout = self.shared.settings.response_timeout;
        let result = self.finish(
            RedisOp::Set,
            node,
            tokio::time::timeout(timeout, pipe.query_async::<T>(&mut conn)).await,
        );
        match &result {
            Ok(_) => self.shared.writes.record(true, None),
            Err(e @ CommandError::Refused(_)) => self.shared.writes.record(false, Some(e)),
            Err(_) => {}
        }
        result
    }

    /// Runs `cmd` on `redis_key`'s node within the response timeout. A node known to be down is
    /// not asked; failures are counted under `op` and mark that node (only) down.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        op: RedisOp,
        redis_key: &[u8],
        cmd: &Cmd,
    ) -> Result<T, CommandError> {
        let node = self.node_up_for(redis_key)?;
        self.run_on(op, &node, cmd).await
    }

    /// The node serving `redis_key`, unless it is known to be down (then it is not asked).
    pub(crate) fn node_up_for(&self, redis_key: &[u8]) -> Result<Arc<Node>, CommandError> {
        let node = self.topology().node_for(redis_key).clone();
        if node.is_up() {
            Ok(node)
        } else {
            Err(CommandError::Unavailable)
        }
    }

    /// Runs `pipe` on `key`'s node over its command connection, within the response timeout.
    pub(crate) async fn run_pipe<T: FromRedisValue>(
        &self,
        op: RedisOp,
        redis_key: &[u8],
        pipe: &redis::Pipeline,
    ) -> Result<T, CommandError> {
        let node = self.node_up_for(redis_key)?;
        self.run_pipe_on(op, &node, pipe).await
    }

    /// Runs `pipe` on `node` over its command connection, within the response timeout.
    pub(crate) async fn run_pipe_on<T: FromRedisValue>(
        &self,
        op: RedisOp,
        node: &Arc<Node>,
        pipe: &redis::Pipeline,
    ) -> Result<T, CommandError> {
        let timeout = self.shared.settings.response_timeout;
        self.run_pipe_within(op, node, pipe, timeout).await
    }

    /// Runs `pipe` on `node` within `timeout` (a bulk command's own deadline, longer than
    /// one command's).
    pub(crate) async fn run_pipe_within<T: FromRedisValue>(
        &self,
        op: RedisOp,
        node: &Arc<Node>,
        pipe: &redis::Pipeline,
        timeout: Duration,
    ) -> Result<T, CommandError> {
        let mut conn = node.command_connection();
        self.finish(
            op,
            node,
            tokio::time::timeout(timeout, pipe.query_async::<T>(&mut conn)).await,
        )
    }

    /// Runs `cmd` on `node` over its command connection, within the response timeout.
    pub(crate) async fn run_on<T: FromRedisValue>(
        &self,
        op: RedisOp,
        node: &Arc<Node>,
        cmd: &Cmd,
    ) -> Result<T, CommandError> {
        let timeout = self.shared.settings.response_timeout;
        self.run_on_within(op, node, cmd, timeout).await
    }

    /// Runs `cmd` on `node` over its command connection within `timeout` (a bulk command's own
    /// deadline, longer than one command's).
    pub(crate) async fn run_on_within<T: FromRedisValue>(
        &self,
        op: RedisOp,
        node: &Arc<Node>,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<T, CommandError> {
        let mut conn = node.command_connection();
        self.finish(
            op,
            node,
            tokio::time::timeout(timeout, cmd.query_async::<T>(&mut conn)).await,
        )
    }

    /// Counts and classifies a command's outcome on `node`.
    pub(crate) fn finish<T>(
        &self,
        op: RedisOp,
        node: &Arc<Node>,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, CommandError> {
        let error = match result {
            Ok(Ok(v)) => {
                node.failing_since_ms.store(0, Ordering::Relaxed);
                return Ok(v);
            }
            Ok(Err(e)) if e.redirect_node().is_some() => {
                // The slot moved (a failover or a reshard): read the slot map now.
                self.shared.refresh.notify_one();
                CommandError::Failed(e.to_string())
            }
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                self.check_now(node, op, &e.to_string());
                CommandError::Failed(e.to_string())
            }
            // Between owners (a failover): not the server refusing this command.
            Ok(Err(e)) if e.is_cluster_error() => CommandError::Failed(e.to_string()),
            Ok(Err(e)) => CommandError::Refused(e.to_string()),
            Err(_) => {
                self.check_now(node, op, "no answer within its deadline");
                CommandError::Timeout
            }
        };
        self.shared.metrics.redis_error(op);
        tracing::debug!(op = op.as_str(), %error, "redis command failed");
        Err(error)
    }

    /// A command on `node` failed or timed out: ping it now. Only pings decide that a node is
    /// down: a slow command (a large `MGET`, a tag purge's chunk) says nothing about the node,
    /// and marking a healthy node down would cost its subscription and its keys.
    pub(crate) fn check_now(&self, node: &Arc<Node>, op: RedisOp, why: &str) {
        let _ = node
            .failing_since_ms
            .compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        tracing::debug!(node = %node.addr, op = op.as_str(), why, "redis command failed; pinging the node");
        if node.ping_requested.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tier, node) = (self.clone(), node.clone());
        tokio::spawn(async move {
            tier.ping(&node).await;
            node.ping_requested.store(false, Ordering::Release);
        });
    }

    /// The Redis key of `key`'s fleet lock.
    pub(crate) fn lock_key(&self, key: &str) -> String {
        format!("{}l:{key}", self.shared.key_prefix)
    }

    /// The sorted set of recent purges (member: the purge, score: its time in ms), read by
    /// replicas whose disk tier outlived a gap in the purge feed.
    fn purges_key(&self) -> String {
        format!("{}purges", self.shared.key_prefix)
    }

    /// Records `member` (see [`crate::cache::purge::encode_record`]) at `at_ms`, for replicas
    /// that miss the message; records older than `keep_ms` go, and at most
    /// [`PURGE_RECORDS_MAX`] are kept (the oldest go first).
    pub(crate) async fn record_purge(
        &self,
        member: &str,
        at_ms: u64,
        keep_ms: u64,
    ) -> Result<(), CommandError> {
        let key = self.purges_key();
        let cmd = redis::cmd("EVAL")
            .arg(RECORD_PURGE)
            .arg(1)
            .arg(&key)
            .arg(at_ms)
            .arg(member)
            .arg(at_ms.saturating_sub(keep_ms))
            .arg(PURGE_RECORDS_MAX)
            .arg(keep_ms.max(1))
            .arg(TRIMMED_MEMBER)
            .to_owned();
        self.write::<i64>(RedisOp::Set, key.as_bytes(), &cmd)
            .await
            .map(drop)
    }

    /// The id of the purge records (made by the first replica to ask): a Redis that restarted
    /// empty has lost the records, and the id with them.
    pub(crate) async fn purge_epoch(&self) -> Result<String, CommandError> {
        const EPOCH: &str = "redis.call('set', KEYS[1], ARGV[1], 'NX') return redis.call('get', KEYS[1])";
        let key = format!("{}purges:epoch", self.shared.key_prefix);
        let cmd = redis::cmd("EVAL")
            .arg(EPOCH)
            .arg(1)
            .arg(&key)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .to_owned();
        self.run::<String>(RedisOp::Get, key.as_bytes(), &cmd).await
    }

    /// The purges recorded since `since_ms`: `(member, time)`, oldest first. They include
    /// [`TRIMMED_MEMBER`] when records made since were dropped for the count.
    ///
    /// Read a page at a time, each under its own response timeout: all of a day's records (up
    /// to [`PURGE_RECORDS_MAX`], tens of megabytes with long keys) in one command outlasted the
    /// timeout, and a replica then could not read them at all. Pages go by score, so records
    /// dropped from the front meanwhile move nothing; records sharing a score are counted off.
    pub(crate) async fn purge_records(&self, since_ms: u64) -> Result<Vec<(String, u64)>, CommandError> {
        let key = self.purges_key();
        let mut records: Vec<(String, u64)> = Vec::new();
        // The score to read from, and how many records of that score were read already.
        let (mut from, mut skip) = (since_ms, 0usize);
        for _ in 0..PURGE_RECORDS_PAGES_MAX {
            let cmd = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(from)
                .arg("+inf")
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(skip)
                .arg(PURGE_RECORDS_PAGE)
                .arg("WITHSCORES")
                .to_owned();
            let page = self
                .run::<Vec<(String, u64)>>(RedisOp::Get, key.as_bytes(), &cmd)
                .await?;
            let Some(&(_, last)) = page.last() else {
                return Ok(records);
            };
            (from, skip) = if last == from {
                (from, skip + page.len())
            } else {
                (last, page.iter().rev().take_while(|(_, at)| *at == last).count())
            };
            let full = page.len() == PURGE_RECORDS_PAGE;
            records.extend(page);
            if !full {
                return Ok(records);
            }
        }
        Err(CommandError::Failed(format!(
            "more than {} purge records to read",
            PURGE_RECORDS_PAGES_MAX * PURGE_RECORDS_PAGE
        )))
    }

    /// Whether this is a Redis Cluster (as configured: until the first `CLUSTER SLOTS` its
    /// topology looks like one server's).
    pub(crate) fn is_cluster(&self) -> bool {
        self.shared.seeds.cluster
    }

    /// Whether messages go by sharded pub/sub: a Redis Cluster whose every master knows
    /// `SPUBLISH` (Redis ≥ 7). With classic `PUBLISH` every message crosses the cluster bus to
    /// every node; a sharded one goes to the nodes of one shard only.
    pub(crate) fn sharded_pubsub(&self) -> bool {
        self.shared.seeds.cluster
            && self
                .topology()
                .nodes
                .iter()
                .all(|n| n.sharded_pubsub.load(Ordering::Relaxed) == SHARDED_YES)
    }

    /// Whether the node at `addr` still serves the slot of `key` (a sharded subscription there
    /// hears nothing once the slot moved away).
    pub(crate) fn serves(&self, addr: &str, key: &str) -> bool {
        self.topology().node_for(key.as_bytes()).addr == addr
    }

    /// Whether the master of `channel`'s slot knows `SSUBSCRIBE` (only a Redis Cluster's
    /// masters are asked: one server always takes classic pub/sub).
    pub(crate) fn shard_speaks_sharded_pubsub(&self, channel: &str) -> bool {
        self.topology()
            .node_for(channel.as_bytes())
            .sharded_pubsub
            .load(Ordering::Relaxed)
            == SHARDED_YES
    }

    /// `SPUBLISH`es `message` on the sharded `channel`, on the master of the channel's slot.
    pub(crate) async fn spublish(&self, channel: &str, message: &str) -> Result<(), CommandError> {
        let cmd = redis::cmd("SPUBLISH").arg(channel).arg(message).to_owned();
        self.run::<i64>(RedisOp::Publish, channel.as_bytes(), &cmd)
            .await
            .map(drop)
    }

    /// Opens a sharded subscription to `channels` (all in one slot) on the master of their slot:
    /// `(channel, message)` pairs until it drops, and that master's address. It runs on a thread
    /// of its own over a plain (blocking) connection, since the async pub/sub of the redis crate
    /// has no `SSUBSCRIBE`; the thread ends when the connection fails, or within a second of the
    /// receiver being dropped. A slot moved away is the caller's to notice ([`Self::serves`]).
    pub(crate) async fn ssubscribe(
        &self,
        channels: &[&str],
    ) -> Result<(tokio::sync::mpsc::UnboundedReceiver<(String, String)>, String), CommandError> {
        let s = &self.shared;
        let Some(first) = channels.first() else {
            return Err(CommandError::Failed("no channel".to_owned()));
        };
        let topology = self.topology();
        let node = topology.node_for(first.as_bytes());
        if !node.is_up() {
            return Err(CommandError::Unavailable);
        }
        let (info, addr) = (node.info.clone(), node.addr.clone());
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let (messages, received) = tokio::sync::mpsc::unbounded_channel();
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        let timeouts = (s.settings.connect_timeout, s.settings.response_timeout);
        let spawned = std::thread::Builder::new()
            .name("redis-ssubscribe".to_owned())
            .spawn(move || sharded::listen(&info, &channels, timeouts, ready, &messages));
        if let Err(e) = spawned {
            return Err(CommandError::Failed(e.to_string()));
        }
        let within = s.settings.connect_timeout + s.settings.response_timeout;
        match tokio::time::timeout(within, subscribed).await {
            Ok(Ok(Ok(()))) => Ok((received, addr)),
            Ok(Ok(Err(e))) => {
                s.metrics.redis_error(RedisOp::Subscribe);
                Err(CommandError::Failed(e))
            }
            Ok(Err(_)) | Err(_) => {
                s.metrics.redis_error(RedisOp::Subscribe);
                Err(CommandError::Timeout)
            }
        }
    }

    /// PUBLISHes `message` on `channel` through a node that is up: in a cluster any node
    /// forwards it to every node's subscribers, so a failed node does not stop purges.
    pub(crate) async fn publish(&self, channel: &str, message: &str) -> Result<(), CommandError> {
        let cmd = redis::cmd("PUBLISH").arg(channel).arg(message).to_owned();
        let topology = self.topology();
        let Some(node) = topology.any_up() else {
            return Err(CommandError::Unavailable);
        };
        self.run_on::<i64>(RedisOp::Publish, node, &cmd).await.map(drop)
    }

    /// Opens a pub/sub connection subscribed to `channels`, on the next
    /// node that is up (in turn, so losing one node does not stop purges from arriving). The
    /// node's address is returned, so the listener can move when that node goes down.
    pub(crate) async fn subscribe(
        &self,
        channels: &[&str],
    ) -> Result<(redis::aio::PubSub, String), CommandError> {
        let s = &self.shared;
        let topology = self.topology();
        let up: Vec<&Arc<Node>> = topology.nodes.iter().filter(|n| n.is_up()).collect();
        if up.is_empty() {
            return Err(CommandError::Unavailable);
        }
        let node = up[s.next_pubsub.fetch_add(1, Ordering::Relaxed) % up.len()];
        let open = async {
            let client = Client::open(no_delay(&node.info))?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channels).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(s.settings.connect_timeout + s.settings.response_timeout, open).await {
            Ok(Ok(p)) => Ok((p, node.addr.clone())),
            Ok(Err(e)) => {
                s.metrics.redis_error(RedisOp::Subscribe);
                Err(CommandError::Failed(e.to_string()))
            }
            Err(_) => {
                s.metrics.redis_error(RedisOp::Subscribe);
                Err(CommandError::Timeout)
            }
        }
    }

    /// Whether the node at `addr` is known and down (the listener subscribed there moves).
    pub(crate) fn node_down(&self, addr: &str) -> bool {
        let t = self.topology();
        match t.nodes.iter().find(|n| n.addr == addr) {
            Some(n) => !n.is_up(),
            // No longer a master (a failover moved its slots): still fine to listen on, unless
            // nothing is up at all.
            None => !t.nodes.iter().any(|n| n.is_up()),
        }
    }

    /// `{REDIS_KEY_PREFIX}:v1:`, the stem of every key this release writes.
    pub(crate) fn key_prefix(&self) -> &str {
        &self.shared.key_prefix
    }

    /// How long one command may take (`REDIS_RESPONSE_TIMEOUT_MS`).
    pub(crate) fn response_timeout(&self) -> Duration {
        self.shared.settings.response_timeout
    }

    /// Where Redis errors are counted.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

pub(crate) fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
