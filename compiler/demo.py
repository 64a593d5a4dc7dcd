"""``spikeshield demo``: the whole path on the embedded mnist5k data, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from spikeshield.compiler.errors import ConfigError
from spikeshield.compiler.pipeline import CompileConfig, compile_model
from spikeshield.compiler.train_ann import TrainConfig, export_pt2, train_robust
from spikeshield.frontends.datasets import load_data
from spikeshield.frontends.zoo import build_model
from spikeshield.runtime.device import resolve_device


def run_demo(
    out: Path,
    epochs: int = 5,
    eps: float = 0.1,
    timesteps: list[int] | None = None,
    seed: int = 0,
    device: str = "auto",
    echo: Callable[[str], None] = print,
) -> list[dict]:
    """Train LeNet with TRADES on mnist5k, compile it at each T, and print an accuracy table."""
    timesteps = timesteps or [4, 8, 16, 32]
    if any(t <= 0 for t in timesteps):
        raise ConfigError(f"timesteps must all be >= 1, got {timesteps}")
    start = time.perf_counter()
    dev = resolve_device(device)
    splits = load_data("mnist5k", seed=seed)
    mean, std = splits.channel_stats()
    torch.manual_seed(seed)
    model = build_model("lenet", splits.input_shape, splits.num_classes, mean, std)
    echo(f"[1/2] training LeNet with TRADES (eps={eps}) on mnist5k for {epochs} epochs ...")
    train_robust(model, splits, TrainConfig(objective="trades", eps=eps, epochs=epochs, seed=seed), dev)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "lenet-trades.pt2"
    export_pt2(model, splits.input_shape, model_path)
    echo(f"[2/2] compiling {model_path} at T = {', '.join(map(str, timesteps))} ...")
    rows = []
    for t in timesteps:
        cfg = CompileConfig(timesteps=t, device=str(dev), seed=seed)
        result = compile_model(model_path, splits, cfg, out / f"snn-T{t}")
        rows.append({"timesteps": t, "ann": result.report["ann"]["accuracy"],
                     "snn": result.report["snn"]["accuracy"]})
    echo("")
    echo(f"clean accuracy on the {result.report['snn']['samples']} mnist5k test images")
    echo("   T    ANN      SNN      SNN-ANN")
    for r in rows:
        echo(f"{r['timesteps']:4d}  {100 * r['ann']:6.2f}%  {100 * r['snn']:6.2f}%  "
             f"{100 * (r['snn'] - r['ann']):+6.2f} pp")
    echo(f"\nfiles in {out}/ (compiled SNNs with report.md in snn-T*/); "
         f"total {time.perf_counter() - start:.0f} s")
    return rows
