#!/usr/bin/env python3
"""Live packaging test: the settings the packaging declares, fed to the real binary.

(a) For the Helm chart (defaults and every ci/ scenario) and for docker-compose.yml: take the
    environment the rendered Deployment / the compose service gives the container (image ENV,
    envFrom ConfigMaps, Secrets base64-decoded, $(VAR) expansion), rewrite only host:port
    (Redis to a redis-server started here on a free loopback port, with --requirepass when a
    password is declared; LISTEN_ADDR to 127.0.0.1:<free>; OTLP endpoints to a closed loopback
    port; ORIGIN_URL to an HTTP origin served here on loopback, which checks the
    ORIGIN_AUTHORIZATION it receives; DISK_CACHE_DIR, a volume in the cluster or compose, to a
    fresh temporary directory),
    start the binary with exactly that environment, wait for the declared liveness and
    readiness probe paths, check /health (tiers.disk "ok" when DISK_CACHE_DIR is set,
    "disabled" otherwise), request /items/foo twice (the second must say "source":"cache"),
    check the service wrote to Redis, then SIGTERM it and expect exit 0.
(b) Dashboard: the binary with the compose environment, a real Prometheus scraping it with
    deploy/prometheus.yml (target rewritten), a short bounded load, then every PromQL expression
    of grafana/dashboards/*.json must be accepted and return data.

Run (the binary path from CACHE_LAYER_BIN, or --bin):
    CACHE_LAYER_BIN=target/debug/cache-layer .tools/venv/bin/pytest -v scripts/test_packaging_live.py
    .tools/venv/bin/python scripts/test_packaging_live.py --bin target/debug/cache-layer
Without a binary only the tests that need none run (env extraction; Prometheus mechanics
against a fake exporter). Needs redis-server, redis-cli, prometheus (Debian) and helm
(.tools/helm/helm, $HELM or PATH). Every process started here is killed in all cases; all
traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import packaging_contract as pc  # noqa: E402

BIN = os.environ.get("CACHE_LAYER_BIN")
if BIN:
    BIN = str(Path(BIN).resolve())
HELM = pc.find_helm()
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
START_DEADLINE_S = 30.0
CHART_SCENARIOS = ["defaults", *pc.CI_SCENARIOS]
# Scenarios checked statically only (packaging_contract.py, kubernetes-validate) and by the
# env-extraction test, never started: external-redis-tls names a rediss:// host that does not
# resolve here and REDIS_TLS_CA_FILE=/etc/cache-layer/redis-ca/ca.crt, a file mounted from a
# Secret in the cluster that does not exist on this machine, and the binary refuses to start
# unless that file is a readable PEM (this test starts a plain-text redis-server, no TLS).
NOT_STARTED = {
    "external-redis-tls": "rediss:// with a private CA (REDIS_TLS_CA_FILE from a mounted Secret): "
                          "no TLS Redis or CA file here; covered by the static checks",
}

needs_bin = pytest.mark.skipif(not BIN, reason="set CACHE_LAYER_BIN to the cache-layer binary")
needs_helm = pytest.mark.skipif(HELM is None, reason="helm not found (run scripts/check-packaging.sh)")
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")


# --------------------------------------------------------------------------- processes


class Processes:
    """Every process a test starts; stop_all() kills each one by its own process group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.cleanups: list = []

    def start(self, cmd: list[str], env: dict[str, str] | None, log: Path) -> subprocess.Popen:
        out = open(log, "wb")
        try:
            p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            out.close()
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)


@pytest.fixture
def procs():
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="cache-layer-packaging-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    """A loopback port nobody listens on right now (never Redis's 6379)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:
            return port


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --------------------------------------------------------------------------- HTTP


def http(method: str, url: str, headers: dict[str, str] | None = None,
         timeout: float = 10.0, body: bytes | None = None) -> tuple[int, str]:
    host = urllib.parse.urlsplit(url).hostname
    assert host in LOOPBACK, f"refusing to send traffic to {host}"
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_200(url: str, deadline: float, proc: subprocess.Popen | None = None) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} answered 200")
        try:
            status, body = http("GET", url, timeout=2)
            if status == 200:
                return
            last = f"{status} {body[:200]}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 in time (last: {last})")


# --------------------------------------------------------------------------- Redis


