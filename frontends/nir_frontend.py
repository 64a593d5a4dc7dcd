"""NIR frontend: a ``.nir`` graph (NIR 1.0) into the IR, so that exported graphs round-trip and
third-party NIR graphs can be simulated, attacked and profiled.

Time: one NIR step (dt = 1) per runtime step; ``IF`` and ``I`` read ``r`` as a per-step gain (as
Norse, Sinabs and snnTorch do). Recognised patterns:

- ``I(r=1) -> Threshold(theta) -> Scale(-theta) -> back into the I``: an IF neuron with reset by
  subtraction (what spikeshield's NIR backend writes).
- ``I(r)`` whose only consumers are ``Output`` nodes: the readout. The IR output averages over time,
  so the logits are the integrator's state after T steps divided by T (with ``Scale(r)`` when r != 1).
- Several edges into one node: an IR ``sum`` node (NIR sums fan-in).
- ``SumPool2d``: average pooling times the window size. ``Flatten`` must flatten the whole
  batch-less shape (``start_dim=0``).

Everything else that NIR can hold but the IR cannot (leaky neurons, delays, 1-D convs, nested
graphs, other recurrences) is collected and reported in one error with the nearest alternative.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import networkx as nx
import nir
import numpy as np
import torch

from spikeshield.compiler.ir.errors import IRValidationError, ModelLoadError, UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import (
    HDF5_READ_SECONDS,
    NODES,
    TENSOR_BYTES,
    TOTAL_BYTES,
    check_tensor_shapes,
)
from spikeshield.compiler.ir.ops import (
    IF,
    AvgPool2d,
    Conv2d,
    Flatten,
    Input,
    Linear,
    Op,
    OpCoverage,
    Output,
    Scale,
    Sum,
)
from spikeshield.frontends.lowering import Lowering, clean_name

# The IR kinds this frontend lowers source graphs into, and the ones it never produces.
COVERAGE = OpCoverage(
    "NIR frontend (frontends.nir_frontend)",
    handled=frozenset({"input", "output", "conv2d", "linear", "scale", "avgpool2d", "flatten",
        "sum", "if"}),
    not_supported={
        "relu": "NIR graphs are spiking: they hold no ReLU",
        "floor": "NIR graphs are spiking: they hold no quantised activations",
        "batchnorm": "NIR has no batch norm; exporters fold it into the weights",
        "pad2d": "NIR has no padding node; NIR convolutions pad inside",
    },
)


# NIR node types the IR cannot hold, with the nearest supported alternative.
ALTERNATIVES: dict[str, str] = {
    "LIF": "IF (a LIF without leak); spikeshield simulates integrate-and-fire neurons only",
    "CubaLIF": "IF fed by an Affine/Conv2d (no synaptic current dynamics)",
    "LI": "I feeding an Output (the non-leaky readout integrator)",
    "CubaLI": "I feeding an Output (the non-leaky readout integrator)",
    "Delay": "no delay: remove it or fold it into the input timing",
    "Conv1d": "Conv2d with a kernel of height 1",
    "NIRGraph": "a flat graph: inline the subgraph's nodes",
    "Threshold": "IF, or I -> Threshold -> Scale(-theta) fed back (reset by subtraction)",
}


def read_nir_file(path: str | os.PathLike) -> nir.NIRGraph:
    """``nir.read(path, type_check=True)`` with its failures turned into one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"NIR file {path} does not exist")
    check_hdf5_bounds(path)
    probe_hdf5_reads(path)
    try:
        return nir.read(path, type_check=True)
    except Exception as err:  # h5py, KeyError, ValueError, AssertionError: all mean "bad file"
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise ModelLoadError(
            f"{path.name} is not a valid NIR graph (nir.read with type checking failed: {detail}); "
            "re-export it with nir >= 1.0"
        ) from None


# Reads every dataset of the file, as nir.read will, and exits 0; run in a fresh interpreter.
_PROBE = """
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    f.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)
"""


