#!/usr/bin/env bash
# Benchmarks: cache-layer (memory tier, Redis tier) against nginx proxy_cache, Varnish, the seed's
# design and a bare-axum ceiling, in one run on this machine, on loopback only, bounded in time
# (about 10 minutes with the defaults). Writes docs/benchmarks.md and docs/bench-latency.svg.
#
#   bench/run.sh                               # everything
#   SECTIONS="hot latency" ROUNDS=1 bench/run.sh   # a quicker look (figures still go to docs/)
#
# Knobs (environment): SECTIONS (hot latency zipf stampede), ROUNDS (3), DURATION (5 s per wrk
# run), RATE (10000 req/s), ZIPF_KEYS (200000), ZIPF_EXPONENT (1.0), BUDGET_BYTES (4 MiB),
# STAMPEDE (1000). What each section measures: the docstring of bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in wrk redis-server redis-cli taskset nginx varnishd; do
  if ! command -v "$tool" >/dev/null; then
    # policy-rc.d keeps the packages from starting their system services (port 80, 6081).
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-server redis-tools util-linux nginx-light varnish
    rm -f /usr/sbin/policy-rc.d
    break
  fi
done
cargo build --release --bins -q
VENV=.tools/bench-venv
if [[ "${SECTIONS:-hot}" == *hot* && ! -x "$VENV/bin/uvicorn" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q fastapi==0.115.6 uvicorn==0.32.1 redis==5.2.1 prometheus-client==0.21.1
fi

shopt -s nullglob  # bench/sections/ may be empty
RESULTS=target/bench-results.json
python3 bench/run.py "$RESULTS"
python3 bench/report.py "$RESULTS" --markdown docs/benchmarks.md --svg docs/bench-latency.svg \
  --notes bench/notes.md --sections bench/sections/*.md
echo "docs/benchmarks.md and docs/bench-latency.svg written from $RESULTS" >&2
