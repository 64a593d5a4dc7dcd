import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError, PassError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Input, Linear, Output, Scale
from spikeshield.compiler.passes.calibrate_thresholds import (
    calibrate_thresholds,
    default_threshold_scale,
)


def _graph(channels: int = 1) -> Graph:
    graph = Graph()
    graph.add("x", Input((2,)))
    graph.add("fc", Linear(torch.eye(2), None), ["x"])
    graph.add("if", IF(torch.ones(channels)), ["fc"])
    graph.add("fc2", Linear(torch.ones(1, 2), None), ["if"])
    graph.add("out", Output(), ["fc2"])
    return graph.validate()


def test_max_mode_gives_scale_times_max_and_inserts_amplitude():
    data = [torch.tensor([[1.0, 2.0], [3.0, 0.5]]), torch.tensor([[4.0, -1.0]])]
    result = calibrate_thresholds(_graph(), data, timesteps=4, mode="max", scale=0.5)
    graph = result.graph
    assert torch.equal(graph.op("if").threshold, torch.tensor([2.0]))  # 0.5 * max(4.0)
    amp = graph.consumers("if")[0]
    assert isinstance(graph.op(amp), Scale) and torch.equal(graph.op(amp).scale, torch.tensor([2.0]))
    assert graph.meta["calibrated"] and graph.meta["calibration"]["batches"] == 2


def test_percentile_per_channel_is_the_kth_value_of_each_channel():
    x = torch.stack([torch.arange(1.0, 101.0), 10 * torch.arange(1.0, 101.0)], dim=1)
    result = calibrate_thresholds(_graph(channels=2), [x], timesteps=1, percentile=90, scale=1.0)
    assert torch.equal(result.graph.op("if").threshold, torch.tensor([90.0, 900.0]))


def test_dead_layer_gets_a_positive_fallback_threshold():
    data = [-torch.rand(8, 2)]
    threshold = calibrate_thresholds(_graph(), data, timesteps=2, mode="max").graph.op("if").threshold
    assert float(threshold) > 0


def test_default_scale_grows_with_timesteps():
    assert default_threshold_scale(4) == pytest.approx(0.7)
    assert default_threshold_scale(1) == 0.3 and default_threshold_scale(64) == 0.9


def test_errors():
    with pytest.raises(ConfigError, match="percentile"):
        calibrate_thresholds(_graph(), [torch.rand(2, 2)], percentile=0)
    with pytest.raises(ConfigError, match="at least one batch"):
        calibrate_thresholds(_graph(), [])
    done = calibrate_thresholds(_graph(), [torch.rand(2, 2)]).graph
    with pytest.raises(PassError, match="already calibrated"):
        calibrate_thresholds(done, [torch.rand(2, 2)])


def test_nothing_to_do_without_neurons():
    graph = Graph()
    graph.add("x", Input((2,)))
    graph.add("out", Output(), ["x"])
    assert not calibrate_thresholds(graph.validate(), [torch.rand(2, 2)]).changed
    assert IF not in {type(graph.op(n)) for n in graph.nodes()}
