"""The energy and memory profile of a compiled SNN: per layer and in total, SynOps, MACs, estimated
energy, firing rates and stored bytes, against the ANN and against dense connectivity.

``profile_graph`` measures; ``write_profile`` writes ``profile.json``, ``profile.md``,
``profile_energy.png`` and ``profile_rates.png``; ``profile_directory`` is ``spikeshield profile DIR``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from spikeshield.compiler.driver.energy_conventions import (
    compare_profiles,
    load_profile,
    render_comparison,
)
from spikeshield.compiler.driver.manifest import publish_files
from spikeshield.compiler.driver.neurobench_check import neurobench_section
from spikeshield.compiler.driver.neurobench_check import render as neurobench_render
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import resolve_timesteps
from spikeshield.compiler.ir.ops import IF, Conv2d, Linear, Output
from spikeshield.runtime.data import Dataset
from spikeshield.runtime.energy import EnergyModel, measure_gpu_energy
from spikeshield.runtime.storage import PRECISIONS, graph_storage
from spikeshield.runtime.synops import count_synops, layer_macs

# T for profiling a graph that records none (and none is asked for).
DEFAULT_TIMESTEPS = 8
PROFILE_FILES = ("profile.json", "profile.md", "profile_energy.png", "profile_rates.png")


def driven_neurons(graph: Graph, name: str) -> str | None:
    """The IF layer a weighted layer's output charges (through scales and sums), if any."""
    stack, seen = list(graph.consumers(name)), set()
    while stack:
        node = stack.pop(0)
        if node in seen:
            continue
        seen.add(node)
        op = graph.op(node)
        if isinstance(op, IF):
            return node
        if not isinstance(op, (Conv2d, Linear, Output)):
            stack.extend(graph.consumers(node))
    return None


