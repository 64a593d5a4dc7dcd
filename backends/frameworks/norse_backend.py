"""Norse (``norse.torch``) neurons for :class:`SpikingGraphModule`.

Norse's integrate-and-fire cell ``IAFCell`` resets to zero only and keeps its parameters in a named
tuple that ``Module.to`` does not move, and its surrogates are named methods of fixed width. So the
neuron here is :class:`IFCell`, a Norse ``SNNCell`` over the pure step function :func:`if_step` in
Norse's own style (parameters and state as named tuples, the state Norse's
``IAFFeedForwardState(v)``), for both resets, with the threshold and the initial potential as
buffers. As a Norse cell it takes ``(input, state)`` and returns ``(spikes, state)``; ``state=None``
starts at ``v_init * threshold``. In the graph module each cell keeps its last state in
``cell.state`` (``None`` after a reset).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from norse.torch.functional.iaf import IAFFeedForwardState
from norse.torch.module.snn import SNNCell
from torch import nn

from spikeshield.backends.frameworks.graph_module import (
    NeuronAdapter,
    rest_potential,
    threshold_view,
)
from spikeshield.compiler.ir.ops import IF


class IFParameters(NamedTuple):
    """``v_th``: the threshold, broadcastable to the layer; ``reset``: ``"subtract"`` or ``"zero"``;
    ``spike_fn(v - v_th, v_th)``: the spike and its surrogate gradient."""

    v_th: torch.Tensor
    reset: str
    spike_fn: Any


def if_step(input_tensor: torch.Tensor, state: IAFFeedForwardState, p: IFParameters,
            dt: float = 1.0) -> tuple[torch.Tensor, IAFFeedForwardState]:
    """One step of an integrate-and-fire neuron: ``v = v + I``; ``z = H(v - v_th)``; then
    ``v = v - z * v_th`` (reset by subtraction) or ``v = (1 - z) * v`` (to zero). ``dt`` is unused,
    as in Norse's IAF."""
    v = state.v + input_tensor
    z = p.spike_fn(v - p.v_th, p.v_th)
    v = v - z * p.v_th if p.reset == "subtract" else (1 - z) * v
    return z, IAFFeedForwardState(v=v)


class IFCell(SNNCell):
    """A Norse cell of :func:`if_step` whose threshold and initial potential are buffers."""

    def __init__(self, threshold: torch.Tensor, reset: str, v_init: float, spike_fn: Any) -> None:
        super().__init__(if_step, self.initial_state,
                         IFParameters(threshold.detach().clone(), reset, spike_fn), dt=1.0)
        self.register_buffer("v_th", threshold.detach().clone())
        self.register_buffer("v_rest", v_init * threshold.detach().clone())
        self.state: IAFFeedForwardState | None = None

    def initial_state(self, input_tensor: torch.Tensor) -> IAFFeedForwardState:
        return IAFFeedForwardState(v=rest_potential(self.v_rest, input_tensor))

    def forward(self, input_tensor: torch.Tensor, state: IAFFeedForwardState | None = None):
        self.p = self.p._replace(v_th=self.v_th.to(input_tensor.dtype))  # follows .to()
        return super().forward(input_tensor, state)


class NorseNeurons(NeuronAdapter):
    name = "norse"
    layout = "TN"  # Norse's lifted modules take (T, N, ...)

    def make(self, op: IF, shape: tuple[int, ...], spike: Any) -> nn.Module:
        return IFCell(threshold_view(op, shape), op.reset, op.v_init, spike)

    def reset(self, module: nn.Module) -> None:
        module.state = None

    def step(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        spikes, module.state = module(x, module.state)
        return spikes
