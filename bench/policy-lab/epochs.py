#!/usr/bin/env python3
"""Where MiniSim loses: reads the stderr of a `MINISIM_TRACE=1 policy-lab replay` run and, per
point, compares the real cache's hits with the small caches' (following the leader, the best
fixed share, LRU), and the cost of each kind of switch in the epoch after it. Only points whose
small caches are exact (capacity = small-cache capacity) compare real and small hits directly.

Usage: python3 epochs.py TRACE_STDERR_FILE
"""
import collections
import re
import sys

points = []
for line in open(sys.argv[1]):
    if line.startswith("new "):
        points.append((line.split()[1:], []))
        continue
    m = re.match(r"epoch cur=([\d.]+) real=(\d+) minis=\[(.*)\]", line)
    if m:
        points[-1][1].append((float(m[1]), int(m[2]), [int(x) for x in m[3].split(",")]))
for (cap, mini_cap), epochs in points:
    if not epochs:
        continue
    n = len(epochs[0][2])
    fixed = [sum(e[2][i] for e in epochs) for i in range(n)]
    oracle = sum(max(e[2]) for e in epochs)
    switches = sum(1 for a, b in zip(epochs, epochs[1:]) if a[0] != b[0])
    print(f"capacity {cap} (small caches {mini_cap}), {len(epochs)} epochs, {switches} switches: "
          f"small caches per share {fixed}, LRU {fixed[-1]}, best fixed {max(fixed)}, "
          f"per-epoch best {oracle}")
    if cap != mini_cap:
        continue
    # The share in use is one of SHARES; map it to its small cache by order of the defaults.
    default = [0.01, 0.1, 0.25, 0.5, 0.75, 1.0][:n] if n == 6 else None
    if default is None:
        continue
    own = sum(e[2][default.index(e[0])] for e in epochs)
    real = sum(e[1] for e in epochs)
    print(f"  real {real}, its share's small cache {own} (real - small: {real - own})")
    cost, count = collections.defaultdict(int), collections.Counter()
    for a, b in zip(epochs, epochs[1:]):
        key = (a[0], b[0]) if a[0] != b[0] else "stay"
        count[key] += 1
        cost[key] += b[1] - b[2][default.index(b[0])]
    for key, c in count.most_common(8):
        print(f"  {key}: {c} epochs, real - small in them {cost[key]}")
