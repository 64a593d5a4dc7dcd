"""The differential tester's CI budget (``benchmarks/differential.py``): random models written as
Python source go through every frontend (stage 1) and, converted, through every engine and exporter
(stage 2); every model a longer search found is replayed from ``differential_findings/``.

The budget is derandomised, so each run tries the same models, and it is checked to cover what the
tester claims to try (in-place statements, aliasing, padding, pooling, residuals, ties at the
threshold), so that a weaker generator fails here rather than testing less in silence."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import differential  # noqa: E402

FINDINGS = sorted((Path(__file__).parent / "differential_findings").glob("*.py"))
STAGE1_EXAMPLES = 8
STAGE2_EXAMPLES = 4
def budget(examples: int) -> settings:
    """The CI budget: the same ``examples`` models on every run, reported as generated (shrinking
    costs minutes here; the long mode of benchmarks/differential.py shrinks)."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate], print_blob=True,
                    suppress_health_check=list(HealthCheck))


def test_every_frontend_computes_what_eager_pytorch_computes_on_random_models():
    seen: list[str] = []
    stats: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as work:

        @budget(STAGE1_EXAMPLES)
        @given(program=differential.programs())
        def stage1(program):
            source = program.source()
            seen.append(source)
            differential.check_source(source, Path(work), engines=[], stats=stats)

        stage1()
    text = "\n".join(seen)
    # What the budget must exercise for the tester to mean anything (see the module docstring).
    in_place_statement = (r"^\s+(x\.\w+_\(|F\.relu\(x, inplace=True\)|torch\.relu_\(x\)"
                          r"|self\.relu\d+\(x\))")
    for pattern in [in_place_statement,
                    r"^\s+s\d+ = x$", r"F\.pad\(", r"avg_pool2d|AvgPool2d", r"BatchNorm",
                    r"x = x [+-] s\d+|x\.add_\(s\d+\)|x \+= s\d+"]:
        assert re.search(pattern, text, re.M), f"the CI budget never generates {pattern!r}"
    assert stats.get("fx exact", 0) == STAGE1_EXAMPLES  # fx lowered every model exactly
    assert stats.get("pt2-dynamic exact", 0) == STAGE1_EXAMPLES
    for path in differential.frontend_paths():  # no path passes by refusing everything
        assert stats.get(f"{path} exact", 0) >= 1, f"{path}: {stats}"


# Paper A's neuron (the only one the portable NIR holds) and today's compile defaults.
NEURONS = [differential.Neuron("zero", "layer", 0.0), differential.Neuron("subtract", "channel", 0.5)]


@pytest.mark.parametrize("neuron", NEURONS, ids=["paper-a", "defaults"])
def test_every_engine_and_exporter_computes_what_the_runtime_computes_on_random_snns(neuron):
    stats: dict[str, int] = {}
    ties: list[int] = []
    with tempfile.TemporaryDirectory() as work:

        @budget(STAGE2_EXAMPLES)
        @given(program=differential.programs().filter(lambda p: p.dyadic_pools))
        def stage2(program):
            source = program.source(neuron)
            differential.check_source(source, Path(work), frontends=["fx"], stats=stats)
            ties.append(_membranes_on_threshold(source, Path(work)))

        stage2()
    converted = STAGE2_EXAMPLES - stats.get("conversion refused", 0) - stats.get("no neurons", 0)
    assert converted >= STAGE2_EXAMPLES - 1, stats
    for path in differential.engine_paths():
        if not path.startswith("nir-"):  # NIR may refuse a neuron or pad it cannot hold
            assert stats.get(f"{path} exact", 0) == converted, f"{path}: {stats}"
    assert stats.get("nir-exact exact", 0) >= 1, stats
    if neuron == NEURONS[0]:
        assert stats.get("nir-portable exact", 0) >= 1, stats
    assert sum(ties) > 0  # membranes landed exactly on a threshold: > and >= were told apart


def _membranes_on_threshold(source: str, work: Path) -> int:
    """How many neuron-steps of a budget SNN, on the tester's inputs, land exactly on their
    threshold (in exact arithmetic, which the dyadic grid makes float32's)."""
    from spikeshield.compiler.ir.ops import IF
    from spikeshield.frontends.torch_module import from_module
    from spikeshield.runtime.executor import GraphExecutor

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        model, shape, module = differential.load_model(source, Path(tmp))
    snn = differential.convert(from_module(model, shape), shape,
                               differential.Neuron(**module.NEURON))
    x = differential._grid_inputs(6, shape, seed=11)
    executor = GraphExecutor(snn).eval()
    hits = 0
    with torch.no_grad():
        for layer in snn.nodes_of(IF):
            op, dims = snn.op(layer), len(snn.shape(layer))
            current = executor(x, stop_at=layer)
            theta = op.threshold.reshape(-1, *([1] * (dims - 1))) if op.threshold.numel() > 1 \
                else op.threshold
            v = op.v_init * theta * torch.ones(len(x), *snn.shape(layer))
            for t in range(differential.STAGE2_STEPS):
                v = v + (current[t] if current.dim() == dims + 2 else current)
                hits += int((v == theta).sum())
                fired = v > theta
                v = torch.where(fired, torch.zeros_like(v) if op.reset == "zero" else v - theta, v)
    return hits


@pytest.mark.parametrize("finding", FINDINGS, ids=[f.stem for f in FINDINGS])
def test_a_model_a_search_found_is_now_computed_exactly(finding, tmp_path):
    differential.check_source(finding.read_text(), tmp_path)
