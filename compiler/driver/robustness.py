"""Robustness evaluation of a compiled SNN against the ANN it came from: what ``spikeshield eval`` runs.

Both networks are attacked on the same test samples at the same ε: the SNN with the preset's ensemble
(:mod:`spikeshield.runtime.attacks`) followed by the gradient-masking diagnostics
(:mod:`spikeshield.runtime.diagnostics`), the ANN with the members that differ on a network without
spikes (its exact gradient, plus any APGD / Square members of the preset).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from spikeshield.compiler.driver.eval_shards import check_shards, shard_fingerprint, shard_record
from spikeshield.compiler.driver.manifest import publish_files, require_verified
from spikeshield.compiler.driver.model_io import check_model_data
from spikeshield.compiler.driver.outputs import output_lock
from spikeshield.compiler.ir.errors import ConfigError, DataError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import read_json_file
from spikeshield.runtime import distributed
from spikeshield.runtime.attacks import (
    DEFAULT_PRESET,
    PRESET_PATIENCE,
    PRESETS,
    base_attack,
    members_for_ann,
    preset_members,
)
from spikeshield.runtime.checkpoint import Checkpoint
from spikeshield.runtime.data import Dataset
from spikeshield.runtime.device import resolve_device
from spikeshield.runtime.diagnostics import (
    CURVE_STEPS,
    QUICK_CURVE_STEPS,
    check_sparse_above_ann,
    diagnose,
)
from spikeshield.runtime.distributed import World
from spikeshield.runtime.ensemble import check_eps, merge_ensembles, run_ensemble
from spikeshield.runtime.executor import GraphExecutor

DEFAULT_EVAL_SAMPLES = 1000


def default_eps(input_shape: tuple[int, ...]) -> float:
    """The usual L-inf budget: 0.1 for one-channel images (MNIST family), 8/255 for colour images."""
    return 0.1 if input_shape[0] == 1 else 8 / 255


@dataclass
class RobustnessConfig:
    """Settings of ``spikeshield eval`` (and of the robustness step of ``compile``)."""

    preset: str = DEFAULT_PRESET
    eps: float | None = None  # None: default_eps(input shape)
    samples: int | None = None  # first N test samples; None: DEFAULT_EVAL_SAMPLES or all if fewer
    batch_size: int = 256
    base_attack: str = "pgd"
    exhaustive: bool = False
    # One chunk at the default batch size: the ensemble's first member (adaptive's APGD-CE-100)
    # on those samples is then exactly a point of the convergence curve, and is reused.
    curve_samples: int = 256
    seed: int = 0
    device: str = "auto"
    budget: float | None = None  # seconds for the SNN ensemble (see run_ensemble)
    # Stop each chunk of the SNN ensemble after this many members in a row broke nothing there;
    # None: the preset's own (PRESET_PATIENCE), 0: every member attacks.
    patience: int | None = None

    def resolved_patience(self) -> int | None:
        """The patience the SNN ensemble runs with (None: every member attacks)."""
        if self.exhaustive:
            return None
        chosen = PRESET_PATIENCE.get(self.preset) if self.patience is None else self.patience
        return chosen or None

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.eps is not None:
            check_eps(self.eps)
        if self.samples is not None and self.samples <= 0:
            raise ConfigError(f"the number of samples must be positive, got {self.samples}")
        if self.batch_size <= 0 or self.curve_samples <= 0:
            raise ConfigError("batch size and curve samples must be positive")
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"--budget is in seconds and must be positive, got {self.budget}")
        if self.patience is not None and self.patience < 0:
            raise ConfigError(f"--patience counts members and must be 0 (off) or more, got "
                              f"{self.patience}")
        base_attack(self.base_attack)


def evaluate_robustness(
    snn: Graph,
    ann: Graph | None,
    test: Dataset,
    num_classes: int,
    config: RobustnessConfig,
    world: World | None = None,
    checkpoint: Checkpoint | None = None,
    shard: World | None = None,
    shards: list[dict] | None = None,
) -> dict[str, Any]:
    """Attack ``snn`` (and ``ann``, if given) on the first samples of ``test``; the report as a dict.

    With ``world`` (several processes under torchrun) the ensembles are shared out chunk by chunk
    and give the single-process counts exactly; the diagnostics, which are cheap next to them, run
    in every process. With ``checkpoint``, both ensembles save their partial counts there and
    resume from them. With ``shard`` (``World(index, count)``) only that shard's chunks are
    attacked and the shard's record is returned instead of a report (``eval_shards``); with
    ``shards`` (every shard's record) nothing is attacked: the records are merged into the report
    one process would have written."""
    cfg = config
    cfg.validate()
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    input_shape = tuple(snn.op(snn.input_names[0]).shape)
    eps = default_eps(input_shape) if cfg.eps is None else cfg.eps
    if cfg.samples is not None and cfg.samples > len(test):
        raise DataError(
            f"asked for {cfg.samples} samples but the test split has {len(test)}; "
            f"use --n {len(test)} or fewer"
        )
    data = test.head(min(DEFAULT_EVAL_SAMPLES, len(test)) if cfg.samples is None else cfg.samples)
    spec = snn.run_spec()
    timesteps = spec.timesteps
    if not timesteps:
        raise ConfigError(f"graph {snn.name!r} records no timesteps; is it a compiled SNN?")
    torch.manual_seed(cfg.seed)
    members = preset_members(cfg.preset, base_attack(cfg.base_attack))
    target = GraphExecutor(snn, encoding=spec.encoding).to(device)
    source = GraphExecutor(ann).to(device) if ann is not None else None
    if source is None:
        members = [m for m in members if m.attack.name != "transfer"]
    common = {"batch_size": cfg.batch_size, "seed": cfg.seed}
    identity = shard_fingerprint(snn, ann, data, cfg, eps, device)
    if shards is not None:
        check_shards(shards, identity)
        result = merge_ensembles([s["snn"] for s in shards], members, eps, cfg.exhaustive,
                                 cfg.resolved_patience())
    else:
        result = run_ensemble(target, data, members, eps, timesteps, num_classes, source=source,
                              exhaustive=cfg.exhaustive, desc=f"{cfg.preset} ensemble on the SNN",
                              world=world, checkpoint=checkpoint, part="snn_ensemble",
                              budget=cfg.budget, shard=shard, patience=cfg.resolved_patience(),
                              **common)
    ann_members = members_for_ann(members, base_attack(cfg.base_attack))
    if shard is not None:
        ann_result = None if source is None else run_ensemble(
            source, data, ann_members, eps, None, num_classes, shard=shard,
            desc=f"{cfg.preset} ensemble on the ANN (shard {shard.rank + 1}/{shard.size})",
            **common)
        return shard_record(shard, identity, result, ann_result)
    diagnostics = diagnose(
        target,
        data,
        result,
        timesteps,
        num_classes,
        source=source,
        curve_samples=cfg.curve_samples,
        curve_steps=QUICK_CURVE_STEPS if cfg.preset == "quick" else CURVE_STEPS,
        **common,
    )
    report: dict[str, Any] = {
        "eps": eps,
        "preset": cfg.preset,
        "base_attack": cfg.base_attack,
        "samples": len(data),
        "timesteps": timesteps,
        "config": asdict(cfg) | {"eps": eps},
        "device": str(device),
        "snn": result.to_json() | {"diagnostics": diagnostics.to_json()},
    }
    if source is not None:
        if shards is not None:
            ann_result = merge_ensembles([s["ann"] for s in shards], ann_members, eps)
        else:
            ann_result = run_ensemble(source, data, ann_members, eps, None, num_classes,
                                      desc=f"{cfg.preset} ensemble on the ANN", world=world,
                                      checkpoint=checkpoint, part="ann_ensemble", **common)
        report["ann"] = ann_result.to_json()
        report["ann"]["pgd_robust_accuracy"] = _ann_pgd(ann_result)
        check_sparse_above_ann(diagnostics, result.robust_accuracy, ann_result.robust_accuracy,
                               sparse=is_pruned(snn), confirmed=confirms(cfg.preset, result))
        report["snn"]["diagnostics"] = diagnostics.to_json()
        # The SNN's worst case as a fraction of the ANN's PGD robust accuracy (the yardstick).
        ann_pgd = report["ann"]["pgd_robust_accuracy"]
        report["retention"] = result.robust_accuracy / ann_pgd if ann_pgd else None
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["peak_memory"] = peak_memory(device)
    return report


def confirms(preset: str, result) -> bool:
    """Whether an ensemble result may confirm a suspected robustness: the strong preset with
    every member run (members a ``--budget`` skipped confirm nothing)."""
    return preset == "strong" and not any(m.skipped for m in result.members)


def is_pruned(graph: Graph) -> bool:
    """Whether any weighted layer of ``graph`` has pruned synapses (a mask with a zero)."""
    for name in graph.synaptic_nodes():
        mask = getattr(graph.op(name), "mask", None)
        if mask is not None and bool((mask == 0).any()):
            return True
    return False


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """The process's peak resident memory so far (MiB; data loading included) and, on CUDA, the
    peak of memory allocated by torch on the device. The ensemble holds one chunk of images at a
    time, so neither grows with the number of samples attacked (BENCHMARKS.md)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_mib = rss / (1 << 20) if sys.platform == "darwin" else rss / 1024
    cuda = None
    if device.type == "cuda":
        cuda = round(torch.cuda.max_memory_allocated(device) / (1 << 20), 1)
    return {"host_rss_mib": round(rss_mib, 1), "cuda_allocated_mib": cuda}


def _ann_pgd(result) -> float | None:
    """The ANN's robust accuracy under its first (PGD / base) member alone."""
    first = result.members[0] if result.members else None
    return first.robust_after / result.samples if first is not None else None


ROBUSTNESS_FILES = ("robustness.json", "robustness.md", "robustness.png")
DEFAULT_IR = "snn.ir"


def robustness_files(ir: str = DEFAULT_IR) -> tuple[str, ...]:
    """The report files for the graph ``ir`` of a compile directory: ``robustness.*`` for snn.ir,
    ``robustness_<target>.*`` for a target-adapted ``snn_<target>.ir`` (``robustness_<stem>.*``
    for any other name), so that attacking the deployed form never overwrites the SNN's report."""
    if ir == DEFAULT_IR:
        return ROBUSTNESS_FILES
    stem = Path(ir).stem
    tag = stem[4:] if stem.startswith("snn_") else stem
    return tuple(f"robustness_{tag}{Path(name).suffix}" for name in ROBUSTNESS_FILES)


def write_robustness(report: dict[str, Any], directory: str | os.PathLike,
                     ir: str = DEFAULT_IR) -> list[Path]:
    """Write the report of graph ``ir`` (:func:`robustness_files`) into ``directory``, all or
    nothing."""
    from spikeshield.compiler.driver.robustness_report import render_markdown, render_plot

    directory = Path(directory)
    json_name, md_name, png_name = robustness_files(ir)
    files = {
        json_name: (json.dumps(report, indent=2, default=str) + "\n").encode(),
        md_name: render_markdown(report).encode(),
        png_name: render_plot(report),
    }
    return publish_files(directory, files)




def recorded_data_spec(directory: Path) -> str:
    """The data spec a compile directory was made with (its report.json), or a ConfigError."""
    recorded = {}
    if (directory / "report.json").is_file():
        recorded = read_json_file(directory / "report.json")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("data_spec"), str):
        raise ConfigError(f"{directory}/report.json records no data spec; pass --data")
    return recorded["data_spec"]


