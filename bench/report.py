#!/usr/bin/env python3
"""Turn a benchmark results file into docs/benchmarks.md and a latency chart.

Why this file exists: `bench/run.py` measures and writes raw results as JSON; the figures in the
documentation must come from such a file rather than be typed in by hand, so that every table
states the machine, the command and the time it was measured, and so that a rerun regenerates the
page and the chart exactly. This script does only the rendering: it reads the JSON, writes the
Markdown page and an SVG chart of the open-loop latency percentiles. Standard library only.

    python3 bench/report.py RESULTS.json --markdown docs/benchmarks.md \
        --svg docs/bench-latency.svg [--notes bench/notes.md]

The output depends on the input only (no current time in it), so regenerating from the same
results file gives the same bytes.
"""

import argparse
import json
import math
import os
import re
import sys
from datetime import datetime, timezone
from xml.sax.saxutils import escape, quoteattr

DASH = "—"
IMAGE_ALT = "Latency percentiles per contender"
SECTION_ORDER = ("hot", "latency", "zipf", "stampede")
HEADINGS = {
    "hot": "Hot key: throughput and latency",
    "latency": "Hot key at a fixed rate: latency percentiles (open loop)",
    "zipf": "Zipf workload larger than the memory bound",
    "stampede": "Stampede: 1,000 concurrent requests on a cold key",
}

# Percentiles drawn as bars in the chart: (key in a latency row, label, Okabe–Ito colour).
CHART_BARS = (
    ("p50_ms", "p50", "#0072B2"),
    ("p90_ms", "p90", "#009E73"),
    ("p99_ms", "p99", "#E69F00"),
    ("p999_ms", "p99.9", "#D55E00"),
)
MAX_TICK_COLOUR = "#000000"

# Chart geometry, in pixels.
SVG_WIDTH = 900
PLOT_LEFT = 60  # room for the percentile name left of each bar
PLOT_RIGHT = SVG_WIDTH - 70  # room for the value printed right of the longest bar
PLOT_TOP = 78
GROUP_LABEL_HEIGHT = 18
BAR_HEIGHT = 12
BAR_STEP = 15
GROUP_GAP = 14
PLOT_BOTTOM_MARGIN = 44


# ---------------------------------------------------------------------------------------------
# Formatting of single values


def is_number(value):
    """True for an int or float (but not a bool), i.e. a value that can be formatted."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt_int(value):
    """A count or a rate as a whole number without separators; None becomes a dash."""
    if not is_number(value):
        return DASH
    return f"{value:.0f}"


def fmt_ms(value):
    """A latency in milliseconds with three decimals; None becomes a dash."""
    if not is_number(value):
        return DASH
    return f"{value:.3f}"


def fmt_pair(first, second):
    """Two latencies as "a / b" (e.g. p50 / p99); a single dash if both are missing."""
    if not is_number(first) and not is_number(second):
        return DASH
    return f"{fmt_ms(first)} / {fmt_ms(second)}"


def fmt_percent(ratio):
    """A ratio in [0, 1] as a percentage with two decimals."""
    if not is_number(ratio):
        return DASH
    return f"{ratio * 100:.2f}%"


def fmt_chart_value(value):
    """A latency as printed beside a bar: three significant digits, no exponent."""
    if value >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def fmt_tick(value):
    """An axis tick (0.01, 0.2, 5, 100 …) without trailing zeros."""
    return f"{value:g}"


def cell(value):
    """Text made safe for a Markdown table cell: no pipes, HTML tags or line breaks.

    None becomes empty.
    """
    if value is None:
        return ""
    text = str(value).replace("\r", " ").replace("\n", " ")
    return text.replace("|", "\\|").replace("<", "\\<")


def code_span(text):
    """Text as Markdown inline code, with a fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def contender(row):
    """The name shown for a row: its label, or its short name if it has no label."""
    return row.get("label") or row.get("name") or DASH


# ---------------------------------------------------------------------------------------------
# Machine, command and time range


def short_os(os_name):
    """"Debian GNU/Linux 12 (bookworm)" -> "Debian 12": drop "GNU/Linux" and code names."""
    text = re.sub(r"\(.*?\)", "", os_name).replace("GNU/Linux", "")
    return " ".join(text.split())


