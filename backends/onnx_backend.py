"""ONNX backend: an IR graph as ONNX, written node by node with ``onnx.helper`` (opset 17).

Two forms of an SNN, both exact to the runtime's float32 arithmetic (same operations in the same order;
only the convolution and matrix kernels of onnxruntime may round differently, see
docs/guides/deploy.md):

- ``step`` (the deployment contract): one time step. Inputs ``input`` (N, *shape) for this step, the
  membrane potential ``v__<layer>`` of every IF layer and the running output sum ``readout``; outputs
  ``v_next__<layer>``, ``spikes__<layer>``, ``readout_next`` and ``output_step``. Start every state at
  zero, except the membrane of a layer with an initial potential: it starts at ``v_init x threshold``,
  which the graph also outputs as ``v_init__<layer>`` (shaped to broadcast over the state); after T
  steps the logits are ``readout / T``.
- ``unrolled``: a fixed T. Input ``input`` (N, *shape) under direct encoding (the same frame every
  step) or (T, N, *shape) of input spikes under Poisson encoding; outputs ``logits`` (N, classes) and
  ``spike_count__<layer>`` (N,): spikes per sample summed over neurons and steps. Values that do not
  change over time (everything before the first IF under direct encoding) are computed once.

An ANN graph (no IF) exports as a plain forward graph: ``input`` -> ``logits``.

IF update, as :class:`spikeshield.compiler.ir.ops.IF`: ``u = v + x``; ``s = float(u > theta)``;
``v' = u * (1 - s)`` (reset zero) or ``v' = u - theta * s`` (subtract); the unrolled form starts
each membrane at ``v_init x threshold`` (a constant), as the runtime does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from spikeshield.backends.common import graph_description, raise_unsupported
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import (
    IF,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Floor,
    Input,
    Linear,
    Op,
    OpCoverage,
    Output,
    Pad2d,
    ReLU,
    Scale,
    Sum,
    kinds,
)

OPSET = 17
FORMS = ("unrolled", "step")
BATCH = "N"


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


def _value_info(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


class _OnnxBuilder:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.counter = 0

    def const(self, name: str, value: torch.Tensor | np.ndarray) -> str:
        """An initializer, shared by every time step that uses it."""
        if name not in self.initializers:
            array = _np(value) if isinstance(value, torch.Tensor) else value
            self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        self.counter += 1
        out = f"{hint}__{self.counter}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def channel(self, name: str, values: torch.Tensor, ndim: int) -> str:
        """A per-channel vector shaped to broadcast over (N, C, ...) of ``ndim`` dims."""
        return self.const(name, values.detach().float().reshape(-1, *([1] * (ndim - 2))))


Emitter = Callable[[_OnnxBuilder, str, Op, str], str]


def _conv2d(b: _OnnxBuilder, name: str, op: Conv2d, x: str) -> str:
    inputs = [x, b.const(f"{name}.weight", op.weight)]
    if op.bias is not None:
        inputs.append(b.const(f"{name}.bias", op.bias))
    return b.op(
        "Conv",
        inputs,
        name,
        strides=list(op.stride),
        pads=[*op.padding, *op.padding],
        dilations=list(op.dilation),
        group=op.groups,
        kernel_shape=list(op.weight.shape[2:]),
    )


def _linear(b: _OnnxBuilder, name: str, op: Linear, x: str) -> str:
    inputs = [x, b.const(f"{name}.weight", op.weight)]
    if op.bias is not None:
        inputs.append(b.const(f"{name}.bias", op.bias))
    return b.op("Gemm", inputs, name, transB=1)


def _scale(b: _OnnxBuilder, name: str, op: Scale, x: str) -> str:
    ndim = len(b.graph.shape(name)) + 1
    y = b.op("Mul", [x, b.channel(f"{name}.scale", op.scale, ndim)], name)
    if op.bias is not None:
        y = b.op("Add", [y, b.channel(f"{name}.bias", op.bias, ndim)], name)
    return y


def _batchnorm(b: _OnnxBuilder, name: str, op: BatchNorm, x: str) -> str:
    ones, zeros = torch.ones_like(op.running_mean), torch.zeros_like(op.running_mean)
    inputs = [
        x,
        b.const(f"{name}.weight", op.weight if op.weight is not None else ones),
        b.const(f"{name}.bias", op.bias if op.bias is not None else zeros),
        b.const(f"{name}.running_mean", op.running_mean),
        b.const(f"{name}.running_var", op.running_var),
    ]
    return b.op("BatchNormalization", inputs, name, epsilon=op.eps)


def _avgpool2d(b: _OnnxBuilder, name: str, op: AvgPool2d, x: str) -> str:
    return b.op(
        "AveragePool",
        [x],
        name,
        kernel_shape=list(op.kernel),
        strides=list(op.stride),
        pads=[*op.padding, *op.padding],
        count_include_pad=int(op.count_include_pad),
    )


def _relu(b: _OnnxBuilder, name: str, op: ReLU, x: str) -> str:
    if op.ceiling is None:
        return b.op("Relu", [x], name)
    low = b.const(f"{name}.min", np.zeros((), np.float32))
    if op.levels is not None:  # c / L * clamp(floor(x * L / c + shift), 0, L), as the runtime
        def scalar(tag: str, value: float) -> str:
            return b.const(f"{name}.{tag}", np.array(value, np.float32))

        u = b.op("Add", [b.op("Mul", [x, scalar("gain", op.levels / op.ceiling)], name),
                         scalar("shift", op.shift)], name)
        steps = b.op("Clip", [b.op("Floor", [u], name), low, scalar("levels", op.levels)], name)
        return b.op("Mul", [steps, scalar("step", op.ceiling / op.levels)], name)
    return b.op("Clip", [x, low, b.const(f"{name}.max", np.array(op.ceiling, np.float32))], name)


EMITTERS: dict[type[Op], Emitter] = {
    Conv2d: _conv2d,
    Linear: _linear,
    Scale: _scale,
    BatchNorm: _batchnorm,
    AvgPool2d: _avgpool2d,
    Flatten: lambda b, name, op, x: b.op("Flatten", [x], name, axis=1),
    Pad2d: lambda b, name, op, x: b.op("Pad", [x, b.const(f"{name}.pads", np.array(
        [0, 0, op.pads[2], op.pads[0], 0, 0, op.pads[3], op.pads[1]], dtype=np.int64))], name),
    ReLU: lambda b, name, op, x: _relu(b, name, op, x),
    Floor: lambda b, name, op, x: b.op("Floor", [x], name),
}
# Handled by the time-stepping logic itself rather than by an emitter.
STRUCTURAL = (Input, Output, Sum, IF)
COVERAGE = OpCoverage("ONNX backend (backends.onnx_backend)",
                      handled=kinds(EMITTERS) | kinds(STRUCTURAL))


def _if_update(b: _OnnxBuilder, name: str, op: IF, x: str, v: str | None) -> tuple[str, str]:
    """(spikes, next membrane) for one step; ``v`` None means a zero state."""
    ndim = len(b.graph.shape(name)) + 1
    theta = b.channel(f"{name}.threshold", op.threshold, ndim)
    u = x if v is None else b.op("Add", [v, x], name)  # 0 + x == x exactly
    s = b.op("Cast", [b.op("Greater", [u, theta], name)], name, to=TensorProto.FLOAT)
    if op.reset == "zero":
        one = b.const("one", np.ones((1,), np.float32))  # 1 - s exactly as the runtime
        v_next = b.op("Mul", [u, b.op("Sub", [one, s], name)], name)
    else:
        v_next = b.op("Sub", [u, b.op("Mul", [theta, s], name)], name)
    return s, v_next


def _initial_state(b: _OnnxBuilder, name: str, op: IF) -> str | None:
    """The constant a layer's membrane starts from (``v_init x threshold``), None for zero."""
    if not op.v_init:
        return None
    ndim = len(b.graph.shape(name)) + 1
    return b.channel(f"{name}.v_init", op.v_init * op.threshold.detach().float(), ndim)


