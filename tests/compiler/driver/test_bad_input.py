"""Bad options and tampered files end in one line and exit 2, never a silent default or an
'internal error'."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.ir.serialize import save_graph
from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
from tests.conftest import tiny_conv_graph

runner = CliRunner()


def _one_line_exit_2(result, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture
def snn_ir(tmp_path):
    graph = convert_relu_to_if(tiny_conv_graph()).graph
    graph.meta.update({"timesteps": 4, "encoding": "direct", "input_range": [0.0, 1.0]})
    return save_graph(graph, tmp_path / "snn.ir")


def _tamper(path, change) -> None:
    with safe_open(str(path), framework="pt") as f:
        structure = json.loads(f.metadata()["spikeshield"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(structure)
    text = json.dumps(structure).replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    save_file(tensors, str(path), metadata={"spikeshield": text})


def _node(structure, kind):
    return next(n for n in structure["nodes"] if n["kind"] == kind)


@pytest.mark.parametrize("change, phrase", [
    (lambda s: _node(s, "conv2d")["attributes"].update(stride=[0, 1]), "stride"),
    (lambda s: _node(s, "conv2d")["attributes"].update(groups="two"), "groups"),
    (lambda s: s["meta"].update(timesteps="8; rm"), "timesteps"),
    (lambda s: s["meta"].update(encoding=["direct"]), "encoding"),
    (lambda s: s["meta"].update(input_range="0..1"), "input_range"),
    (lambda s: s.update(nodes="DEEP"), "nested too deeply"),
])
def test_tampered_ir_files_are_one_line(snn_ir, tmp_path, change, phrase):
    _tamper(snn_ir, change)
    _one_line_exit_2(runner.invoke(app, ["inspect", str(snn_ir)]), phrase)


def test_a_zero_pool_kernel_is_one_line(tmp_path):
    from spikeshield.compiler.ir.graph import Graph
    from spikeshield.compiler.ir.ops import AvgPool2d, Input, Output

    graph = Graph("pool")
    graph.add("input", Input((1, 4, 4)))
    graph.add("pool", AvgPool2d(2), ["input"])
    graph.add("output", Output(), ["pool"])
    path = save_graph(graph.validate(), tmp_path / "pool.ir")
    _tamper(path, lambda s: _node(s, "avgpool2d")["attributes"].update(kernel=[0, 0]))
    _one_line_exit_2(runner.invoke(app, ["inspect", str(path)]), "kernel")


@pytest.mark.parametrize("option", [["--timesteps", "0"], ["-T", "1000000"], ["-T", "-3"]])
def test_run_refuses_timesteps_it_cannot_honour(snn_ir, tmp_path, option):
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((2, 1, 6, 6), np.float32))
    result = runner.invoke(app, ["run", str(snn_ir), "--inputs", str(inputs), "--out",
                                 str(tmp_path / "r.npz"), *option])
    _one_line_exit_2(result, "--timesteps must be between 1 and")


def test_export_refuses_zero_timesteps(snn_ir, tmp_path):
    result = runner.invoke(app, ["export", str(snn_ir), "--format", "onnx", "-T", "0",
                                 "--out", str(tmp_path / "snn.onnx")])
    _one_line_exit_2(result, "--timesteps must be between 1 and")


def test_run_refuses_an_empty_input_and_inputs_outside_the_declared_range(snn_ir, tmp_path):
    out = str(tmp_path / "r.npz")
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 1, 6, 6), np.float32))
    _one_line_exit_2(runner.invoke(app, ["run", str(snn_ir), "--inputs", str(empty), "--out", out]),
                     "holds no samples")
    pixels = tmp_path / "uint8.npy"
    np.save(pixels, np.full((2, 1, 6, 6), 255, np.uint8))
    _one_line_exit_2(runner.invoke(app, ["run", str(snn_ir), "--inputs", str(pixels), "--out",
                                         out]), "outside the model's input range [0, 1]",
                     "--input-scale 255")
    result = runner.invoke(app, ["run", str(snn_ir), "--inputs", str(pixels), "--out", out,
                                 "--input-scale", "255"])
    assert result.exit_code == 0, result.output
    scaled = tmp_path / "ones.npy"
    np.save(scaled, np.ones((2, 1, 6, 6), np.float32))
    runner.invoke(app, ["run", str(snn_ir), "--inputs", str(scaled), "--out",
                        str(tmp_path / "ones.npz")])
    assert np.array_equal(np.load(out)["logits"], np.load(tmp_path / "ones.npz")["logits"])


def test_compile_refuses_an_unknown_target_before_any_work(trained_lenet, tmp_path):
    result = runner.invoke(app, ["compile", str(trained_lenet[1]), "--out", str(tmp_path / "o"),
                                 "--target", "bogus", "--finetune", "none"])
    _one_line_exit_2(result, "unknown target 'bogus'")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("profile, phrase", [
    ({"name": "t", "weight_bits": "eight"}, "'weight_bits' must be a whole number"),
    ({"name": "t", "ops": "conv2d"}, "'ops' must be a list of strings"),
    ({"name": 3}, "string 'name'"),
    ([1, 2], "not a valid profile"),
])
def test_a_json_target_with_wrong_types_is_one_line(snn_ir, tmp_path, profile, phrase):
    target = tmp_path / "target.json"
    target.write_text(json.dumps(profile))
    result = runner.invoke(app, ["export", str(snn_ir), "--target", str(target), "--out",
                                 str(tmp_path / "snn.nir")])
    _one_line_exit_2(result, phrase)


def test_compile_refuses_data_whose_shape_does_not_fit_the_model(tmp_path):
    graph = tiny_conv_graph()  # takes (1, 6, 6); mnist5k is (1, 28, 28)
    path = save_graph(graph, tmp_path / "ann.ir")
    result = runner.invoke(app, ["compile", str(path), "--out", str(tmp_path / "o"),
                                 "--finetune", "none", "--robustness", "none"])
    _one_line_exit_2(result, "(1, 28, 28)", "(1, 6, 6)")


def test_eval_refuses_data_whose_shape_does_not_fit_the_snn(trained_lenet, tmp_path):
    from scipy.io import savemat

    out = tmp_path / "snn"
    assert runner.invoke(app, ["compile", str(trained_lenet[1]), "--out", str(out), "--finetune",
                               "none", "--robustness", "none", "--no-profile", "--n", "20",
                               "--calibration-batches", "1"]).exit_code == 0
    svhn = tmp_path / "svhn"
    svhn.mkdir()
    for name in ("train", "test"):
        savemat(svhn / f"{name}_32x32.mat", {"X": np.zeros((32, 32, 3, 4), np.uint8),
                                             "y": np.ones((4, 1), np.uint8)})
    result = runner.invoke(app, ["eval", str(out), "--data", f"svhn:{svhn}", "--n", "4"])
    _one_line_exit_2(result, "(1, 28, 28)", "(3, 32, 32)")
