"""An independent step-by-step NIR simulator, written from the NIR 1.0 node equations only, used to
check that spikeshield's NIR exports mean what its runtime computes (it shares no code with the
runtime, the backend or the frontend).

Semantics: one step per ``dt``; ``IF`` and ``I`` read ``r`` as a per-step gain; every node's input
is the sum of its incoming edges; an edge that closes a cycle carries the previous step's value.
"""

from __future__ import annotations

import networkx as nx
import nir
import numpy as np
import torch
import torch.nn.functional as F


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _back_edges(g: nir.NIRGraph) -> set[tuple[str, str]]:
    """Edges that close a cycle in a depth-first walk from the Input nodes: the delayed ones."""
    adj: dict[str, list[str]] = {n: [] for n in g.nodes}
    for u, v in g.edges:
        adj[u].append(v)
    colour: dict[str, int] = {}
    back: set[tuple[str, str]] = set()

    def visit(u: str) -> None:
        colour[u] = 1
        for v in adj[u]:
            if colour.get(v) == 1:
                back.add((u, v))
            elif v not in colour:
                visit(v)
        colour[u] = 2

    starts = [n for n, node in g.nodes.items() if isinstance(node, nir.Input)]
    for n in starts + list(g.nodes):
        if n not in colour:
            visit(n)
    return back


class NirReference:
    def __init__(self, g: nir.NIRGraph) -> None:
        self.g = g
        self.back = _back_edges(g)
        dg = nx.DiGraph([e for e in g.edges if tuple(e) not in self.back])
        dg.add_nodes_from(g.nodes)
        self.order = list(nx.topological_sort(dg))
        self.preds = {n: [u for u, v in g.edges if v == n] for n in g.nodes}

    def run(self, x: torch.Tensor, timesteps: int):
        """Returns (final values of Output nodes, spike counts per spiking node (N, *shape), and
        the smallest |v - threshold| each neuron reached before firing decisions); the Output
        nodes' values summed over the steps are then in ``self.summed``."""
        prev: dict[str, torch.Tensor] = {}
        state: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        margin: dict[str, torch.Tensor] = {}
        self.summed: dict[str, torch.Tensor] = {}
        for _ in range(timesteps):
            out: dict[str, torch.Tensor] = {}
            for name in self.order:
                node = self.g.nodes[name]
                if isinstance(node, nir.Input):
                    out[name] = x
                    continue
                parts = [
                    prev[p] if (p, name) in self.back else out[p]
                    for p in self.preds[name]
                    if (p, name) not in self.back or p in prev
                ]
                inp = sum(parts)
                out[name] = self._node(name, node, inp, state, counts, margin)
            prev = out
            for n, node in self.g.nodes.items():
                if isinstance(node, nir.Output):
                    self.summed[n] = self.summed.get(n, 0) + out[n]
        outputs = {n: prev[n] for n, node in self.g.nodes.items() if isinstance(node, nir.Output)}
        return outputs, counts, margin

    def _node(self, name, node, x, state, counts, margin):
        if isinstance(node, nir.Output):
            return x
        if isinstance(node, nir.Affine):
            return x @ _t(node.weight).T + _t(node.bias)
        if isinstance(node, nir.Linear):
            return x @ _t(node.weight).T
        if isinstance(node, nir.Scale):
            return x * _t(node.scale)
        if isinstance(node, nir.Conv2d):
            return F.conv2d(
                x,
                _t(node.weight),
                _t(node.bias),
                tuple(node.stride),
                tuple(node.padding),
                tuple(node.dilation),
                node.groups,
            )
        if isinstance(node, nir.SumPool2d):
            return F.avg_pool2d(
                x,
                tuple(node.kernel_size),
                tuple(node.stride),
                tuple(node.padding),
                divisor_override=1,
            )
        if isinstance(node, nir.AvgPool2d):
            return F.avg_pool2d(x, tuple(node.kernel_size), tuple(node.stride), tuple(node.padding))
        if isinstance(node, nir.Flatten):
            end = node.end_dim if node.end_dim < 0 else node.end_dim + 1
            return x.flatten(node.start_dim + 1, end)
        if isinstance(node, nir.I):
            state[name] = state.get(name, 0) + _t(node.r) * x
            return state[name]
        if isinstance(node, nir.Threshold):
            theta = _t(node.threshold)
            z = (x > theta).float()
            self._record(name, z, (x - theta).abs(), counts, margin)
            return z
        if isinstance(node, nir.IF):
            v = state.get(name, 0) + _t(node.r) * x
            theta = _t(node.v_threshold)
            z = (v > theta).float()
            self._record(name, z, (v - theta).abs(), counts, margin)
            state[name] = torch.where(z.bool(), _t(node.v_reset).expand_as(v), v)
            return z
        raise NotImplementedError(type(node).__name__)

    @staticmethod
    def _record(name, z, distance, counts, margin):
        counts[name] = counts.get(name, 0) + z
        margin[name] = torch.minimum(margin[name], distance) if name in margin else distance
