//! The one typed configuration, read from environment variables only.
//!
//! envy reads every variable as an optional string (so an empty variable can count as unset and
//! every value can be checked with a message that names the variable, the value and what is
//! expected); [`Config::from_vars`] then turns those strings into typed settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// A setting that cannot be used: start-up stops with this message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {var}={value:?}: expected {expected}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// The value it was given.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

/// How the service reaches Redis, if at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// One URL, or the seed nodes of a cluster; passwords included.
    pub urls: Vec<String>,
    /// Treat `urls` as the seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// Password applied to every URL that carries none (`REDIS_PASSWORD`).
    pub password: Option<String>,
    /// PEM of the CA that signed the servers' certificates (`REDIS_TLS_CA_FILE`), for `rediss://`
    /// servers with a private CA; `None` trusts the public web PKI roots.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Namespace of keys, lock keys and the invalidation channel.
    pub key_prefix: String,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long one command may take before the request goes on without Redis.
    pub response_timeout: Duration,
    /// How long a fleet-wide fetch lock lives if its holder dies.
    pub lock_ttl: Duration,
    /// How long a replica waits for another replica's fetch before fetching itself.
    pub lock_wait: Duration,
    /// `FLEET_LOCK_POLL_MS`: how often a waiting replica looks in Redis when no fill message has
    /// woken it (messages can be lost).
    pub lock_poll: Duration,
}

/// How the HTTP server treats connections (`HTTP_*`): what a slow or idle client may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// `HTTP_HEADER_TIMEOUT_SECS`: a request head must arrive within it (from the accept, or
    /// from its first byte on a kept-alive connection), else the connection is closed.
    pub header_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_SECS`: a request body must arrive within it, else `408`.
    pub body_timeout: Duration,
    /// `HTTP_KEEPALIVE_TIMEOUT_SECS`: an idle kept-alive connection is closed after it.
    pub keepalive_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: open connections at most; at the cap the oldest idle one is
    /// closed to make room. Lowered at start-up to fit under `RLIMIT_NOFILE`.
    pub max_connections: usize,
}

/// Where values come from on a miss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginConfig {
    /// The seed's simulated origin: `"value_for_{key}"` after a delay.
    Simulated {
        /// The delay of every fetch.
        latency: Duration,
    },
    /// An HTTP origin reached through a URL template holding `{key}`.
    Http {
        /// The template, e.g. `http://api/items/{key}`.
        url_template: String,
        /// Value of the `Authorization` header sent with each fetch.
        authorization: Option<String>,
    },
}

/// Every setting of the service, typed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP server listens.
    pub listen_addr: SocketAddr,
    /// The shared tier; `None` runs without Redis.
    pub redis: Option<RedisConfig>,
    /// How long an entry is fresh.
    pub ttl: Duration,
    /// How long after going stale an entry may still be served.
    pub stale: Duration,
    /// How long an origin 404/410 is remembered.
    pub negative_ttl: Duration,
    /// Up to this share of `ttl` is taken off each entry's freshness, so keys cached together do
    /// not expire together (0..=50).
    pub ttl_jitter_percent: u8,
    /// Whether the in-process tier is used.
    pub memory_enabled: bool,
    /// Bound of the in-process tier, in bytes of keys, values and per-entry overhead.
    pub memory_max_bytes: u64,
    /// The origin.
    pub origin: OriginConfig,
    /// Deadline of one origin request.
    pub origin_timeout: Duration,
    /// Origin requests in flight at most, per process.
    pub origin_max_concurrency: usize,
    /// A larger origin body is refused.
    pub origin_max_body_bytes: usize,
    /// Consecutive origin failures that open the circuit.
    pub breaker_failures: u32,
    /// Size of the window of recent origin fetches the failure rate is taken over.
    pub breaker_window: u32,
    /// Percentage of failed fetches in a full window that opens the circuit; 0 = no window.
    pub breaker_failure_rate: u32,
    /// How long the circuit stays open before one probe is let through.
    pub breaker_cooldown: Duration,
    /// Bearer token for purges; `None` turns purging off.
    pub admin_token: Option<String>,
    /// Longest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Deadline of one HTTP request as a whole.
    pub request_timeout: Duration,
    /// On SIGTERM: how long `/readyz` fails before the listener closes.
    pub shutdown_delay: Duration,
    /// On SIGTERM: how long in-flight requests may take to finish.
    pub shutdown_drain: Duration,
    /// Log lines as JSON rather than text.
    pub log_json: bool,
    /// Connection limits of the HTTP server.
    pub server: ServerLimits,
}

