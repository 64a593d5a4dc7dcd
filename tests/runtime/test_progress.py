import io
import time

import pytest

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.progress import INTERVAL_VARIABLE, progress_bar


def _run(items, **kwargs) -> list[str]:
    stream = io.StringIO()  # not a terminal, as a log file
    bar = progress_bar(items, file=stream, desc="attacking", **kwargs)
    for _ in bar:
        bar.set_postfix(robust="3/4")
        time.sleep(0.01)
    bar.close()
    return stream.getvalue().splitlines()


def test_a_log_file_gets_whole_lines_while_the_work_lasts(monkeypatch):
    monkeypatch.setenv(INTERVAL_VARIABLE, "0")
    lines = _run(range(4))
    assert len(lines) >= 4 and all("\r" not in line for line in lines)
    assert lines[-1].startswith("attacking: 100%") and "4/4" in lines[-1]
    assert "robust=3/4" in lines[-1]


def test_short_work_writes_nothing_and_lines_keep_to_the_interval(monkeypatch):
    monkeypatch.setenv(INTERVAL_VARIABLE, "30")
    assert _run(range(4)) == []
    monkeypatch.setenv(INTERVAL_VARIABLE, "0.05")
    lines = _run(range(20))  # 0.2 s of work at one line per 0.05 s at most, plus the last one
    assert 2 <= len(lines) <= 6


def test_silenced_and_bad_intervals(monkeypatch):
    monkeypatch.setenv(INTERVAL_VARIABLE, "0")
    assert _run(range(3), disable=True) == []
    monkeypatch.setenv(INTERVAL_VARIABLE, "often")
    with pytest.raises(ConfigError, match=INTERVAL_VARIABLE):
        _run(range(3))


def test_one_step_longer_than_the_interval_still_writes_lines_saying_what_runs(monkeypatch):
    # An attack member on one chunk can run for minutes without the bar moving: the heartbeat
    # writes the current line (postfix included) every interval meanwhile, and stops at close.
    monkeypatch.setenv(INTERVAL_VARIABLE, "0.1")
    stream = io.StringIO()
    bar = progress_bar(range(2), file=stream, desc="attacking")
    for _ in bar:
        bar.set_postfix(member="1/8 apgd-ce (running)")
        time.sleep(0.65)  # one long step: six intervals
    bar.close()
    lines = stream.getvalue().splitlines()
    during_first_step = [line for line in lines if "0/2" in line]
    assert len(during_first_step) >= 3, lines
    assert all("member=1/8 apgd-ce (running)" in line for line in during_first_step)
    written = len(stream.getvalue())
    time.sleep(0.3)
    assert len(stream.getvalue()) == written  # a closed bar stays silent
