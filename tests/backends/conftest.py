"""Converted zoo networks shared by the backend tests (built once per session: a few seconds)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.frontends.torch_module import from_module
from spikeshield.frontends.zoo import build_model

TIMESTEPS = 6
ZOO = {"lenet": (1, 28, 28), "vgg11": (3, 32, 32), "resnet20": (3, 32, 32), "wrn16-4": (3, 32, 32)}
# Flips allowed when two float32 implementations disagree at a threshold (issue 4, Tests).
FLIP_MARGIN = 1e-4
FLIP_FRACTION = 1e-3


@functools.cache
def zoo_ann(arch: str) -> tuple[Graph, torch.Tensor]:
    """An untrained zoo network (half width for the CIFAR-sized ones) with random BatchNorm
    statistics, lowered to the IR, and a batch of 4 inputs in [0, 1]."""
    shape = ZOO[arch]
    torch.manual_seed(0)
    model = build_model(
        arch, shape, 10, [0.5] * shape[0], [0.25] * shape[0], 1.0 if arch == "lenet" else 0.5
    )
    for module in model.modules():  # non-trivial BN so that folding is exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    graph = from_module(model.eval(), shape)
    return graph, torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))


@functools.cache
def zoo_snn(arch: str, reset: str, threshold: str = "layer", v_init: float = 0.0
            ) -> tuple[Graph, torch.Tensor]:
    """``zoo_ann(arch)`` converted with thresholds calibrated on random images."""
    ann, x = zoo_ann(arch)
    calibration = [torch.rand(16, *ZOO[arch], generator=torch.Generator().manual_seed(2))]
    snn = PassManager().run(
        ann,
        [
            ("fold_batchnorm", {}),
            ("convert_relu_to_if", {"reset": reset, "threshold": threshold, "v_init": v_init}),
            ("calibrate_thresholds", {"data": calibration, "timesteps": TIMESTEPS}),
            ("fold_scales", {}),
        ],
    )
    snn.meta.update({"timesteps": TIMESTEPS, "encoding": "direct"})
    return snn, x


def assert_same_spikes(
    expected: np.ndarray, actual: np.ndarray, margin: np.ndarray | None, layer: str
) -> None:
    """Per-neuron spike counts agree, except for rare flips of neurons whose membrane came within
    ``FLIP_MARGIN`` of the threshold (float32 rounding differs between implementations)."""
    differ = expected != actual
    if not differ.any():
        return
    assert margin is not None, f"{layer}: {int(differ.sum())} neurons spike differently"
    assert differ.mean() < FLIP_FRACTION, f"{layer}: {differ.mean():.2%} of neurons flipped"
    assert (margin[differ] < FLIP_MARGIN).all(), (
        f"{layer}: a neuron spiked differently though its membrane stayed "
        f"{margin[differ].min():.3g} or more from the threshold"
    )
