"""``spikeshield profile``, ``verify``, ``inspect`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spikeshield.compiler.driver.cli.common import (
    DeviceOpt,
    EnergyOpt,
    SeedOpt,
    SkipVerifyOpt,
    _fail,
    _guard,
    _profile_line,
    app,
)


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
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="The dense SNN's compile directory (or its profile.json), profiled on the same --n and -T: adds E_dense / E_sparse in Paper B's convention and in spikeshield's.")] = None,
    neurobench: Annotated[bool, typer.Option("--neurobench/--no-neurobench", help="Also measure the SNN with NeuroBench's own metrics (its snnTorch module), beside spikeshield's figures, where NeuroBench is installed.")] = True,
    skip_verify: SkipVerifyOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Energy and memory profile of a compiled SNN: per-layer SynOps, MACs, energy, firing rates
    and stored bytes, and NeuroBench's figures beside them; writes profile.json, profile.md and two
    PNG plots into DIR."""

    def run() -> None:
        from spikeshield.compiler.driver.profile import profile_directory, profile_summary
        from spikeshield.runtime.energy import energy_model

        model = energy_model(energy, mac_pj, ac_pj, memory_pj)
        p = profile_directory(directory, data, n, model, timesteps, device, seed, skip_verify,
                              baseline, neurobench)
        typer.echo(_profile_line(profile_summary(p)))
        if p.get("against_dense"):
            c = p["against_dense"]
            paper, ours = (c["paper_b_dense_over_sparse_energy"], c["dense_over_sparse_energy"])
            typer.echo("against the dense SNN: E_dense / E_sparse "
                       f"{'n/a' if paper is None else f'{paper:.2f}x'} (Paper B's convention), "
                       f"{'n/a' if ours is None else f'{ours:.2f}x'} (spikeshield's headline)")
        gpu = p["gpu_energy"]
        if gpu.get("measured"):
            typer.echo(f"measured GPU energy (NVML, {gpu['device']}): {gpu['joules_per_sample']:.4g} J "
                       "per sample, whole board")
        typer.echo(f"wrote {directory / 'profile.md'}, profile.json, profile_energy.png and "
                   "profile_rates.png")

    _guard(run)


@app.command()
def ops() -> None:
    """List every IR op: its traits, what conversion does with it, which frontends, backends and
    runtime tables handle it, and the source ops each frontend lowers."""

    def run() -> None:
        from spikeshield.compiler.driver.ops_table import ops_table

        typer.echo(ops_table())

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
