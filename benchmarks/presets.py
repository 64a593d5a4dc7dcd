"""Attack presets on a robustly finetuned SNN: does the default (`adaptive`) hold against every
member of `paper` and against a long detached-reset PGD, and what does it cost?

For one network (trained with TRADES by `spikeshield train`, compiled with TRADES finetuning by
`spikeshield compile`, exported for Loihi 2 so that the 8-bit adapted graph exists), on the first
N test images at one ε, each measured in this process and stored as it ends:

* ``paper-exhaustive``: every `paper` member attacks every clean-correct sample (each member's own
  robust accuracy, and the paper worst case);
* ``adaptive``: the default preset as reports run it (members attack survivors), with the
  convergence curve (PGD 20/50/100/200 steps on the first 200 samples);
* ``pgd200-detach``: PGD-200 through a detached-reset triangle surrogate alone;
* ``adaptive-loihi2``: the default preset on the 8-bit Loihi 2 form of the same SNN;
* ``quick``, ``paper``: those presets as reports run them (wall time against ``adaptive``).

Resumable: WORK/ holds the model, the compile directory and one JSON per stage; a rerun skips
what is there. Prints one summary at the end.

    python benchmarks/presets.py --data mnist5k --arch lenet --work /tmp/presets-lenet --n 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).with_name("spikeshield"))


def _run(*args: str) -> None:
    print("$ spikeshield " + " ".join(args), flush=True)
    subprocess.run([BIN, *args], check=True)


def _stage(work: Path, name: str, measure) -> dict:
    path = work / f"{name}.json"
    if path.exists():
        print(f"{name}: already measured ({path})", flush=True)
        return json.loads(path.read_text())
    started = time.perf_counter()
    result = measure()
    result["seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(result, indent=2))
    print(f"{name}: {result['seconds']} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--train-epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    limit = ["--max-train", str(args.max_train)] if args.max_train else []
    ft_limit = ["--finetune-max-train", str(args.max_train)] if args.max_train else []
    model, snn_dir = work / "ann.pt2", work / "snn"
    if not model.exists():
        _run("train", "--arch", args.arch, "--data", args.data, "--objective", "trades",
             "--eps", str(args.eps), "--epochs", str(args.train_epochs), "--width",
             str(args.width), *limit,
             "--out", str(model))
    if not (snn_dir / "manifest.json").exists():
        _run("compile", str(model), "--data", args.data, "-T", str(args.timesteps),
             "--finetune", "trades", "--finetune-epochs", str(args.finetune_epochs), *ft_limit,
             "--robustness", "none", "--no-profile", "--n", str(args.n), "--export", "nir",
             "--target", "loihi2", "--force", "--out", str(snn_dir))

    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.ir.serialize import load_graph
    from spikeshield.runtime.attacks import AttackSpec, Member, preset_members
    from spikeshield.runtime.diagnostics import CURVE_STEPS, diagnose
    from spikeshield.runtime.ensemble import run_ensemble
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.gradient_modes import GradientMode

    splits = load_data(args.data)
    test = splits.test.head(args.n)
    graphs = {"snn": load_graph(snn_dir / "snn.ir"), "loihi2": load_graph(snn_dir / "snn_loihi2.ir")}
    timesteps = graphs["snn"].run_spec().timesteps

    def ensemble(graph: str, members, exhaustive=False, curve=False) -> dict:
        torch.manual_seed(0)
        target = GraphExecutor(graphs[graph])
        result = run_ensemble(target, test, members, args.eps, timesteps, splits.num_classes,
                              exhaustive=exhaustive, desc=f"{graph} ensemble")
        out = result.to_json()
        if curve:
            diag = diagnose(target, test, result, timesteps, splits.num_classes,
                            curve_steps=CURVE_STEPS)
            out["diagnostics"] = diag.to_json()
        return out

    paper = _stage(work, "paper-exhaustive",
                   lambda: ensemble("snn", preset_members("paper"), exhaustive=True))
    adaptive = _stage(work, "adaptive",
                      lambda: ensemble("snn", preset_members("adaptive"), curve=True))
    detach = Member(AttackSpec("pgd", steps=200), GradientMode.parse("triangle:1:detach"))
    pgd200 = _stage(work, "pgd200-detach", lambda: ensemble("snn", [detach]))
    loihi = _stage(work, "adaptive-loihi2",
                   lambda: ensemble("loihi2", preset_members("adaptive")))
    sequential = {name: _stage(work, name, lambda name=name: ensemble("snn", preset_members(name)))
                  for name in ("quick", "paper")}

    n = paper["samples"]
    print(f"\n{args.arch} (width {args.width:g}) on {args.data}, T={timesteps}, eps={args.eps}, first {n} test images; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}")
    print(f"clean accuracy {100 * paper['clean_accuracy']:.2f}%")
    best = min(paper["members"], key=lambda m: m["standalone_robust_accuracy"])
    print(f"paper worst case {100 * paper['robust_accuracy']:.2f}% ({paper['seconds']} s exhaustive); "
          f"its strongest member alone: {best['label']} {100 * best['standalone_robust_accuracy']:.2f}%")
    print(f"PGD-200 / triangle, detached reset, alone: {100 * pgd200['robust_accuracy']:.2f}% "
          f"({pgd200['seconds']} s)")
    print(f"adaptive worst case {100 * adaptive['robust_accuracy']:.2f}% ({adaptive['seconds']} s "
          f"incl. diagnostics); at or below every paper member: "
          f"{all(adaptive['robust_accuracy'] <= m['standalone_robust_accuracy'] for m in paper['members'])}; "
          f"at or below PGD-200 detached: {adaptive['robust_accuracy'] <= pgd200['robust_accuracy']}")
    print("adaptive members (attacked, broken, robust after):")
    for m in adaptive["members"]:
        print(f"  {m['label']:55s} {m['attacked']:5d} {m['broken']:5d} "
              f"{100 * m['robust_accuracy_after']:6.2f}%  {m['seconds']:7.1f} s")
    steps = adaptive["diagnostics"]["accuracy_vs_steps"]
    print(f"convergence ({adaptive['diagnostics']['curve_member']}, first "
          f"{adaptive['diagnostics']['curve_samples']}): "
          + ", ".join(f"{p['steps']}: {100 * p['accuracy']:.2f}%" for p in steps))
    for w in adaptive["diagnostics"]["warnings"]:
        print(f"  warning: {w}")
    for name, result in sequential.items():
        print(f"{name} (members attack survivors): worst case "
              f"{100 * result['robust_accuracy']:.2f}% in {result['seconds']} s")
    print(f"loihi2 (8-bit) form: clean {100 * loihi['clean_accuracy']:.2f}%, adaptive worst case "
          f"{100 * loihi['robust_accuracy']:.2f}% ({loihi['seconds']} s)")


if __name__ == "__main__":
    main()
