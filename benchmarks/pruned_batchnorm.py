"""Why pruning re-estimates BatchNorm statistics: a trained ANN graph pruned one-shot to a high
sparsity, scored with the statistics it was trained with and with statistics re-estimated for the
pruned network (``runtime/batchnorm_statistics.py``), for the global and the uniform per-layer
magnitude budgets. Also how many output units of each layer keep at least one weight.

Reads the ANN of a compile directory (``ann.ir``), for example the dense run of
``benchmarks/paper_b.py``. No training: one-shot masks, the first ``--n`` test images, statistics
re-estimated on the first ``--images`` training images. Prints a markdown table.

    python benchmarks/pruned_batchnorm.py /tmp/paperb2/dense --data fashion-mnist
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directory", type=Path, help="a compile directory holding ann.ir")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--sparsity", type=float, default=0.99)
    p.add_argument("--dense", default="first", help="layers kept dense (first, last, names)")
    p.add_argument("--n", type=int, default=1000, help="test images scored")
    p.add_argument("--images", type=int, default=512, help="training images for the statistics")
    args = p.parse_args()
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.ir.serialize import load_graph
    from spikeshield.runtime.batchnorm_statistics import recalibrate_batchnorm
    from spikeshield.runtime.evaluate import accuracy_of
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.pruning import allocate_masks, parse_layers, resolve_dense

    ann = load_graph(args.directory / "ann.ir")
    data = load_data(args.data)
    test = data.test.head(args.n)
    stats_images = [x for x, _ in data.train.head(args.images).batches(256)]
    layers = ann.synaptic_nodes()
    weights = {n: ann.op(n).weight for n in layers}
    dense = resolve_dense(layers, parse_layers(args.dense))
    print(f"{args.directory / 'ann.ir'}: {sum(w.numel() for w in weights.values()):,} weights, "
          f"{args.sparsity:g} sparsity one-shot, {sorted(dense) or 'no'} layer(s) dense; accuracy "
          f"on the first {len(test)} test images, statistics from the first {args.images} "
          "training images\n")
    print("| masks by | accuracy, trained statistics | accuracy, re-estimated statistics | "
          "output units with a weight left, per layer |")
    print("|---|---|---|---|")
    with torch.no_grad():
        for budget in ("global", "layer"):
            masks = allocate_masks(weights, args.sparsity, budget, dense)
            pruned = ann.copy()
            for name, mask in masks.items():
                op = pruned.op(name)
                pruned.set_op(name, op.replace(weight=op.weight * mask, mask=mask))
            executor = GraphExecutor(pruned).eval()
            trained = accuracy_of(executor, test)
            recalibrate_batchnorm(executor, stats_images)
            again = accuracy_of(executor, test)
            alive = ", ".join(f"{int((m.flatten(1).sum(1) > 0).sum())}/{m.shape[0]}"
                              for n, m in masks.items() if n not in dense)
            label = {"global": "global magnitude", "layer": "uniform per layer (magnitude)"}
            print(f"| {label[budget]} | {100 * trained:.1f}% | {100 * again:.1f}% | {alive} |")


if __name__ == "__main__":
    main()
