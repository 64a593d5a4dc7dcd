"""SynOp and MAC counts against hand counts on tiny networks with known spikes."""

from __future__ import annotations

import numpy as np
import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import IF, AvgPool2d, Conv2d, Flatten, Input, Linear, Output
from spikeshield.runtime.data import Dataset
from spikeshield.runtime.synops import count_synops, layer_macs

T = 8


def _data(images: np.ndarray) -> Dataset:
    """A dataset of the given uint8 images (N, C, H, W); labels are zeros."""
    return Dataset(torch.from_numpy(images.astype(np.uint8)), torch.zeros(len(images), dtype=torch.long))


def linear_net(mask: torch.Tensor | None = None, threshold: float = 0.5) -> Graph:
    """input(3,) -> identity linear -> IF(θ) -> linear(2x3, optionally masked) -> output."""
    w2 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    if mask is not None:
        w2 = w2 * mask
    g = Graph("lin")
    g.add("input", Input((3,)))
    g.add("fc1", Linear(torch.eye(3)), ["input"])
    g.add("if1", IF(torch.tensor([threshold])), ["fc1"])
    g.add("fc2", Linear(w2, mask=mask), ["if1"])
    g.add("output", Output(), ["fc2"])
    return g.validate()


def test_dense_linear_synops_equal_spikes_times_fan_out():
    # Pixels 255, 77, 0 -> currents 1.0, ~0.302, 0. With θ=0.5 and reset to zero the first neuron
    # fires every step (8 spikes), the second every second step (0.3, 0.6 -> 4 spikes), the third
    # never. Each of them reaches 2 synapses of fc2.
    images = np.array([[255, 77, 0]], dtype=np.uint8).reshape(1, 3)
    counts = count_synops(linear_net(), _data(images), T)
    assert counts.spikes["if1"] == 12
    assert counts.synops("fc2") == (8 + 4) * 2
    assert counts.synops_per_step["fc2"].tolist() == [2, 4, 2, 4, 2, 4, 2, 4]
    # The first layer is fed by pixels: MACs, once per sample, 3 of them (identity: 3 nonzeros).
    assert counts.analog_macs == {"fc1": 3}


def test_masked_synapses_do_not_count():
    images = np.array([[255, 77, 0]], dtype=np.uint8).reshape(1, 3)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # neuron 0: 1 synapse, neuron 1: none
    counts = count_synops(linear_net(mask), _data(images), T)
    assert counts.synops("fc2") == 8 * 1 + 4 * 0
    assert counts.dense_synops["fc2"] == (8 + 4) * 2  # the same spikes over every synapse


def test_no_spikes_no_synops():
    images = np.array([[255, 77, 0]], dtype=np.uint8).reshape(1, 3)
    counts = count_synops(linear_net(threshold=100.0), _data(images), T)
    assert counts.spikes["if1"] == 0
    assert counts.synops("fc2") == 0
    assert counts.synops_per_step["fc2"].tolist() == [0] * T


def conv_net(center_pruned: bool = False) -> Graph:
    """input(1,3,3) -> 1x1 conv (x2) -> IF(θ=1) -> 3x3 conv, padding 1 -> flatten -> output."""
    kernel = torch.ones(1, 1, 3, 3)
    mask = None
    if center_pruned:
        mask = torch.ones(1, 1, 3, 3)
        mask[0, 0, 1, 1] = 0
        kernel = kernel * mask
    g = Graph("conv")
    g.add("input", Input((1, 3, 3)))
    g.add("gain", Conv2d(torch.full((1, 1, 1, 1), 2.0)), ["input"])
    g.add("if1", IF(torch.tensor([1.0])), ["gain"])
    g.add("conv", Conv2d(kernel, padding=1, mask=mask), ["if1"])
    g.add("flat", Flatten(), ["conv"])
    g.add("output", Output(), ["flat"])
    return g.validate()


def test_padded_conv_counts_only_taps_inside_the_image():
    # All 9 input neurons fire every step (current 2 > θ=1). A 3x3 kernel with padding 1 over a
    # 3x3 map: a corner pixel reaches 4 outputs, an edge pixel 6, the centre 9 -> 4*4 + 4*6 + 9 = 49
    # SynOps per step, not 9 * 9 = 81.
    images = np.full((1, 1, 3, 3), 255, dtype=np.uint8)
    counts = count_synops(conv_net(), _data(images), T)
    assert counts.synops_per_step["conv"].tolist() == [49] * T
    assert counts.synops("conv") == 49 * T


def test_pruned_conv_tap_is_not_a_synapse():
    # Pruning the centre tap removes one synapse per output position: 49 - 9 = 40 per step.
    images = np.full((1, 1, 3, 3), 255, dtype=np.uint8)
    counts = count_synops(conv_net(center_pruned=True), _data(images), T)
    assert counts.synops("conv") == 40 * T
    assert counts.dense_synops["conv"] == 49 * T


def test_per_sample_counts_and_analog_macs():
    images = np.stack([np.full((1, 3, 3), 255), np.zeros((1, 3, 3))]).astype(np.uint8)
    counts = count_synops(conv_net(), _data(images), T)
    assert counts.synops_per_sample["conv"] == [49 * T, 0]
    assert counts.samples == 2
    # The 1x1 gain conv is fed by pixels: 9 MACs per pass.
    assert counts.analog_macs == {"gain": 9}


def test_layer_macs_are_border_aware_and_mask_aware():
    graph = conv_net(center_pruned=True)
    assert layer_macs(graph, "conv", dense=True) == 49
    assert layer_macs(graph, "conv") == 40


def test_events_through_a_pool_count_every_spike_at_the_next_layer():
    # 4 neurons all firing -> 2x2 average pool -> linear(1 -> 2): the pool is folded into the
    # next layer, so each of the 4 spikes per step reaches 2 synapses: 8 SynOps per step.
    g = Graph("pool")
    g.add("input", Input((1, 2, 2)))
    g.add("gain", Conv2d(torch.full((1, 1, 1, 1), 2.0)), ["input"])
    g.add("if1", IF(torch.tensor([1.0])), ["gain"])
    g.add("pool", AvgPool2d(2, 2), ["if1"])
    g.add("flat", Flatten(), ["pool"])
    g.add("fc", Linear(torch.ones(2, 1)), ["flat"])
    g.add("output", Output(), ["fc"])
    g.validate()
    images = np.full((1, 1, 2, 2), 255, dtype=np.uint8)
    counts = count_synops(g, _data(images), T)
    assert counts.synops("fc") == 8 * T


def test_poisson_input_spikes_are_counted_as_synops():
    # Under Poisson encoding a pixel of 255 spikes every step: the first layer receives events.
    images = np.array([[255, 255, 0]], dtype=np.uint8)
    counts = count_synops(linear_net(), _data(images), T, encoding="poisson")
    assert counts.analog_macs == {}
    assert counts.synops("fc1") == 2 * T  # two always-on inputs, one synapse each (identity)
