"""The framework backends against the real packages, on the cases where float32 decides: a membrane
exactly at its threshold, the order of ``+ I`` and ``- s * theta``, a missing package. (The zoo
SNNs, run the way each framework's tutorials run them, are in ``test_framework_habits.py``.)"""

from __future__ import annotations

import pytest
import torch

from spikeshield.backends.frameworks import FRAMEWORKS, to_module
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Input, Linear, Output
from spikeshield.runtime.executor import GraphExecutor
from tests.backends.conftest import zoo_snn


def runtime_reference(graph: Graph, x: torch.Tensor, steps: int):
    executor = GraphExecutor(graph).eval()
    with torch.no_grad():
        logits = executor(x, steps, record=True)
    return logits, executor.neuron_spike_counts


def one_neuron(reset: str, v_init: float, current: float) -> Graph:
    """input -> linear (weight 1, bias 0) -> IF(threshold 1) -> output: the membrane lands on the
    threshold exactly when ``v_init + k * current == 1``."""
    graph = Graph("tie")
    graph.add("input", Input((1,)))
    graph.add("fc", Linear(torch.ones(1, 1), torch.zeros(1)), ["input"])
    graph.add("if", IF(torch.tensor([1.0]), reset, v_init=v_init), ["fc"])
    graph.add("out", Linear(torch.ones(1, 1), torch.zeros(1)), ["if"])
    graph.add("output", Output(), ["out"])
    return graph.validate()


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
@pytest.mark.parametrize("reset,v_init,current,steps,spikes", [
    ("subtract", 0.5, 0.5, 3, 1),  # v: 1.0, 1.5 -> spike, 1.0 (firing at v >= 1: two spikes)
    ("zero", 0.0, 0.25, 4, 0),  # v: 0.25 ... 1.0 (at v >= 1: one)
    ("subtract", 0.0, 1.0, 4, 3),  # v: 1.0, 2.0, 2.0, 2.0 (at v >= 1: four)
])
def test_a_membrane_exactly_at_threshold_does_not_spike_in_any_framework(
        framework, reset, v_init, current, steps, spikes):
    graph = one_neuron(reset, v_init, current)
    x = torch.tensor([[current]])
    _, counts = runtime_reference(graph, x, steps)
    module = to_module(graph, framework)
    module(x, steps)
    assert counts["if"].item() == spikes  # the runtime spikes only above the threshold
    assert torch.equal(module.neuron_spike_counts["if"], counts["if"])


def test_a_framework_that_does_not_import_is_one_line_with_the_install_command(monkeypatch):
    import sys

    from spikeshield.compiler.ir.errors import ConfigError

    for name in [n for n in sys.modules if n == "sinabs" or n.startswith("sinabs.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "spikeshield.backends.frameworks.sinabs_backend",
                        raising=False)
    graph, _ = zoo_snn("lenet", "zero")
    with pytest.raises(ConfigError, match=r"cannot import sinabs .*pip install --no-deps "
                                          r"sinabs==3\.1\.3$"):
        to_module(graph, "sinabs")


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
@pytest.mark.parametrize("reset,v_init", [("subtract", 0.0), ("subtract", 0.5), ("zero", 0.0)])
def test_every_framework_rounds_the_membrane_as_the_runtime_does(framework, reset, v_init):
    """10,000 neurons, thresholds and constant currents on a grid of hundredths: in exact arithmetic
    many membranes land on their threshold, and in float32 the order of ``+ I`` and ``- s * theta``
    decides which side (snnTorch's own order, ``(v + I) - s * theta``, fails this test; on a
    compiled resnet20 it flipped 14 spike counts, issue 39)."""
    grid = torch.arange(1, 101, dtype=torch.float32) / 100
    theta, current = grid.repeat_interleave(100), grid.repeat(100)
    n = len(theta)
    graph = Graph("grid")
    graph.add("input", Input((1,)))
    graph.add("fc", Linear(current.reshape(n, 1), torch.zeros(n)), ["input"])
    graph.add("if", IF(theta, reset, v_init=v_init), ["fc"])
    graph.add("out", Linear(torch.ones(1, n) / n, torch.zeros(1)), ["if"])
    graph.add("output", Output(), ["out"])
    graph.validate()
    x = torch.ones(1, 1)
    _, counts = runtime_reference(graph, x, 8)
    module = to_module(graph, framework)
    with torch.no_grad():
        module(x, 8)
    assert torch.equal(module.neuron_spike_counts["if"], counts["if"])
