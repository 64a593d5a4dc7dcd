"""The surrogate a framework module trains with, read from what finetuning recorded."""

from __future__ import annotations

import pytest

from spikeshield.backends.frameworks.spike import surrogate_for
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.surrogates import Surrogate


@pytest.mark.parametrize("recorded,expected", [
    (None, Surrogate("triangle", 1.0)),  # never finetuned: the default
    ("arctan:2", Surrogate("arctan", 2.0)),
    ("triangle:0.5:adaptive+detach", Surrogate("triangle", 0.5)),  # runtime-only flags dropped
    ("ste", Surrogate("straight_through", 1.0)),  # an alias
    ("bptr", Surrogate("triangle", 1.0)),  # a rate gradient has no per-step surrogate
])
def test_the_module_trains_with_the_recorded_surrogate(recorded, expected):
    graph = Graph("g")
    if recorded is not None:
        graph.meta["finetuned"] = {"surrogate": recorded}
    assert surrogate_for(graph, None).surrogate == expected
    assert surrogate_for(graph, "sigmoid:4").surrogate == Surrogate("sigmoid", 4.0)  # asked for


def test_a_bad_surrogate_is_one_line():
    with pytest.raises(ConfigError, match="unknown surrogate 'nope'"):
        surrogate_for(Graph("g"), "nope:1")
    with pytest.raises(ConfigError, match=r"write name\[:gamma\]"):
        surrogate_for(Graph("g"), "triangle:1:detach")
