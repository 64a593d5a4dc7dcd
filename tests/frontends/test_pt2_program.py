"""The program JSON torch's deserializer sees is rebuilt by spikeshield: every string field of a real
archive replaced by hostile text either loads (the text never reached code) or is refused in one
line, and nothing runs. The two routes that ran code before (checked by hand on 4b42d6f: both
tests marked ``old code ran`` created their marker file there) are closed by construction."""

import json
import zipfile

import pytest
import sympy
import torch

from spikeshield.compiler.ir.errors import ModelLoadError, SpikeshieldError
from spikeshield.frontends import pt2_archive
from spikeshield.frontends.pt2_archive import load_exported
from spikeshield.frontends.pt2_expressions import (
    ExpressionError,
    parse_expression,
    print_expression,
    reprint_expression,
)
from spikeshield.frontends.torch_module import from_pt2


class Dynamic(torch.nn.Module):
    """Conv, pooling, flatten and arithmetic on the batch size: many kinds of string field."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.fc = torch.nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        y = torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(y.view(y.size(0), -1))


@pytest.fixture(scope="module")
def dynamic_pt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt2") / "dynamic.pt2"
    program = torch.export.export(Dynamic().eval(), (torch.rand(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
    torch.export.save(program, path)
    return path


def rewrite_program(source, target, change, member=pt2_archive.MODEL_JSON) -> None:
    """Copy ``source`` to ``target`` with ``change(json_dict)`` applied to ``member``."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as out:
        for item in original.infolist():
            data = original.read(item.filename)
            if item.filename.endswith(member):
                content = json.loads(data)
                change(content)
                data = json.dumps(content).encode()
            out.writestr(item, data)


def string_paths(item, trail=()):
    """(path, value) of every string leaf and every dict key of a JSON value."""
    if isinstance(item, dict):
        for key, value in item.items():
            yield trail + (("key", key),), key
            yield from string_paths(value, trail + (key,))
    elif isinstance(item, list):
        for i, value in enumerate(item):
            yield from string_paths(value, trail + (i,))
    elif isinstance(item, str):
        yield trail, item


def set_at(content, path, value) -> None:
    *parents, last = path
    for step in parents:
        content = content[step]
    if isinstance(last, tuple):  # a dict key: rename it
        content[value] = content.pop(last[1])
    else:
        content[last] = value


def hostile_strings(marker, symbol: str) -> list[str]:
    """Texts that run ``marker.touch()`` if any evaluator, exec or code generator takes them."""
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return [
        code,
        f"{symbol} + eval({code!r})",  # a builtin passes a token filter as a 'symbol name'
        f"Symbol('{symbol}', integer=True) + {code}",
        f"True#\n)\n{code}\ndef _(*args):\n  (True",  # closes generated source: a statement
        f"x')\n{code}\n('",
    ]


JSON_MEMBERS = (pt2_archive.MODEL_JSON, pt2_archive.WEIGHTS_CONFIG, pt2_archive.CONSTANTS_CONFIG)


def test_every_string_field_of_a_real_program_is_inert(dynamic_pt2, tmp_path):
    """Each distinct field of each JSON member (by its path with list positions blurred) gets
    each hostile string."""
    fields = []
    with zipfile.ZipFile(dynamic_pt2) as z:
        for member in JSON_MEMBERS:
            name = next(n for n in z.namelist() if n.endswith(member))
            content = json.loads(z.read(name))
            if member == pt2_archive.MODEL_JSON:
                symbol = next(iter(content["range_constraints"]))
            seen = set()
            for path, _ in string_paths(content):
                shape = tuple("[]" if isinstance(step, int) else step for step in path)
                if shape not in seen:
                    seen.add(shape)
                    fields.append((member, path))
    assert len(fields) > 35  # names, targets, specs, expressions, metadata, versions, keys
    marker = tmp_path / "code-ran"
    loaded = refused = 0
    for i, (member, path) in enumerate(fields):
        for j, text in enumerate(hostile_strings(marker, symbol)):
            hostile = tmp_path / f"h{i}-{j}.pt2"
            rewrite_program(dynamic_pt2, hostile, lambda c, p=path, t=text: set_at(c, p, t),
                            member)
            try:
                graph = from_pt2(hostile)
                graph.validate()
                loaded += 1
            except SpikeshieldError as err:
                assert "\n" not in str(err).strip(), (path, str(err)[:300])
                refused += 1
            assert not marker.exists(), f"code ran from {member} field {path} with {text!r}"
            hostile.unlink()
    assert refused > loaded > 0  # metadata fields are dropped (load); the rest is refused


def test_guards_code_never_reaches_exec(dynamic_pt2, tmp_path):
    """Old code ran: torch pastes each guard into a function's source, and a guard with newlines
    closes it and runs a statement at module level when ``module()`` is called."""
    marker = tmp_path / "code-ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    guard = f"True#\n)\n{code}\ndef _(*args):\n  (True"
    hostile = tmp_path / "guards.pt2"
    rewrite_program(dynamic_pt2, hostile, lambda c: c.__setitem__("guards_code", [guard]))
    from_pt2(hostile)  # lowers program.module(), where torch would exec the guards
    program = load_exported(hostile)
    program.module()(torch.rand(3, 1, 8, 8))
    assert not marker.exists()
    assert program._guards_code == []  # dropped: spikeshield needs no guards


