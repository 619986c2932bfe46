//! Building the service from its `Config` and running it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::cache::{
    AnyBus, AnyTier, DirLock, DiskTier, Entry, MemoryTier, PurgeRecords, ReadThrough, RedisBus, RedisClient,
    RedisTier, Replicas, Tier,
};
use crate::config::{Config, OriginSource, ServerLimits};
use crate::descriptors::Relief;
use crate::http::Surface;
use crate::http::server::{self, Phase, Server};
use crate::http::{App, AppState, HeaderTables};
use crate::origin::{AnyOrigin, Breaker, GuardedOrigin, HttpOrigin, SimulatedOrigin};
use crate::proxy::Proxy;
use crate::telemetry::Telemetry;

/// An `ADMIN_TOKEN` shorter than this starts with a warning: it can be guessed.
const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// How long start-up waits for the disk tier to open (recovering its entries, so a restarted
/// replica serves them from its first request); a slower disk opens in the background.
const DISK_OPEN_WAIT: Duration = Duration::from_secs(30);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// LISTEN_ADDR.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A part could not be set up for a reason other than its settings (those are refused by
    /// `Config`, exit 2): the HTTP client's or the Redis client's own set-up.
    #[error("{0}")]
    Setup(String),
    /// A setting names something this process cannot have (a `DISK_CACHE_DIR` another process
    /// holds): the operator's to fix, exit 2 as for a bad setting.
    #[error("{0}")]
    Setting(String),
}

/// The service, bound and ready to run.
pub struct Application {
    /// Bound by `build`, so tests can bind port 0 and read the address before running.
    listener: TcpListener,
    /// The admin listener (`ADMIN_LISTEN_ADDR`): health, probes, metrics, purges.
    admin_listener: Option<TcpListener>,
    /// What every handler shares.
    state: Arc<AppState>,
    /// The settings it was built from (shutdown timing is read when it runs).
    config: Config,
    /// The connection limits, `HTTP_MAX_CONNECTIONS` lowered to fit the open-file limit.
    limits: ServerLimits,
    /// Cancels the background tasks when the application ends, run or not.
    tasks: DropGuard,
    /// Where the servers register their idle connections for the origins' clients.
    relief: Relief,
    /// The disk tier's directory, held for as long as the process runs.
    _disk_lock: Option<DirLock>,
}

