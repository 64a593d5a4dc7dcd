"""Compile time of the zoo nets, and the share spent calibrating thresholds, for two source trees
side by side (``--before DIR``: a checkout of an earlier commit; ``--after DIR``: this one).

Each measurement runs in a fresh process (``python -S`` with only the virtual environment's
site-packages and the tree on the path, so the editable install cannot pick the tree), and the two
trees alternate within each round so that both see the same machine load. A compile is
``compile_model`` with ``finetune=none``, ``robustness=none``, no profile, the default calibration
(11 batches of 64 at T = 8, 99.7th percentile) and 200 test images, on:

* ``cifar``: CIFAR-shaped synthetic data (3x32x32 uniform noise, 10 classes, 2,000 images; the
  untrained zoo net with BatchNorm statistics set on that data, as a stand-in for a trained one:
  timing does not depend on the weights' values);
* ``mnist5k``: the embedded digits (1x28x28).

    python benchmarks/compile_time.py --before /tmp/before --nets lenet,vgg11,resnet20,wrn16-4 \
        --data cifar,mnist5k --repeats 2 --out /tmp/compile_time.json

With ``--out``, each finished row is written at once and a rerun with the same trees skips the rows
already there, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

def _child_source() -> str:
    return r"""
import json, sys, time, importlib.machinery, importlib.util
tree = sys.argv[1]
spec = importlib.machinery.ModuleSpec("spikeshield", None, is_package=True)
package = importlib.util.module_from_spec(spec)
package.__path__ = [tree + "/.spikeshield-alias"]
sys.modules["spikeshield"] = package
import torch
arch, data = sys.argv[2], sys.argv[3]
try:
    from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.runtime.data import DataSplits, Dataset
except ImportError:
    from spikeshield.compiler.pipeline import CompileConfig, compile_model
    from spikeshield.frontends.datasets import load_data, DataSplits, Dataset
from spikeshield.frontends.zoo import build_model
torch.manual_seed(0)
if data == "cifar":
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (2000,), generator=g)
    splits = DataSplits("cifar-synthetic", Dataset(images[:1600], labels[:1600]),
                        Dataset(images[1600:1800], labels[1600:1800]),
                        Dataset(images[1800:], labels[1800:]), 10)
else:
    splits = load_data(data)
mean, std = splits.channel_stats()
model = build_model(arch, splits.input_shape, splits.num_classes, mean, std).train()
with torch.no_grad():  # BatchNorm statistics from the data, as a trained net would have them
    for x, _ in splits.train.batches(64):
        model(x)
model.eval()
cfg = CompileConfig(finetune="none", robustness="none", profile=False, eval_samples=200)
start = time.perf_counter()
result = compile_model(model, splits, cfg)
total = time.perf_counter() - start
passes = {p["name"]: p["seconds"] for p in result.report["passes"]}
# One SNN forward over what calibration sees (11 batches of 64 at T = 8), for the cost ratio.
from spikeshield.runtime.executor import GraphExecutor
executor = GraphExecutor(result.snn).eval()
batches = [x for _, (x, _) in zip(range(11), splits.train.batches(64))]
with torch.no_grad():
    executor(batches[0], 8)
    start = time.perf_counter()
    for x in batches:
        executor(x, 8)
    forward = time.perf_counter() - start
thresholds = {n: result.snn.op(n).threshold.tolist() for n in result.snn.nodes()
              if result.snn.op(n).kind == "if"}
print(json.dumps({"seconds": total, "calibration": passes.get("calibrate_thresholds", 0.0),
                  "forward": forward,
                  "snn_accuracy": result.report["snn"]["accuracy"], "thresholds": thresholds}))
"""


def _alias(tree: Path) -> None:
    """``TREE/.spikeshield-alias/{compiler,...}`` -> the tree's top-level folders."""
    alias = tree / ".spikeshield-alias"
    alias.mkdir(exist_ok=True)
    for top in ("compiler", "frontends", "backends", "runtime"):
        link = alias / top
        if not link.exists():
            link.symlink_to(tree / top)


def measure(tree: Path, arch: str, data: str) -> dict:
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": site}
    done = subprocess.run([sys.executable, "-S", "-c", _child_source(), str(tree), arch, data],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree} {arch} {data} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the earlier commit")
    parser.add_argument("--after", type=Path, default=HERE, help="this checkout (default)")
    parser.add_argument("--nets", default="lenet,vgg11,resnet20,wrn16-4")
    parser.add_argument("--data", default="cifar,mnist5k")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for tree in trees.values():
        _alias(tree)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{__import__('torch').__version__}; median of {args.repeats}", flush=True)
    # Resumable: rows already in --out (same trees) are kept, and each new row is written as it ends.
    rows = json.loads(args.out.read_text()) if args.out and args.out.exists() else []
    rows = [r for r in rows if r.get("trees") == {k: str(v) for k, v in trees.items()}]
    for data in args.data.split(","):
        for arch in args.nets.split(","):
            if any(r["data"] == data and r["arch"] == arch for r in rows):
                print(f"{data:8s} {arch:9s} already in {args.out}", flush=True)
                continue
            runs = {"before": [], "after": []}
            for _ in range(args.repeats):
                for label, tree in trees.items():
                    runs[label].append(measure(tree, arch, data))
            row = {"data": data, "arch": arch, "trees": {k: str(v) for k, v in trees.items()}}
            for label, results in runs.items():
                row[label] = {k: statistics.median(r[k] for r in results)
                              for k in ("seconds", "calibration", "snn_accuracy", "forward")}
            last = {label: results[-1]["thresholds"] for label, results in runs.items()}
            row["max_threshold_rel_diff"] = max(
                (abs(a - b) / max(abs(a), 1e-12) for name in last["before"]
                 for a, b in zip(last["before"][name], last["after"].get(name, []))), default=0.0)
            b, a = row["before"], row["after"]
            print(f"{data:8s} {arch:9s} compile {b['seconds']:7.1f}s -> {a['seconds']:6.1f}s "
                  f"({b['seconds'] / a['seconds']:5.1f}x); calibration {b['calibration']:7.1f}s "
                  f"({100 * b['calibration'] / b['seconds']:4.1f}%) -> {a['calibration']:6.1f}s "
                  f"({100 * a['calibration'] / a['seconds']:4.1f}%); SNN acc "
                  f"{100 * b['snn_accuracy']:.1f}% -> {100 * a['snn_accuracy']:.1f}%; thresholds "
                  f"differ by <= {100 * row['max_threshold_rel_diff']:.3g}%; one SNN forward "
                  f"over the calibration batches {a['forward']:.2f} s", flush=True)
            rows.append(row)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
