#!/usr/bin/env python3
"""Runs the benchmarks of docs/benchmarks.md and writes their raw results as JSON.

Why this file exists: every figure in docs/benchmarks.md must come from one rerunnable command on
one machine, comparing the contenders in one run on the same load. `bench/run.sh` installs the
tools, builds the release binaries and calls this script, then `bench/report.py` renders the JSON.

Contenders, all on loopback, all in front of the same `origin-stub` binary (except the ceiling,
which has no origin, and the seed, which simulates its own):
  ceiling       bench-ceiling: a bare axum handler answering the same JSON, no cache
  memory        cache-layer, memory tier
  redis         cache-layer with MEMORY_CACHE_ENABLED=false: every hit is a Redis GET
  nginx         nginx proxy_cache (bench/peers/nginx.conf)
  varnish       Varnish, malloc storage, built-in VCL
  seed          the seed's FastAPI + redis-py design (bench/seed_app.py), hot key only
  memory+otlp   cache-layer, memory tier, every request traced and pushed over OTLP/HTTP

Sections (SECTIONS, default all four):
  hot        wrk on one cached key: -c32 (saturated) and -c1, ROUNDS interleaved rounds of
             DURATION seconds (each round starting with a different contender); medians
  latency    cache-layer-loadtest on one cached key at a fixed open-loop rate (RATE)
  zipf       cache-layer-loadtest, Zipf keys over a key space larger than the byte budget
             (ZIPF_KEYS, ZIPF_EXPONENT, BUDGET_BYTES); a separate warm-up run, then the measured
             run; origin fetches counted by the stub. bench-lru replays the same kind of stream
             through a strict LRU of the same byte budget.
  stampede   1,000 concurrent requests on a cold key with a 200 ms origin; origin fetches
             counted by the stub. Also three cache-layer replicas sharing one Redis.

Servers run on core 0 (taskset), the load generators and the stub on core 1. Traffic goes only
to 127.0.0.1, and every run is bounded in time.

Usage: python3 bench/run.py OUT.json   (env: ROUNDS, DURATION, SECTIONS, RATE, ...)
"""

import atexit
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.getenv("RELEASE_DIR", os.path.join(ROOT, "target", "release"))
VENV = os.path.join(ROOT, ".tools", "bench-venv")

ROUNDS = int(os.getenv("ROUNDS", "3"))
DURATION = int(os.getenv("DURATION", "5"))
SECTIONS = os.getenv("SECTIONS", "hot latency zipf stampede").split()
RATE = int(os.getenv("RATE", "10000"))
LATENCY_SECS = int(os.getenv("LATENCY_SECS", "10"))
ZIPF_KEYS = int(os.getenv("ZIPF_KEYS", "200000"))
ZIPF_EXPONENT = float(os.getenv("ZIPF_EXPONENT", "1.0"))
BUDGET_BYTES = int(os.getenv("BUDGET_BYTES", str(4 * 1024 * 1024)))
ZIPF_WARMUP_SECS = int(os.getenv("ZIPF_WARMUP_SECS", "10"))
ZIPF_SECS = int(os.getenv("ZIPF_SECS", "20"))
STAMPEDE = int(os.getenv("STAMPEDE", "1000"))
SERVER_CORE = "0"
CLIENT_CORE = "1"
LOAD_NICE = os.getenv("LOAD_NICE", "")

LABELS = {
    "ceiling": "bare axum (ceiling)",
    "memory": "cache-layer, memory tier",
    "redis": "cache-layer, Redis tier",
    "nginx": "nginx proxy_cache",
    "varnish": "Varnish",
    "seed": "seed design (FastAPI + redis-py)",
    "memory+otlp": "cache-layer, memory tier, every request traced (OTLP)",
    "replicas": "cache-layer, 3 replicas sharing Redis",
    "lru": "strict LRU, simulated, same byte budget",
}

PROCS = []
SINK = []


def entry_overhead_bytes() -> int:
    """The memory tier's per-entry weight beyond key and body (src/cache/entry.rs), so the
    report's wording follows the code."""
    with open(os.path.join(ROOT, "src", "cache", "entry.rs")) as f:
        src = f.read()
    return int(re.search(r"pub const ENTRY_OVERHEAD_BYTES: usize = (\d+);", src).group(1))


