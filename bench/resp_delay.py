#!/usr/bin/env python3
"""A miss's latency when Redis is slow to take the entry's writes (issue 31).

Goal: "With the entry's `SET` and tag updates delayed 50 ms by a RESP proxy (lock commands on
time), a miss's p50 is within 1 ms of the undelayed run."

Why this file exists: a miss answers its clients once the memory tier holds the entry and writes
Redis in the background (src/cache/mod.rs `store`), so a slow Redis write should cost a miss
nothing. This measures it with the release binaries on loopback (never asserted by a test).

  redis-server  a free loopback port (never 6379), nothing saved to disk
  proxy         this file run as `resp_delay.py --proxy ...`: a RESP proxy (asyncio, stdlib only)
                in front of that redis-server; cache-layer's REDIS_URL points at it
  origin-stub   STUB latency ORIGIN_MS (20 ms); every answer tagged (`Surrogate-Key: {tags}`),
                so each entry write carries a tag update
  cache-layer   memory tier on, Redis through the proxy, pinned to core 0 with redis-server

Two runs, each with a fresh proxy and a fresh cache-layer: the proxy delaying entry writes by
DELAY_MS (50), and the proxy delaying nothing (0 ms, so the proxy's own hop is in both runs).
Each run: WARMUP misses not counted, then MISSES sequential `GET /items/<unique key>` back to
back over one keep-alive connection (http.client): the goal's figure is their p50 (each answer is
checked to be `fwd=miss; stored`). Then PACED more misses with PAUSE_MS (DELAY_MS + 30) before
each, so no miss finds an earlier miss's write still held: what a miss pays for its own slow
write alone. After each run (the service stopped gracefully, which waits for its background
writes) the entries are looked up directly in redis-server (EXISTS of every entry key, SISMEMBER
in the tag set for 50 of them), so the writes the proxy delayed are known to have landed.

Where the time goes: the proxy notes when each entry key's first read (the miss's cache lookup)
arrived and when it was forwarded; against the client's send time (one monotonic clock) that
splits each miss into request -> lookup at the proxy, lookup held at the proxy, and the rest.

What the proxy delays, from the code (src/cache/redis.rs, src/cache/fleet.rs), with
P = `<REDIS_KEY_PREFIX>:v1:`:
  entry-set   `SET P k:<key> <value> PX <ms>` (no NX): the entry write (RedisTier::put)
  tag-update  `EVAL/EVALSHA <ADD_TO_TAG> 1 P t:<tag> ...`: joining a tag's set (put, index_tag)
and nothing else. In particular not the fleet lock: `SET P l:<key> <token> NX PX <ms>`,
`EXISTS P l:<key>`, the unlock `EVAL <script> 1 P l:<key> <token>`; nor reads (`GETRANGE`,
`STRLEN`, the `READ_IF_SMALL` script), `PUBLISH`, `PING`, `SUBSCRIBE`, purges.

How a delay is applied, and why so. RESP has no request ids: on one connection the replies come
back in the order of the requests. So the proxy cannot let a command overtake a delayed one on the
same connection (it would have to hand the client the replies out of order, and the client would
pair them with the wrong requests). Commands are parsed incrementally from each client
connection's byte stream (a pipeline arriving in one read is split into its commands) and each
gets a release time: now + DELAY_MS for an entry-set or tag-update, now for the others, but never
earlier than the release time of the command before it on that connection. A command is forwarded
to redis-server at its release time, commands due together in one write. So:
  - a pipeline `SET + EVAL(tag)...` (one entry's write, one round trip) is held DELAY_MS once, not
    once per command: it models "the entry's write round trip takes 50 ms longer";
  - commands before the write on the connection go at once;
  - a command the proxy does not delay but that came after a delayed one on the same connection
    (e.g. the next miss's lock or read, when the service multiplexes everything over one
    connection) waits for it. That is head-of-line blocking inside the client's connection: a
    real Redis that was 50 ms late with the write would hold them the same way. The proxy counts
    such commands per class ("held behind a delayed write") with how long they waited, which is
    where a miss's extra time goes when the goal is missed.
Replies from redis-server (pub/sub messages included) go back to the client as they come.

Usage: python3 bench/resp_delay.py   (BIN_DIR: the release binaries, default target/release;
       MISSES=300, PACED=100, WARMUP=20, DELAY_MS=50, ORIGIN_MS=20). About 45 s. Writes its
       section of docs/benchmarks.md (and bench/sections/resp-delay.md) and
       bench/results-resp-delay.json, unless NO_WRITE=1. Exit status 1 when the proxy delayed
       fewer writes than there were misses, delayed a lock command, or an entry is missing
       from Redis afterwards (the goal itself is reported, not asserted).
Diagnostics (nothing written): RESP_TRACE=/tmp/x logs every command the proxy saw and forwarded
(/tmp/x.0, /tmp/x.50) and every request (/tmp/x.client), one monotonic clock; QUICKACK=1 makes
the proxy acknowledge the service's bytes at once (TCP_QUICKACK), which redis-server does not.
"""