def start_redis(procs: Processes, workdir: Path, password: str | None) -> int:
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(workdir)]
    if password:
        cmd += ["--requirepass", password]
    p = procs.start(cmd, None, workdir / f"redis-{port}.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_cli(port, password, "PING").strip() == "PONG":
            return port
        if p.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"redis-server did not start: {log_tail(workdir / f'redis-{port}.log')}")


def redis_cli(port: int, password: str | None, *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if password:
        env["REDISCLI_AUTH"] = password
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                       capture_output=True, text=True, env=env, timeout=5)
    return r.stdout


def redis_key_count(port: int, password: str | None) -> int:
    info = redis_cli(port, password, "INFO", "keyspace")
    return sum(int(m) for m in re.findall(r"keys=(\d+)", info))


# --------------------------------------------------------------------------- env rewriting


OTEL_ENDPOINT_RE = re.compile(r"^OTEL_EXPORTER_OTLP(_[A-Z]+)?_ENDPOINT$")


def localize_env(env: dict[str, str], listen_port: int, redis_port: int | None,
                 closed_port: int, disk_dir: str | None = None,
                 origin_port: int | None = None) -> tuple[dict[str, str], str | None]:
    """Rewrite only host:port to this machine's test ports (an ORIGIN_URL to a loopback origin on
    origin_port, over http), and DISK_CACHE_DIR (a volume mounted in the cluster or by compose,
    absent here) to disk_dir. Returns (env, redis password)."""
    env = dict(env)
    env["LISTEN_ADDR"] = f"127.0.0.1:{listen_port}"
    if env.get("DISK_CACHE_DIR"):
        assert disk_dir, "DISK_CACHE_DIR is set: give a fresh directory to put in its place"
        env["DISK_CACHE_DIR"] = disk_dir
    password = None
    if env.get("REDIS_CLUSTER", "false").lower() == "true":
        pytest.skip("REDIS_CLUSTER=true: a Redis Cluster is not started by this test")
    if env.get("REDIS_URL"):
        u = urllib.parse.urlsplit(env["REDIS_URL"])
        if u.scheme != "redis":
            pytest.skip(f"REDIS_URL scheme {u.scheme}:// (TLS) is not started by this test")
        if u.username not in (None, "", "default"):
            pytest.skip("REDIS_URL names an ACL user; this test starts Redis with requirepass only")
        password = urllib.parse.unquote(u.password) if u.password else (env.get("REDIS_PASSWORD") or None)
        userinfo = u.netloc.rsplit("@", 1)[0] + "@" if "@" in u.netloc else ""
        env["REDIS_URL"] = urllib.parse.urlunsplit(
            (u.scheme, f"{userinfo}127.0.0.1:{redis_port}", u.path, u.query, u.fragment))
    elif env.get("REDIS_HOST"):
        env["REDIS_HOST"] = "127.0.0.1"
        env["REDIS_PORT"] = str(redis_port)
        password = env.get("REDIS_PASSWORD") or None
    for key in list(env):
        if OTEL_ENDPOINT_RE.match(key) and env[key]:
            env[key] = f"http://127.0.0.1:{closed_port}"
    if env.get("ORIGIN_URL"):
        if origin_port is None:
            pytest.skip("ORIGIN_URL is set and no loopback origin was given")
        u = urllib.parse.urlsplit(env["ORIGIN_URL"].replace("{key}", "KEY"))
        env["ORIGIN_URL"] = urllib.parse.urlunsplit(
            ("http", f"127.0.0.1:{origin_port}", u.path, u.query, u.fragment)).replace("KEY", "{key}")
    # Nothing may point off this machine.
    for key, value in env.items():
        for m in re.finditer(r"[a-z][a-z0-9+.-]*://([^/\s,]+)", value):
            host = urllib.parse.urlsplit(m.group(0)).hostname
            assert host in LOOPBACK, f"{key}={value} still points at {host}"
    assert env.get("REDIS_HOST", "127.0.0.1") in LOOPBACK
    return env, password


def uses_redis(env: dict[str, str]) -> bool:
    return bool(env.get("REDIS_URL") or env.get("REDIS_HOST"))


# --------------------------------------------------------------------------- the service


