"""Read a ``torch.export`` ``.pt2`` archive without letting it run code.

``torch.export.load`` (torch 2.13) is not safe on a file from a stranger: it unpickles weights,
constants and sample inputs and falls back to full unpickling when the safe loader refuses; it reads
a legacy layout whose pickles sit at the archive root; it loads AOTInductor shared libraries; and its
graph deserializer passes every symbolic shape expression of the JSON to ``sympy.sympify``, which is
``eval``. So spikeshield never calls it. This reader opens the zip itself and admits exactly what
``torch.export.save`` writes for an exported program:

- one model (``models/model.json``) in the current archive layout; legacy layouts, AOTInductor code,
  duplicate or unexpected members, and a payload declared twice in different ways are refused;
- weights and constants as raw tensor records whose byte size matches their declared storage, read
  straight into a tensor of that size (no copy, bytes bounded before anything is allocated); a
  payload that torch itself pickles must load with ``torch.load(weights_only=True)`` and be a tensor;
  pickled Python objects (custom and opaque constants) are refused;
- sample inputs through ``torch.load(weights_only=True)`` only;
- a program JSON that :mod:`.pt2_program` has rebuilt: symbolic expressions parsed by our own
  grammar and printed again, guards and node metadata dropped, node targets ATen operators or
  symbolic-size arithmetic, every other string a plain name.

Only then is the program handed to torch's deserializer, with the tensors already built (so it
unpickles nothing). ``MEMBERS_TORCH_READS`` is the set of member kinds torch's own loader reads in
this torch version; a test pins it, so an upgrade that reads more is noticed.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spikeshield.compiler.ir.errors import ModelLoadError
from spikeshield.compiler.ir.limits import (
    ARCHIVE_MEMBERS,
    JSON_BYTES,
    TENSOR_BYTES,
    TOTAL_BYTES,
    check_tensor_shapes,
    numel,
)
from spikeshield.frontends.pt2_program import DOTTED_NAME, rebuild_program

MODEL = "model"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
MODEL_JSON = "models/model.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
# Written by torch.export.save and never read back as data by either loader.
BOOKKEEPING = {"archive_format", "archive_version", "byteorder", ".data/version",
               ".data/serialization_id"}
# What torch.export.load reads of an archive written by torch.export.save (torch 2.13).
MEMBERS_TORCH_READS = {"archive_format", "archive_version", MODEL_JSON, WEIGHTS_CONFIG, CONSTANTS_CONFIG,
                       SAMPLE_INPUTS, "data/weights/<payload>", "data/constants/<payload>"}
LEGACY = ("version", "serialized_exported_program.json", "serialized_state_dict.pt",
          "serialized_state_dict.json", "serialized_constants.pt", "serialized_constants.json",
          "serialized_example_inputs.pt", "data/weights/model.pt", "data/constants/model.pt")

def _refuse(path: Path, what: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: {what}; spikeshield reads .pt2 files that torch.export.save "
                          "wrote for one exported program")


@dataclass
class _Archive:
    """The members of a ``.pt2`` by their name below its single root folder."""

    path: Path
    zip: zipfile.ZipFile
    members: dict[str, zipfile.ZipInfo]

    def read(self, name: str, limit: int) -> bytes:
        info = self.members.get(name)
        if info is None:
            raise _refuse(self.path, f"member {name} is missing")
        if info.file_size > limit:
            raise ModelLoadError(f"{self.path}: member {name} unpacks to {info.file_size:,} bytes "
                                 f"(limit {limit:,})")
        with self.zip.open(info) as f:
            data = f.read(limit + 1)
        if len(data) != info.file_size:
            raise _refuse(self.path, f"member {name} is truncated")
        return data

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name, JSON_BYTES.value))
        except ModelLoadError:
            raise
        except (ValueError, RecursionError) as err:
            raise _refuse(self.path, f"{name} is not valid JSON ({type(err).__name__})") from None

    def read_tensor_record(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """A raw record as a flat tensor, read straight into its final memory."""
        info = self.members[name]
        element = torch.empty((), dtype=dtype).element_size()
        if info.file_size % element:
            raise _refuse(self.path, f"record {name} holds {info.file_size} bytes, not a whole "
                          f"number of {dtype} elements")
        flat = torch.empty(info.file_size, dtype=torch.uint8)
        with self.zip.open(info) as f:
            filled = f.readinto(memoryview(flat.numpy()))
            if filled != info.file_size or f.read(1):
                raise _refuse(self.path, f"record {name} is truncated or longer than declared")
        return flat.view(dtype)


def _open(path: Path) -> _Archive:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ModelLoadError(f"{path} is not a readable torch.export archive ({err}); write it "
                             "with torch.export.save") from None
    infos = archive.infolist()
    ARCHIVE_MEMBERS.check(len(infos), path, "the archive")
    names = [i.filename for i in infos]
    duplicates = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) < len(names) \
        else []
    if duplicates:
        raise _refuse(path, f"member {duplicates[0]} appears more than once (which copy a reader "
                      "takes is ambiguous)")
    relative = {n.split("/", 1)[-1] for n in names}
    legacy = [n for n in LEGACY if n in names or n in relative]
    if legacy:
        raise _refuse(path, f"it uses a legacy layout ({legacy[0]}), whose pickles torch loads "
                      "unsafely; load it in the torch that wrote it and save it again with this "
                      f"torch ({torch.__version__})")
    roots = {n.split("/", 1)[0] for n in names}
    members = {}
    for info in infos:
        _, _, rest = info.filename.partition("/")
        parts = rest.split("/")
        if len(roots) != 1 or not rest or "\\" in info.filename or any(
                p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
            raise _refuse(path, f"member {info.filename!r} is not inside the archive's one root "
                          "folder")
        if not info.is_dir():
            members[rest] = info
    if any(n.startswith(("data/aotinductor/", "data/executorch/", "data/mtia/")) for n in members):
        raise _refuse(path, "it carries compiled code (AOTInductor, ExecuTorch or MTIA)")
    return _Archive(path, archive, members)


def _check_header(archive: _Archive) -> None:
    from torch.export.pt2_archive.constants import ARCHIVE_FORMAT_VALUE, ARCHIVE_VERSION_VALUE

    for name, expected in (("archive_format", ARCHIVE_FORMAT_VALUE),
                           ("archive_version", ARCHIVE_VERSION_VALUE)):
        value = archive.read(name, 64).decode("ascii", "replace").strip()
        if value != str(expected):
            raise _refuse(archive.path, f"{name} is {value!r}, not {expected!r}")
    if "byteorder" in archive.members:
        order = archive.read("byteorder", 64).decode("ascii", "replace").strip()
        if order != "little":
            raise _refuse(archive.path, f"its tensors are stored {order}-endian")
    models = [n for n in archive.members if n.startswith("models/")]
    if models != [MODEL_JSON]:
        raise _refuse(archive.path, f"it holds the programs {models or 'none'}, not one "
                      f"{MODEL_JSON}")


@dataclass(frozen=True)
class _Payload:
    fqn: str
    member: str
    pickled: bool
    is_param: bool
    meta: dict | None


def _payloads(archive: _Archive, config_name: str, folder: str, prefix: str) -> list[_Payload]:
    """The entries of a payload configuration, each naming a member that exists and is declared
    one way only."""
    from torch.export.pt2_archive.constants import (
        CUSTOM_OBJ_FILENAME_PREFIX,
        OPAQUE_OBJ_FILENAME_PREFIX,
    )

    config = archive.read_json(config_name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(archive.path, f"{config_name} has no 'config' mapping")
    payloads, declared = [], {}
    for fqn, meta in entries.items():
        if not DOTTED_NAME.fullmatch(fqn) or not fqn:
            raise _refuse(archive.path, f"{config_name} names the tensor {fqn[:40]!r}, which is "
                          "not a dotted module path")
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise _refuse(archive.path, f"{config_name} entry {fqn!r} has no path_name")
        name = meta["path_name"]
        if name.startswith((CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX)):
            raise ModelLoadError(f"{archive.path}: constant {fqn!r} is a pickled Python object, "
                                 "which could run code when loaded; spikeshield reads only tensors "
                                 "from .pt2 files")
        if not re.fullmatch(re.escape(prefix) + r"[0-9]+", name):
            raise _refuse(archive.path, f"{config_name} entry {fqn!r} names {name!r}")
        pickled = meta.get("use_pickle")
        if not isinstance(pickled, bool):
            raise _refuse(archive.path, f"{config_name} entry {fqn!r} has no boolean use_pickle")
        if declared.setdefault(name, pickled) != pickled:
            raise _refuse(archive.path, f"{folder}{name} is declared both as raw bytes and as a "
                          "pickle (a reader could check one and load the other)")
        if folder + name not in archive.members:
            raise _refuse(archive.path, f"member {folder}{name} is missing")
        tensor_meta = meta.get("tensor_meta")
        if not pickled and not isinstance(tensor_meta, dict):
            raise _refuse(archive.path, f"raw payload {fqn!r} has no tensor_meta")
        payloads.append(_Payload(str(fqn), folder + name, pickled, bool(meta.get("is_param")),
                                 tensor_meta))
    return payloads


def _ints(values: Any, what: str, path: Path) -> list[int]:
    try:
        out = [v["as_int"] for v in values] if isinstance(values, list) else [values["as_int"]]
    except (TypeError, KeyError):
        raise _refuse(path, f"{what} is not a list of integers (symbolic sizes are not "
                      "supported in weights)") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in out):
        raise _refuse(path, f"{what} holds a negative or non-integer value")
    return out


class _Budget:
    """Bytes of tensors read so far, against the per-archive bound."""

    def __init__(self, path: Path) -> None:
        self.path, self.total = path, 0

    def take(self, amount: int, what: str) -> None:
        TENSOR_BYTES.check(amount, self.path, what)
        self.total += amount
        TOTAL_BYTES.check(self.total, self.path, "the archive's tensors")


def _load_pickled_tensor(archive: _Archive, payload: _Payload, budget: _Budget) -> torch.Tensor:
    info = archive.members[payload.member]
    budget.take(info.file_size, f"payload {payload.member}")
    value = _safe_torch_load(archive, payload.member, info.file_size)
    if not isinstance(value, torch.Tensor):
        raise _refuse(archive.path, f"payload {payload.member} is a {type(value).__name__}, not a "
                      "tensor")
    if value.layout != torch.strided or value.is_meta or value.is_quantized or \
            value.dtype.is_complex or value.device.type != "cpu":
        kind = "quantised" if value.is_quantized else "meta" if value.is_meta else \
            str(value.layout).replace("torch.", "")
        raise _refuse(archive.path, f"payload {payload.member} is a {kind} tensor, not plain "
                      "weights")
    return value


def _check_stored_zip(archive: _Archive, name: str, data: bytes) -> None:
    """A ``torch.save`` payload is itself a zip whose records torch stores uncompressed; a
    compressed one could inflate far past the bytes the outer archive was checked for."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            infos = inner.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        return  # not a zip: torch.load refuses it below
    ARCHIVE_MEMBERS.check(len(infos), archive.path, f"payload {name}")
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise _refuse(archive.path, f"payload {name} holds the compressed record {packed[0]} "
                      "(torch.save stores its records uncompressed)")
    unpacked = sum(i.file_size for i in infos)
    if unpacked > len(data):
        raise _refuse(archive.path, f"payload {name} declares {unpacked:,} bytes of records in "
                      f"{len(data):,} bytes")