/// The variables as envy reads them: all optional strings, empty ones already dropped.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    listen_addr: Option<String>,
    redis_url: Option<String>,
    redis_host: Option<String>,
    redis_port: Option<String>,
    redis_db: Option<String>,
    redis_password: Option<String>,
    redis_tls_ca_file: Option<String>,
    redis_cluster: Option<String>,
    redis_key_prefix: Option<String>,
    redis_connect_timeout_ms: Option<String>,
    redis_response_timeout_ms: Option<String>,
    fleet_lock_ttl_ms: Option<String>,
    fleet_lock_wait_ms: Option<String>,
    fleet_lock_poll_ms: Option<String>,
    cache_ttl_secs: Option<String>,
    redis_ttl: Option<String>,
    cache_stale_secs: Option<String>,
    cache_negative_ttl_secs: Option<String>,
    cache_ttl_jitter_percent: Option<String>,
    memory_cache_enabled: Option<String>,
    memory_cache_max_bytes: Option<String>,
    origin_url: Option<String>,
    origin_latency_ms: Option<String>,
    origin_timeout_ms: Option<String>,
    origin_max_concurrency: Option<String>,
    origin_max_body_bytes: Option<String>,
    origin_authorization: Option<String>,
    origin_breaker_failures: Option<String>,
    origin_breaker_window: Option<String>,
    origin_breaker_failure_rate: Option<String>,
    origin_breaker_cooldown_secs: Option<String>,
    admin_token: Option<String>,
    max_key_bytes: Option<String>,
    request_timeout_secs: Option<String>,
    shutdown_delay_secs: Option<String>,
    shutdown_drain_secs: Option<String>,
    log_format: Option<String>,
    http_header_timeout_secs: Option<String>,
    http_body_timeout_secs: Option<String>,
    http_keepalive_timeout_secs: Option<String>,
    http_max_connections: Option<String>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the given variables (tests pass their own); empty values count as unset.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars = vars.into_iter().filter(|(_, v)| !v.is_empty());
        // Every field is an optional string, so envy cannot fail on a value: only on a
        // non-UTF-8 environment, which std::env::vars already refuses.
        let raw: RawEnv = envy::from_iter(vars).unwrap_or_default();
        raw.into_config()
    }
}

