"""The SNN as a ``torch.nn.Module`` of one SNN framework's own neurons, built from the IR.

Every framework below runs its neurons one time step per call, fed by ordinary ``torch.nn`` layers
(``Conv2d``, ``Linear``, ``AvgPool2d`` ...), which is how their users write networks. So one module,
:class:`SpikingGraphModule`, holds the stateless layers (built here once for all frameworks) and
one neuron module per IF node made by the framework's :class:`NeuronAdapter`, all registered as its
direct children (as in the frameworks' tutorials, where their reset helpers look for them); it
walks the graph in topological order each step, summing fan-in as the IR does (residual
connections included). Each neuron keeps its own membrane, so the framework's own reset
(``snntorch.utils.reset``, ``sinabs.reset_states``, SpikingJelly's ``functional.reset_net``)
returns it to the compiled initial potential.

Equivalence with ``spikeshield.runtime`` (tested against the real packages): the same stateless
ops in float32; each IF layer integrates ``v += I``, spikes where ``v > threshold`` (the framework's
own comparison where it fires at ``v >= threshold`` is used only with a surrogate of the user's),
resets by subtraction or to zero and starts at ``v_init * threshold``; the logits are the output
layer's value averaged over the T steps. The spike's gradient is
:class:`~spikeshield.backends.frameworks.spike.ThresholdSurrogate`: by default the surrogate the SNN
was finetuned with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spikeshield.backends.frameworks.spike import ThresholdSurrogate
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
    """How one framework makes, resets and steps an IF layer. Subclasses set ``name`` and
    ``layout`` (how the framework's users lay out a sequence: ``"TN"`` time first, ``"NT"`` batch
    first) and implement :meth:`make` (the framework's neuron for ``op``, holding its own membrane,
    its threshold and initial potential as buffers so that ``.to(dtype/device)`` moves them),
    :meth:`reset` (forget the membrane: the next step starts at ``v_init * threshold``, as the
    framework's own reset does for these neurons) and :meth:`step` (one step: the spikes)."""

    name = "framework"
    layout = "TN"

    def make(self, op: IF, shape: tuple[int, ...], spike: ThresholdSurrogate) -> nn.Module:
        raise NotImplementedError

    def reset(self, module: nn.Module) -> None:
        raise NotImplementedError

    def step(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def threshold_view(op: IF, shape: tuple[int, ...]) -> torch.Tensor:
    """The layer's threshold (one value, or one per channel) shaped to broadcast over
    ``(N, *shape)``: ``(C, 1, 1)`` for a conv layer, ``(C,)`` for features, ``()`` if per layer."""
    theta = op.threshold.detach().float().reshape(-1)
    if theta.numel() == 1:
        return theta.reshape(())
    return theta.reshape(-1, *([1] * (len(shape) - 1)))


def rest_potential(v_rest: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The membrane before the first step, ``v_init * threshold`` (the buffer ``v_rest``), at every
    neuron of a batch shaped like ``x``, in ``x``'s dtype (a fresh tensor)."""
    return v_rest.to(x.dtype).expand_as(x).clone()


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


STEP_MODES = ("m", "s")
LAYOUTS = ("TN", "NT", "flat")


class SpikingGraphModule(nn.Module):
    """A compiled SNN as a module of one framework's neurons (see the module docstring).

    ``step_mode`` (SpikingJelly's names; ``functional.set_step_mode`` sets it):

    - ``"m"`` (default): one call is a whole run from the initial state. A static image
      ``(N, *input shape)`` is fed at every step of the compiled T (or ``timesteps``) and the call
      returns the logits, the output averaged over the steps. A sequence returns the output at
      every step in the sequence's own layout: ``layout="TN"`` ``(T, N, ...)``, ``"NT"``
      ``(N, T, ...)``, or ``"flat"``: Sinabs' squeezed ``(N*T, ...)``, ``T`` the compiled one.
    - ``"s"``: one call is one step of ``(N, *input shape)``, returning the output at that step;
      the membranes carry on until :meth:`reset` or the framework's own reset.

    ``spike_counts`` holds each IF layer's spikes per sample (``(N,)``, as ``spikeshield run``
    reports them) since the last reset, ``neuron_spike_counts`` each neuron's.
    """

    def __init__(self, graph: Graph, adapter: NeuronAdapter, spike: ThresholdSurrogate,
                 step_mode: str = "m", layout: str | None = None) -> None:
        super().__init__()
        graph.validate()
        problems = unsupported_nodes(graph, adapter.name)
        if problems:
            raise UnsupportedOpError(f"the {adapter.name} backend cannot build {len(problems)} "
                                     "part(s) of the graph: " + "; ".join(problems))
        self.adapter = adapter
        self.framework = adapter.name
        self.step_mode = step_mode
        self.layout = layout or adapter.layout
        self._check_modes()
        self.timesteps = resolve_timesteps(None, graph.run_spec().timesteps)
        self.input_shape = tuple(graph.op(graph.input_names[0]).shape)
        # (node, child name, what it is: input, neuron, layer or pass (output, sum), inputs)
        self._plan: list[tuple[str, str, str, list[str]]] = []
        self._neurons: dict[str, str] = {}  # IR name -> child name
        for i, name in enumerate(graph.nodes()):
            op = graph.op(name)
            key = f"{op.kind}{i}_" + "".join(c if c.isalnum() else "_" for c in name)
            shape = tuple(graph.in_shape(name)) if not isinstance(op, Input) else ()
            role = "input" if isinstance(op, Input) else "pass"
            if type(op) in LAYERS:
                self.add_module(key, LAYERS[type(op)](op, shape))
                role = "layer"
            elif isinstance(op, IF):
                self.add_module(key, adapter.make(op, shape, spike))
                self._neurons[name] = key
                role = "neuron"
            self._plan.append((name, key, role, graph.inputs(name)))
        self._output = graph.output_names[0]
        self.spike_counts: dict[str, torch.Tensor] = {}
        self.neuron_spike_counts: dict[str, torch.Tensor] = {}

    def _check_modes(self) -> None:
        if self.step_mode not in STEP_MODES:
            raise ConfigError(f"step_mode must be 'm' (a whole run per call) or 's' (one step per "
                              f"call), got {self.step_mode!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    @property
    def neuron_layers(self) -> list[str]:
        """The IR names of the IF layers, in order."""
        return list(self._neurons)

    @property
    def ir_names(self) -> dict[str, str]:
        """Each child module's name -> the IR node it computes (for tools that walk children)."""
        return {key: name for name, key, role, _ in self._plan if role in ("layer", "neuron")}

    def neuron(self, name: str) -> nn.Module:
        """The framework's neuron module of IR layer ``name``."""
        return self.get_submodule(self._neurons[name])

    def reset(self) -> None:
        """Return every membrane to ``v_init * threshold`` and forget the spike counts."""
        for key in self._neurons.values():
            self.adapter.reset(self._modules[key])
        self.spike_counts = {}
        self.neuron_spike_counts = {}

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One time step of input ``x`` ``(N, *input shape)``: the output layer's value."""
        values: dict[str, torch.Tensor] = {}
        for name, key, role, inputs in self._plan:
            if role == "input":
                values[name] = x
                continue
            current = values[inputs[0]]
            for other in inputs[1:]:
                current = current + values[other]
            if role == "neuron":
                spikes = self.adapter.step(self._modules[key], current)
                self._count(name, spikes.detach())
                values[name] = spikes
            elif role == "layer":
                values[name] = self._modules[key](current)
            else:  # output, sum: the (summed) input passes through
                values[name] = current
        return values[self._output]

    def _count(self, name: str, spikes: torch.Tensor) -> None:
        before = self.neuron_spike_counts.get(name)
        total = spikes if before is None or before.shape != spikes.shape else before + spikes
        self.neuron_spike_counts[name] = total
        self.spike_counts[name] = total.flatten(1).sum(dim=1)

    def forward(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        self._check_modes()
        rank = len(self.input_shape) + 1
        if self.step_mode == "s":
            self._check_shape(x, rank, "(N, {})")
            return self.step(x)
        if x.dim() == rank + 1 or self.layout == "flat":
            return self._run_sequence(x)
        self._check_shape(x, rank, "(N, {}) or a sequence of them")
        if timesteps is None and not self.timesteps:
            raise ConfigError("this SNN records no number of time steps; pass timesteps=T")
        steps = resolve_timesteps(timesteps, self.timesteps)  # within SPIKESHIELD_MAX_TIMESTEPS
        self.reset()
        total = None
        for _ in range(steps):
            out = self.step(x)
            total = out if total is None else total + out
        return total / steps

    def _run_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """A whole sequence in :attr:`layout`: the output at each step, in the same layout."""
        rank = len(self.input_shape) + 1
        if self.layout == "flat":
            self._check_shape(x, rank, "(N*T, {}) (layout 'flat')")
            steps = resolve_timesteps(None, self.timesteps)
            if not steps or x.shape[0] % steps:
                raise ConfigError(f"layout 'flat' takes (N*T, ...) with T = {steps}; got "
                                  f"{x.shape[0]} rows")
            x = x.reshape(-1, steps, *x.shape[1:])
        self._check_shape(x, rank + 1, "(T, N, {})" if self.layout == "TN" else "(N, T, {})")
        resolve_timesteps(x.shape[0 if self.layout == "TN" else 1], None)  # the step bound
        self.reset()
        frames = x.unbind(0 if self.layout == "TN" else 1)
        outputs = torch.stack([self.step(frame) for frame in frames],
                              dim=0 if self.layout == "TN" else 1)
        return outputs.flatten(0, 1) if self.layout == "flat" else outputs

    def _check_shape(self, x: torch.Tensor, rank: int, expected: str) -> None:
        if x.dim() != rank or tuple(x.shape[-len(self.input_shape):]) != self.input_shape:
            raise ConfigError(f"input of shape {tuple(x.shape)}; in step_mode {self.step_mode!r} "
                              f"the SNN takes " + expected.format(", ".join(map(str,
                                                                             self.input_shape))))
