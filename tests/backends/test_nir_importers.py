"""The portable NIR profile, loaded by the SNN frameworks' own NIR importers (the real packages),
and the importers' known bugs, pinned so that an upgrade that fixes one is noticed (then update
the consumer table of docs/guides/deploy.md and these tests)."""

from __future__ import annotations

import warnings

import nir
import norse.torch as norse
import pytest
import sinabs
import snntorch
import torch
from sinabs.activation import MembraneSubtract, MultiSpike
from snntorch.import_nir import import_from_nir as snntorch_import
from spikingjelly.activation_based.nir_exchange.from_nir import import_from_nir as sj_import

from spikeshield.backends.nir_backend import to_nir, write_nir
from spikeshield.compiler.ir.errors import ConfigError, UnsupportedOpError
from spikeshield.compiler.ir.ops import IF
from spikeshield.runtime.executor import GraphExecutor
from tests.backends.conftest import TIMESTEPS, assert_same_spikes, zoo_snn
from tests.backends.nir_reference import NirReference

ARCHS = ["lenet", "vgg11", "resnet20"]


def runtime(graph, x):
    executor = GraphExecutor(graph).eval()
    with torch.no_grad():
        return executor(x, TIMESTEPS, record=True), executor.neuron_spike_counts


def portable(arch: str, tmp_path):
    """Paper A's neuron, the one the portable profile holds: reset to zero, from zero, one
    threshold per layer."""
    graph, x = zoo_snn(arch, "zero", "layer", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graph, x, nir.read(write_nir(graph, tmp_path / "snn.nir", "portable"))


@pytest.mark.parametrize("arch", ARCHS)
def test_portable_profile_means_what_the_runtime_computes(arch, tmp_path):
    graph, x, read = portable(arch, tmp_path)
    kinds = {type(node).__name__ for node in read.nodes.values()}
    assert kinds <= {"Input", "Output", "Conv2d", "Affine", "Linear", "Flatten", "IF"}, kinds
    assert read.metadata["nir_profile"] == "portable" and read.metadata["dt"] == 1.0
    for node in read.nodes.values():
        if isinstance(node, nir.IF):  # one threshold per layer, r = 1, reset to zero
            assert len(set(node.v_threshold.reshape(-1).tolist())) == 1
            assert (node.r == 1).all() and (node.v_reset == 0).all()
    expected, counts = runtime(graph, x)
    reference = NirReference(read)
    with torch.no_grad():
        _, ref_counts, margins = reference.run(x, TIMESTEPS)
    logits = next(iter(reference.summed.values())) / TIMESTEPS  # the sidecar's readout
    # Layer by layer in order: a sample's first differing spikes must be float32 flips (membranes
    # within FLIP_MARGIN of the threshold; seen with some CPUs' conv kernels on vgg11). Such a
    # sample's later layers and logits then differ legitimately, so it leaves the comparison;
    # every other sample's spikes and logits are the runtime's exactly (logits to 1e-5).
    flipped = torch.zeros(len(x), dtype=torch.bool)
    for name in graph.nodes_of(IF):
        keep = ~flipped
        assert_same_spikes(counts[name][keep].flatten(1).numpy(),
                           ref_counts[name][keep].flatten(1).numpy(),
                           margins[name][keep].flatten(1).numpy(), name)
        flipped |= (counts[name] != ref_counts[name]).flatten(1).any(1)
    exact = ~flipped
    assert exact.float().mean() >= 0.5, f"{int(flipped.sum())} of {len(x)} samples flipped"
    assert torch.equal(logits[exact].argmax(1), expected[exact].argmax(1))
    assert (logits[exact] - expected[exact]).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_spikingjelly_imports_the_portable_profile_and_agrees(arch, tmp_path):
    graph, x, read = portable(arch, tmp_path)
    module = sj_import(read, dt=1.0)  # SpikingJelly needs r == 1 / dt and ignores NIR's dt: pass it
    state, total = None, 0
    with torch.no_grad():
        for _ in range(TIMESTEPS):
            out, state = module(x, state)
            total = total + out
    expected, _ = runtime(graph, x)
    logits = total / TIMESTEPS
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert (logits - expected).abs().max() < 1e-5


def norse_logits(read, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = norse.from_nir(read, dt=1.0)
    logits = []
    with torch.no_grad():
        for sample in x:  # Norse maps Flatten(start_dim=0) literally: feed one sample at a time
            state, total = None, 0
            for _ in range(TIMESTEPS):
                out, state = module(sample, state)
                total = total + out
            logits.append(total / TIMESTEPS)
    return torch.stack(logits)


@pytest.mark.parametrize("arch", ["lenet", "vgg11"])
def test_norse_imports_the_portable_profile_and_agrees(arch, tmp_path):
    graph, x, read = portable(arch, tmp_path)
    expected, _ = runtime(graph, x)
    logits = norse_logits(read, x)
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert (logits - expected).abs().max() < 1e-5


def test_known_bug_norse_runs_a_residual_nir_graph_out_of_order(tmp_path):
    """Norse 1.1 / nirtorch 2.6: on resnet20 the module's output is not the logits but an inner
    layer's (8, 32, 32) map, at every step: use the Norse backend (export --format norse)."""
    _, x, read = portable("resnet20", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = norse.from_nir(read, dt=1.0)
    first, state = module(x[0], None)
    second, _ = module(x[0], state)
    assert tuple(first.shape) == tuple(second.shape) == (8, 32, 32)


def test_known_bug_snntorch_imports_nir_if_as_a_leaky_neuron(tmp_path):
    """snnTorch 1.0: nir.IF becomes Leaky(beta=0.9) with reset by subtraction: not an IF neuron
    (and nir.I is refused): use the snnTorch backend (export --format snntorch). The module it
    builds does not even run: a convolution receives a (spikes, membrane) tuple."""
    _, x, read = portable("lenet", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = snntorch_import(read)
    leaky = [m for m in module.modules() if isinstance(m, snntorch.Leaky)]
    assert leaky and all(abs(float(m.beta) - 0.9) < 1e-6 for m in leaky)
    assert all(m.reset_mechanism == "subtract" for m in leaky)
    with pytest.raises(TypeError, match="conv2d"), torch.no_grad():
        module(x[:2])


def test_known_bug_sinabs_imports_nir_if_as_a_multi_spike_subtracting_neuron(tmp_path):
    """Sinabs 3.1.3: nir.IF becomes IAFSqueeze with MultiSpike, reset by subtraction and a membrane
    floor at -threshold, whatever v_reset says: use the Sinabs backend (export --format sinabs)."""
    _, _, read = portable("lenet", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = sinabs.from_nir(read, batch_size=4)
    neurons = [m for m in module.modules() if type(m).__name__ == "IAFSqueeze"]
    assert neurons
    for m in neurons:
        assert m.spike_fn is MultiSpike and isinstance(m.reset_fn, MembraneSubtract)
        assert torch.equal(m.min_v_mem, -m.spike_threshold)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_known_bug_no_importer_loads_the_exact_profile(reset):
    """The exact profile (LeNet): SpikingJelly and snnTorch stop at its I readout, Norse and Sinabs
    have no module for its AvgPool2d (a KeyError on the node's name) -- whence the portable one."""
    graph, _ = zoo_snn("lenet", reset)
    exact = to_nir(graph)
    with pytest.raises(ValueError, match="Unknown node type <class 'nir.ir.neuron.I'>"):
        sj_import(exact, dt=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="Unknown node type <class 'nir.ir.neuron.I'>"):
            snntorch_import(exact)
        with pytest.raises(KeyError):
            norse.from_nir(exact, dt=1.0)
        with pytest.raises(KeyError):
            sinabs.from_nir(exact, batch_size=4)


@pytest.mark.parametrize("reset,threshold,v_init,message", [
    ("subtract", "layer", 0.0, "resets by subtraction, which NIR importers load wrongly"),
    ("subtract", "layer", 0.5, "resets by subtraction"),
    ("zero", "layer", 0.5, "starts at v_init=0.5"),
    ("zero", "channel", 0.0, "one threshold per channel.*--uniform-thresholds"),
])
def test_portable_profile_refuses_what_it_cannot_express_in_one_line(reset, threshold, v_init,
                                                                     message):
    graph, _ = zoo_snn("lenet", reset, threshold, v_init)
    with pytest.raises(UnsupportedOpError, match=message) as err:
        to_nir(graph, "portable")
    assert "\n" not in str(err.value) and "recompile with" in str(err.value)


def test_an_unknown_profile_is_refused():
    graph, _ = zoo_snn("lenet", "zero")
    with pytest.raises(ConfigError, match="unknown NIR profile 'loose'; choose one of exact"):
        to_nir(graph, "loose")


def test_spikingjelly_imports_a_paper_a_residual_net_calibrated_per_channel(tmp_path):
    """Paper A's neuron on a residual net written as third-party code writes it (identity
    shortcuts), calibrated per channel with the fit and compiled with ``uniform_thresholds``: the
    portable file loads in SpikingJelly and computes the runtime's logits."""
    import spikeshield as ss
    from tests.third_party_models import ResNet

    torch.manual_seed(0)
    model = ResNet(widths=(8, 16, 32)).eval()
    images = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    snn = ss.convert(model, images[:32], reset="zero", v_init=0.0, uniform_thresholds=True,
                     timesteps=TIMESTEPS, calibration_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = nir.read(write_nir(snn.graph, tmp_path / "snn.nir", "portable"))
    module = sj_import(read, dt=1.0)
    x = images[32:]
    state, total = None, 0
    with torch.no_grad():
        for _ in range(TIMESTEPS):
            out, state = module(x, state)
            total = total + out
    expected, counts = runtime(snn.graph, x)
    assert sum(int(c.sum()) for c in counts.values()) > 0
    logits = total / TIMESTEPS
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert (logits - expected).abs().max() < 1e-5


@pytest.mark.parametrize("importer,arch", [("spikingjelly", "lenet"), ("spikingjelly", "resnet20"),
                                           ("norse", "lenet")])
def test_the_sidecars_loading_code_runs_as_written_and_agrees(importer, arch, tmp_path):
    """The portable export's sidecar names, per importer, the exact code that loads and runs the
    file; for the importers that compute the runtime's numbers, that code does."""
    import json

    from spikeshield.compiler.driver.export import export_graph

    graph, x = zoo_snn(arch, "zero", "layer", 0.0)
    path = tmp_path / "snn.portable.nir"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_graph(graph, {"nir": path}, nir_profile="portable")
    sidecar = json.loads((tmp_path / "snn.portable.nir.json").read_text())
    assert set(sidecar["importers"]) == {"spikingjelly", "norse", "snntorch", "sinabs",
                                         "snn-mlir", "spikeshield"}
    scope = {"PATH": str(path), "x": x, "T": TIMESTEPS}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        exec(sidecar["importers"][importer]["load"], scope)
    expected, _ = runtime(graph, x)
    assert torch.equal(scope["logits"].argmax(1), expected.argmax(1))
    assert (scope["logits"] - expected).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["lenet", "vgg11"])
def test_snn_mlir_exports_the_portable_profile_with_the_compiled_neurons(arch, tmp_path):
    """snn-mlir 1.0 (NIR -> MLIR and C): one snn.lif per IF layer, decay 1 (no leak), the layer's
    threshold and reset to 0, in the graph's order. Running the MLIR needs its snn-opt tool,
    which is not on PyPI: not run here."""
    import re

    snn_mlir = pytest.importorskip("snn_mlir", reason="pip install snn-mlir==1.0.0 "
                                                      "(make install does)")
    graph, _, _ = portable(arch, tmp_path)
    assert snn_mlir.check(str(tmp_path / "snn.nir")).ok
    snn_mlir.export(str(tmp_path / "snn.nir"), tmp_path / "snn.mlir")
    text = (tmp_path / "snn.mlir").read_text()
    neurons = re.findall(r"snn\.lif ins\(%synapse_\w+\) state\(%voltage_(\w+)\).*?\{decay_float = "
                         r"([-\d.e+]+) : f64, threshold_float = ([-\d.e+]+) : f64, v_reset_float "
                         r"= ([-\d.e+]+)", text)
    assert [name for name, *_ in neurons] == graph.nodes_of(IF)
    for name, decay, threshold, v_reset in neurons:
        assert float(decay) == 1.0 and float(v_reset) == 0.0
        assert float(threshold) == pytest.approx(float(graph.op(name).threshold), rel=1e-9)


def test_known_limit_snn_mlir_refuses_a_residual_graph(tmp_path):
    """snn-mlir 1.0 takes linear chains only: a residual net is refused at `check`, naming the
    first node with two successors (use the native modules or SpikingJelly's NIR import)."""
    snn_mlir = pytest.importorskip("snn_mlir", reason="pip install snn-mlir==1.0.0 "
                                                      "(make install does)")
    portable("resnet20", tmp_path)
    report = snn_mlir.check(str(tmp_path / "snn.nir"))
    assert not report.ok
    assert [f.kind for f in report.graph] == ["nonlinear_topology"]
