#!/usr/bin/env python3
"""Purges that always land (issue 32): a huge tag, a storm of purges, a replica whose Redis is
blackholed, thirty replicas on one Redis, and a rolling restart, measured on one machine.

Why this file exists: issue 32's goals are about what clients see while purges are made, on
every replica, under load and under faults; only the release binaries on loopback, in one
rerunnable command, can say whether they hold. Figures only: never asserted by a test.

Servers (cache-layer replicas, one worker thread each unless said, and redis-server) run on core
0 (Redis on REDIS_CORE when set: a production Redis has a machine of its own; with
REDIS_SCHED=idle, under SCHED_IDLE, taking only what the replicas leave of its core); the load
tests, the origin stub, the TCP proxy and this script on core 1. Every Redis is a
fresh redis-server on a free port; all traffic is on 127.0.0.1; everything started is stopped.
The origin stub tags each answer (`Surrogate-Key: {tags}`: what follows `~` in the key) and
numbers it (`n` in the value), so a value fetched before a purge is told from one fetched after.
"Served a purged value" below means: a read after the purge answered `source: cache` with a
value whose `n` is from before the purge (reads go through `POST /items:batch`, which answers
each key as `GET` would, with its `Cache-Status`).

Phases (PHASES, default `huge storm blackhole thirty rolling`):
  huge       2 replicas (A, B) on one Redis, MEMORY_CACHE_MAX_BYTES = HUGE_BOUND (1.5 GiB).
             HUGE_KEYS (1,000,000) keys `k<i>-x~huge` filled by batch reads on A (origin ->
             memory + Redis), then on B (Redis -> memory). Hot key `hot` at HOT_RATE (5,000)
             req/s open loop, -c HOT_CONNS (32), --per-request, on A and on B at once, HUGE_SECS
             (30) s: a baseline run, then a run in which, PURGE_AT (5) s in, `DELETE /tags/huge`
             goes to A. Right after its answer, HUGE_SAMPLE (2,000) distinct random keys of the
             tag are read on each replica. Goal: 200 within 10 s; no purged value served after
             it; hot-key p99 while the purge runs (from the DELETE until A answered and B had
             applied it) <= 2x the baseline's p99, max <= 50 ms, on each replica.
  storm      2 replicas, STORM_KEYS (100,000) keys `s<i>~g<i/50>` (tags of 50) in both memory
             tiers; hot-key baseline, then the same run with STORM_PURGES (200) purges, half of
             keys and half of tags, STORM_PARALLEL (8) at a time, alternately on A and B, from
             STORM_AT (3) s in, sent by `curl --parallel` (see `curl_purges`). Goal: every purge 200; hot-key p99 during the storm <= 2x
             baseline; `memory_cache_entries` drops by exactly the purged keys, and STORM_SAMPLE
             (5,000) unpurged keys are still memory hits on each replica.
  blackhole  replica A on Redis, replica B on Redis through a TCP proxy (this file run as
             `--proxy`, core 1) that on SIGUSR1 forwards nothing more and accepts new connections
             without connecting them (no reset, no FIN: a blackhole), and on SIGUSR2 lets
             everything through again. BH_KEYS (50,000) keys `b<i>~h<i/20>` in both memory tiers.
             B blackholed for BH_SECS (30) s while A makes BH_PURGES (1,000) purges (half keys,
             half tags of 20, spread over the first BH_SECS - 5 s, 8 at a time); then healed,
             and the script waits (up to 120 s) for B's INFO line `caught up on the purges made
             while not listening`, or for B to have applied all BH_PURGES by message. Then every
             purged key is read on B and on A, and every unpurged key on B. Goal: 0 purged values
             served on either; B's memory tier still holds >= 99 % of its unpurged entries
             (`Cache-Status … detail=memory`).
  thirty     THIRTY (30) replicas (MEMORY_CACHE_MAX_BYTES = THIRTY_BOUND, 16 MiB; one worker
             thread) on one Redis. THIRTY_RUNS (100) times: a key cached on every replica, then
             `DELETE /items/<key>` on replica run % 30; from its answer, every replica is read
             (all at once, over kept-alive connections, again and again) until each answers
             something other than the purged value (by `ETag`): the propagation time is when
             the last one did. Goal: p99 <= 100 ms. Then Redis's CPU per purge (INFO cpu,
             used_cpu_sys + used_cpu_user, less its idle rate over IDLE_SECS (5) s) over
             THIRTY_CPU_PURGES (1,000) key purges and as many tag purges, 8 at a time.
  rolling    3 replicas on one Redis (maxmemory ROLL_REDIS_BYTES, 4 MiB of data, allkeys-lru, so
             Redis is full after the warm-up and the origin fetch rate is steady;
             MEMORY_CACHE_MAX_BYTES ROLL_BOUND, 4 MiB) under Zipf load (ROLL_KEYS 100,000,
             exponent ROLL_EXPONENT 1.0, ROLL_RATE 3,000 req/s open loop over the replicas that
             are up, one load test per replica, -c 16 each). ROLL_WARM_SECS (20) s warm-up, then
             a steady ROLL_STEADY_SECS (20) s window; then each replica in turn: its load moves
             to the others (a rollout takes the pod out of the Service before SIGTERM), 0.5 s
             later SIGTERM, wait for its exit, start it again on the same port, wait for
             /readyz; the window lasts ROLL_DOWN_SECS (8) s; then ROLL_UP_SECS (8) s with all
             three; then a second steady window. Goal: 0 5xx (0 errors of any kind counted);
             origin fetches/s during the rollout <= 1.2x steady; p99 <= 1.5x steady.

Before each phase the script waits (up to QUIET_WAIT, 600 s, over the whole run) until processes other than its own
use under 10 % of a core, and it notes how much they used during the phase.

Usage: python3 bench/purge_goals.py   (BIN_DIR: the release binaries, default target/release;
       env knobs above). Writes its section of docs/benchmarks.md (and
       bench/sections/purge-goals.md) and bench/results-purge-goals.json, unless NO_WRITE=1;
       `--render` writes the section again from the JSON. Service logs go to LOG_DIR (default
       a new /tmp/purge-goals-* directory). DUMP_LINES=path writes the hot-key requests of the
       huge tag's or the storm's run (due time, ms) and the purge window to `path` as JSON, for
       a timeline of where the slow ones fall.
"""

