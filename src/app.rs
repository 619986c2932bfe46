//! Building the service from its `Config` and running it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;

use crate::cache::{FleetLock, Lifetimes, MemoryTier, ReadThrough, RedisTier};
use crate::config::{Config, OriginConfig};
use crate::http::{AppState, HeaderTables, router};
use crate::origin::{AnyOrigin, Breaker, GuardedOrigin, HttpOrigin, SimulatedOrigin, Trip};
use crate::telemetry::{Telemetry, observe_gauge};

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
    /// A part could not be built from its settings.
    #[error("{0}")]
    Setup(String),
}

/// The service, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    config: Config,
}

impl Application {
    /// Builds every part and binds the listener. Redis is pinged once, bounded by its timeouts;
    /// a Redis that is down does not stop start-up.
    pub async fn build(config: Config, telemetry: &Telemetry) -> Result<Self, StartError> {
        let metrics = telemetry.metrics.clone();
        let memory = config
            .memory_enabled
            .then(|| MemoryTier::new(config.memory_max_bytes, metrics.clone()));
        if let Some(m) = &memory {
            let (bytes, entries) = (m.clone(), m.clone());
            observe_gauge(
                metrics.meter(),
                "memory_cache_bytes",
                "Bytes held by the memory tier (keys, values, overhead).",
                move || bytes.bytes(),
            );
            observe_gauge(
                metrics.meter(),
                "memory_cache_entries",
                "Entries held by the memory tier.",
                move || entries.entries(),
            );
        }
        let redis = match &config.redis {
            Some(rc) => {
                let tier =
                    RedisTier::new(rc, metrics.clone()).map_err(|e| StartError::Setup(e.to_string()))?;
                tier.start().await;
                Some(tier)
            }
            None => None,
        };
        let origin = match &config.origin {
            OriginConfig::Simulated { latency } => AnyOrigin::Simulated(SimulatedOrigin::new(*latency)),
            OriginConfig::Http {
                url_template,
                authorization,
            } => AnyOrigin::Http(
                HttpOrigin::new(
                    url_template,
                    authorization.as_deref(),
                    config.origin_max_body_bytes,
                )
                .map_err(StartError::Setup)?,
            ),
        };
        let origin = GuardedOrigin::new(
            origin,
            config.origin_max_concurrency,
            config.origin_timeout,
            Breaker::new(
                Trip {
                    consecutive: config.breaker_failures,
                    window: config.breaker_window,
                    rate_percent: config.breaker_failure_rate,
                },
                config.breaker_cooldown,
            ),
            metrics.clone(),
        );
        let life = Lifetimes {
            ttl: config.ttl,
            stale: config.stale,
            negative_ttl: config.negative_ttl,
            jitter_percent: config.ttl_jitter_percent,
        };
        let fleet = config
            .redis
            .as_ref()
            .map(|r| FleetLock {
                ttl: r.lock_ttl,
                wait: r.lock_wait,
                poll: r.lock_poll,
            })
            .unwrap_or(FleetLock {
                ttl: Default::default(),
                wait: Default::default(),
                poll: Default::default(),
            });
        let cache = ReadThrough::new(memory, redis, origin, life, fleet, metrics.clone());
        cache.spawn_redis_listener();

        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen_addr,
                source,
            })?;
        let state = Arc::new(AppState {
            cache,
            metrics,
            registry: telemetry.registry.clone(),
            admin_token: config.admin_token.clone(),
            max_key_bytes: config.max_key_bytes,
            request_timeout: config.request_timeout,
            headers: HeaderTables::new(config.ttl.as_secs()),
            ready: AtomicBool::new(true),
        });
        Ok(Application {
            listener,
            state,
            config,
        })
    }

    /// The bound address (tests bind port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves; then fails `/readyz`, waits `SHUTDOWN_DELAY_SECS`,
    /// closes the listener and lets in-flight requests finish for up to `SHUTDOWN_DRAIN_SECS`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Application {
            listener,
            state,
            config,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, "listening");
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, router(state.clone())).with_graceful_shutdown(async move {
            let _ = close_rx.await;
        });
        let mut server = tokio::spawn(async move { server.await });
        tokio::select! {
            result = &mut server => return result.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            () = shutdown => {}
        }
        state.begin_shutdown();
        tracing::info!(delay = ?config.shutdown_delay, "shutting down: /readyz now fails");
        tokio::time::sleep(config.shutdown_delay).await;
        let _ = close_tx.send(());
        tracing::info!(drain = ?config.shutdown_drain, "listener closed; draining in-flight requests");
        match tokio::time::timeout(config.shutdown_drain, &mut server).await {
            Ok(result) => result.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(_) => {
                tracing::warn!("drain deadline passed; closing remaining connections");
                server.abort();
                Ok(())
            }
        }
    }
}

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
