"""Weight-sparse convolutions (runtime/sparse_conv.py) against the dense kernel: per layer of the
>= 1M-weight model (vgg11 at width 0.5 on 28x28 inputs, 2.37M weights) at several densities, then
the whole SNN's forward pass and attack step (forward + input gradient) with the sparse path on
(``sparse="auto"``: each layer takes the kernel that measured faster) and off, side by side.

Random masks at the given density and binary inputs at 10% ones (the calibrated nets' spike maps
are 7-13% ones; BENCHMARKS.md). Medians of ``--rounds`` rounds. Prints markdown tables.

    python benchmarks/sparse_weights.py --batch 256 --densities 0.01,0.03,0.1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256, help="rows per conv call (T x N)")
    p.add_argument("--densities", default="0.01,0.03,0.1")
    p.add_argument("--snn-density", type=float, default=0.01)
    p.add_argument("--snn-batch", type=int, default=32)
    p.add_argument("-T", "--timesteps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=None,
                   help="also write the cells as JSON (benchmarks/results.py renders it)")
    args = p.parse_args()
    torch.set_num_threads(2)
    import torch.nn.functional as F

    from spikeshield.compiler.ir.ops import Conv2d, Linear
    from spikeshield.compiler.passes.manager import PassManager
    from spikeshield.frontends.torch_module import from_module
    from spikeshield.frontends.zoo import build_model
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.sparse_conv import SparsePlan, available, sparse_conv2d
    from spikeshield.runtime.sparse_conv import median_seconds as median

    ok, why = available()
    if not ok:
        sys.exit(f"the sparse kernel does not build here: {why}")
    torch.manual_seed(0)
    model = build_model("vgg11", (1, 28, 28), 10, [0.5], [0.25], 0.5).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = {}
    hooks = [c.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, i[0].shape))
             for c in convs]
    model(torch.rand(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    weights = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    print(f"vgg11 width 0.5 on 1x28x28: {weights:,} weights; batch {args.batch}, "
          f"{torch.get_num_threads()} threads, medians of {args.rounds}\n")
    print("| layer (weight) | input | density | forward dense ms | forward sparse ms | ratio "
          "| fwd+bwd dense ms | fwd+bwd sparse ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    layers = []
    for density in [float(d) for d in args.densities.split(",")]:
        for conv in convs[1:]:  # the first layer takes analog pixels, one channel
            shape = shapes[conv]
            x = (torch.rand(args.batch, *shape[1:]) < 0.1).float()
            mask = (torch.rand_like(conv.weight) < density).float()
            weight = (conv.weight.detach() * mask).requires_grad_()
            plan = SparsePlan.of(mask)
            geometry = (conv.stride, conv.padding, conv.dilation)
            xg = x.clone().requires_grad_()

            def dense(grad=False):
                out = F.conv2d(xg if grad else x, weight, None, *geometry)
                if grad:
                    out.sum().backward()

            def sparse(grad=False):
                out = sparse_conv2d(xg if grad else x, weight, None, plan, *geometry)
                if grad:
                    out.sum().backward()

            with torch.no_grad():
                fd, fs = median(dense, args.rounds), median(sparse, args.rounds)
            bd = median(lambda: dense(True), args.rounds)
            bs = median(lambda: sparse(True), args.rounds)
            layers.append({"weight": list(conv.weight.shape), "input": list(shape[1:]),
                           "density": density, "forward_ms": [1e3 * fd, 1e3 * fs],
                           "fwd_bwd_ms": [1e3 * bd, 1e3 * bs]})
            print(f"| {tuple(conv.weight.shape)} | {tuple(shape[1:])} | {density:g} "
                  f"| {1e3 * fd:.1f} | {1e3 * fs:.1f} | {fd / fs:.2f}x | {1e3 * bd:.1f} "
                  f"| {1e3 * bs:.1f} | {bd / bs:.2f}x |")
    # The whole SNN, pruned at --snn-density in every layer.
    graph = from_module(model, (1, 28, 28))
    for name in graph.nodes_of(Conv2d, Linear):
        op = graph.op(name)
        mask = (torch.rand_like(op.weight) < args.snn_density).float()
        graph.set_op(name, op.replace(weight=op.weight * mask, mask=mask))
    snn = PassManager().run(graph, [
        ("fold_batchnorm", {}), ("convert_relu_to_if", {"reset": "subtract", "v_init": 0.5}),
        ("calibrate_thresholds", {"data": [torch.rand(32, 1, 28, 28)],
                                  "timesteps": args.timesteps}),
        ("fold_scales", {})])
    x = torch.rand(args.snn_batch, 1, 28, 28)
    rows = {}
    for mode in ("off", "auto"):
        executor = GraphExecutor(snn, sparse=mode).eval()

        def forward():
            with torch.no_grad():
                executor(x, args.timesteps)

        def attack_step():
            inputs = x.clone().requires_grad_()
            executor(inputs, args.timesteps).sum().backward()

        rows[mode] = (median(forward, args.rounds), median(attack_step, args.rounds),
                      sum(executor.sparse_convs.choices.values()),
                      len(executor.sparse_convs.choices))
    (fo, ao, _, _), (fa, aa, chosen, measured) = rows["off"], rows["auto"]
    print(f"\nthe SNN (every layer at {args.snn_density:g} density, T = {args.timesteps}, batch "
          f"{args.snn_batch}): sparse path chosen for {chosen} of {measured} (layer, input, "
          "with/without backward) cases\n")
    print("| | dense path ms | sparse path ms | dense / sparse |")
    print("|---|---|---|---|")
    print(f"| forward | {1e3 * fo:.0f} | {1e3 * fa:.0f} | {fo / fa:.2f}x |")
    print(f"| attack step (forward + input gradient) | {1e3 * ao:.0f} | {1e3 * aa:.0f} "
          f"| {ao / aa:.2f}x |")
    if args.out:
        from provenance import provenance

        args.out.write_text(json.dumps({
            "name": args.out.stem, **provenance(), "weights": weights, "batch": args.batch,
            "rounds": args.rounds, "threads": torch.get_num_threads(), "layers": layers,
            "snn": {"density": args.snn_density, "timesteps": args.timesteps,
                    "batch": args.snn_batch, "sparse_chosen": chosen, "cases": measured,
                    "forward_ms": [1e3 * fo, 1e3 * fa], "attack_step_ms": [1e3 * ao, 1e3 * aa]},
        }, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
