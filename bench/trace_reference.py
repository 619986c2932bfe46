#!/usr/bin/env python3
"""Reference hit ratios for the memory-tier policy: what the textbook policies achieve on the vendored traces.

For each trace in bench/traces/ (see its README) and for caches holding 1 %, 5 % and 20 % of the
trace's distinct objects, this replays the trace in order through the simulators of the PyPI
package `libcachesim` and records the hit ratio of:

  LRU        strict least-recently-used
  W-TinyLFU  libcachesim's WTinyLFU: a 1 % LRU window, an SLRU main cache, TinyLFU admission
             (the library's defaults: window-size=0.01, main-cache=SLRU)
  S3-FIFO    small FIFO 10 %, ghost 90 %, promotion after 2 hits (the library's defaults)
  SIEVE
  Belady     the clairvoyant optimum (evicts the entry whose next use is furthest away)

Every object weighs the same (one unit), so the capacity is a number of entries: the memory tier's
byte budget divided by its per-entry weight. A hit is a request whose key is in the cache when it
arrives; the first request for a key is always a miss. The issue's goal per point:
hit ratio >= LRU and >= best of (W-TinyLFU, S3-FIFO, SIEVE) - 1 percentage point; `target` in the
output is the larger of the two.

Traces (the replayed part; "distinct" is counted over that part):
  web12           web12.txt.gz, all 95,607 requests
  orm-night-300k  orm-night-1m.txt.gz, the first 300,000 requests (the issue's table)
  orm-night-1m    orm-night-1m.txt.gz, all 1,000,000 requests (the vendored prefix)
  adaptsize       adaptsize-request.txt.gz, sizes ignored (unit sizes)
  zipf            the Zipf workload of bench/run.py's zipf section, see ZIPF below
  orm-night-5m    only with --orm-night-full PATH: the whole 5,000,000-request trace, which is
                  not vendored (PATH/orm-night.txt.gz on the team's machines)

The two points of the issue's table (web12 at 928 entries, orm-night-300k at 1,173) are added as
extra points, so its LRU and Belady figures can be checked against this script.

ZIPF. bench/run.py drives the server with `cache-layer-loadtest --pattern zipf --key-space 200000
--zipf-exponent 1.0` (rand_distr's Zipf over ranks 1..=200000, one SmallRng per connection) for a
warm-up run and a measured run, at a 4 MiB byte budget; the memory tier then held 16,745 entries of
250.47 B on average (docs/benchmarks.md), and bench/lru.rs replays a strict LRU of
floor(4194304 / 250.47) = 16,746 entries over a stream of the same length. This script draws the
same distribution (inverse CDF over the 200,000 ranks, P(k) proportional to 1/k) with numpy's
PCG64 from ZIPF_SEED: the same distribution and length, not the same pseudo-random draws (the
server run's draws depend on how 32 connections interleave, so no replay can have them). Every
entry counts the same here; in the server the weights differ by a few bytes (key length and the
digits of `n` in the body), which this ignores. The hit ratio is over the measured part only,
after ZIPF_WARMUP requests: hits(all) - hits(first ZIPF_WARMUP), which is exact because every
policy here is deterministic.

Output: a JSON file (default bench/trace-reference.json) and a table on stdout. With --dump-dir
DIR it also writes each replayed key stream as little-endian u32 ids (1..=distinct) plus
DIR/manifest.json, so that another replayer (e.g. the Rust candidates) runs the exact same streams
at the exact same capacities.

Setup (Python 3.11; `.tools/` is git-ignored):
  python3.11 -m venv .tools/venv-bench
  .tools/venv-bench/bin/pip install -r bench/requirements-trace.txt   (libcachesim 0.3.5, numpy)
  .tools/venv-bench/bin/python bench/trace_reference.py [--out FILE] [--dump-dir DIR]
      [--orm-night-full PATH/orm-night.txt.gz] [--only NAME ...]
"""

import argparse
import gzip
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone

import numpy as np

try:
    import libcachesim as lcs
except ImportError:  # pragma: no cover - setup hint
    sys.exit("libcachesim is missing: see the setup lines in this script's docstring")

HERE = os.path.dirname(os.path.abspath(__file__))
TRACES = os.path.join(HERE, "traces")

