"""CompileConfig: which eps each robust stage trains under."""

from __future__ import annotations

import pytest
from spikeshield.compiler.driver.config import CompileConfig


@pytest.mark.parametrize("eps_train, prune_eps, stage, ann_eps, finetune, pruning", [
    (None, None, "ann", None, 0.025, 0.1),  # an ANN without a record: pruned under --eps
    (None, None, "ann", 0.08, 0.025, 0.08),  # the eps spikeshield train recorded in the .pt2
    (0.05, None, "ann", 0.08, 0.05, 0.08),  # --eps-train is finetuning's, not the ANN's
    (None, None, "snn", 0.08, 0.025, 0.025),  # through the spikes: the finetuning budget
    (0.05, None, "snn", None, 0.05, 0.05),
    (None, 0.03, "ann", 0.08, 0.025, 0.03),  # --prune-eps overrides every default
])
def test_pruning_and_finetuning_eps(eps_train, prune_eps, stage, ann_eps, finetune, pruning):
    cfg = CompileConfig(prune_sparsity=0.99, eps_train=eps_train, prune_eps=prune_eps,
                        prune_stage=stage)
    assert cfg.finetune_config(0.1).eps_train == pytest.approx(finetune)
    assert cfg.prune_config(0.1, ann_eps).eps == pytest.approx(pruning)
