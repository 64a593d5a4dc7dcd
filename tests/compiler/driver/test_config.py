"""CompileConfig: which eps each robust stage trains under."""

from __future__ import annotations

import pytest
from spikeshield.compiler.driver.config import CompileConfig


@pytest.mark.parametrize("eps_train, prune_eps, finetune, pruning", [
    (None, None, 0.025, 0.025),  # both default to a quarter of the evaluation eps
    (0.05, None, 0.05, 0.05),  # pruning follows --eps-train
    (None, 0.1, 0.025, 0.1),  # --prune-eps sets pruning alone (the ANN's training eps)
])
def test_pruning_and_finetuning_eps(eps_train, prune_eps, finetune, pruning):
    cfg = CompileConfig(prune_sparsity=0.99, eps_train=eps_train, prune_eps=prune_eps)
    assert cfg.finetune_config(0.1).eps_train == pytest.approx(finetune)
    assert cfg.prune_config(0.1).eps == pytest.approx(pruning)
