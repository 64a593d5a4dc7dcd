"""Execute a graph IR as an ANN (one pass) or as an SNN (``T`` time steps).

Execution is layer by layer, not step by step: a stateless op (conv, linear, pooling) runs once on the
whole sequence with time folded into the batch, and each IF layer is a scan over time. Values that do
not change over time (the analog input under direct encoding and everything computed from it before the
first neuron) are computed once, not ``T`` times.

How gradients cross the spiking layers is the executor's ``gradient_mode`` (see
:mod:`spikeshield.runtime.gradient_modes`); it can be switched at any time, for example by an attack
ensemble, without rebuilding the executor or touching its parameters.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import resolve_timesteps
from spikeshield.compiler.ir.ops import IF, BatchNorm, Conv2d, Input, OpCoverage, Output, Sum, kinds
from spikeshield.compiler.ir.run_spec import ENCODINGS  # noqa: F401  (re-exported)
from spikeshield.compiler.ir.surrogates import Surrogate
from spikeshield.runtime.data import as_float, check_images
from spikeshield.runtime.gradient_modes import (
    GradientMode,
    SharpnessTracker,
    rate_gradient_spikes,
)
from spikeshield.runtime.kernels import KERNELS, batchnorm_tracking, channel_view, masked_weight
from spikeshield.runtime.neurons import IFParameters, IFState, if_scan, if_scan_from
from spikeshield.runtime.sparse_conv import SparseConvs

# Ops the executor steps through time itself (inputs, outputs, fan-in sums, neurons); every other
# kind runs through its kernel in runtime.kernels.
STEPPED = (Input, Output, Sum, IF)
COVERAGE = OpCoverage("graph executor (runtime.executor, runtime.kernels)",
                      handled=kinds(KERNELS) | kinds(STEPPED))
# Time is folded into the batch only while one layer's (steps x batch) values stay under this many
# elements; larger runs go through time in blocks of steps, the membranes carried from block to
# block. A whole (T*N, C, H, W) tensor per layer falls out of cache at large batches: ResNet-20 at
# batch 256, T = 8 ran 1.8x slower folded than step by step (benchmarks/runtime_speed.py).
FOLD_BUDGET = 1 << 21
# "auto": a pruned conv runs the weight-sparse kernel where it measured faster; "off": always dense.
SPARSE_MODES = ("auto", "off")
# The mode of executors not given one, so that a whole command can run dense for comparison:
# SPIKESHIELD_SPARSE=off spikeshield eval DIR (default "auto").
SPARSE_ENV = "SPIKESHIELD_SPARSE"
# Called with (node name, value, temporal) for every node's output during a forward pass.
Observer = Callable[[str, torch.Tensor, bool], None]


@dataclass
class _Value:
    data: torch.Tensor  # (N, ...) if static, (T, N, ...) if temporal
    temporal: bool

    def at_all_steps(self, timesteps: int) -> torch.Tensor:
        if self.temporal:
            return self.data
        return self.data.unsqueeze(0).expand(timesteps, *self.data.shape)


class GraphExecutor(nn.Module):
    """An ``nn.Module`` that runs a :class:`Graph`; the graph's tensors become its parameters.

    ``forward(x, timesteps)`` returns logits: for an SNN, the output layer's value averaged over
    ``timesteps`` steps (by default the T the graph records). ``x`` is uint8 pixels (divided by
    255) or floats within the input range the graph records; anything else is a ``DataError``. ``to_graph()`` writes the (possibly trained) parameters back into a graph copy.
    ``surrogate`` is a shorthand for ``gradient_mode=GradientMode("bptt", surrogate)``.
    BatchNorm nodes normalise with their stored statistics, except with ``batch_statistics`` in
    training mode: then with each batch's own, tracked into the stored ones
    (``kernels.batchnorm_tracking``), as PyTorch's BatchNorm trains. Pruning needs it: the
    network changes under the statistics at every step.
    """

    def __init__(
        self,
        graph: Graph,
        surrogate: Surrogate | None = None,
        encoding: str | None = None,
        gradient_mode: GradientMode | None = None,
        sparse: str | None = None,
        batch_statistics: bool = False,
    ) -> None:
        super().__init__()
        graph.validate()
        graph.require_feed_forward("the runtime")
        self.graph = graph
        self.order = graph.nodes()
        if gradient_mode is not None and surrogate is not None:
            raise ConfigError("give either a surrogate or a gradient mode, not both")
        self.gradient_mode = gradient_mode or GradientMode("bptt", surrogate or Surrogate())
        # The assg mode's membrane statistics: an attack brings its own (see ``using``); without
        # one, each forward pass starts afresh.
        self.sharpness: SharpnessTracker | None = None
        self._sharpness_now = SharpnessTracker()
        spec = graph.run_spec()
        encoding = spec.encoding if encoding is None else encoding  # the graph's, by default
        self.recorded_timesteps = spec.timesteps
        self.input_range = spec.input_range
        if encoding not in ENCODINGS:
            raise ConfigError(f"unknown input encoding {encoding!r}; choose one of {ENCODINGS}")
        self.encoding = encoding
        self.is_spiking = any(isinstance(graph.op(n), IF) for n in self.order)
        # The graph is fixed for the executor's life: resolve ops and edges once, not every forward
        # (a topological sort per query cost a third of a small network's forward pass).
        self._plan = [(name, graph.op(name), graph.inputs(name)) for name in self.order]
        self._output = graph.output_names[0]
        self._widest = max(math.prod(graph.shape(name)) for name in self.order)
        self.fold_budget = FOLD_BUDGET
        self._keys = {name: f"n{i}" for i, name in enumerate(self.order)}
        self.node_params = nn.ModuleDict()
        for name in self.order:
            op = graph.op(name)
            params = nn.ParameterDict()
            for field, value in op.tensors().items():
                frozen = field in op.frozen_fields  # statistics and masks are never trained
                params[field] = nn.Parameter(value.detach().clone().float(), requires_grad=not frozen)
            self.node_params[self._keys[name]] = params
        self.spike_counts: dict[str, torch.Tensor] = {}
        where = "sparse" if sparse is not None else SPARSE_ENV  # the one to name if it is bad
        sparse = os.environ.get(SPARSE_ENV, "auto") if sparse is None else sparse
        if sparse not in SPARSE_MODES:
            raise ConfigError(f"{where} must be one of {', '.join(SPARSE_MODES)}, got {sparse!r}; "
                              "give auto or off")
        self.sparse = sparse  # "auto": pruned convs take the sparse kernel where it measured faster
        self.sparse_convs = SparseConvs()
        self.batch_statistics = batch_statistics
        self.neuron_spike_counts: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def using(self, mode: GradientMode, sharpness: SharpnessTracker | None = None
              ) -> Iterator[GraphExecutor]:
        """Run the block with ``mode`` as the gradient mode (and, given, ``sharpness`` as the assg
        mode's statistics), then restore the previous ones."""
        previous = self.gradient_mode, self.sharpness
        self.gradient_mode = mode
        self.sharpness = sharpness or self.sharpness
        try:
            yield self
        finally:
            self.gradient_mode, self.sharpness = previous
            # the last pass's statistics (a batch's worth per IF layer) are not kept past the block
            self._sharpness_now = SharpnessTracker()

    # ---- parameters ---------------------------------------------------------------------
    def parameters_of(self, name: str) -> nn.ParameterDict:
        """The live tensors of node ``name``, as the module that owns them."""
        return self.node_params[self._keys[name]]

    def tensors_of(self, name: str) -> dict[str, torch.Tensor]:
        return dict(self.parameters_of(name).items())

    def clamp_thresholds(self, floor: float) -> None:
        """Keep every IF threshold at ``floor`` or above (training may not drive one to 0)."""
        with torch.no_grad():
            for name in self.graph.nodes_of(IF):
                self.tensors_of(name)["threshold"].clamp_(min=floor)

    def to_graph(self) -> Graph:
        """A copy of the graph holding the current parameter values."""
        out = self.graph.copy()
        for name in self.order:
            live = self.tensors_of(name)
            if live:
                op = out.op(name)
                values = {k: v.detach().cpu().clone() for k, v in live.items()}
                if "mask" in values:
                    values["weight"] = masked_weight(values)
                out.set_op(name, op.replace(**values))
        return out

    # ---- execution ----------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        timesteps: int | None = None,
        *,
        record: bool = False,
        stop_at: str | None = None,
        generator: torch.Generator | None = None,
        observe: Observer | None = None,
    ) -> torch.Tensor:
        """Logits for a batch ``x`` of shape ``(N, *input_shape)``.

        ``x``: uint8 pixels (divided by 255) or floats within the graph's input range
        (``DataError`` otherwise). ``timesteps`` defaults to the T the graph records (a spiking
        graph that records none needs it; the ANN proxy gradient mode ignores it and runs every
        IF layer as ``relu(I)/theta`` in a single pass). ``record=True`` stores the
        spike counts of every IF node per sample in ``self.spike_counts`` (N,) and per neuron in
        ``self.neuron_spike_counts`` (N, *shape). ``stop_at=node`` returns the value *entering* that
        node instead (``(T, N, ...)`` when it varies over time), used by threshold calibration.
        ``observe(name, value, temporal)`` sees every node's output as it is computed (the SynOp
        counter reads the spike trains this way without the executor storing them).
        """
        check_images(x, "the executor's input x", self.input_range)
        x = as_float(x) if x.dtype == torch.uint8 else x
        proxy = self.gradient_mode.kind == "ann_proxy"
        if proxy:
            timesteps = None
        elif self.is_spiking:
            timesteps = resolve_timesteps(timesteps, self.recorded_timesteps)
            if timesteps is None:
                raise ConfigError(f"graph {self.graph.name!r} records no time steps; pass "
                                  "timesteps=N to run it")
        if record:
            self.spike_counts, self.neuron_spike_counts = {}, {}
        if self.gradient_mode.kind == "assg":
            self._sharpness_now = self.sharpness or SharpnessTracker()
        block = self._block_steps(x, timesteps)
        # (assg keeps statistics per step of the whole window: it runs unblocked under gradients)
        blockable = not (proxy or stop_at or observe) and (
            self.gradient_mode.kind == "bptt" or not torch.is_grad_enabled()
        )
        if block < (timesteps or 0) and blockable:
            return self._forward_blocks(x, timesteps, block, generator, record)
        values: dict[str, _Value] = {}
        for name, op, parents in self._plan:
            if isinstance(op, Input):
                values[name] = self._encode(x, timesteps, generator)
            else:
                value = self._gather(parents, values, timesteps)
                if name == stop_at:
                    return value.data
                values[name] = self._run_node(name, op, value, timesteps, proxy, record)
            if observe is not None:
                observe(name, values[name].data, values[name].temporal)
        if stop_at is not None:
            raise ConfigError(f"stop_at={stop_at!r} is not a node of graph {self.graph.name!r}")
        return values[self._output].data

    def frontier(self, batches: list[torch.Tensor], timesteps: int | None,
                 proxy: bool = False) -> Frontier:
        """A forward pass over ``batches`` that advances node by node (see :class:`Frontier`);
        with ``proxy``, the ANN the spiking graph stands for (every IF as ``relu(I) / theta``)."""
        return Frontier(self, batches, None if proxy else timesteps, proxy)

    def _block_steps(self, x: torch.Tensor, timesteps: int | None) -> int:
        """Steps folded into the batch at once (all of them unless the fold budget says less)."""
        if not self.is_spiking or not timesteps:
            return timesteps or 0
        return max(1, min(timesteps, self.fold_budget // max(1, len(x) * self._widest)))

    def _forward_blocks(
        self, x: torch.Tensor, timesteps: int, block: int, generator: torch.Generator | None,
        record: bool = False,
    ) -> torch.Tensor:
        """The forward pass in blocks of ``block`` steps: the same spikes and logits as folding
        all steps at once, in cache-sized pieces. Values that do not change over time are computed
        in the first block and reused; each IF layer's membrane is carried to the next block, and
        with ``record`` its spike counts are summed over the blocks."""
        encoded = self._encode(x, timesteps, generator)
        static: dict[str, _Value] = {}
        states: dict[str, IFState] = {}
        outputs: list[torch.Tensor] = []
        for start in range(0, timesteps, block):
            steps = min(block, timesteps - start)
            values: dict[str, _Value] = {}
            for name, op, parents in self._plan:
                if name in static:
                    values[name] = static[name]
                    continue
                if isinstance(op, Input):
                    data = encoded.data[start : start + steps] if encoded.temporal else encoded.data
                    values[name] = _Value(data, encoded.temporal)
                    continue
                value = self._gather(parents, values, steps)
                if isinstance(op, IF):
                    spikes, states[name] = self._run_if_from(name, op, value, steps, states.get(name))
                    values[name] = _Value(spikes, temporal=True)
                    if record:
                        self._record(name, spikes, accumulate=start > 0)
                elif isinstance(op, Output):
                    outputs.append(value.at_all_steps(steps))
                else:
                    values[name] = self._run_node(name, op, value, steps, False, False)
                    if not values[name].temporal:
                        static[name] = values[name]
        return torch.cat(outputs).mean(dim=0)

    def _run_if_from(
        self, name: str, op: IF, value: _Value, steps: int, state: IFState | None
    ) -> tuple[torch.Tensor, IFState]:
        mode = self.gradient_mode
        params = IFParameters(self._threshold(name, value), op.reset, mode.surrogate,
                              mode.detach_reset, op.v_init)
        return if_scan_from(value.data, params, None if value.temporal else steps, state)

    def _threshold(self, name: str, value: _Value) -> torch.Tensor:
        """IF node ``name``'s live threshold, shaped to broadcast over one step of ``value``."""
        ndim = value.data.dim() - (1 if value.temporal else 0)
        return channel_view(self.tensors_of(name)["threshold"], ndim)

    def _run_node(
        self, name: str, op, value: _Value, timesteps: int | None, proxy: bool, record: bool
    ) -> _Value:
        if isinstance(op, IF) and proxy:
            return self._run_proxy(name, value)
        if isinstance(op, IF):
            spikes = self._run_if(name, op, value, timesteps)
            if record:
                self._record(name, spikes)
            return _Value(spikes, temporal=True)
        if isinstance(op, Output):
            data = value.data.mean(dim=0) if value.temporal else value.data
            return _Value(data, temporal=False)
        if isinstance(op, Sum):
            return value
        return self._run_stateless(name, op, value)

    def _record(self, name: str, spikes: torch.Tensor, accumulate: bool = False) -> None:
        """Store (or, for a later block of steps, add) IF node ``name``'s spike counts."""
        per_neuron = spikes.detach().sum(dim=0)
        if accumulate:
            per_neuron = per_neuron + self.neuron_spike_counts[name]
        self.neuron_spike_counts[name] = per_neuron
        self.spike_counts[name] = per_neuron.flatten(1).sum(dim=1)

    def _encode(self, x: torch.Tensor, timesteps: int | None, generator) -> _Value:
        if self.encoding == "poisson" and timesteps is not None:
            # Each step, pixel value p in [0, 1] is a spike with probability p.
            from norse.torch.functional.encode import poisson_encode

            spikes = poisson_encode(x.detach(), timesteps, f_max=1.0, dt=1.0, generator=generator)
            # Straight-through towards the pixels, so that attacks see an expected-value gradient.
            return _Value(spikes + (x - x.detach()).unsqueeze(0), temporal=True)
        return _Value(x, temporal=False)

    def _gather(self, parents: list[str], values: dict[str, _Value], timesteps: int | None) -> _Value:
        inputs = [values[p] for p in parents]
        if len(inputs) == 1:
            return inputs[0]
        temporal = any(v.temporal for v in inputs)
        data = [v.at_all_steps(timesteps) if temporal else v.data for v in inputs]
        # Left to right, as sum() would, but without sum()'s extra pass for 0 + first.
        total = data[0] + data[1]
        for more in data[2:]:
            total.add_(more)
        return _Value(total, temporal=temporal)

    def _run_stateless(self, name: str, op, value: _Value) -> _Value:
        kernel = KERNELS[type(op)]
        tensors = self.tensors_of(name)
        if self.batch_statistics and self.training and isinstance(op, BatchNorm):
            kernel = batchnorm_tracking
        if self.sparse != "off" and isinstance(op, Conv2d) and "mask" in tensors:
            kernel = self.sparse_convs.kernel(name, op, tensors, kernel)
        if not value.temporal:
            return _Value(kernel(op, tensors, value.data), temporal=False)
        steps, batch = value.data.shape[:2]
        y = kernel(op, tensors, value.data.flatten(0, 1))
        return _Value(y.unflatten(0, (steps, batch)), temporal=True)

    def _run_if(self, name: str, op: IF, value: _Value, timesteps: int) -> torch.Tensor:
        threshold = self._threshold(name, value)
        mode = self.gradient_mode
        steps = None if value.temporal else timesteps
        if mode.kind == "bptt":
            params = IFParameters(threshold, op.reset, mode.surrogate, mode.detach_reset,
                                  op.v_init)
            return if_scan(value.data, params, steps)
        if mode.kind == "assg":  # arctan, its slope per neuron and step from the statistics
            params = IFParameters(threshold, op.reset, Surrogate("arctan"), mode.detach_reset,
                                  op.v_init, self._sharpness_now.layer(name))
            return if_scan(value.data, params, steps)
        # Rate modes: exact spikes without a graph, then the rate-based gradient attached.
        with torch.no_grad():
            params = IFParameters(threshold.detach(), op.reset, Surrogate("none"),
                                  v_init=op.v_init)
            spikes = if_scan(value.data, params, steps)
        return rate_gradient_spikes(spikes, value.data, threshold, mode.kind)

    def _run_proxy(self, name: str, value: _Value) -> _Value:
        data = value.data.mean(dim=0) if value.temporal else value.data
        threshold = channel_view(self.tensors_of(name)["threshold"], data.dim())
        return _Value(torch.relu(data) / threshold, temporal=False)


class Frontier:
    """Several batches pushed through the graph together, node by node, in plan order: what
    threshold calibration needs (each IF layer's threshold comes from every batch's current
    before any batch goes past it), at the cost of one forward pass per batch in all.

    :meth:`advance_to` computes every node before ``name`` for every batch and returns the value
    entering ``name``; parameters changed in between (a threshold just calibrated) are used from
    then on. Only values that a later node still reads are kept, spike trains as ``uint8`` (they
    are exactly 0 or 1); the numbers are those of ``forward(x, timesteps, stop_at=name)``.
    Each batch runs in pieces of samples that keep one layer's (steps x samples) values within the
    executor's fold budget (whole (T*N, C, H, W) tensors fall out of cache, as in ``forward``).
    """

    def __init__(self, executor: GraphExecutor, batches: list[torch.Tensor],
                 timesteps: int | None, proxy: bool = False) -> None:
        self.executor, self.timesteps, self.proxy = executor, timesteps, proxy
        self.position = 0
        size = max(1, executor.fold_budget // ((timesteps or 1) * executor._widest))
        self.pieces = [list(x.split(size)) for x in batches]
        self.values: list[list[dict[str, _Value]]] = [[{} for _ in p] for p in self.pieces]
        plan = executor._plan
        self.index = {name: i for i, (name, _, _) in enumerate(plan)}
        self.last_use = dict(self.index)
        for i, (_, _, parents) in enumerate(plan):
            for p in parents:
                self.last_use[p] = max(self.last_use[p], i)

    def advance_to(self, name: str) -> list[torch.Tensor]:
        """The value entering ``name`` for each batch (``(T, N, ...)`` when it varies in time)."""
        ex = self.executor
        stop = self.index.get(name)
        if stop is None or stop < self.position:
            raise ConfigError(f"{name!r} is not a node ahead of the frontier")
        with torch.no_grad():
            for pieces, values in zip(self.pieces, self.values):
                for x, piece in zip(pieces, values):
                    self._run(x, piece, self.position, stop)
            self.position = stop
            _, _, parents = ex._plan[stop]
            out = []
            for values in self.values:
                parts = [self._gather(parents, piece) for piece in values]
                dim = 1 if parts[0].temporal else 0
                out.append(parts[0].data if len(parts) == 1 else
                           torch.cat([p.data for p in parts], dim=dim))
            return out

    def _run(self, x: torch.Tensor, values: dict[str, _Value], start: int, stop: int) -> None:
        """Nodes ``start`` up to (not including) ``stop`` of the plan, for one piece of a batch."""
        ex = self.executor
        for i in range(start, stop):
            node, op, parents = ex._plan[i]
            if isinstance(op, Input):
                value = ex._encode(x, self.timesteps, None)
            else:
                value = ex._run_node(node, op, self._gather(parents, values), self.timesteps,
                                     self.proxy, False)
            values[node] = self._store(op, value)
            for p in set(parents):
                if self.last_use[p] <= i:
                    del values[p]

    def shift(self, name: str, delta: torch.Tensor) -> None:
        """Add ``delta`` (broadcast over one sample) to node ``name``'s stored value in every
        batch, as if the node had computed it: a bias changed after the node ran."""
        for values in self.values:
            for piece in values:
                if name not in piece:
                    raise ConfigError(f"{name!r} holds no value at the frontier")
                piece[name].data.add_(delta.to(piece[name].data))

    def _store(self, op, value: _Value) -> _Value:
        if isinstance(op, IF) and not self.proxy:
            return _Value(value.data.to(torch.uint8), value.temporal)
        return value

    def _gather(self, parents: list[str], values: dict[str, _Value]) -> _Value:
        inputs = {p: values[p] for p in set(parents)}
        for p, v in inputs.items():
            if v.data.dtype == torch.uint8:
                inputs[p] = _Value(v.data.to(torch.float32), v.temporal)
        return self.executor._gather(parents, inputs, self.timesteps)
