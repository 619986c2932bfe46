#!/usr/bin/env python3
"""Benchmarks of the hardening issue: the memory bound against RSS, and big Redis values.

Why this file exists: the memory tier's byte bound is a promise operators size pods by, and one
oversized value in Redis must not stall a replica's other traffic. Both are measured here with
the release binaries on loopback (never asserted by a test: figures from a shared 2-core VM).

Sections (SECTIONS, default both):
  rss   Four floods through HTTP, RSS of the service sampled every 0.5 s from /proc:
        1,000,000 unique small keys, and 20,000 unique ~500 KB values (-c 32,
        ORIGIN_MAX_CONCURRENCY=8), each at MEMORY_CACHE_MAX_BYTES 32 MiB and 128 MiB.
        Goal: peak RSS <= 1.2 x bound + 32 MiB.
  bigvalue
        A Redis-only replica (MEMORY_CACHE_ENABLED=false) serving warm keys at 500 req/s for
        RUN_SECS, once plain and once while 8 x 50 MB values are written under entry keys and
        requested. Goal: 0 5xx, p99 within 2x of the plain run.

Writes its section of docs/benchmarks.md between markers (and bench/sections/hardening.md, which
bench/report.py appends when it regenerates the page).

Usage: python3 bench/hardening.py   (builds nothing: run `cargo build --release --bins` first)
"""

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402  (the shared helpers: spawn, Stub, Redis, loadtest)

ROOT = base.ROOT
RELEASE = base.RELEASE
SECTIONS = os.getenv("SECTIONS", "rss bigvalue").split()
RUN_SECS = int(os.getenv("RUN_SECS", "20"))
MIB = 1024 * 1024
BEGIN, END = "<!-- hardening:begin -->", "<!-- hardening:end -->"




def service(stub, extra):
    """A release cache-layer in front of `stub`, with `extra` settings: (process, base URL)."""
    return base.service(stub, extra)




