"""Coverage-guided fuzzing of every reader of a file a stranger can hand spikeshield.

Each input is one byte that picks a reader, then the bytes it reads. A reader may accept the
bytes or refuse them with a one-line :class:`SpikeshieldError`; anything else (another exception,
a message over several lines, code running, a hang or a memory blow-up caught by libFuzzer's
limits) is a finding. The readers:

==============  =================================================================================
``pt2-json``    the bytes as ``models/model.json`` inside an otherwise genuine ``.pt2``
``pt2``         the bytes as a whole ``.pt2`` archive
``onnx``        the bytes as an ``.onnx`` model
``nir``         the bytes as a ``.nir`` (HDF5) graph
``ir``          the bytes as a spikeshield ``.ir`` (safetensors)
``manifest``    the bytes as ``manifest.json`` of a compile directory (verify, ownership)
``checkpoint``  the bytes as a checkpoint's ``job.json``, then as its part file
``idx``         the bytes as an IDX image file (plain, then gzip-compressed)
``cifar``       the bytes as a CIFAR batch pickle
``target``      the bytes as a hardware target profile (JSON)
==============  =================================================================================

Run the campaign (atheris 3.0, ``pip install atheris``)::

    python benchmarks/fuzz_readers.py --seconds 3600 --corpus runs/fuzz/corpus

It prints libFuzzer's progress and, at the end, the number of executions and the findings (the
inputs that produced them are kept under ``runs/fuzz/findings``). ``check(reader, data)`` runs
one input without atheris; the suite runs the seeds and a short campaign
(``tests/benchmarks/test_fuzz_readers.py``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

READERS = ("pt2-json", "pt2", "onnx", "nir", "ir", "manifest", "checkpoint", "idx", "cifar",
           "target")
MARKER = Path(tempfile.gettempdir()) / f"spikeshield-fuzz-code-ran-{os.getpid()}"


class Finding(Exception):
    """A reader did something other than accept or refuse in one line."""


def _model_seed(folder: Path) -> dict[str, bytes]:
    """One genuine file per format, from a tiny conv net (built here: nothing is downloaded)."""
    import torch

    from spikeshield.backends.nir_backend import write_nir
    from spikeshield.backends.onnx_backend import write_onnx
    from spikeshield.compiler.ir.serialize import save_graph
    from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
    from spikeshield.frontends.torch_module import from_module

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
            self.fc = torch.nn.Linear(2 * 3 * 3, 3)

        def forward(self, x):
            y = torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2)
            return self.fc(y.view(y.size(0), -1))

    torch.manual_seed(0)
    model = Tiny().eval()
    program = torch.export.export(model, (torch.rand(2, 1, 6, 6),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    torch.export.save(program, folder / "m.pt2")
    graph = from_module(model, (1, 6, 6))
    save_graph(graph, folder / "m.ir")
    write_onnx(graph, folder / "m.onnx")
    write_nir(convert_relu_to_if(graph).graph, folder / "m.nir")
    return {suffix: (folder / f"m.{suffix}").read_bytes() for suffix in ("pt2", "ir", "onnx", "nir")}


def seeds(folder: Path) -> dict[str, list[bytes]]:
    """Genuine inputs for each reader: what the campaign starts from."""
    import numpy as np
    import torch

    models = _model_seed(folder)
    with zipfile.ZipFile(io.BytesIO(models["pt2"])) as z:
        program = z.read(next(n for n in z.namelist() if n.endswith("models/model.json")))
    job = {"format": "spikeshield-checkpoint", "version": 1, "job": "eval", "job_id": "a" * 32,
           "settings": {"n": 1}, "written": {}}
    part = io.BytesIO()
    torch.save({"count": torch.tensor([1, 2]), "job_id": "a" * 32}, part)
    idx = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(range(8))
    cifar = io.BytesIO()
    import pickle

    pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, cifar, protocol=2)
    manifest = {"format": "spikeshield-manifest", "version": 1, "algorithm": "sha256",
                "files": {"snn.ir": {"sha256": "0" * 64, "bytes": 2}}}
    target = {"name": "t", "description": "", "weight_bits": 8, "max_fan_in": 64}
    return {
        "pt2-json": [program], "pt2": [models["pt2"]], "onnx": [models["onnx"]],
        "nir": [models["nir"]], "ir": [models["ir"]], "manifest": [json.dumps(manifest).encode()],
        "checkpoint": [json.dumps(job).encode(), part.getvalue()], "idx": [idx],
        "cifar": [cifar.getvalue()], "target": [json.dumps(target).encode()],
    }


class Harness:
    """Writes each input where its reader looks and runs the reader; keeps its scratch folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.genuine_pt2 = seeds(folder)["pt2"][0]

    def run(self, reader: str, data: bytes) -> None:
        from spikeshield.compiler.ir.errors import SpikeshieldError

        try:
            getattr(self, "_" + reader.replace("-", "_"))(data)
        except SpikeshieldError as err:
            if "\n" in str(err).strip():
                raise Finding(f"{reader}: a refusal over several lines: {str(err)[:200]!r}")
        except RecursionError as err:
            raise Finding(f"{reader}: RecursionError {str(err)[:120]}") from err
        except Exception as err:  # noqa: BLE001  (anything but a one-line refusal is a finding)
            raise Finding(f"{reader}: {type(err).__name__}: {str(err)[:200]}") from err
        finally:
            if MARKER.exists():
                MARKER.unlink()
                raise Finding(f"{reader}: code from the input ran")

    def _file(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def _model(self, suffix: str, data: bytes) -> None:
        from spikeshield.compiler.driver.model_io import load_model

        load_model(self._file(f"fuzz.{suffix}", data))

    def _pt2_json(self, data: bytes) -> None:
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(self.genuine_pt2)) as z, zipfile.ZipFile(out, "w") as w:
            for info in z.infolist():
                body = data if info.filename.endswith("models/model.json") else z.read(info)
                w.writestr(info.filename, body)
        self._model("pt2", out.getvalue())

    def _pt2(self, data: bytes) -> None:
        self._model("pt2", data)

    def _onnx(self, data: bytes) -> None:
        self._model("onnx", data)

    def _nir(self, data: bytes) -> None:
        self._model("nir", data)

    def _ir(self, data: bytes) -> None:
        self._model("ir", data)

    def _manifest(self, data: bytes) -> None:
        from spikeshield.compiler.driver.manifest import foreign_files, verify_directory

        directory = self.folder / "compiled"
        directory.mkdir(exist_ok=True)
        (directory / "snn.ir").write_bytes(b"ir")
        self._file("compiled/manifest.json", data)
        foreign_files(directory)
        verify_directory(directory).summary()

    def _checkpoint(self, data: bytes) -> None:
        from spikeshield.runtime.checkpoint import Checkpoint

        directory = self.folder / "ck"
        directory.mkdir(exist_ok=True)
        self._file("ck/job.json", data)
        self._file("ck/snn_ensemble.pt", data)
        checkpoint = Checkpoint(directory, "eval", {"n": 1}, resume=True)
        checkpoint.load("snn_ensemble")

    def _idx(self, data: bytes) -> None:
        from spikeshield.frontends.datasets import read_idx

        read_idx(self._file("images-idx3-ubyte", data))
        read_idx(self._file("images-idx3-ubyte.gz", gzip.compress(data, compresslevel=1)))

    def _cifar(self, data: bytes) -> None:
        from spikeshield.frontends.datasets import _cifar_arrays, _unpickle

        batch = _unpickle(self._file("data_batch_1", data))
        _cifar_arrays(batch, b"labels")

    def _target(self, data: bytes) -> None:
        from spikeshield.backends.targets import load_target

        load_target(self._file("target.json", data))


