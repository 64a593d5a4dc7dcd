"""The compile pipeline: a robust ANN in, a calibrated spiking network and its report out.

``compile_model`` is what ``spikeshield compile`` runs: lower the model, check it against the data,
fold batch norm, convert ReLU to IF, calibrate thresholds, fold spike amplitudes into weights,
robustly finetune the SNN (selecting on the validation split), then measure ANN and SNN clean
accuracy on the test split, attack both under a preset, and write the artifacts.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikeshield.compiler.driver.config import CompileConfig
from spikeshield.compiler.driver.data import load_data
from spikeshield.compiler.driver.manifest import write_manifest
from spikeshield.compiler.driver.model_io import check_model_data, load_model
from spikeshield.compiler.driver.outputs import claim_output
from spikeshield.compiler.driver.profile import profile_graph, profile_summary, write_profile
from spikeshield.compiler.driver.pt2 import robust_training_eps
from spikeshield.compiler.driver.report import write_reports
from spikeshield.compiler.driver.robustness import (
    evaluate_robustness,
    write_robustness,
)
from spikeshield.compiler.ir.atomic import atomic_directory
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.run_spec import RunSpec
from spikeshield.compiler.ir.serialize import save_graph
from spikeshield.compiler.passes.calibrate_thresholds import (
    default_threshold_scale,
)
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.runtime.checkpoint import Checkpoint
from spikeshield.runtime.data import DataSplits
from spikeshield.runtime.device import resolve_device
from spikeshield.runtime.distributed import world
from spikeshield.runtime.energy import energy_model
from spikeshield.runtime.evaluate import evaluate_graph
from spikeshield.runtime.executor import GraphExecutor


@dataclass
class CompileResult:
    ann: Graph
    snn: Graph
    report: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None


def threshold_scale(cfg: CompileConfig) -> float:
    """The threshold factor in force: the configured one, or the T-dependent default."""
    return cfg.threshold_scale or default_threshold_scale(cfg.timesteps, cfg.v_init,
                                                         cfg.correction == "fit")


def conversion_pipeline(cfg: CompileConfig, calibration_data: list[torch.Tensor], device) -> list:
    """The pass list that turns an ANN graph into a calibrated SNN graph."""
    return [
        ("fuse_quantized_relu", {}),
        ("fuse_clipped_relu", {}),
        ("fold_batchnorm", {"mode": cfg.batchnorm}),
        ("convert_relu_to_if", {"reset": cfg.reset, "threshold": cfg.threshold_mode,
                                "v_init": cfg.v_init}),
        ("calibrate_thresholds", {
            "data": calibration_data,
            "timesteps": cfg.calibration_timesteps or cfg.timesteps,
            "percentile": cfg.percentile,
            "scale": threshold_scale(cfg),
            "mode": cfg.calibration,
            "batches": cfg.calibration_batches,
            "device": device,
            "search": cfg.threshold_search,
            "fit": cfg.correction == "fit",
        }),
        *([("correct_biases", {"data": calibration_data, "timesteps": cfg.timesteps,
                               "batches": cfg.calibration_batches,
                               "device": device})] if cfg.correction == "bias" else []),
        ("fold_scales", {}),
    ]


def deployment_pipeline(cfg: CompileConfig) -> list:
    """The passes that put a converted (and finetuned) SNN into the form it is deployed in.

    Thresholds are folded into the weights only after finetuning: the weights into a channel
    are divided by its threshold, so an SGD step on them moves the channel's current threshold^2
    times as far as on the per-channel network, and channels with thresholds of a few units then
    train at tens of times the learning rate, and the surrogate's width changes against the
    threshold. Measured on a fitted reset-to-zero resnet20 (half width, mnist5k; one TRADES epoch
    on 2,000 images at lr 1e-3): folded first, validation accuracy fell from 87.8% to 67.8%;
    folded after, it rose to 91.8% (benchmarks/notes/2026-12-07-paper-a-neuron-finetuning-issue-41.md)."""
    return [("uniform_thresholds", {})] if cfg.uniform_thresholds else []


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
    if checkpoint is not None:
        checkpoint.bind_data(splits.digest())
    ann = load_model(model, splits.input_shape)
    check_model_data(ann, splits)
    batches = splits.train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed)
    calibration = [x for x, _ in itertools.islice(batches, cfg.calibration_batches)]
    manager = PassManager()
    eval_eps = cfg.evaluation_eps(splits.input_shape)
    # Recorded by spikeshield train; without it, pruning and finetuning fall back to --eps.
    ann_eps = robust_training_eps(ann.meta.get("ann_training"))
    pruning = ("prune_weights", {"data": splits, "config": cfg.prune_config(eval_eps, ann_eps),
                                 "timesteps": cfg.timesteps, "device": device})
    if cfg.prune_sparsity > 0 and cfg.prune_stage == "ann":
        ann = manager.run(ann, [pruning])
    snn = manager.run(ann, conversion_pipeline(cfg, calibration, device))
    RunSpec(cfg.timesteps, cfg.encoding, input_range=(0.0, 1.0)).record(snn.meta)
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
                              config=cfg.finetune_config(eval_eps, ann_eps), device=device,
                              checkpoint=checkpoint)
    if not world().is_main:
        return None  # finetuning was the shared work; rank 0 evaluates and writes alone
    snn = manager.run(snn, deployment_pipeline(cfg))
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
                adapted = next((d["adapted_ir"] for d in report["exports"] if d["adapted_ir"]),
                               None)
                if robustness is not None and adapted is not None:
                    report["robustness"]["adapted"] = _attack_adapted(
                        tmp, adapted, splits, cfg)
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


def _attack_adapted(directory: Path, name: str, splits: DataSplits,
                    cfg: CompileConfig) -> dict[str, Any]:
    """The target-adapted SNN (``directory/name``, e.g. 8-bit weights and a switched reset)
    under the same ensemble, samples and ε as the SNN: its report goes to
    ``robustness_<target>.*``, its headline numbers into report.json. The ANN is not attacked
    again (it is the same ANN), and this run does not checkpoint."""
    from spikeshield.compiler.ir.serialize import load_graph

    adapted = load_graph(directory / name)
    report = evaluate_robustness(adapted, None, splits.test, splits.num_classes,
                                 cfg.robustness_config())
    report["graph"] = name
    write_robustness(report, directory, name)
    return {"graph": name, "clean_accuracy": report["snn"]["clean_accuracy"],
            "snn_robust_accuracy": report["snn"]["robust_accuracy"],
            "trustworthy": report["snn"]["diagnostics"]["trustworthy"]}


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
