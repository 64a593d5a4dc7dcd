"""Robust pruning: exact budgets, masks that hold after every later pass, masks from exact zeros."""

from __future__ import annotations

import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError, IRValidationError
from spikeshield.compiler.ir.ops import Conv2d, Linear
from spikeshield.compiler.passes.finetune_robust import FinetuneConfig
from spikeshield.compiler.passes.infer_masks import infer_masks
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.runtime.pruning import PruneConfig, allocate_masks
from tests.conftest import tiny_conv_graph


def importance() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 25, generator=g), "b": torch.randn(100, 50, generator=g) * 0.5,
            "c": torch.randn(10, 20, generator=g)}


def test_global_budget_keeps_exactly_the_largest_weights():
    values = importance()
    masks = allocate_masks(values, 0.99, "global", set())
    total = sum(v.numel() for v in values.values())
    assert sum(int(m.sum()) for m in masks.values()) == total // 100  # 5300 -> 53
    kept = torch.cat([v.abs().flatten()[m.flatten() == 1] for v, m in
                      zip(values.values(), masks.values())])
    dropped = torch.cat([v.abs().flatten()[m.flatten() == 0] for v, m in
                         zip(values.values(), masks.values())])
    assert float(kept.min()) >= float(dropped.max())


def test_layer_budget_gives_every_layer_the_same_share_and_dense_layers_count():
    values = importance()
    masks = allocate_masks(values, 0.9, "layer", {"a"})
    assert int(masks["a"].sum()) == 100
    # 530 kept in all, 100 of them in the dense layer: 430 over 5200 prunable weights.
    assert int(masks["b"].sum()) == int(5000 * 430 / 5200)
    assert int(masks["c"].sum()) == int(200 * 430 / 5200)


def test_every_pruned_layer_keeps_a_weight_within_the_budget():
    values = {"big": torch.arange(1, 1001).float(), "small": torch.ones(10) * 0.001}
    masks = allocate_masks(values, 0.99, "global", set())
    assert int(masks["small"].sum()) == 1
    # 1010 weights -> 10 kept: the small layer's one is paid by big's weakest kept weight.
    assert int(masks["big"].sum()) == 9 and masks["big"][-9:].sum() == 9


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_refused(sparsity):
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        PruneConfig(sparsity=sparsity).validate()


def test_dense_layers_larger_than_the_budget_are_refused():
    with pytest.raises(ConfigError, match="dense layers alone"):
        allocate_masks(importance(), 0.99, "global", {"b"})


def test_mask_that_does_not_fit_its_weight_is_a_validation_error():
    graph = tiny_conv_graph()
    op = graph.op("fc")
    with pytest.raises(IRValidationError, match="mask shape"):
        graph.set_op("fc", op.replace(mask=torch.ones(4, 107)))
        graph.validate()


def test_nonzero_weight_under_a_zero_mask_is_a_validation_error():
    graph = tiny_conv_graph()
    op = graph.op("fc")
    mask = torch.ones_like(op.weight)
    mask[0, 0] = 0
    graph.set_op("fc", op.replace(mask=mask))
    with pytest.raises(IRValidationError, match="pruned weights"):
        graph.validate()


def test_infer_masks_turns_exact_zeros_into_masks():
    graph = tiny_conv_graph()
    op = graph.op("fc")
    weight = op.weight.clone()
    weight[:, :50] = 0
    graph.set_op("fc", op.replace(weight=weight))
    out = infer_masks(graph).graph.validate()
    assert out.op("conv").mask is None  # no zeros: left dense
    assert int(out.op("fc").mask.sum()) == 4 * 58


