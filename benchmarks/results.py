"""BENCHMARKS.md's current tables, generated from committed results.

A benchmark's measured cells (one JSON file each, in its work folder, which is not committed) are
collected into one committed result file, ``benchmarks/results/<name>.json``, that also states the
command, the machine and the date; ``render`` writes each table of that result into BENCHMARKS.md
between the markers ``<!-- results:TABLE -->`` and ``<!-- /results:TABLE -->``, and ``--check``
fails (exit 1) when a committed table no longer matches its JSON
(``tests/benchmarks/test_results.py`` runs it in CI). Only what lies between markers is generated;
the prose around it says what was measured and how.

    python benchmarks/results.py collect conversion-unseen runs/i41/conv  # cells -> results JSON
    python benchmarks/results.py render                                   # rewrite the tables
    python benchmarks/results.py render --check                           # what CI runs

Every table of BENCHMARKS.md is one of ``TABLES`` (a test fails on any other): conversion (issue
41), the frontier attack members and presets (issues 43 and 44), the weight-sparse kernel (21),
differential testing (39), fuzzing (38), issue 44's speed, the runtime against the dense limit and
Norse (6 and 44), eval memory (7) and hardware targets (4). Results a benchmark writes in pieces
are put together by ``collect`` (``COLLECTORS``); the others are written by the scripts' ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

from provenance import machine  # benchmarks/ is on sys.path when a script of it runs

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
        "machine": machine(),
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


def _stamp(result: dict, what: str) -> str:
    """The line above a generated table: which result file, what it holds, and how it was measured."""
    commit = f" at commit `{result['commit']}`" if result.get("commit") else ""
    return (f"*Generated by `python benchmarks/results.py render` from `benchmarks/results/"
            f"{result['name']}.json` ({what}); measured {result['date']} on {result['machine']}"
            f"{commit} with `{result['command']}`.*")


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
    return "\n".join([_stamp(result, f"{head['samples']} test images, clean "
                                                 f"{_pct(head['clean'])}"), "", *rows])


def render_frontier_versus(results: tuple[dict, dict]) -> str:
    """Another preset (``paper``, ``autoattack``) on a network, and its worst case beside today's
    ``adaptive`` on the same SNN and images (lower is the stronger attack)."""
    other, main = results
    (key, row), = other["rows"].items()
    name = key.removeprefix("preset-")
    ours, theirs = main["rows"]["preset-adaptive"]["robust_accuracy"], row["robust_accuracy"]
    verdict = ("the same worst case" if ours == theirs else
               f"`{name}` {'over' if theirs > ours else 'under'}estimates the worst case by "
               f"{100 * abs(theirs - ours):.1f} pp")
    return "\n".join([render_frontier_presets(other), "",
                      f"`adaptive`'s worst case {_pct(ours)} against `{name}`'s {_pct(theirs)} "
                      f"on the same images: {verdict}."])


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
        diag_seconds = (f"{row['diagnostics_seconds']:.1f} s" if "diagnostics_seconds" in row
                        else "not run")
        rows.append(f"| `{label}` | {_pct(row['robust_accuracy'])} (± {se:.1f} pp) | "
                    f"{row['ensemble_seconds']:.1f} s | {diag_seconds} | {verdict} | "
                    f"{run} of {len(row['members'])} | {broke or 'none'} |")
    lines = [_stamp(result, f"{n} test images, clean {_pct(head['clean'])}"), "", *rows]
    if {"adaptive-before", "adaptive"} <= times.keys():
        before, now = result["rows"]["preset-adaptive-before"], result["rows"]["preset-adaptive"]
        lines += ["", f"Ensemble time, `adaptive-before` / `adaptive`: "
                      f"{times['adaptive-before'] / times['adaptive']:.2f}x, side by side in "
                      f"one run; the whole evaluation (ensembles and diagnostics) "
                      f"{before['seconds']:.1f} s against {now['seconds']:.1f} s, "
                      f"{before['seconds'] / now['seconds']:.2f}x."]
    return "\n".join(lines)


# --- runtime speed (issues 6 and 44): benchmarks/runtime_speed.py --out ---------------------------

DENSE_LIMIT = 1.1  # issue 44: SNN forward and BPTT within 1.1x of the dense ANN at batch 32 and 256


def collect_runtime_speed(work: Path) -> dict:
    """``WORK/runtime-speed.json`` as ``benchmarks/runtime_speed.py --out`` wrote it, with the timing
    rows of any net rerun alone (``WORK/runtime-speed-<net>.json``) in place of the first run's:
    the command line says which rows came from which run."""
    result = json.loads((work / "runtime-speed.json").read_text())
    for rerun in sorted(work.glob("runtime-speed-*.json")):
        again = json.loads(rerun.read_text())
        for arch, net in again["nets"].items():
            result["nets"][arch]["rows"] = net["rows"]
            result["command"] += f"; {arch}'s timing rows rerun alone: {again['command']}"
    return result | {"name": "runtime-speed"}


def _runtime_rows(result: dict, grid: bool) -> list[tuple[str, dict]]:
    key, value = ("T", result["grid_t"]) if grid else ("batch", result["curve_batch"])
    return [(arch, row) for arch, net in result["nets"].items() for row in net.get("rows", [])
            if row[key] == value]


def _ratio_cell(value: float, goal: float, applies: bool) -> str:
    if not applies:
        return f"{value:.2f}"
    return f"**{value:.2f}**" if value <= goal else f"{value:.2f} ✗"


def render_runtime_grid(result: dict) -> str:
    """All batch sizes at the grid's T: times, and the ratios against the dense limit and Norse."""
    lines = [_stamp(result, f"T = {result['grid_t']}, ms per batch, medians of "
                            f"{result['repeats']} rounds, {result['threads']} threads"), "",
             "| net | batch | ANN pass | SNN forward | SNN forward, reset to zero | Norse | "
             "SNN gradient | snn/ann | grad/ann | norse/snn |", "|---|---|---|---|---|---|---|---|---|---|"]
    met, cells = 0, 0
    for arch, row in _runtime_rows(result, grid=True):
        ms = row["ms"]
        judged = row["batch"] >= 32
        for key in ("snn/ann", "grad/ann"):
            if judged:
                cells += 1
                met += row[key] <= DENSE_LIMIT
        lines.append(f"| {arch} | {row['batch']} | {min(ms['ann_module'], ms['ann_executor']):.2f} | "
                     f"{ms['snn']:.2f} | {ms['snn_zero']:.2f} | {ms['norse']:.2f} | "
                     f"{ms['snn_grad']:.2f} | {_ratio_cell(row['snn/ann'], DENSE_LIMIT, judged)} | "
                     f"{_ratio_cell(row['grad/ann'], DENSE_LIMIT, judged)} | "
                     f"{row['norse/snn']:.2f} |")
    lines += ["", f"Within {DENSE_LIMIT}x of the dense limit (issue 44's bar, batch 32 and 256; "
                  f"bold: met, ✗: not): {met} of {cells} cells."]
    return "\n".join(lines)


