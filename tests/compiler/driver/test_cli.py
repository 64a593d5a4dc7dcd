import json

import pytest
import torch
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.pt2 import export_pt2
from spikeshield.frontends.zoo import build_model

runner = CliRunner()


@pytest.fixture(scope="module")
def compiled(trained_lenet, tmp_path_factory):
    """A full compile: conversion, a short TRADES finetuning and the quick robustness report."""
    _, model = trained_lenet
    out = tmp_path_factory.mktemp("cli") / "snn"
    result = runner.invoke(app, ["compile", str(model), "--data", "mnist5k", "-T", "8", "--n", "60",
                                 "--finetune-epochs", "1", "--finetune-max-train", "256",
                                 "--robustness", "quick", "--out", str(out)])
    return out, result


def test_compile_writes_artifacts_and_inspect_prints_them(compiled):
    out, result = compiled
    assert result.exit_code == 0, result.output
    assert "SNN (T=8) accuracy" in result.output and "robust accuracy at eps=0.1" in result.output
    assert {p.name for p in out.iterdir()} == {"snn.ir", "ann.ir", "report.json", "report.md",
                                              "robustness.json", "robustness.md", "robustness.png",
                                              "profile.json", "profile.md", "profile_energy.png",
                                              "profile_rates.png", "manifest.json"}
    report = json.loads((out / "report.json").read_text())
    assert report["snn"]["samples"] == 60 and report["snn"]["timesteps"] == 8
    assert [p["name"] for p in report["passes"]] == [
        "fuse_quantized_relu", "fuse_clipped_relu", "fold_batchnorm", "convert_relu_to_if",
        "calibrate_thresholds", "fold_scales", "finetune_robust"]
    assert report["passes"][-1]["params"]["config"]["eps_train"] == pytest.approx(0.025)
    # A weakly trained half-width LeNet: the bound only catches a broken conversion (chance = 0.1);
    # conversion quality on properly trained models is measured in BENCHMARKS.md.
    assert report["snn"]["accuracy"] >= report["ann"]["accuracy"] - 0.15
    rob = report["robustness"]
    assert rob["preset"] == "quick" and rob["samples"] == 60 and rob["eps"] == 0.1
    assert 0 <= rob["snn_robust_accuracy"] <= report["snn"]["accuracy"]
    assert rob["ann_pgd_robust_accuracy"] is not None
    text = (out / "report.md").read_text()
    assert "firing rate" in text and "SNN before finetuning" in text and "## Robustness" in text
    assert "initial potential: 0.5 x threshold" in text
    assert ("calibration: 99.7th percentile per channel, each layer fitted to the ANN (threshold "
            "among fractions of that, spike amplitude and bias shift)") in text
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = runner.invoke(app, ["inspect", str(out / "snn.ir")])
    assert shown.exit_code == 0 and "if(reset=subtract, v_init=0.5" in shown.output


def test_eval_writes_the_robustness_report(compiled):
    out, _ = compiled
    for name in ("robustness.json", "robustness.md", "robustness.png"):
        (out / name).unlink()
    result = runner.invoke(app, ["eval", str(out), "--n", "40", "--eps", "0.05", "--preset", "quick"])
    assert result.exit_code == 0, result.output
    assert "robust accuracy at eps=0.05" in result.output
    report = json.loads((out / "robustness.json").read_text())
    assert report["samples"] == 40 and report["eps"] == 0.05 and report["data"] == "mnist5k"
    members = report["snn"]["members"]
    assert [m["gradient_mode"] for m in members] == ["triangle:1", "rectangular:1", "exponential:1",
                                                     "bptr"]
    assert report["snn"]["robust_accuracy"] == members[-1]["robust_accuracy_after"]
    diag = report["snn"]["diagnostics"]
    assert set(diag["zero_gradient_fraction"]) == {"triangle γ=1", "rectangular γ=1",
                                                  "exponential γ=1", "BPTR"}
    assert diag["accuracy_vs_eps"][-1]["eps"] == 0.5
    assert "## Verdict" in (out / "robustness.md").read_text()
    # eval replaced three artifacts of the compile directory and recorded them in its manifest
    verified = runner.invoke(app, ["verify", str(out)])
    assert verified.exit_code == 0 and "all 11 files match" in verified.output, verified.output


