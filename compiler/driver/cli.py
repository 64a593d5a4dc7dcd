"""The ``spikeshield`` command line. It parses arguments and calls the library; nothing else."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from spikeshield.compiler.ir.errors import SpikeshieldError

app = typer.Typer(
    name="spikeshield",
    help="Compile adversarially robust ANNs into robust spiking neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state: dict = {"debug": False, "checkpoint": None}

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="Data spec: mnist5k (embedded), mnist:DIR, fashion-mnist[:DIR], cifar10:DIR, "
        "cifar100:DIR, svhn:DIR, imagefolder:DIR, tiny-imagenet:DIR.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for data splits, shuffling and init.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu or cuda.")]
PruneSparsityOpt = Annotated[float, typer.Option(
    "--prune-sparsity", help="Robustly prune this fraction of all weights, in [0, 1) (0.99 keeps 1 in 100).")]
PruneMethodOpt = Annotated[str, typer.Option(
    "--prune-method", help="hydra (learned importance scores) or magnitude.")]
PruneBudgetOpt = Annotated[str, typer.Option(
    "--prune-budget", help="global (rank all weights together) or layer (same share per layer).")]
PruneDenseOpt = Annotated[str, typer.Option(
    "--prune-dense", help="Layers kept unpruned: comma-separated first, last or layer names.")]
PruneEpochsOpt = Annotated[int, typer.Option(
    "--prune-epochs", help="Epochs of score learning (hydra) and, again, of finetuning the kept weights.")]
NprocOpt = Annotated[int, typer.Option(
    "--nproc", help="Processes to share the work (launches torchrun --standalone; gloo on CPU, "
    "NCCL with one GPU each on CUDA). Under an outer torchrun, leave it at 1.")]
ResumeOpt = Annotated[Optional[Path], typer.Option(
    "--resume", help="Continue an interrupted run from the checkpoint directory its stop message "
    "named; give the same other options (they are checked).")]
CheckpointEveryOpt = Annotated[float, typer.Option(
    "--checkpoint-every", help="Seconds between checkpoints (0: after every step). SIGINT/SIGTERM "
    "also write one and stop; they live in OUT.checkpoint until the run finishes.")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace an existing output that spikeshield wrote (anything else is never "
    "replaced).")]
SkipVerifyOpt = Annotated[bool, typer.Option(
    "--skip-verify", help="Use a compile directory even if its files do not match manifest.json.")]
EnergyOpt = Annotated[str, typer.Option(
    "--energy", help="Energy constants: fp32 (4.6 pJ/MAC, 0.9 pJ/AC) or int8 (0.23, 0.03), 45 nm.")]
TARGET_HELP = ("Hardware target: generic, loihi2, speck, xylo, spinnaker2, or a profile .json. "
               "Repairable violations (weight bits, biases, reset, encoding) are repaired and the "
               "accuracy re-measured; others are an error.")


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _launch(nproc: int, check) -> bool:
    """With ``--nproc N`` > 1 (and not already under torchrun): check that N processes all get work
    (``check()`` raises a one-line error otherwise), rerun this very command under torchrun and exit
    with its status. Returns False when the command should simply run in this process."""
    from spikeshield.runtime.distributed import check_nproc, launched_by_torchrun, run_under_torchrun

    if nproc == 1 or launched_by_torchrun():
        return False
    check_nproc(nproc)
    check()
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    raise typer.Exit(run_under_torchrun(nproc, "spikeshield.compiler.driver.cli", args))


def _in_process_group(device: str, fn):
    """Run ``fn(world)`` inside torchrun's process group (a single process: rank 0 of 1)."""
    from spikeshield.runtime.device import resolve_device
    from spikeshield.runtime.distributed import process_group

    with process_group(resolve_device(device)) as current:
        return fn(current)


def _claimed(current, out: Path, inputs: list, force: bool, spikeshield_file=None,
             directory: bool = False):
    """Claim ``out`` (rank 0 only: the others write nothing) for the rest of the job."""
    import contextlib

    from spikeshield.compiler.driver.outputs import claim_output

    if not current.is_main:
        return contextlib.nullcontext()
    return claim_output(out, inputs, force, directory, spikeshield_file)


