"""Frontends for PyTorch models: an ``nn.Module`` (via ``torch.fx``) and a ``torch.export`` ``.pt2``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from spikeshield.compiler.ir.errors import UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import Shape
from spikeshield.frontends.fx_lowering import lower_fx
from spikeshield.frontends.pt2_archive import load_exported
from torch import fx, nn


def from_module(model: nn.Module, input_shape: Shape, name: str | None = None) -> Graph:
    """Lower an ``nn.Module`` (traced in eval mode with ``torch.fx.symbolic_trace``) into the IR."""
    was_training = model.training
    model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types for untraceable Python control flow
        raise UnsupportedOpError(
            f"torch.fx cannot trace {type(model).__name__}: {err}. Remove data-dependent control "
            "flow from forward(), or export it with torch.export and pass the .pt2 file"
        ) from None
    finally:
        model.train(was_training)
    graph = lower_fx(gm, input_shape, name or type(model).__name__)
    graph.meta.setdefault("source", f"nn.Module {type(model).__name__}")
    return graph


def from_exported(program: torch.export.ExportedProgram, name: str = "model") -> Graph:
    """Lower a ``torch.export`` program; the input shape comes from the program's example input."""
    user_inputs = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(user_inputs) != 1:
        raise UnsupportedOpError(
            f"the exported program takes {len(user_inputs)} inputs; spikeshield needs exactly one"
        )
    placeholder = next(
        n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0].arg.name
    )
    val = placeholder.meta.get("val")
    if val is None or val.dim() < 2:
        raise UnsupportedOpError("the exported program's input has no known (batch, ...) shape")
    input_shape = tuple(int(s) for s in val.shape[1:])
    graph = lower_fx(program.module(), input_shape, name)
    return graph


def from_pt2(path: str | os.PathLike) -> Graph:
    """Read a ``.pt2`` file written by ``torch.export.save`` and lower it into the IR."""
    path = Path(path)
    graph = from_exported(load_exported(path), name=path.stem)
    graph.meta.setdefault("source", f"torch.export {path.name}")
    return graph
