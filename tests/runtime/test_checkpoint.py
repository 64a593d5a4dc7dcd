"""Resumable long jobs: a run stopped mid-way and resumed gives the uninterrupted run's numbers."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError, ModelLoadError
from spikeshield.frontends.zoo import build_model
from spikeshield.runtime import checkpoint as ckpt
from spikeshield.runtime.checkpoint import Checkpoint, Interrupted, stop_on_signals
from spikeshield.runtime.training import TrainConfig, train_robust


def stop_at_step(monkeypatch, n: int) -> None:
    """Make the n-th checkpointed step see a stop request, as SIGTERM would set it."""
    calls = {"count": 0}
    original = Checkpoint.step

    def step(self, part, state, where):
        calls["count"] += 1
        if calls["count"] == n:
            ckpt.request_stop(signal.SIGTERM)
        return original(self, part, state, where)

    monkeypatch.setattr(Checkpoint, "step", step)


def test_save_load_round_trip_and_settings_are_checked(tmp_path):
    directory = tmp_path / "run.checkpoint"
    first = Checkpoint(directory, "train", {"epochs": 3, "eps": 0.1}, every=0)
    first.save("train", {"weights": torch.arange(4.0), "epoch": 2, "history": [{"loss": 0.5}]})
    resumed = Checkpoint(directory, "train", {"epochs": 3, "eps": 0.1}, resume=True)
    state = resumed.load("train")
    assert torch.equal(state["weights"], torch.arange(4.0)) and state["epoch"] == 2
    assert resumed.load("finetune") is None  # a part not reached yet: start it afresh
    with pytest.raises(ConfigError, match=r"epochs=3 \(now 5\)"):
        Checkpoint(directory, "train", {"epochs": 5, "eps": 0.1}, resume=True)
    with pytest.raises(ConfigError, match="checkpoint of `spikeshield train`"):
        Checkpoint(directory, "eval", {"epochs": 3, "eps": 0.1}, resume=True)
    with pytest.raises(ConfigError, match="add --resume"):  # never overwritten by accident
        Checkpoint(directory, "train", {"epochs": 3, "eps": 0.1})
    with pytest.raises(ConfigError, match="no checkpoint at"):
        Checkpoint(tmp_path / "elsewhere", "train", {}, resume=True)
    resumed.discard()
    assert not directory.exists()


class Payload:  # an object whose unpickling would run this module's code
    pass


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    directory = tmp_path / "run.checkpoint"
    Checkpoint(directory, "train", {}).save("train", {"epoch": 1})
    torch.save({"epoch": 1, "evil": Payload()}, directory / "train.pt")  # not weights-only
    with pytest.raises(ModelLoadError, match="unreadable"):
        Checkpoint(directory, "train", {}, resume=True).load("train")


def _train(tmp_path, checkpoint=None):
    from spikeshield.compiler.driver.data import load_data

    splits = load_data("mnist5k")
    torch.manual_seed(0)
    mean, std = splits.channel_stats()
    model = build_model("lenet", splits.input_shape, 10, mean, std, width=0.25)
    cfg = TrainConfig(objective="trades", eps=0.1, epochs=2, max_train=256, batch_size=64,
                      attack_steps=2, lr=0.05)
    result = train_robust(model, splits, cfg, checkpoint=checkpoint)
    return model, result


def test_training_stopped_mid_epoch_resumes_to_identical_weights(tmp_path, monkeypatch):
    reference, ref_result = _train(tmp_path)
    directory = tmp_path / "train.checkpoint"
    stop_at_step(monkeypatch, 6)  # epoch 2, batch 2 of 4
    with stop_on_signals(), pytest.raises(Interrupted, match="epoch 2/2 after batch 2/4") as stop:
        _train(tmp_path, Checkpoint(directory, "train", {"x": 1}, every=3600))
    assert stop.value.exit_code == 128 + signal.SIGTERM
    monkeypatch.undo()
    resumed, result = _train(tmp_path, Checkpoint(directory, "train", {"x": 1}, resume=True))
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert _numbers(result.history) == _numbers(ref_result.history)
    assert result.best_epoch == ref_result.best_epoch


def _numbers(history: list[dict]) -> list[dict]:
    """An epoch history without its wall times (which no resume reproduces)."""
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def test_finetuning_and_ensemble_resume_to_identical_numbers(converted_lenet, mnist5k, tmp_path,
                                                             monkeypatch):
    from spikeshield.compiler.driver.robustness import RobustnessConfig, evaluate_robustness
    from spikeshield.compiler.passes.finetune_robust import FinetuneConfig
    from spikeshield.compiler.passes.manager import PassManager

    snn = converted_lenet.snn
    cfg = FinetuneConfig(epochs=2, max_train=192, val_samples=64, eps_train=0.025)

    def finetune(checkpoint=None):
        return PassManager().run_one(snn, "finetune_robust", data=mnist5k, config=cfg,
                                     checkpoint=checkpoint)

    reference = finetune()
    directory = tmp_path / "compile.checkpoint"
    stop_at_step(monkeypatch, 4)  # finetuning epoch 2, batch 1 of 3
    stopped = pytest.raises(Interrupted, match="finetuning epoch 2/2 after batch 1/3")
    with stop_on_signals(), stopped:
        finetune(Checkpoint(directory, "compile", {}, every=3600))
    monkeypatch.undo()
    resumed = finetune(Checkpoint(directory, "compile", {}, resume=True))
    for name in reference.nodes():
        for field, tensor in reference.op(name).tensors().items():
            assert torch.equal(tensor, resumed.op(name).tensors()[field]), (name, field)

    rob = RobustnessConfig(preset="quick", samples=60, batch_size=16, curve_samples=16)

    def attack(checkpoint=None):
        report = evaluate_robustness(snn, converted_lenet.ann, mnist5k.test, 10, rob,
                                     checkpoint=checkpoint)
        members = report["snn"]["members"] + report["ann"]["members"]
        return report["snn"]["robust_accuracy"], [(m["attacked"], m["broken"]) for m in members]

    expected = attack()
    stop_at_step(monkeypatch, 3)  # the SNN ensemble, after 3 of 4 chunks
    with stop_on_signals(), pytest.raises(Interrupted, match="after 3 of 4 chunks"):
        attack(Checkpoint(tmp_path / "eval.checkpoint", "eval", {}, every=3600))
    monkeypatch.undo()
    assert attack(Checkpoint(tmp_path / "eval.checkpoint", "eval", {}, resume=True)) == expected


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "spikeshield.compiler.driver.cli", *args]


def test_sigterm_writes_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path):
    """The real thing: a training process killed by SIGTERM mid-run, then resumed."""
    options = ["train", "--width", "0.25", "--epochs", "2", "--max-train", "1024",
               "--attack-steps", "2", "--batch-size", "32", "--checkpoint-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed.pt2"
    directory = Path(f"{killed}.checkpoint")
    proc = subprocess.Popen(_cli(*options, "--out", str(killed)), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (directory / "train.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM in epoch") and f"--resume {directory}" in last
    assert not killed.exists()
    resumed = subprocess.run(_cli(*options, "--out", str(killed), "--resume", str(directory)),
                             env=env, text=True, capture_output=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert not directory.exists()  # finished: nothing left to resume
    whole = tmp_path / "whole.pt2"
    done = subprocess.run(_cli(*options, "--out", str(whole)), env=env, text=True,
                          capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    a = torch.export.load(str(killed)).state_dict
    b = torch.export.load(str(whole)).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the summary line (validation and test accuracy) is the same too
    assert resumed.stdout.split(": best")[1].split("; wrote")[0] == \
        done.stdout.split(": best")[1].split("; wrote")[0]


def test_a_signal_after_the_last_step_still_stops_the_job(tmp_path):
    """Acknowledged ("stopping after the current step") must never turn into exit 0."""
    with stop_on_signals():
        checkpoint = Checkpoint(tmp_path / "run.checkpoint", "train", {}, every=1000)
        with pytest.raises(Interrupted) as stopped:
            with checkpoint.listening():
                checkpoint.step("train", lambda: {"epoch": 1}, "in epoch 1")
                os.kill(os.getpid(), signal.SIGTERM)  # after the loop's last step boundary
        assert stopped.value.exit_code == 143 and "after the last step" in str(stopped.value)


def test_a_signal_after_the_last_finetuning_batch_exits_143(trained_lenet, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spikeshield.compiler.driver.cli import app

    original = Checkpoint.listening

    @contextlib.contextmanager
    def late_signal(self):
        with original(self):
            yield
            ckpt.request_stop(signal.SIGTERM)  # arrives once the last batch is done

    monkeypatch.setattr(Checkpoint, "listening", late_signal)
    out = tmp_path / "snn"
    result = CliRunner().invoke(app, ["compile", str(trained_lenet[1]), "--out", str(out),
                                      "--finetune-epochs", "1", "--finetune-max-train", "64",
                                      "--robustness", "none", "--no-profile", "--n", "20",
                                      "--calibration-batches", "1"])
    assert result.exit_code == 143, result.output
    assert "after the last step" in result.output and not out.exists()


def test_a_signal_while_loading_a_nir_file_is_a_stop_not_a_bad_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spikeshield.backends.nir_backend import write_nir
    from spikeshield.compiler.driver.cli import app
    from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
    from spikeshield.frontends import nir_frontend
    from tests.conftest import tiny_conv_graph

    graph = convert_relu_to_if(tiny_conv_graph()).graph
    graph.meta["timesteps"] = 4
    path = write_nir(graph, tmp_path / "snn.nir")
    real_read = nir_frontend.nir.read

    def read_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(nir_frontend.nir, "read", read_then_signal)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 143, result.output
    assert "stopped by SIGTERM" in result.output and "nothing to resume" in result.output
    assert "not a valid NIR graph" not in result.output


def _stateful():
    import torch

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler}


def test_a_tampered_position_or_a_weight_of_another_shape_is_refused_on_resume():
    """Old code: a position of 10^9 silently skipped the rest of training; a weight of another
    shape failed inside load_state_dict with an internal error (exit 1)."""
    import torch

    from spikeshield.runtime.checkpoint import restore_training, training_state

    good = training_state(_stateful(), epoch=1, progress={"batches": 2})
    restore_training(good, _stateful(), epochs=3, steps_per_epoch=5)
    far = {**good, "epoch": 10 ** 9}
    with pytest.raises(ModelLoadError, match=r"position \(epoch 1000000000, batch 2\) lies "
                       "outside this run's 3 epochs of 5 batches"):
        restore_training(far, _stateful(), epochs=3, steps_per_epoch=5)
    wrong = training_state(_stateful(), epoch=1, progress={"batches": 2})
    wrong["state"]["model"]["weight"] = torch.zeros(7, 7)
    with pytest.raises(ModelLoadError, match="does not fit this run"):
        restore_training(wrong, _stateful(), epochs=3, steps_per_epoch=5)


def _stop_and_hang(calls: dict, on_call: int, original):
    """A stand-in that, on its ``on_call``-th call, sends this process SIGTERM and then runs far
    longer than the grace period (in Python, as a long attack's steps do), else calls
    ``original``."""

    def stand_in(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == on_call:
            calls["signalled"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.01)
            raise AssertionError("the stop was not honoured within 60 s")
        return original(*args, **kwargs)

    return stand_in


def test_a_first_sigterm_mid_chunk_is_honoured_within_the_grace_and_the_run_resumes(
        converted_lenet, mnist5k, tmp_path, monkeypatch):
    from spikeshield.runtime import ensemble
    from spikeshield.runtime.attacks import AttackSpec, Member
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.gradient_modes import GradientMode

    snn = GraphExecutor(converted_lenet.snn)
    data = mnist5k.test.head(48)
    members = [Member(AttackSpec("fgsm"), GradientMode.parse("triangle:1")),
               Member(AttackSpec("pgd", steps=3, random_start=True), GradientMode("bptr"))]

    def attack(checkpoint=None):
        result = ensemble.run_ensemble(snn, data, members, 0.1, 4, 10, batch_size=16,
                                       checkpoint=checkpoint)
        return result.robust, [(m.attacked, m.broken) for m in result.members]

    expected = attack()
    monkeypatch.setenv(ckpt.STOP_GRACE_VARIABLE, "0.5")
    calls = {"count": 0}
    # the second member on the second chunk (the first member's batch there is call 3) hangs
    monkeypatch.setattr(ensemble, "_attack_batch",
                        _stop_and_hang(calls, 4, ensemble._attack_batch))
    directory = tmp_path / "eval.checkpoint"
    with stop_on_signals(), pytest.raises(Interrupted, match="had not ended 0.5 s") as stop:
        attack(Checkpoint(directory, "eval", {}, every=3600))
    waited = time.monotonic() - calls["signalled"]
    assert 0.5 <= waited < 10 and stop.value.forced and stop.value.exit_code == 128 + 15
    saved = torch.load(directory / "ensemble.pt", weights_only=True)
    assert saved["chunks_done"] == 1  # the chunk cut short is not recorded half-done
    assert not saved["attacked"][:, 16:].any() and not saved["clean"][16:].any()
    monkeypatch.undo()
    assert attack(Checkpoint(directory, "eval", {}, resume=True)) == expected


def test_a_stop_while_an_epoch_is_scored_keeps_the_trained_epoch(tmp_path, monkeypatch):
    from spikeshield.runtime.epoch_loop import EpochLoop

    def run(checkpoint=None, hang_on=0):
        torch.manual_seed(0)
        layer = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        epochs_run = []

        def run_epoch(epoch, progress, on_step):
            epochs_run.append((epoch, progress.batches))
            if progress.batches == 0:  # one batch per epoch, skipped when it was done
                layer.weight.data += epoch
                progress.batches, progress.samples, progress.loss_sum = 1, 1, float(epoch)
                if on_step is not None:
                    on_step(progress)
            return progress.mean_loss

        calls = {"count": 0}
        scorer = _stop_and_hang(calls, hang_on, lambda: {"score": float(layer.weight.detach().sum())})
        loop = EpochLoop("fit", layer, 3, 1, {"model": layer, "optimizer": optimizer},
                         checkpoint)
        result = loop.run(run_epoch, scorer)
        return result, layer.weight.detach().clone(), epochs_run

    reference, weight, _ = run()
    monkeypatch.setenv(ckpt.STOP_GRACE_VARIABLE, "0.3")
    directory = tmp_path / "fit.checkpoint"
    with stop_on_signals(), pytest.raises(Interrupted, match="had not ended"):
        run(Checkpoint(directory, "train", {}, every=3600), hang_on=2)  # scoring epoch 2
    saved = torch.load(directory / "fit.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["progress"]["batches"] == 1  # epoch 2 trained, unscored
    resumed, resumed_weight, epochs_run = run(Checkpoint(directory, "train", {}, resume=True))
    assert epochs_run[0] == (2, 1)  # epoch 2 is not trained twice, only scored
    assert torch.equal(resumed_weight, weight)
    assert _numbers(resumed.history) == _numbers(reference.history)


def test_a_bad_stop_grace_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(ckpt.STOP_GRACE_VARIABLE, "0")
    with pytest.raises(ConfigError, match="SPIKESHIELD_STOP_GRACE_SECONDS must be a number of "
                                          "seconds > 0, got '0'"):
        ckpt.stop_grace()
    monkeypatch.setenv(ckpt.STOP_GRACE_VARIABLE, "2.5")
    assert ckpt.stop_grace() == 2.5
