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
