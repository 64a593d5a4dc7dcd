"""Set every IF neuron's initial membrane potential (a fraction of its threshold), for targets whose
neurons always start at zero.

Thresholds and resets are kept; the caller re-measures accuracy (a membrane starting at zero floors
spike counts where one starting at half the threshold rounds them). Precondition: a valid graph.
Postcondition: every IF neuron has ``v_init`` equal to ``v_init``.
"""

from __future__ import annotations

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF
from spikeshield.compiler.ir.ops.neurons import valid_v_init
from spikeshield.compiler.passes.registry import PassResult, register_pass


@register_pass("set_initial_potential")
def set_initial_potential(graph: Graph, v_init: float = 0.0) -> PassResult:
    if not valid_v_init(v_init):
        raise ConfigError(f"v_init is a fraction of the threshold in [0, 1), got {v_init!r}")
    graph = graph.copy()
    changed = [n for n in graph.nodes_of(IF) if graph.op(n).v_init != v_init]
    for name in changed:
        graph.set_op(name, graph.op(name).replace(v_init=v_init))
    graph.meta["v_init"] = v_init
    return PassResult(graph, bool(changed), {"changed": changed})
