import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import (
    IF,
    AvgPool2d,
    Conv2d,
    Flatten,
    Input,
    Linear,
    Output,
    Scale,
    Sum,
)
from spikeshield.compiler.passes.fold_scales import fold_scales
from spikeshield.runtime.executor import GraphExecutor


def _graph() -> Graph:
    g = torch.Generator().manual_seed(0)
    graph = Graph()
    graph.add("x", Input((2, 4, 4)))
    graph.add("conv", Conv2d(torch.randn(3, 2, 3, 3, generator=g), torch.randn(3, generator=g), padding=1), ["x"])
    graph.add("if", IF(torch.tensor([0.3, 0.5, 0.7])), ["conv"])
    graph.add("amp", Scale(torch.tensor([0.3, 0.5, 0.7])), ["if"])
    graph.add("pool", AvgPool2d(2, 2), ["amp"])
    graph.add("flat", Flatten(), ["pool"])
    graph.add("fc", Linear(torch.randn(5, 12, generator=g), torch.randn(5, generator=g)), ["flat"])
    graph.add("out", Output(), ["fc"])
    return graph.validate()


def test_per_channel_scale_folds_through_pool_and_flatten():
    graph = _graph()
    x = torch.rand(4, 2, 4, 4)
    result = fold_scales(graph)
    assert result.changed and "amp" not in result.graph
    assert result.graph.inputs("pool") == ["if"]
    torch.testing.assert_close(GraphExecutor(result.graph)(x, 6), GraphExecutor(graph)(x, 6),
                               rtol=0, atol=1e-5)


def test_scale_into_a_sum_or_with_bias_stays():
    graph = _graph()
    graph.add("s2", Scale(torch.tensor([2.0])), ["x"])
    graph.add("sum", Sum(), ["s2", "x"])
    graph.add("biased", Scale(torch.ones(1), torch.ones(1)), ["sum"])
    graph.add("conv2", Conv2d(torch.randn(1, 2, 1, 1)), ["biased"])
    graph.add("flat2", Flatten(), ["conv2"])
    graph.add("out2", Output(), ["flat2"])
    result = fold_scales(graph.validate()).graph
    assert "s2" in result and "biased" in result


def test_nothing_to_do():
    graph = _graph()
    once = fold_scales(graph).graph
    assert not fold_scales(once).changed
