"""Atomic, link-safe writes: everything is built in a fresh private folder beside the target and
renamed into place on success.

Why a private folder (``mkdtemp``, mode 0700, a random name): whoever can write the output's
parent folder could otherwise plant a symbolic link at a predictable temporary name and have
spikeshield write, or ``chmod``, a file elsewhere. Inside a folder only this process can enter,
the writers (``torch.save``, numpy, h5py) open plain names no one else can touch. Modes are set
through a descriptor opened with ``O_NOFOLLOW``, never through a path that could be a link.

Publishing a directory over an existing one swaps the two in one step where the kernel offers it
(Linux ``renameat2(RENAME_EXCHANGE)``), so a kill at any instant leaves the old or the new output
visible under the name; elsewhere two renames are used, and :func:`restore_interrupted` puts the
old output back if a kill fell between them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _set_public_mode(path: Path, directory: bool = False) -> None:
    """The usual umask permissions for something this process just created, set through a
    descriptor so that a link put in its place is never followed."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fchmod(fd, (0o777 if directory else 0o666) & ~_umask())
    finally:
        os.close(fd)


def _staging(target: Path) -> Path:
    """A fresh private folder beside ``target`` (hidden, named after it: ``.NAME.tmp-XXXX``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux); False where the kernel or libc cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish_directory(tmp: Path, target: Path) -> None:
    """Make the finished folder ``tmp`` the folder ``target``; whatever ``target`` was is removed
    afterwards. Atomic where :func:`_exchange` works."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    if _exchange(tmp, target):
        _remove(tmp)  # now holds the old output
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    _remove(old)


def restore_interrupted(target: Path) -> Path | None:
    """If a kill fell between the two renames of :func:`publish_directory` (``target`` missing,
    its old output hidden as ``.NAME.old-PID``), rename the old output back; returns it."""
    if os.path.lexists(target) or not target.parent.is_dir():
        return None
    olds = sorted(p for p in target.parent.glob(f".{target.name}.old-*")
                  if p.is_dir() and not p.is_symlink())
    if not olds:
        return None
    os.replace(olds[-1], target)
    return olds[-1]


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a private temporary directory that replaces ``target`` only if the block finishes
    without error."""
    target = Path(target)
    tmp = _staging(target)
    try:
        yield tmp
        _set_public_mode(tmp, directory=True)  # mkdtemp makes it private; the result should not be
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_directory(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (inside a private folder beside ``target``, with ``target``'s
    name, so writers that add their own suffix are not confused); it becomes ``target`` only if
    the block succeeds."""
    target = Path(target)
    staging = _staging(target)
    tmp = staging / target.name
    try:
        yield tmp
        _set_public_mode(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_files(directory: str | os.PathLike, files: dict[str, bytes]) -> list[Path]:
    """Write every file to a private staging folder first, then rename them all into
    ``directory``: an interrupted run leaves the previous set (or none), never a half-written
    file."""
    directory = Path(directory)
    staging = _staging(directory / f"{next(iter(files), 'files')}")
    try:
        temps = []
        for name, content in files.items():
            tmp = staging / name
            tmp.write_bytes(content)
            _set_public_mode(tmp)
            temps.append((tmp, directory / name))
        for tmp, final in temps:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [final for _, final in temps]
