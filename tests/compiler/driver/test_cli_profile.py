"""`compile --prune-sparsity`, `profile` and `train --prune-sparsity` from the command line."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.model_io import load_model
from spikeshield.compiler.driver.pt2 import export_pt2, training_record
from spikeshield.compiler.ir.ops import Conv2d, Linear
from spikeshield.compiler.ir.serialize import load_graph, save_graph

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


ANN_EPS = 0.05  # the eps the fixture's .pt2 says its ANN was trained at


@pytest.fixture(scope="module")
def sparse_dir(trained_lenet, tmp_path_factory):
    """A 90%-sparse (magnitude) compile of the small trained LeNet, finetuned for one short epoch;
    its .pt2 records a training eps, as ``spikeshield train`` writes it."""
    module, _ = trained_lenet
    model = tmp_path_factory.mktemp("recorded") / "lenet.pt2"
    export_pt2(module, (1, 28, 28), model, training={"objective": "trades", "eps": ANN_EPS})
    out = tmp_path_factory.mktemp("sparse") / "snn"
    result = runner.invoke(app, ["compile", str(model), "--data", "mnist5k", "-T", "4", "--n", "60",
                                 "--prune-sparsity", "0.9", "--prune-method", "magnitude",
                                 "--prune-epochs", "1", "--finetune-epochs", "1",
                                 "--finetune-max-train", "128", "--robustness", "none",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_compile_prunes_and_profiles(sparse_dir):
    out, result = sparse_dir
    # 90% pruned: 10x fewer, or a little more where the calibration fit gives a channel that the
    # ANN never activates an amplitude of 0 (its outgoing weights fold to exact zeros)
    fewer = re.search(r"\(([\d.]+)x fewer\)", result.output)
    assert "stored weights" in result.output and fewer and 10.0 <= float(fewer.group(1)) < 10.5
    snn = load_graph(out / "snn.ir")
    layers = snn.nodes_of(Conv2d, Linear)
    total = sum(snn.op(n).weight.numel() for n in layers)
    nonzero = sum(int(torch.count_nonzero(snn.op(n).weight)) for n in layers)
    assert nonzero <= total // 10 and all(snn.op(n).mask is not None for n in layers)
    report = json.loads((out / "report.json").read_text())
    assert report["profile"]["nonzeros"] == nonzero
    assert [p["name"] for p in report["passes"]][0] == "prune_weights"
    # Pruned and finetuned under the eps the .pt2 says the ANN was trained at, not eps / 4 nor
    # --eps (0.1).
    assert snn.meta["pruning"]["eps"] == ANN_EPS
    assert snn.meta["finetuned"]["eps_train"] == ANN_EPS
    assert "## Energy and memory" in (out / "report.md").read_text()
    for name in ("profile_energy.png", "profile_rates.png"):
        assert (out / name).read_bytes().startswith(PNG)


def test_profile_command_writes_consistent_files(sparse_dir):
    out, _ = sparse_dir
    result = runner.invoke(app, ["profile", str(out), "--n", "40", "--energy", "int8",
                                 "--memory-pj", "1.5"])
    assert result.exit_code == 0, result.output
    profile = json.loads((out / "profile.json").read_text())
    assert profile["samples"] == 40 and profile["timesteps"] == 4
    t = profile["totals"]
    assert t["synops"] == pytest.approx(sum(r["synops"] for r in profile["layers"]))
    assert t["snn_energy_pj"] == pytest.approx(
        t["macs_analog_once"] * 4 * (0.23 + 1.5) + t["synops"] * (0.03 + 1.5))
    first = profile["layers"][0]
    assert first["input"] == "analog" and first["macs_per_step_total"] == 4 * first["macs_once"]
    assert all(r["input"] == "spikes" for r in profile["layers"][1:])
    assert t["ratios"]["dense_over_sparse_synops_same_spikes"] > 1
    md = (out / "profile.md").read_text()
    assert "0.23 pJ x MACs" in md and "Not measured: device is cpu" in md
    assert len(profile["synops_per_sample"]) == 40


@pytest.mark.parametrize("args, message", [
    (["--mac-pj", "-1"], "MAC energy must be a positive number"),
    (["--ac-pj", "0"], "accumulate energy must be a positive number"),
    (["--energy", "fp8"], "energy preset must be one of"),
    (["--n", "0"], "--n must be positive"),
])
def test_profile_bad_input_is_one_line_exit_2(sparse_dir, args, message):
    out, _ = sparse_dir
    result = runner.invoke(app, ["profile", str(out), *args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("sparsity", ["1.0", "-0.5", "1.5"])
def test_compile_refuses_sparsity_outside_unit_interval(trained_lenet, tmp_path, sparsity):
    _, model = trained_lenet
    result = runner.invoke(app, ["compile", str(model), "--prune-sparsity", sparsity,
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "sparsity must be in [0, 1)" in result.output
    assert not (tmp_path / "x").exists()


def test_mask_that_does_not_fit_is_refused_on_load(sparse_dir, tmp_path):
    out, _ = sparse_dir
    graph = load_graph(out / "snn.ir")
    name = graph.nodes_of(Linear)[-1]
    op = graph.op(name)
    # Bypass set_op's checks the way a hand-edited file would: write the bad mask straight in.
    graph.op(name).mask = torch.ones(op.weight.shape[0], op.weight.shape[1] + 1)
    from safetensors.torch import save_file

    from spikeshield.compiler.ir.serialize import to_dict

    structure, tensors = to_dict(graph)
    save_file(tensors, str(tmp_path / "bad.ir"), metadata={"spikeshield": json.dumps(structure)})
    result = runner.invoke(app, ["inspect", str(tmp_path / "bad.ir")])
    assert result.exit_code == 2 and "does not fit weight shape" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_train_prunes_and_the_zeros_come_back_as_masks(tmp_path):
    out = tmp_path / "pruned.pt2"
    result = runner.invoke(app, ["train", "--arch", "lenet", "--objective", "standard",
                                 "--epochs", "1", "--max-train", "256", "--prune-sparsity", "0.95",
                                 "--prune-method", "hydra", "--prune-epochs", "1",
                                 "--prune-dense", "first", "--prune-selection", "clean+robust",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "pruned (hydra)" in result.output and "20.0x fewer" in result.output
    recorded = training_record(out)  # what compile's pruning eps defaults to
    assert recorded["eps"] == 0.1 and recorded["objective"] == "standard"
    assert recorded["arch"] == "lenet" and recorded["prune"]["sparsity"] == 0.95
    assert recorded["prune"]["selection"] == "clean+robust"
    graph = load_model(out)
    layers = graph.nodes_of(Conv2d, Linear)
    assert graph.op(layers[0]).mask is None  # kept dense
    total = sum(graph.op(n).weight.numel() for n in layers)
    kept = sum(int(torch.count_nonzero(graph.op(n).weight)) for n in layers)
    assert total == 61470 and kept == 3073  # floor(5% of 61,470): never more than the budget
    assert all(graph.op(n).mask is not None for n in layers[1:])
    save_graph(graph, tmp_path / "g.ir")  # masks survive the IR file too
    assert torch.equal(load_graph(tmp_path / "g.ir").op(layers[1]).mask, graph.op(layers[1]).mask)


def test_sparse_snn_exports_to_onnx_and_its_nir_reads_back_with_its_masks(sparse_dir, tmp_path):
    out, _ = sparse_dir
    snn = load_graph(out / "snn.ir")
    for fmt, name in (("nir", "s.nir"), ("onnx", "s.onnx")):
        result = runner.invoke(app, ["export", str(out), "--format", fmt,
                                     "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    back = load_model(tmp_path / "s.nir")
    # NIR has no masks: exact zeros come back pruned. Those are the pruned synapses, and the kept
    # ones that carry a channel the calibration fit gave an amplitude of 0 (one the ANN never
    # activates), which compute the same as pruned ones.
    originals = [snn.op(n).mask * (snn.op(n).weight != 0) for n in snn.nodes_of(Conv2d, Linear)]
    # The exporter writes the input normalisation (a scale with a bias) as a dense 1x1 conv, which
    # comes back unmasked; every pruned layer comes back with exactly that mask.
    recovered = [back.op(n).mask for n in back.nodes_of(Conv2d, Linear)
                 if back.op(n).mask is not None]
    assert len(originals) == len(recovered) == 5
    for a, b in zip(originals, recovered):
        assert torch.equal(a, b)


def test_profile_against_the_dense_snn_in_both_conventions(sparse_dir, trained_lenet, tmp_path):
    out, _ = sparse_dir
    _, model = trained_lenet
    dense = tmp_path / "dense"
    result = runner.invoke(app, ["compile", str(model), "--data", "mnist5k", "-T", "4", "--n", "60",
                                 "--finetune", "none", "--robustness", "none", "--no-profile",
                                 "--out", str(dense)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["profile", str(dense), "--n", "40"]).exit_code == 0
    result = runner.invoke(app, ["profile", str(out), "--n", "40", "--baseline", str(dense)])
    assert result.exit_code == 0, result.output
    sparse_p = json.loads((out / "profile.json").read_text())
    dense_p = json.loads((dense / "profile.json").read_text())
    c = sparse_p["against_dense"]
    # Paper B: spike-fed SynOps only (the analog first layer's MACs are not SynOps), each network
    # with its own spikes
    assert c["paper_b_dense_over_sparse_energy"] == pytest.approx(
        dense_p["totals"]["synops"] / sparse_p["totals"]["synops"])
    assert c["dense_over_sparse_energy"] == pytest.approx(
        dense_p["totals"]["snn_energy_pj"] / sparse_p["totals"]["snn_energy_pj"])
    assert c["weight_reduction"] == pytest.approx(
        dense_p["storage"]["nonzeros"] / sparse_p["storage"]["nonzeros"])
    assert c["weight_reduction"] > 9  # 90% sparse: every layer but the dense ones pruned

    def spikes(p):  # LeNet: each IF layer is driven by exactly one weighted layer
        return sum(p["spike_rates"][r["neurons_driven"]] * r["neurons"] * 4
                   for r in p["layers"] if r["neurons_driven"])

    assert c["spikes_sparse_over_dense"] == pytest.approx(spikes(sparse_p) / spikes(dense_p))
    md = (out / "profile.md").read_text()
    assert "## Against the dense SNN" in md and "Which convention the headline uses" in md
    assert "(Paper B's convention)" in result.output
    other = runner.invoke(app, ["profile", str(out), "--n", "30", "--baseline", str(dense)])
    assert other.exit_code == 2 and "profile both with the same --n and -T" in other.output
