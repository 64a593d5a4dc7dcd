"""Surrogate gradients for the spike non-linearity.

They live with the IR because two floors use the same definitions: the runtime (training and
attacks) and the framework backends, whose native modules train with the surrogate the SNN was
finetuned with (recorded in ``graph.meta["finetuned"]["surrogate"]``).

Forward is always the exact Heaviside step ``s = 1[u > 0]``. The IF neuron passes
``u = (v - threshold) / threshold``, the distance to threshold in units of the threshold, so that a
width means the same in every layer whatever its calibrated threshold (the reference code uses
``u = v - threshold``; the two coincide for the unit thresholds most SNN libraries use). Backward
replaces the step's derivative (zero almost everywhere) by a pseudo-derivative ``sigma'(u)`` of
width ``gamma``:

===================  ===========================================  =====================================
name                 sigma'(u)                                     gamma is
===================  ===========================================  =====================================
triangle             max(0, gamma - |u|) / gamma**2                half-width of the support
rectangular          1[|u| < gamma / 2] / gamma                    width of the support
exponential          exp(-gamma |u|)                               decay rate (larger = narrower)
damped_exponential   0.3 * exp(-gamma |u|)                         decay rate
sigmoid              gamma * sig(gamma u) * (1 - sig(gamma u))     slope
arctan               (gamma / 2) / (1 + (pi/2 * gamma * u)**2)     slope
fast_sigmoid         1 / (1 + gamma |u|)**2                        slope
straight_through     1                                             (unused)
none                 0  (no surrogate: gradients are masked)       (unused)
===================  ===========================================  =====================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from spikeshield.compiler.ir.errors import ConfigError

Derivative = Callable[[torch.Tensor, float], torch.Tensor]

_DERIVATIVES: dict[str, Derivative] = {
    "triangle": lambda u, g: torch.clamp(g - u.abs(), min=0) / (g * g),
    "rectangular": lambda u, g: (u.abs() < g / 2).to(u.dtype) / g,
    "exponential": lambda u, g: torch.exp(-g * u.abs()),
    "damped_exponential": lambda u, g: 0.3 * torch.exp(-g * u.abs()),
    "sigmoid": lambda u, g: g * torch.sigmoid(g * u) * (1 - torch.sigmoid(g * u)),
    "arctan": lambda u, g: (g / 2) / (1 + (math.pi / 2 * g * u) ** 2),
    "fast_sigmoid": lambda u, g: 1.0 / (1 + g * u.abs()) ** 2,
    "straight_through": lambda u, g: torch.ones_like(u),
    "none": lambda u, g: torch.zeros_like(u),
}

SURROGATE_NAMES: tuple[str, ...] = tuple(_DERIVATIVES)
# Other spellings of surrogate names that specs accept.
SURROGATE_ALIASES = {"ste": "straight_through"}
# The surrogate robust finetuning trains with unless told otherwise (``name:gamma``).
DEFAULT_SURROGATE = "triangle:1"
# Families whose gamma is a width (larger = wider); for the others it is a slope or a decay rate.
_WIDTH_FAMILIES = ("triangle", "rectangular")
_MIN_SPREAD = 1e-3  # an adaptive width never collapses to zero (all membranes at threshold)


@dataclass(frozen=True)
class Surrogate:
    """A surrogate family and its width ``gamma`` (see the module table for its meaning).

    ``adaptive``: the width is not fixed but follows the membrane statistics of each layer and
    sample, as in ASSG (arXiv 2512.22522): the width used is ``gamma * mean|u|`` over the layer's
    neurons and steps (``gamma / mean|u|`` for the families whose gamma is a slope or decay rate),
    so that the surrogate covers about as many neurons in a layer whose membranes sit far from
    threshold as in one where they sit close. Only the fused IF scan can apply it (it needs all
    steps' potentials before the first derivative)."""

    name: str = "triangle"
    gamma: float = 1.0
    adaptive: bool = False

    def __post_init__(self) -> None:
        if self.name not in _DERIVATIVES:
            raise ConfigError(
                f"unknown surrogate {self.name!r}; choose one of {', '.join(SURROGATE_NAMES)}"
            )
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise ConfigError(f"surrogate width gamma must be a positive number, got {self.gamma}")

    def derivative(self, u: torch.Tensor, width: torch.Tensor | float | None = None) -> torch.Tensor:
        """``sigma'(u)`` at this surrogate's width, or at ``width`` (broadcast against ``u``)."""
        if self.adaptive and width is None:
            raise ConfigError("an adaptive surrogate needs the layer's width: use the fused IF scan")
        return _DERIVATIVES[self.name](u, self.gamma if width is None else width)

    def adaptive_width(self, potentials: torch.Tensor, inverse_threshold: torch.Tensor) -> torch.Tensor:
        """The width for membranes ``potentials`` ``(T, N, ...)``: one value per sample, shaped
        ``(N, 1, ...)`` to broadcast over one step."""
        u = torch.mul(potentials, inverse_threshold).sub_(1.0).abs_()
        spread = u.mean(dim=0).flatten(1).mean(dim=1).clamp_(min=_MIN_SPREAD)
        spread = spread.view(-1, *([1] * (potentials.dim() - 2)))
        return self.gamma * spread if self.name in _WIDTH_FAMILIES else self.gamma / spread

    @classmethod
    def parse(cls, spec: str) -> Surrogate:
        """A fixed-width surrogate written ``name[:gamma]`` (``triangle:1``, ``arctan:2``)."""
        name, _, gamma = spec.strip().lower().partition(":")
        if ":" in gamma:
            raise ConfigError(f"surrogate {spec!r}: write name[:gamma] (adaptive widths and "
                              "detached resets exist only in spikeshield's runtime)")
        try:
            width = float(gamma) if gamma else 1.0
        except ValueError:
            raise ConfigError(f"surrogate width in {spec!r} is not a number") from None
        name = name.replace("-", "_")
        return cls(SURROGATE_ALIASES.get(name, name), width)

    @property
    def label(self) -> str:
        name = self.name.replace("_", " ")
        if self.name in ("straight_through", "none"):
            return self.name.replace("_", "-")
        if self.adaptive:
            return f"adaptive {name} γ={self.gamma:g}·mean|u|" if self.name in _WIDTH_FAMILIES \
                else f"adaptive {name} γ={self.gamma:g}/mean|u|"
        return f"{name} γ={self.gamma:g}"


class _SpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(u), None


def spike(u: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Binary spikes ``1[u > 0]`` whose gradient is ``surrogate.derivative(u)``."""
    return _SpikeFunction.apply(u, surrogate)
