"""Replace every ReLU by an integrate-and-fire neuron.

Precondition: a valid ANN graph. Postcondition: no ``relu`` node remains; each became an ``if`` node
with the chosen reset and initial potential (``v_init``, a fraction of the threshold) and a
placeholder threshold of 1 (one per layer, or one per channel), to be set by
``calibrate_thresholds``. The output layer stays non-spiking: the runtime averages it over time.
A clipped ReLU's ceiling is kept in ``meta['ceilings']`` (node -> ceiling): calibration caps that
neuron's threshold there, so that its saturated rate stands for at most the ANN's ceiling. A
quantised ReLU (QCFS) has its threshold already: the ceiling, kept in ``meta['fixed_thresholds']``
(calibration sets it as it is), and its shift becomes the neuron's initial potential.
"""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, ReLU
from spikeshield.compiler.ir.ops.neurons import RESET_MODES, valid_v_init
from spikeshield.compiler.passes.registry import PassResult, register_pass

THRESHOLD_MODES = ("layer", "channel")


@register_pass("convert_relu_to_if")
def convert_relu_to_if(
    graph: Graph, reset: str = "zero", threshold: str = "layer", v_init: float = 0.0
) -> PassResult:
    if reset not in RESET_MODES:
        raise ConfigError(f"reset must be one of {RESET_MODES}, got {reset!r}")
    if not valid_v_init(v_init):
        raise ConfigError(f"v_init is a fraction of the threshold in [0, 1), got {v_init!r}")
    if threshold not in THRESHOLD_MODES:
        raise ConfigError(f"threshold mode must be one of {THRESHOLD_MODES}, got {threshold!r}")
    graph = graph.copy()
    converted = graph.nodes_of(ReLU)
    ceilings = dict(graph.meta.get("ceilings", {}))
    fixed = dict(graph.meta.get("fixed_thresholds", {}))
    for name in converted:
        relu: ReLU = graph.op(name)
        channels = graph.shape(name)[0] if threshold == "channel" else 1
        start = v_init
        if relu.levels is not None:  # QCFS: threshold = ceiling, start = shift x threshold
            fixed[name], start = relu.ceiling, relu.shift
        elif relu.ceiling is not None:
            ceilings[name] = relu.ceiling
        graph.set_op(name, IF(threshold=torch.ones(channels), reset=reset, v_init=start))
    graph.meta.update({"reset": reset, "threshold_mode": threshold, "v_init": v_init})
    if ceilings:
        graph.meta["ceilings"] = ceilings
    if fixed:
        graph.meta["fixed_thresholds"] = fixed
    return PassResult(graph, bool(converted), {"converted": converted})