import asyncio
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MIB = 1 << 20
PHASES = os.getenv("PHASES", "huge storm blackhole thirty rolling").replace(",", " ").split()
HOT_RATE = int(os.getenv("HOT_RATE", "5000"))
HOT_CONNS = int(os.getenv("HOT_CONNS", "32"))
HUGE_KEYS = int(os.getenv("HUGE_KEYS", "1000000"))
HUGE_BOUND = int(os.getenv("HUGE_BOUND", str(1536 * MIB)))
HUGE_SECS = int(os.getenv("HUGE_SECS", "30"))
HUGE_SAMPLE = int(os.getenv("HUGE_SAMPLE", "2000"))
PURGE_AT = float(os.getenv("PURGE_AT", "5"))
FILL_CONNS = int(os.getenv("FILL_CONNS", "8"))
FILL_BATCH = int(os.getenv("FILL_BATCH", "100"))
STORM_KEYS = int(os.getenv("STORM_KEYS", "100000"))
STORM_PURGES = int(os.getenv("STORM_PURGES", "200"))
STORM_PARALLEL = int(os.getenv("STORM_PARALLEL", "8"))
STORM_SECS = int(os.getenv("STORM_SECS", "20"))
STORM_AT = float(os.getenv("STORM_AT", "3"))
STORM_SAMPLE = int(os.getenv("STORM_SAMPLE", "5000"))
BH_KEYS = int(os.getenv("BH_KEYS", "50000"))
BH_PURGES = int(os.getenv("BH_PURGES", "1000"))
BH_SECS = float(os.getenv("BH_SECS", "30"))
THIRTY = int(os.getenv("THIRTY", "30"))
THIRTY_BOUND = int(os.getenv("THIRTY_BOUND", str(16 * MIB)))
THIRTY_RUNS = int(os.getenv("THIRTY_RUNS", "100"))
THIRTY_CPU_PURGES = int(os.getenv("THIRTY_CPU_PURGES", "1000"))
IDLE_SECS = float(os.getenv("IDLE_SECS", "5"))
ROLL_KEYS = int(os.getenv("ROLL_KEYS", "100000"))
ROLL_EXPONENT = float(os.getenv("ROLL_EXPONENT", "1.0"))
ROLL_RATE = int(os.getenv("ROLL_RATE", "3000"))
ROLL_REDIS_BYTES = int(os.getenv("ROLL_REDIS_BYTES", str(4 * MIB)))
ROLL_BOUND = int(os.getenv("ROLL_BOUND", str(4 * MIB)))
ROLL_WARM_SECS = int(os.getenv("ROLL_WARM_SECS", "20"))
ROLL_STEADY_SECS = int(os.getenv("ROLL_STEADY_SECS", "20"))
ROLL_DOWN_SECS = int(os.getenv("ROLL_DOWN_SECS", "8"))
ROLL_UP_SECS = int(os.getenv("ROLL_UP_SECS", "8"))
QUIET_WAIT = int(os.getenv("QUIET_WAIT", "600"))
TOKEN = "purge-goals-bench-admin-token"
KNOBS = ["PHASES", "HOT_RATE", "HOT_CONNS", "HUGE_KEYS", "HUGE_BOUND", "HUGE_SECS", "HUGE_SAMPLE",
         "PURGE_AT", "FILL_CONNS", "FILL_BATCH", "STORM_KEYS", "STORM_PURGES", "STORM_PARALLEL",
         "STORM_SECS", "STORM_AT", "STORM_SAMPLE", "BH_KEYS", "BH_PURGES", "BH_SECS", "THIRTY",
         "THIRTY_BOUND", "THIRTY_RUNS", "THIRTY_CPU_PURGES", "IDLE_SECS", "ROLL_KEYS",
         "ROLL_EXPONENT", "ROLL_RATE", "ROLL_REDIS_BYTES", "ROLL_BOUND", "ROLL_WARM_SECS",
         "ROLL_STEADY_SECS", "ROLL_DOWN_SECS", "ROLL_UP_SECS"]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results-purge-goals.json")

base = None  # bench/run.py, imported in main()
cg = None  # bench/core_goals.py (wait_quiet, OtherLoad)
LOG_DIR = None


# --------------------------------------------------------------------------------------------
# The blackhole proxy (`--proxy LISTEN UPSTREAM`)
# --------------------------------------------------------------------------------------------

async def proxy_main(listen_port, upstream_port):
    """Forwards 127.0.0.1:listen to 127.0.0.1:upstream. SIGUSR1: nothing more goes through in
    either direction, and new connections are accepted but not connected (every socket is held
    open, silently: no reset, no FIN); SIGUSR2: everything flows again, held bytes included."""
    loop = asyncio.get_running_loop()
    open_ = asyncio.Event()
    open_.set()
    loop.add_signal_handler(signal.SIGUSR1, open_.clear)
    loop.add_signal_handler(signal.SIGUSR2, open_.set)

    async def pump(r, w):
        try:
            while True:
                await open_.wait()
                data = await r.read(65536)
                if not data:
                    break
                await open_.wait()
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                w.close()
            except Exception:
                pass

    async def handle(cr, cw):
        await open_.wait()
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pump(cr, uw), pump(ur, cw))

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=1024)
    await server.serve_forever()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def spawn_log(cmd, env, core, path):
    """base.spawn, with stdout and stderr to `path`."""
    f = open(path, "a")
    p = subprocess.Popen(["taskset", "-c", core, *cmd], env=base.child_env(env), stdout=f,
                         stderr=subprocess.STDOUT, start_new_session=True)
    base.PROCS.append(p)
    return p


def wait_ready(url, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            if base.http("GET", url + "/readyz", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"{url} not ready within {deadline} s")


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Replica:
    """One cache-layer process (restartable on the same port), logging to LOG_DIR/<name>.log."""

    def __init__(self, name, stub, redis_url, extra=None):
        self.name = name
        self.port = base.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(LOG_DIR, f"{name}.log")
        self.env = {"LISTEN_ADDR": f"127.0.0.1:{self.port}", "TOKIO_WORKER_THREADS": "1",
                    "RUST_LOG": "warn", "ORIGIN_URL": f"{stub.base}/items/{{key}}",
                    "CACHE_TTL_SECS": "600", "REDIS_URL": redis_url, "ADMIN_TOKEN": TOKEN,
                    "REQUEST_TIMEOUT_SECS": "60", **(extra or {})}
        self.start()

    def start(self, wait=True):
        self.proc = spawn_log([f"{base.RELEASE}/cache-layer"], self.env, base.SERVER_CORE, self.log)
        if wait:
            wait_ready(self.base)

    def stop(self):
        base.stop(self.proc)

    def metric(self, name):
        return metric(self.base, name)

    def log_lines(self, *needles):
        with open(self.log, errors="replace") as f:
            return [l.rstrip() for l in f if any(n in l for n in needles)]


def metric(url, series):
    """Sum of the samples of `series` (a name, or a prefix with labels) in /metrics."""
    text = base.http("GET", url + "/metrics")[2].decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(series + " ") or line.startswith(series + "{") or ("{" in series and line.startswith(series)):
            total += float(line.rsplit(" ", 1)[1])
    return total


REMOTE = 'cache_invalidations_total{'


def remote_purges(url):
    """Purges this replica applied from another replica's message (tag and key)."""
    text = base.http("GET", url + "/metrics")[2].decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(REMOTE) and 'source="remote"' in l)


def post_json(url, body, timeout=120):
    status, _, text = base.http("POST", url, body=json.dumps(body).encode(), timeout=timeout,
                                headers={"Content-Type": "application/json"})
    return status, text


def batch_read(url, keys):
    """Each key's item as `POST /items:batch` answers it (1,000 keys per request)."""
    out = []
    for i in range(0, len(keys), 1000):
        status, text = post_json(url + "/items:batch", {"keys": keys[i:i + 1000]})
        if status != 200:
            raise SystemExit(f"batch read on {url}: {status} {text[:300]}")
        out.extend(json.loads(text)["items"])
    return out


def judge(items, fill_n):
    """Counts of a read-back: hits, memory hits, misses, errors, and purged values served (a
    cached answer whose value was fetched at or before origin answer number `fill_n`)."""
    c = {"keys": len(items), "hits": 0, "memory_hits": 0, "misses": 0, "errors": 0, "purged_served": 0}
    examples = []
    for it in items:
        status = it.get("cache", "")
        if "error" in it:
            c["errors"] += 1
            continue
        if status.startswith("cache-layer; hit"):
            c["hits"] += 1
            if "detail=memory" in status:
                c["memory_hits"] += 1
        elif "fwd=miss" in status:
            c["misses"] += 1
        value = it.get("value")
        n = value.get("n") if isinstance(value, dict) else None
        if it.get("source") == "cache" and n is not None and n <= fill_n:
            c["purged_served"] += 1
            if len(examples) < 5:
                examples.append({"key": it["key"], "cache": status, "n": n})
    c["purged_examples"] = examples
    return c


