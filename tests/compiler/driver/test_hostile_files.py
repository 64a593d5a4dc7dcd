"""The low-severity cases of the second security round: each bad file is one line and exit 2, and
no graph feature is dropped silently. Each of these exited 1 ("internal error"), hung, or ran on
4b42d6f (checked by hand, except where a test says the old code would allocate gigabytes)."""

from __future__ import annotations

import json
import zipfile

import nir
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.manifest import MANIFEST, write_manifest
from spikeshield.compiler.driver.pt2 import _marker
from spikeshield.compiler.ir.errors import ConfigError, UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import BatchNorm, Input, Output
from spikeshield.compiler.ir.serialize import save_graph
from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
from spikeshield.runtime.executor import GraphExecutor
from tests.compiler.driver.test_bad_input import _one_line_exit_2, _tamper
from tests.conftest import tiny_conv_graph

runner = CliRunner()
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def snn_ir(tmp_path):
    graph = convert_relu_to_if(tiny_conv_graph()).graph
    graph.meta.update({"timesteps": 4, "encoding": "direct", "input_range": [0.0, 1.0]})
    return save_graph(graph, tmp_path / "snn.ir")


def test_a_manifest_nested_100000_deep_or_naming_a_nul_is_one_line(snn_ir, tmp_path):
    folder = snn_ir.parent
    write_manifest(folder)
    (folder / MANIFEST).write_text(DEEP)
    _one_line_exit_2(runner.invoke(app, ["verify", str(folder)]), "nests too deeply")
    manifest = {"format": "spikeshield-manifest", "version": 1, "algorithm": "sha256",
                "files": {"snn\x00.ir": {"sha256": "0" * 64, "bytes": 1}}}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    _one_line_exit_2(runner.invoke(app, ["verify", str(folder)]), "is not a relative file name")


def test_a_pt2_marker_nested_100000_deep_is_read_as_no_record(tmp_path):
    path = tmp_path / "m.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/extra/spikeshield.json", DEEP)
    assert _marker(path) == {}


@pytest.mark.parametrize("profile, phrase", [
    ([], "not a valid profile"),
    ({"name": "t", "weight_bits": 1}, "'weight_bits' must be a whole number from 2 to 32"),
    ({"name": "t", "weight_bits": 100000}, "'weight_bits' must be a whole number from 2 to 32"),
    ({"name": "../../x"}, "name '../../x' must be 1-64 letters"),
    (DEEP, "nests too deeply"),
])
def test_hostile_target_profiles_are_one_line(snn_ir, tmp_path, profile, phrase):
    target = tmp_path / "target.json"
    target.write_text(profile if isinstance(profile, str) else json.dumps(profile))
    result = runner.invoke(app, ["export", str(snn_ir), "--target", str(target), "--out",
                                 str(tmp_path / "snn.nir")])
    _one_line_exit_2(result, phrase)


def test_a_baseline_profile_nested_100000_deep_is_one_line(tmp_path):
    from spikeshield.compiler.driver.energy_conventions import load_profile

    baseline = tmp_path / "profile.json"
    baseline.write_text(DEEP)
    with pytest.raises(ConfigError, match="is not a spikeshield profile.json"):
        load_profile(baseline)


def _batchnorm_graph(eps: float) -> Graph:
    graph = Graph("bn")
    graph.add("input", Input((2, 3, 3)))
    graph.add("bn", BatchNorm(torch.zeros(2), torch.ones(2), eps=1e-5), ["input"])
    graph.add("output", Output(), ["bn"])
    graph.validate()
    graph.op("bn").eps = eps
    return graph


@pytest.mark.parametrize("eps, phrase", [(-1.0, "eps must be a number >= 0"),
                                         (float("nan"), "batchnorm.eps is nan")])
def test_a_batchnorm_eps_negative_or_nan_is_refused_at_load(tmp_path, eps, phrase):
    """Old code: a negative eps exited 1; a NaN one gave NaN logits with exit 0."""
    path = tmp_path / "bn.ir"
    save_graph(_batchnorm_graph(1e-5), path)
    _tamper(path, lambda s: next(n for n in s["nodes"] if n["kind"] == "batchnorm")[
        "attributes"].update(eps=eps))
    _one_line_exit_2(runner.invoke(app, ["inspect", str(path)]), phrase)


def test_a_recurrent_edge_is_refused_not_dropped(snn_ir):
    """Old code: the runtime and both exporters computed the graph without the edge."""
    graph = convert_relu_to_if(tiny_conv_graph()).graph
    graph._g.add_edge("relu", "relu", recurrent=True, count=1)  # as a hand-edited file holds it
    with pytest.raises(UnsupportedOpError, match="recurrent edge.*the runtime computes "
                       "feed-forward graphs only"):
        GraphExecutor(graph)
    path = save_graph(graph, snn_ir.parent / "recurrent.ir")
    _one_line_exit_2(runner.invoke(app, ["inspect", str(path)]), "recurrent edge")


def test_a_nir_graph_with_two_outputs_is_refused_not_cut_to_one(tmp_path):
    """Old code kept one of the two outputs and reported success."""
    weight = np.ones((2, 3), np.float32)
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "fc": nir.Linear(weight),
               "if": nir.IF(np.ones(2), np.ones(2), np.zeros(2)),
               "out1": nir.Output(np.array([2])), "out2": nir.Output(np.array([2]))},
        edges=[("input", "fc"), ("fc", "if"), ("if", "out1"), ("if", "out2")])
    path = tmp_path / "two.nir"
    nir.write(path, graph)
    _one_line_exit_2(runner.invoke(app, ["inspect", str(path)]), "2 Output nodes")


def test_load_module_keeps_to_the_step_bound(snn_ir):
    """Old code: load_module ignored SPIKESHIELD_MAX_TIMESTEPS and ran T = 10^12 for ever."""
    from spikeshield.backends.frameworks import load_module

    module = load_module(snn_ir, framework="norse")
    with pytest.raises(ConfigError, match="^timesteps must be between 1 and 4,096"):
        module(torch.zeros(1, 1, 6, 6), timesteps=10 ** 12)


def test_an_npy_too_large_as_float32_is_refused_before_conversion(snn_ir, tmp_path):
    """Old code bounded the file's own bytes (2 GB); 600 M uint8 values passed and became a
    2.4 GB float32 batch (not rerun on the old code: it would allocate that)."""
    inputs = tmp_path / "x.npy"
    big = np.lib.format.open_memmap(inputs, mode="w+", dtype=np.uint8,
                                    shape=(600_000_000 // 36, 1, 6, 6))  # sparse on disk
    del big
    result = runner.invoke(app, ["run", str(snn_ir), "--inputs", str(inputs), "--out",
                                 str(tmp_path / "r.npz")])
    _one_line_exit_2(result, "as float32")


def test_a_pt2_marker_that_inflates_past_its_bound_is_never_read(tmp_path, monkeypatch):
    """Old code read extra/spikeshield.json whole: 1.8 MB of deflate became 3.5 GB."""
    from spikeshield.compiler.ir.limits import SIDECAR_JSON_BYTES

    monkeypatch.setenv(SIDECAR_JSON_BYTES.env, str(1 << 20))
    path = tmp_path / "m.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m/extra/spikeshield.json", b" " * (32 << 20))  # 32 MiB, about 32 KB packed
    assert path.stat().st_size < 1 << 20
    assert _marker(path) == {}
