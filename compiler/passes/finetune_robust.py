"""Robust finetuning of a converted SNN (stage 3 of Özdenizci & Legenstein, TMLR 2024).

Every parameter of the spiking network is trained by backpropagation through time with a surrogate
gradient (triangle, γ=1, by default): weights, biases (a zero bias is added to every conv and linear
layer that had none), thresholds (per layer or per channel, clamped to at least ``threshold_floor``
after every step) and any kept batch-norm affine. Batch-norm statistics and Scale nodes (the input
normalisation) stay fixed.

Loss: TRADES (default; ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``, beta=2 whatever objective the
ANN used), AT or MART (:mod:`spikeshield.runtime.objectives`). ``x_adv`` is crafted through
the spiking dynamics with the same surrogate: single-step R-FGSM (``eps_train``, ``alpha =
eps_train/2``) by default, k-step PGD as an option. ``attack_surrogate="paper"`` crafts each
batch's ``x_adv`` through the next of the reference ensemble's 19 gradient modes (the weights still
learn through ``surrogate``), so that robustness is not learnt against one surrogate's gradients
only. SGD (lr 1e-3, momentum 0.9, weight decay 1e-3) with a cosine schedule, as in the reference
code.

The checkpoint kept is the one with the best validation score, the unfinetuned network (epoch 0)
included, so finetuning never returns a network that is worse on validation than its input. The score
is clean accuracy plus PGD-10 robust accuracy at ``eps_train`` (``selection="clean+robust"``), the
robust accuracy alone (``"robust"``, ties to the cleaner epoch) or the clean accuracy alone. PGD-10
attacks through ``val_surrogate``'s gradient modes one after the other (the training surrogate by
default): through one surrogate only, a network that learnt to resist that surrogate's gradients
scores higher than it is robust. Validation is carved from the training data, and the test split
is never read. Its size follows its purpose (``val_budget``): as many of the first ``val_samples``
validation images as cost at most a fifth of an epoch's passes through the network (at least 100),
the same images every epoch, so epochs are compared on paired samples; each score carries its
binomial standard error (``val_clean_se``, ``val_robust_se``).

Precondition: a calibrated spiking graph. Postcondition: the same graph structure with trained
tensors, every conv/linear has a bias, every threshold >= ``threshold_floor``; ``meta['finetuned']``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from spikeshield.compiler.ir.errors import ConfigError, DataError, PassError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Scale
from spikeshield.compiler.ir.surrogates import DEFAULT_SURROGATE
from spikeshield.compiler.passes.registry import PassResult, register_pass
from spikeshield.runtime.attacks import AttackedModel, AttackSpec, Member, paper_modes
from spikeshield.runtime.checkpoint import Checkpoint
from spikeshield.runtime.data import Dataset, DataSplits, check_max_train
from spikeshield.runtime.distributed import data_parallel, per_process_batch, world
from spikeshield.runtime.ensemble import as_tensors, frozen, predictions, run_ensemble
from spikeshield.runtime.epoch_loop import EpochLoop
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode
from spikeshield.runtime.objectives import (
    INNER_ATTACKS,
    VALIDATION_SHARE,
    EpochProgress,
    binomial_se,
    check_selection,
    inner_attack,
    robust_epoch,
    selection_score,
    training_passes,
    validation_images,
    validation_passes,
)
from spikeshield.runtime.progress import progress_bar

FINETUNE_OBJECTIVES = ("trades", "at", "mart")


@dataclass
class FinetuneConfig:
    """Settings of the finetuning pass; defaults follow the reference code except ``epochs``."""

    objective: str = "trades"
    epochs: int = 10
    eps_train: float = 2 / 255
    inner_attack: str = "rfgsm"
    inner_steps: int = 10  # PGD only
    # The gradient modes x_adv is crafted through, one per batch in turn: "same" (``surrogate``),
    # "paper" (the reference ensemble's 19), or mode specs joined by "," ("triangle:1,bptr").
    attack_surrogate: str = "same"
    # The gradient modes validation's PGD-10 attacks through, one after the other on the images the
    # previous ones left (the worst case over them): same spelling as ``attack_surrogate``.
    val_surrogate: str = "same"
    beta: float = 2.0
    surrogate: str = DEFAULT_SURROGATE
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-3
    batch_size: int = 64
    timesteps: int = 8
    threshold_floor: float = 0.03
    selection: str = "clean+robust"
    val_samples: int | None = 1000  # at most this many validation images per epoch (None: all)
    # The share of an epoch's passes (objectives.training_passes) the per-epoch validation may cost;
    # it sets how many of the val_samples images are scored (at least VALIDATION_FLOOR). None or 0:
    # all val_samples, whatever they cost.
    val_budget: float | None = VALIDATION_SHARE
    max_train: int | None = None  # train on the first N training images only
    seed: int = 0

    def validate(self) -> None:
        check_max_train(self.max_train, "--finetune-max-train")
        if self.val_samples is not None and self.val_samples <= 0:
            raise ConfigError(f"finetuning validation samples must be positive, got "
                              f"{self.val_samples}")
        if self.val_budget is not None and not 0 <= self.val_budget <= 10:
            raise ConfigError(f"--finetune-val-budget must be a share of an epoch in [0, 10] "
                              f"(0: score every validation image), got {self.val_budget}")
        if self.objective not in FINETUNE_OBJECTIVES:
            raise ConfigError(
                f"finetune objective must be one of {', '.join(FINETUNE_OBJECTIVES)} "
                f"(or none to skip finetuning), got {self.objective!r}"
            )
        if self.inner_attack not in INNER_ATTACKS:
            raise ConfigError(
                f"finetune attack must be one of {', '.join(INNER_ATTACKS)}, "
                f"got {self.inner_attack!r}"
            )
        check_selection(self.selection, "--finetune-selection")
        if not 0 <= self.eps_train <= 1:
            raise ConfigError(f"eps_train must be in [0, 1] (pixels), got {self.eps_train}")
        positive = {
            "epochs": self.epochs,
            "batch size": self.batch_size,
            "timesteps": self.timesteps,
            "inner steps": self.inner_steps,
            "learning rate": self.lr,
            "threshold floor": self.threshold_floor,
        }
        for what, value in positive.items():
            if not value > 0:
                raise ConfigError(f"finetune {what} must be positive, got {value}")
        if self.beta < 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("finetune beta and weight decay must be >= 0 and momentum in [0, 1)")
        for what, modes in (("surrogate", [GradientMode.parse(self.surrogate)]),
                            ("attack surrogate", self.attack_modes())):
            if any(m.kind == "assg" for m in modes):
                raise ConfigError(f"finetune {what}: assg follows one batch through an attack's "
                                  "iterations, not training's batches; use it for validation or "
                                  "evaluation, and train through a surrogate (triangle:1)")
        self.val_modes()

    def attack_modes(self) -> list[GradientMode]:
        """The gradient modes of the inner attack, in the order the batches take them."""
        return self._modes(self.attack_surrogate, "attack surrogate")

    def val_modes(self) -> list[GradientMode]:
        """The gradient modes validation's PGD-10 attacks through, in order."""
        return self._modes(self.val_surrogate, "validation surrogate")

    def _modes(self, spec: str, what: str) -> list[GradientMode]:
        if spec == "same":
            return [GradientMode.parse(self.surrogate)]
        if spec == "paper":
            return paper_modes()
        specs = [s for s in spec.split(",") if s.strip()]
        if not specs:
            raise ConfigError(f"finetune {what}: give same, paper or gradient modes "
                              "joined by ',' (triangle:1,bptr)")
        return [GradientMode.parse(s) for s in specs]

    @property
    def description(self) -> dict:
        return asdict(self)


