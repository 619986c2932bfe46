"""Tests for bench/report.py, the renderer of benchmark results into docs/benchmarks.md.

Run from the repository root: python3 -m unittest bench/test_report.py
The module is loaded by path from this file's directory, so the working directory does not matter.
"""

import copy
import importlib.util
import io
import json
import os
import tempfile
import unittest
import xml.etree.ElementTree as ET
from contextlib import redirect_stderr
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "sample-results.json"
SVG_NS = "{http://www.w3.org/2000/svg}"
CONTEXT_PREFIX = "**Machine:** 2 cores, AMD EPYC 7B13, 24 GiB, Debian 12. **Command:** `"


def load_report():
    """Import bench/report.py by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_report", HERE / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_report()


def load_sample():
    """The sample results, freshly parsed so that a test may modify them."""
    with open(SAMPLE, encoding="utf-8") as handle:
        return json.load(handle)


def split_sections(markdown):
    """The page's `##` sections as a dict from heading to the section's lines."""
    sections = {}
    current = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            current = line[3:]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return sections


def non_blank(lines):
    """The lines that are not empty."""
    return [line for line in lines if line.strip()]


class MarkdownTest(unittest.TestCase):
    """The page built from the sample, which has all four sections."""

    def setUp(self):
        self.results = load_sample()
        self.markdown = report.build_markdown(self.results, "bench-latency.svg")
        self.sections = split_sections(self.markdown)

    def test_every_section_heading_is_present_in_order(self):
        headings = ["Goals"] + [report.HEADINGS[name] for name in report.SECTION_ORDER]
        self.assertEqual(list(self.sections), headings)
        self.assertTrue(self.markdown.startswith("# Benchmarks\n"))

    def test_each_table_has_the_machine_command_and_date_line_above_it(self):
        for heading, lines in self.sections.items():
            with self.subTest(section=heading):
                header = next(i for i, line in enumerate(lines) if line.startswith("| "))
                context = [i for i, line in enumerate(lines) if line.startswith(CONTEXT_PREFIX)]
                self.assertEqual(len(context), 1)
                self.assertLess(context[0], header)
                self.assertRegex(lines[context[0]],
                                 r"\*\*Run:\*\* 2026-11-25 \d\d:\d\d:\d\d–\d\d:\d\d:\d\d UTC\.$")

    def test_section_line_names_its_own_command_and_times(self):
        hot = self.results["sections"]["hot"]
        line = next(l for l in self.sections[report.HEADINGS["hot"]]
                    if l.startswith(CONTEXT_PREFIX))
        self.assertIn(f"`{hot['command']}`", line)
        self.assertIn("2026-11-25 10:30:00–10:36:12 UTC", line)

    def test_null_renders_as_a_dash(self):
        lru = next(l for l in self.sections[report.HEADINGS["zipf"]]
                   if l.startswith("| strict LRU"))
        cells = [cell.strip() for cell in lru.strip("|").split(" | ")]
        self.assertEqual(cells[4], "—")  # req/s
        self.assertEqual(cells[5], "—")  # p50 / p99

    def test_unmet_goal_renders_bold_no(self):
        goals = "\n".join(self.sections["Goals"])
        self.assertIn("| 1.050 ms | **no** |", goals)
        self.assertIn("| yes |", goals)

    def test_formats_of_the_hot_table(self):
        hot = "\n".join(self.sections[report.HEADINGS["hot"]])
        self.assertIn("| bare axum (ceiling) | 120119 | — | 0.256 / 0.726 | 14770 | 0.063 / 0.189 |",
                      hot)

    def test_the_spread_of_the_rounds_is_min_to_max(self):
        self.assertEqual(report.spread({"min": 98000.4, "max": 131516.0}), "98000–131516")
        self.assertEqual(report.spread(None), "—")

    def test_zipf_hit_ratio_is_a_percentage_and_pipes_are_escaped(self):
        zipf = "\n".join(self.sections[report.HEADINGS["zipf"]])
        self.assertIn("| 87.54% |", zipf)
        self.assertIn("same key sequence \\| no server", zipf)

    def test_image_line_is_in_the_latency_section(self):
        latency = self.sections[report.HEADINGS["latency"]]
        self.assertIn("![Latency percentiles per contender](bench-latency.svg)", latency)

    def test_output_is_deterministic(self):
        again = report.build_markdown(load_sample(), "bench-latency.svg")
        self.assertEqual(self.markdown, again)

    def test_empty_section_is_reported_as_not_run(self):
        results = load_sample()
        results["sections"]["zipf"]["rows"] = []
        del results["sections"]["stampede"]
        sections = split_sections(report.build_markdown(results, "bench-latency.svg"))
        self.assertEqual(non_blank(sections[report.HEADINGS["zipf"]]), ["Not run."])
        self.assertEqual(non_blank(sections[report.HEADINGS["stampede"]]), ["Not run."])


class SvgTest(unittest.TestCase):
    """The latency chart built from the sample."""

    def setUp(self):
        self.section = load_sample()["sections"]["latency"]
        self.svg = report.build_svg(self.section)
        self.root = ET.fromstring(self.svg.encode("utf-8"))

    def test_parses_as_svg(self):
        self.assertEqual(self.root.tag, SVG_NS + "svg")
        self.assertEqual(self.root.get("width"), "900")

    def test_one_rect_per_contender_and_percentile(self):
        expected = len(self.section["rows"]) * len(report.CHART_BARS)
        self.assertEqual(self.svg.count("<rect"), expected)
        self.assertEqual(len(list(self.root.iter(SVG_NS + "rect"))), expected)

    def test_every_contender_label_and_the_title_appear(self):
        text = "".join(self.root.itertext())
        for row in self.section["rows"]:
            self.assertIn(row["label"], text)  # one label holds "&" and "<": escaped, parsed back
        self.assertIn("Hot key at 10000 req/s, open loop: latency percentiles (ms, log scale)",
                      text)

    def test_axis_spans_the_data_at_decades_and_2x_5x(self):
        ticks = report.log_ticks(0.071, 4870.0)
        self.assertEqual(ticks[0], 0.05)
        self.assertEqual(ticks[-1], 5000.0)
        self.assertIn(0.1, ticks)
        self.assertIn(0.2, ticks)
        self.assertIn(0.5, ticks)

    def test_height_grows_with_the_number_of_contenders(self):
        smaller = copy.deepcopy(self.section)
        smaller["rows"] = smaller["rows"][:2]
        small_root = ET.fromstring(report.build_svg(smaller).encode("utf-8"))
        self.assertLess(int(small_root.get("height")), int(self.root.get("height")))


class CommandLineTest(unittest.TestCase):
    """The script end to end, writing files into a temporary docs/ directory."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.docs = os.path.join(self.tmp.name, "docs")
        self.markdown = os.path.join(self.docs, "benchmarks.md")
        self.svg = os.path.join(self.docs, "bench-latency.svg")

    def run_report(self, results, *extra):
        """Write results to a file and run main() on it; return (status, stderr)."""
        path = os.path.join(self.tmp.name, "results.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(results, handle)
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            status = report.main([path, "--markdown", self.markdown, "--svg", self.svg, *extra])
        return status, stderr.getvalue()

    def read_markdown(self):
        with open(self.markdown, encoding="utf-8") as handle:
            return handle.read()

    def test_writes_both_files_and_appends_the_notes(self):
        notes = os.path.join(self.tmp.name, "notes.md")
        with open(notes, "w", encoding="utf-8") as handle:
            handle.write("## Notes\n\nHand-written.\n")
        status, _ = self.run_report(load_sample(), "--notes", notes)
        self.assertEqual(status, 0)
        ET.parse(self.svg)
        page = self.read_markdown()
        self.assertIn("![Latency percentiles per contender](bench-latency.svg)", page)
        self.assertTrue(page.endswith("|\n\n## Notes\n\nHand-written.\n"))

    def test_no_latency_section_means_no_svg_and_no_image_line(self):
        results = load_sample()
        del results["sections"]["latency"]
        status, stderr = self.run_report(results)
        self.assertEqual(status, 0)
        self.assertFalse(os.path.exists(self.svg))
        self.assertIn("warning", stderr)
        page = self.read_markdown()
        self.assertNotIn("![", page)
        self.assertNotIn("bench-latency.svg", page)
        latency = split_sections(page)[report.HEADINGS["latency"]]
        self.assertEqual(non_blank(latency), ["Not run."])


if __name__ == "__main__":
    unittest.main()
