"""The shared lowering base: names from any source become IR names; constants broadcast per channel."""

import pytest
import torch

from spikeshield.frontends.lowering import clean_name, per_channel_vector


@pytest.mark.parametrize("raw, expected", [
    ("conv1.weight", "conv1_weight"), ("layer/0:relu", "layer_0_relu"), ("", "node"),
    (b"bad\xffname", "bad_name"),  # protobuf hands over invalid UTF-8 as bytes
])
def test_clean_name(raw, expected):
    assert clean_name(raw) == expected


def test_per_channel_vector_accepts_scalars_and_channel_constants_only():
    assert torch.equal(per_channel_vector(2.0, (3, 4, 4)), torch.tensor([2.0]))
    assert torch.equal(per_channel_vector(torch.arange(3.0).reshape(1, 3, 1, 1), (3, 4, 4)),
                       torch.arange(3.0))
    assert per_channel_vector(torch.ones(1, 3, 4, 1), (3, 4, 4)) is None