import asyncio
import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MISSES = int(os.getenv("MISSES", "300"))
WARMUP = int(os.getenv("WARMUP", "20"))
DELAY_MS = float(os.getenv("DELAY_MS", "50"))
ORIGIN_MS = int(os.getenv("ORIGIN_MS", "20"))
PACED = int(os.getenv("PACED", "100"))
PAUSE_MS = float(os.getenv("PAUSE_MS", str(DELAY_MS + 30)))
KEY_PREFIX = "cache-layer"  # REDIS_KEY_PREFIX's default
GOAL_MS = 1.0

# The command classes the proxy delays.
DELAYED = ("entry-set", "tag-update")


# --------------------------------------------------------------------------------------------
# The proxy
# --------------------------------------------------------------------------------------------

class ProtocolError(Exception):
    pass


def parse_command(buf, pos):
    """The command starting at `pos` in `buf`: (its first arguments, up to 5, as bytes; the
    number of arguments; the offset just past it), or None when it has not fully arrived."""
    if pos >= len(buf):
        return None
    if buf[pos] != 0x2A:  # not '*': an inline command, one line
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return None
        args = bytes(buf[pos:nl]).split()
        return args[:5], len(args), nl + 2
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return None
    count = int(buf[pos + 1:nl])
    p = nl + 2
    args = []
    for i in range(max(count, 0)):
        if p >= len(buf):
            return None
        if buf[p] != 0x24:  # '$': clients send arrays of bulk strings
            raise ProtocolError(f"expected a bulk string, got {bytes(buf[p:p + 1])!r}")
        nl = buf.find(b"\r\n", p)
        if nl < 0:
            return None
        start = nl + 2
        end = start + int(buf[p + 1:nl])
        if end + 2 > len(buf):
            return None
        if i < 5:
            args.append(bytes(buf[start:end]))
        p = end + 2
    return args, count, p