def machine_short(machine):
    """The machine in one short phrase, e.g. "2 cores, AMD EPYC 7B13, 24 GiB, Debian 12"."""
    parts = []
    if is_number(machine.get("cores")):
        parts.append(f"{machine['cores']:g} cores")
    if machine.get("cpu"):
        parts.append(str(machine["cpu"]))
    if is_number(machine.get("memory_gib")):
        parts.append(f"{machine['memory_gib']:g} GiB")
    if machine.get("os"):
        parts.append(short_os(str(machine["os"])))
    return ", ".join(parts) if parts else "machine not recorded"


def machine_long(machine):
    """The machine with every recorded detail, for the page's introduction."""
    parts = []
    if is_number(machine.get("cores")):
        parts.append(f"{machine['cores']:g} cores")
    if machine.get("cpu"):
        parts.append(str(machine["cpu"]))
    if is_number(machine.get("memory_gib")):
        parts.append(f"{machine['memory_gib']:g} GiB RAM")
    if machine.get("os"):
        parts.append(str(machine["os"]))
    if machine.get("kernel"):
        parts.append(f"kernel {machine['kernel']}")
    if machine.get("rustc"):
        parts.append(str(machine["rustc"]))
    return ", ".join(parts) if parts else "not recorded"


def command_with_env(results):
    """The top-level command prefixed by its environment, e.g. "ROUNDS=3 bench/run.sh"."""
    command = results.get("command") or "bench/run.sh"
    env = results.get("env") or {}
    assignments = [f"{key}={value}" for key, value in env.items()]
    return " ".join(assignments + [command])


def parse_time(text):
    """An ISO 8601 timestamp as an aware UTC datetime, or None if absent or unparseable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def time_range(started, finished):
    """A started–finished range in UTC, e.g. "2026-11-25 10:30:00–10:36:00 UTC"."""
    start = parse_time(started)
    end = parse_time(finished)
    if start is None and end is None:
        if started or finished:
            return f"{started or '?'} – {finished or '?'}"
        return "time not recorded"
    if start is None:
        return f"finished {end:%Y-%m-%d %H:%M:%S} UTC"
    if end is None:
        return f"started {start:%Y-%m-%d %H:%M:%S} UTC"
    if start.date() == end.date():
        return f"{start:%Y-%m-%d %H:%M:%S}–{end:%H:%M:%S} UTC"
    return f"{start:%Y-%m-%d %H:%M:%S} – {end:%Y-%m-%d %H:%M:%S} UTC"


def overall_range(sections):
    """The earliest start and the latest finish over all sections, as raw timestamps."""
    starts = [s.get("started") for s in sections.values() if parse_time(s.get("started"))]
    ends = [s.get("finished") for s in sections.values() if parse_time(s.get("finished"))]
    first = min(starts, key=parse_time) if starts else None
    last = max(ends, key=parse_time) if ends else None
    return first, last


def context_line(machine, command, started, finished):
    """The line stated above every table: where, with what, and when it was measured."""
    return (
        f"**Machine:** {machine_short(machine)}. **Command:** {code_span(command)}. "
        f"**Run:** {time_range(started, finished)}."
    )


def table(header, rows):
    """A Markdown table from a list of column titles and a list of rows of cell strings."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(cell(value) for value in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Markdown sections


def render_intro(results):
    """The title, why the page exists, the machine and commit, and the command to rerun."""
    machine = results.get("machine") or {}
    lines = [
        "# Benchmarks",
        "",
        "Every figure on this page was produced by `bench/run.sh`, which runs `bench/run.py` to "
        "measure and then `bench/report.py` to write this page and its chart from the results "
        "file. None of it is asserted by a test: timed assertions flake on a shared 2-core "
        "machine. To check a figure, rerun the command shown; the page is generated, so edit "
        "the notes file rather than this one.",
        "",
        f"**Machine:** {machine_long(machine)}.",
    ]
    commit = results.get("commit")
    if commit:
        sha, _, subject = str(commit).partition(" ")
        line = f"**Commit:** {code_span(sha)}"
        if subject:
            line += f" “{subject}”"
        lines += ["", line + "."]
    lines += ["", f"**Command:** {code_span(command_with_env(results))}."]
    return "\n".join(lines)