BUDGETS_PCT = (1, 5, 20)
ZIPF_KEYS = 200_000
ZIPF_EXPONENT = 1.0
ZIPF_BUDGET_BYTES = 4 * 1024 * 1024
ZIPF_ENTRY_BYTES = 250.466  # 4194053 bytes / 16745 entries held in the run of docs/benchmarks.md
ZIPF_WARMUP = 480_000  # about the 10 s warm-up run at the measured run's rate
ZIPF_MEASURED = 956_598  # requests of the measured run in docs/benchmarks.md
ZIPF_SEED = 1

# Policies and how to build each for a capacity of n entries.
POLICIES = {
    "LRU": lambda n: lcs.LRU(n),
    "W-TinyLFU": lambda n: lcs.WTinyLFU(n, main_cache="SLRU", window_size=0.01),
    "S3-FIFO": lambda n: lcs.S3FIFO(n, small_size_ratio=0.1, ghost_size_ratio=0.9,
                                    move_to_main_threshold=2),
    "SIEVE": lambda n: lcs.Sieve(n),
    "Belady": lambda n: lcs.Belady(n),
}
CHALLENGERS = ("W-TinyLFU", "S3-FIFO", "SIEVE")

# The oracleGeneral binary format libcachesim reads: clock time, object id, size, and the index of
# the object's next request (-1: none), which Belady needs.
ORACLE = np.dtype([("t", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])


def read_keys(path, limit=None):
    """The first field of each line (the key), for at most `limit` lines, as dense ids 1..=N."""
    ids, out = {}, []
    with gzip.open(path, "rt") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            key = line.split(maxsplit=1)[0]
            out.append(ids.setdefault(key, len(ids) + 1))
    return np.asarray(out, dtype=np.uint32)


def zipf_stream(n_keys, exponent, length, seed):
    """Ranks 1..=n_keys with P(k) proportional to k^-exponent, i.i.d., as dense ids."""
    weights = np.arange(1, n_keys + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    u = np.random.Generator(np.random.PCG64(seed)).random(length)
    ranks = np.minimum(np.searchsorted(cdf, u, side="right"), n_keys - 1) + 1
    # Dense ids in order of first appearance, like the traces (the rank itself is not needed).
    _, first, inverse = np.unique(ranks, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    dense = np.empty_like(order)
    dense[order] = np.arange(1, len(order) + 1)
    return dense[inverse].astype(np.uint32)


def write_oracle(ids, path):
    """Writes `ids` as an oracleGeneral trace with unit sizes and next-use indices."""
    n = len(ids)
    index = np.arange(n, dtype=np.int64)
    order = np.lexsort((index, ids))  # by id, then by position
    nxt = np.full(n, -1, dtype=np.int64)
    same = ids[order[:-1]] == ids[order[1:]]
    nxt[order[:-1][same]] = order[1:][same]
    rec = np.zeros(n, dtype=ORACLE)
    rec["t"] = index
    rec["id"] = ids
    rec["size"] = 1
    rec["next"] = nxt
    rec.tofile(path)


def hits(policy, capacity, reader, n):
    """Hits of `policy` holding `capacity` entries over the first `n` requests of `reader`."""
    cache = POLICIES[policy](capacity)
    miss_ratio, _ = cache.process_trace(reader, 0, n)
    return round((1.0 - miss_ratio) * n)


def traces(args):
    """(name, description, ids, warmup, extra capacities) for each trace to replay."""
    out = []
    want = set(args.only or [])

    def add(name, desc, load, warmup=0, extra=()):
        if not want or name in want:
            out.append((name, desc, load, warmup, extra))

    add("web12", "web12.txt.gz, all requests",
        lambda: read_keys(os.path.join(TRACES, "web12.txt.gz")), extra=(928,))
    add("orm-night-300k", "orm-night-1m.txt.gz, first 300,000 requests",
        lambda: read_keys(os.path.join(TRACES, "orm-night-1m.txt.gz"), 300_000), extra=(1173,))
    add("orm-night-1m", "orm-night-1m.txt.gz, all 1,000,000 requests",
        lambda: read_keys(os.path.join(TRACES, "orm-night-1m.txt.gz")))
    add("adaptsize", "adaptsize-request.txt.gz, unit sizes",
        lambda: read_keys(os.path.join(TRACES, "adaptsize-request.txt.gz")))
    if args.orm_night_full:
        add("orm-night-5m", f"{os.path.basename(args.orm_night_full)}, all requests",
            lambda: read_keys(args.orm_night_full))
    zipf_capacity = int(ZIPF_BUDGET_BYTES // ZIPF_ENTRY_BYTES)
    add("zipf", (f"Zipf s={ZIPF_EXPONENT} over {ZIPF_KEYS} keys, {ZIPF_WARMUP} warm-up + "
                 f"{ZIPF_MEASURED} measured requests, numpy PCG64 seed {ZIPF_SEED}; "
                 f"{ZIPF_BUDGET_BYTES} B / {ZIPF_ENTRY_BYTES} B per entry = {zipf_capacity} "
                 "entries"),
        lambda: zipf_stream(ZIPF_KEYS, ZIPF_EXPONENT, ZIPF_WARMUP + ZIPF_MEASURED, ZIPF_SEED),
        warmup=ZIPF_WARMUP, extra=(zipf_capacity,))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "trace-reference.json"))
    ap.add_argument("--dump-dir", help="also write each key stream (u32 LE) and manifest.json")
    ap.add_argument("--orm-night-full", help="path of the full orm-night.txt.gz (not vendored)")
    ap.add_argument("--only", nargs="*", help="trace names to run (default: all)")
    args = ap.parse_args()

    started = time.time()
    results = {
        "tool": {"libcachesim": importlib.metadata.version("libcachesim"),
                 "numpy": np.__version__, "python": platform.python_version()},
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python " + " ".join(sys.argv),
        "budgets_pct_of_distinct": list(BUDGETS_PCT),
        "policies": list(POLICIES),
        "goal": "hit ratio >= LRU and >= max(W-TinyLFU, S3-FIFO, SIEVE) - 0.01",
        "traces": [],
    }
    manifest = []
    if args.dump_dir:
        os.makedirs(args.dump_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, desc, load, warmup, extra in traces(args):
            t0 = time.time()
            ids = load()
            n = len(ids)
            distinct = int(ids.max())
            measured_ids = ids[warmup:]
            path = os.path.join(tmp, f"{name}.oracleGeneral.bin")
            write_oracle(ids, path)
            reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
            points = [(f"{p} %", max(1, round(distinct * p / 100))) for p in BUDGETS_PCT]
            if name == "zipf":
                points = [("4 MiB", extra[0])] + [
                    (f"{p} %", max(1, round(distinct * p / 100))) for p in BUDGETS_PCT]
            else:
                points += [("issue", c) for c in extra]
            rows = []
            for label, cap in points:
                hr = {}
                for pol in POLICIES:
                    h = hits(pol, cap, reader, n)
                    if warmup:
                        h -= hits(pol, cap, reader, warmup)
                    hr[pol] = h / (n - warmup)
                best = max(hr[c] for c in CHALLENGERS)
                rows.append({"budget": label, "capacity_entries": cap, "hit_ratio": hr,
                             "best_challenger": max(CHALLENGERS, key=hr.get),
                             "target": max(hr["LRU"], best - 0.01)})
            entry = {"name": name, "source": desc, "requests": n, "warmup": warmup,
                     "measured": n - warmup, "distinct": distinct,
                     "distinct_measured": int(len(np.unique(measured_ids))), "points": rows,
                     "seconds": round(time.time() - t0, 1)}
            results["traces"].append(entry)
            print_trace(entry)
            if args.dump_dir:
                fname = f"{name}.u32"
                ids.astype("<u4").tofile(os.path.join(args.dump_dir, fname))
                manifest.append({"name": name, "file": fname, "requests": n, "warmup": warmup,
                                 "distinct": distinct,
                                 "points": [{"budget": r["budget"],
                                             "capacity_entries": r["capacity_entries"],
                                             "reference": r["hit_ratio"],
                                             "target": r["target"]} for r in rows]})
    results["seconds"] = round(time.time() - started, 1)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    if args.dump_dir:
        with open(os.path.join(args.dump_dir, "manifest.json"), "w") as f:
            json.dump({"from": results["command"], "tool": results["tool"], "traces": manifest},
                      f, indent=1)
    print(f"wrote {args.out} in {results['seconds']} s")


def print_trace(t):
    print(f"\n{t['name']}: {t['source']}; {t['measured']:,} requests measured "
          f"(after {t['warmup']:,} warm-up), {t['distinct']:,} distinct keys")
    head = ["budget", "entries"] + list(POLICIES) + ["target"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in t["points"]:
        cells = [r["budget"], f"{r['capacity_entries']:,}"]
        cells += [f"{100 * r['hit_ratio'][p]:.2f}" for p in POLICIES]
        cells.append(f"{100 * r['target']:.2f}")
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
