"""NeuroBench's own figures for a compiled SNN, beside spikeshield's (``profile.md``).

NeuroBench (the field's shared harness, ``pip install --no-deps neurobench==2.3.0`` after
snnTorch) measures a model through its ``SNNTorchModel`` wrapper and forward hooks. Here it measures
the SNN's snnTorch module (``backends.frameworks``, the one ``spikeshield export --format snntorch``
writes), fed the test images as a ``(batch, time, ...)`` sequence as NeuroBench specifies, with its
own metric classes (``Footprint``, ``ConnectionSparsity``, ``ParameterCount``,
``ActivationSparsity``, ``SynapticOperations``) and, per layer, its own ``single_layer_MACs``.

Where the two conventions coincide the figures must agree (``tests/compiler/driver/
test_neurobench_check.py``); where they differ, :data:`CONVENTIONS` says how:

- *activation sparsity*: zeros among the IF layers' outputs over all steps = 1 - the mean spike
  rate: the same quantity;
- *connection sparsity*: zero weights over all conv/linear weights: the same quantity;
- *dense operations*: every synapse of every conv/linear layer at every step, padding taps excluded
  = T x the ANN's dense MACs: the same quantity;
- *effective ACs of a layer fed by spikes*: one per (non-zero input, non-zero weight) pair = its
  SynOps, for a layer whose input is an IF layer's spikes directly. Behind an average pool NeuroBench
  sees averaged spikes (not 0/1) and counts each non-zero window once as a MAC, where spikeshield
  folds the pool into the next layer and counts each spike once per synapse it reaches; behind a
  residual sum a 2 is one operation to NeuroBench and two events to spikeshield;
- *effective MACs*: NeuroBench counts every non-zero input that is not 0/1, at every step: the
  analog first layer's non-zero pixels, and the averaged or summed spikes above; spikeshield counts
  the analog first layer only, every pixel (a chip does not skip a zero pixel of a dense frame), so
  the first layer's MACs agree on images without a zero pixel;
- *footprint*: NeuroBench counts every float32 parameter and buffer of the module (thresholds and
  initial potentials included); spikeshield's stored bytes count the weights in float32, each layer
  in its best format (dense, CSR or bitmap; profile.md, "Storage").
"""

from __future__ import annotations

from typing import Any

import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.runtime.data import Dataset, as_float

INSTALL = "pip install --no-deps neurobench==2.3.0 (after snntorch: pip install 'spikeshield[frameworks]')"
CONVENTIONS = {
    "activation_sparsity": "the same quantity",
    "connection_sparsity": "the same quantity",
    "dense_ops": "the same quantity (T x the ANN's dense MACs)",
    "effective_acs": "equal layer by layer where an IF layer feeds a conv/linear directly; "
                     "behind a pool or a residual sum NeuroBench counts averaged or summed spikes "
                     "as one MAC per non-zero value",
    "effective_macs": "NeuroBench: every non-zero input that is not 0/1, every step (the "
                      "first layer's pixels, and averaged or summed spikes); spikeshield: the "
                      "analog first layer's pixels, zeros included",
    "footprint_bytes": "NeuroBench: every float32 parameter and buffer of the module; "
                       "spikeshield: the weights stored in float32, each layer in its best format",
}


def available() -> str | None:
    """None when NeuroBench can run here, else why not and how to install it (one line)."""
    try:
        import neurobench  # noqa: F401
        import snntorch  # noqa: F401
    except ImportError as err:
        return f"NeuroBench is not installed ({err}); {INSTALL}"
    return None


def neurobench_figures(graph: Graph, data: Dataset, timesteps: int,
                       batch_size: int = 16) -> dict[str, Any]:
    """NeuroBench's metrics of ``graph``'s snnTorch module on ``data`` at ``timesteps`` steps: the
    totals per sample and, per conv/linear layer (by IR name), effective ACs, MACs and dense ops."""
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.utils.layers import single_layer_MACs
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from neurobench.models import SNNTorchModel

    from spikeshield.backends.frameworks import to_module

    reason = available()
    if reason:
        raise ConfigError(reason)
    net = to_module(graph, "snntorch", layout="NT")
    model = SNNTorchModel(net, custom_forward=True)  # net(data) for the whole sequence
    static = {"footprint_bytes": Footprint()(model),
              "connection_sparsity": ConnectionSparsity()(model),
              "parameter_count": ParameterCount()(model)}
    names = {id(module): name for name, module in net.named_modules()}
    layer_names = net.ir_names
    synops, sparsity = SynapticOperations(), ActivationSparsity()
    per_layer: dict[str, dict[str, float]] = {}
    weighted_sparsity, samples = 0.0, 0
    model.register_hooks()
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                batch = data.slice(start, start + batch_size)
                images = as_float(batch.images)
                sequence = images.unsqueeze(1).expand(len(batch), timesteps, *images.shape[1:])
                pair = (sequence, batch.labels)
                preds = model(sequence)
                _count_layers(model, per_layer, names, layer_names, single_layer_MACs)
                weighted_sparsity += sparsity(model, preds, pair) * len(batch)
                synops(model, preds, pair)
                samples += len(batch)
                model.reset_hooks()
    finally:
        model.cleanup_hooks()
    totals = synops.compute()
    return {
        "version": _version(),
        "module": "snntorch",
        "samples": samples,
        "timesteps": timesteps,
        **static,
        "activation_sparsity": weighted_sparsity / max(1, samples),
        "effective_acs": totals["Effective_ACs"],
        "effective_macs": totals["Effective_MACs"],
        "dense_ops": totals["Dense"],
        "layers": {name: {k: v / max(1, samples) for k, v in row.items()}
                   for name, row in per_layer.items()},
    }


