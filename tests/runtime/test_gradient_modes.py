import pytest
import torch
import torch.nn.functional as F

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.surrogates import SURROGATE_NAMES
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode
from tests.conftest import single_if_graph

ALL_MODES = [f"{name}:{g}" for name in SURROGATE_NAMES if name != "none" for g in (0.5, 2.0)]
ALL_MODES += [f"{name}:1:{flags}" for name in ("triangle", "rectangular", "sigmoid", "exponential")
              for flags in ("detach", "adaptive", "adaptive+detach")]
ALL_MODES += ["bptr", "rga", "ann_proxy", "assg", "assg:detach"]


def _input_gradient(executor, x, y, timesteps=8):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(executor(x, timesteps), y), x)
    return grad


@pytest.mark.parametrize("spec", ALL_MODES)
def test_every_mode_gives_a_nonzero_input_gradient(converted_lenet, mnist5k, spec):
    executor = GraphExecutor(converted_lenet.snn, gradient_mode=GradientMode.parse(spec))
    x, y = next(mnist5k.test.batches(16))
    grad = _input_gradient(executor, x, y)
    assert torch.isfinite(grad).all()
    # every single input gets a gradient, not just the batch as a whole
    assert (grad.flatten(1).abs().amax(dim=1) > 0).all(), spec


def test_no_surrogate_masks_every_gradient(converted_lenet, mnist5k):
    executor = GraphExecutor(converted_lenet.snn, gradient_mode=GradientMode.parse("none"))
    x, y = next(mnist5k.test.batches(16))
    assert (_input_gradient(executor, x, y) == 0).all()


def test_switching_modes_keeps_the_forward_pass_and_the_parameters(converted_lenet, mnist5k):
    executor = GraphExecutor(converted_lenet.snn)
    params = [id(p) for p in executor.parameters()]
    x, _ = next(mnist5k.test.batches(32))
    with torch.no_grad():
        reference = executor(x, 8)
        for spec in ("rectangular:0.25", "straight_through", "bptr", "rga"):
            with executor.using(GradientMode.parse(spec)):
                torch.testing.assert_close(executor(x, 8), reference, rtol=0, atol=0)
    assert executor.gradient_mode == GradientMode()  # restored after the block
    assert [id(p) for p in executor.parameters()] == params


def test_ann_proxy_of_a_converted_network_is_the_source_ann(trained_lenet, mnist5k):
    # Without bias correction (which moves biases on purpose, so that its proxy is the corrected
    # ReLU net), conversion is exact algebra: the proxy is the source ANN.
    from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model

    cfg = CompileConfig(timesteps=8, eval_samples=32, finetune="none", robustness="none",
                        correction="none", profile=False)
    converted = compile_model(trained_lenet[1], mnist5k, cfg)
    x, _ = next(mnist5k.test.batches(32))
    proxy = GraphExecutor(converted.snn, gradient_mode=GradientMode("ann_proxy"))
    with torch.no_grad():
        torch.testing.assert_close(proxy(x, 8), GraphExecutor(converted.ann)(x),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("current", "bptr", "rga"), [
    (0.5, 1.0, 1.0),  # fires at half rate: both pass 1/threshold
    (0.05, 0.0, 1.0),  # never fires in 8 steps: BPTR blocks, RGA sees 0 < I < threshold
    (2.0, 1.0, 0.0),  # saturated: BPTR passes, RGA's clamp is flat
    (-0.3, 0.0, 0.0),  # inhibited
])
def test_rate_gradients_by_hand(current, bptr, rga):
    """Single IF neuron (threshold 1) whose output is its rate over 8 steps: d rate / d input."""
    for kind, expected in (("bptr", bptr), ("rga", rga)):
        executor = GraphExecutor(single_if_graph(1.0), gradient_mode=GradientMode(kind))
        x = torch.tensor([[current]], requires_grad=True)
        (grad,) = torch.autograd.grad(executor(x, 8).sum(), x)
        assert float(grad) == pytest.approx(expected, abs=1e-6), (kind, current)


def test_surrogate_width_is_in_units_of_the_threshold():
    """Scaling threshold and input together leaves spikes unchanged and scales the gradient by 1/c."""
    grads = []
    for scale in (1.0, 4.0):
        executor = GraphExecutor(single_if_graph(scale), gradient_mode=GradientMode.parse("triangle:1"))
        x = torch.tensor([[0.3 * scale]], requires_grad=True)
        (grad,) = torch.autograd.grad(executor(x, 8).sum(), x)
        grads.append(float(grad))
    assert grads[0] > 0
    assert grads[1] == pytest.approx(grads[0] / 4.0, rel=1e-5)


