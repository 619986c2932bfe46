#!/usr/bin/env python3
"""Disk-tier benchmark: what a local disk behind the memory tier buys, how fast its
hits are, how fast a restarted replica is warm again, and what it costs in memory.

Why this file exists: the disk tier's goals are figures (hit ratio against Belady's optimum and
nginx, hit latency at a rate, recovery time, RSS), measured with the release binaries on loopback
and never asserted by a test.

  zipf     bench/run.py's Zipf workload (200,000 keys, exponent 1.0, -c 32, 10 s warm-up then 20 s
           measured) against a 4 MiB memory tier alone, with 8 MiB and 32 MiB of disk behind it,
           against nginx (proxy_cache max_size 4 MiB, which really uses more: its bytes on disk
           are reported), and with as much disk as nginx really used. Hit ratio = 1 - origin
           fetches / requests of the measured run. Belady's optimum (libcachesim) on a Zipf
           stream of the same length, at the same total bytes (entries of the memory tier's
           mean weight) and at the same entry count (memory entries + disk pages).
           Beside Belady, A0 ("ideal online": the most probable keys held), the best any
           policy that does not know the future can do on this stream (SECTIONS=ideal adds it
           to an earlier zipf section without running the service).
  latency  Disk-tier hits only (MEMORY_CACHE_ENABLED=false), 5,000 warm keys, open loop at
           RATE req/s for 10 s. Goal: p99 <= 1 ms at 5,000 req/s. The same load on a memory
           tier alone is the control: the part of the tail that is the machine's.
  restart  4 MiB memory + 32 MiB disk under the Zipf load; the hit ratio of the last 10 s, then a
           SIGTERM and a new process on the same disk, measured in 2 s windows from its start.
           Goal: >= 90 % of the previous hit ratio in the first 2 s window.
  rss      4 MiB memory + a 1 GiB disk within a 4 MiB index bound, flooded with new keys for
           FLOOD_SECS, every fill written (DISK_CACHE_ADMIT_MIN_REQUESTS=1); the peak RSS.
           Goal: <= 1.2 x (memory + index bounds) + 32 MiB.

The disk tier's own admission (DISK_CACHE_ADMIT_MIN_REQUESTS) is the service's default unless
ADMIT is set (ADMIT=1: every fill written, to compare).

Writes its section of docs/benchmarks.md between markers (and bench/sections/disk.md).

Usage: python3 bench/disk.py   (run `cargo build --release --bins` first; the Belady column
needs the venv of bench/trace_reference.py: VENV_PY=.tools/venv-bench/bin/python)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402

MIB = 1 << 20
BUDGET = 4 * MIB
ZIPF = ["--pattern", "zipf", "--key-space", 200000, "--zipf-exponent", 1.0, "-c", 32]
RATE = int(os.getenv("RATE", "5000"))
FLOOD_SECS = int(os.getenv("FLOOD_SECS", "20"))
VENV_PY = os.getenv("VENV_PY", os.path.join(base.ROOT, ".tools/venv-bench/bin/python"))
# Disk files on the project's disk (not tmpfs), so reads are the page cache's or the disk's.
DISK_ROOT = os.getenv("DISK_ROOT", os.path.join(base.ROOT, "target", "bench-disk"))


def disk_env(dir_, disk_bytes, memory=True, index=None, admit=None):
    """The service's env for a disk tier; `admit`: DISK_CACHE_ADMIT_MIN_REQUESTS (default: the
    service's own, or ADMIT from the environment, to compare admissions)."""
    env = {"DISK_CACHE_DIR": dir_, "DISK_CACHE_MAX_BYTES": str(disk_bytes),
           "MEMORY_CACHE_MAX_BYTES": str(BUDGET)}
    admit = admit or os.getenv("ADMIT")
    if admit:
        env["DISK_CACHE_ADMIT_MIN_REQUESTS"] = str(admit)
    if not memory:
        env["MEMORY_CACHE_ENABLED"] = "false"
    if index:
        env["DISK_CACHE_INDEX_MAX_BYTES"] = str(index)
    return env


