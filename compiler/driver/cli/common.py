"""What every command of the ``spikeshield`` CLI shares: the typer app, option types, the error
guard (one line and exit 2 for user errors), the torchrun launcher and checkpoint helpers, and the
one-line summaries the commands print."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from spikeshield.compiler.driver.config import TARGET_HELP, CompileConfig  # noqa: F401  (re-exported)
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


def config_option(name: str) -> Any:
    """The typer option of ``CompileConfig.<name>``: its type, flags and help text come from the
    field (``driver.config.option``), so a command that shares the knob shares its definition."""
    import dataclasses
    import typing

    f = next(f for f in dataclasses.fields(CompileConfig) if f.name == name)
    kind = typing.get_type_hints(CompileConfig)[name]
    if type(None) in typing.get_args(kind):  # ``int | None`` -> Optional[int] for typer
        kind = Optional[next(a for a in typing.get_args(kind) if a is not type(None))]
    return Annotated[kind, typer.Option(*f.metadata["flags"], help=f.metadata["help"])]


def config_parameters() -> list[inspect.Parameter]:
    """Keyword parameters for every ``CompileConfig`` field that is a CLI option."""
    import dataclasses

    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                              annotation=config_option(f.name))
            for f in dataclasses.fields(CompileConfig) if "help" in f.metadata]


SeedOpt = config_option("seed")
DeviceOpt = config_option("device")
PruneSparsityOpt = config_option("prune_sparsity")
PruneMethodOpt = config_option("prune_method")
PruneBudgetOpt = config_option("prune_budget")
PruneDenseOpt = config_option("prune_dense")
PruneEpochsOpt = config_option("prune_epochs")
PruneFinetuneEpochsOpt = config_option("prune_finetune_epochs")
PruneSelectionOpt = config_option("prune_selection")
EnergyOpt = config_option("energy")
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


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        import torch

        typer.echo(f"spikeshield {version('spikeshield')} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print spikeshield's and torch's versions and exit.")] = False,
) -> None:
    _state["debug"] = debug


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _launch(nproc: int, check) -> bool:
    """With ``--nproc N`` > 1 (and not already under torchrun): check that N processes all get work
    (``check()`` raises a one-line error otherwise), rerun this very command under torchrun and exit
    with its status. Returns False when the command should simply run in this process."""
    from spikeshield.runtime.distributed import (
        check_nproc,
        launched_by_torchrun,
        run_under_torchrun,
    )

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


def _profile_line(p: dict) -> str:
    ratio = p["ann_over_snn_energy"]
    return (f"stored weights {p['nonzeros']:,} of {p['weights']:,} ({p['weight_reduction']:.1f}x "
            f"fewer); {p['synops']:,.0f} SynOps per sample; estimated energy SNN "
            f"{p['snn_energy_pj'] / 1000:,.2f} nJ vs ANN {p['ann_energy_pj'] / 1000:,.2f} nJ "
            f"(ANN / SNN {'n/a' if ratio is None else f'{ratio:.2f}x'})")


def _export_line(path: Path, description: dict) -> str:
    a = description["adaptation"]
    profile = description.get("nir_profile", "exact")
    kind = description["format"] + (f" {profile} profile" if profile != "exact" else "")
    line = f"wrote {path} ({kind}, target {a['target']})"
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