def loopback_server(answer) -> ThreadingHTTPServer:
    """An HTTP server on a free loopback port whose GETs `answer(handler)` gives as
    (status, content type, body); quiet, not yet serving (`serve_forever` in a thread)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            status, content_type, body = answer(self)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


class LoopbackOrigin:
    """An HTTP origin on a free loopback port, standing in for the ORIGIN_URL a scenario names:
    JSON for every path, and the Authorization headers it received."""

    def __init__(self) -> None:
        seen = self.authorization = []

        def answer(request):
            seen.append(request.headers.get("Authorization"))
            return 200, "application/json", json.dumps({"path": request.path}).encode()

        self.server = loopback_server(answer)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Service:
    """The binary started with a declared environment (host:port localized)."""

    def __init__(self, procs: Processes, workdir: Path, declared_env: dict[str, str], label: str):
        self.label = label
        self.closed_port = free_port()  # nothing listens there: OTLP exports fail fast
        self.listen_port = free_port()
        self.redis_port = None
        self.redis_password = None
        # The disk tier's volume: a fresh, empty directory of this test in its place.
        self.disk_dir = None
        if declared_env.get("DISK_CACHE_DIR"):
            self.disk_dir = tempfile.mkdtemp(prefix=f"{label}-disk-", dir=workdir)
        self.origin = None
        if declared_env.get("ORIGIN_URL"):
            self.origin = LoopbackOrigin()
            procs.cleanups.append(self.origin.stop)
        origin_port = self.origin.port if self.origin else None
        if uses_redis(declared_env):
            _, self.redis_password = localize_env(declared_env, self.listen_port, 1, self.closed_port,
                                                  self.disk_dir, origin_port)
            self.redis_port = start_redis(procs, workdir, self.redis_password)
        self.env, _ = localize_env(declared_env, self.listen_port, self.redis_port, self.closed_port,
                                   self.disk_dir, origin_port)
        self.log = workdir / f"{label}.log"
        self.proc = procs.start([BIN], self.env, self.log)
        self.base = f"http://127.0.0.1:{self.listen_port}"

    def fail(self, msg: str) -> None:
        raise AssertionError(f"[{self.label}] {msg}\n--- service log (tail) ---\n{log_tail(self.log)}")

    def wait_ready(self, paths: list[str]) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        for path in paths:
            try:
                wait_200(self.base + path, deadline, self.proc)
            except AssertionError as e:
                self.fail(str(e))

    def check_health(self) -> None:
        """/health answers, and its tiers.disk follows the env: "ok" with DISK_CACHE_DIR (the
        tier opened the directory), "disabled" without."""
        status, body = http("GET", f"{self.base}/health")
        if status != 200:
            self.fail(f"/health answered {status}: {body[:300]}")
        disk = json.loads(body).get("tiers", {}).get("disk")
        expected = "ok" if self.disk_dir else "disabled"
        if disk != expected:
            self.fail(f"/health tiers.disk is {disk!r}, expected {expected!r} "
                      f"(DISK_CACHE_DIR={self.env.get('DISK_CACHE_DIR')}): {body[:300]}")

    def check_cache_round_trip(self, key: str = "foo") -> None:
        first = http("GET", f"{self.base}/items/{key}")
        second = http("GET", f"{self.base}/items/{key}")
        if first[0] != 200 or second[0] != 200:
            self.fail(f"GET /items/{key}: {first[0]} then {second[0]}: {second[1][:300]}")
        # The helm test matches the compact JSON text; check the same.
        if '"source":"cache"' not in second[1]:
            self.fail(f'second answer does not say "source":"cache": {second[1][:300]}')
        if json.loads(second[1]).get("key") != key:
            self.fail(f"answer for another key: {second[1][:300]}")
        if self.origin is not None:
            # One fetch, with the Authorization header the chart's Secret gives the container.
            if self.origin.authorization != [self.env.get("ORIGIN_AUTHORIZATION")]:
                self.fail(f"the origin saw Authorization {self.origin.authorization}, "
                          f"expected [{self.env.get('ORIGIN_AUTHORIZATION')!r}]")

    def check_redis_written(self) -> None:
        if self.redis_port is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if redis_key_count(self.redis_port, self.redis_password) > 0:
                return
            time.sleep(0.2)
        self.fail("the service stored nothing in Redis: host, port or password not taken from the env")

    def run_healthcheck_subcommand(self) -> None:
        r = subprocess.run([BIN, "healthcheck"], env=self.env, capture_output=True, text=True, timeout=15)
        if r.returncode != 0:
            self.fail(f"`cache-layer healthcheck` exited {r.returncode}: {r.stdout}{r.stderr}")

    def stop_and_check_exit(self) -> None:
        delay = int(self.env.get("SHUTDOWN_DELAY_SECS") or 0)
        drain = int(self.env.get("SHUTDOWN_DRAIN_SECS") or 20)
        self.proc.send_signal(signal.SIGTERM)
        if delay >= 2:
            # During the delay the listener is still open and /readyz must already fail.
            time.sleep(min(1.0, delay / 2))
            try:
                status, _ = http("GET", self.base + "/readyz", timeout=2)
            except OSError as e:
                self.fail(f"/readyz unreachable during SHUTDOWN_DELAY_SECS={delay}: {e!r}")
            if status == 200:
                self.fail("/readyz still answers 200 after SIGTERM")
        try:
            rc = self.proc.wait(timeout=delay + drain + 15)
        except subprocess.TimeoutExpired:
            self.fail(f"still running {delay + drain + 15}s after SIGTERM")
        if rc != 0:
            self.fail(f"exit code {rc} after SIGTERM")


def probe_paths(docs: list[dict]) -> list[str]:
    c = pc.app_container(pc.app_workload(docs))
    paths = []
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c.get(probe, {}).get("httpGet")
        if get and get["path"] not in paths:
            paths.append(get["path"])
    assert "/livez" in paths and "/readyz" in paths, f"probe paths {paths}"
    return paths


# --------------------------------------------------------------------------- Prometheus


def start_prometheus(procs: Processes, workdir: Path, target: str) -> tuple[str, str]:
    """Prometheus with deploy/prometheus.yml, the cache-layer job's target rewritten to
    `target` (other jobs dropped: their services are not started here). Returns (url, job)."""
    cfg = yaml.safe_load((pc.ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == pc.SERVICE]
    assert len(jobs) == 1, "deploy/prometheus.yml has no cache-layer job"
    for sc in jobs[0]["static_configs"]:
        sc["targets"] = [target]
    cfg["scrape_configs"] = jobs
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    log = workdir / "prometheus.log"
    p = procs.start(["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                     f"--storage.tsdb.path={workdir / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{port}"], None, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_200(url + "/-/ready", time.monotonic() + 30, p)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{log_tail(log)}") from None
    return url, jobs[0]["job_name"]


def prom_query(url: str, expr: str) -> dict:
    status, body = http("GET", url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    data = json.loads(body)
    if status != 200 or data.get("status") != "success":
        raise AssertionError(f"{expr}: HTTP {status} {data.get('errorType')}: {data.get('error')}")
    return data["data"]


def wait_scrapes(url: str, job: str, after: float, minimum: int = 2, timeout: float = 60) -> None:
    """Until Prometheus holds `minimum` successful scrapes of the job, one taken after `after`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        res = prom_query(url, f'count_over_time(up{{job="{job}"}}[10m])')["result"]
        up = prom_query(url, f'timestamp(up{{job="{job}"}} == 1)')["result"]
        last = (res, up)
        if res and float(res[0]["value"][1]) >= minimum and up and float(up[0]["value"][1]) > after:
            return
        time.sleep(1)
    raise AssertionError(f"Prometheus did not scrape {job} {minimum} times in time: {last}")


