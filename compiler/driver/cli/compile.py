"""``spikeshield compile``: a trained ANN into a calibrated, finetuned SNN directory."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from spikeshield.compiler.driver.cli.common import (
    CheckpointEveryOpt,
    CompileConfig,
    DataOpt,
    ForceOpt,
    NprocOpt,
    ResumeOpt,
    _checkpoint,
    _claimed,
    _export_line,
    _guard,
    _in_process_group,
    _launch,
    _profile_line,
    _robustness_line,
    app,
    config_parameters,
)


def compile_cmd(
    model: Annotated[Path, typer.Argument(help="Model file: .pt2 (torch.export), .onnx, or .ir.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory, written atomically; an existing one is replaced only with --force, and only if spikeshield wrote it.")],
    *,
    data: DataOpt = "mnist5k",
    nproc: NprocOpt = 1,
    resume: ResumeOpt = None,
    checkpoint_every: CheckpointEveryOpt = 300.0,
    force: ForceOpt = False,
    **options: Any,
) -> None:
    """Convert a trained ANN into a calibrated SNN; writes snn.ir, ann.ir, report.json, report.md
    and manifest.json (SHA-256 of every file; `spikeshield verify OUT` checks it).
    With --nproc N the robust finetuning is shared by N processes; the rest runs in rank 0.
    Finetuning and attacks checkpoint to OUT.checkpoint; --resume continues an interrupted run."""

    def check() -> None:
        from spikeshield.compiler.ir.errors import ConfigError
        from spikeshield.runtime.distributed import World, per_process_batch

        if options["finetune"] == "none":
            raise ConfigError("--nproc shares the robust finetuning, and --finetune is none; "
                              "drop --nproc or choose a finetuning objective")
        per_process_batch(options["batch_size"], World(0, nproc))

    def run() -> None:
        if not _launch(nproc, check):
            _in_process_group(options["device"], compile_here)

    def compile_here(current) -> None:
        from spikeshield.compiler.driver.pipeline import compile_model

        cfg = CompileConfig(**options)
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
            f"ANN accuracy {100 * r['ann']['accuracy']:.2f}%, SNN (T={cfg.timesteps}) accuracy "
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


# The options after --out are CompileConfig's fields (driver.config), defined there once.
_fixed = list(inspect.signature(compile_cmd, eval_str=True).parameters.values())[:-1]
compile_cmd.__signature__ = inspect.Signature(_fixed + config_parameters())
app.command("compile")(compile_cmd)