def _checkpoint(job: str, default: Path, settings: dict, every: float, resume: Path | None):
    """The run's checkpoint: ``resume``'s directory (checked against ``settings``), or a fresh one
    at ``default``."""
    from spikeshield.runtime.checkpoint import Checkpoint

    checkpoint = Checkpoint(resume or default, job, settings, every, resume=resume is not None)
    _state["checkpoint"] = checkpoint
    return checkpoint


def _interrupted_message(err) -> str:
    """A stop outside a checkpointed loop: say what survives."""
    message = str(err)
    checkpoint = _state["checkpoint"]
    if "checkpoint written" in message:
        return message
    if checkpoint is not None and (checkpoint.directory / "job.json").is_file():
        return (f"{message}; the last checkpoint is in {checkpoint.directory}: continue with the "
                f"same command and {checkpoint.command_hint}")
    return f"{message}; nothing to resume (no checkpoint was written)"


def _guard(fn):
    """Run ``fn``; user errors become one line and exit 2, unexpected ones exit 1 (traceback: --debug).
    SIGINT / SIGTERM stop it cleanly (a checkpointed loop writes its checkpoint first)."""
    from spikeshield.runtime.checkpoint import Interrupted, stop_on_signals

    _state["checkpoint"] = None
    try:
        with stop_on_signals():
            return fn()
    except SpikeshieldError as err:
        if _state["debug"]:
            raise
        _fail(str(err).replace("\n", " "), 2)
    except Interrupted as err:
        _fail(_interrupted_message(err), err.exit_code)
    except KeyboardInterrupt:
        _fail(_interrupted_message("interrupted"), 130)
    except typer.Exit:
        raise
    except OSError as err:
        from spikeshield.compiler.driver.outputs import is_disk_error

        if _state["debug"] or not is_disk_error(err):
            raise
        _fail(f"cannot write {err.filename or 'the output'}: {err.strerror or err}; nothing was "
              "replaced (free space or choose a writable location)", 2)
    except Exception as err:  # anything else is a bug: say so, briefly
        if _state["debug"]:
            raise
        _fail(f"internal error {type(err).__name__}: {err} (rerun with --debug for the traceback)", 1)


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
    max_train: Annotated[Optional[int], typer.Option(help="Train on the first N samples only.")] = None,
    prune_sparsity: PruneSparsityOpt = 0.0,
    prune_method: PruneMethodOpt = "hydra",
    prune_budget: PruneBudgetOpt = "global",
    prune_dense: PruneDenseOpt = "",
    prune_epochs: PruneEpochsOpt = 3,
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
        from spikeshield.compiler.ir.errors import ConfigError
        from spikeshield.runtime.training import TrainConfig
        from spikeshield.compiler.driver.pt2 import is_spikeshield_pt2
        from spikeshield.compiler.driver.data import load_data
        from spikeshield.runtime.device import resolve_device
        from spikeshield.runtime.distributed import local_device

        from spikeshield.frontends.zoo import ARCHITECTURES

        if out.suffix != ".pt2":
            raise ConfigError(f"--out must end in .pt2, got {out.name}")
        if arch not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {arch!r}; choose one of "
                              f"{', '.join(ARCHITECTURES)}")
        from spikeshield.runtime.pruning import PruneConfig, parse_layers

        prune = None
        if prune_sparsity != 0:
            prune = PruneConfig(sparsity=prune_sparsity, method=prune_method, budget=prune_budget,
                                dense_layers=parse_layers(prune_dense), score_epochs=prune_epochs,
                                finetune_epochs=prune_epochs, objective=objective, eps=eps,
                                attack_steps=attack_steps, batch_size=batch_size,
                                max_train=max_train, seed=seed)
        cfg = TrainConfig(objective=objective, eps=eps, epochs=epochs, batch_size=batch_size, lr=lr,
                          attack_steps=attack_steps, seed=seed, max_train=max_train, prune=prune)
        cfg.validate()
        dev = local_device(resolve_device(device))
        splits = load_data(data, seed=seed)
        mean, std = splits.channel_stats()
        from dataclasses import asdict

        settings = {"arch": arch, "data": data, "width": width, "processes": current.size,
                    **asdict(cfg)}
        with _claimed(current, out, [], force, is_spikeshield_pt2):
            train_claimed(current, cfg, dev, splits, mean, std, settings)

    def train_claimed(current, cfg, dev, splits, mean, std, settings) -> None:
        import torch

        from spikeshield.compiler.driver.pt2 import export_pt2
        from spikeshield.runtime.training import train_robust
        from spikeshield.frontends.zoo import build_model
        from spikeshield.runtime.evaluate import accuracy_of

        checkpoint = _checkpoint("train", out.with_name(out.name + ".checkpoint"), settings,
                                 checkpoint_every, resume)
        torch.manual_seed(seed)
        model = build_model(arch, splits.input_shape, splits.num_classes, mean, std, width)
        result = train_robust(model, splits, cfg, dev, checkpoint)
        if not current.is_main:
            return
        test_acc = accuracy_of(model, splits.test, device=dev)
        export_pt2(model, splits.input_shape, out)
        checkpoint.discard()
        pruned = ""
        if result.pruning is not None:
            p = result.pruning
            pruned = (f", pruned ({p['method']}) to {p['kept_weights']} of {p['total_weights']} "
                      f"weights ({p['total_weights'] / p['kept_weights']:.1f}x fewer)")
        typer.echo(
            f"trained {arch} ({objective}, eps={eps}) on {splits.name}: best epoch {result.best_epoch}"
            f"{pruned}, validation accuracy {100 * result.val_accuracy:.2f}%, clean test accuracy "
            f"{100 * test_acc:.2f}%; wrote {out}"
        )

    _guard(run)


