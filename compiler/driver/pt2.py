"""Writing a trained ``nn.Module`` as a ``torch.export`` ``.pt2``, recognising the ones spikeshield
wrote (``train --force`` replaces only those), and reading the training settings they record (so
that ``compile`` prunes and finetunes under the eps the ANN was trained at)."""

from __future__ import annotations

import io
import json
import os

import torch
from torch import nn

from spikeshield.compiler.ir.atomic import atomic_file
from spikeshield.compiler.ir.errors import ModelLoadError
from spikeshield.compiler.ir.limits import SIDECAR_JSON_BYTES, read_json_bytes

MARKER = "spikeshield.json"  # an extra file in every .pt2 spikeshield train writes


def _marker(path: str | os.PathLike) -> dict | None:
    """The marker spikeshield wrote into the ``.pt2`` at ``path`` ({} if unreadable), or None."""
    import zipfile
    import zlib

    limit = SIDECAR_JSON_BYTES.value
    try:
        with zipfile.ZipFile(path) as archive:
            info = next((i for i in archive.infolist() if i.filename.endswith(f"/extra/{MARKER}")),
                        None)
            if info is None:
                return None
            if info.file_size > limit:  # the header's size; the read below is bounded as well
                return {}
            with archive.open(info) as member:
                data = member.read(limit + 1)
            if len(data) > limit:
                return {}
            record = read_json_bytes(data, path, MARKER)
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError):
        return None
    except ModelLoadError:
        return {}
    return record if isinstance(record, dict) else {}


def is_spikeshield_pt2(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a .pt2 that spikeshield wrote (so ``train --force`` may replace it)."""
    return _marker(path) is not None


def training_record(path: str | os.PathLike) -> dict | None:
    """The training settings (objective, eps, epochs, ...) ``spikeshield train`` stored in the
    ``.pt2`` at ``path``; None for a file without them (another tool's, or an older spikeshield's)."""
    training = (_marker(path) or {}).get("training")
    return training if isinstance(training, dict) else None


def robust_training_eps(record: dict | None) -> float | None:
    """The eps a training record says the ANN was adversarially trained at; None without a record,
    for a non-robust objective (``standard``, whose record still carries the unused default eps),
    or for an eps that is not a positive number."""
    if not isinstance(record, dict) or record.get("objective") == "standard":
        return None
    eps = record.get("eps")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        return None
    return float(eps)


def export_pt2(model: nn.Module, input_shape: tuple[int, ...], path,
               training: dict | None = None) -> None:
    """Write ``model`` (eval mode, dynamic batch) as a self-contained ``torch.export`` ``.pt2``;
    ``training`` (JSON-serialisable settings, ``eps`` among them) is stored beside it."""
    model = model.eval().cpu()
    # A fresh tensor, never a view of a data set: torch.export.save stores the example's whole storage.
    example = torch.zeros(2, *input_shape)
    program = torch.export.export(
        model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
    )
    marker = {"written_by": "spikeshield", **({"training": training} if training else {})}
    buffer = io.BytesIO()  # the archive's inner folder is named after a file; a buffer's is fixed
    torch.export.save(program, buffer, extra_files={MARKER: json.dumps(marker)})
    with atomic_file(path) as tmp:  # an interrupted write never leaves a half .pt2
        tmp.write_bytes(buffer.getvalue())
