"""Gradient-masking diagnostics: does an attack ensemble's robust accuracy deserve belief?

A spiking network can look robust because its gradients are useless (zero or uninformative), not
because it is. Four symptoms are checked (after Athalye et al., 2018, and Carlini et al., 2019):

1. *Zero gradients*: the fraction of inputs whose input gradient is exactly zero, per gradient mode.
   Masking is flagged when every white-box mode is zero on more than ``ZERO_GRADIENT_LIMIT`` of inputs.
2. *Accuracy vs ε*: PGD with the strongest gradient mode at growing ε must fall towards zero: at
   ε = ``LARGE_EPS`` every image can be pushed to near-uniform grey. Flagged if accuracy stays above
   ``max(2/classes, 0.1)`` there, or rises with ε (beyond chance: a paired test, see ``_rises``).
3. *Accuracy vs steps* (the convergence curve: the member that broke the most samples, at 20 to
   200 iterations): more iterations must never help the defender. Flagged if accuracy rises beyond
   chance; a warning if it still falls at the largest step count (the attack has not converged).
4. *Black-box beats white-box*: Square (queries only) breaking more than ``BLACK_BOX_LIMIT`` of the
   samples that every white-box member missed means the gradients are masked. Flagged.

5. *A sparse SNN above its own ANN*: a pruned SNN whose worst case beats its ANN's under the same
   ensemble (Paper B's high-sparsity regime, where a collapsed network can look robust) is flagged
   until the strongest preset (``strong``) confirms it; then it is a warning
   (:func:`check_sparse_above_ann`).

A warning (not a masking flag, since the ensemble already includes it) is raised when the ANN proxy
breaks more than ``PROXY_MARGIN`` of the samples that survived every BPTT surrogate: the surrogate
gradients are weak on this network and only the ensemble's worst case should be quoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from spikeshield.runtime.attacks import AttackSpec, Member, with_steps
from spikeshield.runtime.data import Dataset
from spikeshield.runtime.ensemble import (
    EnsembleResult,
    as_tensors,
    first_member_robust,
    frozen,
    run_ensemble,
)
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode

ZERO_GRADIENT_LIMIT = 0.10
LARGE_EPS = 0.5
BLACK_BOX_LIMIT = 0.01
PROXY_MARGIN = 0.05
# Iterations of the convergence curve: up to 200 for the presets whose numbers are quoted, up to
# 50 for the quick smoke test.
CURVE_STEPS = (20, 50, 100, 200)
_ITERATIVE = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "tpgd", "sa-pgd")  # attacks with a step count
QUICK_CURVE_STEPS = (5, 10, 20, 50)


@dataclass
class Diagnostics:
    zero_gradient_fraction: dict[str, float]
    curve_member: str
    eps_curve: list[tuple[float, float]]  # (eps, robust accuracy); eps = 0 is clean accuracy
    steps_curve: list[tuple[int, float]]  # (iterations, robust accuracy) at the evaluation eps
    curve_samples: int
    masking: list[str] = field(default_factory=list)  # reasons masking is suspected
    warnings: list[str] = field(default_factory=list)

    @property
    def trustworthy(self) -> bool:
        return not self.masking

    @property
    def verdict(self) -> str:
        if self.masking:
            return (
                "NOT TRUSTWORTHY: gradient masking is suspected ("
                + "; ".join(self.masking)
                + "). The robust accuracy above is an overestimate; do not quote it."
            )
        text = (
            "Looks trustworthy: gradients are non-zero, accuracy falls towards zero as ε grows "
            "and does not rise with more attack steps"
        )
        if self.warnings:
            text += ", but see the warnings"
        return text + "."

    def to_json(self) -> dict:
        return {
            "zero_gradient_fraction": self.zero_gradient_fraction,
            "curve_member": self.curve_member,
            "curve_samples": self.curve_samples,
            "accuracy_vs_eps": [{"eps": e, "accuracy": a} for e, a in self.eps_curve],
            "accuracy_vs_steps": [{"steps": s, "accuracy": a} for s, a in self.steps_curve],
            "masking_suspected": self.masking,
            "warnings": self.warnings,
            "trustworthy": self.trustworthy,
            "verdict": self.verdict,
        }


def check_sparse_above_ann(diag: Diagnostics, snn_robust: float, ann_robust: float,
                           sparse: bool, confirmed: bool) -> None:
    """Symptom 5: flag (or, once ``confirmed`` by the strongest preset, warn about) a sparse SNN
    whose robust accuracy exceeds its own ANN's under the same attacks."""
    if not sparse or not snn_robust > ann_robust:
        return
    text = (f"the sparse SNN's worst case ({100 * snn_robust:.1f}%) is above its own ANN's "
            f"({100 * ann_robust:.1f}%) under the same ensemble")
    if confirmed:
        diag.warnings.append(text + "; the strong preset confirms it")
    else:
        diag.masking.append(text + ": confirm it with --preset strong before quoting it")


