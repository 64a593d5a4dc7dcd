"""The weight-sparse convolution kernel against torch's dense one, and the executor's use of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spikeshield.compiler.ir.ops import IF, Conv2d, Linear
from spikeshield.runtime import sparse_conv
from spikeshield.runtime.executor import SPARSE_ENV, GraphExecutor
from spikeshield.runtime.sparse_conv import SparsePlan, sparse_conv2d
from tests.backends.conftest import TIMESTEPS, zoo_snn

built, why = sparse_conv.available()
needs_kernel = pytest.mark.skipif(not built, reason=f"the C++ kernel did not build here: {why}")


def test_a_plan_lists_each_synapse_once_grouped_by_output_and_by_input_channel():
    mask = torch.zeros(3, 2, 2, 2)
    mask[0, 1, 0, 1] = mask[2, 0, 1, 1] = mask[2, 1, 0, 0] = mask[1, 1, 1, 0] = 1.0
    plan = SparsePlan.of(mask)
    synapses = set(zip(plan.out_ch.tolist(), plan.in_ch.tolist(), plan.kh.tolist(),
                       plan.kw.tolist()))
    assert synapses == {(0, 1, 0, 1), (2, 0, 1, 1), (2, 1, 0, 0), (1, 1, 1, 0)}
    assert plan.out_ptr.tolist() == [0, 1, 2, 4] and plan.in_ptr.tolist() == [0, 1, 4]
    assert plan.in_ch[plan.by_input].tolist() == [0, 1, 1, 1]
    assert plan.density == 4 / 24


@needs_kernel
@pytest.mark.parametrize("cout,cin,k,size,stride,padding,dilation", [
    (8, 4, 3, 9, 1, 1, 1), (6, 3, 3, 10, 2, 1, 1), (5, 4, 1, 7, 1, 0, 1), (4, 2, 3, 8, 1, 2, 2),
    (3, 3, 5, 6, 2, 2, 1), (7, 5, 3, 1, 1, 1, 1),  # a 1x1 map: only the centre tap is inside
])
def test_sparse_conv_equals_the_dense_conv_forward_and_backward(cout, cin, k, size, stride,
                                                                 padding, dilation):
    g = torch.Generator().manual_seed(cout * 10 + k)
    mask = (torch.rand(cout, cin, k, k, generator=g) < 0.3).float()
    weight = torch.randn(cout, cin, k, k, generator=g) * mask
    bias = torch.randn(cout, generator=g)
    x = torch.rand(5, cin, size, size, generator=g)
    w_dense, w_sparse = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    x_dense, x_sparse = x.clone().requires_grad_(), x.clone().requires_grad_()
    dense = F.conv2d(x_dense, w_dense * mask, bias, stride, padding, dilation)
    sparse = sparse_conv2d(x_sparse, w_sparse, bias, SparsePlan.of(mask), (stride, stride),
                           (padding, padding), (dilation, dilation))
    assert sparse.shape == dense.shape
    assert (sparse - dense).abs().max() < 1e-5
    upstream = torch.randn(dense.shape, generator=g)
    (dense * upstream).sum().backward()
    (sparse * upstream).sum().backward()
    assert (x_sparse.grad - x_dense.grad).abs().max() < 1e-5
    assert (w_sparse.grad - w_dense.grad).abs().max() < 1e-4
    assert torch.all(w_sparse.grad[mask == 0] == 0)  # no gradient reaches a pruned synapse


def pruned_vgg(density: float):
    snn, x = zoo_snn("vgg11", "subtract", "channel", 0.5)
    snn = snn.copy()
    g = torch.Generator().manual_seed(3)
    for name in snn.nodes_of(Conv2d, Linear):
        op = snn.op(name)
        mask = (torch.rand(op.weight.shape, generator=g) < density).float()
        snn.set_op(name, op.replace(weight=op.weight * mask, mask=mask))
    return snn, x


@needs_kernel
@pytest.mark.parametrize("choice", [True, False])
def test_the_executor_gives_the_same_spikes_with_either_kernel(monkeypatch, choice):
    """The choice between the kernels is timed; here it is forced each way, and either way the
    logits, every neuron's spikes and the input gradient are those of the dense path."""
    monkeypatch.setattr(sparse_conv, "faster_than_dense", lambda *a, **k: (choice, 1.0, 1.0))
    calls = []
    real = sparse_conv.sparse_conv2d
    monkeypatch.setattr(sparse_conv, "sparse_conv2d", lambda *a: calls.append(1) or real(*a))
    snn, x = pruned_vgg(0.02)
    results = {}
    for mode in ("off", "auto"):
        executor = GraphExecutor(snn, sparse=mode).eval()
        inputs = x.clone().requires_grad_()
        logits = executor(inputs, TIMESTEPS, record=True)
        logits.sum().backward()
        results[mode] = (logits.detach(), dict(executor.neuron_spike_counts), inputs.grad)
        if mode == "auto":
            assert executor.sparse_convs.choices and all(
                v == choice for v in executor.sparse_convs.choices.values())
    assert bool(calls) == choice  # the sparse kernel ran exactly when chosen
    (dense, dense_counts, dense_grad), (auto, auto_counts, auto_grad) = results["off"], results["auto"]
    assert (dense - auto).abs().max() < 1e-5
    for name in snn.nodes_of(IF):
        assert torch.equal(dense_counts[name], auto_counts[name]), name
    assert (dense_grad - auto_grad).abs().max() < 1e-5


def test_layers_denser_than_the_candidate_bound_are_never_measured(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a dense layer was timed")

    monkeypatch.setattr(sparse_conv, "faster_than_dense", fail)
    snn, x = pruned_vgg(0.5)
    executor = GraphExecutor(snn).eval()
    with torch.no_grad():
        executor(x, TIMESTEPS)
    assert executor.sparse_convs.choices == {}
    assert all(plan is None for plan in executor.sparse_convs.plans.values())


def test_sparse_off_and_a_bad_mode():
    snn, _ = pruned_vgg(0.02)
    assert GraphExecutor(snn, sparse="off").sparse == "off"
    with pytest.raises(Exception, match="sparse must be one of auto, off"):
        GraphExecutor(snn, sparse="always")


@needs_kernel
def test_the_environment_turns_the_sparse_path_off_for_executors_not_given_a_mode(monkeypatch):
    """SPIKESHIELD_SPARSE=off makes every executor a command builds run dense (benchmarks time a
    whole stage both ways with it); an explicit mode still wins, and a bad value is named."""
    monkeypatch.setattr(sparse_conv, "faster_than_dense", lambda *a, **k: (True, 1.0, 1.0))
    snn, x = pruned_vgg(0.02)

    def chosen(executor: GraphExecutor) -> int:
        with torch.no_grad():
            executor(x, TIMESTEPS)
        return len(executor.sparse_convs.choices)

    monkeypatch.delenv(SPARSE_ENV, raising=False)
    assert GraphExecutor(snn).sparse == "auto" and chosen(GraphExecutor(snn)) > 0
    monkeypatch.setenv(SPARSE_ENV, "off")
    assert chosen(GraphExecutor(snn)) == 0
    assert GraphExecutor(snn, sparse="auto").sparse == "auto"
    monkeypatch.setenv(SPARSE_ENV, "fast")
    with pytest.raises(Exception, match="SPIKESHIELD_SPARSE must be one of auto, off, got 'fast'"):
        GraphExecutor(snn)
