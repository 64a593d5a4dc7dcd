"""Robust pruning of a network's synapses: HYDRA importance scores or weight magnitude, then robust
finetuning of the surviving weights (Schmolli et al., CPAL 2025, after Sehwag et al., NeurIPS 2020).

It works on any ``nn.Module`` whose weight tensors are named as *slots* ``{layer: (module, attribute)}``:
the conv/linear modules of a PyTorch model (``spikeshield train --prune-sparsity``) or the parameter
dicts of a :class:`~spikeshield.runtime.executor.GraphExecutor` (the ``prune_weights`` pass, for an
ANN graph or a spiking one). Masks are applied with ``torch.nn.utils.parametrize``, so the module's own
forward pass sees ``weight * mask`` and needs no change.

- ``magnitude``: keep the largest ``|w|``; then finetune the weights under the robust objective.
- ``hydra``: freeze the weights, learn one importance score per weight under the robust objective
  (forward through the top-k scores, straight-through gradient to all scores; scores start at
  ``sqrt(6 / fan_in) * w / max|w|``), keep the top-k scores, then finetune the weights.
- ``harp``: as ``hydra``, and each layer's share of the budget is learned with the scores
  (:mod:`spikeshield.runtime.learned_budgets`): non-uniform per-layer sparsity, the global total
  exact (Paper B's best 99% result, after HARP, Zhao & Wressnegger 2023).

Budgets: ``sparsity`` is the fraction of *all* weights of the slots that is removed, so 0.99 always
stores at most 1/100 of the weights. ``global`` ranks every prunable weight together; ``layer`` gives
every prunable layer the same share (Paper B's "uniform"); ``learned`` is ``harp``'s (``auto``, the
default, means ``learned`` for ``harp`` and ``global`` otherwise). Layers named in ``dense_layers`` (``first``, ``last`` or layer
names) are kept whole and their weights count against the budget. Every pruned layer keeps at least
one weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikeshield.compiler.ir.errors import ConfigError, DataError
from spikeshield.runtime.data import Dataset, DataSplits, check_max_train
from spikeshield.runtime.epoch_loop import EpochLoop
from spikeshield.runtime.evaluate import accuracy_of
from spikeshield.runtime.learned_budgets import LearnedBudget
from spikeshield.runtime.objectives import (
    DEFAULT_BETA,
    INNER_ATTACKS,
    OBJECTIVES,
    check_selection,
    inner_attack,
    robust_epoch,
    selection_score,
)
from spikeshield.runtime.progress import progress_bar

PRUNE_METHODS = ("hydra", "harp", "magnitude")
BUDGETS = ("auto", "global", "layer", "learned")

Slots = dict[str, tuple[nn.Module, str]]


@dataclass
class PruneConfig:
    """Settings of robust pruning; the defaults suit small nets on a CPU (HYDRA uses 20 + 20 epochs)."""

    sparsity: float = 0.9
    method: str = "hydra"
    budget: str = "auto"
    dense_layers: tuple[str, ...] = ()  # "first", "last" or layer names, kept unpruned
    score_epochs: int = 3  # hydra only
    finetune_epochs: int = 3
    score_lr: float = 0.1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    objective: str = "trades"
    eps: float = 0.1
    inner_attack: str = "pgd"
    attack_steps: int = 10
    beta: float | None = None  # TRADES / MART lambda; default 6 / 4
    batch_size: int = 64
    max_train: int | None = None
    # The finetuning epoch kept: by validation clean accuracy, or with PGD-10 at ``eps`` through
    # the network (``SELECTIONS``); longer PGD-3 training can trade strong-attack robustness for it.
    selection: str = "clean"
    seed: int = 0

    def validate(self) -> None:
        check_sparsity(self.sparsity)
        check_selection(self.selection, "--prune-selection")
        choices = {
            "prune method": (self.method, PRUNE_METHODS),
            "prune budget": (self.budget, BUDGETS),
            "prune objective": (self.objective, OBJECTIVES),
            "prune attack": (self.inner_attack, INNER_ATTACKS),
        }
        for what, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
        check_max_train(self.max_train, "--prune-max-train (default --finetune-max-train)")
        if self.score_epochs < 0 or self.finetune_epochs < 0:
            raise ConfigError("prune score and finetune epochs must be >= 0")
        if self.method in ("hydra", "harp") and self.score_epochs == 0 and self.sparsity > 0:
            raise ConfigError(f"{self.method} needs --prune-epochs >= 1 to learn its scores")
        if self.method == "harp" and self.budget not in ("auto", "learned"):
            raise ConfigError(f"harp learns each layer's budget; --prune-budget {self.budget} is "
                              "hydra's: use --prune-method hydra, or --prune-budget learned")
        if self.method != "harp" and self.budget == "learned":
            raise ConfigError("a learned per-layer budget is what --prune-method harp does; "
                              f"{self.method} takes --prune-budget global or layer")
        for what, value in {"learning rate": self.lr, "score learning rate": self.score_lr,
                            "batch size": self.batch_size, "attack steps": self.attack_steps}.items():
            if not value > 0:
                raise ConfigError(f"prune {what} must be positive, got {value}")
        if not 0 <= self.eps <= 1:
            raise ConfigError(f"prune eps must be in [0, 1] (pixels), got {self.eps}")


    @property
    def effective_budget(self) -> str:
        """``auto`` resolved: ``learned`` for harp, ``global`` otherwise."""
        if self.budget == "auto":
            return "learned" if self.method == "harp" else "global"
        return self.budget


def check_sparsity(sparsity: float) -> None:
    """Raise :class:`ConfigError` unless ``sparsity`` is a fraction in [0, 1)."""
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise ConfigError(
            f"sparsity must be in [0, 1) (the fraction of weights removed, e.g. 0.99), got {sparsity}"
        )


def parse_layers(spec: str) -> tuple[str, ...]:
    """``"first,last"`` -> ``("first", "last")``; empty items dropped."""
    return tuple(item.strip() for item in spec.split(",") if item.strip())


def resolve_dense(names: list[str], dense_layers: Iterable[str]) -> set[str]:
    """Layer names kept dense: ``first`` and ``last`` stand for the first and last slot."""
    out = set()
    for item in dense_layers:
        if item == "first":
            out.add(names[0])
        elif item == "last":
            out.add(names[-1])
        elif item in names:
            out.add(item)
        else:
            raise ConfigError(
                f"dense layer {item!r} is not a weighted layer; use first, last or one of: "
                + ", ".join(names)
            )
    return out


def allocate_masks(
    importance: dict[str, torch.Tensor], sparsity: float, budget: str, dense: set[str]
) -> dict[str, torch.Tensor]:
    """Binary masks keeping the most important weights: exactly ``floor((1 - sparsity) * total)``
    weights in all (the dense layers included), at least one per layer."""
    check_sparsity(sparsity)
    total = sum(v.numel() for v in importance.values())
    keep = total - math.ceil(round(sparsity * total, 6))
    masks = {n: torch.ones_like(v) for n, v in importance.items() if n in dense}
    prunable = {n: v for n, v in importance.items() if n not in dense}
    if not prunable:
        return masks
    left = keep - sum(m.numel() for m in masks.values())
    if left < len(prunable):
        raise ConfigError(
            f"sparsity {sparsity} keeps {keep} of {total} weights, but the dense layers alone hold "
            f"{keep - left}; lower the sparsity or prune the first/last layer too"
        )
    if budget == "global":
        flat = torch.cat([v.detach().flatten().abs() for v in prunable.values()])
        chosen = torch.zeros_like(flat)
        chosen[torch.topk(flat, left, sorted=False).indices] = 1.0
        # A layer cut off completely disconnects the network: it gets its best weight back, paid for
        # by the weakest weight kept in a layer that has more than one, so the total stays exact.
        bounds, offset = {}, 0
        for name, v in prunable.items():
            bounds[name] = (offset, offset + v.numel())
            offset += v.numel()
        for name, (lo, hi) in bounds.items():
            if chosen[lo:hi].sum() == 0:
                spare = torch.zeros_like(chosen, dtype=torch.bool)
                for a, b in bounds.values():
                    if chosen[a:b].sum() > 1:
                        spare[a:b] = chosen[a:b] == 1
                if not bool(spare.any()):
                    raise ConfigError(f"sparsity {sparsity} leaves fewer weights than layers; "
                                      "lower the sparsity")
                chosen[torch.where(spare, flat, torch.full_like(flat, math.inf)).argmin()] = 0.0
                chosen[lo + int(flat[lo:hi].argmax())] = 1.0
        for name, v in prunable.items():
            lo, hi = bounds[name]
            masks[name] = chosen[lo:hi].view_as(v).clone()
        return masks
    if budget != "layer":
        raise ConfigError(f"prune budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    share = left / sum(v.numel() for v in prunable.values())
    for name, v in prunable.items():
        k = max(1, int(v.numel() * share))
        mask = torch.zeros(v.numel(), dtype=v.dtype, device=v.device)
        mask[torch.topk(v.detach().flatten().abs(), k, sorted=False).indices] = 1.0
        masks[name] = mask.view_as(v)
    return masks


class _FixedMask(nn.Module):
    """Parametrization ``w -> w * mask`` with a fixed binary mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