def zero_gradient_fraction(
    executor: GraphExecutor,
    x: torch.Tensor,
    y: torch.Tensor,
    timesteps: int | None,
    mode: GradientMode | None,
    batch_size: int = 256,
) -> float:
    """Fraction of inputs whose cross-entropy input gradient is exactly zero under ``mode``."""
    zero = 0
    with frozen(executor), executor.using(mode or executor.gradient_mode):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].clone().requires_grad_(True)
            loss = F.cross_entropy(
                executor(xb, timesteps), y[start : start + batch_size], reduction="sum"
            )
            (grad,) = torch.autograd.grad(loss, xb)
            zero += int((grad.flatten(1).abs().amax(dim=1) == 0).sum())
    return zero / max(1, len(x))


def curve_eps_values(eps: float) -> list[float]:
    values = {eps * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)} | {LARGE_EPS}
    return [0.0] + sorted(v for v in values if 0 < v <= 1)


def _strongest(result: EnsembleResult) -> Member | None:
    white = [r for r in result.members if r.member.white_box and r.member.attack.name != "transfer"]
    if not white:
        return None
    return max(white, key=lambda r: r.broken).member  # max keeps the first of equals


def diagnose(
    target: GraphExecutor,
    data: Dataset,
    result: EnsembleResult,
    timesteps: int | None,
    num_classes: int,
    *,
    source: GraphExecutor | None = None,
    curve_samples: int = 200,
    curve_steps: tuple[int, ...] = CURVE_STEPS,
    batch_size: int = 256,
    seed: int = 0,
) -> Diagnostics:
    """Run the masking checks for an ensemble ``result`` obtained on ``data`` (same order)."""
    eps = result.eps
    subset = data.head(min(curve_samples, len(data)))
    device = next(target.parameters()).device
    x, y = as_tensors(subset, device)
    members = [r.member for r in result.members]
    zero = {}
    for m in members:
        if m.white_box and m.attack.name != "transfer" and m.mode is not None:
            zero.setdefault(
                m.mode.label, zero_gradient_fraction(target, x, y, timesteps, m.mode, batch_size)
            )
    if not zero and any(m.white_box for m in members):
        zero[target.gradient_mode.label] = zero_gradient_fraction(
            target, x, y, timesteps, None, batch_size
        )
    strongest = _strongest(result)
    eps_curve: list[tuple[float, float]] = []
    steps_curve: list[tuple[int, float]] = []
    label = "none (no white-box member)"
    if strongest is not None:
        mode_label = strongest.mode.label if strongest.mode else target.gradient_mode.label
        iterative = strongest.attack.name in _ITERATIVE
        label = f"{strongest.attack.name.upper() if iterative else 'PGD'} / {mode_label}"

        cache: dict[tuple[float, Member], torch.Tensor] = {}
        # The ensemble's first member already attacked these samples exactly as a curve point
        # would (adaptive's APGD-CE-100 is a point of the steps curve): not attacked twice.
        measured = first_member_robust(result, len(subset), batch_size, seed, timesteps)
        if measured is not None:
            cache[(eps, result.members[0].member)] = measured

        def robust(e: float, member: Member) -> torch.Tensor:
            # Same samples and seed everywhere, so a point both curves need is attacked once.
            if (e, member) not in cache:
                cache[(e, member)] = run_ensemble(
                    target,
                    subset,
                    [member],
                    e,
                    timesteps,
                    num_classes,
                    batch_size=batch_size,
                    seed=seed,
                    desc=f"diagnostics ε={e:g}, {member.label}",
                ).robust_mask
            return cache[(e, member)]

        def at_steps(steps: int) -> Member:
            """The strongest member itself with ``steps`` iterations (PGD with its gradient mode
            for a one-step or gradient-free member)."""
            if iterative:
                return with_steps(strongest, steps)
            return Member(AttackSpec("pgd", steps=steps), strongest.mode)

        pgd20 = Member(AttackSpec("pgd", steps=20), strongest.mode)
        eps_masks = [(e, robust(e, pgd20)) for e in curve_eps_values(eps)]
        steps_masks = [(s, robust(eps, at_steps(s))) for s in curve_steps] if eps > 0 else []
        eps_curve = [(e, float(m.float().mean())) for e, m in eps_masks]
        steps_curve = [(s, float(m.float().mean())) for s, m in steps_masks]
    diag = Diagnostics(zero, label, eps_curve, steps_curve, len(subset))
    _judge(
        diag, result, num_classes, eps_masks if strongest else [], steps_masks if strongest else []
    )
    return diag