impl RawEnv {
    fn into_config(self) -> Result<Config, ConfigError> {
        let redis = redis_config(&self)?;
        let listen_addr = parse_or(
            "LISTEN_ADDR",
            self.listen_addr,
            "0.0.0.0:5000".parse().expect("default address parses"),
            "an address and port such as 0.0.0.0:5000",
            |s| s.parse::<SocketAddr>().ok(),
        )?;
        let ttl_var = if self.cache_ttl_secs.is_some() {
            "CACHE_TTL_SECS"
        } else {
            "REDIS_TTL"
        };
        let ttl = secs(ttl_var, self.cache_ttl_secs.or(self.redis_ttl), 60, 1)?;
        let stale = secs("CACHE_STALE_SECS", self.cache_stale_secs, 300, 0)?;
        let negative_ttl = secs("CACHE_NEGATIVE_TTL_SECS", self.cache_negative_ttl_secs, 5, 0)?;
        let ttl_jitter_percent = bounded(
            "CACHE_TTL_JITTER_PERCENT",
            self.cache_ttl_jitter_percent,
            10,
            0..=50,
        )? as u8;
        let memory_enabled = boolean("MEMORY_CACHE_ENABLED", self.memory_cache_enabled, true)?;
        let memory_max_bytes = bounded(
            "MEMORY_CACHE_MAX_BYTES",
            self.memory_cache_max_bytes,
            64 * 1024 * 1024,
            1..=u64::MAX,
        )?;
        let origin_latency = millis("ORIGIN_LATENCY_MS", self.origin_latency_ms.clone(), 200, 0)?;
        let origin_timeout = millis("ORIGIN_TIMEOUT_MS", self.origin_timeout_ms.clone(), 2000, 1)?;
        if let Some(r) = &redis
            && r.lock_ttl < origin_timeout
        {
            return Err(invalid(
                "FLEET_LOCK_TTL_MS",
                &r.lock_ttl.as_millis().to_string(),
                &format!(
                    "at least ORIGIN_TIMEOUT_MS ({} ms), so the lock outlives the fetch it guards",
                    origin_timeout.as_millis()
                ),
            ));
        }
        let origin = match self.origin_url {
            Some(url) => OriginConfig::Http {
                url_template: origin_template(url)?,
                authorization: match self.origin_authorization {
                    Some(a) if a.bytes().any(|b| b.is_ascii_control() && b != b'\t') => {
                        return Err(invalid(
                            "ORIGIN_AUTHORIZATION",
                            "<redacted>",
                            "a header value without control characters",
                        ));
                    }
                    a => a,
                },
            },
            None => OriginConfig::Simulated {
                latency: origin_latency,
            },
        };
        let log_json = match self.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => return Err(invalid("LOG_FORMAT", other, "text or json")),
        };
        Ok(Config {
            listen_addr,
            redis,
            ttl,
            stale,
            negative_ttl,
            ttl_jitter_percent,
            memory_enabled,
            memory_max_bytes,
            origin,
            origin_timeout,
            origin_max_concurrency: bounded(
                "ORIGIN_MAX_CONCURRENCY",
                self.origin_max_concurrency,
                64,
                1..=100_000,
            )? as usize,
            origin_max_body_bytes: bounded(
                "ORIGIN_MAX_BODY_BYTES",
                self.origin_max_body_bytes,
                1024 * 1024,
                1..=(1 << 30),
            )? as usize,
            breaker_failures: bounded(
                "ORIGIN_BREAKER_FAILURES",
                self.origin_breaker_failures,
                5,
                1..=1_000_000,
            )? as u32,
            breaker_window: bounded("ORIGIN_BREAKER_WINDOW", self.origin_breaker_window, 20, 2..=64)? as u32,
            breaker_failure_rate: bounded(
                "ORIGIN_BREAKER_FAILURE_RATE",
                self.origin_breaker_failure_rate,
                50,
                0..=100,
            )? as u32,
            breaker_cooldown: secs(
                "ORIGIN_BREAKER_COOLDOWN_SECS",
                self.origin_breaker_cooldown_secs,
                10,
                1,
            )?,
            admin_token: match self.admin_token {
                Some(t) if t.trim().is_empty() => {
                    return Err(invalid(
                        "ADMIN_TOKEN",
                        "<whitespace>",
                        "a token with at least one character other than whitespace (unset it to turn purging off)",
                    ));
                }
                t => t,
            },
            max_key_bytes: bounded("MAX_KEY_BYTES", self.max_key_bytes, 512, 1..=65_536)? as usize,
            request_timeout: secs("REQUEST_TIMEOUT_SECS", self.request_timeout_secs, 30, 1)?,
            shutdown_delay: secs("SHUTDOWN_DELAY_SECS", self.shutdown_delay_secs, 0, 0)?,
            shutdown_drain: secs("SHUTDOWN_DRAIN_SECS", self.shutdown_drain_secs, 20, 0)?,
            log_json,
            server: ServerLimits {
                header_timeout: secs("HTTP_HEADER_TIMEOUT_SECS", self.http_header_timeout_secs, 10, 1)?,
                body_timeout: secs("HTTP_BODY_TIMEOUT_SECS", self.http_body_timeout_secs, 10, 1)?,
                keepalive_timeout: secs(
                    "HTTP_KEEPALIVE_TIMEOUT_SECS",
                    self.http_keepalive_timeout_secs,
                    60,
                    1,
                )?,
                max_connections: bounded(
                    "HTTP_MAX_CONNECTIONS",
                    self.http_max_connections,
                    4096,
                    1..=1_000_000,
                )? as usize,
            },
        })
    }
}

