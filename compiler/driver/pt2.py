"""Writing a trained ``nn.Module`` as a ``torch.export`` ``.pt2``, and recognising the ones
spikeshield wrote (``train --force`` replaces only those)."""

from __future__ import annotations

import io
import json
import os

import torch
from torch import nn

from spikeshield.compiler.ir.atomic import atomic_file

MARKER = "spikeshield.json"  # an extra file in every .pt2 spikeshield train writes


def is_spikeshield_pt2(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a .pt2 that spikeshield wrote (so ``train --force`` may replace it)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith(f"/extra/{MARKER}") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def export_pt2(model: nn.Module, input_shape: tuple[int, ...], path) -> None:
    """Write ``model`` (eval mode, dynamic batch) as a self-contained ``torch.export`` ``.pt2``."""
    model = model.eval().cpu()
    # A fresh tensor, never a view of a data set: torch.export.save stores the example's whole storage.
    example = torch.zeros(2, *input_shape)
    program = torch.export.export(
        model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
    )
    buffer = io.BytesIO()  # the archive's inner folder is named after a file; a buffer's is fixed
    torch.export.save(program, buffer, extra_files={MARKER: json.dumps({"written_by": "spikeshield"})})
    with atomic_file(path) as tmp:  # an interrupted write never leaves a half .pt2
        tmp.write_bytes(buffer.getvalue())
