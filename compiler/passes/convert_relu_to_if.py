"""Replace every ReLU by an integrate-and-fire neuron.

Precondition: a valid ANN graph. Postcondition: no ``relu`` node remains; each became an ``if`` node
with the chosen reset and a placeholder threshold of 1 (one per layer, or one per channel), to be set by
``calibrate_thresholds``. The output layer stays non-spiking: the runtime averages it over time.
"""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, ReLU
from spikeshield.compiler.ir.ops.neurons import RESET_MODES
from spikeshield.compiler.passes.registry import PassResult, register_pass

THRESHOLD_MODES = ("layer", "channel")


@register_pass("convert_relu_to_if")
def convert_relu_to_if(graph: Graph, reset: str = "zero", threshold: str = "layer") -> PassResult:
    if reset not in RESET_MODES:
        raise ConfigError(f"reset must be one of {RESET_MODES}, got {reset!r}")
    if threshold not in THRESHOLD_MODES:
        raise ConfigError(f"threshold mode must be one of {THRESHOLD_MODES}, got {threshold!r}")
    graph = graph.copy()
    converted = graph.nodes_of(ReLU)
    for name in converted:
        channels = graph.shape(name)[0] if threshold == "channel" else 1
        graph.set_op(name, IF(threshold=torch.ones(channels), reset=reset))
    graph.meta.update({"reset": reset, "threshold_mode": threshold})
    return PassResult(graph, bool(converted), {"converted": converted})
