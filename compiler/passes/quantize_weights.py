"""Quantise conv/linear weights to signed ``bits``-bit integers with one scale per layer.

Symmetric, round-to-nearest: ``step = max|W| / (2**(bits-1) - 1)``, ``W <- round(W / step) * step``.
The graph keeps the dequantised float weights, which are exactly ``integer * step``, so every runtime,
NIR and ONNX export computes what the integer hardware computes up to that per-layer factor; the
integers and steps are recorded in ``graph.meta["quantization"]`` for toolchains that want them.
Biases stay float (chips with biases hold them at a higher precision).

Precondition: a valid graph. Postcondition: the same structure; every weighted layer on the grid.
"""

from __future__ import annotations

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.passes.registry import PassResult, register_pass


@register_pass("quantize_weights")
def quantize_weights(graph: Graph, bits: int = 8) -> PassResult:
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(f"weight bits must be an integer from 2 to 16, got {bits!r}")
    graph = graph.copy()
    levels = 2 ** (bits - 1) - 1
    steps: dict[str, float] = {}
    for name in graph.synaptic_nodes():
        op = graph.op(name)
        peak = float(op.weight.abs().max())
        if peak == 0:
            continue
        step = peak / levels
        integers = (op.weight / step).round().clamp(-levels, levels)
        graph.set_op(name, op.replace(weight=integers * step))
        steps[name] = step
    graph.meta["quantization"] = {"bits": bits, "scheme": "symmetric per layer", "steps": steps}
    return PassResult(graph, bool(steps), {"bits": bits, "layers": len(steps)})