def _safe_torch_load(archive: _Archive, name: str, limit: int) -> Any:
    data = archive.read(name, limit)
    _check_stored_zip(archive, name, data)
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001  (not weights-only, or corrupt: refused)
        lines = [line for line in str(err).splitlines() if "GLOBAL" in line]
        detail = lines[0].strip() if lines else type(err).__name__
        raise ModelLoadError(f"{archive.path}: payload {name} is not plain tensors ({detail}); "
                             "spikeshield loads nothing else from a .pt2") from None


def _build_tensors(archive: _Archive, payloads: list[_Payload],
                   budget: _Budget) -> dict[str, torch.Tensor]:
    from torch._export.serde.serialize import deserialize_scalar_type

    storages: dict[str, torch.Tensor] = {}
    shapes = {}
    for p in payloads:
        if not p.pickled:
            shapes[p.fqn] = tuple(_ints(p.meta.get("sizes"), f"{p.fqn} sizes", archive.path))
    check_tensor_shapes(shapes, archive.path)
    tensors: dict[str, torch.Tensor] = {}
    for p in payloads:
        if p.pickled:
            tensors[p.fqn] = _load_pickled_tensor(archive, p, budget)
            continue
        meta = p.meta
        try:
            dtype = deserialize_scalar_type(meta["dtype"])
        except Exception:  # noqa: BLE001  (unknown dtype code)
            raise _refuse(archive.path, f"payload {p.fqn!r} has an unknown dtype") from None
        if not isinstance(dtype, torch.dtype) or dtype.is_complex or dtype in (
                torch.quint8, torch.qint8, torch.qint32, torch.quint4x2):
            raise _refuse(archive.path, f"payload {p.fqn!r} has dtype {dtype}, not a plain "
                          "real or integer type")
        device = (meta.get("device") or {}).get("type", "cpu")
        if device not in ("cpu", "cuda", "meta") or meta.get("layout", 7) != 7:
            raise _refuse(archive.path, f"payload {p.fqn!r} is not a strided tensor")
        sizes = shapes[p.fqn]
        strides = _ints(meta.get("strides"), f"{p.fqn} strides", archive.path)
        offset = _ints(meta.get("storage_offset", {"as_int": 0}), f"{p.fqn} offset",
                       archive.path)[0]
        if len(strides) != len(sizes):
            raise _refuse(archive.path, f"payload {p.fqn!r} has {len(strides)} strides for "
                          f"{len(sizes)} sizes")
        if p.member not in storages:
            record = archive.members[p.member].file_size
            budget.take(record, f"record {p.member}")
            storages[p.member] = archive.read_tensor_record(p.member, dtype)
        storage = storages[p.member]
        if storage.dtype != dtype:
            raise _refuse(archive.path, f"record {p.member} is declared with two dtypes")
        extent = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1
        if numel(sizes) and extent > storage.numel():
            raise _refuse(archive.path, f"payload {p.fqn!r} reaches element {extent - 1} of a "
                          f"record of {storage.numel()} (zero-length or short record)")
        view = torch.as_strided(storage, sizes, strides, offset) if numel(sizes) else \
            torch.empty(sizes, dtype=dtype)
        if p.is_param:
            view = torch.nn.Parameter(view, requires_grad=bool(meta.get("requires_grad")))
        tensors[p.fqn] = view
    return tensors


