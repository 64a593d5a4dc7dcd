"""Would an event-driven (sparse) convolution beat the dense one on the spike maps we actually see?

For each convolution of a converted network (zoo vgg11 and resnet20 on mnist5k, built and calibrated
exactly as in ``runtime_speed.py``) whose input is a spike train, this takes the real spike maps
entering it (T steps folded into the batch) and times, side by side in one round:

* ``dense``: ``F.conv2d`` on the folded spike maps, what the executor runs;
* ``csr@W``: only the product of the im2col matrix, already in CSR form, with the weight matrix
  (MKL sparse x dense). It is a lower bound for any event-driven kernel built from torch's sparse
  operations: it leaves out building the sparse matrix, which the next column measures;
* ``build``: ``F.unfold`` plus ``to_sparse_csr`` of the spike maps, the cost of getting there.

It prints the spike density per layer and the ratios dense/(csr@W) and dense/(build + csr@W). Ratios
above 1 mean the sparse path is faster. Issue 6 asks the SNN forward to run >= 3x faster than a
step-by-step Norse execution at batch <= 32; since the convolutions dominate and Norse runs the same
dense kernels, that needs the convolutions >= ~2.6x faster than dense (see BENCHMARKS.md).

    python benchmarks/sparse_conv.py --nets vgg11,resnet20 --batch 32 --timesteps 8
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_speed import build  # same networks, same calibration

from spikeshield.compiler.ir.ops import IF, Conv2d
from spikeshield.runtime.sparse_conv import median_seconds


def timed(fn, repeats: int) -> float:
    """Milliseconds, the median of ``repeats`` calls after a warm-up."""
    return median_seconds(fn, repeats) * 1e3


def conv_inputs(snn, images, batch: int, steps: int):
    """(node name, Conv2d op, folded spike maps entering it) for every conv fed by an IF layer."""
    graph = snn.graph
    for name in graph.nodes_of(Conv2d):
        parents = graph.inputs(name)
        if len(parents) != 1 or not isinstance(graph.op(parents[0]), IF):
            continue
        with torch.no_grad():
            value = snn.forward(images[:batch], steps, stop_at=name)
        yield name, graph.op(name), value.reshape(-1, *value.shape[2:]).contiguous()


def measure(name: str, op: Conv2d, spikes: torch.Tensor, repeats: int) -> dict:
    weight = op.weight.detach() if op.mask is None else (op.weight * op.mask).detach()
    kernel = tuple(weight.shape[2:])
    conv = {"stride": op.stride, "padding": op.padding, "dilation": op.dilation}

    def unfold() -> torch.Tensor:
        cols = F.unfold(spikes, kernel, dilation=op.dilation, padding=op.padding, stride=op.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    columns = unfold().to_sparse_csr()
    matrix = weight.reshape(weight.shape[0], -1).t().contiguous()
    reference = F.conv2d(spikes, weight, **conv).permute(0, 2, 3, 1).reshape(-1, weight.shape[0])
    torch.testing.assert_close(columns @ matrix, reference, rtol=1e-4, atol=1e-4)
    dense, product, building = [], [], []
    for _ in range(repeats):  # the three back to back per round: same machine load
        dense.append(timed(lambda: F.conv2d(spikes, weight, **conv), 1))
        product.append(timed(lambda: columns @ matrix, 1))
        building.append(timed(lambda: unfold().to_sparse_csr(), 1))
    dense_ms, product_ms, build_ms = (statistics.median(v) for v in (dense, product, building))
    return {
        "node": name,
        "shape": tuple(spikes.shape[1:]),
        "out": int(weight.shape[0]),
        "density": spikes.mean().item(),
        "dense_ms": dense_ms,
        "csr_ms": product_ms,
        "build_ms": build_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default="vgg11,resnet20")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, T {args.timesteps}")
    print("net       node                          input        out  density  dense ms  csr@W ms  "
          "build ms  dense/csr@W  dense/(build+csr@W)")
    for arch in args.nets.split(","):
        _, _, snn, images = build(arch, args.timesteps)
        totals = {"dense_ms": 0.0, "csr_ms": 0.0, "build_ms": 0.0}
        for name, op, spikes in conv_inputs(snn, images, args.batch, args.timesteps):
            row = measure(name, op, spikes, args.repeats)
            for key in totals:
                totals[key] += row[key]
            print(f"{arch:9s} {name[:29]:29s} {row['shape']!s:12s} {row['out']:4d}  "
                  f"{row['density']:7.3f}  {row['dense_ms']:8.1f}  {row['csr_ms']:8.1f}  "
                  f"{row['build_ms']:8.1f}  {row['dense_ms'] / row['csr_ms']:11.2f}  "
                  f"{row['dense_ms'] / (row['build_ms'] + row['csr_ms']):19.2f}")
        print(f"{arch:9s} {'all spike-fed convolutions':29s} {'':12s} {'':4s}  {'':7s}  "
              f"{totals['dense_ms']:8.1f}  {totals['csr_ms']:8.1f}  {totals['build_ms']:8.1f}  "
              f"{totals['dense_ms'] / totals['csr_ms']:11.2f}  "
              f"{totals['dense_ms'] / (totals['build_ms'] + totals['csr_ms']):19.2f}")


if __name__ == "__main__":
    main()
