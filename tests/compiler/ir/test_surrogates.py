import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.surrogates import SURROGATE_NAMES, Surrogate, spike


def test_forward_is_strict_heaviside_for_every_family():
    u = torch.tensor([-1.0, 0.0, 1e-6, 2.0])
    for name in SURROGATE_NAMES:
        assert spike(u, Surrogate(name)).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_triangle_gradient_by_hand():
    u = torch.tensor([-2.0, -0.5, 0.0, 0.25, 1.5], requires_grad=True)
    spike(u, Surrogate("triangle", 1.0)).sum().backward()
    assert u.grad.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.0])
    u2 = torch.tensor([0.5], requires_grad=True)
    spike(u2, Surrogate("triangle", 2.0)).sum().backward()
    assert u2.grad.tolist() == pytest.approx([(2 - 0.5) / 4])


def test_rectangular_and_none():
    u = torch.tensor([0.1, 0.6], requires_grad=True)
    spike(u, Surrogate("rectangular", 1.0)).sum().backward()
    assert u.grad.tolist() == pytest.approx([1.0, 0.0])
    v = torch.tensor([0.0], requires_grad=True)
    spike(v, Surrogate("none")).sum().backward()
    assert v.grad.tolist() == [0.0]


def test_bad_surrogate():
    with pytest.raises(ConfigError, match="unknown surrogate"):
        Surrogate("gaussian")
    with pytest.raises(ConfigError, match="positive"):
        Surrogate("triangle", 0.0)
