"""Side by side, one process: the adaptive preset on the first 256 test images of a compile
directory, its diagnostics on 200 samples (the first member is not reused: the behaviour before
issue 44's change) and on 256 (one chunk: the ensemble's APGD-CE-200 is the curve's last point).
Prints seconds, worst case, the steps curve and the verdict of each.

    python benchmarks/curve_reuse.py COMPILE_DIR   # mnist5k compile directories
"""
import json
import sys
import time

import torch

from spikeshield.compiler.driver.data import load_data
from spikeshield.compiler.driver.robustness import RobustnessConfig, evaluate_robustness
from spikeshield.compiler.ir.serialize import load_graph

torch.set_num_threads(2)
d = sys.argv[1]
snn, ann = load_graph(f"{d}/snn.ir"), load_graph(f"{d}/ann.ir")
splits = load_data("mnist5k", seed=0)
out = {}
for curve in (200, 256):
    cfg = RobustnessConfig(preset="adaptive", samples=256, curve_samples=curve)
    start = time.perf_counter()
    rep = evaluate_robustness(snn, ann, splits.test.head(256), 10, cfg)
    sec = time.perf_counter() - start
    worst = rep["snn"]["robust_accuracy"]
    diag = rep["snn"]["diagnostics"]
    out[curve] = (round(sec, 1), worst, diag["accuracy_vs_steps"], diag.get("verdict"))
    print(curve, out[curve], flush=True)
print(json.dumps(out))
