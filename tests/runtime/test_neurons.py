import pytest
import torch

from spikeshield.runtime.neurons import IFParameters, IFState, if_scan, if_step


def test_reset_to_zero_golden_sequence():
    # threshold 1: v = 0.6, 1.2 -> spike, reset 0; 0.6, 1.2 -> spike; strict: v == 1 does not spike
    xs = torch.tensor([0.6, 0.6, 0.6, 0.6, 1.0, 0.0])
    p = IFParameters(torch.tensor(1.0), "zero")
    state, spikes, potentials = IFState(torch.zeros(())), [], []
    for x in xs:
        s, state = if_step(x, state, p)
        spikes.append(float(s))
        potentials.append(float(state.v))
    assert spikes == [0, 1, 0, 1, 0, 0]
    assert potentials == pytest.approx([0.6, 0.0, 0.6, 0.0, 1.0, 1.0])


def test_reset_by_subtraction_golden_sequence():
    xs = torch.tensor([0.7, 0.7, 0.7, 0.7])
    p = IFParameters(torch.tensor(1.0), "subtract")
    state, spikes, potentials = IFState(torch.zeros(())), [], []
    for x in xs:
        s, state = if_step(x, state, p)
        spikes.append(float(s))
        potentials.append(round(float(state.v), 6))
    assert spikes == [0, 1, 1, 0]
    assert potentials == pytest.approx([0.7, 0.4, 0.1, 0.8])


@pytest.mark.parametrize(("reset", "x", "spikes", "potentials"), [
    # threshold 1, starting at 0.5: 0.8, 1.1 -> spike -> 0.1, 0.4, 0.7, 1.0 (strict: no), 1.3 -> 0.3
    ("subtract", 0.3, [0, 1, 0, 0, 0, 1], [0.8, 0.1, 0.4, 0.7, 1.0, 0.3]),
    # 1.1 -> spike -> 0, 0.6, 1.2 -> spike -> 0, 0.6, 1.2 -> spike -> 0
    ("zero", 0.6, [1, 0, 1, 0, 1, 0], [0.0, 0.6, 0.0, 0.6, 0.0, 0.6]),
])
def test_initial_potential_golden_sequence(reset, x, spikes, potentials):
    # v_init = 0.5 of the threshold: a constant 0.3 fires round(6 * 0.3) = 2 times in 6 steps,
    # where a membrane starting at zero fires floor(1.8) = 1 time.
    p = IFParameters(torch.tensor(2.0), reset, v_init=0.5)
    xs = torch.full((6,), 2 * x)  # threshold 2: the same sequence, in units of 2
    state, got, values = p.initial_state(torch.Size(()), xs), [], []
    assert float(state.v) == 1.0
    for current in xs:
        s, state = if_step(current, state, p)
        got.append(float(s))
        values.append(round(float(state.v) / 2, 6))
    assert got == spikes
    assert values == pytest.approx(potentials)
    assert if_scan(xs, p).tolist() == spikes  # the scan starts from the same state
    assert if_scan(xs[0], p, timesteps=6).tolist() == spikes


def test_matches_norse_iaf_for_reset_to_zero():
    from norse.torch.functional.iaf import IAFFeedForwardState, IAFParameters, iaf_feed_forward_step

    torch.manual_seed(0)
    xs = torch.rand(20, 5, 7) * 0.8
    ours = if_scan(xs, IFParameters(torch.tensor(1.0), "zero"))
    state = IAFFeedForwardState(v=torch.zeros(5, 7))
    theirs = []
    for x in xs:
        z, state = iaf_feed_forward_step(x, state, IAFParameters(v_th=torch.tensor(1.0), method="heaviside"))
        theirs.append(z)
    assert torch.equal(ours, torch.stack(theirs))


def test_constant_current_scan_equals_repeated_sequence():
    x = torch.rand(3, 4) * 2
    p = IFParameters(torch.tensor(0.9), "subtract")
    assert torch.equal(if_scan(x, p, timesteps=6), if_scan(x.expand(6, 3, 4), p))


