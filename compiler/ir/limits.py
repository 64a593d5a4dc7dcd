"""What a model file may ask of the machine that loads it, checked before anything is allocated.

A file from a stranger is read only through loaders that cannot run code (see
docs/reference/security.md); these bounds keep it from asking for absurd amounts of memory or work
instead: a tensor, all tensors together, one sample's input, the number of graph nodes, and the
unpacked size and member count of an archive. Each bound can be raised for a file one trusts with
the environment variable the error message names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from spikeshield.compiler.ir.errors import ConfigError, ModelLoadError


@dataclass(frozen=True)
class Limit:
    name: str  # what is bounded, in words
    env: str  # environment variable that overrides the default
    default: int

    @property
    def value(self) -> int:
        raw = os.environ.get(self.env)
        if raw is None:
            return self.default
        try:
            return int(raw)
        except ValueError:
            raise ModelLoadError(f"{self.env}={raw!r} is not an integer") from None

    def check(self, amount: int, source: str | os.PathLike, what: str) -> None:
        if amount > self.value:
            raise ModelLoadError(
                f"{source}: {what} has {amount:,} {self.name} (limit {self.value:,}); if you "
                f"trust this file, raise the limit with {self.env}={amount}"
            )


TENSOR_ELEMENTS = Limit("elements", "SPIKESHIELD_MAX_TENSOR_ELEMENTS", 1 << 28)  # 1 GiB of fp32
TOTAL_ELEMENTS = Limit("elements in all", "SPIKESHIELD_MAX_TOTAL_ELEMENTS", 1 << 30)
INPUT_ELEMENTS = Limit("input elements per sample", "SPIKESHIELD_MAX_INPUT_ELEMENTS", 1 << 24)
NODES = Limit("nodes", "SPIKESHIELD_MAX_NODES", 10_000)
ACTIVATION_ELEMENTS = Limit("elements per sample", "SPIKESHIELD_MAX_ACTIVATION_ELEMENTS", 1 << 26)
TENSOR_BYTES = Limit("bytes", "SPIKESHIELD_MAX_TENSOR_BYTES", 1 << 30)  # one tensor record
TOTAL_BYTES = Limit("bytes in all", "SPIKESHIELD_MAX_TOTAL_BYTES", 4 << 30)  # all of a model's
JSON_BYTES = Limit("bytes", "SPIKESHIELD_MAX_JSON_BYTES", 256 << 20)  # one JSON member
DATA_BYTES = Limit("bytes", "SPIKESHIELD_MAX_DATA_BYTES", 32 << 30)  # one data file, unpacked
ARCHIVE_MEMBERS = Limit("members", "SPIKESHIELD_MAX_ARCHIVE_MEMBERS", 100_000)


# A probe process reads a NIR file's HDF5 data first, bounded in time (frontends/nir_frontend.py).
HDF5_READ_SECONDS = Limit("seconds", "SPIKESHIELD_MAX_HDF5_READ_SECONDS", 20)
SIDECAR_JSON_BYTES = Limit("bytes", "SPIKESHIELD_MAX_SIDECAR_BYTES", 16 << 20)  # manifests, reports


def read_json_bytes(data: bytes, source: str | os.PathLike, what: str = "it") -> object:
    """Parsed JSON, or one line (``ModelLoadError``) for bytes that are not UTF-8 JSON or nest
    too deeply to parse."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ModelLoadError(f"{source}: {what} nests too deeply to be a spikeshield JSON "
                             "file") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{source}: {what} is not valid JSON ({str(err)[:80]})") from None


def read_json_file(path: str | os.PathLike, limit: Limit = SIDECAR_JSON_BYTES) -> object:
    """A JSON file read with its size bounded before anything is read (``limit``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit.value + 1)
    except OSError as err:
        raise ModelLoadError(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > limit.value:
        limit.check(max(os.path.getsize(path), len(data)), path, "the file")
    return read_json_bytes(data, path)


def numel(shape) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total


def check_tensor_shapes(shapes: dict[str, tuple[int, ...]], source: str | os.PathLike) -> None:
    """Every tensor, and all of them together, within bounds (shapes read before the data)."""
    total = 0
    for name, shape in shapes.items():
        if any(int(s) < 0 for s in shape):
            raise ModelLoadError(f"{source}: tensor {name!r} has a negative size {tuple(shape)}")
        count = numel(shape)
        TENSOR_ELEMENTS.check(count, source, f"tensor {name!r}")
        total += count
    TOTAL_ELEMENTS.check(total, source, "the model's tensors")


def check_graph(graph, source: str | os.PathLike) -> None:
    """A lowered graph within bounds: node count, tensor sizes, one sample's input size."""
    NODES.check(len(graph), source, "the graph")
    graph.require_feed_forward("spikeshield")
    shapes = {
        f"{name}/{field}": tuple(t.shape)
        for name in graph.nodes()
        for field, t in graph.op(name).tensors().items()
    }
    check_tensor_shapes(shapes, source)
    for name in graph.input_names:
        INPUT_ELEMENTS.check(numel(graph.op(name).shape), source, f"input {name!r}")
    # Shapes of the whole graph, inferred before anything runs: a small file can still ask for a
    # huge intermediate (a pad of 10^5 pixels), which a batch would multiply.
    for name in graph.nodes():
        ACTIVATION_ELEMENTS.check(numel(graph.shape(name)), source, f"the output of {name!r}")


TIMESTEPS = Limit("time steps", "SPIKESHIELD_MAX_TIMESTEPS", 4096)


def check_timesteps(value: object, option: str = "--timesteps") -> int:
    """A number of simulation steps: a whole number from 1 to the bound (memory and time grow
    with it; the bound is raised with SPIKESHIELD_MAX_TIMESTEPS)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{option} must be a whole number of time steps, got {value!r}")
    if not 1 <= value <= TIMESTEPS.value:
        raise ConfigError(f"{option} must be between 1 and {TIMESTEPS.value:,}, got {value:,}"
                          + (f"; raise {TIMESTEPS.env} to simulate longer" if value > 1 else ""))
    return value


def resolve_timesteps(requested: int | None, recorded: object,
                      option: str = "timesteps") -> int | None:
    """The T to simulate: ``requested`` (checked; ``option`` names it in errors: the argument of
    a library call, or a CLI flag) or the graph's recorded T; None when neither is set (an ANN
    graph)."""
    if requested is not None:
        return check_timesteps(requested, option)
    if recorded in (None, 0):
        return None
    return check_timesteps(recorded, "the graph's recorded timesteps")
