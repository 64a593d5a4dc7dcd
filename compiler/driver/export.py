"""Export a compiled SNN for a format and a hardware target: check, adapt, re-measure, write.

``export_graph`` is what ``spikeshield export`` and ``spikeshield compile --export`` run. For a target
other than ``generic`` the graph is checked against the target profile; violations a pass can repair
(weight precision, biases, reset mode, initial potential, input encoding, bias-free scales) are repaired, the clean
accuracy is measured before and after on the same test images, and anything left that the target
cannot run is one error listing every violation, before any file is written.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spikeshield.backends.frameworks import FRAMEWORKS, write_module
from spikeshield.backends.nir_backend import READOUTS as NIR_READOUTS
from spikeshield.backends.nir_backend import write_nir
from spikeshield.backends.nir_portable import PORTABLE_LOADING
from spikeshield.backends.nir_portable import PROFILES as NIR_PROFILES
from spikeshield.backends.onnx_backend import write_onnx
from spikeshield.backends.targets import Violation, check_target, load_target
from spikeshield.compiler.driver.manifest import MANIFEST, record_files
from spikeshield.compiler.driver.outputs import claim_output, output_lock
from spikeshield.compiler.ir.atomic import atomic_file
from spikeshield.compiler.ir.errors import ConfigError, ModelLoadError, UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import read_json_file, resolve_timesteps
from spikeshield.compiler.ir.serialize import save_graph
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.runtime.data import Dataset

# format -> (default file name, writer(graph, path, T, NIR profile))
FORMATS: dict[str, tuple[str, Any]] = {
    "nir": ("snn.nir", lambda g, p, t, profile: write_nir(g, p, profile)),
    "onnx": ("snn.onnx", lambda g, p, t, profile: write_onnx(g, p, "unrolled", t)),
    "onnx-step": ("snn_step.onnx", lambda g, p, t, profile: write_onnx(g, p, "step", t)),
    # A native module of an SNN framework (backends.frameworks), loaded with load_module(path).
    **{name: (f"snn.{name}.safetensors",
              lambda g, p, t, profile, name=name: write_module(g, p, name))
       for name in FRAMEWORKS},
}
PORTABLE_NIR_FILE = "snn.portable.nir"  # the default name of the portable profile's export
# Formats users ask for that cannot be written here, and why (measured; docs/guides/deploy.md,
# "SNN frameworks").
UNAVAILABLE: dict[str, str] = {
    "speck": "a Speck chip configuration needs SynSense's samna, and samna 0.48.6 from PyPI only "
    "downloads the real package from gitlab.com when imported (sinabs.backend.dynapcnn imports it "
    "first); export --format sinabs for the Sinabs module, --target speck to check the limits",
}


def _unknown_formats(unknown: list[str]) -> ConfigError:
    known = [f"{f}: {UNAVAILABLE[f]}" for f in unknown if f in UNAVAILABLE]
    if known:
        return ConfigError("; ".join(known))
    return ConfigError(f"unknown export format(s) {', '.join(unknown) or '(none)'}; "
                       f"choose from {', '.join(FORMATS)}")
# The order repairs run in: quantisation last, so that it sees the final weights.
REPAIR_ORDER = ("set_encoding", "set_reset_mode", "set_initial_potential", "drop_biases",
                "fold_scales", "quantize_weights")


@dataclass
class Adaptation:
    """What adapting a graph to a target did, and what it cost."""

    target: str
    repaired: list[str] = field(default_factory=list)  # violations repaired, as text
    passes: list[dict[str, Any]] = field(default_factory=list)
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    samples: int = 0

    def to_json(self) -> dict[str, Any]:
        cost = None
        if self.accuracy_before is not None and self.accuracy_after is not None:
            cost = self.accuracy_before - self.accuracy_after
        return {
            "target": self.target,
            "repaired": self.repaired,
            "passes": self.passes,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "accuracy_cost": cost,
            "samples": self.samples,
        }


def parse_formats(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"nir,onnx"`` -> ``["nir", "onnx"]``, each checked."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    formats = [s.strip() for s in items if s.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise _unknown_formats(unknown)
    return formats


def _describe(violations: list[Violation]) -> str:
    return "; ".join(str(v) for v in violations)


def adapt_to_target(
    graph: Graph,
    target: str,
    test: Dataset | None = None,
    timesteps: int | None = None,
    device: str = "cpu",
) -> tuple[Graph, Adaptation]:
    """Repair what can be repaired for ``target``; raise listing whatever cannot. With ``test``,
    the accuracy before and after the repairs is measured on it."""
    profile = load_target(target)
    violations = check_target(graph, profile)
    adaptation = Adaptation(profile.name)
    if not violations:
        return graph, adaptation
    fatal = [v for v in violations if v.repair is None]
    if fatal:
        raise UnsupportedOpError(
            f"the graph cannot run on {profile.name} ({len(fatal)} "
            f"violation(s)): {_describe(fatal)}"
        )
    repairs = {v.repair[0]: v.repair[1] for v in violations if v.repair is not None}
    pipeline = [(name, repairs[name]) for name in REPAIR_ORDER if name in repairs]
    manager = PassManager()
    adapted = manager.run(graph, pipeline)
    left = check_target(adapted, profile)
    if left:
        raise UnsupportedOpError(
            f"after {', '.join(n for n, _ in pipeline)} the graph still "
            f"breaks {profile.name}'s limits: {_describe(left)}"
        )
    adaptation.repaired = [str(v) for v in violations]
    adaptation.passes = [r.to_json() for r in manager.records]
    if test is not None:
        adaptation.accuracy_before = _accuracy(graph, test, timesteps, device)
        adaptation.accuracy_after = _accuracy(adapted, test, timesteps, device)
        adaptation.samples = len(test)
    return adapted, adaptation


def _accuracy(graph: Graph, test: Dataset, timesteps: int | None, device: str) -> float:
    import torch

    from spikeshield.runtime.evaluate import evaluate_graph
    from spikeshield.runtime.executor import GraphExecutor

    torch.manual_seed(0)  # Poisson input: the same draws before and after
    spec = graph.run_spec()
    steps = resolve_timesteps(timesteps, spec.timesteps, "--timesteps")
    executor = GraphExecutor(graph, encoding=spec.encoding)
    return evaluate_graph(executor, test, steps, device=device).accuracy


def export_graph(
    graph: Graph,
    files: dict[str, str | os.PathLike],
    target: str = "generic",
    test: Dataset | None = None,
    timesteps: int | None = None,
    device: str = "cpu",
    nir_profile: str = "exact",
) -> list[dict[str, Any]]:
    """Adapt ``graph`` to ``target`` once, then write it in each format of ``files`` (format ->
    path; NIR in ``nir_profile``), each file atomically with a JSON sidecar ``<file>.json``;
    returns those descriptions."""
    unknown = [f for f in files if f not in FORMATS]
    if unknown:
        raise _unknown_formats(unknown)
    adapted, adaptation = adapt_to_target(graph, target, test, timesteps, device)
    spec = adapted.run_spec()
    steps = resolve_timesteps(timesteps, spec.timesteps, "--timesteps")
    descriptions = []
    adapted_ir = None
    if adaptation.passes:  # keep the graph the files hold, for `spikeshield run` and `eval`
        adapted_ir = Path(next(iter(files.values()))).with_name(f"snn_{adaptation.target}.ir")
        with atomic_file(adapted_ir) as tmp:
            save_graph(adapted, tmp)
    for fmt, path in files.items():
        out = Path(path)
        description = {
            "format": fmt,
            "file": out.name,
            "timesteps": steps,
            "encoding": spec.encoding,
            "adaptation": adaptation.to_json(),
            "adapted_ir": adapted_ir.name if adapted_ir else None,
        }
        if "quantization" in adapted.meta:
            description["quantization"] = adapted.meta["quantization"]
        if fmt in FRAMEWORKS:
            description["load"] = ("from spikeshield.backends.frameworks import load_module; "
                                   f"snn = load_module({out.name!r}); logits = snn(x)")
        if fmt == "nir":
            description["nir_profile"] = nir_profile
            description["readout"] = NIR_READOUTS[nir_profile]
            if nir_profile == "portable":
                description["importers"] = PORTABLE_LOADING
        sidecar = out.with_name(out.name + ".json")
        with atomic_file(out) as tmp, atomic_file(sidecar) as tmp_json:
            FORMATS[fmt][1](adapted, tmp, steps, nir_profile)
            tmp_json.write_text(json.dumps(description, indent=2) + "\n")
        descriptions.append(description)
        record_files(out.parent, [out, sidecar] + ([adapted_ir] if adapted_ir else []))
    return descriptions


def export_source(
    source: str | os.PathLike,
    fmt: str,
    target: str = "generic",
    out: str | os.PathLike | None = None,
    timesteps: int | None = None,
    data: str | None = None,
    samples: int = 1000,
    force: bool = False,
    skip_verify: bool = False,
    nir_profile: str = "exact",
) -> tuple[Path, dict[str, Any]]:
    """``spikeshield export``: load a compile directory, .ir or .nir; adapt; write (NIR in
    ``nir_profile``, by default to snn.nir or, portable, snn.portable.nir). The test data
    for re-measuring accuracy after repairs is ``data`` or the spec the directory was compiled with
    (loaded only when a repair is needed). ``out`` is claimed first (``compiler.outputs``): it must
    end in the format's suffix, may not be the source, and replaces an earlier export only with
    ``force``; a compile directory it writes into stays locked until the export is done."""
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.driver.model_io import load_model

    if fmt not in FORMATS:
        raise _unknown_formats([fmt])
    if samples <= 0:
        raise ConfigError(f"--n must be positive, got {samples}")
    if nir_profile not in NIR_PROFILES:
        raise ConfigError(f"unknown NIR profile {nir_profile!r}; choose one of "
                          f"{', '.join(NIR_PROFILES)}")
    if nir_profile != "exact" and fmt != "nir":
        raise ConfigError(f"--nir-profile applies to --format nir, not {fmt}")
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    default = PORTABLE_NIR_FILE if nir_profile == "portable" else FORMATS[fmt][0]
    out = Path(out) if out is not None else folder / default
    suffix = Path(FORMATS[fmt][0]).suffix
    if out.suffix != suffix:
        raise ConfigError(f"--out must end in {suffix} for --format {fmt}, got {out.name}")
    inputs = [source / "snn.ir", source / MANIFEST] if source.is_dir() else [source]
    in_compile_dir = (out.parent / MANIFEST).is_file()
    with output_lock(out.parent) if in_compile_dir else contextlib.nullcontext(), \
            claim_output(out, inputs, force, spikeshield_file=lambda p: _is_export(p, fmt)):
        _check_companions(out, fmt, load_target(target).name)
        graph = load_model(source, verify=not skip_verify)
        test = None
        if check_target(graph, load_target(target)):
            spec = data or _recorded_data_spec(source)
            if spec:
                test = load_data(spec).test.head(samples)
        [description] = export_graph(graph, {fmt: out}, target, test, timesteps,
                                     nir_profile=nir_profile)
    return Path(out), description


def _check_companions(out: Path, fmt: str, target: str) -> None:
    """The files an export writes beside ``out`` (its sidecar ``OUT.json``, the adapted
    ``snn_<target>.ir``) replace only files spikeshield wrote: another tool's file of that name is
    refused, never overwritten."""
    from spikeshield.compiler.ir.serialize import is_spikeshield_ir

    sidecar = out.with_name(out.name + ".json")
    if sidecar.exists() and not (sidecar.is_file() and not sidecar.is_symlink()
                                 and _is_export(out, fmt)):
        raise ConfigError(f"{sidecar} exists and is not the sidecar of a spikeshield {fmt} "
                          "export; move it away or choose another --out")
    adapted = out.with_name(f"snn_{target}.ir")
    if adapted.exists() and not (adapted.is_file() and not adapted.is_symlink()
                                 and is_spikeshield_ir(adapted)):
        raise ConfigError(f"{adapted} exists and is not a spikeshield IR file; move it away or "
                          "choose another --out folder")


def _is_export(path: Path, fmt: str) -> bool:
    """A file that ``export`` wrote in ``fmt`` (its JSON sidecar says so)."""
    sidecar = path.with_name(path.name + ".json")
    try:
        return read_json_file(sidecar).get("format") == fmt
    except (ModelLoadError, AttributeError):
        return False


def _recorded_data_spec(source: Path) -> str | None:
    report = source / "report.json" if source.is_dir() else source.parent / "report.json"
    if report.is_file():
        recorded = read_json_file(report)
        return recorded.get("data_spec") if isinstance(recorded, dict) else None
    return None
