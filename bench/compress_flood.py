#!/usr/bin/env python3
"""A flood of requests for long bodies wanted compressed, through a small memory tier: what the
process holds (RSS) and how many compressions it goes on making after the flood.

Why this file exists: each hit on a compressed form not made yet asks the compression threads
for it, and a hit answers identity meanwhile, so a client can ask faster than the threads make
them. Before the queue had a bound (src/cache/encoding.rs `QUEUE_MAX_BYTES`) and held its entries
weakly, each queued job kept its entry's body alive beside the memory bound: 200 keys of 600 KB
cycled through a 64 MiB tier took the process to 5 GB, and the threads went on compressing
evicted entries for minutes after the clients had gone (found by an attack on 2026-12-07). This
runs that attack against one or more builds. Figures only: never asserted by a test.

  origin       origin-stub in `dir:` mode over a corpus this file writes: KEYS (200) keys of
               BODY_BYTES (600,000) of made-up words (compressible as text is).
  cache-layer  MEMORY_CACHE_MAX_BYTES = BOUND (64 MiB: about 100 of the bodies), defaults
               otherwise (compression on).
  flood        THREADS (8) clients, each cycling through the keys for SECS (20) s, asking each
               key three times: identity (a miss that fetches, or a hit), then `Accept-Encoding:
               br`, then `gzip` (each a hit that asks for a compression).
  after        AFTER_SECS (15) s of nothing.
Every 5 s: the service's RSS (/proc) and `cache_compressions_total` (both codings).

Usage: python3 bench/compress_flood.py   (builds as bench/hotkey.py `builds_from_env` reads
them: BIN_DIR, OLD_BIN_DIR, or BUILDS='name=dir;…'). Prints a table; writes nothing.
"""

import http.client
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hotkey import builds_from_env, command_env, free_port, wait_answer  # noqa: E402

KEYS = int(os.getenv("KEYS", "200"))
BODY_BYTES = int(os.getenv("BODY_BYTES", "600000"))
BOUND = int(os.getenv("BOUND", str(64 << 20)))
THREADS = int(os.getenv("THREADS", "8"))
SECS = float(os.getenv("SECS", "20"))
AFTER_SECS = float(os.getenv("AFTER_SECS", "15"))


def corpus(path):
    """KEYS files of BODY_BYTES made-up words, `c<i>.json`, for origin-stub's `dir:` mode."""
    for i in range(KEYS):
        rng = random.Random(i)
        words = " ".join(f"w{rng.randrange(50000)}" for _ in range(BODY_BYTES // 5))[:BODY_BYTES]
        with open(os.path.join(path, f"c{i}.json"), "w") as f:
            f.write('{"i": %d, "words": "%s"}' % (i, words))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def compressions(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return int(sum(float(v) for v in re.findall(r"^cache_compressions_total\{[^}]*\} (\S+)", text, re.M)))


def flood(port, stop):
    def client(t):
        c, i = http.client.HTTPConnection("127.0.0.1", port, timeout=30), t
        while not stop.is_set():
            key = f"/items/c{i % KEYS}"
            i += THREADS
            for coding in (None, "br", "gzip"):
                try:
                    c.request("GET", key, headers={"Accept-Encoding": coding} if coding else {})
                    c.getresponse().read()
                except (OSError, http.client.HTTPException):
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    return threads


def one_run(bin_dir, data):
    origin_port, port = free_port(), free_port()
    origin = subprocess.Popen([f"{bin_dir}/origin-stub"], env={"STUB_LISTEN_ADDR": f"127.0.0.1:{origin_port}",
                                                               "STUB_MODE": f"dir:{data}", "PATH": os.environ["PATH"]},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    service = subprocess.Popen([f"{bin_dir}/cache-layer"], env={
        "LISTEN_ADDR": f"127.0.0.1:{port}", "ORIGIN_URL": f"http://127.0.0.1:{origin_port}/items/{{key}}",
        "MEMORY_CACHE_MAX_BYTES": str(BOUND), "RUST_LOG": "warn", "PATH": os.environ["PATH"]},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_answer(f"http://127.0.0.1:{port}/livez")
        samples, stop, start = [], threading.Event(), time.monotonic()
        threads = flood(port, stop)
        for t in range(5, int(SECS + AFTER_SECS) + 1, 5):
            time.sleep(max(0.0, start + t - time.monotonic()))
            if t >= SECS and not stop.is_set():
                stop.set()
                for th in threads:
                    th.join()
            samples.append((t, round(rss_mb(service.pid)), compressions(port)))
        return samples
    finally:
        for p in (service, origin):
            p.kill()
            p.wait()


def main():
    builds = builds_from_env("target/release")
    with tempfile.TemporaryDirectory() as data:
        corpus(data)
        runs = {name: one_run(d, data) for name, (d, _) in builds.items()}
    print(f"`{command_env()} python3 bench/compress_flood.py` ({KEYS} keys of {BODY_BYTES:,} B, tier "
          f"{BOUND >> 20} MiB, {THREADS} clients for {SECS:g} s, then {AFTER_SECS:g} s idle), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print("| s in | " + " | ".join(f"{n}: RSS (MB) | {n}: compressions" for n in runs) + " |")
    print("| --- |" + " --- | --- |" * len(runs))
    for i, (t, *_) in enumerate(next(iter(runs.values()))):
        row = [f"{t}{' (flood over)' if t == int(SECS) else ''}"]
        for samples in runs.values():
            row += [f"{samples[i][1]:,}", f"{samples[i][2]:,}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
