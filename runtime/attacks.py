"""Attacks on a compiled network, built from torchattacks, and the preset attack ensembles.

An ensemble *member* is a base attack (PGD-20, APGD-CE, Square, ...) paired with the gradient mode it
differentiates the SNN with (:mod:`spikeshield.runtime.gradient_modes`). Black-box members (Square)
query the true spiking network; transfer members craft the perturbation on the source ANN. Whatever
the member, success is always judged by the true spiking network.

Presets (``PRESETS``):

- ``quick``: PGD-20 with the triangle, rectangular and exponential surrogates (γ=1) and BPTR.
- ``paper``: the 19 members of Özdenizci & Legenstein (2024) with one base attack: triangle
  γ∈{1,2,3,0.5,0.25}, damped exponential γ∈{0.5,1,2}, exponential γ∈{0.5,1,2}, rectangular
  γ∈{0.25,0.5,1,2,4}, straight-through, BPTR and the ANN proxy.
- ``adaptive`` (the default of reports), ordered by what broke samples on the benchmark SNNs
  (``benchmarks/frontier.py``; BENCHMARKS.md): APGD-CE with 100 iterations (momentum and a step
  size that halves when progress stalls) through ASSG with the reset detached, which alone broke
  every image any member broke on both networks measured; SA-PGD-50 through ASSG with the reset
  attached (another optimiser and another gradient); ``paper``'s 19 with the base attack (on the
  issue-18 networks they broke the few images left after the long attack); then the members
  issue 18 added, which broke nothing after the long attack on any network measured: PGD-50
  through adaptive-width triangle and rectangular surrogates, through triangles (γ 0.5, 2),
  sigmoid, arctan and exponential surrogates, all with the reset detached, and APGD-CE-200
  through a detached-reset triangle. Each chunk of samples stops once 3 members in a row broke
  none of its samples (``PRESET_PATIENCE``); the report counts the samples each later member
  was spared, and ``--patience 0`` runs them all. Detaching the reset is what made an outside
  attack work: with the reset's derivative attached, BPTT sums long runs of opposite terms at
  every spike.
- ``strong``: ``adaptive`` (every member run) plus SA-PGD (100 iterations) through ASSG with and without the reset
  detached (Wang et al., CVPR 2026: a per-neuron adaptive surrogate sharpness and a step-size
  adaptive PGD), RGA, APGD-CE and APGD-DLR (100 iterations, triangle and BPTR), targeted APGD
  (100 iterations), a PGD-20 surrogate width sweep from 0.1 to 3.0 over five families, transfer
  from the source ANN, and Square with 5,000 queries last.
- ``autoattack``: AutoAttack's standard set (Croce & Hein 2020), so that an SNN's figure can stand
  beside ANN tables: APGD-CE (100 iterations), APGD-T (100, every other class a target), FAB-T
  (100, the same targets) and Square (5,000 queries), the gradient members through ``adaptive``'s
  strongest mode (ASSG with the reset detached).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.surrogates import Surrogate
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode, SharpnessTracker

# "tpgd" and "kl-rfgsm" maximise the KL to the clean prediction: TRADES' inner attacks.
ATTACKS = ("fgsm", "rfgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "transfer",
           "tpgd", "kl-rfgsm", "sa-pgd")
BASE_ATTACKS = ("fgsm", "pgd", "apgd-ce")
PRESETS = ("quick", "paper", "adaptive", "strong", "autoattack")
DEFAULT_PRESET = "adaptive"
# Presets whose ensembles stop a chunk after this many members in a row broke nothing there
# (see run_ensemble's patience); the others run every member.
PRESET_PATIENCE: dict[str, int] = {"adaptive": 3}
_GRADIENT_FREE = ("square",)


@dataclass(frozen=True)
class AttackSpec:
    """A base attack. ``step_size`` None means ``2.5 * eps / steps`` (Madry et al.'s rule)."""

    name: str = "pgd"
    steps: int = 20
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    queries: int = 5000

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ConfigError(f"unknown attack {self.name!r}; choose one of {', '.join(ATTACKS)}")
        if self.steps <= 0 or self.restarts <= 0 or self.queries <= 0:
            raise ConfigError(f"attack {self.name}: steps, restarts and queries must be positive")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(
                f"attack {self.name}: step size must be positive, got {self.step_size}"
            )

    @property
    def label(self) -> str:
        if self.name in ("fgsm", "rfgsm"):
            return self.name.upper().replace("RFGSM", "R-FGSM")
        if self.name == "square":
            return f"Square-{self.queries}"
        if self.name == "transfer":
            return f"transfer PGD-{self.steps} from ANN"
        return f"{self.name.upper()}-{self.steps}"

    @property
    def uses_gradient_mode(self) -> bool:
        return self.name not in _GRADIENT_FREE and self.name != "transfer"

    def alpha(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else 2.5 * eps / self.steps

    def build(self, model: nn.Module, eps: float, num_classes: int | None = None, seed: int = 0):
        """The attack object on ``model`` (which maps pixels in [0, 1] to logits): torchattacks',
        or :class:`KLRFGSM`. The one factory of attacks, for evaluation and training alike."""
        import torchattacks

        name = self.name
        if name == "kl-rfgsm":
            return KLRFGSM(model, eps)
        if name == "sa-pgd":
            return SAPGD(model, eps, self.steps, self.restarts)
        if name == "tpgd":
            return torchattacks.TPGD(model, eps=eps, alpha=self.alpha(eps), steps=self.steps)
        if name in ("apgd-dlr", "apgd-t", "fab-t") and (num_classes or 0) < 3:
            raise ConfigError(f"{self.label} needs at least 3 classes, the data has {num_classes}")
        if name == "fgsm":
            return torchattacks.FGSM(model, eps=eps)
        if name == "rfgsm":
            return torchattacks.RFGSM(model, eps=eps, alpha=eps / 2, steps=1)
        if name in ("pgd", "transfer"):
            return torchattacks.PGD(
                model,
                eps=eps,
                alpha=self.alpha(eps),
                steps=self.steps,
                random_start=self.random_start,
            )
        if name in ("apgd-ce", "apgd-dlr"):
            return torchattacks.APGD(
                model,
                norm="Linf",
                eps=eps,
                steps=self.steps,
                n_restarts=self.restarts,
                seed=seed,
                loss=name[5:],
            )
        if name == "apgd-t":
            return torchattacks.APGDT(
                model,
                norm="Linf",
                eps=eps,
                steps=self.steps,
                n_restarts=self.restarts,
                seed=seed,
                n_classes=num_classes,
            )
        if name == "fab-t":
            return torchattacks.FAB(model, norm="Linf", eps=eps, steps=self.steps,
                                    n_restarts=self.restarts, seed=seed, multi_targeted=True,
                                    n_classes=num_classes)
        return torchattacks.Square(
            model, norm="Linf", eps=eps, n_queries=self.queries, n_restarts=self.restarts, seed=seed
        )


class KLRFGSM:
    """Single-step R-FGSM (Tramèr et al., 2018) on ``KL(f(x) || f(x_adv))``: TRADES' inner loss
    (torchattacks has no KL form of it)."""

    def __init__(self, model: nn.Module, eps: float, alpha: float | None = None) -> None:
        self.model, self.eps = model, eps
        self.alpha = eps / 2 if alpha is None else alpha

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            target = F.softmax(self.model(x), dim=1)
        start = (x + self.alpha * torch.randn_like(x).sign()).clamp(0, 1).requires_grad_(True)
        kl = F.kl_div(F.log_softmax(self.model(start), dim=1), target, reduction="sum")
        (grad,) = torch.autograd.grad(kl, start)
        x_adv = start.detach() + (self.eps - self.alpha) * grad.sign()
        return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1).detach()


class SAPGD:
    """Stable adaptive PGD (SA-PGD; Wang et al., CVPR 2026, arXiv 2512.22522) on cross-entropy.

    From a random start on the surface of the L-inf ball, each step moves by
    ``clamp(m / sqrt(v) * s, -s, s)``, where ``m`` and ``v`` are momenta of the gradient and of its
    square, each normalised by its mean magnitude per sample (decays 0.5 and 0.8): a step that
    stays stable where an SNN's input gradient jumps by orders of magnitude between iterations.
    The step size ``s`` starts at ``eps`` and halves on a fixed schedule (first after 22% of the
    steps, then at intervals 3% shorter each time, never under 6%). A sample counts as broken by
    the last iterate that misclassified it; ``broken_at`` holds, per sample, the first iteration
    that did (0: the random start, -1: none). Before each restart the model's ``start_run`` is
    called when it has one (the ASSG statistics start afresh); restarts attack the survivors.
    """

    def __init__(self, model: nn.Module, eps: float, steps: int = 100, restarts: int = 1) -> None:
        self.model, self.eps, self.steps, self.restarts = model, eps, steps, restarts
        self.broken_at: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.detach(), y.detach()
        best = x.clone()
        self.broken_at = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        for _ in range(self.restarts):
            todo = (self.broken_at < 0).nonzero().flatten()
            if len(todo) == 0:
                break
            adv, when = self._run(x[todo], y[todo])
            best[todo] = adv
            self.broken_at[todo] = when
        return best

    def _gradient(self, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = x_adv.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x_adv)
            loss = F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        return grad.detach(), logits.detach().argmax(dim=1) != y

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self.model, "start_run"):
            self.model.start_run()
        per_sample = (-1,) + (1,) * (x.dim() - 1)
        dims = tuple(range(1, x.dim()))
        start = 2 * torch.rand_like(x) - 1
        start = start / start.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(per_sample)
        x_adv = (x + self.eps * start).clamp(0.0, 1.0)
        best = x_adv.clone()
        grad, wrong = self._gradient(x_adv, y)
        broken_at = torch.where(wrong, 0, -1)
        best[wrong] = x_adv[wrong]
        step = self.eps
        interval = max(int(0.22 * self.steps), 1)
        shrink, shortest = max(int(0.03 * self.steps), 1), max(int(0.06 * self.steps), 1)
        since = 0
        m = v = None
        for i in range(1, self.steps + 1):
            g_m = grad / grad.abs().mean(dim=dims, keepdim=True).clamp_min(1e-30)
            square = grad * grad
            g_v = square / square.mean(dim=dims, keepdim=True).clamp_min(1e-30)
            m = g_m if m is None else m.mul_(0.5).add_(g_m)
            v = g_v if v is None else v.mul_(0.8).add_(g_v)
            move = (m / (v.sqrt() + 1e-12) * step).clamp_(-step, step)
            x_adv = torch.minimum(torch.maximum(x_adv + move, x - self.eps), x + self.eps)
            x_adv = x_adv.clamp(0.0, 1.0)
            grad, wrong = self._gradient(x_adv, y)
            best[wrong] = x_adv[wrong]
            broken_at = torch.where(wrong & (broken_at < 0), i, broken_at)
            since += 1
            if since == interval:
                step /= 2
                since, interval = 0, max(interval - shrink, shortest)
        return best, broken_at


