"""benchmarks/gpu_check.py, the script a lent GPU runs (issue 44): its dry run on the CPU passes
with identical spikes, and its exactness check sees a single threshold moved."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
from runtime_speed import build  # noqa: E402


def test_the_dry_run_on_the_cpu_passes_with_identical_spikes(tmp_path):
    out = tmp_path / "gpu-check.json"
    assert gpu_check.main(["--device", "cpu", "--nets", "lenet", "--batches", "4",
                           "--check-samples", "32", "--repeats", "1", "--min-time", "0.01",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    exact = result["nets"]["lenet"]["exactness"]
    assert exact["ok"] and exact["spike_counts_differing"] == 0 and exact["spike_counts"] > 32 * 1000
    assert result["nets"]["lenet"]["rows"][0]["batch"] == 4 and result["device"].startswith("the CPU")


def test_the_exactness_check_counts_spikes_that_move_with_a_threshold():
    _, _, snn, _, images = build("lenet", 8)
    other = type(snn)(snn.to_graph()).eval()
    name = next(n for n in other.graph.nodes() if "threshold" in other.tensors_of(n))
    with torch.no_grad():
        other.tensors_of(name)["threshold"].mul_(1.05)
    exact = gpu_check.exactness(snn, other, images[:32].float() / 255.0, 8, torch.device("cpu"))
    assert exact["spike_counts_differing"] > 0 and exact["largest_count_difference"] >= 1

