"""harp: per-layer budgets learned with the scores, the global total exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.data import Dataset, DataSplits
from spikeshield.runtime.learned_budgets import quotas
from spikeshield.runtime.pruning import PruneConfig, model_slots, prune_module


@pytest.mark.parametrize("densities,sizes,total", [
    ({"a": 0.5, "b": 0.5}, {"a": 10, "b": 30}, 20),
    ({"a": 0.001, "b": 0.9}, {"a": 1000, "b": 10}, 12),  # a wants 1, b 9: remainder to the nearest
    ({"a": 0.0, "b": 1.0, "c": 0.33}, {"a": 7, "b": 5, "c": 100}, 40),  # each layer at least 1
    ({"a": 1.0, "b": 1.0}, {"a": 3, "b": 4}, 7),
])
def test_quotas_sum_to_the_total_and_stay_in_each_layer(densities, sizes, total):
    counts = quotas(densities, sizes, total)
    assert sum(counts.values()) == total
    assert all(1 <= counts[n] <= sizes[n] for n in sizes)
    for n in sizes:  # no layer is further than one weight from what it asked for, within bounds
        wanted = min(max(densities[n] * sizes[n], 1), sizes[n])
        assert abs(counts[n] - wanted) <= max(1, abs(total - sum(
            min(max(densities[m] * sizes[m], 1), sizes[m]) for m in sizes)) + 1)


def test_quotas_refuse_an_impossible_total():
    with pytest.raises(ValueError, match="cannot keep 1 weights"):
        quotas({"a": 0.5, "b": 0.5}, {"a": 4, "b": 4}, 1)


class TwoBranches(nn.Module):
    """``useful`` carries the signal; ``idle`` is multiplied by ``weight`` (by default zero, so that
    its weights never matter)."""

    def __init__(self, weight: float = 0.0) -> None:
        super().__init__()
        self.weight = weight
        self.useful = nn.Linear(16, 32)
        self.idle = nn.Linear(16, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(self.useful(x) + self.weight * self.idle(x))


def no_validation() -> dict[str, float]:
    """A validation score that costs nothing: these tests look at the masks, not the epoch kept."""
    return {"score": 0.0}


def splits() -> DataSplits:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (512, 1, 4, 4), generator=g, dtype=torch.uint8)
    labels = (images.flatten(1)[:, :8].float().mean(1) > images.flatten(1)[:, 8:].float().mean(1))
    data = Dataset(images, labels.long())
    return DataSplits("toy", data, data.head(64), data.head(64), 2)


def test_harp_moves_the_learned_half_of_the_budget_to_the_layer_that_needs_it():
    torch.manual_seed(0)
    model = TwoBranches()
    slots = model_slots(model)
    cfg = PruneConfig(sparsity=0.9, method="harp", dense_layers=("head",), score_epochs=3,
                      finetune_epochs=0, objective="standard", eps=0.0, batch_size=32)
    outcome = prune_module(model, slots, model, splits(), cfg, score=no_validation)
    kept = {n: int(m.sum()) for n, m in outcome.masks.items()}
    total = sum(p.weight.numel() for p in (model.useful, model.idle, model.head))
    assert total == 1088 and sum(kept.values()) == 108  # the exact budget: 1088 - ceil(979.2)
    assert kept["head"] == 64  # dense, and counted in the budget
    # a uniform share would give each branch 22 of the 44 left; the idle branch, whose weights
    # never change the loss, keeps only the uniform half of it (11), the useful one the rest
    assert kept["useful"] == 33 and kept["idle"] == 11
    assert outcome.densities["useful"] == kept["useful"] / 512


@pytest.mark.parametrize("seed", [0, 1])
def test_harp_splits_the_budget_between_two_branches_that_matter_equally(seed):
    torch.manual_seed(seed)
    model = TwoBranches(weight=1.0)  # the two branches play the same role
    cfg = PruneConfig(sparsity=0.9, method="harp", dense_layers=("head",), score_epochs=3,
                      finetune_epochs=0, objective="standard", eps=0.0, batch_size=32)
    outcome = prune_module(model, model_slots(model), model, splits(), cfg, score=no_validation)
    useful, idle = (int(outcome.masks[n].sum()) for n in ("useful", "idle"))
    assert useful + idle == 44 and 14 <= useful <= 30 and 14 <= idle <= 30


def test_hydra_with_the_same_budget_keeps_the_branches_where_their_scores_put_them():
    """The contrast: hydra's global budget ranks scores, which start from the weights, so the
    idle branch keeps about as many weights as the useful one."""
    torch.manual_seed(0)
    model = TwoBranches()
    cfg = PruneConfig(sparsity=0.9, method="hydra", budget="layer", dense_layers=("head",),
                      score_epochs=1, finetune_epochs=0, objective="standard", eps=0.0,
                      batch_size=32)
    outcome = prune_module(model, model_slots(model), model, splits(), cfg, score=no_validation)
    assert int(outcome.masks["useful"].sum()) == int(outcome.masks["idle"].sum())


@pytest.mark.parametrize("method,budget,message", [
    ("harp", "global", "harp learns each layer's budget"),
    ("hydra", "learned", "a learned per-layer budget is what --prune-method harp does"),
    ("magnitude", "learned", "magnitude takes --prune-budget global or layer"),
])
def test_budget_and_method_must_agree(method, budget, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(method=method, budget=budget).validate()


def test_auto_budget_is_learned_for_harp_and_global_otherwise():
    assert PruneConfig(method="harp").effective_budget == "learned"
    assert PruneConfig(method="hydra").effective_budget == "global"
    assert PruneConfig(method="magnitude", budget="layer").effective_budget == "layer"
