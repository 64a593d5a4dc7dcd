"""Robust training objectives and their inner maximisation, shared by ANN training and SNN finetuning.

- ``at`` (Madry et al., 2018): cross-entropy on the adversarial example.
- ``trades`` (Zhang et al., 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``, inner max on the KL.
- ``mart`` (Wang et al., 2020): boosted CE on the adversarial example plus a KL term weighted by
  ``1 - p_y(x)``, inner max on the CE.
- ``standard``: plain cross-entropy, no attack.

Inner attacks: ``pgd`` (``steps`` steps of ``2.5 * eps / steps`` from a random start; torchattacks'
``PGD`` on the CE, ``TPGD`` on the KL) or ``rfgsm`` (one step: a random ``alpha``-sign start, then an
``eps - alpha`` signed-gradient step, ``alpha = eps / 2``; torchattacks' ``RFGSM`` on the CE, and
:class:`~spikeshield.runtime.attacks.KLRFGSM` on the KL, which torchattacks lacks; all built by the
attack factory of ``runtime.attacks``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spikeshield.compiler.ir.errors import ConfigError, PassError

OBJECTIVES = ("at", "trades", "mart", "standard")
# The weight of the robust term when the user gives none: TRADES lambda 6, MART lambda 4.
DEFAULT_BETA = {"trades": 6.0, "mart": 4.0}
INNER_ATTACKS = ("pgd", "rfgsm")
# What picks the epoch a robust training run keeps, from its validation figures.
SELECTIONS = ("clean+robust", "robust", "clean")

Model = Callable[[torch.Tensor], torch.Tensor]

# Validation's cost is counted in passes through the network per image: a forward with its backward
# is one pass, a forward alone a third of one (BPTT's backward costs about twice its forward).
FORWARD_PASS = 1 / 3
# By default the validation that picks an epoch costs at most this share of the epoch it scores
# (issue 44: scoring 1,000 images with PGD-10 cost as much as the epoch itself) ...
VALIDATION_SHARE = 0.2
# ... but never scores fewer images than this (binomial standard error at most 5 pp), so on a small
# training set the floor wins and validation costs more than the share.
VALIDATION_FLOOR = 100


def selection_score(clean: float, robust: float, selection: str) -> float:
    """The validation score an epoch is kept by (SNN finetuning, pruning). ``"robust"`` breaks ties
    on clean accuracy: the 1e-6 weight cannot outvote one robust image in 100,000."""
    if selection == "robust":
        return robust + 1e-6 * clean
    return clean + robust if selection == "clean+robust" else clean


def check_selection(selection: str, option: str) -> None:
    """Refuse an unknown epoch selection, naming the option that set it."""
    if selection not in SELECTIONS:
        raise ConfigError(f"{option} must be one of {', '.join(SELECTIONS)}, got {selection!r}")


def robust_loss(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    objective: str,
    beta: float,
) -> torch.Tensor:
    """The training loss of ``objective`` given clean ``x`` and adversarial ``x_adv``."""
    if objective == "standard":
        return F.cross_entropy(model(x), y)
    if objective == "at":
        return F.cross_entropy(model(x_adv), y)
    logits, logits_adv = model(x), model(x_adv)
    if objective == "trades":
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
        return F.cross_entropy(logits, y) + beta * kl
    if objective != "mart":
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    adv_probs = F.softmax(logits_adv, 1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(
        torch.log(1.0001 - adv_probs + 1e-12), other
    )
    nat_probs = F.softmax(logits, 1)
    true_probs = nat_probs.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
    return loss_adv + beta * (kl * (1.0000001 - true_probs)).mean()


def inner_attack(model, objective: str, eps: float, kind: str = "pgd", steps: int = 10):
    """The inner maximisation of ``objective``: a callable ``(x, y) -> x_adv`` from the attack
    factory (``runtime.attacks``); TRADES maximises the KL, the others the cross-entropy."""
    from spikeshield.runtime.attacks import AttackSpec

    if kind not in INNER_ATTACKS:
        raise ConfigError(f"inner attack must be one of {', '.join(INNER_ATTACKS)}, got {kind!r}")
    if steps <= 0:
        raise ConfigError(f"inner attack steps must be positive, got {steps}")
    on_kl = objective == "trades"
    if kind == "rfgsm":
        return AttackSpec("kl-rfgsm" if on_kl else "rfgsm", steps=1).build(model, eps)
    return AttackSpec("tpgd" if on_kl else "pgd", steps=steps, random_start=True).build(model, eps)


def training_passes(objective: str, inner: str, steps: int) -> float:
    """Passes per training image of one robust epoch: the inner attack (R-FGSM one pass, PGD
    ``steps``; TRADES first takes the clean logits it maximises the KL from) and the loss (TRADES
    and MART run and backpropagate clean and adversarial images, AT the adversarial ones)."""
    if objective == "standard":
        return 1.0
    attack = (1.0 if inner == "rfgsm" else float(steps)) + (FORWARD_PASS if objective == "trades"
                                                            else 0.0)
    return attack + (1.0 if objective == "at" else 2.0)


def validation_passes(attack_steps: int, attacks: int) -> float:
    """Passes per validation image: the clean forward, and per attack (one per gradient mode)
    ``attack_steps`` passes and the forward that checks the adversarial example."""
    return FORWARD_PASS + attacks * (attack_steps + FORWARD_PASS)


def validation_images(available: int, train_images: int, train_passes: float, val_passes: float,
                      share: float | None) -> int:
    """How many of ``available`` validation images the per-epoch score uses: all of them when
    ``share`` is None or 0 (every image, whatever it costs), else as many as cost at most ``share``
    of an epoch (``train_images`` x ``train_passes``), and at least :data:`VALIDATION_FLOOR`."""
    if not share:
        return available
    affordable = int(share * train_images * train_passes / val_passes + 1e-9)  # not 224.999...
    return min(available, max(VALIDATION_FLOOR, affordable))


def binomial_se(accuracy: float, images: int) -> float:
    """Standard error of an accuracy measured on ``images`` independent images."""
    return (accuracy * (1 - accuracy) / max(1, images)) ** 0.5


def robust_epoch(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    objective: str,
    beta: float,
    *,
    while_attacking: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    after_step: Callable[[], None] | None = None,
    what: str = "training",
    progress: EpochProgress | None = None,
    on_step: Callable[[EpochProgress], None] | None = None,
) -> float:
    """One epoch of robust training over ``batches`` (an iterable, e.g. a progress bar); returns
    the mean loss. ``attack`` None trains on clean data with plain cross-entropy. A non-finite loss
    raises :class:`PassError`, naming the learning rate as the likely fix.

    ``progress`` resumes an interrupted epoch (``batches`` then holds only the batches still to
    run); ``on_step(progress)`` is called after every optimiser step (checkpoints)."""
    progress = progress or EpochProgress()
    for x, y in batches:
        with while_attacking():
            x_adv = attack(x, y) if attack is not None else x
        model.train()
        loss = robust_loss(
            model, x, y, x_adv, objective if attack is not None else "standard", beta
        )
        if not torch.isfinite(loss):
            raise PassError(f"{what} diverged (loss {float(loss)}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        progress.batches += 1
        progress.loss_sum += float(loss.detach()) * len(y)
        progress.samples += len(y)
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{progress.mean_loss:.4f}")
        if on_step is not None:
            on_step(progress)
    return progress.mean_loss


@dataclass
class EpochProgress:
    """How far one epoch has come: batches done, and the loss summed over the samples seen."""

    batches: int = 0
    loss_sum: float = 0.0
    samples: int = 0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(1, self.samples)
