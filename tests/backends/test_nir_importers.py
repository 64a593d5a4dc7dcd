"""The portable NIR profile, loaded by the SNN frameworks' own NIR importers (the real packages),
and the importers' known bugs, pinned so that an upgrade that fixes one is noticed (then update
the README's consumer table and these tests)."""

from __future__ import annotations

import contextlib
import warnings

import nir
import norse.torch as norse
import pytest
import sinabs
import snntorch
import torch
from sinabs.activation import MembraneSubtract, MultiSpike
from snntorch.import_nir import import_from_nir as snntorch_import
from spikeshield.backends.nir_backend import to_nir, write_nir
from spikeshield.compiler.ir.errors import ConfigError, UnsupportedOpError
from spikeshield.compiler.ir.ops import IF
from spikeshield.runtime.executor import GraphExecutor
from spikingjelly.activation_based.nir_exchange.from_nir import import_from_nir as sj_import

from tests.backends.conftest import TIMESTEPS, assert_same_spikes, zoo_snn
from tests.backends.nir_reference import NirReference

ARCHS = ["lenet", "vgg11", "resnet20"]


def runtime(graph, x):
    executor = GraphExecutor(graph).eval()
    with torch.no_grad():
        return executor(x, TIMESTEPS, record=True), executor.neuron_spike_counts


def portable(arch: str, threshold: str, tmp_path):
    graph, x = zoo_snn(arch, "zero", threshold, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graph, x, nir.read(write_nir(graph, tmp_path / "snn.nir", "portable"))


# Measured 2026-12-07 on an AMD EPYC (torch's AVX2 kernels), on 4b42d6f as well: for the
# random-weight vgg11 with per-channel thresholds, the runtime's logits (time folded into the
# batch) differ by up to 0.0036 from three per-step consumers of the portable NIR (the NIR
# reference simulator, SpikingJelly, Norse); spikes first differ at net_features_13. The case is
# numerically chaotic rather than one side wrong: the runtime in float64 moves by 0.004 when
# oneDNN is switched off (torch.backends.mkldnn), so summation order alone flips a neuron and the
# flip cascades. With ATEN_CPU_CAPABILITY=default all agree, as on the CPU of earlier CI runs. A
# well-conditioned test network is the differential tester's work (issue 39); until then this
# one case, under exactly this condition, is an expected failure.
KNOWN_CPU_DIFFERENCE = ("vgg11", "channel", "AVX2")


@contextlib.contextmanager
def known_cpu_difference(arch: str, threshold: str):
    try:
        yield
    except AssertionError:
        if (arch, threshold, torch.backends.cpu.get_cpu_capability()) == KNOWN_CPU_DIFFERENCE:
            pytest.xfail("random-weight vgg11 with per-channel thresholds is numerically chaotic "
                         "under AVX2 kernels: summation order flips spikes (issue 39)")
        raise


@pytest.mark.parametrize("threshold", ["layer", "channel"])
@pytest.mark.parametrize("arch", ARCHS)
def test_portable_profile_means_what_the_runtime_computes(arch, threshold, tmp_path):
    with known_cpu_difference(arch, threshold):
        _check_portable_against_runtime(arch, threshold, tmp_path)


def _check_portable_against_runtime(arch, threshold, tmp_path):
    graph, x, read = portable(arch, threshold, tmp_path)
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


@pytest.mark.parametrize("threshold", ["layer", "channel"])
@pytest.mark.parametrize("arch", ARCHS)
def test_spikingjelly_imports_the_portable_profile_and_agrees(arch, threshold, tmp_path):
    graph, x, read = portable(arch, threshold, tmp_path)
    module = sj_import(read, dt=1.0)  # SpikingJelly needs r == 1 / dt and ignores NIR's dt: pass it
    state, total = None, 0
    with torch.no_grad():
        for _ in range(TIMESTEPS):
            out, state = module(x, state)
            total = total + out
    expected, _ = runtime(graph, x)
    logits = total / TIMESTEPS
    with known_cpu_difference(arch, threshold):
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
    graph, x, read = portable(arch, "channel", tmp_path)
    expected, _ = runtime(graph, x)
    logits = norse_logits(read, x)
    with known_cpu_difference(arch, "channel"):
        assert torch.equal(logits.argmax(1), expected.argmax(1))
        assert (logits - expected).abs().max() < 1e-5


def test_known_bug_norse_runs_a_residual_nir_graph_out_of_order(tmp_path):
    """Norse 1.1 / nirtorch 2.6: on resnet20 the module's output is not the logits but an inner
    layer's (8, 32, 32) map, at every step: use the Norse backend (export --format norse)."""
    _, x, read = portable("resnet20", "channel", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = norse.from_nir(read, dt=1.0)
    first, state = module(x[0], None)
    second, _ = module(x[0], state)
    assert tuple(first.shape) == tuple(second.shape) == (8, 32, 32)


def test_known_bug_snntorch_imports_nir_if_as_a_leaky_neuron(tmp_path):
    """snnTorch 1.0: nir.IF becomes Leaky(beta=0.9) with reset by subtraction: not an IF neuron
    (and nir.I is refused): use the snnTorch backend (export --format snntorch)."""
    _, _, read = portable("lenet", "layer", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = snntorch_import(read)
    leaky = [m for m in module.modules() if isinstance(m, snntorch.Leaky)]
    assert leaky and all(abs(float(m.beta) - 0.9) < 1e-6 for m in leaky)
    assert all(m.reset_mechanism == "subtract" for m in leaky)


def test_known_bug_sinabs_imports_nir_if_as_a_multi_spike_subtracting_neuron(tmp_path):
    """Sinabs 3.1.3: nir.IF becomes IAFSqueeze with MultiSpike, reset by subtraction and a membrane
    floor at -threshold, whatever v_reset says: use the Sinabs backend (export --format sinabs)."""
    _, _, read = portable("lenet", "layer", tmp_path)
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


@pytest.mark.parametrize("reset,v_init,message", [
    ("subtract", 0.0, "resets by subtraction, which NIR importers load wrongly"),
    ("subtract", 0.5, "resets by subtraction"),
])
def test_portable_profile_refuses_what_it_cannot_express_in_one_line(reset, v_init, message):
    graph, _ = zoo_snn("lenet", reset, "layer", v_init)
    with pytest.raises(UnsupportedOpError, match=message) as err:
        to_nir(graph, "portable")
    assert "\n" not in str(err.value) and "--nir-profile exact" in str(err.value)


def test_an_unknown_profile_is_refused():
    graph, _ = zoo_snn("lenet", "zero")
    with pytest.raises(ConfigError, match="unknown NIR profile 'loose'; choose one of exact"):
        to_nir(graph, "loose")
