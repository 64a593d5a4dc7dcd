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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.attacks import AttackedModel, Member
from spikeshield.runtime.checkpoint import (
    Checkpoint,
    Interrupted,
    deferring_signals,
    restore_rng,
    rng_state,
)
from spikeshield.runtime.data import Dataset, as_float
from spikeshield.runtime.distributed import World, sum_over_processes
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode
from spikeshield.runtime.progress import progress_bar


@dataclass
class MemberResult:
    member: Member
    attacked: int  # samples this member attacked
    broken: int  # of those, how many it turned into errors
    robust_after: int  # samples still robust after this member (cumulative worst case)
    seconds: float
    standalone_robust: int | None = None  # exhaustive mode: robust samples under this member alone
    broken_mask: torch.Tensor | None = field(default=None, repr=False)
    skipped: bool = False  # left out by the time budget
    # Per sample, the member's first forward pass over its whole batch that misclassified it (for
    # PGD and SA-PGD the iteration, 0 being the random start; APGD's pass 0 is the clean image);
    # -1: not broken, or a member whose passes are not the SNN's iterates (transfer, the ANN
    # proxy, Square, FAB-T).
    broken_at: torch.Tensor | None = field(default=None, repr=False)
    spared: int = 0  # robust samples it did not attack: their chunk had stopped (patience)

    def to_json(self, samples: int) -> dict:
        out = self.member.to_json()
        out.update(
            {
                "attacked": self.attacked,
                "broken": self.broken,
                "robust_accuracy_after": self.robust_after / samples,
                "seconds": round(self.seconds, 2),
                "skipped": self.skipped,
                "not_run_samples": self.spared,
            }
        )
        if self.broken_mask is not None:  # which test images this member broke (indices)
            broken = torch.nonzero(self.broken_mask).flatten()
            out["broken_samples"] = broken.tolist()
            if self.broken_at is not None:  # and at which of its forward passes, in that order
                out["broken_at_pass"] = self.broken_at[broken].tolist()
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
    budget: float | None = None  # seconds; members past what it allowed were skipped
    patience: int | None = None  # a chunk stopped after this many members in a row broke nothing
    # The per-sample record behind the counts (clean, attacked and broken masks, each member's
    # seconds): what a shard of a sharded evaluation saves, and what merge_ensembles adds up.
    per_sample: dict = field(default_factory=dict, repr=False)
    # (batch_size, seed, timesteps) of a run_ensemble run: with these, each member's attack on a
    # chunk is reproducible exactly (diagnostics reuse the first member's; None after a merge).
    settings: tuple | None = None

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
            "budget_seconds": self.budget,
            "patience": self.patience,
            "members_run": sum(not m.skipped for m in self.members),
            "members": [m.to_json(self.samples) for m in self.members],
            # Which of the first `samples` test images survived every member, so that two presets
            # or two networks can be compared image by image.
            "robust_samples": torch.nonzero(self.robust_mask).flatten().tolist(),
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
    return as_float(data.images, device), data.labels.to(device)


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
    checkpoint: Checkpoint | None = None,
    part: str = "ensemble",
    budget: float | None = None,
    shard: World | None = None,
    patience: int | None = None,
) -> EnsembleResult:
    """Run ``members`` against ``target`` on ``data``; returns the per-sample worst case.

    ``source`` is the ANN that transfer members attack (required only if there is one).

    The samples are cut into fixed chunks of ``batch_size`` in test-set order. Chunk by chunk, every
    member in turn attacks the samples of the chunk still to be attacked, seeded per member. What
    happens to a sample therefore depends only on its chunk, never on how many processes share the
    work: with ``world`` (several processes under torchrun) each process attacks its own chunks and
    the per-sample results are added up, giving exactly the single-process counts. Only one chunk
    is held as float images and adversarial examples at a time, so memory does not grow with the
    number of samples beyond a few booleans per sample.

    With ``checkpoint``, the per-sample results so far are saved under ``part`` (one file per
    process) periodically and on a requested stop; a resumed run skips the chunks already done.

    ``budget`` (seconds) caps the time: after the first chunk, the ensemble keeps the longest
    prefix of ``members`` whose time on that chunk, times the number of chunks, fits the budget
    (at least the first member), and drops the rest for every sample, the first chunk's included,
    so that all samples face the same members. Order presets strongest first for this reason.

    ``patience`` stops each chunk once that many members in a row broke none of its samples: the
    members after do not attack it (each member's ``spared`` counts the robust samples it was
    spared). The rule reads one chunk at a time, so processes and shards still add up to exactly
    the one-process result; presets order their members strongest and most different first.

    ``shard`` (``World(index, count)``, no process group needed) attacks only the chunks that shard
    owns, as a torchrun rank would, and returns their counts alone; :func:`merge_ensembles` adds
    the shards' ``per_sample`` records up to exactly the single-process result.
    """
    check_eps(eps)
    if not members:
        raise ConfigError("an attack ensemble needs at least one member")
    if any(m.attack.name == "transfer" for m in members) and source is None:
        raise ConfigError(
            "a transfer member needs the source ANN (ann.ir in the compile directory)"
        )
    current = world or World()
    if shard is not None and current.distributed:
        raise ConfigError("a shard runs as one process; torchrun shares one evaluation instead")
    owner = shard or current
    if patience is not None and (patience < 1 or exhaustive):
        raise ConfigError("patience counts members that broke nothing in a row: give at least 1, "
                          "and none with exhaustive runs (every member attacks every sample)")
    if budget is not None and (budget <= 0 or owner.distributed):
        raise ConfigError("a time budget must be positive and needs a single process and shard "
                          "(each would cut the ensemble at a different member)")
    samples = len(data)
    chunks = [
        (start, min(start + batch_size, samples))
        for i, start in enumerate(range(0, samples, batch_size))
        if owner.owns(i)
    ]
    part = part if not current.distributed else f"{part}.rank{current.rank}"
    # Per sample: correct when clean; per member, attacked and broken by it.
    state = {
        "chunks_done": 0,
        "clean": torch.zeros(samples, dtype=torch.bool),
        "attacked": torch.zeros(len(members), samples, dtype=torch.bool),
        "broken": torch.zeros(len(members), samples, dtype=torch.bool),
        "broken_at_pass": torch.full((len(members), samples), -1, dtype=torch.int32),
        "spared": torch.zeros(len(members), samples, dtype=torch.bool),
        "seconds": [0.0] * len(members),
        "kept": len(members),
    }
    saved = checkpoint.load(part) if checkpoint is not None else None
    if saved is not None:
        _check_resumable(saved, state, part)
        state = {"kept": len(members), "broken_at_pass": state["broken_at_pass"],
                 "spared": state["spared"]} | saved
        restore_rng(saved["rng"])
    with frozen(target), frozen(source), deferring_signals(checkpoint):
        bar = progress_bar(chunks, desc=desc, leave=False, initial=state["chunks_done"],
                   disable=None if current.is_main else True)
        for position, (lo, hi) in enumerate(chunks):
            if position < state["chunks_done"]:
                continue
            def member_done(index: int, robust: torch.Tensor, lo=lo) -> None:
                # One chunk can take minutes under a strong preset: say which member it is at
                # (a log file gets this line at most once per progress interval).
                kept = members[: state["kept"]]
                bar.set_postfix(member=f"{index + 1}/{len(kept)} {kept[index].label}",
                                robust=f"{int(_robust_mask(state)[:lo].sum()) + int(robust.sum())}"
                                       f"/{lo + len(robust)}")

            def member_started(index: int) -> None:
                kept = members[: state["kept"]]
                bar.set_postfix(member=f"{index + 1}/{len(kept)} {kept[index].label} (running)")

            before = _chunk_snapshot(state, lo, hi)
            try:
                _attack_chunk(state, members[: state["kept"]], target, source, data, lo, hi, eps,
                              timesteps, num_classes, batch_size, exhaustive, seed, member_done,
                              member_started, patience)
            except Interrupted as stop:
                if stop.forced and checkpoint is not None:
                    # Cut short mid-chunk: save every chunk done so far (this one is redone).
                    _restore_chunk(state, before, lo, hi)
                    checkpoint.save(part, state | {"rng": before["rng"]})
                raise
            if position == 0 and budget is not None:
                _apply_budget(state, budget, len(chunks))
            state["chunks_done"] = position + 1
            bar.update(1)
            bar.set_postfix(robust=f"{int(_robust_mask(state)[:hi].sum())}/{hi}")
            if checkpoint is not None:
                checkpoint.step(part, lambda: state | {"rng": rng_state()},
                                f"after {position + 1} of {len(chunks)} chunks of {desc}")
        bar.close()
    seconds = state["seconds"]
    if current.distributed:
        seconds = sum_over_processes(torch.tensor(seconds, dtype=torch.float64), current).tolist()
    record = {"clean": _combine(state["clean"], current),
              "attacked": _combine(state["attacked"], current),
              "broken": _combine(state["broken"], current),
              "broken_at_pass": _combine_passes(state["broken_at_pass"], current),
              "spared": _combine(state["spared"], current),
              "seconds": list(seconds), "kept": state["kept"]}
    result = _summarize(record, members, eps, exhaustive, budget)
    result.patience = patience
    result.settings = (batch_size, seed, timesteps) if shard is None else None
    return result


