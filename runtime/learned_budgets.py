"""Per-layer pruning budgets learned under the robust objective, with an exact global target: the
``harp`` method of :mod:`spikeshield.runtime.pruning` (after HARP, Zhao & Wressnegger, ICLR 2023,
which learns non-uniform per-layer rates with the scores; written from the idea, not its code).

HYDRA's scores rank weights *within* a layer, but their scales differ between layers, so ranking
them all together (a global budget) or giving every layer the same share (a uniform one) both
decide the per-layer budgets by something other than the loss. Here each layer's budget is learned
from the robust loss itself, while the scores learn:

* at every step of the score phase, the gradient of the robust loss with respect to each weight's
  mask, ``|dL/dm_i|`` (for a pruned weight: how much the loss would change if it came back; the
  first-order saliency SNIP ranks weights by), is added to a moving average per weight;
* the ``K`` weights with the largest average saliency over all pruned layers (``K`` = the global
  budget left after the dense layers) say how the learned half of the budget is shared: each
  layer's *quota* is ``UNIFORM_SHARE`` of its uniform share plus the rest of the budget in
  proportion to its weights among those ``K`` (at least one weight, the total exact,
  :func:`quotas`);
* within its quota, a layer keeps the weights with the largest scores, as HYDRA does.

Why half stays uniform: a global saliency ranking alone starves the early layers, whose
per-weight gradients are small (the "layer collapse" of Tanaka et al., NeurIPS 2020). Measured: on
vgg11 at 99% it left one weight in each of the first three conv layers and the network at chance
(benchmarks/paper_b.py). Quotas move with the saliency as the scores learn; a layer whose weights
barely change the robust loss falls to half its uniform share, one whose pruned weights would help
most grows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MOMENTUM = 0.9  # of the moving average of each weight's saliency
UNIFORM_SHARE = 0.5  # of each layer's uniform share that it keeps whatever the saliency says


def quotas(densities: dict[str, float], sizes: dict[str, int], total: int) -> dict[str, int]:
    """Whole numbers of weights per layer, each in ``[1, n_l]``, summing to ``total`` exactly,
    as near ``density * n_l`` as that allows (largest remainders first)."""
    if not len(sizes) <= total <= sum(sizes.values()):
        raise ValueError(f"cannot keep {total} weights in layers of sizes {list(sizes.values())}")
    wanted = {n: min(max(densities[n] * sizes[n], 1.0), float(sizes[n])) for n in sizes}
    counts = {n: max(1, min(sizes[n], math.floor(w))) for n, w in wanted.items()}
    left = total - sum(counts.values())
    order = sorted(sizes, key=lambda n: wanted[n] - counts[n], reverse=left > 0)
    while left != 0:
        for name in order:
            if left > 0 and counts[name] < sizes[name]:
                counts[name] += 1
                left -= 1
            elif left < 0 and counts[name] > 1:
                counts[name] -= 1
                left += 1
            if left == 0:
                break
    return counts


class LearnedBudget:
    """The masks of the ``harp`` method (see the module docstring): ``mask(name)`` for the
    parametrization, ``observe`` to hook the mask's gradient, ``step`` after each optimizer step."""

    def __init__(self, scores: dict[str, nn.Parameter], keep: int, dense: set[str]) -> None:
        self.scores, self.dense = scores, dense
        self.prunable = [n for n in scores if n not in dense]
        self.sizes = {n: scores[n].numel() for n in self.prunable}
        self.left = keep - sum(scores[n].numel() for n in dense)
        if self.left < len(self.prunable):
            raise ValueError(f"a budget of {keep} weights leaves fewer than one per pruned layer")
        self.uniform = self.left / sum(self.sizes.values())
        self._counts = quotas({n: self.uniform for n in self.prunable}, self.sizes, self.left)
        self._saliency: dict[str, torch.Tensor] = {}  # moving average per weight
        self._step: dict[str, torch.Tensor] = {}  # this step's |dL/dm|
        self._key: tuple | None = None
        self._masks: dict[str, torch.Tensor] = {}

    def counts(self) -> dict[str, int]:
        """Each pruned layer's current quota (weights kept)."""
        return dict(self._counts)

    def densities(self) -> dict[str, float]:
        return {n: self._counts[n] / self.sizes[n] for n in self.prunable}

    def mask(self, name: str) -> torch.Tensor:
        key = (tuple(s._version for s in self.scores.values()), tuple(self._counts.values()))
        if key != self._key:
            self._recompute()
            self._key = key
        return self._masks[name]

    def _recompute(self) -> None:
        for name, score in self.scores.items():
            if name in self.dense:
                self._masks[name] = torch.ones_like(score.detach())
                continue
            flat = score.detach().flatten().abs()
            mask = torch.zeros_like(flat)
            mask[flat.topk(self._counts[name], sorted=False).indices] = 1.0
            self._masks[name] = mask.view_as(score)

    def observe(self, name: str, mask: torch.Tensor) -> torch.Tensor:
        """Record ``|dL/dm|`` of layer ``name`` when backward reaches its straight-through
        ``mask``; returns ``mask`` unchanged."""
        if name in self.dense or not mask.requires_grad:
            return mask

        def hook(grad: torch.Tensor) -> None:
            value = grad.detach().abs()
            self._step[name] = value if name not in self._step else self._step[name] + value

        mask.register_hook(hook)
        return mask

    def step(self) -> None:
        """After an optimizer step: fold this step's saliency into the averages and set each
        layer's quota from the global top of the averages."""
        if not self._step:
            return
        for name, value in self._step.items():
            old = self._saliency.get(name)
            self._saliency[name] = value if old is None else MOMENTUM * old + (1 - MOMENTUM) * value
        self._step = {}
        if set(self._saliency) != set(self.prunable):
            return
        flat = torch.cat([self._saliency[n].flatten() for n in self.prunable])
        chosen = torch.zeros_like(flat)
        chosen[flat.topk(self.left, sorted=False).indices] = 1.0
        densities, offset = {}, 0
        for name in self.prunable:
            size = self.sizes[name]
            learned = float(chosen[offset:offset + size].mean())
            densities[name] = UNIFORM_SHARE * self.uniform + (1 - UNIFORM_SHARE) * learned
            offset += size
        self._counts = quotas(densities, self.sizes, self.left)
