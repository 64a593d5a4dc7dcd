"""BENCHMARKS.md's generated tables match the committed results they are generated from
(benchmarks/results.py): a figure edited by hand in the Markdown, or a result file updated without
re-rendering, fails here."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import results  # noqa: E402


def test_committed_tables_match_their_results():
    assert results.main(["render", "--check"]) == 0


def test_the_readmes_conversion_figures_are_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    for phrase in results.readme_figures():
        assert phrase in readme, phrase


def test_a_changed_result_or_a_hand_edit_is_caught(tmp_path):
    text = results.BENCHMARKS.read_text()
    shutil.copytree(results.RESULTS, tmp_path / "results")
    path = tmp_path / "results" / "conversion-unseen.json"
    result = json.loads(path.read_text())
    result["anns"][1]["default"]["2"] = 0.5  # resnet20 at T = 2: 89.3% -> 50.0%
    path.write_text(json.dumps(result))
    changed = results.rendered(text, tmp_path / "results")
    assert changed != text and "| 50.0% |" in changed and "in 20 of 24 cells" in changed
    assert "at least as accurate in 20 of 24 cells" in results.readme_figures(tmp_path / "results")
    assert results.rendered(text) == text
    hand_edited = text.replace("| 77.6% | 89.3% |", "| 77.6% | 89.4% |", 1)
    assert hand_edited != text and results.rendered(hand_edited) == text
    with pytest.raises(SystemExit, match="results:conversion-h2h"):
        results.rendered(text.replace("<!-- results:conversion-h2h -->", ""))


def _tables_outside_markers(text: str) -> list[int]:
    """Line numbers where a Markdown table starts outside a ``results:`` block."""
    starts, inside, previous = [], False, ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("<!-- results:"):
            inside = True
        elif line.startswith("<!-- /results:"):
            inside = False
        elif line.startswith("|") and not previous.startswith("|") and not inside:
            starts.append(number)
        previous = line
    return starts


def test_every_table_of_benchmarks_md_is_generated():
    text = results.BENCHMARKS.read_text()
    assert _tables_outside_markers(text) == [], (
        "BENCHMARKS.md has tables no result generates (line numbers above): render them from a "
        "benchmark's JSON (benchmarks/results.py) or move them to benchmarks/notes/ as history")
    assert _tables_outside_markers(text + "\n| a | b |\n|---|---|\n| 1 | 2 |\n") != []


def test_the_runtime_grid_marks_cells_over_the_dense_limit():
    row = {"batch": 32, "T": 8, "ms": dict.fromkeys(
        ("ann_module", "ann_executor", "snn", "snn_zero", "norse", "snn_grad"), 1.0),
        "snn/ann": 1.2, "grad/ann": 1.05, "norse/snn": 3.0}
    result = {"name": "runtime-speed", "date": "d", "machine": "m", "command": "c", "grid_t": 8,
              "repeats": 3, "threads": 2, "nets": {"lenet": {"rows": [row, row | {"batch": 1}]}}}
    table = results.render_runtime_grid(result)
    assert "| 1.20 ✗ | **1.05** |" in table and "1 of 2 cells" in table