def add_zero_biases(graph: Graph) -> tuple[Graph, list[str]]:
    """A copy of ``graph`` in which every conv and linear layer has a bias (zeros where it had none)."""
    out = graph.copy()
    added = []
    for name in out.synaptic_nodes():
        op = out.op(name)
        if op.bias is None:
            out.set_op(name, op.replace(bias=torch.zeros(op.weight.shape[0])))
            added.append(name)
    return out, added


def _score(executor: GraphExecutor, val: Dataset, cfg: FinetuneConfig, device) -> dict[str, float]:
    x, y = as_tensors(val, device)
    clean = float((predictions(executor, x, cfg.timesteps, 256) == y).float().mean())
    scores = {"val_clean": clean, "val_robust": None, "val_images": len(x),
              "val_clean_se": round(binomial_se(clean, len(x)), 4)}
    if cfg.selection != "clean" and cfg.eps_train > 0:
        members = [Member(AttackSpec("pgd", steps=10), mode) for mode in cfg.val_modes()]
        result = run_ensemble(
            executor,
            val,
            members,
            cfg.eps_train,
            cfg.timesteps,
            num_classes=int(y.max()) + 1,
            batch_size=256,
            seed=cfg.seed,
            desc="validation PGD-10",
        )
        scores["val_robust"] = result.robust_accuracy
        scores["val_robust_se"] = round(binomial_se(result.robust_accuracy, len(x)), 4)
    scores["score"] = selection_score(clean, scores["val_robust"] or 0.0, cfg.selection)
    return scores


def validation_size(cfg: FinetuneConfig, train_images: int, available: int) -> dict[str, Any]:
    """How many validation images each epoch's score uses under ``cfg.val_budget``, and what that
    costs as a share of an epoch (in passes; the training record states it)."""
    train = training_passes(cfg.objective if cfg.eps_train > 0 else "standard", cfg.inner_attack,
                            cfg.inner_steps)
    attacks = len(cfg.val_modes()) if cfg.selection != "clean" and cfg.eps_train > 0 else 0
    per_image = validation_passes(10, attacks)
    images = validation_images(available, train_images, train, per_image, cfg.val_budget)
    return {"images": images, "budget": cfg.val_budget,
            "share_of_epoch": round(images * per_image / max(1.0, train_images * train), 3)}