def evaluate_directory(
    directory: str | os.PathLike,
    data: str | None = None,
    config: RobustnessConfig | None = None,
    checkpoint: Checkpoint | None = None,
    skip_verify: bool = False,
    ir: str = DEFAULT_IR,
    shard: World | None = None,
    shards: list[dict] | None = None,
) -> dict[str, Any]:
    """Evaluate an SNN of a compile directory (against its ann.ir, if present) and write its
    report there (:func:`robustness_files`); with ``shard``, attack that shard's samples only and
    return its record (nothing is written into the directory); with ``shards``, merge them into
    the report (``eval_shards``). ``ir`` names the graph: snn.ir, or the
    target-adapted ``snn_<target>.ir`` that ``compile``/``export --target`` wrote. ``data``
    defaults to the spec the directory was compiled with. ``checkpoint``: see
    :func:`evaluate_robustness`. The directory must match its manifest (unless ``skip_verify``)
    and is locked against other jobs meanwhile."""

    cfg = config or RobustnessConfig()
    cfg.validate()
    directory = Path(directory)
    ir = check_ir_name(directory, ir)
    if not distributed.world().is_main:
        return _evaluate_directory(directory, data, cfg, checkpoint, ir)
    with output_lock(directory):
        verified = require_verified(directory, skip_verify, robustness_files(ir))
        return _evaluate_directory(verified, data, cfg, checkpoint, ir, shard, shards)


