import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError, PassError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Input, Linear, Output, ReLU, Scale
from spikeshield.compiler.passes.calibrate_thresholds import (
    calibrate_thresholds,
    default_threshold_scale,
)
from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if


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
    # A membrane starting above zero rounds spike counts: the percentile is the threshold.
    assert default_threshold_scale(4, v_init=0.5) == 1.0


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


@pytest.mark.parametrize("percentile", [0.5, 50.0, 99.7, 100.0])
def test_percentile_statistic_is_the_exact_kth_value(percentile):
    from spikeshield.compiler.passes.calibrate_thresholds import _statistic

    current = torch.randn(4, 3, 7, 5, generator=torch.Generator().manual_seed(1))  # (N, C, H, W)
    for per_channel in (False, True):
        got = _statistic(current, 3, per_channel, "percentile", percentile)
        values = current.movedim(1, 0).reshape(3, -1) if per_channel else current.reshape(1, -1)
        k = max(1, min(values.shape[1], int(round(percentile / 100.0 * values.shape[1]))))
        assert torch.equal(got, values.kthvalue(k, dim=1).values)


@pytest.mark.parametrize("percentile", [0.2, 99.7, 99.99])
def test_percentile_of_millions_of_currents_is_exact(percentile):
    """Past the sampled bound's size the statistic is still the exact k-th value of all values
    (ties included: currents of spiking layers are often sums of a few weights)."""
    from spikeshield.compiler.passes.calibrate_thresholds import _statistic

    g = torch.Generator().manual_seed(2)
    current = torch.randint(-50, 200, (4, 6, 3, 150, 150), generator=g).float() / 7  # 1.6M values
    current[:, :, 1] = torch.randn(4, 6, 150, 150, generator=g).exp()  # a heavy-tailed channel
    for per_channel in (False, True):
        got = _statistic(current, 3, per_channel, "percentile", percentile)
        values = current.movedim(2, 0).reshape(3, -1) if per_channel else current.reshape(1, -1)
        k = max(1, min(values.shape[1], int(round(percentile / 100.0 * values.shape[1]))))
        assert torch.equal(got, values.kthvalue(k, dim=1).values)


def test_percentile_is_exact_when_the_sample_misplaces_the_bound(monkeypatch):
    """A sample that sees only the largest value bounds too high; the row is then selected in full."""
    from spikeshield.compiler.passes import calibrate_thresholds as module

    current = torch.rand(1 << 21, generator=torch.Generator().manual_seed(0))
    current[0] = 10.0
    monkeypatch.setattr(module.torch, "randint",
                        lambda high, size, generator=None: torch.zeros(size, dtype=torch.long))
    got = module._statistic(current.view(1, 1, -1), 1, False, "percentile", 99.0)
    k = int(round(0.99 * current.numel()))
    assert torch.equal(got, current.view(1, -1).kthvalue(k, dim=1).values)


