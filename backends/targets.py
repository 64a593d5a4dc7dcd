"""Hardware target profiles: what a neuromorphic chip can run, and a checker listing every violation.

A profile is declarative data (:class:`TargetProfile`); ``check_target`` walks the graph and returns one
:class:`Violation` per broken constraint, naming the layer that breaks it and the fix. Violations that a
compiler pass can repair (weight precision, biases, reset mode, input encoding) carry the pass that
repairs them; the others (layer counts, unsupported ops, neuron limits) must be fixed in the model.

The numbers in the built-in profiles are spikeshield's reading of the vendors' public documentation
and SDKs (Lava for Loihi 2, Sinabs for Speck, Rockpool for Xylo, py-spinnaker2 for SpiNNaker2); they
are approximations that keep a model off obviously unrunnable shapes, not a guarantee that the vendor
toolchain will map it. A JSON file with the same fields is accepted wherever a target name is.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from spikeshield.compiler.ir.errors import ConfigError, ModelLoadError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import read_json_file
from spikeshield.compiler.ir.ops import IF, Input, OpCoverage, Output, Scale

# Ops that no target runs, and what to do instead (a target profile lists the kinds it runs).
NO_TARGET_RUNS = {
    "relu": "an ANN activation: compile the model (spikeshield compile) so it becomes IF neurons",
    "batchnorm": "fold it into the preceding conv/linear (pass fold_batchnorm) before export",
    "pad2d": "chips pad inside their convolutions: pad symmetrically so that it folds into one",
    "floor": "a quantised activation's floor: compile the model (spikeshield compile) so that it "
    "fuses into IF neurons",
}


@dataclass(frozen=True)
class TargetProfile:
    """Constraints of one target. ``None`` means "no limit spikeshield knows of"."""

    name: str
    description: str
    ops: tuple[str, ...] = (
        "input",
        "output",
        "conv2d",
        "linear",
        "scale",
        "avgpool2d",
        "flatten",
        "sum",
        "if",
    )
    reset_modes: tuple[str, ...] = ("zero", "subtract")
    initial_potential: bool = True  # neurons can start from a set membrane potential (v_init)
    weight_bits: int | None = None  # signed integer weights with one scale per layer
    bias: bool = True
    encodings: tuple[str, ...] = ("direct", "poisson")  # direct = analog input to the first layer
    max_fan_in: int | None = None  # synapses into one neuron
    max_destinations: int | None = None  # layers one layer may send spikes to
    max_neurons_per_layer: int | None = None
    max_neurons: int | None = None  # IF neurons in the whole network
    max_layers: int | None = None  # weighted layers (cores on Speck)
    max_inputs: int | None = None  # input channels x pixels
    max_outputs: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetProfile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"target profile has unknown field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(known))}"
            )
        if not isinstance(data, dict):
            raise ConfigError(f"target profile is not a valid profile: a JSON object of fields "
                              f"is expected, not a {type(data).__name__}")
        if not isinstance(data.get("name"), str) or not isinstance(data.get("description", ""), str):
            raise ConfigError("target profile needs a string 'name' (and 'description')")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", data["name"]):
            raise ConfigError(f"target profile name {data['name'][:40]!r} must be 1-64 letters, "
                              "digits, '.', '_' or '-' (it names the adapted IR file)")
        bits = data.get("weight_bits")
        if bits is not None and not (isinstance(bits, int) and not isinstance(bits, bool)
                                     and 2 <= bits <= 32):
            raise ConfigError(f"target profile field 'weight_bits' must be a whole number from 2 "
                              f"to 32 (signed weights) or null, got {bits!r}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        for f in fields(cls):
            value, default = values.get(f.name), f.default
            if f.name not in values or f.name in ("name", "description"):
                continue
            if isinstance(default, tuple):
                ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
                want = "a list of strings"
            elif isinstance(default, bool):
                ok, want = isinstance(value, bool), "true or false"
            else:
                ok = value is None or (isinstance(value, int) and not isinstance(value, bool)
                                       and value >= 1)
                want = "a whole number >= 1 or null"
            if not ok:
                raise ConfigError(f"target profile field {f.name!r} must be {want}, got "
                                  f"{data[f.name]!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COVERAGE = OpCoverage("hardware targets (backends.targets)",
                      handled=frozenset(TargetProfile("any", "").ops),
                      not_supported=NO_TARGET_RUNS)

TARGETS: dict[str, TargetProfile] = {
    "generic": TargetProfile(
        "generic", "any NIR/ONNX consumer: every op spikeshield exports, float32 weights"
    ),
    "loihi2": TargetProfile(
        "loihi2",
        "Intel Loihi 2 via Lava: programmable neurons (both resets), graded input spikes, "
        "8-bit synaptic weights, 8192 neurons per core, 128 cores",
        weight_bits=8,
        max_neurons_per_layer=8192,
        max_neurons=128 * 8192,
    ),
    "speck": TargetProfile(
        "speck",
        "SynSense Speck (DYNAP-CNN) via Sinabs: integrate-and-fire conv cores, event "
        "(spike) input only, 8-bit weights, 9 layers, each sending to at most 2 layers",
        ops=("input", "output", "conv2d", "avgpool2d", "flatten", "sum", "if"),
        initial_potential=False,
        weight_bits=8,
        encodings=("poisson",),
        max_destinations=2,
        max_layers=9,
    ),
    "xylo": TargetProfile(
        "xylo",
        "SynSense Xylo via Rockpool: dense layers of spiking neurons with reset by "
        "subtraction, event input, 8-bit weights, 16 input channels, 1000 hidden and 8 output "
        "neurons, no convolution",
        ops=("input", "output", "linear", "flatten", "sum", "if"),
        reset_modes=("subtract",),
        initial_potential=False,
        weight_bits=8,
        encodings=("poisson",),
        max_neurons=1000,
        max_inputs=16,
        max_outputs=8,
    ),
    "spinnaker2": TargetProfile(
        "spinnaker2",
        "SpiNNaker2 via py-spinnaker2: neurons run as software on ARM cores with "
        "single-precision FPUs, spike input, dense or sparse projections",
        encodings=("poisson",),
    ),
}


def load_target(target: str | os.PathLike | TargetProfile) -> TargetProfile:
    """A built-in profile by name, or a JSON profile file."""
    if isinstance(target, TargetProfile):
        return target
    name = str(target)
    if name in TARGETS:
        return TARGETS[name]
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        try:
            return TargetProfile.from_dict(read_json_file(path))
        except (ModelLoadError, TypeError) as err:
            raise ConfigError(f"target profile {path} is not a valid profile: {err}") from None
    raise ConfigError(
        f"unknown target {name!r}; choose one of {', '.join(TARGETS)} or give a profile .json file"
    )


@dataclass(frozen=True)
class Violation:
    """One broken constraint: where, what, how to fix, and the pass that fixes it (if any)."""

    node: str
    rule: str
    detail: str
    fix: str
    repair: tuple[str, dict[str, Any]] | None = None

    def __str__(self) -> str:
        return f"{self.node}: {self.detail} -> {self.fix}"


def fan_in(graph: Graph, name: str) -> int:
    """Existing synapses into the most connected neuron of a conv/linear layer: a pruned (zero)
    weight is no synapse, so a sparse network fits chips that a dense one of its shape does not."""
    weight = graph.op(name).weight
    return int((weight != 0).flatten(1).sum(dim=1).max())


def _weighted_after(graph: Graph, name: str) -> list[str]:
    """The weighted layers that a node's output reaches, through structural ops only."""
    found, stack = [], list(graph.consumers(name))
    while stack:
        node = stack.pop()
        if graph.op(node).synaptic or isinstance(graph.op(node), Output):
            found.append(node)
        else:
            stack += graph.consumers(node)
    return sorted(set(found))


