import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError, PassError
from spikeshield.compiler.ir.ops import IF, Conv2d, Linear
from spikeshield.compiler.passes.finetune_robust import (
    FinetuneConfig,
    add_zero_biases,
    validation_size,
)
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.runtime.data import Dataset, DataSplits
from tests.conftest import tiny_conv_graph


class _Untouchable(Dataset):
    """A test split that fails the moment anything reads it (once built: the constructor checks
    its images)."""

    sealed = False

    def __post_init__(self):
        super().__post_init__()
        self.sealed = True

    def __getattribute__(self, name):
        if name in ("images", "labels", "batches", "head", "subset", "__len__") and \
                object.__getattribute__(self, "sealed"):
            raise AssertionError(f"finetuning read the test split ({name})")
        return super().__getattribute__(name)


def _splits(mnist5k) -> DataSplits:
    sealed = _Untouchable(mnist5k.test.images[:1], mnist5k.test.labels[:1])
    return DataSplits(mnist5k.name, mnist5k.train, mnist5k.val, sealed, mnist5k.num_classes)


SMALL = dict(epochs=1, max_train=128, val_samples=64, timesteps=4, batch_size=32)


def test_finetuning_trains_within_its_contract_without_reading_the_test_split(converted_lenet,
                                                                                mnist5k):
    snn = converted_lenet.snn
    # start one layer below the floor: the pass must lift it and keep every threshold above it
    first_if = snn.nodes_of(IF)[0]
    lowered = snn.copy()
    lowered.set_op(first_if, lowered.op(first_if).replace(threshold=torch.tensor([0.01])))
    manager = PassManager()
    cfg = FinetuneConfig(**SMALL, lr=0.05, threshold_floor=0.2, selection="clean")
    out = manager.run_one(lowered, "finetune_robust", data=_splits(mnist5k), config=cfg)
    assert [out.op(n).kind for n in out.nodes()] == [snn.op(n).kind for n in snn.nodes()]
    for name in out.nodes_of(IF):
        assert float(out.op(name).threshold.min()) >= 0.2
    assert all(out.op(n).bias is not None for n in out.nodes_of(Conv2d, Linear))
    info = manager.records[-1].info
    history = info["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    best = history[info["best_epoch"]]
    assert best["score"] == max(h["score"] for h in history)  # selection on validation only
    assert out.meta["finetuned"]["objective"] == "trades"
    assert info["val_samples"] == 64 and info["train_samples"] == 128


@pytest.mark.parametrize("objective", ["at", "mart"])
def test_other_objectives_and_pgd_inner_attack(converted_lenet, mnist5k, objective):
    cfg = FinetuneConfig(objective=objective, inner_attack="pgd", inner_steps=2, **SMALL)
    manager = PassManager()
    manager.run_one(converted_lenet.snn, "finetune_robust", data=_splits(mnist5k), config=cfg)
    info = manager.records[-1].info
    first = info["history"][1]
    assert first["loss"] > 0 and first["val_robust"] is not None
    # every score states its binomial standard error on the images it scored
    assert first["val_images"] == info["val_samples"] == 64
    p = first["val_robust"]
    assert first["val_robust_se"] == pytest.approx((p * (1 - p) / 64) ** 0.5, abs=1e-4)
    # 128 training images afford fewer than the floor of 100 images: the floor wins (all 64 here)
    assert info["validation"]["images"] == 64 and info["validation"]["share_of_epoch"] > 0.2


def test_validation_costs_a_fifth_of_an_epoch_by_default_and_all_images_on_request():
    # The default finetuning (TRADES, R-FGSM: 1/3 + 1 + 2 passes an image) on 3,600 training
    # images, validation PGD-10 through one surrogate (1/3 + 10 + 1/3 passes an image).
    sized = validation_size(FinetuneConfig(), 3600, 1000)
    assert sized["images"] == 225 and sized["share_of_epoch"] == pytest.approx(0.2, abs=1e-3)
    # a PGD-3 inner attack makes the epoch dearer, so validation may score more images
    assert validation_size(FinetuneConfig(inner_attack="pgd", inner_steps=3), 3600, 1000)[
        "images"] == 360
    # every attacked gradient mode is one more PGD-10 per image: fewer images
    two = FinetuneConfig(val_surrogate="triangle:1,bptr")
    assert validation_size(two, 3600, 1000)["images"] == 114
    # never more than is available, never fewer than the floor
    assert validation_size(FinetuneConfig(), 60000, 1000)["images"] == 1000
    assert validation_size(FinetuneConfig(), 100, 1000)["images"] == 100
    # 0 (or None) keeps the thoroughness before the budget: every image offered
    assert validation_size(FinetuneConfig(val_budget=0), 3600, 1000)["images"] == 1000
    # a clean-only selection costs a third of a pass an image: all images are affordable
    assert validation_size(FinetuneConfig(selection="clean"), 3600, 1000)["images"] == 1000
    from spikeshield.compiler.driver.config import CompileConfig

    assert CompileConfig().finetune_config(0.1).val_budget == 0.2
    assert CompileConfig(finetune_val_budget=0).finetune_config(0.1).val_budget == 0
    with pytest.raises(ConfigError, match="--finetune-val-budget must be a share"):
        FinetuneConfig(val_budget=-0.1).validate()


def test_zero_biases_are_added_only_where_missing():
    graph = tiny_conv_graph()
    graph.set_op("conv", graph.op("conv").replace(bias=None))
    out, added = add_zero_biases(graph)
    assert added == ["conv"]
    assert torch.equal(out.op("conv").bias, torch.zeros(3))
    assert torch.equal(out.op("fc").bias, graph.op("fc").bias)
    assert graph.op("conv").bias is None  # the input graph is untouched


def test_bad_finetuning_settings(converted_lenet, mnist5k):
    for cfg, message in [
        (FinetuneConfig(objective="standard"), "objective must be one of"),
        (FinetuneConfig(eps_train=2.0), "eps_train must be in"),
        (FinetuneConfig(inner_attack="cw"), "attack must be one of"),
        (FinetuneConfig(threshold_floor=0), "threshold floor must be positive"),
        (FinetuneConfig(surrogate="sawtooth"), "unknown gradient mode"),
    ]:
        with pytest.raises(ConfigError, match=message):
            cfg.validate()
    with pytest.raises(PassError, match="needs a spiking graph"):
        PassManager().run_one(converted_lenet.ann, "finetune_robust", data=mnist5k,
                              config=FinetuneConfig(**SMALL))


def test_model_selection_scores_a_bounded_validation_subset_set_from_the_compile_options():
    from spikeshield.compiler.driver.config import CompileConfig
    from spikeshield.compiler.ir.errors import ConfigError

    assert CompileConfig().finetune_config(0.1).val_samples == 1000
    assert CompileConfig(finetune_val_samples=200).finetune_config(0.1).val_samples == 200
    with pytest.raises(ConfigError, match="validation samples must be positive"):
        CompileConfig(finetune_val_samples=0).validate()
    chosen = CompileConfig(finetune_beta=6, finetune_selection="robust",
                           finetune_val_surrogate="triangle:2,bptr").finetune_config(0.1)
    assert (chosen.beta, chosen.selection) == (6, "robust")
    assert [m.spec for m in chosen.val_modes()] == ["triangle:2", "bptr"]
    with pytest.raises(ConfigError, match="unknown gradient mode"):
        CompileConfig(finetune_val_surrogate="sawtooth").validate()
    with pytest.raises(ConfigError, match="selection must be one of"):
        CompileConfig(finetune_selection="loss").validate()
    assert CompileConfig(finetune_attack="pgd").finetune_config(0.1).inner_steps == 10
    pgd3 = CompileConfig(finetune_attack="pgd", finetune_attack_steps=3).finetune_config(0.1)
    assert (pgd3.inner_attack, pgd3.inner_steps) == ("pgd", 3)
    with pytest.raises(ConfigError, match="add --finetune-attack pgd"):
        CompileConfig(finetune_attack_steps=3).validate()
    with pytest.raises(ConfigError, match="--finetune-attack-steps must be at least 1"):
        CompileConfig(finetune_attack="pgd", finetune_attack_steps=0).validate()
    paper = CompileConfig(finetune_attack_surrogate="paper").finetune_config(0.1)
    assert paper.attack_surrogate == "paper"
    with pytest.raises(ConfigError, match="unknown gradient mode"):
        CompileConfig(finetune_attack_surrogate="sawtooth").validate()
    with pytest.raises(ConfigError, match="finetune attack surrogate: assg follows one batch"):
        CompileConfig(finetune_attack_surrogate="triangle:1,assg").validate()
    from spikeshield.compiler.passes.finetune_robust import FinetuneConfig
    with pytest.raises(ConfigError, match="finetune surrogate: assg follows one batch"):
        FinetuneConfig(surrogate="assg:detach").validate()
    assert CompileConfig(finetune_val_surrogate="assg").finetune_config(0.1).val_modes()[0].kind \
        == "assg"


def test_inner_attack_takes_the_attack_modes_in_turn_and_leaves_training_s_alone(converted_lenet,
                                                                                   mnist5k):
    from types import SimpleNamespace

    from spikeshield.compiler.passes.finetune_robust import _crafting
    from spikeshield.runtime.attacks import AttackedModel
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.gradient_modes import GradientMode

    training = GradientMode.parse("triangle:1")
    executor = GraphExecutor(converted_lenet.snn, gradient_mode=training)
    seen = []
    forward = executor.forward

    def recording(*args, **kwargs):
        seen.append(executor.gradient_mode.spec)
        return forward(*args, **kwargs)

    executor.forward = recording
    model = AttackedModel(executor, 4, training)
    cfg = FinetuneConfig(eps_train=0.1, attack_surrogate="rectangular:0.5, bptr")
    cfg.validate()
    scheduler = SimpleNamespace(last_epoch=0)
    craft = _crafting(model, cfg, scheduler)
    x, y = mnist5k.train.images[:4].float() / 255.0, mnist5k.train.labels[:4]
    turns = []
    for step in (0, 1, 2, 7):  # a resumed run: the turn follows the scheduler's step count
        scheduler.last_epoch = step
        seen.clear()
        x_adv = craft(x, y)
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)
        turns.append(set(seen))
    assert turns == [{"rectangular:0.5"}, {"bptr"}, {"rectangular:0.5"}, {"bptr"}]
    assert model.mode == training and executor.gradient_mode == training
    assert [m.spec for m in FinetuneConfig().attack_modes()] == ["triangle:1"]
    assert len(FinetuneConfig(attack_surrogate="paper").attack_modes()) == 19
    for bad, message in [("sawtooth", "unknown gradient mode"), (",", "same, paper or")]:
        with pytest.raises(ConfigError, match=message):
            FinetuneConfig(attack_surrogate=bad).validate()


def test_validation_attacks_through_every_validation_surrogate_and_keeps_the_worst_case(
        converted_lenet, mnist5k):
    from spikeshield.compiler.passes.finetune_robust import _score
    from spikeshield.runtime.executor import GraphExecutor
    from spikeshield.runtime.gradient_modes import GradientMode

    executor = GraphExecutor(converted_lenet.snn, gradient_mode=GradientMode.parse("triangle:1"))
    val = mnist5k.val.head(48)
    single = _score(executor, val, FinetuneConfig(**SMALL, eps_train=0.1), "cpu")
    both = _score(executor, val, FinetuneConfig(**SMALL, eps_train=0.1,
                                                val_surrogate="triangle:1,exponential:2"), "cpu")
    assert both["val_clean"] == single["val_clean"]
    # the second surrogate attacks only what the first left, and breaks some of it
    assert both["val_robust"] < single["val_robust"]
    assert executor.gradient_mode.spec == "triangle:1"  # training's mode is left as it was
