"""Framework backends: the compiled SNN as a native module of Norse, snnTorch, SpikingJelly or
Sinabs, built from the IR (not through NIR), computing what ``spikeshield.runtime`` computes.

    from spikeshield.backends.frameworks import load_module
    snn = load_module("out/snn.snntorch.safetensors")   # a torch.nn.Module of snntorch.Leaky
    logits = snn(images)                                  # (N, classes): T steps, averaged

The module behaves as the framework's own networks do (its reset helper, its step modes and input
layout, ``.to(dtype)``, ``state_dict``, ``torch.save``) and trains on with the surrogate the SNN was
finetuned with (``surrogate=`` chooses another: ``"arctan:2"``, or one of the framework's own).

``to_module(graph, framework)`` returns the module for an IR graph; ``write_module`` writes the
file ``spikeshield export --format <framework>`` makes: the graph in spikeshield's safetensors IR
format (tensors and a JSON structure, nothing pickled) tagged with the framework. The frameworks
are optional (docs/guides/deploy.md, "SNN frameworks"): ``pip install
'spikeshield[frameworks]'``, then
``pip install --no-deps norse==1.1.0 spikingjelly==2.0.0 sinabs==3.1.3``; ``make install`` does both.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from spikeshield.backends.frameworks.graph_module import (
    COVERAGE,
    NeuronAdapter,
    SpikingGraphModule,
    unsupported_nodes,
)
from spikeshield.backends.frameworks.spike import surrogate_for
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.serialize import load_graph, save_graph

__all__ = ["COVERAGE", "FRAMEWORKS", "SpikingGraphModule", "load_module", "to_module",
           "unsupported_nodes", "write_module"]

# framework -> (module of its adapter, adapter class, how to install the framework)
_AFTER_EXTRA = "pip install 'spikeshield[frameworks]' && pip install --no-deps "
FRAMEWORKS: dict[str, tuple[str, str, str]] = {
    "norse": ("norse_backend", "NorseNeurons", _AFTER_EXTRA + "norse==1.1.0"),
    "snntorch": ("snntorch_backend", "SnnTorchNeurons", "pip install 'spikeshield[frameworks]'"),
    "spikingjelly": ("spikingjelly_backend", "SpikingJellyNeurons",
                     _AFTER_EXTRA + "spikingjelly==2.0.0"),
    "sinabs": ("sinabs_backend", "SinabsNeurons", _AFTER_EXTRA + "sinabs==3.1.3"),
}
FILE_SUFFIX = ".safetensors"


def adapter(framework: str) -> NeuronAdapter:
    """The neuron adapter of ``framework``; a one-line error if unknown or not installed."""
    if framework not in FRAMEWORKS:
        raise ConfigError(f"unknown framework {framework!r}; choose one of "
                          f"{', '.join(FRAMEWORKS)}")
    module, cls, install = FRAMEWORKS[framework]
    try:
        loaded = importlib.import_module(f"{__name__}.{module}")
    except ImportError as err:
        raise ConfigError(f"the {framework} backend cannot import {framework} ({err}); install it: "
                          f"{install}") from None
    return getattr(loaded, cls)()


def to_module(graph: Graph, framework: str, surrogate: Any = None, step_mode: str = "m",
              layout: str | None = None) -> SpikingGraphModule:
    """``graph`` (a compiled spiking IR graph) as a ``torch.nn.Module`` of ``framework``'s neurons.

    ``surrogate``: the spike's gradient when training on: ``None`` (the one the SNN was finetuned
    with), ``"name[:gamma]"`` of spikeshield's surrogates, or a surrogate of the framework's own
    (an snnTorch ``spike_grad``, a SpikingJelly ``surrogate_function``, a Sinabs
    ``surrogate_grad_fn``). ``step_mode``, ``layout``: see :class:`SpikingGraphModule` (``layout``
    defaults to the framework's: time first, or batch first for Sinabs)."""
    chosen = adapter(framework)
    if surrogate is None or isinstance(surrogate, str):
        spike = surrogate_for(graph, surrogate)
    elif framework == "norse":
        raise ConfigError("Norse names its surrogates as methods of fixed width; pass a "
                          "spikeshield surrogate as 'name[:gamma]' instead")
    else:
        spike = surrogate
    return SpikingGraphModule(graph, chosen, spike, step_mode, layout)


def write_module(graph: Graph, path: str | os.PathLike, framework: str) -> Path:
    """Write the file :func:`load_module` turns into ``framework``'s module; checks first that the
    module can be built (so no file is written for a graph the framework cannot run)."""
    to_module(graph, framework)
    tagged = graph.copy()
    tagged.meta["framework"] = framework
    return save_graph(tagged, path)


def load_module(path: str | os.PathLike, framework: str | None = None, surrogate: Any = None,
                step_mode: str = "m", layout: str | None = None) -> SpikingGraphModule:
    """The module in a file written by ``spikeshield export --format <framework>`` (or any
    spikeshield ``.ir`` file, given ``framework``), in eval mode; the other arguments as in
    :func:`to_module`."""
    graph = load_graph(path)
    chosen = framework or graph.meta.get("framework")
    if chosen is None:
        raise ConfigError(f"{Path(path).name} names no framework; pass framework="
                          f"{'|'.join(FRAMEWORKS)}")
    return to_module(graph, str(chosen), surrogate, step_mode, layout).eval()