def assert_masks_hold(graph, masks: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        op = graph.op(name)
        assert torch.equal(op.mask, mask), f"{name}: mask changed"
        assert bool((op.weight[mask == 0] == 0).all()), f"{name}: a pruned weight is nonzero"
        assert bool((op.weight[mask == 1] != 0).any())


@pytest.fixture(scope="module")
def pruned_lenet(trained_lenet, mnist5k):
    from spikeshield.frontends.torch_module import from_module

    model, _ = trained_lenet
    ann = from_module(model, mnist5k.input_shape)
    cfg = PruneConfig(sparsity=0.9, method="hydra", score_epochs=1, finetune_epochs=1,
                      max_train=256, eps=0.1, attack_steps=2)
    manager = PassManager()
    return ann, manager.run_one(ann, "prune_weights", data=mnist5k, config=cfg), manager


def test_hydra_reaches_the_budget_and_records_it(pruned_lenet):
    ann, pruned, manager = pruned_lenet
    layers = pruned.nodes_of(Conv2d, Linear)
    total = sum(pruned.op(n).weight.numel() for n in layers)
    kept = sum(int(pruned.op(n).mask.sum()) for n in layers)
    assert kept == total - int(round(0.9 * total))
    assert sum(int(torch.count_nonzero(pruned.op(n).weight)) for n in layers) == kept
    assert pruned.meta["pruning"]["method"] == "hydra"
    info = manager.records[-1].info
    assert [h["phase"] for h in info["history"]] == ["scores", "finetune"]
    # Learned scores are not magnitudes: HYDRA keeps a different set than magnitude pruning would.
    by_magnitude = allocate_masks({n: ann.op(n).weight for n in layers}, 0.9, "global", set())
    assert any(not torch.equal(by_magnitude[n], pruned.op(n).mask) for n in layers)


def test_masks_hold_after_every_later_pass(pruned_lenet, mnist5k):
    _, pruned, _ = pruned_lenet
    masks = {n: pruned.op(n).mask.clone() for n in pruned.nodes_of(Conv2d, Linear)}
    calibration = [x for x, _ in mnist5k.train.batches(64)][:2]
    steps = [
        ("fold_batchnorm", {}),
        ("convert_relu_to_if", {}),
        ("calibrate_thresholds", {"data": calibration, "timesteps": 4}),
        ("fold_scales", {}),
        ("finetune_robust", {"data": mnist5k, "config": FinetuneConfig(
            epochs=1, max_train=128, timesteps=4, eps_train=0.05, val_samples=64,
            selection="clean")}),
        ("quantize_weights", {"bits": 8}),
        ("drop_biases", {}),
    ]
    graph = pruned
    for name, params in steps:
        graph = PassManager().run_one(graph, name, **params)
        # Folding batch norm scales rows of the weight, never a zero into a nonzero.
        assert_masks_hold(graph, masks)
    assert graph.meta["finetuned"]["best_epoch"] in (0, 1)


def test_pruning_the_snn_directly(converted_lenet, mnist5k):
    snn = converted_lenet.snn
    cfg = PruneConfig(sparsity=0.8, method="magnitude", finetune_epochs=1, max_train=128,
                      inner_attack="rfgsm", eps=0.05, lr=1e-3)
    out = PassManager().run_one(snn, "prune_weights", data=mnist5k, config=cfg, timesteps=4)
    layers = out.nodes_of(Conv2d, Linear)
    total = sum(out.op(n).weight.numel() for n in layers)
    assert sum(int(out.op(n).mask.sum()) for n in layers) == total - int(round(0.8 * total))
    assert out.meta["pruning"]["stage"] == "snn"
    assert_masks_hold(out, {n: out.op(n).mask for n in layers})


def test_zero_sparsity_changes_nothing(mnist5k):
    from spikeshield.compiler.passes.prune_weights import prune_weights

    graph = tiny_conv_graph()
    out = prune_weights(graph, mnist5k, PruneConfig(sparsity=0.0))
    assert out.changed is False and out.graph is graph


def test_harp_prunes_the_lenet_graph_to_the_exact_budget_with_its_own_layer_shares(
        trained_lenet, mnist5k):
    from spikeshield.frontends.torch_module import from_module

    model, _ = trained_lenet
    ann = from_module(model, mnist5k.input_shape)
    cfg = PruneConfig(sparsity=0.99, method="harp", score_epochs=1, finetune_epochs=0,
                      max_train=256, eps=0.1, attack_steps=2)
    manager = PassManager()
    pruned = manager.run_one(ann, "prune_weights", data=mnist5k, config=cfg)
    layers = pruned.nodes_of(Conv2d, Linear)
    total = sum(pruned.op(n).weight.numel() for n in layers)
    kept = {n: int(pruned.op(n).mask.sum()) for n in layers}
    assert sum(kept.values()) == total - int(round(0.99 * total)) and min(kept.values()) >= 1
    assert pruned.meta["pruning"]["method"] == "harp"
    assert pruned.meta["pruning"]["budget"] == "learned"
    densities = manager.records[-1].info["per_layer_density"]
    assert densities == pytest.approx({n: kept[n] / pruned.op(n).weight.numel() for n in layers})
    uniform = allocate_masks({n: ann.op(n).weight for n in layers}, 0.99, "layer", set())
    assert any(abs(kept[n] - int(uniform[n].sum())) > 2 for n in layers)  # not the uniform share
