"""The .pt2 reader: genuine archives load exactly as torch.export.load loads them; crafted ones that
make torch's loader run code, read the wrong bytes or allocate gigabytes are refused first."""

import io
import json
import zipfile

import pytest
import torch
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.ir.errors import ModelLoadError
from spikeshield.compiler.ir.limits import TENSOR_BYTES, TENSOR_ELEMENTS
from spikeshield.frontends import pt2_archive
from spikeshield.frontends.pt2_archive import MEMBERS_TORCH_READS, load_exported

runner = CliRunner()


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a hostile file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled_payload(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": Payload(str(marker))}, buffer)
    return buffer.getvalue()


def rewrite(source, target, edit=None, add=()) -> None:
    """Copy the archive ``source`` to ``target``; ``edit(name, bytes)`` may change a member's
    bytes (name relative to the root folder); ``add`` appends (name, bytes) members."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as out:
        root = original.namelist()[0].split("/")[0]
        for item in original.infolist():
            data = original.read(item.filename)
            rel = item.filename.split("/", 1)[1]
            out.writestr(item, edit(rel, data) if edit else data)
        for name, data in add:
            out.writestr(f"{root}/{name}", data)


def edit_json(member: str, change):
    def edit(name, data):
        if name != member:
            return data
        content = json.loads(data)
        change(content)
        return json.dumps(content).encode()

    return edit


@pytest.fixture(scope="module")
def pt2(trained_lenet):
    return trained_lenet[1]


class WithConstant(torch.nn.Module):
    """A parameter, a buffer and a lifted tensor constant: every kind of payload."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("shift", torch.full((4,), 0.5))
        self.scale = torch.tensor([2.0, 1.0, 0.5])

    def forward(self, x):
        return self.fc(x - self.shift) * self.scale


@pytest.fixture(scope="module")
def pt2_with_constant(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt2") / "constant.pt2"
    torch.export.save(torch.export.export(WithConstant(), (torch.rand(2, 4),)), path)
    return path


def test_a_genuine_archive_loads_as_torch_export_load_loads_it(pt2):
    ours, theirs = load_exported(pt2), torch.export.load(str(pt2))
    assert str(ours.graph) == str(theirs.graph)
    assert ours.state_dict.keys() == theirs.state_dict.keys()
    for key, value in theirs.state_dict.items():
        assert torch.equal(ours.state_dict[key], value)
        assert type(ours.state_dict[key]) is type(value)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(ours.module()(x), theirs.module()(x))


def test_a_program_with_constants_loads_as_torch_loads_it(pt2_with_constant):
    ours, theirs = load_exported(pt2_with_constant), torch.export.load(str(pt2_with_constant))
    assert ours.constants.keys() == theirs.constants.keys() and ours.constants
    x = torch.rand(2, 4)
    assert torch.equal(ours.module()(x), theirs.module()(x))


def test_torch_reads_exactly_the_members_this_reader_checks(pt2_with_constant, monkeypatch):
    """Spy on torch.export.load: if a torch upgrade makes it read another kind of member, the
    reader must learn to check that one too."""
    from torch.export.pt2_archive import _package

    read = set()

    def kind(name: str) -> str:
        for folder in ("data/weights/", "data/constants/"):
            if name.startswith(folder) and not name.endswith(".json"):
                return folder + "<payload>"
        return name

    original_bytes = _package.PT2ArchiveReader.read_bytes
    monkeypatch.setattr(_package.PT2ArchiveReader, "read_bytes",
                        lambda self, name: read.add(kind(name)) or original_bytes(self, name))

    class SpyFile:
        def __init__(self, real):
            self.real = real

        def __getattr__(self, attr):
            member = getattr(self.real, attr)
            if attr in ("get_record_size", "get_storage_from_record", "get_record"):
                return lambda name, *a: read.add(kind(name)) or member(name, *a)
            return member

    original_init = _package.PT2ArchiveReader.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.archive_file = SpyFile(self.archive_file)

    monkeypatch.setattr(_package.PT2ArchiveReader, "__init__", init)
    torch.export.load(str(pt2_with_constant))
    assert read == MEMBERS_TORCH_READS


def saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("layout", ["root", "folder"])
def test_a_legacy_layout_pickle_is_refused_and_never_runs(pt2, tmp_path, layout):
    """torch.export.load falls back to the legacy reader, which unpickles these with
    weights_only=False (checked by hand: the payload ran on torch 2.13)."""
    from torch._export.serde.schema import SCHEMA_VERSION

    marker = tmp_path / "code-ran"
    hostile = tmp_path / "legacy.pt2"
    if layout == "folder":
        rewrite(pt2, hostile, add=[("serialized_constants.pt", pickled_payload(marker))])
    else:
        with zipfile.ZipFile(pt2) as original:
            program = original.read(next(n for n in original.namelist()
                                         if n.endswith(pt2_archive.MODEL_JSON)))
        with zipfile.ZipFile(hostile, "w") as z:
            z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
            z.writestr("serialized_exported_program.json", program)
            z.writestr("serialized_state_dict.pt", saved({}))
            z.writestr("serialized_constants.pt", pickled_payload(marker))
            z.writestr("serialized_example_inputs.pt", saved(((torch.rand(1, 1, 28, 28),), {})))
    result = runner.invoke(app, ["inspect", str(hostile)])
    assert result.exit_code == 2 and "legacy layout" in result.output
    assert not marker.exists()


def test_a_payload_declared_raw_and_pickled_is_refused(pt2, tmp_path):
    marker = tmp_path / "code-ran"

    def declare_twice(config):
        meta = next(iter(config["config"].values()))
        config["config"]["copy"] = {**meta, "use_pickle": True}

    def edit(name, data):
        if name == "data/weights/weight_0":
            return pickled_payload(marker)
        return edit_json(pt2_archive.WEIGHTS_CONFIG, declare_twice)(name, data)

    hostile = tmp_path / "twice.pt2"
    rewrite(pt2, hostile, edit)
    result = runner.invoke(app, ["inspect", str(hostile)])
    assert result.exit_code == 2 and "declared both as raw bytes and as a pickle" in result.output
    assert not marker.exists()


def test_a_pickled_sample_input_that_would_run_code_is_refused(pt2, tmp_path):
    marker = tmp_path / "code-ran"
    hostile = tmp_path / "hostile.pt2"
    rewrite(pt2, hostile, lambda n, d: pickled_payload(marker) if n == pt2_archive.SAMPLE_INPUTS
            else d)
    result = runner.invoke(app, ["inspect", str(hostile)])
    assert result.exit_code == 2 and "is not plain tensors" in result.output
    assert "GLOBAL" in result.output  # names what it refused to import
    assert not marker.exists()


def test_a_symbolic_expression_that_is_python_code_is_refused(tmp_path):
    """torch's deserializer passes these strings to sympy.sympify, which evaluates them."""
    class Flat(torch.nn.Module):
        def forward(self, x):
            return x.view(x.size(0), -1)

    program = torch.export.export(Flat(), (torch.rand(2, 3),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    genuine = tmp_path / "dynamic.pt2"
    torch.export.save(program, genuine)
    load_exported(genuine)  # symbolic sizes themselves are fine
    marker = tmp_path / "code-ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"

    def inject(name, data):
        if name != pt2_archive.MODEL_JSON:
            return data
        text = data.decode()
        start = text.index('"expr_str": "') + len('"expr_str": "')
        return (text[:start] + code.replace('"', '\\"') + " or " + text[start:]).encode()

    hostile = tmp_path / "sympy.pt2"
    rewrite(genuine, hostile, inject)
    with pytest.raises(ModelLoadError, match="is not shape arithmetic"):
        load_exported(hostile)
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (lambda names: names.append(("data/aotinductor/model/model.so", b"\x7fELF")),
     "carries compiled code"),
    (lambda names: names.append(("data/weights/weight_0", b"")), "appears more than once"),
    (lambda names: names.append(("data/weights/weight_99", b"")), "not part of an exported program"),
    (lambda names: names.append(("models/other.json", b"{}")), "not one models/model.json"),
])
def test_members_torch_export_save_does_not_write_are_refused(pt2, tmp_path, change, message):
    extra: list = []
    change(extra)
    hostile = tmp_path / "extra.pt2"
    rewrite(pt2, hostile, add=extra)
    with pytest.raises(ModelLoadError, match=message):
        load_exported(hostile)


def test_a_graph_calling_anything_but_aten_is_refused(pt2, tmp_path):
    def retarget(name, data):
        if name != pt2_archive.MODEL_JSON:
            return data
        content = json.loads(data)
        content["graph_module"]["graph"]["nodes"][0]["target"] = "torch.hub.load"
        return json.dumps(content).encode()

    hostile = tmp_path / "hub.pt2"
    rewrite(pt2, hostile, retarget)
    with pytest.raises(ModelLoadError, match="calls 'torch.hub.load', which is not an ATen"):
        load_exported(hostile)


def test_an_empty_record_declaring_gigabytes_is_refused_before_allocating(pt2, tmp_path):
    def huge(config):
        meta = next(iter(config["config"].values()))["tensor_meta"]
        meta["sizes"] = [{"as_int": 1 << 16}, {"as_int": 1 << 16}]  # 16 GiB of float32
        meta["strides"] = [{"as_int": 1 << 16}, {"as_int": 1}]

    hostile = tmp_path / "zeros.pt2"
    rewrite(pt2, hostile, lambda n, d: b"" if n == "data/weights/weight_0"
            else edit_json(pt2_archive.WEIGHTS_CONFIG, huge)(n, d))
    with pytest.raises(ModelLoadError, match=TENSOR_ELEMENTS.env):
        load_exported(hostile)
    hostile_small = tmp_path / "short.pt2"  # a size within bounds, but no bytes behind it

    def small(config):
        meta = next(iter(config["config"].values()))["tensor_meta"]
        meta["sizes"] = [{"as_int": 64}, {"as_int": 64}]
        meta["strides"] = [{"as_int": 64}, {"as_int": 1}]

    rewrite(pt2, hostile_small, lambda n, d: b"" if n == "data/weights/weight_0"
            else edit_json(pt2_archive.WEIGHTS_CONFIG, small)(n, d))
    with pytest.raises(ModelLoadError, match="zero-length or short record"):
        load_exported(hostile_small)


def test_a_deflate_bomb_is_refused_from_its_header(pt2, tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(pt2) as original, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for item in original.infolist():
            rel = item.filename.split("/", 1)[1]
            data = original.read(item.filename)
            if rel == "data/weights/weight_0":
                data = bytes(64 << 20)  # 64 MiB of zeros, a few hundred KB deflated
            out.writestr(item.filename, data, zipfile.ZIP_DEFLATED)
    monkeypatch.setenv(TENSOR_BYTES.env, str(16 << 20))
    with pytest.raises(ModelLoadError, match="record data/weights/weight_0 has 67,108,864 bytes"):
        load_exported(bomb)


def test_a_corrupt_archive_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"PK\x03\x04 not really")
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 2 and "not a readable torch.export archive" in result.output


def test_a_pickled_payload_that_is_a_compressed_zip_is_refused_before_it_inflates(pt2, tmp_path):
    """Old code: torch.load inflated a DEFLATE-compressed torch.save record (3.4 MB into 3.5 GB)
    past every bound the outer archive was checked against."""
    plain = io.BytesIO()
    torch.save(torch.zeros(4 << 20), plain)  # 16 MiB of zeros
    packed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as inner, \
            zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as out:
        for item in inner.infolist():
            out.writestr(item.filename, inner.read(item.filename), zipfile.ZIP_DEFLATED)
    assert len(packed.getvalue()) < 1 << 20

    def pickled(config):
        next(iter(config["config"].values()))["use_pickle"] = True

    hostile = tmp_path / "inflating.pt2"
    rewrite(pt2, hostile, lambda n, d: packed.getvalue() if n == "data/weights/weight_0"
            else edit_json(pt2_archive.WEIGHTS_CONFIG, pickled)(n, d))
    with pytest.raises(ModelLoadError, match="holds the compressed record"):
        load_exported(hostile)


@pytest.mark.parametrize("make, kind", [
    (lambda: torch.empty(3, 4, device="meta"), "meta"),
    (lambda: torch.quantize_per_tensor(torch.rand(3, 4), 0.1, 0, torch.qint8), "quantised"),
    (lambda: torch.eye(3).to_sparse(), "sparse_coo"),
])
def test_pickled_weights_of_other_kinds_are_one_line(pt2, tmp_path, make, kind):
    """Old code: meta, quantised or sparse pickled weights passed weights_only and failed later
    with an internal error (exit 1)."""
    def pickled(config):
        next(iter(config["config"].values()))["use_pickle"] = True

    hostile = tmp_path / "kind.pt2"
    rewrite(pt2, hostile, lambda n, d: saved(make()) if n == "data/weights/weight_0"
            else edit_json(pt2_archive.WEIGHTS_CONFIG, pickled)(n, d))
    result = runner.invoke(app, ["inspect", str(hostile)])
    assert result.exit_code == 2 and f"is a {kind} tensor, not plain weights" in result.output
