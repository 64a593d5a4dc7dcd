"""snnTorch neurons for :class:`SpikingGraphModule`: :class:`IFLeaky`, an ``snntorch.Leaky`` with
``beta = 1`` (no leak: an integrate-and-fire neuron) and ``reset_mechanism`` ``"subtract"`` or
``"zero"``.

snnTorch applies a spike's reset at the next step: its ``mem`` is the membrane before the reset, and
its spikes are the runtime's. Leaky computes a subtracting reset as ``(mem + I) - s * threshold``;
the runtime (and SpikingJelly, Sinabs, Norse) as ``(mem - s * threshold) + I``. The two round
differently in float32: on a compiled width-0.5 resnet20 that flipped 14 of 4.6M spike counts
(64 images, issue 39). :class:`IFLeaky` overrides only that one expression, in the runtime's
order. The membrane is
passed explicitly (``init_hidden=False``), starting at ``v_init * threshold``.
"""

from __future__ import annotations

import snntorch
import torch
from torch import nn

from spikeshield.backends.frameworks.graph_module import (
    NeuronAdapter,
    initial_potential,
    threshold_view,
)
from spikeshield.compiler.ir.ops import IF


class IFLeaky(snntorch.Leaky):
    """``snntorch.Leaky`` whose reset by subtraction is applied before integrating, in the order the
    runtime computes it (the same value in exact arithmetic; the same float32 value bit for bit)."""

    def _base_sub(self, input_):
        return self.beta.clamp(0, 1) * (self.mem - self.reset * self.threshold) + input_


class SnnTorchNeurons(NeuronAdapter):
    name = "snntorch"

    def make(self, op: IF, shape: tuple[int, ...]) -> nn.Module:
        return IFLeaky(beta=1.0, threshold=threshold_view(op, shape),
                              reset_mechanism=op.reset, init_hidden=False)

    def start(self, module: nn.Module, op: IF, x: torch.Tensor) -> torch.Tensor:
        return initial_potential(op, tuple(x.shape[1:]), x)

    def step(self, module: nn.Module, x: torch.Tensor, mem: torch.Tensor):
        spikes, mem = module(x, mem)
        return spikes, mem