def probe_hdf5_reads(path: Path) -> None:
    """Read every dataset once in a separate process with a time bound: a corrupt heap can make
    HDF5's C library loop inside one read, where no signal reaches it. Only when the probe ends
    in time does this process read the file (the same bytes, the same library)."""
    import subprocess
    import sys

    seconds = HDF5_READ_SECONDS.value
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True,
                              timeout=seconds, check=False)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"{path.name}: reading its HDF5 data did not finish in {seconds} s "
                             "(a corrupt file can make HDF5 loop); if you trust the file, raise "
                             f"{HDF5_READ_SECONDS.env}") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        detail = lines[-1][:200] if lines else f"exit {done.returncode}"
        raise ModelLoadError(f"{path.name} is not a valid NIR graph (its HDF5 data cannot be "
                             f"read: {detail}); re-export it with nir >= 1.0")


def check_hdf5_bounds(path: Path) -> None:
    """Walk the HDF5 file's objects ourselves before ``nir.read`` does, and refuse what could make
    it read other files, walk forever or inflate without bound: external links, soft links (which
    can form cycles), objects reachable by more than one hard link (a DAG of links makes a
    recursive reader exponential), datasets with external raw storage or a virtual layout (their
    bytes come from other files), dtypes other than numbers and strings, more objects than the
    node bound, and sizes past the tensor bounds, all read from headers only."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            _walk_hdf5(f, path)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001  (not HDF5, truncated, corrupt: all "bad file")
        detail = " ".join(str(err).split())[:200] or type(err).__name__
        raise ModelLoadError(f"{path.name} is not a valid NIR graph (not readable HDF5: {detail}); "
                             "re-export it with nir >= 1.0") from None


def _walk_hdf5(root: Any, path: Path) -> None:
    import h5py

    def refuse(name: str, what: str) -> ModelLoadError:
        return ModelLoadError(f"{path.name}: HDF5 object /{name} {what}; a NIR file holds its "
                              "arrays itself, so spikeshield refuses it")

    groups, visited, shapes, total_bytes = 0, 0, {}, 0
    stack = [("", root)]
    while stack:
        prefix, group = stack.pop()
        groups += 1
        for key in group.keys():
            name = f"{prefix}{key}"
            visited += 1
            NODES.check(visited, path, "the file's HDF5 objects")
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise refuse(name, f"is an external link to {link.filename}")
            if isinstance(link, h5py.SoftLink):
                raise refuse(name, f"is a soft link to {link.path}")
            item = group[key]
            if h5py.h5o.get_info(item.id).rc != 1:
                raise refuse(name, "is linked from more than one place")
            if isinstance(item, h5py.Group):
                stack.append((f"{name}/", item))
                continue
            if not isinstance(item, h5py.Dataset):
                raise refuse(name, f"is a {type(item).__name__}, not a group or dataset")
            plist = item.id.get_create_plist()
            if plist.get_layout() == h5py.h5d.VIRTUAL:
                raise refuse(name, "is a virtual dataset (its data lives in other files)")
            if plist.get_external_count() > 0:
                raise refuse(name, "stores its data in an external file")
            dtype = item.dtype
            if dtype.kind not in "fiub" and h5py.check_string_dtype(dtype) is None and \
                    dtype.kind != "S":
                raise refuse(name, f"has dtype {dtype}, not a real number or a string")
            if item.shape is None:
                continue
            shapes[name] = tuple(item.shape)
            nbytes = int(np.prod(item.shape, dtype=np.int64)) * max(dtype.itemsize, 1)
            TENSOR_BYTES.check(nbytes, path, f"dataset /{name}")
            total_bytes += nbytes
            TOTAL_BYTES.check(total_bytes, path, "the file's datasets")
    NODES.check(groups, path, "the file's groups")
    check_tensor_shapes(shapes, path)


def _tensor(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _per_channel(values: Any, what: str, node: str) -> torch.Tensor:
    """A full-shape parameter array as the IR's ``(1,)`` or ``(C,)`` vector; it must be constant
    within each channel (channel = dim 0)."""
    t = _tensor(values)
    if t.dim() == 0:
        return t.reshape(1)
    flat = t.reshape(t.shape[0], -1)
    if not torch.equal(flat, flat[:, :1].expand_as(flat)):
        raise IRValidationError(
            f"NIR node {node!r}: {what} varies within a channel; spikeshield holds one value per "
            "channel (dim 0). Use per-channel values"
        )
    vector = flat[:, 0].contiguous()
    return vector[:1].clone() if torch.equal(vector, vector[:1].expand_as(vector)) else vector


def _is_reset_scale(scale: Any, threshold: Any) -> bool:
    """Whether ``Scale(scale)`` after ``Threshold(threshold)`` subtracts a threshold ``-scale`` from
    an integrator that started ``-scale - threshold`` (in [0, -scale)) below the membrane."""
    theta, fire_at = -np.asarray(scale, np.float64), np.asarray(threshold, np.float64)
    return (theta.shape == fire_at.shape or theta.size == 1 or fire_at.size == 1) and bool(
        np.all(fire_at > 0) and np.all(fire_at <= theta))


def _v_init(threshold: torch.Tensor, fire_at: torch.Tensor, node: str) -> float:
    """The initial potential (a fraction of ``threshold``) of a reset loop that fires at
    ``fire_at`` = threshold - v0; one fraction per layer."""
    fractions = 1.0 - fire_at.double() / threshold.double()
    fraction = float(fractions.mean())
    if float((fractions - fraction).abs().max()) > 1e-6:
        raise IRValidationError(
            f"NIR node {node!r}: the reset loop's initial potential is not one fraction of the "
            "threshold across channels; spikeshield holds one per layer"
        )
    return 0.0 if abs(fraction) < 1e-7 else fraction


def _pair(value: Any) -> tuple[int, int]:
    a = np.atleast_1d(np.asarray(value)).astype(int)
    return (int(a[0]), int(a[-1]))


def _conv_padding(node: nir.Conv2d, name: str) -> tuple[int, int]:
    if not isinstance(node.padding, str):
        return _pair(node.padding)
    if node.padding == "valid":
        return (0, 0)
    kernel, dilation = node.weight.shape[2:], _pair(node.dilation)
    total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    if any(t % 2 for t in total) or _pair(node.stride) != (1, 1):
        raise IRValidationError(
            f"NIR node {name!r}: padding 'same' here is asymmetric; give explicit integer padding"
        )
    return (total[0] // 2, total[1] // 2)


class NirLowering(Lowering):
    """Walks a NIR graph in dataflow order and emits IR nodes. NIR names every node and sums
    fan-in, so nodes are emitted by name with all their inputs (:meth:`_emit`) rather than through
    the base's single-input ``emit``."""

    source_kind = "NIR graph"

    def __init__(self, g: nir.NIRGraph, name: str) -> None:
        super().__init__(name)
        self.nir = g
        meta = {k: _plain(v) for k, v in (g.metadata or {}).items()}
        self.graph.meta.update({"source": f"NIR graph {name}", "nir_metadata": meta})
        for key in ("timesteps", "encoding", "input_range"):
            if key in meta and meta[key] not in (0, None):
                self.graph.meta[key] = meta[key]
        self.ir_of: dict[str, str] = {}  # NIR node -> the IR node holding its value
        self.fused: dict[str, str] = {}  # Threshold/Scale of a subtract-reset loop -> its I node

    # ---- structure ----------------------------------------------------------------------
    def find_subtract_resets(self, dg: nx.DiGraph) -> set[tuple[str, str]]:
        """The recurrent edges of I -> Threshold -> Scale(-theta) -> I loops; the loops are fused."""
        back_edges = set()
        for name, node in self.nir.nodes.items():
            if not isinstance(node, nir.I):
                continue
            for thr in dg.successors(name):
                if not isinstance(self.nir.nodes[thr], nir.Threshold):
                    continue
                for reset in dg.successors(thr):
                    rnode = self.nir.nodes[reset]
                    if (
                        isinstance(rnode, nir.Scale)
                        and list(dg.successors(reset)) == [name]
                        and list(dg.predecessors(reset)) == [thr]
                        and _is_reset_scale(rnode.scale, self.nir.nodes[thr].threshold)
                    ):
                        back_edges.add((reset, name))
                        self.fused[thr] = self.fused[reset] = name
        return back_edges

    def lower(self) -> Graph:
        dg = nx.DiGraph()
        dg.add_nodes_from(self.nir.nodes)
        dg.add_edges_from(self.nir.edges)
        outputs = sorted(n for n, node in self.nir.nodes.items() if isinstance(node, nir.Output))
        if len(outputs) != 1:
            raise UnsupportedOpError(
                f"NIR graph has {len(outputs)} Output nodes ({', '.join(outputs[:3]) or 'none'}); "
                "spikeshield compiles graphs with exactly one output: keep one"
            )
        back_edges = self.find_subtract_resets(dg)
        ff = dg.copy()
        ff.remove_edges_from(back_edges)
        if not nx.is_directed_acyclic_graph(ff):
            cycle = " -> ".join(u for u, _ in nx.find_cycle(ff))
            raise UnsupportedOpError(
                f"NIR graph has a recurrent loop {cycle} that is not a reset by subtraction "
                "(I -> Threshold -> Scale(-theta) -> I); spikeshield runs feed-forward SNNs only"
            )
        for name in nx.lexicographical_topological_sort(ff):
            node = self.nir.nodes[name]
            kind = type(node).__name__
            if name in self.fused:
                continue
            if kind in ALTERNATIVES or kind not in _CONVERTERS:
                hint = ALTERNATIVES.get(kind, "supported: " + ", ".join(sorted(_CONVERTERS)))
                self.problems.append((kind, name, f"use {hint}"))
                continue
            preds = list(ff.predecessors(name))  # the reset loop's back edge is not in ff
            missing = [p for p in preds if self._source(p) is None]
            if missing:
                continue  # an upstream node was unsupported; already reported
            inputs = [self._source(p) for p in preds]
            if len(inputs) > 1:
                inputs = [self._emit(f"{name}__sum", Sum(), inputs)]
            try:
                self.ir_of[name] = _CONVERTERS[kind](self, name, node, inputs, dg)
            except IRValidationError as err:
                self.problems.append((kind, name, str(err)))
        self.raise_collected()
        return self.graph.validate()

    def _source(self, nir_name: str) -> str | None:
        if nir_name in self.fused:  # the Threshold of a fused loop: its spikes are the IF's output
            return self.ir_of.get(self.fused[nir_name])
        return self.ir_of.get(nir_name)

    def _emit(self, name: str, op: Op, inputs: list[str]) -> str:
        ir_name = self.graph.unique_name(clean_name(name))
        self.graph.add(ir_name, op, inputs)
        try:
            self.graph.infer_node(ir_name)
        except IRValidationError as err:
            raise IRValidationError(f"NIR node {name!r}: {err}") from None
        return ir_name

    def _chain(self, name: str, ops: list[tuple[str, Op]], inputs: list[str]) -> str:
        for suffix, op in ops:
            inputs = [self._emit(name + suffix, op, inputs)]
        return inputs[0]


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf8", "replace")
    return value