def test_parse_and_label_round_trip():
    for spec in ("triangle:0.25", "damped_exponential:2", "bptr", "rga", "ann_proxy",
                 "triangle:1:detach", "sigmoid:4:adaptive", "rectangular:0.5:adaptive+detach"):
        assert GradientMode.parse(GradientMode.parse(spec).spec) == GradientMode.parse(spec)
    assert GradientMode.parse("ste").surrogate.name == "straight_through"
    assert GradientMode.parse("triangle").label == "triangle γ=1"
    detached = GradientMode.parse("triangle:1:detach+adaptive")
    assert detached.detach_reset and detached.surrogate.adaptive
    assert detached.label == "adaptive triangle γ=1·mean|u|, detached reset"
    assert GradientMode.parse("sigmoid:4:adaptive").label == "adaptive sigmoid γ=4/mean|u|"
    for spec in ("assg", "assg:detach"):
        assert GradientMode.parse(spec).spec == spec
    assert GradientMode.parse("ASSG:detach").label == "ASSG, detached reset"
    assert GradientMode.parse("assg").through_time and not GradientMode.parse("rga").through_time


@pytest.mark.parametrize(("spec", "message"), [
    ("sawtooth", "unknown gradient mode"),
    ("bptr:2", "takes no width"),
    ("triangle:wide", "not a number"),
    ("triangle:-1", "positive"),
    ("triangle:1:sticky", "unknown flag"),
    ("assg:2", "takes only the flag detach"),
])
def test_bad_modes(spec, message):
    with pytest.raises(ConfigError, match=message):
        GradientMode.parse(spec)


def test_only_surrogates_have_a_reset_to_detach():
    with pytest.raises(ConfigError, match="no reset to detach"):
        GradientMode("bptr", detach_reset=True)


def test_assg_sharpness_follows_running_moments_of_each_neuron_and_step():
    """By hand, with the reference code's constants: M and D start at 1 and 0 and decay by 0.9;
    alpha = a / (M + 1.5 D + 1e-4) with a = 2 tan(0.425 pi) / pi; a new shape or a reset starts
    afresh, and layers are kept apart."""
    import math

    from spikeshield.runtime.gradient_modes import SharpnessTracker

    tracker = SharpnessTracker()
    a = 2 * math.tan(0.425 * math.pi) / math.pi
    first = torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    m1 = 0.9 + 0.1 * first.abs()
    d1 = 0.1 * (first.abs() - m1).abs()
    torch.testing.assert_close(tracker.slope("conv", first), a / (m1 + 1.5 * d1 + 1e-4))
    second = torch.tensor([[0.0, 3.0]], dtype=torch.float64)
    m2 = 0.9 * m1 + 0.1 * second.abs()
    d2 = 0.9 * d1 + 0.1 * (second.abs() - m2).abs()
    torch.testing.assert_close(tracker.slope("conv", second), a / (m2 + 1.5 * d2 + 1e-4))
    torch.testing.assert_close(tracker.slope("fc", second),  # another layer: its own moments
                               a / (0.9 + 0.1 * second.abs() + 1.5 * 0.1 * (
                                   second.abs() - 0.9 - 0.1 * second.abs()).abs() + 1e-4))
    wider = torch.zeros(1, 3, dtype=torch.float64)  # a new batch: the moments start afresh
    torch.testing.assert_close(tracker.slope("conv", wider), torch.full_like(wider, a / (
        0.9 + 1.5 * 0.09 + 1e-4)))
    tracker.reset()
    torch.testing.assert_close(tracker.slope("conv", first), a / (m1 + 1.5 * d1 + 1e-4))
    with pytest.raises(ConfigError, match="vanishing degree"):
        SharpnessTracker(vanishing=0.5)


def test_assg_gradients_start_afresh_with_each_attacked_model(converted_lenet, mnist5k):
    """An attack's statistics belong to its AttackedModel: two models on the same executor give
    the same first gradient, and a second pass through one model (moments moved) another."""
    from spikeshield.runtime.attacks import AttackedModel

    executor = GraphExecutor(converted_lenet.snn)
    x = mnist5k.test.head(8).images.float().div(255)
    y = mnist5k.test.head(8).labels

    def gradient(model):
        xs = x.clone().requires_grad_()
        torch.nn.functional.cross_entropy(model(xs), y).backward()
        return xs.grad

    mode = GradientMode.parse("assg")
    first = AttackedModel(executor, 8, mode)
    g1 = gradient(first)
    assert g1.abs().sum() > 0
    assert torch.equal(gradient(AttackedModel(executor, 8, mode)), g1)
    assert not torch.equal(gradient(first), g1)
    first.start_run()
    assert torch.equal(gradient(first), g1)
    with executor.using(mode):  # outside an attack, each forward pass starts afresh
        plain = lambda xs: executor(xs, 8)  # noqa: E731
        assert torch.equal(gradient(plain), g1) and torch.equal(gradient(plain), g1)
