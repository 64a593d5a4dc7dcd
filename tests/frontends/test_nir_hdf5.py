"""A .nir file is HDF5: before nir.read follows it anywhere, its objects are walked and anything that
reads other files, walks exponentially or inflates without bound is refused."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from spikeshield.backends.nir_backend import write_nir
from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.model_io import load_model
from spikeshield.compiler.ir.errors import ModelLoadError
from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
from tests.conftest import tiny_conv_graph

runner = CliRunner()
WEIGHT = "node/nodes/fc/weight"


@pytest.fixture
def nir_file(tmp_path):
    graph = convert_relu_to_if(tiny_conv_graph()).graph
    graph.meta["timesteps"] = 4
    return write_nir(graph, tmp_path / "snn.nir")


def _replace(path, name, make) -> None:
    with h5py.File(path, "r+") as f:
        old = f[name]
        shape, dtype = old.shape, old.dtype
        del f[name]
        make(f, name, shape, dtype)


def test_the_honest_file_loads(nir_file):
    assert load_model(nir_file).nodes()


def test_external_raw_storage_is_refused_and_its_bytes_never_reach_an_export(nir_file, tmp_path):
    secret = tmp_path / "secret.bin"
    with h5py.File(nir_file) as f:
        nbytes = f[WEIGHT].size * 4
    secret.write_bytes(b"SECRET!!" * (nbytes // 8 + 1))
    _replace(nir_file, WEIGHT, lambda f, n, shape, dtype: f.create_dataset(
        n, shape, dtype, external=[(str(secret), 0, nbytes)]))
    result = runner.invoke(app, ["export", str(nir_file), "--format", "onnx", "--out",
                                 str(tmp_path / "leak.onnx")])
    assert result.exit_code == 2 and "stores its data in an external file" in result.output
    assert not (tmp_path / "leak.onnx").exists()


def test_external_links_soft_links_and_virtual_datasets_are_refused(nir_file, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["weight"] = np.ones((4, 108), np.float32)
    cases = {
        "an external link": lambda f, n, s, d: f.__setitem__(n, h5py.ExternalLink(str(other),
                                                                                  "weight")),
        "a soft link": lambda f, n, s, d: f.__setitem__(n, h5py.SoftLink("/node")),
        "a virtual dataset": lambda f, n, s, d: f.create_virtual_dataset(n, _layout(other, s)),
    }
    for what, make in cases.items():
        copy = tmp_path / f"{what.replace(' ', '_')}.nir"
        copy.write_bytes(nir_file.read_bytes())
        _replace(copy, WEIGHT, make)
        with pytest.raises(ModelLoadError, match=f"/{WEIGHT} is {what}"):
            load_model(copy)


def _layout(other, shape):
    layout = h5py.VirtualLayout(shape=shape, dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "weight", shape=shape)
    return layout


def test_a_dag_of_hard_links_is_refused_at_once(nir_file):
    """40 levels of two links to the same group: 2^40 paths for a recursive reader."""
    with h5py.File(nir_file, "r+") as f:
        below = f.create_group("bomb/level40")
        for level in range(39, -1, -1):
            group = f.create_group(f"bomb/level{level}")
            group["a"] = below
            group["b"] = below
            below = group
    with pytest.raises(ModelLoadError, match="is linked from more than one place"):
        load_model(nir_file)


def test_a_compressed_complex_dataset_that_inflates_to_gigabytes_is_refused(nir_file):
    with h5py.File(nir_file, "r+") as f:
        f.create_dataset("node/nodes/fc/extra", shape=(1 << 28,), dtype="c16", compression="gzip",
                         chunks=(1 << 16,))
    assert nir_file.stat().st_size < 1 << 20
    with pytest.raises(ModelLoadError, match="has dtype complex128, not a real number"):
        load_model(nir_file)


def test_real_datasets_are_bounded_in_bytes(nir_file, monkeypatch):
    monkeypatch.setenv("SPIKESHIELD_MAX_TENSOR_BYTES", "1000")  # fc/weight is 4 x 108 float32
    with pytest.raises(ModelLoadError, match="dataset /node/nodes/fc/weight has 1,728 bytes"):
        load_model(nir_file)