impl Application {
    /// Builds every part and binds the listener. Redis is pinged once, bounded by its timeouts;
    /// a Redis that is down does not stop start-up.
    pub async fn build(config: Config, telemetry: &Telemetry) -> Result<Self, StartError> {
        // Before any TLS client (Redis with `rediss://`, the HTTP origin) is built.
        crate::tls::install_crypto_provider();
        let metrics = telemetry.metrics.clone();
        for notice in &config.notices {
            tracing::warn!("{notice}");
        }
        if let Some(token) = &config.items.admin_token
            && token.len() < MIN_ADMIN_TOKEN_BYTES
        {
            tracing::warn!(
                bytes = token.len(),
                "ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN_BYTES} bytes: purges are easy to guess; use e.g. `openssl rand -hex 16`"
            );
        }
        // Before anything is started: a limit too low to serve with stops start-up here.
        let limits = connection_limits(&config)?;
        // Background tasks (Redis upkeep, the purge listener) end with the application.
        let tasks = CancellationToken::new();
        // The servers (started by `run_until_stopped`) give the origins' clients a descriptor
        // back through it when a connect finds none left.
        let relief = Relief::default();
        let mut tiers = Vec::new();
        let mut proxy_memory = None;
        if let Some(m) = config.cache.memory {
            let memory = MemoryTier::new(m.max_bytes, metrics.clone());
            let (b, e, w, p) = (memory.clone(), memory.clone(), memory.clone(), memory.clone());
            metrics.watch_memory_tier(
                move || b.bytes(),
                move || e.entries(),
                move || w.window_share(),
                move || p.window_epoch_progress(),
            );
            proxy_memory = Some(memory.clone());
            tiers.push(AnyTier::Memory(memory));
        }

        let origin_config = &config.origin;
        let redis = match (&config.redis, config.fleet) {
            (Some(rc), Some(lock)) => {
                let client =
                    RedisClient::new(rc, metrics.clone()).map_err(|e| StartError::Setup(e.to_string()))?;
                client.start(tasks.clone()).await;
                let nodes = client.clone();
                metrics.watch_redis(move || nodes.nodes_up());
                let max_entry_bytes = Entry::max_encoded_len(origin_config.max_body_bytes);
                let tier = RedisTier::new(client.clone(), max_entry_bytes);
                let bus = AnyBus::Redis(RedisBus::new(client, &rc.key_prefix));
                Some((tier, bus, lock))
            }
            _ => None,
        };
        let mut disk_lock = None;
        if let Some(dc) = &config.cache.disk {
            disk_lock =
                DirLock::acquire(&dc.dir).map_err(|e| StartError::Setting(format!("DISK_CACHE_DIR: {e}")))?;
            let life = &config.cache.life;
            let horizon = life.ttl.max(life.ttl_max.unwrap_or_default()) + life.stale;
            let records = redis
                .as_ref()
                .map(|(_, bus, _)| Arc::new(bus.clone()) as Arc<dyn PurgeRecords>);
            let disk = DiskTier::new(dc, horizon.as_millis() as u64, records, metrics.clone());
            let up = disk.clone();
            metrics.watch_disk_tier(move || up.is_up(), disk.layout().capacity);
            disk.start(DISK_OPEN_WAIT, tasks.clone()).await;
            tiers.push(AnyTier::Disk(disk));
        }
        if let Some((tier, ..)) = &redis {
            tiers.push(AnyTier::Redis(tier.clone()));
        }
        let origin = match &origin_config.source {
            OriginSource::Simulated { latency } => AnyOrigin::Simulated(SimulatedOrigin::new(*latency)),
            OriginSource::Http {
                template,
                authorization,
                tags,
            } => AnyOrigin::Http(
                HttpOrigin::new(
                    template.clone(),
                    authorization.clone(),
                    origin_config.max_body_bytes,
                    tags.clone(),
                    relief.clone(),
                )
                .map_err(StartError::Setup)?,
            ),
        };
        let breaker = Arc::new(Breaker::new(
            origin_config.breaker.trip,
            origin_config.breaker.cooldown,
        ));
        let watched = breaker.clone();
        metrics.watch_breaker(move || watched.state(std::time::Instant::now()));
        let origin = GuardedOrigin::new(
            origin,
            origin_config.max_concurrency,
            origin_config.timeout,
            breaker,
            metrics.clone(),
        );
        let replicas = redis.map(|(tier, bus, lock)| Replicas {
            bus,
            shared: AnyTier::Redis(tier),
            lock,
        });
        let cache = ReadThrough::new(tiers, origin, config.cache.life, replicas, metrics.clone());
        if config.admin_listen_addr.is_none() {
            // The service's endpoints keep their paths on a shared listener: say so at start-up
            // rather than let a route look as if it took them.
            for route in config.proxy.iter().filter(|r| !r.prefix.is_empty()) {
                let shadowed = [
                    "/items", "/tags", "/health", "/livez", "/readyz", "/metrics", "/purge",
                ]
                .into_iter()
                .filter(|own| own.starts_with(route.prefix.as_str()) || route.prefix.starts_with(own));
                for own in shadowed {
                    tracing::warn!(
                        route = %route.name,
                        endpoint = own,
                        "a PROXY_ROUTES prefix overlaps an endpoint of the service, which keeps its paths; set ADMIN_LISTEN_ADDR to give them to the route"
                    );
                }
            }
        }
        let proxy = if config.proxy.is_empty() {
            None
        } else {
            let proxy = Proxy::new(
                config.proxy.clone(),
                config.proxy_tags.clone(),
                proxy_memory,
                Some(cache.clone()),
                Some(metrics.clone()),
                crate::proxy::Limits {
                    max_body_bytes: config.origin.max_body_bytes,
                    compression_min_bytes: config.items.compression_min_bytes,
                    timeout: config.origin.timeout,
                    body_timeout: config.server.body_timeout,
                    breaker: (config.origin.breaker.trip, config.origin.breaker.cooldown),
                    max_concurrency: config.origin.max_concurrency,
                    max_streams: limits.max_connections,
                    write_timeout: config.server.write_timeout,
                },
                relief.clone(),
            )
            .map_err(StartError::Setup)?;
            Some(Arc::new(proxy))
        };
        cache.spawn_listener(tasks.clone());

        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen_addr,
                source,
            })?;
        let admin_listener = match config.admin_listen_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let state = Arc::new(AppState {
            cache,
            metrics,
            registry: telemetry.registry.clone(),
            admin_token: config.items.admin_token.clone(),
            max_key_bytes: config.items.max_key_bytes,
            tag_max_bytes: config.items.tag_max_bytes,
            purge_timeout: config.items.purge_timeout,
            origin_kind: match config.origin.source {
                OriginSource::Simulated { .. } => "simulated",
                OriginSource::Http { .. } => "http",
            },
            request_timeout: config.items.request_timeout,
            compression_min_bytes: config.items.compression_min_bytes,
            batch: config.items.batch,
            body_timeout: config.server.body_timeout,
            headers: HeaderTables::new(),
            ready: AtomicBool::new(true),
            proxy,
        });
        Ok(Application {
            listener,
            admin_listener,
            state,
            config,
            limits,
            tasks: tasks.drop_guard(),
            relief,
            _disk_lock: disk_lock,
        })
    }

    /// The bound address (tests bind port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's bound address, when `ADMIN_LISTEN_ADDR` is set.
    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin_listener.as_ref().map(TcpListener::local_addr)
    }

    /// Serves until `shutdown` resolves; then fails `/readyz`, waits `SHUTDOWN_DELAY_SECS`,
    /// closes the listener and the connections without a request in flight, and lets the
    /// requests in flight finish for up to `SHUTDOWN_DRAIN_SECS`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Application {
            listener,
            admin_listener,
            state,
            config,
            limits,
            tasks,
            relief,
            _disk_lock,
        } = self;
        // Whichever way this returns, the Redis upkeep and the listener stop with it; the
        // disk's directory is let go last.
        let _tasks = tasks;
        tracing::info!(addr = %listener.local_addr()?, "listening");
        let server = Arc::new(Server::default());
        relief.add(server.idle_connections());
        let surface = if admin_listener.is_some() {
            Surface::Public
        } else {
            Surface::All
        };
        let accept = {
            let (server, app) = (server.clone(), App::serving(state.clone(), surface));
            tokio::spawn(async move { server.accept_loop(listener, app, limits).await })
        };
        // The admin listener: its own connections, drained with the others at shutdown.
        let admin = match admin_listener {
            Some(admin_listener) => {
                tracing::info!(addr = %admin_listener.local_addr()?, "admin endpoints listening");
                let admin_server = Arc::new(Server::default());
                relief.add(admin_server.idle_connections());
                let (s, app) = (admin_server.clone(), App::serving(state.clone(), Surface::Admin));
                // A cap of its own, inside the descriptors kept for it (`connection_limits`).
                let admin_limits = ServerLimits {
                    max_connections: ADMIN_MAX_CONNECTIONS.min(limits.max_connections),
                    ..limits
                };
                let task =
                    tokio::spawn(async move { s.accept_loop(admin_listener, app, admin_limits).await });
                Some((admin_server, task))
            }
            None => None,
        };
        shutdown.await;
        state.begin_shutdown();
        tracing::info!(delay = ?config.shutdown.delay, "shutting down: /readyz now fails");
        tokio::time::sleep(config.shutdown.delay).await;
        server.set_phase(Phase::Draining);
        let _ = accept.await;
        if let Some((admin_server, task)) = &admin {
            admin_server.set_phase(Phase::Draining);
            let _ = tokio::time::timeout(Duration::from_secs(1), admin_server.drained()).await;
            admin_server.set_phase(Phase::Closing);
            task.abort();
        }
        tracing::info!(
            drain = ?config.shutdown.drain,
            open = server.connections(),
            "listener closed; draining in-flight requests"
        );
        if tokio::time::timeout(config.shutdown.drain, server.drained())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed; closing remaining connections");
            server.set_phase(Phase::Closing);
            let _ = tokio::time::timeout(Duration::from_secs(1), server.drained()).await;
        }
        // Fetches whose clients are gone, background refreshes and writes finish first, so
        // what they store reaches the tiers before those close.
        if !state
            .cache
            .settle_tasks(config.shutdown.drain.max(Duration::from_secs(1)))
            .await
        {
            tracing::warn!(
                "background fetches still running at shutdown; the tiers close without their writes"
            );
        }
        // What the disk tier still buffers is written, so a restart recovers it.
        for tier in state.cache.tiers() {
            tier.close().await;
        }
        Ok(())
    }
}

