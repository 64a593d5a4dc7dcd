"""SHA-256 of a file's bytes, read in chunks: the one digest that manifests, checkpoints and the
kernel cache record and check (here, on the floor every other floor may import)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path`` (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