def delete(url, path, timeout=120):
    t = time.monotonic()
    status, _, text = base.http("DELETE", url + path, timeout=timeout,
                                headers={"Authorization": f"Bearer {TOKEN}"})
    return status, text.decode(errors="replace"), (time.monotonic() - t) * 1000


def curl_purges(urls, parallel):
    """Sends `DELETE` to each of `urls`, `parallel` at a time (the next when one answers), with
    curl on the client core: (start, [(status, body, ms)] in the order of `urls`, end).

    Why curl and not this script's threads: urllib opens a connection per request and costs
    about half a millisecond of CPU for each, so a storm of 200 purges in 0.08 s took most of
    the client core, which the load tests measuring the hot key share. With no purge sent at
    all, threads burning the same CPU for as long raised the hot key's p99 in the window to
    4.9-5.8x its baseline: the instrument's own delay (see `purge-tails`). curl keeps its
    connections alive and costs about 60 us a purge. It is started first and reads its list
    from stdin, so its own start-up is not in the window."""
    out = tempfile.mkdtemp(prefix="storm-curl-")
    config = "".join(f'url = "{u}"\noutput = "{out}/{i}"\n' for i, u in enumerate(urls))
    cmd = ["taskset", "-c", base.CLIENT_CORE, "curl", "-s", "-Z", "--parallel-max", str(parallel),
           "--parallel-immediate", "-X", "DELETE", "-H", f"Authorization: Bearer {TOKEN}",
           "--max-time", "120", "-K", "-", "-w", "%{url_effective} %{http_code} %{time_total}\n"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)  # curl loaded and waiting for its list
    s0 = time.monotonic()
    stdout, _ = p.communicate(config)
    s1 = time.monotonic()
    got = {}
    for line in stdout.splitlines():
        u, status, secs = line.split()
        got[u] = (int(status), float(secs) * 1000)
    answers = []
    for i, u in enumerate(urls):
        status, ms = got.get(u, (0, 0.0))
        try:
            with open(os.path.join(out, str(i)), errors="replace") as f:
                body = f.read()
        except OSError:
            body = "no answer"
        answers.append((status, body, ms))
    shutil.rmtree(out, ignore_errors=True)
    return s0, answers, s1


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


LINE = re.compile(rb"^\[(\d+)\] key=\S+\s*\| (\w+)\s*\|\s*([\d.]+) ms$")


class Load:
    """cache-layer-loadtest in the background with --per-request at a fixed rate: `result()` is
    its summary with `lines` [(due s since `t0`, ms, error)] and its errors by kind; `t0` is the
    monotonic time the process was started (its schedule starts a few ms later)."""

    def __init__(self, url, rate, *args, t0=None):
        self.rate = rate
        self.cmd = base.loadtest_cmd(url, "--rate", rate, *args)
        self.cmd.remove("--json")
        self.cmd.append("--per-request")
        self.t0 = t0 if t0 is not None else time.monotonic()
        self.offset = time.monotonic() - self.t0
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Read at once, so that several load tests' per-request lines never fill a pipe (a
        # blocked writer would stall its load test).
        self.io = {}
        self.reader = threading.Thread(target=lambda: self.io.update(zip(("out", "err"), self.proc.communicate())),
                                       daemon=True)
        self.reader.start()

    def result(self):
        self.reader.join()
        out, err = self.io["out"], self.io["err"]
        if self.proc.returncode not in (0, 1):
            raise SystemExit(f"load test failed: {' '.join(self.cmd)}\n{err.decode()}")
        r = {"lines": [], "errors_by_kind": {}}
        for line in out.splitlines():
            m = LINE.match(line)
            if m:
                r["lines"].append((self.offset + (int(m.group(1)) - 1) / self.rate,
                                   float(m.group(3)), m.group(2) == b"ERROR"))
                continue
            s = line.decode(errors="replace")
            if s.startswith("Total requests:"):
                r["requests"] = int(s.split()[-1])
            elif s.startswith("Errors:"):
                r["errors"] = int(s.split()[-1])
            elif s.startswith("Errors by kind:"):
                for part in s.split(":", 1)[1].split(","):
                    if "×" in part:
                        kind, n = part.rsplit("×", 1)
                        r["errors_by_kind"][kind.strip()] = int(n)
            elif s.startswith("Latency (ms):"):
                f = s.split()
                r["latency_ms"] = {f[i]: float(f[i + 1]) for i in range(2, len(f) - 1, 2)}
        return r


def lat(lines, t_from=None, t_to=None):
    """p50/p99/p99.9/max (ms) and count of the requests due in [t_from, t_to]."""
    ms = [m for t, m, _ in lines if (t_from is None or t >= t_from) and (t_to is None or t <= t_to)]
    if not ms:
        return {"requests": 0}
    return {"requests": len(ms), "p50": round(pct(ms, 50), 3), "p99": round(pct(ms, 99), 3),
            "p999": round(pct(ms, 99.9), 3), "max": round(max(ms), 3)}


def dump_lines(runs, s0, s1):
    """With DUMP_LINES set, writes the runs' requests and the purge window [s0, s1] there."""
    if os.getenv("DUMP_LINES"):
        with open(os.getenv("DUMP_LINES"), "w") as f:
            json.dump({"s0": s0, "s1": s1, "lines": [x["lines"] for x in runs]}, f)


def hot_loads(replicas, secs, t0):
    return [Load(r.base, HOT_RATE, "--pattern", "single", "--key", "hot", "-c", HOT_CONNS,
                 "--duration", f"{secs}s", "--threads", 1, t0=t0) for r in replicas]


def warm_hot(replicas):
    for r in replicas:
        base.http("GET", r.base + "/items/hot")
        _, h, _ = base.http("GET", r.base + "/items/hot")
        status = {k.lower(): v for k, v in h.items()}.get("cache-status", "")
        if "detail=memory" not in status:
            raise SystemExit(f"{r.name}: the hot key is not a memory hit: {status}")


WAITED = [0.0]


def quiet(phase):
    t = time.monotonic()
    load = cg.wait_quiet(base, max(0.0, QUIET_WAIT - WAITED[0]))
    WAITED[0] += time.monotonic() - t
    base.log(f"{phase}: other processes at {load:.1f} % of a core before the phase")
    return round(load, 1)


def stub_n(stub):
    """The origin stub's answers so far (the `n` of the next value is above it)."""
    return stub.served()


def setup_stub():
    stub = base.Stub()
    post_json(f"{stub.base}/_stub/headers", [["Surrogate-Key", "{tags}"]])
    return stub


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------

