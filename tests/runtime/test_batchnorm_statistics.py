"""BatchNorm statistics re-estimated after the weights changed: the fixed point, PyTorch's own
BatchNorm as the reference, and the pruning pass that relies on it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikeshield.compiler.ir.ops import BatchNorm
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.frontends.torch_module import from_module
from spikeshield.runtime.batchnorm_statistics import recalibrate_batchnorm
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.pruning import PruneConfig


def bn_net() -> nn.Module:
    """Two conv-BN-ReLU blocks and a classifier, with stored statistics far from the truth."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10), nn.BatchNorm1d(10),
    )
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-2, 2)
            m.running_var.uniform_(0.1, 5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def images(n: int = 48) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_each_node_ends_with_the_statistics_of_its_input_in_the_recalibrated_network():
    executor = GraphExecutor(from_module(bn_net(), (1, 8, 8)))
    x = images()
    assert recalibrate_batchnorm(executor, list(x.split(16))) == 3
    for name in executor.graph.nodes_of(BatchNorm):
        entering = executor(x, stop_at=name)  # computed with every statistic now stored
        dims = [0, *range(2, entering.dim())]
        t = executor.tensors_of(name)
        torch.testing.assert_close(t["running_mean"], entering.mean(dims), rtol=0, atol=1e-5)
        torch.testing.assert_close(t["running_var"], entering.var(dims), rtol=1e-5, atol=1e-6)


def test_matches_pytorch_batchnorm_tracking_the_same_images():
    model = bn_net()
    executor = GraphExecutor(from_module(model, (1, 8, 8)))
    x = images()
    recalibrate_batchnorm(executor, [x])
    # PyTorch in training mode, one batch, cumulative average: the batch's statistics, each layer
    # normalised by its own batch statistics (biased variance: 1 - 1/(48*64) from ours at most).
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    ours = [executor.tensors_of(n) for n in executor.graph.nodes_of(BatchNorm)]
    theirs = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for t, m in zip(ours, theirs, strict=True):
        torch.testing.assert_close(t["running_mean"], m.running_mean, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(t["running_var"], m.running_var, rtol=2e-3, atol=2e-3)


def test_batch_statistics_train_as_pytorch_batchnorm_and_evaluate_on_the_stored_ones():
    model = bn_net()
    executor = GraphExecutor(from_module(model, (1, 8, 8)), batch_statistics=True)
    model.train()
    for x in images(64).split(16):  # four steps of tracking, outputs compared at each
        torch.testing.assert_close(executor.train()(x), model(x), rtol=1e-4, atol=1e-5)
    ours = [executor.tensors_of(n) for n in executor.graph.nodes_of(BatchNorm)]
    theirs = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for t, m in zip(ours, theirs, strict=True):
        torch.testing.assert_close(t["running_mean"], m.running_mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(t["running_var"], m.running_var, rtol=1e-4, atol=1e-6)
    x = images(8)
    torch.testing.assert_close(executor.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    # Without the flag, training mode still normalises with the stored statistics.
    plain = GraphExecutor(from_module(bn_net(), (1, 8, 8))).train()
    torch.testing.assert_close(plain(x), bn_net()(x), rtol=1e-4, atol=1e-5)


def test_a_spiking_graph_is_refused():
    graph = from_module(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),
                                      nn.Flatten(), nn.Linear(72, 3)).eval(), (1, 8, 8))
    spiking = PassManager().run_one(graph, "convert_relu_to_if")
    assert spiking.nodes_of(BatchNorm)
    with pytest.raises(ValueError, match="this graph spikes"):
        recalibrate_batchnorm(GraphExecutor(spiking), [images()])


def test_pruning_leaves_the_statistics_of_the_pruned_network(mnist5k):
    """After 95% magnitude pruning, each BatchNorm holds its input's statistics over the first
    training images, as the pruned network computes them (the trained ones would be far off)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(4),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(7),
        nn.Flatten(), nn.Linear(16, 10),
    )
    model.train()
    with torch.no_grad():  # realistic statistics of the dense network
        for x, _ in mnist5k.train.head(512).batches(256):
            model(x)
    ann = from_module(model.eval(), mnist5k.input_shape)
    cfg = PruneConfig(sparsity=0.95, method="magnitude", finetune_epochs=1, max_train=128,
                      objective="standard", eps=0.0)
    pruned = PassManager().run_one(ann, "prune_weights", data=mnist5k, config=cfg)
    executor = GraphExecutor(pruned)
    x = torch.cat([b for b, _ in mnist5k.train.head(512).batches(256)])
    for name in pruned.nodes_of(BatchNorm):
        entering = executor(x, stop_at=name)
        stored = executor.tensors_of(name)
        torch.testing.assert_close(stored["running_mean"], entering.mean((0, 2, 3)),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stored["running_var"], entering.var((0, 2, 3)),
                                   rtol=1e-4, atol=1e-6)


def test_pruning_does_not_depend_on_the_statistics_the_dense_network_stored(mnist5k):
    """Training on batch statistics and re-estimating before use: two copies of a network that
    differ only in their stored statistics prune to the same weights and statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(4),
        nn.Flatten(), nn.Linear(4 * 7 * 7, 10),
    ).eval()
    first = from_module(model, mnist5k.input_shape)
    with torch.no_grad():
        model[1].running_mean.uniform_(-2, 2)
        model[1].running_var.uniform_(0.1, 5)
    second = from_module(model, mnist5k.input_shape)
    cfg = PruneConfig(sparsity=0.5, method="magnitude", finetune_epochs=1, max_train=128,
                      objective="standard", eps=0.0)
    a, b = (PassManager().run_one(g, "prune_weights", data=mnist5k, config=cfg)
            for g in (first, second))
    for name in a.nodes():
        for field, value in a.op(name).tensors().items():
            torch.testing.assert_close(b.op(name).tensors()[field], value, rtol=1e-4, atol=1e-5,
                                       msg=f"{name}.{field}")
