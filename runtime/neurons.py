"""Integrate-and-fire neuron dynamics as pure step functions (Norse style).

``if_step`` advances one time step and is the definition; ``if_scan`` runs a whole input sequence
for a whole layer and is what the executor uses. ``if_scan`` gives the same spikes and the same
gradients as stepping ``if_step`` under autograd (``if_scan_stepwise``, kept as the reference the tests
and benchmarks compare against), but it is one autograd node per layer instead of a handful per
step: the forward pass updates the membrane in place, and the backward pass is a hand-written scan
over time that stores only the membrane potential of each step. The equations are those of
:class:`spikeshield.compiler.ir.ops.IF`.

On the CPU both passes run fused in a small C++ kernel (``runtime/csrc/if_scan.cpp``, built on
first use into the checked kernel cache of :mod:`.kernel_cache`): each neuron's membrane stays in
a register for all T steps instead of T rounds of whole-tensor operations over memory. It does the
same operations in the same order, so the spikes are identical (tested against the step-by-step
reference) and gradients agree to rounding. Where it cannot be built, or with
``SPIKESHIELD_FUSED_SCAN=0``, the same scan runs as PyTorch operations (one note on stderr).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from spikeshield.compiler.ir.surrogates import Surrogate, spike


@dataclass(frozen=True)
class IFParameters:
    """``threshold`` broadcastable to the layer's state; ``reset`` is ``"zero"`` or ``"subtract"``;
    a scan that starts without a state starts from :meth:`initial_state`.

    ``detach_reset`` changes only gradients: the reset's subtraction (``v * s`` or ``threshold * s``)
    is treated as a constant, so the membrane passes its gradient through a spike unchanged, as a
    non-resetting integrator would (the reset's own derivative, ``-v`` at every spike, otherwise
    drowns the surrogate's signal in long sums of opposite terms).

    ``sharpness``, when given, maps a scan's distances to threshold ``u`` ``(T, N, ...)`` (in
    units of the threshold) to the surrogate's parameter for every neuron and step, the same shape
    (ASSG, :class:`spikeshield.runtime.gradient_modes.SharpnessTracker`); it is called once per
    scan that records gradients, and only :func:`if_scan` and :func:`if_scan_from` apply it. A
    tracker's layer view (:class:`~spikeshield.runtime.gradient_modes.LayerSharpness`, which has a
    ``tracker``) is not called on the fused kernel's path: the kernel updates its moments itself."""

    threshold: torch.Tensor
    reset: str = "zero"
    surrogate: Surrogate = Surrogate()
    detach_reset: bool = False
    v_init: float = 0.0  # initial membrane potential, as a fraction of the threshold
    sharpness: Callable[[torch.Tensor], torch.Tensor] | None = None

    def initial_state(self, shape: torch.Size, like: torch.Tensor) -> IFState:
        """The membrane before the first step: ``v_init * threshold`` everywhere (zero by default).
        Gradients reach the threshold through it."""
        v = torch.zeros(shape, dtype=like.dtype, device=like.device)
        if self.v_init:
            v = v + self.v_init * self.threshold.to(like.dtype)
        return IFState(v)


class IFState(NamedTuple):
    v: torch.Tensor  # membrane potential, same shape as the input current


def if_step(
    x: torch.Tensor, state: IFState, p: IFParameters
) -> tuple[torch.Tensor, IFState]:
    """One step: integrate ``x``, spike where ``v > threshold``, reset the neurons that spiked.

    Gradients: ``ds/dv = surrogate'((v - threshold) / threshold) / threshold``."""
    v = state.v + x
    # The surrogate sees the distance to threshold in units of the threshold, so that a width means
    # the same in every layer: IF dynamics are unchanged when v, x and threshold are scaled together,
    # and so is this gradient (up to the 1/threshold of the chain rule). With an absolute distance,
    # a layer with threshold 4.5 got 100x the gradient of its neighbours and BPTT through the reset
    # exploded (measured on a converted LeNet; see the finetuning pass).
    s = spike((v - p.threshold) / p.threshold, p.surrogate)
    lost = v * s if p.reset == "zero" else p.threshold * s
    v = v - (lost.detach() if p.detach_reset else lost)
    return s, IFState(v)


