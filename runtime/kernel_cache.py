"""Building and loading spikeshield's C++ kernels safely: a private, versioned cache whose
libraries are checked against their recorded SHA-256 before they are loaded.

- **Private and versioned:** ``$SPIKESHIELD_CACHE`` (default ``~/.cache/spikeshield``) /
  ``kernels/<name>-<source digest>-<torch version>-<python tag>``, created with mode 0700 and
  refused if another user owns it or others may write it. A new source or torch gets a new folder.
- **Checked before loading:** after a build, the library's SHA-256 is written beside it; a later
  run imports the library only if its bytes still match (a truncated file would die with SIGBUS, a
  replaced one would run its constructor), and rebuilds it otherwise.
- **A killed build does not hang later jobs:** builders hold an ``flock`` on the folder for the
  build (it dies with its process); holding it, a torch build lock left by a killed build is stale,
  so it is removed, with a note.
- **Any failure falls back:** :func:`load_kernel` returns the reason as a string, and callers run
  the dense path (one note on stderr, once per process).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

from spikeshield.compiler.ir.digests import file_sha256


def cache_root() -> Path:
    return Path(os.environ.get("SPIKESHIELD_CACHE") or Path.home() / ".cache" / "spikeshield")


def _private_folder(path: Path) -> None:
    """Create ``path`` (mode 0700) or accept it only if this user owns it and no one else may
    write it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or \
            info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"kernel cache {path} is not a folder private to this user")


def kernel_folder(name: str, source: Path, extra_cflags: Sequence[str] = ()) -> Path:
    """The cache folder of ``name`` built from ``source`` with ``extra_cflags`` (all three in the
    digest: other flags are another build)."""
    digest = hashlib.sha256(source.read_bytes() + "\0".join(extra_cflags).encode())
    tag = "-".join((name, digest.hexdigest()[:16],
                    torch.__version__.replace("+", "_"),
                    f"py{sys.version_info.major}{sys.version_info.minor}"))
    return cache_root() / "kernels" / tag


def _import(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_kernel(name: str, source: Path, extra_cflags: list[str]) -> ModuleType | str:
    """The compiled module ``name`` built from ``source`` (built on first use), or the reason it
    is unavailable."""
    try:
        folder = kernel_folder(name, source, extra_cflags)
        for part in (cache_root(), folder.parent, folder):
            _private_folder(part)
        library, recorded = folder / f"{name}.so", folder / f"{name}.so.sha256"
        if library.is_file() and recorded.is_file():
            if file_sha256(library) == recorded.read_text().strip():
                return _import(name, library)
            print(f"note: the cached {name} kernel in {folder} changed since it was built; "
                  "rebuilding it", file=sys.stderr)
        return _build(name, source, folder, extra_cflags)
    except Exception as err:  # noqa: BLE001  (no compiler, no ninja, a foreign cache: dense path)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _build(name: str, source: Path, folder: Path, extra_cflags: list[str]) -> ModuleType:
    from torch.utils.cpp_extension import load

    with open(folder / ".spikeshield-build.lock", "a+") as baton:
        fcntl.flock(baton, fcntl.LOCK_EX)  # waits for a live builder; a dead one's lock is gone
        stale = folder / "lock"  # torch's FileBaton: a killed build leaves it, and torch waits
        if stale.exists():
            print(f"note: removing {stale}, a build lock left by an interrupted build",
                  file=sys.stderr)
            stale.unlink()
        library = folder / f"{name}.so"
        for leftover in (library, folder / f"{name}.so.sha256"):
            leftover.unlink(missing_ok=True)
        print(f"note: building the {name} kernel (first use; about a minute, then cached in "
              f"{folder})", file=sys.stderr, flush=True)
        module = load(name=name, sources=[str(source)], extra_cflags=extra_cflags,
                      build_directory=str(folder), verbose=False)
        (folder / f"{name}.so.sha256").write_text(file_sha256(library) + "\n")
        return module
