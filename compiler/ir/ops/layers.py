"""Weighted, stateless ops: convolution, dense, batch normalisation, per-channel scale.

Conv2d and Linear may carry a connectivity ``mask`` (same shape as ``weight``, entries 0 or 1): a 0 is
a pruned synapse. The invariant, checked by ``validate``, is that the weight is exactly zero wherever
the mask is 0, so every consumer of ``weight`` (runtime, exporters, accounting) sees the pruned
network without knowing about masks; the mask tells training passes which zeros must stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spikeshield.compiler.ir.ops.base import Op, Shape, register_op, require, tensor_field


def validate_mask(weight: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise :class:`IRValidationError` unless ``mask`` is None or a 0/1 tensor shaped like
    ``weight`` with ``weight`` exactly zero wherever ``mask`` is 0."""
    if mask is None:
        return
    require(
        tuple(mask.shape) == tuple(weight.shape),
        f"mask shape {tuple(mask.shape)} does not fit weight shape {tuple(weight.shape)}; "
        "a connectivity mask must have exactly the weight's shape",
    )
    require(
        bool(((mask == 0) | (mask == 1)).all()),
        "mask holds values other than 0 and 1; a connectivity mask is binary",
    )
    leaked = int(((mask == 0) & (weight != 0)).sum())
    require(
        leaked == 0,
        f"{leaked} pruned weights (mask 0) are nonzero; multiply the weight by its mask",
    )


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


@register_op("conv2d")
@dataclass(eq=False)
class Conv2d(Op):
    """2-D cross-correlation: ``y[o] = b[o] + sum_{c,k} W[o, c, k] * x_padded[c, s*i + d*k]``.

    ``weight``: ``(out, in/groups, kh, kw)``; ``bias``: ``(out,)`` or None; ``mask``: connectivity
    shaped like ``weight`` or None (see the module docstring). Zero padding. Units: the
    output is in the units of the input times the weight (currents, in an SNN).
    """

    synaptic = True
    frozen_fields = ("mask",)

    weight: torch.Tensor = tensor_field()
    bias: torch.Tensor | None = tensor_field(optional=True)
    mask: torch.Tensor | None = tensor_field(optional=True)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        self.stride, self.padding, self.dilation = (
            _pair(self.stride),
            _pair(self.padding),
            _pair(self.dilation),
        )

    def infer_shape(self, in_shape: Shape) -> Shape:
        _, h, w = in_shape
        kh, kw = self.weight.shape[2:]
        out_hw = [
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(
                (h, w), self.padding, self.dilation, (kh, kw), self.stride
            )
        ]
        return (int(self.weight.shape[0]), out_hw[0], out_hw[1])

    def validate(self, in_shape: Shape) -> None:
        super().validate(in_shape)
        require(min(self.stride + self.dilation) >= 1 and min(self.padding) >= 0,
                f"stride and dilation must be >= 1 and padding >= 0, got stride {self.stride}, "
                f"dilation {self.dilation}, padding {self.padding}")
        require(self.groups >= 1, f"groups must be >= 1, got {self.groups}")
        require(self.weight.dim() == 4, f"weight must be 4-D (out, in, kh, kw), got {tuple(self.weight.shape)}")
        require(len(in_shape) == 3, f"expects a (C, H, W) input, got {in_shape}")
        require(
            in_shape[0] == self.weight.shape[1] * self.groups,
            f"input has {in_shape[0]} channels but the weight expects "
            f"{self.weight.shape[1] * self.groups}",
        )
        require(
            self.bias is None or tuple(self.bias.shape) == (self.weight.shape[0],),
            f"bias shape {tuple(self.bias.shape) if self.bias is not None else None} does not match "
            f"{self.weight.shape[0]} output channels",
        )
        require(min(self.infer_shape(in_shape)[1:]) > 0, f"input {in_shape} is too small for this kernel")
        validate_mask(self.weight, self.mask)


