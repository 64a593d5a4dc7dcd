"""The data containers' input contract (issue 39): uint8 pixels or floats in [0, 1], each dealt
out as float batches in [0, 1]; anything else is refused in one line."""

import pytest
import torch

from spikeshield.compiler.ir.errors import DataError
from spikeshield.runtime.data import Dataset, make_splits


def test_float_images_in_the_unit_range_are_dealt_out_as_they_are():
    images = torch.rand(6, 1, 4, 4)
    labels = torch.arange(6) % 3
    (x, y), = list(Dataset(images, labels).batches(6))
    assert torch.equal(x, images) and torch.equal(y, labels)  # not divided by 255 again


def test_uint8_pixels_are_dealt_out_divided_by_255():
    images = torch.randint(0, 256, (4, 1, 2, 2), dtype=torch.uint8)
    (x, _), = list(Dataset(images, torch.zeros(4, dtype=torch.long)).batches(4))
    assert torch.equal(x, images.float() / 255.0)


@pytest.mark.parametrize("images,message", [
    (torch.rand(3, 1, 2, 2) * 255, r"values in \[.*\]; give uint8 pixels \(0..255\) or floats "
                                   r"in \[0, 1\] \(8-bit pixels as floats"),
    (torch.rand(3, 1, 2, 2) - 0.5, r"give uint8 pixels \(0..255\) or floats in \[0, 1\]$"),
    (torch.randint(0, 255, (3, 1, 2, 2)), "are torch.int64; give uint8"),
    (torch.full((3, 1, 2, 2), float("nan")), "NaN or infinite"),
])
def test_other_images_are_a_data_error_naming_what_was_given(images, message):
    with pytest.raises(DataError, match=message) as info:
        Dataset(images, torch.zeros(3, dtype=torch.long))
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="training images"):
        make_splits("mine", (images, torch.zeros(3, dtype=torch.long)),
                    (torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)), 2)


def test_splits_of_float_images_keep_them_as_given():
    train = (torch.rand(10, 1, 2, 2), torch.arange(10) % 2)
    test = (torch.rand(4, 1, 2, 2), torch.arange(4) % 2)
    splits = make_splits("mine", train, test, 2, val_fraction=0.2)
    x = torch.cat([b for b, _ in splits.train.batches(16)] + [b for b, _ in splits.val.batches(16)])
    assert sorted(x.flatten().tolist()) == sorted(train[0].flatten().tolist())
