"""Fuse the two-ReLU clip ``u - relu(u - relu(x))`` into one clipped ReLU ``clamp(x, 0, u)``.

Conversion-oriented model code often clips an activation at ``u`` with two ReLUs and two affine
maps instead of ``clamp``. Left alone, each ReLU becomes an IF layer: twice the neurons, spikes and
latency for what one IF neuron's saturation does exactly. The pattern matched is

    r = relu(x);  y = a2 * relu(a1 * r + b1) + b2

where each affine map is a chain of :class:`Scale` nodes (each read by the next node alone), with
the same factors for every channel, ``a1 < 0``, ``u = -b1 / a1 > 0``, ``a1 * a2 = 1`` and
``b2 = u``: then ``y = min(r, u)``. The first ReLU takes the ceiling ``u`` and the rest of the
pattern is removed. ANN values move by float rounding only (the two subtractions round; ~1 ulp
of ``u``).

Precondition: a valid graph. Postcondition: the same function (up to rounding); fewer ``relu``.
"""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import ReLU, Scale
from spikeshield.compiler.passes.registry import PassResult, register_pass

_RTOL = 1e-6  # how closely a1 * a2 must equal 1 and b2 equal u (the constants of real code)


def _only_consumer(graph: Graph, name: str) -> str | None:
    consumers = graph.consumers(name)
    if len(consumers) != 1 or graph.inputs(consumers[0]) != [name]:
        return None
    return consumers[0]


def _affine_chain(graph: Graph, name: str) -> tuple[list[str], float, float, str] | None:
    """The Scale nodes after ``name`` (each the only reader of the one before), their composed
    map ``a * value + b`` when it is the same for every channel, and the node after the chain."""
    chain, a, b = [], 1.0, 0.0
    node = _only_consumer(graph, name)
    while node is not None and isinstance(graph.op(node), Scale):
        op: Scale = graph.op(node)
        bias = op.bias if op.bias is not None else torch.zeros(1)
        if not (bool((op.scale == op.scale.flatten()[0]).all())
                and bool((bias == bias.flatten()[0]).all())):
            return None
        scale, shift = float(op.scale.flatten()[0]), float(bias.flatten()[0])
        a, b = scale * a, scale * b + shift
        chain.append(node)
        node = _only_consumer(graph, node)
    return (chain, a, b, node or "") if chain else None


def _close(x: float, y: float) -> bool:
    return abs(x - y) <= _RTOL * max(abs(x), abs(y))


@register_pass("fuse_clipped_relu")
def fuse_clipped_relu(graph: Graph) -> PassResult:
    graph = graph.copy()
    fused: dict[str, float] = {}
    for first in graph.nodes_of(ReLU):
        if first not in graph or graph.op(first).ceiling is not None:
            continue
        inner = _affine_chain(graph, first)
        if inner is None or not inner[3] or not isinstance(graph.op(inner[3]), ReLU):
            continue
        chain1, a1, b1, second = inner
        if graph.op(second).ceiling is not None:
            continue
        outer = _affine_chain(graph, second)
        if outer is None:
            continue
        chain2, a2, b2, _ = outer
        if not (a1 < 0 and b1 > 0):
            continue
        ceiling = -b1 / a1
        if not (_close(a1 * a2, 1.0) and _close(b2, ceiling)):
            continue
        graph.set_op(first, ReLU(ceiling=ceiling))
        for node in [*chain1, second, *chain2]:
            graph.remove(node)
        fused[first] = ceiling
    graph.validate()
    return PassResult(graph, bool(fused), {"fused": fused})