# ---- converters: (lowering, nir name, node, IR inputs, NIR digraph) -> IR node name ------------
def _input(lw: NirLowering, name: str, node: nir.Input, inputs, dg) -> str:
    shape = tuple(int(s) for s in np.asarray(node.input_type["input"]).reshape(-1))
    return lw._emit(name, Input(shape), [])


def _output(lw: NirLowering, name: str, node: nir.Output, inputs, dg) -> str:
    return lw._emit(name, Output(), inputs)


def _affine(lw: NirLowering, name: str, node, inputs, dg) -> str:
    bias = _tensor(node.bias) if isinstance(node, nir.Affine) else None
    return lw._emit(name, Linear(_tensor(node.weight), bias), inputs)


def _conv2d(lw: NirLowering, name: str, node: nir.Conv2d, inputs, dg) -> str:
    op = Conv2d(
        _tensor(node.weight),
        _tensor(node.bias),
        stride=_pair(node.stride),
        padding=_conv_padding(node, name),
        dilation=_pair(node.dilation),
        groups=int(node.groups),
    )
    return lw._emit(name, op, inputs)


def _scale(lw: NirLowering, name: str, node: nir.Scale, inputs, dg) -> str:
    return lw._emit(name, Scale(_per_channel(node.scale, "scale", name)), inputs)


