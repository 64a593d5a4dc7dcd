"""SpikingJelly neurons for :class:`SpikingGraphModule`: :class:`StrictIFNode`, SpikingJelly's
pure-PyTorch ``neuron.SimpleIFNode`` (``v_reset=None`` resets by subtraction, ``v_reset=0.0`` to
zero), firing where ``v > threshold`` as the IR's IF does.

As SpikingJelly's users expect: ``functional.reset_net(net)`` returns every membrane to the compiled
initial potential (the memory ``v``'s reset value, ``v_init * threshold``);
``functional.set_step_mode(net, "s")`` makes one call one step, ``"m"`` one call a whole run (a
``(T, N, ...)`` sequence returns ``(T, N, classes)``); the threshold is the buffer
``v_threshold``, so ``.to(dtype)`` moves it.

Why not ``neuron.IFNode``: its fused kernel takes one float threshold per layer (the compiled
default is one per channel) and fires at ``v >= threshold``; SpikingJelly's own ann2snn instead
divides the current by a per-channel threshold and multiplies the spikes back, which rounds
differently from the runtime. With a surrogate of SpikingJelly's own (``surrogate.Sigmoid()``),
the node fires as SpikingJelly does, at ``v >= `` the next float above the threshold: the same
spikes.
"""

from __future__ import annotations

from typing import Any

import torch
from spikingjelly.activation_based import neuron
from torch import nn

from spikeshield.backends.frameworks.graph_module import NeuronAdapter, threshold_view
from spikeshield.backends.frameworks.spike import ThresholdSurrogate
from spikeshield.compiler.ir.ops import IF


class StrictIFNode(neuron.SimpleIFNode):
    """``SimpleIFNode`` that fires where ``v > v_threshold``, starts at ``v_init * v_threshold`` and
    keeps its threshold as a buffer (module docstring)."""

    def __init__(self, v_threshold: torch.Tensor, v_reset: float | None, v_init: float,
                 surrogate_function: Any) -> None:
        super().__init__(v_threshold=1.0, v_reset=v_reset, surrogate_function=surrogate_function,
                         step_mode="s")
        del self.v_threshold  # a plain attribute in SpikingJelly: make it a buffer
        self.register_buffer("v_threshold", v_threshold.detach().clone())
        self.v_init = v_init
        rest = v_init * self.v_threshold
        self.set_reset_value("v", rest.clone())
        self.v = rest.clone()

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.v + x

    def neuronal_fire(self) -> torch.Tensor:
        if isinstance(self.surrogate_function, ThresholdSurrogate):
            return self.surrogate_function(self.v - self.v_threshold, self.v_threshold)
        theta = self.v_threshold.to(self.v.dtype)
        return self.surrogate_function(self.v - torch.nextafter(theta, torch.full_like(
            theta, float("inf"))))

    def neuronal_reset(self, spike: torch.Tensor) -> None:
        spike = spike.detach() if self.detach_reset else spike
        if self.v_reset is None:
            self.v = self.v - self.v_threshold.to(spike.dtype) * spike
        else:
            self.v = spike * self.v_reset + (1.0 - spike) * self.v


class SpikingJellyNeurons(NeuronAdapter):
    name = "spikingjelly"
    layout = "TN"  # SpikingJelly's multi-step mode: (T, N, ...)

    def make(self, op: IF, shape: tuple[int, ...], spike: Any) -> nn.Module:
        return StrictIFNode(threshold_view(op, shape), None if op.reset == "subtract" else 0.0,
                            op.v_init, spike)

    def reset(self, module: nn.Module) -> None:
        module.reset()

    def step(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module.single_step_forward(x)  # whatever set_step_mode gave the node
