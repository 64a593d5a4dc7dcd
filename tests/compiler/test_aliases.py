"""The one-release aliases of the entry points that moved into compiler/driver keep working."""

import subprocess
import sys


def test_pipeline_alias_is_the_driver_pipeline():
    from spikeshield.compiler.driver import pipeline
    from spikeshield.compiler.pipeline import CompileConfig, compile_model

    assert compile_model is pipeline.compile_model and CompileConfig is pipeline.CompileConfig


def test_python_dash_m_compiler_cli_still_runs_the_cli():
    for module in ("spikeshield.compiler.cli", "spikeshield.compiler.driver.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0 and "compile" in done.stdout and "verify" in done.stdout
