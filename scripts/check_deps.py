#!/usr/bin/env python3
"""Checks that the crate's modules import only what docs/architecture.md's dependency table
allows: nothing imports upward, and tiers never import each other.

Why: the layout is the architecture's map only while the arrows point one way; a `use` that
points back is easy to add and hard to see in review. This reads every `src/**/*.rs` of the
library (test modules left out: a test may reach anywhere), resolves each `crate::`, `super::`
and `self::` path to the module that defines it (following `pub use` re-exports), and checks
each edge between rooms against the table between the `dependency-table` markers.

The table itself must have no cycle (a room may not reach itself through what it may import),
so "may import" is a layering, not a list of exceptions.

Usage: python3 scripts/check_deps.py [--graph]   exit 1 on a forbidden edge or a cyclic table.
       python3 scripts/check_deps.py --self-test  checks the checker on a small tree of its own.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
DOC = os.path.join(ROOT, "docs", "architecture.md")


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return "::".join(rel)


def files():
    for d, _, names in os.walk(SRC):
        if os.path.relpath(d, SRC).split(os.sep)[0] == "bin" or d.endswith(os.sep + "bin"):
            continue
        for n in names:
            if n.endswith(".rs") and not (d == SRC and n == "main.rs"):
                yield os.path.join(d, n)


def without_tests(text):
    # Test modules sit at the end of a file by convention; everything from the first
    # `#[cfg(test)]` item on is a test's.
    m = re.search(r"^#\[cfg\(test\)\]", text, re.M)
    text = text[: m.start()] if m else text
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def use_paths(text):
    """Every path a `use` names (groups expanded), and every inline `crate::` path."""
    out = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        out.extend(expand(squeeze(m.group(1))))
    body = re.sub(r"\buse\s+[^;]+;", "", text)
    for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", body):
        out.append(m.group(1))
    return out


def expand(tree):
    depth, start = 0, None
    for i, c in enumerate(tree):
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                prefix, inner, rest = tree[:start], tree[start + 1 : i], tree[i + 1 :]
                parts, d, s = [], 0, 0
                for j, ch in enumerate(inner):
                    d += ch == "{"
                    d -= ch == "}"
                    if ch == "," and d == 0:
                        parts.append(inner[s:j])
                        s = j + 1
                parts.append(inner[s:])
                out = []
                for p in parts:
                    if p:
                        out.extend(expand(prefix + (p if p != "self" else "")))
                return [o.rstrip(":") for o in out]
    return [re.split(r" as ?", tree)[0]]


def squeeze(tree):
    """A use tree without whitespace, but for the one around `as` (an alias)."""
    tree = re.sub(r"\s+as\s+", " as ", tree.strip())
    return re.sub(r"\s*([:{},])\s*", r"\1", re.sub(r"\s+(?!as )(?<! as)", "", tree))


def absolute(path, module, is_mod_file):
    parts = path.split("::")
    here = module.split("::") if module else []
    if parts[0] == "crate":
        return parts[1:]
    if parts[0] in ("self", "super"):
        base = list(here)
        if parts[0] == "self":
            parts = parts[1:]
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
        return base + parts
    return None  # an external crate or std


def main():
    mods = {}
    reexports = {}  # (module, name) -> source path parts
    for f in files():
        mods[module_of(f)] = f
    for mod, f in mods.items():
        text = without_tests(open(f).read())
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            for p in expand(squeeze(m.group(1))):
                a = absolute(p if p.split("::")[0] in ("crate", "self", "super") else "self::" + p, mod, True)
                if a:
                    reexports[(mod, a[-1])] = a

    def resolve(parts):
        """The module that defines the item `parts` names."""
        seen = 0
        while seen < 8:
            seen += 1
            for k in range(len(parts), 0, -1):
                m = "::".join(parts[:k])
                if m in mods:
                    if k < len(parts) and (m, parts[k]) in reexports:
                        parts = reexports[(m, parts[k])] + parts[k + 1 :]
                        break
                    return m
            else:
                return None
        return None

    rooms, allowed = read_table()
    cycle = table_cycle(allowed)
    if cycle:
        print("FAIL  the table has a cycle: " + " -> ".join(cycle))
        return 1

    def room_of(mod):
        best = None
        for r, prefixes in rooms.items():
            for p in prefixes:
                if mod == p or mod.startswith(p + "::"):
                    if best is None or len(p) > len(best[1]):
                        best = (r, p)
        return best[0] if best else None

    bad = []
    edges = set()
    for mod, f in sorted(mods.items()):
        text = without_tests(open(f).read())
        for p in use_paths(text):
            a = absolute(p, mod, True)
            if not a:
                continue
            target = resolve(a)
            if not target or target == mod:
                continue
            src_room, dst_room = room_of(mod), room_of(target)
            if src_room is None or dst_room is None:
                bad.append(f"{mod}: no room in the table for {mod if src_room is None else target}")
                continue
            if src_room == dst_room:
                continue
            edges.add((src_room, dst_room))
            if dst_room not in allowed[src_room]:
                bad.append(f"{os.path.relpath(f, ROOT)}: {src_room} may not import {dst_room} ({p})")
    if "--graph" in sys.argv:
        for e in sorted(edges):
            print(f"{e[0]} -> {e[1]}")
    for b in sorted(set(bad)):
        print("FAIL ", b)
    print(f"{len(mods)} modules, {len(edges)} edges between rooms, {len(set(bad))} not allowed")
    return 1 if bad else 0


def table_cycle(allowed):
    """A cycle of rooms in the table's "may import" relation, if any."""
    state = {}

    def visit(room, path):
        state[room] = "open"
        for nxt in sorted(allowed.get(room, ())):
            if state.get(nxt) == "open":
                return path + [room, nxt]
            if nxt not in state:
                found = visit(nxt, path + [room])
                if found:
                    return found
        state[room] = "done"
        return None

    for room in sorted(allowed):
        if room not in state:
            found = visit(room, [])
            if found:
                return found[found.index(found[-1]) :]
    return None


