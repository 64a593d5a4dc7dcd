"""The Python front door: ``import spikeshield as ss``, then a handful of verbs on the user's own
objects (an ``nn.Module`` or a model file; a ``DataLoader``, a ``Dataset`` or tensors).

::

    snn = ss.convert(model, calibration=train_loader, timesteps=8)   # an nn.Module
    print(ss.accuracy(snn, test_loader))
    report = ss.evaluate(snn, test_loader, eps=8 / 255, samples=256)
    snn = ss.finetune(snn, train_loader, val_loader, eps=2 / 255, epochs=3).snn
    ss.export(snn, "snn.nir")
    snn.save("snn.ir"); snn = ss.load("snn.ir")

The stages compose and do only what they say: ``convert`` calibrates and nothing else (no
finetuning, no attack, no profile). Each verb returns a typed result, not a dict. Data is read batch
by batch: images as uint8 pixels or floats in [0, 1] (the pixel space in which ``eps`` is
measured); a model that expects normalised inputs declares its normalisation once
(``normalize=(mean, std)``) and the SNN then takes pixels, so that attacks, exports and hardware
see the same input range. ``spikeshield compile`` runs the same stages (``compile_model``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from spikeshield.compiler.ir.errors import ConfigError, DataError
from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.limits import check_timesteps
from spikeshield.runtime.data import PIXEL_RANGE, Dataset, as_float, check_images

Reset = Literal["subtract", "zero"]
ThresholdMode = Literal["channel", "layer"]
Calibration = Literal["percentile", "max"]
Correction = Literal["fit", "bias", "none"]
Encoding = Literal["direct", "poisson"]
BatchNormMode = Literal["fold", "keep"]
Objective = Literal["trades", "at", "mart"]
Preset = Literal["quick", "paper", "adaptive", "strong", "autoattack"]


def _check_choice(config: Any, name: str, kind: Any) -> None:
    value = getattr(config, name)
    allowed = get_args(kind)
    if value not in allowed:
        raise ConfigError(f"{type(config).__name__}.{name} must be one of "
                          f"{', '.join(map(str, allowed))}, got {value!r}")


def _check_literals(config: Any) -> None:
    """Every ``Literal`` field of a config dataclass holds one of its values (named if not)."""
    hints = {f.name: f.type for f in fields(config)}
    for name, kind in hints.items():
        literal = globals().get(kind) if isinstance(kind, str) else kind
        if literal is not None and getattr(literal, "__origin__", None) is Literal:
            _check_choice(config, name, literal)


@dataclass(frozen=True)
class ConvertConfig:
    """How an ANN becomes an SNN (the conversion stage of ``spikeshield compile``; its defaults).

    ``normalize``: the per-channel ``(mean, std)`` the model expects its pixels normalised by, when
    the normalisation happens outside the model (in the user's transforms); the SNN then takes
    pixels in [0, 1] and does it itself."""

    timesteps: int = 8
    reset: Reset = "subtract"
    v_init: float = 0.5
    threshold_mode: ThresholdMode = "channel"
    batchnorm: BatchNormMode = "fold"
    calibration: Calibration = "percentile"
    percentile: float = 99.7
    threshold_scale: float | None = None
    threshold_search: bool = True
    correction: Correction = "fit"
    uniform_thresholds: bool = False
    calibration_batches: int = 11
    calibration_timesteps: int | None = None
    encoding: Encoding = "direct"
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        _check_literals(self)
        check_timesteps(self.timesteps, "ConvertConfig.timesteps")
        if self.calibration_timesteps is not None:
            check_timesteps(self.calibration_timesteps, "ConvertConfig.calibration_timesteps")
        if not 0 <= self.v_init < 1:
            raise ConfigError(f"ConvertConfig.v_init is a fraction of the threshold in [0, 1), "
                              f"got {self.v_init}")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"ConvertConfig.percentile must be in (0, 100], got "
                              f"{self.percentile}")
        if self.calibration_batches <= 0:
            raise ConfigError(f"ConvertConfig.calibration_batches must be positive, got "
                              f"{self.calibration_batches}")
        if self.normalize is not None:
            mean, std = self.normalize
            if len(mean) != len(std) or not all(s > 0 for s in std):
                raise ConfigError("ConvertConfig.normalize is (mean, std), one value per channel "
                                  f"each and std > 0; got {self.normalize!r}")

    def compile_config(self) -> Any:
        """The same settings as ``spikeshield compile`` options (what the pass list reads)."""
        from spikeshield.compiler.driver.config import CompileConfig

        shared = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("normalize",)}
        return CompileConfig(**shared, finetune="none", robustness="none", profile=False)


# ---- data, the way PyTorch users hold it --------------------------------------------------------


def batches(data: Any, what: str, batch_size: int = 64,
            input_range: tuple[float, float] | None = PIXEL_RANGE, labelled: bool = False,
            normalization: tuple | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(x, y)`` float pixel batches from a ``DataLoader`` (or any iterable of batches), a
    map-style or iterable ``Dataset``, an images tensor, or an ``(images, labels)`` pair; read
    lazily, one batch at a time. Float data that arrives normalised by ``normalization`` (per
    channel ``(mean, std)``) is mapped back to pixels. Every batch is checked (uint8 pixels or
    floats in ``input_range``, labels one integer per image where ``labelled``) and refused in one
    ``DataError`` naming ``what``."""
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    if isinstance(data, torch.Tensor):
        source: Iterable = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    elif (isinstance(data, tuple) and len(data) == 2
          and all(isinstance(t, torch.Tensor) for t in data)):
        x_all, y_all = data
        source = ((x_all[i:i + batch_size], y_all[i:i + batch_size])
                  for i in range(0, len(x_all), batch_size))
    elif isinstance(data, TorchDataset) or hasattr(data, "__getitem__") and hasattr(
            data, "__len__") and not isinstance(data, (list, tuple, DataLoader)):
        source = DataLoader(data, batch_size=batch_size)
    elif isinstance(data, Iterable):
        source = data
    else:
        raise DataError(f"{what}: expected a DataLoader, a Dataset, an images tensor or an "
                        f"(images, labels) pair, got {type(data).__name__}")
    empty = True
    for index, batch in enumerate(source):
        x, y = _split(batch, what, index, labelled)
        if normalization is not None and x.dtype.is_floating_point:
            x = _pixels(x, normalization, f"{what} batch {index}")
        check_images(x, f"{what} batch {index}", input_range)
        empty = False
        yield as_float(x), y
    if empty:
        raise DataError(f"{what} holds no samples; give at least one batch")


def _pixels(x: torch.Tensor, normalization: tuple, what: str) -> torch.Tensor:
    """Normalised data back in pixels, ``x * std + mean`` per channel; float rounding may take a
    pixel of 0 or 1 a hair outside [0, 1], which is clamped (further out stays, and is refused)."""
    mean, std = (torch.tensor(v, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 2))
                 for v in normalization)
    if x.dim() < 2 or len(mean) not in (1, x.shape[1]):
        raise DataError(f"{what} has {x.shape[1] if x.dim() > 1 else 0} channels; the declared "
                        f"normalisation has {len(mean)} values per statistic")
    pixels = x * std + mean
    near = (pixels > -1e-5) & (pixels < 1 + 1e-5)
    return torch.where(near, pixels.clamp(0.0, 1.0), pixels)


