"""Set how the input is presented over time: ``direct`` (the analog frame every step) or ``poisson``
(each pixel value p in [0, 1] a spike with probability p per step), for chips that take events only.

Only ``graph.meta["encoding"]`` changes; the caller re-measures accuracy. Postcondition: the same graph.
"""

from __future__ import annotations

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.run_spec import ENCODINGS
from spikeshield.compiler.passes.registry import PassResult, register_pass


@register_pass("set_encoding")
def set_encoding(graph: Graph, encoding: str = "poisson") -> PassResult:
    if encoding not in ENCODINGS:
        raise ConfigError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    graph = graph.copy()
    changed = graph.run_spec().encoding != encoding
    graph.meta["encoding"] = encoding
    return PassResult(graph, changed, {"encoding": encoding})