def _avgpool(lw: NirLowering, name: str, node, inputs, dg) -> str:
    kernel = _pair(node.kernel_size)
    pool = AvgPool2d(kernel, _pair(node.stride), _pair(node.padding), count_include_pad=True)
    if isinstance(node, nir.AvgPool2d):
        return lw._emit(name, pool, inputs)
    window = torch.tensor([float(math.prod(kernel))])
    return lw._chain(name, [("", pool), ("__window", Scale(window))], inputs)


def _flatten(lw: NirLowering, name: str, node: nir.Flatten, inputs, dg) -> str:
    in_shape = lw.graph.shape(inputs[0])
    ndim = len(in_shape)
    start, end = node.start_dim % max(ndim, 1), node.end_dim % max(ndim, 1)
    if ndim > 1 and (start, end) != (0, ndim - 1):
        raise IRValidationError(
            f"NIR node {name!r}: Flatten(start_dim={node.start_dim}, end_dim={node.end_dim}) of "
            f"shape {in_shape} keeps some dimensions; spikeshield flattens the whole batch-less shape "
            "(start_dim=0, end_dim=-1). A start_dim of 1 usually means the exporter counted a batch"
        )
    if ndim == 1:
        return inputs[0]
    return lw._emit(name, Flatten(), inputs)


