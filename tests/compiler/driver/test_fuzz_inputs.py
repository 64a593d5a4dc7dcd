"""Random and truncated bytes as model, NIR, ONNX and data files: always one line and exit 2.

Each case runs the real command line in process. A hang would trip hypothesis's deadline, a
traceback or an "internal error" (exit 1) fails the assertion.
"""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.ir.serialize import save_graph
from tests.conftest import tiny_conv_graph

runner = CliRunner()
FUZZ = settings(max_examples=25, deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_one_line_exit_2(result) -> None:
    lines = [line for line in result.output.strip().splitlines() if line]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, trained_lenet):
    """One valid file per model format, to truncate and corrupt."""
    from spikeshield.backends.nir_backend import write_nir
    from spikeshield.backends.onnx_backend import write_onnx
    from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model

    folder = tmp_path_factory.mktemp("valid")
    _, pt2 = trained_lenet
    result = compile_model(pt2, "mnist5k", CompileConfig(finetune="none", robustness="none",
                                                         profile=False, eval_samples=20))
    files = {".pt2": pt2.read_bytes()}
    save_graph(tiny_conv_graph(), folder / "m.ir")
    write_nir(result.snn, folder / "m.nir")
    write_onnx(result.ann, folder / "m.onnx")  # the ONNX frontend reads ANNs
    for suffix in (".ir", ".nir", ".onnx"):
        files[suffix] = (folder / f"m{suffix}").read_bytes()
    return files


SUFFIXES = [".pt2", ".ir", ".nir", ".onnx"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@FUZZ
@given(blob=st.binary(max_size=2048))
def test_random_bytes_as_a_model_file(tmp_path, suffix, blob):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(blob)
    assert_one_line_exit_2(runner.invoke(app, ["inspect", str(path)]))


@pytest.mark.parametrize("suffix", SUFFIXES)
@FUZZ
@given(cut=st.floats(0.0, 0.999))
def test_truncated_model_files(tmp_path, model_files, suffix, cut):
    valid = model_files[suffix]
    path = tmp_path / f"model{suffix}"
    path.write_bytes(valid[: int(cut * len(valid))])
    assert_one_line_exit_2(runner.invoke(app, ["inspect", str(path)]))


@pytest.mark.parametrize("suffix", SUFFIXES)
@FUZZ
@given(data=st.data())
def test_corrupted_model_files_load_or_fail_cleanly(tmp_path, model_files, suffix, data):
    """A few flipped bytes: the file may still load (weights changed), but it never crashes."""
    blob = bytearray(model_files[suffix])
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / f"model{suffix}"
    path.write_bytes(bytes(blob))
    result = runner.invoke(app, ["inspect", str(path)])
    if result.exit_code != 0:
        assert_one_line_exit_2(result)


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, images: bytes, labels: bytes) -> None:
    folder.mkdir(exist_ok=True)
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(images)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)


def _compile_on(data_spec: str, model: Path, out: Path):
    return runner.invoke(app, ["compile", str(model), "--data", data_spec, "--out", str(out),
                               "--finetune", "none", "--robustness", "none", "--no-profile"])


VALID_IMAGES = _idx(np.arange(30 * 28 * 28).reshape(30, 28, 28) % 256)
VALID_LABELS = _idx(np.arange(30) % 10)


@FUZZ
@given(blob=st.binary(max_size=4096), cut=st.floats(0.0, 0.999), gz=st.booleans())
def test_random_and_truncated_idx_data(tmp_path, trained_lenet, blob, cut, gz):
    _, model = trained_lenet
    truncated = VALID_IMAGES[: int(cut * len(VALID_IMAGES))]
    for images in (blob, truncated):
        folder = tmp_path / "mnist"
        _write_mnist(folder, gzip.compress(images) if gz else images, VALID_LABELS)
        assert_one_line_exit_2(_compile_on(f"mnist:{folder}", model, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@FUZZ
@given(blob=st.binary(max_size=2048), cut=st.floats(0.0, 0.999))
def test_random_and_truncated_cifar_batches(tmp_path, trained_lenet, blob, cut):
    _, model = trained_lenet
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    valid = pickle.dumps(batch, protocol=2)
    for content in (blob, valid[: int(cut * len(valid))], pickle.dumps([1, 2, 3])):
        folder = tmp_path / "cifar"
        folder.mkdir(exist_ok=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (folder / name).write_bytes(content)
        assert_one_line_exit_2(_compile_on(f"cifar10:{folder}", model, tmp_path / "out"))


def test_an_idx_header_asking_for_terabytes_is_refused_before_reading(tmp_path, trained_lenet):
    _, model = trained_lenet
    huge = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 1 << 30, 1 << 12, 1 << 12) + b"\0" * 64
    folder = tmp_path / "mnist"
    _write_mnist(folder, gzip.compress(huge), VALID_LABELS)
    result = _compile_on(f"mnist:{folder}", model, tmp_path / "out")
    assert_one_line_exit_2(result)
    assert "expected" in result.output or "limit" in result.output


@FUZZ
@given(blob=st.binary(max_size=512))
def test_random_bytes_as_images_of_an_image_folder(tmp_path, trained_lenet, blob):
    _, model = trained_lenet
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / "images" / split / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "images" / split / label / "x.png").write_bytes(blob)
    assert_one_line_exit_2(_compile_on(f"imagefolder:{tmp_path / 'images'}", model,
                                       tmp_path / "out"))
