#!/usr/bin/env python3
"""The disk tier's fill flood, two builds side by side: issue 33's "fills without a read" goal
(the median of 3 floods of this build >= the median of 3 floods of the build before packing,
21009a2, in the same session).

Why this file exists: the flood's figure moves by 20 % from one session to the next on this VM,
so a build is only ever compared with another measured beside it, runs alternating.

Each run is bench/disk.py's `rss` section (4 MiB memory + a 1 GiB disk within a 4 MiB index
bound, every fill written, `cache-layer-loadtest` flooding unique keys for FLOOD_SECS) with the
release binaries of a directory; with MEMORY_ONLY=1 the same flood without a disk tier (what the
rest of the miss path costs).

Usage: python3 bench/disk_flood_ab.py OLD_RELEASE_DIR NEW_RELEASE_DIR [ROUNDS]
  Each directory holds cache-layer; the origin stub and load test are taken from NEW_RELEASE_DIR
  for both, so only the service differs. Build the old one with e.g.
  `git worktree add /tmp/w 21009a2 && (cd /tmp/w && CARGO_TARGET_DIR=/tmp/t cargo build --release --bins)`.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def flood(release_dir, memory_only):
    """One flood with the service of `release_dir`: requests answered."""
    env = dict(os.environ, RELEASE_DIR=release_dir)
    code = (
        "import sys, json, subprocess\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "import disk\n"
        "base = disk.base\n"
        "stub = base.Stub()\n"
        f"if {memory_only!r}:\n"
        "    proc, url = base.service(stub, {'MEMORY_CACHE_MAX_BYTES': str(4 << 20)})\n"
        "    r = json.loads(subprocess.run(base.loadtest_cmd(url, '--pattern', 'uniform', '--key-space',\n"
        "        10_000_000, '--duration', f'{disk.FLOOD_SECS}s', '-c', 32, '--seed', 4),\n"
        "        capture_output=True, text=True).stdout)\n"
        "    base.stop(proc)\n"
        "    print(json.dumps({'requests': r['requests']}))\n"
        "else:\n"
        "    print(json.dumps(disk.section_rss(stub)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["requests"]


def main():
    old, new = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    memory_only = bool(os.getenv("MEMORY_ONLY"))
    # The same stub and load test for both: only the service differs.
    staged = tempfile.mkdtemp(prefix="flood-old-")
    shutil.copy(os.path.join(old, "cache-layer"), staged)
    for tool in ("origin-stub", "cache-layer-loadtest"):
        shutil.copy(os.path.join(new, tool), staged)
    runs = {"old": [], "new": []}
    for _ in range(rounds):
        for name, d in (("old", staged), ("new", new)):
            runs[name].append(flood(d, memory_only))
            print(name, runs[name][-1], flush=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    print(json.dumps({"runs": runs, "median": med, "new_over_old": med["new"] / med["old"]}))
    shutil.rmtree(staged, ignore_errors=True)


if __name__ == "__main__":
    main()