def _gain(lw: NirLowering, name: str, r: Any) -> list[tuple[str, Op]]:
    """A Scale(r) in front of a neuron when its per-step gain r is not 1."""
    gain = _per_channel(r, "r", name)
    return [] if torch.all(gain == 1) else [("__r", Scale(gain))]


def _if(lw: NirLowering, name: str, node: nir.IF, inputs, dg) -> str:
    if np.any(np.asarray(node.v_reset) != 0):
        raise IRValidationError(
            f"NIR node {name!r}: IF resets to a non-zero potential; spikeshield's IF resets to 0 "
            "or subtracts the threshold (write the latter as I -> Threshold -> Scale(-theta) -> I)"
        )
    threshold = _per_channel(node.v_threshold, "v_threshold", name)
    return lw._chain(name, _gain(lw, name, node.r) + [("", IF(threshold, "zero"))], inputs)


def _integrator(lw: NirLowering, name: str, node: nir.I, inputs, dg) -> str:
    loop = [s for s in dg.successors(name) if lw.fused.get(s) == name]
    if loop:  # I -> Threshold -> Scale(-theta) -> I: IF with reset by subtraction
        threshold_node = next(s for s in loop if isinstance(lw.nir.nodes[s], nir.Threshold))
        scale_node = next(s for s in dg.successors(threshold_node) if lw.fused.get(s) == name)
        threshold = -_per_channel(lw.nir.nodes[scale_node].scale, "scale", name)
        fire_at = _per_channel(lw.nir.nodes[threshold_node].threshold, "threshold", name)
        neuron = IF(threshold, "subtract", _v_init(threshold, fire_at, name))
        return lw._chain(name, _gain(lw, name, node.r) + [("", neuron)], inputs)
    consumers = [lw.nir.nodes[s] for s in dg.successors(name)]
    if not consumers or not all(isinstance(c, nir.Output) for c in consumers):
        raise IRValidationError(
            f"NIR node {name!r}: an I node is supported as the readout (feeding Output nodes only) "
            "or inside a reset-by-subtraction loop"
        )
    # Readout: the IR output averages over time; logits = integrator state after T steps / T.
    ops = _gain(lw, name, node.r)
    return lw._chain(name, ops, inputs) if ops else inputs[0]


_CONVERTERS = {
    "Input": _input,
    "Output": _output,
    "Affine": _affine,
    "Linear": _affine,
    "Conv2d": _conv2d,
    "Scale": _scale,
    "AvgPool2d": _avgpool,
    "SumPool2d": _avgpool,
    "Flatten": _flatten,
    "IF": _if,
    "I": _integrator,
}


def from_nir(source: str | os.PathLike | nir.NIRGraph, name: str | None = None) -> Graph:
    """Read a NIR file (type-checked) or take a ``nir.NIRGraph`` and lower it into a valid IR graph."""
    if isinstance(source, nir.NIRGraph):
        g, label = source, name or "nir"
    else:
        g, label = read_nir_file(source), name or Path(source).stem
    if not isinstance(g, nir.NIRGraph):
        raise ModelLoadError(
            f"{label}: the file holds a single {type(g).__name__} node, not a graph"
        )
    return NirLowering(g, label).lower()


def source_ops() -> list[str]:
    """The NIR node types this frontend lowers."""
    return sorted(_CONVERTERS)
