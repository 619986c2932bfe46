#!/usr/bin/env python3
"""Static contract of the packaging: Dockerfile, docker-compose.yml, deploy/, grafana/ and the
Helm chart must agree with each other and with Cargo.toml, without building or starting anything.

Run:  python3 scripts/packaging_contract.py [--helm PATH]
Prints PASS/FAIL per check and exits non-zero when any check fails. The helpers at the top
(Dockerfile parsing, chart rendering, env extraction) are shared with test_packaging_live.py.
Needs PyYAML; helm (for the chart checks) is looked up as --helm, $HELM, .tools/ or PATH;
promtool (PromQL syntax of the dashboard) is optional.
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "cache-layer"
CI_SCENARIOS = ["default", "external-redis", "external-redis-tls", "all-features",
                "disk-cache-emptydir", "disk-cache-pvc"]
# The scenarios with the disk tier on, and the volume each puts it on.
DISK_SCENARIOS = {"disk-cache-emptydir": "emptyDir", "disk-cache-pvc": "persistentVolumeClaim"}
# The disk tier's settings (src/config.rs) and their lower bounds.
DISK_ENV_MINIMUMS = {"DISK_CACHE_MAX_BYTES": 4 << 20, "DISK_CACHE_INDEX_MAX_BYTES": 1 << 20,
                     "DISK_CACHE_ADMIT_MIN_REQUESTS": 1}
DISK_ENV = {"DISK_CACHE_DIR", *DISK_ENV_MINIMUMS}
DASHBOARD = ROOT / "grafana" / "dashboards" / "cache-layer.json"
CHART_DASHBOARD = CHART / "dashboards" / "cache-layer.json"
DATASOURCE_UID = "PBFA97CFB590B2093"
SERVICE = "cache-layer"  # compose service name, binary name, chart name
SEED_QUERIES = [
    "cache_hits_total",
    "cache_misses_total",
    "histogram_quantile(0.95, sum(rate(request_latency_seconds_bucket[5m])) by (le))",
]
# Every environment variable the service reads (README's configuration table). Keep in step
# as settings are added: a name the packaging sets that is not here is reported as a typo.
def _service_env_names() -> set:
    """The variables the service reads: the constants of `mod vars` in src/config.rs, each named
    as its variable, so this list can never fall behind the code."""
    source = (ROOT / "src" / "config.rs").read_text()
    body = source.split("mod vars {", 1)[1].split("\n}", 1)[0]
    names = {m.group(1) for m in re.finditer(r"^\s*pub const ([A-Z][A-Z0-9_]*):", body, re.M)}
    assert names, "no variables found in src/config.rs's mod vars"
    return names | {"RUST_LOG"}


KNOWN_ENV = _service_env_names()
# Deprecated settings: still read (and validated) by the service, ignored with a warn line. The
# schema accepts them so an upgrade does not break; no default the packaging ships sets them.
DEPRECATED_ENV = {"ORIGIN_BREAKER_FAILURES", "ORIGIN_BREAKER_WINDOW"}
# Set by the chart for the environment itself (downward API), not read by the service.
HELPER_ENV = {"POD_NAME", "POD_NAMESPACE"}
# Values given to fieldRef env vars when a rendered Deployment's env is resolved outside a cluster.
FIELD_REF_VALUES = {
    "metadata.name": "cache-layer-packaging-test",
    "metadata.namespace": "default",
    "spec.nodeName": "packaging-test-node",
    "status.podIP": "127.0.0.1",
    "status.hostIP": "127.0.0.1",
    "spec.serviceAccountName": "default",
}


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[dict]:
    """One dict per stage: image, name, instructions."""
    stages: list[dict] = []
    for word, rest in dockerfile_instructions(path):
        if word == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"image": parts[0], "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((word, rest))
    return stages


def parse_env_instruction(rest: str) -> dict[str, str]:
    """ENV k=v k2="v 2" (or the legacy ENV k v)."""
    tokens = shlex.split(rest)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens)


def image_env() -> dict[str, str]:
    """The environment the runtime image sets (base of every container's environment)."""
    env: dict[str, str] = {}
    for word, rest in dockerfile_stages()[-1]["instructions"]:
        if word == "ENV":
            env.update(parse_env_instruction(rest))
    return env


def exec_form(rest: str) -> list[str]:
    rest = rest.strip()
    if rest.startswith("["):
        return json.loads(rest)
    return ["/bin/sh", "-c", rest]


def dockerignore_excludes(rel: str) -> bool:
    """Whether .dockerignore keeps rel (a path relative to the context) out of the context."""
    path = ROOT / ".dockerignore"
    if not path.exists():
        return False
    excluded = False
    parts = rel.strip("/").split("/")
    for raw in path.read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        # A pattern matching a parent directory matches everything below it.
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatchcase("/".join(parts[:i]), pat):
                excluded = not neg
                break
    return excluded


def cargo_bins() -> dict[str, str]:
    """[[bin]] name -> path, from Cargo.toml."""
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    bins = {b["name"]: b.get("path", f"src/bin/{b['name']}.rs") for b in manifest.get("bin", [])}
    if not bins:
        bins[manifest["package"]["name"]] = "src/main.rs"
    return bins


# --------------------------------------------------------------------------- helm


def find_helm(explicit: str | None = None) -> str | None:
    for cand in (explicit, os.environ.get("HELM"), str(ROOT / ".tools" / "helm" / "helm"),
                 shutil.which("helm")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def render_chart(helm: str, scenario: str | None = None, release: str = "t",
                 extra_args: tuple[str, ...] = ()) -> list[dict]:
    """helm template of the chart (defaults, or ci/<scenario>-values.yaml) as a list of docs."""
    cmd = [helm, "template", release, str(CHART), "--namespace", "default", *extra_args]
    if scenario == "defaults":
        # values.yaml plus the one value a bare install must add (which origin).
        cmd += ["--set", "origin.simulated=true"]
    elif scenario:
        cmd += ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find_doc(docs: list[dict], kind: str, name: str | None = None) -> dict | None:
    for d in docs:
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name):
            return d
    return None


def app_workload(docs: list[dict]) -> dict:
    """The workload running the cache-layer pods: the Deployment, or the StatefulSet that
    replaces it when the disk tier is on a PersistentVolumeClaim. Exactly one of them."""
    found = [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet")
             and d["metadata"]["labels"].get("app.kubernetes.io/name") == SERVICE]
    assert found, "no cache-layer Deployment or StatefulSet in the rendered chart"
    assert len(found) == 1, f"cache-layer pods run by {[d['kind'] for d in found]}: expected one workload"
    return found[0]


def app_service(docs: list[dict]) -> dict:
    """The cache-layer Service clients use (not the StatefulSet's headless one)."""
    found = [d for d in docs if d.get("kind") == "Service"
             and d["metadata"]["labels"].get("app.kubernetes.io/name") == SERVICE
             and d["spec"].get("clusterIP") != "None"]
    assert len(found) == 1, f"expected one cache-layer Service besides a headless one, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def quantity_bytes(q) -> int:
    """A Kubernetes quantity of bytes ("512Mi", "2Gi", "1.5G", 1073741824) as an int."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q).strip())
    assert m, f"{q!r} is not a quantity of bytes"
    unit = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(float(m.group(1)) * unit)


def app_container(workload: dict) -> dict:
    for c in workload["spec"]["template"]["spec"]["containers"]:
        if c["name"] == SERVICE:
            return c
    raise AssertionError(f"no container named cache-layer in the {workload['kind']}")


def resolve_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"named port {port!r} not declared by the container")


def _secret_value(docs: list[dict], name: str, key: str) -> str | None:
    secret = find_doc(docs, "Secret", name)
    if secret is None:
        return None
    if key in secret.get("data", {}):
        return base64.b64decode(secret["data"][key]).decode()
    return secret.get("stringData", {}).get(key)


def _configmap_value(docs: list[dict], name: str, key: str) -> str | None:
    cm = find_doc(docs, "ConfigMap", name)
    return None if cm is None else cm.get("data", {}).get(key)


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined variables expand, $$ escapes, others stay literal."""
    def sub(m: re.Match) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


def deployment_env(docs: list[dict], base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the rendered workload gives the cache-layer container: image ENV, then
    envFrom (ConfigMaps/Secrets resolved from the rendered docs), then env. A reference to a
    ConfigMap/Secret (or key) that the chart does not render fails unless it is optional."""
    container = app_container(app_workload(docs))
    env = dict(base if base is not None else image_env())
    for src in container.get("envFrom", []):
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            ref = src["configMapRef"]
            obj = find_doc(docs, "ConfigMap", ref["name"])
            data = None if obj is None else dict(obj.get("data", {}))
        else:
            ref = src["secretRef"]
            obj = find_doc(docs, "Secret", ref["name"])
            data = None if obj is None else {
                k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
            if obj is not None:
                data.update(obj.get("stringData", {}))
        if data is None:
            if ref.get("optional"):
                continue
            raise AssertionError(f"envFrom names {ref['name']!r}, which the chart does not render")
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = _expand(str(var["value"]), env)
            continue
        src = var.get("valueFrom", {})
        value = None
        if "fieldRef" in src:
            value = FIELD_REF_VALUES[src["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in src or "configMapKeyRef" in src:
            kind = "secretKeyRef" if "secretKeyRef" in src else "configMapKeyRef"
            ref = src[kind]
            lookup = _secret_value if kind == "secretKeyRef" else _configmap_value
            value = lookup(docs, ref["name"], ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise AssertionError(
                    f"env {name} refers to {ref['name']}/{ref['key']}, which the chart does not render")
        elif "resourceFieldRef" in src:
            continue
        env[name] = value
    return env


# --------------------------------------------------------------------------- compose


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _interpolate(value: str) -> str:
    """Compose ${VAR}, ${VAR:-default}, ${VAR-default} and $$ interpolation (host env ignored,
    so the test sees the file's defaults)."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        body = m.group(1) or m.group(2)
        for sep in (":-", "-"):
            if sep in body:
                return body.split(sep, 1)[1]
        return ""
    return re.sub(r"\$\$|\$\{([^}]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value)


def compose_env(service: str = SERVICE, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment compose gives a service: image ENV, env_file, then environment."""
    svc = load_compose()["services"][service]
    env = dict(base if base is not None else image_env())
    env_files = svc.get("env_file", [])
    for f in [env_files] if isinstance(env_files, str) else env_files:
        for line in (ROOT / (f if isinstance(f, str) else f["path"])).read_text().splitlines():
            if line.strip() and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    raw = svc.get("environment", {})
    items = raw.items() if isinstance(raw, dict) else (
        (e.split("=", 1) + [None])[:2] for e in raw)
    for k, v in items:
        if v is not None:
            env[k] = _interpolate(str(v))
    return env


def listen_port(env: dict[str, str]) -> int:
    return int(env.get("LISTEN_ADDR", "0.0.0.0:5000").rsplit(":", 1)[1])


# --------------------------------------------------------------------------- dashboard


def dashboard_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, expr) for every PromQL target, nested rows included."""
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    yield p.get("title", "?"), t["expr"]
            yield from walk(p.get("panels", []))
    return list(walk(json.loads(path.read_text())["panels"]))


def substitute_macros(expr: str, variables: dict[str, str] | None = None) -> str:
    """Grafana macros and dashboard variables replaced by values Prometheus accepts."""
    subs = {"$__rate_interval": "1m", "$__interval_ms": "15000", "$__interval": "15s",
            "$__range_s": "300", "$__range_ms": "300000", "$__range": "5m"}
    subs.update({f"${k}": v for k, v in (variables or {}).items()})
    for k in sorted(subs, key=len, reverse=True):
        expr = expr.replace("${" + k[1:] + "}", subs[k]).replace(k, subs[k])
    leftover = re.findall(r"\$\{?\w+", expr)
    if leftover:
        raise AssertionError(f"unsubstituted variables {leftover} in {expr}")
    return expr


# --------------------------------------------------------------------------- the checks


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def run(self, name: str, fn, *args) -> None:
        try:
            detail = fn(*args)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            self.failed.append(name)
            print(f"FAIL  {name}: {e}")
        else:
            print(f"PASS  {name}" + (f" ({detail})" if detail else ""))


def check_dockerfile() -> str:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "expected a multi-stage build"
    for s in stages:
        image = s["image"]
        assert ":" in image.split("/")[-1] and not image.endswith(":latest"), \
            f"base image {image} is not pinned to a tag"
    releases = set()
    for s in stages:
        tag = s["image"].rsplit(":", 1)[1]
        if "bookworm" in tag or "debian12" in s["image"]:
            releases.add("bookworm")
        elif "bullseye" in tag or "debian11" in s["image"]:
            releases.add("bullseye")
        else:
            releases.add(f"unknown({s['image']})")
    assert len(releases) == 1, f"build and runtime on different Debian releases: {releases}"
    runtime = dict((w, r) for w, r in stages[-1]["instructions"])
    user = runtime.get("USER", "")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"runtime USER {user!r} is not a numeric non-root uid"
    assert "HEALTHCHECK" in runtime and "healthcheck" in runtime["HEALTHCHECK"], \
        "no HEALTHCHECK using the binary's healthcheck subcommand"
    return f"{len(stages)} stages on {releases.pop()}, USER {user}"


def dockerfile_exposed() -> set[int]:
    ports = set()
    for word, rest in dockerfile_stages()[-1]["instructions"]:
        if word == "EXPOSE":
            ports |= {int(p.split("/")[0]) for p in rest.split()}
    return ports


def check_dockerfile_binary() -> str:
    bins = cargo_bins()
    stages = dockerfile_stages()
    copied = None
    for word, rest in stages[-1]["instructions"]:
        if word == "COPY" and "--from=" in rest:
            args = [a for a in rest.split() if not a.startswith("--")]
            m = re.search(r"target/release/([^/\s]+)$", args[0])
            if m:
                copied = (m.group(1), args[1])
    assert copied, "the runtime stage copies no target/release/<binary>"
    name, dest = copied
    assert name in bins, f"Dockerfile copies target/release/{name}; Cargo.toml's [[bin]] names are {sorted(bins)}"
    built = " ".join(r for s in stages[:-1] for w, r in s["instructions"] if w == "RUN")
    assert re.search(rf"cargo build[^&;]*--release[^&;]*--bin {re.escape(name)}\b", built), \
        f"no `cargo build --release --bin {name}` in the build stage"
    dest_bin = dest if not dest.endswith("/") else dest + name
    runtime = dict(stages[-1]["instructions"])
    entry = exec_form(runtime.get("ENTRYPOINT", "[]"))
    health = exec_form(runtime["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert entry[:1] == [dest_bin], f"ENTRYPOINT {entry} does not run {dest_bin}"
    assert health == [dest_bin, "healthcheck"], f"HEALTHCHECK {health} is not [{dest_bin}, healthcheck]"
    return f"target/release/{name} -> {dest_bin}"


def check_dockerfile_copies() -> str:
    seen = []
    for stage in dockerfile_stages():
        for word, rest in stage["instructions"]:
            if word not in ("COPY", "ADD") or "--from=" in rest:
                continue
            args = [a for a in (json.loads(rest) if rest.startswith("[") else rest.split())
                    if not a.startswith("--")]
            for src in args[:-1]:
                assert (ROOT / src).exists(), f"{word} {src}: no such path in the repository"
                assert not dockerignore_excludes(src), f"{word} {src}: excluded by .dockerignore"
                seen.append(src)
    # The dependency layer stubs the target paths the manifest declares: so every target
    # must declare its path, and those under a copied directory must exist.
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for section in ("bin", "test", "bench", "example"):
        for target in manifest.get(section, []):
            assert "path" in target, f"[[{section}]] {target.get('name')} declares no path: the Dockerfile cannot stub it"
    for name, path in cargo_bins().items():
        if any(path.startswith(s.rstrip("/") + "/") for s in seen):
            assert (ROOT / path).exists(), f"[[bin]] {name} at {path} is missing"
    return ", ".join(seen)


def check_compose() -> str:
    compose = load_compose()
    services = compose["services"]
    text = (ROOT / "docker-compose.yml").read_text().splitlines()
    for name, svc in services.items():
        if "image" in svc:
            image = svc["image"]
            assert ":" in image.split("/")[-1] and not image.endswith(":latest"), \
                f"service {name}: image {image} not pinned"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert isinstance(cond, dict) and cond.get("condition"), f"{name}: depends_on {dep} has no condition"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} healthy, which has no healthcheck"
    port_lines = [line for line in text if re.match(r"\s*-\s*\"?(127\.0\.0\.1:)?\d+:\d+", line)]
    uncommented = [line.strip() for line in port_lines if "#" not in line]
    assert not uncommented, f"port lines without a comment: {uncommented}"
    app = services[SERVICE]
    assert app.get("build"), "cache-layer is not built from the Dockerfile"
    health = app["healthcheck"]["test"]
    entry = exec_form(dict(dockerfile_stages()[-1]["instructions"]).get("ENTRYPOINT", "[]"))
    assert health == ["CMD", *entry[:1], "healthcheck"], \
        f"healthcheck {health} is not [CMD, {entry[:1]}, healthcheck] (the image's binary)"
    env = compose_env()
    for var in ("REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        host = urlsplit(env[var]).hostname
        assert host in services, f"{var}={env[var]} names {host}, not a compose service"
    assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc" and env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4317")
    return f"{len(services)} services, {len(port_lines)} commented port lines"


def check_prometheus_config() -> str:
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs[SERVICE]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    port = listen_port(compose_env())
    assert targets == [f"{SERVICE}:{port}"], f"scrape targets {targets} != {SERVICE}:{port}"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scrape_interval") == "5s", "cache-layer is to be scraped every 5s"
    return f"{targets[0]} every {job['scrape_interval']}"


def check_ports(helm: str | None) -> str:
    exposed = dockerfile_exposed()
    assert len(exposed) == 1, f"EXPOSE {exposed}: expected exactly one port"
    port = exposed.pop()
    assert port == listen_port(image_env()), "Dockerfile ENV LISTEN_ADDR and EXPOSE disagree"
    svc = load_compose()["services"][SERVICE]
    compose_ports = {int(str(p).split(":")[-1].split("/")[0]) for p in svc["ports"]}
    assert compose_ports == {port}, f"compose container ports {compose_ports} != EXPOSE {port}"
    assert listen_port(compose_env()) == port, "compose LISTEN_ADDR port != EXPOSE"
    if helm is None:
        raise AssertionError("helm not found: chart ports unchecked")
    for scenario in ["defaults", *CI_SCENARIOS]:
        docs = render_chart(helm, scenario)
        workload = app_workload(docs)
        c = app_container(workload)
        cports = [int(p["containerPort"]) for p in c["ports"]]
        assert cports == [port], f"{scenario}: containerPort {cports} != {port}"
        service = app_service(docs)
        services = [d for d in docs if d["kind"] == "Service"
                    and d["metadata"]["labels"].get("app.kubernetes.io/name") == SERVICE]
        for svc in services:  # the headless Service of a StatefulSet too
            for sp in svc["spec"]["ports"]:
                assert resolve_port(c, sp["targetPort"]) == port, \
                    f"{scenario}: Service {svc['metadata']['name']} targetPort != {port}"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            get = c[probe]["httpGet"]
            assert resolve_port(c, get["port"]) == port, f"{scenario}: {probe} port != {port}"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        env = deployment_env(docs)
        assert listen_port(env) == port, f"{scenario}: LISTEN_ADDR {env.get('LISTEN_ADDR')} != :{port}"
        monitor = find_doc(docs, "ServiceMonitor")
        if monitor:
            assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
            # One Service selected, or each pod is scraped once per Service (the headless one).
            scraped = [svc["metadata"]["name"] for svc in services
                       if selects(monitor["spec"]["selector"], svc["metadata"]["labels"])]
            assert scraped == [service["metadata"]["name"]], \
                f"{scenario}: the ServiceMonitor selects Services {scraped}, not just {service['metadata']['name']}"
    return f"all agree on {port}"


def check_admin_port(helm: str | None) -> str:
    """adminPort: ADMIN_LISTEN_ADDR set, a named container port, probes and scraping on it, the
    Service and the NetworkPolicy open to it; LISTEN_ADDR unchanged."""
    assert helm, "helm not found"
    admin = 9000
    docs = render_chart(helm, "defaults", extra_args=(
        "--set", f"adminPort={admin}", "--set", "serviceMonitor.enabled=true",
        "--set", "networkPolicy.enabled=true"))
    c = app_container(app_workload(docs))
    assert {p["name"]: int(p["containerPort"]) for p in c["ports"]} == {"http": 5000, "admin": admin}
    env = deployment_env(docs)
    assert env.get("ADMIN_LISTEN_ADDR") == f"0.0.0.0:{admin}", env.get("ADMIN_LISTEN_ADDR")
    assert listen_port(env) == 5000
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert resolve_port(c, c[probe]["httpGet"]["port"]) == admin, f"{probe} not on the admin port"
    service = app_service(docs)
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "admin": "admin"}
    monitor = find_doc(docs, "ServiceMonitor")
    assert monitor and monitor["spec"]["endpoints"][0]["port"] == "admin"
    policy = find_doc(docs, "NetworkPolicy")
    assert policy and {"port": "admin", "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]
    off = render_chart(helm, "defaults")
    assert "ADMIN_LISTEN_ADDR" not in deployment_env(off), "adminPort 0 sets no admin listener"
    return f"probes, scraping, Service and NetworkPolicy on {admin}"


def check_proxy_header_vars(helm: str | None) -> str:
    """secrets.proxyHeaderVars: each listed key of secrets.existingSecret becomes a variable of
    the same name (what PROXY_ROUTES' header_from_env=Name:VAR reads); without existingSecret the
    render fails and says why."""
    assert helm, "helm not found"
    docs = render_chart(helm, "defaults", extra_args=(
        "--set", "secrets.existingSecret=api-keys", "--set", "secrets.proxyHeaderVars={WEATHER_TOKEN}",
        "--set-string", "config.PROXY_ROUTES=/w=https://api.weather.example/v2;header_from_env=Authorization:WEATHER_TOKEN"))
    c = app_container(app_workload(docs))
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])}
    assert refs.get("WEATHER_TOKEN") == {"name": "api-keys", "key": "WEATHER_TOKEN"}, refs.get("WEATHER_TOKEN")
    bare = subprocess.run([helm, "template", "t", str(CHART), "--set", "origin.simulated=true",
                           "--set", "secrets.proxyHeaderVars={WEATHER_TOKEN}"], capture_output=True, text=True)
    assert bare.returncode != 0 and "secrets.proxyHeaderVars needs secrets.existingSecret" in bare.stderr, \
        bare.stderr[-300:]
    return "WEATHER_TOKEN from the Secret api-keys; refused without existingSecret"


def check_chart_deployment(helm: str | None) -> str:
    assert helm, "helm not found"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deps = {d["name"]: d for d in chart.get("dependencies", [])}
    assert deps["redis"]["condition"] == "redis.enabled"
    assert deps["redis"]["repository"] == "file://charts/redis"
    assert (CHART / "charts" / "redis" / "Chart.yaml").exists()
    for scenario in ["defaults", *CI_SCENARIOS]:
        docs = render_chart(helm, scenario)
        workload = app_workload(docs)
        pod = workload["spec"]["template"]
        c = app_container(workload)
        psc, sc = pod["spec"].get("securityContext", {}), c.get("securityContext", {})
        assert psc.get("runAsNonRoot") and psc.get("runAsUser") == 65532, f"{scenario}: pod not non-root 65532"
        assert sc.get("readOnlyRootFilesystem") is True, f"{scenario}: root filesystem writable"
        assert sc.get("allowPrivilegeEscalation") is False
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{scenario}: capabilities not dropped"
        assert "checksum/config" in pod["metadata"].get("annotations", {}), f"{scenario}: no checksum/config"
        assert c["image"].endswith(":" + str(chart["appVersion"])), f"{scenario}: image tag != appVersion"
        assert c.get("resources", {}).get("requests"), f"{scenario}: no resource requests"
        env = deployment_env(docs)
        delay, drain = int(env.get("SHUTDOWN_DELAY_SECS", 0)), int(env.get("SHUTDOWN_DRAIN_SECS", 20))
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        assert grace > delay + drain, f"{scenario}: grace {grace} <= delay {delay} + drain {drain}"
        unknown = set(env) - KNOWN_ENV - HELPER_ENV - {k for k in env if k.startswith("OTEL_")}
        assert not unknown, f"{scenario}: env vars the service does not read: {sorted(unknown)}"
        redis_on = find_doc(docs, "Deployment", "t-redis") is not None
        if redis_on:
            assert env.get("REDIS_HOST") == "t-redis" and env.get("REDIS_PASSWORD"), \
                f"{scenario}: bundled Redis not wired (REDIS_HOST/REDIS_PASSWORD)"
            rc = find_doc(docs, "Deployment", "t-redis")["spec"]["template"]["spec"]["containers"][0]
            args = rc["args"]
            assert "allkeys-lru" in args and "--maxmemory" in args, "redis: no maxmemory/LRU"
            assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
            assert ":" in rc["image"] and not rc["image"].endswith(":latest")
        else:
            assert "REDIS_URL" in env or scenario == "defaults", f"{scenario}: no Redis configured"
        hpa = find_doc(docs, "HorizontalPodAutoscaler")
        if hpa:
            ref = hpa["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["name"]) == (workload["kind"], workload["metadata"]["name"]), \
                f"{scenario}: the HPA scales {ref['kind']}/{ref['name']}, not the {workload['kind']}"
        pod_labels = pod["metadata"]["labels"]
        assert selects(workload["spec"]["selector"], pod_labels), f"{scenario}: selector misses the pods"
        for kind in ("PodDisruptionBudget", "NetworkPolicy"):
            for d in docs:
                if d["kind"] == kind and d["metadata"]["name"] == workload["metadata"]["name"]:
                    sel = d["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
                    assert selects(sel, pod_labels), f"{scenario}: the {kind} does not select the pods"
        ingress = find_doc(docs, "Ingress")
        if ingress:
            paths = {(p["path"], p["pathType"]) for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
            allowed = {("/items/", "Prefix"), ("/items:batch", "Exact")}
            assert paths == allowed, f"{scenario}: Ingress paths {paths} (only {allowed} allowed)"
        test_pod = next(d for d in docs if d["kind"] == "Pod"
                        and d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test")
        script = " ".join(test_pod["spec"]["containers"][0]["command"])
        assert '"source":"cache"' in script, "helm test does not check \"source\":\"cache\""
        assert not test_pod["spec"]["containers"][0]["image"].endswith(":latest")
    return "defaults + " + ", ".join(CI_SCENARIOS)


def check_chart_off_by_default(helm: str | None) -> str:
    assert helm, "helm not found"
    kinds = {d["kind"] for d in render_chart(helm, "defaults")}
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule",
                 "NetworkPolicy", "Ingress", "HTTPRoute", "StatefulSet", "PersistentVolumeClaim"):
        assert kind not in kinds, f"{kind} rendered by default"
    env = deployment_env(render_chart(helm, "defaults"))
    assert not DISK_ENV & set(env), f"the disk tier is on by default: {sorted(DISK_ENV & set(env))}"
    all_docs = render_chart(helm, "all-features")
    all_kinds = {d["kind"] for d in all_docs}
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule",
                 "NetworkPolicy", "Ingress"):
        assert kind in all_kinds, f"{kind} missing from the all-features scenario"
    dash = [d for d in all_docs if d["kind"] == "ConfigMap"
            and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert dash, "no ConfigMap labelled grafana_dashboard: \"1\" in all-features"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in deployment_env(all_docs), "all-features sets no OTLP endpoint"
    shipped = json.loads(next(iter(dash[0]["data"].values())))
    assert shipped["uid"] == "cache-layer"
    return "optional kinds off by default, all on in all-features"


def check_values_comments() -> str:
    """Every top-level block of the charts' values.yaml sits under a comment (a run of
    one-line keys may share one)."""
    checked = 0
    for path in (CHART / "values.yaml", CHART / "charts" / "redis" / "values.yaml"):
        prev = ""
        for line in path.read_text().splitlines():
            if re.match(r"[A-Za-z]", line):
                grouped = re.match(r"[A-Za-z]\w*: \S", prev) and re.match(r"[A-Za-z]\w*: \S", line)
                assert prev.startswith("#") or grouped, \
                    f"{path.relative_to(ROOT)}: block {line.split(':')[0]!r} has no comment above it"
                checked += 1
            if line.strip():
                prev = line
    return f"{checked} blocks"


def check_dashboard() -> str:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "cache-layer", f"dashboard uid {dash['uid']!r}"
    assert CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes(), \
        f"{CHART_DASHBOARD.relative_to(ROOT)} differs from {DASHBOARD.relative_to(ROOT)}: copy it again"
    # Grafana keys panels by id: two panels with one id break links, edits and the layout.
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), f"panel ids not unique: {sorted(i for i in set(ids) if ids.count(i) > 1)}"

    def uids(node):
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") == "prometheus":
                yield ds.get("uid")
            for v in node.values():
                yield from uids(v)
        elif isinstance(node, list):
            for v in node:
                yield from uids(v)
    found = set(uids(dash))
    assert found == {DATASOURCE_UID}, f"datasource uids {found} != {{{DATASOURCE_UID}}}"
    exprs = [e for _, e in dashboard_exprs()]
    for seed in SEED_QUERIES:
        assert seed in exprs, f"seed query missing: {seed}"
    for d in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        json.loads(d.read_text())
    ds = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text())
    prom = [d for d in ds["datasources"] if d["type"] == "prometheus"]
    assert prom and prom[0]["uid"] == DATASOURCE_UID and prom[0]["name"] == "Prometheus" \
        and prom[0].get("isDefault"), "provisioned Prometheus datasource is not uid PBFA97CFB590B2093, default"
    compose = load_compose()["services"]["grafana"]
    home = compose["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["volumes"]}
    mount_dir = str(Path(home).parent)
    assert mount_dir in mounts and (ROOT / mounts[mount_dir] / Path(home).name).resolve() == DASHBOARD, \
        f"Grafana home dashboard {home} is not grafana/dashboards/cache-layer.json"
    return f"{len(exprs)} expressions, chart copy identical"


def check_promql_syntax() -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found"
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": substitute_macros(e, {"job": ".+"})}
        for i, (_, e) in enumerate(dashboard_exprs())]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f)
    try:
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    assert r.returncode == 0, (r.stdout + r.stderr).strip()
    return f"{len(rules['groups'][0]['rules'])} expressions parse"


def check_compose_env_names() -> str:
    env = compose_env()
    unknown = set(env) - KNOWN_ENV - {k for k in env if k.startswith("OTEL_")}
    assert not unknown, f"compose sets env vars the service does not read: {sorted(unknown)}"
    return f"{len(env)} variables"


def check_readme_env_table() -> str:
    """The README's configuration table is the contract: every variable the code reads is in it."""
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in KNOWN_ENV if f"`{name}`" not in readme)
    assert not missing, f"README.md does not document: {missing}"
    return f"{len(KNOWN_ENV)} variables documented"

def _disk_mount(workload: dict) -> tuple[dict, dict | None]:
    """The container's mount of the disk-cache volume, and the pod volume behind it (None when
    a volumeClaimTemplate provides it)."""
    c = app_container(workload)
    mounts = [m for m in c.get("volumeMounts", []) if m["name"] == "disk-cache"]
    assert len(mounts) == 1, f"the container mounts disk-cache {len(mounts)} times"
    volumes = [v for v in workload["spec"]["template"]["spec"].get("volumes", [])
               if v["name"] == "disk-cache"]
    return mounts[0], (volumes[0] if volumes else None)


def check_chart_disk_cache(helm: str | None) -> str:
    """diskCache: off by default; on an emptyDir the Deployment mounts it; on a claim a StatefulSet
    with volumeClaimTemplates (and a headless Service as its serviceName) replaces the Deployment.
    The env it sets names the service's settings, within their bounds, and the non-root user can
    write the volume."""
    assert helm, "helm not found"
    docs = render_chart(helm, "defaults")
    workload = app_workload(docs)
    assert workload["kind"] == "Deployment", f"defaults render a {workload['kind']}"
    assert not [m for m in app_container(workload).get("volumeMounts", []) if m["name"] == "disk-cache"], \
        "defaults mount a disk-cache volume"
    values = yaml.safe_load((CHART / "values.yaml").read_text())["diskCache"]
    assert values["enabled"] is False and values["volume"] == "emptyDir", "diskCache is not off by default"
    seen, unknown = [], set()
    for scenario, volume in DISK_SCENARIOS.items():
        scenario_values = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text())["diskCache"]
        assert scenario_values["volume"] == volume, f"{scenario}: volume {scenario_values['volume']}"
        docs = render_chart(helm, scenario)
        workload = app_workload(docs)
        mount, pod_volume = _disk_mount(workload)
        env = deployment_env(docs)
        unknown |= {k for k in env if k.startswith("DISK_")} - KNOWN_ENV
        assert DISK_ENV <= set(env), f"{scenario}: the env lacks {sorted(DISK_ENV - set(env))}"
        assert env["DISK_CACHE_DIR"] == mount["mountPath"] and env["DISK_CACHE_DIR"].startswith("/"), \
            f"{scenario}: DISK_CACHE_DIR={env['DISK_CACHE_DIR']} is not the mount {mount['mountPath']}"
        assert not mount.get("readOnly"), f"{scenario}: the disk-cache mount is read-only"
        for name, minimum in DISK_ENV_MINIMUMS.items():
            assert env[name].isdigit() and int(env[name]) >= minimum, f"{scenario}: {name}={env[name]} < {minimum}"
        max_bytes = int(env["DISK_CACHE_MAX_BYTES"])
        pod = workload["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        # The kubelet makes the volume group-owned by fsGroup and group-writable, and adds fsGroup
        # to the container's groups: without it the volume is root's, and uid 65532 cannot write.
        assert isinstance(psc.get("fsGroup"), int), f"{scenario}: no fsGroup: uid 65532 cannot write the volume"
        if volume == "emptyDir":
            assert workload["kind"] == "Deployment", f"{scenario}: an emptyDir tier runs in a {workload['kind']}"
            assert pod_volume is not None and "emptyDir" in pod_volume, f"{scenario}: disk-cache is no emptyDir"
            limit = (pod_volume["emptyDir"] or {}).get("sizeLimit")
            assert limit is None or quantity_bytes(limit) >= max_bytes, \
                f"{scenario}: emptyDir sizeLimit {limit} < DISK_CACHE_MAX_BYTES {max_bytes}"
            assert find_doc(docs, "StatefulSet") is None
        else:
            assert workload["kind"] == "StatefulSet", f"{scenario}: a claim per pod needs a StatefulSet, not a {workload['kind']}"
            assert pod_volume is None, f"{scenario}: disk-cache is a pod volume, not a volumeClaimTemplate"
            claims = {t["metadata"]["name"]: t for t in workload["spec"].get("volumeClaimTemplates", [])}
            assert "disk-cache" in claims, f"{scenario}: no volumeClaimTemplate disk-cache"
            claim = claims["disk-cache"]["spec"]
            assert "ReadWriteOnce" in claim["accessModes"] or "ReadWriteOncePod" in claim["accessModes"]
            size = claim["resources"]["requests"]["storage"]
            assert quantity_bytes(size) >= max_bytes, f"{scenario}: claim of {size} < DISK_CACHE_MAX_BYTES {max_bytes}"
            headless = find_doc(docs, "Service", workload["spec"]["serviceName"])
            assert headless is not None, f"{scenario}: serviceName {workload['spec']['serviceName']} is not rendered"
            assert headless["spec"].get("clusterIP") == "None", f"{scenario}: the serviceName Service is not headless"
            assert selects({"matchLabels": headless["spec"]["selector"]}, workload["spec"]["template"]["metadata"]["labels"])
            other = [d for d in docs if d["kind"] == "Deployment"
                     and d["metadata"]["labels"].get("app.kubernetes.io/name") == SERVICE]
            assert not other, f"{scenario}: a Deployment is rendered beside the StatefulSet"
            assert find_doc(docs, "HorizontalPodAutoscaler"), f"{scenario}: turn the HPA on, to check its target"
        seen.append(f"{scenario}: {workload['kind']}")
    # Last, so that the shape of both scenarios is checked before the names are.
    assert not unknown, f"the chart sets {sorted(unknown)}, which src/config.rs does not read"
    return "; ".join(seen)


def check_chart_memory_sizing(helm: str | None) -> str:
    """In every scenario the memory limit covers 1.2 x (memory bound + disk index bound) + 32 MiB,
    the README's sizing rule."""
    assert helm, "helm not found"
    out = []
    for scenario in ["defaults", *CI_SCENARIOS]:
        docs = render_chart(helm, scenario)
        env = deployment_env(docs)
        limit = app_container(app_workload(docs)).get("resources", {}).get("limits", {}).get("memory")
        assert limit, f"{scenario}: no memory limit"
        bound = 0
        if env.get("MEMORY_CACHE_ENABLED", "true").lower() not in ("false", "0", "no"):
            bound += int(env.get("MEMORY_CACHE_MAX_BYTES", "67108864"))
        if env.get("DISK_CACHE_DIR"):
            bound += int(env.get("DISK_CACHE_INDEX_MAX_BYTES", "16777216"))
        needed = 1.2 * bound + (32 << 20)
        assert quantity_bytes(limit) >= needed, \
            f"{scenario}: memory limit {limit} < 1.2 x {bound} + 32 MiB = {needed / (1 << 20):.0f} MiB"
        out.append(f"{scenario} {limit} >= {needed / (1 << 20):.0f}Mi")
    return ", ".join(out)


def check_compose_disk_cache() -> str:
    """compose puts DISK_CACHE_DIR on a named volume, and the image makes that directory owned by
    its user, so the volume (which takes the ownership of the image's directory) is writable."""
    compose = load_compose()
    env = compose_env()
    disk_dir = env.get("DISK_CACHE_DIR")
    assert disk_dir and disk_dir.startswith("/"), f"compose DISK_CACHE_DIR={disk_dir!r}: not an absolute path"
    assert int(env.get("DISK_CACHE_MAX_BYTES", "0")) >= DISK_ENV_MINIMUMS["DISK_CACHE_MAX_BYTES"], \
        f"compose DISK_CACHE_MAX_BYTES={env.get('DISK_CACHE_MAX_BYTES')}"
    mounts = {}
    for v in compose["services"][SERVICE].get("volumes", []):
        if isinstance(v, str):
            src, _, rest = v.partition(":")
            mounts[rest.split(":")[0]] = src
        else:
            mounts[v["target"]] = v.get("source")
    source = mounts.get(disk_dir)
    assert source, f"nothing is mounted at DISK_CACHE_DIR={disk_dir}"
    assert not source.startswith((".", "/")), f"{disk_dir} is a bind mount ({source}), not a named volume"
    assert source in (compose.get("volumes") or {}), f"named volume {source} is not declared under volumes:"
    runtime = dockerfile_stages()[-1]["instructions"]
    uid = dict(runtime)["USER"].split(":")[0]
    owned = [rest for word, rest in runtime if word == "COPY"
             and re.search(rf"--chown={uid}(:\d+)?\s", rest + " ")
             and rest.split()[-1].rstrip("/") == disk_dir.rstrip("/")]
    assert owned, f"the runtime image has no COPY --chown={uid} ... {disk_dir}: the volume would be root's"
    return f"{disk_dir} on volume {source}, owned by {uid} in the image"


def _readme_tables() -> list[tuple[str, list[list[str]]]]:
    """(header's first cell, rows as cell lists) for every table of README.md."""
    tables, rows, header = [], None, None
    for line in (ROOT / "README.md").read_text().splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if rows is None:
                header, rows = cells[0], []
            elif not set(line) <= set("|- "):
                rows.append(cells)
        elif rows is not None:
            tables.append((header, rows))
            rows = None
    return tables


def check_readme_tables() -> str:
    """The README's tables have one row per thing: no variable, endpoint, metric or span twice
    (the status table: no status and error code twice)."""
    dupes, count = [], 0
    for header, rows in _readme_tables():
        keys = [tuple(r[:2]) if header == "status" else r[0] for r in rows]
        count += 1
        dupes += [f"{header}: {k}" for k in sorted(set(keys), key=str) if keys.count(k) > 1]
    assert not dupes, f"rows given twice: {dupes}"
    return f"{count} tables"


def check_dashboard_covers_metrics() -> str:
    """Every metric of the README's metrics table is on some dashboard panel."""
    metrics = next(rows for header, rows in _readme_tables() if header == "name")
    names = [r[0].strip("`") for r in metrics]
    exprs = " ".join(e for _, e in dashboard_exprs())
    missing = [n for n in names if not re.search(rf"\b{re.escape(n)}(_bucket|_sum|_count)?\b", exprs)]
    assert not missing, f"README metrics on no dashboard panel: {missing}"
    return f"{len(names)} metrics"


def _helm_template_error(helm: str, *args: str) -> str:
    """helm template with these arguments, expected to fail: its error output."""
    r = subprocess.run([helm, "template", "t", str(CHART), "--namespace", "default", *args],
                       capture_output=True, text=True)
    assert r.returncode != 0, f"helm template {' '.join(args)} rendered; it should have failed"
    return r.stderr


def check_chart_refuses_mistakes(helm: str | None) -> str:
    """A values mistake fails helm template (so helm install), with a message naming it, instead of
    a crash loop: no origin chosen, both chosen, an unknown or misspelt config key (schema), and
    the cross-field rules src/config.rs enforces at start-up."""
    assert helm, "helm not found"
    err = _helm_template_error(helm)
    assert "config.ORIGIN_URL is empty" in err and "origin.simulated=true" in err, \
        f"defaults without an origin: {err.strip()[-300:]}"
    err = _helm_template_error(helm, "--set", "origin.simulated=true",
                               "--set-string", "config.ORIGIN_URL=http://api/items/{key}")
    assert "pick one" in err, err.strip()[-300:]
    for key in ("CACHE_TTL_SEC", "ORIGIN_URl", "LISTEN_ADDR", "NOT_A_SETTING"):
        err = _helm_template_error(helm, "--set", "origin.simulated=true", "--set-string", f"config.{key}=1")
        assert "config" in err and key in err, f"config.{key} was not refused by the schema: {err.strip()[-300:]}"
    err = _helm_template_error(helm, "--set", "origin.simulated=true", "--set-string",
                               "config.ORIGIN_TIMEOUT_MS=6000")
    assert "FLEET_LOCK_TTL_MS (5000) must be at least config.ORIGIN_TIMEOUT_MS (6000)" in err, err.strip()[-300:]
    err = _helm_template_error(helm, "--set", "origin.simulated=true", "--set-string",
                               "config.CACHE_TTL_MIN_SECS=600", "--set-string", "config.CACHE_TTL_MAX_SECS=60")
    assert "CACHE_TTL_MIN_SECS (600) must be at most" in err, err.strip()[-300:]
    # Without Redis the fleet lock is not used, and the service does not check it either.
    render_chart(helm, "defaults", extra_args=("--set", "redis.enabled=false", "--set-string",
                                               "config.ORIGIN_TIMEOUT_MS=6000"))
    for key in DEPRECATED_ENV:  # still accepted, so values of an older release install
        render_chart(helm, "defaults", extra_args=("--set-string", f"config.{key}=5"))
    return "no origin, both origins, 4 bad keys, 2 cross-field rules"


# README config variables the chart sets from other values than config (the values key that
# sets each), so every README variable has a place in the chart's schema.
CHART_ENV_FROM_VALUES = {
    "LISTEN_ADDR": "containerPort", "ADMIN_LISTEN_ADDR": "adminPort",
    "SHUTDOWN_DELAY_SECS": "shutdown.delaySeconds",
    "SHUTDOWN_DRAIN_SECS": "shutdown.drainSeconds", "REDIS_URL": "externalRedis.url",
    "REDIS_HOST": "redis.enabled", "REDIS_PORT": "redis.service.port",
    "REDIS_PASSWORD": "externalRedis.password", "REDIS_CLUSTER": "externalRedis.cluster",
    "REDIS_TLS_CA_FILE": "externalRedis.tlsCA.key", "ADMIN_TOKEN": "secrets.adminToken",
    "ORIGIN_AUTHORIZATION": "secrets.originAuthorization", "DISK_CACHE_DIR": "diskCache.mountPath",
    "DISK_CACHE_MAX_BYTES": "diskCache.maxBytes", "DISK_CACHE_INDEX_MAX_BYTES": "diskCache.indexMaxBytes",
    "DISK_CACHE_ADMIT_MIN_REQUESTS": "diskCache.admitMinRequests",
    "OTEL_SERVICE_NAME": "otel.serviceName", "OTEL_EXPORTER_OTLP_ENDPOINT": "otel.endpoint",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "otel.protocol", "OTEL_RESOURCE_ATTRIBUTES": "otel.resourceAttributes",
}


def readme_env_names() -> list[str]:
    """The variables named in the first column of the README's configuration table."""
    rows = next(rows for header, rows in _readme_tables() if header == "variable")
    return [n for r in rows for n in re.findall(r"`([A-Z][A-Z0-9_]*)`", r[0])]


def check_readme_env_in_schema() -> str:
    """Every variable of the README's configuration table is a key of the chart's schema: a
    property of config, or set by the values key CHART_ENV_FROM_VALUES names (which the schema
    has). Every config property is a setting the service reads, and the schema refuses others."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    assert config.get("additionalProperties") is False, "config accepts unknown keys"
    props = set(config["properties"])
    missing = []
    for name in readme_env_names():
        if name in props or (name.startswith("OTEL_") and name not in CHART_ENV_FROM_VALUES):
            continue  # other OTEL_* go through config's OTEL_ pattern
        path = CHART_ENV_FROM_VALUES.get(name)
        node = schema
        for part in (path or "-").split("."):
            node = (node or {}).get("properties", {}).get(part)
        if node is None:
            missing.append(name + (f" ({path} not in the schema)" if path else ""))
    assert not missing, f"README variables with no key in values.schema.json: {missing}"
    strays = props - KNOWN_ENV
    assert not strays, f"schema config keys the service does not read: {sorted(strays)}"
    shadowed = props & set(CHART_ENV_FROM_VALUES)
    assert not shadowed, f"config may set {sorted(shadowed)}, which other values set"
    values = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    assert not DEPRECATED_ENV & set(values), f"values.yaml sets deprecated {sorted(DEPRECATED_ENV & set(values))}"
    return f"{len(readme_env_names())} README variables"


def check_chart_production(helm: str | None) -> str:
    """Production defaults: CONFIG_STRICT on and no service-link variables in every scenario; a
    soft spread across nodes and zones; a PodDisruptionBudget only when it cannot block a drain;
    a NetworkPolicy that does not admit everyone when ingressFrom is empty; the PrometheusRule
    holds exactly files/alerts.yaml."""
    assert helm, "helm not found"
    for scenario in ["defaults", *CI_SCENARIOS]:
        docs = render_chart(helm, scenario)
        pod = app_workload(docs)["spec"]["template"]["spec"]
        assert pod.get("enableServiceLinks") is False, f"{scenario}: enableServiceLinks is not false"
        assert deployment_env(docs).get("CONFIG_STRICT") == "true", f"{scenario}: CONFIG_STRICT is not true"
    pod = app_workload(render_chart(helm, "defaults"))["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in pod.get("topologySpreadConstraints", [])}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, f"spread over {sorted(spread)}"
    for c in spread.values():
        assert c["whenUnsatisfiable"] == "ScheduleAnyway", f"{c['topologyKey']}: not a soft constraint"
        assert selects(c["labelSelector"], app_workload(render_chart(helm, "defaults"))["spec"]["template"]["metadata"]["labels"])
    pdb = lambda *a: find_doc(render_chart(helm, "defaults", extra_args=a), "PodDisruptionBudget")
    assert pdb() is None, "a PodDisruptionBudget over one pod would block every drain"
    assert pdb("--set", "replicaCount=2") is not None, "no PodDisruptionBudget with 2 replicas"
    assert pdb("--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=1") is None
    assert pdb("--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=2") is not None
    policy = find_doc(render_chart(helm, "defaults", extra_args=("--set", "networkPolicy.enabled=true")),
                      "NetworkPolicy", "t-cache-layer")
    sources = policy["spec"]["ingress"][0].get("from")
    assert sources and {"podSelector": {}} in sources and not any("namespaceSelector" in p or "ipBlock" in p for p in sources), \
        f"an empty ingressFrom admits {sources}: expected this namespace's pods only"
    rule = find_doc(render_chart(helm, "all-features"), "PrometheusRule")
    assert rule is not None, "all-features renders no PrometheusRule"
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "the PrometheusRule differs from files/alerts.yaml"
    return "CONFIG_STRICT, enableServiceLinks, spread, PDB, NetworkPolicy, PrometheusRule"


def check_alert_tests() -> str:
    """deploy/alerts-test.yaml tests the chart's alert file, and each alert has a test that fires
    it and one that does not (promtool itself runs them: check-packaging.sh)."""
    tests = yaml.safe_load((ROOT / "deploy" / "alerts-test.yaml").read_text())
    files = [(ROOT / "deploy" / f).resolve() for f in tests["rule_files"]]
    assert files == [CHART / "files" / "alerts.yaml"], f"rule_files {files}"
    alerts = [r["alert"] for g in yaml.safe_load(files[0].read_text())["groups"] for r in g["rules"] if "alert" in r]
    fires, quiet = set(), set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    lacking = [f"{a}: {'no firing test' if a not in fires else 'no quiet test'}" for a in alerts
               if a not in fires or a not in quiet]
    assert not lacking, f"alerts without both tests: {lacking}"
    return f"{len(alerts)} alerts, each fired and kept quiet"


def check_compose_strict_and_local() -> str:
    """compose: CONFIG_STRICT on; every published port bound to 127.0.0.1; no shipped admin
    token; Grafana's admin password not a default; Prometheus without --web.enable-lifecycle."""
    compose = load_compose()
    env = compose_env()
    assert env.get("CONFIG_STRICT") == "true", "compose does not set CONFIG_STRICT=true"
    open_ports = [f"{name}: {p}" for name, svc in compose["services"].items() for p in svc.get("ports", [])
                  if not str(p).startswith("127.0.0.1:")]
    assert not open_ports, f"ports published on every interface: {open_ports}"
    raw = compose["services"][SERVICE]["environment"].get("ADMIN_TOKEN")
    assert raw is None or re.fullmatch(r"\$\{ADMIN_TOKEN(:?\?[^}]*|:?-)?\}", str(raw)), \
        f"ADMIN_TOKEN {raw!r}: compose must not ship a token"
    grafana = compose["services"]["grafana"]["environment"]
    assert str(grafana.get("GF_SECURITY_ADMIN_PASSWORD", "admin")) != "admin", "Grafana admin/admin"
    assert "--web.enable-lifecycle" not in compose["services"]["prometheus"].get("command", []), \
        "Prometheus --web.enable-lifecycle lets anyone reaching it shut it down"
    return f"{sum(len(s.get('ports', [])) for s in compose['services'].values())} ports on 127.0.0.1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--helm", help="helm binary (default: $HELM, .tools/, PATH)")
    args = ap.parse_args()
    helm = find_helm(args.helm)
    c = Checks()
    c.run("contract: Dockerfile stages, pinned bases, same Debian, numeric non-root USER", check_dockerfile)
    c.run("contract: Dockerfile binary is a Cargo [[bin]] built at target/release/<name>", check_dockerfile_binary)
    c.run("contract: every path the Dockerfile copies exists and is in the build context", check_dockerfile_copies)
    c.run("contract: ports agree (EXPOSE, compose, LISTEN_ADDR, containerPort, Service, probes)", check_ports, helm)
    c.run("contract: adminPort moves probes and scraping to ADMIN_LISTEN_ADDR", check_admin_port, helm)
    c.run("contract: secrets.proxyHeaderVars gives header_from_env its variables", check_proxy_header_vars, helm)
    c.run("contract: compose services, pinned images, healthchecks, depends_on, port comments", check_compose)
    c.run("contract: compose env names are the service's settings", check_compose_env_names)
    c.run("contract: deploy/prometheus.yml scrapes the compose service", check_prometheus_config)
    c.run("contract: chart workload security, probes, grace period, Redis wiring, HPA/PDB targets, helm test",
          check_chart_deployment, helm)
    c.run("contract: chart optional features off by default, on in all-features", check_chart_off_by_default, helm)
    c.run("contract: chart diskCache: emptyDir in the Deployment, a claim per pod in a StatefulSet, env, fsGroup",
          check_chart_disk_cache, helm)
    c.run("contract: chart memory limits cover 1.2 x (memory + disk index bounds) + 32 MiB",
          check_chart_memory_sizing, helm)
    c.run("contract: compose puts DISK_CACHE_DIR on a named volume the image's user owns", check_compose_disk_cache)
    c.run("contract: every values.yaml block has a comment", check_values_comments)
    c.run("contract: dashboard JSON, uid, datasource uid, seed queries, chart copy", check_dashboard)
    c.run("contract: dashboard PromQL parses (promtool check rules)", check_promql_syntax)
    c.run("contract: every metric of the README is on the dashboard", check_dashboard_covers_metrics)
    c.run("contract: README tables list each variable, endpoint, metric and span once", check_readme_tables)
    c.run("contract: README documents every variable src/config.rs reads", check_readme_env_table)
    c.run("contract: every README variable is a chart schema key; config refuses unknown keys",
          check_readme_env_in_schema)
    c.run("contract: the chart refuses a missing origin, unknown config keys and cross-field mistakes",
          check_chart_refuses_mistakes, helm)
    c.run("contract: chart production defaults (CONFIG_STRICT, no service links, spread, PDB, NetworkPolicy, PrometheusRule)",
          check_chart_production, helm)
    c.run("contract: every alert has a firing and a quiet promtool test", check_alert_tests)
    c.run("contract: compose is for a laptop (loopback ports, no shipped secrets, CONFIG_STRICT)",
          check_compose_strict_and_local)
    if c.failed:
        print(f"contract: {len(c.failed)} check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