def rss_bytes(pid):
    """The resident set of process `pid`, from /proc (bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def metric(url, name):
    """The sum of the samples of `name` (a metric name, or a series prefix such as
    `redis_errors_total{operation="get"`) in the /metrics of `url`."""
    text = http("GET", url + "/metrics")[2].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + (" " if "{" not in name else "")) or line.startswith(name + "{"))


def otlp_sink():
    """A second stub that swallows OTLP pushes (started once, on first use)."""
    if not SINK:
        SINK.append(Stub())
    return SINK[0]


def log(msg):
    """Progress on stderr, so stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(env=None):
    """This script's environment and `env`, less the benchmarks' own variables that look like
    the service's settings (REDIS_CORE, REDIS_SCHED: the service would warn about them)."""
    full_env = dict(os.environ, **(env or {}))
    for name in ("REDIS_CORE", "REDIS_SCHED"):
        full_env.pop(name, None)
    return full_env


def spawn(cmd, env=None, core=SERVER_CORE, cwd=None):
    """Starts a process pinned to `core`, killed when the script ends."""
    full_env = child_env(env)
    p = subprocess.Popen(["taskset", "-c", core, *cmd], env=full_env, cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@atexit.register
def stop_all():
    for p in PROCS:
        stop(p)


def http(method, url, timeout=10, body=None, headers=None):
    """(status, headers, body) of one request."""
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def service(stub, extra):
    """A release cache-layer on a free port in front of `stub` (CACHE_TTL_SECS 600), with
    `extra` settings, answering: (process, base URL). For the scripts beside this one."""
    port = free_port()
    env = {"LISTEN_ADDR": f"127.0.0.1:{port}", "RUST_LOG": "warn", "CACHE_TTL_SECS": "600",
           "ORIGIN_URL": f"{stub.base}/items/{{key}}", **extra}
    proc = spawn([f"{RELEASE}/cache-layer"], env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/livez")
    return proc, url


def wait_http(url, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            http("GET", url, timeout=2)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no answer from {url} within {deadline} s")


class Stub:
    """The origin stub: every contender's origin, and the counter of origin fetches."""

    def __init__(self):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        spawn([f"{RELEASE}/origin-stub"], {"STUB_LISTEN_ADDR": f"127.0.0.1:{self.port}"},
              core=CLIENT_CORE)
        wait_http(self.base + "/_stub/stats")

    def served(self):
        return json.loads(http("GET", self.base + "/_stub/stats")[2])["served"]

    def reset(self):
        http("POST", self.base + "/_stub/reset")

    def latency(self, ms):
        http("POST", f"{self.base}/_stub/config?latency_ms={ms}")


class Redis:
    """A redis-server on a free port, nothing saved to disk."""

    def __init__(self, maxmemory_data=None):
        self.port = free_port()
        # REDIS_CORE: where Redis runs (the servers' core unless said; a production Redis has
        # a machine of its own, which a run can model by giving it the load tests' core).
        # REDIS_SCHED=idle: Redis under SCHED_IDLE, so that it takes only the CPU its core's
        # other processes leave and never delays them (as on a machine of its own, on this one).
        sched = ["chrt", "--idle", "0"] if os.getenv("REDIS_SCHED") == "idle" else []
        self.proc = spawn([*sched, "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no"],
                          core=os.getenv("REDIS_CORE", SERVER_CORE))
        self.url = f"redis://127.0.0.1:{self.port}"
        self._wait()
        if maxmemory_data:
            # The budget is for data: add what the empty server already uses.
            base = int(self.cli("info", "memory").split("used_memory:")[1].split()[0])
            self.cli("config", "set", "maxmemory", str(base + maxmemory_data))
            self.cli("config", "set", "maxmemory-policy", "allkeys-lru")

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, check=True).stdout

    def _wait(self):
        for _ in range(200):
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                              capture_output=True, text=True).stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def stop(self):
        stop(self.proc)


class Contender:
    """One server under test, started and checked."""

    def __init__(self, name, stub, budget=None, redis=None, extra_env=None):
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.procs = []
        self.redis = redis
        self.dir = None
        budget = budget or 64 * 1024 * 1024
        origin = f"{stub.base}/items/{{key}}"
        cache_env = {"LISTEN_ADDR": f"127.0.0.1:{self.port}", "TOKIO_WORKER_THREADS": "1",
                     "RUST_LOG": "warn", "ORIGIN_URL": origin, "CACHE_TTL_SECS": "600",
                     "MEMORY_CACHE_MAX_BYTES": str(budget), **(extra_env or {})}
        if name == "ceiling":
            self._spawn([f"{RELEASE}/bench-ceiling"], {"LISTEN_ADDR": f"127.0.0.1:{self.port}",
                                                       "TOKIO_WORKER_THREADS": "1"})
        elif name in ("memory", "memory+otlp"):
            if name == "memory+otlp":
                # Spans go to a second stub, so they are not counted as origin fetches.
                cache_env.update(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_sink().base,
                                 OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                                 OTEL_METRICS_EXPORTER="none")
            self._spawn([f"{RELEASE}/cache-layer"], cache_env)
        elif name in ("redis", "replica"):
            if name == "redis":
                cache_env["MEMORY_CACHE_ENABLED"] = "false"
            cache_env["REDIS_URL"] = redis.url
            self._spawn([f"{RELEASE}/cache-layer"], cache_env)
        elif name == "nginx":
            # On tmpfs when there is one, so the cache's files cost no disk I/O.
            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self.dir = tempfile.mkdtemp(prefix="bench-nginx-", dir=shm)
            for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "cache"):
                os.mkdir(os.path.join(self.dir, d))
            with open(os.path.join(ROOT, "bench/peers/nginx.conf")) as f:
                conf = (f.read().replace("@DIR@", self.dir).replace("@PORT@", str(self.port))
                        .replace("@UPSTREAM@", str(stub.port))
                        .replace("@MAX_SIZE@", f"{budget // 1024}k"))
            path = os.path.join(self.dir, "nginx.conf")
            with open(path, "w") as f:
                f.write(conf)
            self._spawn(["nginx", "-c", path, "-p", self.dir])
        elif name == "varnish":
            self.dir = tempfile.mkdtemp(prefix="bench-varnish-")
            self._spawn(["varnishd", "-F", "-j", "none", "-n", self.dir,
                         "-a", f"127.0.0.1:{self.port}", "-b", f"127.0.0.1:{stub.port}",
                         "-s", f"malloc,{budget // 1024}k", "-p", "default_ttl=600"])
        elif name == "seed":
            self._spawn([f"{VENV}/bin/uvicorn", "seed_app:app", "--host", "127.0.0.1",
                         "--port", str(self.port), "--log-level", "warning"],
                        {"REDIS_PORT": str(redis.port), "ORIGIN_LATENCY_MS": "200"},
                        cwd=os.path.join(ROOT, "bench"))
        else:
            raise SystemExit(f"unknown contender {name}")
        wait_http(self.base + "/items/_ready")

    def _spawn(self, cmd, env=None, cwd=None):
        self.procs.append(spawn(cmd, env, cwd=cwd))

    def item(self, key):
        return f"{self.base}/items/{key}"

    def warm(self, key):
        """Caches `key` and checks, from the server's own header, that the next GET is a hit."""
        http("GET", self.item(key))
        time.sleep(0.05)
        _, headers, body = http("GET", self.item(key))
        headers = {k.lower(): v for k, v in headers.items()}
        hit = {
            "nginx": lambda: headers.get("cache-status") == "HIT",
            "varnish": lambda: len(headers.get("x-varnish", "").split()) == 2,
            "ceiling": lambda: True,
            "seed": lambda: json.loads(body).get("source") == "cache",
        }.get(self.name, lambda: headers.get("cache-status", "").startswith("cache-layer; hit"))
        if not hit():
            raise SystemExit(f"{self.name}: {key} is not a cache hit after warming: {headers}")

    def metric(self, name):
        text = http("GET", self.base + "/metrics")[2].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + " ") or line.startswith(name + "{"))

    def stop(self):
        for p in self.procs:
            stop(p)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def wrk(url, connections):
    """{'rps', 'p50_ms', 'p99_ms'} of one wrk run."""
    out = subprocess.run(["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}",
                          f"-d{DURATION}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout

    def ms(v):
        for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
            if v.endswith(unit):
                return float(v[: -len(unit)]) * f
        raise ValueError(v)

    result = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            result["p50_ms"] = ms(parts[1])
        elif parts[:1] == ["99%"]:
            result["p99_ms"] = ms(parts[1])
    return result


def write_section(name, text):
    """Puts `text` (a Markdown section between `<!-- name:begin -->` and `<!-- name:end -->`)
    into docs/benchmarks.md in place of its last version, and into bench/sections/<name>.md,
    which report.py appends when it regenerates the page. For the benchmark scripts other than
    this one (bench/hardening.py, bench/cluster_soak.py)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = os.path.join(ROOT, "bench", "sections", f"{name}.md")
    os.makedirs(os.path.dirname(section), exist_ok=True)
    with open(section, "w") as f:
        f.write(text)
    page = os.path.join(ROOT, "docs", "benchmarks.md")
    with open(page) as f:
        current = f.read()
    if begin in current:
        current = current[: current.index(begin)] + text + current[current.index(end) + len(end) + 1:]
    else:
        current = current.rstrip("\n") + "\n\n" + text
    with open(page, "w") as f:
        f.write(current)


def run_section(name, key, rows, markdown):
    """Runs a benchmark script's rows (`rows()` yields them) and records them: the commit and the
    UTC times in `results`, its section of docs/benchmarks.md (`markdown(results)`) and
    bench/results-<name>.json. For the small scripts beside this one (hostile.py, sizing.py)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    results = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "commit": commit,
               key: list(rows())}
    results["finished"] = datetime.now(timezone.utc).strftime("%H:%M")
    text = markdown(results)
    write_section(name, text)
    with open(os.path.join(ROOT, "bench", f"results-{name}.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(text)


def loadtest_cmd(url, *args):
    """The load test on the client core, asked for its --json report. LOAD_NICE (a niceness,
    say -10) runs it ahead of anything else on its core: the measuring instrument first, so that
    a Redis given the client core (REDIS_CORE=1) delays what is measured, not the measuring."""
    nice = ["nice", "-n", LOAD_NICE] if LOAD_NICE else []
    return [*nice, "taskset", "-c", CLIENT_CORE, f"{RELEASE}/cache-layer-loadtest", "--url", url,
            "--json", "--no-progress", *map(str, args)]


def loadtest(url, *args):
    """The load test's --json report."""
    cmd = loadtest_cmd(url, *args)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode not in (0, 1):
        raise SystemExit(f"load test failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)


def section_hot(stub, contenders, redis):
    rows = {name: {"load": [], "single": []} for name in contenders}
    running = {name: Contender(name, stub, redis=redis) for name in contenders}
    for c in running.values():
        c.warm("foo")
    order = list(running.items())
    for r in range(ROUNDS):
        # Each round starts with a different contender, so none always runs first.
        for name, c in order[r % len(order):] + order[:r % len(order)]:
            log(f"hot round {r + 1}/{ROUNDS}: {name}")
            rows[name]["load"].append(wrk(c.item("foo"), 32))
            rows[name]["single"].append(wrk(c.item("foo"), 1))

    def med(runs):
        return {k: statistics.median(run[k] for run in runs) for k in ("rps", "p50_ms", "p99_ms")}

    def spread(runs):
        return {"min": min(run["rps"] for run in runs), "max": max(run["rps"] for run in runs)}

    return running, [{"name": n, "label": LABELS[n], "load": med(v["load"]),
                      "load_spread": spread(v["load"]), "single": med(v["single"])}
                     for n, v in rows.items()]


def section_latency(running):
    rows = []
    for name, c in running.items():
        if name == "seed":
            continue  # it cannot sustain the rate; its saturation figures are in the hot table
        log(f"latency at {RATE} req/s: {name}")
        r = loadtest(c.base, "--pattern", "single", "--key", "foo", "--rate", RATE,
                     "-c", 16, "--duration", f"{LATENCY_SECS}s", "--warmup", "1s")
        lat = r["latency_ms"]
        rows.append({"name": name, "label": LABELS[name], "requests": r["requests"],
                     "achieved_rps": r["throughput_rps"], "errors": r["errors"],
                     "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"],
                     "p999_ms": lat["p999"], "max_ms": lat["max"]})
    return rows


def section_zipf(stub):
    rows = []
    entry_bytes = None
    warm_n = measured_n = 0
    for name in ("memory", "redis", "nginx", "varnish"):
        redis = Redis(maxmemory_data=BUDGET_BYTES) if name == "redis" else None
        c = Contender(name, stub, budget=BUDGET_BYTES, redis=redis)
        zipf = ["--pattern", "zipf", "--key-space", ZIPF_KEYS, "--zipf-exponent", ZIPF_EXPONENT,
                "-c", 32]
        log(f"zipf warm-up {ZIPF_WARMUP_SECS} s: {name}")
        warm = loadtest(c.base, *zipf, "--duration", f"{ZIPF_WARMUP_SECS}s", "--seed", 2)
        stub.reset()
        log(f"zipf measured {ZIPF_SECS} s: {name}")
        r = loadtest(c.base, *zipf, "--duration", f"{ZIPF_SECS}s", "--seed", 1)
        fetches = stub.served()
        note = ""
        if name == "memory":
            entries = c.metric("memory_cache_entries")
            held = c.metric("memory_cache_bytes")
            entry_bytes = held / entries
            warm_n, measured_n = warm["requests"], r["requests"]
            note = (f"{int(entries)} entries, {int(held)} bytes held; "
                    f"mean entry {entry_bytes:.0f} B (key + body + {entry_overhead_bytes()} B overhead)")
        elif name == "redis":
            keys = int(redis.cli("dbsize").strip())
            note = f"Redis maxmemory = empty server + budget, allkeys-lru; {keys} keys held"
        elif name == "nginx":
            cache_dir = os.path.join(c.dir, "cache")
            files = sum(len(f) for _, _, f in os.walk(cache_dir))
            disk = subprocess.run(["du", "-sk", cache_dir], capture_output=True,
                                  text=True).stdout.split()[0]
            note = (f"max_size counts disk blocks; at the end {files} entries, {disk} KiB on "
                    "disk (the cache manager trims to max_size periodically)")
        elif name == "varnish":
            stat = subprocess.run(["varnishstat", "-n", c.dir, "-1", "-f", "SMA.s0.g_bytes",
                                   "-f", "MAIN.n_object"], capture_output=True, text=True).stdout
            held = {line.split()[0]: line.split()[1] for line in stat.splitlines() if line}
            note = (f"malloc storage of the budget; at the end {held.get('MAIN.n_object', '?')} "
                    f"objects, {held.get('SMA.s0.g_bytes', '?')} bytes of storage in use")
        rows.append({"name": name, "label": LABELS[name], "requests": r["requests"],
                     "origin_fetches": fetches, "hit_ratio": 1 - fetches / r["requests"],
                     "rps": r["throughput_rps"], "p50_ms": r["latency_ms"]["p50"],
                     "p99_ms": r["latency_ms"]["p99"], "errors": r["errors"], "note": note})
        c.stop()
        if redis:
            redis.stop()
    lru = json.loads(subprocess.run(
        [f"{RELEASE}/bench-lru", "--keys", str(ZIPF_KEYS), "--exponent", str(ZIPF_EXPONENT),
         "--budget-bytes", str(BUDGET_BYTES), "--entry-bytes", f"{entry_bytes:.3f}",
         "--warmup", str(warm_n), "--requests", str(measured_n)],
        capture_output=True, text=True, check=True).stdout)
    rows.append({"name": "lru", "label": LABELS["lru"], "requests": lru["requests"],
                 "origin_fetches": lru["requests"] - lru["lru_hits"],
                 "hit_ratio": lru["lru_hit_ratio"], "rps": None, "p50_ms": None,
                 "p99_ms": None, "errors": None,
                 "note": (f"{lru['capacity_entries']} entries of the memory tier's mean size; "
                          f"the best any cache of that size can do: "
                          f"{100 * lru['best_static_hit_ratio']:.2f} %")})
    return rows


def section_stampede(stub, running, redis):
    stub.latency(200)
    rows = []
    for name in ("memory", "redis", "nginx", "varnish"):
        c = running.get(name) or Contender(name, stub, redis=redis)
        stub.reset()
        log(f"stampede of {STAMPEDE}: {name}")
        r = loadtest(c.base, "--pattern", "single", "--key", f"stampede-{name}",
                     "-c", STAMPEDE, "--requests", STAMPEDE, "--threads", 1)
        rows.append(stampede_row(name, [r], stub.served()))
    # Three replicas sharing one Redis, a third of the requests each, at the same moment.
    replicas = [Contender("replica", stub, redis=redis) for _ in range(3)]
    stub.reset()
    log(f"stampede of {STAMPEDE}: 3 replicas")
    share = STAMPEDE // 3
    counts = [share, share, STAMPEDE - 2 * share]
    procs = [subprocess.Popen(
        loadtest_cmd(rep.base, "--pattern", "single", "--key", "stampede-replicas", "-c", n,
                     "--requests", n, "--threads", 1),
        stdout=subprocess.PIPE, text=True) for rep, n in zip(replicas, counts)]
    reports = [json.loads(p.communicate()[0]) for p in procs]
    rows.append(stampede_row("replicas", reports, stub.served()))
    for rep in replicas:
        rep.stop()
    stub.latency(0)
    return rows


def stampede_row(name, reports, fetches):
    requests = sum(r["requests"] for r in reports)
    errors = sum(r["errors"] for r in reports)
    return {"name": name, "label": LABELS[name], "requests": requests,
            "origin_fetches": fetches, "ok": requests - errors, "errors": errors,
            "p50_ms": max(r["latency_ms"]["p50"] for r in reports),
            "max_ms": max(r["latency_ms"]["max"] for r in reports)}


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in open("/proc/meminfo")
                   if line.startswith("MemTotal"))) / 1024 / 1024
    os_name = next((line.split("=", 1)[1].strip().strip('"') for line in open("/etc/os-release")
                    if line.startswith("PRETTY_NAME=")), platform.system())
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem), "os": os_name,
            "kernel": platform.release(), "rustc": rustc}


