"""The energy model: constants, formula, validation; NVML only where a GPU exists."""

from __future__ import annotations

import pytest

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.energy import EnergyModel, energy_model, measure_gpu_energy


def test_default_constants_are_horowitz_45nm_fp32():
    model = energy_model()
    assert (model.mac_pj, model.ac_pj, model.memory_pj) == (4.6, 0.9, None)
    assert model.snn_pj(analog_macs=100, synops=1000) == pytest.approx(4.6 * 100 + 0.9 * 1000)
    assert model.ann_pj(1000) == pytest.approx(4600)
    assert "4.6 pJ x MACs" in model.formula() and "0.9 pJ x SynOps" in model.formula()


def test_int8_preset_and_memory_term():
    model = energy_model("int8", memory_pj=2.0)
    assert (model.mac_pj, model.ac_pj) == (0.23, 0.03)
    assert model.snn_pj(10, 100) == pytest.approx(10 * (0.23 + 2) + 100 * (0.03 + 2))
    assert model.ann_pj(10) == pytest.approx(10 * 2.23)
    assert "2.0 pJ x (MACs + SynOps)" in model.formula()


@pytest.mark.parametrize("field, value", [("mac_pj", 0), ("ac_pj", -0.9), ("memory_pj", 0.0),
                                          ("mac_pj", float("nan")), ("ac_pj", float("inf"))])
def test_non_positive_or_non_finite_constants_are_refused(field, value):
    with pytest.raises(ConfigError, match="energy must be a positive number"):
        energy_model(**{field: value})


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="fp32, int8"):
        energy_model("fp64")


def test_no_gpu_means_not_measured_and_nothing_run():
    ran = []
    result = measure_gpu_energy(lambda: ran.append(1) or 1, "cpu")
    assert result["measured"] is False and "CUDA" in result["reason"] and not ran


def test_energy_model_is_validated_explicitly():
    with pytest.raises(ConfigError):
        EnergyModel(mac_pj=-1).validate()
