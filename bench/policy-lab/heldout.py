#!/usr/bin/env python3
"""Synthetic traces the policies were not tuned on, with libcachesim's reference figures, dumped
in the format of trace_reference.py --dump-dir. Run with the bench venv:
  .tools/venv-bench/bin/python heldout.py streams-heldout
"""
import json, os, sys
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trace_reference as tr
import libcachesim as lcs

out = sys.argv[1] if len(sys.argv) > 1 else "streams-heldout"
os.makedirs(out, exist_ok=True)
rng = np.random.Generator(np.random.PCG64(7))


def zipf(n, s, length):
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    c = np.cumsum(w); c /= c[-1]
    return np.minimum(np.searchsorted(c, rng.random(length), side="right"), n - 1) + 1


def dense(x):
    _, first, inv = np.unique(x, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    d = np.empty_like(order); d[order] = np.arange(1, len(order) + 1)
    return d[inv].astype(np.uint32)


traces = {}
traces["zipf0.8"] = zipf(100_000, 0.8, 1_000_000)
traces["zipf1.2"] = zipf(100_000, 1.2, 1_000_000)
# Zipf 0.9 with a one-off scan of 20,000 new keys every 100,000 requests.
parts = []
fresh = 10_000_000
for i in range(10):
    parts.append(zipf(50_000, 0.9, 100_000))
    parts.append(np.arange(fresh, fresh + 20_000)); fresh += 20_000
traces["zipf-scans"] = np.concatenate(parts)
# Popularity that moves: every 200,000 requests the hot keys become new keys.
traces["shifting"] = np.concatenate([zipf(50_000, 1.0, 200_000) + k * 1_000_000 for k in range(5)])
# A loop over 30,000 keys interleaved 1:1 with Zipf 1.0 over 30,000 others.
loop = np.arange(600_000) % 30_000 + 5_000_000
z = zipf(30_000, 1.0, 600_000)
traces["loop+zipf"] = np.ravel(np.column_stack([loop, z]))

manifest = []
for name, raw in traces.items():
    ids = dense(np.asarray(raw))
    distinct = int(ids.max())
    path = f"/tmp/{name}.oracle.bin"
    tr.write_oracle(ids, path)
    reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
    points = []
    for p in tr.BUDGETS_PCT:
        cap = max(1, round(distinct * p / 100))
        hr = {pol: tr.hits(pol, cap, reader, len(ids)) / len(ids) for pol in tr.POLICIES}
        best = max(hr[c] for c in tr.CHALLENGERS)
        points.append({"budget": f"{p} %", "capacity_entries": cap, "reference": hr,
                       "target": max(hr["LRU"], best - 0.01)})
    ids.astype("<u4").tofile(os.path.join(out, f"{name}.u32"))
    manifest.append({"name": name, "file": f"{name}.u32", "requests": len(ids), "warmup": 0,
                     "distinct": distinct, "points": points})
    os.remove(path)
    print(name, len(ids), distinct, [(p["capacity_entries"], round(100 * p["target"], 2)) for p in points])
json.dump({"traces": manifest}, open(os.path.join(out, "manifest.json"), "w"), indent=1)
