"""Chains of per-layer affine maps (``Scale`` nodes), as the activation-fusing passes match them.

Not a pass: the helpers that ``fuse_clipped_relu`` and ``fuse_quantized_relu`` share.
"""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import Scale

RTOL = 1e-6  # how closely constants must agree to match (the float constants of real code)


def close(x: float, y: float) -> bool:
    return abs(x - y) <= RTOL * max(abs(x), abs(y))


def only_consumer(graph: Graph, name: str) -> str | None:
    """The node that alone reads ``name``, through one edge; None otherwise."""
    consumers = graph.consumers(name)
    if len(consumers) != 1 or graph.inputs(consumers[0]) != [name]:
        return None
    return consumers[0]


def uniform_map(op: Scale) -> tuple[float, float] | None:
    """``(a, b)`` when the Scale is ``a * x + b`` with the same factors for every channel."""
    bias = op.bias if op.bias is not None else torch.zeros(1)
    if not (bool((op.scale == op.scale.flatten()[0]).all())
            and bool((bias == bias.flatten()[0]).all())):
        return None
    return float(op.scale.flatten()[0]), float(bias.flatten()[0])


def affine_chain(graph: Graph, name: str) -> tuple[list[str], float, float, str] | None:
    """The Scale nodes after ``name`` (each the only reader of the one before), their composed
    map ``a * value + b`` when it is the same for every channel, and the node after the chain."""
    chain, a, b = [], 1.0, 0.0
    node = only_consumer(graph, name)
    while node is not None and isinstance(graph.op(node), Scale):
        mapped = uniform_map(graph.op(node))
        if mapped is None:
            return None
        scale, shift = mapped
        a, b = scale * a, scale * b + shift
        chain.append(node)
        node = only_consumer(graph, node)
    return (chain, a, b, node or "") if chain else None


def affine_chain_before(graph: Graph, name: str) -> tuple[list[str], float, float, str] | None:
    """The Scale nodes before ``name`` (each read by the next alone), in graph order, their
    composed map and the node that feeds the chain; None when ``name`` is not fed by such a chain."""
    chain: list[str] = []
    node = name
    while True:
        inputs = graph.inputs(node)
        if len(inputs) != 1:
            break
        parent = inputs[0]
        if not isinstance(graph.op(parent), Scale) or only_consumer(graph, parent) != node:
            break
        chain.insert(0, parent)
        node = parent
    if not chain or len(graph.inputs(chain[0])) != 1:
        return None
    a, b = 1.0, 0.0
    for scale_node in chain:
        mapped = uniform_map(graph.op(scale_node))
        if mapped is None:
            return None
        a, b = mapped[0] * a, mapped[0] * b + mapped[1]
    return chain, a, b, graph.inputs(chain[0])[0]
