"""The passes that adapt a graph to a hardware target: quantize_weights, drop_biases,
set_reset_mode, set_initial_potential, set_encoding."""

from __future__ import annotations

import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.ops import IF, Conv2d, Linear
from spikeshield.compiler.passes.manager import PassManager
from tests.backends.test_targets import small_snn


def run(graph, name, **params):
    return PassManager().run(graph, [(name, params)])


def test_quantize_weights_puts_every_layer_on_a_signed_grid():
    graph = small_snn()
    out = run(graph, "quantize_weights", bits=4)
    steps = out.meta["quantization"]["steps"]
    assert set(steps) == {"conv", "conv2", "fc"}
    for name in steps:
        before, after = graph.op(name).weight, out.op(name).weight
        integers = after / steps[name]
        assert torch.allclose(integers, integers.round(), atol=1e-4)
        assert integers.abs().max().round() == 7  # the largest weight maps to 2**(4-1) - 1
        assert (after - before).abs().max() <= steps[name] / 2 + 1e-6
    assert out.op("conv").bias.equal(graph.op("conv").bias)  # biases stay float


def test_quantize_weights_twice_changes_nothing():
    once = run(small_snn(), "quantize_weights", bits=8)
    twice = run(once, "quantize_weights", bits=8)
    for name in once.nodes_of(Conv2d, Linear):
        assert torch.allclose(once.op(name).weight, twice.op(name).weight, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 17, 4.5])
def test_quantize_weights_rejects_bad_bit_widths(bits):
    with pytest.raises(ConfigError, match="2 to 16"):
        run(small_snn(), "quantize_weights", bits=bits)


def test_drop_biases_removes_every_bias_and_nothing_else():
    graph = small_snn()
    out = run(graph, "drop_biases")
    assert all(out.op(n).bias is None for n in out.nodes_of(Conv2d, Linear))
    assert out.op("conv").weight.equal(graph.op("conv").weight)
    again = PassManager()
    again.run(out, [("drop_biases", {})])
    assert again.records[0].changed is False


def test_set_reset_mode_switches_every_neuron():
    out = run(small_snn("zero"), "set_reset_mode", reset="subtract")
    assert {out.op(n).reset for n in out.nodes_of(IF)} == {"subtract"}
    assert out.meta["reset"] == "subtract"
    with pytest.raises(ConfigError, match="reset"):
        run(out, "set_reset_mode", reset="hard")


def test_set_initial_potential_sets_every_neuron_and_speck_asks_for_it():
    from spikeshield.backends.targets import check_target

    graph = run(small_snn("subtract"), "set_initial_potential", v_init=0.5)
    assert {graph.op(n).v_init for n in graph.nodes_of(IF)} == {0.5}
    assert graph.op("conv").weight.equal(small_snn("subtract").op("conv").weight)
    # Speck's neurons start at zero: one repairable violation per layer, repaired by the pass.
    wanted = [v for v in check_target(graph, "speck") if v.rule == "initial_potential"]
    assert len(wanted) == len(graph.nodes_of(IF))
    assert all(v.repair == ("set_initial_potential", {"v_init": 0.0}) for v in wanted)
    assert check_target(graph, "loihi2") == check_target(small_snn("subtract"), "loihi2")
    back = run(graph, "set_initial_potential", v_init=0.0)
    assert {back.op(n).v_init for n in back.nodes_of(IF)} == {0.0}
    with pytest.raises(ConfigError, match="v_init"):
        run(graph, "set_initial_potential", v_init=1.0)


def test_set_encoding_changes_only_the_metadata():
    graph = small_snn()
    out = run(graph, "set_encoding", encoding="poisson")
    assert out.meta["encoding"] == "poisson" and graph.meta["encoding"] == "direct"
    with pytest.raises(ConfigError, match="encoding"):
        run(graph, "set_encoding", encoding="latency")
