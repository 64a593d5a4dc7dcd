"""Run by tests/runtime/test_distributed.py under torchrun (and in-process for the reference):
trains a BatchNorm-free model with ``train_robust`` and saves rank 0's weights."""

from __future__ import annotations

import sys

import torch
from torch import nn

from spikeshield.compiler.driver.data import load_data
from spikeshield.runtime.distributed import process_group
from spikeshield.runtime.training import TrainConfig, train_robust


def train_small() -> dict[str, torch.Tensor]:
    """Without BatchNorm, data-parallel SGD on shards of a batch is single-process SGD on the batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    cfg = TrainConfig(objective="standard", epochs=2, batch_size=32, lr=0.05, max_train=256)
    train_robust(model, load_data("mnist5k"), cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    with process_group(torch.device("cpu")) as world:
        state = train_small()
        if world.is_main:
            torch.save({"state": state, "processes": world.size}, sys.argv[1])
