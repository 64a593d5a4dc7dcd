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