def _scan_inputs(constant: bool, per_channel: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (4, 3, 5, 5) if constant else (6, 4, 3, 5, 5)
    currents = (torch.rand(shape, generator=generator) * 1.2 - 0.2).double().requires_grad_()
    values = [0.7, 1.1, 0.4] if per_channel else [0.8]
    threshold = torch.tensor(values, dtype=torch.float64).view(-1, 1, 1).requires_grad_()
    return currents, threshold


@pytest.mark.parametrize("v_init", [0.0, 0.5])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("constant", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("surrogate", [("triangle", 1.0), ("triangle", 0.7), ("exponential", 2.0),
                                       ("straight_through", 1.0), ("rectangular", 0.5),
                                       ("fast_sigmoid", 3.0)])
def test_fused_scan_has_the_spikes_and_gradients_of_stepping_if_step(reset, constant, per_channel,
                                                                    surrogate, detach_reset,
                                                                    v_init):
    # The fused scan's hand-written BPTT must equal autograd through if_step, to the last bits of
    # float64, for the currents and the threshold, through both resets.
    from spikeshield.compiler.ir.surrogates import Surrogate
    from spikeshield.runtime.neurons import if_scan_stepwise

    steps = 6 if constant else None
    results = []
    for scan in (if_scan, if_scan_stepwise):
        currents, threshold = _scan_inputs(constant, per_channel)
        p = IFParameters(threshold, reset, Surrogate(*surrogate), detach_reset, v_init)
        spikes = scan(currents, p, steps)
        weights = torch.linspace(-1, 1, spikes.numel(), dtype=spikes.dtype).view_as(spikes)
        (spikes * weights).sum().backward()
        results.append((spikes.detach(), currents.grad, threshold.grad))
    (fused, grad_x, grad_th), (reference, ref_x, ref_th) = results
    assert torch.equal(fused, reference)
    assert 0 < fused.mean() < 1  # some neurons fire, some do not: every branch is exercised
    assert ref_x.abs().sum() > 0 and ref_th.abs().sum() > 0
    torch.testing.assert_close(grad_x, ref_x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_th, ref_th, rtol=1e-10, atol=1e-12)


def test_fused_scan_stores_one_tensor_per_step_for_bptt():
    # Activations kept for the backward pass: the membrane of each step (plus the threshold), far
    # less than autograd through if_step keeps.
    from spikeshield.runtime.neurons import if_scan_stepwise

    def saved_bytes(scan) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        currents = torch.rand(8, 16, 100, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            scan(currents, IFParameters(torch.tensor([1.0]), "zero"))
        return total

    per_step = 16 * 100 * 4
    assert saved_bytes(if_scan) == 8 * per_step + 4
    assert saved_bytes(if_scan_stepwise) >= 3 * 8 * per_step


def test_fused_scan_without_gradients_records_nothing():
    x = torch.rand(5, 2, 3, requires_grad=True)
    with torch.no_grad():
        spikes = if_scan(x, IFParameters(torch.tensor(0.5)))
    assert spikes.grad_fn is None and spikes.shape == (5, 2, 3)


@pytest.mark.parametrize(("detach_reset", "expected"), [(False, [0.275, 0.3]), (True, [0.8, 0.3])])
def test_detached_reset_gradient_by_hand(detach_reset, expected):
    """Two steps, threshold 1, reset to zero, triangle γ=1, loss s_0 + s_1. Currents 1.5 then 0.3:
    v_0 = 1.5 fires (u_0 = 0.5, σ' = 0.5), v_1 = 0.3 does not (u_1 = -0.7, σ' = 0.3).
    dL/dI_1 = 0.3 either way. Through the reset, dL/ds_0 = 1 - 0.3 * v_0 = 0.55 and the membrane
    is cut by the spike: dL/dI_0 = 0.55 * 0.5 = 0.275. Detached: dL/dI_0 = 0.3 + 1 * 0.5 = 0.8."""
    from spikeshield.runtime.neurons import if_scan_stepwise

    for scan in (if_scan, if_scan_stepwise):
        currents = torch.tensor([[1.5], [0.3]], dtype=torch.float64, requires_grad=True)
        p = IFParameters(torch.tensor([1.0], dtype=torch.float64), "zero", detach_reset=detach_reset)
        spikes = scan(currents, p)
        assert spikes.flatten().tolist() == [1.0, 0.0]
        spikes.sum().backward()
        assert currents.grad.flatten().tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["triangle", "sigmoid"])
def test_adaptive_width_follows_each_samples_mean_distance_to_threshold(name):
    """Each sample's gradient is the fixed-width gradient at gamma * mean|u| of its own layer (or
    gamma / mean|u| for a slope), and adapting needs all steps: the stepwise scan refuses it."""
    from spikeshield.compiler.ir.errors import ConfigError
    from spikeshield.compiler.ir.surrogates import Surrogate
    from spikeshield.runtime.neurons import if_scan_stepwise

    currents, threshold = _scan_inputs(constant=False, per_channel=True, seed=3)
    currents = currents.detach()
    currents[:, 1] *= 3  # a sample whose membranes sit further from threshold
    adaptive = Surrogate(name, 0.8, adaptive=True)

    weights = torch.linspace(-1, 1, currents.numel(), dtype=currents.dtype).view_as(currents)

    def grad(x, surrogate, w):
        x = x.clone().requires_grad_()
        spikes = if_scan(x, IFParameters(threshold.detach(), "zero", surrogate))
        (spikes * w).sum().backward()
        return x.grad

    together = grad(currents, adaptive, weights)
    widths = []
    for i in range(currents.shape[1]):
        x = currents[:, i : i + 1]
        v, out = torch.zeros_like(x[0]), []
        for t in range(len(x)):  # the membranes before reset, by hand
            v = v + x[t]
            out.append(v)
            v = v * (v <= threshold.detach())
        spread = ((torch.stack(out) / threshold.detach() - 1).abs().mean())
        width = 0.8 * spread if name == "triangle" else 0.8 / spread
        widths.append(float(width))
        alone = grad(x, Surrogate(name, float(width)), weights[:, i : i + 1])
        torch.testing.assert_close(together[:, i : i + 1], alone, rtol=1e-10, atol=1e-12)
    assert widths[1] != pytest.approx(widths[0], rel=0.1)
    with pytest.raises(ConfigError, match="fused IF scan"):
        if_scan_stepwise(currents.requires_grad_(), IFParameters(threshold.detach(), "zero", adaptive)).sum().backward()


def _both_scans(monkeypatch, run):
    """``run()`` once through the compiled scan (asserting it ran) and once through the PyTorch
    operations (``SPIKESHIELD_FUSED_SCAN=0``)."""
    from spikeshield.runtime import neurons

    assert neurons.fused_scan_available() == (True, ""), "the kernel should build here"
    calls = []
    original = neurons._fused_forward
    monkeypatch.setattr(neurons, "_fused_forward",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    compiled = run()
    assert calls, "the compiled scan did not run"
    monkeypatch.setenv(neurons.FUSED_VARIABLE, "0")
    calls.clear()
    reference = run()
    assert not calls
    monkeypatch.delenv(neurons.FUSED_VARIABLE)
    return compiled, reference


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize(("shape", "threshold_shape"), [
    ((8, 16, 6, 7, 5), (6, 1, 1)),  # conv layer, one threshold per channel
    ((8, 16, 6, 7, 5), (1,)),  # one per layer
    ((8, 16, 40), (40,)),  # linear layer, one per feature
    ((8, 16, 6, 7, 5), (6, 7, 5)),  # one per neuron
    ((16, 6, 7, 5), (6, 1, 1)),  # a constant current (the first layer), T given
])
def test_compiled_scan_has_the_torch_scans_spikes_bit_for_bit_in_float32(
        monkeypatch, reset, detach_reset, shape, threshold_shape):
    from spikeshield.compiler.ir.surrogates import Surrogate
    from spikeshield.runtime.neurons import if_rate, if_scan_from

    constant = len(shape) == 4
    generator = torch.Generator().manual_seed(len(shape) + len(threshold_shape))
    base = torch.rand(shape, generator=generator) * 0.9 - 0.15
    theta0 = torch.rand(threshold_shape, generator=generator) * 0.6 + 0.3
    start = torch.rand(shape[0 if constant else 1:], generator=generator) * 0.4

    def run():
        currents = base.clone().requires_grad_()
        threshold = theta0.clone().requires_grad_()
        p = IFParameters(threshold, reset, Surrogate("triangle", 1.0), detach_reset)
        spikes, state = if_scan_from(currents, p, 8 if constant else None,
                                     IFState(start.clone()))
        weights = torch.linspace(-1, 1, spikes.numel()).view_as(spikes)
        ((spikes * weights).sum() + state.v.sum()).backward()
        with torch.no_grad():
            rate = if_rate(base, IFParameters(theta0, reset, v_init=0.5), 8, len(shape) - 1 -
                           (0 if constant else 1))
        return spikes.detach(), state.v.detach(), currents.grad, threshold.grad, rate

    compiled, reference = _both_scans(monkeypatch, run)
    assert 0.05 < reference[0].mean() < 0.95
    assert torch.equal(compiled[0], reference[0])  # spikes
    assert torch.equal(compiled[1], reference[1])  # the final membrane
    assert torch.equal(compiled[4], reference[4])  # rates from counts alone
    torch.testing.assert_close(compiled[2], reference[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[3], reference[3], rtol=1e-4, atol=1e-4)


def test_compiled_scan_with_an_adaptive_surrogate_and_float64_initial_state(monkeypatch):
    from spikeshield.compiler.ir.surrogates import Surrogate

    generator = torch.Generator().manual_seed(3)
    base = (torch.rand(6, 5, 4, 3, 3, generator=generator) * 1.2 - 0.2).double()

    def run():
        currents = base.clone().requires_grad_()
        threshold = torch.tensor([0.7, 1.1, 0.4, 0.9], dtype=torch.float64).view(-1, 1, 1)
        threshold.requires_grad_()
        p = IFParameters(threshold, "zero", Surrogate("triangle", 0.8, adaptive=True), v_init=0.5)
        spikes = if_scan(currents, p)
        (spikes * torch.linspace(-1, 1, spikes.numel(), dtype=torch.float64).view_as(spikes)
         ).sum().backward()
        return spikes.detach(), currents.grad, threshold.grad

    compiled, reference = _both_scans(monkeypatch, run)
    assert torch.equal(compiled[0], reference[0])
    torch.testing.assert_close(compiled[1], reference[1], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(compiled[2], reference[2], rtol=1e-12, atol=1e-14)


def test_large_forward_scans_without_gradients_take_the_pytorch_path(monkeypatch):
    # Past FUSED_FORWARD_LIMIT spikes a no-gradient scan runs as PyTorch operations (measured
    # faster there); BPTT and calibration's counts still run fused. Same spikes either way.
    from spikeshield.runtime import neurons
    from spikeshield.runtime.neurons import if_rate

    calls = []
    original = neurons._fused_forward
    monkeypatch.setattr(neurons, "_fused_forward",
                        lambda *a, **k: calls.append(k) or original(*a, **k))
    currents = torch.rand(4, 3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    p = IFParameters(torch.tensor([0.6, 0.4]).view(-1, 1, 1), "subtract", v_init=0.5)
    with torch.no_grad():
        fused = if_scan(currents, p)
    assert len(calls) == 1
    monkeypatch.setattr(neurons, "FUSED_FORWARD_LIMIT", currents.numel() - 1)
    with torch.no_grad():
        assert torch.equal(if_scan(currents, p), fused) and len(calls) == 1
        if_rate(currents, p, 4, 3)
    assert calls[-1].get("counts") and len(calls) == 2
    if_scan(currents.clone().requires_grad_(), p).sum().backward()
    assert len(calls) == 3


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_a_slope_per_neuron_and_step_is_autograd_through_an_arctan_step_by_step(
        monkeypatch, reset, detach_reset):
    """ASSG's plumbing: ``sharpness`` sees every step's distance to threshold once, and its
    per-neuron, per-step slopes give the gradients of stepping an arctan spike with those slopes
    under autograd (currents and per-channel thresholds), in the compiled scan and without it."""
    import math

    from spikeshield.compiler.ir.surrogates import Surrogate

    generator = torch.Generator().manual_seed(5)
    base = (torch.rand(6, 3, 4, 2, 2, generator=generator) * 1.2 - 0.2).double()
    theta0 = torch.tensor([0.7, 1.1, 0.4, 0.9], dtype=torch.float64).view(-1, 1, 1)
    weights = torch.linspace(-1, 1, base.numel(), dtype=torch.float64).view_as(base)

    def slopes(u):
        return 0.5 + u.abs()

    def run():
        seen = []
        currents, threshold = base.clone().requires_grad_(), theta0.clone().requires_grad_()
        p = IFParameters(threshold, reset, Surrogate("arctan"), detach_reset,
                         sharpness=lambda u: seen.append(u.clone()) or slopes(u))
        spikes = if_scan(currents, p)
        (spikes * weights).sum().backward()
        assert len(seen) == 1 and seen[0].shape == base.shape
        return spikes.detach(), currents.grad, threshold.grad, seen[0]

    compiled, scanned = _both_scans(monkeypatch, run)
    currents, threshold = base.clone().requires_grad_(), theta0.clone().requires_grad_()
    v, out, distances = torch.zeros_like(base[0]), [], []
    for t in range(len(base)):
        v = v + currents[t]
        u = (v - threshold) / threshold
        alpha = slopes(u.detach())
        smooth = torch.atan(math.pi / 2 * alpha * u) / math.pi
        s = (u > 0).double() + (smooth - smooth.detach())
        lost = v * s if reset == "zero" else threshold * s
        v = v - (lost.detach() if detach_reset else lost)
        out.append(s)
        distances.append(u.detach())
    (torch.stack(out) * weights).sum().backward()
    for result in (compiled, scanned):
        assert torch.equal(result[0], torch.stack(out).detach())
        torch.testing.assert_close(result[3], torch.stack(distances), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(result[1], currents.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result[2], threshold.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_assg_in_the_kernel_is_assg_as_pytorch_operations(monkeypatch, dtype, reset, detach_reset):
    """The fused kernel's ASSG (moments updated in place and the slope written in one pass) gives
    the PyTorch path's gradients and moments, over an attack's first pass (moments start at 1 and
    0) and a second one (moments carried), with per-channel thresholds."""
    from spikeshield.compiler.ir.surrogates import Surrogate
    from spikeshield.runtime import neurons
    from spikeshield.runtime.gradient_modes import SharpnessTracker

    generator = torch.Generator().manual_seed(7)
    passes = [(torch.rand(8, 3, 4, 3, 3, generator=generator) * 1.4 - 0.3).to(dtype)
              for _ in range(2)]
    theta0 = torch.tensor([0.7, 1.1, 0.4, 0.9], dtype=dtype).view(-1, 1, 1)
    weights = torch.linspace(-1, 1, passes[0].numel(), dtype=dtype).view_as(passes[0])
    kernel_calls = []
    original = neurons._extension

    class Counting:  # the kernel module, counting its assg_slope calls
        def __getattr__(self, name):
            if name == "assg_slope":
                kernel_calls.append(1)
            return getattr(original(), name)

    monkeypatch.setattr(neurons, "_extension", lambda: Counting())

    def run():
        tracker, grads = SharpnessTracker(), []
        for base in passes:
            currents, threshold = base.clone().requires_grad_(), theta0.clone().requires_grad_()
            p = IFParameters(threshold, reset, Surrogate("arctan"), detach_reset,
                             sharpness=tracker.layer("conv"))
            (if_scan(currents, p) * weights).sum().backward()
            grads += [currents.grad, threshold.grad]
        return grads, tracker.moments["conv"]

    compiled, scanned = _both_scans(monkeypatch, run)
    assert len(kernel_calls) == 2  # once per pass, in the compiled run only
    tight = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}
    for ours, reference in zip(compiled[0] + list(compiled[1]), scanned[0] + list(scanned[1])):
        torch.testing.assert_close(ours, reference, **tight)
