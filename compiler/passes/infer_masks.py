"""Recover the connectivity masks of a pruned model from its zeros.

File formats without a notion of masks (torch.export, ONNX, NIR) store a pruned synapse as a weight
that is exactly 0.0. A trained weight is never exactly zero by chance, so every exact zero of a
conv/linear weight is taken as a pruned synapse: it gets mask 0 and stays zero through finetuning.
Layers without zeros stay unmasked.

Precondition: a valid graph. Postcondition: every conv/linear weight with zeros has a mask equal to
``weight != 0`` (combined with any mask it had).
"""

from __future__ import annotations

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.passes.registry import PassResult, register_pass


@register_pass("infer_masks")
def infer_masks(graph: Graph) -> PassResult:
    graph = graph.copy()
    masked = {}
    for name in graph.synaptic_nodes():
        op = graph.op(name)
        nonzero = (op.weight != 0).to(op.weight.dtype)
        if bool(nonzero.all()):
            continue
        mask = nonzero if op.mask is None else nonzero * op.mask
        graph.set_op(name, op.replace(mask=mask))
        masked[name] = float(1 - mask.mean())
    return PassResult(graph, bool(masked), {"sparsity": masked})