def profile_summary(profile: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a profile, for report.json, report.md and the command line."""
    t, s = profile["totals"], profile["storage"]
    return {
        "samples": profile["samples"],
        "weights": s["weights"],
        "nonzeros": s["nonzeros"],
        "weight_reduction": s["weight_reduction"],
        "synops": t["synops"],
        "snn_energy_pj": t["snn_energy_pj"],
        "ann_energy_pj": t["ann_energy_pj"],
        "ann_over_snn_energy": t["ratios"]["ann_over_snn_energy"],
        "formula": profile["energy_model"]["formula"],
    }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def profile_graph(
    graph: Graph,
    data: Dataset,
    timesteps: int,
    energy: EnergyModel,
    *,
    encoding: str | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    neurobench: bool = False,
) -> dict[str, Any]:
    """Simulate ``graph`` on ``data`` and account its work, energy and storage (see module doc);
    with ``neurobench``, NeuroBench's own metrics beside them (``neurobench_check``)."""
    energy.validate()
    if not graph.nodes_of(IF):
        raise ConfigError("profile needs a spiking graph (no IF layers found); compile the model first")
    if len(data) == 0:
        raise ConfigError("profile needs at least one sample; check --n and the data spec")
    encoding = encoding or graph.run_spec().encoding
    counts = count_synops(graph, data, timesteps, encoding, batch_size, device)
    gpu = measure_gpu_energy(
        lambda: count_synops(graph, data, timesteps, encoding, batch_size, device).samples, device
    )
    storage = graph_storage(graph)
    layers = []
    for name in graph.synaptic_nodes():
        neurons = driven_neurons(graph, name)
        analog = counts.analog_macs.get(name, 0)
        synops = counts.synops(name) if name in counts.synops_per_step else 0.0
        ann_macs = layer_macs(graph, name)
        row = {
            "name": name,
            "kind": graph.op(name).kind,
            "input": "analog" if name in counts.analog_macs else "spikes",
            "neurons_driven": neurons,
            "neurons": counts.neurons.get(neurons, 0) if neurons else 0,
            "spikes_per_neuron_per_step": counts.spike_rate(neurons) if neurons else None,
            "synops": synops,
            "synops_per_step": (counts.synops_per_step[name] / counts.samples).tolist()
            if name in counts.synops_per_step else [],
            "dense_synops": counts.dense_synops.get(name, 0.0) / counts.samples,
            "macs_once": analog,
            "macs_per_step_total": analog * timesteps,
            "ann_macs": ann_macs,
            "ann_dense_macs": layer_macs(graph, name, dense=True),
            "energy_pj": energy.snn_pj(analog * timesteps, synops),
            "energy_pj_first_layer_once": energy.snn_pj(analog, synops),
            "ann_energy_pj": energy.ann_pj(ann_macs),
            "storage": storage["layers"][name],
        }
        layers.append(row)
    per_sample = torch.zeros(counts.samples)
    for values in counts.synops_per_sample.values():
        per_sample += torch.tensor(values)
    totals = _totals(layers, energy, timesteps)
    totals["synops_per_sample"] = {
        "mean": float(per_sample.mean()), "std": float(per_sample.std()) if len(per_sample) > 1
        else 0.0, "min": float(per_sample.min()), "max": float(per_sample.max()),
    }
    profile = {
        "graph": graph.name,
        "samples": counts.samples,
        "timesteps": timesteps,
        "encoding": encoding,
        "device": str(device),
        "energy_model": energy.to_json(),
        "layers": layers,
        "spike_rates": {n: counts.spike_rate(n) for n in counts.neurons},
        "totals": totals,
        "storage": storage["totals"],
        "pruning": graph.meta.get("pruning"),
        "synops_per_sample": per_sample.tolist(),
        "gpu_energy": gpu,
    }
    if neurobench:
        profile["neurobench"] = neurobench_section(graph, data, profile)
    return profile


def _totals(layers: list[dict], energy: EnergyModel, timesteps: int) -> dict[str, Any]:
    synops = sum(r["synops"] for r in layers)
    dense_synops = sum(r["dense_synops"] for r in layers)
    analog = sum(r["macs_once"] for r in layers)
    ann_macs = sum(r["ann_macs"] for r in layers)
    ann_dense = sum(r["ann_dense_macs"] for r in layers)
    snn = energy.snn_pj(analog * timesteps, synops)
    snn_once = energy.snn_pj(analog, synops)
    analog_dense = sum(r["ann_dense_macs"] for r in layers if r["input"] == "analog")
    snn_dense = energy.snn_pj(analog_dense * timesteps, dense_synops)
    ann = energy.ann_pj(ann_macs)
    return {
        "synops": synops,
        "synop_energy_pj": energy.snn_pj(0, synops),
        "dense_synops": dense_synops,
        "macs_analog_once": analog,
        "macs_analog_per_step_total": analog * timesteps,
        "ann_macs": ann_macs,
        "ann_dense_macs": ann_dense,
        "snn_energy_pj": snn,
        "snn_energy_pj_first_layer_once": snn_once,
        "snn_energy_pj_dense_connectivity": snn_dense,
        "ann_energy_pj": ann,
        "ann_dense_energy_pj": energy.ann_pj(ann_dense),
        "ratios": {
            "ann_over_snn_energy": _ratio(ann, snn),
            "ann_over_snn_energy_first_layer_once": _ratio(ann, snn_once),
            "dense_over_sparse_synops_same_spikes": _ratio(dense_synops, synops),
            "dense_over_sparse_snn_energy_same_spikes": _ratio(snn_dense, snn),
            "dense_over_sparse_ann_macs": _ratio(ann_dense, ann_macs),
        },
    }


def _nj(pj: float) -> str:
    return f"{pj / 1000:,.2f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render_markdown(profile: dict[str, Any]) -> str:
    t, s = profile["totals"], profile["storage"]
    e = profile["energy_model"]
    lines = [
        f"# Energy and memory profile: {profile['graph']}",
        "",
        f"{profile['samples']} samples, T = {profile['timesteps']}, {profile['encoding']} encoding, "
        f"simulated on {profile['device']}. All figures are per sample (means).",
        "",
        "**Estimated energy** (an estimate of a neuromorphic chip's arithmetic, not a measurement):",
        "",
        f"    {e['formula']}",
        "",
        f"**Which convention the headline uses.** The headline counts the analog first layer's MACs "
        f"at every one of the T steps, as the runtime feeds the input: SNN "
        f"{_nj(t['snn_energy_pj'])} nJ, ANN / SNN {_x(t['ratios']['ann_over_snn_energy'])}. "
        f"Counted once per sample (a chip that holds the first layer's constant current), the SNN "
        f"needs {_nj(t['snn_energy_pj_first_layer_once'])} nJ, ANN / SNN "
        f"{_x(t['ratios']['ann_over_snn_energy_first_layer_once'])}: this choice alone can decide "
        "whether the SNN beats the ANN. Paper B's convention (Schmolli et al. 2025) leaves the "
        f"analog first layer out and counts the SynOps of spike-fed layers only ("
        f"{t['synops']:,.0f} per sample here); it compares a sparse SNN with its dense twin, "
        "never with an ANN (`spikeshield profile DIR --baseline DENSE_DIR` adds that ratio).",
        "",
        "SynOps count one spike over one existing synapse (pruned synapses and zero-padding taps "
        "excluded); MACs are those of layers fed by analog values, counted every time step for the "
        "headline and once in the *first layer once* column. The ANN columns are one pass of the "
        "same network (existing synapses).",
        "",
        "| layer | input | weights | nonzero | neurons | spikes/neuron/step | SynOps | MACs (per step, all T) "
        "| energy (nJ) | ANN MACs | ANN energy (nJ) | stored bytes (best fp32 / int8) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in profile["layers"]:
        st = r["storage"]
        best32, best8 = st["best_format"]["fp32"], st["best_format"]["int8"]
        rate = r["spikes_per_neuron_per_step"]
        lines.append(
            f"| {r['name']} ({r['kind']}) | {r['input']} | {st['weights']:,} | {st['nonzeros']:,} "
            f"| {r['neurons']:,} | {'—' if rate is None else f'{rate:.4f}'} | {r['synops']:,.0f} "
            f"| {r['macs_per_step_total']:,} | {_nj(r['energy_pj'])} | {r['ann_macs']:,} "
            f"| {_nj(r['ann_energy_pj'])} | {st['bytes']['fp32'][best32]:,} {best32} / "
            f"{st['bytes']['int8'][best8]:,} {best8} |"
        )
    ratios = t["ratios"]
    x = _x
    lines += [
        f"| **total** | | {s['weights']:,} | {s['nonzeros']:,} | | | {t['synops']:,.0f} "
        f"| {t['macs_analog_per_step_total']:,} | {_nj(t['snn_energy_pj'])} | {t['ann_macs']:,} "
        f"| {_nj(t['ann_energy_pj'])} | {s['bytes']['fp32']['best_per_layer']:,} / "
        f"{s['bytes']['int8']['best_per_layer']:,} |",
        "",
        "## Totals and ratios",
        "",
        f"- SNN energy: {_nj(t['snn_energy_pj'])} nJ (first layer every step), "
        f"{_nj(t['snn_energy_pj_first_layer_once'])} nJ (first layer once); of which SynOps "
        f"{_nj(t['synop_energy_pj'])} nJ. ANN: {_nj(t['ann_energy_pj'])} nJ.",
        f"- ANN energy / SNN energy: {x(ratios['ann_over_snn_energy'])} "
        f"({x(ratios['ann_over_snn_energy_first_layer_once'])} with the first layer once); above 1x "
        "the SNN is the cheaper.",
        f"- SynOps per sample: mean {t['synops_per_sample']['mean']:,.0f}, std "
        f"{t['synops_per_sample']['std']:,.0f}, min {t['synops_per_sample']['min']:,.0f}, max "
        f"{t['synops_per_sample']['max']:,.0f}.",
        f"- Sparse vs dense connectivity, same spikes: dense would need "
        f"{x(ratios['dense_over_sparse_synops_same_spikes'])} the SynOps and "
        f"{x(ratios['dense_over_sparse_snn_energy_same_spikes'])} the energy "
        "(a counterfactual with this network's spikes: a dense network fires differently, so the "
        "real sparse-vs-dense ratio compares two compiled networks' profiles).",
        f"- Stored weights: {s['nonzeros']:,} of {s['weights']:,} "
        f"({s['weight_reduction']:.1f}x fewer than dense); plus {s['other_parameters']:,} biases, "
        "thresholds and scales.",
        "",
        "| precision | dense bytes | CSR bytes | bitmap bytes | best format per layer | reduction |",
        "|---|---|---|---|---|---|",
    ]
    for p in PRECISIONS:
        b = s["bytes"][p]
        lines.append(f"| {p} | {b['dense']:,} | {b['csr']:,} | {b['bitmap']:,} "
                     f"| {b['best_per_layer']:,} | {b['reduction_vs_dense']:.1f}x |")
    lines += ["", "CSR indices use the narrowest unsigned integer that fits: column indices "
              "8/16/32 bits by the row length, row pointers by the nonzero count (per layer in "
              "profile.json). A bitmap costs one bit per weight position plus the values."]
    if profile.get("against_dense"):
        lines += ["", render_comparison(profile["against_dense"])]
    gpu = profile["gpu_energy"]
    if "neurobench" in profile:
        lines += neurobench_render(profile["neurobench"])
    lines += ["", "## Measured GPU energy", ""]
    if gpu.get("measured"):
        lines.append(f"**Measured** through NVML on {gpu['device']}: {gpu['joules_per_sample']:.4g} J "
                     f"per sample ({gpu['joules']:.4g} J for {gpu['samples']} samples in "
                     f"{gpu['seconds']:.3g} s; whole board, idle power included). The estimate above "
                     f"is {t['snn_energy_pj'] * 1e-12:.4g} J per sample on a hypothetical chip.")
    else:
        lines.append(f"Not measured: {gpu['reason']}.")
    return "\n".join(lines) + "\n"


def render_plots(profile: dict[str, Any]) -> dict[str, bytes]:
    """PNG bar charts: energy per layer (SNN vs ANN) and firing rate per IF layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    names = [r["name"] for r in profile["layers"]]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.6))
    xs = range(len(names))
    ax.bar([i - 0.2 for i in xs], [r["energy_pj"] / 1000 for r in profile["layers"]], 0.4,
           label=f"SNN (T={profile['timesteps']})")
    ax.bar([i + 0.2 for i in xs], [r["ann_energy_pj"] / 1000 for r in profile["layers"]], 0.4,
           label="ANN")
    ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="estimated energy per sample (nJ)", title="Energy per layer (estimate)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out["profile_energy.png"] = _png(fig, plt)
    rates = profile["spike_rates"]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rates) + 2), 3.6))
    ax.bar(range(len(rates)), list(rates.values()))
    ax.set_xticks(range(len(rates)), list(rates), rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="spikes per neuron per step", title="Firing rate per layer")
    fig.tight_layout()
    out["profile_rates.png"] = _png(fig, plt)
    return out


def _png(fig, plt) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_profile(profile: dict[str, Any], directory: str | os.PathLike) -> list[Path]:
    """Write the profile files into ``directory``, each atomically."""
    directory = Path(directory)
    contents: dict[str, bytes] = {
        "profile.json": json.dumps(profile, indent=2).encode(),
        "profile.md": render_markdown(profile).encode(),
        **render_plots(profile),
    }
    return publish_files(directory, contents)


def profile_directory(
    directory: str | os.PathLike,
    data: str | None,
    samples: int,
    energy: EnergyModel,
    timesteps: int | None = None,
    device: str = "auto",
    seed: int = 0,
    skip_verify: bool = False,
    baseline: str | os.PathLike | None = None,
    neurobench: bool = True,
) -> dict[str, Any]:
    """``spikeshield profile``: profile a compile directory's ``snn.ir`` on its test data, with
    NeuroBench's figures beside spikeshield's where NeuroBench is installed (``neurobench``); the
    directory must match its manifest (unless ``skip_verify``) and is locked meanwhile. With
    ``baseline`` (the dense SNN's compile directory or profile.json, profiled on the same images),
    the profile also gives E_dense / E_sparse in both conventions (``energy_conventions``)."""

    from spikeshield.compiler.driver.manifest import require_verified
    from spikeshield.compiler.driver.outputs import output_lock

    directory = Path(directory)
    if not (directory / "snn.ir").is_file():
        raise ConfigError(f"{directory} holds no compiled SNN (snn.ir); run `spikeshield compile "
                          f"MODEL --out {directory}` first")
    if samples <= 0:
        raise ConfigError(f"--n must be positive, got {samples}")
    dense = load_profile(baseline) if baseline is not None else None
    with output_lock(directory):
        require_verified(directory, skip_verify, PROFILE_FILES)
        return _profile_directory(directory, data, samples, energy, timesteps, device, seed,
                                  dense, neurobench)


def _profile_directory(directory: Path, data: str | None, samples: int, energy: EnergyModel,
                       timesteps: int | None, device: str, seed: int,
                       dense: dict[str, Any] | None, neurobench: bool) -> dict[str, Any]:
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.driver.robustness import recorded_data_spec
    from spikeshield.compiler.ir.serialize import load_graph
    from spikeshield.runtime.device import resolve_device

    graph = load_graph(directory / "snn.ir")
    spec = data or recorded_data_spec(directory)
    splits = load_data(spec, seed=seed)
    steps = resolve_timesteps(timesteps, graph.run_spec().timesteps, "--timesteps") or DEFAULT_TIMESTEPS
    profile = profile_graph(graph, splits.test.head(samples), steps, energy,
                            device=resolve_device(device), neurobench=neurobench)
    profile["data"] = spec
    if dense is not None:
        profile["against_dense"] = compare_profiles(profile, dense)
    write_profile(profile, directory)
    return profile
