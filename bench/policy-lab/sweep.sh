#!/bin/bash
# One MiniSim experiment over both stream sets: `./sweep.sh LABEL STREAMS HELDOUT [KNOB=VALUE ...]`
# (knobs: MINISIM_* in src/minisim.rs). Prints the points meeting the hit-ratio goal, the worst
# margin to the goal and the sum of margins (percentage points), then each point's margin;
# results go to results-sweep-LABEL-{real,heldout}.json.
set -euo pipefail
label=$1 streams=$2 heldout=$3; shift 3
cd "$(dirname "$0")"
for part in real:"$streams" heldout:"$heldout"; do
  env "$@" ./target/release/policy-lab replay --streams "${part#*:}" --policies wtinylfu-minisim \
    --out "results-sweep-$label-${part%%:*}.json" >/dev/null 2>&1
done
python3 - "$label" <<'PY'
import json, sys
label = sys.argv[1]
margins = []
for part in ("real", "heldout"):
    for r in json.load(open(f"results-sweep-{label}-{part}.json"))["rows"]:
        h = r["candidates"]["wtinylfu-minisim"]["hit_ratio"]
        margins.append((f"{r['trace']} {r['budget']}", 100 * (h - r["target"])))
met = sum(m >= 0 for _, m in margins)
print(f"{label}: met {met}/{len(margins)} worst {min(m for _, m in margins):+.2f} "
      f"sum {sum(m for _, m in margins):+.2f} | " + "; ".join(f"{p}: {m:+.2f}" for p, m in margins))
PY
