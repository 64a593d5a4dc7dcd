"""Correct each spiking layer's bias so that its mean output matches the ANN's, layer by layer,
without labels (the bias correction of Li et al., ICML 2021, "A free lunch from ANN: towards
efficient, accurate spiking neural networks calibration").

A converted layer's output ``rate x threshold`` is a biased estimate of the ANN activation it
replaces: quantisation floors it (unless the membrane starts at half the threshold), the reset
loses charge, and the error of every earlier layer arrives in its input. For each IF node in
topological order, with the layers before it already corrected: the mean over the calibration data
of the ANN's activation (``relu`` of the ANN's current, clipped at the threshold, which is the most a
spiking layer can send) minus the mean of the SNN's output, per channel, is added to the bias of the
synaptic layer that feeds the node (directly, or through a residual ``sum``). The ANN is the graph's
own ANN proxy (every IF as ``relu(I) / threshold``: the source ANN's arithmetic), so no second graph
is needed; both run as one frontier each, so the pass costs about one SNN and one ANN forward pass
per batch.

Precondition: a calibrated SNN (``calibrate_thresholds``). Postcondition: thresholds unchanged; the
bias of the synaptic layer before each corrected IF node changed by that layer's mean error; layers
with no bias to change (fed by a node other consumers also read) are listed as skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from spikeshield.compiler.ir.errors import ConfigError, PassError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Sum
from spikeshield.compiler.passes.registry import PassResult, register_pass


def bias_owner(graph: Graph, name: str) -> str | None:
    """The synaptic node whose bias shifts IF node ``name``'s input current alone: its single
    parent, or a synaptic input of that parent when it is a residual sum; None if there is none."""
    if len(graph.inputs(name)) != 1:  # one edge of count 1: a bias step shifts the current once
        return None
    (parent,) = graph.inputs(name)
    if graph.consumers(parent) != [name]:
        return None
    candidates = [parent]
    if isinstance(graph.op(parent), Sum):
        candidates = [p for p in graph.inputs(parent) if graph.consumers(p) == [parent]]
    for candidate in candidates:
        if graph.op(candidate).synaptic and graph.inputs(parent).count(candidate) <= 1:
            return candidate
    return None


def _channel_means(values: list[torch.Tensor], sample_ndim: int) -> torch.Tensor:
    """Mean per channel (first sample dim) over every other dim of ``([T,] N, C, ...)`` tensors."""
    total, count = None, 0
    for v in values:
        channel_dim = v.dim() - sample_ndim
        flat = v.movedim(channel_dim, 0).reshape(v.shape[channel_dim], -1)
        total = flat.sum(dim=1) if total is None else total + flat.sum(dim=1)
        count += flat.shape[1]
    return total / count


@register_pass("correct_biases")
def correct_biases(
    graph: Graph,
    data: Sequence[torch.Tensor] | Iterable[torch.Tensor],
    timesteps: int | None = None,
    batches: int = 11,
    device: str | torch.device = "cpu",
) -> PassResult:
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.kernels import channel_view
    from spikeshield.runtime.neurons import IFParameters, if_rate

    if not graph.meta.get("calibrated"):
        raise PassError("bias correction needs calibrated thresholds; run calibrate_thresholds first")
    timesteps = timesteps or graph.run_spec().timesteps
    if timesteps <= 0:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
    batches_x = [x.to(device) for _, x in zip(range(batches), data)]
    if not batches_x:
        raise ConfigError("bias correction needs at least one batch of data")
    graph = graph.copy()
    executor = GraphExecutor(graph).to(device).eval()
    snn = executor.frontier(batches_x, timesteps)
    ann = executor.frontier(batches_x, timesteps, proxy=True)
    corrections: dict[str, list[float]] = {}
    skipped: list[str] = []
    for name in graph.nodes_of(IF):
        op = graph.op(name)
        sample_ndim = len(graph.in_shape(name))
        target_currents = ann.advance_to(name)
        currents = snn.advance_to(name)
        owner = bias_owner(graph, name)
        if owner is None:
            skipped.append(name)
            continue
        with torch.no_grad():
            ndim = sample_ndim + 1
            theta = channel_view(op.threshold.to(device), ndim)
            targets = [torch.minimum(torch.relu(c), theta) for c in target_currents]
            params = IFParameters(theta, op.reset, v_init=op.v_init)
            outputs = [if_rate(c, params, timesteps, sample_ndim) * theta for c in currents]
            error = _channel_means(targets, sample_ndim) - _channel_means(outputs, sample_ndim)
        delta = error  # one per channel of this layer, which are the owner's output channels
        owner_op = graph.op(owner)
        bias = owner_op.bias if owner_op.bias is not None else torch.zeros(len(delta))
        graph.set_op(owner, owner_op.replace(bias=(bias + delta.cpu()).float()))
        # The frontier's stored value entering this node moves with the bias (nothing read it yet).
        (parent,) = graph.inputs(name)
        snn.shift(parent, channel_view(delta, sample_ndim + 1))
        corrections[name] = [round(v, 6) for v in delta.tolist()[:8]]
    graph.meta["bias_correction"] = {"timesteps": timesteps, "batches": len(batches_x),
                                     "corrected": len(corrections), "skipped": skipped}
    return PassResult(graph, bool(corrections), {"corrections": corrections, "skipped": skipped})
