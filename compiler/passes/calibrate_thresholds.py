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

With ``fit``, each layer is instead fitted to the source ANN's activations on the same images
(least squares, layer by layer with the earlier layers spiking): the threshold among fractions of
the statistic, a bias shift of the synaptic layer that feeds the neuron, and the spike amplitude
(the Scale) given both. A spike then stands for the amplitude, which need not be the threshold:
with a reset to zero (charge above the threshold lost) or a membrane from zero (counts floored)
every layer sends less than the ANN, and the loss compounds with depth unless the amplitude and
the bias make up for it (a residual net converted to chance without; BENCHMARKS.md, issue 41).

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


def default_threshold_scale(timesteps: int, v_init: float = 0.0, fit: bool = False) -> float:
    """The factor on calibrated thresholds used when none is given.

    With ``fit`` the statistic itself (1.0): the fit tries fractions of it and keeps the best.

    With an initial potential (``v_init`` > 0, the default 0.5) spike counts are rounded, not
    floored, and the percentile itself is the right threshold: 1.0 (measured on LeNet, VGG and
    residual nets, benchmarks/notes/2026-12-01-low-latency-conversion-issue-19.md).
    A membrane starting at zero floors
    every count, and a lower threshold makes up for it: ``clamp(1 - 1.2 / T, 0.3, 0.9)``, fitted on
    two TRADES LeNets on mnist5k (T=4 -> 0.7, T=8 -> 0.85, T>=16 -> 0.9). The reference code uses
    0.3, but it keeps batch norm (re-estimated on the SNN) and always finetunes; with batch norm
    folded and calibration alone 0.3 clips every layer at 30% of its percentile (-33 pp, mnist5k).
    """
    if fit or v_init > 0:
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


# Fractions of the calibrated threshold that the search tries (1.0: the threshold itself).
SEARCH_FACTORS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# Bias shifts the fit tries, in units of threshold / T per step: 0.5 moves a membrane that starts
# at zero as far over T steps as a half-threshold start does (Deng & Gu, ICLR 2021).
FIT_SHIFTS = (0.0, 0.25, 0.5, 0.75)


def _layer_sums(op: IF, threshold: torch.Tensor, currents: list[torch.Tensor],
                targets: list[torch.Tensor], sample_ndim: int, timesteps: int,
                grid: list[tuple[float, float]]) -> tuple[torch.Tensor, ...]:
    """Per ``(factor, shift)`` of ``grid`` and per channel (or per layer): the sums of rate x
    target and rate^2 over the calibration data, where rate is the layer's spikes per step with
    threshold ``factor x threshold`` and every step's current raised by ``shift x threshold / T``;
    and the sum of target^2. Float64 sums (millions of terms)."""
    from spikeshield.runtime.kernels import channel_view
    from spikeshield.runtime.neurons import IFParameters, grid_rate_sums, if_rate

    ndim, width = sample_ndim + 1, threshold.numel()
    rate_target = torch.zeros(len(grid), width, dtype=torch.float64)
    rate_rate = torch.zeros(len(grid), width, dtype=torch.float64)
    target_target = torch.zeros(width, dtype=torch.float64)

    def per_channel(v: torch.Tensor) -> torch.Tensor:  # (N, C, ...) summed to (C,) or (1,)
        total = v.transpose(0, 1).reshape(v.shape[1], -1).sum(dim=1, dtype=torch.float64).cpu()
        return total if width > 1 else total.sum().reshape(1)

    with torch.no_grad():
        for current, target in zip(currents, targets):
            current = current.float()
            target_target += per_channel(target.square())
            fused = grid_rate_sums(current, target, threshold, grid, op.reset, op.v_init,
                                   timesteps, sample_ndim)
            if fused is not None:  # the whole grid in one pass (the same spikes)
                rate_target += fused[0]
                rate_rate += fused[1]
                continue
            for i, (factor, shift) in enumerate(grid):
                theta = channel_view(threshold.to(current) * factor, ndim)
                params = IFParameters(theta, op.reset, v_init=op.v_init)
                shifted = current + theta * (shift / timesteps) if shift else current
                rate = if_rate(shifted, params, timesteps, sample_ndim)
                rate_target[i] += per_channel(rate * target)
                rate_rate[i] += per_channel(rate.square())
    return rate_target, rate_rate, target_target


def _searched_threshold(op: IF, threshold: torch.Tensor, currents: list[torch.Tensor],
                        sample_ndim: int, timesteps: int) -> torch.Tensor:
    """The threshold (per channel, or per layer) among ``SEARCH_FACTORS x threshold`` whose spiking
    output ``rate x threshold`` is nearest (squared error) to ``relu`` of the mean input current:
    the layer's own clipping, quantisation and timing error on the calibration data, traded off
    by measurement instead of by one fixed factor (as Li et al. 2021 choose a threshold by the
    error of the clip-floor function)."""
    ndim = sample_ndim + 1
    targets = [torch.relu(c.mean(dim=0) if c.dim() == ndim + 1 else c) for c in currents]
    grid = [(factor, 0.0) for factor in SEARCH_FACTORS]
    rate_target, rate_rate, target_target = _layer_sums(op, threshold, currents, targets,
                                                        sample_ndim, timesteps, grid)
    theta = threshold.double() * torch.tensor(SEARCH_FACTORS, dtype=torch.float64)[:, None]
    errors = rate_rate * theta.square() - 2 * theta * rate_target + target_target
    best = errors.argmin(dim=0)
    return threshold * torch.tensor(SEARCH_FACTORS)[best]