def render_goals(results):
    """The goals table: each goal, the figure that decides it, and whether it was met."""
    machine = results.get("machine") or {}
    sections = results.get("sections") or {}
    goals = results.get("goals") or []
    parts = ["## Goals", ""]
    if not goals:
        parts.append("No goals recorded in this results file.")
        return "\n".join(parts)
    started, finished = overall_range(sections)
    parts += [context_line(machine, command_with_env(results), started, finished), ""]
    rows = []
    for goal in goals:
        met = goal.get("met")
        verdict = "yes" if met is True else "**no**" if met is False else DASH
        rows.append([goal.get("goal") or DASH, goal.get("figure") or DASH, verdict])
    parts.append(table(["goal", "figure", "met"], rows))
    return "\n".join(parts)


def spread(rounds):
    """`min–max` of the rounds' req/s, or `—` for results that did not keep them."""
    if not rounds:
        return "—"
    return f"{fmt_int(rounds['min'])}–{fmt_int(rounds['max'])}"


def hot_table(section):
    """Closed-loop throughput and latency, under load (c=32) and one request at a time."""
    rows = []
    for row in section["rows"]:
        load = row.get("load") or {}
        single = row.get("single") or {}
        rows.append([
            contender(row),
            fmt_int(load.get("rps")),
            spread(row.get("load_spread")),
            fmt_pair(load.get("p50_ms"), load.get("p99_ms")),
            fmt_int(single.get("rps")),
            fmt_pair(single.get("p50_ms"), single.get("p99_ms")),
        ])
    header = ["contender", "req/s under load (c=32)", "spread of the rounds (req/s)",
              "p50 / p99 under load (ms)",
              "req/s one at a time", "p50 / p99 one at a time (ms)"]
    return table(header, rows)


def sentence(parts, separator=", "):
    """The parts joined into one capitalised sentence, or None when there are none."""
    if not parts:
        return None
    text = separator.join(parts)
    return text[0].upper() + text[1:] + "."


def latency_parameters(section):
    """One sentence with the offered rate, connections and duration of the open-loop run."""
    parts = []
    if is_number(section.get("rate")):
        parts.append(f"offered rate {fmt_int(section['rate'])} req/s (open loop)")
    if is_number(section.get("connections")):
        parts.append(f"{fmt_int(section['connections'])} connections")
    if is_number(section.get("duration_s")):
        parts.append(f"{section['duration_s']:g} s per contender")
    return sentence(parts)


def latency_table(section):
    """Latency percentiles at a fixed offered rate, one row per contender."""
    rows = []
    for row in section["rows"]:
        rows.append([
            contender(row),
            fmt_int(row.get("requests")),
            fmt_int(row.get("achieved_rps")),
            fmt_ms(row.get("p50_ms")),
            fmt_ms(row.get("p90_ms")),
            fmt_ms(row.get("p99_ms")),
            fmt_ms(row.get("p999_ms")),
            fmt_ms(row.get("max_ms")),
            fmt_int(row.get("errors")),
        ])
    header = ["contender", "requests", "achieved req/s", "p50", "p90", "p99", "p99.9",
              "max (ms)", "errors"]
    return table(header, rows)


def zipf_parameters(section):
    """One sentence with the key space, skew, memory budget and timing of the Zipf run."""
    parts = []
    if is_number(section.get("keys")):
        parts.append(f"{fmt_int(section['keys'])} keys")
    if is_number(section.get("exponent")):
        parts.append(f"Zipf exponent {section['exponent']}")
    if is_number(section.get("budget_bytes")):
        mib = section["budget_bytes"] / (1024 * 1024)
        parts.append(f"memory budget {fmt_int(section['budget_bytes'])} bytes ({mib:g} MiB)")
    if is_number(section.get("connections")):
        parts.append(f"{fmt_int(section['connections'])} connections")
    if is_number(section.get("warmup_s")):
        parts.append(f"{section['warmup_s']:g} s warm-up")
    if is_number(section.get("duration_s")):
        parts.append(f"{section['duration_s']:g} s measured per contender")
    return sentence(parts)


