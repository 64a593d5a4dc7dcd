import pytest
import torch

from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.evaluate import evaluate_graph
from spikeshield.runtime.executor import GraphExecutor
from tests.conftest import single_if_graph, tiny_conv_graph


def test_if_output_is_the_firing_rate():
    # constant input 0.3, threshold 1, reset to zero: spikes at steps 4 and 8 of 8 -> rate 0.25
    executor = GraphExecutor(single_if_graph(1.0, "zero"))
    out = executor(torch.tensor([[0.3]]), 8, record=True)
    assert out.item() == pytest.approx(0.25)
    assert executor.spike_counts["if"].tolist() == [2.0]


def test_subtract_reset_rate_is_exact():
    out = GraphExecutor(single_if_graph(1.0, "subtract"))(torch.tensor([[0.3]]), 10)
    assert out.item() == pytest.approx(0.3)


def test_spiking_graph_requires_timesteps():
    with pytest.raises(ConfigError, match="timesteps"):
        GraphExecutor(single_if_graph())(torch.rand(1, 1), 0)


def test_input_gradient_flows_through_spikes():
    from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if

    snn = convert_relu_to_if(tiny_conv_graph()).graph
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    GraphExecutor(snn)(x, 4).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_poisson_encoding_is_seeded_and_rate_coded():
    executor = GraphExecutor(single_if_graph(0.5), encoding="poisson")
    x = torch.full((1, 1), 0.25)
    a = executor(x, 400, generator=torch.Generator().manual_seed(1))
    b = executor(x, 400, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.item() == pytest.approx(0.25, abs=0.06)


def test_to_graph_writes_parameters_back():
    executor = GraphExecutor(tiny_conv_graph())
    with torch.no_grad():
        executor.tensors_of("conv")["weight"].mul_(0)
    assert executor.to_graph().op("conv").weight.abs().sum() == 0


def test_long_simulation_reproduces_ann_accuracy(trained_lenet, mnist5k):
    """Conversion correctness: at T=256 the calibrated SNN is within 1 pp of its ANN."""
    _, path = trained_lenet
    test = mnist5k.test.head(500)
    cfg = CompileConfig(timesteps=256, reset="subtract", eval_samples=500, calibration_batches=4,
                        finetune="none", robustness="none")
    result = compile_model(path, mnist5k, cfg)
    ann = result.report["ann"]["accuracy"]
    snn = evaluate_graph(GraphExecutor(result.snn), test, 256).accuracy
    assert ann > 0.85
    assert abs(snn - ann) <= 0.01


@pytest.mark.parametrize("kernel", [2, 3])
def test_tiled_average_pool_is_bit_identical_to_torch(kernel):
    # The runtime's CPU pooling for non-overlapping windows must not change a single bit, or the
    # exported graphs (which use the standard pooling) would stop meaning what the runtime computes.
    import torch.nn.functional as F

    from spikeshield.compiler.ir.ops import AvgPool2d
    from spikeshield.runtime.kernels import KERNELS

    x = torch.randn(7, 5, 13, 17, generator=torch.Generator().manual_seed(kernel)) * 3
    op = AvgPool2d(kernel=kernel, stride=kernel)
    ours = KERNELS[AvgPool2d](op, {}, x)
    assert torch.equal(ours, F.avg_pool2d(x, kernel))
    overlapping = AvgPool2d(kernel=3, stride=2, padding=1)
    assert torch.equal(KERNELS[AvgPool2d](overlapping, {}, x), F.avg_pool2d(x, 3, 2, 1))


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_running_time_in_blocks_changes_no_spike_and_no_gradient(converted_lenet, mnist5k, reset):
    # Large batches go through time in blocks of steps (membranes carried across blocks): the
    # logits, the spike counts and the input gradients must be those of folding all steps at once.
    from spikeshield.compiler.passes.manager import PassManager

    graph = PassManager().run(converted_lenet.snn, [("set_reset_mode", {"reset": reset})])
    executor = GraphExecutor(graph)
    x = (mnist5k.test.images[:24].float() / 255).requires_grad_()
    results = []
    for budget in (1 << 40, 1):  # all 8 steps folded; then one step at a time
        executor.fold_budget = budget
        assert executor._block_steps(x, 8) == (8 if budget > 1 else 1)
        logits = executor(x, 8)
        (grad,) = torch.autograd.grad(logits.logsumexp(dim=1).sum(), x)
        results.append((logits.detach(), grad))
    (folded, grad_folded), (blocked, grad_blocked) = results
    assert torch.equal(folded, blocked)
    assert grad_folded.abs().sum() > 0
    torch.testing.assert_close(grad_blocked, grad_folded, rtol=1e-6, atol=1e-9)


def test_spike_counts_recorded_in_blocks_of_steps_are_those_of_folding_all_steps(converted_lenet,
                                                                                  mnist5k):
    executor = GraphExecutor(converted_lenet.snn)
    x = mnist5k.test.images[:24].float() / 255
    counts = []
    with torch.no_grad():
        for budget in (1 << 40, 1, 3 * 24 * executor._widest):  # folded; 1 step; 3 + 3 + 2 steps
            executor.fold_budget = budget
            logits = executor(x, 8, record=True)
            counts.append((logits, dict(executor.spike_counts), dict(executor.neuron_spike_counts)))
    (logits, per_sample, per_neuron), *blocked = counts
    assert sum(float(c.sum()) for c in per_sample.values()) > 0
    for other_logits, other_sample, other_neuron in blocked:
        assert torch.equal(other_logits, logits)
        assert other_sample.keys() == per_sample.keys()
        for name in per_sample:
            assert torch.equal(other_sample[name], per_sample[name])
            assert torch.equal(other_neuron[name], per_neuron[name])


# ---- the executor's input contract (issue 39) ----------------------------------------------------
def _recording(timesteps: int, input_range=(0.0, 1.0)):
    from spikeshield.compiler.ir.run_spec import RunSpec

    graph = single_if_graph(1.0, "zero")
    RunSpec(timesteps, "direct", input_range=input_range).record(graph.meta)
    return graph


def test_the_executor_runs_a_graph_with_the_time_steps_it_records():
    executor = GraphExecutor(_recording(8))
    x = torch.tensor([[0.3]])
    assert executor(x).item() == executor(x, 8).item() == pytest.approx(0.25)
    assert executor(x, 10).item() == pytest.approx(0.2)  # told otherwise: 2 spikes in 10


def test_a_graph_that_records_no_time_steps_asks_for_the_argument_not_a_cli_flag():
    with pytest.raises(ConfigError, match="records no time steps; pass timesteps=N") as info:
        GraphExecutor(single_if_graph())(torch.rand(1, 1))
    assert "--" not in str(info.value)


def test_uint8_pixels_are_divided_by_255_and_floats_taken_as_they_are():
    executor = GraphExecutor(_recording(8))
    pixels = torch.tensor([[77]], dtype=torch.uint8)
    assert executor(pixels).item() == executor(torch.tensor([[77 / 255]])).item()


@pytest.mark.parametrize("x,message", [
    (torch.tensor([[3.0]]), r"hold values in \[3, 3\]; give uint8 pixels \(0..255\) or floats in "
                            r"\[0, 1\]"),
    (torch.tensor([[200.0]]), "divide by 255, or pass them as uint8"),
    (torch.tensor([[float("nan")]]), "NaN"),
    (torch.tensor([[1]], dtype=torch.int64), "are torch.int64"),
])
def test_an_input_outside_the_recorded_range_is_a_data_error(x, message):
    from spikeshield.compiler.ir.errors import DataError

    with pytest.raises(DataError, match=message) as info:
        GraphExecutor(_recording(8))(x)
    assert "\n" not in str(info.value) and "the executor's input x" in str(info.value)


def test_a_graph_without_a_recorded_range_takes_any_finite_float():
    graph = _recording(8, input_range=None)
    assert GraphExecutor(graph)(torch.tensor([[3.0]])).item() == 1.0  # fires every step
