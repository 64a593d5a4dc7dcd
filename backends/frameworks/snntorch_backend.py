"""snnTorch neurons for :class:`SpikingGraphModule`: :class:`IFLeaky`, an ``snntorch.Leaky`` with
``beta = 1`` (no leak: an integrate-and-fire neuron), ``reset_mechanism`` ``"subtract"`` or
``"zero"`` and ``init_hidden=True``: the neuron keeps its membrane, as in snnTorch's tutorials, and
``snntorch.utils.reset(net)`` resets it.

What differs from a stock ``Leaky``, each for exactness with the runtime:

- the membrane starts at the compiled initial potential ``v_init * threshold`` (the buffer
  ``v_rest``), and snnTorch's resets (``utils.reset``, ``reset_mem``, ``reset_hidden``), which set
  the membrane to zero, mean that state here;
- snnTorch applies a spike's reset at the next step and computes a subtracting reset as
  ``(mem + I) - s * threshold``; the runtime (and SpikingJelly, Sinabs, Norse) as
  ``(mem - s * threshold) + I``. The two round differently in float32 (14 of 4.6M spike counts
  flipped on a width-0.5 resnet20, issue 39), so the runtime's order is used;
- the spike is ``v > threshold`` with spikeshield's surrogate (``spike_grad``); a surrogate of
  snnTorch's own (``snntorch.surrogate.atan()``) passed to ``load_module`` is used as snnTorch
  uses it;
- the reset (snnTorch recomputes the previous step's spike from the membrane it kept) is not
  detached, so that gradients cross it as in the runtime, whose BPTT gradient the module
  reproduces.
"""

from __future__ import annotations

from typing import Any

import snntorch
import torch
from torch import nn

from spikeshield.backends.frameworks.graph_module import (
    NeuronAdapter,
    rest_potential,
    threshold_view,
)
from spikeshield.backends.frameworks.spike import ThresholdSurrogate
from spikeshield.compiler.ir.ops import IF


class IFLeaky(snntorch.Leaky):
    """``snntorch.Leaky`` with ``beta = 1``, a compiled initial potential and the runtime's
    rounding (module docstring)."""

    def __init__(self, threshold: torch.Tensor, reset: str, v_init: float,
                 spike_grad: Any) -> None:
        super().__init__(beta=1.0, threshold=threshold, reset_mechanism=reset, init_hidden=True,
                         spike_grad=spike_grad)
        self.register_buffer("v_rest", v_init * threshold.detach().clone())
        self.at_rest = True

    def _init_mem(self) -> None:
        self.register_buffer("membrane", torch.zeros(0), persistent=False)

    @property
    def mem(self) -> torch.Tensor:
        """snnTorch's name for the membrane (before this step's reset, as snnTorch keeps it)."""
        return self.membrane

    @mem.setter
    def mem(self, value: torch.Tensor) -> None:
        # snnTorch resets by assigning zeros: for this neuron that is the compiled initial state.
        self.membrane = value
        self.at_rest = value.numel() == 0 or not bool(torch.any(value))

    def fire(self, mem: torch.Tensor) -> torch.Tensor:
        if isinstance(self.spike_grad, ThresholdSurrogate):
            return self.spike_grad(mem - self.threshold, self.threshold)
        return super().fire(mem)

    def forward(self, input_: torch.Tensor, mem: torch.Tensor | None = None):
        if mem is not None:
            raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
        membrane = self.membrane
        if self.at_rest or membrane.shape != input_.shape:
            membrane = rest_potential(self.v_rest, input_)
        reset = self.fire(membrane)  # the previous step's spikes (none at rest: v_init < 1)
        if self.reset_mechanism_val == 0:  # by subtraction, in the runtime's order
            membrane = (membrane - reset * self.threshold) + input_
        else:  # to zero
            membrane = (1 - reset) * membrane + input_
        spikes = self.fire(membrane)
        self.reset = reset
        self.membrane, self.at_rest = membrane, False
        return (spikes, membrane) if self.output else spikes


class SnnTorchNeurons(NeuronAdapter):
    name = "snntorch"
    layout = "TN"  # snntorch.spikegen and its tutorials put time first

    def make(self, op: IF, shape: tuple[int, ...], spike: Any) -> nn.Module:
        return IFLeaky(threshold_view(op, shape), op.reset, op.v_init, spike)

    def reset(self, module: nn.Module) -> None:
        module.reset_mem()

    def step(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x)