class _ScoreBudget:
    """The top-k masks of all layers' scores, recomputed only when a score changed."""

    def __init__(self, scores: dict[str, nn.Parameter], cfg: PruneConfig, dense: set[str]) -> None:
        self.scores, self.cfg, self.dense = scores, cfg, dense
        self._key: tuple | None = None
        self._masks: dict[str, torch.Tensor] = {}

    def mask(self, name: str) -> torch.Tensor:
        key = tuple(s._version for s in self.scores.values())
        if key != self._key:
            detached = {n: s.detach() for n, s in self.scores.items()}
            self._masks = allocate_masks(detached, self.cfg.sparsity, self.cfg.effective_budget,
                                         self.dense)
            self._key = key
        return self._masks[name]


class _ScoredMask(nn.Module):
    """Parametrization ``w -> w * topk(scores)`` with a straight-through gradient to the scores;
    a learned budget also watches the gradient reaching the mask."""

    def __init__(self, name: str, scores: nn.Parameter, budget: _ScoreBudget | LearnedBudget
                 ) -> None:
        super().__init__()
        self.name, self.scores, self.budget = name, scores, budget

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        hard = self.budget.mask(self.name)
        mask = hard + self.scores - self.scores.detach()
        if isinstance(self.budget, LearnedBudget):
            mask = self.budget.observe(self.name, mask)
        return weight * mask


