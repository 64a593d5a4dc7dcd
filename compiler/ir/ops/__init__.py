"""The IR's op vocabulary: one small dataclass per op, grouped by family.

Every op registers itself with :func:`register_op`. That one registry drives serialization
(:mod:`spikeshield.compiler.ir.serialize`), runtime and backend dispatch, and the test parametrised over
every op. Shapes are batch-less and time-less: ``(C, H, W)`` for images, ``(F,)`` for features.
"""

from __future__ import annotations

from spikeshield.compiler.ir.ops.base import (
    OPS,
    Op,
    OpCoverage,
    Shape,
    kinds,
    op_class,
    register_op,
    tensor_field,
)
from spikeshield.compiler.ir.ops.layers import BatchNorm, Conv2d, Linear, Scale
from spikeshield.compiler.ir.ops.neurons import IF, Floor, ReLU
from spikeshield.compiler.ir.ops.structure import AvgPool2d, Flatten, Input, Output, Pad2d, Sum

__all__ = [
    "OPS",
    "Op",
    "OpCoverage",
    "Shape",
    "kinds",
    "op_class",
    "register_op",
    "tensor_field",
    "AvgPool2d",
    "BatchNorm",
    "Conv2d",
    "Flatten",
    "Floor",
    "IF",
    "Input",
    "Linear",
    "Output",
    "Pad2d",
    "ReLU",
    "Scale",
    "Sum",
]
