"""A hot key read at a fixed rate while something else happens: the parts `accept_burst.py` and
`coalesced_burst.py` share (a free port, waiting for the service, the open-loop load test with
one line per request, and its percentiles)."""

import re
import socket
import subprocess
import time
import urllib.request

# One line per request from `cache-layer-loadtest --per-request`: number, outcome, latency.
LINE = re.compile(r"^\[(\d+)\] key=\S+\s*\| (\w+)\s*\|\s*([\d.]+) ms$")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_answer(url, secs=30):
    """GETs `url` until it answers (a service starting); its body."""
    deadline = time.monotonic() + secs
    while True:
        try:
            return urllib.request.urlopen(url, timeout=5).read()
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within {secs} s")
            time.sleep(0.1)


def start_load(bin_dir, port, rate, secs):
    """The hot key at `rate` req/s over 32 connections for `secs` s after a 1 s warm-up, open
    loop, on core 1; read its output with `lines`."""
    return subprocess.Popen(["taskset", "-c", "1", f"{bin_dir}/cache-layer-loadtest", "--url",
                             f"http://127.0.0.1:{port}", "--pattern", "single", "--key", "hot",
                             "--rate", str(rate), "-c", "32", "--duration", f"{secs}s", "--warmup", "1s",
                             "--per-request"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lines(out, rate, secs):
    """(due s into the measured run, latency ms) of every request; refuses a run that lost some."""
    got = [((int(m.group(1)) - 1) / rate, float(m.group(3)))
           for line in out.splitlines() if (m := LINE.match(line))]
    if len(got) < rate * secs * 0.95:
        raise SystemExit(f"the load test answered {len(got)} of {rate * secs} requests")
    return got


def quantiles(got):
    """p50, p99, p99.9 and max of the latencies (ms)."""
    lat = sorted(ms for _, ms in got)

    def q(p):
        return lat[min(len(lat) - 1, int(len(lat) * p))]

    return {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": lat[-1]}


def builds_from_env(default_dir):
    """The builds to compare, name -> (binaries' directory, label): `BUILDS='name=dir;…'` (any
    number, in that order), else `OLD_BIN_DIR` (labelled `OLD_LABEL`) then `BIN_DIR` (default
    `default_dir`, labelled `NEW_LABEL`)."""
    import os
    if os.getenv("BUILDS"):
        return {name: (d, name) for name, d in (b.split("=", 1) for b in os.environ["BUILDS"].split(";") if b)}
    new = os.getenv("BIN_DIR", default_dir)
    builds = {"this build": (new, os.getenv("NEW_LABEL", new))}
    if os.getenv("OLD_BIN_DIR"):
        old = os.environ["OLD_BIN_DIR"]
        builds = {"before": (old, os.getenv("OLD_LABEL", old)), **builds}
    return builds


def alternate(builds, runs, one_run, say):
    """`runs` runs of `one_run(dir)` per build, the builds taking turns (so a slow spell of the
    machine falls on all of them); `say(name, i, result)` after each. name -> [result, …]."""
    results = {name: [] for name in builds}
    for i in range(runs):
        for name, (bin_dir, _) in builds.items():
            r = one_run(bin_dir)
            results[name].append(r)
            print(say(name, i + 1, r), flush=True)
    return results


def command_env():
    """The settings this run was given that say which builds ran, as they go on a command line."""
    import os
    given = ((k, os.getenv(k)) for k in ("BUILDS", "OLD_BIN_DIR", "BIN_DIR"))
    return " ".join(f"{k}='{v}'" if ";" in v or " " in v else f"{k}={v}" for k, v in given if v)