@dataclass(frozen=True)
class Member:
    """One ensemble member: a base attack and, for white-box attacks, the gradient mode it uses
    (None: the attacked executor's own mode, which for an ANN is simply its exact gradient)."""

    attack: AttackSpec
    mode: GradientMode | None = None

    def __post_init__(self) -> None:
        if not self.attack.uses_gradient_mode and self.mode is not None:
            raise ConfigError(f"{self.attack.label} takes no gradient mode, got {self.mode.label}")

    @property
    def label(self) -> str:
        return (
            self.attack.label if self.mode is None else f"{self.attack.label} / {self.mode.label}"
        )

    @property
    def white_box(self) -> bool:
        """Does this member differentiate the attacked network (``mode`` None: its own mode)?"""
        return self.attack.uses_gradient_mode

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "attack": self.attack.name,
            "steps": self.attack.steps,
            "gradient_mode": None if self.mode is None else self.mode.spec,
        }


class AttackedModel(nn.Module):
    """``x -> logits`` of an executor at ``timesteps`` under one gradient mode, for torchattacks.

    The executor is shared, not copied: switching members costs nothing. The assg mode's
    membrane statistics belong to the attacked model (one attack on one batch), and
    :meth:`start_run` starts them afresh.
    """

    def __init__(self, executor: GraphExecutor, timesteps: int | None, mode: GradientMode) -> None:
        super().__init__()
        self.executor = executor
        self.timesteps = timesteps
        self.mode = mode
        self.sharpness = SharpnessTracker()
        self.labels: torch.Tensor | None = None

    def start_run(self) -> None:
        self.sharpness.reset()

    def watch(self, y: torch.Tensor) -> None:
        """Count the forward passes on the whole batch labelled ``y`` from now on, and note per
        sample the first at which the network misclassified it (see
        :meth:`first_wrong_passes`)."""
        self.labels, self.passes = y, 0
        self.first_wrong = torch.full((len(y),), -1, dtype=torch.long, device=y.device)

    def first_wrong_passes(self) -> torch.Tensor | None:
        """After :meth:`watch`: per sample, the index of the first whole-batch forward pass that
        misclassified it (PGD and SA-PGD evaluate their iterates in order from the random start,
        so for them it is the iteration; APGD evaluates the clean batch first), or the number
        of passes where none did (the point returned, after the last); None without
        :meth:`watch`."""
        if self.labels is None:
            return None
        return torch.where(self.first_wrong < 0, self.passes, self.first_wrong)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.executor.using(self.mode, self.sharpness):
            logits = self.executor(x, self.timesteps)
        if self.labels is not None and len(x) == len(self.labels):
            wrong = (logits.detach().argmax(dim=1) != self.labels) & (self.first_wrong < 0)
            self.first_wrong[wrong] = self.passes
            self.passes += 1
        return logits


