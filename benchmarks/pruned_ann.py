"""A robust pruning recipe measured on the ANN alone, before it is carried through conversion.

Prunes a trained robust ANN (a ``.pt2`` from ``spikeshield train``) with one recipe through the
``prune_weights`` pass, the call ``spikeshield compile --prune-*`` makes, and measures the pruned
ANN: clean accuracy on the first 1,000 test images, and robust accuracy on the first ``--n`` under
PGD-20 (the ANN side of the ``paper`` preset, which is also what the masking check compares a
sparse SNN against) and under APGD-CE-200 (the first member of ``adaptive``, stronger: a pruned
ANN can look closer to the dense one under PGD-20 than it is). A whole ``paper_b.py`` run also
finetunes the SNN and attacks it for about an hour on 2 cores; this takes the pruning time plus a
few minutes, so recipes can be compared first.

    python benchmarks/pruned_ann.py --ann WORK/dense.pt2 --out WORK/recipes/dense
    python benchmarks/pruned_ann.py --ann WORK/dense.pt2 --out WORK/recipes/harp-3+9 \\
        --sparsity 0.99 --method harp --score-epochs 3 --finetune-epochs 9 --attack-steps 3 \\
        --max-train 20000

Without ``--sparsity`` the ANN is measured as it is (the reference row). The pruned ANN is written
to OUT/ann.ir, which ``spikeshield compile OUT/ann.ir`` converts without pruning it again (its
masks are kept). Resumable: an OUT that holds result.json is only printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", type=Path, required=True, help="the trained robust ANN (.pt2)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--sparsity", type=float, default=0.0, help="0: measure the ANN unpruned")
    p.add_argument("--method", default="harp")
    p.add_argument("--budget", default="auto")
    p.add_argument("--dense", default="first", help="layers kept dense")
    p.add_argument("--score-epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--attack-steps", type=int, default=10, help="PGD steps inside pruning")
    p.add_argument("--max-train", type=int, default=10000, help="pruning's training images")
    p.add_argument("--eps", type=float, default=0.1, help="pruning and evaluation eps")
    p.add_argument("--selection", default="clean",
                   help="finetuning epoch kept by validation clean, clean+robust or robust")
    p.add_argument("--n", type=int, default=500, help="test images attacked")
    args = p.parse_args()
    result_path = args.out / "result.json"
    if not result_path.is_file():
        args.out.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(measure(args), indent=1))
    result = json.loads(result_path.read_text())
    print(f"{args.out.name}: clean {100 * result['clean']:.1f}% (first {result['clean_samples']}), "
          f"PGD-20 {100 * result['pgd20']:.1f}%, APGD-CE-200 {100 * result['apgd_ce200']:.1f}% "
          f"(first {result['n']}, eps {result['eps']}), "
          f"kept {result['kept_weights']:,} of {result['total_weights']:,}, "
          f"pruning {result['prune_seconds']:.0f} s")
    if result.get("history"):
        print("epochs (phase, loss, validation clean / PGD-10):", ", ".join(
            f"{h['phase']} {h['epoch']}: {h['loss']:.3f} / {validation(h)}"
            for h in result["history"]), f"(kept: finetune {result['best_epoch']})")
        print("kept per layer:", ", ".join(f"{k} {100 * v:.2f}%"
                                           for k, v in result["per_layer_density"].items()))


def validation(epoch: dict) -> str:
    """An epoch's validation figures as printed; results written before PGD-10 validation existed
    hold the clean accuracy as ``val_score``."""
    clean = epoch.get("val_clean", epoch.get("val_score"))
    robust = epoch.get("val_robust")
    return f"{100 * clean:.1f}%" + ("" if robust is None else f" / {100 * robust:.1f}%")


def measure(args: argparse.Namespace) -> dict:
    """Prune (unless ``--sparsity 0``); then the ANN's stored weights (as profiles count them),
    clean accuracy and robust accuracy under PGD-20 and APGD-CE-200."""
    import torch

    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.driver.model_io import load_model
    from spikeshield.compiler.ir.serialize import save_graph
    from spikeshield.compiler.passes.prune_weights import prune_weights
    from spikeshield.runtime.attacks import AttackSpec, Member
    from spikeshield.runtime.ensemble import run_ensemble
    from spikeshield.runtime.evaluate import evaluate_graph
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.pruning import PruneConfig, parse_layers
    from spikeshield.runtime.storage import graph_storage

    torch.manual_seed(0)
    splits = load_data(args.data, seed=0)
    ann = load_model(args.ann, splits.input_shape)
    result: dict = {"recipe": vars(args) | {"ann": str(args.ann), "out": str(args.out)}}
    started = time.perf_counter()
    if args.sparsity > 0:
        cfg = PruneConfig(sparsity=args.sparsity, method=args.method, budget=args.budget,
                          dense_layers=parse_layers(args.dense), score_epochs=args.score_epochs,
                          finetune_epochs=args.finetune_epochs, eps=args.eps,
                          attack_steps=args.attack_steps, max_train=args.max_train,
                          selection=args.selection)
        pruned = prune_weights(ann, splits, cfg)
        ann = pruned.graph
        result.update({k: pruned.info[k] for k in ("per_layer_density", "best_epoch", "history")})
    result["prune_seconds"] = time.perf_counter() - started
    stored = graph_storage(ann)["totals"]  # an .ir given as --ann may be pruned already
    result.update(kept_weights=stored["nonzeros"], total_weights=stored["weights"])
    save_graph(ann, args.out / "ann.ir")
    clean = splits.test.head(1000)
    result.update(clean=evaluate_graph(GraphExecutor(ann), clean, None).accuracy,
                  clean_samples=len(clean), n=args.n, eps=args.eps)
    for key, spec in (("pgd20", AttackSpec("pgd", steps=20)),
                      ("apgd_ce200", AttackSpec("apgd-ce", steps=200))):
        attacked = run_ensemble(GraphExecutor(ann), splits.test.head(args.n), [Member(spec)],
                                args.eps, None, splits.num_classes, desc=f"{spec.label} on the ANN")
        result[key] = attacked.robust_accuracy
    return result


if __name__ == "__main__":
    main()
