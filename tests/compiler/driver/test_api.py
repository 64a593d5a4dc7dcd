"""The Python front door (``import spikeshield as ss``): the README's quick start runs as written;
the verbs take users' loaders, datasets and tensors batch by batch and refuse bad data in one line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import spikeshield as ss
from spikeshield.compiler.ir.errors import ConfigError, DataError

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_python_quick_start() -> str:
    text = README.read_text()
    section = text.split("## Python quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_quick_start_runs_as_written(tmp_path, capsys):
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        torch.manual_seed(0)
        namespace: dict = {}
        exec(compile(readme_python_quick_start(), "README.md", "exec"), namespace)
    finally:
        os.chdir(here)
    snn, test, model = namespace["snn"], namespace["test"], namespace["model"]
    clean, ann = ss.accuracy(snn, test), ss.accuracy(model, test)  # the ANN on normalised data
    assert clean.samples == ann.samples == 1000 and ann.accuracy > 0.8, (ann, clean)
    assert abs(clean.accuracy - ann.accuracy) < 0.03, (ann, clean)  # converted, not retrained
    printed = capsys.readouterr().out
    assert "Accuracy(" in printed and "Robustness(quick at eps=0.1 on 100 samples" in printed
    assert (tmp_path / "snn.nir").is_file() and (tmp_path / "snn.ir").is_file()
    loaded = ss.load(tmp_path / "snn.ir")
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), snn(x))
    assert loaded.normalization == ((0.1307,), (0.3081,))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class _Once(IterableDataset):
    """A stream that may be read once, never indexed or materialised whole."""

    def __init__(self, n: int):
        self.n, self.read = n, False

    def __iter__(self):
        if self.read:
            raise AssertionError("the stream was read twice")
        self.read = True
        generator = torch.Generator().manual_seed(0)
        for i in range(self.n):
            yield torch.rand(1, 8, 8, generator=generator), i % 3

    def __getitem__(self, index):
        raise AssertionError("the stream was indexed")


def test_convert_and_accuracy_read_a_stream_once_batch_by_batch():
    model = _Net().eval()
    stream = DataLoader(_Once(640), batch_size=64)
    snn = ss.convert(model, stream, timesteps=4, calibration_batches=2)
    assert isinstance(snn, nn.Module) and snn.timesteps == 4 and snn.input_shape == (1, 8, 8)
    assert ss.accuracy(snn, DataLoader(_Once(100), batch_size=32)).samples == 100


def test_tensors_pairs_and_datasets_are_data_too():
    model = _Net().eval()
    x, y = torch.rand(50, 1, 8, 8), torch.arange(50) % 3
    snn = ss.convert(model, x, timesteps=2, calibration_batches=1)
    one = ss.accuracy(snn, (x, y))
    assert one == ss.accuracy(snn, TensorDataset(x, y)) == ss.accuracy(
        snn, DataLoader(TensorDataset(x, y), batch_size=7))
    assert one.samples == 50
    pixels = (x * 255).round().to(torch.uint8)  # uint8 pixels are divided by 255
    assert ss.accuracy(snn, (pixels, y)).samples == 50


@pytest.mark.parametrize("data,message", [
    (torch.rand(8, 1, 8, 8) * 255, r"calibration data batch 0 hold values in \[.*\]; give uint8"),
    (torch.randint(0, 5, (8, 1, 8, 8)), "are torch.int64"),
    ([], "holds no samples"),
    (torch.rand(8, 1, 9, 9), r"samples of shape \(1, 9, 9\), the model takes \(1, 8, 8\)"),
    (42, "expected a DataLoader, a Dataset, an images tensor"),
])
def test_bad_calibration_data_is_one_data_error(data, message):
    with pytest.raises(DataError, match=message) as info:
        ss.convert(_Net().eval(), data, input_shape=(1, 8, 8), timesteps=2)
    assert "\n" not in str(info.value)


def test_labels_out_of_range_are_refused_before_any_attack():
    snn = ss.convert(_Net().eval(), torch.rand(16, 1, 8, 8), timesteps=2, calibration_batches=1)
    with pytest.raises(DataError, match="outside 0..2 for a model of 3 outputs"):
        ss.evaluate(snn, (torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])), eps=0.1,
                    preset="quick")


@pytest.mark.parametrize("field,value,message", [
    ("reset", "soft", r"ConvertConfig.reset must be one of subtract, zero, got 'soft'"),
    ("threshold_mode", "neuron", "ConvertConfig.threshold_mode must be one of channel, layer"),
    ("timesteps", 0, "ConvertConfig.timesteps must be between 1 and"),
    ("v_init", 1.5, r"ConvertConfig.v_init is a fraction of the threshold in \[0, 1\)"),
    ("encoding", "rate", "ConvertConfig.encoding must be one of direct, poisson"),
])
def test_a_wrong_setting_is_one_config_error_naming_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ss.ConvertConfig(**{field: value})
    with pytest.raises(ConfigError, match=message):
        ss.convert(_Net().eval(), torch.rand(4, 1, 8, 8), **{field: value})


def test_an_unknown_setting_names_the_config():
    with pytest.raises(ConfigError, match="unexpected keyword argument 'timestep'.*ConvertConfig"):
        ss.convert(_Net().eval(), torch.rand(4, 1, 8, 8), timestep=4)


def test_the_cli_and_the_api_write_the_same_snn_ir_bytes(trained_lenet, mnist5k, tmp_path):
    """``spikeshield compile --finetune none`` and ``ss.convert`` on the same calibration batches
    (the compile's: its first 11 shuffled training batches) are one conversion, byte for byte."""
    from typer.testing import CliRunner

    from spikeshield.compiler.driver.cli import app

    _, model = trained_lenet
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["compile", str(model), "-T", "4", "--finetune", "none",
                                      "--robustness", "none", "--no-profile", "--n", "100",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    calibration = (x for x, _ in mnist5k.train.batches(64, shuffle=True, seed=0))
    snn = ss.convert(model, calibration, timesteps=4, device="auto")
    snn.save(tmp_path / "api.ir")
    assert (tmp_path / "api.ir").read_bytes() == (out / "snn.ir").read_bytes()


def test_finetune_trains_on_a_loader_and_keeps_the_best_epoch():
    torch.manual_seed(0)
    x, y = torch.rand(96, 1, 8, 8), torch.arange(96) % 3
    snn = ss.convert(_Net().eval(), x, timesteps=2, calibration_batches=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    result = ss.finetune(snn, loader, eps=0.05, epochs=2, lr=0.05, batch_size=32,
                         val_samples=None, selection="clean")
    assert isinstance(result, ss.Finetuned) and isinstance(result.snn, ss.SNN)
    assert (result.train_samples, result.val_samples) == (86, 10)  # a seeded tenth held out
    assert len(result.history) == 3 and result.best_epoch in (0, 1, 2)  # epoch 0: as converted
    assert repr(result).startswith(f"Finetuned(best epoch {result.best_epoch} of 2, on 86 ")
    if result.best_epoch:  # the kept epoch's weights, not the converted ones
        before, after = snn.graph, result.snn.graph
        assert any(not torch.equal(before.op(n).weight, after.op(n).weight)
                   for n in before.synaptic_nodes())
    with pytest.raises(ConfigError, match="unexpected keyword argument 'learning_rate'"):
        ss.finetune(snn, loader, eps=0.05, learning_rate=0.1)


def test_a_finetuned_snn_goes_to_a_framework_with_its_finetuning_surrogate():
    from spikeshield.compiler.ir.surrogates import Surrogate

    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8), torch.arange(64) % 3
    snn = ss.convert(_Net().eval(), x, timesteps=2, calibration_batches=1)
    tuned = ss.finetune(snn, (x, y), eps=0.05, epochs=1, batch_size=32, val_samples=None,
                        selection="clean", surrogate="arctan:2").snn
    module = tuned.to_framework("spikingjelly")
    with torch.no_grad():
        assert (module(x) - tuned(x)).abs().max() < 1e-5
    neuron = module.neuron(module.neuron_layers[0])
    assert neuron.surrogate_function.surrogate == Surrogate("arctan", 2.0)
    chosen = tuned.to_framework("spikingjelly", surrogate="triangle:0.5")
    assert chosen.neuron(module.neuron_layers[0]).surrogate_function.surrogate == \
        Surrogate("triangle", 0.5)


def test_profile_counts_the_same_work_from_a_tensor_and_from_a_loader():
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    snn = ss.convert(_Net().eval(), x, timesteps=4, calibration_batches=1)
    from_tensor = ss.profile(snn, x, samples=30)
    from_loader = ss.profile(snn, DataLoader(TensorDataset(x, torch.zeros(40)), batch_size=7),
                             samples=30)
    assert from_tensor.samples == from_loader.samples == 30
    assert from_tensor.synops == from_loader.synops > 0
    assert from_tensor.weights == 4 * 9 + 3 * 144  # the conv and linear weights
    assert "SynOps" in repr(from_tensor) and "per sample" in repr(from_tensor)


def test_prune_zeroes_the_asked_share_and_convert_keeps_it_as_masks():
    torch.manual_seed(0)
    model = _Net()
    x, y = torch.rand(64, 1, 8, 8), torch.arange(64) % 3
    pruned = ss.prune(model, (x, y), sparsity=0.75, eps=0.0, objective="standard",
                      score_epochs=1, finetune_epochs=1, batch_size=32)
    assert pruned.model is model and pruned.total_weights == 4 * 9 + 3 * 144
    zeros = sum(int((m.weight == 0).sum()) for m in (model.conv, model.fc))
    assert zeros == pruned.total_weights - pruned.kept_weights >= 0.75 * pruned.total_weights - 1
    snn = ss.convert(model.eval(), x, timesteps=2, calibration_batches=1)
    masks = [snn.graph.op(n).mask for n in snn.graph.synaptic_nodes()]
    assert sum(int((m == 0).sum()) for m in masks if m is not None) == zeros


def test_the_typed_choices_are_the_ones_the_passes_accept():
    """The API's ``Literal`` types and the tuples the passes and the CLI check against may not
    drift apart (a choice the API allows that a pass refuses would fail after the work began)."""
    from typing import get_args

    from spikeshield.compiler.driver import api
    from spikeshield.compiler.driver.config import CORRECTIONS
    from spikeshield.compiler.ir.ops.neurons import RESET_MODES
    from spikeshield.compiler.ir.run_spec import ENCODINGS
    from spikeshield.compiler.passes.calibrate_thresholds import CALIBRATION_MODES
    from spikeshield.compiler.passes.convert_relu_to_if import THRESHOLD_MODES
    from spikeshield.compiler.passes.finetune_robust import FINETUNE_OBJECTIVES
    from spikeshield.compiler.passes.fold_batchnorm import BN_MODES
    from spikeshield.runtime.attacks import PRESETS

    pairs = [(api.Reset, RESET_MODES), (api.ThresholdMode, THRESHOLD_MODES),
             (api.Calibration, CALIBRATION_MODES), (api.Correction, CORRECTIONS),
             (api.Encoding, ENCODINGS), (api.BatchNormMode, BN_MODES),
             (api.Objective, FINETUNE_OBJECTIVES), (api.Preset, PRESETS)]
    for literal, accepted in pairs:
        assert set(get_args(literal)) == set(accepted), (literal, accepted)