def self_test():
    """The checker finds a forbidden import and a cyclic table, and passes a clean tree."""
    import tempfile

    global SRC, DOC
    import contextlib
    import io

    quiet = contextlib.redirect_stdout(io.StringIO())
    table = """<!-- dependency-table -->
| room | modules | may import |
| --- | --- | --- |
| low | `low` | nothing |
| high | `high` | low |
| root | `` | low, high |
<!-- /dependency-table -->
"""
    with tempfile.TemporaryDirectory() as d:
        SRC, DOC = os.path.join(d, "src"), os.path.join(d, "arch.md")
        os.makedirs(os.path.join(SRC, "low"))
        open(os.path.join(SRC, "lib.rs"), "w").write("pub mod low;\npub mod high;\n")
        open(os.path.join(SRC, "high.rs"), "w").write("use crate::low::Thing;\n")
        open(os.path.join(SRC, "low", "mod.rs"), "w").write("pub use inner::Thing;\nmod inner;\n")
        open(os.path.join(SRC, "low", "inner.rs"), "w").write("pub struct Thing;\n")
        open(DOC, "w").write(table)
        quiet.__enter__()
        assert main() == 0, "a clean tree passes"
        open(os.path.join(SRC, "low", "inner.rs"), "w").write(
            "pub struct Thing;\nfn f() { let _ = crate::high::X; }\n#[cfg(test)]\nmod tests { use crate::high::Y; }\n"
        )
        assert main() == 1, "an upward import (inline path) fails"
        open(os.path.join(SRC, "low", "inner.rs"), "w").write(
            "pub struct Thing;\n#[cfg(test)]\nmod tests { use crate::high::Y; }\n"
        )
        assert main() == 0, "a test module may import anything"
        open(DOC, "w").write(table.replace("| low | `low` | nothing |", "| low | `low` | high |"))
        assert main() == 1, "a cyclic table fails"
        quiet.__exit__(None, None, None)
    print("self-test passed")
    return 0


def read_table():
    text = open(DOC).read()
    m = re.search(r"<!-- dependency-table -->(.*?)<!-- /dependency-table -->", text, re.S)
    if not m:
        sys.exit("docs/architecture.md has no dependency table")
    rooms, allowed = {}, {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("room", "---") or set(cells[0]) <= set("- "):
            continue
        room = cells[0].strip("`")
        rooms[room] = [c.strip().strip("`") for c in cells[1].split(",") if c.strip()]
        allowed[room] = {c.strip().strip("`") for c in cells[2].split(",") if c.strip() and c.strip() != "nothing"}
    return rooms, allowed


if __name__ == "__main__":
    sys.exit(self_test() if "--self-test" in sys.argv else main())