def quantization_error(graph: Graph, name: str, bits: int) -> bool:
    """Whether a layer's weights are not already on the signed ``bits`` grid of one per-layer scale."""
    weight = graph.op(name).weight
    peak = float(weight.abs().max())
    if peak == 0:
        return False
    step = peak / (2 ** (bits - 1) - 1)
    return bool(((weight / step) - (weight / step).round()).abs().max() > 1e-3)


def check_target(graph: Graph, target: str | TargetProfile) -> list[Violation]:
    """Every constraint of ``target`` that ``graph`` breaks, in graph order."""
    profile = load_target(target)
    graph.validate()
    out: list[Violation] = []
    encoding = graph.run_spec().encoding
    if encoding not in profile.encodings:
        out.append(
            Violation(
                graph.input_names[0],
                "encoding",
                f"{profile.name} takes {'/'.join(profile.encodings)} input, the graph uses {encoding}",
                f"encode the input as spikes ({profile.encodings[0]})",
                ("set_encoding", {"encoding": profile.encodings[0]}),
            )
        )
    inputs = math.prod(graph.op(graph.input_names[0]).shape)
    if profile.max_inputs is not None and inputs > profile.max_inputs:
        out.append(
            Violation(
                graph.input_names[0],
                "max_inputs",
                f"{inputs} input channels > {profile.max_inputs}",
                "reduce the input (fewer pixels or channels)",
            )
        )
    layers = graph.synaptic_nodes()
    if profile.max_layers is not None and len(layers) > profile.max_layers:
        out.append(
            Violation(
                graph.name,
                "max_layers",
                f"{len(layers)} weighted layers in the network > {profile.max_layers}",
                "use a shallower network",
            )
        )
    neurons = sum(math.prod(graph.shape(n)) for n in graph.nodes_of(IF))
    if profile.max_neurons is not None and neurons > profile.max_neurons:
        out.append(
            Violation(
                graph.name,
                "max_neurons",
                f"{neurons} IF neurons in the network > {profile.max_neurons}",
                "use a narrower network",
            )
        )
    for name in graph.nodes():
        out += _node_violations(graph, name, profile)
    return out


