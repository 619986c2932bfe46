//! The shared tier in Redis (one server or a Redis Cluster), and the commands with deadlines that
//! the fleet lock ([`super::fleet`]) and the purge channel ([`super::invalidation`]) send through
//! it: one set of connections and one view of node health for all three. Redis being down or slow never blocks a request: every command has a
//! deadline, and a node known to be down is skipped until a background ping finds it again.
//!
//! Health is kept per node (per master, in a cluster), not for the tier as a whole: a hung or
//! dead master costs only the keys in its slots. Commands go to the node that serves the key over
//! that node's own connection, routed by this module's slot map rather than by the `redis`
//! crate's cluster client, whose single pipeline let one hung node hold up every other node's
//! commands (and could wedge for good after a failover). A maintenance task (see
//! [`RedisTier::start`]) keeps the slot map from `CLUSTER SLOTS` (at once after a `MOVED`), pings
//! every master over a fresh connection of its own, and rebuilds a node's command connection when
//! commands keep failing on a node that answers pings (a wedged connection), with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cache::FleetLock;
use crate::cache::entry::{Entry, now_ms};
use crate::cache::fleet::listener::PurgeMode;
use crate::cache::tier::{Tier, TierError, TierName};
use crate::config::RedisConfig;
use crate::telemetry::Metrics;

/// Bumped when the stored format changes, so old and new releases can share one Redis.
const FORMAT_VERSION: &str = "v1";

/// The first read of an entry takes at most this many bytes (with the value's length).
const FIRST_READ_BYTES: usize = 64 * 1024;

/// A tag's index is trimmed of members whose entries are gone once it holds more than this.
const TAG_INDEX_TRIM_FROM: i64 = 64;

/// Adds ARGV[1] to the set KEYS[1] and makes the set live at least ARGV[2] ms more; its size.
const ADD_TO_TAG: &str = "redis.call('sadd', KEYS[1], ARGV[1]) \
local ttl = redis.call('pttl', KEYS[1]) \
if ttl < tonumber(ARGV[2]) then redis.call('pexpire', KEYS[1], ARGV[2]) end \
return redis.call('scard', KEYS[1])";

/// Purges the entry KEYS[1] if it carries exactly the tag ARGV[1] (its `tg` list, read with
/// cjson: an exact match, never a pattern), removing it (ARGV[2] `hard`) or ending its
/// freshness at ARGV[3] (`soft`: the first `"f":` of the encoding, which comes before the value);
/// 1 when it did.
const PURGE_IF_TAGGED: &str = "local v = redis.call('get', KEYS[1]) \
if not v then return 0 end \
local ok, e = pcall(cjson.decode, v) \
if not ok or type(e) ~= 'table' or type(e.tg) ~= 'table' then return 0 end \
for _, t in ipairs(e.tg) do \
  if t == ARGV[1] then \
    if ARGV[2] == 'hard' then redis.call('del', KEYS[1]) \
    elseif tonumber(e.f) > tonumber(ARGV[3]) then \
      local stale = string.gsub(v, '\"f\":%d+', '\"f\":' .. ARGV[3], 1) \
      redis.call('set', KEYS[1], stale, 'KEEPTTL') \
    end \
    return 1 \
  end \
end \
return 0";

/// Slots in a Redis Cluster.
const SLOTS: usize = 16384;

/// Purge records Redis keeps at most; past it the oldest go (a replica away for that many
/// purges drops what it cannot check, see [`super::purge_log`]).
const PURGE_RECORDS_MAX: u64 = 100_000;

/// Adds a purge record, drops those past the horizon and beyond the count, and lets the set
/// expire when no purge came for a whole horizon.
const RECORD_PURGE: &str = "redis.call('zadd', KEYS[1], ARGV[1], ARGV[2]) \
    redis.call('zremrangebyscore', KEYS[1], '-inf', '(' .. ARGV[3]) \
    local n = redis.call('zcard', KEYS[1]) \
    if n > tonumber(ARGV[4]) then redis.call('zremrangebyrank', KEYS[1], 0, n - tonumber(ARGV[4]) - 1) end \
    redis.call('pexpire', KEYS[1], ARGV[5]) \
    return n";

/// Commands failing on a node that answers pings for this long mean its command connection is
/// wedged: it is rebuilt.
const WEDGED_AFTER_MS: u64 = 2_000;

/// Backoff between rebuilds of a node's command connection: from this, doubling, up to `REBUILD_MAX_MS`.
const REBUILD_MIN_MS: u64 = 500;
const REBUILD_MAX_MS: u64 = 30_000;

