"""Validation sized by its purpose (issue 44): what the budgeted per-epoch validation costs, and
whether the epoch it picks is worse than the one today's full validation picks.

One finetuning run (the default recipe: TRADES through the spikes, R-FGSM inner attack, 10 epochs
on all training images) of an SNN converted from a robust ANN. After every epoch (and before the
first) the network is scored three ways, each timed:

* **full**: clean + PGD-10 accuracy on every validation image offered (``--finetune-val-budget 0``,
  the thoroughness before issue 44);
* **budgeted**: the same on the images today's default budget picks (a fifth of an epoch);
* **test**: clean + PGD-10 on the first ``--test-n`` test images (never read by any selection),
  which says how good the epoch each setting picks really is.

The finetuning itself runs once (selection does not change what is trained; each setting's pick is
read from the same trajectory). The epoch's own time is the loop's time less the three scorings.
Prints the per-epoch table and both picks; writes ``--out`` (JSON).

    python benchmarks/validation_budget.py --ann runs/i41/conv/mnist5k-lenet/ann.pt --arch lenet

The ANN is a state dict as ``benchmarks/conversion.py`` trains and stores it (``WORK/<data>-<arch>/
ann.pt``; that script trains it when missing).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ann", type=Path, required=True, help="state dict of the ANN")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--width", type=float, default=None,
                        help="zoo width (default: the one in training.json beside --ann, else 1)")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--test-n", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from benchmarks.conversion import _model
    from spikeshield.compiler.driver.config import CompileConfig
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.driver.pipeline import compile_model
    from spikeshield.compiler.passes import finetune_robust as pass_module
    from spikeshield.compiler.passes.manager import PassManager
    from spikeshield.runtime.data import DataSplits

    splits = load_data(args.data, seed=0)
    recorded = args.ann.parent / "training.json"
    width = args.width or (json.loads(recorded.read_text())["width"] if recorded.exists() else 1.0)
    model = _model(args.arch, splits, width)
    model.load_state_dict(torch.load(args.ann, weights_only=True))
    model.eval()
    converted = compile_model(model, splits, CompileConfig(
        timesteps=args.timesteps, finetune="none", robustness="none", profile=False,
        eval_samples=args.test_n))
    snn = converted.snn
    base = CompileConfig(timesteps=args.timesteps, finetune_epochs=args.epochs)
    eval_eps = base.evaluation_eps(splits.input_shape)  # compile's, as its finetuning uses it
    budgeted = base.finetune_config(eval_eps)
    full_cfg = CompileConfig(timesteps=args.timesteps, finetune_epochs=args.epochs,
                             finetune_val_budget=0).finetune_config(eval_eps)
    offered = splits.val.head(full_cfg.val_samples)
    sized = pass_module.validation_size(budgeted, len(splits.train), len(offered))
    val_budget = offered.head(sized["images"])
    test = splits.test.head(args.test_n)
    print(f"{args.data} {args.arch}: {len(splits.train)} training images, validation full "
          f"{len(offered)} / budgeted {len(val_budget)} images (estimated {sized['share_of_epoch']}"
          f" of an epoch), test {len(test)}; eps_train {budgeted.eps_train:.4f}", flush=True)

    records: list[dict] = []
    original = pass_module._score  # the per-epoch scoring: wrapped to score three ways, timed

    def three_ways(executor, val, cfg, device):
        row = {}
        for key, data in (("budget", val_budget), ("test", test), ("full", offered)):
            started = time.perf_counter()
            scores = original(executor, data, cfg, device)
            row[key] = {"clean": scores["val_clean"], "robust": scores["val_robust"],
                        "score": scores["score"], "images": len(data),
                        "seconds": round(time.perf_counter() - started, 2)}
        records.append(row)
        return scores  # the full validation's: today's thorough selection drives the loop

    pass_module._score = three_ways
    try:
        manager = PassManager()
        data = DataSplits(splits.name, splits.train, offered, splits.test.head(0),
                          splits.num_classes)
        manager.run_one(snn, "finetune_robust", data=data, config=full_cfg)
    finally:
        pass_module._score = original
    history = manager.records[-1].info["history"]
    for row, entry in zip(records, history, strict=True):
        scoring = sum(row[k]["seconds"] for k in ("budget", "test", "full"))
        row["epoch"] = entry["epoch"]
        row["epoch_seconds"] = round(entry["seconds"] - scoring, 2) if entry["epoch"] else 0.0

    def pick(key: str) -> int:  # the loop's rule: strictly better than every earlier epoch
        best = 0
        for i, row in enumerate(records):
            if row[key]["score"] > records[best][key]["score"]:
                best = i
        return records[best]["epoch"]

    print("\n| epoch | epoch s | full val s | budgeted val s | full clean+robust | budgeted "
          "clean+robust | test clean | test PGD-10 |")
    print("|---|---|---|---|---|---|---|---|")
    for row in records:
        print(f"| {row['epoch']} | {row['epoch_seconds']:.1f} | {row['full']['seconds']:.1f} | "
              f"{row['budget']['seconds']:.1f} | {row['full']['score']:.4f} | "
              f"{row['budget']['score']:.4f} | {100 * row['test']['clean']:.1f}% | "
              f"{100 * row['test']['robust']:.1f}% |")
    epochs = [r for r in records if r["epoch"]]
    epoch_s = sum(r["epoch_seconds"] for r in epochs) / len(epochs)
    share = {k: sum(r[k]["seconds"] for r in epochs) / len(epochs) / epoch_s
             for k in ("full", "budget")}
    picks = {k: pick(k) for k in ("full", "budget")}
    print(f"\nvalidation / epoch (measured): full {share['full']:.3f}, budgeted "
          f"{share['budget']:.3f}")
    for k, name in (("full", "full validation"), ("budget", "budgeted validation")):
        t = records[picks[k]]["test"]
        print(f"{name} picks epoch {picks[k]}: test clean {100 * t['clean']:.1f}%, test PGD-10 "
              f"{100 * t['robust']:.1f}% (clean+robust {t['score']:.4f})")
    if args.out:
        args.out.write_text(json.dumps({
            "command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "epochs": records, "picks": picks,
            "share_of_epoch": share, "estimated_share": sized["share_of_epoch"]}, indent=1))


if __name__ == "__main__":
    main()
