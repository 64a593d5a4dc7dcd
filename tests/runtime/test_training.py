import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.frontends.zoo import build_model
from spikeshield.runtime.objectives import robust_loss
from spikeshield.runtime.training import TrainConfig


@pytest.mark.parametrize("objective", ["at", "trades", "mart"])
def test_robust_losses_are_finite_and_use_the_adversarial_input(objective):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    same = robust_loss(model, x, y, x, objective, beta=6.0)
    moved = robust_loss(model, x, y, (x + 0.3).clamp(0, 1), objective, beta=6.0)
    assert torch.isfinite(same) and torch.isfinite(moved) and not torch.isclose(same, moved)


def test_trades_with_identical_inputs_is_plain_cross_entropy():
    model = build_model("lenet", (1, 28, 28), 10, width=0.25).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    ce = torch.nn.functional.cross_entropy(model(x), y)
    torch.testing.assert_close(robust_loss(model, x, y, x, "trades", 6.0), ce, rtol=0, atol=1e-6)


def test_config_validation():
    with pytest.raises(ConfigError, match="eps"):
        TrainConfig(eps=2.0).validate()
    with pytest.raises(ConfigError, match="objective"):
        TrainConfig(objective="free").validate()
