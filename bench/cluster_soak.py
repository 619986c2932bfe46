#!/usr/bin/env python3
"""Redis Cluster fault soak: kills, kill-and-burst and stalls of masters, repeated.

Why this file exists: a failover must cost only the failed node's slots and the tier must always
come back. Timed figures from a shared 2-core VM are never asserted by tests; this
script measures them and writes its section of docs/benchmarks.md.

Setup: a 6-node cluster (3 masters, 3 replicas, cluster-node-timeout 2000), the origin stub at
20 ms, two service replicas (one with the memory tier, one with MEMORY_CACHE_ENABLED=false), each
under 300 req/s of background traffic over 2,000 keys. Then ROUNDS times each (default 25):
  kill        SIGKILL a master; the killed node is restarted (it rejoins as a replica)
  burst       SIGKILL a master and at once 200 concurrent requests for one cold key in its slots
              on each replica
  stall       SIGSTOP a master for STALL_SECS (default 5), then SIGCONT
Figures: wedges (the Redis-only replica not serving the failed slots from Redis within 30 s of
the promotion; goal 0), time from the promotion to `detail=redis` for a key in the failed slots
(goal <= 2 s), origin fetches per cold-key burst over both replicas (goal <= 2, one per replica),
WARN lines per second in the replicas' logs (goal <= 5 in any second), client 5xx.

Usage: python3 bench/cluster_soak.py   (after `cargo build --release --bins`)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402

ROOT, RELEASE = base.ROOT, base.RELEASE
ROUNDS = int(os.getenv("ROUNDS", "25"))
STALL_SECS = float(os.getenv("STALL_SECS", "5"))
BEGIN, END = "<!-- cluster-soak:begin -->", "<!-- cluster-soak:end -->"
ENTRY = "cache-layer:v1:k:"


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot(key):
    k = key.encode()
    if b"{" in k:
        start = k.index(b"{")
        end = k.find(b"}", start + 1)
        if end > start + 1:
            k = k[start + 1:end]
    return crc16(k) % 16384


def cluster_port():
    """A free port whose cluster bus port (+10000) is a valid port too."""
    while True:
        port = base.free_port()
        if port < 55000:
            return port


class Node:
    def __init__(self, port, workdir):
        self.port, self.dir = port, os.path.join(workdir, str(port))
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--cluster-enabled",
             "yes", "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        base.PROCS.append(self.proc)
        for _ in range(200):
            if self.cli("ping") == "PONG":
                return
            time.sleep(0.05)

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip()

    def signal(self, sig):
        os.kill(self.proc.pid, sig)


class Cluster:
    def __init__(self, workdir):
        self.nodes = [Node(cluster_port(), workdir) for _ in range(6)]
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "1",
                        "--cluster-yes"], capture_output=True, check=True)
        self.wait_healthy()

    def any_cli(self, *args):
        for n in self.nodes:
            try:
                out = n.cli(*args)
            except subprocess.TimeoutExpired:
                continue
            if out:
                return out
        return ""

    def masters(self):
        """{port: [(from, to), ...]} of the masters that serve slots now."""
        out = {}
        for line in self.any_cli("cluster", "nodes").splitlines():
            f = line.split()
            if len(f) < 9 or "master" not in f[2] or "fail" in f[2]:
                continue
            port = int(re.split("[:@]", f[1])[1])
            out[port] = [tuple(map(int, r.split("-"))) if "-" in r else (int(r), int(r))
                         for r in f[8:] if not r.startswith("[")]
        return out

    def owner(self, key):
        s = slot(ENTRY + key)
        for port, ranges in self.masters().items():
            if any(a <= s <= b for a, b in ranges):
                return port
        return None

    def node(self, port):
        return next(n for n in self.nodes if n.port == port)

    def wait_healthy(self, deadline=60):
        end = time.time() + deadline
        while time.time() < end:
            ok = all("cluster_state:ok" in (n.cli("cluster", "info") or "") for n in self.nodes)
            synced = sum("master_link_status:up" in n.cli("info", "replication")
                         for n in self.nodes)
            if ok and synced == 3 and len(self.masters()) == 3:
                return
            time.sleep(0.2)
        raise SystemExit("cluster not healthy")

    def urls(self):
        return ",".join(f"redis://127.0.0.1:{n.port}" for n in self.nodes)


class Replica:
    def __init__(self, name, stub, cluster, memory, workdir):
        self.port = base.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(workdir, f"{name}.log")
        env = dict(os.environ, LISTEN_ADDR=f"127.0.0.1:{self.port}", RUST_LOG="info",
                   ORIGIN_URL=f"{stub.base}/items/{{key}}", REDIS_URL=cluster.urls(),
                   REDIS_CLUSTER="true", MEMORY_CACHE_ENABLED="true" if memory else "false",
                   CACHE_TTL_SECS="600")
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen([f"{RELEASE}/cache-layer"], env=env, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        base.PROCS.append(self.proc)
        base.wait_http(self.url + "/livez")

    def get(self, key):
        status, headers, _ = base.http("GET", f"{self.url}/items/{key}", timeout=10)
        return status, {k.lower(): v for k, v in headers.items()}.get("cache-status", "")


def background(replicas, stop, errors):
    """300 req/s per replica over 2,000 keys, from one loadtest per replica."""
    procs = [subprocess.Popen(base.loadtest_cmd(r.url, "--pattern", "uniform", "--key-space",
                                                  "2000", "--rate", "300", "-c", "8",
                                                  "--duration", "86400s"),
                              stdout=subprocess.PIPE, text=True) for r in replicas]
    stop.wait()
    for p in procs:
        p.send_signal(2)
    for p in procs:
        out, _ = p.communicate(timeout=30)
        try:
            report = json.loads(out)
            errors.update({k: v for k, v in report["errors_by_kind"].items() if k.startswith("5")})
        except (json.JSONDecodeError, KeyError):
            errors["load test report unreadable"] += 1


def key_on(cluster, port, prefix):
    return next(f"{prefix}-{i}" for i in range(100000) if cluster.owner(f"{prefix}-{i}") == port)


def one_round(kind, i, cluster, stub, replicas, redis_only):
    masters = list(cluster.masters())
    victim = masters[i % len(masters)]
    probe = key_on(cluster, victim, f"probe-{kind}-{i}")
    redis_only.get(probe)  # stored in the victim's slots, replicated
    time.sleep(0.2)
    cold = key_on(cluster, victim, f"cold-{kind}-{i}")
    result = {"kind": kind}
    if kind == "stall":
        cluster.node(victim).signal(19)  # SIGSTOP
    else:
        cluster.node(victim).signal(9)
    if kind == "burst":
        # 100 connections per replica, one request each, all sent at once (the load test).
        bursts = [subprocess.Popen(base.loadtest_cmd(r.url, "--pattern", "single", "--key", cold,
                                                      "-c", "100", "--requests", "100"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for r in replicas]
        for b in bursts:
            b.wait(timeout=60)
        # Only the cold key's fetches (the background traffic also misses on the failed slots).
        stats = json.loads(base.http("GET", stub.base + "/_stub/stats")[2])
        result["burst_fetches"] = sum(1 for r in stats["requests"] if r["target"] == f"/items/{cold}")
    # Promotion: another node serves the victim's slots.
    t0 = time.time()
    while time.time() - t0 < 30 and cluster.owner(probe) in (victim, None):
        time.sleep(0.05)
    promoted = time.time()
    result["promotion_s"] = promoted - t0
    while time.time() - promoted < 30:
        status, cache = redis_only.get(probe)
        if status == 200 and cache.endswith("detail=redis"):
            break
        time.sleep(0.05)
    else:
        result["wedged"] = True
    result["back_after_promotion_s"] = time.time() - promoted
    # Repair: the victim comes back as a replica.
    if kind == "stall":
        time.sleep(max(0.0, STALL_SECS - (time.time() - t0)))
        cluster.node(victim).signal(18)  # SIGCONT
    else:
        cluster.node(victim).start()
    cluster.wait_healthy()
    return result


def warn_rate(replicas):
    per_second = Counter()
    for r in replicas:
        with open(r.log) as f:
            for line in f:
                if " WARN " in line:
                    per_second[line[:19]] += 1
    return max(per_second.values(), default=0), sum(per_second.values())


def markdown(res):
    rows = res["rounds"]
    lines = [BEGIN, "## Redis Cluster faults: kill, kill-and-burst, stall", "",
             f"**Command:** `python3 bench/cluster_soak.py` (after `cargo build --release --bins`). "
             f"**Run:** {res['started']}–{res['finished']} UTC, commit `{res['commit']}`, "
             f"{ROUNDS} rounds of each.", "",
             "A 6-node cluster (3 masters, 3 replicas, `cluster-node-timeout 2000`), the origin stub "
             "at 20 ms, two replicas (one with the memory tier, one Redis-only) each under 300 req/s "
             f"over 2,000 keys. A stall is `SIGSTOP` for {STALL_SECS:g} s. \"Back\" is the time from "
             "the cluster's promotion (another node owns the slots in `CLUSTER NODES`) until the "
             "Redis-only replica answers a key in the failed slots with `detail=redis`.", "",
             "| fault | rounds | wedges (goal 0) | promotion after the fault, median / max (s) | "
             "back after the promotion, median / max (s, goal ≤ 2) | origin fetches per burst, "
             "max (goal ≤ 2) |", "| --- | --- | --- | --- | --- | --- |"]
    for kind in ("kill", "burst", "stall"):
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        prom = sorted(r["promotion_s"] for r in rs)
        back = sorted(r["back_after_promotion_s"] for r in rs)
        fetches = max((r.get("burst_fetches", 0) for r in rs), default=0) if kind == "burst" else "—"
        lines.append(f"| {kind} | {len(rs)} | {sum(1 for r in rs if r.get('wedged'))} | "
                     f"{prom[len(prom) // 2]:.2f} / {prom[-1]:.2f} | {back[len(back) // 2]:.2f} / "
                     f"{back[-1]:.2f} | {fetches} |")
    errors = ", ".join(f"{k} × {v}" for k, v in res["errors"].items()) or "none"
    lines += ["", f"WARN lines in both replicas' logs: {res['warn_total']} in all, at most "
              f"{res['warn_max_per_s']} in one second (goal ≤ 5). Client 5xx over the whole run: "
              f"{errors}.", "", END]
    return "\n".join(lines) + "\n"


def write(res):
    base.write_section("cluster-soak", markdown(res))


def main():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    res = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "commit": commit}
    workdir = tempfile.mkdtemp(prefix="cluster-soak-")
    cluster = Cluster(workdir)
    stub = base.Stub()
    stub.latency(20)
    replicas = [Replica("memory", stub, cluster, True, workdir),
                Replica("redis-only", stub, cluster, False, workdir)]
    redis_only = replicas[1]
    stop, errors = threading.Event(), Counter()
    load = threading.Thread(target=background, args=(replicas, stop, errors))
    load.start()
    time.sleep(2)
    rounds = []
    for i in range(ROUNDS):
        for kind in ("kill", "burst", "stall"):
            r = one_round(kind, i, cluster, stub, replicas, redis_only)
            base.log(f"{kind} {i}: {r}")
            rounds.append(r)
    stop.set()
    load.join()
    res["rounds"], res["errors"] = rounds, dict(errors)
    res["warn_max_per_s"], res["warn_total"] = warn_rate(replicas)
    res["finished"] = datetime.now(timezone.utc).strftime("%H:%M")
    write(res)
    print(markdown(res))


if __name__ == "__main__":
    main()