def _bptt(name: str, gamma: float, adaptive: bool = False, detach: bool = False) -> GradientMode:
    return GradientMode("bptt", Surrogate(name, gamma, adaptive), detach)


def adaptive_members(base: AttackSpec | None = None) -> list[Member]:
    """The members of ``adaptive`` in the order they run (see the module doc); ``base`` is the
    attack of ``paper``'s members among them (PGD-20 by default)."""
    assg = GradientMode("assg", detach_reset=True)
    members = [Member(AttackSpec("apgd-ce", steps=100), assg),
               Member(AttackSpec("sa-pgd", steps=50), GradientMode("assg"))]
    members += [Member(base or AttackSpec("pgd", steps=20), m) for m in paper_modes()]
    pgd50 = AttackSpec("pgd", steps=50)
    members += [Member(pgd50, _bptt(name, 1, adaptive=True, detach=True))
                for name in ("triangle", "rectangular")]
    members += [Member(pgd50, _bptt(name, gamma, detach=True))
                for name, gamma in (("triangle", 0.5), ("triangle", 2), ("sigmoid", 4),
                                    ("arctan", 2), ("exponential", 1))]
    members.append(Member(AttackSpec("apgd-ce", steps=200), _bptt("triangle", 1, detach=True)))
    return members


def paper_modes() -> list[GradientMode]:
    """The 19 gradient modes of the reference ensemble, in its order."""
    modes = [_bptt("triangle", g) for g in (1, 2, 3, 0.5, 0.25)]
    modes += [_bptt("damped_exponential", g) for g in (0.5, 1, 2)]
    modes += [_bptt("exponential", g) for g in (0.5, 1, 2)]
    modes += [_bptt("rectangular", g) for g in (0.25, 0.5, 1, 2, 4)]
    modes += [_bptt("straight_through", 1.0), GradientMode("bptr"), GradientMode("ann_proxy")]
    return modes


