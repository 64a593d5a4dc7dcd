"""``load_data(spec)``: a data spec read by a frontend reader, split by the runtime's containers."""

from __future__ import annotations

from spikeshield.frontends.datasets import read_data
from spikeshield.runtime.data import DataSplits, make_splits


def load_data(spec: str, val_fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """Load a data spec (see ``frontends.datasets``) into seeded train / validation / test splits."""
    raw = read_data(spec)
    return make_splits(raw.name, raw.train, raw.test, raw.num_classes, val_fraction, seed)
