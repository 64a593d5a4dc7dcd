"""Weight-sparse convolutions: a pruned conv layer computed in time proportional to its existing
synapses, forward and backward (the input gradient, and the weight gradient on existing synapses
only), by a small C++ kernel (``runtime/csrc/sparse_conv2d.cpp``).

The kernel is compiled on first use with ``torch.utils.cpp_extension`` (a C++ compiler and ninja:
``make install`` puts ninja in the environment) into a private, versioned cache whose library is
checked against its recorded SHA-256 before it is loaded (:mod:`.kernel_cache`). Where it cannot
be built or loaded the dense path runs, with the same numbers: :func:`available` says which, and
why.

Whether a layer is worth it is measured, never guessed: :func:`faster_than_dense` times the dense
convolution against the sparse one on the layer's own shapes (forward and backward, a few rounds,
the medians) and the executor uses the sparse path only where it won. The sums run in a different
order from the dense kernel's, so values agree to float32 rounding (tested), not bit for bit.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from spikeshield.compiler.ir.ops import Conv2d
from spikeshield.runtime.kernel_cache import load_kernel

SOURCE = Path(__file__).with_name("csrc") / "sparse_conv2d.cpp"
PROBE_ROUNDS = 3  # timed rounds of each path in faster_than_dense (after one warm-up)
# Layers denser than this are not even measured: at 10% density the kernel lost to the dense
# convolution on most vgg11 layers once the backward pass counts (0.4-0.5x forward + backward;
# BENCHMARKS.md, "Weight-sparse convolutions").
CANDIDATE_DENSITY = 0.1


@functools.cache
def _extension():
    """The compiled kernel module, or the reason it is unavailable (a string; said once)."""
    ext = load_kernel("spikeshield_sparse_conv2d", SOURCE, ["-O3"])
    if isinstance(ext, str):
        print(f"note: the weight-sparse convolution kernel is unavailable ({ext}); pruned layers "
              "run on the dense path, with the same numbers", file=sys.stderr)
    return ext


def available() -> tuple[bool, str]:
    """Whether the sparse kernel is usable here, and if not why."""
    ext = _extension()
    return (not isinstance(ext, str), "" if not isinstance(ext, str) else ext)


@dataclass(frozen=True)
class SparsePlan:
    """The existing synapses of one conv layer, in the two orders the kernel walks them."""

    flat: torch.Tensor  # indices of the nonzeros in the flattened (Cout, Cin, KH, KW) weight
    out_ch: torch.Tensor
    in_ch: torch.Tensor
    kh: torch.Tensor
    kw: torch.Tensor
    out_ptr: torch.Tensor  # synapses of output channel o: out_ptr[o] .. out_ptr[o + 1]
    in_ptr: torch.Tensor  # of input channel i, through by_input
    by_input: torch.Tensor
    weight_shape: tuple[int, int, int, int]

    @classmethod
    def of(cls, mask: torch.Tensor) -> SparsePlan:
        cout, cin, kh, kw = mask.shape
        flat = torch.nonzero(mask.flatten() != 0).flatten()  # sorted: grouped by output channel
        o, rest = flat // (cin * kh * kw), flat % (cin * kh * kw)
        i, rest = rest // (kh * kw), rest % (kh * kw)
        by_input = torch.argsort(i, stable=True)
        out_ptr = torch.zeros(cout + 1, dtype=torch.int64)
        out_ptr[1:] = torch.bincount(o, minlength=cout).cumsum(0)
        in_ptr = torch.zeros(cin + 1, dtype=torch.int64)
        in_ptr[1:] = torch.bincount(i, minlength=cin).cumsum(0)
        return cls(flat, o, i, rest // kw, rest % kw, out_ptr, in_ptr, by_input,
                   (cout, cin, kh, kw))

    @property
    def density(self) -> float:
        total = 1
        for size in self.weight_shape:
            total *= size
        return self.flat.numel() / total


class _SparseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: SparsePlan, stride, padding, dilation):
        ext = _extension()
        values = weight.reshape(-1)[plan.flat].contiguous()
        _, _, kh, kw = plan.weight_shape
        ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        inner = x.permute(1, 2, 3, 0).contiguous()  # (C, H, W, B): the kernel's layout
        out = ext.forward(inner, values, plan.in_ch, plan.kh, plan.kw, plan.out_ptr, ho, wo,
                          list(stride), list(padding), list(dilation)).permute(3, 0, 1, 2)
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1)
        ctx.save_for_backward(inner, values)
        ctx.plan, ctx.geometry, ctx.has_bias = plan, (stride, padding, dilation), bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        ext = _extension()
        inner, values = ctx.saved_tensors
        plan, (stride, padding, dilation) = ctx.plan, ctx.geometry
        grad_inner = grad_out.permute(1, 2, 3, 0).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = ext.grad_input(grad_inner, values, plan.out_ch, plan.kh, plan.kw,
                                    plan.in_ptr, plan.by_input, inner.shape[1], inner.shape[2],
                                    list(stride), list(padding), list(dilation)).permute(3, 0, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_values = ext.grad_values(grad_inner, inner, plan.out_ch, plan.in_ch, plan.kh,
                                          plan.kw, list(stride), list(padding), list(dilation))
            grad_w = torch.zeros(plan.weight_shape, dtype=grad_out.dtype).reshape(-1)
            grad_w[plan.flat] = grad_values
            grad_w = grad_w.view(plan.weight_shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  plan: SparsePlan, stride, padding, dilation) -> torch.Tensor:
    """``F.conv2d(x, weight * mask, bias, ...)`` (groups = 1, float32, CPU) over the synapses of
    ``plan`` only; the weight gradient is zero off them."""
    return _SparseConv2d.apply(x, weight, bias, plan, tuple(stride), tuple(padding),
                               tuple(dilation))


def median_seconds(run, rounds: int = PROBE_ROUNDS) -> float:
    """The median wall time of ``rounds`` calls of ``run`` after one warm-up call."""
    run()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def faster_than_dense(weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None,
                      plan: SparsePlan, x: torch.Tensor, stride, padding, dilation,
                      backward: bool) -> tuple[bool, float, float]:
    """Time the dense and the sparse convolution of this layer on input ``x`` (forward, and
    backward too if ``backward``); (sparse is faster, dense seconds, sparse seconds)."""
    w = (weight * mask).detach().requires_grad_(backward)
    probe = x.detach().requires_grad_(backward)

    def dense():
        out = F.conv2d(probe, w, bias, stride, padding, dilation)
        if backward:
            out.sum().backward()

    def sparse():
        out = sparse_conv2d(probe, w, bias, plan, stride, padding, dilation)
        if backward:
            out.sum().backward()

    dense_s, sparse_s = median_seconds(dense), median_seconds(sparse)
    return sparse_s < dense_s, dense_s, sparse_s


class SparseConvs:
    """One executor's weight-sparse convolutions: a plan per pruned conv node, and per node and
    input shape the measured choice between the sparse and the dense kernel (``choices``)."""

    def __init__(self) -> None:
        self.plans: dict[str, SparsePlan | None] = {}
        self.choices: dict[tuple, bool] = {}  # (node, input shape, with backward) -> sparse?

    def kernel(self, name: str, op: Conv2d, tensors: dict[str, torch.Tensor], dense):
        """``dense`` (the runtime's conv kernel) where the sparse kernel cannot or does not pay,
        else a kernel that measures once per input shape and then runs the faster one."""
        mask = tensors["mask"]
        if op.groups != 1 or mask.device.type != "cpu" or mask.dtype != torch.float32:
            return dense
        if name not in self.plans:
            plan = SparsePlan.of(mask)
            usable = plan.density <= CANDIDATE_DENSITY and available()[0]
            self.plans[name] = plan if usable else None
        plan = self.plans[name]
        if plan is None:
            return dense

        def run(op: Conv2d, t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            backward = torch.is_grad_enabled() and (x.requires_grad or t["weight"].requires_grad)
            key = (name, tuple(x.shape), backward)
            if key not in self.choices:
                with torch.enable_grad() if backward else torch.no_grad():
                    self.choices[key] = faster_than_dense(
                        t["weight"], t["mask"], t.get("bias"), plan, x, op.stride, op.padding,
                        op.dilation, backward)[0]
            if not self.choices[key]:
                return dense(op, t, x)
            return sparse_conv2d(x, t["weight"], t.get("bias"), plan, op.stride, op.padding,
                                 op.dilation)

        return run
