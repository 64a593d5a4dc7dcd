"""Where a benchmark result came from: the command as typed, the machine, the date and the commit.

Every benchmark that writes a JSON result stamps it with :func:`provenance`, so that the table
``benchmarks/results.py`` renders from it can say how it was measured, on what and when.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    """The CPU model, its core count and torch's version (no GPU is named: these are CPU runs)."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    import torch

    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def provenance(script: str | None = None) -> dict:
    """``command`` (this process's, as typed), ``machine``, ``date`` (UTC) and ``commit`` (short;
    flagged when tracked code differs from it)."""
    script = script or f"benchmarks/{Path(sys.argv[0]).name}"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                              "*.py", "*.cpp", "pyproject.toml"],
                             capture_output=True, text=True, cwd=HERE).stdout.strip()
    if commit and changed:  # the code measured is not the commit's: say so
        commit += " with uncommitted changes"
    return {"command": f"python {script} " + shlex.join(sys.argv[1:]),
            "machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
            "commit": commit}
