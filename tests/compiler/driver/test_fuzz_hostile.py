"""Hypothesis builds hostile variants of valid .pt2 and .nir files, the way an attacker would edit a
real file rather than write random bytes: legacy-layout pickles, duplicate members, payloads declared
twice, compiled code, Python in symbolic shapes; HDF5 external storage, external and soft links,
virtual datasets, shared groups and odd dtypes. Every variant must end in one line and exit 2, with
no payload run and no foreign byte read."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.frontends import pt2_archive

runner = CliRunner()
FUZZ = settings(max_examples=20, deadline=10000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
MARKER = Path("/tmp/spikeshield-fuzz-payload-ran")


class Payload:
    def __reduce__(self):
        return (open, (str(MARKER), "w"))


def _pickled() -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": Payload()}, buffer)
    return buffer.getvalue()


def assert_refused(result) -> None:
    lines = [line for line in result.output.strip().splitlines() if line]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not MARKER.exists(), "a payload ran"


# ---- .pt2 ----------------------------------------------------------------------------------

PT2_MUTATIONS = ["legacy-root", "legacy-folder", "duplicate", "declared-twice", "aoti",
                 "expression", "target", "pickled-weight"]


def _mutate_pt2(source: Path, target: Path, mutations: list[str], pick: int) -> None:
    with zipfile.ZipFile(source) as original:
        items = [(i, original.read(i.filename)) for i in original.infolist()]
    root = items[0][0].filename.split("/")[0]
    rel = {i.filename.split("/", 1)[1]: n for n, (i, _) in enumerate(items)}
    extra: list[tuple[str, bytes]] = []
    payloads = sorted(n for n in rel if n.startswith("data/weights/weight_"))
    chosen = payloads[pick % len(payloads)]

    def edit(name: str, change) -> None:
        index = rel[name]
        info, data = items[index]
        items[index] = (info, change(data))

    for mutation in mutations:
        if mutation == "legacy-root":
            extra.append(("/serialized_constants.pt", _pickled()))
        elif mutation == "legacy-folder":
            extra.append(("data/weights/model.pt", _pickled()))
        elif mutation == "duplicate":
            extra.append((chosen, _pickled()))
        elif mutation == "declared-twice":
            config = json.loads(items[rel[pt2_archive.WEIGHTS_CONFIG]][1])
            fqn, meta = next(iter(config["config"].items()))
            config["config"][fqn + "_copy"] = {**meta, "use_pickle": True}
            edit(pt2_archive.WEIGHTS_CONFIG, lambda d, c=config: json.dumps(c).encode())
            edit(f"data/weights/{meta['path_name']}", lambda d: _pickled())
        elif mutation == "aoti":
            extra.append(("data/aotinductor/model/model.so", b"\x7fELF"))
        elif mutation == "expression":
            edit(pt2_archive.MODEL_JSON, lambda d: d.replace(
                b'"expr_str": "', b'"expr_str": "__import__(\'os\').getpid() or ', 1))
        elif mutation == "target":
            edit(pt2_archive.MODEL_JSON, lambda d: d.replace(
                b'"target": "torch.ops.aten.', b'"target": "torch.hub.load', 1))
        elif mutation == "pickled-weight":
            def pickle_one(data: bytes) -> bytes:
                config = json.loads(data)
                for meta in config["config"].values():
                    if f"data/weights/{meta['path_name']}" == chosen:
                        meta["use_pickle"] = True
                return json.dumps(config).encode()

            edit(pt2_archive.WEIGHTS_CONFIG, pickle_one)
            edit(chosen, lambda d: _pickled())
    with zipfile.ZipFile(target, "w") as out:
        for info, data in items:
            out.writestr(info, data)
        for name, data in extra:
            out.writestr(name.lstrip("/") if name.startswith("/") else f"{root}/{name}", data)


@FUZZ
@given(mutations=st.lists(st.sampled_from(PT2_MUTATIONS), min_size=1, max_size=3, unique=True),
       pick=st.integers(0, 100))
def test_hostile_pt2_variants_are_refused_and_never_run_code(trained_lenet, tmp_path, mutations,
                                                             pick):
    import warnings

    MARKER.unlink(missing_ok=True)
    hostile = tmp_path / f"hostile-{'-'.join(mutations)}-{pick}.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names it writes
        _mutate_pt2(trained_lenet[1], hostile, mutations, pick)
    assert_refused(runner.invoke(app, ["inspect", str(hostile)]))


# ---- .nir (HDF5) ---------------------------------------------------------------------------

NIR_MUTATIONS = ["external-storage", "external-link", "soft-link", "virtual", "shared-group",
                 "complex", "compound"]


@pytest.fixture(scope="module")
def nir_source(tmp_path_factory):
    from spikeshield.backends.nir_backend import write_nir
    from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
    from tests.conftest import tiny_conv_graph

    folder = tmp_path_factory.mktemp("nir")
    graph = convert_relu_to_if(tiny_conv_graph()).graph
    graph.meta["timesteps"] = 4
    secret = folder / "secret.bin"
    secret.write_bytes(b"SECRET!!" * 4096)
    other = folder / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.ones((4, 108), np.float32)
    return write_nir(graph, folder / "snn.nir"), secret, other


def _mutate_nir(path: Path, mutation: str, pick: int, secret: Path, other: Path) -> None:
    with h5py.File(path, "r+") as f:
        datasets: list[str] = []
        f.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset)
                     and o.dtype.kind == "f" and o.ndim else None)  # HDF5 keeps scalars inline
        name = sorted(datasets)[pick % len(datasets)]
        shape = f[name].shape
        del f[name]
        if mutation == "external-storage":
            nbytes = int(np.prod(shape)) * 4
            f.create_dataset(name, shape, "f4", external=[(str(secret), 0, nbytes)])
        elif mutation == "external-link":
            f[name] = h5py.ExternalLink(str(other), "data")
        elif mutation == "soft-link":
            f[name] = h5py.SoftLink("/node")
        elif mutation == "virtual":
            layout = h5py.VirtualLayout(shape=(4, 108), dtype="f4")
            layout[:] = h5py.VirtualSource(str(other), "data", shape=(4, 108))
            f.create_virtual_dataset(name, layout)
        elif mutation == "shared-group":
            f[name] = f["node/nodes"]  # a second hard link to a group: a cycle for a walker
        elif mutation == "complex":
            f.create_dataset(name, shape, "c16")
        elif mutation == "compound":
            f.create_dataset(name, shape, np.dtype([("a", "f4"), ("b", "i4")]))


@FUZZ
@given(mutation=st.sampled_from(NIR_MUTATIONS), pick=st.integers(0, 100))
def test_hostile_nir_variants_are_refused_and_read_no_foreign_bytes(nir_source, tmp_path, mutation,
                                                                    pick):
    source, secret, other = nir_source
    case = tmp_path / f"{mutation}-{pick}"
    case.mkdir(exist_ok=True)
    hostile = case / "hostile.nir"
    hostile.write_bytes(source.read_bytes())
    _mutate_nir(hostile, mutation, pick, secret, other)
    out = case / "leak.onnx"
    out.unlink(missing_ok=True)
    result = runner.invoke(app, ["export", str(hostile), "--format", "onnx", "--out", str(out)])
    assert_refused(result)
    assert not out.exists()
