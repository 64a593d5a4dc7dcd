"""uniform_thresholds: every IF layer ends with one threshold, 1, and the graph computes what it
computed before (exactly where the thresholds are powers of two, so that dividing is exact)."""

import pytest
import torch

from spikeshield.compiler.ir.errors import PassError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Input, Linear, Output, Scale, Sum
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.compiler.passes.uniform_thresholds import uniform_thresholds
from spikeshield.runtime.executor import GraphExecutor
from tests.backends.conftest import TIMESTEPS


def _residual(reset: str = "zero", v_init: float = 0.0) -> Graph:
    """x -> fc -> IF a (thresholds 2, 1/2) -> amplitude -> fc_b -> sum(fc_b, amplitude) -> IF b
    (thresholds 4, 1/4) -> out: a residual block whose shortcut is the amplitude Scale itself."""
    g = Graph()
    g.add("x", Input((2,)))
    g.add("fc", Linear(torch.tensor([[1.5, -0.5], [0.25, 0.75]]), torch.tensor([0.5, 0.125])),
          ["x"])
    g.add("a", IF(torch.tensor([2.0, 0.5]), reset=reset, v_init=v_init), ["fc"])
    g.add("amp", Scale(scale=torch.tensor([2.0, 0.5])), ["a"])
    g.add("fc_b", Linear(torch.tensor([[1.0, 2.0], [-0.5, 1.0]]), torch.tensor([0.25, 0.0])),
          ["amp"])
    g.add("sum", Sum(), ["fc_b", "amp"])
    g.add("b", IF(torch.tensor([4.0, 0.25]), reset=reset, v_init=v_init), ["sum"])
    g.add("fc_out", Linear(torch.tensor([[1.0, -1.0], [0.5, 0.5]]), None), ["b"])
    g.add("out", Output(), ["fc_out"])
    g.meta.update({"calibrated": True, "timesteps": 6, "encoding": "direct"})
    return g.validate()


def _run(graph: Graph, x: torch.Tensor, timesteps: int):
    executor = GraphExecutor(graph).eval()
    with torch.no_grad():
        logits = executor(x, timesteps, record=True)
    return logits, executor.neuron_spike_counts


@pytest.mark.parametrize("reset,v_init", [("zero", 0.0), ("subtract", 0.5)])
def test_thresholds_become_one_and_the_spikes_stay_exactly_the_same(reset, v_init):
    graph = _residual(reset, v_init)
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(0)) * 4
    result = uniform_thresholds(graph)
    after = result.graph
    assert all(torch.equal(after.op(n).threshold, torch.ones(1)) for n in after.nodes_of(IF))
    assert after.op("a").v_init == v_init and after.meta["uniform_thresholds"]
    # fc's rows divided by a's thresholds; the sum passes b's on to fc_b's rows and, since the
    # shortcut Scale also feeds fc_b, to a new Scale on the shortcut edge alone.
    torch.testing.assert_close(after.op("fc").weight, torch.tensor([[0.75, -0.25], [0.5, 1.5]]))
    torch.testing.assert_close(after.op("fc").bias, torch.tensor([0.25, 0.25]))
    torch.testing.assert_close(after.op("fc_b").weight, torch.tensor([[0.25, 0.5], [-2.0, 4.0]]))
    (edge,) = [n for n in after.inputs("sum") if n not in ("fc_b",)]
    assert after.inputs(edge) == ["amp"] and torch.equal(after.op(edge).scale,
                                                          torch.tensor([0.25, 4.0]))
    assert after.consumers("amp") == ["fc_b", edge] or set(after.consumers("amp")) == {"fc_b",
                                                                                        edge}
    expected_logits, expected_counts = _run(graph, x, 6)
    logits, counts = _run(after, x, 6)
    for name in ("a", "b"):
        assert counts[name].sum() > 0 and torch.equal(counts[name], expected_counts[name])
    assert torch.equal(logits, expected_logits)


def test_a_third_party_residual_net_keeps_its_spikes_up_to_float_rounding():
    """Identity shortcuts written as ``out += shortcut(x)``: the shortcut edge needs its own
    Scale (its source also feeds the next block's conv)."""
    import spikeshield as ss
    from tests.third_party_models import ResNet

    torch.manual_seed(0)
    model = ResNet(widths=(8, 16, 32)).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    images = torch.rand(48, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    settings = {"reset": "zero", "v_init": 0.0, "timesteps": TIMESTEPS, "calibration_batches": 1}
    per_channel = ss.convert(model, images[:32], **settings).graph
    after = PassManager().run(per_channel, [("uniform_thresholds", {})])
    assert {tuple(after.op(n).threshold.shape) for n in after.nodes_of(IF)} == {(1,)}
    assert any(after.op(n).kind == "scale" and n.endswith("_scale") for n in after.nodes())
    x = images[32:]
    expected_logits, expected_counts = _run(per_channel, x, TIMESTEPS)
    logits, counts = _run(after, x, TIMESTEPS)
    differ = sum(int((counts[n] != expected_counts[n]).sum()) for n in counts)
    total = sum(counts[n].numel() for n in counts)
    assert sum(int(c.sum()) for c in counts.values()) > total  # the neurons do fire
    assert differ <= total * 1e-3, f"{differ} of {total} spike counts differ"
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-3)


def test_an_uncalibrated_graph_is_refused():
    graph = _residual()
    graph.meta.pop("calibrated")
    with pytest.raises(PassError, match="run calibrate_thresholds first"):
        uniform_thresholds(graph)
