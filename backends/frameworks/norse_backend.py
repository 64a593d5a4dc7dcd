"""Norse (``norse.torch``) neurons for :class:`SpikingGraphModule`.

Reset to zero is Norse's own ``IAFCell`` (``v += I``; spike where ``v > v_th``; ``v = v_reset``).
Norse has no integrate-and-fire neuron that resets by subtraction, so that reset is
:class:`IFSubtractCell`, a Norse ``SNNCell`` over the pure step function :func:`if_subtract_step`
in Norse's own style (parameters and state as named tuples, ``norse.torch.functional.threshold``
for the spike and its surrogate gradient). The state is Norse's: ``IAFFeedForwardState(v)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from norse.torch.functional.iaf import IAFFeedForwardState, IAFParameters
from norse.torch.functional.threshold import threshold
from norse.torch.module.iaf import IAFCell
from norse.torch.module.snn import SNNCell
from torch import nn

from spikeshield.backends.frameworks.graph_module import (
    NeuronAdapter,
    initial_potential,
    threshold_view,
)
from spikeshield.compiler.ir.ops import IF


class IFSubtractParameters(NamedTuple):
    """``v_th``: the threshold, broadcastable to the layer; ``method``/``alpha``: Norse's surrogate."""

    v_th: torch.Tensor = torch.as_tensor(1.0)
    method: str = "super"
    alpha: float = 100.0


def if_subtract_step(
    input_tensor: torch.Tensor, state: IAFFeedForwardState, p: IFSubtractParameters,
    dt: float = 1.0,
) -> tuple[torch.Tensor, IAFFeedForwardState]:
    """One step of an integrate-and-fire neuron that resets by subtraction:
    ``v = v + I``; ``z = H(v - v_th)``; ``v = v - z * v_th`` (``dt`` is unused, as in Norse's IAF)."""
    v = state.v + input_tensor
    z = threshold(v - p.v_th, p.method, p.alpha)
    return z, IAFFeedForwardState(v=v - z * p.v_th)


class IFSubtractCell(SNNCell):
    """A Norse cell of :func:`if_subtract_step`; without a state it starts at ``v = 0``."""

    def __init__(self, p: IFSubtractParameters | None = None, dt: float = 1.0):
        super().__init__(if_subtract_step, self.initial_state, p or IFSubtractParameters(), dt)

    def initial_state(self, input_tensor: torch.Tensor) -> IAFFeedForwardState:
        return IAFFeedForwardState(v=torch.zeros_like(input_tensor))


class NorseNeurons(NeuronAdapter):
    name = "norse"

    def make(self, op: IF, shape: tuple[int, ...]) -> nn.Module:
        theta = threshold_view(op, shape)
        if op.reset == "subtract":
            return IFSubtractCell(IFSubtractParameters(v_th=theta), dt=1.0)
        return IAFCell(IAFParameters(v_th=theta, v_reset=torch.as_tensor(0.0)), dt=1.0)

    def start(self, module: nn.Module, op: IF, x: torch.Tensor) -> IAFFeedForwardState:
        # Norse keeps parameters in a named tuple, which Module.to() does not move: follow the input.
        moved = {field: value.to(x.device) for field, value in module.p._asdict().items()
                 if isinstance(value, torch.Tensor) and value.device != x.device}
        if moved:
            module.p = module.p._replace(**moved)
        return IAFFeedForwardState(v=initial_potential(op, tuple(x.shape[1:]), x))

    def step(self, module: nn.Module, x: torch.Tensor, state):
        return module(x, state)
