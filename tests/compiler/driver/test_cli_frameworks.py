"""`spikeshield export --format norse|snntorch|spikingjelly|sinabs` and `spikeshield run --engine
norse`: the files load with one call into the framework's module, which computes on real data what
the runtime computes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spikeshield.backends.frameworks import FRAMEWORKS, load_module, to_module
from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.ir.errors import ConfigError, UnsupportedOpError
from spikeshield.compiler.ir.serialize import load_graph
from spikeshield.runtime.executor import GraphExecutor

runner = CliRunner()


@pytest.fixture(scope="module")
def compiled(trained_lenet, tmp_path_factory):
    """The trained LeNet compiled with today's defaults (per-channel thresholds, reset by
    subtraction, v_init 0.5) at T=4 and exported for every framework."""
    _, model = trained_lenet
    out = tmp_path_factory.mktemp("frameworks") / "snn"
    result = runner.invoke(app, ["compile", str(model), "-T", "4", "--n", "100", "--finetune",
                                 "none", "--robustness", "none", "--export", ",".join(FRAMEWORKS),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_each_export_loads_with_one_call_and_agrees_on_real_images(compiled, mnist5k, framework):
    path = compiled / f"snn.{framework}.safetensors"
    sidecar = json.loads((compiled / f"snn.{framework}.safetensors.json").read_text())
    assert sidecar["format"] == framework and f"load_module({path.name!r})" in sidecar["load"]
    module = load_module(path)
    assert module.framework == framework and module.timesteps == 4
    graph = load_graph(compiled / "snn.ir")
    x = mnist5k.test.head(200).images.float() / 255  # pixels in [0, 1], as the graph takes them
    executor = GraphExecutor(graph).eval()
    with torch.no_grad():
        expected = executor(x, 4, record=True)
        logits = module(x)
    assert torch.equal(logits.argmax(1), expected.argmax(1))  # all 200 predictions
    assert (logits - expected).abs().max() < 1e-5
    for name, counts in executor.neuron_spike_counts.items():
        assert torch.equal(module.neuron_spike_counts[name], counts), name


def test_the_export_is_a_safetensors_file_that_names_its_framework(compiled):
    raw = (compiled / "snn.sinabs.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])  # safetensors: a JSON header, then raw tensors
    structure = json.loads(json.loads(raw[8:8 + length])["__metadata__"]["spikeshield"])
    assert structure["format"] == "spikeshield-ir"  # the IR's format: no code, nothing pickled
    assert structure["meta"]["framework"] == "sinabs"


def test_run_with_the_norse_engine_equals_the_default_engine(compiled, mnist5k, tmp_path):
    np.save(tmp_path / "x.npy", (mnist5k.test.head(50).images.float() / 255).numpy())
    results = {}
    for engine in ("runtime", "norse"):
        target = tmp_path / f"{engine}.npz"
        result = runner.invoke(app, ["run", str(compiled), "--inputs", str(tmp_path / "x.npy"),
                                     "--out", str(target), "--engine", engine, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        results[engine] = np.load(target)
    runtime, norse = results["runtime"], results["norse"]
    assert np.array_equal(runtime["predictions"], norse["predictions"])
    assert np.abs(runtime["logits"] - norse["logits"]).max() < 1e-5
    assert list(runtime["layers"]) == list(norse["layers"])
    for layer in runtime["layers"]:
        assert np.array_equal(runtime[f"spikes/{layer}"], norse[f"spikes/{layer}"]), layer
        assert runtime[f"spikes/{layer}"].sum() > 0


def test_run_refuses_an_unknown_engine_in_one_line(compiled, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    result = runner.invoke(app, ["run", str(compiled), "--inputs", str(tmp_path / "x.npy"),
                                 "--out", str(tmp_path / "y.npz"), "--engine", "lava"])
    assert result.exit_code == 2
    assert "unknown engine 'lava'; choose one of runtime, norse" in result.output
    assert not (tmp_path / "y.npz").exists()


def test_framework_errors_name_the_fault_and_the_fix(compiled):
    with pytest.raises(ConfigError, match="snn.ir names no framework; pass framework="):
        load_module(compiled / "snn.ir")
    with pytest.raises(ConfigError, match="unknown framework 'lava'; choose one of norse"):
        load_module(compiled / "snn.ir", "lava")
    ann = load_graph(compiled / "ann.ir")
    with pytest.raises(UnsupportedOpError, match=r"\(relu\): an ANN op: convert the ANN first"):
        to_module(ann, "snntorch")
    poisson = load_graph(compiled / "snn.ir")
    poisson.meta["encoding"] = "poisson"
    with pytest.raises(UnsupportedOpError, match="input encoding 'poisson'"):
        to_module(poisson, "norse")


def test_portable_nir_export_refuses_todays_defaults_and_runs_like_the_runtime(
        compiled, trained_lenet, tmp_path):
    refused = runner.invoke(app, ["export", str(compiled), "--format", "nir", "--nir-profile",
                                  "portable"])
    assert refused.exit_code == 2 and "resets by subtraction" in refused.output
    assert not (compiled / "snn.portable.nir").exists()
    _, model = trained_lenet
    out = tmp_path / "zero"
    result = runner.invoke(app, ["compile", str(model), "-T", "4", "--n", "100", "--finetune",
                                 "none", "--robustness", "none", "--reset", "zero", "--v-init",
                                 "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    refused = runner.invoke(app, ["export", str(out), "--format", "nir", "--nir-profile",
                                  "portable"])  # today's per-channel thresholds
    assert refused.exit_code == 2 and "--threshold-mode layer" in refused.output
    result = runner.invoke(app, ["compile", str(model), "-T", "4", "--n", "100", "--finetune",
                                 "none", "--robustness", "none", "--reset", "zero", "--v-init",
                                 "0", "--threshold-mode", "layer", "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(out), "--format", "nir", "--nir-profile",
                                 "portable"])
    assert result.exit_code == 0, result.output
    assert "nir portable profile" in result.output
    sidecar = json.loads((out / "snn.portable.nir.json").read_text())
    assert sidecar["nir_profile"] == "portable" and "summed over the T steps" in sidecar["readout"]
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    results = {}
    for source in (out, out / "snn.portable.nir"):
        target = tmp_path / f"{source.name}.npz"
        run = runner.invoke(app, ["run", str(source), "--inputs", str(tmp_path / "x.npy"),
                                  "--out", str(target)])
        assert run.exit_code == 0, run.output
        results[source.name] = np.load(target)
    ir, portable = results["zero"], results["snn.portable.nir"]
    assert np.array_equal(ir["predictions"], portable["predictions"])
    assert np.abs(ir["logits"] - portable["logits"]).max() < 1e-5
    bad = runner.invoke(app, ["export", str(out), "--format", "onnx", "--nir-profile", "portable"])
    assert bad.exit_code == 2 and "--nir-profile applies to --format nir" in bad.output


def test_a_speck_chip_configuration_is_refused_with_the_measured_reason(compiled):
    """Sinabs' DYNAP-CNN backend (which makes the Speck configuration) imports samna, and PyPI's
    samna only bootstraps the real package from gitlab.com at import: neither runs here. If this
    import ever succeeds, samna became installable: build the Speck export."""
    with pytest.raises(ModuleNotFoundError, match="samna"):
        import sinabs.backend.dynapcnn  # noqa: F401
    result = runner.invoke(app, ["export", str(compiled), "--format", "speck", "--target",
                                 "speck"])
    assert result.exit_code == 2
    assert "a Speck chip configuration needs SynSense's samna" in result.output
    assert "export --format sinabs" in result.output
