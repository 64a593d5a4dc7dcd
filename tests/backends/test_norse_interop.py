"""Norse 1.1 interoperability: what its ``from_nir`` can load of our exports runs identically; the
limits docs/guides/deploy.md lists are checked here so that the guide cannot silently go stale."""

from __future__ import annotations

import warnings

import norse.torch as norse
import pytest
import torch

from spikeshield.backends.nir_backend import to_nir
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Conv2d, Flatten, Input, Linear, Output, Scale
from spikeshield.runtime.executor import GraphExecutor


def conv_if_linear(reset: str = "zero", normalise: bool = False) -> Graph:
    gen = torch.Generator().manual_seed(0)
    graph = Graph("plain")
    graph.add("input", Input((1, 6, 6)))
    previous = "input"
    if normalise:
        graph.add("norm", Scale(torch.tensor([2.0])), ["input"])
        previous = "norm"
    graph.add(
        "conv",
        Conv2d(torch.randn(3, 1, 3, 3, generator=gen), 0.1 * torch.randn(3, generator=gen)),
        [previous],
    )
    graph.add("if1", IF(torch.tensor([0.5]), reset), ["conv"])
    graph.add("flat", Flatten(), ["if1"])
    graph.add("fc", Linear(torch.randn(4, 48, generator=gen), torch.zeros(4)), ["flat"])
    graph.add("output", Output(), ["fc"])
    return graph.validate()


def test_norse_runs_a_conv_if_affine_export_identically():
    graph, steps = conv_if_linear(), 5
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = norse.from_nir(to_nir(graph), dt=1.0)
    logits = []
    for sample in x:  # Norse maps Flatten(start_dim=0) literally: feed unbatched samples
        state, total = None, 0
        for _ in range(steps):
            out, state = module(sample, state)
            total = total + out  # Norse drops the I readout: integrate on the host
        logits.append(total / steps)
    expected = GraphExecutor(graph)(x, steps)
    logits = torch.stack(logits).detach()
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert (logits - expected).abs().max() < 1e-5


@pytest.mark.parametrize("kwargs", [{"normalise": True}, {"reset": "subtract"}])
def test_norse_cannot_load_scale_or_subtractive_reset(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # docs/guides/deploy.md, "SNN frameworks": no Scale, I, Threshold
        with pytest.raises(KeyError):
            norse.from_nir(to_nir(conv_if_linear(**kwargs)), dt=1.0)
