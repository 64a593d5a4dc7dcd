"""The pass manager: runs a named list of passes, verifies the graph after each one, and records
each pass's name, parameters, duration and what it reported; an error names the passes that had
already run. Passes register themselves (``compiler.passes.registry``); the manager imports every
module of the package once so that they have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from spikeshield.compiler.ir.errors import PassError, SpikeshieldError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.passes.registry import PASSES, register_all


@dataclass
class PassRecord:
    name: str
    params: dict[str, Any]
    seconds: float
    changed: bool
    info: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params,
            "seconds": round(self.seconds, 4),
            "changed": self.changed,
            "info": self.info,
        }


def _describe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return list(value)
    return getattr(value, "description", None) or type(value).__name__


class PassManager:
    """Runs passes by name; ``verify`` re-validates the graph after every pass."""

    def __init__(self, verify: bool = True) -> None:
        self.verify = verify
        self.records: list[PassRecord] = []

    def run(self, graph: Graph, pipeline: list[tuple[str, dict[str, Any]]]) -> Graph:
        for name, params in pipeline:
            graph = self.run_one(graph, name, **params)
        return graph

    def run_one(self, graph: Graph, name: str, **params: Any) -> Graph:
        register_all()

        if name not in PASSES:
            raise PassError(f"unknown pass {name!r}; known passes: {', '.join(sorted(PASSES))}")
        start = time.perf_counter()
        try:
            result = PASSES[name](graph, **params)
            if self.verify:
                result.graph.validate()
        except SpikeshieldError as err:
            done = ", ".join(r.name for r in self.records) or "none"
            raise type(err)(f"pass {name!r} failed: {err} (passes already run: {done})") from None
        seconds = time.perf_counter() - start
        described = {k: _describe(v) for k, v in params.items()}
        self.records.append(PassRecord(name, described, seconds, result.changed, result.info))
        history = result.graph.meta.setdefault("passes", [])
        history.append({"name": name, "params": described})
        return result.graph
