#!/usr/bin/env python3
"""Purge traffic in a Redis Cluster: classic PUBLISH against sharded SPUBLISH (issue 32).

Why this file exists: every purge (and every fleet-lock fill) is a pub/sub message to every
replica. With classic PUBLISH a Redis Cluster sends each message over its bus to every node,
whatever the number of subscribers; sharded pub/sub (Redis >= 7) keeps it inside the shard that
owns the channel's slot. docs/operations.md's capacity model ("Purge traffic in a Redis
Cluster") is checked against these figures. Figures only, never asserted by a test.

Setup: a 6-node cluster (3 masters, 3 replicas, as bench/cluster_soak.py makes it) and REPLICAS
(10) cache-layer replicas on it (MEMORY_CACHE_MAX_BYTES 16 MiB, one worker thread each). Two
runs, one per release:
  classic   CLASSIC_BIN (the release before sharded pub/sub, commit 7470550): PUBLISH;
  sharded   BIN_DIR (this release): SPUBLISH when every master knows it.
Each run: PURGES (2,000) key purges `DELETE /items/p<i>` on replica 0, CONCURRENCY (8) at a time;
per node, before and after: `CLUSTER INFO` cluster_stats_messages_publish(shard)_sent/received,
`INFO cpu` used_cpu_sys + used_cpu_user, `INFO stats` total_net_output_bytes; and the
purges every replica heard (cache_invalidations_total{source="remote"}).

Usage: python3 bench/pubsub_capacity.py   (BIN_DIR: this release's binaries, default
target/release; CLASSIC_BIN: a directory holding the older cache-layer, default /tmp/purge-bin).
Writes its section of docs/benchmarks.md and bench/sections/pubsub-capacity.md and
bench/results-pubsub-capacity.json, unless NO_WRITE=1.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402
import cluster_soak  # noqa: E402

REPLICAS = int(os.getenv("REPLICAS", "10"))
PURGES = int(os.getenv("PURGES", "2000"))
CONCURRENCY = int(os.getenv("CONCURRENCY", "8"))
BIN_DIR = os.getenv("BIN_DIR", os.path.join(base.ROOT, "target", "release"))
CLASSIC_BIN = os.getenv("CLASSIC_BIN", "/tmp/purge-bin")
TOKEN = "pubsub-capacity-admin-token"
BEGIN, END = "<!-- pubsub-capacity:begin -->", "<!-- pubsub-capacity:end -->"
REMOTE = 'cache_invalidations_total{mode="hard",scope="key",source="remote"'


def field(text, name):
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return float(line.split(":", 1)[1])
    return 0.0


def node_sample(node):
    cluster, cpu, stats = node.cli("cluster", "info"), node.cli("info", "cpu"), node.cli("info", "stats")
    return {
        "publish_sent": field(cluster, "cluster_stats_messages_publish_sent"),
        "publishshard_sent": field(cluster, "cluster_stats_messages_publishshard_sent"),
        "publish_received": field(cluster, "cluster_stats_messages_publish_received"),
        "publishshard_received": field(cluster, "cluster_stats_messages_publishshard_received"),
        "cpu_s": field(cpu, "used_cpu_sys") + field(cpu, "used_cpu_user"),
        "net_out": field(stats, "total_net_output_bytes"),
    }


def metric(url, series):
    text = base.http("GET", url + "/metrics")[2].decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(series))


def start_replica(binary, stub, cluster, workdir, i):
    port = base.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"LISTEN_ADDR": f"127.0.0.1:{port}", "RUST_LOG": "warn", "TOKIO_WORKER_THREADS": "1",
           "ORIGIN_URL": f"{stub.base}/items/{{key}}", "REDIS_URL": cluster.urls(),
           "REDIS_CLUSTER": "true", "ADMIN_TOKEN": TOKEN, "MEMORY_CACHE_MAX_BYTES": str(16 << 20)}
    log = open(os.path.join(workdir, f"replica-{i}.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", base.SERVER_CORE, binary], env=dict(os.environ, **env),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base.PROCS.append(proc)
    base.wait_http(url + "/livez")
    return proc, url


def one_run(name, bin_dir, stub):
    workdir = tempfile.mkdtemp(prefix=f"pubsub-{name}-")
    cluster = cluster_soak.Cluster(workdir)
    replicas = [start_replica(f"{bin_dir}/cache-layer", stub, cluster, workdir, i) for i in range(REPLICAS)]
    # Every replica subscribed (its /health says Redis is up) and settled.
    for _, url in replicas:
        for _ in range(200):
            if json.loads(base.http("GET", url + "/health")[2]).get("tiers", {}).get("redis") == "ok":
                break
            time.sleep(0.05)
    time.sleep(2)
    before = [node_sample(n) for n in cluster.nodes]
    heard_before = [metric(url, REMOTE) for _, url in replicas[1:]]
    started = time.perf_counter()

    def purge(i):
        status, _, _ = base.http("DELETE", f"{replicas[0][1]}/items/p{i}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        return status

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        statuses = list(pool.map(purge, range(PURGES)))
    seconds = time.perf_counter() - started
    # Every other replica hears every purge.
    deadline = time.time() + 30
    while time.time() < deadline:
        heard = [metric(url, REMOTE) - b for (_, url), b in zip(replicas[1:], heard_before)]
        if all(h >= PURGES for h in heard):
            break
        time.sleep(0.2)
    after = [node_sample(n) for n in cluster.nodes]
    masters = set(cluster.masters())
    nodes = []
    for n, b, a in zip(cluster.nodes, before, after):
        d = {k: a[k] - b[k] for k in a}
        d["role"] = "master" if n.port in masters else "replica"
        d["subscribers"] = int(n.cli("info", "clients").split("pubsub_clients:")[1].split()[0]) \
            if "pubsub_clients:" in n.cli("info", "clients") else None
        nodes.append(d)
    for proc, _ in replicas:
        base.stop(proc)
    for node in cluster.nodes:
        base.stop(node.proc)
    return {
        "name": name, "binary": bin_dir, "purges": PURGES, "seconds": round(seconds, 2),
        "purges_per_s": round(PURGES / seconds, 1),
        "statuses": {str(s): statuses.count(s) for s in set(statuses)},
        "heard_min": min(heard), "heard": heard, "nodes": nodes,
        "bus_messages_sent": sum(n["publish_sent"] + n["publishshard_sent"] for n in nodes),
        "redis_cpu_ms_per_purge": round(1000 * sum(n["cpu_s"] for n in nodes) / PURGES, 3),
        "busiest_node_cpu_ms_per_purge": round(1000 * max(n["cpu_s"] for n in nodes) / PURGES, 3),
    }


def markdown(res):
    lines = [BEGIN, "## Purge traffic in a Redis Cluster: classic against sharded pub/sub", "",
             f"**Command:** `python3 bench/pubsub_capacity.py` (REPLICAS={res['replicas']}, "
             f"PURGES={res['purges']}, CONCURRENCY={res['concurrency']}). **Run:** {res['started']}–"
             f"{res['finished']} UTC, commit {res['commit']} (classic: the release before it, 7470550). "
             "A 6-node cluster (3 masters with a replica each) on loopback, "
             f"{res['replicas']} cache-layer replicas subscribed; key purges on replica 0. Redis CPU is "
             "`used_cpu_sys + used_cpu_user` summed over the six nodes (it includes their pings and "
             "the purges' own `DEL` and records), bus messages are `cluster_stats_messages_publish"
             "(shard)_sent` summed over the nodes.", "",
             "| pub/sub | purges/s | answers | every replica heard all | bus messages sent | per purge | "
             "Redis CPU per purge (all nodes) | busiest node per purge |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["runs"]:
        lines.append(f"| {r['name']} | {r['purges_per_s']} | {r['statuses']} | "
                     f"{'yes' if r['heard_min'] >= r['purges'] else 'no (' + str(r['heard_min']) + ')'} | "
                     f"{int(r['bus_messages_sent'])} | {r['bus_messages_sent'] / r['purges']:.2f} | "
                     f"{r['redis_cpu_ms_per_purge']} ms | {r['busiest_node_cpu_ms_per_purge']} ms |")
    lines += ["", "Per node (CPU ms per purge, bus messages sent / received per purge, pub/sub clients):", "",
              "| pub/sub | node | role | CPU ms/purge | sent/purge | received/purge | pub/sub clients |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["runs"]:
        for i, n in enumerate(r["nodes"]):
            sent = (n["publish_sent"] + n["publishshard_sent"]) / r["purges"]
            received = (n["publish_received"] + n["publishshard_received"]) / r["purges"]
            lines.append(f"| {r['name']} | {i} | {n['role']} | {1000 * n['cpu_s'] / r['purges']:.3f} | "
                         f"{sent:.2f} | {received:.2f} | {n['subscribers']} |")
    lines += ["", END]
    return "\n".join(lines)


def main():
    started = datetime.now(timezone.utc)
    base.RELEASE = BIN_DIR
    stub = base.Stub()
    runs = []
    only = os.getenv("ONLY")
    for name, bin_dir in (("classic", CLASSIC_BIN), ("sharded", BIN_DIR)):
        if only and only != name:
            continue
        base.log(f"{name}: {bin_dir}")
        runs.append(one_run(name, bin_dir, stub))
        base.log(json.dumps({k: v for k, v in runs[-1].items() if k != "nodes"}))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=base.ROOT).stdout.strip()
    res = {"started": f"{started:%Y-%m-%d %H:%M}", "finished": f"{datetime.now(timezone.utc):%H:%M}",
           "commit": commit, "replicas": REPLICAS, "purges": PURGES, "concurrency": CONCURRENCY,
           "runs": runs}
    text = markdown(res)
    print(text)
    if os.getenv("NO_WRITE") != "1":
        with open(os.path.join(base.ROOT, "bench", "results-pubsub-capacity.json"), "w") as f:
            json.dump(res, f, indent=1)
        base.write_section("pubsub-capacity", text + "\n")


if __name__ == "__main__":
    main()
