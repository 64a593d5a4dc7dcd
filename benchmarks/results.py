"""BENCHMARKS.md's current tables, generated from committed results.

A benchmark's measured cells (one JSON file each, in its work folder, which is not committed) are
collected into one committed result file, ``benchmarks/results/<name>.json``, that also states the
command, the machine and the date; ``render`` writes each table of that result into BENCHMARKS.md
between the markers ``<!-- results:TABLE -->`` and ``<!-- /results:TABLE -->``, and ``--check``
fails (exit 1) when a committed table no longer matches its JSON
(``tests/benchmarks/test_results.py`` runs it in CI). Only what lies between markers is generated;
the prose around it is the history of how the figures came about.

    python benchmarks/results.py collect conversion-unseen runs/i41/conv  # cells -> results JSON
    python benchmarks/results.py render                                   # rewrite the tables
    python benchmarks/results.py render --check                           # what CI runs

Tables so far: ``conversion-h2h``, ``conversion-neurons``, ``conversion-finetuned``,
``conversion-qcfs`` (issue 41); ``frontier-<net>-alone`` and ``frontier-<net>-presets``
(issues 43 and 44), from the JSON that ``benchmarks/frontier.py --out`` writes itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"
STEPS = ("1", "2", "4", "8")

# --- conversion-unseen (issue 41): benchmarks/conversion_unseen.sh ------------------------------

# (folder suffix, architecture label) in the order of the tables; each trained both ways.
CONVERSION_ANNS = (("lenet", "LeNet"), ("resnet20", "resnet20 (zoo, half width)"),
                   ("kuangliu-resnet", "third-party-style ResNet"),
                   ("vgg11", "vgg11 (zoo, half width)"))
TRAINING = (("-standard", "cross-entropy"), ("", "TRADES"))
# cell file stem (without -T8) -> column, for the T = 8 table of neurons
NEURON_CELLS = (("ss-old-default--zero--v0-0--layer-", "old default (zero, v0 0, per layer)"),
                ("ss-default---threshold-search", "issue 19's default"),
                ("ss-default-fit", "today's default"),
                ("ss-paper-a-fit-uniform", "Paper A's neuron, fitted"))
QCFS_LEVELS = 4  # benchmarks/conversion.py --activation qcfs --levels 4: WORK/<ann>-qcfs4/
FINETUNED_CELLS = (("default", "robust-default-fit-T8-none-e10-n1000"),
                   ("paper-a", "robust-paper-a-fit-uniform-T8-none-e10-n1000"))


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor() or "unknown CPU") if Path("/proc/cpuinfo").is_file() else "?"
    import torch

    return (f"{os.cpu_count()}-core {cpu}, {platform.system()}, CPU only, "
            f"torch {torch.__version__.split('+')[0]}")


def collect_conversion_unseen(work: Path) -> dict:
    """The cells of ``benchmarks/conversion_unseen.sh WORK`` as one result (missing cells null)."""
    anns, stamps = [], []
    for suffix, training in TRAINING:
        for arch, label in CONVERSION_ANNS:
            folder = work / f"mnist5k-{arch}{suffix}"
            if not folder.is_dir():
                raise SystemExit(f"{folder} does not exist: run benchmarks/conversion_unseen.sh "
                                 f"{work} first")
            cell = lambda stem: _read(folder / f"{stem}.json")  # noqa: E731
            stamps += [p.stat().st_mtime for p in folder.glob("*.json")]
            accuracy = lambda stem: (cell(stem) or {}).get("accuracy")  # noqa: E731
            anns.append({
                "arch": arch, "label": label, "training": training,
                "ann": accuracy("ann"),
                "default": {t: accuracy(f"ss-default-fit-T{t}") for t in STEPS},
                "spikingjelly": {t: accuracy(f"sj-99-9--channel---half-threshold-T{t}")
                                 for t in STEPS},
                "neurons_t8": {column: accuracy(f"{stem}-T8") for stem, column in NEURON_CELLS},
                "finetuned_t8": {key: ({k: cell(stem)[k] for k in ("before", "after", "seconds")}
                                       if cell(stem) else None)
                                 for key, stem in FINETUNED_CELLS},
            })
            qcfs = work / f"mnist5k-{arch}{suffix}-qcfs{QCFS_LEVELS}"
            if qcfs.is_dir():  # the same architecture and recipe, trained with QCFS activations
                stamps += [p.stat().st_mtime for p in qcfs.glob("*.json")]
                anns[-1]["qcfs"] = {
                    "levels": QCFS_LEVELS, "ann": (_read(qcfs / "ann.json") or {}).get("accuracy"),
                    "default": {t: (_read(qcfs / f"ss-default-fit-T{t}.json") or {}).get("accuracy")
                                for t in STEPS}}
    return {
        "name": "conversion-unseen",
        "issue": 41,
        "command": "benchmarks/conversion_unseen.sh WORK h2h|rows|finetune|finetune-default "
                   "(each step: benchmarks/conversion.py --data mnist5k --n 1000 ...)",
        "machine": _machine(),
        "date": datetime.date.fromtimestamp(max(stamps)).isoformat(),
        "test_images": 1000,
        "calibration": "the first 11 training batches of 64 (seeded shuffle), the same for both "
                       "converters",
        "spikingjelly_recipe": "SpikingJelly 2.0.0 ann2snn, 99.9th percentile per channel, "
                               "half-threshold start",
        "anns": anns,
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _source(result: dict, what: str, command: str | None = None) -> str:
    return (f"*Generated by `python benchmarks/results.py render` from "
            f"`benchmarks/results/{result['name']}.json` ({what}); measured {result['date']} on "
            f"{result['machine']} with `{command or result['command']}`; clean accuracy on the "
            f"first "
            f"{result['test_images']:,} test images of mnist5k.*")


def _binomial_se(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5


def render_conversion_h2h(result: dict) -> str:
    rows = ["| ANN | training | ANN | converter | " + " | ".join(f"T={t}" for t in STEPS) + " |",
            "|---|---|---|---|" + "---|" * len(STEPS)]
    ahead = behind = 0
    gaps: list[tuple[float, float, str]] = []
    for ann in result["anns"]:
        rows.append(f"| {ann['label']} | {ann['training']} | {_pct(ann['ann'])} | spikeshield "
                    "default | " + " | ".join(_pct(ann["default"][t]) for t in STEPS) + " |")
        rows.append("| | | | SpikingJelly best | "
                    + " | ".join(_pct(ann["spikingjelly"][t]) for t in STEPS) + " |")
        for t in STEPS[1:]:
            ours, theirs = ann["default"][t], ann["spikingjelly"][t]
            if ours is None or theirs is None:
                continue
            if ours >= theirs:
                ahead += 1
            else:
                behind += 1
                se = _binomial_se(theirs, result["test_images"])
                gaps.append((theirs - ours, se, f"{ann['label']}, {ann['training']}, T = {t}"))
    summary = (f"At T = 2, 4 and 8 spikeshield's default is at least as accurate as SpikingJelly's "
               f"best recipe in {ahead} of {ahead + behind} cells")
    if gaps:
        within = all(gap <= se for gap, se, _ in gaps)
        summary += ("; behind in " + "; ".join(
            f"{where} by {100 * gap:.1f} pp (binomial standard error {100 * se:.1f} pp)"
            for gap, se, where in gaps)
            + (": each within one standard error." if within else "."))
    else:
        summary += "."
    return "\n".join([_source(result, "cells ss-default-fit-T*, sj-99-9--channel---half-"
                               "threshold-T*"), "", *rows, "", summary])


def render_conversion_neurons(result: dict) -> str:
    columns = [column for _, column in NEURON_CELLS]
    rows = ["| ANN | training | ANN | " + " | ".join(columns) + " |",
            "|---|---|---|" + "---|" * len(columns)]
    worst = None
    for ann in result["anns"]:
        values = ann["neurons_t8"]
        rows.append(f"| {ann['label']} | {ann['training']} | {_pct(ann['ann'])} | "
                    + " | ".join(_pct(values[c]) for c in columns) + " |")
        today, paper_a = values["today's default"], values["Paper A's neuron, fitted"]
        if today is not None and paper_a is not None:
            gap = today - paper_a
            worst = gap if worst is None else max(worst, gap)
    summary = ("" if worst is None else
               f"Calibration only, T = 8: Paper A's neuron is at most {100 * worst:.1f} pp below "
               "today's default on these ANNs.")
    return "\n".join([_source(result, "cells ss-*-T8"), "", *rows, "", summary]).rstrip()


def render_conversion_finetuned(result: dict) -> str:
    rows = ["| ANN | training | default neuron: converted → after finetuning | Paper A's neuron: "
            "converted → after finetuning | Paper A's after finetuning − default's |",
            "|---|---|---|---|---|"]
    for ann in result["anns"]:
        if "resnet" not in ann["arch"]:
            continue
        cells = ann["finetuned_t8"]
        text = {key: ("not measured" if c is None else f"{_pct(c['before'])} → "
                      f"**{_pct(c['after'])}**") for key, c in cells.items()}
        gap = ("—" if cells["default"] is None or cells["paper-a"] is None else
               f"{100 * (cells['paper-a']['after'] - cells['default']['after']):+.1f} pp")
        rows.append(f"| {ann['label']} | {ann['training']} | {text['default']} | "
                    f"{text['paper-a']} | {gap} |")
    below, pairs = paper_a_gap(result)
    summary = ("" if not pairs else
               f"After the same finetuning, Paper A's neuron is at most {100 * below:.1f} pp below "
               f"the default neuron on the {pairs} residual ANNs measured with both.")
    return "\n".join([_source(result, "cells robust-*-T8-none-e10-n1000: TRADES finetuning, 10 "
                               "epochs on all 3,600 training images, the epoch kept by all 400 "
                               "validation images, T = 8"), "", *rows, "", summary]).rstrip()


def paper_a_gap(result: dict) -> tuple[float, int]:
    """The largest shortfall of Paper A's neuron against the default neuron after the default
    finetuning (0 when it is never below), over the residual ANNs measured with both."""
    gaps = [a["finetuned_t8"]["default"]["after"] - a["finetuned_t8"]["paper-a"]["after"]
            for a in result["anns"]
            if a["finetuned_t8"]["default"] and a["finetuned_t8"]["paper-a"]]
    return max([0.0, *gaps]), len(gaps)


def render_conversion_qcfs(result: dict) -> str:
    rows = ["| ANN | training | activation | ANN | " + " | ".join(f"T={t}" for t in STEPS) + " |",
            "|---|---|---|---|" + "---|" * len(STEPS)]
    for ann in result["anns"]:
        if "qcfs" not in ann:
            continue
        qcfs = ann["qcfs"]
        rows.append(f"| {ann['label']} | {ann['training']} | ReLU | {_pct(ann['ann'])} | "
                    + " | ".join(_pct(ann["default"][t]) for t in STEPS) + " |")
        rows.append(f"| | | QCFS, L = {qcfs['levels']} | {_pct(qcfs['ann'])} | "
                    + " | ".join(_pct(qcfs["default"][t]) for t in STEPS) + " |")
    return "\n".join([_source(result, "cells of WORK/<ann>-qcfs4: the same architecture and "
                               "training recipe with QCFS activations, converted with the "
                               "defaults (thresholds = the learned ceilings, no statistic)",
                               "benchmarks/conversion.py --work WORK --data mnist5k --n 1000 "
                               "--objective trades --activation qcfs --levels 4 --no-spikingjelly "
                               "--head-to-head -T 1,2,4,8 --arch A ..."),
                      "", *rows])


# --- frontier (issues 43 and 44): benchmarks/frontier.py --out ----------------------------------


def _frontier_source(result: dict, what: str) -> str:
    return (f"*Generated by `python benchmarks/results.py render` from `benchmarks/results/"
            f"{result['name']}.json` ({what}); measured {result['date']} on {result['machine']} "
            f"at commit `{result['commit']}` with `{result['command']}`.*")


def _frontier_head(result: dict) -> dict:
    first = next(iter(result["rows"].values()))
    return {"samples": first["samples"], "clean": first["clean_accuracy"]}


def render_frontier_alone(result: dict) -> str:
    """Each member alone on every clean-correct sample: robust accuracy, images broken, time."""
    head = _frontier_head(result)
    rows = ["| member (alone) | robust accuracy | images broken | by pass (max) | wall time |",
            "|---|---|---|---|---|"]
    for row in result["rows"].values():
        m = row["members"][0]
        passes = m.get("broken_at_pass")
        rows.append(f"| {m['label']} | {_pct(row['robust_accuracy'])} | {m['broken']} | "
                    f"{max(passes) if passes else '—'} | {row['seconds']:.1f} s |")
    return "\n".join([_frontier_source(result, f"{head['samples']} test images, clean "
                                                 f"{_pct(head['clean'])}"), "", *rows])


def render_frontier_presets(result: dict) -> str:
    """Presets side by side: worst case with its standard error, time, and what ran."""
    head = _frontier_head(result)
    n = head["samples"]
    rows = ["| preset | worst case (± SE) | ensemble | diagnostics | verdict | members run | "
            "members that broke images |", "|---|---|---|---|---|---|---|"]
    times = {}
    for name, row in result["rows"].items():
        label = name.removeprefix("preset-")
        times[label] = row["ensemble_seconds"]
        run = sum(1 for m in row["members"] if m["attacked"])
        broke = "; ".join(f"{m['label']}: {m['broken']}" for m in row["members"] if m["broken"])
        se = 100 * _binomial_se(row["robust_accuracy"], n)
        diag = row.get("diagnostics") or {}
        verdict = diag.get("verdict", "—").split(":")[0].split(".")[0]
        rows.append(f"| `{label}` | {_pct(row['robust_accuracy'])} (± {se:.1f} pp) | "
                    f"{row['ensemble_seconds']:.1f} s | "
                    f"{row.get('diagnostics_seconds', float('nan')):.1f} s | {verdict} | "
                    f"{run} of {len(row['members'])} | {broke or 'none'} |")
    lines = [_frontier_source(result, f"{n} test images, clean {_pct(head['clean'])}"), "", *rows]
    if {"adaptive-before", "adaptive"} <= times.keys():
        lines += ["", f"Ensemble time, `adaptive-before` / `adaptive`: "
                      f"{times['adaptive-before'] / times['adaptive']:.2f}x, side by side in "
                      "one run."]
    return "\n".join(lines)


TABLES = {  # table -> (result file name, renderer)
    "conversion-h2h": ("conversion-unseen", render_conversion_h2h),
    "conversion-neurons": ("conversion-unseen", render_conversion_neurons),
    "conversion-finetuned": ("conversion-unseen", render_conversion_finetuned),
    "conversion-qcfs": ("conversion-unseen", render_conversion_qcfs),
    "frontier-resnet20-alone": ("frontier-resnet20-alone", render_frontier_alone),
    "frontier-resnet20-presets": ("frontier-resnet20", render_frontier_presets),
    "frontier-lenet-alone": ("frontier-lenet-alone", render_frontier_alone),
    "frontier-lenet-presets": ("frontier-lenet", render_frontier_presets),
}
COLLECTORS = {"conversion-unseen": collect_conversion_unseen}


def readme_figures(results: Path = RESULTS) -> list[str]:
    """The phrases of the README's results table that come from committed results: each must
    appear in README.md as rendered here (tests/benchmarks/test_results.py)."""
    result = json.loads((results / "conversion-unseen.json").read_text())
    trades_r20 = next(a for a in result["anns"]
                      if a["arch"] == "resnet20" and a["training"] == "TRADES")
    cells = [(a["default"][t], a["spikingjelly"][t]) for a in result["anns"] for t in STEPS[1:]]
    ahead = sum(ours >= theirs for ours, theirs in cells)
    gap = max(theirs - ours for ours, theirs in cells)
    phrases = [f"{_pct(trades_r20['default']['2'])} clean, against "
               f"{_pct(trades_r20['spikingjelly']['2'])} for SpikingJelly",
               f"at least as accurate in {ahead} of {len(cells)} cells",
               f"the other {len(cells) - ahead} within {100 * gap:.1f} pp"]
    below, pairs = paper_a_gap(result)
    phrases.append(f"at most {100 * below:.1f} pp below the default neuron on {pairs} residual "
                   "ANNs")
    frontier = json.loads((results / "frontier-resnet20.json").read_text())["rows"]
    new, old = frontier["preset-adaptive"], frontier["preset-adaptive-before"]
    phrases.append(f"worst case {_pct(new['robust_accuracy'])} against "
                   f"{_pct(old['robust_accuracy'])} for the previous default, its ensemble "
                   f"{old['ensemble_seconds'] / new['ensemble_seconds']:.2f}x faster (the whole "
                   f"report {old['seconds'] / new['seconds']:.2f}x")
    return phrases


def rendered(text: str, results: Path = RESULTS) -> str:
    """``text`` (BENCHMARKS.md) with every marked table regenerated from ``results``."""
    for table, (name, render) in TABLES.items():
        pattern = re.compile(rf"(<!-- results:{table} -->\n)(.*?)(<!-- /results:{table} -->)",
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f"BENCHMARKS.md has no <!-- results:{table} --> block")
        result = {"name": name} | json.loads((results / f"{name}.json").read_text())
        body = render(result)
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="a benchmark's cells into benchmarks/results/")
    collect.add_argument("name", choices=sorted(COLLECTORS))
    collect.add_argument("work", type=Path)
    render = sub.add_parser("render", help="regenerate BENCHMARKS.md's marked tables")
    render.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a table differs from its JSON")
    args = parser.parse_args(argv)
    if args.command == "collect":
        result = COLLECTORS[args.name](args.work)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote benchmarks/results/{args.name}.json")
        return 0
    text = BENCHMARKS.read_text()
    new = rendered(text)
    if args.check:
        if new != text:
            print("BENCHMARKS.md's generated tables differ from benchmarks/results/: run "
                  "python benchmarks/results.py render", file=sys.stderr)
            return 1
        return 0
    BENCHMARKS.write_text(new)
    print("BENCHMARKS.md: tables regenerated" if new != text else "BENCHMARKS.md: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