def phase_huge():
    out = {"quiet_pct": quiet("huge")}
    other = cg.OtherLoad()
    redis = base.Redis()
    stub = setup_stub()
    env = {"MEMORY_CACHE_MAX_BYTES": str(HUGE_BOUND)}
    a, b = Replica("huge-a", stub, redis.url, env), Replica("huge-b", stub, redis.url, env)
    fill = {}
    for r in (a, b):
        base.log(f"huge: filling {HUGE_KEYS} keys on {r.name}")
        t = time.monotonic()
        rep = json.loads(subprocess.run(base.loadtest_cmd(
            r.base, "--pattern", "cycle", "--key-prefix", "k", "--suffix", "x~huge", "--key-space", HUGE_KEYS,
            "--batch", FILL_BATCH, "--requests", -(-HUGE_KEYS // FILL_BATCH), "-c", FILL_CONNS,
            "--duration", "900s"), capture_output=True, text=True).stdout)
        fill[r.name] = {"seconds": round(time.monotonic() - t, 1), "errors": rep["errors"],
                        "hits_by_tier": rep["hits_by_tier"], "misses": rep["misses"],
                        "entries": int(r.metric("memory_cache_entries")),
                        "bytes": int(r.metric("memory_cache_bytes"))}
        base.log(f"huge: {r.name} filled: {fill[r.name]}")
    fill["redis_keys"] = int(redis.cli("dbsize").strip())
    fill["redis_used_memory"] = int(redis.cli("info", "memory").split("used_memory:")[1].split()[0])
    out["fill"] = fill
    fill_n = stub_n(stub)
    warm_hot([a, b])
    base.log(f"huge: baseline, hot key at {HOT_RATE} req/s on both, {HUGE_SECS} s")
    t0 = time.monotonic()
    loads = hot_loads([a, b], HUGE_SECS, t0)
    baseline = [l.result() for l in loads]
    out["baseline"] = {r.name: {**lat(x["lines"]), "errors": x.get("errors")} for r, x in zip((a, b), baseline)}
    base.log(f"huge: baseline {out['baseline']}")

    before_b = remote_purges(b.base)
    b_applied = {}

    def watch_b(stop):
        while not stop.is_set():
            if remote_purges(b.base) > before_b:
                b_applied["t"] = time.monotonic()
                return
            time.sleep(0.02)

    t0 = time.monotonic()
    loads = hot_loads([a, b], HUGE_SECS, t0)
    time.sleep(PURGE_AT)
    procs = {"huge-a": a.proc.pid, "huge-b": b.proc.pid, "redis": redis.proc.pid}
    redis.cli("config", "resetstat")
    cpu0 = {n: cpu_seconds(pid) for n, pid in procs.items()}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_b, args=(stop,), daemon=True)
    watcher.start()
    sent = time.monotonic()
    status, text, ms = delete(a.base, "/tags/huge")
    answered = time.monotonic()
    base.log(f"huge: DELETE /tags/huge -> {status} in {ms:.0f} ms: {text[:200]}")
    rng = random.Random(32)
    sample = [f"k{i}-x~huge" for i in rng.sample(range(1, HUGE_KEYS + 1), 2 * HUGE_SAMPLE)]
    with ThreadPoolExecutor(2) as ex:
        checks = list(ex.map(lambda rs: (time.monotonic(), batch_read(rs[0].base, rs[1]), time.monotonic()),
                             [(a, sample[:HUGE_SAMPLE]), (b, sample[HUGE_SAMPLE:])]))
    watcher.join(timeout=30)
    stop.set()
    cpu1 = {n: cpu_seconds(pid) for n, pid in procs.items()}
    out["purge_cpu_s"] = {n: round(cpu1[n] - cpu0[n], 2) for n in procs}
    base.log(f"huge: CPU seconds from the DELETE until B applied it and the read-back: {out['purge_cpu_s']}")
    out["redis_commands"] = {l.split(":")[0][len("cmdstat_"):]: dict(kv.split("=") for kv in l.split(":", 1)[1].split(",")[:3])
                             for l in redis.cli("info", "commandstats").splitlines() if l.startswith("cmdstat_")}
    base.log(f"huge: Redis commands during the purge: {out['redis_commands']}")
    run = [l.result() for l in loads]
    dump_lines(run, sent - t0, answered - t0)
    b_done = b_applied.get("t")
    out["purge"] = {"status": status, "body": text[:500], "ms": round(ms, 1),
                    "b_applied_after_sent_ms": round((b_done - sent) * 1000, 1) if b_done else None,
                    "b_applied_after_answer_ms": round((b_done - answered) * 1000, 1) if b_done else None}
    out["sample"] = {}
    for r, (c0, items, c1) in zip((a, b), checks):
        out["sample"][r.name] = {**judge(items, fill_n), "read_from_answer_ms": round((c0 - answered) * 1000, 1),
                                 "read_took_ms": round((c1 - c0) * 1000, 1)}
    w0, w1a = sent - t0, answered - t0
    w1b = max(answered, b_done or answered) - t0
    out["during"] = {}
    for r, x, w1 in zip((a, b), run, (w1a, w1b)):
        out["during"][r.name] = {"window_s": [round(w0, 3), round(w1, 3)], "purge_window": lat(x["lines"], w0, w1),
                                 "whole_run": lat(x["lines"]), "errors": x.get("errors")}
    out["after"] = {r.name: {"entries": int(r.metric("memory_cache_entries"))} for r in (a, b)}
    out["after"]["redis_keys"] = int(redis.cli("dbsize").strip())
    out["warn_lines"] = {r.name: r.log_lines("WARN", "ERROR")[:20] for r in (a, b)}
    out["other_pct"] = round(other.pct(), 1)
    base.log(f"huge: {json.dumps({k: out[k] for k in ('purge', 'sample', 'during')})}")
    for r in (a, b):
        r.stop()
    redis.stop()
    return out


def fill_keys(replicas, keys):
    """Batch reads of `keys` on each replica in turn (4 batches at a time)."""
    chunks = [keys[i:i + 1000] for i in range(0, len(keys), 1000)]
    for r in replicas:
        with ThreadPoolExecutor(4) as ex:
            for items in ex.map(lambda c: batch_read(r.base, c), chunks):
                bad = [it for it in items if "error" in it]
                if bad:
                    raise SystemExit(f"fill on {r.name}: {bad[:3]}")


