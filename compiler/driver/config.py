"""``CompileConfig``: every knob of ``spikeshield compile``, defined once.

Each field that is also a command-line option carries its help text (:func:`option`); the CLI
builds the compile command's options from these fields. This module stays light (heavy modules are
imported inside the methods) so that building the CLI does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.compiler.ir.limits import check_timesteps

if TYPE_CHECKING:
    from spikeshield.compiler.driver.robustness import RobustnessConfig
    from spikeshield.compiler.passes.finetune_robust import FinetuneConfig
    from spikeshield.runtime.pruning import PruneConfig

PRUNE_STAGES = ("ann", "snn")
CORRECTIONS = ("fit", "bias", "none")


def pruning_finetune_epochs(prune_epochs: int, prune_finetune_epochs: int | None) -> int:
    """Epochs of finetuning the weights kept: ``--prune-finetune-epochs``, or ``--prune-epochs``
    when it is not given (``compile`` and ``train`` alike)."""
    return prune_epochs if prune_finetune_epochs is None else prune_finetune_epochs


def pruning_max_train(prune_max_train: int | None, finetune_max_train: int | None) -> int | None:
    """Training images of pruning: ``--prune-max-train``, or ``--finetune-max-train`` when it is
    not given (``None``: all)."""
    return finetune_max_train if prune_max_train is None else prune_max_train


def finetune_attack_steps(attack: str, steps: int | None, default: int) -> int:
    """PGD steps of finetuning's inner attack: ``--finetune-attack-steps``, else the pass's
    ``default``. Given with the one-step R-FGSM it would change nothing, so it is refused."""
    if steps is None:
        return default
    if attack != "pgd":
        raise ConfigError(f"--finetune-attack-steps {steps} applies to the PGD inner attack only; "
                          f"add --finetune-attack pgd")
    if steps <= 0:
        raise ConfigError(f"--finetune-attack-steps must be at least 1, got {steps}")
    return steps


def option(default: Any, help: str, *flags: str) -> Any:
    """A ``CompileConfig`` field that is also a ``spikeshield compile`` option: the CLI builds its
    options from these (flag names default to ``--field-name``), so the two never drift apart."""
    return field(default=default, metadata={"help": help, "flags": flags})


# What users choose from, named here (this module imports no torch) so that every --help is built
# from the same tables as the code: driver/export.py's FORMATS and backends/targets.py's TARGETS
# have exactly these keys, in this order (tests/compiler/driver/test_cli.py checks both).
EXPORT_FORMATS = ("nir", "onnx", "onnx-step", "norse", "snntorch", "spikingjelly", "sinabs")
TARGET_NAMES = ("generic", "loihi2", "speck", "xylo", "spinnaker2")
EXPORT_HELP = ("Also write exports: comma-separated " + ", ".join(EXPORT_FORMATS)
               + " (what each is: spikeshield export --help).")
TARGET_HELP = (f"Hardware target: {', '.join(TARGET_NAMES)}, or a profile .json. "
               "Repairable violations (weight bits, biases, reset, initial potential, encoding) are repaired and the "
               "accuracy re-measured; others are an error.")


@dataclass
class CompileConfig:
    """Every knob of ``spikeshield compile``; defaults are the recommended settings."""

    timesteps: int = option(8, "Simulation time steps T.", "--timesteps", "-T")
    # Defaults measured in benchmarks/notes/2026-12-01-low-latency-conversion-issue-19.md:
    # reset by subtraction keeps the charge above threshold, a membrane starting at half the
    # threshold rounds spike counts instead of flooring them, and per-channel thresholds fit
    # heavy-tailed BatchNorm channels.
    reset: str = option("subtract", "IF reset: subtract or zero.")
    v_init: float = option(
        0.5, "Initial membrane potential, a fraction of the threshold in [0, 1) (0.5 rounds "
        "spike counts; 0 floors them).")
    threshold_mode: str = option("channel", "Thresholds per channel or per layer.")
    batchnorm: str = option("fold", "fold into conv/linear, or keep as affine.")
    calibration: str = option("percentile", "percentile or max of the input current.")
    percentile: float = option(99.7, "Percentile of the input current.")
    threshold_scale: float | None = option(  # None: default_threshold_scale(timesteps, v_init)
        None, "Factor on calibrated thresholds (default: 1 with --correction fit or --v-init > 0, "
        "else clamp(1 - 1.2/T, 0.3, 0.9)).")
    threshold_search: bool = option(
        True, "Choose each threshold among fractions (0.3 to 1) of the calibrated one by measured "
        "error (clipping against quantisation; with --correction fit, against the ANN).",
        "--threshold-search/--no-threshold-search")
    correction: str = option(
        "fit", "How calibration matches each layer to the ANN, without labels: fit (threshold, "
        "spike amplitude and bias shift fitted to the ANN's activations by least squares, layer "
        "by layer), bias (each layer's mean output matched to the ANN's, Li et al. 2021) or none.")
    uniform_thresholds: bool = option(
        False, "After calibration and finetuning, fold each channel's threshold into the weights "
        "that feed it, so every IF layer has one threshold (1): what NIR's portable profile, "
        "snn-mlir and Loihi need; the same spikes up to float rounding.",
        "--uniform-thresholds/--no-uniform-thresholds")
    calibration_batches: int = option(11, "Batches used for calibration.")
    calibration_timesteps: int | None = option(None, "T during calibration (default: --timesteps).")
    batch_size: int = option(64, "Batch size.")
    eval_samples: int | None = option(  # default: the whole test split
        None, "Evaluate on the first N test samples (robustness: 1000 by default).", "--n")
    encoding: str = option("direct", "Input encoding: direct (analog each step) or poisson.")
    device: str = option("auto", "auto (CUDA if present), cpu or cuda.")
    seed: int = option(0, "Seed for data splits, shuffling and init.")
    # Stage 3: robust finetuning of the SNN ("none" skips it).
    finetune: str = option("trades", "Robust finetuning of the SNN: trades, at, mart or none.")
    finetune_epochs: int = option(10, "Finetuning epochs (the reference uses 60).")
    eps_train: float | None = option(  # None: the ANN's training eps, else a quarter of --eps
        None, "Finetuning perturbation budget (default: the eps the ANN was adversarially trained "
        "at, which spikeshield train records in its .pt2; else --eps / 4).")
    finetune_attack: str = option(
        "rfgsm", "Inner attack of finetuning: rfgsm (one step) or pgd (--finetune-attack-steps).")
    finetune_attack_steps: int | None = option(  # None: FinetuneConfig.inner_steps
        None, "PGD steps of finetuning's inner attack, with --finetune-attack pgd (default 10; "
        "each step is one more pass through the SNN and back).")
    finetune_attack_surrogate: str = option(
        "same", "Gradient modes the inner attack crafts through, one per batch in turn: same (the "
        "training surrogate, triangle:1), paper (the reference ensemble's 19), or modes joined by "
        "',' (triangle:1,bptr).")
    finetune_lr: float = option(1e-3, "Finetuning SGD learning rate (cosine schedule).")
    finetune_beta: float = option(
        2.0, "Weight of the adversarial term of TRADES and MART finetuning (the reference uses 2; "
        "larger trades clean accuracy for robustness).")
    finetune_val_surrogate: str = option(
        "same", "Gradient modes validation's PGD-10 attacks through, the worst case over them: "
        "same, paper or modes joined by ',' (a network robust to one surrogate only scores "
        "low).")
    finetune_selection: str = option(
        "clean+robust", "Epoch kept by finetuning: the best validation clean+robust, robust "
        "(PGD-10 alone) or clean accuracy.")
    finetune_max_train: int | None = option(None, "Finetune on the first N training images only.")
    finetune_val_samples: int = option(
        1000, "At most this many validation images are scored (clean and PGD-10) after each "
        "finetuning epoch to pick the best epoch.")
    finetune_val_budget: float = option(
        0.2, "Share of a finetuning epoch's passes the validation after it may cost: sets how "
        "many of the --finetune-val-samples images it scores (at least 100; the training record "
        "states the standard error). 0 scores all of them.")
    # Robust pruning (0 skips it): of the ANN before conversion, or of the calibrated SNN.
    prune_sparsity: float = option(
        0.0, "Robustly prune this fraction of all weights, in [0, 1) (0.99 keeps 1 in 100).")
    prune_method: str = option(
        "hydra", "hydra (learned importance scores), harp (scores and each layer's share of the "
        "budget learned together) or magnitude.")
    prune_budget: str = option(
        "auto", "auto (learned for harp, else global), global (rank all weights together), layer "
        "(same share per layer) or learned (harp's).")
    prune_dense: str = option(
        "", "Layers kept unpruned: comma-separated first, last or layer names.")
    prune_epochs: int = option(
        3, "Epochs of score learning (hydra, harp) and, unless --prune-finetune-epochs, of "
        "finetuning the kept weights.")
    prune_finetune_epochs: int | None = option(  # None: --prune-epochs
        None, "Epochs of robust finetuning of the weights kept (default: --prune-epochs; Paper B "
        "learns scores for 20 epochs, then finetunes for 30).")
    prune_attack_steps: int = option(
        10, "PGD steps of the inner attack when pruning the ANN (pruning the SNN uses "
        "--finetune-attack).")
    prune_max_train: int | None = option(  # None: --finetune-max-train
        None, "Prune on the first N training images only (default: --finetune-max-train).")
    prune_selection: str = option(
        "clean", "Finetuning epoch kept by pruning: the best validation clean accuracy, "
        "clean+robust or robust (PGD-10 at the pruning eps; longer PGD-3 training can lose "
        "strong-attack robustness that clean accuracy does not show).")
    prune_stage: str = option(
        "ann", "Prune the ann (before conversion) or the calibrated snn (through the spikes).")
    prune_eps: float | None = option(  # None: see prune_config
        None, "Perturbation budget of pruning (default: pruning the ANN, the eps it was trained "
        "at if spikeshield train recorded it, else --eps; pruning the SNN, --eps-train).")
    # Robustness of the ANN and the SNN under an attack preset ("none" skips it).
    robustness: str = option(
        "adaptive", "Attack preset for the ANN vs SNN robustness report: adaptive (the default: "
        "APGD-CE and SA-PGD through ASSG, then paper's 19 and issue 18's members, each batch "
        "stopping after 3 members in a row broke nothing), paper (the "
        "papers' protocol, for comparison), quick (4 members, a smoke test), strong, autoattack "
        "(AutoAttack's standard set), or none.")
    eps: float | None = option(  # None: default_eps(input shape)
        None, "Evaluation budget, L-inf in [0, 1] (default: 0.1 for 1-channel data, 8/255 for "
        "colour).")
    # Energy and memory profile of the SNN (profile.json/md/png) on the first profile_samples test
    # images; the energy preset is fp32 or int8 (see spikeshield.runtime.energy).
    profile: bool = option(True, "Write the energy and memory profile (profile.json/md/png).",
                           "--profile/--no-profile")
    profile_samples: int = 1000
    energy: str = option(
        "fp32", "Energy constants: fp32 (4.6 pJ/MAC, 0.9 pJ/AC) or int8 (0.23, 0.03), 45 nm.")
    # Exports written into the output directory ("" for none) and the hardware target they obey.
    export: str = option("", EXPORT_HELP)
    target: str = option("generic", TARGET_HELP)


    def validate(self) -> None:
        from spikeshield.backends.targets import load_target
        from spikeshield.compiler.driver.export import parse_formats
        from spikeshield.compiler.ir.ops.neurons import RESET_MODES, valid_v_init
        from spikeshield.compiler.passes.calibrate_thresholds import CALIBRATION_MODES
        from spikeshield.compiler.passes.convert_relu_to_if import THRESHOLD_MODES
        from spikeshield.compiler.passes.fold_batchnorm import BN_MODES
        from spikeshield.runtime.energy import energy_model
        from spikeshield.runtime.executor import ENCODINGS

        check_timesteps(self.timesteps)
        if self.calibration_timesteps is not None:
            check_timesteps(self.calibration_timesteps, "--calibration-timesteps")
        load_target(self.target)  # an unknown target fails now, not after the work
        if self.calibration_timesteps is not None and self.calibration_timesteps <= 0:
            raise ConfigError(f"calibration timesteps must be >= 1, got {self.calibration_timesteps}")
        choices = {
            "reset": (self.reset, RESET_MODES),
            "threshold mode": (self.threshold_mode, THRESHOLD_MODES),
            "batchnorm": (self.batchnorm, BN_MODES),
            "calibration": (self.calibration, CALIBRATION_MODES),
            "correction": (self.correction, CORRECTIONS),
            "encoding": (self.encoding, ENCODINGS),
        }
        for what, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
        if not valid_v_init(self.v_init):
            raise ConfigError(f"--v-init is a fraction of the threshold in [0, 1), got {self.v_init}")
        if self.threshold_scale is not None and not self.threshold_scale > 0:
            raise ConfigError(f"threshold scale must be positive, got {self.threshold_scale}")
        if self.batch_size <= 0 or self.calibration_batches <= 0:
            raise ConfigError("batch size and calibration batches must be positive")
        if self.eval_samples is not None and self.eval_samples <= 0:
            raise ConfigError(f"eval samples must be positive, got {self.eval_samples}")
        if self.finetune != "none":
            self.finetune_config(0.1).validate()
        self.prune_config(0.1).validate()
        if self.prune_stage not in PRUNE_STAGES:
            raise ConfigError(f"prune stage must be one of {', '.join(PRUNE_STAGES)}, "
                              f"got {self.prune_stage!r}")
        if self.robustness != "none":
            self.robustness_config().validate()
        if self.profile:
            energy_model(self.energy)
            if self.profile_samples <= 0:
                raise ConfigError(f"profile samples must be positive, got {self.profile_samples}")
        if self.export:
            parse_formats(self.export)

    def evaluation_eps(self, input_shape: tuple[int, ...]) -> float:
        from spikeshield.compiler.driver.robustness import default_eps

        return default_eps(input_shape) if self.eps is None else self.eps

    def training_eps(self, eval_eps: float, ann_eps: float | None = None) -> float:
        """The budget of SNN finetuning (and of pruning the SNN): ``--eps-train``; else the eps the
        robust ANN was trained at (``ann_eps``), as both papers finetune; unrecorded, eps / 4.
        Finetuning under the ANN's eps rather than eps / 4 took a dense vgg11 SNN from 143 to 162
        and its 99% sparse version from 129 to 135 robust of 256
        (benchmarks/notes/2026-12-01-paper-b-sessions-issue-21.md, 2026-12-03)."""
        if self.eps_train is not None:
            return self.eps_train
        return eval_eps / 4 if ann_eps is None else ann_eps

    def finetune_config(self, eval_eps: float, ann_eps: float | None = None) -> FinetuneConfig:
        from spikeshield.compiler.passes.finetune_robust import FinetuneConfig

        eps_train = self.training_eps(eval_eps, ann_eps)
        return FinetuneConfig(objective=self.finetune, epochs=self.finetune_epochs,
                              eps_train=eps_train, inner_attack=self.finetune_attack,
                              inner_steps=finetune_attack_steps(self.finetune_attack,
                                                                self.finetune_attack_steps,
                                                                FinetuneConfig.inner_steps),
                              attack_surrogate=self.finetune_attack_surrogate,
                              val_surrogate=self.finetune_val_surrogate,
                              selection=self.finetune_selection, lr=self.finetune_lr,
                              beta=self.finetune_beta, batch_size=self.batch_size,
                              timesteps=self.timesteps, max_train=self.finetune_max_train,
                              val_samples=self.finetune_val_samples,
                              val_budget=self.finetune_val_budget, seed=self.seed)

    def prune_config(self, eval_eps: float, ann_eps: float | None = None) -> PruneConfig:
        """Pruning under the finetuning objective; on the SNN with the one-step R-FGSM inner attack
        of finetuning. Its eps (:meth:`pruning_eps`) is that of the robust ANN being pruned."""
        from spikeshield.runtime.pruning import PruneConfig, parse_layers

        snn = self.prune_stage == "snn"
        return PruneConfig(sparsity=self.prune_sparsity, method=self.prune_method,
                           budget=self.prune_budget, dense_layers=parse_layers(self.prune_dense),
                           score_epochs=self.prune_epochs,
                           finetune_epochs=pruning_finetune_epochs(self.prune_epochs,
                                                                   self.prune_finetune_epochs),
                           objective=self.finetune if self.finetune != "none" else "trades",
                           eps=self.pruning_eps(eval_eps, ann_eps),
                           inner_attack=self.finetune_attack if snn else "pgd",
                           attack_steps=self.prune_attack_steps,
                           lr=self.finetune_lr if snn else 0.01, batch_size=self.batch_size,
                           max_train=pruning_max_train(self.prune_max_train,
                                                       self.finetune_max_train),
                           selection=self.prune_selection, seed=self.seed)

    def pruning_eps(self, eval_eps: float, ann_eps: float | None = None) -> float:
        """``--prune-eps``; else, pruning the ANN, the eps it was trained at (``ann_eps``, which
        ``spikeshield train`` records in its .pt2) or, unrecorded, the evaluation eps; pruning the
        SNN, the finetuning budget. At 99% pruning relearns most of the network: under eps / 4 a
        99% HARP vgg11 kept 35.6% robust against 57.2% under the ANN's eps
        (benchmarks/notes/2026-12-01-paper-b-sessions-issue-21.md)."""
        if self.prune_eps is not None:
            return self.prune_eps
        if self.prune_stage == "snn":
            return self.training_eps(eval_eps, ann_eps)
        return eval_eps if ann_eps is None else ann_eps

    def robustness_config(self) -> RobustnessConfig:
        from spikeshield.compiler.driver.robustness import RobustnessConfig

        return RobustnessConfig(preset=self.robustness, eps=self.eps,
                                samples=self.eval_samples,
                                seed=self.seed, device=self.device)
