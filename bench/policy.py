#!/usr/bin/env python3
"""The memory-tier policy benchmark: the memory tier's hit ratio on real traces beside the reference policies.

Why this file exists: hit ratio is what the cache is for, and the claim rests on the traces, not
on synthetic Zipf alone. This runs the real `MemoryTier` (`bench-replay`) over the key streams
that `bench/trace_reference.py --dump-dir` writes (web12, orm-night, AdaptSize, the Zipf workload;
libcachesim's LRU, W-TinyLFU, S3-FIFO, SIEVE and Belady at 1 %, 5 % and 20 % of each trace's
distinct objects), optionally over the held-out synthetic streams of
`bench/policy-lab/heldout.py`, and one trace through HTTP (`bench/trace_http.py`: the service
and the origin stub) to show the two replays agree. The goal per point: at least LRU, and at
least the best of W-TinyLFU, S3-FIFO and SIEVE minus 1 point.

Writes its section of docs/benchmarks.md between markers (and bench/sections/policy.md).

Usage (release binaries first: `cargo build --release --bins`):
  python3 bench/policy.py STREAMS_DIR [HELDOUT_DIR]
"""

import json
import os
import subprocess
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402  (RELEASE, ROOT, write_section, machine)

REFS = ["LRU", "W-TinyLFU", "S3-FIFO", "SIEVE", "Belady"]
HTTP_TRACE, HTTP_ENTRIES = "web12", 928


def replay(streams):
    out = os.path.join(streams, "replay.json")
    subprocess.run([f"{base.RELEASE}/bench-replay", "--streams", streams, "--out", out],
                   check=True, stdout=subprocess.DEVNULL)
    return json.load(open(out))


def moka_figures():
    """(trace, budget) -> hit ratio of today's moka tier, from the policy-lab replay."""
    path = os.path.join(base.ROOT, "bench", "policy-lab", "table.md")
    figures, head = {}, None
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == ["trace", "budget"]:
            head = cells
        elif head and len(cells) == len(head) and cells[0] and cells[0] != "---":
            try:
                figures[(cells[0], cells[1])] = float(cells[head.index("moka")].split()[0])
            except ValueError:
                pass
    return figures


def table(doc, moka):
    rows = ["| trace | budget | entries | " + " | ".join(REFS) + " | goal | moka (before) | "
            "cache-layer (median) | range of the runs | window at end |",
            "|" + "---|" * (len(REFS) + 8)]
    for r in doc["rows"]:
        refs = [f"{100 * r['reference'][n]:.2f}" for n in REFS]
        m = moka.get((r["trace"], r["budget"]))
        rows.append(
            f"| {r['trace']} | {r['budget']} | {r['capacity_entries']:,} | " + " | ".join(refs)
            + f" | {100 * r['target']:.2f} | {'' if m is None else f'{m:.2f}'} | "
            + f"**{100 * r['hit_ratio']:.2f}**{'' if r['meets_goal'] else ' ✗'} | "
            + f"{100 * r['hit_ratio_min']:.2f}–{100 * r['hit_ratio_max']:.2f} | "
            + f"{100 * r['window_share_at_end']:.0f} % |")
    return "\n".join(rows)


def main():
    streams = sys.argv[1]
    heldout = sys.argv[2] if len(sys.argv) > 2 else None
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    moka = moka_figures()
    real = replay(streams)
    held = replay(heldout) if heldout else None
    http = json.loads(subprocess.run(
        [sys.executable, os.path.join(base.ROOT, "bench", "trace_http.py"), streams, HTTP_TRACE,
         str(HTTP_ENTRIES)], check=True, capture_output=True, text=True).stdout)
    inproc = next(r for r in real["rows"]
                  if r["trace"] == HTTP_TRACE and r["capacity_entries"] == HTTP_ENTRIES)
    text = [
        "<!-- policy:begin -->",
        "## Hit ratio on real traces",
        "",
        f"Run on {date} with `python3 bench/policy.py STREAMS [HELDOUT]` "
        "(streams from `bench/trace_reference.py --dump-dir STREAMS --orm-night-full "
        "PATH/orm-night.txt.gz`, held-out ones from `bench/policy-lab/heldout.py`). "
        "`bench-replay` drives the real `MemoryTier` in process: every request a `get_now`, a "
        "miss followed by a `put`, every entry the same weight, the bound "
        "`MemoryTier::bound_for(entries × weight)` so that the tier holds exactly the point's "
        "entry count (its policy's own bytes, sketch and mini-simulations, are set aside on top, "
        "as in production). Reference figures: libcachesim 0.3.5 on the same streams and counts. "
        "**Goal** = max(LRU, best of W-TinyLFU/S3-FIFO/SIEVE − 1 pt); ✗ marks a point below it. "
        "*moka (before)* is the tier as it was (moka 0.12, TinyLFU), replayed by "
        "`bench/policy-lab` (`table.md` there). The tier's hash keys are seeded per process, so "
        "its figures move by a few tenths of a point between runs: each point is replayed 5 times "
        "with a fresh tier and the median is shown with the range.",
        "",
        f"Real traces and the Zipf workload: **{real['met']} / {real['points']}** points meet the "
        "goal.",
        "",
        table(real, moka),
        "",
    ]
    if held:
        text += [f"Held-out synthetic traces (never tuned on): **{held['met']} / "
                 f"{held['points']}** points meet the goal.", "", table(held, moka), ""]
    text += [
        f"Through HTTP (`bench/trace_http.py`: cache-layer with only its memory tier, "
        f"`MEMORY_CACHE_MAX_BYTES` {http['bound_bytes']:,}, the origin stub, {http['requests']:,} "
        f"requests in order over one connection): {HTTP_TRACE} at {HTTP_ENTRIES:,} entries hits "
        f"**{100 * http['hit_ratio']:.2f} %** ({http['origin_fetches']:,} origin fetches), in "
        f"process {100 * inproc['hit_ratio']:.2f} %.",
        "<!-- policy:end -->",
        "",
    ]
    base.write_section("policy", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
