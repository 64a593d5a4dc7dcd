"""The house rules hold: import-linter's contracts in pyproject.toml (no import cycles, each floor
imports only the floors below it, nothing imports the driver) are all kept."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


FLOORS = ("compiler", "frontends", "backends", "runtime")


def test_every_import_contract_is_kept():
    """import-linter (grimp) takes ``spikeshield.compiler`` and its siblings as root packages only
    while ``spikeshield`` is a namespace package; installed, it is a regular one (its
    ``__init__`` re-exports the API from compiler/driver/toplevel). So the contracts are checked
    on a namespace view of the same source files: symlinks to the four floors, found first on
    PYTHONPATH."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is part of the dev extra: pip install -e '.[dev]'"
    with tempfile.TemporaryDirectory() as view:
        package = Path(view) / "spikeshield"
        package.mkdir()
        for floor in FLOORS:
            (package / floor).symlink_to(ROOT / floor)
        env = {**os.environ, "PYTHONPATH": view}
        done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                              check=False, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "BROKEN" not in done.stdout


def test_ruff_passes_with_the_pinned_rule_selection():
    """``ruff check .`` with pyproject's explicit selection (pyflakes, import order, pycodestyle's
    error classes), the ruff version the dev extra pins."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff, "ruff is part of the dev extra: pip install -e '.[dev]'"
    done = subprocess.run([ruff, "check", ".", "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
