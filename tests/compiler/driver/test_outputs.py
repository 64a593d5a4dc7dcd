"""Outputs: spikeshield replaces only what it wrote, one job at a time, and a full or read-only
disk is one line before the work, not an internal error after it."""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.manifest import verify_directory, write_manifest
from spikeshield.compiler.driver.outputs import OutputError, claim_output, output_lock
from spikeshield.compiler.ir.atomic import atomic_directory
from spikeshield.compiler.ir.errors import ModelLoadError

runner = CliRunner()
QUICK = ["--finetune", "none", "--robustness", "none", "--no-profile", "--n", "40",
         "--calibration-batches", "1"]


def _refused(result, phrase: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and phrase in lines[0], result.output


@pytest.fixture(scope="module")
def compiled(trained_lenet, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "snn"
    result = runner.invoke(app, ["compile", str(trained_lenet[1]), "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    return out


def test_compile_never_wipes_a_folder_of_other_files(trained_lenet, tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    result = runner.invoke(app, ["compile", str(trained_lenet[1]), "--out", str(mine), *QUICK,
                                 "--force"])
    _refused(result, "holds files spikeshield did not write")
    assert (mine / "chapter1.tex").read_text() == "years of work"


def test_compile_never_replaces_its_own_input(trained_lenet, tmp_path):
    model = tmp_path / "m.pt2"
    model.write_bytes(trained_lenet[1].read_bytes())
    _refused(runner.invoke(app, ["compile", str(model), "--out", str(model), *QUICK]),
             "would overwrite the input")
    inside = tmp_path / "work"
    inside.mkdir()
    (inside / "m.pt2").write_bytes(model.read_bytes())
    write_manifest(inside)  # even a spikeshield folder is not replaced while it holds the input
    _refused(runner.invoke(app, ["compile", str(inside / "m.pt2"), "--out", str(inside), *QUICK,
                                 "--force"]), "would overwrite the input")
    assert (inside / "m.pt2").read_bytes() == model.read_bytes()


def test_an_earlier_compile_is_replaced_only_with_force(compiled, trained_lenet):
    before = (compiled / "snn.ir").read_bytes()
    _refused(runner.invoke(app, ["compile", str(trained_lenet[1]), "--out", str(compiled),
                                 *QUICK]), "holds an earlier spikeshield output; add --force")
    result = runner.invoke(app, ["compile", str(trained_lenet[1]), "--out", str(compiled), *QUICK,
                                 "--force"])
    assert result.exit_code == 0, result.output
    assert (compiled / "snn.ir").read_bytes() == before and verify_directory(compiled).intact


def test_export_never_overwrites_its_source_or_a_file_of_another_kind(compiled, tmp_path):
    snn = (compiled / "snn.ir").read_bytes()
    _refused(runner.invoke(app, ["export", str(compiled), "--format", "onnx", "--out",
                                 str(compiled / "snn.ir")]), "must end in .onnx")
    assert (compiled / "snn.ir").read_bytes() == snn and verify_directory(compiled).intact
    nir_file = tmp_path / "x.nir"
    assert runner.invoke(app, ["export", str(compiled), "--out", str(nir_file)]).exit_code == 0
    source = nir_file.read_bytes()
    _refused(runner.invoke(app, ["export", str(nir_file), "--out", str(nir_file), "--force"]),
             "would overwrite the input")
    assert nir_file.read_bytes() == source
    _refused(runner.invoke(app, ["export", str(compiled), "--out", str(nir_file)]),
             "exists; add --force")
    assert runner.invoke(app, ["export", str(compiled), "--out", str(nir_file),
                               "--force"]).exit_code == 0
    stranger = tmp_path / "stranger.nir"
    stranger.write_bytes(b"someone else's file")
    _refused(runner.invoke(app, ["export", str(compiled), "--out", str(stranger), "--force"]),
             "a file spikeshield did not write")


def test_run_replaces_only_its_own_npz(compiled, tmp_path):
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((2, 1, 28, 28), np.float32))
    out = tmp_path / "r.npz"
    np.savez(out, mine=np.arange(3))
    _refused(runner.invoke(app, ["run", str(compiled), "--inputs", str(inputs), "--out", str(out),
                                 "--force"]), "a file spikeshield did not write")
    out.unlink()
    assert runner.invoke(app, ["run", str(compiled), "--inputs", str(inputs), "--out",
                               str(out)]).exit_code == 0
    assert runner.invoke(app, ["run", str(compiled), "--inputs", str(inputs), "--out", str(out),
                               "--force"]).exit_code == 0


def test_train_replaces_only_a_pt2_spikeshield_wrote(tmp_path):
    foreign = tmp_path / "theirs.pt2"
    foreign.write_bytes(b"PK not ours")
    _refused(runner.invoke(app, ["train", "--epochs", "1", "--out", str(foreign), "--force"]),
             "a file spikeshield did not write")


def test_run_and_eval_refuse_a_directory_that_does_not_verify(compiled, tmp_path):
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((1, 1, 28, 28), np.float32))
    (compiled / "report.json").write_text(
        (compiled / "report.json").read_text().replace('"accuracy"', '"accuracy" ', 1))
    for command in (["run", str(compiled), "--inputs", str(inputs), "--out",
                     str(tmp_path / "r.npz")], ["eval", str(compiled), "--n", "10"],
                    ["profile", str(compiled), "--n", "10"]):
        _refused(runner.invoke(app, command), "altered: report.json")
    result = runner.invoke(app, ["run", str(compiled), "--inputs", str(inputs), "--out",
                                 str(tmp_path / "r.npz"), "--skip-verify"])
    assert result.exit_code == 0, result.output
    write_manifest(compiled)  # leave the module's directory intact again


def _hold_lock(path: Path, ready: Path, seconds: float = 30.0) -> subprocess.Popen:
    code = (f"import time, pathlib\nfrom spikeshield.compiler.driver.outputs import output_lock\n"
            f"with output_lock({str(path)!r}):\n"
            f"    pathlib.Path({str(ready)!r}).touch()\n    time.sleep({seconds})\n")
    process = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return process


def test_a_second_job_on_the_same_output_is_refused_at_once(compiled, trained_lenet, tmp_path):
    holder = _hold_lock(compiled, tmp_path / "ready")
    try:
        for command in (["eval", str(compiled), "--n", "10"],
                        ["compile", str(trained_lenet[1]), "--out", str(compiled), *QUICK,
                         "--force"],
                        ["profile", str(compiled), "--n", "10"],
                        ["export", str(compiled), "--format", "onnx"]):
            _refused(runner.invoke(app, command),
                     f"in use by another spikeshield job (pid {holder.pid})")
    finally:
        holder.kill()
        holder.wait()
    assert not (compiled.parent / f"{compiled.name}.eval-checkpoint").exists()
    # The lock died with its process: the next job goes ahead.
    with output_lock(compiled):
        pass


def _publish(out: str, rounds: int, results) -> None:
    for _ in range(rounds):
        try:
            with claim_output(out, force=True, directory=True), atomic_directory(out) as tmp:
                (tmp / "snn.ir").write_text(str(os.getpid()))
                write_manifest(tmp)
            results.put("published")
        except OutputError as err:
            results.put("refused" if "in use by another" in str(err) else f"error: {err}")
        except OSError as err:  # what the unlocked publisher hit (ENOTEMPTY)
            results.put(f"error: {err}")


def test_concurrent_publishers_are_refused_cleanly_and_leave_nothing_behind(tmp_path):
    out = tmp_path / "out"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_publish, args=(str(out), 25, results)) for _ in range(4)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in range(100)]
    for w in workers:
        w.join(timeout=60)
    errors = [o for o in outcomes if o.startswith("error")]
    assert not errors, errors[:3]
    assert "published" in outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .tmp-, .old-, .lock
    assert verify_directory(out).intact


def test_leftovers_of_a_killed_run_are_named_and_removed(compiled, trained_lenet):
    tmp = compiled.parent / f".{compiled.name}.tmp-abc123"
    old = compiled.parent / f".{compiled.name}.old-4242"
    tmp.mkdir()
    (tmp / "snn.ir").write_text("half")
    old.mkdir()
    result = runner.invoke(app, ["compile", str(trained_lenet[1]), "--out", str(compiled), *QUICK,
                                 "--force"])
    assert result.exit_code == 0, result.output
    assert f"{old.name}, {tmp.name}" in result.output and "interrupted run" in result.output
    assert not tmp.exists() and not old.exists()


# ---- full and read-only disks --------------------------------------------------------------

@contextlib.contextmanager
def _mounted(folder: Path, options: str):
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN; the simulated "
                    "ENOSPC test below covers the same code path")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_temporary(compiled, tmp_path):
    with _mounted(tmp_path / "full", "size=64k") as full:
        target = full / "snn"
        (full / "ballast").write_bytes(b"x" * (60 << 10))
        result = runner.invoke(app, ["export", str(compiled), "--out", str(full / "snn.nir")])
        _refused(result, "No space left on device")
        (full / "ballast").unlink()
        (full / "ballast").write_bytes(b"x" * (40 << 10))  # room for the probe, not the file
        result = runner.invoke(app, ["export", str(compiled), "--out", str(full / "snn.nir")])
        _refused(result, "No space left on device")
        assert sorted(p.name for p in full.iterdir()) == ["ballast"]
        assert not target.exists()


