import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.ops import IF, ReLU
from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
from tests.conftest import single_if_graph, tiny_conv_graph


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_relu_becomes_if_per_layer(reset):
    result = convert_relu_to_if(tiny_conv_graph(), reset=reset)
    assert result.changed and not result.graph.nodes_of(ReLU)
    op = result.graph.op("relu")
    assert isinstance(op, IF) and op.reset == reset and torch.equal(op.threshold, torch.ones(1))
    assert result.graph.meta["reset"] == reset


def test_per_channel_threshold_has_one_entry_per_channel():
    op = convert_relu_to_if(tiny_conv_graph(), threshold="channel").graph.op("relu")
    assert op.threshold.shape == (3,)


def test_nothing_to_do():
    assert not convert_relu_to_if(single_if_graph()).changed


def test_bad_options():
    with pytest.raises(ConfigError, match="reset"):
        convert_relu_to_if(tiny_conv_graph(), reset="half")
    with pytest.raises(ConfigError, match="threshold mode"):
        convert_relu_to_if(tiny_conv_graph(), threshold="neuron")
