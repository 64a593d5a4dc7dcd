"""Merge bias-free per-channel scales into the weights of the conv/linear layer they feed.

A :class:`Scale` without bias whose value reaches exactly one conv/linear layer, directly or through
average pooling and flatten (which commute with a per-channel scale), is removed and its factors are
multiplied into that layer's input channels. After calibration this leaves the reference model form:
binary spikes into plain weights. Scales that feed a sum (residual shortcut) or the output stay.

Precondition: a valid graph. Postcondition: the same function; fewer ``scale`` nodes.
"""

from __future__ import annotations

import math

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import AvgPool2d, Conv2d, Flatten, Scale
from spikeshield.compiler.passes.registry import PassResult, register_pass


def _target(graph: Graph, name: str) -> tuple[str, list[str]] | None:
    """The conv/linear that alone consumes ``name`` (through pool/flatten), and the path to it."""
    path, node = [], name
    while True:
        consumers = graph.consumers(node)
        if len(consumers) != 1 or len(graph.inputs(consumers[0])) != 1:
            return None
        node = consumers[0]
        op = graph.op(node)
        if op.synaptic:
            return node, path
        if not isinstance(op, (AvgPool2d, Flatten)):
            return None
        path.append(node)


@register_pass("fold_scales")
def fold_scales(graph: Graph) -> PassResult:
    graph = graph.copy()
    folded = []
    for name in graph.nodes_of(Scale):
        op: Scale = graph.op(name)
        if op.bias is not None:
            continue
        found = _target(graph, name)
        if found is None:
            continue
        target, path = found
        layer = graph.op(target)
        factor = op.scale
        if isinstance(layer, Conv2d):
            if layer.groups != 1 and factor.numel() > 1:
                continue
            factor = factor.view(1, -1, 1, 1)
        else:
            flattens = [p for p in path if isinstance(graph.op(p), Flatten)]
            if factor.numel() > 1 and flattens:
                # channel c owns the H*W consecutive features that flatten makes of it
                factor = factor.repeat_interleave(math.prod(graph.in_shape(flattens[0])[1:]))
            factor = factor.view(1, -1)
        graph.set_op(target, layer.replace(weight=layer.weight * factor))
        graph.remove(name)
        folded.append(name)
    return PassResult(graph, bool(folded), {"folded": folded})
