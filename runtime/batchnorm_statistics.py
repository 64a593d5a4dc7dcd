"""Re-estimating a graph's BatchNorm statistics after its weights changed under them.

A BatchNorm node of the IR normalises with stored running statistics (batch statistics only while
an executor trains with ``batch_statistics``), and they describe the network the model was trained
as. Pruning changes that network: at 99% sparsity every conv's output shrinks by an order of
magnitude, the stored mean then dominates each channel, the network's output barely depends on its input, and finetuning has no
signal to recover from. Measured on vgg11 (width 0.5, 2.37M weights, robust on Fashion-MNIST,
benchmarks/notes/2026-12-01-paper-b-sessions-issue-21.md): pruned to 99% by
global magnitude, the ANN scores 9.7% on
1,000 test images with the trained statistics and 54.2% with re-estimated ones, before any
finetuning (``benchmarks/pruned_batchnorm.py``); HARP finetuning on the trained statistics ended at
loss 2.3028 = ln 10, a constant output (``benchmarks/paper_b.py``).

The pruning pass therefore trains on batch statistics (``GraphExecutor(batch_statistics=True)``:
as PyTorch's BatchNorm in training mode, whose moving averages it keeps) and, before each
validation score and at the end, re-estimates the stored statistics exactly with this module.

:func:`recalibrate_batchnorm` sets every BatchNorm node's statistics to those of its input over a
fixed set of images, node after node in graph order, so each node sees the statistics already set
before it: afterwards the stored statistics are exactly those of the network as it now computes
(a fixed point that one pass over the old network would not give).
"""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.ops import BatchNorm


def recalibrate_batchnorm(executor, batches: list[torch.Tensor]) -> int:
    """Set each BatchNorm node's running mean and variance (unbiased, as PyTorch records it) to
    those of its input over ``batches`` (pixel tensors), in graph order; the nodes set."""
    names = executor.graph.nodes_of(BatchNorm)
    if not names:
        return 0
    if executor.is_spiking:
        raise ValueError("BatchNorm statistics are re-estimated on an ANN graph (fold_batchnorm "
                         "runs before conversion); this graph spikes")
    frontier = executor.frontier(batches, None)
    for name in names:
        x = torch.cat(frontier.advance_to(name))
        dims = [0, *range(2, x.dim())]
        tensors = executor.tensors_of(name)
        with torch.no_grad():
            tensors["running_mean"].copy_(x.mean(dims))
            tensors["running_var"].copy_(x.var(dims))
    return len(names)