def check(harness: Harness, reader: str, data: bytes) -> None:
    """One input through one reader; raises :class:`Finding` for anything but accept/refuse."""
    harness.run(reader, data)


def _test_one_input(harness: Harness, findings: Path):
    """libFuzzer's entry point. A finding is recorded (its input and message, once per kind) and
    the campaign goes on; crashes, hangs and memory blow-ups stop the child process, and the
    parent (:func:`main`) records them and starts another on the grown corpus."""

    def test_one_input(raw: bytes) -> None:
        if not raw:
            return
        reader = READERS[raw[0] % len(READERS)]
        try:
            harness.run(reader, raw[1:])
        except Finding as finding:
            key = re.sub(r"[^A-Za-z0-9]+", "-", re.sub(r"/tmp/\S+", "PATH", str(finding))[:70])
            if not (findings / f"{key}.txt").exists():
                (findings / f"{key}.bin").write_bytes(raw)
                (findings / f"{key}.txt").write_text(str(finding) + "\n")
                print(f"FINDING {finding}", flush=True)

    return test_one_input


def _child(args: argparse.Namespace, rest: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["spikeshield"]):
        import spikeshield.backends.targets  # noqa: F401
        import spikeshield.compiler.driver.manifest  # noqa: F401
        import spikeshield.compiler.driver.model_io  # noqa: F401
        import spikeshield.frontends.datasets  # noqa: F401
        import spikeshield.runtime.checkpoint  # noqa: F401

    scratch = Path(tempfile.mkdtemp(prefix="spikeshield-fuzz-"))
    harness = Harness(scratch)
    options = [sys.argv[0], str(args.corpus), f"-max_total_time={args.seconds}", "-timeout=30",
               "-rss_limit_mb=6144", "-max_len=1048576", f"-runs={args.runs}",
               f"-artifact_prefix={args.findings}/", "-print_final_stats=1", *rest]
    atheris.Setup(options, _test_one_input(harness, args.findings))
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=3600, help="campaign length")
    parser.add_argument("--corpus", type=Path, default=Path("runs/fuzz/corpus"))
    parser.add_argument("--findings", type=Path, default=Path("runs/fuzz/findings"))
    parser.add_argument("--runs", type=int, default=-1, help="stop after this many executions")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the campaign's figures as JSON (benchmarks/results.py renders it)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        _child(args, rest)
        return

    import subprocess
    import time

    args.corpus.mkdir(parents=True, exist_ok=True)
    args.findings.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="spikeshield-fuzz-seeds-"))
    for reader, inputs in seeds(scratch).items():
        for i, data in enumerate(inputs):
            (args.corpus / f"seed-{reader}-{i}").write_bytes(bytes([READERS.index(reader)]) + data)
    corpus_before = sum(1 for _ in args.corpus.iterdir())
    end, executions, restarts = time.monotonic() + args.seconds, 0, 0
    while (left := int(end - time.monotonic())) > 5:
        command = [sys.executable, __file__, "--child", "--seconds", str(left), "--corpus",
                   str(args.corpus), "--findings", str(args.findings), "--runs", str(args.runs),
                   *rest]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        counted = 0
        for line in child.stdout:  # libFuzzer's progress lines, as they come (a log stays live)
            if line.startswith(("FINDING", "#", "==", "stat::", "INFO: fuzzed", "SUMMARY")):
                print(line.rstrip(), flush=True)
            match = re.match(r"stat::number_of_executed_units: *([0-9]+)", line)
            counted = int(match.group(1)) if match else counted
        returncode = child.wait()
        executions += counted
        if returncode == 0 or args.runs > 0:
            break
        restarts += 1  # a crash, hang or memory blow-up: its input is under --findings
        print(f"child stopped (exit {returncode}); restarting on the corpus", flush=True)
    found = sorted(p.name for p in args.findings.iterdir() if p.suffix == ".txt" or
                   p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    print(f"campaign: {args.seconds} s, {executions:,} executions, {restarts} restarts, "
          f"{len(found)} findings{': ' + ', '.join(found) if found else ''}")
    if args.out:
        from provenance import provenance

        args.out.write_text(json.dumps({
            "name": args.out.stem, **provenance(), "seconds": args.seconds,
            "executions": executions, "restarts": restarts, "findings": found,
            "corpus_before": corpus_before, "corpus_after": sum(1 for _ in args.corpus.iterdir()),
            "readers": list(READERS)}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
