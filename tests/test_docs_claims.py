"""No claim in the README or the docs without the test or benchmark behind it.

A paragraph (or list item, or table) that states exactness, agreement, identity, a tolerance or a
guarantee must name what measures it: a path under ``tests/`` or ``benchmarks/``, a test's name,
BENCHMARKS.md or the docs' Results page. A table counts as cited when the paragraph that introduces
it is. Words inside inline code (a flag such as ``--nir-profile exact``) are names, not claims. The
check is lexical: it cannot tell a true citation from a false one, but it makes every claim point
somewhere a reader (and a reviewer) can check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLAIM = re.compile(r"\b(exact(ly)?|agree(s|d|ing|ment)?|identical|within \d|equals?|"
                   r"guarantee[sd]?|bit for bit|byte-identical)\b", re.I)
CITATION = re.compile(r"tests/|\btest_\w+|benchmarks/|BENCHMARKS\.md|results\.md|Results\]")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def uncited_claims(text: str) -> list[str]:
    """The paragraphs of Markdown ``text`` that claim without citing (code blocks skipped)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    found, previous_cited = [], False
    for paragraph in re.split(r"\n\s*\n", text):
        prose = re.sub(r"`[^`]*`", "", paragraph)
        is_table = paragraph.lstrip().startswith("|")
        cited = bool(CITATION.search(paragraph)) or (is_table and previous_cited)
        if CLAIM.search(prose) and not cited:
            found.append(" ".join(paragraph.split())[:200])
        previous_cited = cited
    return found


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_claim_names_its_test_or_benchmark(path):
    assert uncited_claims(path.read_text()) == []


def test_the_checker_flags_an_uncited_claim_and_accepts_a_cited_one():
    assert uncited_claims("The export is exact.\n\nIt runs fast.") == ["The export is exact."]
    assert uncited_claims("The export is exact (`tests/backends/test_nir_backend.py`).") == []
    assert uncited_claims("Use `--nir-profile exact` for that.") == []
    assert uncited_claims("Measured by `tests/x.py`:\n\n| a | agrees |") == []
    assert uncited_claims("Nothing cited:\n\n| a | agrees |") == ["| a | agrees |"]
    assert uncited_claims("```\nexact\n```\n") == []
