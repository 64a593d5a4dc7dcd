"""How a graph is run: the one record of its run settings, read through one accessor.

The settings live in ``graph.meta`` under the keys spikeshield has always written (``timesteps``,
``encoding``, ``input_range``), so files stay byte-identical; :meth:`RunSpec.of` is the only reader
and validates what a file says, :meth:`RunSpec.record` the only writer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from spikeshield.compiler.ir.errors import IRValidationError

ENCODINGS = ("direct", "poisson")
READOUTS = ("mean",)


@dataclass(frozen=True)
class RunSpec:
    """``timesteps``: steps T the graph was compiled for (0: none recorded, an ANN graph).
    ``encoding``: ``direct`` feeds the analog input at every step, ``poisson`` rate-codes it.
    ``input_range``: the ``(low, high)`` values the input may take (pixels in [0, 1] for
    spikeshield models), or None when the graph declares none (graphs from other tools).
    ``readout``: ``mean``, the output node's value averaged over the T steps (the logits).
    ``normalization``: the per-channel ``(mean, std)`` the user's data arrives normalised by (the
    graph takes the pixels and normalises them itself); None when the data arrives as pixels."""

    timesteps: int = 0
    encoding: str = "direct"
    input_range: tuple[float, float] | None = None
    readout: str = "mean"
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @classmethod
    def of(cls, meta: Any) -> RunSpec:
        """The run settings a graph's ``meta`` records, checked (a file may say anything)."""
        if not isinstance(meta, dict):
            raise IRValidationError(f"graph metadata must be a mapping, got {type(meta).__name__}")
        steps = meta.get("timesteps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise IRValidationError(f"graph metadata 'timesteps' must be a whole number >= 0, got "
                                    f"{steps!r}")
        encoding = _choice(meta, "encoding", ENCODINGS)
        bounds = meta.get("input_range")
        if bounds is not None and not (
                isinstance(bounds, (list, tuple)) and len(bounds) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                        and math.isfinite(b) for b in bounds) and bounds[0] < bounds[1]):
            raise IRValidationError(f"graph metadata 'input_range' must be [low, high] with "
                                    f"low < high, got {bounds!r}")
        readout = _choice(meta, "readout", READOUTS)
        norm = meta.get("input_normalization")
        if norm is not None and not (
                isinstance(norm, (list, tuple)) and len(norm) == 2
                and all(isinstance(part, (list, tuple)) and 0 < len(part) <= 4096
                        and len(part) == len(norm[0]) for part in norm)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v) for part in norm for v in part)
                and all(v > 0 for v in norm[1])):
            raise IRValidationError("graph metadata 'input_normalization' must be [mean, std], one "
                                    "finite value per channel each, std > 0; got "
                                    f"{str(norm)[:120]}")
        normalization = None if norm is None else (tuple(float(v) for v in norm[0]),
                                                   tuple(float(v) for v in norm[1]))
        return cls(steps, encoding, None if bounds is None else (float(bounds[0]),
                                                                 float(bounds[1])), readout,
                   normalization)

    def record(self, meta: dict) -> None:
        """Write these settings into a graph's ``meta`` (the keys ``of`` reads)."""
        meta["timesteps"] = self.timesteps
        meta["encoding"] = self.encoding
        if self.input_range is not None:
            meta["input_range"] = [float(self.input_range[0]), float(self.input_range[1])]
        if self.normalization is not None:
            meta["input_normalization"] = [list(map(float, self.normalization[0])),
                                           list(map(float, self.normalization[1]))]


def _choice(meta: dict, key: str, allowed: tuple[str, ...]) -> str:
    """``meta[key]`` (default: the first allowed value), refused unless it is one of ``allowed``."""
    value = meta.get(key, allowed[0])
    if value not in allowed:
        raise IRValidationError(f"graph metadata {key!r} must be one of {', '.join(allowed)}, "
                                f"got {value!r}")
    return value
