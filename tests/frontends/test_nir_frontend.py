"""NIR frontend: third-party NIR graphs are simulated as NIR defines them, or refused in one line."""

from __future__ import annotations

import itertools

import nir
import numpy as np
import pytest
import torch

from spikeshield.compiler.ir.errors import ModelLoadError, UnsupportedOpError
from spikeshield.compiler.ir.ops import IF, AvgPool2d, Scale
from spikeshield.frontends.nir_frontend import from_nir
from spikeshield.runtime.executor import GraphExecutor


def _graph(nodes: dict, metadata: dict | None = None) -> nir.NIRGraph:
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(itertools.pairwise(names)), metadata=metadata or {})


def test_third_party_if_with_gain_and_sum_pooling_is_simulated_exactly():
    w = np.full((2, 4), 0.5, np.float32)
    g = _graph(
        {
            "in": nir.Input(input_type={"input": np.array([1, 4, 4])}),
            "pool": nir.SumPool2d(
                kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])
            ),
            "lif": nir.IF(
                r=np.full((1, 2, 2), 2.0, np.float32),
                v_threshold=np.full((1, 2, 2), 1.5, np.float32),
            ),
            "flat": nir.Flatten(input_type={"input": np.array([1, 2, 2])}, start_dim=0),
            "fc": nir.Linear(weight=w),
            "out": nir.Output(output_type={"output": np.array([2])}),
        },
        {"timesteps": 3},
    )
    graph = from_nir(g)
    assert graph.meta["timesteps"] == 3
    assert any(isinstance(graph.op(n), AvgPool2d) for n in graph.nodes())
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, :2, :2] = 0.25  # window sum 1.0 -> current r * 1 = 2 per step: spikes at every step
    x[0, 0, 2:, 2:] = 0.1  # window sum 0.4 -> 0.8 per step: v = .8, 1.6 (spike), .8
    logits = GraphExecutor(graph)(x, 3, record=True)
    # spikes per step: (3 + 1) neurons total over 3 steps; fc sums them with weight 0.5 / 3 steps
    assert logits[0].tolist() == pytest.approx([0.5 * 4 / 3] * 2)


def test_leaky_neurons_and_delays_are_listed_with_alternatives():
    g = _graph(
        {
            "in": nir.Input(input_type={"input": np.array([3])}),
            "fc": nir.Affine(weight=np.eye(3, dtype=np.float32), bias=np.zeros(3, np.float32)),
            "lif": nir.LIF(
                tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3)
            ),
            "delay": nir.Delay(delay=np.ones(3)),
            "out": nir.Output(output_type={"output": np.array([3])}),
        }
    )
    with pytest.raises(UnsupportedOpError) as err:
        from_nir(g)
    message = str(err.value)
    assert "LIF (node 'lif')" in message and "IF (a LIF without leak)" in message
    assert "Delay (node 'delay')" in message and "\n" not in message


def test_flatten_that_counts_a_batch_is_refused_with_the_reason():
    g = _graph(
        {
            "in": nir.Input(input_type={"input": np.array([2, 2, 2])}),
            "flat": nir.Flatten(input_type={"input": np.array([2, 2, 2])}, start_dim=1),
            "out": nir.Output(output_type={"output": np.array([2, 4])}),
        }
    )
    with pytest.raises(UnsupportedOpError, match="counted a batch"):
        from_nir(g)


def test_reset_to_a_nonzero_potential_is_refused():
    g = _graph(
        {
            "in": nir.Input(input_type={"input": np.array([2])}),
            "if": nir.IF(r=np.ones(2), v_threshold=np.ones(2), v_reset=np.full(2, 0.5)),
            "out": nir.Output(output_type={"output": np.array([2])}),
        }
    )
    with pytest.raises(UnsupportedOpError, match="non-zero potential"):
        from_nir(g)


def test_per_channel_thresholds_and_scales_come_back_as_vectors():
    theta = np.broadcast_to(np.array([1.0, 2.0], np.float32)[:, None, None], (2, 3, 3)).copy()
    g = _graph(
        {
            "in": nir.Input(input_type={"input": np.array([2, 3, 3])}),
            "scale": nir.Scale(scale=np.full((2, 3, 3), 3.0, np.float32)),
            "if": nir.IF(r=np.ones((2, 3, 3), np.float32), v_threshold=theta),
            "out": nir.Output(output_type={"output": np.array([2, 3, 3])}),
        }
    )
    graph = from_nir(g)
    assert graph.op("scale").scale.tolist() == [3.0]
    assert graph.op("if").threshold.tolist() == [1.0, 2.0]
    assert isinstance(graph.op("scale"), Scale) and isinstance(graph.op("if"), IF)


def test_corrupt_and_missing_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"\x89HDF\r\n not really")
    with pytest.raises(ModelLoadError, match="not a valid NIR graph") as err:
        from_nir(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="does not exist"):
        from_nir(tmp_path / "missing.nir")


def test_a_file_failing_the_type_check_is_refused(tmp_path):
    g = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([3])}),
            "fc": nir.Affine(weight=np.ones((2, 4), np.float32), bias=np.zeros(2, np.float32)),
            "out": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("in", "fc"), ("fc", "out")],
        type_check=False,
    )
    path = tmp_path / "mistyped.nir"
    nir.write(path, g)
    with pytest.raises(ModelLoadError, match="type checking failed"):
        from_nir(path)


def test_lowering_a_long_chain_checks_each_node_once(tmp_path, monkeypatch):
    """Old code re-inferred the whole graph after every emitted node: a 3,000-node chain took
    399 s (quadratic). Counted, not timed: node checks grow linearly with the chain."""
    import nir
    import numpy as np

    from spikeshield.compiler.ir.ops import base

    def chain(n: int) -> int:
        nodes, edges, prev = {"input": nir.Input(np.array([4]))}, [], "input"
        for i in range(n):
            nodes[f"fc{i}"] = nir.Linear(np.eye(4, dtype=np.float32))
            nodes[f"if{i}"] = nir.IF(np.ones(4), np.ones(4), np.zeros(4))
            edges += [(prev, f"fc{i}"), (f"fc{i}", f"if{i}")]
            prev = f"if{i}"
        nodes["output"] = nir.Output(np.array([4]))
        edges.append((prev, "output"))
        path = tmp_path / f"chain{n}.nir"
        nir.write(path, nir.NIRGraph(nodes=nodes, edges=edges))
        calls = []
        original = base.Op.validate
        monkeypatch.setattr(base.Op, "validate", lambda self, s: calls.append(1) or
                            original(self, s))
        from_nir(path)
        monkeypatch.undo()
        return len(calls)

    small, large = chain(20), chain(80)
    assert large < 4.5 * small  # quadratic would be about 16x