@pytest.mark.parametrize("fold_budget", [None, 1, 2100])
def test_one_pass_calibration_matches_rerunning_the_network_for_every_layer(fold_budget,
                                                                          monkeypatch):
    """The frontier gives each layer exactly the current a fresh run up to it would, also when
    each batch of 5 runs in pieces of samples (of 1, or of 2, 2 and 1)."""
    from spikeshield.runtime import executor as executor_module

    if fold_budget is not None:
        monkeypatch.setattr(executor_module, "FOLD_BUDGET", fold_budget)
    from spikeshield.compiler.ir.ops import IF, Scale
    from spikeshield.compiler.passes.calibrate_thresholds import _statistic, default_threshold_scale
    from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
    from spikeshield.compiler.passes.fold_batchnorm import fold_batchnorm
    from spikeshield.frontends.torch_module import from_module
    from spikeshield.frontends.zoo import build_model
    from spikeshield.runtime.executor import GraphExecutor

    torch.manual_seed(3)  # a residual net: skips keep earlier layers' spikes alive in the frontier
    ann = from_module(build_model("resnet20", (1, 8, 8), 10, width=0.25), (1, 8, 8))
    snn = convert_relu_to_if(fold_batchnorm(ann).graph).graph
    assert len(snn.nodes_of(IF)) > 10
    batches = [torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    result = calibrate_thresholds(snn, batches, timesteps=4).graph
    reference = snn.copy()  # the old way: one fresh run up to each layer, then install it
    for name in reference.nodes_of(IF):
        executor = GraphExecutor(reference).eval()
        with torch.no_grad():
            stats = [_statistic(executor(x, 4, stop_at=name), 3, False, "percentile", 99.7)
                     for x in batches]
        threshold = torch.stack(stats).max(dim=0).values * default_threshold_scale(4)
        reference.set_op(name, reference.op(name).replace(threshold=threshold))
        reference.insert_after(name, reference.unique_name(f"{name}_amplitude"),
                               Scale(scale=threshold.clone()))
    for name in result.nodes_of(IF):
        assert torch.equal(result.op(name).threshold, reference.op(name).threshold)
    assert result.nodes() == reference.nodes()


def test_frontier_pieces_follow_the_fold_budget(monkeypatch):
    from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
    from spikeshield.frontends.torch_module import from_module
    from spikeshield.frontends.zoo import build_model
    from spikeshield.runtime import executor as executor_module

    snn = convert_relu_to_if(from_module(build_model("lenet", (1, 12, 12), 10), (1, 12, 12))).graph
    executor = executor_module.GraphExecutor(snn)
    executor.fold_budget = 4 * executor._widest * 2  # two samples of 4 steps
    frontier = executor.frontier([torch.rand(5, 1, 12, 12)], 4)
    assert [len(p) for p in frontier.pieces[0]] == [2, 2, 1]


@pytest.mark.parametrize("ceilings", [{"relu": "6"}, {"relu": -1.0}, {"nowhere": 1.0}, [1.0]])
def test_ceilings_that_no_conversion_writes_are_refused(ceilings):
    graph = Graph("g", {"ceilings": ceilings})
    graph.add("x", Input((2,)))
    graph.add("relu", IF(threshold=torch.ones(1)), ["x"])
    graph.add("out", Output(), ["relu"])
    with pytest.raises(PassError, match="ceilings"):
        calibrate_thresholds(graph.validate(), [torch.rand(2, 2)])


def test_a_clipped_relu_ceiling_caps_the_calibrated_threshold():
    graph = Graph("g")
    graph.add("x", Input((3,)))
    graph.add("relu", ReLU(ceiling=0.5), ["x"])
    graph.add("out", Output(), ["relu"])
    snn = convert_relu_to_if(graph.validate()).graph
    assert snn.meta["ceilings"] == {"relu": 0.5}
    x = torch.tensor([[0.2, 0.3, 0.4], [0.1, 2.0, 0.0]])
    capped = calibrate_thresholds(snn, [x], timesteps=2, mode="max", scale=0.8).graph
    assert capped.op("relu").threshold.tolist() == pytest.approx([0.4])  # 0.8 * min(2.0, 0.5)
    below = calibrate_thresholds(snn, [x / 10], timesteps=2, mode="max", scale=0.8).graph
    assert below.op("relu").threshold.tolist() == pytest.approx([0.16])  # 0.8 * 0.2: no cap


def test_threshold_search_picks_the_factor_whose_layer_error_is_smallest():
    # Two channels of very different spread; T = 3. Each channel's threshold must be the fraction
    # of its percentile threshold with the smallest squared error between the layer's spiking
    # output (rate x threshold, as the executor runs it) and the ReLU of its input.
    from spikeshield.compiler.passes.calibrate_thresholds import SEARCH_FACTORS
    from spikeshield.runtime.executor import GraphExecutor

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(400, 1, generator=g), torch.rand(400, 1, generator=g) ** 4 * 5], 1)
    graph = _graph(channels=2)
    graph.set_op("if", graph.op("if").replace(reset="subtract", v_init=0.5))
    plain = calibrate_thresholds(graph, [x], timesteps=3, scale=1.0).graph
    searched = calibrate_thresholds(graph, [x], timesteps=3, scale=1.0, search=True).graph
    base, chosen = plain.op("if").threshold, searched.op("if").threshold
    assert searched.meta["calibration"]["search"] is True

    def errors(theta: torch.Tensor) -> torch.Tensor:
        trial = plain.copy()
        trial.set_op("if", trial.op("if").replace(threshold=theta))
        executor = GraphExecutor(trial)
        with torch.no_grad():
            executor(x, 3, record=True)
        sent = executor.neuron_spike_counts["if"] / 3 * theta
        return (sent - torch.relu(x)).square().sum(dim=0)

    table = torch.stack([errors(base * f) for f in SEARCH_FACTORS])  # (factors, channels)
    best = torch.tensor(SEARCH_FACTORS)[table.argmin(dim=0)]
    torch.testing.assert_close(chosen, base * best)
    assert not torch.equal(chosen, base)  # the search moved at least one channel


