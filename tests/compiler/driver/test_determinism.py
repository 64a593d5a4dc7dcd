"""Same seed, same numbers (CPU): compile and eval twice give identical artifacts and counts;
repeated calls in one process do not accumulate memory; eval streams its samples chunk by chunk."""

import gc
import json

import torch
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.manifest import read_manifest

runner = CliRunner()


def _without_timings(value):
    """A report with its wall-clock and memory fields removed (the only things that may differ)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("seconds", "peak_memory")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_compile_and_eval_twice_give_identical_numbers(trained_lenet, tmp_path):
    _, model = trained_lenet
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        result = runner.invoke(app, ["compile", str(model), "--out", str(out), "-T", "6",
                                     "--finetune-epochs", "1", "--finetune-max-train", "128",
                                     "--n", "40", "--seed", "3", "--robustness", "quick"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["eval", str(out), "--n", "48", "--batch-size", "16",
                                     "--seed", "3", "--preset", "quick"])
        assert result.exit_code == 0, result.output
        outs.append(out)
    a, b = (read_manifest(out) for out in outs)
    for name in ("snn.ir", "ann.ir"):  # the networks, byte for byte
        assert a[name]["sha256"] == b[name]["sha256"], name
    for name in ("report.json", "robustness.json", "profile.json"):
        first, second = (json.loads((out / name).read_text()) for out in outs)
        assert _without_timings(first) == _without_timings(second), name
    report = json.loads((outs[0] / "robustness.json").read_text())
    assert report["peak_memory"]["host_rss_mib"] > 0
    assert "peak memory" in (outs[0] / "robustness.md").read_text()


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_repeated_compile_and_eval_calls_do_not_accumulate_tensors(trained_lenet, mnist5k):
    from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model
    from spikeshield.compiler.driver.robustness import RobustnessConfig, evaluate_robustness

    _, model = trained_lenet
    cfg = CompileConfig(timesteps=4, eval_samples=32, finetune="trades", finetune_epochs=1,
                        finetune_max_train=64, robustness="none", profile=True)
    rob = RobustnessConfig(preset="quick", samples=32, batch_size=16, curve_samples=16)

    def once() -> None:
        result = compile_model(model, mnist5k, cfg)
        evaluate_robustness(result.snn, result.ann, mnist5k.test, 10, rob)

    once()  # warm-up: lazily built caches and modules
    before = _live_tensors()
    for _ in range(3):
        once()
    assert _live_tensors() <= before


def test_eval_holds_one_chunk_of_images_at_a_time(converted_lenet, mnist5k, monkeypatch):
    from spikeshield.compiler.driver.robustness import RobustnessConfig, evaluate_robustness
    from spikeshield.runtime import ensemble

    sizes = []
    original = ensemble.as_tensors

    def recording(data, device):
        sizes.append(len(data))
        return original(data, device)

    monkeypatch.setattr(ensemble, "as_tensors", recording)
    rob = RobustnessConfig(preset="quick", samples=100, batch_size=16, curve_samples=16)
    report = evaluate_robustness(converted_lenet.snn, None, mnist5k.test, 10, rob)
    assert report["samples"] == 100
    assert sizes and max(sizes) <= 16  # never the whole set as float images
    assert sum(sizes) >= 100  # every sample went through a chunk
