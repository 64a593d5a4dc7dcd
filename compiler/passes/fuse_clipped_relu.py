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

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import ReLU
from spikeshield.compiler.passes.affine_chains import affine_chain, close
from spikeshield.compiler.passes.registry import PassResult, register_pass


@register_pass("fuse_clipped_relu")
def fuse_clipped_relu(graph: Graph) -> PassResult:
    graph = graph.copy()
    fused: dict[str, float] = {}
    for first in graph.nodes_of(ReLU):
        if first not in graph or graph.op(first).ceiling is not None:
            continue
        inner = affine_chain(graph, first)
        if inner is None or not inner[3] or not isinstance(graph.op(inner[3]), ReLU):
            continue
        chain1, a1, b1, second = inner
        if graph.op(second).ceiling is not None:
            continue
        outer = affine_chain(graph, second)
        if outer is None:
            continue
        chain2, a2, b2, _ = outer
        if not (a1 < 0 and b1 > 0):
            continue
        ceiling = -b1 / a1
        if not (close(a1 * a2, 1.0) and close(b2, ceiling)):
            continue
        graph.set_op(first, ReLU(ceiling=ceiling))
        for node in [*chain1, second, *chain2]:
            graph.remove(node)
        fused[first] = ceiling
    graph.validate()
    return PassResult(graph, bool(fused), {"fused": fused})
