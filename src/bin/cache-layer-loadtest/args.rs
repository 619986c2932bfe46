//! The command line, checked into a [`Plan`]: every run is bounded in requests and in time.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::workload::{Pattern, Workload};

/// A run that reaches neither `--requests` nor `--duration` stops after this long anyway.
const MAX_RUN: Duration = Duration::from_secs(24 * 3600);

/// Sends `GET <url>/items/<key>` and shows what the cache buys: hit rate by tier, latency
/// percentiles, errors by kind and the origin fetches saved. With no options it is the seed's
/// `load_test.py`: 50 sequential requests, 70 % to `foo`, 30 % to `k0`…`k9`.
#[derive(Parser, Debug)]
#[command(name = "cache-layer-loadtest", version)]
pub struct Args {
    /// Base URL of the service (http only). Requests go to <url>/items/<key> (<url>/items:batch
    /// with --batch) and <url>/metrics (read before and after the run), nowhere else.
    #[arg(long, default_value = "http://localhost:5000")]
    pub url: String,
    /// Requests to measure. Default: 50 for the seed pattern; unlimited otherwise (then
    /// --duration bounds the run).
    #[arg(long)]
    pub requests: Option<u64>,
    /// How long to measure, e.g. 30s, 2m, 500ms. Default: 10s unless --requests is given.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Connections, each with one request in flight.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub concurrency: u32,
    /// Threads sending requests (each owns a share of the connections). Default: the cores
    /// this process may run on.
    #[arg(long)]
    pub threads: Option<u32>,
    /// Target requests per second over all connections, sent on schedule whether or not
    /// earlier answers are back (open loop). Latency counts from the scheduled time, so a
    /// stall is not hidden (no coordinated omission). Without it each connection sends its
    /// next request as soon as the last is answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value = "seed")]
    pub pattern: Pattern,
    /// Number of distinct keys for zipf, uniform and cycle.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    /// Zipf exponent s: P(rank k) ∝ 1/k^s.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub zipf_exponent: f64,
    /// Keys are <prefix><rank> for zipf, uniform and cycle.
    #[arg(long, default_value = "key-")]
    pub key_prefix: String,
    /// The key of the single pattern.
    #[arg(long, default_value = "foo")]
    pub key: String,
    /// Append -<SUFFIX> to every key, so a rerun starts cold. Without a value: a suffix made
    /// from the time of the run.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub suffix: Option<String>,
    /// Send traffic for this long first, not counted (e.g. 5s).
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Seed of the key sampler, for a repeatable key sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Send `POST /items:batch` with this many keys per request (drawn from the pattern like
    /// single requests' keys) instead of one `GET` per key. Latency is per batch; hits, misses
    /// and errors are per key.
    #[arg(long)]
    pub batch: Option<u32>,
    /// Print the summary as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// One line per request (default for the seed pattern on one connection).
    #[arg(long, overrides_with = "quiet")]
    pub per_request: bool,
    /// No per-request lines.
    #[arg(long)]
    pub quiet: bool,
    /// No progress bar (it is drawn on stderr only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// A checked run.
pub struct Plan {
    /// The base URL as given, without a trailing slash.
    pub url: String,
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    pub requests: Option<u64>,
    pub duration: Duration,
    pub concurrency: u32,
    pub threads: u32,
    pub rate: Option<f64>,
    pub pattern: Pattern,
    pub workload: Workload,
    pub warmup: Option<Duration>,
    pub timeout: Duration,
    pub seed: u64,
    /// Keys per `POST /items:batch` request; `None` sends single `GET`s.
    pub batch: Option<u32>,
    pub json: bool,
    pub per_request: bool,
    pub progress: bool,
}

impl Args {
    /// Checks the arguments; the error names the option and what is wrong.
    pub async fn plan(self) -> Result<Plan, String> {
        let url = url::Url::parse(&self.url).map_err(|e| format!("--url {:?}: {e}", self.url))?;
        if url.scheme() != "http" {
            return Err(format!("--url {:?}: only http:// is supported", self.url));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(format!(
                "--url {:?}: give the base URL only (keys go to <url>/items/<key>)",
                self.url
            ));
        }
        let host = url.host_str().ok_or(format!("--url {:?}: no host", self.url))?;
        let port = url.port_or_known_default().unwrap_or(80);
        // IPv6 brackets are part of the URL's host, not of the name to resolve.
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map(Iterator::collect)
            .unwrap_or_default();
        let addr = reachable(&addrs)
            .await
            .ok_or(format!("--url {:?}: cannot resolve {host}", self.url))?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        if !(1..=10_000).contains(&self.concurrency) {
            return Err(format!("--concurrency {}: expected 1 to 10000", self.concurrency));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let threads = self.threads.unwrap_or(cores);
        if !(1..=256).contains(&threads) {
            return Err(format!("--threads {threads}: expected 1 to 256"));
        }
        if let Some(r) = self.rate
            && !(r > 0.0 && r <= 10_000_000.0)
        {
            return Err(format!("--rate {r}: expected above 0, at most 10000000"));
        }
        if self.requests == Some(0) {
            return Err("--requests 0: expected at least 1".to_owned());
        }
        if self.batch.is_some_and(|n| !(1..=100_000).contains(&n)) {
            return Err(format!(
                "--batch {}: expected 1 to 100000",
                self.batch.unwrap_or(0)
            ));
        }
        if self.key_space == 0 {
            return Err("--key-space 0: expected at least 1".to_owned());
        }
        for (name, d) in [("--duration", self.duration), ("--warmup", self.warmup)] {
            if d.is_some_and(|d| d.is_zero() || d > MAX_RUN) {
                return Err(format!("{name}: expected above 0, at most 24h"));
            }
        }
        let requests = match (self.requests, self.duration, self.pattern) {
            (None, None, Pattern::Seed) => Some(50),
            (None, Some(_), Pattern::Seed) => {
                return Err("--pattern seed: give --requests (the sequence depends on it)".into());
            }
            (r, _, _) => r,
        };
        let duration = match (requests, self.duration) {
            (_, Some(d)) => d,
            (Some(_), None) => MAX_RUN,
            (None, None) => Duration::from_secs(10),
        };
        let suffix = self.suffix.map(|s| {
            if s.is_empty() {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                format!("run{}", now.as_millis())
            } else {
                s
            }
        });
        let workload = Workload::new(
            self.pattern,
            if self.pattern == Pattern::Single {
                &self.key
            } else {
                &self.key_prefix
            },
            self.key_space,
            self.zipf_exponent,
            suffix.as_deref(),
            requests.unwrap_or(0),
        )?;
        let per_request = !self.json
            && !self.quiet
            && self.batch.is_none()
            && (self.per_request || (self.pattern == Pattern::Seed && self.concurrency == 1));
        Ok(Plan {
            url: self.url.trim_end_matches('/').to_owned(),
            addr,
            host: authority,
            requests,
            duration,
            concurrency: self.concurrency,
            threads,
            rate: self.rate,
            pattern: self.pattern,
            workload,
            warmup: self.warmup,
            timeout: self.timeout,
            seed: self.seed,
            batch: self.batch,
            json: self.json,
            per_request,
            progress: !self.no_progress && !per_request,
        })
    }
}

/// The first address that accepts a connection (`localhost` may resolve to `::1` first while
/// the server listens on IPv4 only), else the first address, whose errors the run will report.
async fn reachable(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    for &addr in addrs {
        let attempt = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return Some(addr);
        }
    }
    addrs.first().copied()
}

/// `250ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with ms, s, m or h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    async fn plan(args: &[&str]) -> Result<Plan, String> {
        let mut all = vec!["cache-layer-loadtest"];
        all.extend_from_slice(args);
        Args::try_parse_from(all).map_err(|e| e.to_string())?.plan().await
    }

