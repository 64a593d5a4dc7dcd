"""NIR backend: an SNN graph of the IR as a NIR 1.0 graph that means exactly what the runtime computes.

Written from the IR with the ``nir`` package directly (not through ``norse.to_nir`` or nirtorch, whose
1.1 / 2.6 versions mis-scale time, put the batch into shapes or drop biases). The mapping, one step of
NIR time (dt = 1) per runtime step:

=================  ===========================================================================
IR op              NIR nodes
=================  ===========================================================================
input              ``Input`` of the batch-less shape
conv2d             ``Conv2d`` with ``input_shape`` set (a missing bias becomes zeros; groups are
                   expanded to a block-diagonal weight, which NIR 1.0.8's type check accepts)
linear             ``Affine`` (with bias) or ``Linear`` (without)
scale              ``Scale`` (full-shape array); with a bias: a diagonal 1x1 ``Conv2d`` (C, H, W)
                   or a diagonal ``Affine`` (features), both exact
avgpool2d          ``AvgPool2d`` (no padding); with zero padding counted: ``SumPool2d`` + ``Scale``
flatten            ``Flatten(start_dim=0)``: NIR shapes have no batch and no time
sum                nothing: NIR sums all edges that enter a node (residual fan-in)
if, reset zero     ``IF(r=1, v_threshold, v_reset=0)``, full-shape float32 arrays
                   (an initial potential cannot be written: NIR's IF state starts at zero)
if, subtract       ``I(r=1)`` -> ``Threshold(theta - v0)`` -> ``Scale(-theta)`` fed back into the
                   ``I``: the recurrent edge carries the previous step's spikes, so
                   ``v[t] = v[t-1] + x[t] - theta * s[t-1]`` and ``s[t] = v[t] > theta - v0``: the
                   integrator holds the membrane minus its initial value ``v0 = v_init * theta``
output             ``I(r=1)`` -> ``Output``: after T steps the integrator holds the sum of the
                   output layer's input; the runtime's logits are that state divided by T
=================  ===========================================================================

Graph metadata (informational, as NIR requires): generator and version, dt, T, reset mode, input
encoding and input range, the profile and how to read the output. Each node's metadata names the
IR node and op it came from.

That is the ``exact`` profile. ``profile="portable"`` writes the subset SNN frameworks' importers
read (:mod:`spikeshield.backends.nir_portable`): no ``I`` readout, one threshold per layer, no
``Scale`` or pooling node, reset to zero only.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import nir
import numpy as np
import torch

from spikeshield.backends.common import full_shape, graph_description, raise_unsupported
from spikeshield.backends.nir_portable import PROFILES, portable_graph, portable_problems
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

# Suffixes of the extra NIR nodes one IR node may need ("." would read as a subgraph port).
THRESHOLD_SUFFIX = "__threshold"
RESET_SUFFIX = "__reset"
READOUT_SUFFIX = "__readout"
POOL_SCALE_SUFFIX = "__divide"


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


class _NirBuilder:
    """Collects NIR nodes and edges; each IR node maps to an entry and an exit NIR node."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.entry: dict[str, str] = {}
        self.exits: dict[str, list[str]] = {}

    def add(self, name: str, node: nir.NIRNode, ir_name: str) -> str:
        node.metadata = {"spikeshield_node": ir_name, "spikeshield_op": self.graph.op(ir_name).kind}
        self.nodes[name] = node
        return name

    def chain(self, ir_name: str, *pairs: tuple[str, nir.NIRNode]) -> None:
        """Nodes in sequence standing for ``ir_name``: the first is its entry, the last its exit."""
        names = [self.add(n, node, ir_name) for n, node in pairs]
        self.edges += list(itertools.pairwise(names))
        self.entry[ir_name], self.exits[ir_name] = names[0], [names[-1]]


Converter = Callable[[_NirBuilder, str, Op], None]


def _input(b: _NirBuilder, name: str, op: Input) -> None:
    b.chain(name, (name, nir.Input(input_type={"input": np.array(op.shape)})))


def _output(b: _NirBuilder, name: str, op: Output) -> None:
    shape = b.graph.shape(name)
    readout = nir.I(r=np.ones(shape, dtype=np.float32))
    b.chain(
        name,
        (name + READOUT_SUFFIX, readout),
        (name, nir.Output(output_type={"output": np.array(shape)})),
    )