def test_eval_bad_inputs(compiled, tmp_path):
    out, _ = compiled
    cases = [
        (["--eps", "1.5"], "eps must be in [0, 1]"),
        (["--preset", "brutal"], "unknown preset"),
        (["--n", "5000"], "the test split has 1000"),
        (["--attack", "square"], "base attack must be one of"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["eval", str(out), *extra])
        assert result.exit_code == 2 and message in _error_line(result), (extra, result.output)
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "holds no compiled SNN" in _error_line(result)


def test_interrupted_eval_leaves_no_half_written_report(compiled, monkeypatch):
    import spikeshield.compiler.driver.robustness as robustness
    import spikeshield.compiler.driver.robustness_report as rendering

    out, _ = compiled
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("robustness")}
    finished = json.loads((out / "robustness.json").read_text())

    def interrupted(report):
        raise KeyboardInterrupt

    # the attacks are done (a finished report), the interrupt lands while the files are produced
    monkeypatch.setattr(robustness, "evaluate_robustness", lambda *args: finished)
    monkeypatch.setattr(rendering, "render_plot", interrupted)
    result = runner.invoke(app, ["eval", str(out), "--n", "20"])
    assert result.exit_code == 130
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("robustness")}
    assert after == before  # the previous report, untouched
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1, result.output  # one line, no traceback
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_model_file(tmp_path):
    result = runner.invoke(app, ["compile", str(tmp_path / "none.pt2"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in _error_line(result)
    assert not (tmp_path / "o").exists()


def test_bad_inputs_exit_2_and_write_nothing(trained_lenet, tmp_path):
    _, model = trained_lenet
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"\x00garbage")
    cases = [
        (["--data", "imagenet"], "unknown data spec"),
        (["-T", "0"], "timesteps must be between 1 and"),
        (["--data", "fashion-mnist:/no/such/dir"], "not found"),
        (["--reset", "sideways"], "reset must be one of"),
        (["--v-init", "1.0"], "--v-init is a fraction of the threshold in [0, 1)"),
        (["--correction", "magic"], "correction must be one of"),
        (["--finetune", "sgd"], "finetune objective must be one of"),
        (["--eps-train", "3"], "eps_train must be in"),
        (["--robustness", "brutal"], "unknown preset"),
        (["--eps", "-0.1"], "eps must be in [0, 1]"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        result = runner.invoke(app, ["compile", str(model), "--out", str(out), "--n", "50", *extra])
        assert result.exit_code == 2 and message in _error_line(result), (extra, result.output)
        assert not out.exists()
    result = runner.invoke(app, ["compile", str(corrupt), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "not a readable torch.export" in _error_line(result)


def test_model_data_shape_mismatch(tmp_path):
    model = build_model("lenet", (3, 32, 32), 10, width=0.25)
    path = tmp_path / "cifar_lenet.pt2"
    export_pt2(model, (3, 32, 32), path)
    result = runner.invoke(app, ["compile", str(path), "--data", "mnist5k", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "expects inputs of shape (3, 32, 32)" in _error_line(result)


def test_unsupported_op_and_non_finite_weights(tmp_path):
    class WithMax(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool, self.fc = torch.nn.MaxPool2d(2), torch.nn.Linear(196, 10)

        def forward(self, x):
            return self.fc(self.pool(x).flatten(1))

    path = tmp_path / "max.pt2"
    export_pt2(WithMax(), (1, 28, 28), path)
    result = runner.invoke(app, ["compile", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "max_pool2d" in _error_line(result)

    model = build_model("lenet", (1, 28, 28), 10, width=0.25)
    with torch.no_grad():
        model.net.classifier[1].weight[0, 0] = float("nan")
    path = tmp_path / "nan.pt2"
    export_pt2(model, (1, 28, 28), path)
    result = runner.invoke(app, ["compile", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "non-finite" in _error_line(result)


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "compile", str(tmp_path / "x.pt2"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and result.exception is not None


def test_train_and_demo_commands(tmp_path):
    out = tmp_path / "ann.pt2"
    result = runner.invoke(app, ["train", "--arch", "lenet", "--objective", "at", "--eps", "0.05",
                                 "--epochs", "1", "--max-train", "256", "--attack-steps", "2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "clean test accuracy" in result.output
    bad = runner.invoke(app, ["train", "--arch", "alexnet", "--epochs", "1", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown architecture" in _error_line(bad)
    bad = runner.invoke(app, ["train", "--activation", "gelu", "--epochs", "1", "--out", str(out)])
    assert bad.exit_code == 2 and "--activation must be one of relu, qcfs" in _error_line(bad)
    # QCFS: trained, written with its floor and clamp, and read back as quantised ReLUs that
    # convert with the learned ceilings as thresholds.
    qcfs = tmp_path / "qcfs.pt2"
    result = runner.invoke(app, ["train", "--arch", "lenet", "--objective", "standard", "--epochs",
                                 "1", "--max-train", "256", "--activation", "qcfs", "--levels", "4",
                                 "--out", str(qcfs)])
    assert result.exit_code == 0 and "(QCFS, L=4)" in result.output, result.output
    from spikeshield.compiler.driver.model_io import load_model
    from spikeshield.compiler.ir.ops import Floor, ReLU
    from spikeshield.compiler.passes.manager import PassManager

    graph = load_model(qcfs)
    fused = PassManager().run(graph, [("fuse_quantized_relu", {})])
    assert len(graph.nodes_of(Floor)) == 4 and not fused.nodes_of(Floor)
    assert {fused.op(n).levels for n in fused.nodes_of(ReLU)} == {4}
    demo = runner.invoke(app, ["demo", "--epochs", "1", "--timesteps", "8", "--finetune-epochs", "1",
                               "--n", "30", "--max-train", "512", "--out", str(tmp_path / "d")])
    assert demo.exit_code == 0, demo.output
    assert "ANN" in demo.output and (tmp_path / "d" / "snn-T8" / "report.md").is_file()
    assert "quick ensemble worst case" in demo.output
    assert (tmp_path / "d" / "robust-snn-T8" / "robustness.md").is_file()


@pytest.mark.parametrize("cmd", [["--help"], ["compile", "--help"], ["train", "--help"],
                                 ["export", "--help"], ["run", "--help"]])
def test_help(cmd):
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0 and "Usage" in result.output


def test_version_names_spikeshield_and_torch():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == (f"spikeshield {version('spikeshield')} "
                                     f"(torch {torch.__version__})")


def test_help_lists_every_export_format_target_and_preset_the_code_has():
    """--help is built from the names the code uses: FORMATS (driver/export.py) and TARGETS
    (backends/targets.py) have exactly config's EXPORT_FORMATS and TARGET_NAMES, and each help
    text that offers them names every one, as the preset options name every attack preset (a
    choice added to the code but not to the help, or the reverse, fails here)."""
    import typer.main

    from spikeshield.backends.targets import TARGETS
    from spikeshield.compiler.driver.config import EXPORT_FORMATS, TARGET_NAMES
    from spikeshield.compiler.driver.export import FORMATS

    assert tuple(FORMATS) == EXPORT_FORMATS and tuple(TARGETS) == TARGET_NAMES
    commands = typer.main.get_command(app).commands
    helps = {(cmd, p.name): p.help for cmd in ("compile", "export") for p in commands[cmd].params}
    for key in [("compile", "export"), ("export", "fmt")]:
        assert all(name in helps[key] for name in EXPORT_FORMATS), (key, helps[key])
    for key in [("compile", "target"), ("export", "target")]:
        assert all(name in helps[key] for name in TARGET_NAMES), (key, helps[key])
    from spikeshield.runtime.attacks import PRESETS

    preset_helps = [p.help for p in commands["eval"].params if p.name == "preset"]
    preset_helps += [helps[("compile", "robustness")]]
    for text in preset_helps:
        assert all(name in text for name in PRESETS), text


def test_compile_options_are_compile_config_fields():
    """One definition: every CompileConfig knob is a compile option with the field's help text,
    and no option exists apart from the config and the command's own (model, --out, --data,
    --nproc, --resume, --checkpoint-every, --force)."""
    import dataclasses

    import typer.main

    from spikeshield.compiler.driver.config import CompileConfig

    command = typer.main.get_command(app).commands["compile"]
    params = {p.name: p for p in command.params}
    knobs = {f.name: f for f in dataclasses.fields(CompileConfig) if "help" in f.metadata}
    assert set(params) - set(knobs) == {"model", "out", "data", "nproc", "resume",
                                        "checkpoint_every", "force"}
    for name, f in knobs.items():
        assert params[name].help == f.metadata["help"] and params[name].default == f.default
    assert params["model"].param_type_name == "argument" and "--n" in params["eval_samples"].opts


def test_ops_lists_every_op_with_its_fate_and_the_tables_that_handle_it():
    from spikeshield.compiler.ir.ops import OPS

    result = runner.invoke(app, ["ops"])
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()
            if line.split() and line.split()[0] in OPS and len(line.split()) == 11}
    assert set(rows) == set(OPS)
    assert rows["relu"][4] == "no" and rows["conv2d"][2:] == ["yes"] * 9  # NIR in: no ReLU
    assert rows["relu"][7] == "no" and rows["if"][7] == "yes"  # the framework backends
    assert "becomes an IF neuron" in result.output and "MaxPool" not in result.output


def test_an_onnx_compile_prints_no_third_party_warning(tmp_path):
    """A normal run prints spikeshield's lines and nothing from the libraries under it: ONNX
    hands its initialisers over as read-only arrays, which torch.as_tensor warned about (with
    the path of PyTorch's build machine) on every ONNX compile. A fresh process, since torch
    warns about it only once per process."""
    import subprocess
    import sys

    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    torch.onnx.export(model, (torch.rand(1, 1, 28, 28),), tmp_path / "m.onnx", dynamo=False)
    result = subprocess.run(
        [sys.executable, "-W", "default", "-m", "spikeshield.compiler.driver.cli", "compile",
         str(tmp_path / "m.onnx"), "--data", "mnist5k", "--out", str(tmp_path / "snn"),
         "--finetune", "none", "--robustness", "none", "--no-profile", "--n", "50"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr + result.stdout, result.stderr[-2000:]
