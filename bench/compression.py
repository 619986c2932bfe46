#!/usr/bin/env python3
"""Compression benchmark: wire sizes and hit throughput on a fixed JSON corpus.

Why this file exists: compressed answers must pay for themselves: far fewer bytes on the wire
for real JSON, at nearly the throughput of plain hits (the body is compressed once per entry and
coding, then served like any hit). Measured with the release binaries on loopback; never
asserted by a test.

  sizes       each value of bench/corpus/ (served by the origin stub, `STUB_MODE=dir:`) fetched
              plain, `Accept-Encoding: br` and `gzip`: bytes on the wire.
              Goal: values >= 1 KiB at least 60 % smaller (both codings).
  throughput  wrk -t1 -c32 on one cached value (catalog-13k), plain vs br vs gzip, ROUNDS
              interleaved rounds of DURATION s (medians and spread).
              Goal: compressed hits >= 0.95x the plain hits of the same value.

Writes its section of docs/benchmarks.md between markers (and bench/sections/compression.md).

Usage: python3 bench/compression.py   (run `cargo build --release --bins` first)
"""
import os
import statistics
import subprocess
import time
import sys
import urllib.request
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402

ROUNDS = int(os.getenv("ROUNDS", "5"))
DURATION = int(os.getenv("DURATION", "5"))
CORPUS = os.path.join(base.ROOT, "bench", "corpus")
HOT = "catalog-13k"


def fetch(url, coding):
    request = urllib.request.Request(url, headers={"Accept-Encoding": coding} if coding else {})
    with urllib.request.urlopen(request, timeout=10) as r:
        return len(r.read()), r.headers.get("Content-Encoding")


def fetch_compressed(url, coding):
    """A hit in `coding` once its form is made: bodies of 16 KiB or more are compressed on the
    blocking pool, and hits answer identity until then (a few tries, 50 ms apart)."""
    for _ in range(40):
        size, encoding = fetch(url, coding)
        if encoding:
            return size, encoding
        time.sleep(0.05)
    return size, encoding


def wrk(url, coding):
    cmd = ["taskset", "-c", base.CLIENT_CORE, "wrk", "-t1", "-c32", f"-d{DURATION}s", url]
    if coding:
        cmd[5:5] = ["-H", f"Accept-Encoding: {coding}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])


def main():
    started = datetime.now(timezone.utc)
    stub = base.Stub()
    base.http("POST", f"{stub.base}/_stub/config?mode=dir:{CORPUS}")
    service = base.Contender("memory", stub)
    names = sorted((f[:-5] for f in os.listdir(CORPUS) if f.endswith(".json")),
                   key=lambda n: os.path.getsize(os.path.join(CORPUS, n + ".json")))
    rows = []
    for name in names:
        url = service.item(name)
        fetch(url, None)  # the miss; then hits
        plain, _ = fetch(url, None)
        br, br_enc = fetch_compressed(url, "br")
        gz, gz_enc = fetch_compressed(url, "gzip")
        rows.append((name, plain, br, br_enc, gz, gz_enc))
    rps = {c: [] for c in ("identity", "br", "gzip")}
    for r in range(ROUNDS):
        order = list(rps)[r % 3:] + list(rps)[:r % 3]
        for coding in order:
            rps[coding].append(wrk(service.item(HOT), None if coding == "identity" else coding))
        base.log(f"compression round {r + 1}/{ROUNDS}: " + ", ".join(f"{c} {v[-1]:.0f}" for c, v in rps.items()))
    finished = datetime.now(timezone.utc)
    med = {c: statistics.median(v) for c, v in rps.items()}

    lines = ["<!-- compression:begin -->", "## Compression: wire sizes and compressed hits", "",
             f"**Command:** `python3 bench/compression.py` (ROUNDS={ROUNDS}, DURATION={DURATION} s). "
             f"**Run:** {started:%Y-%m-%d %H:%M}–{finished:%H:%M} UTC. The corpus is `bench/corpus/` "
             "(`make_corpus.py` documents it); the service runs with its defaults (COMPRESSION_MIN_BYTES "
             "1024, brotli 5, gzip 6), pinned as in the hot-key section.", "",
             "| value | plain (bytes) | br | gzip | br saves | gzip saves |", "| --- | --- | --- | --- | --- | --- |"]
    met_sizes = True
    for name, plain, br, br_enc, gz, gz_enc in rows:
        save = lambda n, enc: f"{100 * (1 - n / plain):.1f} %" if enc else "not compressed"
        lines.append(f"| {name} | {plain} | {br} | {gz} | {save(br, br_enc)} | {save(gz, gz_enc)} |")
        if plain >= 1024:
            met_sizes &= bool(br_enc and gz_enc) and br <= 0.4 * plain and gz <= 0.4 * plain
    lines += ["", f"Hits of `{HOT}` (wrk -t1 -c32, {ROUNDS} interleaved rounds, medians; spread min–max):", "",
              "| coding | req/s | spread | × identity |", "| --- | --- | --- | --- |"]
    for c, v in rps.items():
        lines.append(f"| {c} | {med[c]:.0f} | {min(v):.0f}–{max(v):.0f} | {med[c] / med['identity']:.2f}× |")
    worst = min(med["br"], med["gzip"]) / med["identity"]
    lines += ["", "| goal | figure | met |", "| --- | --- | --- |",
              f"| values ≥ 1 KiB at least 60 % smaller on the wire (br and gzip) | see the table | {'yes' if met_sizes else 'no'} |",
              f"| compressed hits ≥ 0.95× plain hits of the same value | {worst:.2f}× (the slower coding) | {'yes' if worst >= 0.95 else 'no'} |",
              "<!-- compression:end -->", ""]
    base.write_section("compression", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    finally:
        base.stop_all()
