import gzip
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from spikeshield.compiler.driver.data import load_data
from spikeshield.compiler.ir.errors import DataError
from spikeshield.frontends.datasets import read_idx


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _idx_folder(tmp_path, gz: bool):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 6)):
        suffix = ".gz" if gz else ""
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 255, (n, 28, 28)), gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (n,)), gz)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder(tmp_path, gz):
    splits = load_data(f"fashion-mnist:{_idx_folder(tmp_path, gz)}", val_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 6)
    assert splits.input_shape == (1, 28, 28) and splits.train.images.dtype == torch.uint8
    x, y = next(splits.test.batches(4))
    assert x.shape == (4, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_truncated_idx_is_a_data_error(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    _write_idx(path, np.zeros((4, 28, 28)), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_pickle_folder(tmp_path, classes):
    rng = np.random.default_rng(0)
    key = b"labels" if classes == 10 else b"fine_labels"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if classes == 10 else ["train", "test"]
    for name in names:
        batch = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                 key: list(rng.integers(0, classes, 4))}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    splits = load_data(f"cifar{classes}:{tmp_path}", val_fraction=0.0)
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == classes
    assert len(splits.test) == 4 and len(splits.train) == (20 if classes == 10 else 4)


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match="refusing"):
        load_data(f"cifar10:{tmp_path}")


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for name, n in (("train", 5), ("test", 3)):
        savemat(tmp_path / f"{name}_32x32.mat",
                {"X": rng.integers(0, 255, (32, 32, 3, n), dtype=np.uint8),
                 "y": np.array([[10]] + [[1]] * (n - 1), dtype=np.uint8)})
    splits = load_data(f"svhn:{tmp_path}", val_fraction=0.0)
    assert splits.input_shape == (3, 32, 32) and int(splits.test.labels[0]) == 0  # 10 means digit 0


@pytest.mark.parametrize("x, y, phrase", [
    (np.zeros((32, 32, 3, 50), np.uint8), np.ones((7, 1), np.uint8), "one numeric label per image"),
    (np.array(["not", "pixels"]), np.ones((2, 1)), "X must be a numeric (32, 32, 3, N) array"),
    (np.zeros((32, 32, 3, 2), np.uint8), np.array(["a", "b"]), "one numeric label per image"),
    (np.full((32, 32, 3, 2), 1e6), np.ones((2, 1)), "outside the 0..255 pixel range"),
])
def test_malformed_svhn_files_are_one_line(tmp_path, x, y, phrase):
    from scipy.io import savemat
    from typer.testing import CliRunner

    from spikeshield.compiler.driver.cli import app

    for name in ("train", "test"):
        savemat(tmp_path / f"{name}_32x32.mat", {"X": x, "y": y})
    with pytest.raises(DataError, match=re.escape(phrase)):
        load_data(f"svhn:{tmp_path}")
    result = CliRunner().invoke(app, ["train", "--data", f"svhn:{tmp_path}", "--out",
                                      str(tmp_path / "m.pt2")])
    assert result.exit_code == 2 and phrase in result.output


def _png(path, value):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_and_tiny_imagenet(tmp_path):
    for split in ("train", "test"):
        for c, v in (("cat", 10), ("dog", 200)):
            _png(tmp_path / "f" / split / c / f"{c}0.png", v)
    splits = load_data(f"imagefolder:{tmp_path / 'f'}", val_fraction=0.0)
    assert splits.num_classes == 2 and splits.input_shape == (3, 8, 8)
    root = tmp_path / "tiny"
    for wnid, v in (("n01", 5), ("n02", 250)):
        _png(root / "train" / wnid / "images" / f"{wnid}_0.JPEG".replace("JPEG", "png"), v)
    _png(root / "val" / "images" / "val_0.png", 250)
    (root / "val" / "val_annotations.txt").write_text("val_0.png\tn02\t0\t0\t8\t8\n")
    tiny = load_data(f"tiny-imagenet:{root}", val_fraction=0.0)
    assert tiny.num_classes == 2 and tiny.test.labels.tolist() == [1]


def test_mnist5k_splits_are_deterministic_and_disjoint(mnist5k):
    again = load_data("mnist5k")
    assert torch.equal(again.val.labels, mnist5k.val.labels)
    assert (len(mnist5k.train), len(mnist5k.val), len(mnist5k.test)) == (3600, 400, 1000)
    other_seed = load_data("mnist5k", seed=7)
    assert torch.equal(other_seed.test.images, mnist5k.test.images)  # the test set never moves
    assert not torch.equal(other_seed.val.images, mnist5k.val.images)


@pytest.mark.parametrize("spec,match", [("imagenet1k", "unknown data spec"),
                                        ("cifar10", "needs a folder"),
                                        ("cifar10:/no/such/dir", "does not exist")])
def test_bad_specs(spec, match):
    with pytest.raises(DataError, match=match):
        load_data(spec)


@pytest.mark.parametrize("escape", ["absolute", "dotdot", "linked class"])
def test_annotations_and_links_may_not_reach_outside_the_data_folder(tmp_path, escape):
    """Old code read images from anywhere: an absolute or ../ path in val_annotations.txt, or a
    class folder linked elsewhere (checked by hand on 4b42d6f)."""
    secret = tmp_path / "elsewhere" / "secret.png"
    _png(secret, 77)
    root = tmp_path / "tiny"
    for wnid, v in (("n01", 5), ("n02", 250)):
        _png(root / "train" / wnid / "images" / f"{wnid}_0.png", v)
    _png(root / "val" / "images" / "val_0.png", 250)
    line = "val_0.png"
    if escape == "absolute":
        line = str(secret)
    elif escape == "dotdot":
        line = "../../../elsewhere/secret.png"
    else:
        (root / "train" / "n03").symlink_to(secret.parent.parent / "elsewhere-class",
                                            target_is_directory=True)
        _png(secret.parent.parent / "elsewhere-class" / "images" / "x.png", 9)
    (root / "val" / "val_annotations.txt").write_text(f"{line}\tn02\t0\t0\t8\t8\n")
    with pytest.raises(DataError, match="lies outside the data folder"):
        load_data(f"tiny-imagenet:{root}", val_fraction=0.0)
