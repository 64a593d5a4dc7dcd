"""ONNX frontend: an ONNX model file into the IR.

The model is checked with ``onnx.checker`` first. Nodes whose inputs are all constants (initializers,
``Constant`` nodes, shapes) are evaluated with ONNX's reference evaluator; the rest go through the
converter table. Every unsupported op is collected before one error lists them all.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from spikeshield.compiler.ir.errors import ModelLoadError, UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import NODES, TENSOR_ELEMENTS, check_tensor_shapes
from spikeshield.compiler.ir.ops import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Floor,
    Input,
    Linear,
    Output,
    ReLU,
    Scale,
    Sum,
)
from spikeshield.frontends.lowering import (
    MAXPOOL_HINT,
    UNSUPPORTED,
    Data,
    Lowering,
    Padded,
    _Unsupported,
    ann_frontend_coverage,
    as_tensor,
    clipped_relu,
    materialize,
    per_channel_vector,
    take_padding,
)

COVERAGE = ann_frontend_coverage("ONNX frontend (frontends.onnx_frontend)")



class OnnxLowering(Lowering):
    source_kind = "ONNX model"

    def __init__(self, model: onnx.ModelProto, name: str, source: str | os.PathLike = "") -> None:
        super().__init__(name)
        self.model = model
        self.source = source or name
        self.env: dict[str, Any] = {}
        self.node: onnx.NodeProto | None = None

    def label(self) -> str:
        return self.node.name or self.node.output[0]

    def run(self) -> Graph:
        """The IR of the model; a node whose inputs or attributes do not have the form its op
        takes (a hostile or corrupt file that passed onnx.checker) is one line naming it."""
        try:
            return self._run()
        except (IndexError, KeyError, ValueError, TypeError, AttributeError) as err:
            where = f"node {self.label()!r} ({self.node.op_type})" if self.node is not None \
                else "an initializer"
            raise ModelLoadError(f"{self.source}: {where} is malformed ({type(err).__name__}: "
                                 f"{str(err)[:120]}); export the model again") from None

    def _run(self) -> Graph:
        g = self.model.graph
        for init in g.initializer:
            self.env[init.name] = numpy_helper.to_array(init)
        inputs = [i for i in g.input if i.name not in self.env]
        if len(inputs) != 1:
            raise UnsupportedOpError(f"the ONNX model has {len(inputs)} inputs; spikeshield needs one")
        dims = inputs[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
        if not shape or any(s is None or s <= 0 for s in shape):
            raise UnsupportedOpError(
                f"the ONNX input {inputs[0].name!r} needs fixed non-batch dims, got {shape}"
            )
        self.node = onnx.NodeProto(name="input")
        self.env[inputs[0].name] = self.emit(Input(tuple(shape)), [], base="input")
        for node in g.node:
            self.node = node
            args = [self.env.get(i) if i else None for i in node.input]
            if any(isinstance(a, _Unsupported) for a in args):
                if node.op_type not in CONVERTERS:
                    self.unsupported(f"op {node.op_type}")
                results: Any = UNSUPPORTED
            elif all(not isinstance(a, (Data, Padded)) for a in args) and node.op_type in CONSTANT_OPS:
                results = _evaluate_constant(node, args, self.source)
            elif all(not isinstance(a, (Data, Padded)) for a in args):
                hint = "fold it into the weights before exporting" if node.op_type in CONVERTERS \
                    else "a feed-forward ANN has no such op; export the model without it"
                results = self.unsupported(f"op {node.op_type} on constants", hint)
            elif node.op_type not in CONVERTERS:
                hint = MAXPOOL_HINT if node.op_type == "MaxPool" else ""
                results = self.unsupported(f"op {node.op_type}", hint)
            else:
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                if node.op_type not in TAKES_PADDING:  # the pending pad as a node of its own
                    args = [materialize(self, v) for v in args]
                results = CONVERTERS[node.op_type](self, args, attrs)
            outs = results if isinstance(results, tuple) else (results,)
            for name, value in zip(node.output, outs):
                self.env[name] = value
        self.raise_collected()
        if len(g.output) != 1 or not isinstance(self.env.get(g.output[0].name), Data):
            raise UnsupportedOpError("the ONNX model must have one output computed from its input")
        self.node = onnx.NodeProto(name="output")
        self.emit(Output(), [materialize(self, self.env[g.output[0].name])], base="output")
        return self.graph.validate()


# Ops evaluated at load time when all their inputs are constants: shape arithmetic and the small
# tensor maths exporters emit. Anything else (control flow such as Loop or If, random ops, ...) is
# never evaluated: it cannot be part of a feed-forward ANN, and a Loop with a constant trip count
# of 10^12 would run forever. Ops whose output can be far larger than their inputs are bounded
# first (see _constant_elements).
CONSTANT_OPS = {
    "Constant", "Identity", "Cast", "CastLike", "Shape", "Size", "Gather", "Unsqueeze", "Squeeze",
    "Concat", "Slice", "Reshape", "Flatten", "Transpose", "ConstantOfShape", "Expand", "Tile",
    "Range", "Equal", "Where", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Reciprocal",
    "Pow", "Floor", "Ceil", "Min", "Max", "ReduceProd", "Dropout", "MatMul", "Gemm", "Sum", "Relu",
}


def _constant_elements(node: onnx.NodeProto, args: list[Any]) -> int:
    """An upper bound on the elements a constant op produces, from its inputs alone."""

    def size(value: Any) -> int:
        return int(np.asarray(value).size) if value is not None else 0

    def product(value: Any) -> int:
        return int(np.prod(np.abs(np.asarray(value, dtype=np.float64)))) if size(value) else 1

    if node.op_type == "ConstantOfShape":
        return product(args[0])
    if node.op_type == "Expand":
        shape = np.asarray(args[1], dtype=np.float64)
        return max(product(shape), size(args[0])) * max(1, size(args[0]))
    if node.op_type == "Tile":
        return size(args[0]) * product(args[1])
    if node.op_type == "Range":
        start, limit, delta = (float(np.asarray(a).reshape(-1)[0]) for a in args)
        return int(abs((limit - start) / delta)) + 1 if delta else TENSOR_ELEMENTS.value + 1
    if node.op_type in ("MatMul", "Gemm"):
        a, b = (tuple(np.shape(x)) or (1,) for x in args[:2])
        rows, cols = (a[-2] if len(a) > 1 else 1), (b[-1] if len(b) > 1 else 1)
        return _broadcast_elements([a[:-2], b[:-2]]) * rows * cols
    if node.op_type in _BROADCASTING:
        return _broadcast_elements([np.shape(a) for a in args if a is not None])
    if node.op_type == "Gather":  # each index picks a slice of the data: at most all of it
        return max(1, size(args[1])) * size(args[0])
    return sum(size(a) for a in args)  # shape, slicing, unary ops: no larger than their inputs


# Elementwise ops whose output takes the broadcast shape of all inputs: (32768, 1) + (1, 32768)
# is 2^30 elements from 2^16 of input.
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "Equal", "Where", "Sum"}


def _broadcast_elements(shapes: list[tuple[int, ...]]) -> int:
    """Elements of the broadcast of ``shapes`` (numpy rules); incompatible shapes are bounded by
    their largest size (the evaluation then fails on its own)."""
    rank = max((len(s) for s in shapes), default=0)
    total = 1
    for axis in range(1, rank + 1):
        total *= max((int(s[-axis]) for s in shapes if len(s) >= axis), default=1)
    return total


def _evaluate_constant(node: onnx.NodeProto, args: list[Any], source: str | os.PathLike) -> Any:
    from onnx.reference import ReferenceEvaluator

    if node.op_type == "Shape":  # of a weight, say (the dynamo exporter writes such)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        start, end = int(attrs.get("start", 0)), attrs.get("end")
        return np.array(np.shape(args[0])[start:None if end is None else int(end)],
                        dtype=np.int64)
    TENSOR_ELEMENTS.check(_constant_elements(node, args), source,
                          f"the constant computed by {node.op_type} node "
                          f"{node.name or node.output[0]!r}")
    feeds = {name: value for name, value in zip(node.input, args) if name}
    outs = ReferenceEvaluator(node).run(None, feeds)
    return tuple(outs) if len(outs) > 1 else outs[0]


def _per_channel(lw: OnnxLowering, value: Any, shape: tuple[int, ...], what: str):
    vec = per_channel_vector(as_tensor(value), shape)
    if vec is None:
        lw.unsupported(f"{what} with a constant of shape {np.shape(value)}", "only per-channel constants")
    return vec


# ---- converters: (lowering, inputs, attributes) -> value ---------------------------------
def _conv(lw, a, at):
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return lw.unsupported("Conv auto_pad", "export with explicit pads")
    pads = list(at.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        return lw.unsupported(f"Conv with pads {pads}", "only 2-D convolutions are supported")
    x = a[0]
    if pads[0] != pads[2] or pads[1] != pads[3]:  # asymmetric: ONNX pads are (top, left, bottom, right)
        x, pads = Padded(x, (pads[1], pads[3], pads[0], pads[2])), [0, 0, 0, 0]
    x, padding = take_padding(lw, x, (pads[0], pads[1]))
    op = Conv2d(weight=as_tensor(a[1]), bias=as_tensor(a[2]) if len(a) > 2 and a[2] is not None else None,
                stride=tuple(at.get("strides", [1, 1])), padding=padding,
                dilation=tuple(at.get("dilations", [1, 1])), groups=int(at.get("group", 1)))
    return lw.emit(op, [x])


def _gemm(lw, a, at):
    if at.get("transA", 0) or not isinstance(a[0], Data) or isinstance(a[1], Data):
        return lw.unsupported("Gemm of that form", "only x @ W^T + b with constant W")
    w = as_tensor(a[1])
    w = w if at.get("transB", 0) else w.t()
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    bias = as_tensor(a[2]) * beta if len(a) > 2 and a[2] is not None else None
    return lw.emit(Linear(weight=(w * alpha).contiguous(), bias=bias), [a[0]])


def _matmul(lw, a, at):
    if not isinstance(a[0], Data) or isinstance(a[1], Data):
        return lw.unsupported("MatMul of that form", "only x @ W with constant W")
    return lw.emit(Linear(weight=as_tensor(a[1]).t().contiguous(), bias=None), [a[0]])


def _batchnorm(lw, a, at):
    op = BatchNorm(running_mean=as_tensor(a[3]), running_var=as_tensor(a[4]), weight=as_tensor(a[1]), bias=as_tensor(a[2]),
                   eps=float(at.get("epsilon", 1e-5)))
    return lw.emit(op, [a[0]])


def _avgpool(lw, a, at):
    pads = list(at.get("pads", [0, 0, 0, 0]))
    if at.get("ceil_mode", 0) or pads[0] != pads[2] or pads[1] != pads[3]:
        return lw.unsupported("AveragePool with ceil_mode or asymmetric pads")
    kernel = tuple(at["kernel_shape"])
    x, count_include_pad = a[0], bool(at.get("count_include_pad", 0))
    if isinstance(x, Padded):  # padded zeros are values: they count in the average
        extra = x.symmetric()
        if extra and (count_include_pad or pads == [0, 0, 0, 0]) and all(
                p + e <= k // 2 for p, e, k in zip(pads, extra, kernel)):
            x, (pads[0], pads[1]) = take_padding(lw, x, (pads[0], pads[1]))
            count_include_pad = True
        else:
            x = materialize(lw, x)
    op = AvgPool2d(kernel, tuple(at.get("strides", kernel)), (pads[0], pads[1]), count_include_pad)
    return lw.emit(op, [x])


def _pad(lw, a, at):
    """ONNX ``Pad`` with zeros over the two spatial dims: pending, for the next conv or pooling."""
    mode = at.get("mode", b"constant")
    pads = [int(p) for p in np.asarray(a[1]).reshape(-1)] if len(a) > 1 and a[1] is not None \
        else list(at.get("pads", []))
    value = float(np.asarray(a[2]).reshape(-1)[0]) if len(a) > 2 and a[2] is not None else 0.0
    if mode not in (b"constant", "constant") or value != 0.0 or len(pads) != 8 or any(
            pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0 or (len(a) > 3 and a[3] is not None):
        return lw.unsupported(f"Pad {pads} mode={mode!r} value={value}",
                              "only zero padding of the two spatial dims is supported")
    x, extra = a[0], (pads[3], pads[7], pads[2], pads[6])  # (left, right, top, bottom)
    if isinstance(x, Padded):
        x, extra = x.data, tuple(p + q for p, q in zip(x.pads, extra))
    return Padded(x, extra)


def _global_avgpool(lw, a, at):
    hw = lw.shapes[a[0].node][1:]
    return lw.emit(AvgPool2d(hw, hw, 0, True), [a[0]])


def _reduce_mean(lw, a, at):
    axes = at.get("axes")
    if axes is None and len(a) > 1 and a[1] is not None:
        axes = [int(v) for v in np.array(a[1]).reshape(-1)]
    shape = lw.shapes[a[0].node]
    if len(shape) != 3 or sorted(int(x) % 4 for x in (axes or [])) != [2, 3]:
        return lw.unsupported(f"ReduceMean over axes {axes}", "only global spatial mean")
    pooled = _global_avgpool(lw, a, at)
    return pooled if at.get("keepdims", 1) else lw.emit(Flatten(), [pooled])


def _flatten(lw, a, at):
    if int(at.get("axis", 1)) != 1:
        return lw.unsupported("Flatten with axis != 1")
    return lw.emit(Flatten(), [a[0]]) if len(lw.shapes[a[0].node]) > 1 else a[0]


def _reshape(lw, a, at):
    target = [int(v) for v in np.array(a[1]).reshape(-1)]
    shape = lw.shapes[a[0].node]
    if list(target[1:]) == list(shape):
        return a[0]
    if target[1:] in ([-1], [math.prod(shape)]):
        return lw.emit(Flatten(), [a[0]]) if len(shape) > 1 else a[0]
    return lw.unsupported(f"Reshape of {shape} to {target}", "only flattening all but the batch dim")


def _binary(kind: str) -> Callable:
    def convert(lw, a, at):
        x, y = a[0], a[1]
        if isinstance(x, Data) and isinstance(y, Data):
            if kind == "Add":
                return lw.emit(Sum(), [x, y])
            if kind == "Sub":
                return lw.emit(Sum(), [x, lw.emit(Scale(scale=torch.tensor([-1.0])), [y])])
            return lw.unsupported(f"{kind} of two data tensors")
        data, const = (x, y) if isinstance(x, Data) else (y, x)
        if kind == "Div" and not isinstance(x, Data):
            return lw.unsupported("Div of a constant by data")
        vec = _per_channel(lw, const, lw.shapes[data.node], kind)
        if vec is None:
            return UNSUPPORTED
        if kind == "Add":
            return lw.emit(Scale(scale=torch.ones(1), bias=vec), [data])
        if kind == "Sub":
            if isinstance(x, Data):
                return lw.emit(Scale(scale=torch.ones(1), bias=-vec), [data])
            return lw.emit(Scale(scale=-torch.ones(1), bias=vec), [data])
        return lw.emit(Scale(scale=vec if kind == "Mul" else 1.0 / vec), [data])

    return convert


def _sum(lw, a, at):
    if not all(isinstance(v, Data) for v in a):
        return lw.unsupported("Sum with constant operands", "Add a constant instead")
    return a[0] if len(a) == 1 else lw.emit(Sum(), list(a))


def _clip(lw, a, at):
    """``Clip``: bounds as inputs (opset 11+; an empty name is an absent bound) or attributes."""
    low = a[1] if len(a) > 1 else at.get("min")
    high = a[2] if len(a) > 2 else at.get("max")
    if isinstance(low, Data) or isinstance(high, Data):
        return lw.unsupported("Clip with data-dependent bounds", "clip to constant bounds [0, c]")
    return clipped_relu(lw, a[0], low, high, "Clip")


def _shape(lw, a, at):
    """``Shape`` with its ``start``/``end`` slice (opset 15; the dynamo exporter takes the batch
    dim as ``Shape(x, start=0, end=1)``). The batch is written as 1; Reshape reads ``[1:]``."""
    full = [1, *lw.shapes[a[0].node]]
    start, end = int(at.get("start", 0)), at.get("end")
    return np.array(full[start:None if end is None else int(end)], dtype=np.int64)


CONVERTERS: dict[str, Callable] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "BatchNormalization": _batchnorm,
    "Relu": lambda lw, a, at: lw.emit(ReLU(), [a[0]]), "Clip": _clip,
    "Floor": lambda lw, a, at: lw.emit(Floor(), [a[0]]),
    "AveragePool": _avgpool, "GlobalAveragePool": _global_avgpool, "ReduceMean": _reduce_mean,
    "Flatten": _flatten, "Reshape": _reshape, "Shape": _shape,
    "Add": _binary("Add"), "Sum": _sum, "Sub": _binary("Sub"), "Mul": _binary("Mul"), "Div": _binary("Div"),
    "Dropout": lambda lw, a, at: a[0], "Identity": lambda lw, a, at: a[0], "Pad": _pad,
}
TAKES_PADDING = ("Conv", "AveragePool", "Pad")


def from_onnx(path: str | os.PathLike) -> Graph:
    """Read and check an ONNX model file, then lower it into the IR."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        # External data would make the loader open files the model names, anywhere on disk.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf DecodeError, OSError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(f"{path} is not a valid ONNX model ({first})") from None
    check_onnx_bounds(model, path)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as err:  # missing or short data file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(f"{path}: its external weight data cannot be read ({first})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # ValidationError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(f"{path} is not a valid ONNX model ({first})") from None
    graph = OnnxLowering(model, path.stem, path).run()
    graph.meta.setdefault("source", f"ONNX {path.name}")
    return graph


def check_onnx_bounds(model: onnx.ModelProto, path: Path) -> None:
    """Node count and initializer sizes within bounds; external weight data only from files in
    the model's own folder."""
    from onnx.external_data_helper import uses_external_data

    graph = model.graph
    NODES.check(len(graph.node), path, "the graph")
    check_tensor_shapes({t.name: tuple(t.dims) for t in graph.initializer}, path)
    folder = path.parent.resolve()
    for tensor in graph.initializer:
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        # The loader opens whatever file the model names: only files beside the model may be read.
        if not location or Path(location).is_absolute() or target.parent != folder:
            raise ModelLoadError(
                f"{path}: weight {tensor.name!r} points at external data {location!r} outside the "
                "model's folder; keep the .onnx and its data file side by side"
            )


def source_ops() -> list[str]:
    """The ONNX op types this frontend lowers (and those it only evaluates on constants)."""
    return sorted(CONVERTERS) + [f"{op} (constants only)" for op in sorted(CONSTANT_OPS)
                                 if op not in CONVERTERS]
