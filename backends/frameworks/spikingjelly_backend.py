"""SpikingJelly neurons for :class:`SpikingGraphModule`: :class:`StrictIFNode`, SpikingJelly's
pure-PyTorch ``neuron.SimpleIFNode`` (``v_reset=None`` resets by subtraction, ``v_reset=0.0`` to
zero) in single-step mode, firing where ``v > threshold`` as the IR's IF does.

Why not ``neuron.IFNode``: its fused kernel takes one float threshold per layer (the compiled
default is one per channel) and fires at ``v >= threshold``; SpikingJelly's own ann2snn instead
divides the current by a per-channel threshold and multiplies the spikes back, which rounds
differently from the runtime. SpikingJelly keeps the membrane in the node; ``SpikingGraphModule.reset`` (and every
``forward``) calls ``functional.reset_net`` and then sets it to ``v_init * threshold``.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import functional, neuron
from torch import nn

from spikeshield.backends.frameworks.graph_module import (
    NeuronAdapter,
    firing_threshold,
    initial_potential,
    threshold_view,
)
from spikeshield.compiler.ir.ops import IF


class StrictIFNode(neuron.SimpleIFNode):
    """``SimpleIFNode`` that fires where ``v > v_threshold`` (SpikingJelly's heaviside fires at
    ``v >= v_threshold``): it compares against the next float above the threshold; the reset
    subtracts ``v_threshold`` itself."""

    def __init__(self, v_threshold: torch.Tensor, v_reset: float | None) -> None:
        super().__init__(v_threshold=v_threshold, v_reset=v_reset, step_mode="s")
        self.fire_threshold = firing_threshold(v_threshold)

    def neuronal_fire(self) -> torch.Tensor:
        return self.surrogate_function(self.v - self.fire_threshold)


class SpikingJellyNeurons(NeuronAdapter):
    name = "spikingjelly"

    def make(self, op: IF, shape: tuple[int, ...]) -> nn.Module:
        return StrictIFNode(threshold_view(op, shape), None if op.reset == "subtract" else 0.0)

    def start(self, module: nn.Module, op: IF, x: torch.Tensor) -> None:
        functional.reset_net(module)
        module.v_threshold = module.v_threshold.to(x.device)  # plain attributes: follow the input
        module.fire_threshold = module.fire_threshold.to(x.device)
        module.v = initial_potential(op, tuple(x.shape[1:]), x)

    def step(self, module: nn.Module, x: torch.Tensor, state: None):
        return module(x), None
