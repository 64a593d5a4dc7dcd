"""``spikeshield eval``: the adaptive attack ensemble on a compile directory."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from spikeshield.compiler.driver.cli.common import (
    CheckpointEveryOpt,
    DeviceOpt,
    NprocOpt,
    ResumeOpt,
    SeedOpt,
    SkipVerifyOpt,
    _checkpoint,
    _guard,
    _in_process_group,
    _launch,
    _robustness_line,
    app,
)


@app.command("eval")
def eval_cmd(
    directory: Annotated[Path, typer.Argument(help="A compile directory (holds snn.ir, and ann.ir for the comparison).")],
    preset: Annotated[str, typer.Option(help="Attack ensemble: adaptive (default: APGD-CE and SA-PGD through ASSG, then paper's 19 and issue 18's members; each batch stops after 3 members in a row broke nothing, see --patience), paper (the papers' 19, for comparison), quick (4 members, a smoke test), strong (adaptive + SA-PGD-100, APGD, Square, width sweep, all run) or autoattack (AutoAttack's standard set through the strongest gradient mode).")] = "adaptive",
    eps: Annotated[Optional[float], typer.Option(help="L-inf budget in [0, 1] (default: 0.1 for 1-channel data, 8/255 for colour).")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Attack the first N test samples (default: 1000, or the whole test split if smaller).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size of the attacks.")] = 256,
    attack: Annotated[str, typer.Option(help="Base attack of the paper preset: pgd (20 steps), fgsm or apgd.")] = "pgd",
    exhaustive: Annotated[bool, typer.Option(help="Every member attacks every sample (gives per-member accuracy; slower).")] = False,
    budget: Annotated[Optional[float], typer.Option(help="Seconds for the SNN ensemble: after the first batch, the members past what fits are skipped for every sample (the presets run strongest first); the report names them.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop each batch of samples once this many members in a row broke none of its samples (the report counts the samples each later member was spared); 0 runs every member. Default: the preset's own.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Data spec (default: the one recorded at compile time).")] = None,
    ir: Annotated[str, typer.Option("--ir", help="Which SNN of the directory to attack: snn.ir, or the target-adapted snn_<target>.ir (its report goes to robustness_<target>.*).")] = "snn.ir",
    shard: Annotated[Optional[str], typer.Option("--shard", help="Attack only shard I of N (I/N, from 1) of the samples, on this machine, and save its record to --shards; merge them with --merge. Any scheduler, any machine: the merged report is the one-process report.")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Merge the shard records in --shards into the report (refuses shards of another SNN, data or settings, and missing ones).")] = False,
    shards: Annotated[Optional[Path], typer.Option("--shards", help="Folder of the shard records (default: DIR.eval-shards beside DIR).")] = None,
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
                                base_attack=attack, exhaustive=exhaustive, seed=seed, device=dev,
                                budget=budget, patience=patience)

    def check() -> None:
        from spikeshield.compiler.driver.robustness import check_ir_name, eval_chunks

        check_ir_name(directory, ir)
        from spikeshield.runtime.device import resolve_device
        from spikeshield.runtime.distributed import check_processes

        resolve_device(device)
        check_processes(nproc, eval_chunks(directory, data, config(device)),
                        f"batches of {batch_size} test samples")

    def run() -> None:
        if shard is not None or merge:
            return shard_or_merge()
        if not _launch(nproc, check):
            _in_process_group(device, eval_here)

    def shard_or_merge() -> None:
        from spikeshield.compiler.driver.eval_shards import (
            parse_shard,
            read_shards,
            shard_file,
            write_shard,
        )
        from spikeshield.compiler.driver.robustness import evaluate_directory, robustness_files
        from spikeshield.compiler.ir.errors import ConfigError

        if (shard is not None) == merge or nproc != 1 or resume is not None or budget is not None:
            raise ConfigError("give either --shard I/N or --merge, without --nproc, --resume or "
                              "--budget")
        from spikeshield.runtime.device import resolve_device

        folder = shards or directory.with_name(directory.name + ".eval-shards")
        cfg = config(str(resolve_device(device)))  # as eval_here records it
        if merge:
            report = evaluate_directory(directory, data, cfg, None, skip_verify, ir,
                                        shards=read_shards(folder))
            json_name, md_name, png_name = robustness_files(ir)
            snn = report["snn"]
            typer.echo(f"merged {report['shards']} shards: SNN robust accuracy "
                       f"{100 * snn['robust_accuracy']:.2f}% on {report['samples']} samples")
            typer.echo(f"wrote {directory / md_name}, {json_name} and {png_name}")
            return
        which = parse_shard(shard)
        record = evaluate_directory(directory, data, cfg, None, skip_verify, ir, shard=which)
        path = write_shard(record, shard_file(folder, which))
        typer.echo(f"wrote {path} (shard {shard}); merge with: spikeshield eval {directory} "
                   f"--merge --shards {folder}")

    def eval_here(current) -> None:
        from dataclasses import asdict

        from spikeshield.compiler.driver.manifest import file_digest
        from spikeshield.compiler.driver.robustness import evaluate_directory, robustness_files
        from spikeshield.runtime.device import resolve_device
        from spikeshield.runtime.distributed import local_device

        cfg = config(str(local_device(resolve_device(device))))
        from spikeshield.compiler.driver.outputs import output_lock

        settings = {"directory": str(directory.resolve()), "ir": ir,
                    "snn_sha256": file_digest(directory / ir),
                    "ann_sha256": file_digest(directory / "ann.ir"), "data": data,
                    "processes": current.size, **asdict(cfg)}
        settings.pop("device")
        with output_lock(directory) if current.is_main else contextlib.nullcontext():
            checkpoint = _checkpoint("eval", directory.with_name(directory.name +
                                                                 ".eval-checkpoint"),
                                     settings, checkpoint_every, resume)
            report = evaluate_directory(directory, data, cfg, checkpoint, skip_verify, ir)
        if not current.is_main:
            return
        checkpoint.discard()
        ann = report.get("ann") or {}
        snn = report["snn"]
        typer.echo(f"clean accuracy: ANN {100 * ann.get('clean_accuracy', float('nan')):.2f}%, SNN "
                   f"{100 * snn['clean_accuracy']:.2f}% on {report['samples']} test samples")
        typer.echo(_robustness_line(report["eps"], preset, ann.get("pgd_robust_accuracy"),
                                    snn["robust_accuracy"], snn["diagnostics"]["verdict"]))
        json_name, md_name, png_name = robustness_files(ir)
        typer.echo(f"wrote {directory / md_name}, {json_name} and {png_name}")

    _guard(run)
