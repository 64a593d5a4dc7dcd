"""The IF scan compiled and fused (runtime/csrc/if_scan.cpp) against the same scan as PyTorch
operations (``SPIKESHIELD_FUSED_SCAN=0``), side by side in one process (issue 44).

For IF layers of the shapes the zoo's nets have on 28x28 images (T = 8, batch 32 and 256): the
median time of a forward without gradients (inference, attacks' checks), a forward and backward
(BPTT: a finetuning or attack step's IF share), and calibration's spike counts. Rounds alternate
between the two paths so that both see the same machine load. Also checks, on every shape, that
the spikes are identical. Prints a Markdown table; ``--out`` writes JSON.

    python benchmarks/if_scan.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

# (layer, channels, height, width): resnet20 at width 0.5 (8/16/32 channels at 28/14/7), lenet's
# first conv (6 at 24x24), vgg11 at width 0.5's first conv (32 at 28x28), a linear layer.
SHAPES = [("resnet20 stage 1", 8, 28, 28), ("resnet20 stage 2", 16, 14, 14),
          ("resnet20 stage 3", 32, 7, 7), ("lenet conv1", 6, 24, 24),
          ("vgg11 conv1", 32, 28, 28), ("linear 512", 512, 1, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    parser.add_argument("--batches", default="32,256")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from spikeshield.compiler.ir.surrogates import Surrogate
    from spikeshield.runtime import neurons
    from spikeshield.runtime.neurons import IFParameters, if_rate, if_scan

    available, why = neurons.fused_scan_available()
    if not available:
        sys.exit(f"the fused scan is unavailable here: {why}")

    def timed(fn) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for name, channels, h, w in SHAPES:
            g = torch.Generator().manual_seed(0)
            sample = (channels, h, w) if h > 1 else (channels,)
            currents = torch.rand(args.timesteps, batch, *sample, generator=g) * 0.9 - 0.15
            theta = (torch.rand(channels, generator=g) * 0.6 + 0.3).view(-1, *[1] * (len(sample) - 1))
            weights = torch.randn(currents.shape, generator=g)
            p = IFParameters(theta, "subtract", Surrogate("triangle", 1.0), v_init=0.5)

            def forward() -> torch.Tensor:
                with torch.no_grad():
                    return if_scan(currents, p)

            x_leaf = currents.clone().requires_grad_()
            th_leaf = theta.clone().requires_grad_()
            p_leaf = IFParameters(th_leaf, "subtract", p.surrogate, v_init=0.5)

            def bptt() -> None:  # the IF layer's own share of a BPTT step: its forward, backward
                spikes = if_scan(x_leaf, p_leaf)
                torch.autograd.grad(spikes, (x_leaf, th_leaf), weights)

            def counts() -> None:
                with torch.no_grad():
                    if_rate(currents, p, args.timesteps, len(sample))

            times: dict[str, dict[str, list[float]]] = {k: {"torch": [], "fused": []}
                                                        for k in ("forward", "bptt", "rate")}
            spikes = {}
            for r in range(args.rounds + 1):  # the first round warms up and is not counted
                for path in ("fused", "torch"):
                    os.environ[neurons.FUSED_VARIABLE] = "1" if path == "fused" else "0"
                    for key, fn in (("forward", forward), ("bptt", bptt), ("rate", counts)):
                        seconds = timed(fn)
                        if r:
                            times[key][path].append(seconds)
                    if r == 0:
                        spikes[path] = forward()
            os.environ.pop(neurons.FUSED_VARIABLE)
            identical = bool(torch.equal(spikes["fused"], spikes["torch"]))
            row = {"layer": name, "batch": batch, "shape": list(currents.shape),
                   "spikes_identical": identical}
            for key, pair in times.items():
                row[key] = {path: statistics.median(v) * 1e3 for path, v in pair.items()}
                row[key]["speedup"] = row[key]["torch"] / row[key]["fused"]
            rows.append(row)
            print(f"{name} batch {batch}: forward {row['forward']['speedup']:.2f}x, BPTT "
                  f"{row['bptt']['speedup']:.2f}x, rate {row['rate']['speedup']:.2f}x, spikes "
                  f"identical: {identical}", flush=True)

    print(f"\nT = {args.timesteps}, medians of {args.rounds} alternating rounds (ms; torch / fused)")
    print("| layer | batch | forward | BPTT (forward + backward) | calibration rate | spikes |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [f"{row[k]['torch']:.2f} / {row[k]['fused']:.2f} = **{row[k]['speedup']:.1f}x**"
                 for k in ("forward", "bptt", "rate")]
        print(f"| {row['layer']} | {row['batch']} | " + " | ".join(cells) +
              f" | {'identical' if row['spikes_identical'] else 'DIFFER'} |")
    if args.out:
        args.out.write_text(json.dumps({
            "command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "rows": rows},
            indent=1))


if __name__ == "__main__":
    main()