/// The server's limits, with `HTTP_MAX_CONNECTIONS` lowered to what the open-file limit allows
/// after descriptors for the origin's connections, Redis and the process itself; the descriptor
/// table is grown for all of them now, so that no `accept` under load has to grow it. An
/// open-file limit that leaves room for fewer than [`MIN_CONNECTIONS`] is refused.
fn connection_limits(config: &Config) -> Result<ServerLimits, StartError> {
    let mut limits = config.server;
    // The process's own files and logs; the origin's connections (`/items` and the proxy's
    // routes each hold up to ORIGIN_MAX_CONCURRENCY); Redis's; the admin listener's.
    let origin = config.origin.max_concurrency as u64;
    let proxied = !config.proxy.is_empty();
    let reserve = 64
        + origin
        + if proxied { origin } else { 0 }
        + if config.redis.is_some() { 32 } else { 0 }
        + if config.admin_listen_addr.is_some() {
            ADMIN_MAX_CONNECTIONS as u64
        } else {
            0
        };
    // With proxy routes, each connection may hold an origin connection too: a body too long
    // to store streams through for as long as its client takes to read it.
    let per_connection = if proxied { 2 } else { 1 };
    if let Some(limit) = server::open_file_limit()
        && let budget = limit.saturating_sub(reserve) / per_connection
        && (budget as usize) < limits.max_connections
    {
        // Too few to serve with: a pod that passes its probes but answers one client at a time
        // is worse than one that does not start and says why.
        if (budget as usize) < MIN_CONNECTIONS {
            return Err(StartError::Setting(format!(
                "the open-file limit (RLIMIT_NOFILE, {limit} here) leaves room for {budget} connection(s) after \
                 {reserve} descriptors kept for the origins' connections (ORIGIN_MAX_CONCURRENCY={} each for \
                 `/items` and the proxy's routes), Redis, the admin listener and files (and, with \
                 proxy routes, two per connection); at \
                 least {MIN_CONNECTIONS} are needed: raise the limit (`ulimit -n`, the container's `nofile`) \
                 or lower ORIGIN_MAX_CONCURRENCY",
                config.origin.max_concurrency,
            )));
        }
        tracing::warn!(
            configured = limits.max_connections,
            lowered = budget,
            reserved = reserve,
            "HTTP_MAX_CONNECTIONS lowered to fit under the open-file limit (RLIMIT_NOFILE)"
        );
        limits.max_connections = budget as usize;
    }
    let wanted = limits.max_connections as u64 + reserve;
    if let Some(grown) = server::presize_descriptor_table(wanted) {
        tracing::debug!(wanted, grown, "descriptor table grown at start-up");
    }
    Ok(limits)
}

/// Connections the admin listener (`ADMIN_LISTEN_ADDR`) takes at most: probes, scrapes and
/// purges, from a few clients; its descriptors are kept apart from `HTTP_MAX_CONNECTIONS`'.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Connections the open-file limit must leave room for when it lowers `HTTP_MAX_CONNECTIONS`:
/// under it start-up fails rather than serve a handful of clients at a time.
const MIN_CONNECTIONS: usize = 16;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