def classifier(key_prefix):
    """classify(args, count) -> the command's class, for a service with REDIS_KEY_PREFIX
    `key_prefix` (keys: <prefix>:v1:k:<key>, lock <prefix>:v1:l:<key>, tag set
    <prefix>:v1:t:<tag>; src/cache/redis.rs entry_key, lock_key, tag_key)."""
    p = f"{key_prefix}:v1:".encode()
    entry, lock, tag = p + b"k:", p + b"l:", p + b"t:"

    def classify(args, count):
        if not args:
            return "other"
        name = args[0].upper()
        key = args[1] if len(args) > 1 else b""
        if name == b"SET":
            if key.startswith(lock) or b"NX" in (a.upper() for a in args[3:]):
                return "lock"  # fleet.rs try_lock: SET <lock> <token> NX PX <ttl>
            if key.startswith(entry):
                return "entry-set"  # redis.rs put: SET <entry> <value> PX <keep>
            return "other-write"
        if name in (b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO"):
            keys = int(args[2]) if len(args) > 2 and args[2].isdigit() else 0
            first = args[3] if keys >= 1 and len(args) > 3 else b""
            if first.startswith(tag) and (name.startswith(b"EVALSHA") or b"sadd" in args[1]):
                return "tag-update"  # ADD_TO_TAG on <tag set>
            if first.startswith(lock):
                return "lock"  # fleet.rs unlock: compare-and-delete of <lock>
            if b"mget" in args[1] or b"strlen" in args[1]:
                return "read"  # READ_IF_SMALL
            return "script-other"
        if name == b"EXISTS" and key.startswith(lock):
            return "lock"  # fleet.rs is_locked
        if name in (b"GET", b"GETRANGE", b"STRLEN", b"MGET", b"EXISTS", b"SMEMBERS", b"SRANDMEMBER"):
            return "read"
        if name in (b"PING", b"PUBLISH", b"SUBSCRIBE", b"PSUBSCRIBE"):
            return name.decode().lower()
        return "other"

    return classify


class Stats:
    """What the proxy saw, per command class, and when each entry key's first read came."""

    def __init__(self):
        self.seen = collections.Counter()
        self.delayed = collections.Counter()
        self.delay_ms = collections.defaultdict(list)  # actual hold of delayed commands
        self.held = collections.Counter()  # not delayed, but behind a delayed command
        self.held_ms = collections.defaultdict(list)
        self.connections = []  # per connection: class counts
        # Entry key -> [arrival, forwarded] of the first read of it (the miss's cache lookup),
        # on the monotonic clock the bench's client also reads.
        self.first_read = {}

    def as_json(self):
        def summary(values):
            if not values:
                return None
            values = sorted(values)
            return {"n": len(values), "mean": sum(values) / len(values),
                    "p50": values[len(values) // 2], "max": values[-1]}

        return {"seen": dict(self.seen), "delayed": dict(self.delayed),
                "delay_ms": {k: summary(v) for k, v in self.delay_ms.items()},
                "held": dict(self.held),
                "held_ms": {k: summary(v) for k, v in self.held_ms.items()},
                "connections": [dict(c) for c in self.connections],
                "first_read": self.first_read}


class Connection:
    """One client connection: its commands waiting for their release time, in order."""

    def __init__(self):
        # (release, arrival, class, delayed, behind, first read's key or None, bytes)
        self.queue = collections.deque()
        self.last_release = 0.0
        self.wake = asyncio.Event()
        self.closed = False
        self.classes = collections.Counter()


async def proxy_main(listen_port, upstream_port, delay_ms, stats_path, key_prefix):
    """Listens on `listen_port`, forwards to redis-server on `upstream_port` holding the entry
    writes `delay_ms`; on SIGTERM writes its counts (JSON) to `stats_path` and ends.
    Diagnostics: RESP_TRACE=<path> logs every command in and out to <path>.<delay>;
    QUICKACK=1 acknowledges the client's bytes at once (TCP_QUICKACK) instead of the kernel's
    delayed ACK, which a real redis-server does not do."""
    loop = asyncio.get_running_loop()
    delay = delay_ms / 1000
    classify = classifier(key_prefix)
    entry_prefix = f"{key_prefix}:v1:k:".encode()
    stats = Stats()
    trace = open(f"{os.environ['RESP_TRACE']}.{delay_ms:g}", "w") if os.environ.get("RESP_TRACE") else None

    async def forward(conn, upstream):
        """Writes the connection's commands to redis-server at their release times, those due
        together in one write."""
        while True:
            if not conn.queue:
                if conn.closed:
                    return
                conn.wake.clear()
                await conn.wake.wait()
                continue
            wait = conn.queue[0][0] - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            now = loop.time()
            out = []
            while conn.queue and conn.queue[0][0] <= now:
                _, arrival, cls, delayed, behind, first, raw = conn.queue.popleft()
                waited = (now - arrival) * 1000
                if delayed:
                    stats.delay_ms[cls].append(waited)
                elif behind:
                    stats.held_ms[cls].append(waited)
                if first is not None:
                    stats.first_read[first].append(now)
                out.append(raw)
                if trace:
                    trace.write(f"{now:.6f} out {id(conn) % 10000} {cls}\n")
            upstream.write(b"".join(out))
            await upstream.drain()

    async def replies(upstream, client):
        """Everything redis-server sends (pub/sub messages too) goes back as it comes."""
        try:
            while data := await upstream.read(65536):
                client.write(data)
                await client.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            client.close()

    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_w.close()
            return
        conn = Connection()
        stats.connections.append(conn.classes)
        quickack = client_w.get_extra_info("socket") if os.environ.get("QUICKACK") == "1" else None
        sender = asyncio.create_task(forward(conn, up_w))
        back = asyncio.create_task(replies(up_r, client_w))
        buf = bytearray()
        try:
            while data := await client_r.read(65536):
                now = loop.time()
                if quickack is not None:
                    quickack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                buf += data
                pos = 0
                # Every complete command in what has arrived, in order; a partial one waits
                # for the next read.
                while (parsed := parse_command(buf, pos)) is not None:
                    args, count, end = parsed
                    raw = bytes(buf[pos:end])
                    pos = end
                    cls = classify(args, count)
                    delayed = cls in DELAYED and delay > 0
                    # Never before the command ahead of it: replies keep the requests' order.
                    behind = not delayed and conn.last_release > now
                    release = max(conn.last_release, now + delay if delayed else now)
                    conn.last_release = release
                    first = None
                    if cls == "read" and len(args) > 1 and args[1].startswith(entry_prefix):
                        name = args[1][len(entry_prefix):].decode("utf-8", "replace")
                        if name not in stats.first_read:
                            stats.first_read[name] = [now]
                            first = name
                    conn.queue.append((release, now, cls, delayed, behind, first, raw))
                    stats.seen[cls] += 1
                    conn.classes[cls] += 1
                    if delayed:
                        stats.delayed[cls] += 1
                    elif behind:
                        stats.held[cls] += 1
                    if trace:
                        trace.write(f"{now:.6f} in {id(conn) % 10000} {cls} "
                                    f"{args[1][:60] if len(args) > 1 else b''}\n")
                del buf[:pos]
                conn.wake.set()
        except (ConnectionError, ProtocolError, ValueError):
            pass
        finally:
            conn.closed = True
            conn.wake.set()
            try:
                await asyncio.wait_for(sender, timeout=delay + 5)
            except (Exception, asyncio.CancelledError):
                sender.cancel()
            up_w.close()
            back.cancel()
            client_w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    with open(stats_path + ".tmp", "w") as f:
        json.dump(stats.as_json(), f)
    os.replace(stats_path + ".tmp", stats_path)
    if trace:
        trace.close()


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------

def wait_port(port, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def percentile(values, q):
    """Nearest-rank percentile of `values` (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def spread(values):
    return {"n": len(values), "p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "max_ms": max(values), "mean_ms": sum(values) / len(values)}


def misses(port, keys, pause=0.0):
    """One sequential GET per key over one keep-alive connection, `pause` seconds before each
    request; each must be a miss the service stored. Per key: (key, when
    it was sent on the monotonic clock, milliseconds until its answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    done = []
    trace = open(os.environ["RESP_TRACE"] + ".client", "a") if os.environ.get("RESP_TRACE") else None
    for key in keys:
        if pause:
            time.sleep(pause)
        sent = time.monotonic()
        started = time.perf_counter()
        conn.request("GET", f"/items/{key}")
        r = conn.getresponse()
        r.read()
        done.append((key, sent, (time.perf_counter() - started) * 1000))
        if trace:
            trace.write(f"{sent:.6f} request {key}\n{time.monotonic():.6f} answer {key}\n")
        status = r.getheader("Cache-Status", "")
        if r.status != 200 or "fwd=miss" not in status or "stored" not in status:
            raise SystemExit(f"{key}: expected a stored miss, got {r.status} {status!r}")
    conn.close()
    if trace:
        trace.close()
    return done


def breakdown(done, first_read):
    """Where each miss's time went, from the proxy's view of its first Redis read (the cache
    lookup): request -> that read reached the proxy; held there (behind a delayed write on its
    connection); the rest (lock, origin, memory tier, answer)."""
    to_proxy, held, rest = [], [], []
    for key, sent, ms in done:
        seen = first_read.get(key)
        if not seen or len(seen) < 2:
            continue
        a = (seen[0] - sent) * 1000
        h = (seen[1] - seen[0]) * 1000
        to_proxy.append(a)
        held.append(h)
        rest.append(ms - a - h)
    if not to_proxy:
        return None
    return {"to_proxy_p50_ms": percentile(to_proxy, 50), "held_p50_ms": percentile(held, 50),
            "rest_p50_ms": percentile(rest, 50), "n": len(to_proxy)}


def one_run(base, stub, redis, name, delay_ms):
    """A fresh proxy (delaying `delay_ms`) and cache-layer; WARMUP misses, MISSES back-to-back
    misses, PACED misses PAUSE_MS apart; the entries checked in redis-server; the proxy's
    counts."""
    stats_path = tempfile.mktemp(prefix="resp-delay-", suffix=".json")
    proxy_port = base.free_port()
    proxy = base.spawn([sys.executable, os.path.abspath(__file__), "--proxy", str(proxy_port),
                        str(redis.port), str(delay_ms), stats_path, KEY_PREFIX], core=base.CLIENT_CORE)
    wait_port(proxy_port)
    svc, url = base.service(stub, {"REDIS_URL": f"redis://127.0.0.1:{proxy_port}",
                                   "MEMORY_CACHE_ENABLED": "true"})
    end = time.time() + 10
    while json.loads(base.http("GET", url + "/health")[2])["tiers"]["redis"] != "ok":
        if time.time() > end:
            raise SystemExit(f"{name}: Redis never became ok through the proxy")
        time.sleep(0.05)
    port = int(url.rsplit(":", 1)[1])
    # Keys `name~tag` get the stub's `Surrogate-Key: tag`: eight tags per series, so no tag set
    # passes the 64 members from which a write also trims it.
    misses(port, [f"rdw-{name}-{i}~{name}-w{i % 8}" for i in range(WARMUP)])
    back_to_back = misses(port, [f"rd-{name}-{i}~{name}-g{i % 8}" for i in range(MISSES)])
    # The same with a pause longer than the delay between misses, so no miss finds the previous
    # miss's write still held: what a miss costs when only its own write is slow.
    paced = misses(port, [f"rdp-{name}-{i}~{name}-p{i % 8}" for i in range(PACED)], PAUSE_MS / 1000)
    # Graceful stop: shutdown waits for the background writes, so every delayed write has gone
    # through the proxy before the counts are read.
    base.stop(svc)
    base.stop(proxy)
    with open(stats_path) as f:
        seen = json.load(f)
    os.unlink(stats_path)
    # Did the writes land? Every entry key, and the tag set of each of the first 50.
    prefix = f"{KEY_PREFIX}:v1:"
    keys = [k for k, _, _ in back_to_back + paced]
    stored = int(redis.cli("exists", *[f"{prefix}k:{k}" for k in keys]).strip())
    checked = keys[:50]
    tagged = sum(int(redis.cli("sismember", f"{prefix}t:{k.split('~')[1]}", f"{prefix}k:{k}").strip())
                 for k in checked)
    first_read = seen.pop("first_read")
    return {"name": name, "delay_ms": delay_ms,
            "back_to_back": {**spread([ms for _, _, ms in back_to_back]),
                             "breakdown": breakdown(back_to_back, first_read)},
            "paced": {**spread([ms for _, _, ms in paced]), "pause_ms": PAUSE_MS,
                      "breakdown": breakdown(paced, first_read)},
            "written": len(keys), "stored_in_redis": stored, "tag_checked": len(checked),
            "tagged_in_redis": tagged, "proxy": seen}


def report_lines(r):
    b, p, x = r["back_to_back"], r["paced"], r["proxy"]
    lines = [f"{r['name']} ({r['delay_ms']:g} ms):"]
    for title, s in ((f"{b['n']} misses back to back", b), (f"{p['n']} misses {p['pause_ms']:g} ms apart", p)):
        lines.append(f"  {title}: p50 {s['p50_ms']:.2f} ms, p90 {s['p90_ms']:.2f}, p99 {s['p99_ms']:.2f}, "
                     f"max {s['max_ms']:.2f}")
        if s["breakdown"]:
            k = s["breakdown"]
            lines.append(f"    p50s: request -> its first Redis read at the proxy {k['to_proxy_p50_ms']:.2f} ms; "
                         f"held there {k['held_p50_ms']:.2f} ms; the rest {k['rest_p50_ms']:.2f} ms")
    lines.append(f"  entries in Redis afterwards: {r['stored_in_redis']} of {r['written']}; in their tag set: "
                 f"{r['tagged_in_redis']} of {r['tag_checked']} checked")
    lines.append("  proxy saw: " + ", ".join(f"{k} {v}" for k, v in sorted(x["seen"].items())))
    for cls, d in sorted(x["delay_ms"].items()):
        if d:
            lines.append(f"  delayed {d['n']} {cls}: held {d['p50']:.1f} ms p50, {d['max']:.1f} max")
    if not x["delayed"]:
        lines.append("  delayed nothing")
    for cls, h in sorted(x["held_ms"].items()):
        if h:
            lines.append(f"  {h['n']} {cls} commands, not delayed themselves, waited behind a delayed write "
                         f"on their connection: {h['p50']:.1f} ms p50, {h['max']:.1f} max")
    lines.append(f"  connections opened through the proxy: {len(x['connections'])}; commands per connection: "
                 + " | ".join(", ".join(f"{k} {v}" for k, v in sorted(c.items())) for c in x["connections"] if c))
    return lines


def markdown(results):
    d, u = results["delayed"], results["undelayed"]
    db, ub = d["back_to_back"], u["back_to_back"]
    diff = db["p50_ms"] - ub["p50_ms"]
    paced_diff = d["paced"]["p50_ms"] - u["paced"]["p50_ms"]
    dx = d["proxy"]
    lines = ["<!-- resp-delay:begin -->",
             "## A miss while Redis is slow to take the entry's writes (RESP proxy)", "",
             f"**Command:** `python3 bench/resp_delay.py` (release binaries from `BIN_DIR`, default "
             f"`target/release`; MISSES={MISSES}, PACED={PACED}, WARMUP={WARMUP}, DELAY_MS={DELAY_MS:g}, "
             f"ORIGIN_MS={ORIGIN_MS}). **Run:** {results['started']}–{results['finished'][11:]} UTC, "
             f"commit `{results['commit']}`. **Machine:** 2-core VM.", "",
             "cache-layer (memory tier on; with redis-server on core 0) reaches Redis through a RESP proxy "
             "(Python asyncio, core 1, with the client and the origin stub) that holds the entry's "
             f"`SET … PX` and its tag-set scripts (`EVAL` of `ADD_TO_TAG`) {DELAY_MS:g} ms and passes the rest "
             "at once: the fleet lock (`SET … NX PX`, `EXISTS`, the unlock script), reads, `PUBLISH`, `PING`. "
             "RESP replies come back in request order, so a command behind a held write on the same "
             "connection waits for it (counted). Origin stub at "
             f"{ORIGIN_MS} ms, every answer tagged. Misses on unique keys over one keep-alive connection: "
             f"{MISSES} back to back, then {PACED} with {PAUSE_MS:g} ms between an answer and the next "
             "request. The undelayed run goes through the same proxy at 0 ms.", "",
             "| run | misses | p50 (ms) | p90 (ms) | p99 (ms) | request → first Redis read at the proxy, p50 (ms) "
             "| that read held, p50 (ms) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in (u, d):
        for kind, title in (("back_to_back", "back to back"), ("paced", f"{PAUSE_MS:g} ms apart")):
            s = r[kind]
            k = s["breakdown"] or {}
            lines.append(f"| {r['name']} ({r['delay_ms']:g} ms) | {s['n']} {title} | {s['p50_ms']:.2f} | "
                         f"{s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {k.get('to_proxy_p50_ms', 0):.2f} | "
                         f"{k.get('held_p50_ms', 0):.2f} |")
    delayed = dx["delayed"]
    lines += ["", f"The delayed run's proxy held {delayed.get('entry-set', 0)} entry `SET`s and "
              f"{delayed.get('tag-update', 0)} tag updates (p50 {dx['delay_ms']['entry-set']['p50']:.1f} ms) and "
              f"no lock command; {d['stored_in_redis']} of {d['written']} entries were in Redis afterwards.", "",
              "| goal | figure | met |", "| --- | --- | --- |",
              f"| miss p50 with the entry's writes delayed {DELAY_MS:g} ms within {GOAL_MS:g} ms of the "
              f"undelayed run (misses back to back) | {db['p50_ms']:.2f} − {ub['p50_ms']:.2f} = {diff:+.2f} ms | "
              f"{'yes' if abs(diff) <= GOAL_MS else '**no**'} |",
              f"| the same, misses {PAUSE_MS:g} ms apart (no earlier write still held) | "
              f"{d['paced']['p50_ms']:.2f} − {u['paced']['p50_ms']:.2f} = {paced_diff:+.2f} ms | "
              f"{'yes' if abs(paced_diff) <= GOAL_MS else '**no**'} |", ""]
    lines += notes(results) + ["<!-- resp-delay:end -->", ""]
    return "\n".join(lines)


def notes(results):
    """Where a delayed miss's extra time went, from the proxy's view of its first Redis read;
    only the parts this run measured."""
    d, u = results["delayed"], results["undelayed"]
    dk, uk = d["back_to_back"]["breakdown"], u["back_to_back"]["breakdown"]
    diff = d["back_to_back"]["p50_ms"] - u["back_to_back"]["p50_ms"]
    if abs(diff) <= GOAL_MS or not dk or not uk:
        return []
    paced = d["paced"]["p50_ms"] - u["paced"]["p50_ms"]
    late = dk["to_proxy_p50_ms"] - uk["to_proxy_p50_ms"]
    held = dk["held_p50_ms"] - uk["held_p50_ms"]
    out = [f"**Where the {diff:.1f} ms go** (back-to-back misses, p50s, delayed against undelayed): a miss's "
           "first Redis command, the cache lookup (`GETRANGE` + `STRLEN`), reaches the proxy "
           f"{dk['to_proxy_p50_ms']:.1f} ms after the request ({uk['to_proxy_p50_ms']:.1f} undelayed) and is "
           f"held there {dk['held_p50_ms']:.1f} ms ({uk['held_p50_ms']:.1f}); the rest (lock, origin, answer) "
           f"takes {dk['rest_p50_ms']:.1f} ms ({uk['rest_p50_ms']:.1f})."]
    if abs(paced) <= GOAL_MS:
        out[0] += (f" A miss does not wait for its own write (misses {PAUSE_MS:g} ms apart: {paced:+.2f} ms): "
                   "it waits for the previous miss's.")
    out[0] += (" The service sends every command for a Redis node over one multiplexed connection "
               "(`Node::cmd`, a `ConnectionManager`), so a miss's lookup queues behind the previous "
               "miss's background write, whose reply comes only after the write.")
    out.append("")
    if held > 1:
        out.append(f"- {held:.1f} ms: the lookup waits behind the held write at the proxy, as it would in a "
                   "Redis that was late with the write: RESP replies keep the requests' order.")
    if late > 5:
        out.append(f"- {late:.1f} ms: before that, the lookup sits in cache-layer's own socket. The redis crate "
                   "(1.8) leaves `TCP_NODELAY` off (`TcpSettings::default()`, and the service does not call "
                   "`ConnectionInfo::set_tcp_settings`), so Nagle holds a small write while the previous "
                   "one is unacknowledged, until the server's delayed ACK (about 40 ms on Linux: the server "
                   "has no reply to carry it). With `QUICKACK=1` (a diagnostic: the proxy acknowledges at "
                   "once, which redis-server does not) the lookup reaches the proxy at once and waits the "
                   "whole delay there instead; the miss costs the same.")
    return out + [""]


def main():
    import run as base  # the shared helpers: spawn, stop, Stub, Redis, service, write_section

    base.RELEASE = os.environ.get("BIN_DIR", os.path.join(base.ROOT, "target", "release"))
    for binary in ("cache-layer", "origin-stub"):
        if not os.access(os.path.join(base.RELEASE, binary), os.X_OK):
            raise SystemExit(f"no {binary} in {base.RELEASE} (set BIN_DIR or build --release)")
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(base.CLIENT_CORE)})  # the client beside the stub and the proxy
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=base.ROOT,
                            capture_output=True, text=True).stdout.strip()
    results = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "commit": commit,
               "bin_dir": base.RELEASE}
    try:
        redis = base.Redis()
        stub = base.Stub()
        stub.latency(ORIGIN_MS)
        base.http("POST", f"{stub.base}/_stub/headers", body=json.dumps([["Surrogate-Key", "{tags}"]]).encode(),
                  headers={"Content-Type": "application/json"})
        results["undelayed"] = one_run(base, stub, redis, "undelayed", 0)
        results["delayed"] = one_run(base, stub, redis, "delayed", DELAY_MS)
    finally:
        base.stop_all()
    results["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")

    d, u = results["delayed"], results["undelayed"]
    for r in (u, d):
        print("\n".join(report_lines(r)))
    delayed = d["proxy"]["delayed"]
    print(f"delayed {delayed.get('entry-set', 0)} entry writes (SET) and {delayed.get('tag-update', 0)} "
          f"tag updates by {DELAY_MS:g} ms; lock commands delayed by the proxy: {delayed.get('lock', 0)}")
    diff = d["back_to_back"]["p50_ms"] - u["back_to_back"]["p50_ms"]
    print(f"p50 delayed {d['back_to_back']['p50_ms']:.2f} ms, undelayed {u['back_to_back']['p50_ms']:.2f} ms, "
          f"difference {diff:+.2f} ms; goal <= {GOAL_MS:g} ms: {'met' if abs(diff) <= GOAL_MS else 'NOT met'}")

    problems = []
    writes = MISSES + PACED
    if delayed.get("entry-set", 0) < writes or delayed.get("tag-update", 0) < writes:
        problems.append(f"the proxy delayed {delayed.get('entry-set', 0)} entry SETs and "
                        f"{delayed.get('tag-update', 0)} tag updates, fewer than the {writes} misses: "
                        "the delay did not apply")
    if delayed.get("lock", 0):
        problems.append("the proxy delayed lock commands")
    for r in (u, d):
        if r["stored_in_redis"] != r["written"] or r["tagged_in_redis"] != r["tag_checked"]:
            problems.append(f"{r['name']}: {r['stored_in_redis']} of {r['written']} entries in Redis, "
                            f"{r['tagged_in_redis']} of {r['tag_checked']} in their tag set")
    if problems:
        print("\n".join("PROBLEM: " + p for p in problems), file=sys.stderr)
        raise SystemExit(1)
    text = markdown(results)
    if os.environ.get("QUICKACK") == "1" or os.environ.get("RESP_TRACE") or os.environ.get("NO_WRITE") == "1":
        print("(diagnostic run: docs/benchmarks.md not written)")
    else:
        base.write_section("resp-delay", text)
        with open(os.path.join(base.ROOT, "bench", "results-resp-delay.json"), "w") as f:
            json.dump(results, f, indent=1)
    print()
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--proxy":
        listen, upstream, delay, path, prefix = sys.argv[2:7]
        asyncio.run(proxy_main(int(listen), int(upstream), float(delay), path, prefix))
    else:
        main()
