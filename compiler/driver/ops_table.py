"""``spikeshield ops``: every IR op with its traits, what conversion does with it, and which
frontends, backends and runtime tables handle it (read from their ``COVERAGE``); then the source
ops each frontend lowers. Derived from the tables themselves, so it cannot drift from the code."""

from __future__ import annotations

from spikeshield.backends import frameworks, nir_backend, onnx_backend, targets
from spikeshield.compiler.ir.ops import OPS
from spikeshield.frontends import fx_lowering, nir_frontend, onnx_frontend
from spikeshield.runtime import executor, synops

COLUMNS = {
    "fx/.pt2": fx_lowering.COVERAGE, "ONNX in": onnx_frontend.COVERAGE,
    "NIR in": nir_frontend.COVERAGE, "NIR out": nir_backend.COVERAGE,
    "ONNX out": onnx_backend.COVERAGE, "frameworks": frameworks.COVERAGE,
    "runtime": executor.COVERAGE,
    "SynOps": synops.COVERAGE, "targets": targets.COVERAGE,
}


def _traits(cls) -> str:
    names = [t for t in ("synaptic", "neuron", "pooling", "structural") if getattr(cls, t)]
    return ", ".join(names) or "-"


def ops_table() -> str:
    """The text `spikeshield ops` prints."""
    lines = ["IR ops (yes: handled; no: refused with a reason, below)", ""]
    header = f"{'op':10s} {'traits':11s} " + " ".join(f"{c:8s}" for c in COLUMNS)
    lines += [header, "-" * len(header)]
    for kind, cls in sorted(OPS.items()):
        cells = ["yes" if kind in cov.handled else "no" for cov in COLUMNS.values()]
        lines.append(f"{kind:10s} {_traits(cls):11s} " + " ".join(f"{c:8s}" for c in cells))
    lines += ["", "In conversion (spikeshield compile):"]
    lines += [f"  {kind:10s} {cls.conversion}" for kind, cls in sorted(OPS.items())]
    lines += ["", "Refused, and what to do instead:"]
    for column, cov in COLUMNS.items():
        for kind, reason in sorted(cov.not_supported.items()):
            lines.append(f"  {column:8s} {kind:10s} {reason}")
    lines += ["", "Source ops each frontend lowers:",
              "  nn.Module / .pt2: " + ", ".join(fx_lowering.source_ops()),
              "  ONNX: " + ", ".join(onnx_frontend.source_ops()),
              "  NIR: " + ", ".join(nir_frontend.source_ops())]
    return "\n".join(lines)
