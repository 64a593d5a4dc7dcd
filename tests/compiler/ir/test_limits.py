"""Safe loading: files from strangers cannot run code, and cannot ask for absurd resources."""

import os

import onnx
import pytest
from onnx import helper
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.model_io import load_model
from spikeshield.compiler.ir.errors import ModelLoadError
from spikeshield.compiler.ir.serialize import save_graph
from tests.conftest import tiny_conv_graph

runner = CliRunner()


def test_ir_tensor_sizes_and_node_counts_are_bounded(tmp_path, monkeypatch):
    path = save_graph(tiny_conv_graph(), tmp_path / "m.ir")
    assert load_model(path).nodes()
    monkeypatch.setenv("SPIKESHIELD_MAX_TENSOR_ELEMENTS", "100")  # fc has 4 x 108 weights
    with pytest.raises(ModelLoadError, match="'fc/weight' has 432 elements"):
        load_model(path)
    monkeypatch.delenv("SPIKESHIELD_MAX_TENSOR_ELEMENTS")
    monkeypatch.setenv("SPIKESHIELD_MAX_NODES", "3")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2 and "SPIKESHIELD_MAX_NODES" in result.output


def _onnx_with_external_weight(folder, location: str):
    """A MatMul whose 2x2 weight lives in an external file at ``location`` (written raw, as a
    hostile file would be: onnx.save would resolve the location itself)."""
    weight = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2, 2],
                              data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_external_data_may_not_leave_the_model_folder(tmp_path):
    inside = tmp_path / "model"
    inside.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(64))
    for location in ("../secret.bin", str(secret)):
        path = _onnx_with_external_weight(inside, location)
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 2 and "outside the model's folder" in result.output, location
    (inside / "m.data").write_bytes(bytes(16))  # beside the model: read as usual
    assert load_model(_onnx_with_external_weight(inside, "m.data")).nodes()


def test_a_huge_intermediate_is_refused_from_inferred_shapes_before_running(tmp_path):
    """Old code: a 250 KB IR whose pad2d asks for 2 GB per sample loaded, and the runtime
    allocated it per batch (checked by hand on 4b42d6f)."""
    from spikeshield.compiler.ir.graph import Graph
    from spikeshield.compiler.ir.ops import Input, Output
    from spikeshield.compiler.ir.ops.structure import Pad2d

    graph = Graph("padded")
    graph.add("input", Input((1, 4, 4)))
    graph.add("pad", Pad2d((0, 20000, 0, 20000)), ["input"])  # 4e8 elements per sample
    graph.add("output", Output(), ["pad"])
    path = save_graph(graph.validate(), tmp_path / "padded.ir")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    assert "the output of 'pad' has 400,160,016 elements per sample" in result.output
    assert "SPIKESHIELD_MAX_ACTIVATION_ELEMENTS" in result.output
