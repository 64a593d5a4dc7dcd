"""Activation and neuron ops: the ANN's ReLU (and the floor of quantised activations) and the
SNN's integrate-and-fire neuron."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spikeshield.compiler.ir.ops.base import Op, Shape, register_op, require, tensor_field

RESET_MODES = ("zero", "subtract")


def valid_ceiling(value: object) -> bool:
    """Whether ``value`` can be a clipped ReLU's ceiling: a finite positive number."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def valid_v_init(value: object) -> bool:
    """Whether ``value`` can be an IF neuron's initial potential: a fraction in [0, 1)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0.0 <= value < 1.0)


@register_op("relu")
@dataclass(eq=False)
class ReLU(Op):
    """Rectified linear unit: ``y = max(x, 0)``; with a ``ceiling`` c, the clipped ReLU
    ``y = min(max(x, 0), c)`` (``clamp(x, 0, c)``, ``ReLU6``, ``Hardtanh(0, c)``).

    A clipped ReLU is what an IF neuron computes anyway: it fires at most once per step, so its
    rate saturates. Conversion keeps the ceiling as the largest threshold calibration may set.

    With ``levels`` L as well, the quantised clip of conversion-aware training (QCFS, Bu et al.,
    ICLR 2022): ``y = c / L * clamp(floor(x * L / c + shift), 0, L)``, which is exactly what an IF
    neuron with threshold c, reset by subtraction and initial potential ``shift x c`` sends over
    T = L steps of a constant input. Conversion then sets that threshold and start directly: no
    calibration. Its gradient in the runtime is the clipped ReLU's (straight through the floor).
    """

    conversion = ("becomes an IF neuron (convert_relu_to_if), its threshold calibrated "
                  "(at most the ceiling of a clipped ReLU; the ceiling itself when quantised)")

    ceiling: float | None = None
    levels: int | None = None
    shift: float = 0.0

    def validate(self, in_shape: Shape) -> None:
        super().validate(in_shape)
        require(self.ceiling is None or valid_ceiling(self.ceiling),
                f"a ReLU ceiling must be a positive number, got {self.ceiling!r}")
        require(self.levels is None or (isinstance(self.levels, int) and self.levels >= 1
                                        and self.ceiling is not None),
                f"a quantised ReLU needs levels >= 1 and a ceiling, got levels={self.levels!r}")
        require(valid_v_init(self.shift),
                f"a quantised ReLU's shift is in [0, 1), got {self.shift!r}")


@register_op("floor")
@dataclass(eq=False)
class Floor(Op):
    """``y = floor(x)``: the rounding step of a quantised activation (QCFS:
    ``c * clamp(floor(x * L / c + 0.5) / L, 0, 1)``). Its gradient in the runtime is the identity
    (straight through), as in the training code that uses it; a true zero gradient would mask every
    attack on the ANN.
    """

    conversion = ("fused with the affine maps and clamp around it into a quantised ReLU "
                  "(fuse_quantized_relu); a floor anywhere else has no spiking equivalent")


@register_op("if")
@dataclass(eq=False)
class IF(Op):
    """Integrate-and-fire neuron, no leak, one update per time step (dt = 1 step)::

        v[t] = v[t-1] + x[t]                      (v[-1] = v_init * threshold at every pass)
        s[t] = 1 if v[t] > threshold else 0       (strict, as NIR's IF; spikes are binary)
        v[t] = v[t] * (1 - s[t])                  reset="zero"
        v[t] = v[t] - threshold * s[t]            reset="subtract"

    ``threshold``: ``(1,)`` (one per layer) or ``(C,)`` (one per channel, channel dim 0), in the units
    of the input current ``x``. ``v_init``: the initial membrane potential as a fraction of the
    threshold, in [0, 1). At 0.5 a constant current's spike count is rounded instead of floored
    (``round(T x / threshold)`` rather than ``floor``), which halves the conversion error at low T.
    """

    conversion = "already spiking"
    neuron = True

    threshold: torch.Tensor = tensor_field()
    reset: str = "zero"
    v_init: float = 0.0

    def validate(self, in_shape: Shape) -> None:
        super().validate(in_shape)
        require(valid_v_init(self.v_init),
                f"v_init is a fraction of the threshold in [0, 1), got {self.v_init!r}")
        require(self.reset in RESET_MODES, f"reset must be one of {RESET_MODES}, got {self.reset!r}")
        require(self.threshold.dim() == 1, "threshold must be 1-D: (1,) per layer or (C,) per channel")
        require(
            self.threshold.shape[0] in (1, in_shape[0]),
            f"threshold has {self.threshold.shape[0]} entries; need 1 or {in_shape[0]}",
        )
        require(bool((self.threshold > 0).all()), "thresholds must be positive")
