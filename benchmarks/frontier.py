"""Frontier attack members on a robustly finetuned SNN: what each member breaks alone, what it
costs, and the `adaptive` preset beside a candidate ordering, side by side in one run.

The network: a zoo ANN trained by ``benchmarks/conversion.py`` (its WORK/<data>-<arch>/ann.pt),
converted with today's defaults and finetuned with TRADES through the spikes (``--finetune-epochs``
on the first ``--finetune-max-train`` training images), stored as WORK/frontier/snn.ir. Then, on
the first N test images at one ε, each stage stored as WORK/frontier/<stage>.json when it ends:

* ``alone-<member>``: each listed member attacks every clean-correct sample (exhaustive: its own
  robust accuracy, the samples it broke, its wall time);
* ``preset-<name>``: a preset as reports run it (members attack survivors), wall time per member.

A rerun skips the stages already stored. Prints one table at the end and writes it, with the
command, machine and date, to ``--out`` (JSON).

    python benchmarks/frontier.py --work runs/i41/conv --data mnist5k --arch resnet20 --width 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# Members measured alone: adaptive's first member, then the frontier members it is compared with.
ALONE = {
    "apgd-ce-200-triangle-detach": ("apgd-ce", 200, "triangle:1:detach"),
    "sa-pgd-100-assg": ("sa-pgd", 100, "assg"),
    "sa-pgd-100-assg-detach": ("sa-pgd", 100, "assg:detach"),
    "apgd-ce-100-assg-detach": ("apgd-ce", 100, "assg:detach"),
    "pgd-50-assg-detach": ("pgd", 50, "assg:detach"),
}


def adaptive_before() -> list:
    """`adaptive` as it was until 2026-12-07 (27 members, every one run), the baseline of the
    side-by-side comparison: APGD-CE-200 through a detached-reset triangle, seven PGD-50 members
    with the reset detached, then `paper`'s 19."""
    from spikeshield.runtime.attacks import AttackSpec, Member, paper_modes
    from spikeshield.runtime.gradient_modes import GradientMode

    members = [Member(AttackSpec("apgd-ce", steps=200), GradientMode.parse("triangle:1:detach"))]
    members += [Member(AttackSpec("pgd", steps=50), GradientMode.parse(spec)) for spec in (
        "triangle:1:adaptive+detach", "rectangular:1:adaptive+detach", "triangle:0.5:detach",
        "triangle:2:detach", "sigmoid:4:detach", "arctan:2:detach", "exponential:1:detach")]
    return members + [Member(AttackSpec("pgd", steps=20), mode) for mode in paper_modes()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="benchmarks/conversion.py's WORK")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-max-train", type=int, default=2000)
    parser.add_argument("--alone", default=",".join(ALONE), help="members measured alone")
    parser.add_argument("--presets", default="adaptive",
                        help="presets run as reports run them (with the preset's patience); "
                             "adaptive-before is adaptive as it was until 2026-12-07")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also run (and time) the report's diagnostics after each preset")
    parser.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    args = parser.parse_args()

    from conversion import _model
    from presets import _stage  # stored stages: a rerun skips them
    from provenance import machine, provenance

    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model
    from spikeshield.compiler.ir.serialize import load_graph, save_graph
    from spikeshield.runtime.attacks import PRESET_PATIENCE, AttackSpec, Member, preset_members
    from spikeshield.runtime.diagnostics import CURVE_STEPS, diagnose
    from spikeshield.runtime.ensemble import run_ensemble
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.gradient_modes import GradientMode

    cell = args.work / f"{args.data}-{args.arch}"
    folder = cell / f"frontier-e{args.finetune_epochs}-max{args.finetune_max_train}"
    folder.mkdir(parents=True, exist_ok=True)
    splits = load_data(args.data, seed=0)
    test = splits.test.head(args.n)
    snn_path = folder / "snn.ir"
    if not snn_path.exists():
        model = _model(args.arch, splits, args.width)
        model.load_state_dict(torch.load(cell / "ann.pt", weights_only=True))
        model.eval()
        started = time.perf_counter()
        cfg = CompileConfig(timesteps=args.timesteps, finetune="trades",
                            finetune_epochs=args.finetune_epochs,
                            finetune_max_train=args.finetune_max_train, robustness="none",
                            profile=False, eval_samples=args.n)
        result = compile_model(model, splits, cfg)
        save_graph(result.snn, snn_path)
        (folder / "compile.json").write_text(json.dumps({
            "seconds": round(time.perf_counter() - started, 1),
            "snn_accuracy": result.report["snn"]["accuracy"]}))
    snn = load_graph(snn_path)

    def ensemble(members: list, exhaustive: bool, patience: int | None = None,
                 diagnostics: bool = False) -> dict:
        """The ensemble's JSON; with ``diagnostics``, also the report's masking diagnostics (as
        ``eval`` runs them: first 256 samples, steps curve 20-200) and their own wall time."""
        torch.manual_seed(0)
        target = GraphExecutor(snn)
        started = time.perf_counter()
        result = run_ensemble(target, test, members, args.eps, args.timesteps,
                              splits.num_classes, exhaustive=exhaustive, desc="frontier",
                              patience=patience)
        out = result.to_json() | {"ensemble_seconds": round(time.perf_counter() - started, 1)}
        if diagnostics:
            started = time.perf_counter()
            diag = diagnose(target, test, result, args.timesteps, splits.num_classes,
                            curve_samples=256, curve_steps=CURVE_STEPS)
            out["diagnostics"] = diag.to_json()
            out["diagnostics_seconds"] = round(time.perf_counter() - started, 1)
        return out

    rows = {}
    for key in [k for k in args.alone.split(",") if k]:
        attack, steps, mode = ALONE[key]
        member = Member(AttackSpec(attack, steps=steps), GradientMode.parse(mode))
        rows[f"alone-{key}"] = _stage(folder, f"alone-{key}",
                                      lambda m=member: ensemble([m], exhaustive=True))
    for name in [p for p in args.presets.split(",") if p]:
        if name == "adaptive-before":
            measure = lambda: ensemble(adaptive_before(), False,  # noqa: E731
                                       diagnostics=args.diagnostics)
        else:
            measure = lambda n=name: ensemble(preset_members(n), False,  # noqa: E731
                                              PRESET_PATIENCE.get(n), args.diagnostics)
        rows[f"preset-{name}"] = _stage(folder, f"preset-{name}", measure)

    first = next(iter(rows.values()))
    print(f"\n{args.arch} (width {args.width:g}) on {args.data}, T={args.timesteps}, "
          f"eps={args.eps}, first {first['samples']} test images, clean "
          f"{100 * first['clean_accuracy']:.1f}%; {machine()}")
    print(f"{'stage':45s} {'robust':>8s} {'seconds':>8s}")
    for name, row in rows.items():
        print(f"{name:45s} {100 * row['robust_accuracy']:7.1f}% {row['seconds']:8.1f}")
        if "diagnostics_seconds" in row:
            diag = row["diagnostics"]
            print(f"    ensemble {row['ensemble_seconds']} s, diagnostics "
                  f"{row['diagnostics_seconds']} s ({diag['verdict'].split(':')[0]}); curve "
                  + ", ".join(f"{p['steps']}: {100 * p['accuracy']:.1f}%"
                              for p in diag["accuracy_vs_steps"]))
        if name.startswith("preset-"):
            for m in row["members"]:
                if m["broken"] or m["seconds"] > 0.05 * row["seconds"]:
                    print(f"    {m['label']:55s} broke {m['broken']:3d} of {m['attacked']:3d} "
                          f"in {m['seconds']:7.1f} s")
            spared = [m for m in row["members"] if m.get("not_run_samples")]
            if spared:
                print(f"    {len(spared)} members not run on {spared[0]['not_run_samples']} "
                      f"samples or fewer (patience {row.get('patience')})")
    if args.out:
        args.out.write_text(json.dumps({
            "name": args.out.stem, **provenance(),
            "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
