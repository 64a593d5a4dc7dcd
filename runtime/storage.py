"""What storing a network's synaptic weights costs: parameters, nonzeros, and bytes as a dense array,
in CSR and as a bitmap, at fp32, fp16 and int8 weight precision.

Formats (a conv weight ``(out, in, kh, kw)`` is the matrix ``(out, in*kh*kw)``):

- ``dense``: every weight, ``rows * cols * b`` bytes for ``b``-byte weights.
- ``csr``: the nonzero values (``nnz * b``), one column index per nonzero and ``rows + 1`` row
  pointers. Each index is the narrowest unsigned integer (8, 16 or 32 bits) that can hold it:
  columns need ``cols - 1``, row pointers need ``nnz``.
- ``bitmap``: one bit per weight position (``ceil(rows * cols / 8)`` bytes) plus the nonzero values.

A weight counts as stored when it is nonzero; biases, thresholds and scales are counted apart
(``other_parameters``) and are not part of the weight reduction factor.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import OPS, OpCoverage

# Storage is counted from the synaptic trait alone (``weight`` and ``mask``): a synaptic kind is
# counted, any other kind stores no synapses. Nothing here is written per kind.
COVERAGE = OpCoverage("stored-weight accounting (runtime.storage)", handled=frozenset(OPS))

PRECISIONS = {"fp32": 4, "fp16": 2, "int8": 1}
FORMATS = ("dense", "csr", "bitmap")


def index_bits(largest: int) -> int:
    """Bits of the narrowest unsigned integer (8, 16, 32 or 64) that holds ``largest``."""
    for bits in (8, 16, 32):
        if largest < 1 << bits:
            return bits
    return 64


def matrix_bytes(rows: int, cols: int, nnz: int, value_bytes: int) -> dict[str, int]:
    """Bytes of a ``rows x cols`` matrix with ``nnz`` nonzeros in every format."""
    col_bits, ptr_bits = index_bits(max(cols - 1, 0)), index_bits(nnz)
    return {
        "dense": rows * cols * value_bytes,
        "csr": nnz * value_bytes + nnz * col_bits // 8 + (rows + 1) * ptr_bits // 8,
        "bitmap": math.ceil(rows * cols / 8) + nnz * value_bytes,
    }


def layer_storage(weight: torch.Tensor) -> dict[str, Any]:
    """Parameters, nonzeros, index widths and bytes per format and precision of one weight."""
    rows = int(weight.shape[0])
    cols = int(weight[0].numel()) if rows else 0
    nnz = int(torch.count_nonzero(weight))
    by_precision = {p: matrix_bytes(rows, cols, nnz, b) for p, b in PRECISIONS.items()}
    return {
        "weights": rows * cols,
        "nonzeros": nnz,
        "density": nnz / max(1, rows * cols),
        "matrix": [rows, cols],
        "csr_column_index_bits": index_bits(max(cols - 1, 0)),
        "csr_row_pointer_bits": index_bits(nnz),
        "bytes": by_precision,
        "best_format": {p: min(FORMATS, key=lambda f: (b[f], FORMATS.index(f)))
                        for p, b in by_precision.items()},
    }


def graph_storage(graph: Graph) -> dict[str, Any]:
    """Per weighted layer and in total: weights, nonzeros and bytes per format; the reduction of
    stored weights (and of bytes, each layer in its best format) against the dense network."""
    layers = {name: layer_storage(graph.op(name).weight) for name in graph.synaptic_nodes()}
    weights = sum(v["weights"] for v in layers.values())
    nonzeros = sum(v["nonzeros"] for v in layers.values())
    totals: dict[str, Any] = {"weights": weights, "nonzeros": nonzeros,
                              "weight_reduction": weights / max(1, nonzeros), "bytes": {}}
    for precision in PRECISIONS:
        per_format = {f: sum(v["bytes"][precision][f] for v in layers.values()) for f in FORMATS}
        best = sum(v["bytes"][precision][v["best_format"][precision]] for v in layers.values())
        per_format["best_per_layer"] = best
        per_format["reduction_vs_dense"] = per_format["dense"] / max(1, best)
        totals["bytes"][precision] = per_format
    other = 0
    for name in graph.nodes():
        for field, value in graph.op(name).tensors().items():
            if field not in ("weight", "mask"):
                other += value.numel()
    totals["other_parameters"] = other
    return {"layers": layers, "totals": totals}
