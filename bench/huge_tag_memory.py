#!/usr/bin/env python3
"""A huge tag purged from one replica's memory tier, with the hot key under load: what the purge
costs the hit path, without Redis or a second replica sharing the core (bench/purge_goals.py's
`huge` phase has both, and its figures mix their CPU with the purge's own work).

One cache-layer (TOKIO_WORKER_THREADS=1, memory tier 1.5 GiB, no Redis) on the service core;
KEYS (1,000,000) keys `k<i>-x~huge` filled by batch reads; the hot key at 5,000 req/s open loop
(-c 32) for 12 s, `DELETE /tags/huge` 4 s in; the hot key's latency before, during and after the
purge, and the worst 100 ms windows.

Usage: KEYS=300000 python3 bench/huge_tag_memory.py   (release binaries in target/release, or
RELEASE_DIR=…); LOG_DIR for the service's log (default /tmp/huge).
"""
import os, sys, json, time, subprocess
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("LOG_DIR", "/tmp/huge")
os.makedirs(os.environ["LOG_DIR"], exist_ok=True)
import purge_goals as pg
import run as base
import core_goals as cg
pg.base, pg.cg, pg.LOG_DIR = base, cg, os.environ["LOG_DIR"]
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 65536), hard), hard))
os.sched_setaffinity(0, {int(base.CLIENT_CORE)})
KEYS = int(os.getenv("KEYS", "1000000"))
stub = pg.setup_stub()
r = pg.Replica.__new__(pg.Replica)
r.name = "solo"; r.port = base.free_port(); r.base = f"http://127.0.0.1:{r.port}"; r.log = os.path.join(os.environ["LOG_DIR"], "solo.log")
r.env = {"LISTEN_ADDR": f"127.0.0.1:{r.port}", "TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn",
         "ORIGIN_URL": f"{stub.base}/items/{{key}}", "CACHE_TTL_SECS": "600", "ADMIN_TOKEN": pg.TOKEN,
         "REQUEST_TIMEOUT_SECS": "60", "MEMORY_CACHE_MAX_BYTES": str(1536 << 20)}
r.start()
t = time.monotonic()
rep = json.loads(subprocess.run(base.loadtest_cmd(r.base, "--pattern", "cycle", "--key-prefix", "k", "--suffix", "x~huge",
    "--key-space", KEYS, "--batch", 100, "--requests", -(-KEYS // 100), "-c", 8, "--duration", "900s"), capture_output=True, text=True).stdout)
print("fill", round(time.monotonic() - t, 1), "s entries", r.metric("memory_cache_entries"), flush=True)
pg.warm_hot([r])
t0 = time.monotonic()
loads = pg.hot_loads([r], 12, t0)
time.sleep(4)
sent = time.monotonic()
status, text, ms = pg.delete(r.base, "/tags/huge")
answered = time.monotonic()
print("purge", status, round(ms), "ms", text[:120], flush=True)
x = loads[0].result()
print("before", pg.lat(x["lines"], 0, sent - t0))
print("during", pg.lat(x["lines"], sent - t0, answered - t0))
print("after", pg.lat(x["lines"], answered - t0, 12))
# worst windows of 100 ms
lines = x["lines"]
import collections
buckets = collections.defaultdict(list)
for due, ms_, err in lines:
    buckets[int(due * 10)].append(ms_)
worst = sorted(((max(v), k / 10) for k, v in buckets.items()), reverse=True)[:8]
print("worst 100ms windows (max ms, at s):", worst, "purge sent at", round(sent - t0, 2), "answered", round(answered - t0, 2))
print("entries after", r.metric("memory_cache_entries"))
r.stop()