def if_scan_stepwise(
    currents: torch.Tensor, p: IFParameters, timesteps: int | None = None
) -> torch.Tensor:
    """``if_scan`` by composing ``if_step`` under autograd: the reference for tests and benchmarks."""
    constant = timesteps is not None
    steps = timesteps if constant else currents.shape[0]
    first = currents if constant else currents[0]
    state = p.initial_state(first.shape, first)
    out = []
    for t in range(steps):
        s, state = if_step(currents if constant else currents[t], state, p)
        out.append(s)
    return torch.stack(out)


def if_scan(currents: torch.Tensor, p: IFParameters, timesteps: int | None = None) -> torch.Tensor:
    """Spikes ``(T, N, ...)`` for input currents ``(T, N, ...)``; a current of shape ``(N, ...)``
    is held constant for ``timesteps`` steps. The membrane starts at ``v_init * threshold``
    (:meth:`IFParameters.initial_state`). Gradients (to the
    currents and to the threshold) are those of stepping :func:`if_step` through time."""
    return if_scan_from(currents, p, timesteps)[0]


def if_rate(currents: torch.Tensor, p: IFParameters, timesteps: int, sample_ndim: int
            ) -> torch.Tensor:
    """Spikes per step ``(N, ...)`` of a layer over ``timesteps`` steps, for a current ``(T, N, ...)``
    or one held constant ``(N, ...)`` (told apart by ``sample_ndim``, the batch-less dims)."""
    constant = currents.dim() == sample_ndim + 1
    if not (torch.is_grad_enabled() and (currents.requires_grad or p.threshold.requires_grad)):
        counts = _spike_counts(currents, p, timesteps if constant else currents.shape[0], constant)
        if counts is not None:  # the mean of 0/1 spikes: their count over the steps, exactly
            return counts / (timesteps if constant else currents.shape[0])
    return if_scan(currents, p, timesteps if constant else None).mean(dim=0)


def if_scan_from(
    currents: torch.Tensor,
    p: IFParameters,
    timesteps: int | None = None,
    state: IFState | None = None,
) -> tuple[torch.Tensor, IFState]:
    """:func:`if_scan` starting from ``state`` (the initial state if None); also returns the state after
    the last step, so that a long sequence can run in blocks of steps. Gradients flow through the
    carried state as through the steps inside a block."""
    steps = timesteps if timesteps is not None else currents.shape[0]
    if steps <= 0:
        raise ValueError(f"an IF scan needs at least one time step, got {steps}")
    threshold = p.threshold.to(currents.dtype)
    if state is None and p.v_init:
        state = p.initial_state(currents.shape if timesteps is not None else currents.shape[1:],
                                currents)
    v0 = None if state is None else state.v
    tracked = [currents, threshold] + ([] if v0 is None else [v0])
    if torch.is_grad_enabled() and any(t.requires_grad for t in tracked):
        spikes, v = _IFScan.apply(
            currents, threshold, v0, p.reset, p.surrogate, steps, timesteps is not None,
            p.detach_reset, p.sharpness,
        )
    else:
        spikes, v = _scan_forward(currents, threshold, v0, p.reset, steps, timesteps is not None)
    return spikes, IFState(v)


FUSED_VARIABLE = "SPIKESHIELD_FUSED_SCAN"
# A forward scan without gradients that writes more spikes than this runs as PyTorch operations:
# past it the fused kernel's many concurrent streams lost to PyTorch's step-by-step passes
# (0.65-0.82x at batch 256 on the 2-core EPYC; 1.0-1.3x at batch 32; benchmarks/if_scan.py).
# BPTT always runs fused (1.1-2.5x at every size measured), and so do calibration's counts
# (0.9-3.0x: no spike trains written).
FUSED_FORWARD_LIMIT = 1 << 22
SOURCE = Path(__file__).with_name("csrc") / "if_scan.cpp"