def _crafting(model: AttackedModel, cfg: FinetuneConfig, scheduler):
    """The inner attack ``(x, y) -> x_adv``. With several attack modes, batch k crafts through
    mode k mod n, k counted by the scheduler's steps, so a resumed run takes the same turns; the
    modes run on their own view of the executor, leaving ``model``'s (training's) mode alone."""
    modes = cfg.attack_modes()
    if modes == [model.mode]:
        return inner_attack(model, cfg.objective, cfg.eps_train, cfg.inner_attack, cfg.inner_steps)
    through = AttackedModel(model.executor, model.timesteps, modes[0])
    attack = inner_attack(through, cfg.objective, cfg.eps_train, cfg.inner_attack, cfg.inner_steps)

    def craft(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        through.mode = modes[scheduler.last_epoch % len(modes)]
        return attack(x, y)

    return craft


@register_pass("finetune_robust")
def finetune_robust(
    graph: Graph,
    data: DataSplits,
    config: FinetuneConfig | None = None,
    device: torch.device | str = "cpu",
    checkpoint: Checkpoint | None = None,
) -> PassResult:
    """Adversarially finetune a calibrated SNN on ``data.train``; select on ``data.val``. With
    ``checkpoint``, the loop is saved there periodically and on a requested stop, and resumes from
    it with the numbers of an uninterrupted run."""
    cfg = config or FinetuneConfig()
    cfg.validate()
    if not graph.nodes_of(IF):
        raise PassError(
            "finetune_robust needs a spiking graph; run convert_relu_to_if and "
            "calibrate_thresholds first"
        )
    train = data.train if cfg.max_train is None else data.train.head(cfg.max_train)
    val = data.val if cfg.val_samples is None else data.val.head(cfg.val_samples)
    validation = validation_size(cfg, len(train), len(val))
    val = val.head(validation["images"])
    if len(train) == 0 or len(val) == 0:
        raise DataError(
            f"finetuning needs training and validation images; {data.name} has "
            f"{len(train)} and {len(val)} (lower the validation fraction or add data)"
        )
    torch.manual_seed(cfg.seed)
    graph, added = add_zero_biases(graph)
    mode = GradientMode.parse(cfg.surrogate)
    # Trained on the analog input whatever the graph's recorded encoding (as before the executor
    # took the graph's encoding by default): the encoding applies when the SNN is evaluated.
    executor = GraphExecutor(graph, encoding="direct", gradient_mode=mode).to(device)

    def clamp_thresholds() -> None:
        executor.clamp_thresholds(cfg.threshold_floor)

    clamp_thresholds()
    model = AttackedModel(executor, cfg.timesteps, mode)
    # Scale nodes are input normalisation or spike amplitudes: preprocessing, or redundant with the
    # next layer's weights. Training them lets the normalisation drift (measured: its gradient is
    # ~100x any weight's and one epoch destroys the network), so they stay fixed.
    for name in graph.nodes_of(Scale):
        for tensor in executor.tensors_of(name).values():
            tensor.requires_grad_(False)
    params = [p for p in executor.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    current = world()  # several processes under torchrun: data-parallel, same global batch
    batch = per_process_batch(cfg.batch_size, current)
    trained = data_parallel(model, torch.device(device), current)
    steps_per_epoch = train.num_batches(batch, current.size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
    attack = _crafting(model, cfg, scheduler)

    loop = EpochLoop("finetune", executor, cfg.epochs, steps_per_epoch,
                     {"executor": executor, "optimizer": optimizer, "scheduler": scheduler},
                     checkpoint, device, score_first=True, label="finetuning epoch",
                     current=current)

    def run_epoch(epoch: int, progress: EpochProgress, on_step) -> float:
        bar = progress_bar(
            train.batches(batch, shuffle=True, seed=cfg.seed + epoch, device=device,
                          rank=current.rank, processes=current.size, skip=progress.batches),
            total=steps_per_epoch, initial=progress.batches,
            desc=f"finetune {epoch}/{cfg.epochs} ({cfg.objective})", leave=False,
            disable=None if current.is_main else True)
        return robust_epoch(trained, bar, attack if cfg.eps_train > 0 else None, optimizer,
                            scheduler, cfg.objective, cfg.beta,
                            while_attacking=lambda: frozen(executor), after_step=clamp_thresholds,
                            what=f"finetuning (epoch {epoch})", progress=progress,
                            on_step=on_step)

    def score() -> dict[str, Any]:
        executor.eval()
        return _score(executor, val, cfg, device)

    epochs = loop.run(run_epoch, score)
    best_epoch, history = epochs.best_epoch, epochs.history
    out = executor.to_graph()
    out.meta["finetuned"] = {
        "objective": cfg.objective,
        "eps_train": cfg.eps_train,
        "best_epoch": best_epoch,
        "surrogate": cfg.surrogate,  # the framework modules train on with it (backends.frameworks)
    }
    info = {
        "biases_added": added,
        "best_epoch": best_epoch,
        "history": history,
        "val_samples": len(val),
        "validation": validation,
        "train_samples": len(train),
    }
    return PassResult(out, changed=True, info=info)