def zipf_table(section):
    """Hit ratio and throughput on a skewed key space larger than the memory budget."""
    rows = []
    for row in section["rows"]:
        rows.append([
            contender(row),
            fmt_int(row.get("requests")),
            fmt_int(row.get("origin_fetches")),
            fmt_percent(row.get("hit_ratio")),
            fmt_int(row.get("rps")),
            fmt_pair(row.get("p50_ms"), row.get("p99_ms")),
            row.get("note") or "",
        ])
    header = ["contender", "requests", "origin fetches", "hit ratio", "req/s",
              "p50 / p99 (ms)", "note"]
    return table(header, rows)


def stampede_parameters(section):
    """One sentence with the number of concurrent requests and the origin's latency."""
    parts = []
    if is_number(section.get("requests")):
        parts.append(f"{fmt_int(section['requests'])} concurrent requests on one cold key")
    if is_number(section.get("origin_latency_ms")):
        parts.append(f"the origin answers after {section['origin_latency_ms']:g} ms")
    return sentence(parts, "; ")


def stampede_table(section):
    """How many origin fetches a burst of concurrent requests on one cold key caused."""
    rows = []
    for row in section["rows"]:
        rows.append([
            contender(row),
            fmt_int(row.get("requests")),
            fmt_int(row.get("origin_fetches")),
            fmt_int(row.get("ok")),
            fmt_int(row.get("errors")),
            fmt_pair(row.get("p50_ms"), row.get("max_ms")),
        ])
    header = ["contender", "requests", "origin fetches", "2xx", "errors", "p50 / max (ms)"]
    return table(header, rows)


def stampede_heading(section):
    """The stampede heading, with the burst size taken from the section when it is recorded."""
    requests = section.get("requests") if section else None
    if is_number(requests):
        return f"Stampede: {requests:,.0f} concurrent requests on a cold key"
    return HEADINGS["stampede"]


def section_ran(section):
    """True if a section is present and has at least one row."""
    return isinstance(section, dict) and bool(section.get("rows"))


def render_section(name, section, results, image_path):
    """One `##` section: heading, context line, setup, parameters, (chart), table."""
    heading = stampede_heading(section) if name == "stampede" else HEADINGS[name]
    parts = [f"## {heading}", ""]
    if not section_ran(section):
        parts.append("Not run.")
        return "\n".join(parts)
    machine = results.get("machine") or {}
    command = section.get("command") or command_with_env(results)
    parts += [context_line(machine, command, section.get("started"), section.get("finished")), ""]
    if section.get("setup"):
        parts += [str(section["setup"]).strip(), ""]
    parameters = {
        "latency": latency_parameters,
        "zipf": zipf_parameters,
        "stampede": stampede_parameters,
    }.get(name)
    sentence = parameters(section) if parameters else None
    if sentence:
        parts += [sentence, ""]
    if name == "latency" and image_path:
        parts += [f"![{IMAGE_ALT}]({image_path})", ""]
    render_table = {
        "hot": hot_table,
        "latency": latency_table,
        "zipf": zipf_table,
        "stampede": stampede_table,
    }[name]
    parts.append(render_table(section))
    return "\n".join(parts)


def build_markdown(results, image_path="bench-latency.svg", notes=None):
    """The whole page as a string ending in a newline.

    image_path is the chart's path relative to the page, or None for no chart; the image line is
    left out anyway when the latency section did not run. notes, if given, is appended verbatim.
    """
    sections = results.get("sections") or {}
    if not section_ran(sections.get("latency")):
        image_path = None
    blocks = [render_intro(results), render_goals(results)]
    for name in SECTION_ORDER:
        blocks.append(render_section(name, sections.get(name), results, image_path))
    page = "\n\n".join(blocks) + "\n"
    if notes is not None:
        page += "\n" + notes
    return page


# ---------------------------------------------------------------------------------------------
# SVG chart


def log_ticks(low, high):
    """Axis ticks at 1×, 2× and 5× each decade, from just below `low` to at least `high`.

    The first tick is strictly below the smallest value so that every bar has some length.
    """
    ticks = []
    for exponent in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 2):
        for mantissa in (1, 2, 5):
            ticks.append(float(f"{mantissa}e{exponent}"))
    first = max(t for t in ticks if t < low)
    last = min(t for t in ticks if t >= high and t > first)
    return [t for t in ticks if first <= t <= last]


