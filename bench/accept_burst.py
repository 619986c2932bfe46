#!/usr/bin/env python3
"""A hot key's tail while a thousand new connections arrive at once.

Why this file exists: Linux grows a process's descriptor table by doubling, and in a
multi-threaded process each growth waits for an RCU grace period inside the `accept` that needs
it (`expand_files` -> `synchronize_rcu`, 10-20 ms here). The accept loop runs on an async worker,
so every hit on that worker waited with it. The service now grows the table at start-up for
`HTTP_MAX_CONNECTIONS` (src/http/server.rs `presize_descriptor_table`). This measures what a
connection burst costs a hot key's hits, for one build or two side by side (figures only; the
test `hardening::the_descriptor_table_is_grown_for_every_connection_at_start_up` checks the
table's size).

  cache-layer   release binary, embedded defaults (memory tier, simulated origin),
                TOKIO_WORKER_THREADS=1, pinned to core 0
  load          cache-layer-loadtest on core 1: `--pattern single --key hot --rate RATE (5000)
                -c 32 --duration SECS (12)s --warmup 1s --per-request` (open loop: request i was
                due i/RATE s into the measured run)
  burst         this script on core 1, OPEN_AT (4) s into the measured run: CONNS (1000)
                connections opened one after another as fast as they go, then held open idle

Per build: the hot key's p50/p99/p99.9/max over the run, and the requests over SLOW_MS (3) due
in the second from OPEN_AT (the burst) against a second before it. RUNS (3) runs per build,
alternating builds.

Usage: BIN_DIR=target/release [OLD_BIN_DIR=/path/to/older/binaries] [NEW_LABEL=… OLD_LABEL=…]
       python3 bench/accept_burst.py
Writes bench/sections/accept-burst.md unless NO_WRITE=1 (docs/benchmarks.md is regenerated with
bench/report.py). About 15 s a run.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hotkey  # noqa: E402

RATE = int(os.getenv("RATE", "5000"))
SECS = int(os.getenv("SECS", "12"))
CONNS = int(os.getenv("CONNS", "1000"))
OPEN_AT = float(os.getenv("OPEN_AT", "4"))
SLOW_MS = float(os.getenv("SLOW_MS", "3"))
RUNS = int(os.getenv("RUNS", "3"))



def table_size(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("FDSize:")).split()[1])


def one_run(bin_dir):
    port = hotkey.free_port()
    env = dict(os.environ, LISTEN_ADDR=f"127.0.0.1:{port}", RUST_LOG="warn", TOKIO_WORKER_THREADS="1",
               CACHE_TTL_SECS="600")
    svc = subprocess.Popen(["taskset", "-c", "0", f"{bin_dir}/cache-layer"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        hotkey.wait_answer(f"http://127.0.0.1:{port}/items/hot")
        table_before = table_size(svc.pid)
        t0 = time.monotonic() + 1  # after the load test's 1 s warm-up
        load = hotkey.start_load(bin_dir, port, RATE, SECS)
        socks, opened = [], {}

        def opener():
            os.sched_setaffinity(0, {1})
            while time.monotonic() < t0 + OPEN_AT:
                time.sleep(0.005)
            a = time.monotonic()
            for _ in range(CONNS):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
            opened["at_s"], opened["in_ms"] = a - t0, (time.monotonic() - a) * 1000

        thread = threading.Thread(target=opener)
        thread.start()
        out = load.communicate()[0].decode()
        thread.join()
        table_after = table_size(svc.pid)
        for s in socks:
            s.close()
    finally:
        svc.terminate()
        svc.wait()
    lines = hotkey.lines(out, RATE, SECS)

    def slow(a, b):
        return sum(1 for t, ms in lines if a <= t < b and ms > SLOW_MS)

    burst = [ms for t, ms in lines if OPEN_AT <= t < OPEN_AT + 1]
    return {**hotkey.quantiles(lines),
            "slow_burst": slow(OPEN_AT, OPEN_AT + 1), "slow_before": slow(OPEN_AT - 1, OPEN_AT),
            "burst_max": max(burst), "opened_in_ms": opened.get("in_ms"),
            "table_before": table_before, "table_after": table_after}


def main():
    builds = hotkey.builds_from_env(os.path.join(os.path.dirname(HERE), "target/release"))
    started = datetime.now(timezone.utc)
    results = hotkey.alternate(builds, RUNS, one_run, lambda name, i, r: (
        f"{name} run {i}: p99.9 {r['p999']:.2f} ms, max {r['max']:.2f} ms, over {SLOW_MS} ms in "
        f"the burst's second {r['slow_burst']} (the second before: {r['slow_before']}), "
        f"{CONNS} opened in {r['opened_in_ms']:.0f} ms, descriptor table {r['table_before']} -> "
        f"{r['table_after']}"))
    rows = ["| build | run | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | requests over "
            f"{SLOW_MS:g} ms: burst second / second before | slowest in the burst second (ms) | "
            "connections opened in (ms) | descriptor table before → after |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, runs in results.items():
        for i, r in enumerate(runs, 1):
            rows.append(f"| {name} | {i} | {r['p50']:.3f} | {r['p99']:.3f} | {r['p999']:.2f} | {r['max']:.2f} | "
                        f"{r['slow_burst']} / {r['slow_before']} | {r['burst_max']:.2f} | {r['opened_in_ms']:.0f} | "
                        f"{r['table_before']} → {r['table_after']} |")
    when = started.strftime("%Y-%m-%d %H:%M UTC")
    env = hotkey.command_env()
    text = "\n".join([
        "### A hot key while 1,000 connections arrive at once (descriptor table grown at start-up)",
        "",
        f"`{env + ' ' if env else ''}python3 bench/accept_burst.py`, {when}. The hot key at {RATE:,} req/s "
        f"over 32 connections (open loop, {SECS} s, one worker on core 0); {OPEN_AT:g} s in, {CONNS:,} new "
        "connections opened back to back from core 1 and held idle. Builds: "
        + ", ".join(f"{name} `{label}`" for name, (_, label) in builds.items()) + ".",
        "",
        *rows,
        "",
        "Read: before, the `accept`s that crossed 256, 512 and 1,024 open descriptors each slept for "
        "an RCU grace period while the kernel grew the descriptor table (`perf record -e "
        "sched:sched_switch -g`: the worker in state D under `accept4 → alloc_fd → expand_files → "
        "synchronize_rcu`, 10–20 ms each), and every hit due meanwhile waited on the one worker. "
        "With the table grown at start-up for `HTTP_MAX_CONNECTIONS` plus the reserve (4,096 + 128 "
        "descriptors by default: a table of 8,192, ~64 KiB), no `accept` grows it.",
        ""])
    if os.getenv("NO_WRITE") != "1":
        with open(os.path.join(HERE, "sections", "accept-burst.md"), "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
