"""Robustly prune the synapses of a graph (HYDRA scores or magnitude) and store the masks in the IR.

On an ANN graph (before conversion) the robust objective runs through the ANN with a PGD inner
attack; on a spiking graph it runs through the spikes by BPTT (triangle surrogate) with the inner
attack of the config (``rfgsm`` is the practical choice), and thresholds stay at least 0.03, as in
robust finetuning. See :mod:`spikeshield.runtime.pruning` for the methods and budgets.

Precondition: a valid graph with at least one conv/linear layer. Postcondition: the same structure;
every conv/linear layer carries a ``mask`` (all ones for dense layers), its weight is zero where the
mask is 0, and at most ``(1 - sparsity)`` of all weights are nonzero; ``meta['pruning']`` records
the method and budget. Masks already present are kept: a synapse pruned once stays pruned. The
BatchNorm nodes of an ANN graph train on batch statistics, and their stored statistics are
re-estimated on training images before each validation score and at the end
(:mod:`spikeshield.runtime.batchnorm_statistics`; with the trained statistics a 99%-pruned network's
output is its stored means and finetuning cannot recover).
"""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.errors import PassError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, BatchNorm, Scale
from spikeshield.compiler.passes.finetune_robust import FinetuneConfig
from spikeshield.compiler.passes.registry import PassResult, register_pass
from spikeshield.runtime.attacks import AttackedModel
from spikeshield.runtime.batchnorm_statistics import recalibrate_batchnorm
from spikeshield.runtime.data import DataSplits
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode
from spikeshield.runtime.pruning import PruneConfig, prune_module, validation_figures

REFRESH_IMAGES = 512  # training images over which BatchNorm statistics are re-estimated


@register_pass("prune_weights")
def prune_weights(
    graph: Graph,
    data: DataSplits,
    config: PruneConfig | None = None,
    timesteps: int | None = None,
    device: torch.device | str = "cpu",
) -> PassResult:
    """Prune ``graph`` to ``config.sparsity``; ``timesteps`` is required for a spiking graph."""
    cfg = config or PruneConfig()
    cfg.validate()
    layers = graph.synaptic_nodes()
    if not layers:
        raise PassError("prune_weights found no conv or linear layer to prune")
    spiking = bool(graph.nodes_of(IF))
    if spiking and not timesteps:
        raise PassError("pruning a spiking graph needs timesteps (the T it will run at)")
    if cfg.sparsity == 0:
        return PassResult(graph, False, {"reason": "sparsity 0: nothing to prune"})
    # An ANN's BatchNorm trains on batch statistics, as in PyTorch: the network changes under them.
    # Trained on the analog input whatever the recorded encoding, as robust finetuning is.
    executor = GraphExecutor(graph, encoding="direct", gradient_mode=GradientMode.parse("triangle:1"),
                             batch_statistics=not spiking).to(device)
    # Input normalisation and spike amplitudes stay fixed, as in robust finetuning.
    for name in graph.nodes_of(Scale):
        for tensor in executor.tensors_of(name).values():
            tensor.requires_grad_(False)
    slots = {name: (executor.parameters_of(name), "weight") for name in layers}
    forward = AttackedModel(executor, timesteps if spiking else None, executor.gradient_mode)

    def clamp_thresholds() -> None:
        executor.clamp_thresholds(FinetuneConfig.threshold_floor)

    val = data.val.head(1000)

    def score() -> dict[str, float | None]:
        return validation_figures(forward, val, cfg, device)

    refresh = None
    if graph.nodes_of(BatchNorm) and not spiking:
        # Scores and the chosen epoch see statistics of the pruned network, not moving averages.
        images = [x for x, _ in data.train.head(REFRESH_IMAGES).batches(256, device=device)]

        def refresh() -> None:
            recalibrate_batchnorm(executor, images)

    outcome = prune_module(executor, slots, forward, data, cfg, device, score=score,
                           after_step=clamp_thresholds if spiking else None, refresh=refresh)
    out = executor.to_graph()
    kept = 0
    for name in layers:
        op = out.op(name)
        mask = outcome.masks[name]
        if op.mask is not None:  # an earlier pruning: its synapses stay pruned
            mask = mask * op.mask
        out.set_op(name, op.replace(weight=op.weight * mask, mask=mask))
        kept += int(mask.sum())
    total = sum(out.op(n).weight.numel() for n in layers)
    out.meta["pruning"] = {"method": cfg.method, "sparsity": cfg.sparsity,
                           "budget": cfg.effective_budget,
                           "dense_layers": list(cfg.dense_layers), "stage": "snn" if spiking else "ann",
                           "eps": cfg.eps, "objective": cfg.objective}
    info = {
        "kept_weights": kept,
        "total_weights": total,
        "achieved_sparsity": 1 - kept / total,
        "per_layer_density": outcome.densities,
        "best_epoch": outcome.best_epoch,
        "history": outcome.history,
    }
    return PassResult(out, True, info)
