import pytest
import torch

from spikeshield.compiler.ir.errors import IRValidationError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import (
    IF,
    OPS,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Floor,
    Input,
    Linear,
    Output,
    Pad2d,
    ReLU,
    Scale,
    Sum,
)
from spikeshield.compiler.ir.serialize import from_dict, to_dict
from spikeshield.runtime.executor import GraphExecutor
from tests.conftest import tiny_conv_graph

# One sample per registered op, with the input shape it consumes.
SAMPLES = {
    "input": (Input((2, 4, 4)), None),
    "output": (Output(), (2, 4, 4)),
    "sum": (Sum(), (2, 4, 4)),
    "flatten": (Flatten(), (2, 4, 4)),
    "pad2d": (Pad2d((0, 1, 2, 1)), (2, 4, 4)),
    "avgpool2d": (AvgPool2d(2, 2, 0, True), (2, 4, 4)),
    "conv2d": (Conv2d(torch.randn(3, 2, 3, 3), torch.randn(3), stride=1, padding=1), (2, 4, 4)),
    "linear": (Linear(torch.randn(5, 32), None), (32,)),
    "batchnorm": (BatchNorm(torch.randn(2), torch.rand(2) + 0.5, torch.randn(2), torch.randn(2)), (2, 4, 4)),
    "scale": (Scale(torch.randn(2), torch.randn(2)), (2, 4, 4)),
    "relu": (ReLU(ceiling=1.5, levels=4, shift=0.5), (2, 4, 4)),
    "floor": (Floor(), (2, 4, 4)),
    "if": (IF(torch.tensor([0.5, 1.5]), "subtract", v_init=0.5), (2, 4, 4)),
}


def test_every_registered_op_has_a_sample():
    assert set(SAMPLES) == set(OPS)


@pytest.mark.parametrize("kind", sorted(OPS))
def test_op_round_trips_through_serialization(kind):
    op, in_shape = SAMPLES[kind]
    graph = Graph("one")
    if kind == "input":
        graph.add("x", op)
        graph.add("out", Output(), ["x"])
    else:
        graph.add("x", Input(in_shape))
        graph.add("op", op, ["x"])
        if kind != "output":
            graph.add("out", Output(), ["op"])
    graph.validate()
    structure, tensors = to_dict(graph)
    back = from_dict(structure, tensors)
    assert back.nodes() == graph.nodes()
    for name in graph.nodes():
        a, b = graph.op(name), back.op(name)
        assert type(a) is type(b) and a.attributes() == b.attributes()
        for field, value in a.tensors().items():
            assert torch.equal(value, b.tensors()[field])
        assert back.shape(name) == graph.shape(name)


def test_shape_mismatch_names_the_node():
    graph = Graph()
    graph.add("x", Input((3, 8, 8)))
    graph.add("conv", Conv2d(torch.randn(4, 2, 3, 3)), ["x"])
    graph.add("out", Output(), ["conv"])
    with pytest.raises(IRValidationError, match="'conv'.*3 channels"):
        graph.validate()


def test_fan_in_of_different_shapes_is_rejected():
    graph = Graph()
    graph.add("x", Input((4,)))
    graph.add("a", Linear(torch.randn(3, 4)), ["x"])
    graph.add("s", Sum(), ["a", "x"])
    graph.add("out", Output(), ["s"])
    with pytest.raises(IRValidationError, match="different shapes"):
        graph.validate()


def test_feed_forward_cycle_is_rejected_but_recurrent_edge_allowed():
    graph = Graph()
    graph.add("x", Input((4,)))
    graph.add("a", Linear(torch.randn(4, 4)), ["x"])
    graph.add("b", Linear(torch.randn(4, 4)), ["a"])
    graph.add("out", Output(), ["b"])
    graph.connect("b", "a")
    with pytest.raises(IRValidationError, match="cycle"):
        graph.validate()
    graph._g.edges["b", "a"]["recurrent"] = True
    graph.validate()
    assert graph.inputs("a", recurrent=True) == ["b"]


def test_non_finite_weights_are_rejected():
    graph = Graph()
    graph.add("x", Input((2,)))
    graph.add("fc", Linear(torch.tensor([[1.0, float("nan")]])), ["x"])
    graph.add("out", Output(), ["fc"])
    with pytest.raises(IRValidationError, match="non-finite"):
        graph.validate()


def test_copy_does_not_alias_tensors():
    graph = tiny_conv_graph()
    clone = graph.copy()
    clone.op("conv").weight.zero_()
    assert graph.op("conv").weight.abs().sum() > 0


def test_dump_lists_every_node_with_shape():
    text = tiny_conv_graph().dump()
    for name in ("input", "conv", "relu", "flat", "fc", "output"):
        assert f"%{name} =" in text
    assert "-> (3, 6, 6)" in text and "-> (4,)" in text


def test_remove_and_insert_after_keep_function():
    graph = tiny_conv_graph()
    x = torch.rand(2, 1, 6, 6)
    before = GraphExecutor(graph)(x)
    graph.insert_after("relu", "s", Scale(torch.ones(1)))
    assert graph.consumers("relu") == ["s"] and graph.inputs("flat") == ["s"]
    torch.testing.assert_close(GraphExecutor(graph)(x), before, rtol=0, atol=0)
    graph.remove("s")
    assert graph.inputs("flat") == ["relu"]


def test_fan_in_counts_with_multiplicity_through_edits():
    from spikeshield.compiler.ir.graph import Graph
    from spikeshield.compiler.ir.ops import Input, Output, Scale, Sum

    g = Graph("twice")
    g.add("x", Input((2,)))
    g.add("s", Scale(torch.tensor([3.0])), ["x"])
    g.add("sum", Sum(), ["s", "s", "x"])
    g.add("out", Output(), ["sum"])
    assert g.inputs("sum") == ["s", "s", "x"] and g.consumers("s") == ["sum"]
    g.insert_after("s", "t", Scale(torch.tensor([1.0])))
    assert sorted(g.inputs("sum")) == ["t", "t", "x"]
    g.remove("t")  # each of t's inputs reaches sum as often as t did: twice
    assert sorted(g.inputs("sum")) == ["s", "s", "x"]
    g.remove("s")  # x now reaches sum three times: twice through s, once directly
    assert g.inputs("sum") == ["x", "x", "x"]
    assert len(g.copy().edges()) == len(g.edges()) == 4
