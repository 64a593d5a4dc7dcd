"""Base class and registry of IR ops."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, TypeVar

import torch

from spikeshield.compiler.ir.errors import IRValidationError

Shape = tuple[int, ...]

OPS: dict[str, type[Op]] = {}

OpT = TypeVar("OpT", bound="type[Op]")


def register_op(kind: str) -> Callable[[OpT], OpT]:
    """Class decorator: make an op known to serialization, dispatch and the verifier under ``kind``."""

    def wrap(cls: OpT) -> OpT:
        if kind in OPS:
            raise ValueError(f"op kind {kind!r} registered twice ({OPS[kind].__name__}, {cls.__name__})")
        cls.kind = kind
        OPS[kind] = cls
        return cls

    return wrap


def op_class(kind: str) -> type[Op]:
    """The op class registered under ``kind``; a typed error listing known kinds otherwise."""
    try:
        return OPS[kind]
    except KeyError:
        raise IRValidationError(
            f"unknown op kind {kind!r}; known kinds: {', '.join(sorted(OPS))}"
        ) from None


@dataclasses.dataclass(frozen=True)
class OpCoverage:
    """What one table keyed by op kind (a backend's converters, the executor's kernels, ...) does
    with each registered kind: ``handled``, or named in ``not_supported`` with the reason a user
    is shown. A registered kind in neither is a gap (a test fails on it)."""

    table: str
    handled: frozenset[str]
    not_supported: dict[str, str] = dataclasses.field(default_factory=dict)

    def missing(self) -> list[str]:
        return sorted(set(OPS) - self.handled - set(self.not_supported))


def kinds(classes: Any) -> frozenset[str]:
    """The kind names of an iterable of op classes."""
    return frozenset(cls.kind for cls in classes)


def tensor_field(optional: bool = False) -> Any:
    """Declare a dataclass field that holds a tensor (serialized to the tensor store, not JSON)."""
    if optional:
        return dataclasses.field(default=None, metadata={"tensor": True})
    return dataclasses.field(metadata={"tensor": True})


class Op:
    """One operation of the graph. Subclasses are dataclasses; tensors are ``tensor_field`` s.

    The value flowing into a node is the sum of the values on all its incoming edges.
    """

    kind: ClassVar[str] = ""
    # Traits: what the op is, so that no code spells out lists of op classes.
    synaptic: ClassVar[bool] = False  # has ``weight`` (and an optional connectivity ``mask``)
    neuron: ClassVar[bool] = False  # keeps a state across time steps (a membrane)
    pooling: ClassVar[bool] = False  # a fixed, weightless spatial reduction
    structural: ClassVar[bool] = False  # moves or joins values without computing new ones
    frozen_fields: ClassVar[tuple[str, ...]] = ()  # tensors never trained (statistics, masks)
    conversion: ClassVar[str] = "kept"  # what ANN-to-SNN conversion does with it (`spikeshield ops`)

    # ---- shape and validity -------------------------------------------------------------
    def infer_shape(self, in_shape: Shape) -> Shape:
        """Output shape for a batch-less input shape. Default: shape-preserving."""
        return in_shape

    def validate(self, in_shape: Shape) -> None:
        """Raise :class:`IRValidationError` if this op cannot consume ``in_shape``."""
        for name, value in self.tensors().items():
            if not torch.isfinite(value).all():
                raise IRValidationError(
                    f"{self.kind}.{name} holds non-finite values (NaN or inf); retrain or repair "
                    "the source model before compiling"
                )
        for name in self.attribute_names():
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise IRValidationError(f"{self.kind}.{name} is {value}, not a finite number; "
                                        "repair the source model before compiling")

    # ---- fields -------------------------------------------------------------------------
    @classmethod
    def tensor_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("tensor"))

    @classmethod
    def attribute_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("tensor"))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The op's tensors that are set (optional ones that are None are left out)."""
        out = {}
        for name in self.tensor_names():
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def attributes(self) -> dict[str, Any]:
        """JSON-serialisable attributes (tuples become lists)."""
        return {name: _jsonable(getattr(self, name)) for name in self.attribute_names()}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], attributes: dict[str, Any]) -> Op:
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.metadata.get("tensor"):
                kwargs[f.name] = tensors.get(f.name)
            elif f.name in attributes:
                value = attributes[f.name]
                _check_attribute_type(cls, f.name, f.default, value)
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Op:
        """A copy with some fields changed (tensors are shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def clone(self) -> Op:
        """A deep copy: tensors cloned."""
        return self.replace(**{k: v.detach().clone() for k, v in self.tensors().items()})

    def summary(self) -> str:
        """One-line human-readable description used by the text dump."""
        parts = [f"{k}={v}" for k, v in self.attributes().items()]
        parts += [f"{k}{list(v.shape)}" for k, v in self.tensors().items()]
        return f"{self.kind}(" + ", ".join(parts) + ")"


def _check_attribute_type(cls: type, name: str, default: Any, value: Any) -> None:
    """A stored attribute has the type of the field's default (a file may say anything)."""

    def number(v: Any, kind: type) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int)

    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, (int, float)):
        ok, want = number(value, type(default)), f"a {type(default).__name__}"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif isinstance(default, tuple) and default and all(isinstance(d, int) for d in default):
        ok = isinstance(value, (list, int)) and not isinstance(value, bool) and all(
            number(v, int) for v in (value if isinstance(value, list) else [value]))
        want = "a whole number or a list of them"
    else:
        return  # no default to compare with (e.g. shapes): the op's validate() checks it
    if not ok:
        raise IRValidationError(f"{cls.kind}.{name} must be {want}, got {value!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def require(condition: bool, message: str) -> None:
    """Raise :class:`IRValidationError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise IRValidationError(message)
