"""The fuzzing campaign's harness in the suite: every genuine seed is accepted, every input a
campaign found is now accepted or refused in one line (the inputs are pinned under
``fuzz_findings/``), and a short coverage-guided campaign finds nothing new."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import fuzz_readers  # noqa: E402

FINDINGS = sorted((Path(__file__).parent / "fuzz_findings").glob("*.bin"))


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return fuzz_readers.Harness(tmp_path_factory.mktemp("fuzz"))


def test_every_genuine_seed_is_read(harness, tmp_path):
    for reader, inputs in fuzz_readers.seeds(tmp_path).items():
        for data in inputs:
            fuzz_readers.check(harness, reader, data)


@pytest.mark.parametrize("finding", FINDINGS, ids=[p.stem for p in FINDINGS])
def test_an_input_the_campaign_found_is_now_one_line(harness, finding, monkeypatch):
    """Each of these raised another exception, a refusal over several lines, hung (``nir-
    timeout-*``: HDF5 looped inside one read) or asked for gigabytes (``cifar-oom-*``: a memo
    index the C unpickler grows its table to) before the fix that came with it."""
    from spikeshield.compiler.ir.limits import HDF5_READ_SECONDS

    monkeypatch.setenv(HDF5_READ_SECONDS.env, "4")  # genuine NIR seeds are read in under 1 s
    raw = finding.read_bytes()
    reader = fuzz_readers.READERS[raw[0] % len(fuzz_readers.READERS)]
    assert reader == finding.stem.split("-")[0] or finding.stem.startswith(reader)
    fuzz_readers.check(harness, reader, raw[1:])


def test_the_harness_reports_what_a_reader_must_not_do(harness, monkeypatch):
    """A reader that raises anything but a one-line refusal is a finding (the check can fail)."""
    from spikeshield.frontends import datasets

    def broken(path):
        raise IndexError("a bug")

    monkeypatch.setattr(datasets, "read_idx", broken)
    with pytest.raises(fuzz_readers.Finding, match="idx: IndexError: a bug"):
        fuzz_readers.check(harness, "idx", b"\x00")


def test_a_short_campaign_finds_nothing(tmp_path):
    """3,000 coverage-guided executions from the seeds (the hour-long campaign is in
    BENCHMARKS.md). atheris is in the dev extra; the campaign runs in its own process."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz_readers.py"), "--runs", "3000",
         "--seconds", "240",
         "--corpus", str(tmp_path / "corpus"), "--findings", str(tmp_path / "findings")],
        capture_output=True, text=True, timeout=300, check=False)
    summary = [line for line in done.stdout.splitlines() if line.startswith("campaign:")]
    assert done.returncode == 0 and summary, done.stdout[-2000:] + done.stderr[-2000:]
    assert summary[0].endswith(" 0 findings"), summary[0]
    assert " 3,000 executions" in summary[0]  # it ran the whole budget
