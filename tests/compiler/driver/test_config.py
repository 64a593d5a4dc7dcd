"""CompileConfig: which eps each robust stage trains under, and what it refuses."""

from __future__ import annotations

import pytest

from spikeshield.compiler.driver.config import CompileConfig
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.training import TrainConfig


@pytest.mark.parametrize("eps_train, prune_eps, stage, ann_eps, finetune, pruning", [
    (None, None, "ann", None, 0.025, 0.1),  # no record: finetuned at --eps / 4, pruned at --eps
    (None, None, "ann", 0.08, 0.08, 0.08),  # the eps spikeshield train recorded in the .pt2
    (0.05, None, "ann", 0.08, 0.05, 0.08),  # --eps-train is finetuning's, not the ANN's
    (None, None, "snn", None, 0.025, 0.025),  # through the spikes: the finetuning budget
    (None, None, "snn", 0.08, 0.08, 0.08),
    (0.05, None, "snn", 0.08, 0.05, 0.05),
    (None, 0.03, "ann", 0.08, 0.08, 0.03),  # --prune-eps overrides every default
])
def test_pruning_and_finetuning_eps(eps_train, prune_eps, stage, ann_eps, finetune, pruning):
    cfg = CompileConfig(prune_sparsity=0.99, eps_train=eps_train, prune_eps=prune_eps,
                        prune_stage=stage)
    assert cfg.finetune_config(0.1, ann_eps).eps_train == pytest.approx(finetune)
    assert cfg.prune_config(0.1, ann_eps).eps == pytest.approx(pruning)


@pytest.mark.parametrize("prune_epochs, finetune_epochs, scores, finetune", [
    (3, None, 3, 3),  # one number for both phases, as before
    (2, 6, 2, 6),  # Paper B's shape: fewer score epochs than finetuning ones
    (4, 0, 4, 0),  # scores only: the weights kept are not retrained
])
def test_prune_finetune_epochs(prune_epochs, finetune_epochs, scores, finetune):
    cfg = CompileConfig(prune_sparsity=0.9, prune_epochs=prune_epochs,
                        prune_finetune_epochs=finetune_epochs)
    prune = cfg.prune_config(0.1)
    assert (prune.score_epochs, prune.finetune_epochs) == (scores, finetune)


@pytest.mark.parametrize("steps, prune_max, finetune_max, want_steps, want_max", [
    (10, None, 10000, 10, 10000),  # pruning sees the finetuning images by default
    (3, 20000, 10000, 3, 20000),  # the ANN's own recipe: PGD-3 on its 20,000 images
    (5, None, None, 5, None),  # every training image
])
def test_prune_attack_steps_and_images(steps, prune_max, finetune_max, want_steps, want_max):
    cfg = CompileConfig(prune_sparsity=0.99, prune_attack_steps=steps, prune_max_train=prune_max,
                        finetune_max_train=finetune_max)
    prune = cfg.prune_config(0.1)
    assert (prune.attack_steps, prune.max_train) == (want_steps, want_max)


def test_prune_selection_reaches_pruning_and_an_unknown_one_is_refused_by_name():
    assert CompileConfig(prune_sparsity=0.9).prune_config(0.1).selection == "clean"
    cfg = CompileConfig(prune_sparsity=0.9, prune_selection="clean+robust")
    assert cfg.prune_config(0.1).selection == "clean+robust"
    with pytest.raises(ConfigError, match="--prune-selection must be one of"):
        CompileConfig(prune_sparsity=0.9, prune_selection="best").validate()


@pytest.mark.parametrize("options, flag", [
    ({"finetune_max_train": -100}, "--finetune-max-train"),  # head(-100) would drop 100 images
    ({"finetune_max_train": 0}, "--finetune-max-train"),
    ({"prune_max_train": -5}, "--prune-max-train"),
    ({"finetune": "none", "finetune_max_train": -5}, "--prune-max-train"),  # its default
])
def test_training_images_must_be_positive(options, flag):
    with pytest.raises(ConfigError, match=f"{flag} .*must be positive"):
        CompileConfig(prune_sparsity=0.9, **options).validate()


@pytest.mark.parametrize("max_train", [-1, 0])
def test_train_images_must_be_positive(max_train):
    with pytest.raises(ConfigError, match="--max-train .*must be positive"):
        TrainConfig(max_train=max_train).validate()