def _rises(masks: list[tuple[float, torch.Tensor]], falls: bool = False) -> list[tuple]:
    """Consecutive curve points where accuracy rises (``falls``: falls) by more than chance allows.

    Both points attack the same samples, so the test is paired (McNemar): of the samples that
    change, ``up`` become robust and ``down`` become broken; under noise alone ``up - down`` is about
    ``N(0, up + down)``, so a change counts only above two standard deviations (and one sample).
    PGD keeps its last iterate, so a sample or two may legitimately flip either way."""
    out = []
    for (x0, m0), (x1, m1) in zip(masks, masks[1:]):
        up, down = int((m1 & ~m0).sum()), int((m0 & ~m1).sum())
        change = down - up if falls else up - down
        if change > max(1.0, 2 * (up + down) ** 0.5):
            out.append(((x0, float(m0.float().mean())), (x1, float(m1.float().mean()))))
    return out


def _judge(
    diag: Diagnostics, result: EnsembleResult, num_classes: int, eps_masks: list, steps_masks: list
) -> None:
    if (
        diag.zero_gradient_fraction
        and min(diag.zero_gradient_fraction.values()) > ZERO_GRADIENT_LIMIT
    ):
        worst = min(diag.zero_gradient_fraction.values())
        diag.masking.append(
            f"every gradient mode gives an exactly zero input gradient on at least "
            f"{100 * worst:.0f}% of inputs"
        )
    for label, fraction in diag.zero_gradient_fraction.items():
        if fraction > 0.5 and not diag.masking:
            diag.warnings.append(
                f"{label} gives no gradient on {100 * fraction:.0f}% of inputs; "
                "it adds little to the ensemble"
            )
    if diag.eps_curve:
        large_eps, large_acc = diag.eps_curve[-1]
        limit = max(2 / num_classes, 0.1)
        if large_acc > limit:
            diag.masking.append(
                f"accuracy stays at {100 * large_acc:.1f}% at ε={large_eps:g}, where "
                f"it should fall below {100 * limit:.0f}%"
            )
        for (e0, a0), (e1, a1) in _rises(eps_masks):
            diag.masking.append(
                f"accuracy rises from {100 * a0:.1f}% at ε={e0:g} to {100 * a1:.1f}% at ε={e1:g}"
            )
    for (s0, a0), (s1, a1) in _rises(steps_masks):
        diag.masking.append(
            f"accuracy rises from {100 * a0:.1f}% at {s0} steps to "
            f"{100 * a1:.1f}% at {s1} steps"
        )
    for (s0, a0), (s1, a1) in _rises(steps_masks[-2:], falls=True):
        diag.warnings.append(
            f"the attack has not converged: accuracy still falls from {100 * a0:.1f}% at {s0} "
            f"steps to {100 * a1:.1f}% at {s1} steps ({diag.curve_member}), so the worst case may "
            "be lower still; attack with more steps before quoting it"
        )
    _compare_members(diag, result)


def _compare_members(diag: Diagnostics, result: EnsembleResult) -> None:
    def broken_only_by(kind: str, others) -> int | None:
        mine = [r.broken_mask for r in result.members if kind(r.member)]
        rest = [r.broken_mask for r in result.members if others(r.member)]
        if not mine or not rest or any(m is None for m in mine + rest):
            return None
        return int((torch.stack(mine).any(0) & ~torch.stack(rest).any(0)).sum())

    samples = max(1, result.samples)
    square = broken_only_by(lambda m: m.attack.name == "square", lambda m: m.white_box)
    if square is not None and square > BLACK_BOX_LIMIT * samples:
        diag.masking.append(
            f"black-box Square broke {square} samples ({100 * square / samples:.1f}%) "
            "that every white-box member missed"
        )

    def is_proxy(m: Member) -> bool:
        return m.mode is not None and m.mode.kind == "ann_proxy"

    def is_bptt(m: Member) -> bool:
        return m.mode is not None and m.mode.through_time and m.attack.name != "transfer"

    proxy = broken_only_by(is_proxy, is_bptt)
    if proxy is not None and proxy > PROXY_MARGIN * samples:
        diag.warnings.append(
            f"the ANN proxy broke {proxy} samples ({100 * proxy / samples:.1f}%) that survived every "
            "BPTT surrogate: surrogate gradients are weak on this network; quote only the ensemble's "
            "worst case"
        )