@register_op("linear")
@dataclass(eq=False)
class Linear(Op):
    """Dense layer: ``y = W x + b``; ``weight``: ``(out, in)``, ``bias``: ``(out,)`` or None,
    ``mask``: ``(out, in)`` connectivity or None (see the module docstring)."""

    synaptic = True
    frozen_fields = ("mask",)

    weight: torch.Tensor = tensor_field()
    bias: torch.Tensor | None = tensor_field(optional=True)
    mask: torch.Tensor | None = tensor_field(optional=True)

    def infer_shape(self, in_shape: Shape) -> Shape:
        return (int(self.weight.shape[0]),)

    def validate(self, in_shape: Shape) -> None:
        super().validate(in_shape)
        require(self.weight.dim() == 2, f"weight must be 2-D (out, in), got {tuple(self.weight.shape)}")
        require(
            len(in_shape) == 1 and in_shape[0] == self.weight.shape[1],
            f"expects a ({self.weight.shape[1]},) input, got {in_shape}; insert a flatten before it",
        )
        require(
            self.bias is None or tuple(self.bias.shape) == (self.weight.shape[0],),
            "bias shape does not match the number of outputs",
        )
        validate_mask(self.weight, self.mask)


@register_op("batchnorm")
@dataclass(eq=False)
class BatchNorm(Op):
    """Batch normalisation with frozen statistics (inference form), over channel dim 0:
    ``y[c] = (x[c] - running_mean[c]) / sqrt(running_var[c] + eps) * weight[c] + bias[c]``.

    The ``fold_batchnorm`` pass folds it into the preceding conv/linear or turns it into a :class:`Scale`.
    """

    conversion = "folded into the preceding conv/linear (fold_batchnorm), or kept as a scale"
    frozen_fields = ("running_mean", "running_var")

    running_mean: torch.Tensor = tensor_field()
    running_var: torch.Tensor = tensor_field()
    weight: torch.Tensor | None = tensor_field(optional=True)
    bias: torch.Tensor | None = tensor_field(optional=True)
    eps: float = 1e-5

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The equivalent per-channel ``(scale, shift)``: ``y = scale * x + shift``."""
        gamma = self.weight if self.weight is not None else torch.ones_like(self.running_mean)
        beta = self.bias if self.bias is not None else torch.zeros_like(self.running_mean)
        scale = gamma / torch.sqrt(self.running_var + self.eps)
        return scale, beta - self.running_mean * scale

    def validate(self, in_shape: Shape) -> None:
        super().validate(in_shape)
        channels = self.running_mean.shape[0]
        require(in_shape[0] == channels, f"normalises {channels} channels, input has {in_shape[0]}")
        require(bool((self.running_var >= 0).all()), "running_var has negative entries")
        require(isinstance(self.eps, (int, float)) and self.eps >= 0,
                f"eps must be a number >= 0 (it is added to the variance), got {self.eps!r}")


@register_op("scale")
@dataclass(eq=False)
class Scale(Op):
    """Per-channel affine map over channel dim 0: ``y[c] = scale[c] * x[c] + bias[c]``.

    ``scale`` and ``bias`` are ``(1,)`` (one value for all channels) or ``(C,)``; ``bias`` may be None.
    It expresses input normalisation ``(x - mean) / std``, batch norm kept as an affine, learnable
    residual weights, and the value one spike stands for after conversion.
    """

    conversion = "folded into the next layer when it has no bias (fold_scales), else kept"

    scale: torch.Tensor = tensor_field()
    bias: torch.Tensor | None = tensor_field(optional=True)

    def validate(self, in_shape: Shape) -> None:
        super().validate(in_shape)
        for name, value in self.tensors().items():
            require(value.dim() == 1, f"{name} must be 1-D, got shape {tuple(value.shape)}")
            require(
                value.shape[0] in (1, in_shape[0]),
                f"{name} has {value.shape[0]} entries; need 1 or {in_shape[0]} (one per channel)",
            )
