"""Sinabs neurons for :class:`SpikingGraphModule`: :class:`IRIAF`, a ``sinabs.layers.IAF`` with at
most one spike per step (as the IR's IF), Sinabs' ``MembraneSubtract`` or :class:`ResetToZero` and
no membrane floor. Sinabs layers take ``(batch, time, ...)`` and keep ``v_mem`` between calls; the graph module
feeds them one step at a time.

What differs from a stock ``IAF``, each so that Sinabs' own habits give the runtime's numbers:

- ``spike_threshold`` is the threshold itself and :class:`StrictSpike` fires where
  ``v_mem > spike_threshold`` (Sinabs' ``SingleSpike`` fires at ``>=``), so the subtractive reset
  subtracts the threshold, as the runtime does;
- ``reset_states()`` (and ``sinabs.reset_states(net)``) returns ``v_mem`` to the compiled initial
  potential ``v_init * spike_threshold``, not to zero;
- ``v_mem`` is state, not a setting: it is left out of ``state_dict``, so a state dict saved after
  a forward pass loads into a fresh module;
- the surrogate gradient is spikeshield's (:class:`SurrogateGradient`) unless a Sinabs one is
  given, and the reset to zero (:class:`ResetToZero`) passes gradients through the spike, as the
  runtime's does (Sinabs' ``MembraneReset`` compares the spikes with zero, which cuts them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sinabs.activation import MembraneSubtract, SingleSpike
from sinabs.layers import IAF
from torch import nn

from spikeshield.backends.frameworks.graph_module import NeuronAdapter, threshold_view
from spikeshield.backends.frameworks.spike import ThresholdSurrogate
from spikeshield.compiler.ir.ops import IF
from spikeshield.compiler.ir.surrogates import Surrogate


class StrictSpike(SingleSpike):
    """Sinabs' ``SingleSpike`` firing where ``v_mem > spike_threshold``, in ``v_mem``'s dtype."""

    @staticmethod
    def forward(ctx, v_mem, spike_threshold, surrogate_grad_fn):  # type: ignore[override]
        ctx.save_for_backward(v_mem.clone())
        ctx.spike_threshold = spike_threshold
        ctx.surrogate_grad_fn = surrogate_grad_fn
        return (v_mem - spike_threshold > 0).to(v_mem.dtype)


@dataclass(frozen=True)
class SurrogateGradient:
    """Sinabs' ``surrogate_grad_fn(v_mem, spike_threshold)`` for spikeshield's surrogate: the
    derivative at ``u = (v_mem - threshold) / threshold``, times ``1 / threshold``."""

    surrogate: Surrogate

    def __call__(self, v_mem: torch.Tensor, spike_threshold: torch.Tensor) -> torch.Tensor:
        return self.surrogate.derivative((v_mem - spike_threshold) / spike_threshold) \
            / spike_threshold


@dataclass(frozen=True)
class ResetToZero:
    """Sinabs' ``reset_fn`` for a reset to zero: ``v_mem - spikes * v_mem``, the runtime's."""

    def __call__(self, spikes: torch.Tensor, state: dict, threshold: torch.Tensor) -> dict:
        new_state = state.copy()
        new_state["v_mem"] = state["v_mem"] - state["v_mem"] * spikes
        return new_state


class IRIAF(IAF):
    """A Sinabs ``IAF`` that starts and resets at ``v_init * spike_threshold`` (module docstring)."""

    def __init__(self, threshold: torch.Tensor, reset: str, v_init: float, spike: Any) -> None:
        grad = SurrogateGradient(spike.surrogate) if isinstance(spike, ThresholdSurrogate) \
            else spike
        super().__init__(spike_threshold=threshold.detach().clone(), spike_fn=StrictSpike,
                         reset_fn=MembraneSubtract() if reset == "subtract" else ResetToZero(),
                         surrogate_grad_fn=grad, min_v_mem=None)
        self.v_init = v_init

    def reset_states(self, randomize: bool = False, value_ranges=None) -> None:
        super().reset_states(randomize, value_ranges)
        if not randomize and self.is_state_initialised():
            theta = self.spike_threshold.detach()
            self.v_mem = (self.v_init * theta).expand_as(self.v_mem).to(theta.dtype).clone()

    def forget(self) -> None:
        """Drop the state: the next call starts at the initial potential, whatever its batch."""
        self.v_mem = torch.zeros(0, device=self.v_mem.device)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.pop(prefix + "v_mem", None)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        state_dict.pop(prefix + "v_mem", None)  # from a Sinabs state dict that kept it
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if prefix + "v_mem" in missing_keys:
            missing_keys.remove(prefix + "v_mem")


class SinabsNeurons(NeuronAdapter):
    name = "sinabs"
    layout = "NT"  # Sinabs layers take (batch, time, ...)

    def make(self, op: IF, shape: tuple[int, ...], spike: Any) -> nn.Module:
        return IRIAF(threshold_view(op, shape), op.reset, op.v_init, spike)

    def reset(self, module: nn.Module) -> None:
        module.forget()

    def step(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x.unsqueeze(1)).squeeze(1).to(x.dtype)
