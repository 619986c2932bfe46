#!/usr/bin/env python3
"""The log lines the docs quote are the binary's: each is found in src/**/*.rs, so a message that
changes in the code fails this check until the docs follow.

Where the docs quote a log line (README.md, docs/*.md):
  - a table whose header is `| level, target | message |`: every backticked text of the message
    column, at the level of the first column and in the module its target names
    (`cache_layer::cache::redis` is src/cache/redis.rs or src/cache/redis/mod.rs);
  - prose: a level in capitals followed by backticked text, e.g. WARN `redis is reachable`.
`…` (or `...`) stands for a part left out: every other part must appear, in order, in one string
of one source file. A quote must be at least 8 characters once `…` is removed.

Run:  python3 scripts/check_doc_log_lines.py   (exit 1, with each line not found, on a mismatch)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LEVELS = ("ERROR", "WARN", "INFO", "DEBUG")
# Lines that libraries write, not this binary (their target names the library).
FROM_DEPENDENCIES = {"PeriodicReader.ExportError"}
PROSE = re.compile(r"\b(ERROR|WARN|INFO|DEBUG)\s+`([^`]+)`")


def source_files() -> dict[Path, str]:
    """src/**/*.rs, with string continuations (a backslash at the end of a line) joined."""
    return {p: re.sub(r"\\\n\s*", "", p.read_text()) for p in sorted((ROOT / "src").rglob("*.rs"))}


def module_files(target: str) -> list[Path]:
    parts = target.split("::")
    if parts[0] != "cache_layer":
        return []
    base = ROOT / "src" / Path(*parts[1:]) if len(parts) > 1 else ROOT / "src" / "lib"
    return [base.with_suffix(".rs"), base / "mod.rs"]


def fragments(quote: str) -> list[str]:
    return [f.strip() for f in re.split(r"…|\.\.\.", " ".join(quote.split())) if f.strip()]


def found_in(quote: str, text: str) -> bool:
    """Every fragment of the quote in order, within one line of the (joined) source."""
    frags = fragments(quote)
    pattern = ".*?".join(re.escape(f) for f in frags)
    return re.search(pattern, text) is not None


def quotes() -> list[tuple[str, int, str, str | None, str | None]]:
    """(doc, line, quote, level, target) for every quoted log line."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        lines = text.splitlines()
        in_table = False
        for i, line in enumerate(lines, 1):
            if re.match(r"\|\s*level, target\s*\|\s*message\s*\|", line):
                in_table = True
                continue
            if in_table:
                if not line.startswith("|"):
                    in_table = False
                elif not set(line) <= set("|- "):
                    cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
                    level = cells[0].split()[0]
                    targets = re.findall(r"`([^`]+)`", cells[0])
                    for q in re.findall(r"`([^`]+)`", cells[1]):
                        out.append((doc.name, i, q, level, targets[0] if len(targets) == 1 else None))
                    continue
        # Prose (tables included, for a level word inside a cell): across line breaks.
        for m in PROSE.finditer(text):
            q = " ".join(m.group(2).split())
            if q.startswith("cache_layer::") or re.fullmatch(r"[a-z_]+(::[a-z_]+)*", q):
                continue  # a target, not a message
            line_no = text.count("\n", 0, m.start()) + 1
            if any(o[0] == doc.name and o[1] == line_no and o[2] == q for o in out):
                continue
            out.append((doc.name, line_no, q, m.group(1), None))
    return out


def main() -> int:
    sources = source_files()
    failures, checked = [], 0
    for doc, line, quote, level, target in quotes():
        if quote in FROM_DEPENDENCIES:
            continue
        checked += 1
        where = f"{doc}:{line}: `{quote}`"
        if len("".join(fragments(quote))) < 8:
            failures.append(f"{where}: too short to find")
            continue
        hits = [p for p, text in sources.items() if any(found_in(quote, l) for l in text.splitlines())]
        if not hits:
            failures.append(f"{where}: not in any src/**/*.rs")
            continue
        if target:
            wanted = module_files(target)
            if wanted and not any(p in wanted for p in hits):
                failures.append(f"{where}: written by {[str(p.relative_to(ROOT)) for p in hits]}, "
                                f"not by {target}")
                continue
            if level in LEVELS:
                # The message's own line or the few before it name the level's macro.
                ok = False
                for p in hits:
                    src_lines = sources[p].splitlines()
                    for n, l in enumerate(src_lines):
                        if found_in(quote, l):
                            window = "\n".join(src_lines[max(0, n - 4):n + 1])
                            if f"{level.lower()}!" in window or "RateLimitedLog" in window:
                                ok = True
                            elif "#[error(" in l:
                                # A thiserror message logged elsewhere, e.g. warn!("{Purge…}").
                                name = re.search(r"pub (?:struct|enum) (\w+)", "\n".join(src_lines[n:n + 3]))
                                ok = bool(name) and re.search(
                                    rf'{level.lower()}!\(\s*"\{{{name.group(1)}\}}"', sources[p]) is not None
                if not ok:
                    failures.append(f"{where}: not written at {level} in {target}")
    for f in failures:
        print(f"FAIL  {f}")
    print(f"{checked} quoted log lines checked, {len(failures)} not the binary's")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
