#!/usr/bin/env python3
"""A hot key's tail while 1,000 coalesced clients are answered a 1 MiB value in brotli, alone.

Why this file exists: `bench/core_goals.py` measures this burst inside a long run with a million
expiries and Zipf misses beside it (issue 31's goal); this isolates the burst, so that a change
to how big answers are written (src/http/turns.rs) can be compared build against build in a
few seconds a run. Figures only; never asserted by a test.

  origin        bench/core_goals.py's origin (`--origin`, core 1): `/items/big` answers a 1 MiB
                JSON catalogue after 300 ms, every other key `{"path":…}` after 1 ms
  cache-layer   release binary, memory tier, ORIGIN_URL at that origin, TOKIO_WORKER_THREADS=1,
                pinned to core 0
  load          cache-layer-loadtest on core 1: the hot key at RATE (5000) req/s over 32
                connections for SECS (10) s, open loop, one line per request
  burst         bench/core_goals.py's `burst` (core 1): CLIENTS (1,000) connections opened from
                1 s in, each sending `GET /items/big` with `Accept-Encoding: br` at BURST_AT (4) s
                in, every answer read whole (one origin fetch, one compression)

Per run: the hot key's p50/p99/p99.9/max, its requests over SLOW_MS (3) due in the burst's
second, the slowest of them, and when the burst's first and last answers arrived. RUNS (3) runs
per build, alternating builds.

Usage: BIN_DIR=target/release [OLD_BIN_DIR=… OLD_LABEL=… NEW_LABEL=…] python3 bench/coalesced_burst.py
       BUILDS='name=dir;name=dir;…' python3 bench/coalesced_burst.py   (any number of builds)
Writes bench/sections/coalesced-burst.md unless NO_WRITE=1 (docs/benchmarks.md is regenerated
with bench/report.py). About 20 s a run.
"""

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import core_goals  # noqa: E402  (the origin and the burst client)
import hotkey  # noqa: E402

RATE = int(os.getenv("RATE", "5000"))
SECS = int(os.getenv("SECS", "10"))
CLIENTS = int(os.getenv("CLIENTS", "1000"))
BURST_AT = float(os.getenv("BURST_AT", "4"))
SLOW_MS = float(os.getenv("SLOW_MS", "3"))
RUNS = int(os.getenv("RUNS", "3"))




def one_run(bin_dir):
    port, oport = hotkey.free_port(), hotkey.free_port()
    origin = subprocess.Popen(["taskset", "-c", "1", sys.executable, os.path.join(HERE, "core_goals.py"),
                               "--origin", str(oport), str(1 << 20), "300", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, LISTEN_ADDR=f"127.0.0.1:{port}", RUST_LOG="warn", TOKIO_WORKER_THREADS="1",
               CACHE_TTL_SECS="600", ORIGIN_URL=f"http://127.0.0.1:{oport}/items/{{key}}",
               ORIGIN_MAX_CONCURRENCY="256")
    svc = subprocess.Popen(["taskset", "-c", "0", f"{bin_dir}/cache-layer"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        hotkey.wait_answer(f"http://127.0.0.1:{port}/items/hot")
        t0 = time.monotonic() + 1  # after the load test's 1 s warm-up
        load = hotkey.start_load(bin_dir, port, RATE, SECS)
        burst = {}

        def client():
            os.sched_setaffinity(0, {1})
            while time.monotonic() < t0 + 1:
                time.sleep(0.01)
            core_goals.burst(port, CLIENTS, t0 + BURST_AT, burst)

        thread = threading.Thread(target=client)
        thread.start()
        out = load.communicate()[0].decode()
        thread.join()
    finally:
        svc.terminate()
        svc.wait()
        origin.terminate()
        origin.wait()
    lines = hotkey.lines(out, RATE, SECS)
    if burst.get("statuses", {}).get("200") != CLIENTS or burst.get("content_encoding", {}).get("br") != CLIENTS:
        raise SystemExit(f"the burst was not answered {CLIENTS} x 200 in br: {burst}")
    second = [ms for t, ms in lines if BURST_AT <= t < BURST_AT + 1]
    return {**hotkey.quantiles(lines),
            "slow": sum(1 for ms in second if ms > SLOW_MS), "second_max": max(second),
            "first_ms": burst.get("first_ms"), "last_ms": burst.get("last_ms"),
            "mib": burst.get("bytes_on_wire", 0) / (1 << 20)}


def main():
    builds = hotkey.builds_from_env(os.path.join(os.path.dirname(HERE), "target/release"))
    started = datetime.now(timezone.utc)
    results = hotkey.alternate(builds, RUNS, one_run, lambda name, i, r: (
        f"{name} run {i}: p99.9 {r['p999']:.2f} ms, over {SLOW_MS:g} ms in the burst's second "
        f"{r['slow']} (slowest {r['second_max']:.1f} ms), answers {r['first_ms']}-{r['last_ms']} ms"))
    rows = ["| build | run | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | requests over "
            f"{SLOW_MS:g} ms in the burst's second | slowest in it (ms) | burst answers, first / last (ms after "
            "sending) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, runs in results.items():
        for i, r in enumerate(runs, 1):
            rows.append(f"| {name} | {i} | {r['p50']:.3f} | {r['p99']:.3f} | {r['p999']:.2f} | {r['max']:.2f} | "
                        f"{r['slow']} | {r['second_max']:.1f} | {r['first_ms']:.0f} / {r['last_ms']:.0f} |")
    env = hotkey.command_env()
    mib = next(iter(results.values()))[0]["mib"]
    text = "\n".join([
        "### A hot key while 1,000 coalesced clients are answered 1 MiB in brotli (the burst alone)",
        "",
        f"`{env + ' ' if env else ''}python3 bench/coalesced_burst.py`, "
        f"{started.strftime('%Y-%m-%d %H:%M UTC')}. The hot key at {RATE:,} req/s over 32 connections "
        f"(open loop, {SECS} s, one worker on core 0); {BURST_AT:g} s in, {CLIENTS:,} clients ask for a "
        f"1 MiB value with `Accept-Encoding: br` at once: one origin fetch (300 ms), one compression, "
        f"{mib:.0f} MiB of answers. Builds: "
        + ", ".join(name if label == name else f"{name} `{label}`" for name, (_, label) in builds.items()) + ".",
        "",
        *rows,
        ""])
    if os.getenv("NO_WRITE") != "1":
        with open(os.path.join(HERE, "sections", "coalesced-burst.md"), "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
