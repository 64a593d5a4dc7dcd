"""Energy conventions, side by side: spikeshield's estimate and Paper B's dense-over-sparse ratio.

Two ways of comparing SNNs' energy are in use, and they disagree on the one layer that decides
whether an SNN beats its ANN: the first layer, fed analog pixels.

* **spikeshield** (the profile's headline): ``E = e_MAC x MACs(analog layers) + e_AC x SynOps``,
  the analog first layer counted at every time step (the input is fed again each step, as the
  runtime computes it), or once per sample (the *first layer once* variant: a chip that holds the
  first layer's constant current). Both are printed.
* **Paper B** (Schmolli et al., CPAL 2025): ``E = sum_l T e_AC E_x[sum_i psi_{l,i} o_{l,i}]``, spikes
  times *existing* outgoing synapses, the analog first layer left out, and only the ratio
  ``E_dense / E_sparse`` between a dense SNN and its sparse twin reported (``e_AC`` cancels; no ANN
  comparison). It is the dense SNN's spike-fed SynOps over the sparse SNN's.

:func:`compare_profiles` puts a sparse SNN's profile beside its dense twin's (``spikeshield profile
SPARSE --baseline DENSE``): both networks' own spikes, so the ratio includes the change in firing
that pruning causes, unlike the profile's *same spikes* counterfactual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spikeshield.compiler.ir.errors import ConfigError, ModelLoadError
from spikeshield.compiler.ir.limits import read_json_file


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def load_profile(source: str | Path) -> dict[str, Any]:
    """A profile written by ``spikeshield profile``: a compile directory or its profile.json."""
    path = Path(source)
    path = path / "profile.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"no profile at {path}; run `spikeshield profile {source}` first")
    try:
        profile = read_json_file(path)
        if not isinstance(profile["totals"]["synops"], (int, float)):
            raise TypeError
    except (ModelLoadError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a spikeshield profile.json") from None
    return profile


def compare_profiles(sparse: dict[str, Any], dense: dict[str, Any]) -> dict[str, Any]:
    """``E_dense / E_sparse`` in both conventions, and what else differs between the two networks.
    Both profiles must be of the same number of samples and time steps (the same test images)."""
    for key in ("samples", "timesteps"):
        if sparse[key] != dense[key]:
            raise ConfigError(f"the baseline profile has {key} {dense[key]}, this one {sparse[key]}; "
                              f"profile both with the same --n and -T")
    s, d = sparse["totals"], dense["totals"]
    return {
        "baseline": dense.get("graph"),
        "samples": sparse["samples"],
        "timesteps": sparse["timesteps"],
        "paper_b_dense_over_sparse_energy": _ratio(d["synops"], s["synops"]),
        "dense_over_sparse_energy": _ratio(d["snn_energy_pj"], s["snn_energy_pj"]),
        "dense_over_sparse_energy_first_layer_once": _ratio(
            d["snn_energy_pj_first_layer_once"], s["snn_energy_pj_first_layer_once"]),
        "weight_reduction": _ratio(dense["storage"]["nonzeros"], sparse["storage"]["nonzeros"]),
        "spikes_sparse_over_dense": _ratio(_total_spikes(sparse), _total_spikes(dense)),
    }


def _total_spikes(profile: dict[str, Any]) -> float:
    """Spikes per sample over all IF layers (each once, though several layers may drive it)."""
    neurons = {row["neurons_driven"]: row["neurons"] for row in profile["layers"]
               if row["neurons_driven"]}
    return sum(rate * neurons.get(name, 0) * profile["timesteps"]
               for name, rate in profile["spike_rates"].items())


def render_comparison(comparison: dict[str, Any]) -> str:
    """The markdown section profile.md gets with ``--baseline``."""

    def x(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    c = comparison
    return "\n".join([
        "## Against the dense SNN",
        "",
        f"Baseline `{c['baseline']}`, the same {c['samples']} test images at T = {c['timesteps']}, "
        "each network with its own spikes.",
        "",
        "| E_dense / E_sparse | ratio |",
        "|---|---|",
        f"| Paper B's convention (SynOps of spike-fed layers; the analog first layer left out) "
        f"| {x(c['paper_b_dense_over_sparse_energy'])} |",
        f"| spikeshield's estimate, analog first layer every step (the headline) "
        f"| {x(c['dense_over_sparse_energy'])} |",
        f"| spikeshield's estimate, analog first layer once "
        f"| {x(c['dense_over_sparse_energy_first_layer_once'])} |",
        "",
        f"Stored weights: {x(c['weight_reduction'])} fewer than the dense SNN; spikes per sample: "
        f"{x(c['spikes_sparse_over_dense'])} the dense SNN's.",
        "",
    ])
