"""NIR export: every zoo network in both reset modes means exactly what the runtime computes,
checked against an independent NIR simulator and through the NIR frontend."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from spikeshield.backends.nir_backend import to_nir, write_nir
from spikeshield.compiler.ir.errors import UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, AvgPool2d, Flatten, Input, Linear, Output, Scale
from spikeshield.frontends.nir_frontend import from_nir
from spikeshield.runtime.executor import GraphExecutor
from tests.backends.conftest import TIMESTEPS, ZOO, assert_same_spikes, zoo_ann, zoo_snn
from tests.backends.nir_reference import NirReference
from tests.conftest import single_if_graph


def run_runtime(graph: Graph, x: torch.Tensor, timesteps: int = TIMESTEPS):
    """Logits, spike counts per sample and per neuron (flattened) of every IF layer."""
    executor = GraphExecutor(graph)
    with torch.no_grad():
        logits = executor(x, timesteps, record=True)
    per_sample = {k: v.numpy() for k, v in executor.spike_counts.items()}
    per_neuron = {k: v.flatten(1).numpy() for k, v in executor.neuron_spike_counts.items()}
    return logits, per_sample, per_neuron


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("arch", list(ZOO))
def test_zoo_round_trip_matches_runtime(arch, reset, tmp_path):
    snn, x = zoo_snn(arch, reset)
    logits, counts, neurons = run_runtime(snn, x)
    assert all(c.sum() > 0 for c in counts.values()), "some layer never spikes: the test is vacuous"
    path = write_nir(snn, tmp_path / "snn.nir")
    read = nir.read(path, type_check=True)

    # 1. An independent step-by-step NIR simulator agrees neuron by neuron.
    with torch.no_grad():
        outputs, ref_counts, margins = NirReference(read).run(x, TIMESTEPS)
    ref_logits = next(iter(outputs.values())) / TIMESTEPS  # integrator state / T
    assert torch.equal(ref_logits.argmax(1), logits.argmax(1))
    assert (ref_logits - logits).abs().max() < 1e-4
    for name in snn.nodes_of(IF):
        nir_node = name + ("__threshold" if reset == "subtract" else "")
        assert_same_spikes(
            neurons[name],
            ref_counts[nir_node].flatten(1).numpy(),
            margins[nir_node].flatten(1).numpy(),
            name,
        )

    # 2. The NIR frontend reads it back into a graph the runtime runs identically.
    back = from_nir(path)
    back_logits, back_counts, _ = run_runtime(back, x)
    assert torch.equal(back_logits.argmax(1), logits.argmax(1))
    assert (back_logits - logits).abs().max() < 1e-4
    assert back_counts.keys() == counts.keys()
    for name in counts:
        assert np.array_equal(back_counts[name], counts[name]), name
    assert back.meta["timesteps"] == TIMESTEPS


def test_subtract_reset_is_an_integrator_threshold_and_negative_feedback():
    graph = single_if_graph(threshold=0.7, reset="subtract")
    graph.meta["timesteps"] = 5
    g = to_nir(graph)
    assert isinstance(g.nodes["if"], nir.I) and np.all(g.nodes["if"].r == 1)
    assert isinstance(g.nodes["if__threshold"], nir.Threshold)
    assert np.allclose(g.nodes["if__threshold"].threshold, 0.7)
    assert np.allclose(g.nodes["if__reset"].scale, -0.7)
    assert ("if__reset", "if") in g.edges and ("if__threshold", "if__reset") in g.edges
    # Hand-stepped: input 0.5 per step, theta 0.7, subtract: v = .5, 1.0*, .8*, .6, 1.1* -> 3 spikes.
    outputs, counts, _ = NirReference(g).run(torch.tensor([[0.5]]), 5)
    assert counts["if__threshold"].item() == 3
    assert outputs["output"].item() == pytest.approx(3.0)  # integrator holds the spike sum
    logits = GraphExecutor(graph)(torch.tensor([[0.5]]), 5)
    assert logits.item() == pytest.approx(3 / 5)


def test_zero_reset_is_a_plain_if_with_full_shape_float32_parameters():
    snn, _ = zoo_snn("lenet", "zero")
    g = to_nir(snn)
    neurons = [n for n in g.nodes.values() if isinstance(n, nir.IF)]
    assert len(neurons) == len(snn.nodes_of(IF))
    for name in snn.nodes_of(IF):
        node = g.nodes[name]
        assert node.v_threshold.shape == snn.shape(name) and node.v_threshold.dtype == np.float32
        assert np.all(node.r == 1) and np.all(node.v_reset == 0)
    assert all(isinstance(n, nir.Affine) for k, n in g.nodes.items() if k.startswith("linear"))
    flattens = [n for n in g.nodes.values() if isinstance(n, nir.Flatten)]
    assert flattens and all(f.start_dim == 0 for f in flattens)
    convs = [n for n in g.nodes.values() if isinstance(n, nir.Conv2d)]
    assert convs and all(c.input_shape is not None for c in convs)


def test_metadata_records_how_to_run_the_graph(tmp_path):
    snn, _ = zoo_snn("lenet", "subtract")
    meta = nir.read(write_nir(snn, tmp_path / "m.nir")).metadata
    assert int(meta["timesteps"]) == TIMESTEPS and float(meta["dt"]) == 1.0
    assert meta["reset"] == "subtract" and meta["encoding"] == "direct"
    assert str(meta["generator"]).startswith("spikeshield ")


def test_padded_average_pooling_becomes_sum_pooling_and_a_scale(tmp_path):
    graph = Graph("pool")
    graph.add("input", Input((2, 5, 5)))
    graph.add("if", IF(torch.tensor([0.3])), ["input"])
    graph.add("pool", AvgPool2d(3, 2, 1, count_include_pad=True), ["if"])
    graph.add("flat", Flatten(), ["pool"])
    graph.add(
        "fc", Linear(torch.randn(3, 18, generator=torch.Generator().manual_seed(0))), ["flat"]
    )
    graph.add("output", Output(), ["fc"])
    graph.validate().meta["timesteps"] = 4
    g = to_nir(graph)
    assert isinstance(g.nodes["pool"], nir.SumPool2d)
    assert np.allclose(g.nodes["pool__divide"].scale, 1 / 9)
    assert isinstance(g.nodes["fc"], nir.Linear)  # no bias: plain Linear
    x = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    outputs, _, _ = NirReference(g).run(x, 4)
    expected = GraphExecutor(graph)(x, 4)
    assert (outputs["output"] / 4 - expected).abs().max() < 1e-5
    back = from_nir(write_nir(graph, tmp_path / "p.nir"))
    assert (GraphExecutor(back)(x, 4) - expected).abs().max() < 1e-5


def test_scale_with_bias_is_exported_exactly():
    graph = Graph("norm")
    graph.add("input", Input((3, 4, 4)))
    graph.add(
        "norm", Scale(torch.tensor([2.0, 3.0, 4.0]), torch.tensor([-1.0, 0.5, 0.25])), ["input"]
    )
    graph.add("if", IF(torch.tensor([1.0])), ["norm"])
    graph.add("flat", Flatten(), ["if"])
    graph.add("fc", Linear(torch.ones(2, 48), torch.zeros(2)), ["flat"])
    graph.add("output", Output(), ["fc"])
    graph.validate()
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    outputs, _, _ = NirReference(to_nir(graph)).run(x, 3)
    assert torch.equal(outputs["output"] / 3, GraphExecutor(graph)(x, 3))


def test_ann_and_batchnorm_are_refused_with_the_fix():
    ann, _ = zoo_ann("lenet")
    with pytest.raises(UnsupportedOpError) as err:
        to_nir(ann)
    message = str(err.value)
    assert "relu" in message and "spikeshield compile" in message
    assert "batchnorm" in message and "fold_batchnorm" in message
    assert "\n" not in message


def test_an_initial_potential_moves_the_loops_threshold_and_reads_back():
    # v_init = 0.5 of theta 0.8: the integrator holds v - 0.4 and fires above 0.8 - 0.4.
    graph = single_if_graph(threshold=0.8, reset="subtract")
    graph.set_op("if", graph.op("if").replace(v_init=0.5))
    graph.meta["timesteps"] = 5
    g = to_nir(graph)
    assert np.allclose(g.nodes["if__threshold"].threshold, 0.4)
    assert np.allclose(g.nodes["if__reset"].scale, -0.8)
    # Hand-stepped, input 0.3: v = .7, 1.0* -> .2, .5, .8 (strict: no), 1.1* -> 2 spikes, where a
    # membrane starting at zero reaches .3, .6, .9*, .4, .7: 1 spike.
    _, counts, _ = NirReference(g).run(torch.tensor([[0.3]]), 5)
    assert counts["if__threshold"].item() == 2
    assert GraphExecutor(graph)(torch.tensor([[0.3]]), 5).item() == pytest.approx(2 / 5)
    back = from_nir(g)
    (name,) = back.nodes_of(IF)
    assert back.op(name).v_init == pytest.approx(0.5) and back.op(name).reset == "subtract"
    assert torch.allclose(back.op(name).threshold, torch.tensor([0.8]))


def test_an_initial_potential_with_reset_to_zero_is_refused_in_one_line():
    graph = single_if_graph(threshold=0.8, reset="zero")
    graph.set_op("if", graph.op("if").replace(v_init=0.5))
    with pytest.raises(UnsupportedOpError) as err:
        to_nir(graph)
    message = str(err.value)
    assert "initial potential" in message and "--reset subtract" in message and "\n" not in message