def _split(batch: Any, what: str, index: int, labelled: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        x, y = batch, None
    elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        x, y = batch[0], batch[1] if len(batch) > 1 else None
    elif isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
        x, y = batch["image"], batch.get("label")
    else:
        raise DataError(f"{what} batch {index} is a {type(batch).__name__}; give tensors, "
                        "(images, labels) pairs or {'image', 'label'} dicts")
    if labelled:
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dim() != 1 \
                or len(y) != len(x):
            raise DataError(f"{what} batch {index} needs one integer label per image; got "
                            f"{type(y).__name__ if not isinstance(y, torch.Tensor) else y.dtype}")
    return x, y


def labelled_dataset(data: Any, what: str, limit: int | None = None,
                     num_classes: int | None = None, normalization: tuple | None = None
                     ) -> Dataset:
    """The first ``limit`` labelled samples of ``data`` held in memory as pixels (what attacks
    and finetuning iterate over several times), reading no further than needed."""
    xs, ys, count = [], [], 0
    for x, y in batches(data, what, labelled=True, normalization=normalization):
        if limit is not None:
            x, y = x[: limit - count], y[: limit - count]
        xs.append(x)
        ys.append(y.long())
        count += len(x)
        if limit is not None and count >= limit:
            break
    images, labels = torch.cat(xs), torch.cat(ys)
    if num_classes is not None and len(labels) and (int(labels.min()) < 0
                                                    or int(labels.max()) >= num_classes):
        raise DataError(f"{what} labels run from {int(labels.min())} to {int(labels.max())}, "
                        f"outside 0..{num_classes - 1} for a model of {num_classes} outputs")
    return Dataset(images, labels)


# ---- the SNN object -----------------------------------------------------------------------------


class SNN(nn.Module):
    """A compiled spiking network as an ``nn.Module``: ``snn(x)`` gives the logits (the output
    layer averaged over the T it records; ``snn(x, timesteps=T)`` to override), on whatever
    device and dtype it was moved to. ``graph`` is the IR with the current parameters, ``ann``
    the source ANN's IR where known; ``save``/``load`` keep both in one ``.ir`` file."""

    def __init__(self, graph: Graph, ann: Graph | None = None) -> None:
        from spikeshield.runtime.executor import GraphExecutor

        super().__init__()
        self.executor = GraphExecutor(graph)
        self.ann = ann

    def forward(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        return self.executor(x, timesteps)

    @property
    def graph(self) -> Graph:
        return self.executor.to_graph()

    @property
    def timesteps(self) -> int:
        return self.executor.recorded_timesteps

    @property
    def normalization(self) -> tuple | None:
        """The ``(mean, std)`` the user's data arrives normalised by (declared at conversion):
        ``accuracy`` and ``evaluate`` map such data back to pixels, which ``snn(x)`` takes."""
        return self.executor.graph.run_spec().normalization

    @property
    def input_shape(self) -> tuple[int, ...]:
        graph = self.executor.graph
        return tuple(graph.op(graph.input_names[0]).shape)

    def to_framework(self, framework: str, *, surrogate: Any = None, step_mode: str = "m",
                     layout: str | None = None) -> nn.Module:
        """This SNN as a module of ``framework``'s own neurons (``norse``, ``snntorch``,
        ``spikingjelly``, ``sinabs``) computing the same logits, trained on with ``surrogate``
        (default: the one it was finetuned with); see
        :func:`spikeshield.backends.frameworks.to_module`."""
        from spikeshield.backends.frameworks import to_module

        return to_module(self.graph, framework, surrogate, step_mode, layout)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the SNN as a spikeshield ``.ir`` (safetensors plus its structure)."""
        from spikeshield.compiler.ir.serialize import save_graph

        return save_graph(self.graph, path)

    def extra_repr(self) -> str:
        from spikeshield.compiler.ir.ops import IF

        graph = self.executor.graph
        return (f"{graph.name!r}: {len(graph.nodes_of(IF))} IF layers, T={self.timesteps}, "
                f"input {self.input_shape}")


def load(path: str | os.PathLike) -> SNN:
    """An SNN from a ``.ir`` file, a compile directory (verified against its manifest) or a
    ``.nir`` graph."""
    from spikeshield.compiler.driver.model_io import load_model

    return SNN(load_model(path))


# ---- the verbs ----------------------------------------------------------------------------------


def convert(model: nn.Module | str | os.PathLike | Graph, calibration: Any, *,
            input_shape: tuple[int, ...] | None = None, config: ConvertConfig | None = None,
            **settings: Any) -> SNN:
    """An ANN (``nn.Module``, ``.pt2``, ``.onnx``, ``.ir``) converted into a calibrated SNN.

    ``calibration``: the data the thresholds are calibrated on (its first
    ``config.calibration_batches`` batches are read; labels are not needed). ``settings`` are
    :class:`ConvertConfig` fields (``timesteps=4``, ``reset="zero"``...), as an alternative to
    ``config``. Nothing else happens: no finetuning, no attack, no profile."""
    from spikeshield.compiler.driver.model_io import load_model
    from spikeshield.compiler.driver.pipeline import conversion_pipeline, deployment_pipeline
    from spikeshield.compiler.ir.run_spec import RunSpec
    from spikeshield.compiler.passes.manager import PassManager
    from spikeshield.runtime.device import resolve_device

    if config is not None and settings:
        raise ConfigError("give either config= or settings as keywords, not both")
    try:
        cfg = config or ConvertConfig(**settings)
    except TypeError as err:
        raise ConfigError(f"convert: {err} (the settings are ConvertConfig's fields)") from None
    calibration_data = [x for x, _ in itertools.islice(
        batches(calibration, "the calibration data", normalization=cfg.normalize),
        cfg.calibration_batches)]
    shape = tuple(input_shape or calibration_data[0].shape[1:])
    ann = load_model(model, shape)
    model_shape = tuple(ann.op(ann.input_names[0]).shape)
    if tuple(calibration_data[0].shape[1:]) != model_shape:
        raise DataError(f"the calibration data has samples of shape "
                        f"{tuple(calibration_data[0].shape[1:])}, the model takes {model_shape}")
    if cfg.normalize is not None:  # the ANN takes normalised data; the SNN will take pixels
        ann = _with_normalisation(ann, cfg.normalize)
    device = resolve_device(cfg.device)
    compile_config = cfg.compile_config()
    snn = PassManager().run(ann, conversion_pipeline(compile_config, calibration_data, device)
                            + deployment_pipeline(compile_config))
    RunSpec(cfg.timesteps, cfg.encoding, input_range=PIXEL_RANGE,
            normalization=cfg.normalize).record(snn.meta)
    return SNN(snn, ann)


def _with_normalisation(ann: Graph, normalize: tuple) -> Graph:
    """``ann`` fed by ``(x - mean) / std`` per channel: a Scale node after its input."""
    from spikeshield.compiler.ir.ops import Scale

    mean = torch.tensor(normalize[0], dtype=torch.float32)
    std = torch.tensor(normalize[1], dtype=torch.float32)
    channels = ann.shape(ann.input_names[0])[0]
    if len(mean) not in (1, channels):
        raise ConfigError(f"normalize has {len(mean)} values per statistic; the model's input "
                          f"has {channels} channels")
    graph = ann.copy()
    first = graph.input_names[0]
    graph.insert_after(first, graph.unique_name("normalize"), Scale(scale=1 / std,
                                                                    bias=-mean / std))
    return graph.validate()


@dataclass(frozen=True)
class Accuracy:
    """Clean accuracy of a network on ``samples`` labelled samples."""

    accuracy: float
    correct: int
    samples: int

    def __float__(self) -> float:
        return self.accuracy

    def __repr__(self) -> str:
        return f"Accuracy({self.accuracy:.2%} = {self.correct}/{self.samples})"


def accuracy(network: SNN | nn.Module, data: Any, *, timesteps: int | None = None,
             batch_size: int = 256, samples: int | None = None) -> Accuracy:
    """Clean accuracy over ``data`` (every batch, or the first ``samples``), read batch by batch."""
    correct = total = 0
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    spiking = isinstance(network, SNN)
    try:
        with torch.no_grad():
            for x, y in batches(data, "the evaluation data", batch_size, labelled=True,
                                input_range=PIXEL_RANGE if spiking else None,
                                normalization=network.normalization if spiking else None):
                if samples is not None:
                    x, y = x[: samples - total], y[: samples - total]
                x = x.to(device)
                logits = network(x, timesteps) if spiking else network(x)
                correct += int((logits.argmax(1).cpu() == y).sum())
                total += len(x)
                if samples is not None and total >= samples:
                    break
    finally:
        network.train(was_training)
    return Accuracy(correct / total if total else 0.0, correct, total)


@dataclass(frozen=True)
class Robustness:
    """What :func:`evaluate` measured: clean and robust accuracy of the SNN (and the ANN, where
    known) under ``preset`` at ``eps``; ``report``: the full report that ``spikeshield eval``
    writes."""

    preset: str
    eps: float
    samples: int
    clean: float
    robust: float
    ann_clean: float | None = None
    ann_robust: float | None = None
    report: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        ann = (f", ANN {self.ann_clean:.2%} clean / {self.ann_robust:.2%} robust"
               if self.ann_clean is not None and self.ann_robust is not None else "")
        return (f"Robustness({self.preset} at eps={self.eps:g} on {self.samples} samples: "
                f"SNN {self.clean:.2%} clean / {self.robust:.2%} robust{ann})")


def evaluate(snn: SNN, data: Any, *, eps: float | None = None, preset: Preset = "adaptive",
             samples: int = 1000, ann: bool = True, batch_size: int = 256,
             device: str = "auto", seed: int = 0) -> Robustness:
    """Attack ``snn`` with the ``preset`` ensemble at L-inf ``eps`` (pixels in [0, 1]; default 0.1
    for one channel, 8/255 for colour) on the first ``samples`` labelled samples of ``data`` (read
    no further), the source ANN too where known (``ann=False`` skips it)."""
    from spikeshield.compiler.driver.robustness import RobustnessConfig, evaluate_robustness

    cfg = RobustnessConfig(preset=preset, eps=eps, samples=None, batch_size=batch_size,
                           device=device, seed=seed)
    cfg.validate()
    graph = snn.graph
    classes = graph.shape(graph.output_names[0])[0]
    test = labelled_dataset(data, "the evaluation data", samples, classes, snn.normalization)
    cfg = RobustnessConfig(preset=preset, eps=eps, samples=len(test), batch_size=batch_size,
                           device=device, seed=seed)
    report = evaluate_robustness(graph, snn.ann if ann else None, test, classes, cfg)
    snn_part, ann_part = report["snn"], report.get("ann") or {}
    return Robustness(preset, float(report["eps"]), len(test), snn_part["clean_accuracy"],
                      snn_part["robust_accuracy"], ann_part.get("clean_accuracy"),
                      ann_part.get("robust_accuracy"), report)


def export(snn: SNN | Graph, path: str | os.PathLike, format: str | None = None, *,
           target: str = "generic", nir_profile: str = "exact") -> Path:
    """Write ``snn`` as ``format`` (``nir``, ``onnx``, ``onnx-step``, ``norse``, ``snntorch``,
    ``spikingjelly``, ``sinabs``; from the file's suffix when not given) to ``path``, adapted to a
    hardware ``target``, with a ``.json`` sidecar; returns the path written."""
    from spikeshield.compiler.driver.export import export_graph

    graph = snn.graph if isinstance(snn, SNN) else snn
    path = Path(path)
    fmt = format or {".nir": "nir", ".onnx": "onnx"}.get(path.suffix)
    if fmt is None:
        raise ConfigError(f"cannot tell the export format from {path.name!r}; pass format=")
    export_graph(graph, {fmt: path}, target=target, nir_profile=nir_profile)
    return path


def _training_splits(train: Any, val: Any | None, max_train: int | None, val_fraction: float,
                     seed: int, verb: str, classes: int | None = None,
                     normalization: tuple | None = None, val_limit: int | None = None) -> Any:
    """Training and validation data in memory as pixels (each epoch reads them again): ``val``,
    or a seeded ``val_fraction`` held out of ``train``; no test split (training never reads one)."""
    from spikeshield.runtime.data import DataSplits

    data = labelled_dataset(train, "the training data", max_train, classes, normalization)
    if val is None:
        if not 0 < val_fraction < 1:
            raise ConfigError(f"{verb}: val_fraction must be in (0, 1), got {val_fraction}")
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        held = max(1, int(round(len(data) * val_fraction)))
        data, validation = data.subset(order[held:]), data.subset(order[:held])
    else:
        validation = labelled_dataset(val, "the validation data", val_limit, classes,
                                      normalization)
    if classes is None:
        classes = int(torch.cat([data.labels, validation.labels]).max()) + 1
    return DataSplits("user data", data, validation, validation.head(0), classes)


@dataclass(frozen=True)
class Finetuned:
    """What :func:`finetune` did: the finetuned SNN (that of the best epoch by the validation
    score), that epoch (0: none beat the unfinetuned SNN), and the scores of the unfinetuned SNN
    and of every epoch."""

    snn: SNN
    best_epoch: int
    history: list = field(default_factory=list, repr=False)
    train_samples: int = 0
    val_samples: int = 0  # scored per epoch (the validation budget picks them; see ``validation``)
    validation: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (f"Finetuned(best epoch {self.best_epoch} of {len(self.history) - 1}, on "
                f"{self.train_samples} training / {self.val_samples} validation samples)")


def finetune(snn: SNN, train: Any, val: Any | None = None, *, eps: float,
             objective: Objective = "trades", epochs: int = 10, max_train: int | None = None,
             val_fraction: float = 0.1, device: str = "auto", **settings: Any) -> Finetuned:
    """Robust finetuning of ``snn`` through its spiking dynamics (the papers' recipe: adversarial
    examples crafted through the SNN at L-inf ``eps_train = eps``, pixels in [0, 1]), keeping the
    epoch with the best validation score. ``val``: separate validation data; without it a seeded
    ``val_fraction`` of ``train`` is held out. ``settings`` are further ``FinetuneConfig`` fields
    (``lr``, ``inner_attack``, ``selection``...). The training data is held in memory as pixels
    (``max_train`` bounds it), since every epoch reads it again."""
    from spikeshield.compiler.passes.finetune_robust import FinetuneConfig
    from spikeshield.compiler.passes.manager import PassManager
    from spikeshield.runtime.device import resolve_device

    try:
        cfg = FinetuneConfig(objective=objective, epochs=epochs, eps_train=eps,
                             timesteps=snn.timesteps, max_train=None, **settings)
    except TypeError as err:
        raise ConfigError(f"finetune: {err} (the settings are FinetuneConfig's fields)") from None
    cfg.validate()
    graph = snn.graph
    classes = graph.shape(graph.output_names[0])[0]
    norm = snn.normalization
    splits = _training_splits(train, val, max_train, val_fraction, cfg.seed, "finetune", classes,
                              norm, val_limit=cfg.val_samples)
    manager = PassManager()
    out = manager.run_one(graph, "finetune_robust", data=splits, config=cfg,
                          device=resolve_device(device))
    info = manager.records[-1].info
    return Finetuned(SNN(out, snn.ann), info["best_epoch"], info["history"],
                     info["train_samples"], info["val_samples"], info["validation"])


@dataclass(frozen=True)
class EnergyProfile:
    """What :func:`profile` measured on ``samples`` inputs: synaptic operations (per sample, all T
    steps), the energy of the SNN and of its ANN under ``energy`` (pJ per sample; ``formula`` says
    how), stored weights; ``report`` is the full profile ``spikeshield profile`` writes."""

    samples: int
    synops: float
    snn_energy_pj: float
    ann_energy_pj: float
    ann_over_snn_energy: float | None
    weights: int
    nonzeros: int
    formula: str
    report: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        ratio = "" if self.ann_over_snn_energy is None else \
            f", ANN/SNN energy {self.ann_over_snn_energy:.2f}x"
        return (f"EnergyProfile({self.samples} samples: {self.synops:,.0f} SynOps, SNN "
                f"{self.snn_energy_pj / 1e3:,.1f} nJ, ANN {self.ann_energy_pj / 1e3:,.1f} nJ per "
                f"sample{ratio}; {self.nonzeros:,} of {self.weights:,} weights stored)")


def profile(snn: SNN, data: Any, *, samples: int = 1000, energy: str = "fp32",
            batch_size: int = 64, device: str = "auto") -> EnergyProfile:
    """Simulate ``snn`` on the first ``samples`` inputs of ``data`` (labels not needed) and account
    its synaptic operations, energy (``fp32`` or ``int8`` constants, 45 nm) and storage."""
    from spikeshield.compiler.driver.profile import profile_graph, profile_summary
    from spikeshield.runtime.device import resolve_device
    from spikeshield.runtime.energy import energy_model

    model = energy_model(energy)
    xs, count = [], 0
    for x, _ in batches(data, "the profiling data", batch_size,
                        normalization=snn.normalization):
        xs.append(x[: samples - count])
        count += len(xs[-1])
        if count >= samples:
            break
    images = torch.cat(xs)
    inputs = Dataset(images, torch.zeros(len(images), dtype=torch.long))
    report = profile_graph(snn.graph, inputs, snn.timesteps, model, batch_size=batch_size,
                           device=resolve_device(device))
    s = profile_summary(report)
    return EnergyProfile(s["samples"], s["synops"], s["snn_energy_pj"], s["ann_energy_pj"],
                         s["ann_over_snn_energy"], s["weights"], s["nonzeros"], s["formula"],
                         report)


@dataclass(frozen=True)
class Pruned:
    """What :func:`prune` did to the model (in place): the weights kept of those prunable, the
    finetuning epoch kept, the validation accuracy after, and every epoch's scores."""

    model: nn.Module
    kept_weights: int
    total_weights: int
    best_epoch: int
    val_accuracy: float
    history: list = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        return (f"Pruned({self.kept_weights:,} of {self.total_weights:,} weights kept "
                f"({1 - self.kept_weights / self.total_weights:.1%} sparse), validation accuracy "
                f"{self.val_accuracy:.2%}, epoch {self.best_epoch})")


def prune(model: nn.Module, train: Any, val: Any | None = None, *, sparsity: float, eps: float,
          method: str = "hydra", max_train: int | None = None, val_fraction: float = 0.1,
          device: str = "auto", **settings: Any) -> Pruned:
    """Robustly prune a trained ANN in place, as Paper B does before conversion: ``sparsity`` of
    its conv and linear weights become exact zeros (which :func:`convert` keeps as masks), chosen
    by ``method`` (``hydra``: learned importance scores; ``magnitude``...) under the robust
    objective at L-inf ``eps`` (pixels in [0, 1]), then the weights kept are finetuned and the
    best validation epoch kept. ``settings`` are further ``PruneConfig`` fields. The data are
    pixels as the model takes them (declare no normalisation here: put it inside the model)."""
    from spikeshield.runtime.device import resolve_device
    from spikeshield.runtime.pruning import PruneConfig
    from spikeshield.runtime.training import prune_trained

    try:
        cfg = PruneConfig(sparsity=sparsity, method=method, eps=eps, max_train=None, **settings)
    except TypeError as err:
        raise ConfigError(f"prune: {err} (the settings are PruneConfig's fields)") from None
    cfg.validate()
    splits = _training_splits(train, val, max_train, val_fraction, cfg.seed, "prune")
    where = resolve_device(device)
    model.to(where)
    outcome = prune_trained(model, splits, cfg, where)
    return Pruned(model, outcome["kept_weights"], outcome["total_weights"], outcome["best_epoch"],
                  outcome["val_accuracy"], outcome["history"])