def versions():
    """Short version strings of the peers and tools, e.g. `nginx 1.22.1`."""
    def run(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
            return out.stdout + out.stderr
        except OSError:
            return ""

    def find(text, marker, stop=" "):
        at = text.find(marker)
        return text[at + len(marker):].split(stop)[0].strip() if at >= 0 else "?"

    return {"nginx": "nginx " + find(run(["nginx", "-v"]), "nginx/", "\n"),
            "varnish": "Varnish " + find(run(["varnishd", "-V"]), "varnish-"),
            "redis": "Redis " + find(run(["redis-server", "--version"]), "v="),
            "wrk": "wrk " + find(run(["wrk", "-v"]), "debian/", "-")}


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out_path = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    commit = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h %s"],
                            capture_output=True, text=True).stdout.strip()
    setup_hot = ("Servers pinned to core 0 (`taskset -c 0`; cache-layer and the ceiling with "
                 "`TOKIO_WORKER_THREADS=1`, nginx with one worker); the load generator and "
                 "the origin stub on core 1; Redis (for `redis` and `seed`) shares core 0. "
                 f"Versions: {', '.join(versions().values())}.")
    setup_common = "Pinning and versions as in the hot-key section."
    results = {"machine": machine(), "commit": commit, "command": "bench/run.sh",
               "env": {k: os.environ[k] for k in ("ROUNDS", "DURATION", "SECTIONS", "RATE",
                                                  "ZIPF_KEYS", "ZIPF_EXPONENT", "BUDGET_BYTES")
                       if k in os.environ},
               "sections": {}}
    stub = Stub()
    redis = Redis()
    running = {}
    hot_names = ["ceiling", "memory", "redis", "nginx", "varnish", "seed", "memory+otlp"]
    if "hot" in SECTIONS or "latency" in SECTIONS:
        started = now()
        running, hot_rows = section_hot(stub, hot_names if "hot" in SECTIONS else
                                        [n for n in hot_names if n != "seed"], redis)
        if "hot" in SECTIONS:
            results["sections"]["hot"] = {
                "started": started, "finished": now(),
                "command": f"bench/run.sh (section hot: wrk -t1 -c32 and -c1, {ROUNDS} "
                           f"interleaved rounds of {DURATION} s, medians)",
                "setup": "Every request is `GET /items/foo` on a key already cached; the script "
                         "checks each server's own hit header before measuring. " + setup_hot,
                "rows": hot_rows}
    if "latency" in SECTIONS:
        started = now()
        results["sections"]["latency"] = {
            "started": started, "rows": section_latency(running), "finished": now(),
            "command": f"bench/run.sh (section latency: cache-layer-loadtest --pattern single "
                       f"--rate {RATE} -c 16 --duration {LATENCY_SECS}s --warmup 1s)",
            "setup": "The same servers, the same cached key, at a fixed rate well below every "
                     "contender's capacity: open loop, so a stall shows in the percentiles "
                     "instead of slowing the sender. " + setup_common,
            "rate": RATE, "connections": 16, "duration_s": LATENCY_SECS}
    if "stampede" in SECTIONS:
        started = now()
        results["sections"]["stampede"] = {
            "started": started, "rows": section_stampede(stub, running, redis),
            "finished": now(),
            "command": f"bench/run.sh (section stampede: cache-layer-loadtest --pattern single "
                       f"-c {STAMPEDE} --requests {STAMPEDE}, origin stub at 200 ms)",
            "setup": f"{STAMPEDE} connections opened first, then one request each on the same "
                     "cold key, all at once; the stub counts what reached the origin. nginx "
                     "has `proxy_cache_lock on`; Varnish coalesces by default. The replicas "
                     "row: three cache-layer processes sharing one Redis, a third of the "
                     "connections each. " + setup_common,
            "requests": STAMPEDE, "origin_latency_ms": 200}
    for c in running.values():
        c.stop()
    if "zipf" in SECTIONS:
        started = now()
        results["sections"]["zipf"] = {
            "started": started, "rows": section_zipf(stub), "finished": now(),
            "command": f"bench/run.sh (section zipf: cache-layer-loadtest --pattern zipf "
                       f"--key-space {ZIPF_KEYS} --zipf-exponent {ZIPF_EXPONENT} -c 32, "
                       f"{ZIPF_WARMUP_SECS} s warm-up run, then {ZIPF_SECS} s measured)",
            "setup": f"Each contender starts empty with a byte budget of {BUDGET_BYTES} bytes "
                     "(cache-layer `MEMORY_CACHE_MAX_BYTES`, Redis `maxmemory` above the empty "
                     "server's, nginx `max_size`, Varnish `-s malloc`); the key space is many "
                     "times larger. Hit ratio = 1 − origin fetches / requests, from the stub's "
                     "count, so every contender is judged the same way. " + setup_common,
            "keys": ZIPF_KEYS, "exponent": ZIPF_EXPONENT, "budget_bytes": BUDGET_BYTES,
            "connections": 32, "warmup_s": ZIPF_WARMUP_SECS, "duration_s": ZIPF_SECS}
    results["goals"] = goals(results["sections"])
    with open(out_path, "w") as f:
        json.dump(results, f, indent=2)
    log(f"results in {out_path}")


