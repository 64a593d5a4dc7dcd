"""The compile pipeline: a robust ANN in, a calibrated spiking network and its report out.

``compile_model`` is what ``spikeshield compile`` runs: lower the model, check it against the data,
fold batch norm, convert ReLU to IF, calibrate thresholds, fold spike amplitudes into weights,
robustly finetune the SNN (selecting on the validation split), then measure ANN and SNN clean
accuracy on the test split, attack both under a preset, and write the artifacts.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikeshield.compiler.ir.atomic import atomic_directory
from spikeshield.compiler.driver.outputs import claim_output
from spikeshield.runtime.checkpoint import Checkpoint
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.limits import check_timesteps
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.driver.manifest import write_manifest
from spikeshield.compiler.driver.model_io import check_model_data, load_model
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.compiler.passes.calibrate_thresholds import (
    CALIBRATION_MODES,
    default_threshold_scale,
)
from spikeshield.compiler.passes.convert_relu_to_if import THRESHOLD_MODES
from spikeshield.compiler.passes.finetune_robust import FinetuneConfig
from spikeshield.compiler.passes.fold_batchnorm import BN_MODES
from spikeshield.runtime.pruning import PruneConfig, parse_layers
from spikeshield.compiler.ir.ops.neurons import RESET_MODES
from spikeshield.compiler.driver.profile import profile_graph, profile_summary, write_profile
from spikeshield.compiler.driver.report import write_reports
from spikeshield.compiler.driver.robustness import (
    RobustnessConfig,
    default_eps,
    evaluate_robustness,
    write_robustness,
)
from spikeshield.compiler.ir.serialize import save_graph
from spikeshield.runtime.data import DataSplits
from spikeshield.compiler.driver.data import load_data
from spikeshield.runtime.device import resolve_device
from spikeshield.runtime.distributed import world
from spikeshield.runtime.energy import energy_model
from spikeshield.runtime.evaluate import evaluate_graph
from spikeshield.runtime.executor import ENCODINGS, GraphExecutor


PRUNE_STAGES = ("ann", "snn")


@dataclass
class CompileConfig:
    """Every knob of ``spikeshield compile``; defaults are the recommended settings."""

    timesteps: int = 8
    reset: str = "zero"
    threshold_mode: str = "layer"
    batchnorm: str = "fold"
    calibration: str = "percentile"
    percentile: float = 99.7
    threshold_scale: float | None = None  # None: default_threshold_scale(timesteps)
    calibration_batches: int = 11
    calibration_timesteps: int | None = None  # default: the same as timesteps
    batch_size: int = 64
    eval_samples: int | None = None  # default: the whole test split
    encoding: str = "direct"
    device: str = "auto"
    seed: int = 0
    # Stage 3: robust finetuning of the SNN ("none" skips it).
    finetune: str = "trades"
    finetune_epochs: int = 10
    eps_train: float | None = None  # None: a quarter of the evaluation eps (train small, test large)
    finetune_attack: str = "rfgsm"
    finetune_lr: float = 1e-3
    finetune_max_train: int | None = None
    # Robust pruning (0 skips it): of the ANN before conversion, or of the calibrated SNN.
    prune_sparsity: float = 0.0
    prune_method: str = "hydra"
    prune_budget: str = "global"
    prune_dense: str = ""  # comma-separated: first, last, layer names
    prune_epochs: int = 3
    prune_stage: str = "ann"
    # Robustness of the ANN and the SNN under an attack preset ("none" skips it).
    robustness: str = "quick"
    eps: float | None = None  # None: default_eps(input shape)
    # Energy and memory profile of the SNN (profile.json/md/png) on the first profile_samples test
    # images; the energy preset is fp32 or int8 (see spikeshield.runtime.energy).
    profile: bool = True
    profile_samples: int = 1000
    energy: str = "fp32"
    # Exports written into the output directory ("" for none) and the hardware target they obey.
    export: str = ""
    target: str = "generic"

    def validate(self) -> None:
        from spikeshield.backends.targets import load_target

        check_timesteps(self.timesteps)
        if self.calibration_timesteps is not None:
            check_timesteps(self.calibration_timesteps, "--calibration-timesteps")
        load_target(self.target)  # an unknown target fails now, not after the work
        if self.calibration_timesteps is not None and self.calibration_timesteps <= 0:
            raise ConfigError(f"calibration timesteps must be >= 1, got {self.calibration_timesteps}")
        choices = {
            "reset": (self.reset, RESET_MODES),
            "threshold mode": (self.threshold_mode, THRESHOLD_MODES),
            "batchnorm": (self.batchnorm, BN_MODES),
            "calibration": (self.calibration, CALIBRATION_MODES),
            "encoding": (self.encoding, ENCODINGS),
        }
        for what, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
        if self.threshold_scale is not None and not self.threshold_scale > 0:
            raise ConfigError(f"threshold scale must be positive, got {self.threshold_scale}")
        if self.batch_size <= 0 or self.calibration_batches <= 0:
            raise ConfigError("batch size and calibration batches must be positive")
        if self.eval_samples is not None and self.eval_samples <= 0:
            raise ConfigError(f"eval samples must be positive, got {self.eval_samples}")
        if self.finetune != "none":
            self.finetune_config(0.1).validate()
        self.prune_config(0.1).validate()
        if self.prune_stage not in PRUNE_STAGES:
            raise ConfigError(f"prune stage must be one of {', '.join(PRUNE_STAGES)}, "
                              f"got {self.prune_stage!r}")
        if self.robustness != "none":
            self.robustness_config().validate()
        if self.profile:
            energy_model(self.energy)
            if self.profile_samples <= 0:
                raise ConfigError(f"profile samples must be positive, got {self.profile_samples}")
        if self.export:
            from spikeshield.backends.targets import load_target
            from spikeshield.compiler.driver.export import parse_formats

            parse_formats(self.export)
            load_target(self.target)

    def evaluation_eps(self, input_shape: tuple[int, ...]) -> float:
        return default_eps(input_shape) if self.eps is None else self.eps

    def training_eps(self, eval_eps: float) -> float:
        """The budget of the robust training stages (finetuning, pruning): default eps / 4."""
        return eval_eps / 4 if self.eps_train is None else self.eps_train

    def finetune_config(self, eval_eps: float) -> FinetuneConfig:
        eps_train = self.training_eps(eval_eps)
        return FinetuneConfig(objective=self.finetune, epochs=self.finetune_epochs,
                              eps_train=eps_train, inner_attack=self.finetune_attack,
                              lr=self.finetune_lr, batch_size=self.batch_size,
                              timesteps=self.timesteps, max_train=self.finetune_max_train,
                              seed=self.seed)

    def prune_config(self, eval_eps: float) -> PruneConfig:
        """Pruning under the finetuning objective and budget (``eps_train``, default eps / 4);
        on the SNN with the one-step R-FGSM inner attack of finetuning."""
        snn = self.prune_stage == "snn"
        return PruneConfig(sparsity=self.prune_sparsity, method=self.prune_method,
                           budget=self.prune_budget, dense_layers=parse_layers(self.prune_dense),
                           score_epochs=self.prune_epochs, finetune_epochs=self.prune_epochs,
                           objective=self.finetune if self.finetune != "none" else "trades",
                           eps=self.training_eps(eval_eps), inner_attack=self.finetune_attack if snn else "pgd",
                           lr=self.finetune_lr if snn else 0.01, batch_size=self.batch_size,
                           max_train=self.finetune_max_train, seed=self.seed)

    def robustness_config(self) -> RobustnessConfig:
        return RobustnessConfig(preset=self.robustness, eps=self.eps,
                                samples=self.eval_samples,
                                seed=self.seed, device=self.device)


@dataclass
class CompileResult:
    ann: Graph
    snn: Graph
    report: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None


def threshold_scale(cfg: CompileConfig) -> float:
    """The threshold factor in force: the configured one, or the T-dependent default."""
    return cfg.threshold_scale or default_threshold_scale(cfg.timesteps)


def conversion_pipeline(cfg: CompileConfig, calibration_data: list[torch.Tensor], device) -> list:
    """The pass list that turns an ANN graph into a calibrated SNN graph."""
    return [
        ("fold_batchnorm", {"mode": cfg.batchnorm}),
        ("convert_relu_to_if", {"reset": cfg.reset, "threshold": cfg.threshold_mode}),
        ("calibrate_thresholds", {
            "data": calibration_data,
            "timesteps": cfg.calibration_timesteps or cfg.timesteps,
            "percentile": cfg.percentile,
            "scale": threshold_scale(cfg),
            "mode": cfg.calibration,
            "batches": cfg.calibration_batches,
            "device": device,
        }),
        ("fold_scales", {}),
    ]


def compile_model(
    model: nn.Module | Graph | str | os.PathLike,
    data: str | DataSplits = "mnist5k",
    config: CompileConfig | None = None,
    out: str | os.PathLike | None = None,
    checkpoint: Checkpoint | None = None,
    force: bool = False,
) -> CompileResult | None:
    """Compile ``model`` (module, ``.pt2``, ``.onnx`` or IR) into a calibrated SNN.

    With ``out``, writes ``snn.ir``, ``ann.ir``, ``report.json`` and ``report.md`` there atomically,
    ``robustness.json|md|png`` unless ``config.robustness`` is ``"none"``, and the exports named in
    ``config.export`` (``snn.nir``, ``snn.onnx``, ``snn_step.onnx``, each with a ``.json`` sidecar).

    Under torchrun the processes share the robust finetuning (data-parallel); then every process
    but rank 0 returns None, and rank 0 evaluates and writes alone.

    With ``checkpoint``, the finetuning and the robustness ensembles save their state there and a
    resumed checkpoint continues them (the stages before finetuning are deterministic and re-run).

    ``out`` is claimed before any work (``compiler.outputs``): an existing folder is replaced only
    when spikeshield wrote it and ``force`` is set, never when it holds the model, and it stays
    locked against other jobs until the compile ends.
    """
    cfg = config or CompileConfig()
    cfg.validate()
    if out is None or not world().is_main:
        return _compile(model, data, cfg, out, checkpoint)
    inputs = [model] if isinstance(model, (str, os.PathLike)) else []
    with claim_output(out, inputs, force, directory=True):
        return _compile(model, data, cfg, out, checkpoint)


def _compile(
    model: nn.Module | Graph | str | os.PathLike,
    data: str | DataSplits,
    cfg: CompileConfig,
    out: str | os.PathLike | None,
    checkpoint: Checkpoint | None,
) -> CompileResult | None:
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    splits = load_data(data, seed=cfg.seed) if isinstance(data, str) else data
    ann = load_model(model, splits.input_shape)
    check_model_data(ann, splits)
    calibration = [
        x for x, _ in splits.train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed)
    ][: cfg.calibration_batches]
    manager = PassManager()
    eval_eps = cfg.evaluation_eps(splits.input_shape)
    pruning = ("prune_weights", {"data": splits, "config": cfg.prune_config(eval_eps),
                                 "timesteps": cfg.timesteps, "device": device})
    if cfg.prune_sparsity > 0 and cfg.prune_stage == "ann":
        ann = manager.run(ann, [pruning])
    snn = manager.run(ann, conversion_pipeline(cfg, calibration, device))
    snn.meta.update({"timesteps": cfg.timesteps, "encoding": cfg.encoding, "input_range": [0.0, 1.0]})
    if cfg.prune_sparsity > 0 and cfg.prune_stage == "snn":
        snn = manager.run(snn, [pruning])
    if cfg.export:
        _check_target_early(snn, cfg.target)
    test = splits.test if cfg.eval_samples is None else splits.test.head(cfg.eval_samples)
    converted = None
    if cfg.finetune != "none":
        converted = evaluate_graph(GraphExecutor(snn, encoding=cfg.encoding), test, cfg.timesteps,
                                   device=device).accuracy
        snn = manager.run_one(snn, "finetune_robust", data=splits,
                              config=cfg.finetune_config(eval_eps), device=device,
                              checkpoint=checkpoint)
    if not world().is_main:
        return None  # finetuning was the shared work; rank 0 evaluates and writes alone
    ann_eval = evaluate_graph(GraphExecutor(ann), test, None, device=device)
    snn_eval = evaluate_graph(
        GraphExecutor(snn, encoding=cfg.encoding), test, cfg.timesteps, device=device
    )
    profile = None
    if cfg.profile:
        profile = profile_graph(snn, test.head(cfg.profile_samples), cfg.timesteps,
                                energy_model(cfg.energy), encoding=cfg.encoding,
                                batch_size=cfg.batch_size, device=device)
    robustness = None
    if cfg.robustness != "none":
        robustness = evaluate_robustness(snn, ann, splits.test, splits.num_classes,
                                         cfg.robustness_config(), checkpoint=checkpoint)
    report = {
        "model": ann.meta.get("source", ann.name),
        "data": splits.name,
        "data_spec": data if isinstance(data, str) else None,
        "config": asdict(cfg),
        "device": str(device),
        "passes": [r.to_json() for r in manager.records],
        "ann": {"accuracy": ann_eval.accuracy, "samples": ann_eval.samples},
        "snn": {
            "accuracy": snn_eval.accuracy,
            "samples": snn_eval.samples,
            "timesteps": cfg.timesteps,
            "threshold_scale": threshold_scale(cfg),
            "spike_rates": snn_eval.spike_rates,
            "neurons": snn_eval.neurons,
            "mean_spikes_per_sample": snn_eval.mean_spikes_per_sample,
            "accuracy_before_finetuning": converted,
        },
        "robustness": _robustness_summary(robustness),
        "profile": None if profile is None else profile_summary(profile),
        "seconds": round(time.perf_counter() - started, 2),
    }
    result = CompileResult(ann, snn, report)
    if out is not None:
        with atomic_directory(out) as tmp:
            save_graph(snn, tmp / "snn.ir")
            save_graph(ann, tmp / "ann.ir")
            if cfg.export:
                report["exports"] = _export_all(snn, cfg, test, tmp, device)
            write_reports(report, snn, tmp)
            if robustness is not None:
                write_robustness(robustness, tmp)
            if profile is not None:
                profile["data"] = report["data_spec"]
                write_profile(profile, tmp)
            write_manifest(tmp)  # last: it vouches for everything above
        result.out_dir = Path(out)
    return result


def _check_target_early(snn: Graph, target: str) -> None:
    """Fail before the long work when the target cannot run this network whatever the passes do."""
    from spikeshield.backends.targets import check_target
    from spikeshield.compiler.ir.errors import UnsupportedOpError

    fatal = [v for v in check_target(snn, target) if v.repair is None]
    if fatal:
        raise UnsupportedOpError(f"the network cannot run on {target}: "
                                 + "; ".join(str(v) for v in fatal))


def _export_all(snn: Graph, cfg: CompileConfig, test, directory: Path, device) -> list[dict]:
    from spikeshield.compiler.driver.export import FORMATS, export_graph, parse_formats

    files = {fmt: directory / FORMATS[fmt][0] for fmt in parse_formats(cfg.export)}
    return export_graph(snn, files, cfg.target, test, cfg.timesteps, str(device))


def _robustness_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The headline numbers of a robustness report, for report.json / report.md."""
    if report is None:
        return None
    ann = report.get("ann") or {}
    return {
        "eps": report["eps"],
        "preset": report["preset"],
        "samples": report["samples"],
        "ann_robust_accuracy": ann.get("robust_accuracy"),
        "ann_pgd_robust_accuracy": ann.get("pgd_robust_accuracy"),
        "snn_robust_accuracy": report["snn"]["robust_accuracy"],
        "retention": report.get("retention"),
        "trustworthy": report["snn"]["diagnostics"]["trustworthy"],
        "verdict": report["snn"]["diagnostics"]["verdict"],
    }
