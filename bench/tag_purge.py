#!/usr/bin/env python3
"""Tag-purge benchmark: how fast a tag purge reaches every replica, and a soft tag
purge of every hot key under load.

Why this file exists: a purge is only as good as the moment the last replica stops serving what
it purged; and a soft purge of a whole dataset must not turn into a stampede on the origin or a
wave of misses. Measured with the release binaries on loopback (never asserted by a test).

  propagation  3 replicas sharing one Redis, each holding 10,000 keys tagged `big` in memory.
               RUNS times: DELETE /tags/big on replica 0; from its answer until replicas 1 and
               2 both count the message (cache_invalidations_total{scope="tag",
               source="remote"} rose; they apply the purge before counting it); then a 1 %
               sample of the keys (100 per replica, distinct) must miss on each replica; then
               every replica is warmed again (batch reads). Goal: p99 <= 50 ms.
  soft         The same 10,000 keys (tag `hot`) under load (cache-layer-loadtest, uniform over
               them, -c 32, LOAD_SECS) on replica 1; after 3 s a soft purge of `hot` on replica
               0, with a 50 ms origin. Goal: 0 misses and 0 errors seen by the load, and the
               origin's concurrency (the stub's max in flight) <= ORIGIN_MAX_CONCURRENCY.

Writes its section of docs/benchmarks.md between markers (and bench/sections/tag-purge.md).

Usage: python3 bench/tag_purge.py   (run `cargo build --release --bins` first)
"""
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402

RUNS = int(os.getenv("RUNS", "50"))
KEYS = int(os.getenv("KEYS", "10000"))
LOAD_SECS = int(os.getenv("LOAD_SECS", "12"))
TOKEN = "tag-purge-bench-admin-token"
SERIES = 'cache_invalidations_total{mode="hard",scope="tag",source="remote"'


def key(i, tag):
    # The loadtest's naming for --key-prefix k --suffix x~<tag>: `k<rank>-x~<tag>`; the stub
    # tags each answer with what follows `~`.
    return f"k{i}-x~{tag}"


def post_json(url, body):
    status, _, text = base.http("POST", url, body=json.dumps(body).encode(),
                                headers={"Content-Type": "application/json"})
    return status, text


def warm(replica, tag):
    for start in range(1, KEYS + 1, 1000):
        keys = [key(i, tag) for i in range(start, min(start + 1000, KEYS + 1))]
        status, text = post_json(f"{replica.base}/items:batch", {"keys": keys})
        assert status == 200, text[:200]


def metric(replica, series):
    text = base.http("GET", replica.base + "/metrics")[2].decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(series))


