"""ONNX export: the unrolled and the single-step graphs run in onnxruntime exactly as the runtime,
and an exported ANN read back through the ONNX frontend reproduces its source."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from spikeshield.backends.nir_backend import to_nir
from spikeshield.backends.onnx_backend import OPSET, to_onnx, write_onnx
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.ops import IF, Conv2d
from spikeshield.frontends.onnx_frontend import from_onnx
from spikeshield.runtime.executor import GraphExecutor
from tests.backends.conftest import (
    FLIP_FRACTION,
    FLIP_MARGIN,
    TIMESTEPS,
    ZOO,
    assert_same_spikes,
    zoo_ann,
    zoo_snn,
)
from tests.backends.nir_reference import NirReference

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from differential import run_step_graph  # noqa: E402  (the step graph's driving contract, once)


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("arch", list(ZOO))
def test_zoo_onnx_matches_runtime(arch, reset, tmp_path):
    snn, x = zoo_snn(arch, reset)
    executor = GraphExecutor(snn)
    with torch.no_grad():
        logits = executor(x, TIMESTEPS, record=True).numpy()
    unrolled = write_onnx(snn, tmp_path / "u.onnx", "unrolled")
    step = write_onnx(snn, tmp_path / "s.onnx", "step")
    for path in (unrolled, step):
        onnx.checker.check_model(onnx.load(path), full_check=True)

    sess = session(unrolled)
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x.numpy()})))
    assert np.array_equal(out["logits"].argmax(1), logits.argmax(1))
    assert np.abs(out["logits"] - logits).max() < 1e-4
    # How close each neuron came to its threshold, from the independent NIR simulator: the
    # only neurons allowed to spike differently in another float32 implementation.
    with torch.no_grad():
        _, _, margins = NirReference(to_nir(snn)).run(x, TIMESTEPS)
    suffix = "__threshold" if reset == "subtract" else ""
    margin = {n: margins[n + suffix].flatten(1).numpy() for n in snn.nodes_of(IF)}
    for name in snn.nodes_of(IF):
        expected = executor.spike_counts[name].numpy()
        difference = np.abs(out[f"spike_count__{name}"] - expected).sum()
        near = (margin[name] < FLIP_MARGIN).sum()  # each such neuron may flip at most T times
        assert difference <= min(near * TIMESTEPS, FLIP_FRACTION * margin[name].size), name

    step_logits, counts = run_step_graph(step, x.numpy(), TIMESTEPS)
    assert np.array_equal(step_logits.argmax(1), logits.argmax(1))
    assert np.abs(step_logits - logits).max() < 1e-4
    for name in snn.nodes_of(IF):
        assert_same_spikes(
            executor.neuron_spike_counts[name].flatten(1).numpy(),
            counts[name].reshape(len(x), -1),
            margin[name],
            name,
        )


def test_model_records_opset_and_how_to_run_it(tmp_path):
    snn, _ = zoo_snn("lenet", "subtract")
    model = onnx.load(write_onnx(snn, tmp_path / "s.onnx", "step"))
    assert [o.version for o in model.opset_import if o.domain == ""] == [OPSET]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["form"] == "step" and meta["reset"] == "subtract"
    assert meta["timesteps"] == str(TIMESTEPS) and "readout / T" in meta["contract"]
    inputs = [i.name for i in model.graph.input]
    assert inputs[0] == "input" and inputs[-1] == "readout"
    assert {f"v__{n}" for n in snn.nodes_of(IF)} <= set(inputs)


def test_unrolled_graph_takes_another_T(tmp_path):
    snn, x = zoo_snn("lenet", "zero")
    sess = session(write_onnx(snn, tmp_path / "u3.onnx", "unrolled", timesteps=3))
    expected = GraphExecutor(snn)(x, 3).detach().numpy()
    assert np.abs(sess.run(["logits"], {"input": x.numpy()})[0] - expected).max() < 1e-4


def test_exported_ann_read_back_reproduces_it(tmp_path):
    ann, x = zoo_ann("resnet20")
    path = write_onnx(ann, tmp_path / "ann.onnx")
    expected = GraphExecutor(ann)(x).detach()
    logits = session(path).run(["logits"], {"input": x.numpy()})[0]
    assert np.abs(logits - expected.numpy()).max() < 1e-4
    back = from_onnx(path)
    assert (GraphExecutor(back)(x).detach() - expected).abs().max() < 1e-4
    assert not back.nodes_of(IF)
    assert len(back.nodes_of(Conv2d)) == len(ann.nodes_of(Conv2d)) > 0


def test_step_form_of_an_ann_is_refused():
    ann, _ = zoo_ann("lenet")
    with pytest.raises(ConfigError, match="no IF neurons.*--format onnx"):
        to_onnx(ann, "step")


def test_unknown_form_is_refused():
    snn, _ = zoo_snn("lenet", "zero")
    with pytest.raises(ConfigError, match="unrolled, step"):
        to_onnx(snn, "scan")


def test_a_pad_node_exports_to_onnx_exactly_and_nir_refuses_it(tmp_path):
    from spikeshield.backends.nir_backend import write_nir
    from spikeshield.compiler.ir.errors import UnsupportedOpError
    from spikeshield.compiler.ir.graph import Graph
    from spikeshield.compiler.ir.ops import Flatten, Input, Linear, Output, Pad2d

    g = torch.Generator().manual_seed(0)
    snn = Graph("padded", {"timesteps": 4})
    snn.add("input", Input((2, 4, 4)))
    snn.add("pad", Pad2d((0, 1, 2, 1)), ["input"])
    snn.add("conv", Conv2d(torch.randn(3, 2, 3, 3, generator=g), torch.zeros(3)), ["pad"])
    snn.add("if", IF(torch.tensor([0.5])), ["conv"])
    snn.add("flat", Flatten(), ["if"])
    snn.add("fc", Linear(torch.randn(2, 3 * 5 * 3, generator=g), torch.zeros(2)), ["flat"])
    snn.add("output", Output(), ["fc"])
    snn.validate()
    x = torch.rand(3, 2, 4, 4, generator=g)
    expected = GraphExecutor(snn)(x, 4).detach().numpy()
    sess = session(write_onnx(snn, tmp_path / "pad.onnx", "unrolled"))
    assert np.abs(sess.run(["logits"], {"input": x.numpy()})[0] - expected).max() < 1e-5
    with pytest.raises(UnsupportedOpError, match="NIR has no padding node"):
        write_nir(snn, tmp_path / "pad.nir")


def test_a_clipped_relu_exports_to_onnx_clip_and_reads_back(tmp_path):
    from spikeshield.compiler.ir.graph import Graph
    from spikeshield.compiler.ir.ops import Flatten, Input, Linear, Output, ReLU

    g = torch.Generator().manual_seed(0)
    ann = Graph("clipped")
    ann.add("input", Input((2, 4, 4)))
    ann.add("conv", Conv2d(torch.randn(3, 2, 3, 3, generator=g), torch.zeros(3), padding=(1, 1)),
            ["input"])
    ann.add("clip", ReLU(ceiling=0.5), ["conv"])
    ann.add("flat", Flatten(), ["clip"])
    ann.add("fc", Linear(torch.randn(2, 3 * 4 * 4, generator=g), torch.zeros(2)), ["flat"])
    ann.add("output", Output(), ["fc"])
    ann.validate()
    x = torch.rand(3, 2, 4, 4, generator=g)
    expected = GraphExecutor(ann)(x).detach()
    path = write_onnx(ann, tmp_path / "clip.onnx")
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Clip") == 1
    assert np.abs(session(path).run(["logits"], {"input": x.numpy()})[0] - expected.numpy()).max() < 1e-6
    back = from_onnx(path)
    [clip] = back.nodes_of(ReLU)
    assert back.op(clip).ceiling == 0.5
    assert torch.equal(GraphExecutor(back)(x).detach(), expected)


@pytest.mark.parametrize("fused", [False, True])
def test_a_quantised_relu_and_a_floor_export_to_onnx_exactly(fused, tmp_path):
    # QCFS as the frontends lower it (Scale, Floor, Scale, clamp, Scale) and fused into one
    # quantised ReLU: the ONNX graph computes the same levels in onnxruntime.
    from spikeshield.compiler.ir.graph import Graph
    from spikeshield.compiler.ir.ops import Floor, Input, Linear, Output, ReLU, Scale
    from spikeshield.compiler.passes.fuse_quantized_relu import fuse_quantized_relu

    g = torch.Generator().manual_seed(0)
    ann = Graph("qcfs")
    ann.add("input", Input((6,)))
    ann.add("fc", Linear(torch.randn(5, 6, generator=g), torch.randn(5, generator=g)), ["input"])
    ann.add("up", Scale(scale=torch.tensor([4 / 0.7]), bias=torch.tensor([0.5])), ["fc"])
    ann.add("floor", Floor(), ["up"])
    ann.add("down", Scale(scale=torch.tensor([0.25])), ["floor"])
    ann.add("clamp", ReLU(ceiling=1.0), ["down"])
    ann.add("back", Scale(scale=torch.tensor([0.7])), ["clamp"])
    ann.add("fc2", Linear(torch.randn(3, 5, generator=g), torch.zeros(3)), ["back"])
    ann.add("output", Output(), ["fc2"])
    ann.validate()
    if fused:
        ann = fuse_quantized_relu(ann).graph
        assert ann.op("clamp").levels == 4
    x = torch.randn(64, 6, generator=g)
    expected = GraphExecutor(ann)(x).detach().numpy()
    path = write_onnx(ann, tmp_path / "qcfs.onnx")
    assert "Floor" in [n.op_type for n in onnx.load(str(path)).graph.node]
    got = session(path).run(["logits"], {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-6
