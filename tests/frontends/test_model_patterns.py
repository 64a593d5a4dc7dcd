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


class Clipped(nn.Module):
    """Every spelling of a clip to [0, c]: modules, functions, methods, in place or not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.act1, self.act2 = nn.ReLU6(inplace=True), nn.Hardtanh(0.0, 0.4)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.act1(self.conv1(x) * 20)
        x = self.act2(self.conv2(x) / 10)
        x = torch.clamp(x, 0.0, 0.3) + x.clamp(min=0, max=0.25) + torch.clip(x, 0, 0.2)
        x = F.hardtanh(x, 0.0, 0.6) + F.relu6(x * 10)
        x = F.avg_pool2d(x.clamp_(0.0, 2.0), 2)
        return self.fc(x.flatten(1))


class TwoReluClip(nn.Module):
    """The clip of conversion-oriented code: ``up - relu(up - relu(x))``, ``up`` learned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.up1, self.up2 = nn.Parameter(torch.tensor(0.15)), nn.Parameter(torch.tensor(0.1))
        self.fc = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x):
        x = self.up1 - F.relu(self.up1 - F.relu(self.conv1(x)))
        x = self.conv2(x)
        x = self.up2 - (self.up2 - x.relu()).relu()
        return self.fc(x.flatten(1))


MODELS = {"in-place residual": InPlaceResidual, "in-place relu reused": InPlaceReluReused,
          "zero padding": Padded, "repeated operands": ScaledTwice, "clip activations": Clipped,
          "two-relu clip": TwoReluClip}


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


FRONTENDS = ["fx", "pt2", "pt2-core-aten", "onnx"]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_clip_activations_become_clipped_relus(frontend, tmp_path):
    from spikeshield.compiler.ir.ops import ReLU

    graph = _lower(Clipped().eval(), frontend, tmp_path)
    ceilings = sorted(graph.op(n).ceiling for n in graph.nodes_of(ReLU))
    assert ceilings == pytest.approx([0.2, 0.25, 0.3, 0.4, 0.6, 2.0, 6.0, 6.0])


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_two_relu_clip_converts_to_one_if_layer_whose_threshold_respects_the_ceiling(frontend,
                                                                                      tmp_path):
    from spikeshield.compiler.ir.ops import IF, ReLU
    from spikeshield.compiler.passes.manager import PassManager

    torch.manual_seed(0)
    model = TwoReluClip().eval()
    graph = _lower(model, frontend, tmp_path)
    assert len(graph.nodes_of(ReLU)) == 4
    fused = PassManager().run(graph, [("fuse_clipped_relu", {})])
    assert sorted(fused.op(n).ceiling for n in fused.nodes_of(ReLU)) == pytest.approx([0.1, 0.15])
    x = torch.rand(6, *SHAPE)
    with torch.no_grad():
        expected, got = model(x), GraphExecutor(fused).eval()(x, None)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    snn = PassManager().run(fused, [
        ("convert_relu_to_if", {}),
        ("calibrate_thresholds", {"data": [torch.rand(16, *SHAPE)], "timesteps": 4, "scale": 1.0,
                                  "mode": "max"}),
    ])
    thresholds = [float(snn.op(n).threshold.max()) for n in snn.nodes_of(IF)]
    # The currents into both neurons exceed the ceilings (conv outputs on inputs in [0, 1]), so
    # each threshold is the ceiling itself: the IF neuron's full rate stands for the clip value.
    assert thresholds == pytest.approx([0.15, 0.1])


@pytest.mark.parametrize("frontend", ["fx", "onnx"])
@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (0.0, -2.0), (None, 3.0)])
def test_clips_other_than_to_zero_and_a_positive_ceiling_are_refused(bounds, frontend, tmp_path):
    from spikeshield.compiler.ir.errors import UnsupportedOpError

    class Clamp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 8 * 8, 5)

        def forward(self, x):
            return self.fc(torch.clamp(x, *bounds).flatten(1))

    with pytest.raises(UnsupportedOpError) as err:
        _lower(Clamp().eval(), frontend, tmp_path)
    message = str(err.value)
    assert "clipping to [0, c] with c > 0" in message and len(message) < 300


class _GradFloor(torch.autograd.Function):
    """The straight-through floor of published QCFS code (forward floor, backward identity)."""

    @staticmethod
    def forward(ctx, x):
        return x.floor()

    @staticmethod
    def backward(ctx, grad):
        return grad


class ThirdPartyQCFS(nn.Module):
    """A QCFS activation written as the published code writes it (Bu et al. 2022): divide by the
    learned ceiling, ``floor(x * t + 0.5) / t`` through an autograd.Function, clamp to [0, 1],
    multiply back; then spikeshield's own zoo activation, spelt ``x * L / up``."""

    def __init__(self) -> None:
        super().__init__()
        from spikeshield.frontends.zoo import QCFS

        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.up, self.t = nn.Parameter(torch.tensor([0.6])), 4
        self.act2 = QCFS(levels=8, ceiling=0.3)
        self.fc = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x):
        x = self.conv1(x) / self.up
        x = _GradFloor.apply(x * self.t + 0.5) / self.t
        x = torch.clamp(x, 0, 1) * self.up
        return self.fc(self.act2(self.conv2(x)).flatten(1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_qcfs_activations_fuse_into_quantised_relus_and_convert_without_calibration(frontend,
                                                                                    tmp_path):
    from spikeshield.compiler.ir.ops import IF, Floor, ReLU
    from spikeshield.compiler.passes.manager import PassManager

    torch.manual_seed(0)
    model = ThirdPartyQCFS().eval()
    x = torch.rand(6, *SHAPE)
    graph = _lower(model, frontend, tmp_path)
    assert len(graph.nodes_of(Floor)) == 2
    fused = PassManager().run(graph, [("fuse_quantized_relu", {})])
    assert not fused.nodes_of(Floor)
    relus = sorted((fused.op(n).levels, fused.op(n).ceiling, fused.op(n).shift)
                   for n in fused.nodes_of(ReLU))
    assert relus == [(4, pytest.approx(0.6), 0.5), (8, pytest.approx(0.3), 0.5)]
    with torch.no_grad():
        expected = model(x)
        for g in (graph, fused):  # the source's exact quantised values, before and after fusion
            got = GraphExecutor(g).eval()(x, None)
            assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    snn = PassManager().run(fused, [
        ("convert_relu_to_if", {"reset": "subtract"}),
        ("calibrate_thresholds", {"data": [torch.rand(16, *SHAPE)], "timesteps": 4}),
    ])
    neurons = sorted((float(snn.op(n).threshold.max()), snn.op(n).v_init)
                     for n in snn.nodes_of(IF))
    assert neurons == [(pytest.approx(0.3), 0.5), (pytest.approx(0.6), 0.5)]
