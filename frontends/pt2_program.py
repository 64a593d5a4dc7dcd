"""The program JSON of a ``.pt2`` (``models/model.json``), rebuilt before torch's deserializer sees it.

torch 2.13's deserializer (``torch._export.serde.serialize``) and ``ExportedProgram.module()`` turn
these fields of the JSON into code or objects; each has a rule here, and a test feeds every string
field of a real archive through hostile strings (``tests/frontends/test_pt2_program.py``):

================================  ========================================  =====================
field                             what torch does with it                    what spikeshield does
================================  ========================================  =====================
``expr_str`` (sizes, strides,     ``sympy.sympify`` = Python ``eval``        parsed by our grammar
sym values)                                                                  and printed again
``guards_code``                   pasted into Python source and ``exec``'d  dropped
                                  by ``module()``
node and graph ``metadata``       ``stack_trace`` into generated source,    dropped (nothing here
                                  ``source_fn_stack`` attribute walks,      reads it)
                                  ``custom``/``from_node`` JSON objects
node ``target``                   attribute walk from ``torch``/            ATen operators and
                                  ``operator``/``math``; ``#`` extension    symbolic-size
                                  handlers                                  arithmetic only
``as_operator`` arguments         the same attribute walk                   ATen operators only
``as_graph``, ``as_custom_obj``   sub-programs, TorchScript objects         refused
``in_spec`` / ``out_spec``        ``treespec_loads``: registered pytree     tuples, lists, dicts
                                  types and their contexts                  and leaves only,
                                                                            re-encoded
``treespec_namedtuple_fields``    namedtuple classes made at load time      refused unless empty
parameter, buffer, constant and   ``setattr`` paths in ``module()``         dotted identifiers, no
module names (``fqn``)                                                      dunder parts
string arguments (``as_string``)  values passed to the op; code generation   any text (short),
                                  prints them with ``repr``                 passed on as a value
every other string                enum names, node and tensor names        a plain charset (no
                                                                            quotes, brackets,
                                                                            spaces or newlines)
================================  ========================================  =====================

So every string torch receives is either printed by :mod:`.pt2_expressions`, re-encoded from a
checked tree, or made only of characters that cannot close a string or a statement.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from spikeshield.compiler.ir.errors import ModelLoadError
from spikeshield.compiler.ir.limits import NODES
from spikeshield.frontends.pt2_expressions import SYMBOL_NAME, ExpressionError, reprint_expression

_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
_SYMBOLIC_TARGETS = frozenset({f"_operator.{name}" for name in (
    "getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub", "floordiv",
    "mod", "pow", "truediv", "and_", "or_")} | {"math.trunc"} | {f"torch.sym_{name}" for name in (
    "not", "int", "float", "ite", "max", "min", "sqrt")})
_PLAIN = re.compile(r"[A-Za-z0-9_.:+\-,>]{0,256}")
DOTTED_NAME = re.compile(r"((?!__)[A-Za-z0-9_]{1,128}(\.(?!__)[A-Za-z0-9_]{1,128}){0,32})?")
_DOTTED_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name",
                          "custom_obj_name", "fqn"})
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict",
                             "collections.OrderedDict"})
_MAX_DEPTH = 200


def _refuse(path: Path, what: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: {what}; spikeshield reads .pt2 files that torch.export.save "
                          "wrote for one exported program")


def _where(trail: tuple[str, ...]) -> str:
    return "/".join(trail[-4:]) or "the top level"


class _Rebuilder:
    def __init__(self, path: Path, symbols: frozenset[str]) -> None:
        self.path, self.symbols = path, symbols

    def plain(self, text: str, trail: tuple[str, ...]) -> str:
        if not _PLAIN.fullmatch(text):
            raise _refuse(self.path, f"{_where(trail)} holds {text[:40]!r}, which is not a plain "
                          "name (torch could turn it into code)")
        return text

    def value(self, item: Any, trail: tuple[str, ...]) -> Any:
        if len(trail) > _MAX_DEPTH:
            raise _refuse(self.path, f"the program nests deeper than {_MAX_DEPTH} levels")
        if isinstance(item, dict):
            return self.mapping(item, trail)
        if isinstance(item, list):
            return [self.value(v, trail + ("[]",)) for v in item]
        if isinstance(item, str):
            return self.plain(item, trail)
        if item is None or isinstance(item, (bool, int, float)):
            return item
        raise _refuse(self.path, f"{_where(trail)} holds a {type(item).__name__}")

    def mapping(self, item: dict, trail: tuple[str, ...]) -> dict:
        out = {}
        for key, value in item.items():
            here = trail + (self.plain(str(key), trail),)
            out[key] = self.field(key, value, item, here)
        return out

    def field(self, key: str, value: Any, parent: dict, trail: tuple[str, ...]) -> Any:
        if key in ("metadata", "guards_code"):
            return {} if key == "metadata" else []
        if key == "expr_str":
            try:
                return reprint_expression(value, self.symbols)
            except ExpressionError as err:
                raise _refuse(self.path, f"symbolic shape expression {str(value)[:60]!r} at "
                              f"{_where(trail)} is not shape arithmetic ({err})") from None
        if key in ("in_spec", "out_spec"):
            return self.treespec(value, trail)
        if key == "treespec_namedtuple_fields":
            if value not in ({}, None):
                raise _refuse(self.path, "the program's inputs or outputs are named tuples; "
                              "spikeshield compiles programs over tensors, tuples and dicts")
            return value
        if key in ("as_string", "as_strings"):
            return self.string_values(value, trail)
        if key in ("as_graph", "as_custom_obj"):
            raise _refuse(self.path, f"{_where(trail)} is a sub-program or TorchScript object; "
                          "spikeshield compiles plain ATen graphs")
        if key == "as_operator" or (key == "target" and "inputs" in parent):
            return self.target(value, trail, symbolic=key == "target")
        if key in _DOTTED_KEYS and isinstance(value, str) and not DOTTED_NAME.fullmatch(value):
            raise _refuse(self.path, f"{_where(trail)} names {value[:40]!r}, which is not a "
                          "dotted module path")
        return self.value(value, trail)

    def string_values(self, value: Any, trail: tuple[str, ...]) -> Any:
        """String arguments of an op (``gelu``'s ``'tanh'``, a runtime assertion's message):
        values, which torch passes to the op and its code generator prints with ``repr``, so
        any text is inert; only their type and length are checked."""
        texts = value if isinstance(value, list) else [value]
        if not all(isinstance(t, str) and len(t) <= 4096 for t in texts) or len(texts) > 4096:
            raise _refuse(self.path, f"{_where(trail)} is not a short string argument")
        return value

    def target(self, value: Any, trail: tuple[str, ...], symbolic: bool) -> str:
        allowed = isinstance(value, str) and (
            _ATEN_TARGET.fullmatch(value) or (symbolic and value in _SYMBOLIC_TARGETS))
        if not allowed:
            raise _refuse(self.path, f"graph node calls {str(value)[:80]!r}, which is not an ATen "
                          "operator (only ATen graphs are compiled)")
        return value

    def treespec(self, value: Any, trail: tuple[str, ...]) -> str:
        try:
            protocol, tree = json.loads(value) if isinstance(value, str) else (None, None)
        except (ValueError, TypeError, RecursionError):
            protocol, tree = None, None
        if protocol != 1:
            raise _refuse(self.path, f"{_where(trail)} is not a pytree spec of protocol 1")
        return json.dumps([1, self.spec_node(tree, trail, 0)])

    def spec_node(self, node: Any, trail: tuple[str, ...], depth: int) -> dict:
        if not isinstance(node, dict) or depth > 64 or set(node) != {
                "type", "context", "children_spec"}:
            raise _refuse(self.path, f"{_where(trail)} is not a pytree spec")
        kind, children = node["type"], node["children_spec"]
        if kind not in _TREESPEC_TYPES or not isinstance(children, list):
            raise _refuse(self.path, f"{_where(trail)} holds pytree type {str(kind)[:40]!r}; "
                          "spikeshield takes tensors in tuples, lists and dicts")
        context = node["context"]
        if context is not None:
            try:
                decoded = json.loads(context) if isinstance(context, str) else ()
            except (ValueError, RecursionError):
                decoded = ()
            keys_ok = decoded is None or (isinstance(decoded, list) and all(
                isinstance(k, (int, str)) and not isinstance(k, bool) for k in decoded))
            if not keys_ok:
                raise _refuse(self.path, f"{_where(trail)} has a pytree context that is not "
                              "null or a list of keys")
            for k in decoded or ():
                if isinstance(k, str):
                    self.plain(k, trail)
            context = json.dumps(decoded)
        return {"type": kind, "context": context,
                "children_spec": [self.spec_node(c, trail, depth + 1) for c in children]}


def declared_symbols(program: Any, path: Path) -> frozenset[str]:
    """The shape symbols the program declares: the keys of its ``range_constraints``."""
    constraints = program.get("range_constraints") if isinstance(program, dict) else None
    if constraints is None:
        return frozenset()
    if not isinstance(constraints, dict):
        raise _refuse(path, "range_constraints is not a mapping")
    for name in constraints:
        if not SYMBOL_NAME.fullmatch(name):
            raise _refuse(path, f"range_constraints declares {name[:40]!r}, which is not a shape "
                          "symbol name")
    return frozenset(constraints)


def rebuild_program(program: Any, path: Path) -> dict:
    """A copy of the program JSON in which every field torch turns into code or objects is
    re-made by spikeshield (see the module docstring), or a one-line :class:`ModelLoadError`."""
    if not isinstance(program, dict):
        raise _refuse(path, "models/model.json is not an object")
    graph = program.get("graph_module", {}).get("graph", {}) if isinstance(
        program.get("graph_module"), dict) else {}
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    # Before torch builds anything: deserialising and lowering take time in proportion to the
    # nodes, dead ones included.
    NODES.check(len(nodes) if isinstance(nodes, list) else 0, path, "the exported graph")
    return _Rebuilder(path, declared_symbols(program, path)).mapping(program, ())