def first_member_robust(result: EnsembleResult, samples: int, batch_size: int, seed: int,
                        timesteps: int | None) -> torch.Tensor | None:
    """What ``run_ensemble`` with ``result``'s first member alone would return as its robust mask
    on the first ``samples`` samples, when that is certain without running it: the first member
    attacked every clean-correct sample, chunk by chunk with the run's seed, and the same chunks,
    seed and T reproduce it exactly. None when the chunks would differ (a head that is not a whole
    number of chunks), the settings differ, or the result came from merged shards."""
    if result.settings != (batch_size, seed, timesteps) or not result.members:
        return None
    if samples != result.samples and samples % batch_size:
        return None
    first = result.members[0]
    if first.broken_mask is None or first.skipped:
        return None
    clean = result.per_sample["clean"][:samples]
    return clean & ~first.broken_mask[:samples]


def merge_ensembles(records: list[dict], members: list[Member], eps: float,
                    exhaustive: bool = False, patience: int | None = None) -> EnsembleResult:
    """The result of the shards whose ``per_sample`` records are ``records`` (every chunk attacked
    by exactly one of them): the single-process result, count for count."""
    shapes = {tuple(r["attacked"].shape) for r in records}
    if shapes != {(len(members), len(records[0]["clean"]))}:
        raise ConfigError(f"the shards' records cover {sorted(shapes)} (members, samples), this "
                          f"ensemble ({len(members)}, {len(records[0]['clean'])})")
    overlap = torch.stack([r["attacked"].any(dim=0) | r["clean"] for r in records]).sum(dim=0)
    if bool((overlap > 1).any()):
        raise ConfigError("two shards attacked the same samples: merge one shard per index")
    merged = {
        "clean": torch.stack([r["clean"] for r in records]).any(dim=0),
        "attacked": torch.stack([r["attacked"] for r in records]).any(dim=0),
        "broken": torch.stack([r["broken"] for r in records]).any(dim=0),
        # each sample was attacked in one shard; -1 in the others
        "broken_at_pass": torch.stack([r["broken_at_pass"] for r in records]).amax(dim=0),
        "spared": torch.stack([r["spared"] for r in records]).any(dim=0),
        "seconds": [sum(r["seconds"][i] for r in records) for i in range(len(members))],
        "kept": len(members),
    }
    result = _summarize(merged, members, eps, exhaustive, None)
    result.patience = patience
    return result