def fed_by_spikes_directly(graph: Graph, name: str) -> bool:
    """A conv/linear whose one input is an IF layer: its SynOps are NeuroBench's effective ACs."""
    from spikeshield.compiler.ir.ops import IF

    inputs = graph.inputs(name)
    return len(inputs) == 1 and isinstance(graph.op(inputs[0]), IF)


def compare(graph: Graph, profile: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """NeuroBench's figures beside spikeshield's (per sample): ``rows`` of totals and ``layers``,
    each marked ``same`` where the two conventions measure the same quantity."""
    from spikeshield.compiler.ir.ops import IF

    steps = profile["timesteps"]
    neurons = {n: int(torch.Size(graph.shape(n)).numel()) for n in graph.nodes_of(IF)}
    rate = sum(profile["spike_rates"][n] * k for n, k in neurons.items()) / sum(neurons.values())
    weights = [graph.op(n) for n in graph.synaptic_nodes()]
    zeros = sum(int(((op.weight * (op.mask if op.mask is not None else 1)) == 0).sum())
                for op in weights)
    layers = profile["layers"]
    ours = {
        "activation_sparsity": 1 - rate,
        "connection_sparsity": zeros / sum(op.weight.numel() for op in weights),
        "dense_ops": steps * sum(r["ann_dense_macs"] for r in layers),
        "effective_acs": sum(r["synops"] for r in layers),
        "effective_macs": steps * sum(r["macs_once"] for r in layers),
        "footprint_bytes": profile["storage"]["bytes"]["fp32"]["best_per_layer"],
    }
    rows = [{"metric": metric, "neurobench": figures[metric], "spikeshield": ours[metric],
             "same": CONVENTIONS[metric].startswith("the same"), "convention": CONVENTIONS[metric]}
            for metric in CONVENTIONS]
    per_layer = []
    for row in layers:
        theirs = figures["layers"].get(row["name"], {})
        direct = fed_by_spikes_directly(graph, row["name"])
        per_layer.append({"name": row["name"], "input": row["input"], "same": direct,
                          "neurobench_acs": theirs.get("acs", 0.0),
                          "neurobench_macs": theirs.get("macs", 0.0),
                          "spikeshield_synops": row["synops"],
                          "spikeshield_macs": steps * row["macs_once"]})
    return {"rows": rows, "layers": per_layer}


def render(section: dict[str, Any]) -> list[str]:
    """profile.md's NeuroBench section."""
    if "skipped" in section:
        return ["", "## NeuroBench", "", f"Not computed: {section['skipped']}."]
    figures, table = section["figures"], section["comparison"]
    lines = ["", f"## NeuroBench {figures['version']} beside spikeshield", "",
             f"NeuroBench's own metric classes on the SNN's {figures['module']} module, "
             f"{figures['samples']} test samples as (batch, time, ...) sequences of "
             f"{figures['timesteps']} steps; per sample. *Same* marks the rows where both measure "
             "the same quantity (and must agree); the others count by different conventions.", "",
             "| metric | NeuroBench | spikeshield | convention |", "|---|---|---|---|"]
    for row in table["rows"]:
        ours = "—" if row["spikeshield"] is None else f"{row['spikeshield']:,.6g}"
        same = "*same*: " if row["same"] else ""
        lines.append(f"| {row['metric'].replace('_', ' ')} | {row['neurobench']:,.6g} | {ours} "
                     f"| {same}{row['convention']} |")
    lines += ["", f"Parameter count (NeuroBench): {figures['parameter_count']:,}.", "",
              "| layer | input | NeuroBench ACs | NeuroBench MACs | spikeshield SynOps "
              "| spikeshield MACs | same convention |", "|---|---|---|---|---|---|---|"]
    for row in table["layers"]:
        lines.append(f"| {row['name']} | {row['input']} | {row['neurobench_acs']:,.1f} "
                     f"| {row['neurobench_macs']:,.1f} | {row['spikeshield_synops']:,.1f} "
                     f"| {row['spikeshield_macs']:,} | {'yes' if row['same'] else 'no'} |")
    return lines


def neurobench_section(graph: Graph, data: Dataset, profile: dict[str, Any]) -> dict[str, Any]:
    """What profile.json keeps under ``neurobench``: the figures and the comparison, or why they
    were not computed."""
    reason = available()
    if reason:
        return {"skipped": reason}
    figures = neurobench_figures(graph, data, profile["timesteps"])
    return {"figures": figures, "comparison": compare(graph, profile, figures)}


def _count_layers(model, per_layer: dict, names: dict, layer_names: dict, macs) -> None:
    """Add each conv/linear layer's NeuroBench operations on the inputs its hook recorded."""
    for hook in model.connection_hooks:
        name = layer_names[names[id(hook.layer)]]
        row = per_layer.setdefault(name, {"acs": 0.0, "macs": 0.0, "dense": 0.0})
        for inputs in hook.inputs:
            spikes = inputs[0] if len(inputs) == 1 else inputs
            ops, spiking = macs(spikes, hook.layer)
            dense, _ = macs(spikes, hook.layer, total=True)
            row["acs" if spiking else "macs"] += float(ops)
            row["dense"] += float(dense)


def _version() -> str:
    from importlib.metadata import version

    return version("neurobench")
