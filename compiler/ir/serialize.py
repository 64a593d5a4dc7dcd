"""Save and load a :class:`Graph` as one file that holds no code.

The file is a safetensors archive: the tensors under ``<node>/<field>`` keys, and the structure (nodes,
ops, attributes, edges, graph metadata) as JSON in the archive's metadata. Loading never unpickles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from spikeshield.compiler.ir.atomic import atomic_file
from spikeshield.compiler.ir.errors import IRValidationError, ModelLoadError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import NODES, check_tensor_shapes
from spikeshield.compiler.ir.ops import op_class
from spikeshield.compiler.ir.run_spec import RunSpec

FORMAT = "spikeshield-ir"
FORMAT_VERSION = 1


def to_dict(graph: Graph) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON structure and the flat tensor dict of ``graph``."""
    nodes, tensors = [], {}
    for name in graph.nodes():
        op = graph.op(name)
        for field, value in op.tensors().items():
            tensors[f"{name}/{field}"] = value.detach().to("cpu", torch.float32).contiguous().clone()
        nodes.append(
            {
                "name": name,
                "kind": op.kind,
                "attributes": op.attributes(),
                "inputs": graph.inputs(name),
                "recurrent_inputs": graph.inputs(name, recurrent=True),
            }
        )
    structure = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": graph.name,
        "meta": graph.meta,
        "nodes": nodes,
    }
    return structure, tensors


def from_dict(structure: dict, tensors: dict[str, torch.Tensor]) -> Graph:
    if structure.get("format") != FORMAT:
        raise ModelLoadError("not a spikeshield IR file (missing format marker)")
    if structure.get("version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"IR format version {structure.get('version')} is not supported "
            f"(this spikeshield reads version {FORMAT_VERSION}); recompile the model"
        )
    meta = structure.get("meta", {})
    RunSpec.of(meta)  # checked before any op is built from the file
    graph = Graph(str(structure.get("name", "graph")), meta)
    for node in structure["nodes"]:
        cls = op_class(node["kind"])
        own = {
            k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == node["name"]
        }
        graph.add(node["name"], cls.from_parts(own, node.get("attributes", {})))
    for node in structure["nodes"]:
        for src in node.get("inputs", []):
            graph.connect(src, node["name"])
        for src in node.get("recurrent_inputs", []):
            graph.connect(src, node["name"], recurrent=True)
    return graph.validate()


def save_graph(graph: Graph, path: str | os.PathLike) -> Path:
    """Write ``graph`` to ``path`` (atomically: a temporary file renamed on success)."""
    path = Path(path)
    structure, tensors = to_dict(graph)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"spikeshield": json.dumps(structure)})
    return path


def is_spikeshield_ir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file carrying spikeshield's graph structure (only its
    header is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return "spikeshield" in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False


def load_graph(path: str | os.PathLike) -> Graph:
    """Read a graph written by :func:`save_graph`; typed errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no IR file at {path}; pass the file written by `spikeshield compile`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            NODES.check(len(f.keys()), path, "the tensor table")
            check_tensor_shapes({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, path)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{path} is not a readable spikeshield IR file ({err})") from None
    if "spikeshield" not in meta:
        raise ModelLoadError(f"{path} is a safetensors file but not a spikeshield IR file")
    try:
        structure = json.loads(meta["spikeshield"])
        NODES.check(len(structure["nodes"]), path, "the graph")
        return from_dict(structure, tensors)
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as err:
        detail = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise ModelLoadError(f"{path}: malformed IR structure ({detail})") from None
    except IRValidationError as err:
        raise ModelLoadError(f"{path}: {err}") from None