@functools.cache
def _extension():
    """The fused scan's compiled module, or the reason it is unavailable (a string; said once)."""
    from spikeshield.runtime.kernel_cache import load_kernel

    # No fused multiply-adds (the reference rounds every operation); -fno-trapping-math lets the
    # compare-and-select loops vectorise without changing a value.
    ext = load_kernel("spikeshield_if_scan", SOURCE,
                      ["-O3", "-ffp-contract=off", "-fno-trapping-math"])
    if isinstance(ext, str):
        print(f"note: the fused IF scan kernel is unavailable ({ext}); IF layers run as PyTorch "
              "operations, with the same spikes", file=sys.stderr)
    return ext


def fused_scan_available() -> tuple[bool, str]:
    """Whether IF scans on the CPU run in the fused kernel, and if not why."""
    if os.environ.get(FUSED_VARIABLE, "1") == "0":
        return False, f"{FUSED_VARIABLE}=0"
    ext = _extension()
    return (not isinstance(ext, str), "" if not isinstance(ext, str) else ext)


# Surrogates whose slope the kernel computes itself (its Surrogate enum); the others, and adaptive
# widths, are computed here from compiler/ir/surrogates.py and handed over.
_KERNEL_SURROGATES = {"triangle": 1, "rectangular": 2, "fast_sigmoid": 3, "straight_through": 4}


def _kernel_surrogate(surrogate: Surrogate) -> int:
    """The kernel's code for ``surrogate`` (0: it does not compute this one)."""
    return 0 if surrogate.adaptive else _KERNEL_SURROGATES.get(surrogate.name, 0)


class _Layout(NamedTuple):
    """A threshold as the kernel reads it: ``values`` per channel, channel of neuron ``e`` =
    ``(e // inner) % channels``."""

    values: torch.Tensor
    channels: int
    inner: int


def _fused_layout(currents: torch.Tensor, threshold: torch.Tensor, shape: torch.Size
                  ) -> _Layout | None:
    """The kernel's view of ``threshold`` over neurons of ``shape``, or None where the fused
    kernel does not apply (not the CPU, not float32/64, or unavailable)."""
    if currents.device.type != "cpu" or currents.dtype not in (torch.float32, torch.float64) \
            or threshold.dtype != currents.dtype or not fused_scan_available()[0]:
        return None
    if threshold.numel() == 1:
        return _Layout(threshold.reshape(1).contiguous(), 1, 1)
    full = threshold.expand(shape)  # raises like the reference where it does not broadcast
    strides = full.stride()
    if len(shape) >= 2 and all(st == 0 for d, st in enumerate(strides) if d != 1):
        inner = 1
        for size in shape[2:]:
            inner *= size
        per_channel = full[(0, slice(None)) + (0,) * (len(shape) - 2)]
        return _Layout(per_channel.contiguous(), shape[1], inner)
    return _Layout(full.contiguous().reshape(-1), full.numel(), 1)  # one threshold per neuron


