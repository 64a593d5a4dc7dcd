"""spikeshield: adversarially robust ANNs in, robust sparse spiking networks out.

``import spikeshield as ss`` gives the verbs of :mod:`spikeshield.compiler.driver.api`
(``ss.prune``, ``ss.convert``, ``ss.finetune``, ``ss.accuracy``, ``ss.evaluate``,
``ss.profile``, ``ss.export``, ``ss.load``) and their types
(``ss.SNN``, ``ss.ConvertConfig``...). This file is the ``spikeshield`` package itself: the
repository's top level is fixed (``compiler/``, ``frontends/``, ``backends/``, ``runtime/``), so
``setup.py`` maps the package here. The names load on first use, so that importing a submodule
(the CLI, say) does not import torch through this file.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["SNN", "Accuracy", "ConvertConfig", "EnergyProfile", "Finetuned", "Pruned",
           "Robustness", "accuracy", "batches", "convert", "evaluate", "export", "finetune", "load",
           "profile", "prune"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("spikeshield.compiler.driver.api"), name)
    if name == "__version__":
        from importlib.metadata import version

        return version("spikeshield")
    raise AttributeError(f"module 'spikeshield' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])
