"""The labelled image sets that training, attacks and evaluation consume.

A frontend reader turns files into uint8 images and int64 labels (``frontends.datasets``); a
Python user may hand over float images in [0, 1] instead. These containers hold them in memory,
split off a seeded validation set, and deal out float batches in [0, 1] (shuffled reproducibly, or
shared between processes as ``DistributedSampler`` deals them). :func:`check_images` is the one
input contract (uint8 pixels, or floats in the model's input range) and :func:`as_float` the one
conversion; the executor applies both to what it is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from spikeshield.compiler.ir.errors import ConfigError, DataError

PIXEL_RANGE = (0.0, 1.0)  # what spikeshield's models take, and what uint8 pixels / 255 are


def check_images(images: torch.Tensor, what: str,
                 input_range: tuple[float, float] | None = PIXEL_RANGE) -> None:
    """uint8 pixels (0..255), or floats within ``input_range`` (unchecked when None); anything else
    is a :class:`DataError` naming ``what`` and what was given, in one line (a float image in
    [0, 255], or in [0, 1] divided again by 255, would otherwise be computed on silently)."""
    if images.dtype == torch.uint8:
        return
    expected = ("uint8 pixels (0..255) or floats" + (
        f" in [{input_range[0]:g}, {input_range[1]:g}]" if input_range else ""))
    if not images.dtype.is_floating_point:
        raise DataError(f"{what} are {images.dtype}; give {expected}")
    if not images.numel():
        return
    if not bool(torch.isfinite(images).all()):
        raise DataError(f"{what} hold NaN or infinite values; give {expected}")
    if input_range is None:
        return
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if low < input_range[0] or high > input_range[1]:
        hint = (" (8-bit pixels as floats: divide by 255, or pass them as uint8)"
                if 1 < high <= 255 and input_range == PIXEL_RANGE else "")
        raise DataError(f"{what} hold values in [{low:g}, {high:g}]; give {expected}{hint}")


def as_float(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Float32 values for a model: uint8 pixels divided by 255, floats as they are (see
    :func:`check_images`)."""
    if images.dtype == torch.uint8:
        return images.to(device=device, dtype=torch.float32) / 255.0
    return images.to(device=device, dtype=torch.float32)


@dataclass
class Dataset:
    """An in-memory labelled image set: ``images`` ``(N, C, H, W)``, uint8 pixels or floats in
    [0, 1] (checked), and ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        check_images(self.images, "the data set's images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> Dataset:
        return Dataset(self.images[index], self.labels[index])

    def head(self, n: int) -> Dataset:
        return Dataset(self.images[:n], self.labels[:n])

    def slice(self, start: int, stop: int) -> Dataset:
        return Dataset(self.images[start:stop], self.labels[start:stop])

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        processes: int = 1,
        skip: int = 0,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Float pixel batches in [0, 1] and labels; shuffled reproducibly from ``seed``. With
        ``processes`` > 1, only process ``rank``'s share, as ``DistributedSampler`` deals it.
        ``skip`` leaves out the first batches of that order (a resumed epoch)."""
        order = self._order(shuffle, seed, rank, processes)
        for start in range(skip * batch_size, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield as_float(self.images[idx], device), self.labels[idx].to(device)

    def digest(self) -> str:
        """SHA-256 of the images and labels, in order: what a resumed job checks it is given the
        same samples (a data spec names files whose content can change)."""
        import hashlib

        digest = hashlib.sha256()
        for tensor in (self.images, self.labels):
            digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def num_batches(self, batch_size: int, processes: int = 1) -> int:
        """Batches that :meth:`batches` yields (to each process, if ``processes`` > 1)."""
        per_process = -(-len(self) // processes)
        return -(-per_process // batch_size)

    def _order(self, shuffle: bool, seed: int, rank: int, processes: int) -> torch.Tensor:
        if processes > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(
                range(len(self)), num_replicas=processes, rank=rank, shuffle=shuffle, seed=seed
            )
            return torch.tensor(list(sampler), dtype=torch.long)
        if shuffle:
            return torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return torch.arange(len(self))


@dataclass
class DataSplits:
    """Train / validation / test splits of one data set. Validation is carved from training data."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int

    def digest(self) -> str:
        """SHA-256 over the three splits and the class count (see :meth:`Dataset.digest`)."""
        import hashlib

        parts = [self.train.digest(), self.val.digest(), self.test.digest(), str(self.num_classes)]
        return hashlib.sha256("/".join(parts).encode()).hexdigest()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train.images.shape[1:])

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training pixels (in [0, 1]), for input normalisation."""
        x = as_float(self.train.images[:10000])
        dims = [0] + list(range(2, x.dim()))
        return x.mean(dim=dims).tolist(), x.std(dim=dims).clamp_min(1e-3).tolist()


def check_max_train(max_train: int | None, option: str) -> None:
    """A "first N training images" setting (``option`` names it in the error): ``None`` or
    positive. ``Dataset.head(-N)`` would silently drop the last N images instead."""
    if max_train is not None and max_train <= 0:
        raise ConfigError(f"{option} must be positive (the first N training images are used), "
                          f"got {max_train}")


def check_labelled(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   what: str) -> None:
    """Images as uint8 pixels (0..255) or floats in [0, 1] (:func:`check_images`) and one integer
    label in ``[0, num_classes)`` per image; anything else is refused in one line rather than
    counted wrongly (a label of -1 or ``num_classes`` would be scored as an error by every
    metric)."""
    check_images(images, f"{what} images")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1 or \
            len(labels) != len(images):
        raise DataError(f"{what} labels must be one integer per image, got {labels.dtype} of "
                        f"shape {tuple(labels.shape)} for {len(images)} images")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"{what} labels run from {int(labels.min())} to {int(labels.max())}, "
                        f"outside 0..{num_classes - 1} for {num_classes} classes; fix the label "
                        "file or the class count")


def make_splits(name: str, train: tuple[torch.Tensor, torch.Tensor],
                test: tuple[torch.Tensor, torch.Tensor], num_classes: int,
                val_fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """Train / validation / test splits: the validation set is a seeded ``val_fraction`` of the
    training images; the test set is left as it is."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    check_labelled(*train, num_classes, f"{name} training")
    check_labelled(*test, num_classes, f"{name} test")
    full = Dataset(*train)
    n_val = int(round(len(full) * val_fraction))
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    return DataSplits(name, full.subset(perm[n_val:]), full.subset(perm[:n_val]), Dataset(*test),
                      num_classes)