def test_a_read_only_output_fails_before_the_work(trained_lenet, tmp_path):
    with _mounted(tmp_path / "ro", "ro,size=64k") as ro:
        started = time.monotonic()
        result = runner.invoke(app, ["compile", str(trained_lenet[1]), "--out", str(ro / "snn"),
                                     "--finetune", "trades"])
        _refused(result, "Read-only file system")
        assert time.monotonic() - started < 20  # refused before finetuning started


def test_a_write_that_fails_mid_export_is_one_line_and_cleans_up(compiled, monkeypatch):
    from spikeshield.backends import nir_backend

    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".nir"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(nir_backend, "open", full_disk_open, raising=False)
    out = compiled / "again.nir"
    result = runner.invoke(app, ["export", str(compiled), "--out", str(out)])
    _refused(result, "No space left on device")
    assert not out.exists() and verify_directory(compiled).intact


def test_a_checkpoint_of_another_job_is_refused(tmp_path):
    from spikeshield.runtime.checkpoint import Checkpoint

    directory = tmp_path / "DIR.eval-checkpoint"
    first = Checkpoint(directory, "eval", {"n": 10}, every=0)
    first.save("snn_ensemble", {"done": 3})
    info = directory / "job.json"
    content = json.loads(info.read_text())
    content["job_id"] = "someone-else"  # the description of another run, same settings
    info.write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match="belongs to another job"):
        Checkpoint(directory, "eval", {"n": 10}, resume=True).load("snn_ensemble")
    info.write_text(json.dumps({**content, "settings": "n=10"}))
    with pytest.raises(ModelLoadError, match="is damaged"):
        Checkpoint(directory, "eval", {"n": 10}, resume=True)
