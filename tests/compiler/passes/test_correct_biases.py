import pytest
import torch

from spikeshield.compiler.ir.errors import PassError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Input, Linear, Output, Sum
from spikeshield.compiler.passes.calibrate_thresholds import calibrate_thresholds
from spikeshield.compiler.passes.correct_biases import correct_biases
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode


def _graph() -> Graph:
    """x (2) -> fc (bias 0) -> IF (2 neurons) -> fc2 -> IF -> out."""
    graph = Graph()
    graph.add("x", Input((2,)))
    graph.add("fc", Linear(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.zeros(2)), ["x"])
    graph.add("if", IF(torch.ones(1)), ["fc"])
    graph.add("fc2", Linear(torch.tensor([[1.0, 1.0]]), torch.zeros(1)), ["if"])
    graph.add("if2", IF(torch.ones(1)), ["fc2"])
    graph.add("out", Output(), ["if2"])
    return graph.validate()


def _calibrated(data, timesteps=3) -> Graph:
    return calibrate_thresholds(_graph(), data, timesteps=timesteps, mode="max", scale=1.0).graph


def test_first_layer_correction_is_the_mean_error_of_each_channel_by_hand():
    # Threshold max = 1.0 (calibrated on these inputs); T = 3, membrane from zero: a constant
    # current a fires floor(3a) times, so the layer sends floor(3a)/3 where the ANN sends a.
    x = torch.tensor([[0.5, 0.9], [1.0, 0.2]])
    graph = _calibrated([x])
    assert torch.equal(graph.op("if").threshold, torch.tensor([1.0]))
    result = correct_biases(graph, [x], timesteps=3)
    # Reset to zero, strict threshold. Channel 0: currents 0.5 (v .5, 1.0, 1.5*) and 1.0 (v 1.0,
    # 2.0*, 1.0) fire once each; channel 1: 0.7 (.7, 1.4*, .7) and 0.6 (.6, 1.2*, .6) too.
    ann = torch.tensor([(0.5 + 1.0) / 2, (0.7 + 0.6) / 2])
    snn = torch.tensor([1 / 3, 1 / 3])
    torch.testing.assert_close(result.graph.op("fc").bias, ann - snn, rtol=0, atol=1e-6)
    assert result.changed and result.graph.meta["bias_correction"]["corrected"] == 2
    assert torch.equal(graph.op("fc").bias, torch.zeros(2))  # the input graph is untouched


def test_correction_brings_every_layers_mean_output_to_the_anns():
    torch.manual_seed(0)
    data = [torch.rand(64, 2)]
    graph = _calibrated(data, timesteps=4)
    corrected = correct_biases(graph, data, timesteps=4).graph

    def mean_gap(g: Graph, layer: str) -> float:
        theta = g.op(layer).threshold
        reference = GraphExecutor(graph).eval()  # the ANN is the uncorrected graph's proxy
        executor = GraphExecutor(g).eval()
        with torch.no_grad(), reference.using(GradientMode("ann_proxy")):
            ann = torch.minimum(torch.relu(reference(data[0], stop_at=layer)), theta).mean()
            executor(data[0], 4, record=True)
            snn = (executor.neuron_spike_counts[layer] / 4 * theta).mean()
        return float((ann - snn).abs())

    for layer in ("if", "if2"):
        assert mean_gap(corrected, layer) < 0.25 * mean_gap(graph, layer), layer


def test_a_layer_whose_input_others_also_read_is_skipped():
    graph = Graph()
    graph.add("x", Input((2,)))
    graph.add("fc", Linear(torch.eye(2), torch.zeros(2)), ["x"])
    graph.add("if", IF(torch.ones(1)), ["fc"])
    graph.add("skip", Sum(), ["fc", "if"])
    graph.add("out", Output(), ["skip"])
    data = [torch.rand(8, 2)]
    calibrated = calibrate_thresholds(graph.validate(), data, timesteps=2).graph
    result = correct_biases(calibrated, data, timesteps=2)
    assert result.info["skipped"] == ["if"] and not result.changed
    assert torch.equal(result.graph.op("fc").bias, torch.zeros(2))


def test_an_uncalibrated_graph_is_refused():
    with pytest.raises(PassError, match="calibrate_thresholds"):
        correct_biases(_graph(), [torch.rand(2, 2)], timesteps=2)


def test_each_layer_is_corrected_for_the_corrected_layers_before_it():
    # The second layer's correction is its mean error with the first layer already corrected:
    # undo it alone and measure that error by hand.
    torch.manual_seed(1)
    data = [torch.rand(32, 2)]
    graph = _calibrated(data, timesteps=3)
    corrected = correct_biases(graph, data, timesteps=3).graph
    delta = corrected.op("fc2").bias - graph.op("fc2").bias
    partly = corrected.copy()
    partly.set_op("fc2", partly.op("fc2").replace(bias=graph.op("fc2").bias.clone()))
    theta = graph.op("if2").threshold
    reference, executor = GraphExecutor(graph).eval(), GraphExecutor(partly).eval()
    with torch.no_grad():
        with reference.using(GradientMode("ann_proxy")):
            ann = torch.minimum(torch.relu(reference(data[0], stop_at="if2")), theta).mean()
        executor(data[0], 3, record=True)
        snn = (executor.neuron_spike_counts["if2"] / 3 * theta).mean()
    assert abs(float(delta)) > 0.05
    assert float(delta) == pytest.approx(float(ann - snn), abs=1e-5)
