"""Integrate-and-fire neuron dynamics as pure step functions (Norse style).

``if_step`` advances one time step; ``if_scan`` runs a whole input sequence for a whole layer. The
equations are those of :class:`spikeshield.compiler.ops.IF`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from spikeshield.runtime.surrogates import Surrogate, spike


@dataclass(frozen=True)
class IFParameters:
    """``threshold`` broadcastable to the layer's state; ``reset`` is ``"zero"`` or ``"subtract"``."""

    threshold: torch.Tensor
    reset: str = "zero"
    surrogate: Surrogate = Surrogate()


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
    if p.reset == "zero":
        v = v * (1.0 - s)
    else:
        v = v - p.threshold * s
    return s, IFState(v)


def if_scan(currents: torch.Tensor, p: IFParameters, timesteps: int | None = None) -> torch.Tensor:
    """Spikes ``(T, N, ...)`` for input currents ``(T, N, ...)``; a current of shape ``(N, ...)``
    is held constant for ``timesteps`` steps. The membrane starts at zero."""
    constant = timesteps is not None
    steps = timesteps if constant else currents.shape[0]
    first = currents if constant else currents[0]
    state = IFState(torch.zeros_like(first))
    out = []
    for t in range(steps):
        s, state = if_step(currents if constant else currents[t], state, p)
        out.append(s)
    return torch.stack(out)
