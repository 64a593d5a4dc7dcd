"""``manifest.json``: the SHA-256 and size of every artifact of an output directory.

``spikeshield compile`` writes it last, inside the temporary directory that is renamed into
place, so a directory either has every file its manifest lists or does not exist. Commands that
add files to a compile directory later (``eval``, ``profile``, ``export``) record them in the
manifest as they replace them. :func:`verify_directory` (``spikeshield verify DIR``) recomputes
every digest and says which files are missing, altered, or not listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from spikeshield.compiler.ir.digests import file_sha256
from spikeshield.compiler.ir.errors import ModelLoadError
from spikeshield.compiler.ir.limits import read_json_file

MANIFEST = "manifest.json"
FORMAT = "spikeshield-manifest"
FORMAT_VERSION = 1


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex); "" when there is no such file."""
    return file_sha256(path) if Path(path).is_file() else ""


def _entry(path: Path) -> dict:
    return {"sha256": file_digest(path), "bytes": path.stat().st_size}


def _artifacts(directory: Path) -> list[str]:
    """Every regular file under ``directory`` except the manifest and hidden temporaries."""
    names = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and relative != MANIFEST and not any(
            part.startswith(".") for part in path.relative_to(directory).parts
        ):
            names.append(relative)
    return names


def write_manifest(directory: str | os.PathLike) -> Path:
    """Record every file of ``directory`` in its manifest (replacing any earlier one)."""
    directory = Path(directory)
    files = {name: _entry(directory / name) for name in _artifacts(directory)}
    return _write(directory, files)


def record_files(directory: str | os.PathLike, paths: list[Path]) -> None:
    """Add or update ``paths`` (files inside ``directory``) in an existing manifest; a directory
    without a manifest (not written by spikeshield compile) is left without one."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        return
    files = read_manifest(directory)
    for path in paths:
        path = Path(path)
        try:
            name = path.resolve().relative_to(directory.resolve()).as_posix()
        except ValueError:
            continue  # written outside the directory: not one of its artifacts
        files[name] = _entry(path)
    _write(directory, files)


def publish_files(directory: str | os.PathLike, files: dict[str, bytes]) -> list[Path]:
    """Write ``files`` (name -> bytes) into ``directory`` and record them, so that a kill at any
    instant leaves a directory that verifies: the manifest first lists the new digests as
    pending, the files are then renamed in together, and the manifest last takes them as its
    own. Before the renames the old files match, after them the pending digests do."""
    from spikeshield.compiler.ir.atomic import atomic_files

    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        pending = {name: {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
                   for name, blob in files.items()}
        _write(directory, read_manifest(directory), pending)
    written = atomic_files(directory, files)
    record_files(directory, written)
    return written


def _write(directory: Path, files: dict[str, dict], pending: dict[str, dict] | None = None
           ) -> Path:
    from spikeshield.compiler.ir.atomic import atomic_file

    target = directory / MANIFEST
    content = {"format": FORMAT, "version": FORMAT_VERSION, "algorithm": "sha256", "files": files,
               **({"pending": pending} if pending else {})}
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return target


def read_manifest(directory: str | os.PathLike, pending: bool = False) -> dict[str, dict]:
    """The manifest's file entries (``pending``: the entries a publish in progress will take
    instead, see :func:`publish_files`); ModelLoadError when it is missing or malformed."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ModelLoadError(
            f"{directory} has no {MANIFEST}; only directories written by `spikeshield compile` "
            "carry one"
        )
    try:
        content = read_json_file(path)
        files = content.get("pending", {}) if pending else content["files"]
        if content.get("format") != FORMAT or not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()
        ):
            raise ValueError("not a spikeshield manifest")
        bad = next((name for name in files if not _ENTRY.fullmatch(name) or ".." in
                    name.split("/")), None)
        if bad is not None:
            raise ValueError(f"entry {bad[:40]!r} is not a relative file name")
    except (ModelLoadError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelLoadError(f"{path} is malformed ({str(err)[:160]}); it cannot vouch for "
                             "anything") from None
    return files


_ENTRY = re.compile(r"[A-Za-z0-9_.-][A-Za-z0-9_./-]{0,255}")


# Files spikeshield commands write into a compile directory (and read back): present but not in
# the manifest, one of these was added or its entry removed behind spikeshield's back.
WRITTEN = re.compile(r"(snn|ann)(_[A-Za-z0-9_-]+)?\.ir|report\.(json|md)|robustness\.(json|md|png)"
                     r"|profile(_energy|_rates)?\.(json|md|png)|snn(_step)?\.(nir|onnx)(\.json)?")


@dataclass
class Verification:
    """What ``spikeshield verify`` found: every listed file is ``ok``, ``missing`` or ``altered``;
    ``unlisted`` files are present but not in the manifest: an error when spikeshield writes files
    of that name (``WRITTEN``: its entry was removed, or the file slipped in), a note otherwise;
    ``temporaries`` are hidden files an interrupted write left (an error)."""

    directory: Path
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)

    @property
    def unlisted_artifacts(self) -> list[str]:
        return [name for name in self.unlisted if WRITTEN.fullmatch(name)]

    @property
    def intact(self) -> bool:
        return not (self.missing or self.altered or self.unlisted_artifacts or self.temporaries)

    def summary(self) -> str:
        if self.intact:
            line = f"{self.directory}: all {len(self.ok)} files match manifest.json"
        else:
            problems = [f"missing: {', '.join(self.missing)}" if self.missing else "",
                        f"altered: {', '.join(self.altered)}" if self.altered else "",
                        f"not in the manifest: {', '.join(self.unlisted_artifacts)}"
                        if self.unlisted_artifacts else "",
                        f"left by an interrupted write: {', '.join(self.temporaries)}"
                        if self.temporaries else ""]
            line = f"{self.directory}: " + "; ".join(p for p in problems if p)
        others = [n for n in self.unlisted if n not in self.unlisted_artifacts]
        if others:
            line += f" (not in the manifest, unchecked: {', '.join(others)})"
        return line


