"""Every table keyed by op kind handles each registered kind or names it as not supported, and the
op traits those tables rely on hold. Adding an op kind without deciding its fate in every table
fails here."""

from __future__ import annotations

import dataclasses

import pytest

from spikeshield.backends import frameworks, nir_backend, onnx_backend, targets
from spikeshield.compiler.ir.ops import OPS, Op, OpCoverage, register_op, tensor_field
from spikeshield.frontends import fx_lowering, nir_frontend, onnx_frontend
from spikeshield.runtime import executor, storage, synops

TABLES = {
    "fx/torch.export frontend": fx_lowering.COVERAGE,
    "ONNX frontend": onnx_frontend.COVERAGE,
    "NIR frontend": nir_frontend.COVERAGE,
    "NIR backend": nir_backend.COVERAGE,
    "ONNX backend": onnx_backend.COVERAGE,
    "framework backends": frameworks.COVERAGE,
    "executor": executor.COVERAGE,
    "SynOp counter": synops.COVERAGE,
    "storage": storage.COVERAGE,
    "targets": targets.COVERAGE,
}


@pytest.mark.parametrize("name", TABLES)
def test_every_registered_kind_is_handled_or_named_as_not_supported(name):
    coverage: OpCoverage = TABLES[name]
    assert coverage.missing() == [], f"{coverage.table} says nothing of {coverage.missing()}"
    assert not coverage.handled & set(coverage.not_supported), "a kind both handled and not"
    assert set(coverage.handled) <= set(OPS) and set(coverage.not_supported) <= set(OPS)


def test_a_new_kind_is_a_gap_in_every_table_until_each_decides():
    """What adding Conv1d would look like: registered, synaptic, and handled nowhere yet."""

    @register_op("conv1d_probe")
    @dataclasses.dataclass(eq=False)
    class Conv1dProbe(Op):
        synaptic = True
        frozen_fields = ("mask",)
        weight: object = tensor_field()
        mask: object = tensor_field(optional=True)

    try:
        for name, coverage in TABLES.items():
            assert "conv1d_probe" in coverage.missing(), name
    finally:
        del OPS["conv1d_probe"]


@pytest.mark.parametrize("kind", sorted(OPS))
def test_traits_match_the_fields_the_tables_read(kind):
    cls = OPS[kind]
    tensor_fields = set(cls.tensor_names())
    if cls.synaptic:  # storage, SynOps, pruning and masks read these two
        assert {"weight", "mask"} <= tensor_fields
    assert set(cls.frozen_fields) <= tensor_fields
    assert sum([cls.synaptic, cls.neuron, cls.pooling, cls.structural]) <= 1
