"""``spikeshield demo``: the whole path on the embedded mnist5k data, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from spikeshield.compiler.driver.data import load_data
from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model
from spikeshield.compiler.driver.pt2 import export_pt2
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.frontends.zoo import build_model
from spikeshield.runtime.device import resolve_device
from spikeshield.runtime.training import TrainConfig, train_robust


def run_demo(
    out: Path,
    epochs: int = 5,
    eps: float = 0.1,
    timesteps: list[int] | None = None,
    seed: int = 0,
    device: str = "auto",
    echo: Callable[[str], None] = print,
    finetune_epochs: int = 3,
    robust_samples: int = 500,
    max_train: int | None = None,
) -> list[dict]:
    """Train LeNet with TRADES on mnist5k, convert it at each T and print an accuracy table, then
    finetune the T=8 SNN robustly and attack it with the quick ensemble."""
    timesteps = timesteps or [4, 8, 16, 32]
    if any(t <= 0 for t in timesteps):
        raise ConfigError(f"timesteps must all be >= 1, got {timesteps}")
    start = time.perf_counter()
    dev = resolve_device(device)
    splits = load_data("mnist5k", seed=seed)
    mean, std = splits.channel_stats()
    torch.manual_seed(seed)
    model = build_model("lenet", splits.input_shape, splits.num_classes, mean, std)
    echo(f"[1/3] training LeNet with TRADES (eps={eps}) on mnist5k for {epochs} epochs ...")
    trained = TrainConfig(objective="trades", eps=eps, epochs=epochs, seed=seed, max_train=max_train)
    train_robust(model, splits, trained, dev)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "lenet-trades.pt2"
    export_pt2(model, splits.input_shape, model_path,
               training={"arch": "lenet", "data": "mnist5k", **asdict(trained)})
    echo(f"[2/3] converting {model_path} at T = {', '.join(map(str, timesteps))} (calibration only) ...")
    rows = []
    for t in timesteps:
        cfg = CompileConfig(timesteps=t, device=str(dev), seed=seed, finetune="none",
                            robustness="none")
        result = compile_model(model_path, splits, cfg, out / f"snn-T{t}", force=True)
        rows.append({"timesteps": t, "ann": result.report["ann"]["accuracy"],
                     "snn": result.report["snn"]["accuracy"]})
    echo("")
    echo(f"clean accuracy on the {result.report['snn']['samples']} mnist5k test images")
    echo("   T    ANN      SNN      SNN-ANN")
    for r in rows:
        echo(f"{r['timesteps']:4d}  {100 * r['ann']:6.2f}%  {100 * r['snn']:6.2f}%  "
             f"{100 * (r['snn'] - r['ann']):+6.2f} pp")
    robust_t = 8 if 8 in timesteps else timesteps[0]
    echo(f"\n[3/3] T={robust_t}: TRADES finetuning of the SNN ({finetune_epochs} epochs), then the quick "
         f"attack ensemble on {robust_samples} test images ...")
    cfg = CompileConfig(timesteps=robust_t, device=str(dev), seed=seed,
                        finetune_epochs=finetune_epochs, eps=eps, eval_samples=robust_samples,
                        finetune_max_train=max_train, robustness="quick")
    result = compile_model(model_path, splits, cfg, out / f"robust-snn-T{robust_t}", force=True)
    rob = result.report["robustness"]
    echo(f"on those {result.report['snn']['samples']} images, clean: ANN "
         f"{100 * result.report['ann']['accuracy']:.2f}%, finetuned SNN "
         f"{100 * result.report['snn']['accuracy']:.2f}%; robust at eps={eps}: ANN (PGD-20) "
         f"{100 * rob['ann_pgd_robust_accuracy']:.2f}%, SNN (quick ensemble worst case) "
         f"{100 * rob['snn_robust_accuracy']:.2f}%")
    echo(rob["verdict"])
    echo(f"\nfiles in {out}/ (converted SNNs in snn-T*/, the finetuned one with robustness.md and "
         f"robustness.png in robust-snn-T{robust_t}/); "
         f"total {time.perf_counter() - start:.0f} s")
    return rows
