#!/usr/bin/env bash
# The cache-tests suite (github.com/http-tests/cache-tests, BSD-3-Clause, see LICENSE),
# copied unchanged from its repository (commit b55b8bd, 2026-07-20), with a small runner.
#
#   run.sh server PORT            start the suite's origin server on 127.0.0.1:PORT (background; prints its pid)
#   run.sh cli PROXY_URL OUT      run every test through the cache at PROXY_URL (which must forward every
#                                 path and method to the server above), results as JSON into OUT
#   run.sh score OUT...           count passes per kind (required / optimal), as cache-tests.fyi does
#   run.sh cli PROXY_URL OUT ID   run one test by id, with its requests and responses shown
#   run.sh fails OUT [all]        list the required tests that did not pass (with `all`, every kind)
#
# The suite and its npm dependencies are copied to a writable work dir ($CACHE_TESTS_DIR, default
# ${TMPDIR:-/tmp}/cache-tests-suite) on first use; node >= 18 and npm are needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
orig=$PWD
abs() { case "$1" in /*) echo "$1" ;; *) echo "$orig/$1" ;; esac; }
work=${CACHE_TESTS_DIR:-${TMPDIR:-/tmp}/cache-layer-cache-tests}
mkdir -p "$work"
# The suite's files every time (cheap; a copy left by another checkout never stands in), its npm
# dependencies once.
rm -rf "$work/tests" "$work/test-engine"
cp -r "$here/tests" "$here/test-engine" "$here/package.json" "$here/score.mjs" "$here/fails.mjs" "$work/"
chmod -R u+w "$work"
if [[ ! -d "$work/node_modules" ]]; then
  (cd "$work" && npm install --omit=dev --no-audit --no-fund --silent >/dev/null)
fi
cd "$work"
case "${1:-}" in
  server)
    npm_config_protocol=http npm_config_port="$2" npm_config_pidfile="$work/server.pid" \
      node test-engine/server/server.mjs > "$work/server.log" 2>&1 &
    echo $!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && exit 0; sleep 0.1; done
    echo "cache-tests server did not start: $(cat "$work/server.log")" >&2; exit 1 ;;
  cli)
    npm_package_config_id="${4:-}" npm_config_id="${4:-}" npm_config_base="$2" \
      node --no-warnings test-engine/cli.mjs > "$(abs "$3")" ;;
  score)
    shift; for f in "$@"; do node score.mjs "$(abs "$f")"; done ;;
  fails)
    node fails.mjs "$(abs "$2")" "${3:-}" ;;
  *) sed -n 2,13p "$0"; exit 2 ;;
esac