def _width_sweep() -> list[GradientMode]:
    widths = (0.1, 0.2, 0.3, 0.75, 1.5, 2.5)
    modes = [_bptt(family, g) for family in ("triangle", "rectangular") for g in widths]
    # For these families gamma is a slope: small = wide.
    slopes = (0.3, 1.0, 3.0)
    modes += [_bptt(family, g) for family in ("sigmoid", "arctan", "fast_sigmoid") for g in slopes]
    return modes


def base_attack(name: str, steps: int | None = None) -> AttackSpec:
    """The base attack of the ``paper`` preset: fgsm, pgd (20 steps) or apgd-ce (20 steps)."""
    name = {"apgd": "apgd-ce"}.get(name, name)
    if name not in BASE_ATTACKS:
        raise ConfigError(f"base attack must be one of fgsm, pgd, apgd, got {name!r}")
    return AttackSpec(name, steps=steps or 20)


def preset_members(preset: str, base: AttackSpec | None = None) -> list[Member]:
    """The members of a preset, in the order they run (later members see only survivors)."""
    base = base or AttackSpec("pgd", steps=20)
    if preset == "quick":
        modes = [_bptt("triangle", 1), _bptt("rectangular", 1), _bptt("exponential", 1)]
        return [Member(base, m) for m in modes + [GradientMode("bptr")]]
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset == "autoattack":
        strongest = GradientMode("assg", detach_reset=True)
        return [Member(AttackSpec(name, steps=100), strongest)
                for name in ("apgd-ce", "apgd-t", "fab-t")] + [
            Member(AttackSpec("square", queries=5000))]
    if preset == "paper":
        return [Member(base, m) for m in paper_modes()]
    members = adaptive_members(base)
    if preset == "adaptive":
        return members
    pgd = AttackSpec("pgd", steps=20)
    members += [Member(AttackSpec("sa-pgd", steps=100), GradientMode("assg", detach_reset=d))
                for d in (False, True)]
    members.append(Member(base, GradientMode("rga")))
    for name in ("apgd-ce", "apgd-dlr"):
        for mode in (_bptt("triangle", 1), GradientMode("bptr")):
            members.append(Member(AttackSpec(name, steps=100), mode))
    members.append(Member(AttackSpec("apgd-t", steps=100), _bptt("triangle", 1)))
    members += [Member(pgd, m) for m in _width_sweep()]
    members.append(Member(AttackSpec("transfer", steps=20)))
    members.append(Member(AttackSpec("square", queries=5000)))
    return members


def members_for_ann(members: list[Member], first: AttackSpec | None = None) -> list[Member]:
    """The members that differ on a non-spiking network: gradient modes collapse into the exact
    gradient, and transfer from the ANN to itself is the white-box attack again. ``first`` (the
    preset's base attack) runs first, so that its robust accuracy alone is known: the ANN's PGD
    figure that retention is measured against."""
    seen: dict[tuple, Member] = {}
    if first is not None:
        seen[(first.name, first.steps, first.queries)] = Member(first)
    for m in members:
        if m.attack.name == "transfer":
            continue
        key = (m.attack.name, m.attack.steps, m.attack.queries)
        seen.setdefault(key, Member(m.attack))
    return list(seen.values())


def with_steps(member: Member, steps: int) -> Member:
    """The same member with a different number of iterations (used by the steps curve)."""
    return Member(replace(member.attack, steps=steps), member.mode)
