"""Per-sample worst case over an attack ensemble.

A sample counts as robust only if the true spiking network classifies it correctly on the clean
image and on the adversarial example of every member. By default each member attacks only the
samples that are still robust after the members before it (the reference protocol: same worst
case, far cheaper); ``exhaustive=True`` lets every member attack every clean-correct sample, which
also gives each member's own robust accuracy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from spikeshield.compiler.errors import ConfigError
from spikeshield.frontends.datasets import Dataset
from spikeshield.runtime.attacks import AttackedModel, Member
from spikeshield.runtime.distributed import World, sum_over_processes
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode


@dataclass
class MemberResult:
    member: Member
    attacked: int  # samples this member attacked
    broken: int  # of those, how many it turned into errors
    robust_after: int  # samples still robust after this member (cumulative worst case)
    seconds: float
    standalone_robust: int | None = None  # exhaustive mode: robust samples under this member alone
    broken_mask: torch.Tensor | None = field(default=None, repr=False)

    def to_json(self, samples: int) -> dict:
        out = self.member.to_json()
        out.update(
            {
                "attacked": self.attacked,
                "broken": self.broken,
                "robust_accuracy_after": self.robust_after / samples,
                "seconds": round(self.seconds, 2),
            }
        )
        if self.standalone_robust is not None:
            out["standalone_robust_accuracy"] = self.standalone_robust / samples
        return out


@dataclass
class EnsembleResult:
    eps: float
    samples: int
    clean_correct: int
    robust_mask: torch.Tensor  # bool (samples,)
    members: list[MemberResult]
    exhaustive: bool = False

    @property
    def robust(self) -> int:
        return int(self.robust_mask.sum())

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct / self.samples

    @property
    def robust_accuracy(self) -> float:
        return self.robust / self.samples

    def to_json(self) -> dict:
        return {
            "eps": self.eps,
            "samples": self.samples,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "exhaustive": self.exhaustive,
            "members": [m.to_json(self.samples) for m in self.members],
        }


def check_eps(eps: float) -> None:
    if not 0 <= eps <= 1:
        raise ConfigError(f"eps must be in [0, 1] (L-inf, pixels in [0, 1]), got {eps}")


@torch.no_grad()
def predictions(
    executor: GraphExecutor, x: torch.Tensor, timesteps: int | None, batch_size: int
) -> torch.Tensor:
    """Predicted classes of the true network (exact spiking forward, whatever the gradient mode)."""
    out = []
    with executor.using(GradientMode()):
        for start in range(0, len(x), batch_size):
            out.append(executor(x[start : start + batch_size], timesteps).argmax(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def as_tensors(data: Dataset, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    x = data.images.to(device=device, dtype=torch.float32) / 255.0
    return x, data.labels.to(device)


def run_ensemble(
    target: GraphExecutor,
    data: Dataset,
    members: list[Member],
    eps: float,
    timesteps: int | None,
    num_classes: int,
    *,
    source: GraphExecutor | None = None,
    batch_size: int = 256,
    exhaustive: bool = False,
    seed: int = 0,
    desc: str = "attacking",
    world: World | None = None,
) -> EnsembleResult:
    """Run ``members`` against ``target`` on ``data``; returns the per-sample worst case.

    ``source`` is the ANN that transfer members attack (required only if there is one).

    The samples are cut into fixed chunks of ``batch_size`` in test-set order, and every member
    attacks, chunk by chunk, the samples of the chunk still to be attacked, seeded per member. What
    happens to a sample therefore depends only on its chunk, never on how many processes share the
    work: with ``world`` (several processes under torchrun) each process attacks its own chunks and
    the per-sample results are added up, giving exactly the single-process counts.
    """
    check_eps(eps)
    if not members:
        raise ConfigError("an attack ensemble needs at least one member")
    if any(m.attack.name == "transfer" for m in members) and source is None:
        raise ConfigError(
            "a transfer member needs the source ANN (ann.ir in the compile directory)"
        )
    current = world or World()
    device = next(target.parameters()).device
    with frozen(target), frozen(source):
        x, y = as_tensors(data, device)
        chunks = [
            (start, min(start + batch_size, len(y)))
            for i, start in enumerate(range(0, len(y), batch_size))
            if current.owns(i)
        ]
        clean = torch.zeros(len(y), dtype=torch.bool, device=device)
        for lo, hi in chunks:
            clean[lo:hi] = predictions(target, x[lo:hi], timesteps, batch_size) == y[lo:hi]
        clean = _combine(clean, current)
        robust = clean.clone()
        results = []
        bar = tqdm(members, desc=desc, leave=False, disable=None if current.is_main else True)
        for index, member in enumerate(bar):
            started = time.perf_counter()
            pending = clean if exhaustive else robust
            survived = torch.zeros_like(clean)
            for lo, hi in chunks:
                idx = pending[lo:hi].nonzero().flatten() + lo
                if not len(idx) or eps == 0:
                    survived[idx] = True
                    continue
                x_adv = _attack_batch(
                    member, target, source, x[idx], y[idx], eps, timesteps, num_classes,
                    seed + index,
                )
                survived[idx] = predictions(target, x_adv, timesteps, batch_size) == y[idx]
            survived = _combine(survived, current)
            todo = pending.nonzero().flatten()
            broken = torch.zeros_like(clean)
            broken[todo] = ~survived[todo]
            robust &= ~broken
            results.append(
                MemberResult(
                    member,
                    attacked=len(todo),
                    broken=int(broken.sum()),
                    robust_after=int(robust.sum()),
                    seconds=time.perf_counter() - started,
                    standalone_robust=int(survived[clean].sum()) if exhaustive else None,
                    broken_mask=broken.cpu(),
                )
            )
            bar.set_postfix(robust=f"{int(robust.sum())}/{len(y)}")
        return EnsembleResult(eps, len(y), int(clean.sum()), robust.cpu(), results, exhaustive)


def _combine(mask: torch.Tensor, world: World) -> torch.Tensor:
    """Per-sample booleans filled in by each process for its own chunks, combined across processes."""
    if not world.distributed:
        return mask
    return sum_over_processes(mask.to(torch.int32), world) > 0


@contextlib.contextmanager
def frozen(executor: GraphExecutor | None) -> Iterator[None]:
    """Eval mode and no parameter gradients for the block (attacks need input gradients only)."""
    if executor is None:
        yield
        return
    was_training = executor.training
    flags = [(p, p.requires_grad) for p in executor.parameters()]
    executor.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        executor.train(was_training)


def _attack_batch(
    member: Member,
    target: GraphExecutor,
    source: GraphExecutor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    timesteps: int | None,
    num_classes: int,
    seed: int,
) -> torch.Tensor:
    if member.attack.name == "transfer":
        model = AttackedModel(source, None, GradientMode())
    else:
        model = AttackedModel(target, timesteps, member.mode or target.gradient_mode)
    attack = member.attack.build(model, eps, num_classes, seed)
    devices = [x.device] if x.device.type == "cuda" else []
    # torchattacks reseeds the global generator (APGD, Square): keep that from leaking out.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        x_adv = attack(x, y).detach()
    # A member may never leave the threat model: project once more, whatever the library did.
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv
