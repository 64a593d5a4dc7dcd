"""One attack step (forward + input gradient, cross-entropy) through a compiled SNN in three gradient
modes, side by side: a detached-reset triangle (the kernel computes its slope), ASSG with the reset
detached as the fused kernel computes it (moments and slope in one pass), and ASSG as PyTorch
operations between the fused forward and backward (the path before the kernel took it over).

Each round runs the three back to back, each on a fresh ASSG tracker warmed by one step; medians of
``--rounds`` rounds of ``--steps`` steps. The SNN is a frontier stage of ``benchmarks/frontier.py``
(``WORK/<data>-<arch>/frontier-e2-max2000/snn.ir``) or any ``.ir``.

    python benchmarks/assg_step.py runs/i41/conv/mnist5k-resnet20/frontier-e2-max2000/snn.ir --batch 16
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("snn", type=Path, help="a compiled SNN (.ir)")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the medians as JSON")
    args = parser.parse_args()
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.ir.serialize import load_graph
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.gradient_modes import GradientMode, SharpnessTracker

    executor = GraphExecutor(load_graph(args.snn))
    test = load_data(args.data, seed=0).test.head(args.batch)
    x, y = test.images.float().div(255), test.labels
    fused_layer = SharpnessTracker.layer

    def pytorch_layer(tracker, name):  # the tracker's slope as a plain function: the PyTorch path
        return functools.partial(tracker.slope, name)

    def step(mode, tracker) -> None:
        xs = x.clone().requires_grad_()
        with executor.using(mode, tracker):
            F.cross_entropy(executor(xs, args.timesteps), y).backward()

    variants = {"triangle:1:detach": fused_layer, "assg:detach, fused kernel": fused_layer,
                "assg:detach, PyTorch operations": pytorch_layer}
    samples: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(args.rounds):
            for label, layer in variants.items():
                SharpnessTracker.layer = layer
                mode, tracker = GradientMode.parse(label.split(",")[0]), SharpnessTracker()
                step(mode, tracker)
                started = time.perf_counter()
                for _ in range(args.steps):
                    step(mode, tracker)
                samples[label].append((time.perf_counter() - started) / args.steps)
    finally:
        SharpnessTracker.layer = fused_layer
    base = statistics.median(samples["triangle:1:detach"])
    print(f"{args.snn}, batch {args.batch}, T = {args.timesteps}, medians of {args.rounds} rounds "
          f"of {args.steps} steps, {torch.get_num_threads()} threads")
    for label, values in samples.items():
        median = statistics.median(values)
        print(f"  {label:34s} {1000 * median:8.1f} ms per step  {median / base:.2f}x the triangle's")
    if args.out:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from provenance import provenance

        args.out.write_text(json.dumps({
            "name": args.out.stem, **provenance(), "snn": str(args.snn), "batch": args.batch,
            "timesteps": args.timesteps, "rounds": args.rounds, "steps": args.steps,
            "ms": {k: 1000 * statistics.median(v) for k, v in samples.items()}}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
