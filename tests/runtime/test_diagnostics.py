"""Symptom 5 of the masking diagnostics: a sparse SNN that looks more robust than its own ANN."""

from __future__ import annotations

import pytest
import torch

from spikeshield.compiler.driver.robustness import confirms, is_pruned
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Input, Linear, Output
from spikeshield.runtime.diagnostics import Diagnostics, check_sparse_above_ann


def fresh() -> Diagnostics:
    return Diagnostics({}, "pgd", [], [], 0)


@pytest.mark.parametrize("sparse,snn,ann,confirmed,flagged,warned", [
    (True, 0.30, 0.23, False, True, False),  # the LeNet at 99.5%: flagged
    (True, 0.30, 0.23, True, False, True),  # the strong preset confirmed it: a warning only
    (False, 0.30, 0.23, False, False, False),  # a dense SNN above its ANN is not this symptom
    (True, 0.20, 0.23, False, False, False),  # below the ANN: nothing to explain
    (True, 0.23, 0.23, False, False, False),  # equal is not above
])
def test_a_sparse_snn_above_its_ann_is_flagged_until_confirmed(sparse, snn, ann, confirmed,
                                                               flagged, warned):
    diag = fresh()
    check_sparse_above_ann(diag, snn, ann, sparse, confirmed)
    assert bool(diag.masking) == flagged and bool(diag.warnings) == warned
    assert diag.trustworthy == (not flagged)
    if flagged:
        assert "30.0%" in diag.masking[0] and "23.0%" in diag.masking[0]
        assert "--preset strong" in diag.masking[0] and "NOT TRUSTWORTHY" in diag.verdict


def test_a_graph_is_pruned_when_a_mask_removes_a_synapse():
    def graph(mask):
        g = Graph("g")
        g.add("input", Input((2,)))
        weight = torch.ones(2, 2) if mask is None else mask.clone()
        g.add("fc", Linear(weight, torch.zeros(2), mask), ["input"])
        g.add("if", IF(torch.tensor([1.0])), ["fc"])
        g.add("output", Output(), ["if"])
        return g.validate()

    assert not is_pruned(graph(None)) and not is_pruned(graph(torch.ones(2, 2)))
    assert is_pruned(graph(torch.tensor([[1.0, 0.0], [1.0, 1.0]])))


@pytest.mark.parametrize("preset,skipped,confirmed", [
    ("strong", [False, False], True),
    ("strong", [False, True], False),  # --budget left a member out: nothing is confirmed
    ("adaptive", [False, False], False),
])
def test_only_the_whole_strong_preset_confirms(preset, skipped, confirmed):
    from types import SimpleNamespace

    result = SimpleNamespace(members=[SimpleNamespace(skipped=s) for s in skipped])
    assert confirms(preset, result) == confirmed