def dense_weight(op: Conv2d) -> torch.Tensor:
    """The ``groups=1`` weight equal to a grouped conv's: block-diagonal, zeros elsewhere (exact).
    NIR 1.0.8 types a conv's input as ``weight.shape[1]`` channels, so grouped convs fail its check."""
    if op.groups == 1:
        return op.weight
    out_ch, in_per_group = op.weight.shape[:2]
    dense = op.weight.new_zeros(out_ch, in_per_group * op.groups, *op.weight.shape[2:])
    per_group = out_ch // op.groups
    for g in range(op.groups):
        rows, cols = (
            slice(g * per_group, (g + 1) * per_group),
            slice(g * in_per_group, (g + 1) * in_per_group),
        )
        dense[rows, cols] = op.weight[rows]
    return dense


def _conv2d(b: _NirBuilder, name: str, op: Conv2d) -> None:
    bias = op.bias if op.bias is not None else torch.zeros(op.weight.shape[0])
    conv = nir.Conv2d(
        input_shape=tuple(b.graph.in_shape(name)[1:]),
        weight=_np(dense_weight(op)),
        stride=op.stride,
        padding=op.padding,
        dilation=op.dilation,
        groups=1,
        bias=_np(bias),
    )
    b.chain(name, (name, conv))


def _linear(b: _NirBuilder, name: str, op: Linear) -> None:
    if op.bias is None:
        b.chain(name, (name, nir.Linear(weight=_np(op.weight))))
    else:
        b.chain(name, (name, nir.Affine(weight=_np(op.weight), bias=_np(op.bias))))


def _scale(b: _NirBuilder, name: str, op: Scale) -> None:
    shape = b.graph.shape(name)
    if op.bias is None:
        b.chain(name, (name, nir.Scale(scale=full_shape(op.scale, shape))))
        return
    channels = shape[0]
    scale = op.scale.detach().float().expand(channels)
    bias = op.bias.detach().float().expand(channels)
    if len(shape) == 3:
        # A diagonal 1x1 conv: each output adds exact zeros from the other channels.
        diagonal = nir.Conv2d(
            input_shape=tuple(shape[1:]),
            weight=_np(torch.diag(scale).reshape(channels, channels, 1, 1)),
            stride=1,
            padding=0,
            dilation=1,
            groups=1,
            bias=_np(bias),
        )
        b.chain(name, (name, diagonal))
    else:
        b.chain(name, (name, nir.Affine(weight=_np(torch.diag(scale)), bias=_np(bias))))


def _avgpool2d(b: _NirBuilder, name: str, op: AvgPool2d) -> None:
    kernel, stride, padding = (np.array(v) for v in (op.kernel, op.stride, op.padding))
    if not padding.any():
        b.chain(name, (name, nir.AvgPool2d(kernel_size=kernel, stride=stride, padding=padding)))
        return
    # NIR's AvgPool2d does not say how padded windows divide; a zero-padded sum divided by the
    # full window is unambiguous and equals torch's count_include_pad=True.
    divide = nir.Scale(scale=np.full(b.graph.shape(name), 1.0 / kernel.prod(), dtype=np.float32))
    pool = nir.SumPool2d(kernel_size=kernel, stride=stride, padding=padding)
    b.chain(name, (name, pool), (name + POOL_SCALE_SUFFIX, divide))


def _flatten(b: _NirBuilder, name: str, op: Flatten) -> None:
    in_shape = np.array(b.graph.in_shape(name))
    b.chain(name, (name, nir.Flatten(input_type={"input": in_shape}, start_dim=0, end_dim=-1)))


def _if(b: _NirBuilder, name: str, op: IF) -> None:
    shape = b.graph.shape(name)
    theta = full_shape(op.threshold, shape)
    # The runtime's initial membrane, in float32 as it computes it (v_init * threshold).
    v0 = full_shape(op.v_init * op.threshold.detach().float(), shape)
    if op.reset == "zero":
        neuron = nir.IF(
            r=np.ones(shape, np.float32), v_threshold=theta, v_reset=np.zeros(shape, np.float32)
        )
        b.chain(name, (name, neuron))
        return
    b.chain(
        name,
        (name, nir.I(r=np.ones(shape, np.float32))),
        (name + THRESHOLD_SUFFIX, nir.Threshold(threshold=theta - v0)),
    )
    reset = b.add(name + RESET_SUFFIX, nir.Scale(scale=-theta), name)
    b.edges += [(name + THRESHOLD_SUFFIX, reset), (reset, name)]


def _sum(b: _NirBuilder, name: str, op: Sum) -> None:
    # No node: every input's exit feeds every consumer's entry, and NIR sums fan-in.
    b.exits[name] = [e for p in b.graph.inputs(name) for e in b.exits[p]]


