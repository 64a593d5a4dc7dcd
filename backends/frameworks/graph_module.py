"""The SNN as a ``torch.nn.Module`` of one SNN framework's own neurons, built from the IR.

Every framework below runs its neurons one time step per call, fed by ordinary ``torch.nn`` layers
(``Conv2d``, ``Linear``, ``AvgPool2d`` ...), which is how their users write networks. So one module,
:class:`SpikingGraphModule`, holds the stateless layers (built here once for all frameworks) and
one neuron module per IF node made by the framework's :class:`NeuronAdapter`; it walks the graph in
topological order each step, summing fan-in as the IR does (residual connections included).

Equivalence with ``spikeshield.runtime`` (tested against the real packages): the same stateless
ops in float32; each IF layer integrates ``v += I``, spikes where ``v`` crosses the threshold,
resets by subtraction or to zero and starts at ``v_init * threshold``; the logits are the output
layer's value averaged over the T steps. Frameworks that spike at ``v >= threshold`` (SpikingJelly,
Sinabs) fire at :func:`firing_threshold`, the next float32 above the threshold, which is the
runtime's ``v > threshold`` exactly (a membrane that lands exactly on its threshold is not rare:
measured on a per-channel VGG-11 with a half-threshold start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spikeshield.compiler.ir.errors import ConfigError, UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import resolve_timesteps
from spikeshield.compiler.ir.ops import (
    IF,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Floor,
    Input,
    Linear,
    Op,
    OpCoverage,
    Output,
    Pad2d,
    ReLU,
    Scale,
    Sum,
    kinds,
)


class NeuronAdapter:
    """How one framework makes and steps an IF layer. Subclasses set ``name`` and implement
    :meth:`make` (the framework's module for ``op``), :meth:`start` (the state before the first step,
    ``v = v_init * threshold``) and :meth:`step` (one step: spikes and the next state). The state is
    whatever the framework keeps (a tensor, a named tuple, or ``None`` where the module holds it)."""

    name = "framework"

    def make(self, op: IF, shape: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    def start(self, module: nn.Module, op: IF, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def step(self, module: nn.Module, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError


def threshold_view(op: IF, shape: tuple[int, ...]) -> torch.Tensor:
    """The layer's threshold (one value, or one per channel) shaped to broadcast over
    ``(N, *shape)``: ``(C, 1, 1)`` for a conv layer, ``(C,)`` for features, ``()`` if per layer."""
    theta = op.threshold.detach().float().reshape(-1)
    if theta.numel() == 1:
        return theta.reshape(())
    return theta.reshape(-1, *([1] * (len(shape) - 1)))


def firing_threshold(theta: torch.Tensor) -> torch.Tensor:
    """For a framework that spikes at ``v >= t``: the ``t`` at which it spikes exactly where
    ``v > theta`` (float32: no value lies between ``theta`` and the next float above it). The
    reset still subtracts ``theta``."""
    theta = theta.float()
    return torch.nextafter(theta, torch.full_like(theta, float("inf")))


def initial_potential(op: IF, shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """``v_init * threshold`` at every neuron of a batch shaped like ``x`` (a fresh tensor)."""
    theta = threshold_view(op, shape).to(x)
    return (op.v_init * theta).expand_as(x).clone()


class ChannelScale(nn.Module):
    """``y = scale * x (+ bias)`` per channel (the IR's ``scale`` op; plain torch has none)."""

    def __init__(self, op: Scale, ndim: int) -> None:
        super().__init__()
        view = (-1,) + (1,) * (ndim - 1)
        self.register_buffer("scale", op.scale.detach().float().reshape(view).clone())
        bias = None if op.bias is None else op.bias.detach().float().reshape(view).clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.scale
        return y if self.bias is None else y + self.bias


def _weight(op: Conv2d | Linear) -> torch.Tensor:
    """The weight with pruned synapses zeroed (the mask is baked in)."""
    weight = op.weight.detach().float()
    return weight * op.mask.detach().float() if op.mask is not None else weight


def _conv2d(op: Conv2d, shape: tuple[int, ...]) -> nn.Module:
    out_channels, in_per_group, kh, kw = op.weight.shape
    conv = nn.Conv2d(in_per_group * op.groups, out_channels, (kh, kw), op.stride, op.padding,
                     op.dilation, op.groups, bias=op.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(_weight(op))
        if op.bias is not None:
            conv.bias.copy_(op.bias.detach().float())
    return conv


def _linear(op: Linear, shape: tuple[int, ...]) -> nn.Module:
    out_features, in_features = op.weight.shape
    linear = nn.Linear(in_features, out_features, bias=op.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(_weight(op))
        if op.bias is not None:
            linear.bias.copy_(op.bias.detach().float())
    return linear


# Stateless IR op -> its torch.nn layer (the same for every framework).
LAYERS: dict[type[Op], Callable[[Any, tuple[int, ...]], nn.Module]] = {
    Conv2d: _conv2d,
    Linear: _linear,
    Scale: lambda op, shape: ChannelScale(op, len(shape)),
    AvgPool2d: lambda op, shape: nn.AvgPool2d(op.kernel, op.stride, op.padding,
                                              count_include_pad=op.count_include_pad),
    Flatten: lambda op, shape: nn.Flatten(1),
    Pad2d: lambda op, shape: nn.ZeroPad2d(op.pads),
}
# Ops the module walks itself: the input, the output, fan-in sums and the neurons.
WALKED = (Input, Output, Sum, IF)
NOT_SUPPORTED = {
    ReLU: "an ANN op: convert the ANN first (spikeshield compile) so ReLUs become IF neurons",
    Floor: "an ANN op: convert the ANN first (spikeshield compile)",
    BatchNorm: "fold it into the preceding conv/linear first (pass fold_batchnorm)",
}
COVERAGE = OpCoverage("framework backends (backends.frameworks)",
                      handled=kinds(LAYERS) | kinds(WALKED),
                      not_supported={op.kind: reason for op, reason in NOT_SUPPORTED.items()})


def unsupported_nodes(graph: Graph, framework: str) -> list[str]:
    """Every reason ``graph`` cannot become a module of ``framework``, one line each."""
    problems = []
    for name in graph.nodes():
        op = graph.op(name)
        if type(op) in NOT_SUPPORTED:
            problems.append(f"node {name!r} ({op.kind}): {NOT_SUPPORTED[type(op)]}")
        elif type(op) not in LAYERS and not isinstance(op, WALKED):
            problems.append(f"node {name!r} ({op.kind}): not supported by the {framework} backend")
    if any(recurrent for _, _, recurrent in graph.edges()):
        problems.append("recurrent edges: the framework backends build feed-forward SNNs only")
    if len(graph.output_names) > 1:
        problems.append(f"{len(graph.output_names)} outputs: the framework backends build one")
    if not graph.nodes_of(IF):
        problems.append(f"graph {graph.name!r} has no IF neurons: convert the ANN first")
    if graph.run_spec().encoding != "direct":
        problems.append(f"input encoding {graph.run_spec().encoding!r}: the framework backends feed "
                        "the analog input at every step (direct); rate-code the inputs yourself "
                        "or recompile with --encoding direct")
    return problems


class SpikingGraphModule(nn.Module):
    """A compiled SNN as a module of one framework's neurons (see the module docstring).

    ``forward(x, timesteps=None)`` resets every neuron, runs ``timesteps`` steps (default: the T the
    graph was compiled for) of the analog input ``x`` ``(N, *input shape)`` and returns the logits,
    the output layer's value averaged over the steps. ``spike_counts`` then holds each IF layer's
    spikes per sample (``(N,)``, as ``spikeshield run`` reports them), ``neuron_spike_counts``
    each neuron's (``(N, *layer shape)``). For a step-by-step loop of
    your own: :meth:`reset`, then :meth:`step` once per time step.
    """

    def __init__(self, graph: Graph, adapter: NeuronAdapter) -> None:
        super().__init__()
        graph.validate()
        problems = unsupported_nodes(graph, adapter.name)
        if problems:
            raise UnsupportedOpError(f"the {adapter.name} backend cannot build {len(problems)} "
                                     "part(s) of the graph: " + "; ".join(problems))
        self.adapter = adapter
        self.framework = adapter.name
        self.timesteps = resolve_timesteps(None, graph.run_spec().timesteps)
        self.input_shape = tuple(graph.op(graph.input_names[0]).shape)
        self.layers = nn.ModuleDict()
        self._plan: list[tuple[str, str, Op, list[str]]] = []  # (node, module key, op, inputs)
        self._neurons: dict[str, IF] = {}
        for i, name in enumerate(graph.nodes()):
            op = graph.op(name)
            key = f"{i}_" + "".join(c if c.isalnum() else "_" for c in name)
            shape = tuple(graph.in_shape(name)) if not isinstance(op, Input) else ()
            if type(op) in LAYERS:
                self.layers[key] = LAYERS[type(op)](op, shape)
            elif isinstance(op, IF):
                self.layers[key] = adapter.make(op, shape)
                self._neurons[name] = op
            self._plan.append((name, key, op, graph.inputs(name)))
        self._output = graph.output_names[0]
        self._states: dict[str, Any] = {}
        self.spike_counts: dict[str, torch.Tensor] = {}
        self.neuron_spike_counts: dict[str, torch.Tensor] = {}

    @property
    def neuron_layers(self) -> list[str]:
        """The IR names of the IF layers, in order."""
        return list(self._neurons)

    def reset(self) -> None:
        """Forget every membrane: the next :meth:`step` starts from ``v_init * threshold``."""
        self._states = {}
        self.spike_counts = {}
        self.neuron_spike_counts = {}

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One time step of input ``x``: the output layer's value at this step."""
        values: dict[str, torch.Tensor] = {}
        for name, key, op, inputs in self._plan:
            if isinstance(op, Input):
                values[name] = x
                continue
            current = values[inputs[0]]
            for other in inputs[1:]:
                current = current + values[other]
            if isinstance(op, IF):
                module = self.layers[key]
                if name not in self._states:
                    self._states[name] = self.adapter.start(module, op, current)
                spikes, self._states[name] = self.adapter.step(module, current, self._states[name])
                per_neuron = spikes.detach()
                if name in self.neuron_spike_counts:
                    per_neuron = per_neuron + self.neuron_spike_counts[name]
                self.neuron_spike_counts[name] = per_neuron
                self.spike_counts[name] = per_neuron.flatten(1).sum(dim=1)
                values[name] = spikes
            elif key in self.layers:
                values[name] = self.layers[key](current)
            else:  # output, sum: the (summed) input passes through
                values[name] = current
        return values[self._output]

    def forward(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        if timesteps is None and not self.timesteps:
            raise ConfigError("this SNN records no number of time steps; pass timesteps=T")
        steps = resolve_timesteps(timesteps, self.timesteps)  # within SPIKESHIELD_MAX_TIMESTEPS
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"input of shape {tuple(x.shape)}; the SNN takes (N, "
                              f"{', '.join(map(str, self.input_shape))})")
        self.reset()
        total = None
        for _ in range(steps):
            out = self.step(x)
            total = out if total is None else total + out
        return total / steps
