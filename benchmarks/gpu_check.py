"""The GPU check (issue 44): run when the ``device`` tool lends a GPU; a few minutes in all.

For each zoo network (lenet, vgg11, resnet20 at width 1 on 1x28x28 mnist5k images, BatchNorm
statistics set on real images, converted and calibrated on the CPU with today's defaults) it
checks the GPU against the CPU, then times the GPU:

* **exactness**: the same SNN on the CPU and on ``--device`` (TF32 off, so that each float product
  is a float32 product): every IF layer's spike count per neuron and sample, the logits and the
  predictions. Convolutions on a GPU sum in another order than on the CPU, so a current within a
  rounding error of a threshold can fire on one and not on the other; the check reports how many
  spike counts differ and by how much, and fails (exit 1) only where a prediction differs from the
  CPU's beyond those flips, or more than ``--max-flip-rate`` of the spike counts do;
* **speed** on the device, as ``benchmarks/runtime_speed.py`` measures it on the CPU: one SNN forward
  pass of T steps and one input-gradient step (BPTT) over T passes of the dense ANN (the dense
  limit), at each batch size, medians of ``--repeats`` rounds with the device synchronised.

Writes ``--out`` (JSON, with the device's name), which ``benchmarks/results.py`` can render. On a
machine without CUDA, ``--device cpu`` runs the same script against the CPU itself (a dry run: the
spike counts must then be identical, which the test suite checks on lenet).

    python benchmarks/gpu_check.py --out gpu-check.json             # on the lent GPU machine
    python benchmarks/gpu_check.py --device cpu --nets lenet --batches 8 --repeats 1   # dry run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _synchronised(device: torch.device):
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return sync


def _median_ms(fn, sync, repeats: int, min_seconds: float) -> float:
    samples = []
    for _ in range(repeats):
        fn()
        sync()
        calls, started = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            sync()
            if (elapsed := time.perf_counter() - started) >= min_seconds:
                break
        samples.append(1000 * elapsed / calls)
    return statistics.median(samples)


def exactness(snn_cpu, snn_dev, images: torch.Tensor, steps: int, device: torch.device) -> dict:
    """Spike counts per neuron and sample, logits and predictions: the device against the CPU."""
    with torch.no_grad():
        logits_cpu = snn_cpu(images, steps, record=True)
        counts_cpu = {k: v.clone() for k, v in snn_cpu.neuron_spike_counts.items()}
        logits_dev = snn_dev(images.to(device), steps, record=True).cpu()
        counts_dev = {k: v.cpu() for k, v in snn_dev.neuron_spike_counts.items()}
    neurons = sum(v.numel() for v in counts_cpu.values())
    differing = sum(int((counts_cpu[k] != counts_dev[k]).sum()) for k in counts_cpu)
    largest = max((int((counts_cpu[k] - counts_dev[k]).abs().max()) for k in counts_cpu), default=0)
    same_prediction = logits_cpu.argmax(1) == logits_dev.argmax(1)
    return {"samples": len(images), "spike_counts": neurons, "spike_counts_differing": differing,
            "largest_count_difference": largest,
            "logits_max_abs_difference": float((logits_cpu - logits_dev).abs().max()),
            "predictions_differing": int((~same_prediction).sum())}


def speed(model, ann, snn, images, batch: int, steps: int, device, repeats: int,
          min_seconds: float) -> dict:
    from runtime_speed import dense_limit_steps

    sync = _synchronised(device)
    methods = dense_limit_steps(model, ann, snn, images[:batch].to(device), steps)
    ms = {k: _median_ms(fn, sync, repeats, min_seconds) for k, fn in methods.items()}
    return {"batch": batch, "T": steps, "ms": {k: round(v, 3) for k, v in ms.items()},
            "snn/ann": ms["snn"] / (steps * min(ms["ann_module"], ms["ann_executor"])),
            "grad/ann": ms["snn_grad"] / (steps * min(ms["ann_grad_module"],
                                                      ms["ann_grad_executor"]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run)")
    parser.add_argument("--nets", default="lenet,vgg11,resnet20")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    parser.add_argument("--check-samples", type=int, default=256,
                        help="test images compared spike count by spike count")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timing sample")
    parser.add_argument("--max-flip-rate", type=float, default=1e-4,
                        help="largest share of spike counts allowed to differ from the CPU's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from provenance import provenance
    from runtime_speed import build

    from spikeshield.runtime.device import resolve_device

    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU (dry run)"
    print(f"# GPU check on {name}, T = {args.timesteps}", flush=True)
    result = {"name": (args.out.stem if args.out else "gpu-check"), **provenance(),
              "device": name, "nets": {}}
    failed = []
    for arch in [n for n in args.nets.split(",") if n]:
        model, ann, snn, _, images = build(arch, args.timesteps)
        check = images[:args.check_samples].float() / 255.0
        snn_dev = type(snn)(snn.to_graph()).eval().to(device)
        exact = exactness(snn, snn_dev, check, args.timesteps, device)
        rate = exact["spike_counts_differing"] / exact["spike_counts"]
        if device.type == "cpu":  # the dry run: the same kernels, so the same spikes to the bit
            ok = exact["spike_counts_differing"] == 0 and exact["logits_max_abs_difference"] == 0
        else:
            ok = rate <= args.max_flip_rate and (exact["predictions_differing"] == 0
                                                 or exact["spike_counts_differing"] > 0)
        print(f"{arch}: {exact['spike_counts_differing']} of {exact['spike_counts']:,} spike counts "
              f"differ (largest by {exact['largest_count_difference']}), logits within "
              f"{exact['logits_max_abs_difference']:.2e}, {exact['predictions_differing']} "
              f"predictions differ: {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            failed.append(arch)
        model, ann = model.to(device), ann.to(device)
        rows = []
        for batch in [int(b) for b in args.batches.split(",")]:
            row = speed(model, ann, snn_dev, images.float() / 255.0, batch, args.timesteps, device,
                        args.repeats, args.min_time)
            rows.append(row)
            print(f"  batch {batch}: SNN forward {row['ms']['snn']:.2f} ms, snn/ann "
                  f"{row['snn/ann']:.2f}, grad/ann {row['grad/ann']:.2f}", flush=True)
        result["nets"][arch] = {"exactness": exact | {"ok": ok}, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    if failed:
        print(f"FAILED on {', '.join(failed)}: the device's spikes are not the CPU's",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
