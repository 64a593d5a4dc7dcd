import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from spikeshield.compiler.errors import ModelLoadError, UnsupportedOpError
from spikeshield.frontends.onnx_frontend import from_onnx
from spikeshield.frontends.zoo import build_model
from spikeshield.runtime.executor import GraphExecutor


@pytest.mark.parametrize("arch", ["lenet", "resnet20"])
def test_onnx_lowering_reproduces_logits(arch, tmp_path):
    torch.manual_seed(2)
    model = build_model(arch, (1, 28, 28), 10, [0.1], [0.3], width=0.5).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(2, 1, 28, 28),), str(path),
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    x = torch.rand(4, 1, 28, 28)
    assert (GraphExecutor(from_onnx(path))(x) - model(x)).abs().max() <= 1e-5


def _tiny_model(op_type: str, **attrs) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    w = numpy_helper.from_array(torch.ones(2, 1, 3, 3).numpy(), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node(op_type, ["c"], ["p"], name="odd", **attrs),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_maxpool_and_unknown_ops_are_refused_with_advice(tmp_path):
    path = tmp_path / "maxpool.onnx"
    onnx.save(_tiny_model("MaxPool", kernel_shape=[2, 2]), str(path))
    with pytest.raises(UnsupportedOpError, match="MaxPool.*AvgPool2d"):
        from_onnx(path)
    path2 = tmp_path / "sigmoid.onnx"
    onnx.save(_tiny_model("Sigmoid"), str(path2))
    with pytest.raises(UnsupportedOpError, match="Sigmoid at node 'odd'.*Supported ONNX ops"):
        from_onnx(path2)


def test_corrupt_onnx_is_a_typed_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        from_onnx(path)
