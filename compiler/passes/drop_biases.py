"""Remove the biases of conv, linear and scale nodes, for chips without bias inputs.

This changes what the network computes; the caller re-measures accuracy and reports the cost (the
export report does). Precondition: a valid graph. Postcondition: no bias tensors remain.
"""

from __future__ import annotations

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import Conv2d, Linear, Scale
from spikeshield.compiler.passes.registry import PassResult, register_pass


@register_pass("drop_biases")
def drop_biases(graph: Graph) -> PassResult:
    graph = graph.copy()
    dropped = []
    for name in graph.nodes_of(Conv2d, Linear, Scale):
        op = graph.op(name)
        if op.bias is not None:
            graph.set_op(name, op.replace(bias=None))
            dropped.append(name)
    return PassResult(graph, bool(dropped), {"dropped": dropped})
