#!/usr/bin/env python3
"""Hot-key A/B: interleaved wrk rounds of a few contenders on one cached key, for working on the
hit path (the full comparison, with every peer, is `bench/run.sh`'s `hot` section).

    python3 bench/hot_ab.py [ROUNDS] [contender ...]      # default: 9 ceiling memory nginx

Each round runs every contender once (-c32 for DURATION s, default 5), starting with a different
one each round; prints each contender's median, min and max requests/s and its ratio to the
ceiling's median. Uses the release binaries (`cargo build --release --bins`), bench/run.py's
set-up (servers on core 0, wrk on core 1), loopback only.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
import run  # noqa: E402


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    names = sys.argv[2:] or ["ceiling", "memory", "nginx"]
    stub = run.Stub()
    running = {n: run.Contender(n, stub) for n in names}
    for c in running.values():
        c.warm("foo")
    rps = {n: [] for n in names}
    order = list(running.items())
    for r in range(rounds):
        for name, c in order[r % len(order):] + order[:r % len(order)]:
            rps[name].append(run.wrk(c.item("foo"), 32)["rps"])
        run.log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {rps[n][-1]:.0f}" for n in names))
    base = statistics.median(rps[names[0]])
    for n in names:
        med = statistics.median(rps[n])
        print(f"{n:10s} median {med:8.0f}  min {min(rps[n]):8.0f}  max {max(rps[n]):8.0f}  "
              f"x{names[0]} {med / base:.3f}")


if __name__ == "__main__":
    try:
        main()
    finally:
        run.stop_all()