    #[tokio::test]
    async fn defaults_are_the_seeds_run() {
        let p = plan(&[]).await.unwrap();
        assert_eq!(p.requests, Some(50));
        assert_eq!(p.concurrency, 1);
        assert!(p.per_request && !p.progress);
        assert_eq!(p.host, "localhost:5000");
    }

    #[tokio::test]
    async fn every_run_is_bounded() {
        let p = plan(&["--pattern", "zipf"]).await.unwrap();
        assert_eq!((p.requests, p.duration), (None, Duration::from_secs(10)));
        let p = plan(&["--pattern", "zipf", "--requests", "5"]).await.unwrap();
        assert_eq!((p.requests, p.duration), (Some(5), MAX_RUN));
    }

    #[tokio::test]
    async fn the_address_that_answers_is_chosen() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let v4 = listener.local_addr().unwrap();
        let v6: SocketAddr = format!("[::1]:{}", v4.port()).parse().unwrap();
        assert_eq!(reachable(&[v6, v4]).await, Some(v4));
        drop(listener);
        assert_eq!(reachable(&[v6, v4]).await, Some(v6), "none answers: the first");
        assert_eq!(reachable(&[]).await, None);
    }

    #[tokio::test]
    async fn bad_options_name_themselves() {
        for (args, needle) in [
            (&["--url", "https://x"][..], "only http://"),
            (&["--url", "http://127.0.0.1:1/items"][..], "base URL only"),
            (&["--concurrency", "0"][..], "--concurrency 0"),
            (&["--rate", "0"][..], "--rate 0"),
            (&["--requests", "0"][..], "--requests 0"),
            (&["--batch", "0"][..], "--batch 0"),
            (&["--duration", "10s"][..], "give --requests"),
            (
                &["--pattern", "zipf", "--zipf-exponent", "-2"][..],
                "--zipf-exponent",
            ),
        ] {
            let err = plan(args).await.err().unwrap_or_default();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
