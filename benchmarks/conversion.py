"""Calibration-only ANN -> SNN conversion at low T: spikeshield's variants beside SpikingJelly's
converter, on the same ANNs, in one run.

For each network (a TRADES-trained zoo model, or the third-party-style ResNet of
``tests/third_party_models.py``): the ANN's clean accuracy, then for each T the SNN's clean
accuracy (no finetuning) under

* spikeshield variants, each a ``CompileConfig`` (the old default, then one change at a time up to
  today's default);
* SpikingJelly 2.0.0's ``ann2snn`` recipes (``make install`` installs it with ``--no-deps``
  beside loguru; never a dependency of spikeshield): ``RateCodingRecipe`` with the max, the 99.9th
  percentile, and per-channel 99.9th percentile with a half-threshold initial membrane, and
  ``LocalThresholdBalancingRecipe``. Its SNN runs T steps with ``functional.reset_net`` first; the
  prediction is the argmax of the summed outputs, as its own examples evaluate.

Both sides calibrate on the same training batches and are scored on the same first N test images.

With ``--robust T,...``, the old default and today's default are then each robustly finetuned
(TRADES through the spikes, ``--finetune-epochs`` on the first ``--finetune-max-train`` training
images) and attacked with the ``paper`` preset on the first ``--robust-n`` test images: clean
accuracy before and after finetuning and the paper worst case, per T.

Resumable: WORK/<data>-<arch>/ holds the trained ANN (``ann.pt``, a state dict) and one JSON per
measured cell; a rerun skips what is there (so the run can be split into parts). Prints the table.

    python benchmarks/conversion.py --data mnist5k --arch lenet --work /tmp/conv
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))  # tests.third_party_models

OLD = {"reset": "zero", "v_init": 0.0, "threshold_mode": "layer", "correction": "none",
       "threshold_search": False}
NEW = {"reset": "subtract", "v_init": 0.5, "threshold_mode": "channel", "correction": "bias",
       "threshold_search": True}
FIT = {**NEW, "correction": "fit"}
# Paper A's neuron (reset to zero, membrane from zero, one threshold per layer: what NIR's
# portable profile, snn-mlir and Loihi take), calibrated per channel with today's fit, and the
# channels' thresholds folded into the weights so that each layer has one.
PAPER_A = {**FIT, "reset": "zero", "v_init": 0.0, "uniform_thresholds": True}
# (key of the stored result, label, CompileConfig fields): each step changes one setting, from the
# defaults before issue 19 to today's. Fields are explicit, so stored results never change meaning.
VARIANTS = [
    ("old default (zero, v0=0, layer)", "old default (reset zero, v0 = 0, per layer)", OLD),
    ("+ reset subtract", "+ reset by subtraction", {**OLD, "reset": "subtract"}),
    ("+ v_init 0.5", "+ v_init 0.5", {**OLD, "reset": "subtract", "v_init": 0.5}),
    ("+ per channel", "+ per-channel thresholds",
     {**OLD, "reset": "subtract", "v_init": 0.5, "threshold_mode": "channel"}),
    ("default (+ bias correction)", "+ bias correction", {**NEW, "threshold_search": False}),
    ("default + threshold search", "+ threshold search = issue 19's default", NEW),
    ("default fit", "+ fit to the ANN = today's default", FIT),
    ("paper-a fit uniform", "Paper A's neuron (reset zero, v0 = 0, one threshold per layer), fitted",
     PAPER_A),
]
# Without --ladder: the old default, issue 19's, today's and Paper A's neuron.
SHORT = tuple(VARIANTS[i] for i in (0, 5, 6, 7))
# Finetuned and attacked with --robust: Paper A's neuron (the slower to recover, so first) and
# today's default.
ROBUST = (VARIANTS[7], VARIANTS[6])
SJ_RECIPES = ("max", "99.9%", "99.9% channel + half threshold", "local threshold balancing")


def _model(arch: str, splits, width: float, activation: str = "relu", levels: int = 8):
    from spikeshield.frontends.zoo import build_model
    from tests.third_party_models import ResNet

    mean, std = splits.channel_stats()
    if arch == "kuangliu-resnet":
        if activation != "relu":
            sys.exit("--activation qcfs needs a zoo architecture")
        return ResNet(widths=(16, 32, 64), num_classes=splits.num_classes,
                      in_ch=splits.input_shape[0], mean=mean, std=std)
    return build_model(arch, splits.input_shape, splits.num_classes, mean, std, width,
                       activation, levels)


def _for_spikingjelly(arch: str, model, splits, width: float):
    """The same network as SpikingJelly's converter takes it: ``nn.ReLU`` modules only, and the
    input normalisation (a division it refuses) moved out of the model. Returns (body,
    normalise)."""
    from tests.third_party_models import ResNet

    mean, std = splits.channel_stats()
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    if arch == "kuangliu-resnet":
        body = ResNet(widths=(16, 32, 64), num_classes=splits.num_classes,
                      in_ch=splits.input_shape[0], mean=mean, std=std, relu_modules=True,
                      normalize=False)
        body.load_state_dict(model.state_dict())
    else:
        body = copy.deepcopy(model.net)
    return body.eval(), lambda x: (x - mean_t) / std_t


def _cell(path: Path, measure) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    started = time.perf_counter()
    result = measure()
    result["seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(result))
    print(f"  {path.stem}: {result}", flush=True)
    return result


def _spikingjelly(model, normalise, calibration, test, timesteps: int, recipe: str) -> float:
    from spikingjelly.activation_based import ann2snn, functional

    recipes = {
        "max": lambda: ann2snn.RateCodingRecipe(dataloader=calibration, mode="max"),
        "99.9%": lambda: ann2snn.RateCodingRecipe(dataloader=calibration, mode="99.9%"),
        "99.9% channel + half threshold": lambda: ann2snn.RateCodingRecipe(
            dataloader=calibration, mode="99.9%", channel_wise=True, half_threshold=True),
        "local threshold balancing": lambda: ann2snn.LocalThresholdBalancingRecipe(
            dataloader=calibration),
    }
    snn = ann2snn.FXConverter(recipe=recipes[recipe](), device="cpu").convert(
        copy.deepcopy(model).eval())
    correct = 0
    with torch.no_grad():
        for x, y in test.batches(256):
            functional.reset_net(snn)
            x = normalise(x)
            total = sum(snn(x) for _ in range(timesteps))
            correct += int((total.argmax(1) == y).sum())
    return correct / len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--arch", default="lenet",
                        help="a zoo architecture, or kuangliu-resnet (tests/third_party_models.py)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("-T", "--timesteps", default="1,2,4,8")
    parser.add_argument("--objective", default="trades",
                        help="how the ANN is trained: trades (eps --eps, PGD-10) or standard")
    parser.add_argument("--ladder", action="store_true",
                        help="every step from the old default to today's, one setting at a time")
    parser.add_argument("--n", type=int, default=2000, help="test images scored")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=0.1, help="ANN training SGD learning rate")
    parser.add_argument("--activation", default="relu",
                        help="relu, or qcfs: conversion-aware training (the zoo's QCFS activation "
                        "with --levels levels; its SNN takes the learned ceilings as thresholds)")
    parser.add_argument("--levels", type=int, default=4, help="QCFS levels L")
    parser.add_argument("--no-spikingjelly", action="store_true")
    parser.add_argument("--head-to-head", action="store_true",
                        help="only today's default and SpikingJelly's per-channel recipe (its best "
                        "here), e.g. on a whole test set")
    parser.add_argument("--layers", type=int, default=0,
                        help="at this T, print each IF layer's mean output against the ANN's "
                        "under the old and today's default (why a conversion fails)")
    parser.add_argument("--robust", default="", help="T values for the finetuned, attacked stage")
    parser.add_argument("--robust-n", type=int, default=300)
    parser.add_argument("--robust-variants", default=",".join(key for key, _, _ in ROBUST),
                        help="which variants --robust finetunes, comma-separated keys")
    parser.add_argument("--robust-preset", default="paper",
                        help="attack preset after finetuning, or none (clean accuracy only)")
    parser.add_argument("--finetune-epochs", type=int, default=10,
                        help="finetuning epochs (default: spikeshield's default, 10)")
    parser.add_argument("--finetune-max-train", type=int, default=None,
                        help="finetune on the first N training images (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from spikeshield.compiler.driver.config import CompileConfig
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.driver.pipeline import compile_model
    from spikeshield.runtime.evaluate import accuracy_of
    from spikeshield.runtime.training import TrainConfig, train_robust

    work = args.work / (f"{args.data}-{args.arch}" if args.objective == "trades"
                        else f"{args.data}-{args.arch}-{args.objective}")
    if args.activation != "relu":
        if not args.no_spikingjelly:
            sys.exit("SpikingJelly's converter takes ReLU networks: add --no-spikingjelly")
        work = work.with_name(f"{work.name}-{args.activation}{args.levels}")
    work.mkdir(parents=True, exist_ok=True)
    splits = load_data(args.data, seed=0)
    test = splits.test.head(args.n)
    model = _model(args.arch, splits, args.width, args.activation, args.levels)
    weights = work / "ann.pt"
    if not weights.exists():
        started = time.perf_counter()
        cfg = TrainConfig(objective=args.objective, eps=args.eps, epochs=args.epochs, batch_size=64,
                          lr=args.lr, attack_steps=10, seed=0, max_train=args.max_train)
        train_robust(model, splits, cfg)
        torch.save(model.state_dict(), weights)
        (work / "training.json").write_text(json.dumps({
            "seconds": round(time.perf_counter() - started, 1), "epochs": args.epochs,
            "max_train": args.max_train, "width": args.width, "eps": args.eps, "lr": args.lr,
            "objective": args.objective, "activation": args.activation, "levels": args.levels}))
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    ann = _cell(work / "ann.json", lambda: {"accuracy": accuracy_of(model, test)})
    steps = [int(t) for t in args.timesteps.split(",")]
    rows: dict[str, dict[int, float]] = {}
    variants = (VARIANTS[6:7] if args.head_to_head else VARIANTS if args.ladder else SHORT)
    recipes = SJ_RECIPES[2:3] if args.head_to_head or not args.ladder else SJ_RECIPES
    for t, (key, name, fields) in itertools.product(steps, variants):
        slug = "ss-" + "".join(c if c.isalnum() else "-" for c in key) + f"-T{t}"

        def convert(fields=fields, t=t) -> dict:
            cfg = CompileConfig(timesteps=t, finetune="none", robustness="none", profile=False,
                                eval_samples=args.n, **fields)
            return {"accuracy": compile_model(model, splits, cfg).report["snn"]["accuracy"]}

        rows.setdefault(f"spikeshield: {name}", {})[t] = _cell(work / f"{slug}.json",
                                                               convert)["accuracy"]
    if not args.no_spikingjelly:
        try:
            import spikingjelly  # noqa: F401
        except ImportError:
            sys.exit("SpikingJelly is not installed: run `make install`, or pass --no-spikingjelly")
        sj_model, normalise = _for_spikingjelly(args.arch, model, splits, args.width)
        batches = splits.train.batches(64, shuffle=True, seed=0)
        calibration = [normalise(x) for x, _ in itertools.islice(batches, 11)]  # spikeshield's
        for t, recipe in itertools.product(steps, recipes):
            slug = "sj-" + "".join(c if c.isalnum() else "-" for c in recipe) + f"-T{t}"
            rows.setdefault(f"SpikingJelly: {recipe}", {})[t] = _cell(
                work / f"{slug}.json",
                lambda recipe=recipe, t=t: {"accuracy": _spikingjelly(
                    sj_model, normalise, calibration, test, t, recipe)})["accuracy"]
    robust = _robust_stage(args, work, model, splits) if args.robust else {}
    if args.layers:
        _layer_report(model, splits, test, args.layers)
    print(f"\n{args.data} {args.arch}: ANN {100 * ann['accuracy']:.2f}% on the first "
          f"{len(test)} test images")
    print("| converter | " + " | ".join(f"T={t}" for t in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name, accs in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * accs[t]:.2f}%" for t in steps) + " |")
    if robust:
        print(f"\nfinetuned ({args.finetune_epochs} epochs, "
              f"{args.finetune_max_train or 'all'} training images), {args.robust_preset} preset "
              f"on the first {args.robust_n} test images")
        print(f"| variant | T | clean before finetuning | clean after | {args.robust_preset} |")
        print("|---|---|---|---|---|")
        for (name, t), r in robust.items():
            worst = r.get(args.robust_preset)
            print(f"| {name} | {t} | {100 * r['before']:.2f}% | {100 * r['after']:.2f}% | "
                  + ("-" if worst is None else f"{100 * worst:.2f}%") + " |")


def _layer_report(model, splits, test, timesteps: int) -> None:
    """Each IF layer's mean output (rate x threshold) against the ANN's mean activation there
    (the graph's ANN proxy, clipped at the threshold), on the first 500 test images."""
    from spikeshield.compiler.driver.config import CompileConfig
    from spikeshield.compiler.driver.pipeline import compile_model
    from spikeshield.compiler.ir.ops import IF
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.gradient_modes import GradientMode
    from spikeshield.runtime.kernels import channel_view

    x = test.head(500).images.float() / 255
    for _, name, fields in (VARIANTS[0], VARIANTS[5]):  # the old and issue 19's default
        fields = {**fields, "correction": "none"}  # the proxy must be the source ANN
        cfg = CompileConfig(timesteps=timesteps, finetune="none", robustness="none",
                            profile=False, eval_samples=500, **fields)
        snn = compile_model(model, splits, cfg).snn
        spiking, proxy = GraphExecutor(snn).eval(), GraphExecutor(snn).eval()
        print(f"\nT={timesteps}, {name} without bias correction: layer, ANN mean, SNN mean, "
              "SNN / ANN")
        with torch.no_grad():
            spiking(x, timesteps, record=True)
            for layer in snn.nodes_of(IF):
                counts = spiking.neuron_spike_counts[layer]
                theta = channel_view(snn.op(layer).threshold, counts.dim())
                with proxy.using(GradientMode("ann_proxy")):
                    ann = torch.minimum(torch.relu(proxy(x, stop_at=layer)), theta).mean()
                sent = (counts / timesteps * theta).mean()
                print(f"  {layer}: {float(ann):.4f} {float(sent):.4f} {float(sent / ann):.3f}")


def _robust_stage(args, work: Path, model, splits) -> dict:
    """Finetune and attack the old and today's default at each T of ``--robust``."""
    from spikeshield.compiler.driver.config import CompileConfig
    from spikeshield.compiler.driver.pipeline import compile_model

    results = {}
    for t in (int(v) for v in args.robust.split(",")):
        chosen = args.robust_variants.split(",")
        for key, name, fields in (v for v in ROBUST if v[0] in chosen):
            slug = "robust-" + "".join(c if c.isalnum() else "-" for c in key) + f"-T{t}"

            def measure(fields=fields, t=t) -> dict:
                cfg = CompileConfig(
                    timesteps=t, finetune="trades", finetune_epochs=args.finetune_epochs,
                    finetune_max_train=args.finetune_max_train, robustness=args.robust_preset,
                    eval_samples=args.robust_n, profile=False,
                    # every epoch scored on all 1,000 validation images, as when the first cells
                    # of issue 41 were measured (before issue 44 sized validation by its cost)
                    finetune_val_budget=0, **fields)
                report = compile_model(model, splits, cfg).report
                robust = (report["robustness"]["snn_robust_accuracy"]
                          if args.robust_preset != "none" else None)
                return {"before": report["snn"]["accuracy_before_finetuning"],
                        "after": report["snn"]["accuracy"], args.robust_preset: robust}

            tag = "" if args.robust_preset == "paper" else f"-{args.robust_preset}"
            tag += "" if args.finetune_max_train is None else f"-max{args.finetune_max_train}"
            tag += f"-e{args.finetune_epochs}-n{args.robust_n}"
            results[(name, t)] = _cell(work / f"{slug}{tag}.json", measure)
    return results


if __name__ == "__main__":
    main()
