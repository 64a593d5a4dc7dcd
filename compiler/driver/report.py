"""``report.json`` and ``report.md`` of a compile run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _calibration_steps(cfg: dict[str, Any]) -> str:
    """The calibration recipe in force, in words (the passes themselves are in report.json)."""
    steps = [f"{cfg['percentile']}th percentile per {cfg['threshold_mode']}"]
    if cfg.get("correction") == "fit":
        steps.append("each layer fitted to the ANN (threshold"
                     + (" among fractions of that" if cfg.get("threshold_search") else "")
                     + ", spike amplitude and bias shift)")
    else:
        if cfg.get("threshold_search"):
            steps.append("threshold search")
        if cfg.get("correction", "none") != "none":
            steps.append(f"{cfg['correction']} correction")
    if cfg.get("uniform_thresholds"):
        steps.append("thresholds folded into the weights (one threshold, 1, per layer)")
    return ", ".join(steps)


def render_markdown(report: dict[str, Any], snn: Graph) -> str:
    ann, snn_r = report["ann"], report["snn"]
    cfg = report["config"]
    lines: list[str] = [
        "# spikeshield compile report",
        "",
        f"- model: `{report['model']}`",
        f"- data: `{report['data']}` (test samples: {snn_r['samples']})",
        f"- timesteps T: {snn_r['timesteps']}, reset: {cfg['reset']}, initial potential: "
        f"{cfg.get('v_init', 0.0):g} x threshold, thresholds: per {cfg['threshold_mode']},"
        f" encoding: {cfg['encoding']}, device: {report['device']}",
        f"- calibration: {_calibration_steps(cfg)}",
        "",
        "## Clean accuracy",
        "",
        "| network | accuracy |",
        "|---|---|",
        f"| ANN (source model, ReLU) | {_pct(ann['accuracy'])} |",
        f"| SNN (T={snn_r['timesteps']}) | {_pct(snn_r['accuracy'])} |",
        f"| difference | {100 * (snn_r['accuracy'] - ann['accuracy']):+.2f} pp |",
        "",
    ]
    if snn_r.get("accuracy_before_finetuning") is not None:
        lines[-3:-3] = [f"| SNN before finetuning ({cfg['finetune']}, {cfg['finetune_epochs']} "
                        f"epochs) | {_pct(snn_r['accuracy_before_finetuning'])} |"]
    rob = report.get("robustness")
    if rob is not None:
        from spikeshield.compiler.driver.robustness import robustness_files

        lines += [
            f"## Robustness (ε = {rob['eps']:.4g}, preset `{rob['preset']}`, {rob['samples']} samples)",
            "",
            "| network | robust accuracy (worst case) |",
            "|---|---|",
            f"| ANN | {_pct(rob['ann_robust_accuracy'])} (PGD alone: "
            f"{_pct(rob['ann_pgd_robust_accuracy'])}) |",
            f"| SNN | {_pct(rob['snn_robust_accuracy'])} |",
        ]
        adapted = rob.get("adapted")
        if adapted:
            lines.append(f"| SNN as deployed ({adapted['graph']}; clean "
                         f"{_pct(adapted['clean_accuracy'])}) | "
                         f"{_pct(adapted['snn_robust_accuracy'])} |")
        lines += [
            "",
            rob["verdict"],
            "",
            "Details, per attack member and with the masking diagnostics: robustness.md"
            + (f" (the deployed form: {robustness_files(adapted['graph'])[1]})." if adapted
               else "."),
            "",
        ]
    lines += profile_lines(report.get("profile"))
    lines += export_lines(report.get("exports") or [])
    lines += [
        "## Spiking layers",
        "",
        "| layer | neurons | threshold | firing rate (spikes / neuron / step) |",
        "|---|---|---|---|",
    ]
    for name in snn.nodes_of(IF):
        th = snn.op(name).threshold
        shown = f"{float(th[0]):.4g}" if th.numel() == 1 else f"{th.numel()} values, mean {float(th.mean()):.4g}"
        lines.append(
            f"| {name} | {snn_r['neurons'].get(name, 0)} | {shown} | "
            f"{snn_r['spike_rates'].get(name, 0.0):.4f} |"
        )
    lines += [
        "",
        f"Mean spikes per sample over all layers and steps: {snn_r['mean_spikes_per_sample']:.1f}",
        "",
        "## Passes",
        "",
        "| pass | seconds | changed |",
        "|---|---|---|",
    ]
    lines += [f"| {p['name']} | {p['seconds']:.3f} | {p['changed']} |" for p in report["passes"]]
    lines += [
        "",
        "## What the numbers mean",
        "",
        "- *Clean accuracy*: fraction of test images classified correctly without any attack. The SNN's",
        "  prediction is the argmax of its output layer averaged over T steps (the output is non-spiking).",
        "- *Threshold*: an IF neuron spikes when its membrane potential exceeds it; it was calibrated as "
        f"{snn_r['threshold_scale']:.3g} x the {cfg['percentile']}th percentile of the layer's input current"
        " (earlier layers already spiking)"
        + (", then set, per channel, to the fraction of that with the least measured layer error"
           if cfg.get("threshold_search") and cfg.get("correction") != "fit" else "")
        + (", then fitted per channel with the spike's amplitude and a bias shift so that the "
           "layer's output is nearest (least squares) to the ANN's activations on the "
           "calibration images. Each spike stands for its amplitude in units of the ANN "
           "activation." if cfg.get("correction") == "fit" else
           ". Each spike stands for that many units of the ANN activation.")
        + (" A quantised (QCFS) layer's threshold is its learned ceiling instead."
           if snn.meta.get("fixed_thresholds") else ""),
        "- *Initial potential*: the membrane starts at this fraction of the threshold (0.5 rounds a"
        " neuron's spike count, 0 floors it).",
    ]
    if cfg.get("correction", "none") == "bias":
        lines.append("- *Bias correction*: each layer's mean output matched to the ANN's on the "
                     "calibration data, layer by layer, by shifting the bias of the layer before it "
                     "(no labels used).")
    lines += [
        "- *Firing rate*: spikes per neuron per time step, averaged over the test samples (0 to 1).",
    ]
    return "\n".join(lines) + "\n"


def profile_lines(summary: dict[str, Any] | None) -> list[str]:
    """The headline of profile.md: stored weights, SynOps and estimated energy."""
    if summary is None:
        return []
    ratio = summary["ann_over_snn_energy"]
    return [
        f"## Energy and memory ({summary['samples']} test samples; details: profile.md)",
        "",
        f"- Stored weights: {summary['nonzeros']:,} of {summary['weights']:,} "
        f"({summary['weight_reduction']:.1f}x fewer than dense).",
        f"- SynOps per sample: {summary['synops']:,.0f}; estimated energy per sample: SNN "
        f"{summary['snn_energy_pj'] / 1000:,.2f} nJ, ANN {summary['ann_energy_pj'] / 1000:,.2f} nJ"
        f" (ANN / SNN = {'n/a' if ratio is None else f'{ratio:.2f}x'}; above 1x the SNN is cheaper).",
        f"- {summary['formula']}",
        "",
    ]


def export_lines(exports: list[dict[str, Any]]) -> list[str]:
    """The report section on exported files and what adapting them to a hardware target cost."""
    if not exports:
        return []
    lines = ["## Exports", "", "| file | format | target | repairs | accuracy before -> after |",
             "|---|---|---|---|---|"]
    for e in exports:
        a = e["adaptation"]
        repairs = ", ".join(p["name"] for p in a["passes"]) or "none needed"
        change = "unchanged"
        if a["accuracy_before"] is not None:
            change = (f"{_pct(a['accuracy_before'])} -> {_pct(a['accuracy_after'])} "
                      f"({a['samples']} samples)")
        lines.append(f"| {e['file']} | {e['format']} | {a['target']} | {repairs} | {change} |")
    return lines + ["", "Each file has a `.json` sidecar with the details (see "
                    "docs/guides/deploy.md, Export formats).",
                    ""]


def write_reports(report: dict[str, Any], snn: Graph, directory: Path) -> None:
    (directory / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (directory / "report.md").write_text(render_markdown(report, snn))
