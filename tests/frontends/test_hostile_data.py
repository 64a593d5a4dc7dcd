"""Data files that ask for absurd memory, carry labels outside the classes, or hold another kind of
pixel: refused in one line before the allocation or the wrong count. Each failed on 4b42d6f
(checked by hand): an allocation the size the header asked for, or a silent count."""

from __future__ import annotations

import gzip
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from spikeshield.compiler.driver.data import load_data
from spikeshield.compiler.ir.errors import DataError
from spikeshield.compiler.ir.limits import DATA_BYTES
from spikeshield.frontends.datasets import _unpickle, load_cifar, read_idx


def idx(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def mnist_folder(folder, labels=None, images=None, code=0x08):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        pixels = images if images is not None else rng.integers(0, 256, (n, 28, 28), np.uint8)
        classes = labels if labels is not None else rng.integers(0, 10, n, np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx(pixels[:n], code))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(classes[:n]))
    return folder


def peak_of_refusal(read, message: str) -> int:
    """The peak bytes Python and numpy allocate while ``read()`` is refused with ``message``."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=message):
            read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_labels_outside_the_classes_are_refused_not_counted(tmp_path):
    """Old code: compile reported ANN accuracy over labels no logit could match."""
    labels = np.full(40, 3, np.uint8)
    labels[7] = 10
    folder = mnist_folder(tmp_path / "mnist", labels=labels)
    with pytest.raises(DataError, match="labels run from 3 to 10, outside 0..9"):
        load_data(f"mnist:{folder}")


def test_float_idx_images_are_refused_in_one_line(tmp_path):
    images = np.random.default_rng(0).random((40, 28, 28)).astype(">f4")
    folder = mnist_folder(tmp_path / "mnist", images=images, code=0x0D)
    with pytest.raises(DataError, match="images must be unsigned bytes"):
        load_data(f"mnist:{folder}")


@pytest.mark.parametrize("compressed", [False, True])
def test_a_header_declaring_a_terabyte_allocates_nothing(tmp_path, monkeypatch, compressed):
    """Old code read ``expected + 1`` bytes in one call: the buffer the header asks for."""
    monkeypatch.setenv(DATA_BYTES.env, str(1 << 42))
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 1 << 20, 1 << 10, 1 << 10)  # 1 TiB
    body = header + bytes(100)
    path = tmp_path / ("big.gz" if compressed else "big")
    path.write_bytes(gzip.compress(body) if compressed else body)
    assert peak_of_refusal(lambda: read_idx(path), "truncated or corrupt") < 64 << 20


class _Constructor:
    """Pickles as a call of numpy.ndarray(shape, dtype): what the old unpickler admitted."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return (np.ndarray, (self.shape, np.dtype("u1")))


def test_a_cifar_pickle_cannot_call_numpys_constructors(tmp_path):
    """Old code: a 187-byte batch made numpy allocate whatever shape it named."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Constructor((4096, 4096 * 3)), b"labels": [0]},
                                  protocol=4))
    assert path.stat().st_size < 300
    assert peak_of_refusal(lambda: _unpickle(path), "has no data") < 8 << 20


def test_a_cifar_array_must_be_filled_by_its_own_bytes(tmp_path):
    class Short:
        def __reduce__(self):
            return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, (1 << 20, 3072), np.dtype("u1"), False, b"\x00" * 3072))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Short(), b"labels": [0]}, protocol=4))
    with pytest.raises(DataError, match="declares shape .* but holds 3,072 bytes"):
        _unpickle(path)


def test_cifar_labels_too_large_for_any_integer_are_one_line(tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10 ** 30]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DataError, match="CIFAR batch lacks or mangles"):
        load_cifar(folder, 10)