def chart_values(rows):
    """Every positive latency the chart has to show (the bars and the max ticks)."""
    values = []
    for row in rows:
        for key, _, _ in CHART_BARS:
            if is_number(row.get(key)) and row[key] > 0:
                values.append(row[key])
        if is_number(row.get("max_ms")) and row["max_ms"] > 0:
            values.append(row["max_ms"])
    return values


def x_position(value, low, high):
    """The x coordinate of a latency on the log axis, clamped to the plot."""
    value = min(max(value, low), high)
    share = (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))
    return PLOT_LEFT + share * (PLOT_RIGHT - PLOT_LEFT)


def svg_text(x, y, text, size=12, anchor="start", weight="normal", fill="#222", halo=False):
    """A <text> element with escaped content.

    halo draws a white outline under the glyphs, so that the text stays readable where it
    crosses a gridline or a max tick.
    """
    outline = ' stroke="#ffffff" stroke-width="3" paint-order="stroke"' if halo else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}"{outline}>{escape(text)}</text>'
    )


def svg_legend(y):
    """The legend: one coloured square per percentile, and the max tick."""
    items = []
    x = PLOT_LEFT
    for _, label, colour in CHART_BARS:
        items.append(f'<path d="M{x},{y - 10}h12v12h-12z" fill="{colour}"/>')
        items.append(svg_text(x + 17, y, label))
        x += 80
    items.append(f'<line x1="{x + 6}" y1="{y - 11}" x2="{x + 6}" y2="{y + 3}" '
                 f'stroke="{MAX_TICK_COLOUR}" stroke-width="2"/>')
    items.append(svg_text(x + 17, y, "max"))
    return items


def svg_axis(ticks, top, bottom):
    """Vertical gridlines at every tick, labelled below the plot; decades drawn darker.

    Over more than five decades only the decades are labelled, so that labels do not collide.
    """
    low, high = ticks[0], ticks[-1]
    label_all = math.log10(high / low) <= 5
    items = []
    for tick in ticks:
        x = x_position(tick, low, high)
        exponent = math.log10(tick)
        decade = math.isclose(exponent, round(exponent))
        colour = "#b0b0b0" if decade else "#e2e2e2"
        items.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" '
                     f'stroke="{colour}" stroke-width="1"/>')
        if decade or label_all:
            items.append(svg_text(x, bottom + 14, fmt_tick(tick), size=11, anchor="middle",
                                  fill="#444"))
    caption_x = (PLOT_LEFT + PLOT_RIGHT) / 2
    items.append(svg_text(caption_x, bottom + 32, "latency (ms, log scale)", size=12,
                          anchor="middle", fill="#444"))
    return items


def svg_group(row, top, low, high):
    """One contender: its label, one bar per percentile with its value, and the max tick.

    The max tick is drawn first so that the values printed beside the bars stay on top of it.
    """
    items = [svg_text(10, top + 13, contender(row), size=13, weight="bold")]
    bar_top = top + GROUP_LABEL_HEIGHT
    maximum = row.get("max_ms")
    if is_number(maximum) and maximum > 0:
        x = x_position(maximum, low, high)
        bottom = bar_top + len(CHART_BARS) * BAR_STEP - (BAR_STEP - BAR_HEIGHT)
        items.append(f'<line x1="{x:.1f}" y1="{bar_top - 2}" x2="{x:.1f}" y2="{bottom + 2}" '
                     f'stroke="{MAX_TICK_COLOUR}" stroke-width="2">'
                     f'<title>{escape(f"max: {fmt_ms(maximum)} ms")}</title></line>')
    for index, (key, label, colour) in enumerate(CHART_BARS):
        y = bar_top + index * BAR_STEP
        items.append(svg_text(PLOT_LEFT - 6, y + 10, label, size=11, anchor="end", fill="#444"))
        value = row.get(key)
        if not is_number(value) or value <= 0:
            items.append(svg_text(PLOT_LEFT + 4, y + 10, "n/a", size=11, fill="#444"))
            continue
        width = max(x_position(value, low, high) - PLOT_LEFT, 1.0)
        items.append(f'<rect x="{PLOT_LEFT}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" '
                     f'fill="{colour}"><title>{escape(f"{label}: {fmt_ms(value)} ms")}</title>'
                     f'</rect>')
        items.append(svg_text(PLOT_LEFT + width + 4, y + 10, fmt_chart_value(value), size=11,
                              halo=True))
    return items


