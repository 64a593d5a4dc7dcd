"""`spikeshield compile --export`, `spikeshield export` and `spikeshield run`."""

from __future__ import annotations

import json

import nir
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.ir.serialize import load_graph
from spikeshield.runtime.executor import GraphExecutor

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(trained_lenet, tmp_path_factory):
    """A converted LeNet compiled with every export, adapted to Loihi 2 (8-bit weights), its
    robustness measured before and after the adaptation (quick preset)."""
    _, model = trained_lenet
    out = tmp_path_factory.mktemp("export") / "snn"
    result = runner.invoke(
        app,
        [
            "compile",
            str(model),
            "-T",
            "4",
            "--n",
            "100",
            "--finetune",
            "none",
            "--robustness",
            "quick",
            "--eps",
            "0.05",
            "--export",
            "nir,onnx,onnx-step",
            "--target",
            "loihi2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_compile_exports_files_the_standard_readers_accept(exported):
    out, output = exported
    for name in ("snn.nir", "snn.onnx", "snn_step.onnx", "snn_loihi2.ir"):
        assert (out / name).is_file(), name
    nir.read(out / "snn.nir", type_check=True)
    for name in ("snn.onnx", "snn_step.onnx"):
        onnx.checker.check_model(onnx.load(out / name), full_check=True)
    description = json.loads((out / "snn.nir.json").read_text())
    adaptation = description["adaptation"]
    assert adaptation["target"] == "loihi2" and adaptation["samples"] == 100
    assert [p["name"] for p in adaptation["passes"]] == ["quantize_weights"]
    assert description["quantization"]["bits"] == 8
    report = json.loads((out / "report.json").read_text())
    assert [e["file"] for e in report["exports"]] == ["snn.nir", "snn.onnx", "snn_step.onnx"]
    assert "## Exports" in (out / "report.md").read_text()
    assert "adapted with quantize_weights: accuracy" in output


def test_run_a_directory_and_its_nir_export_agree(exported, tmp_path):
    out, _ = exported
    x = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    results = {}
    for source in ("snn_loihi2.ir", "snn.nir"):
        target = tmp_path / f"{source}.npz"
        result = runner.invoke(
            app,
            ["run", str(out / source), "--inputs", str(tmp_path / "x.npy"), "--out", str(target)],
        )
        assert result.exit_code == 0, result.output
        results[source] = np.load(target)
    ir, from_nir = results["snn_loihi2.ir"], results["snn.nir"]
    assert ir["predictions"].shape == (6,) and ir["logits"].shape == (6, 10)
    assert np.array_equal(ir["predictions"], from_nir["predictions"])
    assert np.abs(ir["logits"] - from_nir["logits"]).max() < 1e-5
    for layer in ir["layers"]:
        assert np.array_equal(ir[f"spikes/{layer}"], from_nir[f"spikes/{layer}"])
    # and both are what the library computes for the adapted graph
    graph = load_graph(out / "snn_loihi2.ir")
    expected = GraphExecutor(graph)(__import__("torch").from_numpy(x), 4).detach().numpy()
    assert np.abs(ir["logits"] - expected).max() < 1e-6


def test_export_command_writes_where_asked(exported, tmp_path):
    out, _ = exported
    target = tmp_path / "model.onnx"
    result = runner.invoke(
        app, ["export", str(out), "--format", "onnx", "--out", str(target), "-T", "2"]
    )
    assert result.exit_code == 0, result.output
    model = onnx.load(target)
    assert {p.key: p.value for p in model.metadata_props}["timesteps"] == "2"
    assert json.loads((tmp_path / "model.onnx.json").read_text())["timesteps"] == 2


def _error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_export_to_an_impossible_target_exits_2_and_writes_nothing(exported, tmp_path):
    out, _ = exported
    target = tmp_path / "x.nir"
    result = runner.invoke(app, ["export", str(out), "--target", "xylo", "--out", str(target)])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "xylo" in line and "conv2d is not supported" in line and "replace it by" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "tflite"], "unknown export format"),
        (["--target", "loihi3"], "unknown target"),
    ],
)
def test_export_bad_options(exported, tmp_path, args, message):
    out, _ = exported
    result = runner.invoke(app, ["export", str(out), "--out", str(tmp_path / "f.nir"), *args])
    assert result.exit_code == 2 and message in _error_line(result)
    assert not list(tmp_path.iterdir())


