"""The one epoch loop of every kind of training: ANN training, pruning and SNN finetuning.

Each caller says how to run one epoch and how to score the network afterwards; the loop does the
rest the same way for all of them: epochs in order, selection of the best epoch on the score (the
network of that epoch is restored at the end), the history of every epoch, progress through
``on_step``, and, with a checkpoint, periodic and on-signal saves from which a resumed run
continues with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from spikeshield.runtime.checkpoint import (
    Checkpoint,
    Interrupted,
    deferring_signals,
    restore_training,
    training_state,
)
from spikeshield.runtime.distributed import World, world
from spikeshield.runtime.objectives import EpochProgress

# run_epoch(epoch, progress, on_step) -> the epoch's mean loss; epoch counts from 1, ``progress``
# is how far a resumed epoch had come, ``on_step`` (or None) is called after every batch.
RunEpoch = Callable[[int, EpochProgress, Callable[[EpochProgress], None] | None], float]


@dataclass
class EpochsResult:
    """The selected epoch (0: the network as it came in, where it was scored first and no epoch
    beat it), its scores, and one record per epoch (``epoch``, ``loss``, the scores,
    ``seconds``)."""

    best_epoch: int = 0
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EpochLoop:
    """``epochs`` epochs of ``steps_per_epoch`` batches over ``owner`` (whose ``state_dict`` is the
    selection's snapshot). ``score()`` returns a dict with a ``"score"`` (higher is better).
    ``name`` is the checkpoint part and the progress label; ``stateful`` (model, optimizer,
    scheduler) is what a checkpoint saves and restores. ``score_first`` scores the network before
    training as epoch 0, so that no epoch is kept unless it beats it; ``select=False`` keeps the
    last epoch instead of the best. ``record`` goes into every history entry (a phase, say);
    ``label`` names an epoch where a stop message says how far the run came."""

    name: str
    owner: nn.Module
    epochs: int
    steps_per_epoch: int
    stateful: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    device: torch.device | str = "cpu"
    score_first: bool = False
    select: bool = True
    record: dict[str, Any] = field(default_factory=dict)
    label: str = "epoch"
    current: World = field(default_factory=world)

    def run(self, run_epoch: RunEpoch, score: Callable[[], dict[str, Any]]) -> EpochsResult:
        result = EpochsResult()
        best_state = None
        done, progress = 0, EpochProgress()
        saved = self.checkpoint.load(self.name, self.device) if self.checkpoint else None
        if saved is not None:
            restore_training(saved, self.stateful, self.epochs, self.steps_per_epoch)
            done, progress = saved["epoch"], EpochProgress(**saved["progress"])
            result.best, result.best_epoch = saved["best"], saved["best_epoch"]
            result.history, best_state = saved["history"], saved["best_state"]
        elif self.score_first:
            result.best = score()
            result.history.append({**self.record, "epoch": 0, "loss": None, **result.best,
                                   "seconds": 0.0})
            best_state = copy.deepcopy(self.owner.state_dict())

        def state(epochs_done: int, within: EpochProgress) -> dict[str, Any]:
            return training_state(self.stateful, epoch=epochs_done, progress=asdict(within),
                                  best=result.best, best_epoch=result.best_epoch,
                                  history=result.history, best_state=best_state)

        def on_step(epoch: int) -> Callable[[EpochProgress], None] | None:
            if self.checkpoint is None or not self.current.is_main:
                return None
            return lambda within: self.checkpoint.step(
                self.name, lambda: state(epoch - 1, within),
                f"in {self.label} {epoch}/{self.epochs} after batch {within.batches}/"
                f"{self.steps_per_epoch}")

        with deferring_signals(self.checkpoint):
            for epoch in range(done + 1, self.epochs + 1):
                started = time.perf_counter()
                loss = run_epoch(epoch, progress, on_step(epoch))
                trained, progress = progress, EpochProgress()
                try:
                    scores = score()
                except Interrupted as stop:
                    if stop.forced and self.checkpoint is not None and self.current.is_main:
                        # Cut short while scoring: the epoch's training is complete and kept
                        # (a resumed run scores it again).
                        self.checkpoint.save(self.name, state(epoch - 1, trained))
                    raise
                result.history.append({**self.record, "epoch": epoch, "loss": loss, **scores,
                                       "seconds": round(time.perf_counter() - started, 2)})
                if not self.select or result.best is None or scores["score"] > result.best["score"]:
                    result.best, result.best_epoch = scores, epoch
                    best_state = copy.deepcopy(self.owner.state_dict()) if self.select else None
                if self.checkpoint is not None and self.current.is_main:
                    self.checkpoint.save(self.name, state(epoch, progress))
        if best_state is not None:
            self.owner.load_state_dict(best_state)
        return result
