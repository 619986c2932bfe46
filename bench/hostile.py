#!/usr/bin/env python3
"""Benchmark of batches under hostile load: clients that ask for a large value a thousand times
and never read the answer.

Why this file exists: a batch answer used to be built whole, so three such clients held ~3 GB
and slowed every other request. The goal is that three non-reading connections, each asking
for 1,000 x a 1 MB key, grow the service's RSS by < 64 MiB in all, and that a concurrent
hot-key GET's p99 stays within 2x of its run without them. Measured with the release binaries
on loopback (a shared 2-core VM: never asserted by a test).

Each run: a release cache-layer in front of the origin stub (`bytes:1000000`), `big1` cached;
hot-key traffic (`--pattern single`, fixed rate) measured once alone and once while the three
stalled batches (JSON, NDJSON, JSON) are open; RSS sampled from /proc before and during.

Writes its section of docs/benchmarks.md between markers (and bench/sections/hostile.md).

Usage: python3 bench/hostile.py   (run `cargo build --release --bins` first)
"""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402  (the shared helpers: spawn, Stub, loadtest)

RATE = int(os.getenv("RATE", "2000"))
SECS = int(os.getenv("SECS", "10"))
ROUNDS = int(os.getenv("ROUNDS", "3"))
MIB = 1024 * 1024
BEGIN, END = "<!-- hostile:begin -->", "<!-- hostile:end -->"




def stalled_batch(port, accept):
    """A connection that asks for 1,000 x big1 and never reads the answer."""
    body = json.dumps({"keys": ["big1"] * 1000}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    head = (f"POST /items:batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Accept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    s.sendall(head + body)
    return s


def hot(url):
    report = base.loadtest(url, "--pattern", "single", "--key", "hot", "--rate", str(RATE),
                           "-c", "8", "--duration", f"{SECS}s", "--warmup", "1s")
    return report["latency_ms"]


def one_round():
    stub = base.Stub()
    base.http("POST", f"{stub.base}/_stub/config?mode=bytes:1000000")
    proc, url = base.service(stub, {"ORIGIN_MAX_BODY_BYTES": "2000000",
                                    "HTTP_WRITE_TIMEOUT_SECS": "600"})
    port = int(url.rsplit(":", 1)[1])
    base.http("GET", url + "/items/big1")
    base.http("GET", url + "/items/hot")
    alone = hot(url)
    before = base.rss_bytes(proc.pid)
    conns = [stalled_batch(port, a) for a in
             ("application/json", "application/x-ndjson", "application/json")]
    time.sleep(2)
    peak = [base.rss_bytes(proc.pid)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak.append(base.rss_bytes(proc.pid))
            time.sleep(0.25)

    t = threading.Thread(target=sample)
    t.start()
    stalled = hot(url)
    done.set()
    t.join()
    for c in conns:
        c.close()
    row = {"rss_before": before, "rss_peak": max(peak), "grown": max(peak) - before,
           "p99_alone": alone["p99"], "p99_stalled": stalled["p99"],
           "p999_alone": alone["p999"], "p999_stalled": stalled["p999"]}
    base.stop_all()
    base.PROCS.clear()
    return row


def markdown(results):
    rows = results["rounds"]
    lines = [BEGIN, "## Hostile batches: clients that never read", "",
             "**Command:** `python3 bench/hostile.py` (after `cargo build --release --bins`).", "",
             f"**Run:** {results['started']}–{results['finished']} UTC, commit `{results['commit']}`.",
             "",
             "Three connections each send `POST /items:batch` with 1,000 × a cached 1 MB key (JSON, "
             "NDJSON, JSON: about 1 GB of answer each) and never read. Meanwhile hot-key `GET`s run "
             f"at {RATE} req/s for {SECS} s (`--pattern single`, 8 connections); the same run without "
             "the stalled batches is the baseline. Goals: RSS grows by < 64 MiB in all; hot-key p99 "
             "within 2× of the baseline.", "",
             "| round | RSS before | peak RSS with 3 stalled batches | grown | p99 alone (ms) | "
             "p99 with them (ms) | ratio | p99.9 alone / with (ms) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(rows, 1):
        ratio = r["p99_stalled"] / r["p99_alone"] if r["p99_alone"] else float("inf")
        lines.append(f"| {i} | {r['rss_before'] / MIB:.1f} MiB | {r['rss_peak'] / MIB:.1f} MiB | "
                     f"{r['grown'] / MIB:.1f} MiB | {r['p99_alone']:.3f} | {r['p99_stalled']:.3f} | "
                     f"{ratio:.2f} | {r['p999_alone']:.3f} / {r['p999_stalled']:.3f} |")
    grown = max(r["grown"] for r in rows)
    ratios = sorted(r["p99_stalled"] / r["p99_alone"] for r in rows if r["p99_alone"])
    median = ratios[len(ratios) // 2] if ratios else float("inf")
    lines += ["", f"Largest growth {grown / MIB:.1f} MiB (goal < 64: "
              f"{'met' if grown < 64 * MIB else 'not met'}); median p99 ratio {median:.2f} "
              f"(goal ≤ 2: {'met' if median <= 2 else 'not met'}).", "", END]
    return "\n".join(lines) + "\n"


def rounds():
    for i in range(ROUNDS):
        base.log(f"hostile: round {i + 1} of {ROUNDS}")
        yield one_round()


if __name__ == "__main__":
    base.run_section("hostile", "rounds", rounds, markdown)
