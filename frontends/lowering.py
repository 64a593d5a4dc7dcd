"""The lowering base every frontend shares: one emit, one way to collect unsupported ops, one
name cleaner, and the constant helpers the fx and ONNX frontends both need.

A frontend walks its source graph once. Values that depend on the network input are :class:`Data`
(the IR node computing them); constants stay Python or tensor values; a value downstream of an op
that cannot be lowered is :data:`UNSUPPORTED`, so that each unsupported op is reported once. The
walk collects every problem before one error names them all (:meth:`Lowering.raise_collected`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spikeshield.compiler.ir.errors import IRValidationError, UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import Op, OpCoverage, Pad2d, ReLU, Shape


@dataclass(frozen=True)
class Data:
    """A value that depends on the network input: the IR node computing it."""

    node: str


class _Unsupported:
    """A value downstream of an unsupported op (not reported again)."""


UNSUPPORTED = _Unsupported()

MAXPOOL_HINT = ("replace it with AvgPool2d (or a strided conv) and retrain: max pooling has no "
                "faithful integrate-and-fire form")


@dataclass(frozen=True)
class Padded:
    """Data zero-padded by ``pads`` (left, right, top, bottom), waiting for the conv or pooling
    that consumes it to take the padding over (the IR pads inside those ops, symmetrically)."""

    data: Data
    pads: tuple[int, int, int, int]

    def symmetric(self) -> tuple[int, int] | None:
        left, right, top, bottom = self.pads
        return (top, left) if left == right and top == bottom else None


def take_padding(lw: Lowering, x: Any, padding: Any) -> tuple[Any, Any]:
    """``(data, padding)`` for an op that pads inside (a convolution, a pooling): a pending
    symmetric zero pad is folded into ``padding``; an asymmetric one becomes a ``Pad2d`` node."""
    if not isinstance(x, Padded):
        return x, padding
    extra = x.symmetric()
    if extra is None or isinstance(padding, str):
        return materialize(lw, x), padding
    base = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return x.data, (base[0] + extra[0], base[1] + extra[1])


def materialize(lw: Lowering, value: Any) -> Any:
    """A pending zero pad as a ``Pad2d`` node (for a consumer that cannot take it over)."""
    if not isinstance(value, Padded):
        return value
    return lw.emit(Pad2d(value.pads), [value.data])


def clean_name(name: Any) -> str:
    """An IR node name from any source name: letters, digits and underscores only. A corrupt file
    may hand over bytes (protobuf keeps invalid UTF-8 that way)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return "".join(c if c.isalnum() or c == "_" else "_" for c in str(name)) or "node"


