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
ann_proxy         ``relu(I)/theta`` in one pass, no time / exact ReLU gradient. With the thresholds folded
                  into the next layer's weights this is the ANN the SNN approximates (the source ANN
                  before finetuning). Only the gradient comes from the proxy: attacks are always judged
                  on the true spiking network.
================  =========================================================================================

For the rate modes, the gradient of a loss ``L`` reaches each step's current as
``dL/dI_t = (1/T) * r'(mean(I)) * sum_t dL/ds_t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.surrogates import SURROGATE_ALIASES, SURROGATE_NAMES, Surrogate

GRADIENT_KINDS = ("bptt", "bptr", "rga", "ann_proxy")
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
        if self.detach_reset and self.kind != "bptt":
            raise ConfigError(f"{self.kind} has no reset to detach: only bptt surrogates do")

    @property
    def label(self) -> str:
        if self.kind != "bptt":
            return {"bptr": "BPTR", "rga": "RGA", "ann_proxy": "ANN proxy"}[self.kind]
        return self.surrogate.label + (", detached reset" if self.detach_reset else "")

    @property
    def spec(self) -> str:
        """The string :meth:`parse` reads back."""
        if self.kind != "bptt":
            return self.kind
        flags = [f for f, on in (("adaptive", self.surrogate.adaptive),
                                 ("detach", self.detach_reset)) if on]
        return f"{self.surrogate.name}:{self.surrogate.gamma:g}" + (
            f":{'+'.join(flags)}" if flags else "")

    @classmethod
    def parse(cls, spec: str) -> GradientMode:
        """``bptr``, ``rga``, ``ann_proxy``, or a surrogate as ``name[:gamma[:flags]]`` with flags
        ``adaptive`` and/or ``detach`` joined by ``+`` (``triangle:0.5``, ``triangle:1:detach``,
        ``triangle:1:adaptive+detach``)."""
        name, _, rest = spec.strip().lower().partition(":")
        gamma, _, flags = rest.partition(":")
        name = _ALIASES.get(name, name.replace("-", "_"))
        if name in GRADIENT_KINDS and name != "bptt":
            if rest:
                raise ConfigError(f"gradient mode {name!r} takes no width, got {spec!r}")
            return cls(name)
        if name not in SURROGATE_NAMES:
            raise ConfigError(
                f"unknown gradient mode {spec!r}; use bptr, rga, ann_proxy or a surrogate "
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
