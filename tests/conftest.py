"""Shared fixtures: small graphs and one small trained model (a few seconds on 2 cores)."""

from __future__ import annotations

import pytest
import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, Conv2d, Flatten, Input, Linear, Output, ReLU

torch.set_num_threads(2)


def tiny_conv_graph(seed: int = 0) -> Graph:
    """input(1,6,6) -> conv(3ch) -> relu -> flatten -> linear(4) -> output."""
    g = torch.Generator().manual_seed(seed)
    graph = Graph("tiny")
    graph.add("input", Input((1, 6, 6)))
    graph.add("conv", Conv2d(torch.randn(3, 1, 3, 3, generator=g), torch.randn(3, generator=g),
                             padding=1), ["input"])
    graph.add("relu", ReLU(), ["conv"])
    graph.add("flat", Flatten(), ["relu"])
    graph.add("fc", Linear(torch.randn(4, 108, generator=g), torch.zeros(4)), ["flat"])
    graph.add("output", Output(), ["fc"])
    return graph.validate()


def single_if_graph(threshold: float = 1.0, reset: str = "zero") -> Graph:
    """input(1,) -> IF -> output: the output is the firing rate."""
    graph = Graph("single")
    graph.add("input", Input((1,)))
    graph.add("if", IF(torch.tensor([threshold]), reset), ["input"])
    graph.add("output", Output(), ["if"])
    return graph.validate()


@pytest.fixture(scope="session")
def mnist5k():
    from spikeshield.compiler.driver.data import load_data

    return load_data("mnist5k")


@pytest.fixture(scope="session")
def trained_lenet(mnist5k, tmp_path_factory):
    """A LeNet (half width) trained for 2 clean epochs on mnist5k, and its .pt2 file."""
    from spikeshield.compiler.driver.pt2 import export_pt2
    from spikeshield.frontends.zoo import build_model
    from spikeshield.runtime.training import TrainConfig, train_robust

    torch.manual_seed(0)
    mean, std = mnist5k.channel_stats()
    model = build_model("lenet", mnist5k.input_shape, 10, mean, std, width=0.5)
    train_robust(model, mnist5k, TrainConfig(objective="standard", epochs=2, lr=0.05))
    path = tmp_path_factory.mktemp("models") / "lenet.pt2"
    export_pt2(model, mnist5k.input_shape, path)
    return model, path


@pytest.fixture(scope="session")
def converted_lenet(trained_lenet, mnist5k):
    """``trained_lenet`` converted at T=8 (calibration only): the CompileResult."""
    from spikeshield.compiler.driver.pipeline import CompileConfig, compile_model

    _, path = trained_lenet
    cfg = CompileConfig(timesteps=8, eval_samples=100, finetune="none", robustness="none")
    return compile_model(path, mnist5k, cfg)