def _scan_forward(
    currents: torch.Tensor,
    threshold: torch.Tensor,
    v0: torch.Tensor | None,
    reset: str,
    steps: int,
    constant: bool,
    potentials: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes of the scan and the final membrane, updating one membrane tensor in place; stores each
    step's membrane potential before the reset into ``potentials`` when given (all the backward
    pass needs)."""
    shape = currents.shape if constant else currents.shape[1:]
    # (with ``potentials`` the caller, _IFScan, already found the fused kernel inapplicable)
    layout = _fused_layout(currents, threshold, shape) \
        if potentials is None and steps * shape.numel() <= FUSED_FORWARD_LIMIT else None
    if layout is not None:
        spikes, _, _, v = _fused_forward(currents, layout, v0, reset, steps, constant)
        return spikes.view(steps, *shape), v.view(shape)
    if v0 is None:
        v = torch.zeros(shape, dtype=currents.dtype, device=currents.device)
    else:
        v = v0.detach().clone()
    spikes = torch.empty((steps, *shape), dtype=currents.dtype, device=currents.device)
    # Float spikes written straight into the output and a multiply-add reset: about 10x faster on
    # CPU than boolean masks with masked_fill (measured, benchmarks/runtime_speed.py), and exact:
    # v - v*1 is 0 and v - v*0 is v.
    for t in range(steps):
        v.add_(currents if constant else currents[t])
        if potentials is not None:
            potentials[t].copy_(v)
        fired = spikes[t]
        torch.gt(v, threshold, out=fired)
        if reset == "zero":
            v.addcmul_(v, fired, value=-1.0)
        else:
            v.addcmul_(fired, threshold, value=-1.0)
    return spikes, v


def _fused_forward(currents, layout: _Layout, v0, reset: str, steps: int, constant: bool, *,
                   spikes: bool = True, counts: bool = False, potentials: bool = False):
    start = None if v0 is None else v0.detach().to(currents.dtype).contiguous()
    return _extension().forward(currents.detach().contiguous(), layout.values, layout.channels,
                                layout.inner, start, reset == "zero", steps, constant, spikes,
                                counts, potentials)


def _spike_counts(currents: torch.Tensor, p: IFParameters, steps: int, constant: bool
                  ) -> torch.Tensor | None:
    """Spikes per neuron over the scan, without the spike trains (calibration's rates), from the
    fused kernel; None where it does not apply."""
    shape = currents.shape if constant else currents.shape[1:]
    threshold = p.threshold.to(currents.dtype)
    layout = _fused_layout(currents, threshold, shape)
    if layout is None:
        return None
    v0 = p.initial_state(shape, currents).v if p.v_init else None
    counts = _fused_forward(currents, layout, v0, p.reset, steps, constant, spikes=False,
                            counts=True)[1]
    return counts.view(shape)


def grid_rate_sums(current: torch.Tensor, target: torch.Tensor, threshold: torch.Tensor,
                   grid: list[tuple[float, float]], reset: str, v_init: float, timesteps: int,
                   sample_ndim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Calibration's fit in one pass over a layer's ``current`` (``(T, N, ...)``, or ``(N, ...)``
    held for ``timesteps`` steps): for each ``(factor, shift)`` of ``grid`` and each channel of
    ``threshold`` (``(C,)`` or ``(1,)``), the float64 sums of rate x ``target`` and rate^2, where
    rate is :func:`if_rate` with threshold ``factor x threshold`` and every step's current raised by
    ``shift x that threshold / T``. The same spike counts as one :func:`if_rate` per grid point;
    None where the fused kernel does not apply (then the caller runs those)."""
    constant = current.dim() == sample_ndim + 1
    shape = current.shape if constant else current.shape[1:]
    if current.device.type != "cpu" or current.dtype not in (torch.float32, torch.float64) \
            or target.shape != shape or not fused_scan_available()[0]:
        return None
    channels = threshold.numel()
    if channels > 1 and (len(shape) < 2 or shape[1] != channels):
        return None
    inner = 1
    for size in shape[2:]:
        inner *= size
    factors = torch.tensor([f for f, _ in grid], dtype=torch.float64)
    shifts = torch.tensor([s / timesteps for _, s in grid], dtype=torch.float64)
    steps = timesteps if constant else current.shape[0]
    rate_target, rate_rate = _extension().grid_sums(
        current.contiguous(), constant, steps, target.to(current.dtype).contiguous(),
        threshold.to(current.dtype).reshape(-1).contiguous(), channels, inner, factors, shifts,
        float(v_init), reset == "zero")
    return rate_target, rate_rate


class _IFScan(torch.autograd.Function):
    """The IF scan with backpropagation through time written out by hand.

    With ``v_t`` the membrane before the reset, ``s_t = H(u_t)``, ``u_t = (v_t - θ)/θ`` and the
    surrogate ``d_t = σ'(u_t)/θ`` standing in for ``ds_t/dv_t``, the post-reset membrane is
    ``v_t (1 - s_t)`` (reset to zero) or ``v_t - θ s_t`` (subtraction). Walking back in time with
    ``g`` the gradient reaching the post-reset membrane from step ``t+1`` (at the last step: the
    gradient of the returned state):
    ``dL/ds_t = grad_t - g·v_t`` (zero) or ``grad_t - g·θ`` (subtraction), and
    ``dL/dv_t = g·(1 - s_t) + dL/ds_t·d_t`` (zero) or ``g + dL/ds_t·d_t`` (subtraction), which is
    also ``dL/dI_t`` and the next ``g``; the initial state gets the last ``g``. The threshold
    collects ``dL/ds_t·d_t·(-v_t/θ)`` through ``u_t``, and ``-g·s_t`` through the subtraction.
    With the reset detached, ``dL/ds_t = grad_t`` and ``dL/dv_t = g + dL/ds_t·d_t`` for both resets,
    and the threshold collects only the term through ``u_t``. An adaptive surrogate takes its width
    from the stored potentials first (:meth:`Surrogate.adaptive_width`); a ``sharpness`` function
    gives one parameter per neuron and step from them in the forward pass (ASSG).
    This is exactly what autograd computes on :func:`if_step`, without recording five nodes per step.
    """

    @staticmethod
    def forward(ctx, currents, threshold, v0, reset, surrogate, steps, constant,  # type: ignore[override]
                detach_reset=False, sharpness=None):
        shape = currents.shape if constant else currents.shape[1:]
        layout = _fused_layout(currents, threshold.detach(), shape)
        # With a surrogate the kernel computes, its backward replays the membranes from the
        # currents (no potentials stored or written); otherwise they are stored for the slope.
        ctx.replay = layout is not None and _kernel_surrogate(surrogate) > 0 and sharpness is None
        ctx.width = None
        ctx.layout, ctx.steps = layout, steps
        ctx.reset, ctx.surrogate, ctx.constant = reset, surrogate, constant
        ctx.detach_reset = detach_reset
        if ctx.replay:
            spikes, _, _, v = _fused_forward(currents, layout, v0, reset, steps, constant)
            ctx.save_for_backward(currents, threshold, None if v0 is None else v0.detach())
            return spikes.view(steps, *shape), v.view(shape)
        if layout is not None:
            spikes, _, potentials, v = _fused_forward(currents, layout, v0, reset, steps, constant,
                                                      potentials=True)
            spikes, potentials, v = (spikes.view(steps, *shape), potentials.view(steps, *shape),
                                     v.view(shape))
        else:
            potentials = torch.empty((steps, *shape), dtype=currents.dtype, device=currents.device)
            spikes, v = _scan_forward(currents, threshold, v0, reset, steps, constant, potentials)
        ctx.slope = None
        tracker = getattr(sharpness, "tracker", None)
        if tracker is not None and layout is not None and surrogate.name == "arctan":
            # ASSG in the kernel: its moments updated and the backward pass's slope written in
            # one pass over the potentials
            mean, spread, fresh = tracker.moments_like(sharpness.name, potentials)
            ctx.slope = _extension().assg_slope(
                potentials, layout.values, layout.channels, layout.inner, mean, spread, steps,
                tracker.decay, tracker.relax, tracker.scale, fresh)
        elif sharpness is not None:
            ctx.width = sharpness(torch.div(potentials, threshold.detach()).sub_(1.0))
        ctx.save_for_backward(potentials, threshold, None)
        return spikes, v

    @staticmethod
    def backward(ctx, grad_spikes, grad_state):  # type: ignore[override]
        saved, threshold, v0 = ctx.saved_tensors
        if ctx.replay:
            return _IFScan._replayed_backward(ctx, saved, threshold, v0, grad_spikes, grad_state)
        potentials = saved
        want_x, want_threshold, want_v0 = ctx.needs_input_grad[:3]
        subtract = ctx.reset != "zero"
        detached = ctx.detach_reset
        steps = potentials.shape[0]
        inverse = 1.0 / threshold
        width = ctx.width  # per neuron and step (ASSG), or per sample (adaptive), or None
        if width is None and ctx.surrogate.adaptive:  # the width follows this layer's membranes
            width = ctx.surrogate.adaptive_width(potentials, inverse)
        per_step = width is not None and width.dim() == potentials.dim()
        if ctx.layout is not None:  # the same walk back in time, fused (a surrogate given here)
            if ctx.slope is not None:  # ASSG's, from the forward pass
                slope = ctx.slope
            else:
                slope = ctx.surrogate.derivative(torch.mul(potentials, inverse).sub_(1.0), width)
                slope = slope.mul_(inverse).contiguous()
            layout = ctx.layout
            inverse_values = (1.0 / layout.values).to(potentials.dtype)
            grad_x, grad_theta, g = _extension().backward(
                potentials, False, steps, None, slope, 0, 0.0, grad_spikes, grad_state,
                layout.values, inverse_values, layout.channels, layout.inner, not subtract,
                detached, ctx.constant, want_x, want_threshold)
            shape = potentials.shape[1:]
            dx = grad_x.view(shape if ctx.constant else potentials.shape) if want_x else None
            dthreshold = (grad_theta.view(shape).sum_to_size(threshold.shape)
                          if want_threshold else None)
            return (dx, dthreshold, g.view(shape) if want_v0 else None, None, None, None, None, None,
                    None)
        g = grad_state.clone() if grad_state is not None else torch.zeros_like(potentials[0])
        grad_x = torch.empty_like(potentials) if want_x and not ctx.constant else None
        grad_x_sum = torch.zeros_like(g) if want_x and ctx.constant else None
        grad_threshold = torch.zeros_like(g) if want_threshold else None
        fired = torch.empty_like(g)
        # In-place multiply-adds wherever the formula allows: at large batches this loop is bound
        # by memory traffic, and every pass over a (N, C, H, W) tensor counts.
        for t in range(steps - 1, -1, -1):
            v = potentials[t]
            torch.gt(v, threshold, out=fired)
            # d_t = σ'(u_t)/θ with u_t = v_t/θ - 1
            slope = ctx.surrogate.derivative(torch.mul(v, inverse).sub_(1.0),
                                             width[t] if per_step else width).mul_(inverse)
            if detached:  # the reset passes no gradient: the spike's comes from its readers only
                through_spike = torch.mul(grad_spikes[t], slope)
            elif subtract:
                through_spike = torch.sub(grad_spikes[t], g * threshold).mul_(slope)
            else:
                through_spike = torch.addcmul(grad_spikes[t], g, v, value=-1.0).mul_(slope)
            if want_threshold:
                grad_threshold.addcmul_(through_spike, v * inverse, value=-1.0)
                if subtract and not detached:
                    grad_threshold.addcmul_(g, fired, value=-1.0)
            keep = subtract or detached  # the post-reset membrane's derivative is then 1
            g = (g if keep else torch.addcmul(g, g, fired, value=-1.0)).add_(through_spike)
            if grad_x is not None:
                grad_x[t] = g
            elif grad_x_sum is not None:
                grad_x_sum += g
        dx = grad_x if grad_x is not None else grad_x_sum
        dthreshold = grad_threshold.sum_to_size(threshold.shape) if want_threshold else None
        return dx, dthreshold, g if want_v0 else None, None, None, None, None, None, None

    @staticmethod
    def _replayed_backward(ctx, currents, threshold, v0, grad_spikes, grad_state):
        """The fused backward that recomputes the membranes from the currents (kernel surrogate)."""
        want_x, want_threshold, want_v0 = ctx.needs_input_grad[:3]
        layout = ctx.layout
        shape = currents.shape if ctx.constant else currents.shape[1:]
        inverse_values = (1.0 / layout.values).to(currents.dtype)
        grad_x, grad_theta, g = _extension().backward(
            currents.detach().contiguous(), True, ctx.steps,
            None if v0 is None else v0.to(currents.dtype).contiguous(), None,
            _kernel_surrogate(ctx.surrogate), float(ctx.surrogate.gamma), grad_spikes,
            grad_state, layout.values, inverse_values, layout.channels, layout.inner,
            ctx.reset == "zero", ctx.detach_reset, ctx.constant, want_x, want_threshold)
        dx = grad_x.view(currents.shape) if want_x else None
        dthreshold = (grad_theta.view(shape).sum_to_size(threshold.shape)
                      if want_threshold else None)
        return dx, dthreshold, g.view(shape) if want_v0 else None, None, None, None, None, None, None
