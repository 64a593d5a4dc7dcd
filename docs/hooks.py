"""mkdocs hook: a package view of the tree for the API reference.

``setup.py`` maps the ``spikeshield`` package onto the repository's fixed top-level folders
(``compiler/``, ``frontends/``, ...; its ``__init__`` in ``compiler/driver/toplevel``), which an
import resolves through the install but griffe (mkdocstrings' reader) cannot find on disk. This
hook builds ``build/docs-package/spikeshield/`` out of symbolic links to those folders before the
pages are read; mkdocs.yml points mkdocstrings there.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("compiler", "frontends", "backends", "runtime")


def on_startup(command, dirty):  # before any plugin reads its configuration
    package = ROOT / "build" / "docs-package" / "spikeshield"
    package.mkdir(parents=True, exist_ok=True)
    links = {"__init__.py": ROOT / "compiler" / "driver" / "toplevel" / "__init__.py"}
    links |= {name: ROOT / name for name in TOP_LEVEL}
    for name, target in links.items():
        link = package / name
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