def render_runtime_scaling(result: dict) -> str:
    """The ratios against T at the curve's batch size."""
    nets = list(result["nets"])
    rows = {}
    for arch, row in _runtime_rows(result, grid=False):
        rows.setdefault(row["T"], {})[arch] = row
    lines = [_stamp(result, f"batch {result['curve_batch']}, medians of {result['repeats']} rounds"),
             "", "| T | " + " | ".join(f"{a} snn/ann | {a} grad/ann | {a} norse/snn" for a in nets)
             + " |", "|---|" + "---|---|---|" * len(nets)]
    for steps in sorted(rows):
        cells = [f"{rows[steps][a][k]:.2f}" if a in rows[steps] else "—"
                 for a in nets for k in ("snn/ann", "grad/ann", "norse/snn")]
        lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_runtime_memory(result: dict) -> str:
    """Memory of one input-gradient step against T, fused scan against the stepwise IF."""
    lines = [_stamp(result, f"batch {result['curve_batch']}, each point in a fresh process"), "",
             "| net | T | kept for BPTT (MiB) | peak growth (MiB) | stepwise: kept | stepwise: peak |",
             "|---|---|---|---|---|---|"]
    for arch, net in result["nets"].items():
        for row in net.get("memory", []):
            lines.append(f"| {arch} | {row['T']} | {row['saved_mib']:.1f} | "
                         f"{row['peak_growth_mib']:.1f} | {row['stepwise_saved_mib']:.1f} | "
                         f"{row['stepwise_peak_growth_mib']:.1f} |")
    return "\n".join(lines)


# --- differential testing (issue 39): benchmarks/differential.py --out ---------------------------