def dashboard_failures(url: str, job: str) -> list[str]:
    exprs = []
    for path in sorted((pc.ROOT / "grafana" / "dashboards").glob("*.json")):
        exprs += [(f"{path.name}: {title}", e) for title, e in pc.dashboard_exprs(path)]
    exprs += [("seed", q) for q in pc.SEED_QUERIES]
    failures = []
    for where, raw in exprs:
        expr = pc.substitute_macros(raw, {"job": job})
        try:
            data = prom_query(url, expr)
        except AssertionError as e:
            failures.append(f"{where}: {e}")
            continue
        if not data["result"]:
            failures.append(f"{where}: no data for {expr}")
        else:
            print(f"ok  {where}: {expr} -> {data['result'][0]['value'][1]}")
    return failures


# --------------------------------------------------------------------------- load


def bounded_load(base: str, admin_token: str | None, duration_s: float = 15.0, budget: int = 300) -> int:
    """A few hundred requests over ~duration_s: repeated and new keys, concurrent bursts on
    fresh keys (coalescing), a purge, and a bad key. Bounded in count and time."""
    sent = 0
    rng = random.Random(6)
    start = time.monotonic()

    def get(key: str) -> None:
        nonlocal sent
        sent += 1
        try:
            http("GET", f"{base}/items/{key}", timeout=10)
        except OSError:
            pass

    # The seed's load test: 35 x foo, then k0..k9 (k5..k9 twice).
    for i in range(50):
        get("foo" if i < 35 else f"k{i % 10}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        for burst in range(6):
            list(pool.map(get, [f"burst-{burst}"] * 8))
    if admin_token:
        http("DELETE", f"{base}/items/foo", headers={"Authorization": f"Bearer {admin_token}"})
    http("GET", f"{base}/items/" + "x" * 600)  # over MAX_KEY_BYTES: a 400
    # Batch reads, for the batch panels.
    for _ in range(3):
        sent += 1
        http("POST", f"{base}/items:batch", headers={"Content-Type": "application/json"},
             body=b'{"keys":["foo","k1","k2","batch-new"]}')
    keys = [f"mix-{i}" for i in range(40)]
    while sent < budget and time.monotonic() - start < duration_s:
        get(rng.choice(keys[:10]) if rng.random() < 0.7 else rng.choice(keys))
        time.sleep(max(0.0, (duration_s - (time.monotonic() - start)) / max(1, budget - sent)))
    return sent


# --------------------------------------------------------------------------- tests: no binary


@needs_helm
@pytest.mark.parametrize("scenario", CHART_SCENARIOS)
def test_chart_env_resolves_and_localizes(scenario):
    """Env extraction works without the binary: every reference resolves, and after the
    rewrite nothing points off the machine."""
    docs = pc.render_chart(HELM, scenario)
    env = pc.deployment_env(docs)
    assert env["LISTEN_ADDR"].endswith(":5000")
    assert "POD_NAME" not in env["OTEL_RESOURCE_ATTRIBUTES"] and "$(" not in env["OTEL_RESOURCE_ATTRIBUTES"]
    if scenario == "external-redis":
        assert env["REDIS_URL"].startswith("redis://:external-redis-password@")
        assert env["ADMIN_TOKEN"] == "ci-admin-token"
    elif scenario == "external-redis-tls":
        assert env["REDIS_URL"] == "rediss://redis.example.internal:6380"
        assert env["REDIS_PASSWORD"] == "ci-external-redis-password"
        assert env["REDIS_TLS_CA_FILE"] == "/etc/cache-layer/redis-ca/ca.crt"
        assert "REDIS_HOST" not in env
    else:
        assert env["REDIS_HOST"] == "t-redis" and env["REDIS_PORT"] == "6379" and env["REDIS_PASSWORD"]
    if scenario == "all-features":
        assert env["REDIS_PASSWORD"] == "ci-redis-password"
        assert env["ORIGIN_URL"] == "http://api.example.internal/items/{key}"
        assert env["ORIGIN_AUTHORIZATION"] == "Bearer ci-origin-token"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector.")
    if scenario in pc.DISK_SCENARIOS:
        assert env["DISK_CACHE_DIR"] == "/var/cache/cache-layer"
        assert int(env["DISK_CACHE_MAX_BYTES"]) >= 4 << 20 and int(env["DISK_CACHE_INDEX_MAX_BYTES"]) >= 1 << 20
    else:
        assert not pc.DISK_ENV & set(env), f"{scenario} turns the disk tier on"
    if scenario in NOT_STARTED:
        pytest.skip(f"env checked, not localized: {NOT_STARTED[scenario]}")
    local, password = localize_env(env, 5001, 5002, 5003, "/tmp/packaging-disk", 5004)
    assert password
    assert local["LISTEN_ADDR"] == "127.0.0.1:5001"
    if env.get("ORIGIN_URL"):
        assert local["ORIGIN_URL"] == "http://127.0.0.1:5004/items/{key}"
    assert "127.0.0.1:5002" in local.get("REDIS_URL", "") or local.get("REDIS_PORT") == "5002"
    if scenario in pc.DISK_SCENARIOS:
        assert local["DISK_CACHE_DIR"] == "/tmp/packaging-disk"


def test_compose_env_resolves_and_localizes():
    env = pc.compose_env()
    # No token is shipped: purging is off until the user exports ADMIN_TOKEN.
    assert env["REDIS_URL"] == "redis://redis:6379" and env["ADMIN_TOKEN"] == ""
    assert env["DISK_CACHE_DIR"] == "/var/cache/cache-layer" and env["DISK_CACHE_MAX_BYTES"] == "268435456"
    local, password = localize_env(env, 5001, 5002, 5003, "/tmp/packaging-disk")
    assert password is None
    assert local["REDIS_URL"] == "redis://127.0.0.1:5002"
    assert local["DISK_CACHE_DIR"] == "/tmp/packaging-disk"
    assert local["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:5003"


class FakeExporter:
    """A stand-in /metrics with every series of the service's contract, counters moving on
    each scrape: proves the Prometheus side of the dashboard test without the binary."""

    def __init__(self) -> None:
        self.n = 0

        def answer(request):
            status = 200 if request.path == "/metrics" else 404
            return status, "text/plain; version=0.0.4", self.render().encode()

        self.server = loopback_server(answer)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def render(self) -> str:
        self.n += 1
        n = self.n
        scope = 'otel_scope_name="cache-layer"'
        lines = [f'target_info{{service_name="cache-layer"}} 1']

        def counter(name, labels_list):
            lines.append(f"# TYPE {name} counter")
            for i, labels in enumerate(labels_list):
                lab = ",".join([scope] + [f'{k}="{v}"' for k, v in labels.items()])
                lines.append(f"{name}{{{lab}}} {n * (i + 1)}")

        def gauge(name, value):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name}{{{scope}}} {value}")

        def histogram(name):
            lines.append(f"# TYPE {name} histogram")
            bounds = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
            for i, le in enumerate(bounds):
                lines.append(f'{name}_bucket{{{scope},le="{le}"}} {n * (i + 1)}')
            lines.append(f'{name}_bucket{{{scope},le="+Inf"}} {n * (len(bounds) + 1)}')
            lines.append(f"{name}_sum{{{scope}}} {n * 0.5}")
            lines.append(f"{name}_count{{{scope}}} {n * (len(bounds) + 1)}")

        counter("cache_hits_total", [{"tier": t} for t in ("memory", "disk", "redis", "negative")])
        counter("cache_misses_total", [{}])
        histogram("request_latency_seconds")
        histogram("batch_request_duration_seconds")
        histogram("batch_keys")
        counter("cache_stale_total", [{"reason": r} for r in ("stale-while-revalidate", "stale-if-error")])
        counter("cache_coalesced_total", [{"scope": s} for s in ("process", "fleet")])
        counter("origin_requests_total", [{"outcome": o} for o in ("ok", "not_found", "not_modified", "error", "timeout", "rejected")])
        histogram("origin_request_duration_seconds")
        gauge("origin_breaker_state", 0)
        counter("redis_errors_total", [{"operation": o} for o in ("get", "set", "del", "publish", "subscribe", "lock", "ping")])
        lines.append("# TYPE redis_node_up gauge")
        lines.append(f'redis_node_up{{{scope},node="redis:6379"}} 1')
        gauge("memory_cache_entries", 10 + n)
        gauge("memory_cache_bytes", 1000 + n)
        gauge("memory_cache_window_ratio", 0.25)
        gauge("memory_cache_window_epoch_progress", 0.5)
        counter("cache_evictions_total", [{"cause": c} for c in ("size", "expired")])
        counter("proxy_requests_total", [{"route": "/api", "cache": c, "status_class": "2xx"} for c in ("hit", "miss")])
        counter("cache_invalidations_total", [{"mode": m, "source": s, "scope": c} for m in ("hard", "soft")
                                              for s in ("local", "remote") for c in ("key", "tag")])
        counter("cache_invalidated_entries_total", [{"scope": c, "tier": t} for c in ("key", "tag")
                                                    for t in ("memory", "disk", "redis")])
        counter("disk_errors_total", [{"operation": o} for o in ("open", "read", "write", "probe")])
        counter("disk_cache_dropped_total", [{"reason": r} for r in ("expired", "purged")])
        counter("disk_cache_rejected_total", [{}])
        gauge("disk_cache_up", 1)
        gauge("disk_cache_capacity_bytes", 268435456)
        counter("cache_tags_ignored_total", [{}])
        counter("cache_uncacheable_total", [{"reason": r} for r in ("no-store", "private", "vary-star", "status")])
        counter("cache_not_stored_total", [{"reason": r} for r in ("declined", "purged")])
        counter("cache_compressions_total", [{"coding": c} for c in ("br", "gzip")])
        counter("otel_spans_dropped_total", [{}])
        routes = ["/items/{key}", "/tags/{tag}", "/items:batch", "/health", "/livez", "/readyz", "/metrics",
                  "unmatched"]
        counter("http_requests_total", [{"route": r, "status_class": c} for r in routes
                                        for c in ("2xx", "3xx", "4xx", "5xx")])
        return "\n".join(lines) + "\n"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@needs_prometheus
def test_dashboard_mechanics_with_fake_exporter(procs, workdir):
    with FakeExporter() as fake:
        url, job = start_prometheus(procs, workdir, f"127.0.0.1:{fake.port}")
        wait_scrapes(url, job, after=time.time(), minimum=3)
        failures = dashboard_failures(url, job)
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- tests: the binary


@needs_bin
@needs_helm
@needs_redis
@pytest.mark.parametrize("scenario", CHART_SCENARIOS)
def test_chart_env_starts_service(procs, workdir, scenario):
    if scenario in NOT_STARTED:
        pytest.skip(NOT_STARTED[scenario])
    docs = pc.render_chart(HELM, scenario)
    svc = Service(procs, workdir, pc.deployment_env(docs), f"chart-{scenario}")
    svc.wait_ready(probe_paths(docs))
    svc.check_health()
    svc.check_cache_round_trip()
    svc.check_redis_written()
    svc.stop_and_check_exit()


@needs_bin
@needs_redis
def test_compose_env_starts_service(procs, workdir):
    svc = Service(procs, workdir, pc.compose_env(), "compose")
    svc.wait_ready(["/livez", "/readyz"])
    svc.run_healthcheck_subcommand()  # the compose (and Dockerfile) health check
    svc.check_health()
    svc.check_cache_round_trip()
    svc.check_redis_written()
    svc.stop_and_check_exit()


@needs_bin
@needs_redis
@needs_prometheus
def test_dashboard_queries_return_data(procs, workdir):
    # compose ships no ADMIN_TOKEN (purging is off until the user exports one): export one here,
    # as the user would, so the purge panels get data.
    env = pc.compose_env()
    env["ADMIN_TOKEN"] = env.get("ADMIN_TOKEN") or "packaging-test-admin-token"
    # A proxied route to a loopback origin, so the proxy's panel gets data too.
    origin = loopback_server(lambda handler: (200, "application/json", b'{"proxied":true}'))
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    procs.cleanups.append(origin.shutdown)
    env["PROXY_ROUTES"] = f"/proxied=http://127.0.0.1:{origin.server_address[1]}"
    svc = Service(procs, workdir, env, "dashboard")
    svc.wait_ready(["/livez", "/readyz"])
    url, job = start_prometheus(procs, workdir, f"127.0.0.1:{svc.listen_port}")
    def proxied(n: int) -> int:
        for i in range(n):
            status, _ = http("GET", f"{svc.base}/proxied/p{i % 2}")
            assert status == 200, f"proxied request answered {status}"
        return n

    # Before and after the rest of the load, so the counter moves within the rate's window.
    sent = proxied(3)
    sent += bounded_load(svc.base, svc.env.get("ADMIN_TOKEN"))
    sent += proxied(3)
    print(f"load: {sent} requests")
    wait_scrapes(url, job, after=time.time(), minimum=2)
    failures = dashboard_failures(url, job)
    if failures:
        svc.fail("dashboard expressions without data:\n" + "\n".join(failures))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="live packaging test (wraps pytest)")
    ap.add_argument("--bin", help="the cache-layer binary, e.g. target/debug/cache-layer")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k dashboard")
    a = ap.parse_args()
    if a.bin:
        os.environ["CACHE_LAYER_BIN"] = str(Path(a.bin).resolve())
    sys.exit(pytest.main([__file__, "-v", *a.pytest_args]))
