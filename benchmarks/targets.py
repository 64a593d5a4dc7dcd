"""Accuracy cost of adapting a compiled SNN to hardware targets (weight quantisation, reset switch).

Trains a TRADES LeNet (mnist5k, eps 0.1; stored in WORK, a rerun reuses it), compiles it at T = 8
with calibration only, then exports it to NIR for each target: the built-in ``loihi2`` (8-bit
weights), JSON profiles with 6-, 4- and 3-bit weights, one that resets to zero only (the default
neuron resets by subtraction) and the built-in ``speck`` and ``xylo``, which refuse this network.
Each export re-measures clean accuracy on the test images after its repairs, as ``spikeshield
export`` prints it; a refusal is recorded with its one-line reason.

    python benchmarks/targets.py --work runs/targets --out benchmarks/results/targets.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

PROFILES = {  # file stem -> (profile JSON, what it asks)
    "int6": ({"weight_bits": 6}, "JSON profile, 6-bit weights"),
    "int4": ({"weight_bits": 4}, "JSON profile, 4-bit weights"),
    "int3": ({"weight_bits": 3}, "JSON profile, 3-bit weights"),
    "zero-int8": ({"weight_bits": 8, "reset_modes": ["zero"]},
                  "JSON profile, 8-bit weights, reset to zero only"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n", type=int, default=1000, help="test images re-measured per export")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args()
    from provenance import provenance

    from spikeshield.compiler.driver.export import export_source

    cli = [sys.executable, "-m", "spikeshield.compiler.driver.cli"]
    args.work.mkdir(parents=True, exist_ok=True)
    ann, snn = args.work / "ann.pt2", args.work / "snn"
    if not ann.exists():
        subprocess.run([*cli, "train", "--arch", "lenet", "--data", "mnist5k", "--objective",
                        "trades", "--eps", "0.1", "--epochs", str(args.epochs), "--out", str(ann)],
                       check=True)
    if not snn.exists():
        subprocess.run([*cli, "compile", str(ann), "--data", "mnist5k", "-T", "8", "--finetune",
                        "none", "--robustness", "none", "--out", str(snn)], check=True)
    report = json.loads((snn / "report.json").read_text())
    targets = [("loihi2", "`loihi2` (8-bit weights)")]
    for stem, (profile, label) in PROFILES.items():
        path = args.work / f"{stem}.json"
        path.write_text(json.dumps({"name": stem, "description": label, **profile}))
        targets.append((str(path), label))
    targets += [("speck", "`speck`"), ("xylo", "`xylo`")]
    rows = []
    for target, label in targets:
        out = args.work / f"{Path(target).stem}.nir"
        try:
            _, description = export_source(snn, "nir", target, out, samples=args.n, force=True)
        except Exception as err:  # noqa: BLE001  (a refusal is a result: record its reason)
            rows.append({"target": label, "refused": str(err).splitlines()[0]})
        else:
            a = description["adaptation"]
            rows.append({"target": label, "repairs": [p["name"] for p in a["passes"]],
                         "before": a["accuracy_before"], "after": a["accuracy_after"],
                         "samples": a["samples"]})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({
            "name": args.out.stem, **provenance(), "epochs": args.epochs,
            "ann_accuracy": report.get("ann", {}).get("accuracy"),
            "snn_accuracy": report.get("snn", {}).get("accuracy"), "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
