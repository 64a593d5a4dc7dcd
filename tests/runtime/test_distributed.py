"""Multi-process runs: two CPU processes with gloo, launched by torchrun, against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.runtime.distributed import World, check_processes, per_process_batch

runner = CliRunner()


def _env() -> dict[str, str]:
    # One thread per process in both runs, as torchrun sets it: the same float reductions.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def compiled_dir(trained_lenet, tmp_path_factory):
    from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model

    _, path = trained_lenet
    out = tmp_path_factory.mktemp("ddp") / "snn"
    cfg = CompileConfig(timesteps=4, eval_samples=50, finetune="none", robustness="none",
                        profile=False)
    compile_model(path, "mnist5k", cfg, out)
    return out


def test_eval_on_two_gloo_processes_counts_exactly_what_one_process_counts(compiled_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(compiled_dir, one)
    shutil.copytree(compiled_dir, two)
    args = ["--preset", "quick", "--n", "40", "--batch-size", "16", "--device", "cpu"]
    cli = [sys.executable, "-m", "spikeshield.compiler.driver.cli", "eval"]
    for directory, extra in ((one, []), (two, ["--nproc", "2"])):
        done = subprocess.run([*cli, str(directory), *args, *extra], env=_env(), cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("clean accuracy:") == 1  # rank 0 alone speaks
    single = json.loads((one / "robustness.json").read_text())
    shared = json.loads((two / "robustness.json").read_text())
    assert single["processes"] == 1 and shared["processes"] == 2
    for net in ("snn", "ann"):
        assert shared[net]["clean_accuracy"] == single[net]["clean_accuracy"]
        assert shared[net]["robust_accuracy"] == single[net]["robust_accuracy"]
        counts = [(m["attacked"], m["broken"]) for m in single[net]["members"]]
        assert [(m["attacked"], m["broken"]) for m in shared[net]["members"]] == counts
    # The comparison means something only if attacks broke samples and some survived.
    assert 0 < single["snn"]["robust_accuracy"] < single["snn"]["clean_accuracy"]


def test_data_parallel_training_on_two_processes_matches_one_process(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_worker import train_small

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train_small()
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "rank0.pt"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).parent / "ddp_worker.py"), str(out)],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    assert saved["processes"] == 2
    initial = torch.nn.Linear(784, 32)
    for name, value in reference.items():
        # Same global batches, gradients averaged by DDP: the same SGD path up to float rounding
        # (stated tolerance 1e-5); a process training alone on its half would be far off.
        torch.testing.assert_close(saved["state"][name], value, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(reference["1.weight"], initial.weight)


def test_compile_shares_finetuning_on_two_processes(trained_lenet, tmp_path):
    _, path = trained_lenet
    out = tmp_path / "snn"
    done = subprocess.run(
        [sys.executable, "-m", "spikeshield.compiler.driver.cli", "compile", str(path), "-T", "4",
         "--finetune-epochs", "1", "--finetune-max-train", "128", "--n", "50", "--robustness",
         "none", "--no-profile", "--device", "cpu", "--nproc", "2", "--out", str(out)],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("SNN (T=4) accuracy") == 1
    report = json.loads((out / "report.json").read_text())
    finetune = next(p for p in report["passes"] if p["name"] == "finetune_robust")
    assert finetune["info"]["train_samples"] == 128


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_too_many_processes_and_missing_gpu_are_one_line_errors(compiled_dir, trained_lenet):
    _, model = trained_lenet
    cases = [
        (["eval", str(compiled_dir), "--n", "40", "--batch-size", "16", "--nproc", "4"],
         "--nproc 4 is more processes than the data allows: only 3 batches"),
        (["eval", str(compiled_dir), "--nproc", "0"], "--nproc must be at least 1"),
        (["train", "--out", "x.pt2", "--batch-size", "8", "--nproc", "16"],
         "a batch of 8 cannot be shared by 16 processes"),
        (["compile", str(model), "--finetune", "none", "--nproc", "2", "--out", "x"],
         "--finetune is none"),
        (["eval", str(compiled_dir), "--nproc", "2", "--device", "cuda"], "no CUDA GPU"),
    ]
    if torch.cuda.is_available():
        cases.pop()
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in _error_line(result), (args, result.output)


def test_work_sharing_rules():
    assert per_process_batch(64, World(0, 2)) == 32
    assert [c for c in range(7) if World(1, 3).owns(c)] == [1, 4]
    check_processes(3, 3, "batches")
    with pytest.raises(Exception, match="only 2 batches"):
        check_processes(3, 2, "batches")
