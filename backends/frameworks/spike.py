"""The spike every framework module fires with, and the surrogate it trains with.

Forward: ``1[v > threshold]`` in the membrane's dtype, the runtime's spike exactly. Backward: the
surrogate derivative of :mod:`spikeshield.compiler.ir.surrogates` at ``u = (v - threshold) /
threshold``, times ``1 / threshold`` (the runtime's IF neuron, so that a few more epochs in the
user's framework follow the gradient the SNN was finetuned with; a framework's own default
surrogate, of fixed width in volts, collapsed three of the zoo SNNs in 20 steps: issue 42).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.surrogates import (
    DEFAULT_SURROGATE,
    SURROGATE_ALIASES,
    SURROGATE_NAMES,
    Surrogate,
)


class _StrictSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shift: torch.Tensor, threshold: torch.Tensor,  # type: ignore[override]
                surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(shift, threshold)
        ctx.surrogate = surrogate
        return (shift > 0).to(shift.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        shift, threshold = ctx.saved_tensors
        scale = 1.0 / threshold
        return grad_output * ctx.surrogate.derivative(shift * scale) * scale, None, None


@dataclass(frozen=True)
class ThresholdSurrogate:
    """``fn(v - threshold, threshold)``: the spike and its surrogate gradient (a plain, picklable
    object, so that a module holding it can be saved whole with ``torch.save``)."""

    surrogate: Surrogate = Surrogate()

    def __call__(self, shift: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return _StrictSpike.apply(shift, threshold.to(shift.dtype), self.surrogate)


def surrogate_for(graph: Graph, surrogate: str | Surrogate | None) -> ThresholdSurrogate:
    """The surrogate a module of ``graph`` trains with: ``surrogate`` if given (``name[:gamma]``
    or a :class:`Surrogate`), else the one the graph was finetuned with (its family and width),
    else the default."""
    if isinstance(surrogate, Surrogate):
        return ThresholdSurrogate(surrogate)
    if surrogate is None:
        finetuned = graph.meta.get("finetuned")
        spec = finetuned.get("surrogate") if isinstance(finetuned, dict) else None
        # An adaptive width or a detached reset is a runtime feature: keep the family and width.
        # A rate-based training gradient (bptr, rga) has no per-step surrogate: use the default.
        surrogate = ":".join(str(spec or DEFAULT_SURROGATE).split(":")[:2])
        name = surrogate.split(":")[0].replace("-", "_")
        if SURROGATE_ALIASES.get(name, name) not in SURROGATE_NAMES:
            surrogate = DEFAULT_SURROGATE
    return ThresholdSurrogate(Surrogate.parse(surrogate))
