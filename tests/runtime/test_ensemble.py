import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.surrogates import Surrogate
from spikeshield.runtime.attacks import AttackSpec, Member, with_steps
from spikeshield.runtime.diagnostics import (
    QUICK_CURVE_STEPS,
    Diagnostics,
    _compare_members,
    _judge,
    diagnose,
)
from spikeshield.runtime.ensemble import _attack_batch, run_ensemble
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.gradient_modes import GradientMode

EPS = 0.1
DETERMINISTIC = [
    Member(AttackSpec("fgsm"), GradientMode.parse("triangle:1")),
    Member(AttackSpec("pgd", steps=5, random_start=False), GradientMode("bptr")),
    Member(AttackSpec("pgd", steps=5, random_start=False), GradientMode("ann_proxy")),
]


@pytest.fixture(scope="module")
def snn(converted_lenet):
    return GraphExecutor(converted_lenet.snn)


@pytest.fixture(scope="module")
def samples(mnist5k):
    return mnist5k.test.head(64)


def test_worst_case_is_never_above_any_member(snn, samples):
    result = run_ensemble(snn, samples, DETERMINISTIC, EPS, 8, 10, exhaustive=True)
    for member in result.members:
        assert result.robust <= member.standalone_robust
    # the worst case is exactly the samples that survived every member
    survived = torch.ones(len(samples), dtype=torch.bool)
    for member in result.members:
        survived &= ~member.broken_mask
    clean_correct = result.clean_correct
    assert result.robust == int(survived.sum()) - (len(samples) - clean_correct)
    assert result.robust < result.clean_correct  # the attacks do something on a non-robust net


def test_later_members_attack_only_survivors(snn, samples):
    result = run_ensemble(snn, samples, DETERMINISTIC, EPS, 8, 10)
    assert result.members[0].attacked == result.clean_correct
    for before, after in zip(result.members, result.members[1:]):
        assert after.attacked == before.robust_after
    alone = [run_ensemble(snn, samples, [m], EPS, 8, 10).robust for m in DETERMINISTIC]
    assert result.robust <= min(alone)


def test_zero_budget_changes_nothing(snn, samples):
    result = run_ensemble(snn, samples, DETERMINISTIC[:1], 0.0, 8, 10)
    assert result.robust == result.clean_correct


def test_adversarial_examples_stay_in_the_threat_model(snn, samples, converted_lenet):
    """Every attack of the suite runs through its torchattacks class and stays in the L-inf ball."""
    x = samples.images[:16].float() / 255
    y = samples.labels[:16]
    ann = GraphExecutor(converted_lenet.ann)
    others = [Member(AttackSpec(name, steps=3), GradientMode("bptr"))
              for name in ("rfgsm", "apgd-ce", "apgd-dlr", "apgd-t")]
    others += [Member(AttackSpec("square", queries=20)), Member(AttackSpec("transfer", steps=3)),
               Member(AttackSpec("sa-pgd", steps=3), GradientMode.parse("assg:detach"))]
    for member in DETERMINISTIC + others:
        x_adv, first_wrong = _attack_batch(member, snn, ann, x, y, EPS, 8, 10, seed=0)
        unwatched = member.attack.name in ("transfer", "square") or (
            member.mode is not None and member.mode.kind == "ann_proxy")  # not the SNN's passes
        assert (first_wrong is None) == unwatched, member.label
        assert (x_adv - x).abs().max() <= EPS + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv != x).any(), member.label  # it did perturb something


def test_bad_ensembles(snn, samples):
    with pytest.raises(ConfigError, match="eps must be in"):
        run_ensemble(snn, samples, DETERMINISTIC, 1.5, 8, 10)
    with pytest.raises(ConfigError, match="source ANN"):
        run_ensemble(snn, samples, [Member(AttackSpec("transfer"))], EPS, 8, 10)
    with pytest.raises(ConfigError, match="at least one member"):
        run_ensemble(snn, samples, [], EPS, 8, 10)


