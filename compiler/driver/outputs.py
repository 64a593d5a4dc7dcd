"""Claiming an output path: spikeshield replaces only what it wrote, one job at a time.

Before a command starts its work it claims each output (:func:`claim_output`):

- the path must not be one of the command's inputs, nor a folder that holds one (compared after
  resolving links and ``..``);
- an existing folder must be wholly a spikeshield output (its ``manifest.json`` vouches by
  SHA-256 for every file in it: ``manifest.foreign_files``), an existing file must be one
  spikeshield writes (``spikeshield_file``); either is replaced only with ``--force``. Anything
  else (a folder of other files, a changed file, a bare manifest, a file of another kind) is
  refused, naming what it holds;
- the location must be writable (probed with a small file, so a read-only or full file system
  fails before the work, not after it);
- an exclusive lock (``flock`` on ``.NAME.lock`` beside the path, opened with ``O_NOFOLLOW``,
  holding the owner's pid) is held until the job ends, so a second job on the same output is refused at once instead of mixing its
  files or its checkpoint with the first one's. The lock dies with its process: a killed job never
  leaves a stale lock.

Leftovers of a killed job (the hidden ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings that the atomic
writers use) are found under the lock, named on stderr and removed; an output a kill left hidden
between the two renames of a publish is put back first. A reader (``run``) holds a shared lock
(:func:`reading_lock`), so a job rewriting what it reads is refused meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from spikeshield.compiler.driver.manifest import MANIFEST, foreign_files
from spikeshield.compiler.ir.atomic import restore_interrupted
from spikeshield.compiler.ir.errors import ConfigError


class OutputError(ConfigError):
    """An output path that spikeshield may not (or cannot) write."""


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


_HELD: dict[Path, int] = {}  # locks this process holds, with their nesting depth


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (which need not exist yet) for the block; taking it
    again inside the block (the CLI, then the library) nests."""
    path = Path(path).absolute()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_path(path)
    while True:
        handle = _open_lock(lock)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise OutputError(f"{path} is in use by another spikeshield job (pid {owner}); wait "
                              "for it to finish, or choose another output") from None
        # The holder before us may have removed the file after we opened it: lock the live one.
        try:
            same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _HELD[path] = 1
        yield
    finally:
        _HELD.pop(path, None)
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        handle.close()


@contextlib.contextmanager
def reading_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold a shared lock on ``path`` while reading it: any number of readers at once, but a job
    that writes ``path`` (which takes the exclusive lock of :func:`output_lock`) is refused while
    one reads, and a reader is refused while a job writes it."""
    path = Path(path).absolute()
    if path in _HELD or not path.parent.is_dir():
        yield
        return
    handle = _open_lock(_lock_path(path))
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = handle.read().strip() or "unknown"
            raise OutputError(f"{path} is being written by another spikeshield job (pid {owner}); "
                              "wait for it to finish") from None
        yield
    finally:
        handle.close()


def _open_lock(lock: Path):
    """The lock file, opened without following a link (a link planted at its name would have its
    target truncated) and created private to its owner."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OutputError(f"{lock} is a symbolic link, not a spikeshield lock; remove it "
                              "(someone else may have planted it)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{lock} is not a plain file; remove it and run again")
    return os.fdopen(fd, "r+")


def _same_or_inside(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or lies inside it."""
    return path == other or other in path.parents


def check_writable(path: Path) -> None:
    """Create and remove a small file where ``path`` will be written; one line if that fails."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A fresh name opened exclusively (mkstemp): a planted link is never followed.
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(probe)
    except OSError as err:
        raise OutputError(f"cannot write {err.filename or folder}: {err.strerror or err}; "
                          "choose an output on a writable file system with free space") from None


def leftovers(path: Path) -> list[Path]:
    """Hidden temporaries a killed atomic write of ``path`` left beside it."""
    if not path.parent.is_dir():
        return []
    def left_by_us(p: Path) -> bool:
        if p.name.startswith((f".{path.name}.tmp-", f".{path.name}.old-")):  # atomic_directory
            return True
        # atomic_file keeps the suffix: .NAME.tmp-PID.SUFFIX (only for a file with one)
        return bool(path.suffix) and p.name.startswith(f".{path.stem}.tmp-") and \
            p.name.endswith(path.suffix)

    return sorted(p for p in path.parent.iterdir() if left_by_us(p))


def _remove_leftovers(path: Path) -> None:
    restored = restore_interrupted(path)
    if restored is not None:
        print(f"note: {path} was missing after an interrupted publish; its previous output "
              f"({restored.name}) is back in place", file=sys.stderr)
    found = leftovers(path)
    if found:
        print(f"note: removing what an interrupted run left beside {path}: "
              f"{', '.join(p.name for p in found)}", file=sys.stderr)
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def check_output(
    out: str | os.PathLike,
    inputs: list[str | os.PathLike] = (),
    force: bool = False,
    directory: bool = False,
    spikeshield_file: Callable[[Path], bool] | None = None,
) -> Path:
    """Refuse ``out`` unless spikeshield may write it (see the module docstring); returns it.
    Paths are compared after resolving links and ``..``, so no spelling of an input passes."""
    out = Path(out).absolute()
    real_out = Path(os.path.realpath(out))
    for source in inputs:
        real = Path(os.path.realpath(source))
        if real == real_out or (directory and _same_or_inside(real, real_out)):
            raise OutputError(f"--out {out} would overwrite the input {source}; choose another "
                              "output path")
    if out.is_symlink() or (out.exists() and not (out.is_dir() or out.is_file())):
        raise OutputError(f"--out {out} is not a plain file or folder; choose another path")
    if directory and out.exists():
        if out.is_file():
            raise OutputError(f"--out {out} is a file, not an output folder; choose another path")
        if any(out.iterdir()):
            foreign = foreign_files(out)
            if foreign:
                raise OutputError(
                    f"--out {out} holds files spikeshield did not write or that changed since "
                    f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}; its "
                    f"{MANIFEST} does not vouch for them); choose an empty or new folder")
            if not force:
                raise OutputError(f"--out {out} holds an earlier spikeshield output; add --force "
                                  "to replace it")
    elif out.exists():
        if out.is_dir():
            raise OutputError(f"--out {out} is a folder; name a file")
        if spikeshield_file is None or not spikeshield_file(out):
            raise OutputError(f"--out {out} is a file spikeshield did not write; choose another "
                              "path")
        if not force:
            raise OutputError(f"--out {out} exists; add --force to replace it")
    check_writable(out)
    return out


@contextlib.contextmanager
def claim_output(
    out: str | os.PathLike,
    inputs: list[str | os.PathLike] = (),
    force: bool = False,
    directory: bool = False,
    spikeshield_file: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Lock ``out`` for the block after :func:`check_output` allowed it; clears leftovers."""
    path = Path(out).absolute()
    with output_lock(path):
        check_output(path, inputs, force, directory, spikeshield_file)
        _remove_leftovers(path)
        yield path


def is_disk_error(err: OSError) -> bool:
    """An OS error about the output location (full, read-only, no permission), not a bug."""
    return err.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                         errno.EFBIG, errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.ENOENT)
