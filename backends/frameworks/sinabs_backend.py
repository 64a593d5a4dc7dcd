"""Sinabs neurons for :class:`SpikingGraphModule`: ``sinabs.layers.IAF`` with ``SingleSpike`` (at
most one spike per step, as the IR's IF) and ``MembraneSubtract`` or ``MembraneReset``, no membrane
floor; it spikes at ``v_mem >= spike_threshold``, so ``spike_threshold`` is the next float above the
threshold (:func:`firing_threshold`: the runtime's ``v > threshold``) and a subtractive reset takes
the threshold itself. Sinabs layers take ``(batch, time, ...)`` and keep their state between calls; the module
feeds one step at a time (time = 1) after setting ``v_mem`` to ``v_init * threshold``.
"""

from __future__ import annotations

import torch
from sinabs.activation import MembraneReset, MembraneSubtract, SingleSpike
from sinabs.layers import IAF
from torch import nn

from spikeshield.backends.frameworks.graph_module import (
    NeuronAdapter,
    firing_threshold,
    initial_potential,
    threshold_view,
)
from spikeshield.compiler.ir.ops import IF


class SinabsNeurons(NeuronAdapter):
    name = "sinabs"

    def make(self, op: IF, shape: tuple[int, ...]) -> nn.Module:
        theta = threshold_view(op, shape)
        reset = (MembraneSubtract(subtract_value=theta) if op.reset == "subtract"
                 else MembraneReset())
        return IAF(spike_threshold=firing_threshold(theta), spike_fn=SingleSpike,
                   reset_fn=reset, min_v_mem=None)

    def start(self, module: nn.Module, op: IF, x: torch.Tensor) -> None:
        if isinstance(module.reset_fn, MembraneSubtract):  # a dataclass field: follow the input
            module.reset_fn.subtract_value = module.reset_fn.subtract_value.to(x.device)
        module.init_state_with_shape(tuple(x.shape))
        module.v_mem = initial_potential(op, tuple(x.shape[1:]), x)

    def step(self, module: nn.Module, x: torch.Tensor, state: None):
        return module(x.unsqueeze(1)).squeeze(1), None
