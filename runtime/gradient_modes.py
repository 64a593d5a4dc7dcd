"""How gradients flow through a spiking layer: the gradient modes of an adaptive attack.

A spiking layer's forward pass is a Heaviside step, whose derivative is zero almost everywhere, so an
attack needs a stand-in gradient. Each mode below changes only the backward pass of the IF layers
(except the ANN proxy, which changes the forward pass too); one :class:`GraphExecutor` switches
between them without being rebuilt.

================  =========================================================================================
kind              forward / backward of an IF layer with input currents ``I_t`` and threshold ``theta``
================  =========================================================================================
bptt              exact spikes / backpropagation through time with a surrogate derivative (any family of
                  :mod:`spikeshield.compiler.ir.surrogates`, ``straight_through`` included, fixed or
                  adaptive width); optionally with the reset detached (its subtraction passes no
                  gradient, see :class:`spikeshield.runtime.neurons.IFParameters`)
bptr              exact spikes / backward through the rate: ``d rate / d mean(I) = 1/theta`` where the
                  neuron fired at least once in the window, 0 elsewhere (Ding et al., NeurIPS 2022)
rga               exact spikes / backward through the piecewise-linear rate ``clamp(mean(I)/theta, 0, 1)``:
                  ``1/theta`` where ``0 < mean(I) < theta``, 0 elsewhere (Bu et al., CVPR 2023)
assg              exact spikes / BPTT with an arctan surrogate whose sharpness is set per neuron, per
                  step and per sample from running statistics of its membrane over the attack's
                  iterations (ASSG, Wang et al., CVPR 2026, arXiv 2512.22522; see
                  :class:`SharpnessTracker`); optionally with the reset detached
ann_proxy         ``relu(I)/theta`` in one pass, no time / exact ReLU gradient. With the thresholds folded
                  into the next layer's weights this is the ANN the SNN approximates (the source ANN
                  before finetuning). Only the gradient comes from the proxy: attacks are always judged
                  on the true spiking network.
================  =========================================================================================

For the rate modes, the gradient of a loss ``L`` reaches each step's current as
``dL/dI_t = (1/T) * r'(mean(I)) * sum_t dL/ds_t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.surrogates import SURROGATE_ALIASES, SURROGATE_NAMES, Surrogate

GRADIENT_KINDS = ("bptt", "bptr", "rga", "ann_proxy", "assg")
_ALIASES = {"ann": "ann_proxy", "proxy": "ann_proxy", **SURROGATE_ALIASES}


@dataclass(frozen=True)
class GradientMode:
    """One way of differentiating an SNN: ``kind`` and, for ``bptt``, its surrogate."""

    kind: str = "bptt"
    surrogate: Surrogate = Surrogate()
    detach_reset: bool = False

    def __post_init__(self) -> None:
        if self.kind not in GRADIENT_KINDS:
            raise ConfigError(
                f"unknown gradient mode {self.kind!r}; choose one of {', '.join(GRADIENT_KINDS)}"
            )
        if self.detach_reset and not self.through_time:
            raise ConfigError(f"{self.kind} has no reset to detach: only bptt surrogates and "
                              "assg do")

    @property
    def through_time(self) -> bool:
        """Does this mode backpropagate through the time steps (bptt and assg)?"""
        return self.kind in ("bptt", "assg")

    @property
    def label(self) -> str:
        detached = ", detached reset" if self.detach_reset else ""
        if self.kind == "assg":
            return "ASSG" + detached
        if self.kind != "bptt":
            return {"bptr": "BPTR", "rga": "RGA", "ann_proxy": "ANN proxy"}[self.kind]
        return self.surrogate.label + detached

    @property
    def spec(self) -> str:
        """The string :meth:`parse` reads back."""
        if self.kind == "assg":
            return "assg:detach" if self.detach_reset else "assg"
        if self.kind != "bptt":
            return self.kind
        flags = [f for f, on in (("adaptive", self.surrogate.adaptive),
                                 ("detach", self.detach_reset)) if on]
        return f"{self.surrogate.name}:{self.surrogate.gamma:g}" + (
            f":{'+'.join(flags)}" if flags else "")

    @classmethod
    def parse(cls, spec: str) -> GradientMode:
        """``bptr``, ``rga``, ``ann_proxy``, ``assg[:detach]``, or a surrogate as
        ``name[:gamma[:flags]]`` with flags ``adaptive`` and/or ``detach`` joined by ``+``
        (``triangle:0.5``, ``triangle:1:detach``, ``triangle:1:adaptive+detach``)."""
        name, _, rest = spec.strip().lower().partition(":")
        gamma, _, flags = rest.partition(":")
        name = _ALIASES.get(name, name.replace("-", "_"))
        if name == "assg":
            if rest not in ("", "detach"):
                raise ConfigError(f"gradient mode assg takes only the flag detach, got {spec!r}")
            return cls("assg", detach_reset=rest == "detach")
        if name in GRADIENT_KINDS and name != "bptt":
            if rest:
                raise ConfigError(f"gradient mode {name!r} takes no width, got {spec!r}")
            return cls(name)
        if name not in SURROGATE_NAMES:
            raise ConfigError(
                f"unknown gradient mode {spec!r}; use bptr, rga, ann_proxy, assg or a surrogate "
                f"name[:gamma[:adaptive+detach]] with name one of {', '.join(SURROGATE_NAMES)}"
            )
        try:
            width = float(gamma) if gamma else 1.0
        except ValueError:
            raise ConfigError(f"surrogate width in {spec!r} is not a number") from None
        chosen = set(flags.split("+")) - {""}
        if chosen - {"adaptive", "detach"}:
            raise ConfigError(f"unknown flag in {spec!r}: use adaptive and/or detach, joined by +")
        return cls("bptt", Surrogate(name, width, "adaptive" in chosen), "detach" in chosen)


class SharpnessTracker:
    """ASSG's adaptive sharpness: the arctan surrogate's slope for every neuron, step and sample.

    Each forward pass with gradients updates, per IF layer, exponential moving averages over the
    attack's iterations of ``|u|`` (``M``) and of ``||u| - M|`` (``D``), ``u`` being each step's
    distance to threshold in units of the threshold, and returns the slope
    ``alpha = a / (M + relax * D + 1e-4)`` with ``a = 2 tan(pi * vanishing) / pi``. The arctan
    surrogate's derivative at ``|u| = M`` is then a fixed fraction of its peak, whatever the
    layer, step or sample: the gradient reaches about as many neurons everywhere
    (Wang et al., CVPR 2026, arXiv 2512.22522; defaults as in their code: M starts at 1, D at 0,
    both decay 0.9, relax 1.5, vanishing 0.425). Statistics are kept per layer name and start
    afresh when the layer's shape changes (a new batch) or after :meth:`reset` (a new attack run).
    """

    def __init__(self, vanishing: float = 0.425, relax: float = 1.5, decay: float = 0.9) -> None:
        if not 0 < vanishing < 0.5:
            raise ConfigError(f"ASSG's vanishing degree must be in (0, 0.5), got {vanishing}")
        self.scale = 2 * math.tan(math.pi * vanishing) / math.pi
        self.relax, self.decay = relax, decay
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset(self) -> None:
        self.moments.clear()

    def layer(self, name: str) -> LayerSharpness:
        """What an IF scan of layer ``name`` is handed (``IFParameters.sharpness``)."""
        return LayerSharpness(self, name)

    def moments_like(self, name: str, potentials: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Layer ``name``'s moment tensors for the fused kernel to update in place, shaped and
        typed as ``potentials`` (new, and ``fresh``, when the layer has none of that shape)."""
        mean, spread = self.moments.get(name, (None, None))
        fresh = (mean is None or mean.shape != potentials.shape or mean.dtype != potentials.dtype
                 or not mean.is_contiguous() or not spread.is_contiguous())
        if fresh:
            mean, spread = torch.empty_like(potentials), torch.empty_like(potentials)
            self.moments[name] = (mean, spread)
        return mean, spread, fresh

    def slope(self, name: str, u: torch.Tensor) -> torch.Tensor:
        """Update layer ``name``'s statistics with ``u`` ``(T, N, ...)`` and return its slopes."""
        distance = u.detach().abs()
        mean, spread = self.moments.get(name, (None, None))
        if mean is None or mean.shape != distance.shape:
            mean, spread = torch.ones_like(distance), torch.zeros_like(distance)
        keep = self.decay
        mean = mean * keep + distance * (1 - keep)
        spread = spread * keep + (distance - mean).abs_() * (1 - keep)
        self.moments[name] = (mean, spread)
        return self.scale / (mean + self.relax * spread + 1e-4)