def _fan_in(weight: torch.Tensor) -> int:
    return int(weight[0].numel())


@dataclass
class PruneOutcome:
    masks: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    densities: dict[str, float] = field(default_factory=dict)  # kept share per layer


def validation_figures(forward: nn.Module, val: Dataset, cfg: PruneConfig,
                       device: torch.device | str = "cpu") -> dict[str, float | None]:
    """One epoch's validation figures: clean accuracy, PGD-10 accuracy at ``cfg.eps`` when
    ``cfg.selection`` counts it (else None), and the ``score`` the epoch is kept by."""
    if not len(val):
        return {"score": 0.0, "val_clean": 0.0, "val_robust": None}
    clean = accuracy_of(forward, val, device=device, desc="validation")
    robust = None
    if cfg.selection != "clean" and cfg.eps > 0:
        from spikeshield.runtime.attacks import AttackSpec

        attack = AttackSpec("pgd", steps=10, random_start=True).build(forward, cfg.eps)
        robust = accuracy_of(forward, val, device=device, desc="validation PGD-10", attack=attack)
    return {"score": selection_score(clean, robust or 0.0, cfg.selection), "val_clean": clean,
            "val_robust": robust}


def prune_module(
    owner: nn.Module,
    slots: Slots,
    forward: nn.Module,
    data: DataSplits,
    cfg: PruneConfig,
    device: torch.device | str = "cpu",
    *,
    score: Callable[[], dict[str, float | None]],
    after_step: Callable[[], None] | None = None,
    refresh: Callable[[], None] | None = None,
) -> PruneOutcome:
    """Prune the weights named by ``slots`` in place; return their masks.

    ``owner`` holds every trainable parameter, ``forward`` maps pixels to logits (it may be ``owner``)
    and ``score()`` returns an epoch's validation figures: its ``"score"`` entry picks the
    finetuning epoch kept, and every entry goes to the history. ``refresh()``
    brings state that depends on the weights up to date for evaluation (a graph's BatchNorm
    statistics, :mod:`spikeshield.runtime.batchnorm_statistics`): it runs before each validation
    score and once at the end. On return each slot holds a plain parameter equal to
    ``weight * mask``.
    """
    cfg.validate()
    train = data.train if cfg.max_train is None else data.train.head(cfg.max_train)
    if len(train) == 0:
        raise DataError(f"pruning needs training images; {data.name} has none")
    torch.manual_seed(cfg.seed)
    names = list(slots)
    dense = resolve_dense(names, cfg.dense_layers)
    weights = {n: getattr(m, a) for n, (m, a) in slots.items()}
    beta = cfg.beta if cfg.beta is not None else DEFAULT_BETA.get(cfg.objective, 0.0)
    attack = None
    if cfg.objective != "standard" and cfg.eps > 0:
        attack = inner_attack(forward, cfg.objective, cfg.eps, cfg.inner_attack, cfg.attack_steps)
    history: list[dict[str, Any]] = []

    def epochs(count: int, params: list[nn.Parameter], lr: float, phase: str, pick: bool,
               step: Callable[[], None] | None = after_step) -> int:
        if count == 0:
            return 0
        optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay if phase == "finetune" else 0.0)
        steps = train.num_batches(cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, count * steps)

        def run_epoch(epoch: int, progress, on_step) -> float:
            bar = progress_bar(train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed + epoch,
                                             device=device),
                               total=steps, desc=f"prune {phase} {epoch}/{count} ({cfg.method})",
                               leave=False, disable=None)
            return robust_epoch(forward, bar, attack, optimizer, scheduler, cfg.objective, beta,
                                after_step=step, what=f"pruning ({phase}, epoch {epoch})")

        def scored() -> dict[str, Any]:
            owner.eval()
            if refresh is not None:
                refresh()
            return score()

        loop = EpochLoop(f"prune-{phase}", owner, count, steps, select=pick,
                         record={"phase": phase})
        outcome = loop.run(run_epoch, scored)
        history.extend(outcome.history)
        return outcome.best_epoch if pick else 0

    score_step = after_step
    if cfg.method in ("hydra", "harp") and cfg.sparsity > 0:
        scores = {}
        for n, w in weights.items():
            scale = math.sqrt(6.0 / _fan_in(w)) / float(w.detach().abs().max().clamp_min(1e-12))
            scores[n] = nn.Parameter(w.detach() * scale)
        if cfg.effective_budget == "learned":
            budget = LearnedBudget(scores, _kept(weights, cfg.sparsity), dense)

            def score_step() -> None:
                budget.step()
                if after_step is not None:
                    after_step()
        else:
            budget = _ScoreBudget(scores, cfg, dense)
        frozen_flags = [(p, p.requires_grad) for p in owner.parameters()]
        for p, _ in frozen_flags:
            p.requires_grad_(False)
        for n, (module, attr) in slots.items():
            parametrize.register_parametrization(module, attr, _ScoredMask(n, scores[n], budget))
        epochs(cfg.score_epochs, list(scores.values()), cfg.score_lr, "scores", pick=False,
               step=score_step)
        masks = {n: budget.mask(n).clone() for n in names}
        for n, (module, attr) in slots.items():
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        for p, flag in frozen_flags:
            p.requires_grad_(flag)
    else:
        masks = allocate_masks({n: w.detach() for n, w in weights.items()}, cfg.sparsity,
                               cfg.effective_budget, dense)
    for n, (module, attr) in slots.items():
        with torch.no_grad():
            getattr(module, attr).mul_(masks[n])
        parametrize.register_parametrization(module, attr, _FixedMask(masks[n]))
    trainable = [p for p in owner.parameters() if p.requires_grad]
    best_epoch = epochs(cfg.finetune_epochs, trainable, cfg.lr, "finetune", pick=True)
    for module, attr in slots.values():
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    if refresh is not None:
        refresh()  # the statistics of the weights kept (a best epoch's state may be older)
    densities = {n: float(m.mean()) for n, m in masks.items()}
    return PruneOutcome({n: m.detach().cpu() for n, m in masks.items()}, history, best_epoch,
                        densities)


def _kept(weights: dict[str, torch.Tensor], sparsity: float) -> int:
    """How many weights a sparsity keeps in all (as :func:`allocate_masks` counts them)."""
    total = sum(w.numel() for w in weights.values())
    return total - math.ceil(round(sparsity * total, 6))


def model_slots(model: nn.Module) -> Slots:
    """The weight of every ``nn.Conv2d`` and ``nn.Linear`` of a PyTorch model, in definition order."""
    return {name: (m, "weight") for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}
