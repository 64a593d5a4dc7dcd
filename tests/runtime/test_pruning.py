"""Robust pruning's epoch selection: the validation figures and the epoch they keep."""

from __future__ import annotations

import pytest
import torch

from spikeshield.runtime.pruning import PruneConfig, model_slots, prune_module, validation_figures
from tests.runtime.test_learned_budgets import TwoBranches, splits


def test_the_epoch_kept_is_the_one_the_score_entry_ranks_best_not_the_cleanest():
    torch.manual_seed(0)
    model = TwoBranches()
    figures = iter([{"score": 0.2, "val_clean": 0.9}, {"score": 0.7, "val_clean": 0.1},
                    {"score": 0.5, "val_clean": 0.5}])
    cfg = PruneConfig(sparsity=0.5, method="magnitude", score_epochs=0, finetune_epochs=3,
                      objective="standard", eps=0.0)
    outcome = prune_module(model, model_slots(model), model, splits(), cfg,
                           score=lambda: next(figures))
    assert outcome.best_epoch == 2
    assert [h["val_clean"] for h in outcome.history] == [0.9, 0.1, 0.5]  # every figure recorded


@pytest.mark.parametrize("selection", ["clean", "clean+robust", "robust"])
def test_validation_attacks_only_when_the_selection_counts_robustness(trained_lenet, mnist5k,
                                                                      selection):
    model, _ = trained_lenet
    model.eval()
    cfg = PruneConfig(eps=0.3, selection=selection)
    figures = validation_figures(model, mnist5k.val.head(128), cfg)
    clean, robust = figures["val_clean"], figures["val_robust"]
    assert clean > 0.8  # trained without attacks: clean, and no match for PGD-10 at eps 0.3
    if selection == "clean":
        assert robust is None and figures["score"] == clean
        return
    assert robust < clean - 0.3
    expected = clean + robust if selection == "clean+robust" else robust + 1e-6 * clean
    assert figures["score"] == pytest.approx(expected, abs=1e-12)
