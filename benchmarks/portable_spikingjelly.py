"""A compiled SNN's portable NIR, loaded by SpikingJelly's own NIR importer, against spikeshield's
runtime on the first N test images: same predictions, logits within 1e-5, accuracy of each.

    python benchmarks/portable_spikingjelly.py SNN_DIR_OR_IR --data mnist5k --n 1000

The SNN must hold Paper A's neuron (compile with --reset zero --v-init 0 --uniform-thresholds).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("snn", type=Path, help="a compile directory or its snn.ir")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()

    import nir
    from spikingjelly.activation_based.nir_exchange.from_nir import import_from_nir

    from spikeshield.backends.nir_backend import write_nir
    from spikeshield.compiler.driver.data import load_data
    from spikeshield.compiler.ir.serialize import load_graph
    from spikeshield.runtime.data import as_float
    from spikeshield.runtime.executor import GraphExecutor

    graph = load_graph(args.snn / "snn.ir" if args.snn.is_dir() else args.snn)
    timesteps = graph.run_spec().timesteps
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = nir.read(write_nir(graph, Path(tmp) / "snn.portable.nir", "portable"))
    module = import_from_nir(read, dt=1.0)  # SpikingJelly needs r == 1 / dt; it ignores NIR's dt
    runtime = GraphExecutor(graph).eval()
    test = load_data(args.data).test.head(args.n)
    same = exact = right_sj = right_rt = 0
    worst = 0.0
    for x, y in test.batches(args.batch):
        x = as_float(x)
        with torch.no_grad():
            expected = runtime(x, timesteps)
            state, total = None, 0
            for _ in range(timesteps):
                out, state = module(x, state)
                total = total + out
        logits = total / timesteps
        gap = (logits - expected).abs().amax(dim=1)
        same += int((logits.argmax(1) == expected.argmax(1)).sum())
        exact += int((gap < 1e-5).sum())
        worst = max(worst, float(gap.max()))
        right_sj += int((logits.argmax(1) == y).sum())
        right_rt += int((expected.argmax(1) == y).sum())
    n = len(test)
    print(f"SpikingJelly vs spikeshield's runtime on {n} test images (T = {timesteps}): same "
          f"prediction on {same}, logits within 1e-5 on {exact} (largest gap {worst:.3g}); "
          f"accuracy {100 * right_sj / n:.1f}% vs {100 * right_rt / n:.1f}%")


if __name__ == "__main__":
    main()