@pytest.mark.parametrize("reset,v_init", [("zero", 0.0), ("subtract", 0.5)])
def test_the_fit_chooses_the_threshold_shift_and_amplitude_nearest_the_ann(reset, v_init):
    # Brute force, independently of the pass: for every threshold fraction and bias shift of the
    # grid, run the layer through the executor, take the least-squares amplitude per channel and
    # its residual against the ANN's activation relu(fc(x)); the fit must pick the minimum, install
    # that threshold, that amplitude (the Scale after the neuron) and shift fc's bias by it.
    from spikeshield.compiler.passes.calibrate_thresholds import FIT_SHIFTS, SEARCH_FACTORS
    from spikeshield.runtime.executor import GraphExecutor

    T = 3
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(300, 1, generator=g), torch.rand(300, 1, generator=g) ** 4 * 5], 1)
    graph = _graph(channels=2)
    graph.set_op("fc", graph.op("fc").replace(bias=torch.tensor([0.1, -0.2])))
    graph.set_op("if", graph.op("if").replace(reset=reset, v_init=v_init))
    base = calibrate_thresholds(graph, [x], timesteps=T, scale=1.0).graph.op("if").threshold
    fitted = calibrate_thresholds(graph, [x], timesteps=T, scale=1.0, search=True, fit=True)
    result = fitted.graph
    assert result.meta["calibration"]["fit"] is True
    target = torch.relu(x @ torch.eye(2).T + torch.tensor([0.1, -0.2]))

    def trial(factor: float, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        trial = graph.copy()
        theta = base * factor
        trial.set_op("if", trial.op("if").replace(threshold=theta))
        trial.set_op("fc", trial.op("fc").replace(bias=trial.op("fc").bias + shift * theta / T))
        executor = GraphExecutor(trial)
        with torch.no_grad():
            executor(x, T, record=True)
        rate = executor.neuron_spike_counts["if"].double() / T
        amplitude = (rate * target).sum(0) / (rate * rate).sum(0)
        return amplitude, (amplitude * rate - target).square().sum(0)

    grid = [(f, s) for f in SEARCH_FACTORS for s in FIT_SHIFTS]
    trials = [trial(f, s) for f, s in grid]
    table = torch.stack([err for _, err in trials])  # (grid, channels)
    best = table.argmin(dim=0)
    for c in range(2):
        factor, shift = grid[best[c]]
        theta = float(base[c] * factor)
        assert float(result.op("if").threshold[c]) == pytest.approx(theta, rel=1e-6)
        (amp,) = result.consumers("if")
        assert float(result.op(amp).scale[c]) == pytest.approx(float(trials[best[c]][0][c]),
                                                                rel=1e-5)
        bias = [0.1, -0.2][c] + shift * theta / T
        assert float(result.op("fc").bias[c]) == pytest.approx(bias, rel=1e-6, abs=1e-7)
    # The fit's residual is below both the plain calibration's and the search's.
    assert float(table.min(dim=0).values.sum()) < float(table[grid.index((1.0, 0.0))].sum())


@pytest.mark.parametrize("reset,v_init", [("zero", 0.0), ("subtract", 0.5)])
@pytest.mark.parametrize("shape,per_channel", [((4, 6, 3, 5, 5), True), ((4, 6, 3, 5, 5), False),
                                               ((6, 3, 5, 5), True), ((4, 6, 40), True)])
def test_the_fused_grid_counts_the_spikes_of_one_scan_per_grid_point(monkeypatch, reset, v_init,
                                                                     shape, per_channel):
    # The whole fit grid in one pass over the currents (runtime.neurons.grid_rate_sums) against the
    # PyTorch scans it replaces, one per (factor, shift): the same float64 sums (the same spikes).
    from spikeshield.compiler.passes.calibrate_thresholds import (
        FIT_SHIFTS,
        SEARCH_FACTORS,
        _layer_sums,
    )
    from spikeshield.runtime import neurons

    constant = len(shape) == 4
    sample_ndim = len(shape) - (1 if constant else 2)
    g = torch.Generator().manual_seed(len(shape))
    currents = [torch.rand(shape, generator=g) * 1.1 - 0.2 for _ in range(2)]
    sample = shape if constant else shape[1:]
    targets = [torch.relu(torch.rand(sample, generator=g) - 0.2) for _ in range(2)]
    channels = sample[1]
    threshold = (torch.rand(channels if per_channel else 1, generator=g) * 0.5 + 0.3)
    op = IF(threshold=threshold, reset=reset, v_init=v_init)
    grid = [(f, s) for f in SEARCH_FACTORS for s in FIT_SHIFTS]
    calls = []
    original = neurons.grid_rate_sums
    monkeypatch.setattr(neurons, "grid_rate_sums",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    fused = _layer_sums(op, threshold, currents, targets, sample_ndim, 3, grid)
    assert len(calls) == 2 and all(c is not None for c in [original(
        currents[0], targets[0], threshold, grid, reset, v_init, 3, sample_ndim)])
    monkeypatch.setenv(neurons.FUSED_VARIABLE, "0")
    reference = _layer_sums(op, threshold, currents, targets, sample_ndim, 3, grid)
    assert len(set(reference[1][:, 0].tolist())) > len(grid) // 2  # the grid points differ
    for got, want in zip(fused, reference):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)


def test_a_whole_fitted_calibration_is_the_same_with_and_without_the_fused_kernel(monkeypatch):
    from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
    from spikeshield.compiler.passes.fold_batchnorm import fold_batchnorm
    from spikeshield.frontends.torch_module import from_module
    from spikeshield.frontends.zoo import build_model
    from spikeshield.runtime import neurons

    torch.manual_seed(3)
    ann = from_module(build_model("resnet20", (1, 8, 8), 10, width=0.25), (1, 8, 8))
    snn = convert_relu_to_if(fold_batchnorm(ann).graph).graph
    batches = [torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def calibrated():
        return calibrate_thresholds(snn, batches, timesteps=4, search=True, fit=True).graph

    fused = calibrated()
    monkeypatch.setenv(neurons.FUSED_VARIABLE, "0")
    reference = calibrated()
    for name in reference.nodes():
        for field, tensor in reference.op(name).tensors().items():
            assert torch.equal(fused.op(name).tensors()[field], tensor), (name, field)
