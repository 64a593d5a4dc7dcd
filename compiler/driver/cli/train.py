"""``spikeshield train``: a robust ANN from the model zoo, written as a .pt2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spikeshield.compiler.driver.cli.common import (
    CheckpointEveryOpt,
    DataOpt,
    DeviceOpt,
    ForceOpt,
    NprocOpt,
    PruneBudgetOpt,
    PruneDenseOpt,
    PruneEpochsOpt,
    PruneFinetuneEpochsOpt,
    PruneMethodOpt,
    PruneSelectionOpt,
    PruneSparsityOpt,
    ResumeOpt,
    SeedOpt,
    _checkpoint,
    _claimed,
    _guard,
    _in_process_group,
    _launch,
    app,
)


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Where to write the trained model (.pt2).")],
    arch: Annotated[str, typer.Option(help="lenet, vgg11, resnet20 or wrn16-4.")] = "lenet",
    data: DataOpt = "mnist5k",
    objective: Annotated[str, typer.Option(help="at, trades, mart, or standard (no attack).")] = "trades",
    eps: Annotated[float, typer.Option(help="Training perturbation budget (L-inf, pixels in [0,1]).")] = 0.1,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="SGD learning rate (cosine schedule).")] = 0.1,
    attack_steps: Annotated[int, typer.Option(help="PGD steps of the inner maximisation.")] = 10,
    width: Annotated[float, typer.Option(help="Channel width multiplier of the architecture.")] = 1.0,
    activation: Annotated[str, typer.Option(
        help="relu, or qcfs: a quantised clip with learned ceilings (Bu et al. 2022) that converts "
        "into IF neurons without calibration.")] = "relu",
    levels: Annotated[int, typer.Option(
        help="Quantisation levels L of --activation qcfs (the SNN is exact at T = L).")] = 8,
    max_train: Annotated[Optional[int], typer.Option(help="Train on the first N samples only.")] = None,
    prune_sparsity: PruneSparsityOpt = 0.0,
    prune_method: PruneMethodOpt = "hydra",
    prune_budget: PruneBudgetOpt = "auto",
    prune_dense: PruneDenseOpt = "",
    prune_epochs: PruneEpochsOpt = 3,
    prune_finetune_epochs: PruneFinetuneEpochsOpt = None,
    prune_selection: PruneSelectionOpt = "clean",
    nproc: NprocOpt = 1,
    resume: ResumeOpt = None,
    checkpoint_every: CheckpointEveryOpt = 300.0,
    force: ForceOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train a robust ANN from the model zoo and write it as a torch.export .pt2 file; with
    --prune-sparsity, then prune it robustly (pruned weights are stored as exact zeros).
    Checkpoints go to OUT.checkpoint; --resume continues an interrupted run."""

    def check() -> None:
        from spikeshield.compiler.driver.data import load_data
        from spikeshield.runtime.distributed import World, check_processes, per_process_batch

        per_process_batch(batch_size, World(0, nproc))
        train_samples = len(load_data(data, seed=seed).train)
        check_processes(nproc, min(train_samples, max_train or train_samples), "training samples")

    def run() -> None:
        if not _launch(nproc, check):
            _in_process_group(device, train_here)

    def train_here(current) -> None:
        from spikeshield.compiler.driver.data import load_data
        from spikeshield.compiler.driver.pt2 import is_spikeshield_pt2
        from spikeshield.compiler.ir.errors import ConfigError
        from spikeshield.frontends.zoo import ARCHITECTURES
        from spikeshield.runtime.device import resolve_device
        from spikeshield.runtime.distributed import local_device
        from spikeshield.runtime.training import TrainConfig

        if out.suffix != ".pt2":
            raise ConfigError(f"--out must end in .pt2, got {out.name}")
        from spikeshield.frontends.zoo import ACTIVATIONS

        if activation not in ACTIVATIONS:
            raise ConfigError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got "
                              f"{activation!r}")
        if levels < 1:
            raise ConfigError(f"--levels must be at least 1, got {levels}")
        if arch not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {arch!r}; choose one of "
                              f"{', '.join(ARCHITECTURES)}")
        from spikeshield.compiler.driver.config import pruning_finetune_epochs
        from spikeshield.runtime.pruning import PruneConfig, parse_layers

        prune = None
        if prune_sparsity != 0:
            prune = PruneConfig(sparsity=prune_sparsity, method=prune_method, budget=prune_budget,
                                dense_layers=parse_layers(prune_dense), score_epochs=prune_epochs,
                                finetune_epochs=pruning_finetune_epochs(prune_epochs,
                                                                        prune_finetune_epochs),
                                objective=objective, eps=eps,
                                attack_steps=attack_steps, batch_size=batch_size,
                                max_train=max_train, selection=prune_selection, seed=seed)
        cfg = TrainConfig(objective=objective, eps=eps, epochs=epochs, batch_size=batch_size, lr=lr,
                          attack_steps=attack_steps, seed=seed, max_train=max_train, prune=prune)
        cfg.validate()
        dev = local_device(resolve_device(device))
        splits = load_data(data, seed=seed)
        mean, std = splits.channel_stats()
        from dataclasses import asdict

        settings = {"arch": arch, "data": data, "width": width, "activation": activation,
                    "levels": levels, "processes": current.size, **asdict(cfg)}
        with _claimed(current, out, [], force, is_spikeshield_pt2):
            train_claimed(current, cfg, dev, splits, mean, std, settings)

    def train_claimed(current, cfg, dev, splits, mean, std, settings) -> None:
        import torch

        from spikeshield.compiler.driver.pt2 import export_pt2
        from spikeshield.frontends.zoo import build_model
        from spikeshield.runtime.evaluate import accuracy_of
        from spikeshield.runtime.training import train_robust

        checkpoint = _checkpoint("train", out.with_name(out.name + ".checkpoint"), settings,
                                 checkpoint_every, resume)
        checkpoint.bind_data(splits.digest())
        torch.manual_seed(seed)
        model = build_model(arch, splits.input_shape, splits.num_classes, mean, std, width,
                            activation, levels)
        result = train_robust(model, splits, cfg, dev, checkpoint)
        if not current.is_main:
            return
        test_acc = accuracy_of(model, splits.test, device=dev)
        export_pt2(model, splits.input_shape, out, training=settings)
        checkpoint.discard()
        pruned = ""
        if result.pruning is not None:
            p = result.pruning
            pruned = (f", pruned ({p['method']}) to {p['kept_weights']} of {p['total_weights']} "
                      f"weights ({p['total_weights'] / p['kept_weights']:.1f}x fewer)")
        typer.echo(
            f"trained {arch}{' (QCFS, L=%d)' % levels if activation == 'qcfs' else ''} "
            f"({objective}, eps={eps}) on {splits.name}: best epoch {result.best_epoch}"
            f"{pruned}, validation accuracy {100 * result.val_accuracy:.2f}%, clean test accuracy "
            f"{100 * test_acc:.2f}%; wrote {out}"
        )

    _guard(run)