def phase_storm():
    out = {"quiet_pct": quiet("storm")}
    other = cg.OtherLoad()
    redis = base.Redis()
    stub = setup_stub()
    env = {"MEMORY_CACHE_MAX_BYTES": str(512 * MIB)}
    a, b = Replica("storm-a", stub, redis.url, env), Replica("storm-b", stub, redis.url, env)
    size = 50
    keys = [f"s{i}~g{i // size}" for i in range(STORM_KEYS)]
    base.log(f"storm: filling {STORM_KEYS} keys on both")
    fill_keys([a, b], keys)
    fill_n = stub_n(stub)
    warm_hot([a, b])
    base.log("storm: baseline")
    t0 = time.monotonic()
    baseline = [l.result() for l in hot_loads([a, b], STORM_SECS, t0)]
    out["baseline"] = {r.name: {**lat(x["lines"]), "errors": x.get("errors")} for r, x in zip((a, b), baseline)}
    rng = random.Random(7)
    tags = rng.sample(range(STORM_KEYS // size), STORM_PURGES // 2)
    tagged = {i for g in tags for i in range(g * size, (g + 1) * size)}
    single = rng.sample([i for i in range(STORM_KEYS) if i not in tagged], STORM_PURGES - len(tags))
    purges = [f"/tags/g{g}" for g in tags] + [f"/items/{keys[i]}" for i in single]
    rng.shuffle(purges)
    purged = tagged | set(single)
    entries_before = {r.name: int(r.metric("memory_cache_entries")) for r in (a, b)}
    base.log(f"storm: {len(purges)} purges, {STORM_PARALLEL} at a time, under hot-key load")
    t0 = time.monotonic()
    loads = hot_loads([a, b], STORM_SECS, t0)
    time.sleep(STORM_AT)
    s0, answers, s1 = curl_purges([(a, b)[i % 2].base + path for i, path in enumerate(purges)],
                                  STORM_PARALLEL)
    run = [l.result() for l in loads]
    dump_lines(run, s0 - t0, s1 - t0)
    time.sleep(0.5)  # the other replica's messages
    entries_after = {r.name: int(r.metric("memory_cache_entries")) for r in (a, b)}
    statuses = {}
    for st, _, _ in answers:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    out["purges"] = {"count": len(purges), "keys_purged": len(purged), "statuses": statuses,
                     "seconds": round(s1 - s0, 2), "ms_p50": round(pct([m for *_, m in answers], 50), 1),
                     "ms_p99": round(pct([m for *_, m in answers], 99), 1),
                     "ms_max": round(max(m for *_, m in answers), 1),
                     "non_2xx": [(p, st, t[:200]) for p, (st, t, _) in zip(purges, answers) if st not in (200, 204)][:10]}
    out["during"] = {r.name: {"window_s": [round(s0 - t0, 2), round(s1 - t0, 2)],
                              "purge_window": lat(x["lines"], s0 - t0, s1 - t0), "whole_run": lat(x["lines"]),
                              "errors": x.get("errors")} for r, x in zip((a, b), run)}
    unpurged = [keys[i] for i in rng.sample([i for i in range(STORM_KEYS) if i not in purged], STORM_SAMPLE)]
    out["entries"] = {r.name: {"before": entries_before[r.name], "after": entries_after[r.name],
                               "expected_after": entries_before[r.name] - len(purged)} for r in (a, b)}
    out["unpurged_sample"] = {r.name: judge(batch_read(r.base, unpurged), -1) for r in (a, b)}
    purged_keys = [keys[i] for i in sorted(purged)]
    out["purged_check"] = {r.name: judge(batch_read(r.base, purged_keys), fill_n) for r in (b, a)}
    out["warn_lines"] = {r.name: r.log_lines("WARN", "ERROR")[:20] for r in (a, b)}
    out["other_pct"] = round(other.pct(), 1)
    base.log(f"storm: {json.dumps({k: out[k] for k in ('purges', 'entries', 'during')})}")
    for r in (a, b):
        r.stop()
    redis.stop()
    return out


def phase_blackhole():
    out = {"quiet_pct": quiet("blackhole")}
    other = cg.OtherLoad()
    redis = base.Redis()
    stub = setup_stub()
    pport = base.free_port()
    proxy = base.spawn([sys.executable, os.path.abspath(__file__), "--proxy", str(pport), str(redis.port)],
                       core=base.CLIENT_CORE)
    time.sleep(0.5)
    env = {"MEMORY_CACHE_MAX_BYTES": str(512 * MIB)}
    a = Replica("bh-a", stub, redis.url, env)
    b = Replica("bh-b", stub, f"redis://127.0.0.1:{pport}", {**env, "RUST_LOG": "info"})
    size = 20
    keys = [f"b{i}~h{i // size}" for i in range(BH_KEYS)]
    base.log(f"blackhole: filling {BH_KEYS} keys on both")
    fill_keys([a, b], keys)
    fill_n = stub_n(stub)
    rng = random.Random(11)
    tags = rng.sample(range(BH_KEYS // size), BH_PURGES // 2)
    tagged = {i for g in tags for i in range(g * size, (g + 1) * size)}
    single = rng.sample([i for i in range(BH_KEYS) if i not in tagged], BH_PURGES - len(tags))
    purges = [f"/tags/h{g}" for g in tags] + [f"/items/{keys[i]}" for i in single]
    rng.shuffle(purges)
    purged = tagged | set(single)
    out["entries_before"] = {r.name: int(r.metric("memory_cache_entries")) for r in (a, b)}
    remote_before = remote_purges(b.base)
    base.log(f"blackhole: B's Redis blackholed for {BH_SECS} s; A makes {len(purges)} purges")
    proxy.send_signal(signal.SIGUSR1)
    h0 = time.monotonic()
    spread = max(BH_SECS - 5, 1) / len(purges)

    def one(ip):
        i, p = ip
        time.sleep(max(0.0, h0 + i * spread - time.monotonic()))
        return delete(a.base, p)

    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(one, enumerate(purges)))
    out["purges_done_s"] = round(time.monotonic() - h0, 2)
    time.sleep(max(0.0, h0 + BH_SECS - time.monotonic()))
    b_health = base.http("GET", b.base + "/health")[2].decode()[:400]
    proxy.send_signal(signal.SIGUSR2)
    healed = time.monotonic()
    base.log("blackhole: healed; waiting for B to catch up")
    how = None
    while time.monotonic() - healed < 120:
        if b.log_lines("caught up on the purges made while not listening"):
            how = "log line"
            break
        if remote_purges(b.base) - remote_before >= len(purges):
            how = "all purges applied by message"
            break
        time.sleep(0.05)
    caught = time.monotonic()
    time.sleep(0.5)
    statuses = {}
    for st, _, _ in answers:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    out["purges"] = {"count": len(purges), "keys_purged": len(purged), "statuses": statuses,
                     "non_2xx": [(p, st, t[:200]) for p, (st, t, _) in zip(purges, answers) if st not in (200, 204)][:10]}
    out["b_during_blackhole_health"] = b_health
    out["catch_up"] = {"how": how, "after_heal_s": round(caught - healed, 2),
                       "remote_applied": int(remote_purges(b.base) - remote_before)}
    out["entries_after"] = {r.name: int(r.metric("memory_cache_entries")) for r in (a, b)}
    purged_keys = [keys[i] for i in sorted(purged)]
    out["purged_check"] = {r.name: judge(batch_read(r.base, purged_keys), fill_n) for r in (b, a)}
    unpurged_keys = [keys[i] for i in range(BH_KEYS) if i not in purged]
    kept = judge(batch_read(b.base, unpurged_keys), -1)
    out["b_unpurged"] = {**kept, "kept_pct": round(100 * kept["memory_hits"] / len(unpurged_keys), 3)}
    out["b_log"] = b.log_lines("caught up", "WARN", "ERROR", "reachable", "subscri", "lost")[:40]
    out["a_warn_lines"] = a.log_lines("WARN", "ERROR")[:20]
    out["other_pct"] = round(other.pct(), 1)
    base.log(f"blackhole: {json.dumps({k: out[k] for k in ('purges', 'catch_up', 'purged_check', 'b_unpurged')})[:3000]}")
    for r in (a, b):
        r.stop()
    base.stop(proxy)
    redis.stop()
    return out


class AConn:
    """A kept-alive HTTP/1.1 connection for asyncio (answers with Content-Length only)."""

    def __init__(self, port):
        self.port = port

    async def open(self):
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method, path, headers=None):
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n"
        self.w.write(head.encode())
        await self.w.drain()
        raw = await self.r.readuntil(b"\r\n\r\n")
        lines = raw.decode().split("\r\n")
        status = int(lines[0].split()[1])
        h = {}
        for l in lines[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                h[k.strip().lower()] = v.strip()
        n = int(h.get("content-length", "0"))
        body = await self.r.readexactly(n) if n else b""
        return status, h, body


def redis_cpu(redis):
    info = redis.cli("info", "cpu")
    v = dict(l.split(":", 1) for l in info.split() if ":" in l)
    return float(v["used_cpu_sys"]) + float(v["used_cpu_user"])


def phase_thirty():
    out = {"quiet_pct": quiet("thirty")}
    other = cg.OtherLoad()
    redis = base.Redis()
    stub = setup_stub()
    env = {"MEMORY_CACHE_MAX_BYTES": str(THIRTY_BOUND)}
    base.log(f"thirty: starting {THIRTY} replicas")
    reps = [Replica(f"thirty-{i}", stub, redis.url, env) for i in range(THIRTY)]
    out["rss_mib"] = round(statistics.mean(base.rss_bytes(r.proc.pid) for r in reps) / MIB, 1)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def main():
        conns = [AConn(r.port) for r in reps]
        await asyncio.gather(*(c.open() for c in conns))
        times, stale_after_answer, problems = [], [], []
        for run in range(THIRTY_RUNS):
            key = f"/items/t{run}~tt{run}"
            st, h, _ = await conns[0].request("GET", key)
            old = h["etag"]
            answers = await asyncio.gather(*(c.request("GET", key) for c in conns[1:]))
            answers = await asyncio.gather(*(c.request("GET", key) for c in conns))
            notmem = [i for i, (s, hh, _) in enumerate(answers) if "detail=memory" not in hh.get("cache-status", "")
                      or hh.get("etag") != old]
            if notmem:
                problems.append(f"run {run}: replicas {notmem} not memory hits of the value before the purge")
            who = run % THIRTY
            target = key if run % 2 == 0 else f"/tags/tt{run}"
            st, _, body = await conns[who].request("DELETE", target, auth)
            answered = time.monotonic()
            if st not in (200, 204):
                problems.append(f"run {run}: DELETE {target} -> {st} {body[:200]!r}")
            pending = set(range(THIRTY))
            stale = 0
            done_at = answered
            while pending and time.monotonic() - answered < 10:
                idx = sorted(pending)
                res = await asyncio.gather(*(conns[i].request("GET", key) for i in idx))
                now = time.monotonic()
                for i, (s, hh, _) in zip(idx, res):
                    if hh.get("etag") != old or "fwd=miss" in hh.get("cache-status", ""):
                        pending.discard(i)
                        done_at = now
                    else:
                        stale += 1
            if pending:
                problems.append(f"run {run}: replicas {sorted(pending)} still served the purged value 10 s later")
            times.append((done_at - answered) * 1000)
            stale_after_answer.append(stale)
        return times, stale_after_answer, problems

    base.log(f"thirty: {THIRTY_RUNS} propagation runs")
    times, stale, problems = asyncio.run(main())
    out["propagation_ms"] = {"runs": len(times), "p50": round(pct(times, 50), 2), "p99": round(pct(times, 99), 2),
                             "max": round(max(times), 2)}
    out["stale_reads_after_answer"] = {"runs_with_any": sum(1 for s in stale if s), "total": sum(stale)}
    out["problems"] = problems[:20]
    base.log(f"thirty: propagation {out['propagation_ms']}, stale reads after the answer {out['stale_reads_after_answer']}")
    # Redis CPU per purge.
    c0 = redis_cpu(redis)
    time.sleep(IDLE_SECS)
    idle_rate = (redis_cpu(redis) - c0) / IDLE_SECS
    cpu = {"idle_pct_of_core": round(100 * idle_rate, 2)}
    for kind in ("key", "tag"):
        paths = [f"/items/cpu-{kind}-{i}" if kind == "key" else f"/tags/cpu-tag-{i}" for i in range(THIRTY_CPU_PURGES)]
        c0, t0 = redis_cpu(redis), time.monotonic()
        with ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda ip: delete(reps[ip[0] % THIRTY].base, ip[1]), enumerate(paths)))
        c1, t1 = redis_cpu(redis), time.monotonic()
        net = (c1 - c0) - idle_rate * (t1 - t0)
        cpu[kind] = {"purges": len(paths), "seconds": round(t1 - t0, 2), "redis_cpu_s": round(c1 - c0, 3),
                     "us_per_purge": round(1e6 * net / len(paths), 1),
                     "statuses": sorted({str(a[0]) for a in answers}),
                     "purges_per_s": round(len(paths) / (t1 - t0))}
    out["redis_cpu"] = cpu
    out["warn_lines"] = sum((r.log_lines("WARN", "ERROR")[:3] for r in reps), [])[:20]
    out["other_pct"] = round(other.pct(), 1)
    base.log(f"thirty: redis cpu {cpu}")
    for r in reps:
        r.stop()
    redis.stop()
    return out


def phase_rolling():
    out = {"quiet_pct": quiet("rolling")}
    other = cg.OtherLoad()
    redis = base.Redis(maxmemory_data=ROLL_REDIS_BYTES)
    stub = setup_stub()
    env = {"MEMORY_CACHE_MAX_BYTES": str(ROLL_BOUND)}
    reps = [Replica(f"roll-{i}", stub, redis.url, env) for i in range(3)]
    segments = []
    t0 = time.monotonic()
    seed = [100]

    def segment(name, up, secs, during=None):
        share = ROLL_RATE // len(up)
        s_served, s_t = stub.served(), time.monotonic()
        loads = []
        for r in up:
            seed[0] += 1
            loads.append(Load(r.base, share, "--pattern", "zipf", "--key-space", ROLL_KEYS, "--zipf-exponent",
                              ROLL_EXPONENT, "-c", 16, "--threads", 1, "--duration", f"{secs}s",
                              "--seed", seed[0], "--timeout", "10s", t0=t0))
        extra = during() if during else None
        res = [l.result() for l in loads]
        e_served, e_t = stub.served(), time.monotonic()
        lines = [x for r in res for x in r["lines"]]
        kinds = {}
        for r in res:
            for k, n in r["errors_by_kind"].items():
                kinds[k] = kinds.get(k, 0) + n
        seg = {"name": name, "up": [r.name for r in up], "seconds": round(e_t - s_t, 2),
               "requests": len(lines), "errors": sum(1 for x in lines if x[2]), "errors_by_kind": kinds,
               "origin_fetches": e_served - s_served, "origin_per_s": round((e_served - s_served) / (e_t - s_t), 1),
               "latency": lat(lines), "restart": extra}
        segments.append(seg)
        base.log(f"rolling: {name}: {json.dumps({k: v for k, v in seg.items() if k != 'up'})}")
        return lines

    def restart(r):
        def go():
            time.sleep(0.5)
            t = time.monotonic()
            r.proc.send_signal(signal.SIGTERM)
            code = r.proc.wait(timeout=60)
            exited = time.monotonic()
            r.start(wait=False)
            wait_ready(r.base)
            return {"replica": r.name, "exit_code": code, "exit_s": round(exited - t, 3),
                    "ready_again_s": round(time.monotonic() - exited, 3)}
        return go

    base.log(f"rolling: warm-up {ROLL_WARM_SECS} s")
    segment("warm-up", reps, ROLL_WARM_SECS)
    steady = segment("steady", reps, ROLL_STEADY_SECS)
    rollout = []
    for r in reps:
        others = [x for x in reps if x is not r]
        rollout += segment(f"{r.name} restarted", others, ROLL_DOWN_SECS, restart(r))
        rollout += segment(f"after {r.name}", reps, ROLL_UP_SECS)
    steady2 = segment("steady again", reps, ROLL_STEADY_SECS)
    out["segments"] = segments
    roll_segs = segments[2:-1]
    st = segments[1]
    roll_fetch = sum(s["origin_fetches"] for s in roll_segs) / sum(s["seconds"] for s in roll_segs)
    out["steady"] = {"latency": lat(steady), "origin_per_s": st["origin_per_s"]}
    out["steady_again"] = {"latency": lat(steady2), "origin_per_s": segments[-1]["origin_per_s"]}
    out["rollout"] = {"latency": lat(rollout), "origin_per_s": round(roll_fetch, 1),
                      "origin_per_s_worst_segment": max(s["origin_per_s"] for s in roll_segs),
                      "errors": sum(s["errors"] for s in roll_segs),
                      "errors_by_kind": {k: sum(s["errors_by_kind"].get(k, 0) for s in roll_segs)
                                         for s2 in roll_segs for k in s2["errors_by_kind"]}}
    out["warn_lines"] = sum((r.log_lines("WARN", "ERROR")[:10] for r in reps), [])[:30]
    out["other_pct"] = round(other.pct(), 1)
    for r in reps:
        r.stop()
    redis.stop()
    return out


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

def yes(ok):
    return "yes" if ok else "**no**"


def goals(res):
    rows = []
    p = res["phases"]
    if "huge" in p:
        h = p["huge"]
        pur = h["purge"]
        served = sum(s["purged_served"] for s in h["sample"].values())
        hits = sum(s["hits"] for s in h["sample"].values())
        rows.append((f"huge tag ({HUGE_KEYS:,} entries in memory on 2 replicas and in Redis): the purge answers 200 within 10 s",
                     f"{pur['status']} in {pur['ms'] / 1000:.2f} s", pur["status"] == 200 and pur["ms"] <= 10000))
        rows.append(("huge tag: from the answer, neither replica serves a purged value "
                     f"({HUGE_SAMPLE:,} random keys of the tag read on each right after it)",
                     f"{served} purged values served, {hits} hits of {2 * HUGE_SAMPLE}", served == 0 and hits == 0))
        for name, d in h["during"].items():
            base_p99 = h["baseline"][name]["p99"]
            w = d["purge_window"]
            if not w.get("requests"):
                rows.append((f"huge tag: hot-key p99 on {name} during the purge", "no request in the window", False))
                continue
            rows.append((f"huge tag: hot-key p99 on {name} during the purge ≤ 2× baseline, max ≤ 50 ms",
                         f"p99 {w['p99']:.2f} ms vs {base_p99:.2f} ms ({w['p99'] / base_p99:.1f}×), max {w['max']:.1f} ms "
                         f"({w['requests']} requests)", w["p99"] <= 2 * base_p99 and w["max"] <= 50))
    if "storm" in p:
        s = p["storm"]
        ok = sum(n for k, n in s["purges"]["statuses"].items() if k in ("200", "204")) == s["purges"]["count"]
        rows.append((f"storm: {s['purges']['count']} purges ({STORM_PARALLEL} at a time) under hot-key load all succeed",
                     ", ".join(f"{n} × {k}" for k, n in s["purges"]["statuses"].items()), ok))
        for name, d in s["during"].items():
            b = s["baseline"][name]["p99"]
            w = d["purge_window"]
            if not w.get("requests"):
                w = d["whole_run"]
                name += " (whole run: the storm was shorter than a request's spacing)"
            rows.append((f"storm: hot-key p99 on {name} ≤ 2× baseline",
                         f"{w['p99']:.2f} ms vs {b:.2f} ms ({w['p99'] / b:.1f}×), max {w['max']:.1f} ms",
                         w["p99"] <= 2 * b))
        kept = all(e["after"] == e["expected_after"] for e in s["entries"].values()) and \
            all(x["memory_hits"] == x["keys"] for x in s["unpurged_sample"].values())
        rows.append(("storm: memory-tier entries not purged all kept",
                     "; ".join(f"{n}: {e['before']} → {e['after']} (expected {e['expected_after']}), "
                               f"{s['unpurged_sample'][n]['memory_hits']}/{s['unpurged_sample'][n]['keys']} sampled unpurged keys memory hits"
                               for n, e in s["entries"].items()), kept))
    if "blackhole" in p:
        b = p["blackhole"]
        served = {n: c["purged_served"] for n, c in b["purged_check"].items()}
        rows.append((f"blackhole: after B reconnects, 0 purged entries served on either replica "
                     f"({b['purges']['count']} purges, {b['purges']['keys_purged']} keys)",
                     ", ".join(f"{n}: {v}" for n, v in served.items()) + f" (caught up {b['catch_up']['after_heal_s']} s "
                     f"after the heal, by {b['catch_up']['how']})", sum(served.values()) == 0 and b["catch_up"]["how"] is not None))
        rows.append(("blackhole: B's memory tier keeps ≥ 99 % of its unpurged entries",
                     f"{b['b_unpurged']['kept_pct']:.2f} % ({b['b_unpurged']['memory_hits']}/{b['b_unpurged']['keys']})",
                     b["b_unpurged"]["kept_pct"] >= 99))
    if "thirty" in p:
        t = p["thirty"]
        t["problems"] = [x for x in t["problems"] if "-> 204 b''" not in x]  # a key purge's success
        rows.append((f"{THIRTY} replicas: purge propagation p99 ≤ 100 ms ({t['propagation_ms']['runs']} purges)",
                     f"p50 {t['propagation_ms']['p50']:.1f} ms, p99 {t['propagation_ms']['p99']:.1f} ms, "
                     f"max {t['propagation_ms']['max']:.1f} ms", t["propagation_ms"]["p99"] <= 100 and not t["problems"]))
        c = t["redis_cpu"]
        rows.append((f"{THIRTY} replicas: Redis CPU per purge measured",
                     f"key purge {c['key']['us_per_purge']} µs, tag purge {c['tag']['us_per_purge']} µs", True))
    if "rolling" in p:
        r = p["rolling"]
        ro, st = r["rollout"], r["steady"]
        rows.append(("rolling restart of 3 replicas: 0 5xx",
                     f"{ro['errors']} errors" + (f" ({', '.join(f'{k} × {n}' for k, n in ro['errors_by_kind'].items())})"
                                                  if ro["errors"] else ""), ro["errors"] == 0))
        sr = st["origin_per_s"]
        rows.append(("rolling restart: origin fetch rate ≤ 1.2× steady state",
                     f"{ro['origin_per_s']:.1f}/s vs {sr:.1f}/s ({ro['origin_per_s'] / sr:.2f}×; worst window "
                     f"{ro['origin_per_s_worst_segment']:.1f}/s)" if sr else f"{ro['origin_per_s']}/s vs 0/s",
                     sr > 0 and ro["origin_per_s"] <= 1.2 * sr))
        rows.append(("rolling restart: p99 ≤ 1.5× steady state",
                     f"{ro['latency']['p99']:.2f} ms vs {st['latency']['p99']:.2f} ms "
                     f"({ro['latency']['p99'] / st['latency']['p99']:.2f}×)",
                     ro["latency"]["p99"] <= 1.5 * st["latency"]["p99"]))
    return rows


def render(res):
    knobs = ", ".join(f"{k}={v}" for k, v in res["settings"].items())
    p = res["phases"]
    L = ["<!-- purge-goals:begin -->", "## Purges that always land (issue 32): huge tag, storm, blackhole, thirty replicas, rolling restart", "",
         f"**Command:** `{res['command']}` ({knobs}). **Run:** {res['started']}–{res['finished']} UTC, "
         f"binaries of commit {res['bin_commit']} (release, `BIN_DIR={res['bin_dir']}`), script at {res['commit']}. "
         f"Replicas (one worker thread each) pinned to core 0, Redis to core {res.get('redis_core', '0')}"
         + (" under `SCHED_IDLE` (`REDIS_SCHED=idle`: it takes only the CPU the replicas and their sweepers leave "
            "of that core and never delays them, as a Redis on a machine of its own would not; see \"Redis under "
            "SCHED_IDLE\" below for the same phases with Redis at equal priority)"
            if res.get("redis_sched") == "idle" else "") + "; "
         "load tests, origin stub, the "
         "blackhole proxy and the script on core 1; every Redis fresh on a free port. A \"purged value served\" is a "
         "read after the purge answered from cache with a value the origin stub numbered before the purge.", ""]
    L += ["| goal | figure | met |", "| --- | --- | --- |"]
    L += [f"| {g} | {f} | {yes(m)} |" for g, f, m in goals(res)]
    L.append("")
    if "huge" in p:
        h = p["huge"]
        f = h["fill"]
        fills = ", ".join("%s %s s (%d entries, %.0f MiB)" % (n, v["seconds"], v["entries"], v["bytes"] / MIB)
                          for n, v in f.items() if isinstance(v, dict))
        L += [f"**Huge tag.** Fill: {fills}; "
              f"Redis {f['redis_keys']} keys. `DELETE /tags/huge` on huge-a answered {h['purge']['status']} in {h['purge']['ms']:.0f} ms: "
              f"`{h['purge']['body'][:160]}`; huge-b applied it {h['purge']['b_applied_after_sent_ms']} ms after it was sent "
              f"({h['purge']['b_applied_after_answer_ms']} ms after the answer). Hot key at {HOT_RATE} req/s on each replica:",
              "", "| replica | baseline p99 / max | purge window | p99 / max in it | whole run p99 / max |", "| --- | --- | --- | --- | --- |"]
        for n, d in h["during"].items():
            bl, w, wr = h["baseline"][n], d["purge_window"], d["whole_run"]
            L.append(f"| {n} | {bl['p99']:.2f} / {bl['max']:.1f} ms | {d['window_s'][0]}–{d['window_s'][1]} s "
                     f"({w.get('requests', 0)} requests) | {w.get('p99', 0):.2f} / {w.get('max', 0):.1f} ms | {wr['p99']:.2f} / {wr['max']:.1f} ms |")
        L += ["", "Read-back right after the answer: " + "; ".join(
            f"{n}: {s['hits']} hits, {s['misses']} misses, {s['errors']} errors, {s['purged_served']} purged values "
            f"(read from {s['read_from_answer_ms']} ms after the answer, took {s['read_took_ms']} ms)" for n, s in h["sample"].items()) + ".", ""]
    if "storm" in p:
        s = p["storm"]
        L += [f"**Storm.** {s['purges']['count']} purges ({s['purges']['keys_purged']} keys, sent by `curl --parallel`) in {s['purges']['seconds']} s, "
              f"each answered in p50 {s['purges']['ms_p50']} / p99 {s['purges']['ms_p99']} / max {s['purges']['ms_max']} ms. "
              "Purged keys read back afterwards: " + "; ".join(f"{n}: {c['purged_served']} purged values served of {c['keys']}"
                                                          for n, c in s["purged_check"].items()) + ".", ""]
    if "blackhole" in p:
        b = p["blackhole"]
        L += [f"**Blackhole.** Purges on bh-a during the blackhole: {', '.join(f'{n} × {k}' for k, n in b['purges']['statuses'].items())}. "
              f"bh-b's entries {b['entries_before']['bh-b']} → {b['entries_after']['bh-b']}; it caught up by {b['catch_up']['how']} "
              f"{b['catch_up']['after_heal_s']} s after the heal. Purged keys read back: " +
              "; ".join(f"{n}: {c['hits']} hits, {c['purged_served']} purged values" for n, c in b["purged_check"].items()) + ".", ""]
    if "thirty" in p:
        t = p["thirty"]
        c = t["redis_cpu"]
        L += [f"**Thirty replicas** (mean RSS {t['rss_mib']} MiB each). Runs alternate a key purge and a tag purge. "
              f"Reads after the answer that still got the purged value: {t['stale_reads_after_answer']['total']} "
              f"(in {t['stale_reads_after_answer']['runs_with_any']} runs). Redis CPU: idle {c['idle_pct_of_core']} % of a core "
              f"(30 replicas' pings); {c['key']['purges']} key purges in {c['key']['seconds']} s ({c['key']['redis_cpu_s']} s CPU), "
              f"{c['tag']['purges']} tag purges of empty tags in {c['tag']['seconds']} s ({c['tag']['redis_cpu_s']} s CPU), 8 at a time."
              + (f" Problems: {'; '.join(t['problems'][:5])}." if t["problems"] else ""), ""]
    if "rolling" in p:
        r = p["rolling"]
        L += ["**Rolling restart.**", "", "| window | replicas up | s | requests | errors | origin fetches/s | p99 | max | restart |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in r["segments"]:
            rs = s["restart"]
            L.append(f"| {s['name']} | {len(s['up'])} | {s['seconds']} | {s['requests']} | {s['errors']} | {s['origin_per_s']} | "
                     f"{s['latency'].get('p99', 0):.2f} ms | {s['latency'].get('max', 0):.1f} ms | "
                     + (f"exit {rs['exit_code']} after {rs['exit_s']} s, ready {rs['ready_again_s']} s later" if rs else "") + " |")
        L.append("")
    L += ["**Other processes** (not the benchmark's), % of one core, before / during each phase: " +
          "; ".join(f"{n} {v.get('quiet_pct')} / {v.get('other_pct')} %" for n, v in p.items()) + ".", ""]
    notes = res.get("notes", [])
    if notes:
        L += ["**Notes.** " + " ".join(notes), ""]
    L += ["<!-- purge-goals:end -->", ""]
    return "\n".join(L)


def main():
    global base, cg, LOG_DIR
    import run as base_mod
    import core_goals as cg_mod
    base, cg = base_mod, cg_mod
    base.RELEASE = os.environ.get("BIN_DIR", os.path.join(base.ROOT, "target", "release"))
    if sys.argv[1:2] == ["--render"]:
        with open(RESULTS) as f:
            res = json.load(f)
        text = render(res)
        base.write_section("purge-goals", text)
        print(text)
        return
    for binary in ("cache-layer", "cache-layer-loadtest", "origin-stub"):
        if not os.access(os.path.join(base.RELEASE, binary), os.X_OK):
            raise SystemExit(f"no {binary} in {base.RELEASE} (set BIN_DIR or build --release)")
    LOG_DIR = os.environ.get("LOG_DIR") or tempfile.mkdtemp(prefix="purge-goals-")
    os.makedirs(LOG_DIR, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 65536), hard), hard))
    os.sched_setaffinity(0, {int(base.CLIENT_CORE)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=base.ROOT,
                            capture_output=True, text=True).stdout.strip()
    bin_commit = os.environ.get("BIN_COMMIT", commit)
    env_prefix = "".join(f"{k}={os.environ[k]} " for k in ("BIN_DIR", "PHASES", "REDIS_CORE", "REDIS_SCHED") if k in os.environ)
    res = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "commit": commit,
           "bin_commit": bin_commit, "bin_dir": base.RELEASE, "log_dir": LOG_DIR,
           "command": f"{env_prefix}python3 bench/purge_goals.py",
           "settings": {k: globals()[k] if k != "PHASES" else " ".join(PHASES) for k in KNOBS},
           "redis_core": os.getenv("REDIS_CORE", base.SERVER_CORE),
           "redis_sched": os.getenv("REDIS_SCHED", "other"),
           "phases": {}, "notes": []}
    try:
        for phase in PHASES:
            fn = {"huge": phase_huge, "storm": phase_storm, "blackhole": phase_blackhole,
                  "thirty": phase_thirty, "rolling": phase_rolling}[phase]
            t = time.monotonic()
            r = fn()
            r["phase_seconds"] = round(time.monotonic() - t, 1)
            res["phases"][phase] = r
            with open(os.path.join(LOG_DIR, "partial.json"), "w") as f:
                json.dump(res, f, indent=1)
            base.stop_all()
            base.PROCS.clear()
    finally:
        base.stop_all()
    res["finished"] = datetime.now(timezone.utc).strftime("%H:%M")
    text = render(res)
    if os.environ.get("NO_WRITE") != "1":
        with open(RESULTS, "w") as f:
            json.dump(res, f, indent=1)
        base.write_section("purge-goals", text)
    print(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--proxy"]:
        asyncio.run(proxy_main(int(sys.argv[2]), int(sys.argv[3])))
    else:
        main()
