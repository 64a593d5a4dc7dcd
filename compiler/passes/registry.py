"""The pass registry: every pass module registers its function here with :func:`register_pass`.

A pass is a function ``pass_fn(graph, **params) -> PassResult`` that never mutates its input graph.
Passes import this module, never the manager (so that no import runs in a circle).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spikeshield.compiler.ir.graph import Graph


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    info: dict[str, Any] = field(default_factory=dict)


PassFn = Callable[..., PassResult]
PASSES: dict[str, PassFn] = {}


def register_pass(name: str) -> Callable[[PassFn], PassFn]:
    def wrap(fn: PassFn) -> PassFn:
        if name in PASSES:
            raise ValueError(f"pass {name!r} registered twice")
        PASSES[name] = fn
        fn.pass_name = name  # type: ignore[attr-defined]
        return fn

    return wrap


def register_all() -> None:
    """Import every pass module of ``compiler.passes`` (each registers itself on import)."""
    import spikeshield.compiler.passes as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("registry", "manager"):
            importlib.import_module(f"{package.__name__}.{module.name}")
