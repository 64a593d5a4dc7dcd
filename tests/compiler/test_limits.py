"""Safe loading: files from strangers cannot run code, and cannot ask for absurd resources."""

import io
import os
import zipfile

import onnx
import pytest
import torch
from onnx import helper
from typer.testing import CliRunner

from spikeshield.compiler.cli import app
from spikeshield.compiler.errors import ModelLoadError
from spikeshield.compiler.limits import TENSOR_ELEMENTS, check_pt2_archive
from spikeshield.compiler.model_io import load_model
from spikeshield.compiler.serialize import save_graph

from tests.conftest import tiny_conv_graph

runner = CliRunner()


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a hostile file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _with_member_replaced(source, target, member_part: str, content: bytes) -> None:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as out:
        for item in original.infolist():
            data = content if member_part in item.filename else original.read(item.filename)
            out.writestr(item, data)


def test_a_pt2_whose_pickle_would_run_code_is_refused_before_torch_sees_it(trained_lenet, tmp_path):
    _, pt2 = trained_lenet
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"inputs": _Payload(str(marker))}, buffer)
    hostile = tmp_path / "hostile.pt2"
    _with_member_replaced(pt2, hostile, "sample_inputs", buffer.getvalue())
    result = runner.invoke(app, ["inspect", str(hostile)])
    assert result.exit_code == 2 and "is not plain tensors" in result.output
    assert "GLOBAL" in result.output  # names what it refused to import
    assert not marker.exists()
    check_pt2_archive(pt2)  # the honest file passes
    assert load_model(pt2).nodes()


def test_pt2_declared_tensor_sizes_are_bounded(trained_lenet, tmp_path, monkeypatch):
    _, pt2 = trained_lenet
    monkeypatch.setenv(TENSOR_ELEMENTS.env, "100")
    with pytest.raises(ModelLoadError, match=f"limit 100.*{TENSOR_ELEMENTS.env}="):
        check_pt2_archive(pt2)


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