def _summarize(record: dict, members: list[Member], eps: float, exhaustive: bool,
               budget: float | None) -> EnsembleResult:
    """Counts per member from per-sample masks: a sample is robust until a member breaks it."""
    clean, attacked, broken = record["clean"], record["attacked"], record["broken"]
    robust = clean.clone()
    results = []
    for index, member in enumerate(members):
        robust &= ~broken[index]
        results.append(
            MemberResult(
                member,
                attacked=int(attacked[index].sum()),
                broken=int(broken[index].sum()),
                robust_after=int(robust.sum()),
                seconds=record["seconds"][index],
                standalone_robust=int((clean & ~broken[index]).sum()) if exhaustive else None,
                broken_mask=broken[index].clone(),
                skipped=index >= record["kept"],
                broken_at=record["broken_at_pass"][index].clone(),
                spared=int(record["spared"][index].sum()),
            )
        )
    return EnsembleResult(eps, len(clean), int(clean.sum()), robust, results, exhaustive, budget,
                          per_sample=record)


def _chunk_snapshot(state: dict, lo: int, hi: int) -> dict:
    """What a chunk changes in the ensemble's state, as it was before the chunk."""
    return {"clean": state["clean"][lo:hi].clone(), "attacked": state["attacked"][:, lo:hi].clone(),
            "broken": state["broken"][:, lo:hi].clone(),
            "broken_at_pass": state["broken_at_pass"][:, lo:hi].clone(),
            "spared": state["spared"][:, lo:hi].clone(), "seconds": list(state["seconds"]),
            "rng": rng_state()}


def _restore_chunk(state: dict, before: dict, lo: int, hi: int) -> None:
    state["clean"][lo:hi] = before["clean"]
    state["attacked"][:, lo:hi] = before["attacked"]
    state["broken"][:, lo:hi] = before["broken"]
    state["broken_at_pass"][:, lo:hi] = before["broken_at_pass"]
    state["spared"][:, lo:hi] = before["spared"]
    state["seconds"] = list(before["seconds"])


