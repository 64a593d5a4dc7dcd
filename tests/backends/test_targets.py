"""Hardware target profiles: every constraint is reported on a graph that breaks it, with the layer
at fault; repairable ones are repaired and the accuracy re-measured; the rest is one error."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spikeshield.backends.targets import TARGETS, TargetProfile, check_target, load_target
from spikeshield.compiler.driver.export import adapt_to_target
from spikeshield.compiler.ir.errors import ConfigError, UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Conv2d, Flatten, Input, Linear, Output, Scale, Sum
from spikeshield.runtime.data import Dataset


def small_snn(reset: str = "zero") -> Graph:
    """input(1,4,4) -> conv(2, bias) -> IF -> [skip: IF + conv2 -> IF] -> flatten -> fc(3) -> out."""
    gen = torch.Generator().manual_seed(0)
    g = Graph("small", {"timesteps": 4, "encoding": "direct"})
    g.add("input", Input((1, 4, 4)))
    g.add(
        "conv",
        Conv2d(torch.randn(2, 1, 3, 3, generator=gen), torch.full((2,), 0.1), padding=1),
        ["input"],
    )
    g.add("if1", IF(torch.tensor([0.4]), reset), ["conv"])
    g.add("conv2", Conv2d(torch.randn(2, 2, 3, 3, generator=gen), None, padding=1), ["if1"])
    g.add("if2", IF(torch.tensor([0.4]), reset), ["conv2"])
    g.add("skip", Scale(torch.tensor([1.0])), ["if1"])
    g.add("add", Sum(), ["if2", "skip"])
    g.add("flat", Flatten(), ["add"])
    g.add("fc", Linear(torch.randn(3, 32, generator=gen), torch.zeros(3)), ["flat"])
    g.add("output", Output(), ["fc"])
    return g.validate()


def rules(graph: Graph, profile: TargetProfile) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for v in check_target(graph, profile):
        out.setdefault(v.rule, set()).add(v.node)
    return out


def test_generic_accepts_every_exportable_graph():
    assert check_target(small_snn(), "generic") == []
    assert check_target(small_snn("subtract"), "generic") == []


@pytest.mark.parametrize(
    "field, value, rule, nodes",
    [
        ("weight_bits", 4, "weight_bits", {"conv", "conv2", "fc"}),
        ("bias", False, "bias", {"conv"}),  # fc's bias is all zeros: nothing to drop
        ("reset_modes", ("subtract",), "reset", {"if1", "if2"}),
        ("encodings", ("poisson",), "encoding", {"input"}),
        ("ops", ("input", "output", "conv2d", "flatten", "sum", "if", "scale"), "ops", {"fc"}),
        ("max_fan_in", 10, "max_fan_in", {"conv2", "fc"}),  # conv2: 2*3*3 = 18; conv: 9; fc: 32
        ("max_destinations", 1, "max_destinations", {"if1"}),  # if1 feeds conv2 and fc
        ("max_neurons_per_layer", 31, "max_neurons_per_layer", {"if1", "if2"}),
        ("max_neurons", 63, "max_neurons", {"small"}),
        ("max_layers", 2, "max_layers", {"small"}),
        ("max_inputs", 15, "max_inputs", {"input"}),
        ("max_outputs", 2, "max_outputs", {"output"}),
    ],
)
def test_each_constraint_names_the_layers_that_break_it(field, value, rule, nodes):
    profile = TargetProfile("test", "one constraint", **{field: value})
    found = rules(small_snn(), profile)
    assert found == {rule: nodes}


def test_fan_in_counts_only_existing_synapses():
    graph = small_snn()
    op = graph.op("conv2")  # 2*3*3 = 18 synapses into each neuron
    mask = torch.ones_like(op.weight)
    mask[:, 1] = 0  # prune the second input channel: 9 left
    graph.set_op("conv2", op.replace(weight=op.weight * mask, mask=mask))
    profile = TargetProfile("test", "fan-in", max_fan_in=10)
    assert "conv2" not in rules(graph.validate(), profile).get("max_fan_in", set())


def test_builtin_profiles_flag_what_their_chips_cannot_do():
    graph = small_snn()
    assert set(rules(graph, TARGETS["loihi2"])) == {"weight_bits"}
    speck = rules(graph, TARGETS["speck"])
    assert speck["ops"] == {"skip", "fc"} and "encoding" in speck
    xylo = rules(graph, TARGETS["xylo"])
    assert xylo["ops"] >= {"conv", "conv2"} and xylo["reset"] == {"if1", "if2"}


def test_repairs_run_and_the_accuracy_is_measured_before_and_after():
    graph = small_snn()
    profile = TargetProfile(
        "strict",
        "8-bit, no bias, subtract only",
        weight_bits=8,
        bias=False,
        reset_modes=("subtract",),
    )
    x = torch.randint(0, 256, (32, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    test = Dataset(
        x.to(torch.uint8), torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(4))
    )
    adapted, adaptation = adapt_to_target(graph, profile, test)
    assert check_target(adapted, profile) == []
    assert [p["name"] for p in adaptation.passes] == [
        "set_reset_mode",
        "drop_biases",
        "quantize_weights",
    ]
    assert all(adapted.op(n).reset == "subtract" for n in adapted.nodes_of(IF))
    assert adapted.op("conv").bias is None
    assert adaptation.samples == 32
    # the numbers are those of the two graphs on the same images, not copied from one another
    from spikeshield.runtime.evaluate import evaluate_graph
    from spikeshield.runtime.executor import GraphExecutor

    for g, reported in ((graph, adaptation.accuracy_before), (adapted, adaptation.accuracy_after)):
        assert evaluate_graph(GraphExecutor(g), test, 4).accuracy == reported
    assert graph.op("conv").bias is not None  # the input graph is untouched


def test_what_no_pass_can_repair_is_one_error_listing_every_violation():
    with pytest.raises(UnsupportedOpError) as err:
        adapt_to_target(small_snn(), "xylo")
    message = str(err.value)
    for node in ("conv", "conv2"):
        assert f"{node}:" in message
    assert "\n" not in message


def test_profiles_load_from_json_and_reject_unknown_fields(tmp_path):
    path = tmp_path / "chip.json"
    path.write_text(
        json.dumps({"name": "chip", "description": "x", "weight_bits": 4, "reset_modes": ["zero"]})
    )
    assert load_target(str(path)).weight_bits == 4
    path.write_text(json.dumps({"name": "chip", "description": "x", "weight_bitz": 4}))
    with pytest.raises(ConfigError, match="weight_bitz"):
        load_target(str(path))
    with pytest.raises(ConfigError, match="loihi2"):
        load_target("loihi3")


def test_neuron_limits_count_whole_layers():
    graph = small_snn()
    neurons = sum(math.prod(graph.shape(n)) for n in graph.nodes_of(IF))
    assert neurons == 64
    assert check_target(graph, TargetProfile("t", "", max_neurons=64)) == []