def verify_directory(directory: str | os.PathLike) -> Verification:
    """Recompute the digest of every file the manifest of ``directory`` lists."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"{directory} is not a directory; pass a `spikeshield compile` output")
    files, pending = read_manifest(directory), read_manifest(directory, pending=True)
    result = Verification(directory)
    root = directory.resolve()
    for name in sorted(set(files) | set(pending)):
        path = (directory / name).resolve()
        if root not in path.parents:  # a manifest may not point outside its own directory
            raise ModelLoadError(f"{directory / MANIFEST} lists {name!r}, outside the directory")
        digests = {entry["sha256"] for entry in (files.get(name), pending.get(name)) if entry}
        if not path.is_file():
            if name in files:
                result.missing.append(name)
        elif file_digest(path) not in digests:
            result.altered.append(name)
        else:
            result.ok.append(name)
    result.unlisted = [name for name in _artifacts(directory)
                       if name not in files and name not in pending]
    result.temporaries = sorted(p.relative_to(directory).as_posix() for p in directory.rglob(".*")
                                if re.search(r"\.(tmp|old|probe)-[0-9A-Za-z_]+", p.name))
    return result


def foreign_files(directory: str | os.PathLike) -> list[str]:
    """What in ``directory`` spikeshield cannot vouch for, so that replacing the directory would
    lose it: with no valid manifest (its format marker), everything; otherwise every file that is
    not the manifest and not listed with matching bytes (a temporary an interrupted write left
    included: it is named, and the user removes it), and every link or special file. Empty: the
    directory is wholly spikeshield's."""
    directory = Path(directory)
    everything = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                        if not p.is_dir() or p.is_symlink())
    try:
        files = read_manifest(directory)
        pending = read_manifest(directory, pending=True)
    except ModelLoadError:
        return everything
    foreign = []
    for name in everything:
        path = directory / name
        if path.is_symlink() or not path.is_file():
            foreign.append(name)
        elif name == MANIFEST:
            continue
        elif file_digest(path) not in {entry["sha256"] for entry in
                                       (files.get(name), pending.get(name)) if entry}:
            foreign.append(name)
    return foreign


def require_verified(directory: str | os.PathLike, skip: bool = False,
                     rewrites: tuple[str, ...] = ()) -> Path:
    """``directory``, once its manifest verifies; refused otherwise (``skip``: not checked).
    Missing files that the command is about to write again (``rewrites``) are no reason."""
    directory = Path(directory)
    if skip:
        return directory
    result = verify_directory(directory)
    result.missing = [name for name in result.missing if name not in rewrites]
    if not result.intact:
        raise ModelLoadError(f"{result.summary()}; the directory is not as spikeshield wrote it: "
                             "recompile it, or pass --skip-verify to use it anyway")
    return directory