def _temporal_nodes(graph: Graph, encoding: str) -> set[str]:
    """Nodes whose value changes from step to step: downstream of an IF, or of Poisson input."""
    temporal: set[str] = set()
    for name in graph.nodes():
        op = graph.op(name)
        if (
            isinstance(op, IF)
            or (isinstance(op, Input) and encoding == "poisson")
            or any(p in temporal for p in graph.inputs(name))
        ):
            temporal.add(name)
    return temporal


class _Stepper:
    """Emits the graph for one time step, reusing values that are constant over time."""

    def __init__(self, b: _OnnxBuilder, graph: Graph, encoding: str) -> None:
        self.b, self.graph = b, graph
        self.temporal = _temporal_nodes(graph, encoding)
        self.static: dict[str, str] = {}

    def step(self, x: str, states: dict[str, str | None], suffix: str, fold_static: bool):
        """Values of every node at this step; IF states are read from and written to ``states``.
        Returns (values, spikes per IF node)."""
        values: dict[str, str] = {}
        spikes: dict[str, str] = {}
        for name in self.graph.nodes():
            op = self.graph.op(name)
            if fold_static and name in self.static:
                values[name] = self.static[name]
                continue
            if isinstance(op, Input):
                values[name] = x
                continue
            inputs = [values[p] for p in self.graph.inputs(name)]
            value = inputs[0] if len(inputs) == 1 else self.b.op("Sum", inputs, name + suffix)
            if isinstance(op, IF):
                s, v_next = _if_update(self.b, name, op, value, states[name])
                states[name] = v_next
                spikes[name] = s
                values[name] = s
            elif isinstance(op, (Output, Sum)):
                values[name] = value
            else:
                values[name] = EMITTERS[type(op)](self.b, name, op, value)
            if fold_static and name not in self.temporal:
                self.static[name] = values[name]
        return values, spikes


