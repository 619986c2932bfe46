#!/usr/bin/env python3
"""Benchmarks of batch reads (`POST /items:batch`), on loopback with the release
binaries: the service pinned to core 0, the load test and the origin stub to core 1.

Why this file exists: the issue sets three goals for batches against single requests; they are
measured here (never asserted by a test: figures from a shared 2-core VM) and written into
docs/benchmarks.md.

  redis   100 keys all in Redis (MEMORY_CACHE_ENABLED=false): p50 of one 100-key batch against
          p50 of one single-key Redis hit, each on one connection for RUN_SECS.
          Goal: batch p50 <= 3x the single hit's.
  memory  100 keys all in memory: keys/s of 100-key batches against keys/s of single GETs, each
          on one connection for RUN_SECS. Goal: >= 10x.
  cold    10 cold keys against a 200 ms origin, one batch, ROUNDS times with fresh keys.
          Goal: each batch completes in <= 300 ms (fetched concurrently, not one after another).

Usage: CARGO_TARGET_DIR=... cargo build --release --bins, then
       flock /tmp/cargo.lock python3 bench/batch.py   (RUN_SECS=5, ROUNDS=5 by default)
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402  (the shared helpers: spawn, Stub, Redis, loadtest)

ROOT = base.ROOT
# The binaries of this checkout's target directory (CARGO_TARGET_DIR when set).
base.RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
RELEASE = base.RELEASE
RUN_SECS = int(os.getenv("RUN_SECS", "5"))
ROUNDS = int(os.getenv("ROUNDS", "5"))
KEYS = 100


def service(stub, extra):
    """A release cache-layer in front of `stub`, with `extra` settings: (process, base URL)."""
    return base.service(stub, extra)


def post_batch(url, keys, timeout=30):
    """(seconds, parsed body) of one `POST /items:batch`."""
    body = json.dumps({"keys": keys}).encode()
    req = urllib.request.Request(url + "/items:batch", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    return time.perf_counter() - started, json.loads(data)


def warm(url, prefix):
    """Fetches keys <prefix>1..<prefix>100 once (a batch), so they are cached."""
    _, body = post_batch(url, [f"{prefix}{i}" for i in range(1, KEYS + 1)])
    assert all("value" in item for item in body["items"]), body


def single_and_batch(url, prefix):
    """The load test on one connection: single GETs over the 100 keys, then 100-key batches."""
    common = ["--pattern", "cycle", "--key-space", KEYS, "--key-prefix", prefix, "-c", "1",
              "--threads", "1", "--duration", f"{RUN_SECS}s", "--warmup", "1s"]
    single = base.loadtest(url, *common)
    batch = base.loadtest(url, *common, "--batch", KEYS)
    return single, batch


def summary(report):
    return {"requests": report["requests"], "keys_per_s": report["keys_per_s"],
            "p50_ms": report["latency_ms"]["p50"], "p99_ms": report["latency_ms"]["p99"],
            "hits_by_tier": {k: v for k, v in report["hits_by_tier"].items() if v},
            "errors": report["errors"]}


def section_redis(stub):
    redis = base.Redis()
    proc, url = service(stub, {"REDIS_URL": redis.url, "MEMORY_CACHE_ENABLED": "false"})
    warm(url, "r")
    single, batch = single_and_batch(url, "r")
    base.stop(proc)
    redis.stop()
    return {"single": summary(single), "batch": summary(batch)}


def section_memory(stub):
    proc, url = service(stub, {})
    warm(url, "m")
    single, batch = single_and_batch(url, "m")
    base.stop(proc)
    return {"single": summary(single), "batch": summary(batch)}


def section_cold(stub):
    stub.latency(200)
    proc, url = service(stub, {})
    rounds = []
    for r in range(ROUNDS):
        took, body = post_batch(url, [f"cold-{r}-{i}" for i in range(10)])
        fetched = sum(1 for item in body["items"] if item.get("source") == "origin")
        rounds.append({"ms": took * 1000, "fetched": fetched})
    base.stop(proc)
    stub.latency(0)
    return rounds


def markdown(results):
    lines = ["<!-- batch:begin -->", "## Batch reads (`POST /items:batch`)", "",
             f"**Run:** {results['started']}–{results['finished']} UTC, commit `{results['commit']}`. "
             f"**Command:** `python3 bench/batch.py` (after `cargo build --release --bins`; "
             f"RUN_SECS={RUN_SECS}, ROUNDS={ROUNDS}). The service on core 0, `cache-layer-loadtest` "
             "and the origin stub on core 1, loopback, one connection each. Single requests are "
             f"`GET /items/{{key}}` cycling over the same {KEYS} keys (`--pattern cycle`); a batch "
             f"asks for all {KEYS} at once (`--batch {KEYS}`). Latency is per request (a batch is "
             "one request).", "",
             "| case | requests | keys/s | p50 (ms) | p99 (ms) | answered from | errors |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, title in (("redis", "Redis only"), ("memory", "memory")):
        for kind in ("single", "batch"):
            r = results[name][kind]
            tiers = ", ".join(f"{k} {v}" for k, v in r["hits_by_tier"].items()) or "—"
            label = f"{title}: single GET" if kind == "single" else f"{title}: {KEYS}-key batch"
            lines.append(f"| {label} | {r['requests']} | {r['keys_per_s']:,.0f} | {r['p50_ms']:.3f} | "
                         f"{r['p99_ms']:.3f} | {tiers} | {r['errors']} |")
    redis, memory, cold = results["redis"], results["memory"], results["cold"]
    p50_ratio = redis["batch"]["p50_ms"] / redis["single"]["p50_ms"]
    keys_ratio = memory["batch"]["keys_per_s"] / memory["single"]["keys_per_s"]
    worst = max(r["ms"] for r in cold)
    lines += ["", f"Cold batches (10 keys never seen, origin stub at 200 ms; {ROUNDS} rounds): "
              + ", ".join(f"{r['ms']:.0f} ms ({r['fetched']} fetched)" for r in cold) + ".", "",
              "| goal | measured | met |", "| --- | --- | --- |",
              f"| 100 keys in Redis: batch p50 ≤ 3 × single Redis hit p50 | "
              f"{redis['batch']['p50_ms']:.3f} ms vs {redis['single']['p50_ms']:.3f} ms: "
              f"{p50_ratio:.2f}× | {'yes' if p50_ratio <= 3 else 'no'} |",
              f"| 100 keys in memory: batch keys/s ≥ 10 × single GETs' (one connection) | "
              f"{memory['batch']['keys_per_s']:,.0f} vs {memory['single']['keys_per_s']:,.0f}: "
              f"{keys_ratio:.1f}× | {'yes' if keys_ratio >= 10 else 'no'} |",
              f"| 10 cold keys, 200 ms origin: batch ≤ 300 ms | slowest of {ROUNDS}: {worst:.0f} ms | "
              f"{'yes' if worst <= 300 else 'no'} |", "", "<!-- batch:end -->"]
    return "\n".join(lines) + "\n"


def main():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    stamp = lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")  # noqa: E731
    results = {"started": stamp(), "commit": commit}
    stub = base.Stub()
    results["redis"] = section_redis(stub)
    results["memory"] = section_memory(stub)
    results["cold"] = section_cold(stub)
    results["finished"] = stamp()[11:]
    base.write_section("batch", markdown(results))
    with open(os.path.join(ROOT, "bench", "results-batch.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(markdown(results))


if __name__ == "__main__":
    main()
