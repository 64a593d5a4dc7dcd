"""Fuse a quantised clip activation (QCFS, Bu et al., ICLR 2022) into one quantised ReLU.

Conversion-aware training code (spikeshield's own ``--activation qcfs``, and the published QCFS
code) writes ``lam * clamp(floor(x * L / lam + shift) / L, 0, 1)`` with ``floor`` and ``clamp``;
it lowers into Scale nodes, a ``floor``, more Scale nodes, a clipped ReLU and Scale nodes. The
pattern matched, with each affine map a chain of per-layer :class:`Scale` nodes (each read by the
next alone):

    k = floor(a * x + b);  y = s3 * clamp(s2 * k, 0, c) + b3

with ``s2 > 0``, ``s3 > 0``, no bias after the floor, ``b3 = 0``, ``L = c / s2`` a whole number and
``a * s2 * s3 = 1``: then ``y = lam / L * clamp(floor(x * L / lam + b), 0, L)`` with
``lam = s3 * c``, a :class:`ReLU` with ceiling ``lam``, ``levels`` L and ``shift`` b. Conversion
turns it into IF neurons with threshold ``lam`` and initial potential ``b x lam``, which send exactly
that over T = L steps. ANN values move by float rounding only.

Precondition: a valid graph. Postcondition: the same function (up to rounding); no ``floor`` left
in a matched pattern.
"""

from __future__ import annotations

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import Floor, ReLU
from spikeshield.compiler.ir.ops.neurons import valid_ceiling, valid_v_init
from spikeshield.compiler.passes.affine_chains import (
    affine_chain,
    affine_chain_before,
    close,
    only_consumer,
)
from spikeshield.compiler.passes.registry import PassResult, register_pass


def _match(graph: Graph, floor: str) -> tuple[list[str], str, ReLU] | None:
    """(nodes to remove, the clamp node that becomes the fused ReLU, the fused op)."""
    before = affine_chain_before(graph, floor)
    if before is None:
        return None
    chain_a, a, b, _ = before
    after = affine_chain(graph, floor)
    if after is not None:
        chain_b, s2, b2, clamp = after
    else:  # clamp(floor(...), 0, L) directly
        chain_b, s2, b2, clamp = [], 1.0, 0.0, only_consumer(graph, floor) or ""
    if not clamp or not isinstance(graph.op(clamp), ReLU):
        return None
    relu: ReLU = graph.op(clamp)
    if relu.ceiling is None or relu.levels is not None or not (s2 > 0 and b2 == 0):
        return None
    outer = affine_chain(graph, clamp)
    chain_c, s3, b3 = (outer[0], outer[1], outer[2]) if outer is not None else ([], 1.0, 0.0)
    levels = relu.ceiling / s2
    ceiling = s3 * relu.ceiling
    if not (s3 > 0 and b3 == 0 and close(levels, round(levels)) and round(levels) >= 1
            and close(a * s2 * s3, 1.0) and valid_ceiling(ceiling) and valid_v_init(b)):
        return None
    fused = ReLU(ceiling=ceiling, levels=int(round(levels)), shift=b)
    return [*chain_a, floor, *chain_b, *chain_c], clamp, fused


@register_pass("fuse_quantized_relu")
def fuse_quantized_relu(graph: Graph) -> PassResult:
    graph = graph.copy()
    fused: dict[str, dict[str, float]] = {}
    for floor in graph.nodes_of(Floor):
        match = _match(graph, floor)
        if match is None:
            continue
        remove, clamp, op = match
        graph.set_op(clamp, op)
        for node in remove:
            graph.remove(node)
        fused[clamp] = {"ceiling": op.ceiling, "levels": op.levels, "shift": op.shift}
    graph.validate()
    return PassResult(graph, bool(fused), {"fused": fused})
