import pytest
import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import Input, Linear, Output, ReLU, Scale, Sum
from spikeshield.compiler.passes.fuse_clipped_relu import fuse_clipped_relu
from spikeshield.runtime.executor import GraphExecutor


def _clip_graph(a1=-1.0, b1=0.5, a2=-1.0, b2=0.5, split=False, extra_reader=False) -> Graph:
    """fc -> relu -> a1*r+b1 -> relu -> a2*r+b2 -> fc2; ``split`` spells each affine map as a
    multiply then an add (two Scale nodes), ``extra_reader`` lets the inner ReLU feed the output."""
    g = torch.Generator().manual_seed(0)
    graph = Graph()
    graph.add("x", Input((4,)))
    graph.add("fc", Linear(torch.randn(3, 4, generator=g), None), ["x"])
    graph.add("r1", ReLU(), ["fc"])
    last = "r1"
    for i, (a, b) in enumerate(((a1, b1), (a2, b2))):
        if split:
            graph.add(f"mul{i}", Scale(scale=torch.full((3,), a)), [last])
            graph.add(f"add{i}", Scale(scale=torch.ones(1), bias=torch.tensor([b])), [f"mul{i}"])
            last = f"add{i}"
        else:
            graph.add(f"aff{i}", Scale(scale=torch.tensor([a]), bias=torch.full((3,), b)), [last])
            last = f"aff{i}"
        if i == 0:
            graph.add("r2", ReLU(), [last])
            last = "r2"
    graph.add("fc2", Linear(torch.randn(2, 3, generator=g), None), [last])
    if extra_reader:
        graph.add("skip", Linear(torch.randn(2, 3, generator=g), None), ["r2"])
        graph.add("both", Sum(), ["fc2", "skip"])
        graph.add("out", Output(), ["both"])
    else:
        graph.add("out", Output(), ["fc2"])
    return graph.validate()


@pytest.mark.parametrize("split", [False, True])
def test_two_relu_clip_becomes_one_clipped_relu_with_the_same_values(split):
    graph = _clip_graph(split=split)
    result = fuse_clipped_relu(graph)
    assert result.changed and result.info["fused"] == {"r1": 0.5}
    fused = result.graph
    assert fused.nodes_of(ReLU) == ["r1"] and fused.op("r1").ceiling == 0.5
    assert fused.inputs("fc2") == ["r1"]
    x = torch.randn(64, 4) * 3
    with torch.no_grad():
        assert torch.allclose(GraphExecutor(fused)(x), GraphExecutor(graph)(x), atol=1e-6, rtol=0)


def test_scaled_form_of_the_clip_fuses_too():
    # u - relu(u - r) written as (1/s) * (s*u - relu(s*u - s*r))... i.e. a1 = -s, a2 = -1/s
    result = fuse_clipped_relu(_clip_graph(a1=-4.0, b1=2.0, a2=-0.25, b2=0.5))
    assert result.info["fused"] == {"r1": 0.5}


@pytest.mark.parametrize("case", [
    {"a1": 1.0, "b1": 0.5, "a2": 1.0, "b2": -0.5},  # a shift, not a clip
    {"a2": -1.0, "b2": 0.4},  # b2 is not the ceiling: min(r, u) - 0.1
    {"a2": -2.0},  # a1 * a2 != 1
    {"extra_reader": True},  # the inner ReLU is read elsewhere: it must stay
])
def test_lookalikes_are_left_alone(case):
    graph = _clip_graph(**case)
    result = fuse_clipped_relu(graph)
    assert not result.changed and result.graph.nodes() == graph.nodes()
