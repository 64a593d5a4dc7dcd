"""Print a Markdown table from the robustness.json files of benchmarks/robustness.sh."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def main(paths: list[str]) -> None:
    print("| run | T | ANN clean | ANN PGD-20 | SNN clean | SNN PGD-20 (triangle) | SNN paper worst "
          "case | kept of ANN PGD | masking verdict | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(paths):
        r = json.loads(Path(path).read_text())
        ann, snn = r.get("ann") or {}, r["snn"]
        first = snn["members"][0]["robust_accuracy_after"] if snn["members"] else None
        verdict = "trustworthy" if snn["diagnostics"]["trustworthy"] else "MASKING SUSPECTED"
        retention = r.get("retention")
        print(f"| {Path(path).parent.name} | {r['timesteps']} | {pct(ann.get('clean_accuracy'))} | "
              f"{pct(ann.get('pgd_robust_accuracy'))} | {pct(snn['clean_accuracy'])} | {pct(first)} | "
              f"{pct(snn['robust_accuracy'])} | {pct(retention)}% | {verdict} | {r['seconds']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
