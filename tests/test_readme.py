"""The README's command-line quick start runs as written, in a fresh folder, with the installed
``spikeshield`` on the PATH (the Python quick start runs in tests/compiler/driver/test_api.py).
The docs site includes both blocks from the README, so this is also the docs' example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_section(name: str) -> str:
    """The text between the README's ``--8<-- [start:NAME]`` and ``[end:NAME]`` markers (the
    sections the docs site includes)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"\[start:{name}\] -->\n(.*?)\n<!-- --8<-- \[end:{name}\]", text, re.S)
    assert match, f"README.md has no section {name!r}"
    return match.group(1)


def test_the_cli_quick_start_runs_as_written(tmp_path):
    block = re.search(r"```bash\n(.*?)```", readme_section("cli"), re.S)
    assert block, "the README's cli section has no bash block"
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert all(line.startswith("spikeshield ") for line in commands), commands
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.group(1)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    snn = tmp_path / "snn"
    for name in ("snn.ir", "report.md", "robustness.md", "profile.json", "snn.nir"):
        assert (snn / name).is_file(), f"{name} missing after the quick start"
    assert "Warning" not in result.stderr, result.stderr[-3000:]
