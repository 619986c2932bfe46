#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need when it is missing:
# redis-server and prometheus (Debian packages), the packaging tools (scripts/check-packaging.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The module layout: nothing imports upward (docs/architecture.md, the dependency table).
python3 scripts/check_deps.py --self-test
python3 scripts/check_deps.py

# Unit and integration tests (real redis-server, origin stub, Prometheus, OTLP receiver).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi

# The benchmark report generator (bench/report.py: results JSON -> docs/benchmarks.md and chart).
python3 -m unittest bench/test_report.py

# Packaging: Dockerfile, compose file, Helm chart, dashboard (static checks, then the live run).
# The live part runs the binary the tests just built with the env the chart and compose file set.
cargo build --bins
scripts/check-packaging.sh --live target/debug/cache-layer

# The transparent proxy (PROXY_ROUTES) through the independent cache-tests suite (tests/cache-tests,
# node and npm), with floors on the tests it passes.
scripts/cache-tests.sh target/debug/cache-layer
