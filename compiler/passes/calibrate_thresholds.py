"""Calibrate IF thresholds from data, layer by layer, with the earlier layers already spiking.

For each IF node in topological order: run the SNN (``timesteps`` steps, earlier thresholds
installed) up to the node's input current (all batches advance together through one executor, so
the whole pass costs about one SNN forward per batch, not one per layer); take the ``percentile`` of
that current (or its maximum) per batch and keep the largest over ``batches`` batches, at most the
ceiling of a clipped ReLU (``meta['ceilings']``, from ``convert_relu_to_if``); the threshold is
``scale`` (default: :func:`default_threshold_scale`, which depends on the initial potential) times
that value (one per layer, or one per channel); with ``search``, a measured fraction of it. A
quantised ReLU's threshold is its ceiling (``meta['fixed_thresholds']``) and takes no statistic.
Then a :class:`Scale` equal to the threshold is inserted after the neuron: a
binary spike stands for ``threshold`` units of the ANN activation it replaces, so the next layer's
weights (into which ``fold_scales`` later merges that factor) see currents in the ANN's units.

Precondition: IF nodes from ``convert_relu_to_if``, not yet calibrated. Postcondition: every IF node
has a positive calibrated threshold and is followed by its amplitude Scale; ``meta['calibrated']``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from spikeshield.compiler.ir.errors import ConfigError, PassError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Scale
from spikeshield.compiler.ir.ops.neurons import valid_ceiling
from spikeshield.compiler.passes.registry import PassResult, register_pass

CALIBRATION_MODES = ("percentile", "max")


def default_threshold_scale(timesteps: int, v_init: float = 0.0) -> float:
    """The factor on calibrated thresholds used when none is given.

    With an initial potential (``v_init`` > 0, the default 0.5) spike counts are rounded, not
    floored, and the percentile itself is the right threshold: 1.0 (measured on LeNet, VGG and
    residual nets, BENCHMARKS.md, "Low-latency conversion"). A membrane starting at zero floors
    every count, and a lower threshold makes up for it: ``clamp(1 - 1.2 / T, 0.3, 0.9)``, fitted on
    two TRADES LeNets on mnist5k (T=4 -> 0.7, T=8 -> 0.85, T>=16 -> 0.9). The reference code uses
    0.3, but it keeps batch norm (re-estimated on the SNN) and always finetunes; with batch norm
    folded and calibration alone 0.3 clips every layer at 30% of its percentile (-33 pp, mnist5k).
    """
    if v_init > 0:
        return 1.0
    return max(0.3, min(0.9, 1.0 - 1.2 / timesteps))


# A k-th largest value among n is taken by a partial selection over all n only when k is a large
# share of n; otherwise a sample bounds it from below first (see _kth_largest).
_SAMPLE = 1 << 16  # positions per row sampled to place the bound
_DIRECT_SHARE = 8  # select directly when k > n / _DIRECT_SHARE (the bound would keep too much)


def _statistic(
    current: torch.Tensor, sample_ndim: int, per_channel: bool, mode: str, percentile: float
) -> torch.Tensor:
    """Per-layer ``(1,)`` or per-channel ``(C,)`` statistic of a current ``([T,] N, C, ...)`` whose
    batch-less sample shape has ``sample_ndim`` dims (channel first). A percentile is the exact
    k-th smallest of all the values, ``k = round(percentile / 100 * n)`` (as ``kthvalue``)."""
    channel_dim = current.dim() - sample_ndim
    if per_channel:
        values = current.movedim(channel_dim, 0).reshape(current.shape[channel_dim], -1)
    else:
        values = current.reshape(1, -1)
    if mode == "max":
        return values.max(dim=1).values
    n = values.shape[1]
    k = max(1, min(n, int(round(percentile / 100.0 * n))))
    # The k-th smallest is the (n - k + 1)-th largest; select from the nearer end.
    if n - k + 1 <= k:
        return _kth_largest(values, n - k + 1)
    return -_kth_largest(-values, k)


def _kth_largest(values: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count``-th largest value of each row of ``values`` ``(R, n)``, exactly.

    Selecting among millions of values is the slow part of calibration (a partial top-k of 25,000
    among 8.4M currents took 99 ms; this takes 15). So when ``count`` is a small share of ``n``, a
    seeded sample of each row places a bound that about twice ``count`` values exceed, one
    comparison keeps only those, and the selection runs on them. The answer does not depend on the
    sample: a row whose bound kept fewer than ``count`` values is selected in full instead.
    """
    rows, n = values.shape
    if count * _DIRECT_SHARE > n or n <= _SAMPLE * _DIRECT_SHARE:
        return values.topk(count, dim=1).values[:, -1]
    g = torch.Generator(device="cpu").manual_seed(0)
    sample = values[:, torch.randint(n, (_SAMPLE,), generator=g).to(values.device)]
    rank = min(_SAMPLE, 2 * count * _SAMPLE // n + 32)
    bound = sample.topk(rank, dim=1).values[:, -1:]
    keep = values >= bound
    where = keep.nonzero()  # (row, column) pairs in row-major order; cheaper than counting bools
    kept = torch.bincount(where[:, 0], minlength=rows)
    short = kept < count
    if bool(short.any()):  # the sample placed this row's bound too high: keep all of the row
        keep[short] = True
        where = keep.nonzero()
        kept = torch.bincount(where[:, 0], minlength=rows)
    parts = values[where[:, 0], where[:, 1]].split(kept.tolist())
    return torch.stack([part.topk(count).values[-1] for part in parts])


def _install(executor, graph: Graph, name: str, amplitude: str, threshold: torch.Tensor) -> None:
    """Set IF node ``name``'s threshold and its amplitude Scale, in the graph and in the executor
    (from now on the frontier runs this layer calibrated)."""
    with torch.no_grad():
        executor.tensors_of(name)["threshold"].copy_(threshold.reshape(-1))
        executor.tensors_of(amplitude)["scale"].copy_(threshold.reshape(-1))
    graph.set_op(name, graph.op(name).replace(threshold=threshold))
    graph.set_op(amplitude, Scale(scale=threshold.clone()))


# Fractions of the calibrated threshold that the search tries (1.0: the threshold itself).
SEARCH_FACTORS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _searched_threshold(op: IF, threshold: torch.Tensor, currents: list[torch.Tensor],
                        sample_ndim: int, timesteps: int) -> torch.Tensor:
    """The threshold (per channel, or per layer) among ``SEARCH_FACTORS x threshold`` whose spiking
    output ``rate x threshold`` is nearest (squared error) to ``relu`` of the mean input current:
    the layer's own clipping, quantisation and timing error on the calibration data, traded off
    by measurement instead of by one fixed factor (as Li et al. 2021 choose a threshold by the
    error of the clip-floor function)."""
    from spikeshield.runtime.kernels import channel_view
    from spikeshield.runtime.neurons import IFParameters, if_rate

    ndim = sample_ndim + 1
    errors = torch.zeros(len(SEARCH_FACTORS), threshold.numel())
    with torch.no_grad():
        for current in currents:
            temporal = current.dim() == ndim + 1
            target = torch.relu(current.mean(dim=0) if temporal else current)
            for i, factor in enumerate(SEARCH_FACTORS):
                theta = channel_view(threshold.to(current) * factor, ndim)
                params = IFParameters(theta, op.reset, v_init=op.v_init)
                rate = if_rate(current, params, timesteps, sample_ndim)
                error = (rate * theta - target).square()  # (N, C, ...): channel dim 1
                total = error.transpose(0, 1).reshape(error.shape[1], -1).sum(dim=1).cpu()
                errors[i] += total if threshold.numel() > 1 else total.sum()
    best = errors.argmin(dim=0)
    return threshold * torch.tensor(SEARCH_FACTORS)[best]


@register_pass("calibrate_thresholds")
def calibrate_thresholds(
    graph: Graph,
    data: Sequence[torch.Tensor] | Iterable[torch.Tensor],
    timesteps: int = 8,
    percentile: float = 99.7,
    scale: float | None = None,
    mode: str = "percentile",
    batches: int = 11,
    device: str | torch.device = "cpu",
    search: bool = False,
) -> PassResult:
    from spikeshield.runtime.executor import GraphExecutor

    if mode not in CALIBRATION_MODES:
        raise ConfigError(f"calibration mode must be one of {CALIBRATION_MODES}, got {mode!r}")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    if scale is None:
        starts = {graph.op(n).v_init for n in graph.nodes_of(IF)}
        scale = default_threshold_scale(timesteps, min(starts, default=0.0)) if timesteps > 0 else 1.0
    if not scale > 0:
        raise ConfigError(f"threshold scale must be positive, got {scale}")
    if timesteps <= 0:
        raise ConfigError(f"timesteps must be >= 1, got {timesteps}")
    if graph.meta.get("calibrated"):
        raise PassError("graph is already calibrated; calibrate the uncalibrated SNN instead")
    batches_x = [x for _, x in zip(range(batches), data)]
    if not batches_x:
        raise ConfigError("calibration needs at least one batch of data")
    graph = graph.copy()
    neurons = graph.nodes_of(IF)
    # Each neuron's amplitude Scale goes in first (as 1, so that the graph runs), and gets its
    # value with the threshold: the executor is built once and the calibration batches advance
    # through it layer by layer together, instead of re-running the network for every layer.
    amplitudes = {name: graph.insert_after(name, graph.unique_name(f"{name}_amplitude"),
                                           Scale(scale=torch.ones_like(graph.op(name).threshold)))
                  for name in neurons}
    executor = GraphExecutor(graph).to(device).eval()
    frontier = executor.frontier([x.to(device) for x in batches_x], timesteps)
    thresholds: dict[str, list[float]] = {}
    ceilings = graph.meta.get("ceilings", {})
    if not isinstance(ceilings, dict) or not all(
            name in neurons and valid_ceiling(c) for name, c in ceilings.items()):
        raise PassError(f"graph metadata 'ceilings' must map IF nodes to positive numbers, got "
                        f"{str(ceilings)[:120]}; convert the ANN again (convert_relu_to_if)")
    fixed = graph.meta.get("fixed_thresholds", {})
    for name in neurons:
        per_channel = graph.op(name).threshold.numel() > 1
        sample_ndim = len(graph.in_shape(name))
        if name in fixed:  # a quantised ReLU's threshold is its ceiling, not a statistic
            threshold = torch.full_like(graph.op(name).threshold, float(fixed[name]))
            _install(executor, graph, name, amplitudes[name], threshold)
            thresholds[name] = [round(v, 6) for v in threshold.tolist()[:8]]
            continue
        value = None
        currents = frontier.advance_to(name)
        for current in currents:
            stat = _statistic(current, sample_ndim, per_channel, mode, percentile)
            value = stat if value is None else torch.maximum(value, stat)
        if name in ceilings:  # a clipped ReLU's activations never exceed its ceiling
            value = value.clamp(max=ceilings[name])
        fallback = value <= 0  # a layer that never receives positive current never fires
        threshold = torch.where(fallback, torch.ones_like(value), value * scale).cpu().float()
        if search:
            threshold = _searched_threshold(graph.op(name), threshold, currents, sample_ndim,
                                            timesteps)
        _install(executor, graph, name, amplitudes[name], threshold)
        thresholds[name] = [round(v, 6) for v in threshold.tolist()[:8]]
    graph.meta.update(
        {"calibrated": True, "timesteps": timesteps, "calibration": {
            "mode": mode, "percentile": percentile, "scale": scale, "timesteps": timesteps,
            "batches": len(batches_x), "search": search}}
    )
    return PassResult(graph, bool(thresholds), {"thresholds": thresholds})
