import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import BatchNorm, Conv2d, Input, Output, ReLU, Scale
from spikeshield.compiler.passes.fold_batchnorm import fold_batchnorm
from spikeshield.runtime.executor import GraphExecutor
from tests.conftest import tiny_conv_graph


def _bn_graph(shared_conv: bool = False) -> Graph:
    g = torch.Generator().manual_seed(1)
    graph = Graph()
    graph.add("x", Input((2, 5, 5)))
    graph.add("conv", Conv2d(torch.randn(3, 2, 3, 3, generator=g), None, padding=1), ["x"])
    graph.add("bn", BatchNorm(torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.2,
                              torch.randn(3, generator=g), torch.randn(3, generator=g)), ["conv"])
    graph.add("relu", ReLU(), ["bn"])
    graph.add("out", Output(), ["relu"] + (["conv"] if shared_conv else []))
    return graph.validate()


@pytest.mark.parametrize("mode", ["fold", "keep"])
def test_function_is_preserved(mode):
    graph = _bn_graph()
    x = torch.rand(4, 2, 5, 5)
    result = fold_batchnorm(graph, mode=mode)
    assert result.changed and not result.graph.nodes_of(BatchNorm)
    torch.testing.assert_close(GraphExecutor(result.graph)(x), GraphExecutor(graph)(x),
                               rtol=0, atol=1e-5)


def test_fold_merges_into_conv_and_adds_bias():
    result = fold_batchnorm(_bn_graph(), mode="fold").graph
    assert "bn" not in result and result.op("conv").bias is not None
    assert result.inputs("relu") == ["conv"]


def test_keep_turns_bn_into_scale():
    result = fold_batchnorm(_bn_graph(), mode="keep").graph
    assert isinstance(result.op("bn"), Scale)


def test_conv_with_other_consumers_is_not_folded():
    result = fold_batchnorm(_bn_graph(shared_conv=True), mode="fold").graph
    assert isinstance(result.op("bn"), Scale) and result.op("conv").bias is None


def test_nothing_to_do_and_input_untouched():
    graph = tiny_conv_graph()
    result = fold_batchnorm(graph)
    assert not result.changed and result.graph.nodes() == graph.nodes()
    original = _bn_graph()
    fold_batchnorm(original)
    assert "bn" in original  # the pass never mutates its input


def test_bad_mode():
    with pytest.raises(ConfigError, match="fold, keep|\\('fold', 'keep'\\)"):
        fold_batchnorm(tiny_conv_graph(), mode="melt")