def check_ir_name(directory: Path, ir: str) -> str:
    """``ir`` as the name of a graph file of ``directory`` (a plain ``*.ir`` name), refused
    otherwise with what the directory holds."""
    if Path(ir).name != ir or not ir.endswith(".ir") or ir == "ann.ir":
        raise ConfigError(f"--ir takes the name of an SNN graph in the compile directory "
                          f"(snn.ir or snn_<target>.ir), got {ir!r}")
    if not (directory / ir).is_file():
        held = sorted(p.name for p in directory.glob("snn*.ir")) if directory.is_dir() else []
        if ir == DEFAULT_IR and not held:
            raise ConfigError(
                f"{directory} holds no compiled SNN (snn.ir); run `spikeshield compile "
                f"MODEL --out {directory}` first"
            )
        raise ConfigError(f"{directory} holds no {ir}; it holds {', '.join(held) or 'no SNN'}"
                          "; `compile --target T --export nir` writes snn_<T>.ir")
    return ir


def _evaluate_directory(directory: Path, data: str | None, cfg: RobustnessConfig,
                        checkpoint: Checkpoint | None, ir: str = DEFAULT_IR,
                        shard: World | None = None,
                        shards: list[dict] | None = None) -> dict[str, Any]:
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.ir.ops import IF
    from spikeshield.compiler.ir.serialize import load_graph

    snn_path = directory / ir
    snn = load_graph(snn_path)
    if not snn.nodes_of(IF):
        raise ConfigError(f"{snn_path} is not a spiking network (no IF layers)")
    ann = load_graph(directory / "ann.ir") if (directory / "ann.ir").is_file() else None
    if data is None:
        data = recorded_data_spec(directory)
    splits = load_data(data, seed=cfg.seed)
    check_model_data(snn, splits)
    if checkpoint is not None:
        checkpoint.bind_data(splits.digest())
    current = distributed.world()
    report = evaluate_robustness(snn, ann, splits.test, splits.num_classes, cfg, current, checkpoint,
                                 shard, shards)
    if shard is not None:
        return report  # a shard's record, not a report
    report["data"] = data
    report["processes"] = current.size
    report["shards"] = len(shards) if shards is not None else 1
    report["graph"] = ir
    if current.is_main:
        write_robustness(report, directory, ir)
    return report


def eval_chunks(directory: str | os.PathLike, data: str | None, config: RobustnessConfig) -> int:
    """How many chunks (batches) the ensemble of ``spikeshield eval`` deals out to processes."""
    from spikeshield.compiler.driver.data import load_data

    config.validate()
    test = load_data(data or recorded_data_spec(Path(directory)), seed=config.seed).test
    samples = config.samples or min(DEFAULT_EVAL_SAMPLES, len(test))
    return -(-min(samples, len(test)) // config.batch_size)