def test_a_masked_model_is_flagged_and_a_sound_one_is_not(snn, samples):
    masked = [Member(AttackSpec("pgd", steps=10, random_start=False),
                     GradientMode("bptt", Surrogate("none")))]
    result = run_ensemble(snn, samples, masked, EPS, 8, 10)
    assert result.robust == result.clean_correct  # the attack cannot move: looks "robust"
    diag = diagnose(snn, samples, result, 8, 10, curve_samples=64, curve_steps=QUICK_CURVE_STEPS)
    assert diag.zero_gradient_fraction == {"none": 1.0}
    assert not diag.trustworthy and "NOT TRUSTWORTHY" in diag.verdict
    assert any("zero input gradient" in reason for reason in diag.masking)
    assert any("stays at" in reason for reason in diag.masking)

    sound = [Member(AttackSpec("pgd", steps=10), GradientMode.parse("triangle:1"))]
    result = run_ensemble(snn, samples, sound, EPS, 8, 10)
    diag = diagnose(snn, samples, result, 8, 10, curve_samples=64, curve_steps=QUICK_CURVE_STEPS)
    assert diag.trustworthy, diag.masking
    assert diag.eps_curve[0][0] == 0 and diag.eps_curve[-1] == (0.5, pytest.approx(0.0, abs=0.1))


def test_square_beating_the_white_box_members_is_flagged(snn, samples):
    members = [Member(AttackSpec("pgd", steps=5), GradientMode("bptt", Surrogate("none"))),
               Member(AttackSpec("square", queries=100))]
    result = run_ensemble(snn, samples, members, 0.3, 8, 10)
    assert result.members[1].broken > 0
    diag = Diagnostics({}, "none", [], [], curve_samples=0)
    _compare_members(diag, result)  # the member comparison alone; the curves are tested above
    assert any("black-box Square" in reason for reason in diag.masking)


def test_a_curve_still_falling_at_its_last_step_count_is_a_warning_not_masking():
    import torch

    from spikeshield.runtime.ensemble import EnsembleResult

    robust = torch.ones(100, dtype=torch.bool)
    at_100, at_200 = robust.clone(), robust.clone()
    at_100[:30] = False
    at_200[:42] = False  # 12 more samples broken by the last 100 steps, none restored
    steps_masks = [(50, robust.clone()), (100, at_100), (200, at_200)]
    result = EnsembleResult(0.1, 100, 100, at_200, [])
    diag = Diagnostics({}, "PGD / triangle γ=1", [], [(s, float(m.float().mean()))
                                                      for s, m in steps_masks], 100)
    _judge(diag, result, 10, [], steps_masks)
    assert not diag.masking
    assert diag.warnings == ["the attack has not converged: accuracy still falls from 70.0% at "
                             "100 steps to 58.0% at 200 steps (PGD / triangle γ=1), so the worst "
                             "case may be lower still; attack with more steps before quoting it"]
    flat = [(100, at_200.clone()), (200, at_200.clone())]
    flat[1][1][42] = False  # one sample more: within what chance allows
    quiet = Diagnostics({}, "x", [], [], 100)
    _judge(quiet, result, 10, [], flat)
    assert quiet.warnings == []


