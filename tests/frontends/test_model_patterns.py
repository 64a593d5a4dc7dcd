"""Patterns of real model code (written here in that style, not copied), each through every frontend
that can express it: the lowered IR in ANN mode reproduces the source model's logits to 1e-5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeshield.compiler.driver.model_io import load_model
from spikeshield.compiler.ir.ops import AvgPool2d, Pad2d
from spikeshield.runtime.executor import GraphExecutor

SHAPE = (3, 8, 8)


class InPlaceResidual(nn.Module):
    """``out += shortcut`` and a learned convex combination ``out += comb[i] * branch``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.shortcut = nn.Conv2d(3, 4, 1)
        self.comb = nn.Parameter(torch.tensor([0.7, 0.3]))
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        out *= self.comb[0]
        out += self.comb[1] * self.shortcut(x)
        out = F.relu(out)
        return self.fc(out.view(out.size(0), -1))


class InPlaceReluReused(nn.Module):
    """An in-place ReLU whose input tensor is used again afterwards (it holds the ReLU's output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        y = self.conv(x)
        z = self.relu(y)
        return self.fc((y + z).flatten(1))  # y is relu(y) now: this is 2 * relu(y)


class Padded(nn.Module):
    """Explicit zero padding: asymmetric before a conv, symmetric before a pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 9 * 7, 5)

    def forward(self, x):
        x = F.pad(x, (0, 1, 2, 1))  # left, right, top, bottom
        x = F.relu(self.conv(x))
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=1)
        return self.fc(torch.flatten(x, 1))


class ScaledTwice(nn.Module):
    """``2 * y`` and ``y + y`` side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3 * 8 * 8, 6), nn.Linear(6, 5)

    def forward(self, x):
        y = F.relu(self.fc1(x.view(x.size(0), -1)))
        return self.fc2(2 * y + (y + y))


MODELS = {"in-place residual": InPlaceResidual, "in-place relu reused": InPlaceReluReused,
          "zero padding": Padded, "repeated operands": ScaledTwice}


def _lower(model: nn.Module, frontend: str, tmp_path) -> object:
    example = torch.rand(2, *SHAPE)
    if frontend == "fx":
        return load_model(model, SHAPE)
    if frontend in ("pt2", "pt2-core-aten"):
        program = torch.export.export(model, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        if frontend == "pt2-core-aten":
            program = program.run_decompositions()
        path = tmp_path / "model.pt2"
        torch.export.save(program, path)
        return load_model(path)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    return load_model(path)


@pytest.mark.parametrize("frontend", ["fx", "pt2", "pt2-core-aten", "onnx"])
@pytest.mark.parametrize("pattern", MODELS)
def test_pattern_lowers_exactly(pattern, frontend, tmp_path):
    torch.manual_seed(0)
    model = MODELS[pattern]().eval()
    x = torch.rand(6, *SHAPE)
    with torch.no_grad():
        expected = model(x.clone())
    graph = _lower(model, frontend, tmp_path)
    with torch.no_grad():
        got = GraphExecutor(graph).eval()(x, None)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_asymmetric_padding_becomes_a_pad_node_and_symmetric_folds():
    graph = load_model(Padded().eval(), SHAPE)
    [pad] = graph.nodes_of(Pad2d)
    assert graph.op(pad).pads == (0, 1, 2, 1)
    [pool] = graph.nodes_of(AvgPool2d)
    assert graph.op(pool).padding == (1, 1) and graph.op(pool).count_include_pad
