"""Simulate a compiled SNN or any NIR graph on given inputs: what ``spikeshield run`` does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from spikeshield.compiler.artifacts import atomic_file
from spikeshield.compiler.errors import ConfigError, DataError
from spikeshield.compiler.ir import Graph
from spikeshield.compiler.model_io import load_model
from spikeshield.compiler.ops import IF

MAX_INPUT_BYTES = 2 * 1024**3


def load_inputs(path: str | os.PathLike, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 batch ``(N, *input_shape)`` from a ``.npy`` file (one sample without N is accepted);
    never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"inputs file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path.name} is not a readable .npy array ({err}); save it with numpy.save"
        ) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise DataError(
            f"{path.name} must hold one numeric array, not {getattr(array, 'dtype', type(array))}"
        )
    if array.nbytes > MAX_INPUT_BYTES:
        raise DataError(
            f"{path.name} holds {array.nbytes / 1e9:.1f} GB; split it into files under 2 GB"
        )
    if tuple(array.shape) == tuple(input_shape):
        array = array[None]
    if tuple(array.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{path.name} has shape {tuple(array.shape)}; the model expects (N, "
            f"{', '.join(map(str, input_shape))})"
        )
    tensor = torch.from_numpy(np.array(array, dtype=np.float32))
    if not torch.isfinite(tensor).all():
        raise DataError(f"{path.name} holds NaN or infinite values")
    return tensor


def simulate(
    graph: Graph,
    inputs: torch.Tensor,
    timesteps: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Predictions, logits and per-layer spike counts per sample of ``graph`` on ``inputs``."""
    from spikeshield.runtime.executor import GraphExecutor

    spiking = bool(graph.nodes_of(IF))
    steps = timesteps or int(graph.meta.get("timesteps", 0)) or None
    if spiking and steps is None:
        raise ConfigError(f"graph {graph.name!r} records no number of time steps; pass --timesteps")
    if steps is not None and steps <= 0:
        raise ConfigError(f"--timesteps must be >= 1, got {steps}")
    executor = GraphExecutor(graph, encoding=str(graph.meta.get("encoding", "direct"))).eval()
    generator = torch.Generator().manual_seed(seed)
    logits, counts = [], {n: [] for n in graph.nodes_of(IF)}
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            logits.append(
                executor(batch, steps if spiking else None, record=spiking, generator=generator)
            )
            for name in counts:
                counts[name].append(executor.spike_counts[name])
    all_logits = torch.cat(logits) if logits else torch.zeros(0)
    result: dict[str, np.ndarray] = {
        "predictions": all_logits.argmax(dim=1).numpy().astype(np.int64),
        "logits": all_logits.numpy(),
        "timesteps": np.array(steps or 0),
        "layers": np.array(list(counts), dtype=str),
    }
    for name, parts in counts.items():
        result[f"spikes/{name}"] = torch.cat(parts).numpy().astype(np.int64)
    return result


def run_on_inputs(
    source: str | os.PathLike,
    inputs_path: str | os.PathLike,
    out: str | os.PathLike,
    timesteps: int | None = None,
) -> dict[str, Any]:
    """Load ``source`` (compile directory, .ir or .nir), simulate it on the .npy inputs and save an
    .npz; returns the arrays saved."""
    out = Path(out)
    if out.suffix != ".npz":
        raise ConfigError(f"--out must end in .npz, got {out.name}")
    graph = load_model(source)
    input_shape = graph.op(graph.input_names[0]).shape
    inputs = load_inputs(inputs_path, input_shape)
    result = simulate(graph, inputs, timesteps)
    with atomic_file(out) as tmp:
        np.savez(tmp, **result)
    return result