def test_a_time_budget_keeps_a_prefix_of_members_for_every_sample(snn, samples):
    first_alone = run_ensemble(snn, samples, DETERMINISTIC[:1], EPS, 8, 10, batch_size=16)
    tight = run_ensemble(snn, samples, DETERMINISTIC, EPS, 8, 10, batch_size=16, budget=1e-9)
    assert [m.skipped for m in tight.members] == [False, True, True]
    assert [m.attacked for m in tight.members[1:]] == [0, 0]  # nor on the first chunk
    assert torch.equal(tight.robust_mask, first_alone.robust_mask)
    report = tight.to_json()
    assert report["budget_seconds"] == 1e-9 and report["members_run"] == 1
    robust = report["robust_samples"]  # test-set positions of the survivors, for paired comparisons
    assert len(robust) == tight.robust and all(tight.robust_mask[i] for i in robust)
    assert robust == sorted(robust) and 0 < len(robust) < len(samples)
    ample = run_ensemble(snn, samples, DETERMINISTIC, EPS, 8, 10, batch_size=16, budget=1e9)
    everyone = run_ensemble(snn, samples, DETERMINISTIC, EPS, 8, 10, batch_size=16)
    assert not any(m.skipped for m in ample.members)
    assert torch.equal(ample.robust_mask, everyone.robust_mask)
    with pytest.raises(ConfigError, match="budget must be positive"):
        run_ensemble(snn, samples, DETERMINISTIC, EPS, 8, 10, budget=0)


def test_the_convergence_curve_runs_the_strongest_member_itself(snn, samples):
    apgd = Member(AttackSpec("apgd-ce", steps=4), GradientMode.parse("triangle:1:detach"))
    masked = Member(AttackSpec("pgd", steps=4), GradientMode("bptt", Surrogate("none")))
    result = run_ensemble(snn, samples, [masked, apgd], EPS, 8, 10)
    assert result.members[1].broken > result.members[0].broken
    diag = diagnose(snn, samples, result, 8, 10, curve_samples=32, curve_steps=(2, 4))
    assert diag.curve_member == "APGD-CE / triangle γ=1, detached reset"
    assert [s for s, _ in diag.steps_curve] == [2, 4]
    alone = run_ensemble(snn, samples.head(32), [apgd], EPS, 8, 10)  # the curve's 4-step point
    assert diag.steps_curve[-1][1] == pytest.approx(float(alone.robust_mask.float().mean()))


def test_a_log_shows_which_member_a_long_chunk_is_at(snn, samples, capsys, monkeypatch):
    from spikeshield.runtime.progress import INTERVAL_VARIABLE

    monkeypatch.setenv(INTERVAL_VARIABLE, "0")  # every refresh becomes a line
    result = run_ensemble(snn, samples, DETERMINISTIC, EPS, 8, 10, desc="ensemble")
    lines = capsys.readouterr().err.splitlines()
    for i, member in enumerate(DETERMINISTIC, 1):
        assert any(f"member={i}/3 {member.label}" in line for line in lines), lines
    # One chunk: the robust count after the last member is the ensemble's worst case.
    last = [line for line in lines if "member=3/3" in line][-1]
    assert f"robust={result.robust}/{len(samples)}" in last


def test_the_curve_reuses_the_first_members_own_attack_and_gets_the_same_point(
        snn, samples, monkeypatch):
    """The steps curve's last point is the first member itself (adaptive's APGD-CE-200): on the
    same chunks, seed and T the ensemble's own attack is that point exactly, so it is not run
    again; on a head that splits a chunk it is."""
    import spikeshield.runtime.diagnostics as diagnostics

    apgd = Member(AttackSpec("apgd-ce", steps=4), GradientMode.parse("triangle:1:detach"))
    result = run_ensemble(snn, samples, [apgd], EPS, 8, 10, batch_size=32)
    attacked = []
    real = diagnostics.run_ensemble

    def counting(target, data, members, eps, *args, **kwargs):
        attacked.append((eps, members[0], len(data)))
        return real(target, data, members, eps, *args, **kwargs)

    monkeypatch.setattr(diagnostics, "run_ensemble", counting)
    diag = diagnose(snn, samples, result, 8, 10, curve_samples=32, curve_steps=(2, 4),
                    batch_size=32)
    assert (EPS, apgd, 32) not in attacked and (EPS, with_steps(apgd, 2), 32) in attacked
    alone = real(snn, samples.head(32), [apgd], EPS, 8, 10, batch_size=32)
    assert diag.steps_curve[-1][1] == float(alone.robust_mask.float().mean())
    attacked.clear()  # 24 samples cut the first chunk of 32: the point is attacked again
    diagnose(snn, samples, result, 8, 10, curve_samples=24, curve_steps=(2, 4), batch_size=32)
    assert (EPS, apgd, 24) in attacked


