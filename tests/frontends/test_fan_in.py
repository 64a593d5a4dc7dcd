"""Fan-in counts with multiplicity in every frontend: ``y + y`` is ``2 * y``, never ``y``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikeshield.compiler.driver.model_io import load_model
from spikeshield.runtime.executor import GraphExecutor


class Doubled(nn.Module):
    """A residual block that adds a tensor to itself, as real model code sometimes does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        y = torch.relu(self.fc1(x))
        return self.fc2(y + y)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Doubled().eval()


def _lowered_logits(graph, x):
    return GraphExecutor(graph).eval()(x, None)


def test_fx_lowers_y_plus_y_as_twice_y(model):
    x = torch.rand(8, 6)
    graph = load_model(model, (6,))
    assert torch.allclose(_lowered_logits(graph, x), model(x), atol=1e-6, rtol=0)


def test_pt2_lowers_y_plus_y_as_twice_y(model, tmp_path):
    x = torch.rand(8, 6)
    path = tmp_path / "doubled.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 6),)), path)
    assert torch.allclose(_lowered_logits(load_model(path), x[:2]), model(x[:2]), atol=1e-6,
                          rtol=0)


def test_onnx_lowers_y_plus_y_as_twice_y(model, tmp_path):
    x = torch.rand(8, 6)
    path = tmp_path / "doubled.onnx"
    torch.onnx.export(model, (torch.rand(1, 6),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})
    assert torch.allclose(_lowered_logits(load_model(path), x), model(x), atol=1e-6, rtol=0)


def test_the_fx_graph_and_its_ir_file_keep_both_edges(model, tmp_path):
    from spikeshield.compiler.ir.ops import Sum
    from spikeshield.compiler.ir.serialize import load_graph, save_graph

    graph = load_model(model, (6,))
    [total] = graph.nodes_of(Sum)
    assert len(graph.inputs(total)) == 2 and len(set(graph.inputs(total))) == 1
    again = load_graph(save_graph(graph, tmp_path / "g.ir"))
    assert again.inputs(total) == graph.inputs(total)