CONVERTERS: dict[type[Op], Converter] = {
    Input: _input,
    Output: _output,
    Conv2d: _conv2d,
    Linear: _linear,
    Scale: _scale,
    AvgPool2d: _avgpool2d,
    Flatten: _flatten,
    IF: _if,
    Sum: _sum,
}
# Ops NIR cannot hold, with the way to get rid of them.
ALTERNATIVES: dict[type[Op], str] = {
    ReLU: "NIR has no ReLU: convert the ANN first (spikeshield compile) so ReLUs become IF neurons",
    Floor: "NIR has no floor: convert the ANN first (spikeshield compile) so a quantised "
    "activation becomes IF neurons",
    BatchNorm: "fold it into the preceding conv/linear (pass fold_batchnorm) before export",
    Pad2d: "NIR has no padding node: pad symmetrically, so that the padding folds into the next "
    "convolution",
}
COVERAGE = OpCoverage("NIR backend (backends.nir_backend)", handled=kinds(CONVERTERS),
                      not_supported={op.kind: reason for op, reason in ALTERNATIVES.items()})


def unsupported_nodes(graph: Graph) -> list[str]:
    """Every node NIR cannot express, each with the nearest supported alternative."""
    problems = []
    for name in graph.nodes():
        op = graph.op(name)
        if type(op) not in CONVERTERS:
            hint = ALTERNATIVES.get(
                type(op), f"supported ops: {', '.join(c.kind for c in CONVERTERS)}"
            )
            problems.append(f"node {name!r} ({op.kind}): {hint}")
        elif isinstance(op, IF) and op.reset == "zero" and op.v_init:
            problems.append(f"node {name!r} (if): NIR's IF starts at zero and cannot hold an "
                            f"initial potential (v_init={op.v_init}); reset by subtraction can "
                            "(pass set_reset_mode, or --reset subtract)")
    if not graph.nodes_of(IF):
        problems.append(f"graph {graph.name!r} has no IF neurons: NIR export is for spiking graphs")
    return problems


def _output_per_step(b: _NirBuilder, name: str, op: Output) -> None:
    """The portable profile's output: the output layer's value at each step (no integrator)."""
    b.chain(name, (name, nir.Output(output_type={"output": np.array(b.graph.shape(name))})))


READOUTS = {
    "exact": "logits = state of the I node before each Output after T steps, divided by T",
    "portable": "logits = the Output's values summed over the T steps, divided by T",
}


def to_nir(graph: Graph, profile: str = "exact") -> nir.NIRGraph:
    """The NIR graph of ``graph`` (a valid spiking IR graph) in ``profile`` (``exact`` or
    ``portable``); raises listing every inexpressible node."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown NIR profile {profile!r}; choose one of {', '.join(PROFILES)}")
    graph.validate()
    graph.require_feed_forward("the NIR exporter")
    problems = unsupported_nodes(graph)
    if profile == "portable":
        problems += portable_problems(graph)
    raise_unsupported(f"NIR ({profile} profile)" if profile != "exact" else "NIR", problems)
    if profile == "portable":
        graph = portable_graph(graph)
    b = _NirBuilder(graph)
    for name in graph.nodes():
        op = graph.op(name)
        if profile == "portable" and isinstance(op, Output):
            _output_per_step(b, name, op)
            continue
        CONVERTERS[type(op)](b, name, op)
    for name in graph.nodes():
        if isinstance(graph.op(name), Sum):
            continue
        sources = [e for p in graph.inputs(name) for e in b.exits[p]]
        if len(set(sources)) != len(sources):
            raise_unsupported(
                "NIR",
                [
                    f"node {name!r} receives the same value twice through sums; "
                    "NIR edges are unique (merge the sums into one scale)"
                ],
            )
        b.edges += [(src, b.entry[name]) for src in sources]
    meta = graph_description(graph)
    meta.update({"nir_profile": profile, "readout": READOUTS[profile]})
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta, type_check=True)


def write_nir(graph: Graph, path: str | os.PathLike, profile: str = "exact") -> Path:
    """Export ``graph`` to ``path`` in ``profile`` with ``nir.write``; returns the path."""
    nir_graph = to_nir(graph, profile)
    path = Path(path)
    # HDF5 is built in memory and written with plain file I/O: h5py writing to a full disk can
    # crash the process, where a failed write() is an ordinary OSError.
    buffer = io.BytesIO()
    nir.write(buffer, nir_graph)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())
    return path