def unsupported_nodes(graph: Graph) -> list[str]:
    problems = []
    for name in graph.nodes():
        op = graph.op(name)
        if type(op) not in EMITTERS and not isinstance(op, STRUCTURAL):
            supported = ", ".join(sorted({c.kind for c in [*EMITTERS, *STRUCTURAL]}))
            problems.append(f"node {name!r} ({op.kind}): supported ops are {supported}")
    return problems


def to_onnx(graph: Graph, form: str = "unrolled", timesteps: int | None = None) -> onnx.ModelProto:
    """The ONNX model of ``graph`` in ``form`` (``unrolled`` or ``step``); checked with onnx.checker."""
    if form not in FORMS:
        raise ConfigError(f"ONNX form must be one of {', '.join(FORMS)}, got {form!r}")
    graph.validate()
    graph.require_feed_forward("the ONNX exporter")
    raise_unsupported("ONNX", unsupported_nodes(graph))
    spiking = bool(graph.nodes_of(IF))
    if form == "step" and not spiking:
        raise ConfigError(
            f"graph {graph.name!r} has no IF neurons, hence no state: export it with "
            "--format onnx (a plain forward graph)"
        )
    spec = graph.run_spec()
    encoding = spec.encoding
    steps = timesteps or spec.timesteps
    if spiking and form == "unrolled" and steps <= 0:
        raise ConfigError(
            f"graph {graph.name!r} records no time steps, which the unrolled ONNX graph needs; "
            "pass timesteps=N"
        )
    b = _OnnxBuilder(graph)
    in_shape = list(graph.op(graph.input_names[0]).shape)
    out_name = graph.output_names[0]
    out_shape = list(graph.shape(out_name))
    ifs = graph.nodes_of(IF)
    stepper = _Stepper(b, graph, encoding)
    inputs, outputs = [], []
    if not spiking:
        values, _ = stepper.step("input", {}, "", fold_static=False)
        b.nodes.append(helper.make_node("Identity", [values[out_name]], ["logits"], name="logits"))
        inputs.append(_value_info("input", [BATCH, *in_shape]))
        outputs.append(_value_info("logits", [BATCH, *out_shape]))
    elif form == "step":
        states: dict[str, str | None] = {n: f"v__{n}" for n in ifs}
        values, spikes = stepper.step("input", states, "", fold_static=False)
        readout = b.op("Add", ["readout", values[out_name]], "readout")
        b.nodes.append(
            helper.make_node("Identity", [readout], ["readout_next"], name="readout_next")
        )
        b.nodes.append(
            helper.make_node("Identity", [values[out_name]], ["output_step"], name="output_step")
        )
        inputs.append(_value_info("input", [BATCH, *in_shape]))
        inputs += [_value_info(f"v__{n}", [BATCH, *graph.shape(n)]) for n in ifs]
        inputs.append(_value_info("readout", [BATCH, *out_shape]))
        for n in ifs:
            b.nodes.append(
                helper.make_node("Identity", [states[n]], [f"v_next__{n}"], name=f"v_next__{n}")
            )
            b.nodes.append(
                helper.make_node("Identity", [spikes[n]], [f"spikes__{n}"], name=f"spikes__{n}")
            )
            outputs.append(_value_info(f"v_next__{n}", [BATCH, *graph.shape(n)]))
            outputs.append(_value_info(f"spikes__{n}", [BATCH, *graph.shape(n)]))
            start = _initial_state(b, n, graph.op(n))
            if start is not None:
                b.nodes.append(
                    helper.make_node("Identity", [start], [f"v_init__{n}"], name=f"v_init__{n}")
                )
                dims = [graph.op(n).threshold.numel()] + [1] * (len(graph.shape(n)) - 1)
                outputs.append(_value_info(f"v_init__{n}", dims))
        outputs += [
            _value_info("readout_next", [BATCH, *out_shape]),
            _value_info("output_step", [BATCH, *out_shape]),
        ]
    else:
        poisson = encoding == "poisson"
        states = {n: _initial_state(b, n, graph.op(n)) for n in ifs}
        per_step_out, counts = [], {n: [] for n in ifs}
        for t in range(steps):
            x = (
                b.op("Gather", ["input", b.const(f"t{t}", np.array(t, np.int64))], "input", axis=0)
                if poisson
                else "input"
            )
            values, spikes = stepper.step(x, states, f"_t{t}", fold_static=True)
            per_step_out.append(values[out_name])
            for n in ifs:
                counts[n].append(spikes[n])
        total = per_step_out[0] if steps == 1 else b.op("Sum", per_step_out, "readout")
        steps_const = b.const("timesteps", np.array([steps], np.float32))
        b.nodes.append(helper.make_node("Div", [total, steps_const], ["logits"], name="logits"))
        for n in ifs:
            summed = counts[n][0] if steps == 1 else b.op("Sum", counts[n], n)
            flat = b.op("Flatten", [summed], n, axis=1)
            b.nodes.append(
                helper.make_node(
                    "ReduceSum",
                    [flat, b.const("axis1", np.array([1], np.int64))],
                    [f"spike_count__{n}"],
                    name=f"spike_count__{n}",
                    keepdims=0,
                )
            )
            outputs.append(_value_info(f"spike_count__{n}", [BATCH]))
        shape = ["T", BATCH, *in_shape] if poisson else [BATCH, *in_shape]
        inputs.append(_value_info("input", shape))
        outputs.insert(0, _value_info("logits", [BATCH, *out_shape]))
    onnx_graph = helper.make_graph(
        b.nodes, graph.name, inputs, outputs, initializer=list(b.initializers.values())
    )
    model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spikeshield"
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    meta = graph_description(graph)
    meta.update(
        {"form": form if spiking else "ann", "timesteps": steps if spiking else 0, "opset": OPSET}
    )
    if spiking and form == "step":
        meta["contract"] = (
            "states start at 0 (a membrane with an initial potential at its v_init__<layer> "
            "output); after T steps logits = readout / T")
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(
    graph: Graph, path: str | os.PathLike, form: str = "unrolled", timesteps: int | None = None
) -> Path:
    """Export ``graph`` to ``path``; returns the path."""
    model = to_onnx(graph, form, timesteps)
    path = Path(path)
    onnx.save(model, path)
    return path
