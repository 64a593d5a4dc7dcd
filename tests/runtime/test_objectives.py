"""Shared pieces of robust training: how an epoch is kept."""

import pytest

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.objectives import check_selection, selection_score


@pytest.mark.parametrize("selection, kept", [("clean+robust", "cleaner"), ("robust", "robuster"),
                                             ("clean", "cleaner")])
def test_epoch_selection_keeps_the_best_epoch_by_the_chosen_score(selection, kept):
    epochs = {"cleaner": (0.80, 0.50), "robuster": (0.70, 0.55)}  # (clean, PGD-10) on validation
    score = {name: selection_score(clean, robust, selection)
             for name, (clean, robust) in epochs.items()}
    assert max(score, key=score.get) == kept
    # "robust" ties go to the cleaner epoch, and an image of robustness outweighs any clean gain
    assert selection_score(0.8, 0.5, "robust") > selection_score(0.7, 0.5, "robust")
    assert selection_score(0.0, 0.50001, "robust") > selection_score(1.0, 0.5, "robust")


def test_an_unknown_selection_is_refused_naming_its_option():
    with pytest.raises(ConfigError, match="--prune-selection must be one of clean"):
        check_selection("best", "--prune-selection")