def delete(replica, path):
    status, _, text = base.http("DELETE", replica.base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    return status, text


def propagation(replicas):
    rng = random.Random(18)
    times = []
    for run in range(RUNS):
        for r in replicas:
            warm(r, "big")
        before = [metric(r, SERIES) for r in replicas[1:]]
        status, text = delete(replicas[0], "/tags/big")
        answered = time.perf_counter()
        assert status == 200, text
        pending = set(range(len(before)))
        while pending:
            for i in list(pending):
                if metric(replicas[1 + i], SERIES) > before[i]:
                    pending.discard(i)
            if time.perf_counter() - answered > 10:
                raise SystemExit("a replica did not apply the purge within 10 s")
        times.append((time.perf_counter() - answered) * 1000)
        sample = rng.sample(range(1, KEYS + 1), 100 * len(replicas))
        for n, r in enumerate(replicas):
            for i in sample[100 * n:100 * (n + 1)]:
                _, headers, _ = base.http("GET", f"{r.base}/items/{key(i, 'big')}")
                status = {k.lower(): v for k, v in headers.items()}.get("cache-status", "")
                assert "fwd=miss" in status, (r.base, i, status)
        base.log(f"propagation run {run + 1}/{RUNS}: {times[-1]:.1f} ms")
    return times


def soft(replicas, stub):
    for r in replicas:
        warm(r, "hot")
    base.http("POST", f"{stub.base}/_stub/reset")
    stub.latency(50)
    cmd = base.loadtest_cmd(replicas[1].base, "--pattern", "uniform", "--key-space", KEYS, "--key-prefix", "k",
                            "--suffix", "x~hot", "-c", 32, "--duration", f"{LOAD_SECS}s", "--seed", 3)
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(3)
    status, text = delete(replicas[0], "/tags/hot?soft=true")
    assert status == 200, text
    purged = json.loads(text)["purged"]
    out, _ = load.communicate(timeout=LOAD_SECS + 60)
    report = json.loads(out)
    stats = json.loads(base.http("GET", stub.base + "/_stub/stats")[2])
    stub.latency(0)
    return report, stats, purged


def main():
    started = datetime.now(timezone.utc)
    redis = base.Redis()
    stub = base.Stub()
    post_json(f"{stub.base}/_stub/headers", [["Surrogate-Key", "{tags}"]])
    env = {"ADMIN_TOKEN": TOKEN, "MEMORY_CACHE_MAX_BYTES": str(256 << 20), "REQUEST_TIMEOUT_SECS": "60"}
    replicas = [base.Contender("replica", stub, redis=redis, extra_env=env) for _ in range(3)]
    times = propagation(replicas)
    report, stats, purged = soft(replicas, stub)
    finished = datetime.now(timezone.utc)

    q = statistics.quantiles(times, n=100, method="inclusive")
    p50, p99 = statistics.median(times), q[98]
    misses, errors = report["misses"], report["errors"]
    max_in_flight = stats["max_in_flight"]
    lines = ["<!-- tag-purge:begin -->", "## Purge by tag: propagation and a soft purge under load", "",
             f"**Command:** `python3 bench/tag_purge.py` (RUNS={RUNS}, KEYS={KEYS}, LOAD_SECS={LOAD_SECS}). "
             f"**Run:** {started:%Y-%m-%d %H:%M}–{finished:%H:%M} UTC. Three replicas (release build, one worker "
             "thread each, pinned to core 0 with Redis) share one Redis; the origin stub tags every answer "
             "(`Surrogate-Key`).", "",
             f"**Propagation** ({KEYS} keys tagged `big`, held in memory by every replica): from the answer to "
             "`DELETE /tags/big` on replica 0 until replicas 1 and 2 have applied it (their "
             "`cache_invalidations_total{scope=\"tag\",source=\"remote\"}` rose; a replica applies a purge before "
             "counting it), then a 1 % sample of the keys missed on every replica (checked on every run).", "",
             "| runs | p50 | p99 | max |", "| --- | --- | --- | --- |",
             f"| {len(times)} | {p50:.1f} ms | {p99:.1f} ms | {max(times):.1f} ms |", "",
             f"**Soft purge under load:** cache-layer-loadtest uniform over the {KEYS} keys tagged `hot`, -c 32 for "
             f"{LOAD_SECS} s on replica 1; after 3 s `DELETE /tags/hot?soft=true` on replica 0 (purged: "
             f"{json.dumps(purged)}), origin latency 50 ms, ORIGIN_MAX_CONCURRENCY 64 (background refreshes at most 32).",
             "",
             "| requests | hits | misses | errors | origin fetches during the load | origin's max in flight |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| {report['requests']} | {report['hits']} | {misses} | {errors} | {stats['served']} | {max_in_flight} |",
             "", "| goal | figure | met |", "| --- | --- | --- |",
             f"| tag purge on every replica, p99 of {len(times)} runs ≤ 50 ms | {p99:.1f} ms | {'yes' if p99 <= 50 else 'no'} |",
             f"| soft purge of {KEYS} hot keys under load: 0 misses, 0 errors | {misses} misses, {errors} errors | "
             f"{'yes' if misses == 0 and errors == 0 else 'no'} |",
             f"| origin concurrency never above ORIGIN_MAX_CONCURRENCY (64) | {max_in_flight} | "
             f"{'yes' if max_in_flight <= 64 else 'no'} |",
             "<!-- tag-purge:end -->", ""]
    base.write_section("tag-purge", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    finally:
        base.stop_all()