def test_the_iteration_that_broke_a_sample_is_counted_as_sa_pgd_counts_it(snn, samples):
    """The attacked model's count of whole-batch passes (how the ensemble records, for any
    member, when a sample broke) agrees with SA-PGD's own iteration count on every sample it
    broke, and the ensemble's JSON lists that pass beside each broken sample."""
    from spikeshield.runtime.attacks import SAPGD, AttackedModel

    x = samples.images[:32].float() / 255
    y = samples.labels[:32]
    model = AttackedModel(snn, 8, GradientMode.parse("assg:detach"))
    model.watch(y)
    attack = SAPGD(model, EPS, steps=6)
    attack(x, y)
    broken = attack.broken_at >= 0
    assert 0 < int(broken.sum()) < 32
    assert len(set(attack.broken_at[broken].tolist())) > 1  # not all at the same iteration
    assert torch.equal(model.first_wrong_passes()[broken], attack.broken_at[broken])
    assert (model.first_wrong_passes()[~broken] == 7).all()  # 7 passes: none misclassified
    member = Member(AttackSpec("sa-pgd", steps=6), GradientMode.parse("assg:detach"))
    result = run_ensemble(snn, samples.head(32), [member], EPS, 8, 10, batch_size=32)
    record = result.to_json()["members"][0]
    assert len(record["broken_at_pass"]) == len(record["broken_samples"]) == record["broken"] > 0
    assert all(0 <= i <= 6 for i in record["broken_at_pass"])


def test_patience_stops_a_chunk_after_members_that_broke_nothing_and_shards_still_add_up(
        snn, samples):
    """With patience 1, a chunk stops at the first member that broke none of its samples: the
    members after it do not attack that chunk and count the robust samples they were spared;
    chunks decide alone, so two shards merge into exactly the one-process result."""
    from spikeshield.runtime.distributed import World
    from spikeshield.runtime.ensemble import merge_ensembles

    idle = Member(AttackSpec("pgd", steps=1, step_size=1e-9, random_start=False),
                  GradientMode.parse("triangle:1"))  # moves no pixel that matters
    members = [DETERMINISTIC[0], idle, DETERMINISTIC[1]]
    full = run_ensemble(snn, samples, members, EPS, 8, 10, batch_size=32)
    assert full.members[1].broken == 0 and full.members[2].broken > 0
    stopped = run_ensemble(snn, samples, members, EPS, 8, 10, batch_size=32, patience=1)
    first, quiet, last = stopped.members
    assert (first.broken, quiet.attacked, quiet.broken) == (full.members[0].broken,
                                                           first.robust_after, 0)
    assert (last.attacked, last.broken, last.spared) == (0, 0, first.robust_after)
    assert stopped.robust == first.robust_after > full.robust  # the price of stopping
    record = stopped.to_json()
    assert record["patience"] == 1 and record["members"][2]["not_run_samples"] == last.spared
    # patience 2: the idle member alone is not enough to stop
    assert run_ensemble(snn, samples, members, EPS, 8, 10, batch_size=32,
                        patience=2).robust == full.robust
    shards = [run_ensemble(snn, samples, members, EPS, 8, 10, batch_size=32, patience=1,
                           shard=World(i, 2)).per_sample for i in (1, 0)]
    merged = merge_ensembles(shards, members, EPS, patience=1).to_json()
    mine = stopped.to_json()
    for row in merged["members"] + mine["members"]:
        row.pop("seconds")
    assert merged == mine
    with pytest.raises(ConfigError, match="patience counts members"):
        run_ensemble(snn, samples, members, EPS, 8, 10, patience=1, exhaustive=True)
