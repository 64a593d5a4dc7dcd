"""RunSpec: the one record of how a graph is run, read through graph.run_spec()."""

import pytest

from spikeshield.compiler.ir.errors import IRValidationError
from spikeshield.compiler.ir.run_spec import RunSpec
from tests.conftest import tiny_conv_graph


def test_defaults_describe_an_ann_graph_with_no_declared_input_range():
    assert tiny_conv_graph().run_spec() == RunSpec(0, "direct", None, "mean")


def test_record_writes_the_keys_spikeshield_always_wrote_and_reads_back():
    graph = tiny_conv_graph()
    RunSpec(8, "poisson", (0.0, 1.0)).record(graph.meta)
    assert graph.meta == {"timesteps": 8, "encoding": "poisson", "input_range": [0.0, 1.0]}
    assert graph.run_spec() == RunSpec(8, "poisson", (0.0, 1.0))


@pytest.mark.parametrize("meta, phrase", [
    ({"timesteps": -1}, "'timesteps' must be a whole number"),
    ({"timesteps": True}, "'timesteps' must be a whole number"),
    ({"encoding": "rate"}, "'encoding' must be one of direct, poisson"),
    ({"input_range": [1.0, 0.0]}, "'input_range' must be [low, high]"),
    ({"input_range": [0.0, float("inf")]}, "'input_range' must be [low, high]"),
    ({"readout": "max"}, "'readout' must be one of mean"),
])
def test_malformed_settings_are_refused_by_the_verifier(meta, phrase):
    graph = tiny_conv_graph()
    graph.meta.update(meta)
    with pytest.raises(IRValidationError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
        graph.validate()