@dataclass(frozen=True)
class LayerSharpness:
    """One IF layer's view of a :class:`SharpnessTracker`: called with the scan's distances to
    threshold ``u`` it returns the arctan's slope parameter (the PyTorch scan); the fused scan
    instead has its kernel update :meth:`SharpnessTracker.moments_like` in place and compute the
    backward pass's slope in the same pass (``runtime/csrc/if_scan.cpp``, ``assg_slope``)."""

    tracker: SharpnessTracker
    name: str

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.tracker.slope(self.name, u)


def rate_gradient_spikes(
    spikes: torch.Tensor, currents: torch.Tensor, threshold: torch.Tensor, kind: str
) -> torch.Tensor:
    """``spikes`` unchanged in value, with the rate-based gradient of ``kind`` towards ``currents``.

    ``spikes`` is ``(T, N, ...)`` (computed without gradient); ``currents`` is ``(T, N, ...)`` or a
    constant ``(N, ...)``; ``threshold`` broadcasts over ``(N, ...)``.
    """
    mean_current = currents.mean(dim=0) if currents.dim() == spikes.dim() else currents
    if kind == "bptr":
        fired = (spikes.sum(dim=0) > 0).to(spikes.dtype)
        rate = mean_current * fired / threshold.detach()
    elif kind == "rga":
        rate = torch.clamp(mean_current / threshold.detach(), 0.0, 1.0)
    else:
        raise ConfigError(f"{kind!r} is not a rate-based gradient mode")
    return spikes + (rate - rate.detach()).unsqueeze(0)