def _fitted(op: IF, threshold: torch.Tensor, currents: list[torch.Tensor],
            targets: list[torch.Tensor], sample_ndim: int, timesteps: int, search: bool,
            shifts: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Threshold, spike amplitude and bias shift (per channel, or per layer) that bring the layer's
    spiking output ``amplitude x rate`` nearest (squared error) to ``targets``, the ANN's
    activations on the same images: the threshold among ``SEARCH_FACTORS x threshold`` (or the
    threshold itself without ``search``), the shift among ``shifts x threshold / T``, and the
    amplitude by least squares given both. Against the ANN rather than the layer's own current, so
    a layer also makes up for the error the layers before it sent; with a free amplitude, a neuron
    that loses charge at each spike (reset to zero) or floors its count (membrane from zero) is
    scaled back to the ANN's units instead of sending less at every layer."""
    factors = SEARCH_FACTORS if search else (1.0,)
    grid = [(factor, shift) for factor in factors for shift in shifts]
    rate_target, rate_rate, target_target = _layer_sums(op, threshold, currents, targets,
                                                        sample_ndim, timesteps, grid)
    fires = rate_rate > 0
    amplitude = torch.where(fires, rate_target / rate_rate.clamp_min(1e-300), 0.0)
    errors = target_target - amplitude * rate_target  # the least-squares residual
    best = errors.argmin(dim=0)
    columns = torch.arange(threshold.numel())
    factor = torch.tensor([f for f, _ in grid], dtype=torch.float64)[best]
    shift = torch.tensor([s for _, s in grid], dtype=torch.float64)[best]
    theta = (threshold.double() * factor).float()
    # A channel that never fires sends nothing whatever its amplitude: keep amplitude = threshold.
    amplitude = torch.where(fires[best, columns], amplitude[best, columns].float(), theta)
    return theta, amplitude, (shift * theta / timesteps).float()


def _install(executor, graph: Graph, name: str, amplitude_node: str, threshold: torch.Tensor,
             amplitude: torch.Tensor | None = None) -> None:
    """Set IF node ``name``'s threshold and its amplitude Scale (the threshold unless given), in
    the graph and in the executor (from now on the frontier runs this layer calibrated)."""
    amplitude = threshold if amplitude is None else amplitude
    with torch.no_grad():
        executor.tensors_of(name)["threshold"].copy_(threshold.reshape(-1))
        executor.tensors_of(amplitude_node)["scale"].copy_(amplitude.reshape(-1))
    graph.set_op(name, graph.op(name).replace(threshold=threshold))
    graph.set_op(amplitude_node, Scale(scale=amplitude.clone()))


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
    fit: bool = False,
) -> PassResult:
    from spikeshield.compiler.passes.correct_biases import bias_owner
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.kernels import channel_view

    if mode not in CALIBRATION_MODES:
        raise ConfigError(f"calibration mode must be one of {CALIBRATION_MODES}, got {mode!r}")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    if scale is None:
        starts = {graph.op(n).v_init for n in graph.nodes_of(IF)}
        scale = (default_threshold_scale(timesteps, min(starts, default=0.0), fit)
                 if timesteps > 0 else 1.0)
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
    # The fit's targets: the source ANN's activations (the graph before calibration, run as its
    # ANN proxy: every IF as relu(I) with its placeholder threshold of 1), one frontier of its own.
    ann = GraphExecutor(graph.copy()).to(device).eval().frontier(
        [x.to(device) for x in batches_x], timesteps, proxy=True) if fit else None
    # Each neuron's amplitude Scale goes in first (as 1, so that the graph runs), and gets its
    # value with the threshold: the executor is built once and the calibration batches advance
    # through it layer by layer together, instead of re-running the network for every layer.
    amplitudes = {name: graph.insert_after(name, graph.unique_name(f"{name}_amplitude"),
                                           Scale(scale=torch.ones_like(graph.op(name).threshold)))
                  for name in neurons}
    executor = GraphExecutor(graph).to(device).eval()
    frontier = executor.frontier([x.to(device) for x in batches_x], timesteps)
    thresholds: dict[str, list[float]] = {}
    fitted: dict[str, dict[str, list[float]]] = {}
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
        if fit:
            targets = [torch.relu(t) for t in ann.advance_to(name)]
            if name in ceilings:
                targets = [t.clamp(max=ceilings[name]) for t in targets]
            owner = bias_owner(graph, name)
            threshold, amplitude, shift = _fitted(
                graph.op(name), threshold, currents, targets, sample_ndim, timesteps, search,
                FIT_SHIFTS if owner is not None else (0.0,))
            _install(executor, graph, name, amplitudes[name], threshold, amplitude)
            if owner is not None:
                owner_op = graph.op(owner)
                shift = shift.expand(graph.in_shape(name)[0]).clone()  # one per channel
                bias = owner_op.bias if owner_op.bias is not None else torch.zeros(len(shift))
                graph.set_op(owner, owner_op.replace(bias=(bias + shift).float()))
                # the value entering the neuron moves with the bias (nothing downstream ran yet)
                (parent,) = graph.inputs(name)
                frontier.shift(parent, channel_view(shift, sample_ndim + 1))
            fitted[name] = {"amplitude": [round(v, 6) for v in amplitude.tolist()[:8]],
                            "shift": [round(v, 6) for v in shift.tolist()[:8]]}
        else:
            if search:
                threshold = _searched_threshold(graph.op(name), threshold, currents, sample_ndim,
                                                timesteps)
            _install(executor, graph, name, amplitudes[name], threshold)
        thresholds[name] = [round(v, 6) for v in threshold.tolist()[:8]]
    graph.meta.update(
        {"calibrated": True, "timesteps": timesteps, "calibration": {
            "mode": mode, "percentile": percentile, "scale": scale, "timesteps": timesteps,
            "batches": len(batches_x), "search": search, "fit": fit}}
    )
    details = {"thresholds": thresholds, **({"fitted": fitted} if fit else {})}
    return PassResult(graph, bool(thresholds), details)
