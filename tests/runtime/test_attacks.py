import pytest

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.attacks import (
    AttackSpec,
    Member,
    base_attack,
    members_for_ann,
    preset_members,
)
from spikeshield.runtime.gradient_modes import GradientMode


def test_paper_preset_is_the_19_member_reference_ensemble():
    members = preset_members("paper")
    labels = [m.label for m in members]
    assert len(members) == 19 and len(set(labels)) == 19
    assert all(m.attack == AttackSpec("pgd", steps=20) for m in members)
    kinds = [m.mode.surrogate.name if m.mode.kind == "bptt" else m.mode.kind for m in members]
    assert kinds.count("triangle") == 5 and kinds.count("rectangular") == 5
    assert kinds.count("exponential") == 3 and kinds.count("damped_exponential") == 3
    assert kinds[-3:] == ["straight_through", "bptr", "ann_proxy"]
    fgsm = preset_members("paper", base_attack("fgsm"))
    assert {m.attack.name for m in fgsm} == {"fgsm"}


def test_quick_adaptive_and_strong_presets():
    quick = preset_members("quick")
    assert len(quick) == 4 and quick[-1].mode == GradientMode("bptr")
    adaptive = preset_members("adaptive")
    paper = preset_members("paper")
    extra = adaptive[: len(adaptive) - 19]
    assert adaptive[len(extra):] == paper  # the papers' members, after the stronger ones
    assert extra[0].attack == AttackSpec("apgd-ce", steps=200)  # the long momentum attack first
    assert all(m.mode.detach_reset for m in extra)
    assert sum(m.mode.surrogate.adaptive for m in extra) == 2
    assert all(m.attack.steps >= 50 for m in extra)
    strong = preset_members("strong")
    names = [m.attack.name for m in strong]
    assert strong[: len(adaptive)] == adaptive
    assert {"apgd-ce", "apgd-dlr", "apgd-t", "transfer"} <= set(names)
    assert names[-1] == "square" and strong[-1].attack.queries == 5000
    sweep = [m for m in strong[len(adaptive):] if m.attack.name == "pgd" and m.mode.kind == "bptt"]
    widths = {m.mode.surrogate.gamma for m in sweep}
    assert min(widths) == pytest.approx(0.1) and max(widths) == pytest.approx(3.0)


def test_an_ann_needs_one_member_per_distinct_attack():
    ann = members_for_ann(preset_members("strong"))
    assert [(m.attack.name, m.attack.steps) for m in ann] == [
        ("apgd-ce", 200), ("pgd", 50), ("pgd", 20), ("apgd-ce", 100), ("apgd-dlr", 100),
        ("apgd-t", 100), ("square", 20)]
    assert all(m.mode is None for m in ann)
    # the base attack first, so that the report knows the ANN's PGD-20 robust accuracy alone
    first = members_for_ann(preset_members("adaptive"), AttackSpec("pgd", steps=20))
    assert [(m.attack.name, m.attack.steps) for m in first] == [
        ("pgd", 20), ("apgd-ce", 200), ("pgd", 50)]


def test_bad_attacks():
    with pytest.raises(ConfigError, match="unknown attack"):
        AttackSpec("cw")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_members("brutal")
    with pytest.raises(ConfigError, match="takes no gradient mode"):
        Member(AttackSpec("square"), GradientMode("bptr"))
    with pytest.raises(ConfigError, match="base attack"):
        base_attack("square")
    with pytest.raises(ConfigError, match="positive"):
        AttackSpec("pgd", steps=0)


def test_autoattack_is_the_standard_set_through_the_strongest_gradient_mode():
    members = preset_members("autoattack")
    assert [m.label for m in members] == [
        "APGD-CE-100 / triangle γ=1, detached reset", "APGD-T-100 / triangle γ=1, detached reset",
        "FAB-T-100 / triangle γ=1, detached reset", "Square-5000"]


def test_every_autoattack_member_breaks_images_of_a_calibrated_only_snn(converted_lenet, mnist5k):
    """Each member alone (exhaustive mode, 32 images, ε = 0.1; iterations cut to 5 and 100
    queries to keep the test fast) turns correct images into errors through the spiking network:
    FAB-T and APGD-T reach the SNN through the detached-reset surrogate, Square through queries."""
    from dataclasses import replace

    from spikeshield.runtime.ensemble import run_ensemble
    from spikeshield.runtime.executor import GraphExecutor

    members = [replace(m, attack=replace(m.attack, steps=5, queries=100))
               for m in preset_members("autoattack")]
    result = run_ensemble(GraphExecutor(converted_lenet.snn), mnist5k.test.head(32), members,
                          0.1, 8, 10, batch_size=32, exhaustive=True)
    assert result.clean_correct >= 25
    for member in result.members:
        assert member.standalone_robust < result.clean_correct, member.member.label