DIFFERENTIAL_PATHS = (  # outcome key prefix -> what the path is
    ("fx", "torch.fx frontend"), ("pt2-dynamic", "dynamic `.pt2`"), ("pt2-static", "static `.pt2`"),
    ("pt2-core-aten", "core-ATen `.pt2`"), ("onnx-torchscript", "ONNX, TorchScript exporter"),
    ("onnx-dynamo", "ONNX, dynamo exporter"), ("norse-engine", "runtime vs `run --engine norse`"),
    ("norse", "native Norse module"), ("snntorch", "native snnTorch module"),
    ("spikingjelly", "native SpikingJelly module"), ("sinabs", "native Sinabs module"),
    ("onnx-unrolled", "ONNX, unrolled SNN"), ("onnx-step", "ONNX, one step with explicit state"),
    ("nir-exact", "exact NIR through `spikeshield run`"),
    ("nir-portable", "portable NIR through `spikeshield run`"))


def _one_line(message: str, limit: int = 140) -> str:
    """A recorded message as one table-safe line: no terminal colours, no pipes, cut at ``limit``."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m|\[[0-9;]*m", "", message).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render_differential(result: dict) -> str:
    """Outcome counts per path: exact, refused in one line, or the exporter itself failing."""
    outcomes = result["outcomes"]
    unknown = {k.split(" ")[0] for k in outcomes} - {key for key, _ in DIFFERENTIAL_PATHS}
    if unknown:  # a path the harness checks must not drop out of the table unnoticed
        raise SystemExit(f"differential.json has paths DIFFERENTIAL_PATHS lacks: {sorted(unknown)}")
    lines = [_stamp(result, f"{result['models']} random models, seed {result['seed']}"), "",
             "| path | exact | refused in one line | the exporter itself failed | mismatch |",
             "|---|---|---|---|---|"]
    for key, label in DIFFERENTIAL_PATHS:
        count = lambda kind, key=key: outcomes.get(f"{key} {kind}", 0)  # noqa: E731
        if not any(k.startswith(f"{key} ") for k in outcomes):
            continue
        lines.append(f"| {label} | {count('exact')} | {count('refused')} | "
                     f"{count('exporter failed')} | {count('mismatch')} |")
    reasons = [(k.split(" ")[0], k.split(": ", 1)[1], n) for k, n in outcomes.items()
               if ": " in k and k.split(": ", 1)[0].endswith(("refused", "exporter failed"))]
    if reasons:
        labels = dict(DIFFERENTIAL_PATHS)
        lines += ["", "Why (each refusal or exporter failure, with its count):", ""]
        lines += [f"- {labels[path]}: {_one_line(reason)} ({n})" for path, reason, n in reasons]
    found = result.get("mismatch")
    lines += ["", f"{result['models']} models in {result['seconds']:.0f} s: "
                  + (f"**mismatch**: {found}" if found else "no mismatch on any path.")]
    return "\n".join(lines)


# --- fuzzing the readers (issue 38): benchmarks/fuzz_readers.py --out ------------------------------

def render_fuzz(result: dict) -> str:
    found = result["findings"]
    return "\n".join([
        _stamp(result, "one campaign"), "", "| | |", "|---|---|",
        f"| readers | {len(result['readers'])}: {', '.join(result['readers'])} |",
        f"| length | {result['seconds']:,} s |", f"| executions | {result['executions']:,} |",
        f"| corpus | {result['corpus_before']:,} inputs at the start, {result['corpus_after']:,} "
        "at the end |",
        f"| restarts (a hang or memory blow-up) | {result['restarts']} |",
        f"| findings | **{len(found)}**{': ' + ', '.join(found) if found else ''} |"])


# --- weight-sparse convolutions (issue 21): benchmarks/sparse_weights.py --out ---------------------

def render_sparse_weights(result: dict) -> str:
    lines = [_stamp(result, f"vgg11 width 0.5 on 1x28x28, {result['weights']:,} weights; batch "
                            f"{result['batch']} rows per call, medians of {result['rounds']}"), "",
             "| layer (weight) | input | density | forward dense ms | forward sparse ms | ratio | "
             "fwd+bwd dense ms | fwd+bwd sparse ms | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["layers"]:
        (fd, fs), (bd, bs) = row["forward_ms"], row["fwd_bwd_ms"]
        lines.append(f"| {tuple(row['weight'])} | {tuple(row['input'])} | {row['density']:g} | "
                     f"{fd:.1f} | {fs:.1f} | {fd / fs:.2f}x | {bd:.1f} | {bs:.1f} | {bd / bs:.2f}x |")
    snn = result["snn"]
    (fo, fa), (ao, aa) = snn["forward_ms"], snn["attack_step_ms"]
    lines += ["", f"The whole SNN, every layer at {snn['density']:g} density, T = {snn['timesteps']}, "
                  f"batch {snn['batch']}: the sparse path chosen for {snn['sparse_chosen']} of "
                  f"{snn['cases']} (layer, input, with/without backward) cases.", "",
              "| | dense path ms | sparse path ms | dense / sparse |", "|---|---|---|---|",
              f"| forward | {fo:.0f} | {fa:.0f} | {fo / fa:.2f}x |",
              f"| attack step (forward + input gradient) | {ao:.0f} | {aa:.0f} | {ao / aa:.2f}x |"]
    return "\n".join(lines)


# --- eval memory (issue 7): benchmarks/eval_memory.py --out, glibc's default and a fixed threshold -

def render_eval_memory(results: tuple[dict, dict]) -> str:
    default, fixed = results
    by_n = {row["samples"]: row for row in fixed["rows"]}
    lines = [_stamp(default, f"{default['data']}, preset `{default['preset']}`, batch "
                             f"{default['batch_size']}, glibc's default allocator"),
             "", _stamp(fixed, f"the same with `MALLOC_MMAP_THRESHOLD_={fixed['mmap_threshold']}`"),
             "",
             "| samples | peak RSS MiB, glibc default | seconds | peak RSS MiB, fixed mmap threshold "
             "| seconds |", "|---|---|---|---|---|"]
    for row in default["rows"]:
        other = by_n.get(row["samples"])
        tail = (f"{other['peak_rss_mib']:.0f} | {other['seconds']:.1f}" if other else " | ")
        lines.append(f"| {row['samples']:,} | {row['peak_rss_mib']:.0f} | {row['seconds']:.1f} | "
                     f"{tail} |")
    return "\n".join(lines)


# --- hardware targets (issue 4): benchmarks/targets.py --out --------------------------------------

def render_targets(result: dict) -> str:
    lines = [_stamp(result, f"a TRADES LeNet ({result['epochs']} epochs, mnist5k, eps 0.1; ANN "
                            f"clean {_pct(result['ann_accuracy'])}) converted at T = 8, "
                            f"calibration only (SNN clean {_pct(result['snn_accuracy'])})"), "",
             "| target | repairs | clean accuracy before -> after |", "|---|---|---|"]
    for row in result["rows"]:
        if "refused" in row:
            lines.append(f"| {row['target']} | refused: {_one_line(row['refused'], 400)} | — |")
        else:
            lines.append(f"| {row['target']} | {', '.join(row['repairs']) or 'none'} | "
                         f"{_pct(row['before'])} -> {_pct(row['after'])} ({row['samples']:,} "
                         "test images) |")
    return "\n".join(lines)


# --- speed of the work users wait for (issue 44): runs/i44 cells collected ------------------------

def collect_speed_i44(work: Path) -> dict:
    """The fused IF scan, compile time and validation-budget cells of issue 44 (``WORK`` holds
    ``if_scan.json``, ``compile_time.json`` and ``valbudget-<net>.json`` as the scripts wrote them,
    with ``compile_time.log`` for that script's command line, which its JSON lacks)."""
    scan = json.loads((work / "if_scan.json").read_text())
    compile_rows = json.loads((work / "compile_time.json").read_text())
    validation = {net: json.loads((work / f"valbudget-{net}.json").read_text())
                  for net in ("lenet", "resnet20")}
    return {
        "name": "speed-i44", "issue": 44,
        "if_scan": scan | {"command": "python " + scan["command"]},
        "compile_time": {
            "command": "python benchmarks/compile_time.py --before /tmp/before --nets "
                       "resnet20,vgg11,lenet --data mnist5k,cifar --repeats 1",
            "date": datetime.date.fromtimestamp((work / "compile_time.json").stat().st_mtime)
                    .isoformat(),
            "machine": (work / "compile_time.log").read_text().splitlines()[0],
            "before": "b694c9b", "rows": compile_rows},
        "validation": {net: v | {"command": "python " + v["command"]}
                       for net, v in validation.items()},
    }


def render_assg_step(results: tuple[dict, ...]) -> str:
    """An attack step through ASSG, fused and as PyTorch operations, against a triangle step."""
    lines = []
    for r in results:
        lines += [_stamp(r, f"batch {r['batch']}, T = {r['timesteps']}, medians of {r['rounds']} "
                            f"rounds of {r['steps']} steps"), ""]
    lines.pop()
    lines += ["", "| SNN | triangle, detached reset | ASSG, fused kernel | ASSG, PyTorch operations "
                  "| ASSG step: PyTorch / kernel |", "|---|---|---|---|---|"]
    for r in results:
        ms = r["ms"]
        tri, fused, torch_ops = (ms["triangle:1:detach"], ms["assg:detach, fused kernel"],
                                 ms["assg:detach, PyTorch operations"])
        lines.append(f"| `{r['snn']}` | {tri:.1f} ms | {fused:.1f} ms ({fused / tri:.2f}x) | "
                     f"{torch_ops:.1f} ms ({torch_ops / tri:.2f}x) | {torch_ops / fused:.2f}x |")
    return "\n".join(lines)


def render_if_scan(result: dict) -> str:
    scan = result["if_scan"] | {"name": result["name"]}
    lines = [_stamp(scan, "the fused kernel against the PyTorch scan, T = 8, medians"), "",
             "| IF layer (currents T x N x ...) | batch | spikes identical | forward, no gradient "
             "| BPTT: forward + backward | calibration's spike counts |", "|---|---|---|---|---|---|"]
    met = 0
    for row in scan["rows"]:
        met += row["bptt"]["speedup"] >= 2
        shape = " x ".join(str(d) for d in [row["shape"][0], *row["shape"][2:]])
        lines.append(f"| {row['layer']} ({shape}) | {row['batch']} | "
                     f"{'yes' if row['spikes_identical'] else '**no**'} | "
                     f"{row['forward']['speedup']:.2f}x | {row['bptt']['speedup']:.2f}x | "
                     f"{row['rate']['speedup']:.2f}x |")
    lines += ["", f"BPTT at least 2x faster (issue 44's bar): {met} of {len(scan['rows'])} shapes."]
    return "\n".join(lines)


def render_compile_time(result: dict) -> str:
    ct = result["compile_time"] | {"name": result["name"]}
    lines = [_stamp(ct, f"`--finetune none` compiles, the tree at `{ct['before']}` (before the "
                        "fused kernels) and this one, each in a fresh process"), "",
             "| data | net | compile before -> after | calibration's share before -> after | "
             "thresholds |", "|---|---|---|---|---|"]
    for row in ct["rows"]:
        b, a = row["before"], row["after"]
        same = "identical" if row["max_threshold_rel_diff"] == 0 else \
            f"within {100 * row['max_threshold_rel_diff']:.2g}%"
        data = "CIFAR-shaped" if row["data"] == "cifar" else row["data"]
        lines.append(f"| {data} | {row['arch']} | {b['seconds']:.1f} s -> {a['seconds']:.1f} s | "
                     f"{100 * b['calibration'] / b['seconds']:.1f}% -> "
                     f"{100 * a['calibration'] / a['seconds']:.1f}% | {same} |")
    return "\n".join(lines)


VALIDATION_NETS = (  # net -> (label, epochs whose timing counts, why)
    ("lenet", "LeNet", None, "alone on the machine"),
    ("resnet20", "resnet20 width 0.5", (9, 10), "epochs 9-10, the two run without other load"))


def render_validation(result: dict) -> str:
    first = result["validation"]["lenet"] | {"name": result["name"]}
    lines = [_stamp(first, "one finetuning run per net, every epoch scored three ways") + " "
             "(resnet20: the same command with `--arch resnet20` and its ANN.)", "",
             "| ANN | validation / epoch, all images | budgeted | epoch picked: all / budgeted | "
             "test clean, PGD-10 of the picked epoch: all / budgeted |", "|---|---|---|---|---|"]
    for net, label, timed, why in VALIDATION_NETS:
        v = result["validation"][net]
        epochs = [e for e in v["epochs"] if e["epoch"] > 0 and (timed is None or e["epoch"] in timed)]
        spent = sum(e["epoch_seconds"] for e in epochs)
        share = {k: sum(e[k]["seconds"] for e in epochs) / spent for k in ("full", "budget")}
        by_epoch = {e["epoch"]: e["test"] for e in v["epochs"]}
        picked = {k: by_epoch[v["picks"][k]] for k in ("full", "budget")}
        images = v["epochs"][0]
        lines.append(
            f"| {label} ({why}) | {share['full']:.2f} ({images['full']['images']} images) | "
            f"**{share['budget']:.2f}** ({images['budget']['images']}) | "
            f"{v['picks']['full']} / {v['picks']['budget']} | "
            + " / ".join(f"{_pct(picked[k]['clean'])}, {_pct(picked[k]['robust'])}"
                         for k in ("full", "budget")) + " |")
    lines.append("")
    for net, label, _, _ in VALIDATION_NETS:
        v = result["validation"][net]
        by_epoch = {e["epoch"]: e["test"] for e in v["epochs"]}
        full, budget = by_epoch[v["picks"]["full"]], by_epoch[v["picks"]["budget"]]
        if v["picks"]["full"] == v["picks"]["budget"]:
            lines.append(f"- {label}: both settings kept epoch {v['picks']['full']}.")
            continue
        n = budget["images"]
        se = [100 * _binomial_se(budget[k], n) for k in ("clean", "robust")]
        lines.append(
            f"- {label}: the budgeted validation kept epoch {v['picks']['budget']} instead of "
            f"{v['picks']['full']}, {100 * (budget['clean'] - full['clean']):+.1f} pp clean and "
            f"{100 * (budget['robust'] - full['robust']):+.1f} pp under PGD-10 on the {n} test "
            f"images (standard errors {se[0]:.1f} and {se[1]:.1f} pp).")
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
    "frontier-lenet-paper": (("frontier-lenet-paper", "frontier-lenet"), render_frontier_versus),
    "frontier-lenet-autoattack": (("frontier-lenet-autoattack", "frontier-lenet"),
                                  render_frontier_versus),
    "frontier-resnet20-paper": (("frontier-resnet20-paper", "frontier-resnet20"),
                                render_frontier_versus),
    "speed-validation": ("speed-i44", render_validation),
    "speed-if-scan": ("speed-i44", render_if_scan),
    "speed-compile-time": ("speed-i44", render_compile_time),
    "speed-assg-step": (("assg-step-lenet", "assg-step-resnet20"), render_assg_step),
    "runtime-grid": ("runtime-speed", render_runtime_grid),
    "runtime-scaling": ("runtime-speed", render_runtime_scaling),
    "runtime-memory": ("runtime-speed", render_runtime_memory),
    "differential": ("differential", render_differential),
    "fuzz-readers": ("fuzz-readers", render_fuzz),
    "sparse-weights": ("sparse-weights", render_sparse_weights),
    "eval-memory": (("eval-memory", "eval-memory-mmap"), render_eval_memory),
    "targets": ("targets", render_targets),
}
COLLECTORS = {"conversion-unseen": collect_conversion_unseen, "speed-i44": collect_speed_i44,
              "runtime-speed": collect_runtime_speed}


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
    versus = []
    for net, label in (("resnet20", "resnet20"), ("lenet", "LeNet")):
        ours = json.loads((results / f"frontier-{net}.json").read_text())["rows"]
        paper = json.loads((results / f"frontier-{net}-paper.json").read_text())["rows"]
        versus.append(f"{label}: {_pct(ours['preset-adaptive']['robust_accuracy'])} against "
                      f"{_pct(paper['preset-paper']['robust_accuracy'])}")
    phrases.append("; ".join(versus))
    differential = json.loads((results / "differential.json").read_text())
    phrases += [f"({differential['models']} random models)",
                "no mismatch:" if differential["mismatch"] is None else "a mismatch:",
                f"exact on the {differential['outcomes']['norse exact']} converted SNNs"]
    return phrases


def rendered(text: str, results: Path = RESULTS) -> str:
    """``text`` (BENCHMARKS.md) with every marked table regenerated from ``results``."""
    orphans = set(re.findall(r"<!-- results:(\S+) -->", text)) - TABLES.keys()
    if orphans:
        raise SystemExit(f"BENCHMARKS.md has results blocks no renderer knows: {sorted(orphans)}")
    for table, (name, render) in TABLES.items():
        pattern = re.compile(rf"(<!-- results:{table} -->\n)(.*?)(<!-- /results:{table} -->)",
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f"BENCHMARKS.md has no <!-- results:{table} --> block")
        if isinstance(name, tuple):  # one table from several result files
            body = render(tuple({"name": n} | json.loads((results / f"{n}.json").read_text())
                                for n in name))
        else:
            body = render({"name": name} | json.loads((results / f"{name}.json").read_text()))
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
