"""NeuroBench's own metrics (the real package) against spikeshield's profile on the zoo SNNs: where
the two conventions measure the same quantity they agree, layer by layer for the synaptic
operations; profile.md shows both; without NeuroBench the section says how to install it."""

from __future__ import annotations

import pytest
import torch

from spikeshield.compiler.driver.neurobench_check import (
    compare,
    fed_by_spikes_directly,
    neurobench_section,
    render,
)
from spikeshield.compiler.driver.profile import profile_graph, render_markdown
from spikeshield.runtime.data import Dataset
from spikeshield.runtime.energy import energy_model
from tests.backends.conftest import TIMESTEPS, ZOO, zoo_snn

pytest.importorskip("neurobench", reason="NeuroBench is installed by `make install` "
                                         "(pip install --no-deps neurobench==2.3.0)")


def pruned(graph):
    """Half of every conv/linear's synapses masked out (seeded): connection sparsity near 0.5."""
    out = graph.copy()
    generator = torch.Generator().manual_seed(4)
    for name in out.synaptic_nodes():
        op = out.op(name)
        op.mask = (torch.rand(op.weight.shape, generator=generator) < 0.5).to(op.weight.dtype)
        op.weight = op.weight * op.mask
    return out


@pytest.mark.parametrize("arch,prune", [("lenet", False), ("lenet", True), ("vgg11", False),
                                        ("resnet20", False)])
def test_neurobench_agrees_with_spikeshield_where_the_conventions_coincide(arch, prune):
    graph, _ = zoo_snn(arch, "subtract", "channel", 0.5)
    graph = pruned(graph) if prune else graph
    # Pixels in (0, 1]: no zero pixel, so the first layer's MACs coincide too.
    images = torch.rand(6, *ZOO[arch], generator=torch.Generator().manual_seed(0)).clamp_(1e-3)
    data = Dataset(images, torch.zeros(6, dtype=torch.long))
    profile = profile_graph(graph, data, TIMESTEPS, energy_model("fp32"), neurobench=True)
    section = profile["neurobench"]
    rows = {r["metric"]: r for r in section["comparison"]["rows"]}
    figures = section["figures"]
    assert figures["samples"] == 6 and figures["timesteps"] == TIMESTEPS
    assert rows["dense_ops"]["neurobench"] == rows["dense_ops"]["spikeshield"] > 0
    assert abs(rows["activation_sparsity"]["neurobench"]
               - rows["activation_sparsity"]["spikeshield"]) < 1e-9
    assert 0 < rows["activation_sparsity"]["neurobench"] < 1  # the network spikes, not always
    assert abs(rows["connection_sparsity"]["neurobench"]  # NeuroBench rounds to 3 decimals
               - rows["connection_sparsity"]["spikeshield"]) <= 5e-4
    assert (rows["connection_sparsity"]["neurobench"] > 0.4) == prune
    first = next(row for row in section["comparison"]["layers"] if row["input"] == "analog")
    assert first["neurobench_macs"] == first["spikeshield_macs"] > 0  # no zero pixel
    direct = [row for row in section["comparison"]["layers"] if row["same"]]
    assert direct and all(fed_by_spikes_directly(graph, row["name"]) for row in direct)
    for row in direct:
        assert row["neurobench_macs"] == 0  # 0/1 inputs: accumulates only
        assert abs(row["neurobench_acs"] - row["spikeshield_synops"]) <= 1e-9 * max(
            1.0, row["spikeshield_synops"]), row
    markdown = render_markdown(profile)
    assert "## NeuroBench 2.3.0 beside spikeshield" in markdown
    assert "| dense ops |" in markdown and "*same*:" in markdown


def test_a_layer_behind_a_pool_is_counted_by_different_conventions():
    """LeNet's classifier input passes an average pool: NeuroBench sees averaged spikes and counts
    MACs, spikeshield counts each spike once per synapse it reaches; the table says 'no'."""
    graph, _ = zoo_snn("lenet", "subtract", "channel", 0.5)
    data = Dataset(torch.rand(4, *ZOO["lenet"], generator=torch.Generator().manual_seed(1)),
                   torch.zeros(4, dtype=torch.long))
    profile = profile_graph(graph, data, TIMESTEPS, energy_model("fp32"))
    section = neurobench_section(graph, data, profile)
    behind_pool = [row for row in section["comparison"]["layers"]
                   if row["input"] == "spikes" and not row["same"]]
    assert behind_pool and all(row["neurobench_macs"] > 0 for row in behind_pool)
    assert compare(graph, profile, section["figures"]) == section["comparison"]


def test_without_neurobench_the_profile_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "neurobench", None)  # as if it were not installed
    graph, _ = zoo_snn("lenet", "zero")
    data = Dataset(torch.rand(2, *ZOO["lenet"]), torch.zeros(2, dtype=torch.long))
    profile = profile_graph(graph, data, TIMESTEPS, energy_model("fp32"), neurobench=True)
    assert "pip install --no-deps neurobench==2.3.0" in profile["neurobench"]["skipped"]
    assert render(profile["neurobench"])[1] == "## NeuroBench"
