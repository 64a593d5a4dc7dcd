"""Simulate a compiled SNN or any NIR graph on given inputs: what ``spikeshield run`` does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikeshield.compiler.driver.model_io import load_model
from spikeshield.compiler.driver.outputs import claim_output, reading_lock
from spikeshield.compiler.ir.atomic import atomic_file
from spikeshield.compiler.ir.errors import ConfigError, DataError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import resolve_timesteps
from spikeshield.compiler.ir.ops import IF

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
    if array.size * 4 > MAX_INPUT_BYTES:  # the float32 batch it becomes, not its own bytes
        raise DataError(
            f"{path.name} holds {array.size:,} values ({array.size * 4 / 1e9:.1f} GB as float32); "
            "split it into files under 2 GB of float32"
        )
    if tuple(array.shape) == tuple(input_shape):
        array = array[None]
    if tuple(array.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{path.name} has shape {tuple(array.shape)}; the model expects (N, "
            f"{', '.join(map(str, input_shape))})"
        )
    if len(array) == 0:
        raise DataError(f"{path.name} holds no samples; give at least one input")
    tensor = torch.from_numpy(np.array(array, dtype=np.float32))
    if not torch.isfinite(tensor).all():
        raise DataError(f"{path.name} holds NaN or infinite values")
    return tensor


def check_input_range(inputs: torch.Tensor, graph: Graph, name: str, scale: float) -> torch.Tensor:
    """``inputs / scale``, refused when outside the range the graph declares (spikeshield graphs
    take pixels in [0, 1]; graphs from other tools declare none and are not checked)."""
    if not scale > 0 or not np.isfinite(scale):
        raise ConfigError(f"--input-scale must be a positive number, got {scale}")
    inputs = inputs / scale if scale != 1 else inputs
    bounds = graph.run_spec().input_range
    if bounds is None:
        return inputs
    low, high = float(inputs.min()), float(inputs.max())
    if low < bounds[0] or high > bounds[1]:
        hint = ("pass --input-scale 255 for 8-bit pixels" if 1 < high <= 255 and scale == 1
                else "rescale them")
        raise DataError(f"{name} holds values in [{low:g}, {high:g}], outside the model's input "
                        f"range [{bounds[0]:g}, {bounds[1]:g}]; {hint}")
    return inputs


ENGINES = ("runtime", "norse")


def simulate(
    graph: Graph,
    inputs: torch.Tensor,
    timesteps: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    engine: str = "runtime",
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Predictions, logits and per-layer spike counts per sample of ``graph`` on ``inputs``, with
    spikeshield's runtime or (``engine="norse"``) the Norse module of ``backends.frameworks``."""
    from spikeshield.runtime.device import resolve_device
    from spikeshield.runtime.executor import GraphExecutor

    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    spiking = bool(graph.nodes_of(IF))
    spec = graph.run_spec()
    steps = resolve_timesteps(timesteps, spec.timesteps, "--timesteps")
    if spiking and steps is None:
        raise ConfigError(f"graph {graph.name!r} records no number of time steps; pass --timesteps")
    where = resolve_device(device)
    if engine == "norse":
        from spikeshield.backends.frameworks import to_module

        if not spiking:
            raise ConfigError("--engine norse runs spiking graphs; this graph has no IF neurons")
        module = to_module(graph, "norse").to(where).eval()
    else:
        module = GraphExecutor(graph, encoding=spec.encoding).to(where).eval()
    generator = torch.Generator().manual_seed(seed)
    logits, counts = [], {n: [] for n in graph.nodes_of(IF)}
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size].to(where)
            if engine == "norse":
                logits.append(module(batch, steps).cpu())
            else:
                logits.append(module(batch, steps if spiking else None, record=spiking,
                                     generator=generator).cpu())
            for name, parts in counts.items():
                parts.append(module.spike_counts[name].cpu())
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
    input_scale: float = 1.0,
    force: bool = False,
    skip_verify: bool = False,
    engine: str = "runtime",
    device: str = "cpu",
) -> dict[str, Any]:
    """Load ``source`` (compile directory, .ir or .nir), simulate it on the .npy inputs (divided
    by ``input_scale``) with ``engine`` on ``device`` and save an .npz; returns the arrays saved. ``out`` is claimed first
    (``compiler.outputs``); a compile directory must verify unless ``skip_verify``."""
    out = Path(out)
    if out.suffix != ".npz":
        raise ConfigError(f"--out must end in .npz, got {out.name}")
    with claim_output(out, [source, inputs_path], force, spikeshield_file=_is_run_output):
        with reading_lock(source):  # a compile --force may not rewrite it while it is read
            graph = load_model(source, verify=not skip_verify)
        input_shape = graph.op(graph.input_names[0]).shape
        inputs = load_inputs(inputs_path, input_shape)
        inputs = check_input_range(inputs, graph, Path(inputs_path).name, input_scale)
        result = simulate(graph, inputs, timesteps, engine=engine, device=device)
        with atomic_file(out) as tmp:
            np.savez(tmp, **result)
    return result


def _is_run_output(path: Path) -> bool:
    """An .npz that `spikeshield run` wrote (its arrays, nothing pickled)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {"predictions", "logits", "timesteps", "layers"} <= set(saved.files)
    except (OSError, ValueError, EOFError):
        return False
