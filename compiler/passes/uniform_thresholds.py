"""Give every IF layer one threshold, 1, by folding each channel's threshold into the current that
reaches it (channel-wise weight normalisation, as Rueckauer et al. 2017 normalise layers).

An IF neuron with threshold ``theta_c`` fed the current ``I_c`` fires exactly when one with
threshold 1 fed ``I_c / theta_c`` does (its initial potential is a fraction of the threshold, so it
scales too): the spikes are the same up to float rounding, and the value one spike stands for (the
amplitude :class:`Scale` after the neuron, or the next layer's weights) does not change. Dividing
the current means dividing the rows of the synaptic layer that produces it (weights and bias); a
residual ``sum`` passes the division on to each of its inputs, and an input that is not a synaptic
layer of its own (an identity shortcut) gets a :class:`Scale` on that edge. Where the current comes
from anything else (kept batch norm, pooling), a :class:`Scale` goes right before the neuron.

This is how a network calibrated per channel runs on neurons with one threshold per layer: NIR's
portable profile, snn-mlir and Loihi's CUBA neurons (``../shared/METHOD.md`` section 9). The
compiled graph is the normalised one, so its exports are exact against the runtime.

Precondition: a calibrated SNN (thresholds set). Postcondition: every IF node's threshold is the
``(1,)`` tensor ``[1.0]``; ``meta['uniform_thresholds']``.
"""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.errors import PassError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Scale, Sum
from spikeshield.compiler.passes.registry import PassResult, register_pass


def _divide_rows(graph: Graph, name: str, factor: torch.Tensor) -> None:
    """Multiply synaptic node ``name``'s output channels (weight rows and bias) by ``factor``."""
    op = graph.op(name)
    rows = factor.reshape(-1, *([1] * (op.weight.dim() - 1)))
    bias = None if op.bias is None else op.bias * factor
    graph.set_op(name, op.replace(weight=op.weight * rows, bias=bias))


def _scale_edge(graph: Graph, src: str, dst: str, factor: torch.Tensor) -> None:
    """Put ``Scale(factor)`` on the edge ``src -> dst`` (all of its count)."""
    count = graph.disconnect(src, dst)
    scaled = graph.add(graph.unique_name(f"{src}_to_{dst}_scale"), Scale(scale=factor.clone()),
                       [src])
    graph.connect(scaled, dst, count=count)


def _scale_into(graph: Graph, node: str, consumer: str, factor: torch.Tensor) -> str:
    """Make the value ``node`` sends ``consumer`` ``factor`` times larger, changing only what
    ``consumer`` receives; returns how (for the report)."""
    op = graph.op(node)
    alone = graph.consumers(node) == [consumer] and graph.inputs(consumer).count(node) == 1
    if alone and op.synaptic:
        _divide_rows(graph, node, factor)
        return f"rows of {node}"
    if alone and isinstance(op, Scale):
        bias = None if op.bias is None else op.bias * factor
        graph.set_op(node, Scale(scale=op.scale * factor, bias=bias))
        return f"scale {node}"
    if alone and isinstance(op, Sum):
        return ", ".join(_scale_into(graph, parent, node, factor)
                         for parent in dict.fromkeys(graph.inputs(node)))
    _scale_edge(graph, node, consumer, factor)
    return f"scale on {node} -> {consumer}"


@register_pass("uniform_thresholds")
def uniform_thresholds(graph: Graph) -> PassResult:
    if not graph.meta.get("calibrated"):
        raise PassError("uniform thresholds need calibrated ones; run calibrate_thresholds first")
    graph = graph.copy()
    folded: dict[str, str] = {}
    for name in graph.nodes_of(IF):
        op = graph.op(name)
        threshold = op.threshold.detach().reshape(-1).float()
        if not bool((threshold > 0).all()):
            raise PassError(f"node {name!r} has a threshold <= 0; calibrate it first")
        if threshold.numel() == 1 and float(threshold[0]) == 1.0:
            continue
        channels = graph.in_shape(name)[0]
        factor = (1.0 / threshold).expand(channels).clone()
        (parent,) = graph.inputs(name)
        folded[name] = _scale_into(graph, parent, name, factor)
        graph.set_op(name, op.replace(threshold=torch.ones(1)))
    graph.meta["uniform_thresholds"] = True
    graph.validate()
    return PassResult(graph, bool(folded), {"folded": folded})