def test_a_builtin_passed_off_as_a_symbol_never_reaches_sympy(dynamic_pt2, tmp_path):
    """Old code ran: a token filter admitted any lower-case word, so ``eval`` passed as a symbol
    name, and sympy's parser called it."""
    marker = tmp_path / "code-ran"

    def inject(content):
        sizes = content["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        symbolic = next(s for s in sizes if "as_expr" in s)["as_expr"]
        code = f"__import__('pathlib').Path({str(marker)!r}).touch() or 0"
        spelled = "+".join(f"chr({ord(c)})" for c in code)  # no string literal, no attribute
        symbolic["expr_str"] = f"s77 + 0*eval({spelled})"

    hostile = tmp_path / "eval.pt2"
    rewrite_program(dynamic_pt2, hostile, inject)
    with pytest.raises(ModelLoadError, match="is not shape arithmetic"):
        load_exported(hostile)
    assert not marker.exists()


SYMBOLS = frozenset({"s77", "s0", "u3"})
GENUINE = [
    "Symbol('s77', positive=True, integer=True)",
    "Mul(Integer(32), Symbol('s77', positive=True, integer=True))",
    ("Add(FloorDiv(Symbol('s77', positive=True, integer=True), Integer(3)), "
    "Mod(Symbol('s77', positive=True, integer=True), Integer(5)), "
    "Max(Integer(7), Symbol('s77', positive=True, integer=True)))"),
    "Add(Symbol('s77', positive=True, integer=True), Integer(-1))",
    "Eq(Mod(s0, 2), 0)",
    "GreaterThan(Symbol('u3', integer=True), Integer(0))",  # a runtime assertion's srepr
    "s0 + 2*u3 - 1",
    "s0**2",
]


@pytest.mark.parametrize("text", GENUINE)
def test_genuine_expressions_mean_the_same_after_the_round_trip(text):
    functions = torch.utils._sympy.functions
    local = {name: getattr(functions, name) for name in ("FloorDiv", "Mod", "PythonMod")}
    printed = reprint_expression(text, SYMBOLS)
    assert sympy.sympify(printed, locals=local) == sympy.sympify(text, locals=local)
    assert reprint_expression(printed, SYMBOLS) == printed  # the printer stays inside the grammar


@pytest.mark.parametrize("text, why", [
    ("eval('1')", "'eval' is not one of the shape functions"),
    ("s0 + chr(65)", "'chr' is not one of the shape functions"),
    ("open", "'open' is not a shape symbol"),
    ("s9", "'s9' is not a shape symbol the program declares"),
    ("s0.__class__", "unexpected '.__class__'"),
    ("s0+0*10**10**10", "unexpected '**'"),
    ("10**64", "a power above"),
    ("Integer(" + "9" * 30 + ")", "an integer beyond"),
    ("Symbol('s0', __import__=True)", "symbol assumption"),
    ("(" * 200 + "s0" + ")" * 200, "levels of nesting"),
    ("Add(s0)", "Add takes 2 to 64 arguments"),
    ("s0 @ 2", "unexpected '@ 2'"),
    ("s0; 1", "unexpected '; 1'"),
    ("", "not a string of 1 to"),
])
def test_anything_outside_the_grammar_is_refused(text, why):
    with pytest.raises(ExpressionError) as err:
        parse_expression(text, SYMBOLS)
    assert why in str(err.value)


@pytest.mark.parametrize("text, printed", [
    ("Max(s0, 3) + s0*u3", "Add(Max(s0, Integer(3)), Mul(s0, u3))"),
    ("(s0 // 2) % 3", "Mod(FloorDiv(s0, Integer(2)), Integer(3))"),  # torch's integer division
    ("-s0 - -2", "Add(Mul(Integer(-1), s0), Mul(Integer(-1), Integer(-2)))"),
])
def test_the_printer_names_only_its_own_constructors(text, printed):
    assert print_expression(parse_expression(text, SYMBOLS)) == printed


def test_the_node_count_is_bounded_before_torch_deserialises(dynamic_pt2, tmp_path, monkeypatch):
    """Old code deserialised and lowered 20,000 dead nodes (164 s) before any bound applied."""
    import copy

    from spikeshield.compiler.ir.limits import NODES

    def pad(content):
        nodes = content["graph_module"]["graph"]["nodes"]
        nodes.extend(copy.deepcopy(nodes[-1]) for _ in range(50))

    hostile = tmp_path / "many.pt2"
    rewrite_program(dynamic_pt2, hostile, pad)
    monkeypatch.setenv(NODES.env, "40")
    with pytest.raises(ModelLoadError, match="the exported graph has .* nodes .limit 40."):
        load_exported(hostile)


def test_a_genuine_program_with_runtime_assertions_loads_as_torch_loads_it(tmp_path):
    """Runtime assertions carry their message as a string argument with spaces and quotes, and
    their conditions in sympy's printed names (GreaterThan, ...): both are genuine and must load."""
    class Checked(torch.nn.Module):
        def forward(self, x):
            n = x.sum().long().item()
            torch._check(n >= 0)
            torch._check(n <= 100)
            return torch.nn.functional.gelu(x, approximate="tanh") * 2 + n

    path = tmp_path / "checked.pt2"
    torch.export.save(torch.export.export(Checked(), (torch.rand(4, 3),)), path)
    x = torch.rand(4, 3) * 0.1
    assert torch.equal(load_exported(path).module()(x), torch.export.load(str(path)).module()(x))
