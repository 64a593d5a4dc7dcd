"""Frontends for PyTorch models: an ``nn.Module`` (via ``torch.fx``) and a ``torch.export`` ``.pt2``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from spikeshield.compiler.ir.errors import ModelLoadError, UnsupportedOpError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import Shape
from spikeshield.frontends.fx_lowering import lower_fx
from spikeshield.frontends.pt2_archive import load_exported


def from_module(
    model: nn.Module,
    input_shape: Shape,
    name: str | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> Graph:
    """Lower an ``nn.Module`` into the IR, traced in eval mode with ``torch.fx.symbolic_trace``
    (``concrete_args`` fixes ``forward``'s other arguments, e.g. flags). Where fx cannot trace
    it (Python control flow on tensors, device checks), ``torch.export`` on an example input
    ``(2, *input_shape)`` takes over; if both fail, the error names the file and line that
    stopped each."""
    was_training = model.training
    model.eval()
    name = name or type(model).__name__
    try:
        try:
            gm = fx.symbolic_trace(model, concrete_args=concrete_args)
        except Exception as fx_err:  # fx raises many types for untraceable Python
            graph = _export_instead(model, input_shape, name, concrete_args, fx_err)
        else:
            if _traced_differs(model, gm, input_shape, concrete_args):
                # Python-level aliasing that symbolic tracing cannot see (``idt = out;
                # out += x`` traces as ``out = out + x``, leaving ``idt`` unchanged):
                # torch.export follows the bytecode and gets it right.
                graph = _export_instead(model, input_shape, name, concrete_args, None)
            else:
                graph = lower_fx(gm, input_shape, name)
    finally:
        model.train(was_training)
    graph.meta.setdefault("source", f"nn.Module {type(model).__name__}")
    return graph


def _traced_differs(model: nn.Module, gm: fx.GraphModule, input_shape: Shape,
                    concrete_args: dict[str, Any] | None) -> bool:
    """Whether fx's trace computes something else than the model on a random input (each run on
    its own copy, since a model may write into its input)."""
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    kwargs = dict(concrete_args or {})
    try:
        with torch.no_grad():
            expected = model(example.clone(), **kwargs)
            traced = gm(example.clone())
    except Exception:  # noqa: BLE001  (a model that needs other inputs: lowering will say so)
        return False
    pairs = zip(_tensors(expected), _tensors(traced))
    return any(a.shape != b.shape or not torch.allclose(a.double(), b.double(), rtol=1e-5,
                                                        atol=1e-6) for a, b in pairs)


def _tensors(value: Any) -> list[torch.Tensor]:
    leaves = torch.utils._pytree.tree_leaves(value)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _export_instead(model: nn.Module, input_shape: Shape, name: str,
                    concrete_args: dict[str, Any] | None, fx_err: Exception | None) -> Graph:
    example = torch.zeros(2, *input_shape)
    try:
        program = torch.export.export(model, (example,), kwargs=dict(concrete_args or {}),
                                      dynamic_shapes=None)
    except Exception as export_err:  # noqa: BLE001  (both tracers failed: say where, briefly)
        if fx_err is None:
            raise UnsupportedOpError(
                f"cannot trace {type(model).__name__}: torch.fx's trace computes other values "
                "than the model (a tensor aliased before an in-place op, such as `idt = out; "
                f"out += x`) and torch.export stopped at {_where(export_err)}; write "
                "`out = out + x` instead") from None
        raise UnsupportedOpError(
            f"cannot trace {type(model).__name__}: torch.fx stopped at {_where(fx_err)} and "
            f"torch.export at {_where(export_err)}; make that code independent of tensor values "
            "(or pass its flags as concrete_args)"
        ) from None
    return from_exported(program, name)


def _where(err: BaseException) -> str:
    """``file:line`` of the deepest frame of the user's code in ``err``'s traceback."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    skip = (os.sep + "torch" + os.sep, "site-packages", os.path.dirname(__file__) + os.sep)
    user = [f for f in frames if not any(part in f.filename for part in skip)]
    if not user:
        return type(err).__name__
    frame = user[-1]
    return f"{os.path.basename(frame.filename)}:{frame.lineno} ({(frame.line or '').strip()[:60]})"


def from_exported(program: torch.export.ExportedProgram, name: str = "model") -> Graph:
    """Lower a ``torch.export`` program; the input shape comes from the program's example input."""
    from torch.export.graph_signature import TensorArgument

    # Flags given as constants (a concrete ``find_max_mem=False``) are inputs too, but no tensors.
    user_inputs = [s for s in program.graph_signature.input_specs
                   if s.kind.name == "USER_INPUT" and isinstance(s.arg, TensorArgument)]
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
    batch = val.shape[0]
    example_batch = batch if isinstance(batch, int) else getattr(batch.node, "hint", None) or 2
    graph = lower_fx(program.module(), input_shape, name, (int(example_batch), *input_shape))
    return graph


def from_pt2(path: str | os.PathLike) -> Graph:
    """Read a ``.pt2`` file written by ``torch.export.save`` and lower it into the IR."""
    path = Path(path)
    program = load_exported(path)
    try:
        graph = from_exported(program, name=path.stem)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, RuntimeError) as err:
        # A program torch deserialised but whose nodes do not take the arguments they hold
        # (a hand-edited or corrupt file): say so in one line instead of an internal error.
        raise ModelLoadError(f"{path}: the program's graph is malformed ({type(err).__name__}: "
                             f"{str(err)[:120]}); write it again with torch.export.save") from None
    graph.meta.setdefault("source", f"torch.export {path.name}")
    return graph
