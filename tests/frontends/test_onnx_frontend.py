import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from spikeshield.compiler.ir.errors import ModelLoadError, UnsupportedOpError
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
    with pytest.raises(UnsupportedOpError, match=r"op Sigmoid \(node 'odd'\).*`spikeshield ops`"):
        from_onnx(path2)


def test_corrupt_onnx_is_a_typed_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        from_onnx(path)


def _constant_model(nodes, output: str, tmp_path, name: str):
    """x (1, 4) plus a constant computed by ``nodes``: what a hostile exporter could write."""
    graph = helper.make_graph(
        [*nodes, helper.make_node("Add", ["x", output], ["y"])], name,
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_constant_loop_is_refused_without_running_it(tmp_path):
    """A Loop whose trip count is 10^12 would make the reference evaluator run for ever."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Identity", ["v"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", onnx.TensorProto.FLOAT, [4])])
    nodes = [
        helper.make_node("Constant", [], ["trips"], value=helper.make_tensor(
            "t", onnx.TensorProto.INT64, [], [10**12])),
        helper.make_node("Constant", [], ["go"], value=helper.make_tensor(
            "g", onnx.TensorProto.BOOL, [], [True])),
        helper.make_node("Constant", [], ["v0"], value=helper.make_tensor(
            "v", onnx.TensorProto.FLOAT, [4], [0.0] * 4)),
        helper.make_node("Loop", ["trips", "go", "v0"], ["looped"], body=body),
    ]
    path = _constant_model(nodes, "looped", tmp_path, "loop")
    with pytest.raises(UnsupportedOpError, match="op Loop on constants"):
        from_onnx(path)


def test_a_constant_of_gigantic_shape_is_refused_before_it_is_allocated(tmp_path):
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=helper.make_tensor(
            "s", onnx.TensorProto.INT64, [2], [1 << 15, 1 << 15])),
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
    ]
    path = _constant_model(nodes, "total", tmp_path, "bomb")
    with pytest.raises(ModelLoadError, match="the constant computed by ConstantOfShape node "
                       "'big' has 1,073,741,824 elements"):
        from_onnx(path)


@pytest.mark.parametrize("op, shapes, elements", [
    ("Add", ([1 << 15, 1], [1, 1 << 15]), "1,073,741,824"),
    ("MatMul", ([1 << 15, 1, 1, 1], [1, 1 << 15, 1, 1]), "1,073,741,824"),
])
def test_a_broadcast_of_small_constants_is_bounded_by_its_output(tmp_path, op, shapes, elements):
    """Old code bounded elementwise ops by the sum of their input sizes: a 364 KB file built a
    4 GiB constant (checked by hand on 4b42d6f)."""
    nodes = [
        helper.make_node("ConstantOfShape", [f"s{i}"], [f"c{i}"]) for i in range(2)
    ] + [helper.make_node(op, ["c0", "c1"], ["big"]),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0)]
    shape_nodes = [helper.make_node("Constant", [], [f"s{i}"], value=helper.make_tensor(
        f"v{i}", onnx.TensorProto.INT64, [len(s)], s)) for i, s in enumerate(shapes)]
    path = _constant_model(shape_nodes + nodes, "total", tmp_path, "broadcast")
    with pytest.raises(ModelLoadError, match=f"computed by {op} node 'big' has {elements}"):
        from_onnx(path)


@pytest.mark.parametrize("start,end", [(0, 1), (0, -3), (None, 1)])
def test_shape_with_a_slice_takes_the_batch_dim_as_the_dynamo_exporter_writes_it(start, end,
                                                                                 tmp_path):
    """``Reshape(x, Concat(Shape(x, start=0, end=1), [-1]))``: a Shape that ignored its slice made
    the target [1, 2, 3, 3, -1] and refused every flatten the dynamo exporter writes (issue 39)."""
    weight = numpy_helper.from_array(torch.randn(4, 18).numpy(), "w")
    minus_one = numpy_helper.from_array(torch.tensor([-1]).numpy(), "minus_one")
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["batch"], **attrs),
         helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
         helper.make_node("Reshape", ["x", "target"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["y"], transB=1)],
        "flatten", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [weight, minus_one])
    path = tmp_path / "flatten.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = torch.rand(5, 2, 3, 3)
    expected = x.flatten(1) @ torch.from_numpy(numpy_helper.to_array(weight)).T
    assert (GraphExecutor(from_onnx(path))(x) - expected).abs().max() < 1e-5


def test_the_shape_of_a_constant_is_computed_not_refused(tmp_path):
    """Found by the differential tester: the dynamo exporter takes ``Shape`` of weights; that was
    refused as "Shape of a constant is not supported"."""
    bias = numpy_helper.from_array(torch.randn(3).numpy(), "b")
    graph = helper.make_graph(
        [helper.make_node("Shape", ["b"], ["n"]),
         helper.make_node("Reshape", ["b", "n"], ["b2"]),
         helper.make_node("Add", ["x", "b2"], ["y"])],
        "shape_of_constant", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [bias])
    path = tmp_path / "shape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = torch.rand(5, 3)
    expected = x + torch.from_numpy(numpy_helper.to_array(bias))
    assert (GraphExecutor(from_onnx(path))(x) - expected).abs().max() < 1e-6
