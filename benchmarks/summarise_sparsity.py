"""Print the Markdown table of benchmarks/sparsity.sh from each run's report, profile and robustness
files; every ratio is against the `dense` run (same ANN, same conversion and finetuning, no pruning)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(run: Path) -> dict:
    return {name: json.loads((run / f"{name}.json").read_text())
            for name in ("report", "profile", "robustness") if (run / f"{name}.json").is_file()}


def main(work: str) -> None:
    runs = {p.name: load(p) for p in sorted(Path(work).iterdir()) if (p / "report.json").is_file()}
    dense = runs.pop("dense")
    d_prof = dense["profile"]
    print("| run | kept weights | weight reduction | SNN clean | SNN paper worst case | ANN PGD-20 "
          "| SynOps/sample | SynOp energy vs dense SNN | SNN energy vs dense SNN | ANN energy / SNN "
          "energy | best-format fp32 bytes vs dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [("dense", dense)] + sorted(runs.items(), key=lambda kv: (kv[0].split("-")[0],
                                                                       float(kv[0].split("-")[1])))
    for name, r in rows:
        prof, rob = r["profile"], r.get("robustness", {})
        t, s = prof["totals"], prof["storage"]
        reduction = d_prof["storage"]["nonzeros"] / s["nonzeros"]
        synop_ratio = d_prof["totals"]["synop_energy_pj"] / t["synop_energy_pj"]
        energy_ratio = d_prof["totals"]["snn_energy_pj"] / t["snn_energy_pj"]
        ann_pgd = (rob.get("ann") or {}).get("pgd_robust_accuracy")
        print(f"| {name} | {s['nonzeros']:,} / {s['weights']:,} | {reduction:.1f}x "
              f"| {100 * r['report']['snn']['accuracy']:.1f}% "
              f"| {100 * rob['snn']['robust_accuracy']:.1f}% "
              f"| {'n/a' if ann_pgd is None else f'{100 * ann_pgd:.1f}%'} "
              f"| {t['synops']:,.0f} | {synop_ratio:.1f}x | {energy_ratio:.1f}x "
              f"| {t['ratios']['ann_over_snn_energy']:.2f}x "
              f"| {d_prof['storage']['bytes']['fp32']['dense'] / s['bytes']['fp32']['best_per_layer']:.1f}x |")
    print(f"\nrobust accuracy: {dense['robustness']['samples']} test images, eps "
          f"{dense['robustness']['eps']}; clean accuracy and profile: "
          f"{dense['report']['snn']['samples']} / {d_prof['samples']} test images")


if __name__ == "__main__":
    main(sys.argv[1])
