"""Stage 1: robust training of an ANN (adversarial training, TRADES, MART).

The objectives and their PGD inner maximisation are those of
:mod:`spikeshield.runtime.objectives`. SGD with momentum and a cosine schedule by default.
Checkpoint selection on the validation split. Optionally followed by robust pruning
(:mod:`spikeshield.runtime.pruning`) under the same objective and budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.checkpoint import Checkpoint
from spikeshield.runtime.data import DataSplits, check_max_train
from spikeshield.runtime.distributed import (
    broadcast_buffers,
    data_parallel,
    per_process_batch,
    world,
)
from spikeshield.runtime.epoch_loop import EpochLoop
from spikeshield.runtime.evaluate import accuracy_of
from spikeshield.runtime.objectives import (
    DEFAULT_BETA,
    OBJECTIVES,
    EpochProgress,
    inner_attack,
    robust_epoch,
)
from spikeshield.runtime.progress import progress_bar
from spikeshield.runtime.pruning import PruneConfig, model_slots, prune_module, validation_figures


@dataclass
class TrainConfig:
    objective: str = "trades"
    eps: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    attack_steps: int = 10
    beta: float | None = None  # TRADES lambda / MART lambda; default 6 / 4
    seed: int = 0
    max_train: int | None = None  # use only the first N training samples (benchmarks on 2 cores)
    prune: PruneConfig | None = None  # robust pruning after training (same objective and eps)

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0 <= self.eps <= 1:
            raise ConfigError(f"eps must be in [0, 1] (pixel scale), got {self.eps}")
        if self.epochs <= 0 or self.batch_size <= 0 or self.attack_steps <= 0:
            raise ConfigError("epochs, batch size and attack steps must be positive")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        check_max_train(self.max_train, "--max-train")
        if self.prune is not None:
            self.prune.validate()


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    val_accuracy: float = 0.0
    pruning: dict[str, Any] | None = None


def train_robust(
    model: nn.Module,
    data: DataSplits,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Train ``model`` in place under ``cfg``; returns the checkpoint with the best validation accuracy.

    With ``checkpoint``, the loop's state is saved there periodically and on a requested stop, and
    a resumed checkpoint continues where it stopped, with the same numbers as an uninterrupted run."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    beta = cfg.beta if cfg.beta is not None else DEFAULT_BETA.get(cfg.objective, 0.0)
    model.to(device)
    train = data.train if cfg.max_train is None else data.train.head(cfg.max_train)
    current = world()  # several processes under torchrun: data-parallel, same global batch
    batch = per_process_batch(cfg.batch_size, current)
    trained = data_parallel(model, torch.device(device), current)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    steps_per_epoch = train.num_batches(batch, current.size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
    attack = None
    if cfg.objective != "standard" and cfg.eps > 0:
        attack = inner_attack(model, cfg.objective, cfg.eps, "pgd", cfg.attack_steps)
    result = TrainResult(model)
    loop = EpochLoop("train", model, cfg.epochs, steps_per_epoch,
                     {"model": model, "optimizer": optimizer, "scheduler": scheduler},
                     checkpoint, device, current=current)

    def run_epoch(epoch: int, progress: EpochProgress, on_step) -> float:
        batches = train.batches(batch, shuffle=True, seed=cfg.seed + epoch - 1, device=device,
                                rank=current.rank, processes=current.size,
                                skip=progress.batches)
        bar = progress_bar(batches, total=steps_per_epoch, initial=progress.batches,
                           desc=f"epoch {epoch}/{cfg.epochs} ({cfg.objective})", leave=False,
                           disable=None if current.is_main else True)
        return robust_epoch(trained, bar, attack, optimizer, scheduler, cfg.objective, beta,
                            what=f"training (epoch {epoch})", progress=progress, on_step=on_step)

    def score() -> dict[str, float]:
        # Each process updated its BatchNorm statistics on its own share: take rank 0's, so that
        # every process validates (and selects) the same network.
        broadcast_buffers(model, current)
        model.eval()
        accuracy = accuracy_of(model, data.val, device=device) if len(data.val) else 0.0
        return {"val_accuracy": accuracy, "score": accuracy}

    epochs = loop.run(run_epoch, score)
    result.history, result.best_epoch = epochs.history, epochs.best_epoch
    best_acc = epochs.best["val_accuracy"] if epochs.best else 0.0
    model.eval()
    result.val_accuracy = max(best_acc, 0.0)
    if cfg.prune is not None and cfg.prune.sparsity > 0:
        result.pruning = prune_trained(model, data, cfg.prune, device)
        result.val_accuracy = result.pruning["val_accuracy"]
    return result


def prune_trained(
    model: nn.Module, data: DataSplits, cfg: PruneConfig, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Robustly prune a trained PyTorch model in place (pruned weights become exact zeros, which
    every loader turns back into masks); returns what was kept and the validation accuracy."""
    slots = model_slots(model)
    if not slots:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")

    def score() -> dict[str, float | None]:
        return validation_figures(model, data.val, cfg, device)

    outcome = prune_module(model, slots, model, data, cfg, device, score=score)
    model.eval()
    kept = sum(int(m.sum()) for m in outcome.masks.values())
    total = sum(m.numel() for m in outcome.masks.values())
    return {"method": cfg.method, "sparsity": cfg.sparsity, "kept_weights": kept,
            "total_weights": total, "best_epoch": outcome.best_epoch,
            "val_accuracy": accuracy_of(model, data.val, device=device) if len(data.val) else 0.0,
            "history": outcome.history}
