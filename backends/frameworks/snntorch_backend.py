"""snnTorch neurons for :class:`SpikingGraphModule`: ``snntorch.Leaky`` with ``beta = 1`` (no
leak: an integrate-and-fire neuron) and ``reset_mechanism`` ``"subtract"`` or ``"zero"``.

snnTorch applies a spike's reset at the next step (``mem[t] = mem[t-1] + I[t] - s[t-1] * threshold``,
or zeroes ``mem`` first): its ``mem`` is the membrane before the reset, and its spikes are the
runtime's. The membrane is passed explicitly (``init_hidden=False``), starting at
``v_init * threshold``.
"""

from __future__ import annotations

import snntorch
import torch
from spikeshield.backends.frameworks.graph_module import (
    NeuronAdapter,
    initial_potential,
    threshold_view,
)
from spikeshield.compiler.ir.ops import IF
from torch import nn


class SnnTorchNeurons(NeuronAdapter):
    name = "snntorch"

    def make(self, op: IF, shape: tuple[int, ...]) -> nn.Module:
        return snntorch.Leaky(beta=1.0, threshold=threshold_view(op, shape),
                              reset_mechanism=op.reset, init_hidden=False)

    def start(self, module: nn.Module, op: IF, x: torch.Tensor) -> torch.Tensor:
        return initial_potential(op, tuple(x.shape[1:]), x)

    def step(self, module: nn.Module, x: torch.Tensor, mem: torch.Tensor):
        spikes, mem = module(x, mem)
        return spikes, mem
