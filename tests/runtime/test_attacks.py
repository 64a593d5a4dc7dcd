import pytest
import torch

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
    from spikeshield.runtime.attacks import PRESET_PATIENCE

    quick = preset_members("quick")
    assert len(quick) == 4 and quick[-1].mode == GradientMode("bptr")
    adaptive = preset_members("adaptive")
    paper = preset_members("paper")
    # the long momentum attack through ASSG first, then SA-PGD, then the papers' 19
    assert adaptive[0] == Member(AttackSpec("apgd-ce", steps=100), GradientMode.parse("assg:detach"))
    assert adaptive[1] == Member(AttackSpec("sa-pgd", steps=50), GradientMode.parse("assg"))
    assert adaptive[2:21] == paper
    later = adaptive[21:]  # issue 18's members, which broke nothing after the long attack
    assert len(later) == 8 and all(m.mode.detach_reset for m in later)
    assert sum(m.mode.surrogate.adaptive for m in later) == 2
    assert later[-1] == Member(AttackSpec("apgd-ce", steps=200),
                               GradientMode.parse("triangle:1:detach"))
    assert len({m.label for m in adaptive}) == len(adaptive) == 29
    assert PRESET_PATIENCE == {"adaptive": 3}
    strong = preset_members("strong")
    names = [m.attack.name for m in strong]
    assert strong[: len(adaptive)] == adaptive
    assert {"apgd-ce", "apgd-dlr", "apgd-t", "transfer", "sa-pgd"} <= set(names)
    assert [m.label for m in strong if m.attack.name == "sa-pgd"] == [
        "SA-PGD-50 / ASSG", "SA-PGD-100 / ASSG", "SA-PGD-100 / ASSG, detached reset"]
    assert names[-1] == "square" and strong[-1].attack.queries == 5000
    sweep = [m for m in strong[len(adaptive):] if m.attack.name == "pgd" and m.mode.kind == "bptt"]
    widths = {m.mode.surrogate.gamma for m in sweep}
    assert min(widths) == pytest.approx(0.1) and max(widths) == pytest.approx(3.0)
    fgsm = preset_members("adaptive", base_attack("fgsm"))
    assert [m.attack.name for m in fgsm[2:21]] == ["fgsm"] * 19  # the base attack is paper's


def test_an_ann_needs_one_member_per_distinct_attack():
    ann = members_for_ann(preset_members("strong"))
    assert [(m.attack.name, m.attack.steps) for m in ann] == [
        ("apgd-ce", 100), ("sa-pgd", 50), ("pgd", 20), ("pgd", 50), ("apgd-ce", 200),
        ("sa-pgd", 100), ("apgd-dlr", 100), ("apgd-t", 100), ("square", 20)]
    assert all(m.mode is None for m in ann)
    # the base attack first, so that the report knows the ANN's PGD-20 robust accuracy alone
    first = members_for_ann(preset_members("adaptive"), AttackSpec("pgd", steps=20))
    assert [(m.attack.name, m.attack.steps) for m in first] == [
        ("pgd", 20), ("apgd-ce", 100), ("sa-pgd", 50), ("pgd", 50), ("apgd-ce", 200)]


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
        "APGD-CE-100 / ASSG, detached reset", "APGD-T-100 / ASSG, detached reset",
        "FAB-T-100 / ASSG, detached reset", "Square-5000"]


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


def test_sa_pgd_moves_to_the_corner_its_gradient_signs_point_to_and_stays_in_the_ball():
    """On a linear model whose input gradient has one magnitude everywhere, SA-PGD's normalised
    momenta make every step the full step size along the gradient's signs: from any random start
    two steps of eps reach the ball's corner, which the model misclassifies (``broken_at`` says
    when); a sample the ball cannot break stays unbroken and inside the ball."""
    from torch import nn

    from spikeshield.runtime.attacks import SAPGD

    model = nn.Linear(4, 2)
    w = torch.tensor([1.0, -1.0, 1.0, -1.0])
    with torch.no_grad():
        model.weight.copy_(torch.stack([w, -w]))
        model.bias.copy_(torch.tensor([0.1, 0.0]))
    x = torch.full((3, 4), 0.5)
    x[2] += 0.3 * w  # far on the right side: even the corner is classified correctly
    y = torch.zeros(3, dtype=torch.long)
    torch.manual_seed(0)
    attack = SAPGD(model, eps=0.1, steps=10)
    x_adv = attack(x, y)
    torch.testing.assert_close(x_adv[:2], x[:2] - 0.1 * w, rtol=0, atol=1e-7)
    assert (model(x_adv).argmax(1) == torch.tensor([1, 1, 0])).all()
    assert attack.broken_at[:2].ge(0).all() and attack.broken_at[:2].le(2).all()
    assert attack.broken_at[2] == -1
    assert (x_adv - x).abs().max() <= 0.1 + 1e-7
    assert AttackSpec("sa-pgd", steps=100).label == "SA-PGD-100"