def _read_parts(archive: _Archive) -> tuple[Any, dict, dict, Any]:
    """The checked program JSON, weights, constants and sample inputs of an open archive."""
    path = archive.path
    _check_header(archive)
    weights = _payloads(archive, WEIGHTS_CONFIG, "data/weights/", "weight_")
    constants = _payloads(archive, CONSTANTS_CONFIG, "data/constants/", "tensor_")
    declared = {p.member for p in weights + constants}
    known = BOOKKEEPING | {MODEL_JSON, WEIGHTS_CONFIG, CONSTANTS_CONFIG, SAMPLE_INPUTS}
    stray = sorted(n for n in archive.members
                   if n not in known and n not in declared and not n.startswith("extra/"))
    if stray:
        raise _refuse(path, f"member {stray[0]} is not part of an exported program")
    program_json = rebuild_program(archive.read_json(MODEL_JSON), path)
    budget = _Budget(path)
    state_dict = _build_tensors(archive, weights, budget)
    constant_tensors = _build_tensors(archive, constants, budget)
    sample_size = archive.members[SAMPLE_INPUTS].file_size if SAMPLE_INPUTS in \
        archive.members else 0
    budget.take(sample_size, f"member {SAMPLE_INPUTS}")
    examples = _safe_torch_load(archive, SAMPLE_INPUTS, sample_size) if sample_size else None
    if examples is not None and not isinstance(examples, (tuple, dict)):
        raise _refuse(path, f"{SAMPLE_INPUTS} holds a {type(examples).__name__}")
    return program_json, state_dict, constant_tensors, examples


def load_exported(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """The exported program of a ``.pt2``, read as the module docstring says; anything else is a
    one-line :class:`ModelLoadError`."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    archive = _open(path)
    try:
        with archive.zip:
            parts = _read_parts(archive)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
            ValueError) as err:
        raise ModelLoadError(f"{path} is a corrupt torch.export archive ({type(err).__name__}: "
                             f"{str(err)[:120]}); write it again with torch.export.save") from None
    program_json, state_dict, constant_tensors, examples = parts
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program_json)
        return ExportedProgramDeserializer(None).deserialize(
            serialized, state_dict, constant_tensors, examples)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001  (schema mismatch, version skew, malformed graph)
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ModelLoadError(f"{path} is not a readable torch.export program "
                             f"({type(err).__name__}: {detail}); write it with torch.export.save"
                             ) from None
