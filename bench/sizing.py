#!/usr/bin/env python3
"""Sizing guidance, measured: N keys of B bytes -> MEMORY_CACHE_MAX_BYTES, RSS, pod limit.

Why this file exists: operators size pods from the README's rule (entry weight about key + body +
480 B; pod memory 1.2 x MEMORY_CACHE_MAX_BYTES + 32 MiB). This checks the rule on the current
build: for each (keys, value bytes) the bound is set from the rule, every key is fetched once
through HTTP (`--pattern cycle`), then read again; the table shows how many entries the tier
kept, the hit ratio of the second pass, the RSS and the limit the rule gives.

Writes its section of docs/benchmarks.md between markers (and bench/sections/sizing.md).

Usage: python3 bench/sizing.py   (run `cargo build --release --bins` first)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402

MIB = 1024 * 1024
OVERHEAD = base.entry_overhead_bytes()
CASES = [(100_000, 1_000), (20_000, 10_000), (2_000, 100_000)]
BEGIN, END = "<!-- sizing:begin -->", "<!-- sizing:end -->"






def case(keys, value_bytes):
    stub = base.Stub()
    base.http("POST", f"{stub.base}/_stub/config?mode=bytes:{value_bytes}")
    # The rule: (key + rendered body + overhead) per entry; the body is the value plus ~60 B
    # of JSON around it. 10 % headroom for the policy's own structures.
    entry = 12 + value_bytes + 60 + OVERHEAD
    bound = int(keys * entry * 1.1)
    proc, url = base.service(stub, {"MEMORY_CACHE_MAX_BYTES": str(bound),
                                    "ORIGIN_MAX_BODY_BYTES": str(max(1 << 20, value_bytes * 2))})
    idle = base.rss_bytes(proc.pid)
    args = ["--pattern", "cycle", "--key-space", str(keys), "--requests", str(keys), "-c", "16"]
    base.loadtest(url, *args)
    second = base.loadtest(url, *args)
    row = {"keys": keys, "value_bytes": value_bytes, "bound": bound,
           "entries": base.metric(url, "memory_cache_entries"),
           "tier_bytes": base.metric(url, "memory_cache_bytes"),
           "hit_rate": second["hit_rate"], "rss_idle": idle, "rss": base.rss_bytes(proc.pid),
           "limit": 1.2 * bound + 32 * MIB}
    base.stop_all()
    base.PROCS.clear()
    return row


def markdown(results):
    lines = [BEGIN, "## Sizing: keys and value sizes to memory settings", "",
             "**Command:** `python3 bench/sizing.py` (after `cargo build --release --bins`).", "",
             f"**Run:** {results['started']}–{results['finished']} UTC, commit `{results['commit']}`.",
             "",
             f"For N keys of about B bytes, `MEMORY_CACHE_MAX_BYTES` = 1.1 × N × (key + B + 60 B of "
             f"JSON + {OVERHEAD} B per entry); every key fetched once through HTTP, then read again. "
             "Pod limit by the rule: 1.2 × the bound + 32 MiB.", "",
             "| keys × value | `MEMORY_CACHE_MAX_BYTES` | entries kept | `memory_cache_bytes` | "
             "second pass hit ratio | RSS idle | RSS full | pod limit (rule) | RSS within |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["cases"]:
        lines.append(
            f"| {r['keys']:,} × {r['value_bytes']:,} B | {r['bound'] / MIB:.0f} MiB | "
            f"{int(r['entries']):,} | {r['tier_bytes'] / MIB:.1f} MiB | {r['hit_rate'] * 100:.1f} % | "
            f"{r['rss_idle'] / MIB:.1f} MiB | {r['rss'] / MIB:.1f} MiB | {r['limit'] / MIB:.0f} MiB | "
            f"{'yes' if r['rss'] <= r['limit'] else 'no'} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def cases():
    for keys, value_bytes in CASES:
        base.log(f"sizing: {keys} keys of {value_bytes} B")
        yield case(keys, value_bytes)


if __name__ == "__main__":
    base.run_section("sizing", "cases", cases, markdown)
