"""``spikeshield export`` and ``spikeshield run``: the SNN in other formats, and simulated on inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spikeshield.compiler.driver.cli.common import (
    TARGET_HELP,
    DeviceOpt,
    ForceOpt,
    SkipVerifyOpt,
    _export_line,
    _guard,
    app,
)
from spikeshield.compiler.driver.config import EXPORT_FORMATS

FORMAT_HELP = (f"One of {', '.join(EXPORT_FORMATS)}: nir (the graph; see --nir-profile), onnx "
               "(time-unrolled, fixed T), onnx-step (one step, explicit state), or a framework's "
               "native module (load it with spikeshield.backends.frameworks.load_module).")


@app.command("export")
def export_cmd(
    source: Annotated[Path, typer.Argument(help="A compile directory (its snn.ir), a .ir or a .nir file.")],
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "nir",
    target: Annotated[str, typer.Option("--target", help=TARGET_HELP)] = "generic",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output file (default: snn.nir, snn.onnx, snn_step.onnx or snn.<framework>.safetensors in DIR).")] = None,
    nir_profile: Annotated[str, typer.Option("--nir-profile", help="exact (what the runtime computes, in all of NIR) or portable (only what SNN frameworks' NIR importers read: reset to zero, v_init 0, one threshold per layer; the reader averages the output over T; default file snn.portable.nir).")] = "exact",
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
                                          skip_verify, nir_profile)
        typer.echo(_export_line(path, description))

    _guard(run)


@app.command("run")
def run_cmd(
    source: Annotated[Path, typer.Argument(help="A compile directory, a .ir or any .nir graph.")],
    inputs: Annotated[Path, typer.Option("--inputs", help="A .npy array (N, *input shape) of float inputs in the model's input space: pixels in [0, 1] for spikeshield models (normalisation is inside the graph); whatever the NIR graph's Input node takes otherwise.")],
    out: Annotated[Path, typer.Option("--out", help="Output .npz: predictions (N,), logits (N, classes), spikes/<layer> (N,) spike counts per sample, layers, timesteps.")],
    timesteps: Annotated[Optional[int], typer.Option("--timesteps", "-T", help="Time steps (default: the T recorded in the graph).")] = None,
    input_scale: Annotated[float, typer.Option("--input-scale", help="Divide the inputs by this first (255 for 8-bit pixels); inputs outside the model's declared range are refused.")] = 1.0,
    engine: Annotated[str, typer.Option("--engine", help="runtime (spikeshield's) or norse (the SNN as a Norse module, backends.frameworks): the same numbers.")] = "runtime",
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    skip_verify: SkipVerifyOpt = False,
) -> None:
    """Simulate a compiled SNN or a NIR graph on given inputs and save its outputs."""

    def run() -> None:
        from spikeshield.compiler.driver.simulate import run_on_inputs

        result = run_on_inputs(source, inputs, out, timesteps, input_scale, force, skip_verify,
                               engine, device)
        spikes = sum(int(result[f"spikes/{n}"].sum()) for n in result["layers"])
        typer.echo(f"simulated {len(result['predictions'])} inputs for T={int(result['timesteps'])}: "
                   f"{spikes} spikes in {len(result['layers'])} layers; wrote {out}")

    _guard(run)