def flood(kind, bound):
    """One flood; RSS samples every 0.5 s while it runs."""
    stub = base.Stub()
    extra = {"MEMORY_CACHE_MAX_BYTES": str(bound)}
    if kind == "small":
        args = ["--pattern", "uniform", "--key-space", "1000000000", "--requests", "1000000",
                "-c", "32", "--duration", "300s"]
    else:
        base.http("POST", f"{stub.base}/_stub/config?mode=bytes:500000")
        extra["ORIGIN_MAX_CONCURRENCY"] = "8"
        args = ["--pattern", "uniform", "--key-space", "1000000000", "--requests", "20000",
                "-c", "32", "--duration", "300s"]
    proc, url = service(stub, extra)
    samples, done = [], threading.Event()

    def sample():
        start = time.time()
        while not done.is_set():
            samples.append((round(time.time() - start, 1), base.rss_bytes(proc.pid)))
            time.sleep(0.5)

    t = threading.Thread(target=sample)
    t.start()
    report = base.loadtest(url, *args)
    time.sleep(2)
    done.set()
    t.join()
    row = {
        "kind": kind, "bound": bound, "requests": report["requests"],
        "errors": report.get("errors", 0),
        "peak_rss": max(s[1] for s in samples), "final_rss": samples[-1][1],
        "tier_bytes": base.metric(url, "memory_cache_bytes"),
        "entries": base.metric(url, "memory_cache_entries"),
        "limit": 1.2 * bound + 32 * MIB,
        "samples": samples[:: max(1, len(samples) // 20)],
    }
    base.stop(proc)
    base.stop_all()
    base.PROCS.clear()
    return row


def section_rss():
    rows = []
    for kind in ("small", "large"):
        for bound in (32 * MIB, 128 * MIB):
            base.log(f"rss: {kind} values, bound {bound // MIB} MiB")
            rows.append(flood(kind, bound))
    return rows


def percentile(report, p):
    return report["latency_ms"][p]


def bigvalue_run(with_big):
    redis = base.Redis()
    stub = base.Stub()
    proc, url = service(stub, {"REDIS_URL": redis.url, "MEMORY_CACHE_ENABLED": "false"})
    for _ in range(200):
        if json.loads(base.http("GET", url + "/health")[2])["tiers"]["redis"] == "ok":
            break
        time.sleep(0.05)
    # Warm 1,000 keys into Redis.
    base.loadtest(url, "--pattern", "uniform", "--key-space", "1000", "--requests", "5000",
                  "-c", "8")
    stop = threading.Event()
    big_reads = []

    def write_big():
        """The 50 MB values go in before the measured run: what is measured is their reads."""
        path = "/tmp/cache-layer-bench-big"
        with open(path, "wb") as f:
            f.write(b"x" * 50_000_000)
        for i in range(8):
            with open(path, "rb") as f:
                subprocess.run(["redis-cli", "-p", str(redis.port), "-x", "SET",
                                f"cache-layer:v1:k:big-{i}"], stdin=f, capture_output=True)
        os.unlink(path)

    def big():
        for i in range(8):
            if stop.is_set():
                break
            time.sleep(RUN_SECS / 10)
            big_reads.append(base.http("GET", f"{url}/items/big-{i}")[0])

    if with_big:
        write_big()
    t = threading.Thread(target=big) if with_big else None
    if t:
        t.start()
    report = base.loadtest(url, "--pattern", "uniform", "--key-space", "1000", "--rate", "500",
                           "-c", "16", "--duration", f"{RUN_SECS}s")
    stop.set()
    if t:
        t.join()
    errors = {k: v for k, v in report.get("errors_by_kind", {}).items() if k.startswith("5")}
    row = {"with_big": with_big, "requests": report["requests"],
           "p50_ms": percentile(report, "p50"), "p99_ms": percentile(report, "p99"),
           "max_ms": percentile(report, "max"), "errors": errors, "big_reads": big_reads,
           "redis_get_errors": base.metric(url, "redis_errors_total{operation=\"get\""),
           "health": json.loads(base.http("GET", url + "/health")[2])["tiers"]["redis"]}
    base.stop_all()
    base.PROCS.clear()
    return row


def section_bigvalue():
    return [bigvalue_run(False), bigvalue_run(True)]


def markdown(results):
    lines = [BEGIN, "## Hardening: the memory bound and oversized Redis values", "",
             "**Command:** `python3 bench/hardening.py` (after `cargo build --release --bins`; "
             "`SECTIONS=rss` or `SECTIONS=bigvalue` runs one section and keeps the other's last "
             "figures).", ""]
    runs = results.get("runs", {})
    if "rss" in results:
        lines += ["### RSS under floods of unique keys", "", f"**Run:** {runs.get('rss', '?')}.", "",
                  "The service's RSS (from `/proc`, every 0.5 s) while `cache-layer-loadtest` "
                  "floods it with unique keys through the origin stub (`-c 32`; the 500 KB run "
                  "with `ORIGIN_MAX_CONCURRENCY=8`, so bodies in flight stay few: the fetches over "
                  "that limit are the `503`s counted in brackets). Goal: peak RSS "
                  "≤ 1.2 × bound + 32 MiB.", "",
                  "| flood | bound | requests (503s) | entries held | `memory_cache_bytes` | peak RSS | "
                  "final RSS | limit | met |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["rss"]:
            kind = "unique small keys" if r["kind"] == "small" else "unique ~500 KB values"
            lines.append(
                f"| {kind} | {r['bound'] // MIB} MiB | {r['requests']} ({r['errors']}) | {int(r['entries'])} | "
                f"{r['tier_bytes'] / MIB:.1f} MiB | {r['peak_rss'] / MIB:.1f} MiB | "
                f"{r['final_rss'] / MIB:.1f} MiB | {r['limit'] / MIB:.1f} MiB | "
                f"{'yes' if r['peak_rss'] <= r['limit'] else 'no'} |")
        lines += ["", "RSS over time (s: MiB), one sample in twenty:", ""]
        for r in results["rss"]:
            series = ", ".join(f"{t:g}: {b / MIB:.0f}" for t, b in r["samples"])
            lines.append(f"- {r['kind']} values, {r['bound'] // MIB} MiB: {series}")
        lines.append("")
    if "bigvalue" in results:
        plain, big = results["bigvalue"]
        lines += ["### Unrelated traffic while 50 MB values sit in Redis", "",
                  f"**Run:** {runs.get('bigvalue', '?')}.", "",
                  f"A Redis-only replica (`MEMORY_CACHE_ENABLED=false`) serves 1,000 warm keys at "
                  f"500 req/s for {RUN_SECS} s; for the second run 8 values of 50 MB are written "
                  "under entry keys first (`redis-cli -x SET`), and requested one by one during it. "
                  "Goal: 0 5xx, p99 within 2× of the plain run.", "",
                  "| run | requests | p50 (ms) | p99 (ms) | max (ms) | errors | big-key answers | "
                  "`redis_errors_total{operation=\"get\"}` | Redis in `/health` |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in (("plain", plain), ("8 × 50 MB values", big)):
            errors = ", ".join(f"{k} × {v}" for k, v in r["errors"].items()) or "none"
            reads = ", ".join(map(str, r["big_reads"])) or "—"
            lines.append(f"| {name} | {r['requests']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                         f"{r['max_ms']:.3f} | {errors} | {reads} | {int(r['redis_get_errors'])} | "
                         f"{r['health']} |")
        ratio = big["p99_ms"] / plain["p99_ms"] if plain["p99_ms"] else float("inf")
        lines += ["", f"p99 with the big values: {ratio:.2f}× the plain run's "
                  f"({'met' if ratio <= 2 and not big['errors'] else 'not met'}).", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write(results):
    base.write_section("hardening", markdown(results))
    with open(os.path.join(ROOT, "bench", "results-hardening.json"), "w") as f:
        json.dump(results, f, indent=1)


def main():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    results = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "commit": commit}
    # A run of one section keeps the other's last figures (SECTIONS=bigvalue, say).
    previous = os.path.join(ROOT, "bench", "results-hardening.json")
    if os.path.exists(previous):
        with open(previous) as f:
            kept = json.load(f)
        results.update({k: kept[k] for k in ("rss", "bigvalue") if k in kept and k not in SECTIONS})
        results["runs"] = {k: v for k, v in kept.get("runs", {}).items() if k not in SECTIONS}
    results.setdefault("runs", {})

    def stamp():
        return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")

    for name, section in (("rss", section_rss), ("bigvalue", section_bigvalue)):
        if name in SECTIONS:
            started = stamp()
            results[name] = section()
            results["runs"][name] = f"{started}–{stamp()[11:]} UTC, commit `{commit}`"
    results["finished"] = datetime.now(timezone.utc).strftime("%H:%M")
    write(results)
    print(markdown(results))


if __name__ == "__main__":
    main()
