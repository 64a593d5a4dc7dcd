"""Symbolic shape expressions of a ``.pt2``, parsed by a grammar of our own and printed again.

torch's deserializer hands every ``expr_str`` of a program to ``sympy.sympify``, which evaluates it
as Python. A filter over tokens is not enough (a builtin such as ``eval`` is a valid name token),
so spikeshield never passes a string from the file on: it parses the expression with the small
grammar below into a tree, and hands torch the text :func:`print_expression` writes from that tree.
What reaches sympy is therefore built only from the constructor names listed in ``FUNCTIONS``,
integer literals, declared symbol names, and ``Symbol('<declared name>', <assumption>=True|False,
...)``.

The grammar (what ``torch.export.save`` writes is its function form, e.g.
``Add(FloorDiv(Symbol('s77', positive=True, integer=True), Integer(3)), Integer(1))``; the infix
operators ``+ - * // %`` and ``**`` are accepted as well)::

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "//" | "%") unary)*
    unary   := "-" unary | power
    power   := primary ("**" INT)?                  exponent 0..MAX_EXPONENT
    primary := INT | SYMBOL_NAME | "(" expr ")" | True | False
             | "Integer(" ["-"] INT ")"
             | "Symbol(" QUOTED_SYMBOL_NAME ("," ASSUMPTION "=" (True|False))* ")"
             | FUNCTION "(" expr ("," expr)* ")"     arity checked per function

A symbol must be one the program declares (a key of its ``range_constraints``); integers are
bounded in size, and so are the expression's length, node count and nesting depth, so that no
expression can ask sympy for unbounded work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LENGTH = 4096
MAX_NODES = 512
MAX_DEPTH = 300  # parser frames: about 60 levels of brackets or calls
MAX_EXPONENT = 64
MAX_INTEGER = 1 << 64
SYMBOL_NAME = re.compile(r"[a-z]{1,4}[0-9]{1,9}")
ASSUMPTIONS = ("integer", "positive", "nonnegative", "negative", "nonpositive", "real", "finite",
               "nonzero")
# Constructor name -> (fewest, most) arguments. sympy's own and torch's shape functions (the
# ones torch's deserializer offers under these names).
FUNCTIONS = {
    "Add": (2, 64), "Mul": (2, 64), "Pow": (2, 2), "Max": (2, 64), "Min": (2, 64),
    "FloorDiv": (2, 2), "Mod": (2, 2), "PythonMod": (2, 2), "CeilDiv": (2, 2), "CleanDiv": (2, 2),
    "Eq": (2, 2), "Ne": (2, 2), "Lt": (2, 2), "Le": (2, 2), "Gt": (2, 2), "Ge": (2, 2),
    # sympy's printed names of the same relations (what srepr writes for runtime assertions)
    "Equality": (2, 2), "Unequality": (2, 2), "StrictLessThan": (2, 2), "LessThan": (2, 2),
    "StrictGreaterThan": (2, 2), "GreaterThan": (2, 2),
    "And": (2, 64), "Or": (2, 64), "Not": (1, 1),
}
_TOKEN = re.compile(r"\s*(?:(?P<int>[0-9]{1,40})|(?P<name>[A-Za-z_][A-Za-z0-9_]{0,39})"
                    r"|(?P<quoted>'[a-z0-9]{1,16}'|\"[a-z0-9]{1,16}\")"
                    r"|(?P<op>\*\*|//|[-+*%(),=]))")


class ExpressionError(ValueError):
    """An expression outside the grammar; the message says what was found where."""


@dataclass(frozen=True)
class Expr:
    """One node of a parsed expression: ``kind`` is ``int`` (value in ``value``), ``bool``,
    ``symbol`` (name in ``value``, assumptions in ``assumptions``) or a ``FUNCTIONS`` name."""

    kind: str
    value: int | str | bool | None = None
    args: tuple[Expr, ...] = ()
    assumptions: tuple[tuple[str, bool], ...] = ()


def _tokens(text: str) -> list[tuple[str, str]]:
    out, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if match is None:
            rest = text[at:].lstrip()
            raise ExpressionError(f"unexpected {rest[:12]!r} at character {len(text) - len(rest)}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        at = match.end()
    return out


class _Parser:
    def __init__(self, text: str, symbols: frozenset[str]) -> None:
        if not isinstance(text, str) or not 0 < len(text) <= MAX_LENGTH:
            raise ExpressionError(f"not a string of 1 to {MAX_LENGTH} characters")
        self.tokens, self.at, self.symbols, self.nodes = _tokens(text), 0, symbols, 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        found = self.peek()
        if found[0] != kind or (value is not None and found[1] != value):
            raise ExpressionError(f"expected {value or kind}, found {found[1] or 'the end'!r}")
        self.at += 1
        return found[1]

    def node(self, kind: str, value=None, args=(), assumptions=(), depth: int = 0) -> Expr:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ExpressionError(f"more than {MAX_NODES} terms")
        return Expr(kind, value, tuple(args), tuple(assumptions))

    def parse(self) -> Expr:
        tree = self.expr(0)
        if self.peek()[0] != "end":
            raise ExpressionError(f"unexpected {self.peek()[1]!r} after the expression")
        return tree

    def expr(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise ExpressionError(f"more than {MAX_DEPTH // 5} levels of nesting")
        left = self.term(depth + 1)
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take("op")
            right = self.term(depth + 1)
            if op == "-":
                right = self.node("Mul", args=(self.integer(-1, depth), right), depth=depth)
            left = self.node("Add", args=(left, right), depth=depth)
        return left

    def term(self, depth: int) -> Expr:
        left = self.unary(depth + 1)
        names = {"*": "Mul", "//": "FloorDiv", "%": "Mod"}
        while self.peek()[0] == "op" and self.peek()[1] in names:
            kind = names[self.take("op")]
            left = self.node(kind, args=(left, self.unary(depth + 1)), depth=depth)
        return left

    def unary(self, depth: int) -> Expr:
        if self.peek() == ("op", "-"):
            self.take("op")
            operand = self.unary(depth + 1)
            if operand.kind == "int":
                return self.integer(-operand.value, depth)
            return self.node("Mul", args=(self.integer(-1, depth), operand), depth=depth)
        return self.power(depth + 1)

    def power(self, depth: int) -> Expr:
        base = self.primary(depth + 1)
        if self.peek() == ("op", "**"):
            self.take("op")
            exponent = self.integer(int(self.take("int")), depth)
            return self.pow(base, exponent, depth)
        return base

    def pow(self, base: Expr, exponent: Expr, depth: int) -> Expr:
        if exponent.kind != "int" or not 0 <= exponent.value <= MAX_EXPONENT:
            raise ExpressionError(f"an exponent must be a whole number from 0 to {MAX_EXPONENT}")
        if base.kind == "int" and abs(base.value) ** exponent.value > MAX_INTEGER:
            raise ExpressionError(f"a power above {MAX_INTEGER:,}")
        return self.node("Pow", args=(base, exponent), depth=depth)

    def integer(self, value: int, depth: int) -> Expr:
        if abs(value) > MAX_INTEGER:
            raise ExpressionError(f"an integer beyond ±{MAX_INTEGER:,}")
        return self.node("int", value, depth=depth)

    def symbol(self, name: str, depth: int, assumptions=()) -> Expr:
        if not SYMBOL_NAME.fullmatch(name) or name not in self.symbols:
            raise ExpressionError(f"{name[:40]!r} is not a shape symbol the program declares "
                                  f"({', '.join(sorted(self.symbols)[:5]) or 'none'})")
        return self.node("symbol", name, assumptions=assumptions, depth=depth)

    def primary(self, depth: int) -> Expr:
        kind, value = self.peek()
        if kind == "int":
            self.take("int")
            return self.integer(int(value), depth)
        if (kind, value) == ("op", "("):
            self.take("op")
            inner = self.expr(depth + 1)
            self.take("op", ")")
            return inner
        if kind != "name":
            raise ExpressionError(f"unexpected {value or 'end'!r}")
        self.take("name")
        if value in ("True", "False"):
            return self.node("bool", value == "True", depth=depth)
        if self.peek() != ("op", "("):
            return self.symbol(value, depth)
        self.take("op")
        if value == "Integer":
            negative = self.peek() == ("op", "-") and self.take("op") == "-"
            number = int(self.take("int"))
            self.take("op", ")")
            return self.integer(-number if negative else number, depth)
        if value == "Symbol":
            return self.symbol_call(depth)
        if value not in FUNCTIONS:
            raise ExpressionError(f"{value[:40]!r} is not one of the shape functions "
                                  f"({', '.join(FUNCTIONS)})")
        args = [self.expr(depth + 1)]
        while self.peek() == ("op", ","):
            self.take("op")
            args.append(self.expr(depth + 1))
        self.take("op", ")")
        fewest, most = FUNCTIONS[value]
        if not fewest <= len(args) <= most:
            raise ExpressionError(f"{value} takes {fewest} to {most} arguments, not {len(args)}")
        if value == "Pow":
            return self.pow(args[0], args[1], depth)
        return self.node(value, args=args, depth=depth)

    def symbol_call(self, depth: int) -> Expr:
        name = self.take("quoted")[1:-1]
        assumptions: dict[str, bool] = {}
        while self.peek() == ("op", ","):
            self.take("op")
            key = self.take("name")
            self.take("op", "=")
            flag = self.take("name")
            if key not in ASSUMPTIONS or flag not in ("True", "False") or key in assumptions:
                raise ExpressionError(f"symbol assumption {key}={flag} is not one of "
                                      f"{', '.join(ASSUMPTIONS)} set once to True or False")
            assumptions[key] = flag == "True"
        self.take("op", ")")
        return self.symbol(name, depth, tuple(assumptions.items()))


def parse_expression(text: str, symbols: frozenset[str]) -> Expr:
    """The tree of ``text``; :class:`ExpressionError` for anything outside the grammar or bounds,
    or for a symbol not in ``symbols``."""
    return _Parser(text, symbols).parse()


def print_expression(tree: Expr) -> str:
    """``tree`` in sympy's constructor form, which ``sympify`` reads back to the same expression.
    Every name in the text comes from this module, never from the file."""
    if tree.kind == "int":
        return f"Integer({int(tree.value)})"
    if tree.kind == "bool":
        return "True" if tree.value else "False"
    if tree.kind == "symbol":
        name = str(tree.value)
        if not SYMBOL_NAME.fullmatch(name):  # the parser never builds one; a tree made by hand may
            raise ExpressionError(f"{name[:40]!r} is not a shape symbol name")
        if not tree.assumptions:  # a bare name: torch resolves it to the symbol made earlier
            return name
        flags = "".join(f", {key}={bool(flag)}" for key, flag in tree.assumptions
                        if key in ASSUMPTIONS)
        return f"Symbol('{name}'{flags})"
    if tree.kind not in FUNCTIONS:
        raise ExpressionError(f"cannot print a {tree.kind!r} node")
    return f"{tree.kind}({', '.join(print_expression(arg) for arg in tree.args)})"


def reprint_expression(text: str, symbols: frozenset[str]) -> str:
    """``text`` parsed and printed again: the only form of a file's expression torch ever sees."""
    return print_expression(parse_expression(text, symbols))