def fresh_dir(name):
    path = os.path.join(DISK_ROOT, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def metric(url, name):
    text = base.http("GET", url + "/metrics")[2].decode()
    total = None
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def zipf_run(stub, url):
    """Warm-up then measured Zipf run: (hit ratio, measured requests, warm-up requests)."""
    warm = base.loadtest(url, *ZIPF, "--duration", "10s", "--seed", 2)
    stub.reset()
    r = base.loadtest(url, *ZIPF, "--duration", "20s", "--seed", 1)
    fetches = stub.served()
    return 1 - fetches / r["requests"], r, warm["requests"]


def section_zipf(stub):
    rows = []
    entry_bytes = entries = None
    lengths = []
    for name, disk in (("memory only", 0), ("memory + 8 MiB disk", 8 * MIB),
                       ("memory + 32 MiB disk", 32 * MIB)):
        env = {"MEMORY_CACHE_MAX_BYTES": str(BUDGET)}
        if disk:
            env = disk_env(fresh_dir(f"zipf-{disk}"), disk)
        proc, url = base.service(stub, env)
        base.log(f"zipf: {name}")
        ratio, r, warm_n = zipf_run(stub, url)
        lengths.append(warm_n + r["requests"])
        if not disk:
            entries = metric(url, "memory_cache_entries")
            entry_bytes = metric(url, "memory_cache_bytes") / entries
        rows.append({"name": name, "disk_bytes": disk, "hit_ratio": ratio,
                     "by_tier": r["hits_by_tier"], "requests": r["requests"]})
        base.stop(proc)
    # nginx, as bench/run.py runs it, and its real disk use.
    c = base.Contender("nginx", stub, budget=BUDGET)
    base.log("zipf: nginx")
    ratio, r, warm_n = zipf_run(stub, c.base)
    cache_dir = os.path.join(c.dir, "cache")
    nginx_kib = int(subprocess.run(["du", "-sk", cache_dir], capture_output=True,
                                   text=True).stdout.split()[0])
    rows.append({"name": "nginx (max_size 4 MiB)", "disk_bytes": nginx_kib * 1024,
                 "hit_ratio": ratio, "requests": r["requests"]})
    c.stop()
    same = max(4 * MIB, nginx_kib * 1024 // MIB * MIB)
    proc, url = base.service(stub, disk_env(fresh_dir("zipf-nginx"), same))
    base.log(f"zipf: memory + {same // MIB} MiB disk (nginx's bytes)")
    ratio, r, warm_n = zipf_run(stub, url)
    rows.append({"name": f"memory + {same // MIB} MiB disk (nginx's bytes)", "disk_bytes": same,
                 "hit_ratio": ratio, "by_tier": r["hits_by_tier"], "requests": r["requests"]})
    base.stop(proc)
    length = int(sum(lengths) / len(lengths))
    for row in rows:
        if row["name"].startswith("memory"):
            total = BUDGET + row["disk_bytes"]
            row["belady_same_bytes"] = belady(int(total // entry_bytes), length)
            row["belady_same_entries"] = belady(int(entries + row["disk_bytes"] // 4096), length)
    add_ideal_online(rows, entry_bytes, entries, length)
    return {"rows": rows, "entry_bytes": entry_bytes, "memory_entries": entries,
            "stream_length": length}


def belady(capacity, length):
    """Belady's hit ratio over the measured two thirds of a Zipf stream of `length` requests
    (the warm-up third excluded), holding `capacity` entries; None without the venv."""
    if not os.path.exists(VENV_PY):
        return None
    code = f"""
import sys, tempfile, os
sys.path.insert(0, {os.path.join(base.ROOT, 'bench')!r})
import trace_reference as t
import libcachesim as lcs
ids = t.zipf_stream(200000, 1.0, {length}, 1)
warm = {length} // 3
path = tempfile.mktemp(suffix='.oracle')
t.write_oracle(ids, path)
reader = lcs.TraceReader(trace=path, trace_type=lcs.TraceType.ORACLE_GENERAL_TRACE)
h_all = t.hits('Belady', {capacity}, reader, {length})
reader = lcs.TraceReader(trace=path, trace_type=lcs.TraceType.ORACLE_GENERAL_TRACE)
h_warm = t.hits('Belady', {capacity}, reader, warm)
os.unlink(path)
print((h_all - h_warm) / ({length} - warm))
"""
    out = subprocess.run([VENV_PY, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        base.log(f"belady failed: {out.stderr[-500:]}")
        return None
    return float(out.stdout.strip())


def ideal_online(capacity, length):
    """The best hit ratio any policy that does not see the future can reach on the Zipf stream
    `belady` replays (same seed, same measured two thirds): A0, which holds the `capacity` most
    probable keys. Under the independent reference model (bench/run.py's Zipf draws keys i.i.d.)
    A0 is the optimal online policy (Aho, Denning & Ullman, "Principles of optimal page
    replacement", JACM 1971); Belady's optimum is above it because it knows the next requests.
    A request hits when its key is among the `capacity` most probable and was requested before
    (A0 cannot hold a key it has never seen). None without the venv."""
    if not os.path.exists(VENV_PY):
        return None
    code = f"""
import numpy as np
n, length, k = 200000, {length}, {capacity}
weights = np.arange(1, n + 1, dtype=np.float64) ** -1.0
cdf = np.cumsum(weights); cdf /= cdf[-1]
u = np.random.Generator(np.random.PCG64(1)).random(length)
ranks = np.minimum(np.searchsorted(cdf, u, side="right"), n - 1) + 1
_, first = np.unique(ranks, return_index=True)
seen_before = np.ones(length, dtype=bool); seen_before[first] = False
hit = (ranks <= k) & seen_before
warm = length // 3
print(hit[warm:].mean())
"""
    out = subprocess.run([VENV_PY, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        base.log(f"ideal online failed: {out.stderr[-500:]}")
        return None
    return float(out.stdout.strip())


def add_ideal_online(rows, entry_bytes, entries, length):
    """A0's hit ratio beside each memory row, at the same bytes and at the same entries."""
    for row in rows:
        if row["name"].startswith("memory"):
            row["ideal_same_bytes"] = ideal_online(
                int((BUDGET + row["disk_bytes"]) // entry_bytes), length)
            row["ideal_same_entries"] = ideal_online(
                int(entries + row["disk_bytes"] // 4096), length)


def hit_latency(url, seed):
    """Hit latency of uniform requests over 5,000 warm keys, open loop at RATE for 10 s (after
    3 s at that rate). The keys are cycled through twice first: the disk tier writes a key
    from its second request on (DISK_CACHE_ADMIT_MIN_REQUESTS)."""
    base.loadtest(url, "--pattern", "cycle", "--key-space", 5000, "--requests", 10000, "-c", 8)
    base.loadtest(url, "--pattern", "uniform", "--key-space", 5000, "--duration", "3s",
                  "--rate", RATE, "-c", 32)
    r = base.loadtest(url, "--pattern", "uniform", "--key-space", 5000, "--duration", "10s",
                      "--rate", RATE, "-c", 32, "--seed", seed)
    return {"requests": r["requests"], "achieved_rps": r["throughput_rps"],
            "errors": r["errors"], "by_tier": r["hits_by_tier"],
            "hit_latency_ms": r["hit_latency_ms"]}


def section_latency(stub):
    """Disk-tier hits at RATE, and memory-tier hits at the same rate on the same machine as the
    control: what of the tail is the disk tier's and what is the machine's."""
    proc, url = base.service(stub, disk_env(fresh_dir("latency"), 64 * MIB, memory=False))
    disk = hit_latency(url, 3)
    base.stop(proc)
    proc, url = base.service(stub, {"MEMORY_CACHE_MAX_BYTES": str(64 * MIB)})
    memory = hit_latency(url, 3)
    base.stop(proc)
    return {"rate": RATE, **disk, "memory_control": memory}


def section_restart(stub):
    dir_ = fresh_dir("restart")
    env = disk_env(dir_, 32 * MIB)
    proc, url = base.service(stub, env)
    base.loadtest(url, *ZIPF, "--duration", "20s", "--seed", 2)
    stub.reset()
    r = base.loadtest(url, *ZIPF, "--duration", "10s", "--seed", 1)
    before = 1 - stub.served() / r["requests"]
    base.stop(proc)
    started = time.time()
    proc, url = base.service(stub, env)
    ready_s = time.time() - started
    windows = []
    for i in range(5):
        stub.reset()
        w = base.loadtest(url, *ZIPF, "--duration", "2s", "--seed", 10 + i)
        windows.append({"until_s": round(time.time() - started, 1),
                        "hit_ratio": 1 - stub.served() / w["requests"],
                        "by_tier": w["hits_by_tier"]})
    base.stop(proc)
    return {"before": before, "ready_s": ready_s, "windows": windows}


def section_rss(stub):
    index = 4 * MIB
    # Every fill written (admission off): the index grows as fast as it can.
    proc, url = base.service(stub, disk_env(fresh_dir("rss"), 1 << 30, index=index, admit=1))
    pid = proc.pid  # taskset execs the service: the same process
    flood = subprocess.Popen(base.loadtest_cmd(url, "--pattern", "uniform", "--key-space",
                                               10_000_000, "--duration", f"{FLOOD_SECS}s",
                                               "-c", 32, "--seed", 4),
                             stdout=subprocess.PIPE, text=True)
    peak = 0
    while flood.poll() is None:
        peak = max(peak, rss_of(pid))
        time.sleep(0.5)
    r = json.loads(flood.stdout.read())
    peak = max(peak, rss_of(pid))
    capacity = metric(url, "disk_cache_capacity_bytes")
    base.stop(proc)
    bound = 1.2 * (BUDGET + index) + 32 * MIB
    return {"peak_rss": peak, "bound": bound, "requests": r["requests"], "capacity": capacity,
            "index": index}


def rss_of(pid):
    """The RSS (bytes) of `pid`."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pct(x):
    return "—" if x is None else f"{100 * x:.2f} %"


def render(results, started, finished):
    z, lat, rs, rss = (results[k] for k in ("zipf", "latency", "restart", "rss"))
    runs = results.get("runs")
    when = (f"Run {started}–{finished} UTC" if not runs else
            "Sections run " + ", ".join(f"{k} {v}" for k, v in runs.items()) + " UTC")
    out = ["<!-- disk:begin -->", "## Disk tier", "",
           f"{when} with `python3 bench/disk.py` (release binaries, the "
           "service on core 0 and the load test on core 1, the origin stub with no delay; the "
           f"disk tier's files under `{os.path.relpath(DISK_ROOT, base.ROOT)}`, ext4 on a "
           "virtual disk).", "",
           "### Zipf hit ratio with disk behind the memory tier", "",
           f"bench/run.py's Zipf workload (200,000 keys, exponent 1.0, -c 32, 10 s warm-up then "
           f"20 s measured), memory tier 4 MiB ({int(z['memory_entries'])} entries of "
           f"{z['entry_bytes']:.0f} B on average). Belady: libcachesim on a Zipf stream of the "
           f"same length ({z['stream_length']:,} requests, the first third as warm-up), holding "
           "(4 MiB + disk) / mean entry weight entries (*same bytes*) or memory entries + disk "
           "/ 4 KiB (*same entries*: one entry per 4 KiB page, what foyer's block engine holds "
           "without the tier's packing of small entries into shared pages; with it the disk "
           "holds more, so the tier can pass this column). The *same bytes* columns count "
           "entries at the memory tier's weight, which includes its per-entry overhead; the "
           "disk's pages hold an entry in fewer bytes than that, so a tier with disk can pass "
           "them too: they are bounds for a cache that spends the memory tier's bytes per "
           "entry, not for this one.", "",
           "*Ideal online* is A0 on the same stream: it holds the most probable keys, "
           "which under the independent reference model (the benchmark draws keys i.i.d.) "
           "no policy that does not know the future can beat (Aho, Denning & Ullman, 1971); "
           "the gap from it to Belady is what knowing the future is worth, and no online "
           "policy closes it.", "",
           "| contender | disk bytes | hit ratio | hits by tier | ideal online, same bytes | "
           "Belady, same bytes | ideal online, same entries | Belady, same entries |",
           "|---|---|---|---|---|---|---|---|"]
    for row in z["rows"]:
        tiers = ", ".join(f"{k} {v:,}" for k, v in sorted(row.get("by_tier", {}).items()) if v)
        out.append(f"| {row['name']} | {row['disk_bytes'] / MIB:.1f} MiB | "
                   f"**{pct(row['hit_ratio'])}** | {tiers or '—'} | "
                   f"{pct(row.get('ideal_same_bytes'))} | {pct(row.get('belady_same_bytes'))} | "
                   f"{pct(row.get('ideal_same_entries'))} | "
                   f"{pct(row.get('belady_same_entries'))} |")
    h = lat["hit_latency_ms"]
    out += ["", "### Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for row in z["rows"]:
        if row["disk_bytes"] in (8 * MIB, 32 * MIB) and row.get("ideal_same_bytes"):
            ideal = row["ideal_same_bytes"]
            gap = 100 * (ideal - row["hit_ratio"])
            where = f"{gap:.1f} pt below" if gap >= 0 else f"{-gap:.1f} pt above"
            out.append(f"| {row['name']}: within 2 pt of A0 (ideal online) at the same bytes | "
                       f"{pct(row['hit_ratio'])} vs {pct(ideal)} ({where}; Belady "
                       f"{pct(row.get('belady_same_bytes'))}) | {'yes' if gap <= 2 else 'no'} |")
    ng = next(r for r in z["rows"] if r["name"].startswith("nginx"))
    same = next(r for r in z["rows"] if r["name"].endswith("(nginx's bytes)"))
    out.append(f"| above nginx at the disk bytes nginx really uses ({ng['disk_bytes'] / MIB:.0f} "
               f"MiB) | {pct(same['hit_ratio'])} vs {pct(ng['hit_ratio'])} | "
               f"{'yes' if same['hit_ratio'] > ng['hit_ratio'] else 'no'} |")
    out.append(f"| disk-tier hits p99 ≤ 1 ms at {lat['rate']:,} req/s | {h['p99']:.3f} ms | "
               f"{'yes' if h['p99'] <= 1 else 'no'} |")
    first = rs["windows"][0] if rs["windows"] else None
    out.append(f"| a restarted replica: ≥ 90 % of its hit ratio back in its first 2 s window | "
               + (f"{100 * first['hit_ratio'] / rs['before']:.0f} % by {first['until_s']} s | "
                  f"{'yes' if first['hit_ratio'] >= 0.9 * rs['before'] else 'no'} |"
                  if first else "never | no |"))
    out.append(f"| RSS ≤ 1.2 × (memory + index bounds) + 32 MiB | {rss['peak_rss'] / MIB:.1f} MiB "
               f"≤ {rss['bound'] / MIB:.1f} MiB | {'yes' if rss['peak_rss'] <= rss['bound'] else 'no'} |")
    out += ["", "### Disk-tier hit latency", "",
            f"`MEMORY_CACHE_ENABLED=false`, 64 MiB of disk, 5,000 warm keys, uniform, open loop "
            f"at {lat['rate']:,} req/s for 10 s (after 3 s at that rate): {lat['requests']:,} "
            f"requests, {lat['errors']} errors, hits by tier {lat['by_tier']}. The control: "
            "the same load against a memory tier of 64 MiB and no disk, on the same cores.", "",
            "| hits | p50 | p90 | p99 | p99.9 | max | goal |", "|---|---|---|---|---|---|---|",
            f"| disk | {h['p50']:.3f} ms | {h['p90']:.3f} ms | **{h['p99']:.3f} ms** | "
            f"{h['p999']:.3f} ms | {h['max']:.3f} ms | p99 ≤ 1 ms: "
            f"{'met' if h['p99'] <= 1 else 'not met'} |"]
    m = lat.get("memory_control")
    if m:
        mh = m["hit_latency_ms"]
        out.append(f"| memory (control; {m['requests']:,} requests, {m['errors']} errors) | "
                   f"{mh['p50']:.3f} ms | {mh['p90']:.3f} ms | {mh['p99']:.3f} ms | "
                   f"{mh['p999']:.3f} ms | {mh['max']:.3f} ms | — |")
    if lat.get("earlier_p99_ms"):
        out += ["", "Earlier runs of this section the same day, p99 of disk / memory hits: " +
                "; ".join(f"{d:.3f} / {m:.3f} ms" for d, m in lat["earlier_p99_ms"]) +
                ". A run whose control is slow too is the machine's (a 2-core VM shared with "
                "the load generator), not the disk tier's."]
    out += [
            "", "### A restart with a warm disk", "",
            f"4 MiB memory + 32 MiB disk under the Zipf load: hit ratio {pct(rs['before'])} over "
            f"the last 10 s before a SIGTERM. The new process answered `/livez` "
            f"{rs['ready_s']:.2f} s after it was started; then 2 s windows of the same load:", "",
            "| window ends (s after start) | hit ratio | share of the previous | hits by tier |",
            "|---|---|---|---|"]
    for w in rs["windows"]:
        tiers = ", ".join(f"{k} {v:,}" for k, v in sorted(w["by_tier"].items()) if v)
        out.append(f"| {w['until_s']} | {pct(w['hit_ratio'])} | "
                   f"{100 * w['hit_ratio'] / rs['before']:.0f} % | {tiers} |")
    out += ["", "Goal: ≥ 90 % of the previous hit ratio in the first 2 s window (issue 33).", "",
            "### Memory", "",
            f"4 MiB memory tier and `DISK_CACHE_MAX_BYTES` = 1 GiB within "
            f"`DISK_CACHE_INDEX_MAX_BYTES` = {rss['index'] // MIB} MiB (so the tier uses "
            f"{rss['capacity'] / MIB:.0f} MiB of disk), flooded with {rss['requests']:,} "
            f"requests for new keys over {FLOOD_SECS} s: peak RSS "
            f"**{rss['peak_rss'] / MIB:.1f} MiB**, goal ≤ 1.2 × (4 + {rss['index'] // MIB}) MiB + "
            f"32 MiB = {rss['bound'] / MIB:.1f} MiB "
            f"({'met' if rss['peak_rss'] <= rss['bound'] else 'not met'}).", "",
            "<!-- disk:end -->", ""]
    return "\n".join(out)


def main():
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    if os.getenv("RENDER_ONLY"):
        results = json.load(open(os.path.join(base.ROOT, "bench", "results-disk.json")))
        base.write_section("disk", render(results, os.environ["RENDER_ONLY"], "(earlier run)"))
        return
    stub = base.Stub()
    results = {}
    wanted = os.getenv("SECTIONS", "zipf latency restart rss").split()
    path = os.path.join(base.ROOT, "bench", "results-disk.json")
    if os.path.exists(path):
        results = json.load(open(path))
    for name, fn in (("zipf", section_zipf), ("latency", section_latency),
                     ("restart", section_restart), ("rss", section_rss)):
        if name in wanted:
            base.log(f"section {name}")
            results[name] = fn(stub)
            results.setdefault("runs", {})[name] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
            with open(path, "w") as f:
                json.dump(results, f, indent=1)
    if "ideal" in wanted and "zipf" in results:
        # A0 beside an earlier zipf section (no service run: it is computed on the stream).
        z = results["zipf"]
        add_ideal_online(z["rows"], z["entry_bytes"], z["memory_entries"], z["stream_length"])
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    finished = datetime.now(timezone.utc).strftime("%H:%M")
    base.write_section("disk", render(results, started, finished))
    shutil.rmtree(DISK_ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
