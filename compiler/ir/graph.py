"""The graph IR: a typed dataflow graph on :class:`networkx.DiGraph`.

Each node holds one :class:`~spikeshield.compiler.ir.ops.Op` and its batch-less output shape. Edges carry
data; when several edges enter a node their values are summed (a residual add). Edges marked
``recurrent`` carry a value from the previous time step and are the only ones allowed to close cycles.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import networkx as nx

from spikeshield.compiler.ir.errors import IRValidationError, UnsupportedOpError
from spikeshield.compiler.ir.ops import OPS, Input, Op, Output, Shape
from spikeshield.compiler.ir.run_spec import RunSpec


class Graph:
    """A named graph of ops with JSON-able metadata (``meta``) describing how to run it."""

    def __init__(self, name: str = "graph", meta: dict[str, Any] | None = None) -> None:
        self.name = name
        self.meta: dict[str, Any] = dict(meta or {})
        self._g = nx.DiGraph()

    # ---- building -----------------------------------------------------------------------
    def add(self, name: str, op: Op, inputs: Iterable[str] = ()) -> str:
        """Add node ``name`` computing ``op`` over the sum of ``inputs``; returns ``name``."""
        if name in self._g:
            raise IRValidationError(f"node {name!r} already exists; pick a unique name")
        if op.kind not in OPS:
            raise IRValidationError(f"node {name!r}: op {type(op).__name__} is not a registered op")
        self._g.add_node(name, op=op, shape=None)
        for src in inputs:
            self.connect(src, name)
        return name

    def connect(self, src: str, dst: str, recurrent: bool = False, count: int = 1) -> None:
        """Add ``count`` edges ``src -> dst``. Fan-in counts with multiplicity: connecting the same
        pair again adds to the edge's count (``y + y`` is y twice), never merges it away."""
        for node in (src, dst):
            if node not in self._g:
                raise IRValidationError(f"cannot connect {src!r} -> {dst!r}: no node {node!r}")
        if self._g.has_edge(src, dst):
            data = self._g.edges[src, dst]
            if data["recurrent"] != recurrent:
                raise IRValidationError(f"{src!r} -> {dst!r} would be both a recurrent and a "
                                        "feed-forward edge")
            data["count"] += count
        else:
            self._g.add_edge(src, dst, recurrent=recurrent, count=count)

    def disconnect(self, src: str, dst: str) -> int:
        """Remove every edge ``src -> dst``; returns how many there were (its count)."""
        if not self._g.has_edge(src, dst):
            raise IRValidationError(f"no edge {src!r} -> {dst!r} to remove")
        count = self._g.edges[src, dst]["count"]
        self._g.remove_edge(src, dst)
        return count

    def unique_name(self, base: str) -> str:
        """``base`` if free, else ``base_1``, ``base_2``, ..."""
        if base not in self._g:
            return base
        i = 1
        while f"{base}_{i}" in self._g:
            i += 1
        return f"{base}_{i}"

    def set_op(self, name: str, op: Op) -> None:
        self._g.nodes[name]["op"] = op

    def remove(self, name: str) -> None:
        """Remove ``name``, connecting each of its inputs to each of its consumers."""
        preds = self.inputs(name)
        succs = [(s, self._g.edges[name, s]["count"]) for s in self.consumers(name)]
        self._g.remove_node(name)
        for p in preds:
            for s, count in succs:
                self.connect(p, s, count=count)

    def insert_after(self, name: str, new_name: str, op: Op) -> str:
        """Insert ``new_name`` between ``name`` and all of its consumers."""
        succs = self.consumers(name)
        self.add(new_name, op, [name])
        for s in succs:
            data = self._g.edges[name, s]
            self._g.remove_edge(name, s)
            self.connect(new_name, s, data["recurrent"], data["count"])
        return new_name

    def insert_before(self, name: str, new_name: str, op: Op) -> str:
        """Insert ``new_name`` between all of ``name``'s feed-forward inputs and ``name``: it
        receives their sum (edge counts kept) and is ``name``'s only feed-forward input."""
        preds = [(p, self._g.edges[p, name]["count"]) for p in self._g.predecessors(name)
                 if not self._g.edges[p, name]["recurrent"]]
        self.add(new_name, op)
        for p, count in preds:
            self._g.remove_edge(p, name)
            self.connect(p, new_name, count=count)
        self.connect(new_name, name)
        return new_name

    # ---- queries ------------------------------------------------------------------------
    def op(self, name: str) -> Op:
        return self._g.nodes[name]["op"]

    def shape(self, name: str) -> Shape:
        """Output shape of ``name`` (after :meth:`infer_shapes`)."""
        shape = self._g.nodes[name]["shape"]
        if shape is None:
            self.infer_shapes()
            shape = self._g.nodes[name]["shape"]
        return shape

    def in_shape(self, name: str) -> Shape:
        """Shape of the value entering ``name`` (the shared shape of its inputs)."""
        preds = self.inputs(name)
        return self.shape(preds[0]) if preds else self.op(name).infer_shape(())

    def inputs(self, name: str, recurrent: bool = False) -> list[str]:
        """Feed-forward inputs of ``name`` (or only its recurrent ones), each as many times as it
        is connected: the node's input is the sum over this list."""
        return [
            p for p in self._g.predecessors(name) if self._g.edges[p, name]["recurrent"] == recurrent
            for _ in range(self._g.edges[p, name]["count"])
        ]

    def consumers(self, name: str) -> list[str]:
        return list(self._g.successors(name))

    def nodes(self) -> list[str]:
        """Node names in a topological order of the feed-forward edges (ties broken by insertion)."""
        ff = nx.DiGraph()
        ff.add_nodes_from(self._g.nodes)
        ff.add_edges_from((u, v) for u, v, r in self._g.edges(data="recurrent") if not r)
        order = {n: i for i, n in enumerate(self._g.nodes)}
        try:
            return list(nx.lexicographical_topological_sort(ff, key=order.__getitem__))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(ff)
            raise IRValidationError(
                f"the graph has a cycle through {' -> '.join(u for u, _ in cycle)} made of feed-forward "
                "edges; mark the edge that carries the previous time step as recurrent"
            ) from None

    def edges(self) -> list[tuple[str, str, bool]]:
        """Every edge, repeated as many times as it is connected."""
        return [(u, v, bool(d["recurrent"])) for u, v, d in self._g.edges(data=True)
                for _ in range(d["count"])]

    def nodes_of(self, *kinds: type[Op]) -> list[str]:
        """Nodes whose op is one of ``kinds``, in topological order."""
        return [n for n in self.nodes() if isinstance(self.op(n), kinds)]

    def run_spec(self) -> RunSpec:
        """How this graph is run (T, input encoding, input range, readout); see ``run_spec``."""
        return RunSpec.of(self.meta)

    def synaptic_nodes(self) -> list[str]:
        """Nodes whose op has synapses (a weight and an optional mask), in topological order."""
        return [n for n in self.nodes() if self.op(n).synaptic]

    @property
    def input_names(self) -> list[str]:
        return self.nodes_of(Input)

    @property
    def output_names(self) -> list[str]:
        return self.nodes_of(Output)

    def __contains__(self, name: str) -> bool:
        return name in self._g

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    # ---- checking -----------------------------------------------------------------------
    def infer_shapes(self) -> None:
        """Validate every node and compute its output shape, in topological order."""
        for name in self.nodes():
            self.infer_node(name)

    def infer_node(self, name: str) -> Shape:
        """Validate ``name`` against the shapes of its inputs (inferred already) and record its
        output shape: what a frontend calls as it adds nodes, so that lowering N nodes checks N
        nodes, not N times the graph."""
        op = self.op(name)
        preds = self.inputs(name)
        if isinstance(op, Input):
            if preds:
                raise IRValidationError(f"input node {name!r} must not have inputs")
            in_shape: Shape = op.shape
        else:
            if not preds:
                raise IRValidationError(
                    f"node {name!r} ({op.kind}) has no inputs; connect it or remove it"
                )
            shapes = {p: self._g.nodes[p]["shape"] for p in preds}
            if any(shape is None for shape in shapes.values()):
                raise IRValidationError(f"node {name!r} ({op.kind}) is fed by a node whose "
                                        "shape is not inferred yet")
            if len(set(shapes.values())) > 1:
                raise IRValidationError(
                    f"node {name!r} ({op.kind}) sums inputs of different shapes: "
                    + ", ".join(f"{p}{s}" for p, s in shapes.items())
                )
            in_shape = next(iter(shapes.values()))
        try:
            op.validate(in_shape)
            out_shape = tuple(int(s) for s in op.infer_shape(in_shape))
        except IRValidationError as err:
            raise IRValidationError(f"node {name!r} ({op.kind}): {err}") from None
        self._g.nodes[name]["shape"] = out_shape
        for p in self.inputs(name, recurrent=True):
            if self._g.nodes[p]["shape"] not in (None, in_shape):
                raise IRValidationError(
                    f"recurrent edge {p!r} -> {name!r}: shape {self._g.nodes[p]['shape']} "
                    f"!= {in_shape}"
                )
        return out_shape

    def require_feed_forward(self, consumer: str) -> None:
        """Refuse what ``consumer`` (the runtime, an exporter) cannot honour, instead of dropping
        it: recurrent edges, and more than one output."""
        recurrent = [(u, v) for u, v, r in self.edges() if r]
        if recurrent:
            u, v = recurrent[0]
            raise UnsupportedOpError(
                f"graph {self.name!r} has {len(recurrent)} recurrent edge(s) (first {u!r} -> {v!r}); "
                f"{consumer} computes feed-forward graphs only, so it would drop them: remove them"
            )
        if len(self.output_names) > 1:
            raise UnsupportedOpError(
                f"graph {self.name!r} has {len(self.output_names)} outputs "
                f"({', '.join(self.output_names[:3])}); {consumer} computes one: keep one"
            )

    def validate(self) -> Graph:
        """Check the whole graph (known ops, shapes, acyclic feed-forward part, one input, outputs)."""
        if len(self.input_names) != 1:
            raise IRValidationError(
                f"graph {self.name!r} has {len(self.input_names)} input nodes; exactly one is supported"
            )
        if not self.output_names:
            raise IRValidationError(f"graph {self.name!r} has no output node")
        self.run_spec()  # the recorded run settings are well formed
        for name in self._g.nodes:
            op = self.op(name)
            if op.kind not in OPS or not isinstance(op, OPS[op.kind]):
                raise IRValidationError(f"node {name!r}: unknown op {op!r}")
            if isinstance(op, Output) and self.consumers(name):
                raise IRValidationError(f"output node {name!r} must not feed other nodes")
        self.infer_shapes()
        return self

    # ---- copying and printing -----------------------------------------------------------
    def copy(self) -> Graph:
        """A deep copy: tensors are cloned, so passes never alias the caller's graph."""
        new = Graph(self.name, copy.deepcopy(self.meta))
        for name in self._g.nodes:
            new._g.add_node(name, op=self.op(name).clone(), shape=self._g.nodes[name]["shape"])
        for u, v, data in self._g.edges(data=True):
            new._g.add_edge(u, v, **data)
        return new

    def dump(self) -> str:
        """A readable listing: one line per node with its inputs, op, parameters and shape."""
        lines = [f"graph {self.name}"]
        for key, value in sorted(self.meta.items()):
            if not isinstance(value, (dict, list)):
                lines.append(f"  # {key} = {value}")
        for name in self.nodes():
            ins = self.inputs(name)
            rec = self.inputs(name, recurrent=True)
            args = ", ".join(ins + [f"{r}@t-1" for r in rec])
            shape = self._g.nodes[name]["shape"]
            lines.append(f"  %{name} = {self.op(name).summary()}({args})  -> {shape}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self)} nodes)"
