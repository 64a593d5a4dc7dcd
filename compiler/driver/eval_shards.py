"""Sharded robustness evaluation: ``spikeshield eval DIR --shard I/N`` on any machine or scheduler,
then ``spikeshield eval DIR --merge SHARDS``.

The ensemble cuts the test samples into fixed chunks and seeds every attack by chunk and member
(:func:`spikeshield.runtime.ensemble.run_ensemble`), so what happens to a sample never depends on
who attacks it. Shard ``I`` of ``N`` attacks the chunks ``c`` with ``c % N == I - 1`` and saves its
per-sample record (for each sample: correct when clean, and which members attacked and broke it)
with the identity of what it evaluated: the SNN and ANN (digests of their tensors and structure),
the samples (a digest of the images and labels), the settings and ε, and the device type. The
merge refuses shards whose identity differs from the directory's, a missing or repeated shard, and
shards of another count; it then adds the records up and runs the diagnostics once, giving the
report one process writes, count for count (``tests/compiler/driver/test_eval_shards.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.runtime.data import Dataset
from spikeshield.runtime.distributed import World

FORMAT = "spikeshield-eval-shard"
VERSION = 2  # 2: the pass that broke each sample ("broken_at_pass") beside the broken masks


def parse_shard(text: str) -> World:
    """``"I/N"`` (1 <= I <= N) as the ``World`` whose chunks shard I attacks."""
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ConfigError(f"--shard takes I/N (shard I of N, counted from 1), got {text!r}") \
            from None
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text}: I must be between 1 and N")
    return World(i - 1, n)


def shard_file(directory: Path, shard: World) -> Path:
    return directory / f"shard-{shard.rank + 1}-of-{shard.size}.pt"


def graph_digest(graph: Graph | None) -> str | None:
    """SHA-256 of a graph's structure and every tensor's bytes (None for no graph)."""
    if graph is None:
        return None
    digest = hashlib.sha256(json.dumps(graph.meta, sort_keys=True, default=str).encode())
    for name in graph.nodes():
        op = graph.op(name)
        digest.update(f"{name}|{op.kind}|{graph.inputs(name)}".encode())
        for field, tensor in sorted(op.tensors().items()):
            value = tensor.detach().cpu().contiguous()
            digest.update(f"{field}|{value.dtype}|{tuple(value.shape)}".encode())
            digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def shard_fingerprint(snn: Graph, ann: Graph | None, data: Dataset, config: Any, eps: float,
                      device: torch.device) -> dict[str, Any]:
    """What a shard evaluated: networks, samples, settings, ε, device type."""
    images = data.images.contiguous().view(torch.uint8).numpy().tobytes()
    labels = data.labels.contiguous().numpy().tobytes()
    settings = {k: v for k, v in asdict(config).items() if k != "device"}
    return {
        "snn": graph_digest(snn),
        "ann": graph_digest(ann),
        "samples": len(data),
        "data": hashlib.sha256(images + labels).hexdigest(),
        "settings": settings,
        "eps": eps,
        "device_type": device.type,
    }


def shard_record(shard: World, identity: dict[str, Any], snn_result, ann_result) -> dict:
    return {"format": FORMAT, "version": VERSION, "shard": [shard.rank + 1, shard.size],
            "identity": identity, "snn": snn_result.per_sample,
            "ann": None if ann_result is None else ann_result.per_sample}


_WHAT = {"snn": "another SNN", "ann": "another ANN (or none)", "samples": "another number of "
         "samples", "data": "other test data", "settings": "other settings", "eps": "another ε",
         "device_type": "another device type"}


def check_shards(shards: list[dict], identity: dict[str, Any]) -> None:
    """Refuse, in one line, shards that do not make up exactly this evaluation."""
    if not shards:
        raise ConfigError("no shards to merge")
    counts = {s["shard"][1] for s in shards}
    if len(counts) > 1:
        raise ConfigError(f"the shards come from different splits (N = {sorted(counts)})")
    count = counts.pop()
    indices = sorted(s["shard"][0] for s in shards)
    if indices != list(range(1, count + 1)):
        missing = sorted(set(range(1, count + 1)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        problems = ([f"missing {missing}"] if missing else []) + (
            [f"repeated {repeated}"] if repeated else [])
        raise ConfigError(f"the merge needs shards 1 to {count} once each; "
                          + ", ".join(problems))
    for s in shards:
        for key, value in identity.items():
            if s["identity"].get(key) != value:
                detail = ""
                if key == "settings":
                    differ = [k for k in value if s["identity"]["settings"].get(k) != value[k]]
                    detail = f" ({', '.join(differ)})"
                raise ConfigError(f"shard {s['shard'][0]}/{count} evaluated {_WHAT[key]}{detail} "
                                  "than this merge: rerun it with the same SNN, data and options")


def write_shard(record: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(record, tmp)
    os.replace(tmp, path)
    return path


def read_shards(directory: str | os.PathLike) -> list[dict]:
    """Every ``shard-I-of-N.pt`` in ``directory`` (tensors and plain data only: nothing runs)."""
    paths = sorted(Path(directory).glob("shard-*-of-*.pt"))
    if not paths:
        raise ConfigError(f"{directory} holds no shard files (shard-I-of-N.pt); run `spikeshield "
                          "eval DIR --shard I/N` first")
    shards = []
    for path in paths:
        try:
            record = torch.load(path, weights_only=True)
        except Exception as err:  # a truncated or foreign file: name it
            raise ConfigError(f"{path} is not a readable shard file ({err})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a spikeshield eval shard")
        if record.get("version") != VERSION:
            raise ConfigError(f"{path} is shard format {record.get('version')}; this spikeshield "
                              f"reads {VERSION}: rerun the shard")
        shards.append(record)
    return shards
