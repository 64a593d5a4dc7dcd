"""Clean accuracy and spike statistics of a model or a compiled graph over a data set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from spikeshield.compiler.ir.ops import IF
from spikeshield.runtime.data import Dataset
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.progress import progress_bar


@dataclass
class EvalResult:
    accuracy: float
    samples: int
    timesteps: int | None = None
    # per IF layer: mean spikes per neuron per time step (firing rate), and neuron count
    spike_rates: dict[str, float] = field(default_factory=dict)
    neurons: dict[str, int] = field(default_factory=dict)

    @property
    def mean_spikes_per_sample(self) -> float:
        return sum(self.spike_rates[k] * self.neurons[k] * (self.timesteps or 1) for k in self.neurons)


def accuracy_of(
    predict: Callable[[torch.Tensor], torch.Tensor],
    data: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    desc: str = "evaluating",
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Top-1 accuracy of ``predict`` on ``data``; on ``attack(x, y)``'s images when it is given."""
    correct = 0
    batches = data.batches(batch_size, device=device)
    for x, y in progress_bar(batches, total=data.num_batches(batch_size), desc=desc, leave=False,
                             disable=None):
        if attack is not None:
            x = attack(x, y)
        with torch.no_grad():
            correct += int((predict(x).argmax(dim=1) == y).sum())
    return correct / max(1, len(data))


def evaluate_graph(
    executor: GraphExecutor,
    data: Dataset,
    timesteps: int | None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Accuracy and per-layer firing rates of a graph executor (ANN when ``timesteps`` is None)."""
    executor = executor.to(device).eval()
    graph = executor.graph
    spiking = [n for n in graph.nodes_of(IF)]
    neurons = {n: int(torch.tensor(graph.shape(n)).prod()) for n in spiking}
    totals = {n: 0.0 for n in spiking}
    correct = 0
    with torch.no_grad():
        for x, y in progress_bar(data.batches(batch_size, device=device), total=data.num_batches(batch_size),
                         desc=f"evaluating T={timesteps}" if timesteps else "evaluating ANN",
                         leave=False, disable=None):
            logits = executor(x, timesteps, record=bool(spiking))
            correct += int((logits.argmax(dim=1) == y).sum())
            for n in spiking:
                totals[n] += float(executor.spike_counts[n].sum())
    count = max(1, len(data))
    rates = {n: totals[n] / (count * neurons[n] * timesteps) for n in spiking} if spiking else {}
    return EvalResult(correct / count, len(data), timesteps, rates, neurons)
