"""Compiler passes, one per file; importing this package registers them all."""

from spikeshield.compiler.passes import (  # noqa: F401
    calibrate_thresholds,
    convert_relu_to_if,
    fold_batchnorm,
    finetune_robust,
    fold_scales,
    drop_biases,
    infer_masks,
    prune_weights,
    quantize_weights,
    set_encoding,
    set_reset_mode,
)