def goals(sections):
    """The issue's goals, judged from this run."""
    out = []
    hot = {r["name"]: r for r in sections.get("hot", {}).get("rows", [])}
    if {"memory", "ceiling"} <= hot.keys():
        m, c = hot["memory"]["load"]["rps"], hot["ceiling"]["load"]["rps"]
        out.append({"goal": "memory-tier hits ≥ 0.95× the ceiling's requests/s (c=32, medians)",
                    "figure": f"{m:.0f} / {c:.0f} = {m / c:.2f}×", "met": m / c >= 0.95})
        for peer, ratio in (("nginx", 1.6), ("varnish", 1.0)):
            if peer in hot:
                p = hot[peer]["load"]["rps"]
                out.append({"goal": f"memory-tier hits ≥ {ratio}× {peer} on the same run",
                            "figure": f"{m:.0f} vs {p:.0f} req/s = {m / p:.2f}×",
                            "met": m / p >= ratio})
    zipf = {r["name"]: r for r in sections.get("zipf", {}).get("rows", [])}
    if {"memory", "lru"} <= zipf.keys():
        m, lru = zipf["memory"]["hit_ratio"], zipf["lru"]["hit_ratio"]
        out.append({"goal": "Zipf hit ratio at least a strict LRU's at the same byte budget",
                    "figure": f"{100 * m:.2f} % vs {100 * lru:.2f} %", "met": m >= lru})
    stampede = {r["name"]: r for r in sections.get("stampede", {}).get("rows", [])}
    for name in ("memory", "replicas"):
        if name in stampede:
            n = stampede[name]["origin_fetches"]
            out.append({"goal": f"{STAMPEDE} concurrent requests on a cold key: one origin fetch"
                                f" ({LABELS[name]})",
                        "figure": f"{n} fetch(es), {stampede[name]['errors']} errors",
                        "met": n == 1 and stampede[name]["errors"] == 0})
    return out


if __name__ == "__main__":
    main()
