"""robustness.md's first line: the worst case with its sample count and binomial standard error,
the preset (the papers' protocol labelled as such), ε, T and the verdict."""

from __future__ import annotations

from spikeshield.compiler.driver.robustness_report import headline


def report(preset: str, robust: float, samples: int, trustworthy: bool = True) -> dict:
    return {"preset": preset, "samples": samples, "eps": 0.1, "timesteps": 8,
            "snn": {"robust_accuracy": robust, "diagnostics": {"trustworthy": trustworthy}}}


def test_the_headline_quotes_the_worst_case_with_its_standard_error():
    line = headline(report("adaptive", 0.5, 100))
    assert line.startswith("**SNN robust accuracy (worst case) 50.0% ± 5.0 pp**")  # sqrt(.25/100)
    assert "100 test images; spikeshield's default preset `adaptive`" in line
    assert "ε = 0.1, T = 8); verdict: trustworthy." in line
    assert "± 1.0 pp" in headline(report("adaptive", 0.9, 900))  # sqrt(.09/900) = 1 pp


def test_other_presets_are_labelled_and_masking_is_said():
    assert "the papers' protocol, not spikeshield's default" in headline(report("paper", 0.6, 500))
    assert "preset `quick`, not spikeshield's default" in headline(report("quick", 0.6, 500))
    assert headline(report("adaptive", 0.7, 200, trustworthy=False)).endswith(
        "verdict: NOT TRUSTWORTHY (gradient masking suspected).")


def test_the_default_curve_samples_are_whole_chunks_so_the_first_member_is_reused():
    """With the defaults, the diagnostics' samples are a whole number of the ensemble's chunks, so
    ``first_member_robust`` can hand the curve its last point (runtime/ensemble.py)."""
    from spikeshield.compiler.driver.robustness import RobustnessConfig

    cfg = RobustnessConfig()
    assert cfg.curve_samples >= 200 and cfg.curve_samples % cfg.batch_size == 0


def test_members_a_stopped_batch_did_not_run_are_named_with_what_they_were_spared():
    from spikeshield.compiler.driver.robustness_report import render_markdown

    def member(label, attacked, broken, spared):
        return {"label": label, "attacked": attacked, "broken": broken, "skipped": False,
                "robust_accuracy_after": 0.9, "not_run_samples": spared}

    diag = {"verdict": "trustworthy", "warnings": [], "curve_samples": 100,
            "zero_gradient_fraction": {}, "accuracy_vs_eps": [], "accuracy_vs_steps": [],
            "trustworthy": True}
    base = report("adaptive", 0.9, 100) | {"base_attack": "pgd", "device": "cpu"}
    base["snn"] |= {"clean_accuracy": 0.95, "diagnostics": diag, "patience": 3, "members": [
        member("APGD-CE-100 / ASSG, detached reset", 95, 5, 0),
        member("PGD-20 / triangle γ=1", 90, 0, 0), member("PGD-20 / triangle γ=2", 90, 0, 0),
        member("PGD-20 / triangle γ=3", 90, 0, 0), member("PGD-20 / triangle γ=0.5", 0, 0, 90)]}
    base["snn"]["members"].append(member("PGD-20 / triangle γ=0.25", 40, 0, 50))
    text = render_markdown(base)
    assert ("| 5 | PGD-20 / triangle γ=0.5 | 0 | not run (patience; 90 robust samples spared) |"
            in text)
    assert "| 6 | PGD-20 / triangle γ=0.25 | 40 | 0 (none); not run on 50 (patience) |" in text
    assert "stops once 3 members in a row broke none of its samples" in text
    assert "`--patience 0` runs every member" in text
    base["snn"]["members"][-2:] = [member("PGD-20 / triangle γ=0.5", 90, 0, 0)]
    assert "no batch stopped early: every member ran" in render_markdown(base)
