"""Peak memory of `spikeshield eval` against the number of samples attacked (issue 7).

Trains a LeNet on full Fashion-MNIST (clean, one epoch: a network to attack, not a result),
compiles it (calibration only), then runs `spikeshield eval DIR --n N` for each N in a fresh
process and prints the peak resident memory the report records, with the wall time. The ensemble
holds one chunk (``--batch-size``) of images at a time, so the peak should not grow with N.

    python benchmarks/eval_memory.py --samples 1000,2500,5000,10000 [--mmap-threshold 131072]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def spikeshield(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "spikeshield.compiler.driver.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{result.stderr}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default="1000,2500,5000,10000")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=None, help="Keep the model here.")
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="Set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) for the eval processes: "
                        "freed large blocks go back to the system at once instead of staying in "
                        "a fragmented heap, so the RSS shows what is live.")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the rows as JSON (benchmarks/results.py renders it)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="eval-memory-"))
    model, compiled = work / "lenet.pt2", work / "snn"
    if not model.exists():
        spikeshield("train", "--data", args.data, "--objective", "standard", "--epochs", "1",
                    "--out", str(model))
    if not compiled.exists():
        spikeshield("compile", str(model), "--data", args.data, "--finetune", "none",
                    "--robustness", "none", "--no-profile", "--out", str(compiled))
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"data {args.data}, preset {args.preset}, batch {args.batch_size}, "
          f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold or 'glibc default (dynamic)'}")
    env = {"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)} if args.mmap_threshold else None
    print("samples  peak RSS MiB  seconds  SNN robust")
    rows = []
    for n in (int(s) for s in args.samples.split(",")):
        started = time.perf_counter()
        spikeshield("eval", str(compiled), "--n", str(n), "--preset", args.preset,
                    "--batch-size", str(args.batch_size), env=env)
        seconds = time.perf_counter() - started
        report = json.loads((compiled / "robustness.json").read_text())
        print(f"{n:7d}  {report['peak_memory']['host_rss_mib']:12.0f}  {seconds:7.1f}  "
              f"{100 * report['snn']['robust_accuracy']:9.2f}%", flush=True)
        rows.append({"samples": n, "peak_rss_mib": report["peak_memory"]["host_rss_mib"],
                     "seconds": round(seconds, 1), "robust": report["snn"]["robust_accuracy"]})
    if args.out:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from provenance import provenance

        args.out.write_text(json.dumps({
            "name": args.out.stem, **provenance(), "data": args.data, "preset": args.preset,
            "batch_size": args.batch_size, "mmap_threshold": args.mmap_threshold, "rows": rows},
            indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
