"""What a model file may ask of the machine that loads it, checked before anything is allocated.

A file from a stranger is read only through loaders that cannot run code (see the README's
"Security and reliability"); these bounds keep it from asking for absurd amounts of memory or work
instead: a tensor, all tensors together, one sample's input, the number of graph nodes, and the
unpacked size and member count of an archive. Each bound can be raised for a file one trusts with
the environment variable the error message names.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spikeshield.compiler.errors import ModelLoadError


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
ARCHIVE_BYTES = Limit("bytes unpacked", "SPIKESHIELD_MAX_ARCHIVE_BYTES", 8 << 30)
DATA_BYTES = Limit("bytes", "SPIKESHIELD_MAX_DATA_BYTES", 32 << 30)  # one data file, unpacked
ARCHIVE_MEMBERS = Limit("members", "SPIKESHIELD_MAX_ARCHIVE_MEMBERS", 100_000)


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
    shapes = {
        f"{name}/{field}": tuple(t.shape)
        for name in graph.nodes()
        for field, t in graph.op(name).tensors().items()
    }
    check_tensor_shapes(shapes, source)
    for name in graph.input_names:
        INPUT_ELEMENTS.check(numel(graph.op(name).shape), source, f"input {name!r}")


def check_pt2_archive(path: Path) -> None:
    """Refuse a ``.pt2`` that torch.export's loader would unpickle unsafely, before it runs.

    ``torch.export.load`` (torch 2.13) reads pickled weights, constants and sample inputs with full
    unpickling, which can run code. So every payload under ``data/`` that the archive does not
    declare as raw tensor bytes must load with ``torch.load(weights_only=True)`` (tensors and plain
    containers only), custom and opaque objects are refused, and the declared tensor sizes, the
    member count and the unpacked size are bounded, all before torch.export sees the file."""
    import json

    import torch

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ModelLoadError(
            f"{path} is not a readable torch.export archive ({err}); write it with "
            "torch.export.save"
        ) from None
    with archive:
        members = archive.infolist()
        ARCHIVE_MEMBERS.check(len(members), path, "the archive")
        ARCHIVE_BYTES.check(sum(m.file_size for m in members), path, "the archive")
        payloads = [m for m in members if "/data/" in f"/{m.filename}" and not m.is_dir()]
        raw, shapes = set(), {}
        try:
            for member in payloads:
                if not member.filename.endswith("_config.json"):
                    continue
                folder = member.filename.rsplit("/", 1)[0]
                entries = json.loads(archive.read(member))["config"]
                for fqn, meta in entries.items():
                    name = meta["path_name"]
                    if name.startswith(("custom_obj", "opaque_obj")):
                        raise ModelLoadError(
                            f"{path}: constant {fqn!r} is a pickled Python object, which could run "
                            "code when loaded; spikeshield reads only tensors from .pt2 files"
                        )
                    if not meta.get("use_pickle"):
                        raw.add(f"{folder}/{name}")
                        sizes = meta["tensor_meta"]["sizes"]
                        shapes[fqn] = tuple(int(s["as_int"]) for s in sizes)
        except ModelLoadError:
            raise
        except Exception as err:  # noqa: BLE001  (malformed configuration: refused)
            raise ModelLoadError(
                f"{path}: malformed payload configuration ({type(err).__name__}: {err}); write "
                "it with torch.export.save"
            ) from None
        check_tensor_shapes(shapes, path)
        for member in payloads:
            if member.filename in raw or member.filename.endswith(".json"):
                continue
            try:
                torch.load(io.BytesIO(archive.read(member)), weights_only=True)
            except Exception as err:  # noqa: BLE001  (not weights-only, or corrupt: refused)
                lines = [line for line in str(err).splitlines() if "GLOBAL" in line]
                detail = lines[0].strip() if lines else f"{type(err).__name__}"
                raise ModelLoadError(
                    f"{path}: payload {member.filename} is not plain tensors ({detail}); "
                    "torch.export.load would unpickle it, so spikeshield refuses the file"
                ) from None
