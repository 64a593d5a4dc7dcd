"""Fold batch normalisation into the preceding conv/linear, or keep it as a per-channel affine.

Precondition: a valid graph. Postcondition: no ``batchnorm`` node remains. In ``fold`` mode each
BatchNorm whose only input is a conv/linear used by nothing else is merged into that layer's weight and
bias; any other BatchNorm (and all of them in ``keep`` mode) becomes an equivalent :class:`Scale`. The
graph computes the same function (up to float rounding).
"""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import BatchNorm, Scale
from spikeshield.compiler.passes.registry import PassResult, register_pass

BN_MODES = ("fold", "keep")


@register_pass("fold_batchnorm")
def fold_batchnorm(graph: Graph, mode: str = "fold") -> PassResult:
    if mode not in BN_MODES:
        raise ConfigError(f"batchnorm mode must be one of {BN_MODES}, got {mode!r}")
    graph = graph.copy()
    folded, kept = [], []
    for name in graph.nodes_of(BatchNorm):
        bn: BatchNorm = graph.op(name)
        scale, shift = bn.affine()
        inputs = graph.inputs(name)
        producer = inputs[0] if len(inputs) == 1 else None
        foldable = (
            mode == "fold"
            and producer is not None
            and graph.op(producer).synaptic
            and graph.consumers(producer) == [name]
        )
        if foldable:
            layer = graph.op(producer)
            view = (-1,) + (1,) * (layer.weight.dim() - 1)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
            graph.set_op(
                producer,
                layer.replace(weight=layer.weight * scale.view(view), bias=bias * scale + shift),
            )
            graph.remove(name)
            folded.append(name)
        else:
            graph.set_op(name, Scale(scale=scale, bias=shift))
            kept.append(name)
    return PassResult(graph, bool(folded or kept), {"folded": folded, "kept_as_scale": kept})
