#!/usr/bin/env python3
"""One trace replayed through the real service over HTTP, to show that the in-process
replay (`bench-replay`, which drives `MemoryTier` directly) measures what the service does.

Starts the origin stub (mode `bytes:16`, so every value has the same length and every entry the
same weight) and cache-layer with only its memory tier, bounded by `bench-replay --bound-for N`
(the bound that holds N entries of the replay's weight), then sends the trace's requests in
order, one at a time over one keep-alive connection (`GET /items/t00000042`), and counts the
answers whose `Cache-Status` says `hit`. The in-process figure for the same point comes from
`bench-replay --traces NAME` on the same stream.

Usage: python3 bench/trace_http.py STREAMS_DIR TRACE ENTRIES
  (release binaries from `cargo build --release --bins`; prints one JSON object)
"""

import http.client
import json
import os
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402  (spawn, Stub, free_port, wait_http)


def main():
    streams, trace, entries = sys.argv[1], sys.argv[2], int(sys.argv[3])
    manifest = json.load(open(os.path.join(streams, "manifest.json")))
    spec = next(t for t in manifest["traces"] if t["name"] == trace)
    with open(os.path.join(streams, spec["file"]), "rb") as f:
        data = f.read()
    keys = struct.unpack(f"<{len(data) // 4}I", data)
    bound = int(subprocess.run([f"{base.RELEASE}/bench-replay", "--bound-for", str(entries)],
                               capture_output=True, text=True, check=True).stdout)
    stub = base.Stub()
    base.http("POST", f"{stub.base}/_stub/config?mode=bytes:16&latency_ms=0")
    port = base.free_port()
    base.spawn([f"{base.RELEASE}/cache-layer"], {
        "LISTEN_ADDR": f"127.0.0.1:{port}", "RUST_LOG": "warn", "TOKIO_WORKER_THREADS": "1",
        "ORIGIN_URL": f"{stub.base}/items/{{key}}", "ORIGIN_LATENCY_MS": "0",
        "CACHE_TTL_SECS": "86400", "CACHE_TTL_JITTER_PERCENT": "0",
        "MEMORY_CACHE_MAX_BYTES": str(bound)})
    base.wait_http(f"http://127.0.0.1:{port}/health")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    hits = 0
    t0 = time.time()
    for i, k in enumerate(keys):
        conn.request("GET", f"/items/t{k:08d}")
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"request {i}: HTTP {r.status}")
        if "hit" in (r.getheader("cache-status") or "").split("; "):
            hits += 1
    warmup = spec["warmup"]
    print(json.dumps({"trace": trace, "entries": entries, "bound_bytes": bound,
                      "requests": len(keys), "hits": hits,
                      "hit_ratio": hits / (len(keys) - warmup), "origin_fetches": stub.served(),
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    try:
        main()
    finally:
        base.stop_all()
