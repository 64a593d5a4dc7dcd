"""Structural ops: graph input and output, fan-in sum, flatten, zero padding; average pooling."""

from __future__ import annotations

import math
from dataclasses import dataclass

from spikeshield.compiler.ir.ops.base import Op, Shape, register_op, require
from spikeshield.compiler.ir.ops.layers import _pair


@register_op("input")
@dataclass(eq=False)
class Input(Op):
    """Graph input of batch-less ``shape``; values are pixels in [0, 1] unless the graph says otherwise."""

    structural = True

    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)

    def infer_shape(self, in_shape: Shape) -> Shape:
        return self.shape

    def validate(self, in_shape: Shape) -> None:
        require(len(self.shape) > 0 and min(self.shape) > 0, f"input shape {self.shape} is empty")


@register_op("output")
@dataclass(eq=False)
class Output(Op):
    """Graph output: ``y = x``. In an SNN the output is non-spiking: ``y`` is ``x`` averaged over time."""

    conversion = "kept: the readout, its input averaged over T steps"
    structural = True


@register_op("sum")
@dataclass(eq=False)
class Sum(Op):
    """Explicit merge point: ``y = sum of all incoming values`` (residual add)."""

    structural = True


@register_op("flatten")
@dataclass(eq=False)
class Flatten(Op):
    """Flatten the whole batch-less shape into features: ``(C, H, W) -> (C*H*W,)``, C-order."""

    structural = True

    def infer_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)


@register_op("avgpool2d")
@dataclass(eq=False)
class AvgPool2d(Op):
    """Average pooling over ``kernel`` windows with zero padding; ``count_include_pad`` as in torch:
    ``y[c, i, j] = mean of the window`` (the divisor counts padded zeros when ``count_include_pad``).
    """

    pooling = True

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)
    count_include_pad: bool = True

    def __post_init__(self) -> None:
        self.kernel, self.stride, self.padding = (
            _pair(self.kernel),
            _pair(self.stride),
            _pair(self.padding),
        )

    def infer_shape(self, in_shape: Shape) -> Shape:
        c, h, w = in_shape
        out = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip((h, w), self.padding, self.kernel, self.stride)]
        return (c, out[0], out[1])

    def validate(self, in_shape: Shape) -> None:
        require(len(in_shape) == 3, f"expects a (C, H, W) input, got {in_shape}")
        require(min(self.kernel + self.stride) >= 1 and min(self.padding) >= 0,
                f"kernel and stride must be >= 1 and padding >= 0, got kernel {self.kernel}, "
                f"stride {self.stride}, padding {self.padding}")
        require(min(self.infer_shape(in_shape)[1:]) > 0, f"input {in_shape} is smaller than the kernel")


@register_op("pad2d")
@dataclass(eq=False)
class Pad2d(Op):
    """Zero padding of the two spatial dims: ``(C, H, W) -> (C, top + H + bottom, left + W + right)``
    with zeros around (``pads`` = left, right, top, bottom, as ``F.pad`` takes them). Symmetric pads
    before a convolution or pooling fold into that op; this one holds the rest (asymmetric pads)."""

    structural = True

    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        self.pads = tuple(int(p) for p in self.pads)

    def infer_shape(self, in_shape: Shape) -> Shape:
        c, h, w = in_shape
        left, right, top, bottom = self.pads
        return (c, h + top + bottom, w + left + right)

    def validate(self, in_shape: Shape) -> None:
        require(len(self.pads) == 4 and min(self.pads) >= 0,
                f"pads must be four sizes >= 0 (left, right, top, bottom), got {self.pads}")
        require(len(in_shape) == 3, f"expects a (C, H, W) input, got {in_shape}")