def test_run_bad_inputs_exit_2_and_write_nothing(exported, tmp_path):
    out, _ = exported
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 28, 28), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    cases = [
        ("wrong.npy", "expects (N, 1, 28, 28)"),
        ("junk.npy", "not a readable .npy"),
        ("missing.npy", "does not exist"),
    ]
    for name, message in cases:
        result = runner.invoke(
            app,
            ["run", str(out), "--inputs", str(tmp_path / name), "--out", str(tmp_path / "o.npz")],
        )
        assert result.exit_code == 2 and message in _error_line(result), name
    assert not (tmp_path / "o.npz").exists()


def test_run_a_corrupt_nir_file_is_one_line(tmp_path):
    (tmp_path / "bad.nir").write_bytes(b"garbage")
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    result = runner.invoke(
        app,
        [
            "run",
            str(tmp_path / "bad.nir"),
            "--inputs",
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "o.npz"),
        ],
    )
    assert result.exit_code == 2 and "not a valid NIR graph" in _error_line(result)


def test_compile_attacks_the_target_adapted_snn_too(exported):
    out, _ = exported
    summary = json.loads((out / "report.json").read_text())["robustness"]
    adapted = summary["adapted"]
    assert adapted["graph"] == "snn_loihi2.ir"
    deployed = json.loads((out / "robustness_loihi2.json").read_text())
    assert deployed["graph"] == "snn_loihi2.ir" and deployed["preset"] == "quick"
    assert deployed["samples"] == summary["samples"] and deployed["eps"] == summary["eps"] == 0.05
    assert adapted["snn_robust_accuracy"] == deployed["snn"]["robust_accuracy"]
    assert 0 <= adapted["snn_robust_accuracy"] <= adapted["clean_accuracy"]
    assert "SNN as deployed (snn_loihi2.ir" in (out / "report.md").read_text()
    # each report attacked its own graph: the clean accuracies are those the adaptation measured
    # before and after quantizing, on the same first test samples
    plain = json.loads((out / "robustness.json").read_text())
    adaptation = json.loads((out / "snn.nir.json").read_text())["adaptation"]
    assert plain["snn"]["clean_accuracy"] == adaptation["accuracy_before"]
    assert deployed["snn"]["clean_accuracy"] == adaptation["accuracy_after"]


def test_eval_attacks_the_graph_named_by_ir(exported, tmp_path):
    import shutil

    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("robustness_loihi2.json", "robustness_loihi2.md", "robustness_loihi2.png"):
        (copy / name).unlink()
    before = (copy / "robustness.json").read_bytes()
    result = runner.invoke(app, ["eval", str(copy), "--ir", "snn_loihi2.ir", "--preset", "quick",
                                 "--n", "30", "--eps", "0.05"])
    assert result.exit_code == 0, result.output
    assert "robustness_loihi2.md" in result.output
    report = json.loads((copy / "robustness_loihi2.json").read_text())
    assert report["graph"] == "snn_loihi2.ir" and report["samples"] == 30
    assert (copy / "robustness.json").read_bytes() == before  # the SNN's own report is untouched
    verified = runner.invoke(app, ["verify", str(copy)])
    assert verified.exit_code == 0, verified.output
    for ir, message in (("../snn.ir", "name of an SNN graph"), ("ann.ir", "name of an SNN graph"),
                        ("snn_xylo.ir", "holds no snn_xylo.ir; it holds snn.ir, snn_loihi2.ir")):
        result = runner.invoke(app, ["eval", str(copy), "--ir", ir])
        assert result.exit_code == 2 and message in _error_line(result), (ir, result.output)
