import pytest
import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Floor, Input, Linear, Output, ReLU, Scale
from spikeshield.compiler.passes.fuse_quantized_relu import fuse_quantized_relu
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.runtime.executor import GraphExecutor


def _qcfs_graph(lam: float = 0.8, levels: int = 4, back: float | None = None) -> Graph:
    """fc -> /lam -> *L -> +0.5 -> floor -> /L -> clamp(0, 1) -> *back (default lam) -> fc2."""
    g = torch.Generator().manual_seed(0)
    graph = Graph()
    graph.add("x", Input((4,)))
    graph.add("fc", Linear(torch.randn(3, 4, generator=g), torch.randn(3, generator=g)), ["x"])
    graph.add("div", Scale(scale=torch.tensor([1 / lam])), ["fc"])
    graph.add("mul", Scale(scale=torch.tensor([float(levels)])), ["div"])
    graph.add("add", Scale(scale=torch.ones(1), bias=torch.tensor([0.5])), ["mul"])
    graph.add("floor", Floor(), ["add"])
    graph.add("div2", Scale(scale=torch.tensor([1 / levels])), ["floor"])
    graph.add("clamp", ReLU(ceiling=1.0), ["div2"])
    graph.add("mul2", Scale(scale=torch.tensor([lam if back is None else back])), ["clamp"])
    graph.add("fc2", Linear(torch.randn(2, 3, generator=g), None), ["mul2"])
    graph.add("out", Output(), ["fc2"])
    return graph.validate()


def test_the_qcfs_pattern_becomes_one_quantised_relu_with_the_same_values():
    graph = _qcfs_graph()
    result = fuse_quantized_relu(graph)
    fused = result.graph
    assert result.changed and fused.nodes() == ["x", "fc", "clamp", "fc2", "out"]
    op = fused.op("clamp")
    assert (op.levels, op.shift) == (4, 0.5) and op.ceiling == pytest.approx(0.8)
    x = torch.rand(64, 4) * 2 - 0.5
    with torch.no_grad():
        before, after = GraphExecutor(graph)(x), GraphExecutor(fused)(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_a_pattern_whose_constants_do_not_agree_is_left_alone():
    # Multiplying back by 2 * lam is not QCFS (a * s2 * s3 = 2): nothing changes.
    graph = _qcfs_graph(back=1.6)
    result = fuse_quantized_relu(graph)
    assert not result.changed and result.graph.nodes_of(Floor) == ["floor"]


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_at_t_equal_to_the_levels_the_converted_layer_sends_exactly_the_ann_values(levels):
    # QCFS's conversion theorem: an IF neuron with threshold lam, reset by subtraction and a
    # membrane starting at lam / 2 sends exactly lam/L * clamp(floor(x L / lam + 1/2), 0, L) over
    # T = L steps of a constant current x; the first layer's current is constant (direct input).
    graph = fuse_quantized_relu(_qcfs_graph(levels=levels)).graph
    x = torch.rand(256, 4) * 2 - 0.5
    snn = PassManager().run(graph, [
        ("convert_relu_to_if", {"reset": "subtract"}),
        ("calibrate_thresholds", {"data": [x], "timesteps": levels}),  # takes no statistic
        ("fold_scales", {}),
    ])
    (neuron,) = snn.nodes_of(IF)
    assert snn.op(neuron).v_init == 0.5
    assert torch.allclose(snn.op(neuron).threshold, torch.tensor([0.8]))
    with torch.no_grad():
        ann, spiking = GraphExecutor(graph)(x), GraphExecutor(snn)(x, levels)
    assert (ann - spiking).abs().max() < 1e-5
    assert ann.std() > 0.1  # the values are not all clipped to one level