fn redis_config(raw: &RawEnv) -> Result<Option<RedisConfig>, ConfigError> {
    let cluster = boolean("REDIS_CLUSTER", raw.redis_cluster.clone(), false)?;
    let urls = match (&raw.redis_url, &raw.redis_host) {
        (Some(url), _) => {
            let urls: Vec<String> = url.split(',').map(|u| u.trim().to_owned()).collect();
            if urls.len() > 1 && !cluster {
                return Err(invalid(
                    "REDIS_URL",
                    url,
                    "one redis:// or rediss:// URL (several, comma-separated, only with REDIS_CLUSTER=true)",
                ));
            }
            for u in &urls {
                check_redis_url(url, u)?;
            }
            urls
        }
        (None, Some(host)) => {
            let port = bounded("REDIS_PORT", raw.redis_port.clone(), 6379, 1..=65_535)?;
            let db = bounded("REDIS_DB", raw.redis_db.clone(), 0, 0..=1_000_000)?;
            if host.contains(['/', '@', ' ']) {
                return Err(invalid("REDIS_HOST", host, "a host name or IP address"));
            }
            vec![format!("redis://{host}:{port}/{db}")]
        }
        (None, None) => return Ok(None),
    };
    let tls_ca_pem = match &raw.redis_tls_ca_file {
        None => None,
        Some(path) => {
            if !urls.iter().all(|u| u.starts_with("rediss://")) {
                return Err(invalid(
                    "REDIS_TLS_CA_FILE",
                    path,
                    "to be set only with rediss:// URLs in REDIS_URL",
                ));
            }
            let pem = std::fs::read(path)
                .ok()
                .filter(|pem| pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----"));
            Some(pem.ok_or_else(|| {
                invalid(
                    "REDIS_TLS_CA_FILE",
                    path,
                    "a readable PEM file holding a CA certificate",
                )
            })?)
        }
    };
    Ok(Some(RedisConfig {
        urls,
        cluster,
        tls_ca_pem,
        password: raw.redis_password.clone(),
        key_prefix: raw
            .redis_key_prefix
            .clone()
            .unwrap_or_else(|| "cache-layer".to_owned()),
        connect_timeout: millis(
            "REDIS_CONNECT_TIMEOUT_MS",
            raw.redis_connect_timeout_ms.clone(),
            250,
            1,
        )?,
        response_timeout: millis(
            "REDIS_RESPONSE_TIMEOUT_MS",
            raw.redis_response_timeout_ms.clone(),
            250,
            1,
        )?,
        lock_ttl: millis("FLEET_LOCK_TTL_MS", raw.fleet_lock_ttl_ms.clone(), 5000, 1)?,
        lock_wait: millis("FLEET_LOCK_WAIT_MS", raw.fleet_lock_wait_ms.clone(), 3000, 0)?,
        lock_poll: millis("FLEET_LOCK_POLL_MS", raw.fleet_lock_poll_ms.clone(), 500, 1)?,
    }))
}

fn check_redis_url(whole: &str, one: &str) -> Result<(), ConfigError> {
    let expected = "a redis:// or rediss:// URL such as redis://:password@host:6379/0";
    let parsed = url::Url::parse(one).map_err(|_| invalid("REDIS_URL", whole, expected))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("REDIS_URL", whole, expected));
    }
    Ok(())
}

fn origin_template(url: String) -> Result<String, ConfigError> {
    let expected = "an http:// or https:// URL template containing {key}, e.g. http://api/items/{key}";
    if !url.contains("{key}") {
        return Err(invalid("ORIGIN_URL", &url, expected));
    }
    let probe = url.replace("{key}", "k");
    match url::Url::parse(&probe) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(url),
        _ => Err(invalid("ORIGIN_URL", &url, expected)),
    }
}

