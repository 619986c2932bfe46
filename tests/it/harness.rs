//! Real processes on free loopback ports: the service binary, the origin stub, `redis-server`,
//! `prometheus`. Every process is killed when its handle drops. Waits poll against generous
//! deadlines; nothing here asserts a duration.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: the machine has two cores and runs other tests at the same time.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback port for a server that a test stops and starts again on the same port
/// (Redis), with `port + 10000` free too (a cluster node's bus). Both lie below the kernel's
/// ephemeral range (32768-60999 on Linux), which `bind(0)` and every outgoing connection draw
/// from: there, a client connection of the busy suite could take the port while the server is
/// down, and its restart would fail. Never 6379 or its bus port (another Redis may run there).
pub fn restartable_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let start = RandomState::new().hash_one(std::process::id());
    for i in 0..10_000u64 {
        let p = 12_000 + (start.wrapping_add(i) % 10_000) as u16;
        if p != 16_379
            && TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port pair in 12000-32000");
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The resident set of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// `GET url` as JSON.
pub async fn get_json(url: &str) -> Value {
    client().get(url).send().await.unwrap().json().await.unwrap()
}

/// A client without connection reuse surprises (fresh pool per test).
pub fn client() -> reqwest::Client {
    cache_layer::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        // Everything is on loopback: no HTTP(S)_PROXY from the developer's environment.
        .no_proxy()
        // Raw bodies as the service sends them: no Accept-Encoding added, nothing decoded.
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .build()
        .unwrap()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `kill -<sig>` to a process.
pub fn signal(pid: u32, sig: &str) {
    let _ = tool_command("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// The service binary, running.
pub struct Service {
    pub child: Child,
    pub base: String,
    pub port: u16,
}

/// A `Command` for an installed tool (`redis-server`, `redis-cli`, `openssl`, `prometheus`) with
/// an empty environment but `PATH` (to find it, and for `timeout` to find what it runs): nothing
/// like `REDISCLI_AUTH` or `OPENSSL_CONF` leaks in from the developer's environment.
pub fn tool_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// A `Command` for the service binary with an empty environment plus `env`.
pub fn service_command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cache-layer"));
    // A clean slate: nothing of the developer's environment leaks in.
    cmd.env_clear();
    cmd.env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Service {
    /// Starts the service with `env` (plus a free `LISTEN_ADDR`) and waits for `/livez`.
    pub async fn start(env: &[(&str, &str)]) -> Service {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = service_command(env);
        // IT_SERVICE_LOGS=1 shows the services' logs (info) when debugging a test.
        let logs = std::env::var_os("IT_SERVICE_LOGS").is_some();
        if logs {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("LISTEN_ADDR", &listen)
            .stdout(if logs { Stdio::inherit() } else { Stdio::null() })
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("spawn cache-layer");
        let s = Service {
            child,
            base: format!("http://{listen}"),
            port,
        };
        s.wait_status("/livez", 200).await;
        s
    }

    /// Polls `GET path` until it answers `status`.
    pub async fn wait_status(&self, path: &str, status: u16) {
        let (c, url) = (client(), self.url(path));
        eventually(&format!("{path} to answer {status}"), || async {
            c.get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == status)
                .map(|_| ())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn item_url(&self, key: &str) -> String {
        self.url(&format!("/items/{key}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `/metrics` exposition.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample of `/metrics`, e.g. `cache_hits_total{tier="memory"`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        metric_value(&text, series).unwrap_or_else(|| panic!("no series {series} in /metrics"))
    }

    /// `GET path` as JSON.
    pub async fn json(&self, path: &str) -> Value {
        get_json(&self.url(path)).await
    }

    /// `GET /items/{key}`: status, `Cache-Status` (empty when absent) and the JSON body
    /// (`Null` when the body is not JSON).
    pub async fn get(&self, key: &str) -> (u16, String, Value) {
        let r = client().get(self.item_url(key)).send().await.unwrap();
        let (code, status) = (r.status().as_u16(), cache_status(&r));
        (code, status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST /items:batch` with `{"keys": keys}`: the status and the JSON body (`Null` when
    /// the body is not JSON).
    pub async fn batch<K: serde::Serialize>(&self, keys: &[K]) -> (u16, Value) {
        batch_at(&self.url("/items:batch"), keys).await
    }

    /// Polls `key` until an answer is fetched from the origin again (its entry lapsed).
    pub async fn wait_refetched(&self, key: &str) {
        eventually("the entry to lapse and be fetched again", || async {
            (self.get(key).await.1 == "cache-layer; fwd=miss; stored").then_some(())
        })
        .await;
    }

    /// Waits for the process to exit (after a signal the test sent).
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = &mut self.child;
        eventually("the process to exit", || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits until `/health` reports Redis up.
    pub async fn wait_redis_up(&self) {
        let c = client();
        let url = self.url("/health");
        eventually("redis to be up in /health", || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let v: Value = c.get(&url).send().await.ok()?.json().await.ok()?;
                (v["tiers"]["redis"] == "ok").then_some(())
            }
        })
        .await;
    }
}

/// `POST url` with `{"keys": keys}` (a batch, from a task that owns no `Service`): the status
/// and the JSON body (`Null` when the body is not JSON).
pub async fn batch_at<K: serde::Serialize>(url: &str, keys: &[K]) -> (u16, Value) {
    let r = client()
        .post(url)
        .json(&serde_json::json!({ "keys": keys }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The `Cache-Status` header, empty when absent.
pub fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Sums every sample whose line starts with `series` (labels are matched as a prefix, so
/// `cache_hits_total{tier="memory"` ignores the `otel_scope_name` label that follows).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(series) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with(',') || rest.starts_with('{') || series.ends_with('}'))
        {
            continue;
        }
        let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

impl Drop for Service {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The origin stub binary, running.
pub struct Origin {
    child: Child,
    pub base: String,
}

impl Origin {
    /// Starts the stub with `STUB_*` settings and waits until it answers.
    pub async fn start(env: &[(&str, &str)]) -> Origin {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_origin-stub"));
        // Only the `STUB_*` settings given here, none from the developer's environment.
        cmd.env_clear();
        cmd.env("STUB_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = Origin {
            child: cmd.spawn().expect("spawn origin-stub"),
            base: format!("http://127.0.0.1:{port}"),
        };
        let url = format!("{}/_stub/stats", o.base);
        let c = client();
        eventually("the origin stub to answer", || {
            let (c, url) = (c.clone(), url.clone());
            async move { c.get(&url).send().await.ok().map(|_| ()) }
        })
        .await;
        o
    }

    /// Starts the service with this stub as its origin, plus `env`.
    pub async fn service(&self, env: &[(&str, &str)]) -> Service {
        let template = self.template();
        let mut all = vec![("ORIGIN_URL", template.as_str())];
        all.extend_from_slice(env);
        Service::start(&all).await
    }

    /// `ORIGIN_URL` for the service.
    pub fn template(&self) -> String {
        format!("{}/items/{{key}}", self.base)
    }

    pub async fn stats(&self) -> Value {
        get_json(&format!("{}/_stub/stats", self.base)).await
    }

    /// Data requests the stub has answered.
    pub async fn served(&self) -> u64 {
        self.stats().await["served"].as_u64().unwrap()
    }

    /// Waits until the stub has received `n` data requests (orders a test without sleeps).
    pub async fn wait_served(&self, n: u64) {
        eventually(&format!("the origin to receive {n} request(s)"), || async {
            (self.served().await >= n).then_some(())
        })
        .await;
    }

    /// Sets the extra headers of every answer from now on (`Cache-Control`, `ETag`, ...).
    pub async fn headers(&self, headers: &[(&str, &str)]) {
        let url = format!("{}/_stub/headers", self.base);
        let r = client().post(url).json(&headers).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// Changes how the stub answers (`mode`: ok, status:500, hang, big).
    pub async fn set(&self, mode: &str, latency_ms: u64) {
        let url = format!("{}/_stub/config?mode={mode}&latency_ms={latency_ms}", self.base);
        assert!(client().post(url).send().await.unwrap().status().is_success());
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A real `redis-server` on a free loopback port, never 6379, with nothing saved to disk.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    /// Serves TLS only (a self-signed certificate made with `openssl`).
    tls: bool,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_with(&[]).await
    }

    /// Starts `redis-server` with extra arguments (e.g. `--requirepass`, `--cluster-enabled`).
    pub async fn start_with(extra: &[&str]) -> Redis {
        let port = restartable_port();
        let mut r = Redis {
            child: None,
            port,
            args: extra.iter().map(|s| s.to_string()).collect(),
            tls: false,
            _dir: tempfile::tempdir().unwrap(),
        };
        r.spawn().await;
        r
    }

    /// A server that speaks TLS only, with a certificate for 127.0.0.1 signed by a fresh test CA
    /// (`ca_file`).
    pub async fn start_tls() -> Redis {
        let mut r = Self::start_with(&[]).await;
        r.stop();
        let dir = r._dir.path().to_owned();
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let openssl = |args: &[&str]| {
            let ok = tool_command("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl must be installed");
            assert!(ok.success(), "openssl {args:?}");
        };
        let ca = [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=cache-layer test CA",
        ];
        openssl(&[&ca[..], &["-keyout", "ca.key", "-out", "ca.pem"]].concat());
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ]);
        r.tls = true;
        r.spawn().await;
        r
    }

    /// The test CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> String {
        self._dir.path().join("ca.pem").to_str().unwrap().to_owned()
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let dir = self._dir.path().to_str().unwrap().to_owned();
        let (plain, tls) = if self.tls {
            let tls = vec![
                "--tls-port".to_owned(),
                port.clone(),
                "--tls-cert-file".to_owned(),
                format!("{dir}/cert.pem"),
                "--tls-key-file".to_owned(),
                format!("{dir}/key.pem"),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ];
            ("0".to_owned(), tls)
        } else {
            (port, Vec::new())
        };
        let child = tool_command("redis-server")
            .args([
                "--port",
                &plain,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", &dir])
            .args(&tls)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server to accept connections", || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .await;
    }

    pub fn url(&self) -> String {
        if self.tls {
            // The certificate is self-signed: skip verification (test only).
            format!("rediss://127.0.0.1:{}/#insecure", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// Kills the server (all data gone, as with a crash of a non-persistent Redis).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Freezes the process: it accepts connections (the kernel does) but never answers.
    pub fn pause(&self) {
        signal(self.child.as_ref().unwrap().id(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.child.as_ref().unwrap().id(), "CONT");
    }

    /// Runs `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let tls: &[&str] = if self.tls { &["--tls", "--insecure"] } else { &[] };
        // Bounded: a paused server would hold redis-cli forever.
        let out = tool_command("timeout")
            .args(["5", "redis-cli"])
            .args(tls)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Polls `cli(args)` until it prints `want`: writes after an answer are made in the
    /// background (the answer waits only for the tier in front), so a test that looks in Redis
    /// right after a response polls.
    pub async fn eventually_cli(&self, args: &[&str], want: &str) {
        eventually(&format!("redis-cli {args:?} to print {want}"), || async move {
            (self.cli(args) == want).then_some(())
        })
        .await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            signal(c.id(), "CONT");
        }
        self.stop();
    }
}

/// The Redis key the service stores item `key` under with the default `REDIS_KEY_PREFIX`:
/// `{prefix}:v1:k:{key}`, as `entry_key` in src/cache/redis.rs builds it.
pub fn entry_key(key: &str) -> String {
    format!("cache-layer:v1:k:{key}")
}

/// Starts `N` services on the Redis at `redis_url` (`REDIS_URL`), each with `env` too (e.g.
/// `ORIGIN_URL`, `REDIS_CLUSTER`), then waits until every one reports Redis up.
pub async fn services_on<const N: usize>(redis_url: &str, env: &[(&str, &str)]) -> [Service; N] {
    let mut all = vec![("REDIS_URL", redis_url)];
    all.extend_from_slice(env);
    let mut services = Vec::with_capacity(N);
    for _ in 0..N {
        services.push(Service::start(&all).await);
    }
    for s in &services {
        s.wait_redis_up().await;
    }
    let Ok(services) = services.try_into() else {
        unreachable!("N services were started")
    };
    services
}

/// A fresh `redis-server` and `N` services on it with `env` (the origin is the service's own
/// simulated one unless `env` names one), each reporting Redis up.
pub async fn with_redis<const N: usize>(env: &[(&str, &str)]) -> (Redis, [Service; N]) {
    let redis = Redis::start().await;
    let services = services_on(&redis.url(), env).await;
    (redis, services)
}

/// A fresh `redis-server`, an origin stub with the `STUB_*` settings `stub_env`, and `N`
/// services on both with `env`, each reporting Redis up.
pub async fn with_redis_and_origin<const N: usize>(
    stub_env: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (Redis, Origin, [Service; N]) {
    let redis = Redis::start().await;
    let origin = Origin::start(stub_env).await;
    let template = origin.template();
    let mut all = vec![("ORIGIN_URL", template.as_str())];
    all.extend_from_slice(env);
    let services = services_on(&redis.url(), &all).await;
    (redis, origin, services)
}

/// Sends `GET <target>` exactly as written (no client-side URL normalisation, which would turn
/// `/items/%2E%2E` into `/`), returning the status and body.
pub async fn raw_get(port: u16, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A real Redis Cluster: three `redis-server --cluster-enabled yes` joined by
/// `redis-cli --cluster create`, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        Self::start_with(3, 0, "2000").await
    }

    /// Three masters, each with a replica, and a short `cluster-node-timeout` (1 s), so a
    /// failed master's replica is promoted within a few seconds.
    pub async fn start_with_replicas() -> RedisCluster {
        Self::start_with(6, 1, "1000").await
    }

    async fn start_with(count: usize, replicas: usize, node_timeout: &str) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..count {
            nodes.push(
                Redis::start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", node_timeout])
                    .await,
            );
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = tool_command("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        // A replica that never synced with its master cannot take over from it.
        let expected = count - count / (replicas + 1);
        eventually("every replica to be in sync with its master", || async {
            let synced = cluster
                .nodes
                .iter()
                .map(|n| n.cli(&["INFO", "replication"]))
                .filter(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
                .count();
            (synced == expected).then_some(())
        })
        .await;
        let first = &cluster.nodes[0];
        eventually("the cluster to be ok", || async {
            cluster
                .nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                .then_some(())
        })
        .await;
        let _ = first;
        cluster
    }

    /// The masters now, as (index into `nodes`, slot ranges), from a node that answers.
    pub fn masters(&self) -> Vec<(usize, Vec<(u16, u16)>)> {
        let text = self
            .nodes
            .iter()
            .map(|n| n.cli(&["CLUSTER", "NODES"]))
            .find(|t| !t.is_empty())
            .unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            let Some(index) = self.nodes.iter().position(|n| n.port == port) else {
                continue;
            };
            let ranges = fields[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (r.parse().unwrap(), r.parse().unwrap()),
                })
                .collect();
            out.push((index, ranges));
        }
        out
    }

    /// The node index serving `redis_key` now.
    pub fn owner_of(&self, redis_key: &str) -> usize {
        owner_in(&self.masters(), redis_key)
    }

    /// `REDIS_URL` for the service: every node, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(Redis::url).collect::<Vec<_>>().join(",")
    }

    /// Runs `redis-cli -c` (follows redirects) against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = tool_command("timeout")
            .args(["5", "redis-cli"])
            .args(["-c", "-p", &self.nodes[0].port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Polls `cli(args)` until it prints `want`: writes after an answer are made in the
    /// background (the answer waits only for the tier in front), so a test that looks in Redis
    /// right after a response polls.
    pub async fn eventually_cli(&self, args: &[&str], want: &str) {
        eventually(&format!("redis-cli {args:?} to print {want}"), || async move {
            (self.cli(args) == want).then_some(())
        })
        .await
    }
}

/// The node index serving `redis_key` among `masters` (from [`RedisCluster::masters`]).
pub fn owner_in(masters: &[(usize, Vec<(u16, u16)>)], redis_key: &str) -> usize {
    let slot = cache_layer::cache::key_slot(redis_key.as_bytes());
    masters
        .iter()
        .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map(|(i, _)| *i)
        .expect("every slot has a master")
}
