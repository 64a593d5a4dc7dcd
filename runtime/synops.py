"""Count the synaptic work of a spiking network from the spikes the runtime actually produced.

A **SynOp** is one spike arriving over one existing synapse: per time step, a weighted layer (conv or
linear) performs ``sum over outputs of sum over its existing synapses of the events on their inputs``,
computed exactly as ``conv(events, connectivity).sum()`` with a 0/1 connectivity kernel
(``weight != 0``). That makes the count

- *mask-aware*: a pruned synapse (or any zero weight) never counts;
- *border-aware*: in a padded convolution, the kernel taps that fall on padding are not synapses.

Events flow from the neurons that emitted them to the next weighted layer: through ``Flatten`` and
``Scale`` unchanged, summed at a ``Sum`` (residual merges), and through an ``AvgPool2d`` as window
*sums* of spikes: an event-driven chip folds the pool into the next layer's synapses, so every spike
reaching a weighted layer through a pool costs that layer's fan-out and the pool costs nothing itself.
A weighted layer whose input is not made of spikes (the first layer under direct encoding) performs
multiply-accumulates instead: its **MACs** are counted once per sample (the runtime computes the
constant input current once) and per time step (a chip fed the analog image every step).

Bias additions, membrane updates and threshold comparisons are not counted (nor are they in the
SynOp counts of the papers this follows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import (
    IF,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Input,
    Linear,
    Op,
    OpCoverage,
    Output,
    Pad2d,
    Scale,
    Sum,
    kinds,
)
from spikeshield.runtime.data import Dataset
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.progress import progress_bar


def connectivity(op: Op, dense: bool = False) -> torch.Tensor:
    """The 0/1 synapse kernel of a layer: ``weight != 0`` (all ones with ``dense``)."""
    if dense:
        return torch.ones_like(op.weight)
    return (op.weight != 0).to(op.weight.dtype)


# How each synaptic op routes its input through its synapses (with a 0/1 ``kernel`` in place of
# its weight, the output counts the synaptic events). Every synaptic kind must be here.
ROUTES: dict[type[Op], Callable[[Op, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    Conv2d: lambda op, x, k: F.conv2d(x, k, None, op.stride, op.padding, op.dilation, op.groups),
    Linear: lambda op, x, k: F.linear(x, k),
}
# How spike events pass through each weightless op on their way to the next synapses ((T, N, ...)
# events in, events out): the values of a sum or a scale are the same events, a pooling sums them
# over its window, padding adds none.
PROPAGATE: dict[type[Op], Callable[[Op, torch.Tensor], torch.Tensor]] = {
    Sum: lambda op, e: e,
    Scale: lambda op, e: e,
    BatchNorm: lambda op, e: e,
    Output: lambda op, e: e,
    Flatten: lambda op, e: e.flatten(2),
    AvgPool2d: lambda op, e: _pool_sums(op, e.flatten(0, 1)).unflatten(0, e.shape[:2]),
    Pad2d: lambda op, e: F.pad(e, op.pads),
}
COVERAGE = OpCoverage(
    "SynOp counter (runtime.synops)",
    handled=kinds(ROUTES) | kinds(PROPAGATE) | kinds((IF, Input)),
    not_supported={"relu": "SynOps are counted on spiking graphs: compile the ANN first",
                   "floor": "SynOps are counted on spiking graphs: compile the ANN first"},
)


def synaptic_work(op: Op, inputs: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-sample ``sum over outputs and synapses of inputs`` for ``inputs`` ``(B, *in_shape)``."""
    out = ROUTES[type(op)](op, inputs, kernel.to(inputs.device, inputs.dtype))
    return out.flatten(1).sum(dim=1)


def layer_macs(graph: Graph, name: str, dense: bool = False) -> int:
    """Multiply-accumulates of one pass of a weighted layer over its existing synapses (border-aware)."""
    op = graph.op(name)
    ones = torch.ones(1, *graph.in_shape(name))
    return round(float(synaptic_work(op, ones, connectivity(op, dense))[0]))