def chart_title(section):
    """The chart's title, naming the offered rate when it is recorded."""
    rate = section.get("rate")
    where = f"Hot key at {fmt_int(rate)} req/s" if is_number(rate) else "Hot key at a fixed rate"
    return f"{where}, open loop: latency percentiles (ms, log scale)"


def build_svg(section):
    """The latency chart for the `latency` section as an SVG document string."""
    rows = section["rows"]
    values = chart_values(rows) or [0.1, 1.0]
    ticks = log_ticks(min(values), max(values))
    low, high = ticks[0], ticks[-1]
    group_height = GROUP_LABEL_HEIGHT + len(CHART_BARS) * BAR_STEP + GROUP_GAP
    plot_bottom = PLOT_TOP + len(rows) * group_height
    height = plot_bottom + PLOT_BOTTOM_MARGIN
    title = chart_title(section)
    items = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
        f'viewBox="0 0 {SVG_WIDTH} {height}" role="img" aria-label={quoteattr(title)} '
        f'font-family="Helvetica, Arial, sans-serif" style="background:#ffffff">',
        f"<title>{escape(title)}</title>",
        svg_text(10, 24, title, size=15, weight="bold"),
    ]
    items += svg_legend(52)
    items += svg_axis(ticks, PLOT_TOP - 6, plot_bottom)
    for index, row in enumerate(rows):
        items += svg_group(row, PLOT_TOP + index * group_height, low, high)
    items.append("</svg>")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + "\n".join(items) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def write_text(path, text):
    """Write a UTF-8 file with Unix line endings, creating its directory if needed."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def image_reference(markdown_path, svg_path):
    """The chart's path as written in the page: relative to the page's directory."""
    start = os.path.dirname(os.path.abspath(markdown_path))
    relative = os.path.relpath(os.path.abspath(svg_path), start)
    return relative.replace(os.sep, "/")


def parse_args(argv):
    """The command-line arguments."""
    parser = argparse.ArgumentParser(
        description="Render benchmark results (JSON from bench/run.py) as Markdown and SVG.")
    parser.add_argument("results", help="results JSON written by bench/run.py")
    parser.add_argument("--markdown", required=True, help="Markdown page to write")
    parser.add_argument("--svg", help="latency chart to write (not written if the latency "
                                      "section did not run)")
    parser.add_argument("--notes", help="hand-written Markdown appended verbatim to the page")
    parser.add_argument("--sections", nargs="*", default=[],
                        help="Markdown written by other benchmark scripts (bench/sections/*.md), "
                             "appended verbatim after the notes")
    return parser.parse_args(argv)


def main(argv=None):
    """Read the results, write the page and the chart; return the exit status."""
    args = parse_args(argv)
    try:
        with open(args.results, encoding="utf-8") as handle:
            results = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        print(f"report.py: cannot read {args.results}: {error}", file=sys.stderr)
        return 1
    if not isinstance(results, dict):
        print(f"report.py: {args.results}: expected a JSON object", file=sys.stderr)
        return 1
    notes = None
    if args.notes:
        try:
            with open(args.notes, encoding="utf-8", newline="") as handle:
                notes = handle.read()
        except OSError as error:
            print(f"report.py: cannot read {args.notes}: {error}", file=sys.stderr)
            return 1

    for path in sorted(args.sections):
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                notes = (notes or "").rstrip("\n") + "\n\n" + handle.read()
        except OSError as error:
            print(f"report.py: cannot read {path}: {error}", file=sys.stderr)
            return 1

    latency = (results.get("sections") or {}).get("latency")
    image_path = None
    if args.svg and section_ran(latency):
        write_text(args.svg, build_svg(latency))
        image_path = image_reference(args.markdown, args.svg)
    elif args.svg:
        print(f"report.py: warning: no latency results in {args.results}; "
              f"not writing {args.svg}", file=sys.stderr)
    write_text(args.markdown, build_markdown(results, image_path, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
