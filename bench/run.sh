#!/usr/bin/env bash
# Benchmarks of the hit path, on loopback only, bounded in time.
#
#   bench/run.sh            # all scenarios, 5 interleaved rounds of 5 s each
#   ROUNDS=3 DURATION=3 bench/run.sh
#
# Servers are pinned to core 0 (taskset) with one tokio worker (TOKIO_WORKER_THREADS=1); wrk is
# pinned to core 1. Scenarios, each on a key already cached:
#   ceiling      bench-ceiling: bare axum handler, same JSON body, no cache
#   memory       cache-layer, memory tier hit
#   memory+otlp  cache-layer, memory tier hit, every request traced and pushed over OTLP/HTTP
#   redis        cache-layer with MEMORY_CACHE_ENABLED=false: every hit is a Redis GET
#   seed         the seed's design (FastAPI + redis-py, one uvicorn worker), bench/seed_app.py
#   nginx        nginx proxy_cache (bench/peers/nginx.conf, one worker) in front of the origin stub
#   varnish      Varnish (malloc storage, default VCL) in front of the origin stub
# Under load: wrk -t1 -c32; one at a time: wrk -t1 -c1. Medians of the rounds are printed as a
# Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-5}"
SCENARIOS="${SCENARIOS:-ceiling memory memory+otlp redis seed nginx varnish}"

for tool in wrk redis-server taskset nginx varnishd; do
  if ! command -v "$tool" >/dev/null; then
    # policy-rc.d keeps the packages from starting their system services (port 80, 6081).
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-server util-linux nginx-light varnish
    rm -f /usr/sbin/policy-rc.d
  fi
done
cargo build --release --bins -q
VENV=.tools/bench-venv
if [[ "$SCENARIOS" == *seed* && ! -x "$VENV/bin/uvicorn" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q fastapi==0.115.6 uvicorn==0.32.1 redis==5.2.1 prometheus-client==0.21.1
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

REDIS_PORT=$(free_port)
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
PIDS+=($!)
SINK_PORT=$(free_port)
STUB_LISTEN_ADDR=127.0.0.1:$SINK_PORT taskset -c 1 target/release/origin-stub 2>/dev/null &
PIDS+=($!)

declare -A URL
start() { # name, then env assignments; prints the base URL
  local name=$1; shift
  local port; port=$(free_port)
  case "$name" in
    ceiling) env LISTEN_ADDR=127.0.0.1:"$port" TOKIO_WORKER_THREADS=1 taskset -c 0 target/release/bench-ceiling & ;;
    nginx)
      local dir; dir=$(mktemp -d); mkdir -p "$dir"/{body,proxy,fastcgi,uwsgi,scgi,cache}
      sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@UPSTREAM@|$SINK_PORT|g" bench/peers/nginx.conf >"$dir/nginx.conf"
      taskset -c 0 nginx -c "$dir/nginx.conf" -p "$dir" & ;;
    varnish)
      local dir; dir=$(mktemp -d)
      taskset -c 0 varnishd -F -j none -n "$dir" -a "127.0.0.1:$port" -b "127.0.0.1:$SINK_PORT" \
        -s malloc,64m -p default_ttl=120 >/dev/null 2>&1 & ;;
    seed) (cd bench && env REDIS_PORT="$REDIS_PORT" ORIGIN_LATENCY_MS=200 taskset -c 0 "../$VENV/bin/uvicorn" seed_app:app \
            --host 127.0.0.1 --port "$port" --log-level warning) & ;;
    *) env "$@" LISTEN_ADDR=127.0.0.1:"$port" TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 target/release/cache-layer & ;;
  esac
  PIDS+=($!)
  URL[$name]="http://127.0.0.1:$port/items/foo"
  wait_http "${URL[$name]}"
  curl -fs "${URL[$name]}" >/dev/null  # the key is cached from here on
  # Make sure what is measured is a hit: each server says so in its own header.
  local head; head=$(curl -fsi "${URL[$name]}" | tr -d '\r')
  case "$name" in
    nginx) grep -q '^Cache-Status: HIT' <<<"$head" ;;
    varnish) grep -Eq '^X-Varnish: [0-9]+ [0-9]+' <<<"$head" ;;
    memory*|redis) grep -Eq '^cache-status: cache-layer; hit' <<<"$head" ;;
    *) true ;;
  esac || { echo "$name: the warmed key is not a cache hit" >&2; echo "$head" >&2; exit 1; }
}

for s in $SCENARIOS; do
  case "$s" in
    ceiling|seed|nginx|varnish) start "$s" ;;
    memory) start memory ORIGIN_LATENCY_MS=1 ;;
    memory+otlp) start memory+otlp ORIGIN_LATENCY_MS=1 OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:"$SINK_PORT" \
                   OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_METRICS_EXPORTER=none ;;
    redis) start redis ORIGIN_LATENCY_MS=1 MEMORY_CACHE_ENABLED=false REDIS_URL=redis://127.0.0.1:"$REDIS_PORT" ;;
  esac
done

to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else { sub(/s$/,"",v); print v*1000 } }'; }
run_wrk() { # url, connections -> "rps p50_ms p99_ms"
  local out; out=$(taskset -c 1 wrk -t1 -c"$2" -d"${DURATION}s" --latency "$1")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  echo "$rps $p50 $p99"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

RESULTS=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
  for s in $SCENARIOS; do
    echo "round $round: $s" >&2
    echo "$s load $(run_wrk "${URL[$s]}" 32)" >>"$RESULTS"
    echo "$s single $(run_wrk "${URL[$s]}" 1)" >>"$RESULTS"
  done
done

echo
echo "| scenario | req/s under load (c=32) | p50 / p99 under load (ms) | req/s one at a time | p50 / p99 one at a time (ms) |"
echo "| --- | --- | --- | --- | --- |"
for s in $SCENARIOS; do
  col() { awk -v s="$s" -v m="$1" -v f="$2" '$1==s && $2==m {print $f}' "$RESULTS" | median; }
  printf '| %s | %.0f | %.3f / %.3f | %.0f | %.3f / %.3f |\n' "$s" \
    "$(col load 3)" "$(col load 4)" "$(col load 5)" "$(col single 3)" "$(col single 4)" "$(col single 5)"
done
echo
echo "rounds=$ROUNDS duration=${DURATION}s $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