def _pool_sums(op: AvgPool2d, events: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(events, op.kernel, op.stride, op.padding, divisor_override=1)


@dataclass
class SynOpCounts:
    """Counts summed over the samples seen; divide by ``samples`` for per-sample means."""

    samples: int = 0
    timesteps: int = 0
    # weighted layer -> (T,) SynOps summed over samples, per time step
    synops_per_step: dict[str, torch.Tensor] = field(default_factory=dict)
    # the same spikes over a dense connectivity (every synapse present)
    dense_synops: dict[str, float] = field(default_factory=dict)
    # weighted layer -> per-sample SynOps (N,)
    synops_per_sample: dict[str, list[float]] = field(default_factory=dict)
    # weighted layers fed by analog values -> MACs of one pass (existing / dense synapses)
    analog_macs: dict[str, int] = field(default_factory=dict)
    # IF layer -> spikes summed over samples and steps; neuron counts
    spikes: dict[str, float] = field(default_factory=dict)
    neurons: dict[str, int] = field(default_factory=dict)

    def synops(self, name: str) -> float:
        """Mean SynOps per sample of one weighted layer."""
        return float(self.synops_per_step[name].sum()) / max(1, self.samples)

    def spike_rate(self, name: str) -> float:
        """Mean spikes per neuron per time step of one IF layer."""
        return self.spikes[name] / max(1, self.samples * self.neurons[name] * self.timesteps)


class _EventTracker:
    """Follows events through the graph during one forward pass and counts each weighted layer."""

    def __init__(self, graph: Graph, counts: SynOpCounts) -> None:
        self.graph, self.counts = graph, counts
        self.events: dict[str, torch.Tensor | None] = {}
        self.kernels = {n: connectivity(graph.op(n)) for n in graph.synaptic_nodes()}
        self.dense = {n: connectivity(graph.op(n), dense=True) for n in graph.synaptic_nodes()}

    def incoming(self, name: str) -> torch.Tensor | None:
        parts = [self.events.get(p) for p in self.graph.inputs(name)]
        if not parts or any(p is None for p in parts):
            return None
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum(dim=0)

    def __call__(self, name: str, value: torch.Tensor, temporal: bool) -> None:
        op = self.graph.op(name)
        if isinstance(op, (IF, Input)):
            self.events[name] = value.detach() if temporal else None
            if isinstance(op, IF):
                self.counts.spikes[name] = self.counts.spikes.get(name, 0.0) + float(value.sum())
            return
        events = self.incoming(name)
        if op.synaptic:
            self.events[name] = None  # a current, not events
            if events is not None:
                self._count(name, op, events)
            return
        # Sums arrive here already added (incoming); the others pass their events on.
        self.events[name] = None if events is None else PROPAGATE[type(op)](op, events)

    def _count(self, name: str, op, events: torch.Tensor) -> None:
        steps, batch = events.shape[:2]
        flat = events.flatten(0, 1)
        work = synaptic_work(op, flat, self.kernels[name]).view(steps, batch)
        dense = synaptic_work(op, flat, self.dense[name]).sum()
        c = self.counts
        c.synops_per_step[name] = c.synops_per_step.get(name, torch.zeros(steps)) + work.sum(1).cpu()
        c.dense_synops[name] = c.dense_synops.get(name, 0.0) + float(dense)
        c.synops_per_sample.setdefault(name, []).extend(work.sum(0).cpu().tolist())


def count_synops(
    graph: Graph,
    data: Dataset,
    timesteps: int,
    encoding: str = "direct",
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> SynOpCounts:
    """Run ``graph`` for ``timesteps`` steps on ``data`` and count its SynOps, MACs and spikes."""
    executor = GraphExecutor(graph, encoding=encoding).to(device).eval()
    counts = SynOpCounts(timesteps=timesteps)
    counts.neurons = {n: int(torch.tensor(graph.shape(n)).prod()) for n in graph.nodes_of(IF)}
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for x, _ in progress_bar(data.batches(batch_size, device=device), total=data.num_batches(batch_size),
                         desc=f"counting SynOps T={timesteps}", leave=False, disable=None):
            tracker = _EventTracker(graph, counts)
            executor(x, timesteps, observe=tracker, generator=generator)
            counts.samples += len(x)
    for name in graph.synaptic_nodes():
        if name not in counts.synops_per_step:
            counts.analog_macs[name] = layer_macs(graph, name)
    return counts
