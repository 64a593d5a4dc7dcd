"""Paper B in its regime: a robust ANN with millions of weights, pruned to 90 and 99% by HARP-style
learned budgets, HYDRA with uniform per-layer budgets and layer-wise magnitude pruning, converted,
robustly finetuned as an SNN, attacked with the paper ensemble and profiled against the dense SNN.

Every stage runs through the ``spikeshield`` CLI, so the numbers are what a user gets. Resumable: a
run whose ``robustness.json`` and ``profile.json`` exist in WORK/<run>/ is skipped, and the trained
ANN (WORK/dense.pt2) is reused, so the sweep can be run in parts (for example one run per call with
``--runs``). Prints the table of
benchmarks/notes/2026-12-01-paper-b-sessions-issue-21.md (its first table).

    python benchmarks/paper_b.py --work /tmp/paperb                    # the whole sweep (hours)
    python benchmarks/paper_b.py --work /tmp/paperb --runs dense,harp-0.99
    python benchmarks/paper_b.py --work /tmp/paperb --table            # only print what is done
    python benchmarks/paper_b.py --work /tmp/paperb --runs harp-0.99 \
        --pruned-ann harp-0.99=/tmp/recipes/harp-0.99    # a recipe pruned by pruned_ann.py

``--pruned-ann RUN=DIR`` carries a pruning recipe judged on the ANN first
(``benchmarks/pruned_ann.py --out DIR``) into the sweep: run RUN compiles DIR/ann.ir, whose masks
are kept, instead of pruning in the compile, and the table labels it with the recipe in
DIR/result.json.

Each finished run is then timed with the weight-sparse path on (``sparse="auto"``, the default: each
pruned conv takes the kernel that measured faster) and off (every conv dense, the mask multiplied
in), side by side in one process on the same SNN and the same test images: the forward pass, an
attack step (forward and input gradient, parameters frozen, as the ensemble runs it) and a training
step (forward and BPTT to every weight and the input, as finetuning runs it). Then a slice of each
whole stage both ways (``SPIKESHIELD_SPARSE=off`` against the default): one robust finetuning epoch
on the first ``--slice-train`` training images, and the paper ensemble on the first
``--slice-test`` test images. Written to WORK/<run>/sparse_timing.json; the whole-stage wall times
of the table are with the path on, each run's own, on different networks.

The defaults are the cheapest robust setting that fits a 2-core machine, stated in the table's
caption: vgg11 at width 0.5 on 28x28 inputs (2,372,384 prunable weights), TRADES with a 3-step PGD
inner attack for the ANN, the first 20,000 training images for the ANN and 10,000 for pruning and
SNN finetuning. Pruning runs under the eps the ANN was trained at (``--prune-eps``, default
``--eps``, passed explicitly; compile's own default now follows the eps the .pt2 records): at 99%
it relearns the network, and under the finetuning eps (eps / 4, compile's default until then) the
99% HARP SNN kept 35.6% against the dense SNN's 56.2%
(benchmarks/notes/2026-12-01-paper-b-sessions-issue-21.md). SNN finetuning runs at
compile's default for every run, dense included (the eps the .pt2 records, else eps / 4; runs
compiled before 2026-12-03 used eps / 4 whatever the record), unless ``--eps-train`` sets it; the
table names each run's finetuning eps. The first conv layer (1 input channel, 288
weights, 0.01% of the network) is kept dense for every method (``--prune-dense first``): at 1% it
would keep 2 or 3 weights, one or two of its 32 channels, and no method can route the input
through that.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

BUDGETS = {"harp": "learned", "hydra": "layer", "magnitude": "layer"}  # Paper B's three methods
LABELS = {"harp": "HARP-style learned (non-uniform)", "hydra": "HYDRA, uniform per layer",
          "magnitude": "layer-wise magnitude"}


def parse_pruned_anns(specs: list[str], names: list[str]) -> dict[str, Path]:
    """``RUN=DIR`` options: each a pruned run and a ``pruned_ann.py`` output that pruned it."""
    pruned = {}
    for spec in specs:
        name, _, directory = spec.partition("=")
        if name not in names or name == "dense":
            sys.exit(f"--pruned-ann {spec}: {name!r} is not a pruned run of this sweep; "
                     f"use one of {', '.join(n for n in names if n != 'dense')}")
        result = Path(directory) / "result.json"
        if not (Path(directory) / "ann.ir").is_file() or not result.is_file():
            sys.exit(f"--pruned-ann {spec}: {directory} lacks ann.ir or result.json; "
                     f"write it with benchmarks/pruned_ann.py --out {directory}")
        recipe = json.loads(result.read_text()).get("recipe", {})
        if recipe.get("sparsity") != float(name.split("-")[1]) or \
                recipe.get("method") != name.split("-")[0]:
            sys.exit(f"--pruned-ann {spec}: {directory} was pruned with method "
                     f"{recipe.get('method')!r} at sparsity {recipe.get('sparsity')}, not as "
                     f"{name!r}; prune it with pruned_ann.py --method {name.split('-')[0]} "
                     f"--sparsity {name.split('-')[1]}")
        pruned[name] = Path(directory)
    return pruned


def run(cmd: list[str], log: Path) -> float:
    """Run a CLI command, its output appended to ``log``; the wall seconds it took."""
    started = time.perf_counter()
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--arch", default="vgg11")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=3, help="ANN training epochs")
    p.add_argument("--max-train", type=int, default=20000, help="ANN training images")
    p.add_argument("--attack-steps", type=int, default=3, help="PGD steps inside ANN training")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("-T", "--timesteps", type=int, default=8)
    p.add_argument("--sparsities", default="0.9,0.99")
    p.add_argument("--methods", default="harp,hydra,magnitude")
    p.add_argument("--prune-epochs", type=int, default=2, help="epochs of score learning")
    p.add_argument("--prune-finetune-epochs", type=int, default=None,
                   help="epochs of finetuning the weights kept (default: --prune-epochs)")
    p.add_argument("--prune-attack-steps", type=int, default=10,
                   help="PGD steps inside pruning")
    p.add_argument("--prune-max-train", type=int, default=None,
                   help="pruning's training images (default: --finetune-max-train)")
    p.add_argument("--prune-dense", default="first", help="layers kept dense (every method)")
    p.add_argument("--prune-eps", type=float, default=None,
                   help="eps of pruning (default: --eps, the ANN's training eps)")
    p.add_argument("--pruned-ann", action="append", default=[], metavar="RUN=DIR",
                   help="run RUN compiles DIR/ann.ir, pruned by benchmarks/pruned_ann.py, instead "
                        "of pruning in the compile (repeatable)")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-max-train", type=int, default=10000)
    p.add_argument("--eps-train", type=float, default=None,
                   help="eps of SNN finetuning (default: compile's, the ANN's recorded eps)")
    p.add_argument("--n-robust", type=int, default=500)
    p.add_argument("--n", type=int, default=1000, help="test images for clean accuracy, profile")
    p.add_argument("--preset", default="paper")
    p.add_argument("--runs", default="", help="only these runs (comma-separated names)")
    p.add_argument("--timing-batch", type=int, default=64, help="images per timed step")
    p.add_argument("--timing-rounds", type=int, default=5, help="timed rounds (median)")
    p.add_argument("--slice-train", type=int, default=640,
                   help="training images of the finetuning epoch timed both ways")
    p.add_argument("--slice-test", type=int, default=32,
                   help="test images of the paper ensemble timed both ways")
    p.add_argument("--table", action="store_true", help="print the table of the finished runs")
    args = p.parse_args()
    bin_ = str(Path(sys.executable).with_name("spikeshield"))
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "run.log"
    names = ["dense"] + [f"{m}-{s}" for s in args.sparsities.split(",")
                         for m in args.methods.split(",")]
    wanted = [n for n in names if not args.runs or n in args.runs.split(",")]
    pruned_anns = parse_pruned_anns(args.pruned_ann, names)
    if not args.table:
        timings_path = args.work / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
        ann = args.work / "dense.pt2"
        if not ann.is_file():
            timings["ann_training"] = run(
                [bin_, "train", "--arch", args.arch, "--width", str(args.width), "--data",
                 args.data, "--objective", "trades", "--eps", str(args.eps), "--epochs",
                 str(args.epochs), "--max-train", str(args.max_train), "--attack-steps",
                 str(args.attack_steps), "--out", str(ann)], log)
            timings_path.write_text(json.dumps(timings, indent=2))
        for name in wanted:
            out = args.work / name
            if (out / "robustness.json").is_file() and (out / "profile.json").is_file():
                continue
            prune = [] if name == "dense" else [
                "--prune-sparsity", name.split("-")[1], "--prune-method", name.split("-")[0],
                "--prune-budget", BUDGETS[name.split("-")[0]], "--prune-epochs",
                str(args.prune_epochs), "--prune-dense", args.prune_dense, "--prune-eps",
                str(args.eps if args.prune_eps is None else args.prune_eps),
                "--prune-attack-steps", str(args.prune_attack_steps)]
            if args.prune_finetune_epochs is not None:
                prune += ["--prune-finetune-epochs", str(args.prune_finetune_epochs)]
            if args.prune_max_train is not None:
                prune += ["--prune-max-train", str(args.prune_max_train)]
            source = ann
            if name in pruned_anns:
                source, prune = pruned_anns[name] / "ann.ir", []
            finetune = ["--finetune-epochs", str(args.finetune_epochs), "--finetune-max-train",
                        str(args.finetune_max_train)]
            if args.eps_train is not None:
                finetune += ["--eps-train", str(args.eps_train)]
            seconds = {}
            if not (out / "snn.ir").is_file():
                if out.exists():  # a compile interrupted by an earlier, stopped part of the sweep
                    shutil.rmtree(out)
                seconds["compile"] = run(
                    [bin_, "compile", str(source), "--data", args.data, "-T", str(args.timesteps),
                     *finetune, "--robustness", "none", "--n", str(args.n), "--no-profile",
                     "--out", str(out), *prune], log)
            seconds["eval"] = run([bin_, "eval", str(out), "--preset", args.preset, "--eps",
                                   str(args.eps), "--n", str(args.n_robust)], log)
            baseline = [] if name == "dense" else ["--baseline", str(args.work / "dense")]
            seconds["profile"] = run([bin_, "profile", str(out), "--n", str(args.n),
                                      *baseline], log)
            timings[name] = seconds
            timings_path.write_text(json.dumps(timings, indent=2))
        for name, directory in pruned_anns.items():  # the recipe the table labels the run with
            if (args.work / name).is_dir():
                shutil.copyfile(directory / "result.json", args.work / name / "pruned_ann.json")
        for name in wanted:
            out, timing = args.work / name, args.work / name / "sparse_timing.json"
            if not (out / "profile.json").is_file():
                continue
            timed = json.loads(timing.read_text()) if timing.is_file() else None
            if timed is not None and "stages" in timed:
                continue
            if timed is None:
                timed = time_sparse_path(out, args.data, args.timing_batch, args.timing_rounds)
                timing.write_text(json.dumps(timed, indent=2))
            # Stage slices last (a file timed before they existed gets them added).
            timed["stages"] = time_stage_slices(out, args.data, args.eps, args.slice_train,
                                                args.slice_test)
            timing.write_text(json.dumps(timed, indent=2))
            with open(log, "a") as f:
                f.write(f"sparse path timing of {name}: {json.dumps(timed)}\n")
    table(args.work, names)


def time_sparse_path(run_dir: Path, data: str, batch: int, rounds: int) -> dict:
    """Median seconds of a forward pass, an attack step and a training step of the run's SNN with
    the weight-sparse path off and on, and which (layer, input, backward) cases chose it. The two
    paths are timed round by round, alternating which goes first: timed one after the other (all
    rounds of one path, then the other), the same all-dense forward of the 99% HARP SNN, timed at
    the start and again after 8 other settings in one process, came out 1.35x apart
    (benchmarks/notes/2026-12-01-paper-b-sessions-issue-21.md,
    "SNN finetuning at the ANN's eps")."""
    import torch

    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.ir.serialize import load_graph
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.gradient_modes import GradientMode

    snn = load_graph(run_dir / "snn.ir")
    spec = snn.run_spec()
    x, y = next(load_data(data).test.batches(batch))
    result: dict = {"batch": batch, "timesteps": spec.timesteps, "rounds": rounds,
                    "threads": torch.get_num_threads(), "order": "interleaved"}
    executors = {mode: GraphExecutor(snn, encoding=spec.encoding, sparse=mode,
                                     gradient_mode=GradientMode.parse("triangle:1"))
                 for mode in ("off", "auto")}
    result.update(_time_steps(executors, x, y, spec.timesteps, rounds))
    result["dense_over_sparse"] = {k: result["off"][k] / result["auto"][k]
                                   for k in ("forward", "attack_step", "training_step")}
    return result


def time_stage_slices(run_dir: Path, data: str, eps: float, train_images: int,
                      test_images: int) -> dict:
    """Wall seconds of a slice of each whole stage with the sparse path off and on, the second
    after the first in one process: one finetuning epoch as compile ran it (TRADES, R-FGSM at the
    eps the run was finetuned at, validation on 64 images before and after) on the first
    ``train_images`` training images, and the paper ensemble (the run's ANN for its transfer
    member) on the first ``test_images`` test images. Every executor the stages build reads
    SPIKESHIELD_SPARSE."""
    import os
    import time

    from spikeshield.compiler.driver.config import CompileConfig
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.ir.serialize import load_graph
    from spikeshield.compiler.passes.finetune_robust import FinetuneConfig, finetune_robust
    from spikeshield.runtime.attacks import base_attack, preset_members
    from spikeshield.runtime.ensemble import run_ensemble
    from spikeshield.runtime.executor import SPARSE_ENV, GraphExecutor

    snn, ann = load_graph(run_dir / "snn.ir"), load_graph(run_dir / "ann.ir")
    spec, splits = snn.run_spec(), load_data(data)
    eps_train = _finetune_eps(json.loads((run_dir / "report.json").read_text()))
    if eps_train is None:  # compiled without finetuning: compile's default for an unrecorded ANN
        eps_train = CompileConfig().training_eps(eps)
    finetune = FinetuneConfig(epochs=1, eps_train=eps_train,
                              timesteps=spec.timesteps, max_train=train_images, val_samples=64)
    members = preset_members("paper", base_attack("pgd"))
    test = splits.test.head(test_images)
    result: dict = {"train_images": train_images, "test_images": test_images}
    before = os.environ.get(SPARSE_ENV)
    try:
        for mode in ("off", "auto"):
            os.environ[SPARSE_ENV] = mode
            started = time.perf_counter()
            finetune_robust(snn, splits, finetune)
            finetuned = time.perf_counter() - started
            started = time.perf_counter()
            run_ensemble(GraphExecutor(snn, encoding=spec.encoding), test, members, eps,
                         spec.timesteps, splits.num_classes, source=GraphExecutor(ann),
                         desc=f"paper ensemble, sparse path {mode}")
            result[mode] = {"finetune_epoch": finetuned,
                            "paper_ensemble": time.perf_counter() - started}
    finally:
        if before is None:
            os.environ.pop(SPARSE_ENV, None)
        else:
            os.environ[SPARSE_ENV] = before
    result["dense_over_sparse"] = {k: result["off"][k] / result["auto"][k]
                                   for k in ("finetune_epoch", "paper_ensemble")}
    return result


def step_kinds(x, y, timesteps: int) -> dict:
    """The steps the sparse path is timed on, each a function of an executor: a forward pass, an
    attack step (as the ensemble runs it: eval mode, the input gradient only) and a training step
    (BPTT to every weight and the input); with whether the executor trains."""
    import torch
    import torch.nn.functional as F

    from spikeshield.runtime.ensemble import frozen

    def forward(executor):
        with torch.no_grad():
            executor(x, timesteps)

    def attack_step(executor):
        with frozen(executor):
            inputs = x.clone().requires_grad_()
            F.cross_entropy(executor(inputs, timesteps), y).backward()

    def training_step(executor):
        inputs = x.clone().requires_grad_()
        F.cross_entropy(executor(inputs, timesteps), y).backward()
        executor.zero_grad(set_to_none=True)

    return {"forward": (forward, False), "attack_step": (attack_step, False),
            "training_step": (training_step, True)}


def _time_steps(executors: dict, x, y, timesteps: int, rounds: int) -> dict:
    """Per executor (by path), the median seconds of each step kind over ``rounds`` rounds in
    which the paths take turns going first, after one warm-up call each (where the sparse path
    measures its choices); and its sparse kernel choices."""
    import time

    seconds: dict = {mode: {} for mode in executors}
    for kind, (step, train) in step_kinds(x, y, timesteps).items():
        times: dict = {mode: [] for mode in executors}
        for executor in executors.values():
            executor.train(train)
            step(executor)  # warm-up
        order = list(executors)
        for _ in range(rounds):
            for mode in order:
                started = time.perf_counter()
                step(executors[mode])
                times[mode].append(time.perf_counter() - started)
            order.reverse()
        for mode, values in times.items():
            seconds[mode][kind] = sorted(values)[len(values) // 2]
    for mode, executor in executors.items():
        choices = executor.sparse_convs.choices
        seconds[mode]["sparse_chosen"] = sum(choices.values())
        seconds[mode]["cases_measured"] = len(choices)
    return seconds


def _load(run_dir: Path) -> dict:
    return {f: json.loads((run_dir / f"{f}.json").read_text())
            for f in ("report", "profile", "robustness", "sparse_timing", "pruned_ann")
            if (run_dir / f"{f}.json").is_file()}


def _speedups(timed: dict | None) -> str:
    """Dense-path over sparse-path seconds, or why there is none."""
    if timed is None:
        return "not timed"
    r = timed["dense_over_sparse"]
    ratios = f"{r['forward']:.2f}x / {r['attack_step']:.2f}x / {r['training_step']:.2f}x"
    if "stages" in timed:
        stage = timed["stages"]["dense_over_sparse"]
        ratios += f" / {stage['finetune_epoch']:.2f}x / {stage['paper_ensemble']:.2f}x"
    else:
        ratios += " / not timed / not timed"
    if not timed["auto"]["sparse_chosen"]:  # both sides ran dense: the noise of the measurement
        return f"sparse kernel never chosen (noise: {ratios})"
    return ratios


def _prune_recipe(config: dict, pruned_ann: dict | None = None) -> str:
    """How a run was pruned, from its compile config (runs older than the options that set the
    finetuning epochs, attack steps and images apart get those options' defaults), or from the
    ``pruned_ann.py`` recipe of a run compiled from a pruned ANN."""
    if pruned_ann is not None:
        r = pruned_ann["recipe"]
        return (f"{r['score_epochs']}+{r['finetune_epochs']} epochs, PGD-{r['attack_steps']}, "
                f"{r['max_train']:,} images, pruned by pruned_ann.py")
    if not config.get("prune_sparsity"):  # compiled from an ANN pruned before, by an unknown recipe
        return "pruned before the compile, recipe not recorded: see --pruned-ann"
    from spikeshield.compiler.driver.config import pruning_finetune_epochs, pruning_max_train

    finetune = pruning_finetune_epochs(config["prune_epochs"], config.get("prune_finetune_epochs"))
    images = pruning_max_train(config.get("prune_max_train"), config.get("finetune_max_train"))
    return (f"{config['prune_epochs']}+{finetune} epochs, PGD-{config.get('prune_attack_steps', 10)}"
            f", {'all' if images is None else f'{images:,}'} images")


def _pass_record(report: dict, name: str) -> dict:
    return next((r for r in report.get("passes", []) if r.get("name") == name), {})


def _phase_seconds(report: dict, name: str) -> float | None:
    return _pass_record(report, name).get("seconds")


def _finetune_eps(report: dict) -> float | None:
    """The eps a compile finetuned its SNN at, as its finetune_robust pass recorded it."""
    return _pass_record(report, "finetune_robust").get("params", {}).get("config", {}).get(
        "eps_train")


def table(work: Path, names: list[str]) -> None:
    runs = {n: _load(work / n) for n in names if (work / n / "profile.json").is_file()
            and (work / n / "robustness.json").is_file()}
    if "dense" not in runs:
        print("the dense run is not finished yet")
        return
    dense = runs["dense"]
    d_rob = dense["robustness"]["snn"]["robust_accuracy"]
    print("| run | kept weights | weight reduction | SNN clean | paper worst case | vs dense | "
          "trustworthy | SynOps/sample | E_dense/E_sparse (Paper B) | E_dense/E_sparse "
          "(spikeshield) | best-format int8 bytes | SNN finetuning s | attack ensemble s | "
          "sparse path speed-up: forward / attack step / training step / finetuning epoch / "
          "paper ensemble |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        prof, rob, rep = r["profile"], r["robustness"], r["report"]
        s, t = prof["storage"], prof["totals"]
        against = prof.get("against_dense") or {}
        robust = rob["snn"]["robust_accuracy"]

        def x(v):
            return "—" if v is None else f"{v:.2f}x"

        method = name.split("-")[0]
        label = ("dense" if name == "dense" else
                 f"{LABELS[method]}, {name.split('-')[1]} "
                 f"({_prune_recipe(rep['config'], r.get('pruned_ann'))})")
        finetuned_at = _finetune_eps(rep)
        if finetuned_at is not None:
            label += f", SNN finetuned at eps {finetuned_at:g}"
        print(f"| {label} | {s['nonzeros']:,} / {s['weights']:,} | {s['weight_reduction']:.1f}x "
              f"| {100 * rep['snn']['accuracy']:.1f}% | {100 * robust:.1f}% "
              f"| {100 * (robust - d_rob):+.1f} pp | {rob['snn']['diagnostics']['trustworthy']} "
              f"| {t['synops']:,.0f} | {x(against.get('paper_b_dense_over_sparse_energy'))} "
              f"| {x(against.get('dense_over_sparse_energy'))} "
              f"| {s['bytes']['int8']['best_per_layer']:,} "
              f"| {_phase_seconds(rep, 'finetune_robust') or 0:.0f} | {rob.get('seconds', 0):.0f} "
              f"| {_speedups(r.get('sparse_timing'))} |")
    print(f"\nclean accuracy and profile: first {dense['profile']['samples']} test images; "
          f"robust accuracy: {dense['robustness']['preset']} preset on the first "
          f"{dense['robustness']['samples']} at eps {dense['robustness']['eps']}")
    timings = {n: r["sparse_timing"] for n, r in runs.items() if "sparse_timing" in r}
    timed = next(iter(timings.values()), None)
    if timed is not None:
        interleaved = [n for n, t in timings.items() if t.get("order") == "interleaved"]
        after = [n for n in timings if n not in interleaved]
        orders = "; ".join(
            f"{text} ({', '.join(which)})" for text, which in (
                ("round by round, taking turns going first", interleaved),
                ("all rounds of one path, then the other", after)) if which)
        print(f"sparse path speed-up: dense-path over sparse-path seconds, medians of "
              f"{timed['rounds']} rounds, batch {timed['batch']}, T = {timed['timesteps']}, "
              f"{timed['threads']} threads, both paths in one process: {orders}")
        stages = timed.get("stages")
        if stages is not None:
            print(f"stage slices, each once per path: a finetuning epoch on the first "
                  f"{stages['train_images']} training images, the paper ensemble on the first "
                  f"{stages['test_images']} test images")


if __name__ == "__main__":
    main()