def _node_violations(graph: Graph, name: str, profile: TargetProfile) -> list[Violation]:
    op, out = graph.op(name), []
    if op.kind not in profile.ops:
        alternative = {
            "conv2d": "replace it by a linear layer over the flattened input",
            "linear": "express it as a conv2d whose kernel covers its whole input (as Sinabs does)",
            "scale": "fold it into the next layer's weights (pass fold_scales; scales with a bias "
            "cannot be folded)",
            "avgpool2d": "replace it by a strided conv2d, or drop the pooling",
            **NO_TARGET_RUNS,
        }.get(op.kind, f"use one of {', '.join(profile.ops)}")
        repair = ("fold_scales", {}) if isinstance(op, Scale) and op.bias is None else None
        out.append(
            Violation(
                name, "ops", f"{op.kind} is not supported on {profile.name}", alternative, repair
            )
        )
    if isinstance(op, IF):
        if op.reset not in profile.reset_modes:
            out.append(
                Violation(
                    name,
                    "reset",
                    f"reset {op.reset!r}; {profile.name} resets by {'/'.join(profile.reset_modes)}",
                    f"switch the reset to {profile.reset_modes[0]}",
                    ("set_reset_mode", {"reset": profile.reset_modes[0]}),
                )
            )
        if op.v_init and not profile.initial_potential:
            out.append(
                Violation(
                    name,
                    "initial_potential",
                    f"initial potential {op.v_init} x threshold; {profile.name}'s neurons start at 0",
                    "start the membranes at zero",
                    ("set_initial_potential", {"v_init": 0.0}),
                )
            )
        size = math.prod(graph.shape(name))
        if profile.max_neurons_per_layer is not None and size > profile.max_neurons_per_layer:
            out.append(
                Violation(
                    name,
                    "max_neurons_per_layer",
                    f"{size} neurons > {profile.max_neurons_per_layer} per layer",
                    "use fewer channels or a smaller feature map",
                )
            )
    if op.synaptic:
        if profile.weight_bits is not None and quantization_error(graph, name, profile.weight_bits):
            out.append(
                Violation(
                    name,
                    "weight_bits",
                    f"float weights; {profile.name} stores {profile.weight_bits}-bit integers",
                    f"quantise to {profile.weight_bits} bits with a per-layer scale",
                    ("quantize_weights", {"bits": profile.weight_bits}),
                )
            )
        if profile.max_fan_in is not None and fan_in(graph, name) > profile.max_fan_in:
            out.append(
                Violation(
                    name,
                    "max_fan_in",
                    f"fan-in {fan_in(graph, name)} > {profile.max_fan_in}",
                    "use smaller kernels or fewer input channels",
                )
            )
    if not profile.bias and (op.synaptic or isinstance(op, Scale)) and _has_bias(op):
        out.append(
            Violation(
                name,
                "bias",
                f"{profile.name} has no biases",
                "drop the biases (the accuracy cost is measured)",
                ("drop_biases", {}),
            )
        )
    if profile.max_destinations is not None and isinstance(op, (IF, Input)):
        targets = _weighted_after(graph, name)
        if len(targets) > profile.max_destinations:
            out.append(
                Violation(
                    name,
                    "max_destinations",
                    f"sends to {len(targets)} layers ({', '.join(targets)}) > "
                    f"{profile.max_destinations}",
                    "restructure the skip connections",
                )
            )
    if isinstance(op, Output) and profile.max_outputs is not None:
        size = math.prod(graph.shape(name))
        if size > profile.max_outputs:
            out.append(
                Violation(
                    name,
                    "max_outputs",
                    f"{size} outputs > {profile.max_outputs}",
                    "predict fewer classes",
                )
            )
    return out


def _has_bias(op) -> bool:
    return getattr(op, "bias", None) is not None and bool(op.bias.abs().max() > 0)