/// The Redis tier; cheap to clone (all state is shared).
#[derive(Clone)]
pub struct RedisTier {
    shared: Arc<Shared>,
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

/// The pub/sub channels replicas talk on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    /// Purges: `mode\ninstance\nkey`.
    Invalidate,
    /// A key whose fleet lock was let go.
    Fill,
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
struct Node {
    /// `host:port` as the cluster names it (or as configured, for one server).
    addr: String,
    /// How to reach it (the seed's credentials and TLS settings, with this address).
    info: ConnectionInfo,
    /// Whether it answered its last ping, and no command has failed on it since.
    up: AtomicBool,
    /// Whether a ping has run yet (the first failure is logged).
    pinged: AtomicBool,
    /// A ping asked for by a failed command is on its way (one at a time).
    ping_requested: AtomicBool,
    /// When a command on its command connection first failed since the last success
    /// (ms since the epoch; 0 = none), for the wedge check.
    failing_since_ms: AtomicU64,
    /// The ping connection, made again when it fails.
    ping_conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// The command connection (it reconnects by itself; replaced when wedged).
    cmd: RwLock<ConnectionManager>,
    /// When the command connection may next be replaced (ms since the epoch), and the backoff.
    rebuild_at_ms: AtomicU64,
    rebuild_backoff_ms: AtomicU64,
}

impl Node {
    fn new(addr: String, info: ConnectionInfo, settings: &Settings) -> redis::RedisResult<Arc<Self>> {
        let cmd = settings.command_connection(&info)?;
        Ok(Arc::new(Node {
            addr,
            info,
            up: AtomicBool::new(false),
            pinged: AtomicBool::new(false),
            ping_requested: AtomicBool::new(false),
            failing_since_ms: AtomicU64::new(0),
            ping_conn: tokio::sync::Mutex::new(None),
            cmd: RwLock::new(cmd),
            rebuild_at_ms: AtomicU64::new(0),
            rebuild_backoff_ms: AtomicU64::new(REBUILD_MIN_MS),
        }))
    }

