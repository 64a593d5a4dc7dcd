"""Switch every IF neuron to one reset mode (``zero`` or ``subtract``), for chips that offer only one.

Thresholds are kept; the caller re-measures accuracy (reset by subtraction keeps the residual charge
and usually tracks the ANN better). Precondition: a valid graph. Postcondition: one reset mode.
"""

from __future__ import annotations

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF
from spikeshield.compiler.ir.ops.neurons import RESET_MODES
from spikeshield.compiler.passes.registry import PassResult, register_pass


@register_pass("set_reset_mode")
def set_reset_mode(graph: Graph, reset: str = "subtract") -> PassResult:
    if reset not in RESET_MODES:
        raise ConfigError(f"reset must be one of {RESET_MODES}, got {reset!r}")
    graph = graph.copy()
    switched = [n for n in graph.nodes_of(IF) if graph.op(n).reset != reset]
    for name in switched:
        graph.set_op(name, graph.op(name).replace(reset=reset))
    graph.meta["reset"] = reset
    return PassResult(graph, bool(switched), {"switched": switched})