def _apply_budget(state: dict, budget: float, chunks: int) -> None:
    """Keep the members whose projected time over all ``chunks`` fits ``budget``; forget what the
    others did on the first chunk."""
    total, kept = 0.0, 0
    for seconds in state["seconds"][: state["kept"]]:
        total += seconds * chunks
        if total > budget and kept > 0:
            break
        kept += 1
    state["kept"] = kept
    state["attacked"][kept:] = False
    state["broken"][kept:] = False
    state["broken_at_pass"][kept:] = -1
    state["spared"][kept:] = False
    state["seconds"][kept:] = [0.0] * (len(state["seconds"]) - kept)


def _attack_chunk(
    state: dict,
    members: list[Member],
    target: GraphExecutor,
    source: GraphExecutor | None,
    data: Dataset,
    lo: int,
    hi: int,
    eps: float,
    timesteps: int | None,
    num_classes: int,
    batch_size: int,
    exhaustive: bool,
    seed: int,
    member_done: Callable[[int, torch.Tensor], None] | None = None,
    member_started: Callable[[int], None] | None = None,
    patience: int | None = None,
) -> None:
    """Clean predictions and every member's attack on samples ``lo:hi``, recorded into ``state``;
    ``member_started(index)`` before and ``member_done(index, robust)`` after each member, with
    the chunk's samples still robust. With ``patience``, the members after that many in a row
    that broke nothing here do not attack (``state["spared"]`` marks the samples they spared)."""
    device = next(target.parameters()).device
    x, y = as_tensors(data.slice(lo, hi), device)
    clean = (predictions(target, x, timesteps, batch_size) == y).cpu()
    state["clean"][lo:hi] = clean
    robust = clean.clone()
    quiet = 0  # members in a row that broke nothing in this chunk
    for index, member in enumerate(members):
        pending = (clean if exhaustive else robust).nonzero().flatten()
        if patience is not None and quiet >= patience:
            state["spared"][index, lo + pending] = True
            continue
        started = time.perf_counter()
        if member_started is not None:
            member_started(index)
        state["attacked"][index, lo + pending] = True
        if len(pending) and eps > 0:
            idx = pending.to(device)
            x_adv, first_wrong = _attack_batch(
                member, target, source, x[idx], y[idx], eps, timesteps, num_classes, seed + index
            )
            survived = (predictions(target, x_adv, timesteps, batch_size) == y[idx]).cpu()
            state["broken"][index, lo + pending[~survived]] = True
            if first_wrong is not None:
                state["broken_at_pass"][index, lo + pending[~survived]] = \
                    first_wrong.cpu().to(torch.int32)[~survived]
            robust[pending[~survived]] = False
            quiet = 0 if bool((~survived).any()) else quiet + 1
        state["seconds"][index] += time.perf_counter() - started
        if member_done is not None:
            member_done(index, robust)


def _robust_mask(state: dict) -> torch.Tensor:
    return state["clean"] & ~state["broken"].any(dim=0)


def _check_resumable(saved: dict, fresh: dict, part: str) -> None:
    if saved["attacked"].shape != fresh["attacked"].shape:
        raise ConfigError(
            f"the checkpoint's {part} covers {tuple(saved['attacked'].shape)} (members, samples), "
            f"this run {tuple(fresh['attacked'].shape)}; rerun the interrupted command unchanged"
        )


def _combine_passes(passes: torch.Tensor, world: World) -> torch.Tensor:
    """Per-sample pass indices (-1 where a process did not attack the sample), across processes."""
    if not world.distributed:
        return passes
    return sum_over_processes((passes + 1).to(torch.int64), world).to(torch.int32) - 1


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The member's adversarial examples for ``x``, and per sample the first of the member's
    forward passes that the spiking network misclassified it in (None where those passes are not
    the spiking network's iterates: transfer, the ANN proxy, Square, FAB-T)."""
    if member.attack.name == "transfer":
        model = AttackedModel(source, None, GradientMode())
    else:
        model = AttackedModel(target, timesteps, member.mode or target.gradient_mode)
        # (Square and FAB-T query subsets and side points: their passes are not iterations)
        if model.mode.kind != "ann_proxy" and member.attack.name not in ("square", "fab-t"):
            model.watch(y)
    attack = member.attack.build(model, eps, num_classes, seed)
    devices = [x.device] if x.device.type == "cuda" else []
    # torchattacks reseeds the global generator (APGD, Square): keep that from leaking out.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        x_adv = attack(x, y).detach()
    # A member may never leave the threat model: project once more, whatever the library did.
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv, model.first_wrong_passes()