    fn command_connection(&self) -> ConnectionManager {
        self.cmd.read().unwrap_or_else(|p| p.into_inner()).clone()
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
        match settings.command_connection(&self.info) {
            Ok(fresh) => {
                *self.cmd.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                self.failing_since_ms.store(0, Ordering::Relaxed);
                tracing::warn!(node = %self.addr, "redis command connection rebuilt: commands kept failing while the node answered pings");
            }
            Err(e) => tracing::debug!(node = %self.addr, error = %e, "redis command connection not rebuilt"),
        }
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// Which node serves which slot. One server serves them all.
struct Topology {
    nodes: Vec<Arc<Node>>,
    /// Index into `nodes` per slot; empty for one server.
    slots: Vec<u16>,
}

impl Topology {
    fn node_for(&self, redis_key: &[u8]) -> &Arc<Node> {
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
    /// `{REDIS_KEY_PREFIX}:invalidate`: purges, for every replica's memory tier.
    channel: String,
    /// `{REDIS_KEY_PREFIX}:filled`: keys whose fleet lock was let go (see `cache::fleet`).
    fill_channel: String,
    /// The largest entry this service can write (from `ORIGIN_MAX_BODY_BYTES`); a longer value
    /// under an entry key is refused after its first `FIRST_READ_BYTES` and its length.
    max_entry_bytes: usize,
    /// The next node to subscribe on.
    next_pubsub: AtomicUsize,
    /// Redis error counters.
    metrics: Arc<Metrics>,
    /// Writes (entry `SET`s and fleet locks) that failed while Redis answered otherwise, e.g.
    /// at `maxmemory` with `noeviction`: reads work, nothing new is stored.
    writes: WriteHealth,
    /// Fleet-wide coalescing settings, kept with the tier they work through.
    fleet: FleetLock,
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
        let client = Client::open(info.clone())?;
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
            let client = Client::open(info.clone())?;
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

/// Reads the keys KEYS (one hash slot) in one go when their values fit ARGV[1] bytes: `{1,
/// values}`; else `{0, lengths}` (then they are read in chunks of that many bytes, a value larger
/// than this service could write refused by its length without being read).
const READ_IF_SMALL: &str = "local total = 0 \
local lens = {} \
for i, k in ipairs(KEYS) do lens[i] = redis.call('strlen', k); total = total + lens[i] end \
if total <= tonumber(ARGV[1]) then return {1, redis.call('mget', unpack(KEYS))} end \
return {0, lens}";

/// What a lookup of one key in the tier found.
type Found = Result<Option<Arc<Entry>>, TierError>;

/// Bytes one bulk read (an `MGET`) moves at most, by the lengths read first; a larger value is
/// read alone. Keeps every reply small enough that no other command on the node's connection
/// waits long behind it.
const BULK_BYTES: usize = 4 << 20;

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

/// `host:port` of a connection address.
fn addr_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. } => format!("{h}:{p}"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "unknown".to_owned(),
    }
}

impl RedisTier {
    /// Prepares the tier without connecting; call [`RedisTier::start`] to connect.
    /// `max_entry_bytes` bounds what a read of one entry transfers (see [`Entry::max_encoded_len`]).
    pub fn new(
        config: &RedisConfig,
        max_entry_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RedisSetupError> {
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
        Ok(RedisTier {
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
                channel: format!("{}:invalidate", config.key_prefix),
                fill_channel: format!("{}:filled", config.key_prefix),
                max_entry_bytes,
                next_pubsub: AtomicUsize::new(0),
                metrics,
                writes: WriteHealth::default(),
                fleet: config.fleet,
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
                let tier = RedisTier { shared };
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
                    Ok(c) => *slot = Some(c),
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

    fn topology(&self) -> Arc<Topology> {
        self.shared
            .topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The fleet lock settings (`FLEET_LOCK_*`): fleet-wide coalescing exists only with Redis,
    /// so its settings come with the tier.
    pub fn fleet(&self) -> FleetLock {
        self.shared.fleet
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

    /// Runs a write, remembering whether Redis refused it, for [`RedisTier::writes_failing`].
    /// Writes that did not reach Redis (a node down, a timeout, a failover) are not counted: the
    /// node's health shows those.
    pub(crate) async fn write<T: FromRedisValue>(
        &self,
        op: RedisOp,
        key: &[u8],
        cmd: &Cmd,
    ) -> Result<T, TierError> {
        let result = self.run(op, key, cmd).await;
        match &result {
            Ok(_) => self.shared.writes.record(true, None),
            // Redis answered and said no: it is up but not storing anything.
            Err(e @ TierError::Refused(_)) => self.shared.writes.record(false, Some(e)),
            // Down, timed out, broke off: the node's health shows that.
            Err(_) => {}
        }
        result
    }

    /// Runs a pipeline of writes on `node`, remembering whether Redis refused it, as
    /// [`RedisTier::write`] does for one command.
    async fn write_pipe<T: FromRedisValue>(
        &self,
        node: &Arc<Node>,
        pipe: &redis::Pipeline,
    ) -> Result<T, TierError> {
        let result = self.run_pipe_on(RedisOp::Set, node, pipe).await;
        match &result {
            Ok(_) => self.shared.writes.record(true, None),
            Err(e @ TierError::Refused(_)) => self.shared.writes.record(false, Some(e)),
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
    ) -> Result<T, TierError> {
        let node = self.node_up_for(redis_key)?;
        self.run_on(op, &node, cmd).await
    }

    /// The node serving `redis_key`, unless it is known to be down (then it is not asked).
    fn node_up_for(&self, redis_key: &[u8]) -> Result<Arc<Node>, TierError> {
        let node = self.topology().node_for(redis_key).clone();
        if node.is_up() {
            Ok(node)
        } else {
            Err(TierError::Unavailable)
        }
    }

    /// Runs `pipe` on `key`'s node over its command connection, within the response timeout.
    async fn run_pipe<T: FromRedisValue>(
        &self,
        op: RedisOp,
        redis_key: &[u8],
        pipe: &redis::Pipeline,
    ) -> Result<T, TierError> {
        let node = self.node_up_for(redis_key)?;
        self.run_pipe_on(op, &node, pipe).await
    }

    /// Runs `pipe` on `node` over its command connection, within the response timeout.
    async fn run_pipe_on<T: FromRedisValue>(
        &self,
        op: RedisOp,
        node: &Arc<Node>,
        pipe: &redis::Pipeline,
    ) -> Result<T, TierError> {
        let timeout = self.shared.settings.response_timeout;
        self.run_pipe_within(op, node, pipe, timeout).await
    }

    /// Runs `pipe` on `node` within `timeout` (a bulk command's own deadline, longer than
    /// one command's).
    async fn run_pipe_within<T: FromRedisValue>(
        &self,
        op: RedisOp,
        node: &Arc<Node>,
        pipe: &redis::Pipeline,
        timeout: Duration,
    ) -> Result<T, TierError> {
        let mut conn = node.command_connection();
        self.finish(
            op,
            node,
            tokio::time::timeout(timeout, pipe.query_async::<T>(&mut conn)).await,
        )
    }

    /// A value under an entry key that is larger than this service can write (`len` bytes):
    /// counted as a `get` error, logged, and `UNLINK`ed (freed in the background, not blocking
    /// Redis), since no replica can use it and the next read, here or elsewhere, should not pay
    /// for it again. The read is a miss, and the origin's value replaces it.
    async fn refuse_oversized(&self, entry_key: &str, len: usize) {
        self.shared.metrics.redis_error(RedisOp::Get);
        tracing::warn!(
            bytes = len,
            limit = self.shared.max_entry_bytes,
            "redis holds a value larger than this service can write under an entry key; removed, and replaced by the next fetch"
        );
        let unlink = redis::cmd("UNLINK").arg(entry_key).to_owned();
        let _ = self.run::<i64>(RedisOp::Del, entry_key.as_bytes(), &unlink).await;
    }

    /// Runs `cmd` on `node` over its command connection, within the response timeout.
    async fn run_on<T: FromRedisValue>(
        &self,
        op: RedisOp,
        node: &Arc<Node>,
        cmd: &Cmd,
    ) -> Result<T, TierError> {
        let mut conn = node.command_connection();
        let timeout = self.shared.settings.response_timeout;
        self.finish(
            op,
            node,
            tokio::time::timeout(timeout, cmd.query_async::<T>(&mut conn)).await,
        )
    }

    /// Counts and classifies a command's outcome on `node`.
    fn finish<T>(
        &self,
        op: RedisOp,
        node: &Arc<Node>,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, TierError> {
        let error = match result {
            Ok(Ok(v)) => {
                node.failing_since_ms.store(0, Ordering::Relaxed);
                return Ok(v);
            }
            Ok(Err(e)) if e.redirect_node().is_some() => {
                // The slot moved (a failover or a reshard): read the slot map now.
                self.shared.refresh.notify_one();
                TierError::Failed(e.to_string())
            }
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                self.check_now(node, op, &e.to_string());
                TierError::Failed(e.to_string())
            }
            // Between owners (a failover): not the server refusing this command.
            Ok(Err(e)) if e.is_cluster_error() => TierError::Failed(e.to_string()),
            Ok(Err(e)) => TierError::Refused(e.to_string()),
            Err(_) => {
                self.check_now(node, op, "no answer within its deadline");
                TierError::Timeout
            }
        };
        self.shared.metrics.redis_error(op);
        tracing::debug!(op = op.as_str(), %error, "redis command failed");
        Err(error)
    }

    /// A command on `node` failed or timed out: ping it now. Only pings decide that a node is
    /// down: a slow command (a large `MGET`, a tag purge's chunk) says nothing about the node,
    /// and marking a healthy node down would cost its subscription and its keys.
    fn check_now(&self, node: &Arc<Node>, op: RedisOp, why: &str) {
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

    /// The values of `entry_keys` at the positions `slots` (grouped by hash slot) on `node`,
    /// read as [`Tier::get_many`] describes.
    async fn read_node(
        &self,
        node: &Arc<Node>,
        keys: &[&str],
        entry_keys: &[String],
        slots: Vec<Vec<usize>>,
    ) -> Vec<(usize, Found)> {
        let all = || slots.iter().flatten().copied();
        if !node.is_up() {
            return all().map(|i| (i, Err(TierError::Unavailable))).collect();
        }
        // One script per hash slot, in one pipeline: the values when they fit one bulk read
        // (the common case: one round trip), else only their lengths.
        let mut small = redis::pipe();
        for slot in &slots {
            let read = small.cmd("EVAL").arg(READ_IF_SMALL).arg(slot.len());
            for &i in slot {
                read.arg(&entry_keys[i]);
            }
            read.arg(BULK_BYTES);
        }
        let replies = match self.run_pipe_on::<Vec<Value>>(RedisOp::Get, node, &small).await {
            Ok(replies) if replies.len() == slots.len() => replies,
            Ok(_) => {
                let e = TierError::Failed("fewer replies than scripts".to_owned());
                return all().map(|i| (i, Err(e.clone()))).collect();
            }
            Err(e) => return all().map(|i| (i, Err(e.clone()))).collect(),
        };
        let max = self.shared.max_entry_bytes;
        let mut out = Vec::with_capacity(slots.iter().map(Vec::len).sum());
        let mut length: HashMap<usize, usize> = HashMap::new();
        let mut large = Vec::new();
        for (slot, reply) in slots.iter().zip(replies) {
            let Value::Array(parts) = reply else {
                out.extend(
                    slot.iter()
                        .map(|&i| (i, Err(TierError::Failed("unexpected reply".to_owned())))),
                );
                continue;
            };
            let (kind, items) = match parts.as_slice() {
                [kind, Value::Array(items)] if items.len() == slot.len() => (as_int(kind), items),
                _ => {
                    out.extend(
                        slot.iter()
                            .map(|&i| (i, Err(TierError::Failed("unexpected reply".to_owned())))),
                    );
                    continue;
                }
            };
            if kind == Some(1) {
                for (&i, value) in slot.iter().zip(items) {
                    let bytes = match value {
                        Value::BulkString(b) => Some(b.as_slice()),
                        _ => None,
                    };
                    out.push((i, Ok(self.found(keys[i], &entry_keys[i], bytes).await)));
                }
                continue;
            }
            for (&i, len) in slot.iter().zip(items) {
                length.insert(i, as_int(len).unwrap_or(0).max(0) as usize);
            }
            large.push(slot);
        }
        for slot in large {
            let mut chunk: Vec<usize> = Vec::new();
            let mut bytes = 0;
            for &i in slot {
                let len = length.get(&i).copied().unwrap_or(0);
                if len == 0 {
                    out.push((i, Ok(None)));
                    continue;
                }
                if len > max {
                    self.refuse_oversized(&entry_keys[i], len).await;
                    out.push((i, Ok(None)));
                    continue;
                }
                if !chunk.is_empty() && bytes + len > BULK_BYTES {
                    self.mget(
                        node,
                        keys,
                        entry_keys,
                        std::mem::take(&mut chunk),
                        bytes,
                        &mut out,
                    )
                    .await;
                    bytes = 0;
                }
                chunk.push(i);
                bytes += len;
            }
            if !chunk.is_empty() {
                self.mget(node, keys, entry_keys, chunk, bytes, &mut out).await;
            }
        }
        out
    }

    /// One `MGET` of the keys at `chunk` (about `bytes` in all) under a bulk deadline.
    async fn mget(
        &self,
        node: &Arc<Node>,
        keys: &[&str],
        entry_keys: &[String],
        chunk: Vec<usize>,
        bytes: usize,
        out: &mut Vec<(usize, Found)>,
    ) {
        let mut mget = redis::cmd("MGET");
        for &i in &chunk {
            mget.arg(&entry_keys[i]);
        }
        let mut pipe = redis::pipe();
        pipe.add_command(mget);
        let deadline = self.bulk_deadline(bytes);
        let values = self
            .run_pipe_within::<Vec<Vec<Option<Vec<u8>>>>>(RedisOp::Get, node, &pipe, deadline)
            .await
            .and_then(|mut v| {
                v.pop()
                    .ok_or_else(|| TierError::Failed("no MGET reply".to_owned()))
            })
            .and_then(|v| {
                if v.len() == chunk.len() {
                    Ok(v)
                } else {
                    Err(TierError::Failed("fewer MGET replies than keys".to_owned()))
                }
            });
        let values = match values {
            Ok(values) => values,
            Err(e) => {
                out.extend(chunk.iter().map(|&i| (i, Err(e.clone()))));
                return;
            }
        };
        for (&i, bytes) in chunk.iter().zip(values) {
            // A value may have been rewritten larger between its length and this read.
            out.push((i, Ok(self.found(keys[i], &entry_keys[i], bytes.as_deref()).await)));
        }
    }

    /// The entry of `key` in the `bytes` a bulk read found under `entry_key`: none when absent,
    /// undecodable, or larger than this service could have written (then refused and unlinked).
    async fn found(&self, key: &str, entry_key: &str, bytes: Option<&[u8]>) -> Option<Arc<Entry>> {
        let bytes = bytes?;
        if bytes.len() > self.shared.max_entry_bytes {
            self.refuse_oversized(entry_key, bytes.len()).await;
            return None;
        }
        servable(key, bytes)
    }

    /// The deadline of a bulk command moving `bytes`: one command's, plus 1 ms per 64 KiB
    /// (64 MB/s, far below loopback or a data-centre link), so a large reply is never mistaken
    /// for a silent server.
    fn bulk_deadline(&self, bytes: usize) -> Duration {
        self.shared.settings.response_timeout + Duration::from_millis((bytes / (64 << 10)) as u64)
    }

    /// The Redis key of `tag`'s index: the set of entry keys stored with it.
    fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.shared.key_prefix)
    }

    /// Adds `entry_key` to `tag`'s index, which then lives at least as long as the entry (so
    /// it never outlives every entry it names by more than the longest of them), and drops up
    /// to two members whose entries are gone, so a tag on ever new keys does not grow its index
    /// without bound. Failures are counted and skipped: the entry is stored either way, and a
    /// tag purge that misses it leaves it to expire.
    async fn index_tag(&self, tag: &str, entry_key: &str, keep_ms: u64) {
        let tag_key = self.tag_key(tag);
        let add = redis::cmd("EVAL")
            .arg(ADD_TO_TAG)
            .arg(1)
            .arg(&tag_key)
            .arg(entry_key)
            .arg(keep_ms)
            .to_owned();
        let Ok(size) = self.run::<i64>(RedisOp::Set, tag_key.as_bytes(), &add).await else {
            return;
        };
        if size > TAG_INDEX_TRIM_FROM {
            self.trim_tag(&tag_key, entry_key).await;
        }
    }

    /// Drops up to two members of the tag set `tag_key` whose entries are gone (never
    /// `entry_key`, just added), so a tag on ever new keys does not grow its set without bound.
    async fn trim_tag(&self, tag_key: &str, entry_key: &str) {
        let sample = redis::cmd("SRANDMEMBER").arg(tag_key).arg(2).to_owned();
        let Ok(sample) = self
            .run::<Vec<String>>(RedisOp::Get, tag_key.as_bytes(), &sample)
            .await
        else {
            return;
        };
        for member in sample.into_iter().filter(|m| m != entry_key) {
            let exists = redis::cmd("EXISTS").arg(&member).to_owned();
            if self.run::<i64>(RedisOp::Get, member.as_bytes(), &exists).await == Ok(0) {
                let srem = redis::cmd("SREM").arg(tag_key).arg(&member).to_owned();
                let _ = self.run::<i64>(RedisOp::Del, tag_key.as_bytes(), &srem).await;
            }
        }
    }

    fn entry_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.shared.key_prefix.len() + 2 + key.len());
        k.push_str(&self.shared.key_prefix);
        k.push_str("k:");
        k.push_str(key);
        k
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

    /// Records `member` (see [`super::purge_log::encode_record`]) at `at_ms`, for replicas
    /// that miss the message; records older than `keep_ms` go, and at most
    /// [`PURGE_RECORDS_MAX`] are kept (the oldest go first).
    pub(crate) async fn record_purge(&self, member: &str, at_ms: u64, keep_ms: u64) -> Result<(), TierError> {
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
            .to_owned();
        self.write::<i64>(RedisOp::Set, key.as_bytes(), &cmd)
            .await
            .map(drop)
    }

    /// The purges recorded since `since_ms`: `(member, time)`, oldest first.
    pub(crate) async fn purge_records(&self, since_ms: u64) -> Result<Vec<(String, u64)>, TierError> {
        let key = self.purges_key();
        let cmd = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(since_ms)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES")
            .to_owned();
        self.run::<Vec<(String, u64)>>(RedisOp::Get, key.as_bytes(), &cmd)
            .await
    }

    /// PUBLISHes `message` on `channel` through a node that is up: in a cluster any node
    /// forwards it to every node's subscribers, so a failed node does not stop purges.
    pub(crate) async fn publish(&self, channel: Channel, message: &str) -> Result<(), TierError> {
        let name = match channel {
            Channel::Invalidate => &self.shared.channel,
            Channel::Fill => &self.shared.fill_channel,
        };
        let cmd = redis::cmd("PUBLISH").arg(name).arg(message).to_owned();
        let topology = self.topology();
        let Some(node) = topology.any_up() else {
            return Err(TierError::Unavailable);
        };
        self.run_on::<i64>(RedisOp::Publish, node, &cmd).await.map(drop)
    }

    /// Which channel a pub/sub message came from.
    pub(crate) fn channel_of(&self, name: &str) -> Channel {
        if name == self.shared.fill_channel {
            Channel::Fill
        } else {
            Channel::Invalidate
        }
    }

    /// Opens a pub/sub connection subscribed to the invalidation and fill channels, on the next
    /// node that is up (in turn, so losing one node does not stop purges from arriving). The
    /// node's address is returned, so the listener can move when that node goes down.
    pub(crate) async fn subscribe(&self) -> Result<(redis::aio::PubSub, String), TierError> {
        let s = &self.shared;
        let topology = self.topology();
        let up: Vec<&Arc<Node>> = topology.nodes.iter().filter(|n| n.is_up()).collect();
        if up.is_empty() {
            return Err(TierError::Unavailable);
        }
        let node = up[s.next_pubsub.fetch_add(1, Ordering::Relaxed) % up.len()];
        let open = async {
            let client = Client::open(node.info.clone())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[&s.channel, &s.fill_channel]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(s.settings.connect_timeout + s.settings.response_timeout, open).await {
            Ok(Ok(p)) => Ok((p, node.addr.clone())),
            Ok(Err(e)) => {
                s.metrics.redis_error(RedisOp::Subscribe);
                Err(TierError::Failed(e.to_string()))
            }
            Err(_) => {
                s.metrics.redis_error(RedisOp::Subscribe);
                Err(TierError::Timeout)
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
}

/// The entry stored as `bytes` for `key`, if it decodes and is not past its stale window.
fn servable(key: &str, bytes: &[u8]) -> Option<Arc<Entry>> {
    Some(bytes)
        .filter(|b| !b.is_empty())
        .and_then(|b| Entry::decode(key, b))
        .filter(|e| e.stale_until_ms > now_ms())
        .map(Arc::new)
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl Tier for RedisTier {
    fn name(&self) -> TierName {
        TierName::Redis
    }

    fn shared(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, TierError> {
        // Never GET: a value larger than this service could have written (put there by
        // something else) must not be transferred whole, or it holds up every other command on
        // the node's connection. One round trip reads the first 64 KiB and the length; only a
        // value longer than that and within the limit costs a second one for the rest.
        let max = self.shared.max_entry_bytes;
        let entry_key = self.entry_key(key);
        let first = redis::pipe()
            .cmd("GETRANGE")
            .arg(&entry_key)
            .arg(0)
            .arg(FIRST_READ_BYTES - 1)
            .cmd("STRLEN")
            .arg(&entry_key)
            .to_owned();
        let (mut bytes, len): (Vec<u8>, usize) =
            self.run_pipe(RedisOp::Get, entry_key.as_bytes(), &first).await?;
        if len > max {
            self.refuse_oversized(&entry_key, len).await;
            return Ok(None);
        }
        if len > bytes.len() {
            let rest = redis::cmd("GETRANGE")
                .arg(&entry_key)
                .arg(bytes.len())
                .arg(len - 1)
                .to_owned();
            let rest: Vec<u8> = self.run(RedisOp::Get, entry_key.as_bytes(), &rest).await?;
            bytes.extend_from_slice(&rest);
            // Rewritten between the two reads: not one value; a miss.
            if bytes.len() != len {
                return Ok(None);
            }
        }
        Ok(servable(key, &bytes))
    }

    /// Per node (the nodes asked in parallel): one pipeline of `STRLEN`s, then `MGET`s of the
    /// keys that exist, one hash slot at a time, each moving at most [`BULK_BYTES`] (a value
    /// larger than that goes alone), each under a deadline that grows with the bytes it moves.
    /// A slow bulk command never marks a node down (only pings do), and no single reply can
    /// hold up the node's connection for long. A node known to be down is not asked (its keys
    /// are `Unavailable`); a failed command fails only its own keys.
    ///
    /// A value larger than this service could have written (put there by something else) is
    /// refused by its length before it is read, counted as a `get` error and `UNLINK`ed.
    async fn get_many(&self, keys: &[&str]) -> Vec<Result<Option<Arc<Entry>>, TierError>> {
        let entry_keys: Vec<String> = keys.iter().map(|k| self.entry_key(k)).collect();
        let topology = self.topology();
        // Node index → slot → positions in `keys`. One server serves every slot: one group.
        let mut groups: std::collections::BTreeMap<usize, std::collections::BTreeMap<u16, Vec<usize>>> =
            std::collections::BTreeMap::new();
        for (i, k) in entry_keys.iter().enumerate() {
            let (node, slot) = if topology.slots.is_empty() {
                (0, 0)
            } else {
                let slot = key_slot(k.as_bytes());
                (usize::from(topology.slots[usize::from(slot)]), slot)
            };
            groups.entry(node).or_default().entry(slot).or_default().push(i);
        }
        let rounds = groups.into_iter().map(|(node, slots)| {
            let node = topology.nodes[node].clone();
            let (entry_keys, keys) = (&entry_keys, keys);
            async move {
                let slots: Vec<Vec<usize>> = slots.into_values().collect();
                self.read_node(&node, keys, entry_keys, slots).await
            }
        });
        let mut found: Vec<Result<Option<Arc<Entry>>, TierError>> = vec![Ok(None); keys.len()];
        for answers in futures_util::future::join_all(rounds).await {
            for (i, answer) in answers {
                found[i] = answer;
            }
        }
        found
    }

    async fn put(&self, key: &str, entry: Arc<Entry>) -> Result<bool, TierError> {
        // Within Redis's PX range whatever the entry's times (they are clamped already).
        let keep_ms = entry
            .stale_until_ms
            .saturating_sub(now_ms())
            .min(2 * crate::cache::policy::MAX_LIFETIME_MS);
        if keep_ms == 0 {
            return Ok(false);
        }
        let entry_key = self.entry_key(key);
        let cmd = redis::cmd("SET")
            .arg(&entry_key)
            .arg(entry.encode())
            .arg("PX")
            .arg(keep_ms)
            .to_owned();
        let tags = entry.tags();
        let topology = self.topology();
        let node = topology.node_for(entry_key.as_bytes()).clone();
        let tag_keys: Vec<String> = tags.iter().map(|t| self.tag_key(t)).collect();
        let together = tag_keys
            .iter()
            .all(|k| Arc::ptr_eq(topology.node_for(k.as_bytes()), &node));
        if !together {
            // A cluster whose slots spread the tag sets: the entry, then its tags in parallel.
            self.write::<()>(RedisOp::Set, entry_key.as_bytes(), &cmd).await?;
            let indexes = tags.iter().map(|tag| self.index_tag(tag, &entry_key, keep_ms));
            futures_util::future::join_all(indexes).await;
            return Ok(true);
        }
        // One round trip: the entry and every tag set it joins, in one pipeline.
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        for tag_key in &tag_keys {
            pipe.cmd("EVAL")
                .arg(ADD_TO_TAG)
                .arg(1)
                .arg(tag_key)
                .arg(&entry_key)
                .arg(keep_ms);
        }
        if !node.is_up() {
            return Err(TierError::Unavailable);
        }
        let replies: Vec<redis::Value> = self.write_pipe(&node, &pipe).await?;
        for (tag_key, size) in tag_keys.into_iter().zip(replies.iter().skip(1)) {
            if as_int(size).is_some_and(|n| n > TAG_INDEX_TRIM_FROM) {
                // Off the write's path: drop two members whose entries are gone.
                let (tier, entry_key) = (self.clone(), entry_key.clone());
                tokio::spawn(async move { tier.trim_tag(&tag_key, &entry_key).await });
            }
        }
        Ok(true)
    }

    async fn purge_tag(&self, tag: &str, mode: PurgeMode, now_ms: u64) -> Result<u64, TierError> {
        let tag_key = self.tag_key(tag);
        let members: Vec<String> = self
            .run(
                RedisOp::Get,
                tag_key.as_bytes(),
                &redis::cmd("SMEMBERS").arg(&tag_key).to_owned(),
            )
            .await?;
        // One pipeline per node: entries of one tag live in many slots.
        let topology = self.topology();
        let mut by_node: HashMap<&str, Vec<&String>> = HashMap::new();
        for member in &members {
            by_node
                .entry(topology.node_for(member.as_bytes()).addr.as_str())
                .or_default()
                .push(member);
        }
        let mode_arg = match mode {
            PurgeMode::Hard => "hard",
            PurgeMode::Soft => "soft",
        };
        let purges = by_node.into_values().map(|keys| async move {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("EVAL")
                    .arg(PURGE_IF_TAGGED)
                    .arg(1)
                    .arg(key.as_str())
                    .arg(tag)
                    .arg(mode_arg)
                    .arg(now_ms);
            }
            let done: Vec<i64> = self.run_pipe(RedisOp::Del, keys[0].as_bytes(), &pipe).await?;
            Ok::<u64, TierError>(done.iter().filter(|n| **n == 1).count() as u64)
        });
        let mut purged = 0;
        for done in futures_util::future::join_all(purges).await {
            purged += done?;
        }
        if mode == PurgeMode::Hard {
            // Every entry that carried the tag is gone; entries since re-tagged add themselves.
            let unlink = redis::cmd("UNLINK").arg(&tag_key).to_owned();
            let _ = self.run::<i64>(RedisOp::Del, tag_key.as_bytes(), &unlink).await;
        }
        Ok(purged)
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        let entry_key = self.entry_key(key);
        let cmd = redis::cmd("DEL").arg(&entry_key).to_owned();
        self.run::<i64>(RedisOp::Del, entry_key.as_bytes(), &cmd)
            .await
            .map(drop)
    }
}