@app.command("compile")
def compile_cmd(
    model: Annotated[Path, typer.Argument(help="Model file: .pt2 (torch.export), .onnx, or .ir.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory, written atomically; an existing one is replaced only with --force, and only if spikeshield wrote it.")],
    data: DataOpt = "mnist5k",
    timesteps: Annotated[int, typer.Option("--timesteps", "-T", help="Simulation time steps T.")] = 8,
    reset: Annotated[str, typer.Option(help="IF reset: zero or subtract.")] = "zero",
    threshold_mode: Annotated[str, typer.Option(help="Thresholds per layer or per channel.")] = "layer",
    batchnorm: Annotated[str, typer.Option(help="fold into conv/linear, or keep as affine.")] = "fold",
    calibration: Annotated[str, typer.Option(help="percentile or max of the input current.")] = "percentile",
    percentile: Annotated[float, typer.Option(help="Percentile of the input current.")] = 99.7,
    threshold_scale: Annotated[Optional[float], typer.Option(help="Factor on calibrated thresholds (default: clamp(1 - 1.2/T, 0.3, 0.9)).")] = None,
    calibration_batches: Annotated[int, typer.Option(help="Batches used for calibration.")] = 11,
    calibration_timesteps: Annotated[Optional[int], typer.Option(help="T during calibration (default: --timesteps).")] = None,
    encoding: Annotated[str, typer.Option(help="Input encoding: direct (analog each step) or poisson.")] = "direct",
    finetune: Annotated[str, typer.Option(help="Robust finetuning of the SNN: trades, at, mart or none.")] = "trades",
    finetune_epochs: Annotated[int, typer.Option(help="Finetuning epochs (the reference uses 60).")] = 10,
    eps_train: Annotated[Optional[float], typer.Option(help="Finetuning perturbation budget (default: --eps / 4).")] = None,
    finetune_attack: Annotated[str, typer.Option(help="Inner attack of finetuning: rfgsm (one step) or pgd (10 steps).")] = "rfgsm",
    finetune_lr: Annotated[float, typer.Option(help="Finetuning SGD learning rate (cosine schedule).")] = 1e-3,
    finetune_max_train: Annotated[Optional[int], typer.Option(help="Finetune on the first N training images only.")] = None,
    robustness: Annotated[str, typer.Option(help="Attack preset for the ANN vs SNN robustness report: quick, paper, strong or none.")] = "quick",
    eps: Annotated[Optional[float], typer.Option(help="Evaluation budget, L-inf in [0, 1] (default: 0.1 for 1-channel data, 8/255 for colour).")] = None,
    eval_samples: Annotated[Optional[int], typer.Option("--n", help="Evaluate on the first N test samples (robustness: 1000 by default).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    prune_sparsity: PruneSparsityOpt = 0.0,
    prune_method: PruneMethodOpt = "hydra",
    prune_budget: PruneBudgetOpt = "global",
    prune_dense: PruneDenseOpt = "",
    prune_epochs: PruneEpochsOpt = 3,
    prune_stage: Annotated[str, typer.Option("--prune-stage", help="Prune the ann (before conversion) or the calibrated snn (through the spikes).")] = "ann",
    profile: Annotated[bool, typer.Option("--profile/--no-profile", help="Write the energy and memory profile (profile.json/md/png).")] = True,
    energy: EnergyOpt = "fp32",
    export: Annotated[str, typer.Option("--export", help="Also write exports: comma-separated nir, onnx, onnx-step.")] = "",
    target: Annotated[str, typer.Option("--target", help=TARGET_HELP)] = "generic",
    nproc: NprocOpt = 1,
    resume: ResumeOpt = None,
    checkpoint_every: CheckpointEveryOpt = 300.0,
    force: ForceOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Convert a trained ANN into a calibrated SNN; writes snn.ir, ann.ir, report.json, report.md
    and manifest.json (SHA-256 of every file; `spikeshield verify OUT` checks it).
    With --nproc N the robust finetuning is shared by N processes; the rest runs in rank 0.
    Finetuning and attacks checkpoint to OUT.checkpoint; --resume continues an interrupted run."""

    def check() -> None:
        from spikeshield.compiler.ir.errors import ConfigError
        from spikeshield.runtime.distributed import World, per_process_batch

        if finetune == "none":
            raise ConfigError("--nproc shares the robust finetuning, and --finetune is none; "
                              "drop --nproc or choose a finetuning objective")
        per_process_batch(batch_size, World(0, nproc))

    def run() -> None:
        if not _launch(nproc, check):
            _in_process_group(device, compile_here)

    def compile_here(current) -> None:
        from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model

        cfg = CompileConfig(timesteps=timesteps, reset=reset, threshold_mode=threshold_mode,
                            batchnorm=batchnorm, calibration=calibration, percentile=percentile,
                            calibration_batches=calibration_batches,
                            calibration_timesteps=calibration_timesteps, batch_size=batch_size,
                            eval_samples=eval_samples, encoding=encoding, device=device, seed=seed,
                            finetune=finetune, finetune_epochs=finetune_epochs, eps_train=eps_train,
                            finetune_attack=finetune_attack, finetune_lr=finetune_lr,
                            finetune_max_train=finetune_max_train, robustness=robustness, eps=eps,
                            prune_sparsity=prune_sparsity, prune_method=prune_method,
                            prune_budget=prune_budget, prune_dense=prune_dense,
                            prune_epochs=prune_epochs, prune_stage=prune_stage, profile=profile,
                            energy=energy, export=export, target=target)
        if threshold_scale is not None:
            cfg.threshold_scale = threshold_scale
        from dataclasses import asdict

        from spikeshield.compiler.driver.manifest import file_digest

        settings = {"model": str(model), "model_sha256": file_digest(model), "data": data,
                    "processes": current.size, **asdict(cfg)}
        settings.pop("device")
        with _claimed(current, out, [model], force, directory=True):
            checkpoint = _checkpoint("compile", out.with_name(out.name + ".checkpoint"), settings,
                                     checkpoint_every, resume)
            result = compile_model(model, data, cfg, out, checkpoint, force=force)
        if result is None:  # not rank 0: its share of the finetuning is done
            return
        checkpoint.discard()
        r = result.report
        typer.echo(
            f"ANN accuracy {100 * r['ann']['accuracy']:.2f}%, SNN (T={timesteps}) accuracy "
            f"{100 * r['snn']['accuracy']:.2f}% on {r['snn']['samples']} test samples; wrote {out}"
        )
        rob = r.get("robustness")
        if rob is not None:
            typer.echo(_robustness_line(rob["eps"], rob["preset"], rob["ann_pgd_robust_accuracy"],
                                        rob["snn_robust_accuracy"], rob["verdict"]))
        if r.get("profile") is not None:
            typer.echo(_profile_line(r["profile"]))
        for description in r.get("exports", []):
            typer.echo(_export_line(out / description["file"], description))

    _guard(run)


def _profile_line(p: dict) -> str:
    ratio = p["ann_over_snn_energy"]
    return (f"stored weights {p['nonzeros']:,} of {p['weights']:,} ({p['weight_reduction']:.1f}x "
            f"fewer); {p['synops']:,.0f} SynOps per sample; estimated energy SNN "
            f"{p['snn_energy_pj'] / 1000:,.2f} nJ vs ANN {p['ann_energy_pj'] / 1000:,.2f} nJ "
            f"(ANN / SNN {'n/a' if ratio is None else f'{ratio:.2f}x'})")


def _export_line(path: Path, description: dict) -> str:
    a = description["adaptation"]
    line = f"wrote {path} ({description['format']}, target {a['target']})"
    if a["passes"]:
        line += f"; adapted with {', '.join(p['name'] for p in a['passes'])}"
    if a["passes"] and a["accuracy_before"] is None:
        line += " (accuracy not re-measured: no data spec recorded; pass --data)"
    elif a["accuracy_before"] is not None:
        line += (f": accuracy {100 * a['accuracy_before']:.2f}% -> {100 * a['accuracy_after']:.2f}% "
                 f"on {a['samples']} test samples")
    return line


def _robustness_line(eps: float, preset: str, ann_pgd: float | None, snn: float, verdict: str) -> str:
    ann = "n/a" if ann_pgd is None else f"{100 * ann_pgd:.2f}%"
    return (f"robust accuracy at eps={eps:.4g}: ANN (PGD) {ann}, SNN ({preset} worst case) "
            f"{100 * snn:.2f}%. {verdict}")


@app.command("eval")
def eval_cmd(
    directory: Annotated[Path, typer.Argument(help="A compile directory (holds snn.ir, and ann.ir for the comparison).")],
    preset: Annotated[str, typer.Option(help="Attack ensemble: quick (4 members), paper (19) or strong (paper + APGD, Square, width sweep).")] = "quick",
    eps: Annotated[Optional[float], typer.Option(help="L-inf budget in [0, 1] (default: 0.1 for 1-channel data, 8/255 for colour).")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Attack the first N test samples (default: 1000, or the whole test split if smaller).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size of the attacks.")] = 256,
    attack: Annotated[str, typer.Option(help="Base attack of the paper preset: pgd (20 steps), fgsm or apgd.")] = "pgd",
    exhaustive: Annotated[bool, typer.Option(help="Every member attacks every sample (gives per-member accuracy; slower).")] = False,
    data: Annotated[Optional[str], typer.Option("--data", help="Data spec (default: the one recorded at compile time).")] = None,
    nproc: NprocOpt = 1,
    resume: ResumeOpt = None,
    checkpoint_every: CheckpointEveryOpt = 300.0,
    skip_verify: SkipVerifyOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Attack a compiled SNN with an adaptive ensemble; writes robustness.json, .md and .png.
    With --nproc N the test samples are dealt out in batches to N processes; the counts are those
    of one process, exactly. Partial counts checkpoint to DIR.eval-checkpoint; --resume continues."""
    from spikeshield.compiler.driver.robustness import RobustnessConfig

    def config(dev: str) -> RobustnessConfig:
        return RobustnessConfig(preset=preset, eps=eps, samples=n, batch_size=batch_size,
                                base_attack=attack, exhaustive=exhaustive, seed=seed, device=dev)

    def check() -> None:
        from spikeshield.compiler.driver.robustness import eval_chunks
        from spikeshield.runtime.device import resolve_device
        from spikeshield.runtime.distributed import check_processes

        resolve_device(device)
        check_processes(nproc, eval_chunks(directory, data, config(device)),
                        f"batches of {batch_size} test samples")

    def run() -> None:
        if not _launch(nproc, check):
            _in_process_group(device, eval_here)

    def eval_here(current) -> None:
        from spikeshield.compiler.driver.robustness import evaluate_directory
        from spikeshield.runtime.device import resolve_device
        from spikeshield.runtime.distributed import local_device

        from dataclasses import asdict

        from spikeshield.compiler.driver.manifest import file_digest

        cfg = config(str(local_device(resolve_device(device))))
        from spikeshield.compiler.driver.outputs import output_lock

        settings = {"directory": str(directory.resolve()),
                    "snn_sha256": file_digest(directory / "snn.ir"),
                    "ann_sha256": file_digest(directory / "ann.ir"), "data": data,
                    "processes": current.size, **asdict(cfg)}
        settings.pop("device")
        with output_lock(directory) if current.is_main else contextlib.nullcontext():
            checkpoint = _checkpoint("eval", directory.with_name(directory.name +
                                                                 ".eval-checkpoint"),
                                     settings, checkpoint_every, resume)
            report = evaluate_directory(directory, data, cfg, checkpoint, skip_verify)
        if not current.is_main:
            return
        checkpoint.discard()
        ann = report.get("ann") or {}
        snn = report["snn"]
        typer.echo(f"clean accuracy: ANN {100 * ann.get('clean_accuracy', float('nan')):.2f}%, SNN "
                   f"{100 * snn['clean_accuracy']:.2f}% on {report['samples']} test samples")
        typer.echo(_robustness_line(report["eps"], preset, ann.get("pgd_robust_accuracy"),
                                    snn["robust_accuracy"], snn["diagnostics"]["verdict"]))
        typer.echo(f"wrote {directory / 'robustness.md'}, robustness.json and robustness.png")

    _guard(run)


@app.command("export")
def export_cmd(
    source: Annotated[Path, typer.Argument(help="A compile directory (its snn.ir), a .ir or a .nir file.")],
    fmt: Annotated[str, typer.Option("--format", help="nir, onnx (time-unrolled, fixed T) or onnx-step (one step, explicit state).")] = "nir",
    target: Annotated[str, typer.Option("--target", help=TARGET_HELP)] = "generic",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output file (default: snn.nir, snn.onnx or snn_step.onnx in DIR).")] = None,
    timesteps: Annotated[Optional[int], typer.Option("--timesteps", "-T", help="T of the unrolled ONNX graph (default: the compiled T).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Data for re-measuring accuracy after target repairs (default: the compile-time spec).")] = None,
    n: Annotated[int, typer.Option("--n", help="Test samples for that measurement.")] = 1000,
    force: ForceOpt = False,
    skip_verify: SkipVerifyOpt = False,
) -> None:
    """Export a compiled SNN as NIR or ONNX, optionally adapted to a hardware target."""

    def run() -> None:
        from spikeshield.compiler.driver.export import export_source

        path, description = export_source(source, fmt, target, out, timesteps, data, n, force,
                                          skip_verify)
        typer.echo(_export_line(path, description))

    _guard(run)


@app.command("run")
def run_cmd(
    source: Annotated[Path, typer.Argument(help="A compile directory, a .ir or any .nir graph.")],
    inputs: Annotated[Path, typer.Option("--inputs", help="A .npy array (N, *input shape) of float inputs in the model's input space: pixels in [0, 1] for spikeshield models (normalisation is inside the graph); whatever the NIR graph's Input node takes otherwise.")],
    out: Annotated[Path, typer.Option("--out", help="Output .npz: predictions (N,), logits (N, classes), spikes/<layer> (N,) spike counts per sample, layers, timesteps.")],
    timesteps: Annotated[Optional[int], typer.Option("--timesteps", "-T", help="Time steps (default: the T recorded in the graph).")] = None,
    input_scale: Annotated[float, typer.Option("--input-scale", help="Divide the inputs by this first (255 for 8-bit pixels); inputs outside the model's declared range are refused.")] = 1.0,
    force: ForceOpt = False,
    skip_verify: SkipVerifyOpt = False,
) -> None:
    """Simulate a compiled SNN or a NIR graph on given inputs and save its outputs."""

    def run() -> None:
        from spikeshield.compiler.driver.simulate import run_on_inputs

        result = run_on_inputs(source, inputs, out, timesteps, input_scale, force, skip_verify)
        spikes = sum(int(result[f"spikes/{n}"].sum()) for n in result["layers"])
        typer.echo(f"simulated {len(result['predictions'])} inputs for T={int(result['timesteps'])}: "
                   f"{spikes} spikes in {len(result['layers'])} layers; wrote {out}")

    _guard(run)


@app.command("profile")
def profile_cmd(
    directory: Annotated[Path, typer.Argument(help="A compile directory (its snn.ir).")],
    data: Annotated[Optional[str], typer.Option("--data", help="Data spec (default: the one recorded at compile time).")] = None,
    n: Annotated[int, typer.Option("--n", help="Profile on the first N test samples.")] = 1000,
    timesteps: Annotated[Optional[int], typer.Option("--timesteps", "-T", help="Time steps (default: the compiled T).")] = None,
    energy: EnergyOpt = "fp32",
    mac_pj: Annotated[Optional[float], typer.Option("--mac-pj", help="Override: picojoules per multiply-accumulate.")] = None,
    ac_pj: Annotated[Optional[float], typer.Option("--ac-pj", help="Override: picojoules per accumulate (SynOp).")] = None,
    memory_pj: Annotated[Optional[float], typer.Option("--memory-pj", help="Add this many picojoules per synaptic event for the weight fetch.")] = None,
    skip_verify: SkipVerifyOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Energy and memory profile of a compiled SNN: per-layer SynOps, MACs, energy, firing rates
    and stored bytes; writes profile.json, profile.md and two PNG plots into DIR."""

    def run() -> None:
        from spikeshield.compiler.driver.profile import profile_directory, profile_summary
        from spikeshield.runtime.energy import energy_model

        model = energy_model(energy, mac_pj, ac_pj, memory_pj)
        p = profile_directory(directory, data, n, model, timesteps, device, seed, skip_verify)
        typer.echo(_profile_line(profile_summary(p)))
        gpu = p["gpu_energy"]
        if gpu.get("measured"):
            typer.echo(f"measured GPU energy (NVML, {gpu['device']}): {gpu['joules_per_sample']:.4g} J "
                       "per sample, whole board")
        typer.echo(f"wrote {directory / 'profile.md'}, profile.json, profile_energy.png and "
                   "profile_rates.png")

    _guard(run)


@app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="A compile directory (it carries manifest.json).")],
) -> None:
    """Check every file of a compile directory against the SHA-256 digests in its manifest.json;
    exit 0 when all match, 2 (naming them) when a file is missing or altered."""

    def run() -> None:
        from spikeshield.compiler.driver.manifest import verify_directory

        result = verify_directory(directory)
        if not result.intact:
            _fail(result.summary(), 2)
        typer.echo(result.summary())

    _guard(run)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A .ir file, a compile directory, a .pt2 or a .onnx.")],
) -> None:
    """Print the graph IR of a compiled SNN or of a model file."""

    def run() -> None:
        from spikeshield.compiler.driver.model_io import load_model

        typer.echo(load_model(path).dump())

    _guard(run)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Working directory for the demo's files.")] = Path("spikeshield-demo"),
    epochs: Annotated[int, typer.Option(help="Robust training epochs.")] = 5,
    eps: Annotated[float, typer.Option(help="TRADES training budget (pixels).")] = 0.1,
    timesteps: Annotated[str, typer.Option(help="Comma-separated T values to compare.")] = "4,8,16,32",
    finetune_epochs: Annotated[int, typer.Option(help="Robust finetuning epochs of the T=8 SNN.")] = 3,
    n: Annotated[int, typer.Option("--n", help="Test images attacked by the quick ensemble.")] = 500,
    max_train: Annotated[Optional[int], typer.Option(help="Train and finetune on the first N training images only.")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train a small robust ANN on mnist5k, convert it for several T, then finetune and attack the
    T=8 SNN: prints ANN vs SNN clean and robust accuracy."""

    def run() -> None:
        from spikeshield.compiler.driver.demo import run_demo

        steps = [int(t) for t in timesteps.split(",") if t.strip()]
        run_demo(out, epochs=epochs, eps=eps, timesteps=steps, seed=seed, device=device,
                 echo=typer.echo, finetune_epochs=finetune_epochs, robust_samples=n,
                 max_train=max_train)

    _guard(run)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="spikeshield")


if __name__ == "__main__":
    sys.exit(main())
