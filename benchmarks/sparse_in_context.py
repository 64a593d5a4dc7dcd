"""The weight-sparse path layer by layer in its network: a compiled SNN's whole forward pass and
attack step (batch 64) with the dense kernel everywhere, with the per-layer choices the runtime's
probe made, and with each pruned conv layer's sparse kernel switched on alone; then all-dense
again, which shows how far the same setting drifts within one process.

    .venv/bin/python benchmarks/sparse_in_context.py RUN_DIR [--rounds 5]

Prints, per step kind, each setting's speed-up over the first all-dense timing (medians of
``--rounds`` calls after one warm-up), settings timed one after the other.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from spikeshield.compiler.driver.data import load_data
from spikeshield.compiler.ir.serialize import load_graph
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode
from spikeshield.runtime.sparse_conv import median_seconds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_b import step_kinds  # the same steps paper_b times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a compile output directory (its snn.ir)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data", default="fashion-mnist")
    args = p.parse_args()
    snn = load_graph(args.run / "snn.ir")
    spec = snn.run_spec()
    x, y = next(load_data(args.data).test.batches(64))
    executor = GraphExecutor(snn, encoding=spec.encoding, sparse="auto",
                             gradient_mode=GradientMode.parse("triangle:1"))
    executor.eval()
    steps = {kind: step for kind, (step, _) in step_kinds(x, y, spec.timesteps).items()}
    steps["forward"](executor)
    steps["attack_step"](executor)  # the probe measures each (layer, input shape, backward) case
    probe = dict(executor.sparse_convs.choices)
    print("probe's choices:", {f"{k[0]} {'backward' if k[2] else 'forward'}": v
                               for k, v in probe.items()})
    out = {}
    for kind, backward in (("forward", False), ("attack_step", True)):
        cases = [k for k in probe if k[2] == backward]
        step = functools.partial(steps[kind], executor)

        def sparse_only(layers):
            for case in cases:
                executor.sparse_convs.choices[case] = case[0] in layers

        seconds = {}
        sparse_only(set())
        seconds["all dense"] = median_seconds(step, args.rounds)
        for case in cases:
            executor.sparse_convs.choices[case] = probe[case]
        seconds["probe's choices"] = median_seconds(step, args.rounds)
        for case in cases:
            sparse_only({case[0]})
            seconds[f"only {case[0]} sparse"] = median_seconds(step, args.rounds)
        sparse_only(set())
        seconds["all dense again"] = median_seconds(step, args.rounds)
        out[kind] = seconds
        print(kind, {name: f"{seconds['all dense'] / s:.3f}x" for name, s in seconds.items()},
              flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