def test_assg_and_sa_pgd_each_break_images_their_weaker_counterparts_do_not(converted_lenet,
                                                                            mnist5k):
    """On a calibrated-only LeNet SNN (128 images, eps = 0.05, exhaustive): PGD-10 through ASSG
    breaks images PGD-10 through a fixed narrow triangle cannot reach (its gradient vanishes
    where ASSG's sharpness adapts), and SA-PGD-20 breaks images PGD-20 leaves through the same
    gradient mode."""
    from spikeshield.runtime.ensemble import run_ensemble
    from spikeshield.runtime.executor import GraphExecutor

    assg = GradientMode.parse("assg:detach")
    members = [Member(AttackSpec("pgd", steps=10), GradientMode.parse("triangle:0.05")),
               Member(AttackSpec("pgd", steps=10), assg),
               Member(AttackSpec("pgd", steps=20), assg),
               Member(AttackSpec("sa-pgd", steps=20), assg)]
    result = run_ensemble(GraphExecutor(converted_lenet.snn), mnist5k.test.head(128), members,
                          0.05, 8, 10, batch_size=128, exhaustive=True)
    narrow, adaptive, pgd, sapgd = (m.broken_mask for m in result.members)
    assert int((adaptive & ~narrow).sum()) >= 15
    assert int((sapgd & ~pgd).sum()) >= 3
    assert result.members[3].standalone_robust < result.members[2].standalone_robust


def test_sa_pgd_steps_follow_its_normalised_momenta_by_hand():
    """Two steps worked by hand on a model whose input gradient is a scripted direction c_k
    (CE's gradient is a positive multiple of it): m = 0.5 m + g / mean|g|, v = 0.8 v +
    g^2 / mean(g^2), move = clamp(m / sqrt(v) * s, -s, s) with s = eps for the first steps."""
    from torch import nn

    from spikeshield.runtime.attacks import SAPGD

    directions = [torch.tensor([1.0, 2.0, -1.0, -2.0]), torch.tensor([-1.0, 2.0, 1.0, -2.0])]
    seen = []

    class Scripted(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            c = directions[min(len(seen) - 1, 1)]
            return torch.stack([torch.zeros(len(x)), (x * c).sum(dim=1)], dim=1)

    x = torch.full((1, 4), 0.5)
    SAPGD(Scripted(), eps=0.1, steps=10)(x, torch.zeros(1, dtype=torch.long))
    start, first, second = seen[:3]  # (the step size halves after 2 of 10 steps)
    ball = lambda z: torch.minimum(torch.maximum(z, x - 0.1), x + 0.1)  # noqa: E731
    # step 1: m / sqrt(v) = sign(c) * sqrt(2.5) / 1.5 > 1 everywhere: the full step
    torch.testing.assert_close(first, ball(start + 0.1 * torch.tensor([1.0, 1, -1, -1])))
    # step 2: m = [-1/3, 2, 1/3, -2], v = 1.8 * [0.4, 1.6, 0.4, 1.6]
    ratio = torch.tensor([-1 / 3, 2, 1 / 3, -2]) / (1.8 * torch.tensor([0.4, 1.6, 0.4, 1.6])).sqrt()
    torch.testing.assert_close(second, ball(first + (0.1 * ratio).clamp(-0.1, 0.1)))
    assert abs(float(ratio[0])) < 0.5  # a coordinate whose gradient flipped moves less than s