fn invalid(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError {
        var,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

fn parse_or<T>(
    var: &'static str,
    value: Option<String>,
    default: T,
    expected: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => parse(v.trim()).ok_or_else(|| invalid(var, &v, expected)),
    }
}

fn bounded(
    var: &'static str,
    value: Option<String>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let expected = if *range.end() == u64::MAX {
        format!("a whole number of at least {}", range.start())
    } else {
        format!("a whole number from {} to {}", range.start(), range.end())
    };
    parse_or(var, value, default, &expected, |s| {
        s.parse::<u64>().ok().filter(|n| range.contains(n))
    })
}

fn secs(var: &'static str, value: Option<String>, default: u64, min: u64) -> Result<Duration, ConfigError> {
    let expected = format!("a whole number of seconds, at least {min}");
    parse_or(var, value, default, &expected, |s| {
        s.parse::<u64>().ok().filter(|n| *n >= min)
    })
    .map(Duration::from_secs)
}

fn millis(var: &'static str, value: Option<String>, default: u64, min: u64) -> Result<Duration, ConfigError> {
    let expected = format!("a whole number of milliseconds, at least {min}");
    parse_or(var, value, default, &expected, |s| {
        s.parse::<u64>().ok().filter(|n| *n >= min)
    })
    .map(Duration::from_millis)
}

fn boolean(var: &'static str, value: Option<String>, default: bool) -> Result<bool, ConfigError> {
    parse_or(var, value, default, "true or false", |s| {
        match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_run_the_seed_demo_without_redis() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:5000");
        assert_eq!(c.redis, None);
        assert_eq!(c.ttl, Duration::from_secs(60));
        assert_eq!(
            c.origin,
            OriginConfig::Simulated {
                latency: Duration::from_millis(200)
            }
        );
        assert!(c.memory_enabled);
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let c = config(&[("CACHE_TTL_SECS", ""), ("REDIS_URL", ""), ("LISTEN_ADDR", "")]).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(60));
        assert_eq!(c.redis, None);
    }

    #[test]
    fn redis_ttl_is_an_alias_and_cache_ttl_secs_wins() {
        assert_eq!(config(&[("REDIS_TTL", "7")]).unwrap().ttl, Duration::from_secs(7));
        let both = config(&[("REDIS_TTL", "7"), ("CACHE_TTL_SECS", "9")]).unwrap();
        assert_eq!(both.ttl, Duration::from_secs(9));
        assert_eq!(config(&[("REDIS_TTL", "x")]).unwrap_err().var, "REDIS_TTL");
    }

    #[test]
    fn bad_values_name_the_variable_value_and_expectation() {
        let e = config(&[("CACHE_TTL_SECS", "abc")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: CACHE_TTL_SECS=\"abc\": expected a whole number of seconds, at least 1"
        );
        assert_eq!(config(&[("LISTEN_ADDR", "nope")]).unwrap_err().var, "LISTEN_ADDR");
        assert_eq!(config(&[("REDIS_URL", "http://x")]).unwrap_err().var, "REDIS_URL");
        assert_eq!(
            config(&[("ORIGIN_URL", "http://x/items")]).unwrap_err().var,
            "ORIGIN_URL"
        );
        assert_eq!(
            config(&[("MEMORY_CACHE_MAX_BYTES", "0")]).unwrap_err().var,
            "MEMORY_CACHE_MAX_BYTES"
        );
        assert_eq!(config(&[("LOG_FORMAT", "xml")]).unwrap_err().var, "LOG_FORMAT");
        assert_eq!(
            config(&[("ORIGIN_URL", "http://o/{key}"), ("ORIGIN_LATENCY_MS", "x")])
                .unwrap_err()
                .var,
            "ORIGIN_LATENCY_MS"
        );
        let short_lock = [
            ("REDIS_URL", "redis://r"),
            ("FLEET_LOCK_TTL_MS", "100"),
            ("ORIGIN_TIMEOUT_MS", "500"),
        ];
        assert_eq!(config(&short_lock).unwrap_err().var, "FLEET_LOCK_TTL_MS");
    }

    #[test]
    fn a_whitespace_admin_token_is_refused_without_echoing_it() {
        let e = config(&[("ADMIN_TOKEN", "  \t ")]).unwrap_err();
        assert_eq!(e.var, "ADMIN_TOKEN");
        assert_eq!(e.value, "<whitespace>");
        assert_eq!(
            config(&[("ADMIN_TOKEN", "short")])
                .unwrap()
                .admin_token
                .as_deref(),
            Some("short")
        );
    }

    #[test]
    fn seed_redis_variables_build_a_url() {
        let c = config(&[("REDIS_HOST", "redis"), ("REDIS_PORT", "6380"), ("REDIS_DB", "2")]).unwrap();
        assert_eq!(c.redis.unwrap().urls, vec!["redis://redis:6380/2".to_owned()]);
    }

    #[test]
    fn several_redis_urls_need_cluster_mode() {
        let urls = "redis://a:1,redis://b:2";
        assert_eq!(config(&[("REDIS_URL", urls)]).unwrap_err().var, "REDIS_URL");
        let c = config(&[("REDIS_URL", urls), ("REDIS_CLUSTER", "true")]).unwrap();
        assert_eq!(c.redis.unwrap().urls.len(), 2);
    }
}
