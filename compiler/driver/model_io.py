"""Load any supported model source into the IR: ``nn.Module``, ``.pt2``, ``.onnx``, ``.nir`` or a
spikeshield IR (a ``.ir`` file or a compile directory)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from spikeshield.compiler.driver.manifest import require_verified
from spikeshield.compiler.ir.errors import ConfigError, DataError, ModelLoadError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import check_graph
from spikeshield.compiler.ir.ops import Shape
from spikeshield.compiler.ir.serialize import load_graph
from spikeshield.runtime.data import DataSplits

MODEL_SUFFIXES = {
    ".pt2": "torch.export program",
    ".onnx": "ONNX model",
    ".nir": "NIR graph",
    ".ir": "spikeshield IR",
}


def load_model(
    source: nn.Module | Graph | str | os.PathLike,
    input_shape: Shape | None = None,
    verify: bool = True,
) -> Graph:
    """Lower ``source`` into a validated graph. An ``nn.Module`` needs ``input_shape`` (batch-less).
    A compile directory must match its manifest (``verify=False`` skips that check).

    Formats without connectivity masks (``nn.Module``, ``.pt2``, ``.onnx``, ``.nir``) store pruned
    synapses as exact zeros; those become masks (the ``infer_masks`` pass), so that finetuning keeps
    them pruned. A spikeshield IR carries its masks itself.
    """
    from spikeshield.compiler.passes.infer_masks import infer_masks

    graph, has_masks = _lower(source, input_shape, verify)
    check_graph(graph, source if isinstance(source, (str, os.PathLike)) else graph.name)
    return graph if has_masks else infer_masks(graph).graph.validate()


def _lower(
    source: nn.Module | Graph | str | os.PathLike, input_shape: Shape | None, verify: bool
) -> tuple[Graph, bool]:
    """The lowered graph, and whether its format carries masks (so that none are to be inferred)."""
    if isinstance(source, Graph):
        return source.copy().validate(), True
    if isinstance(source, nn.Module):
        from spikeshield.frontends.torch_module import from_module

        if input_shape is None:
            raise ConfigError("lowering an nn.Module needs input_shape, e.g. (1, 28, 28)")
        return from_module(source, input_shape), False
    path = Path(source)
    if path.is_dir() and (path / "snn.ir").is_file():
        return load_graph(require_verified(path, skip=not verify) / "snn.ir"), True
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        from spikeshield.compiler.driver.pt2 import training_record
        from spikeshield.frontends.torch_module import from_pt2

        graph = from_pt2(path)
        training = training_record(path)
        if training is not None:  # written by spikeshield train: how the ANN was trained
            graph.meta["ann_training"] = training
        return graph, False
    if suffix == ".onnx":
        from spikeshield.frontends.onnx_frontend import from_onnx

        return from_onnx(path), False
    if suffix == ".nir":
        from spikeshield.frontends.nir_frontend import from_nir

        return from_nir(path), False
    if suffix == ".ir":
        return load_graph(path), True
    known = ", ".join(f"{k} ({v})" for k, v in MODEL_SUFFIXES.items())
    raise ModelLoadError(f"cannot tell the format of {path.name}; use one of: {known}")


def check_model_data(graph: Graph, data: DataSplits) -> None:
    """Raise :class:`DataError` when the model's input or output does not fit the data."""
    expected = graph.op(graph.input_names[0]).shape
    if tuple(expected) != tuple(data.input_shape):
        raise DataError(
            f"the model expects inputs of shape {tuple(expected)} but {data.name} has images of "
            f"shape {tuple(data.input_shape)}; pick the data set the model was trained on"
        )
    outputs = graph.shape(graph.output_names[0])
    if len(outputs) != 1 or outputs[0] < data.num_classes:
        raise DataError(
            f"the model outputs {outputs} but {data.name} has {data.num_classes} classes; "
            "the model must output one logit per class"
        )
