"""What the NIR and ONNX backends share: the export error, versions, and per-channel broadcasting."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np
import torch

from spikeshield.compiler.ir.errors import UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF


def spikeshield_version() -> str:
    try:
        return metadata.version("spikeshield")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def full_shape(values: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A per-channel ``(C,)`` or per-layer ``(1,)`` vector broadcast to the full batch-less ``shape``
    as float32 (NIR wants neuron parameters of the layer's full shape)."""
    flat = values.detach().cpu().float().reshape(-1, *([1] * (len(shape) - 1)))
    return np.ascontiguousarray(flat.expand(*shape).numpy().astype(np.float32))


def reset_summary(graph: Graph) -> str:
    """``zero``, ``subtract`` or ``mixed``: the reset mode(s) of the graph's IF neurons."""
    modes = {graph.op(n).reset for n in graph.nodes_of(IF)}
    return modes.pop() if len(modes) == 1 else ("mixed" if modes else "none")


def initial_potential_summary(graph: Graph) -> float | str:
    """The IF neurons' initial potential as a fraction of the threshold, or ``mixed``."""
    fractions = {float(graph.op(n).v_init) for n in graph.nodes_of(IF)}
    return fractions.pop() if len(fractions) == 1 else ("mixed" if fractions else 0.0)


def graph_description(graph: Graph) -> dict[str, Any]:
    """How to run ``graph``: the informational metadata both exports carry."""
    spec = graph.run_spec()
    return {
        "generator": f"spikeshield {spikeshield_version()}",
        "dt": 1.0,
        "timesteps": spec.timesteps,
        "reset": reset_summary(graph),
        "v_init": initial_potential_summary(graph),
        "encoding": spec.encoding,
        "input_range": list(spec.input_range or (0.0, 1.0)),
    }


def raise_unsupported(format_name: str, problems: list[str]) -> None:
    """One error listing every node the format cannot express (collected first, as the house rule)."""
    if problems:
        raise UnsupportedOpError(
            f"{format_name} export cannot express {len(problems)} node(s): " + "; ".join(problems)
        )