def as_tensor(value: Any) -> torch.Tensor:
    """A constant (tensor, number or array) as a float32 tensor of its own."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().float()
    if isinstance(value, np.ndarray):  # a copy first: ONNX's arrays are read-only, which torch
        return torch.from_numpy(np.array(value, dtype=np.float32))  # warns about on every compile
    return torch.as_tensor(value, dtype=torch.float32).clone()


def per_channel_vector(value: Any, shape: Shape) -> torch.Tensor | None:
    """A constant broadcast against data of batch-less ``shape`` as a ``(1,)`` or ``(C,)`` vector,
    or None when it varies along anything but the channel dim."""
    t = as_tensor(value)
    if t.numel() == 1:
        return t.reshape(1)
    dims = [1] * (len(shape) + 1 - t.dim()) + list(t.shape)
    if len(dims) == len(shape) + 1 and dims[0] == 1 and all(d == 1 for d in dims[2:]):
        if dims[1] in (1, shape[0]):
            return t.reshape(-1)
    return None


def clipped_relu(lw: Lowering, x: Any, low: Any, high: Any, what: str) -> Any:
    """``clamp(x, low, high)`` as the IR's ReLU: a plain ReLU for ``low`` 0 and no ``high``, a
    clipped ReLU (an IF neuron's saturation) for ``low`` 0 and a positive ``high``. ``clamp``,
    ``clip``, ``hardtanh``, ``relu6`` and ONNX's ``Clip`` all come here."""
    bounds = []
    for bound in (low, high):
        t = None if bound is None else as_tensor(bound)
        if t is not None and t.numel() != 1:
            return lw.unsupported(f"{what} with tensor bounds", "clip with scalar bounds [0, c]")
        bounds.append(None if t is None else float(t))
    low, high = bounds
    if low == 0 and (high is None or (math.isfinite(high) and high > 0)):
        return lw.emit(ReLU(ceiling=high), [x])
    return lw.unsupported(f"{what}(min={low}, max={high})",
                          "only clipping to [0, c] with c > 0 (a clipped ReLU) becomes IF neurons")


def ann_frontend_coverage(table: str) -> OpCoverage:
    """What a frontend of ANNs (torch, ONNX) lowers into: every op but the IF neuron, which only
    conversion produces."""
    return OpCoverage(
        table,
        handled=frozenset({"input", "output", "conv2d", "linear", "batchnorm", "scale", "relu",
                           "floor", "avgpool2d", "flatten", "sum", "pad2d"}),
        not_supported={"if": "these frontends read ANNs: IF neurons come from conversion "
                             "(spikeshield compile)"},
    )


class Lowering:
    """What every frontend's walk shares: the graph being built, the shape of each IR node, and the
    problems found so far. Subclasses say which source node is being lowered (:meth:`label`)."""

    source_kind = "model"

    def __init__(self, name: str) -> None:
        self.graph = Graph(name)
        self.shapes: dict[str, Shape] = {}
        self.problems: list[tuple[str, str, str]] = []  # (what, first node, what to do)

    def label(self) -> str:
        """The name of the source node being lowered (for node names and messages)."""
        raise NotImplementedError

    def emit(self, op: Op, inputs: list[Data], base: str | None = None) -> Data:
        """Add ``op`` fed by ``inputs``, checked against the first input's shape."""
        raw = base or self.label()
        name = self.graph.unique_name(clean_name(raw))
        in_shape = self.shapes[inputs[0].node] if inputs else ()
        try:
            op.validate(in_shape)
        except IRValidationError as err:
            raise IRValidationError(f"{self.source_kind} node {clean_name(raw)!r} ({op.kind}): "
                                    f"{err}") from None
        self.graph.add(name, op, [d.node for d in inputs])
        self.shapes[name] = tuple(op.infer_shape(in_shape))
        return Data(name)

    def shape(self, value: Data) -> Shape:
        return self.shapes[value.node]

    def unsupported(self, what: str, hint: str = "") -> _Unsupported:
        """Record that ``what`` (at the current node) cannot be lowered; the walk goes on."""
        self.problems.append((what, clean_name(self.label()), hint))
        return UNSUPPORTED

    def raise_collected(self) -> None:
        """One short error for everything collected: each distinct problem once, with its first
        node, how often it occurs and what to do; the full list of ops is `spikeshield ops`."""
        if self.problems:
            raise UnsupportedOpError(summarize_problems(self.source_kind, self.problems))


MAX_SHOWN = 2  # distinct problems spelled out in one error line; the rest are counted


def summarize_problems(source: str, problems: list[tuple[str, str, str]]) -> str:
    """``cannot lower the model: X at node 'a' (3 times): do Y; ...; +N more kinds``."""
    groups: dict[str, list] = {}
    for what, node, hint in problems:
        groups.setdefault(what, [node, 0, hint])[1] += 1
    parts = []
    for what, (node, count, hint) in list(groups.items())[:MAX_SHOWN]:
        times = f", {count} times" if count > 1 else ""
        parts.append(f"{what} (node {node!r}{times})" + (f": {hint}" if hint else ""))
    more = len(groups) - MAX_SHOWN
    tail = f"; and {more} more kind{'s' if more > 1 else ''} of problem" if more > 0 else ""
    return (f"cannot lower the {source}: " + "; ".join(parts) + tail
            + ". `spikeshield ops` lists what each frontend supports")
