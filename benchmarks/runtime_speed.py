"""Runtime speed and memory of the SNN executor, measured side by side against two references.

For each network (zoo lenet, vgg11, resnet20 on 1x28x28 mnist5k images, BatchNorm statistics set on
real images, converted and calibrated by spikeshield's own conversion passes) this prints:

* ``snn/ann``: one SNN forward pass of T steps over T forward passes of the dense ANN (the same
  BatchNorm-folded weights as a ReLU network; the faster of spikeshield's executor and the original
  ``nn.Module`` in eval mode is the denominator). Goal: <= 1.25 at T = 8.
* ``norse/snn``: a step-by-step Norse execution of the SNN (Norse ``IAFCell`` neurons in a
  ``SequentialState`` for chains, the graph walked step by step for residual nets, the same
  conv/linear/pool kernels, a Python loop over time) over spikeshield's forward of the same SNN.
  ``IAFCell`` resets to zero from a zero membrane, so both sides run the SNN converted with that
  neuron (``--reset zero --v-init 0``; the same arithmetic as the default neuron's); its logits are
  checked equal to spikeshield's before anything is timed. Goal: >= 3 at batch <= 32, >= 1 at 256.
* ``grad/ann``: one input-gradient step through the SNN (BPTT, triangle surrogate: an attack step)
  over T forward+backward passes of the dense ANN. Goal: <= 1.5 at T = 8.
* with ``--memory`` (or only that, ``--memory-only``): per T, in a fresh process, the bytes of the
  distinct storages autograd keeps for BPTT in one input-gradient step and the peak rise of the
  resident set during it (sampled every millisecond, glibc told to return large blocks at once); also
  both for the IF layers stepped through ``if_step`` under autograd, all steps folded.

spikeshield runs time in blocks of steps past ``FOLD_BUDGET`` elements per layer (see
:mod:`spikeshield.runtime.executor`); the timings include that.

Each timing is the median of ``--repeats`` rounds; within a round the methods run back to back, so
the ratios compare runs under the same machine load. Times are per batch, in milliseconds.

    python benchmarks/runtime_speed.py --nets lenet,vgg11,resnet20 --batches 1,32,256 \
        --timesteps 1,2,4,8,16,32 --out /tmp/runtime.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from provenance import provenance  # benchmarks/ is on sys.path when a script of it runs
from torch import nn

from spikeshield.compiler.driver.data import load_data
from spikeshield.compiler.driver.pipeline import CompileConfig, conversion_pipeline
from spikeshield.compiler.ir.ops import IF, Input, Output, Sum
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.frontends.torch_module import from_module
from spikeshield.frontends.zoo import build_model
from spikeshield.runtime.executor import GraphExecutor
from spikeshield.runtime.kernels import KERNELS

GOALS = {"snn/ann": ("<=", 1.25), "grad/ann": ("<=", 1.5)}


def build(arch: str, timesteps: int, seed: int = 0):
    """(torch ANN in eval mode, ANN executor on the folded graph, SNN executor of today's default
    neuron, SNN executor of the reset-to-zero neuron that starts from zero, which Norse's ``IAFCell``
    computes, test images)."""
    torch.manual_seed(seed)
    splits = load_data("mnist5k", seed=seed)
    mean, std = splits.channel_stats()
    model = build_model(arch, splits.input_shape, splits.num_classes, mean, std)
    batches = [x for x, _ in splits.train.batches(64, shuffle=True, seed=seed)][:8]
    model.train()
    with torch.no_grad():  # realistic BatchNorm statistics, hence realistic firing rates
        for x in batches:
            model(x)
    model.eval()
    ann = from_module(model, splits.input_shape, arch)
    cfg = CompileConfig(timesteps=timesteps)
    manager = PassManager()
    folded = manager.run(ann, conversion_pipeline(cfg, batches[:4], "cpu")[:1])
    snn = manager.run(ann, conversion_pipeline(cfg, batches[:4], "cpu"))
    zero = CompileConfig(timesteps=timesteps, reset="zero", v_init=0.0)
    snn_zero = manager.run(ann, conversion_pipeline(zero, batches[:4], "cpu"))
    return (model, GraphExecutor(folded).eval(), GraphExecutor(snn).eval(),
            GraphExecutor(snn_zero).eval(), splits.test.images)


class _Kernel(nn.Module):
    """One stateless IR op as a module (the same kernel the executor calls)."""

    def __init__(self, op, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.op, self.tensors = op, tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return KERNELS[type(self.op)](self.op, self.tensors, x)


class NorseReference(nn.Module):
    """The SNN stepped through time with Norse cells: the usual way to run a converted SNN."""

    def __init__(self, executor: GraphExecutor) -> None:
        super().__init__()
        from norse.torch import IAFCell, SequentialState
        from norse.torch.functional.iaf import IAFParameters

        graph = executor.graph
        self.graph, self.order = graph, graph.nodes()
        self.layers = nn.ModuleDict()
        for i, name in enumerate(self.order):
            op = graph.op(name)
            if isinstance(op, IF):
                threshold = executor.tensors_of(name)["threshold"].detach()
                if op.reset != "zero" or op.v_init != 0.0:
                    raise SystemExit(f"{name}: Norse's IAFCell resets to zero from a zero membrane; "
                                     f"this IF resets by {op.reset!r} from {op.v_init} x threshold")
                rank = len(graph.shape(name))
                v_th = threshold.view(-1, *([1] * (rank - 1))) if threshold.numel() > 1 else threshold
                p = IAFParameters(v_th=v_th.clone(), v_reset=torch.tensor(0.0), method="heaviside")
                self.layers[f"n{i}"] = IAFCell(p)
            elif not isinstance(op, (Input, Output, Sum)):
                tensors = {k: v.detach() for k, v in executor.tensors_of(name).items()}
                self.layers[f"n{i}"] = _Kernel(op, tensors)
        self.keys = {name: f"n{i}" for i, name in enumerate(self.order)}
        chain = all(len(graph.inputs(n)) <= 1 for n in self.order)
        self.sequential = SequentialState(*self.layers.values()) if chain else None

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        total, state = 0.0, None
        for _ in range(timesteps):
            if self.sequential is not None:
                out, state = self.sequential(x, state)
            else:
                out, state = self._walk(x, state)
            total = total + out
        return total / timesteps

    def _walk(self, x: torch.Tensor, states: dict | None):
        states = {} if states is None else states
        values: dict[str, torch.Tensor] = {}
        for name in self.order:
            parents = self.graph.inputs(name)
            inp = x if not parents else sum(values[p] for p in parents)
            key = self.keys[name]
            if key in self.layers and isinstance(self.layers[key], _Kernel):
                values[name] = self.layers[key](inp)
            elif key in self.layers:
                values[name], states[name] = self.layers[key](inp, states.get(name))
            else:
                values[name] = inp
        return values[self.graph.output_names[0]], states


def timed(fn: Callable[[], object], min_seconds: float) -> float:
    """Seconds per call, averaged over as many calls as fill ``min_seconds``."""
    fn()
    calls, started = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return elapsed / calls


def dense_limit_steps(model, ann, snn, x: torch.Tensor, steps: int) -> dict[str, Callable[[], None]]:
    """What the ratios to the dense limit time, on input ``x``: one pass and one input-gradient step
    of the ANN (as the ``nn.Module`` and as spikeshield's executor), one SNN forward pass of
    ``steps`` steps and one SNN attack step (BPTT). Also used by ``benchmarks/gpu_check.py``."""
    y = torch.zeros(len(x), dtype=torch.long, device=x.device)

    def ann_pass(module):
        with torch.no_grad():
            module(x)

    def ann_grad(module):
        xg = x.clone().requires_grad_()
        F.cross_entropy(module(xg), y).backward()

    def snn_forward():
        with torch.no_grad():
            snn(x, steps)

    def snn_grad():
        xg = x.clone().requires_grad_()
        F.cross_entropy(snn(xg, steps), y).backward()

    return {"ann_module": lambda: ann_pass(model), "ann_executor": lambda: ann_pass(ann),
            "ann_grad_module": lambda: ann_grad(model), "ann_grad_executor": lambda: ann_grad(ann),
            "snn": snn_forward, "snn_grad": snn_grad}


def measure(model, ann, snn, snn_zero, norse, images, batch: int, steps: int, args) -> dict:
    x = images[:batch].float() / 255.0

    def snn_zero_forward():
        with torch.no_grad():
            snn_zero(x, steps)

    def norse_forward():
        with torch.no_grad():
            norse(x, steps)

    methods = {
        **dense_limit_steps(model, ann, snn, x, steps),
        "snn_zero": snn_zero_forward,
        "norse": norse_forward,
    }
    samples: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.repeats):
        for key, fn in methods.items():
            samples[key].append(timed(fn, args.min_time))
    t = {k: statistics.median(v) for k, v in samples.items()}
    ann_pass_s = min(t["ann_module"], t["ann_executor"])
    ann_grad_s = min(t["ann_grad_module"], t["ann_grad_executor"])
    return {
        "batch": batch,
        "T": steps,
        "ms": {k: round(1000 * v, 3) for k, v in t.items()},
        "snn/ann": t["snn"] / (steps * ann_pass_s),
        "norse/snn": t["norse"] / t["snn_zero"],  # the same neuron on both sides
        "grad/ann": t["snn_grad"] / (steps * ann_grad_s),
    }


def check_same_network(snn: GraphExecutor, norse: NorseReference, images, steps: int) -> None:
    x = images[:16].float() / 255.0
    with torch.no_grad():
        ours, theirs = snn(x, steps), norse(x, steps)
    if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4):
        raise SystemExit(f"Norse reference disagrees with the runtime: max |diff| {float((ours - theirs).abs().max())}")


def memory_child(arch: str, steps: int, batch: int, stepwise: bool) -> dict:
    """Run in a fresh process: bytes saved for BPTT and peak RSS growth of one input-gradient step."""
    import spikeshield.runtime.executor as executor_module
    from spikeshield.runtime import neurons

    if stepwise:
        executor_module.if_scan = neurons.if_scan_stepwise
    _, _, snn, _, images = build(arch, steps)
    if stepwise:  # the counterfactual steps if_step under autograd, all steps folded
        snn.fold_budget = 1 << 62
    x = (images[:batch].float() / 255.0).requires_grad_()
    with torch.no_grad():
        snn(x[:1], 1)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:  # each storage once: weights are saved per block
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    before = _resident_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:  # the resident set, every millisecond, while the step runs
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(snn(x, steps), torch.zeros(batch, dtype=torch.long))
    loss.backward()
    done.set()
    sampler.join()
    return {"saved_mib": sum(storages.values()) / 2**20, "peak_growth_mib": (peak - before) / 2**20}


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_curve(arch: str, timesteps: list[int], batch: int) -> list[dict]:
    rows = []
    for steps in timesteps:
        row = {"T": steps}
        for stepwise in (False, True):
            # Large blocks straight from mmap, so that freed tensors leave the resident set and
            # its growth during the step is the step's own peak, not the allocator's leftovers.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", f"{arch},{steps},{batch},{int(stepwise)}"],
                check=True, capture_output=True, text=True, env=env,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            prefix = "stepwise_" if stepwise else ""
            row.update({prefix + k: round(v, 1) for k, v in result.items()})
        rows.append(row)
        print(f"  memory {arch} batch {batch} T={steps}: {row}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default="lenet,vgg11,resnet20")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--timesteps", default="1,2,4,8,16,32", help="T of the scaling curves")
    parser.add_argument("--grid-t", type=int, default=8, help="T of the all-batch-sizes grid")
    parser.add_argument("--curve-batch", type=int, default=32, help="batch size of the T curves")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timing sample")
    parser.add_argument("--memory", action="store_true", help="also the memory-vs-T curves")
    parser.add_argument("--memory-only", action="store_true", help="only the memory-vs-T curves")
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        arch, steps, batch, stepwise = args.memory_child.split(",")
        print(json.dumps(memory_child(arch, int(steps), int(batch), bool(int(stepwise)))))
        return
    nets = [n for n in args.nets.split(",") if n]
    batches = [int(b) for b in args.batches.split(",")]
    curve = [int(t) for t in args.timesteps.split(",")]
    results: dict = {"name": "runtime-speed", **provenance(), "threads": torch.get_num_threads(),
                     "repeats": args.repeats, "grid_t": args.grid_t, "curve_batch": args.curve_batch,
                     "nets": {}}
    print(f"# runtime speed, CPU ({results['machine']}, {results['threads']} threads); ms per batch; "
          f"median of {args.repeats} rounds", flush=True)
    header = "| net | batch | T | ANN pass ms | SNN fwd ms | Norse ms | SNN grad ms | snn/ann | norse/snn | grad/ann |"
    print(header + "\n|" + "---|" * 10, flush=True)
    for arch in nets:
        if args.memory_only:
            results["nets"][arch] = {"memory": memory_curve(arch, curve, args.curve_batch)}
            continue
        model, ann, snn, snn_zero, images = build(arch, args.grid_t)
        norse = NorseReference(snn_zero)
        check_same_network(snn_zero, norse, images, args.grid_t)
        configs = [(b, args.grid_t) for b in batches] + [
            (args.curve_batch, t) for t in curve if t != args.grid_t or args.curve_batch not in batches
        ]
        rows = []
        for batch, steps in configs:
            row = measure(model, ann, snn, snn_zero, norse, images, batch, steps, args)
            rows.append(row)
            ms = row["ms"]
            print(f"| {arch} | {batch} | {steps} | {min(ms['ann_module'], ms['ann_executor']):.2f} | "
                  f"{ms['snn']:.2f} | {ms['norse']:.2f} | {ms['snn_grad']:.2f} | {row['snn/ann']:.2f} | "
                  f"{row['norse/snn']:.2f} | {row['grad/ann']:.2f} |", flush=True)
        results["nets"][arch] = {"rows": rows}
        if args.memory:
            results["nets"][arch]["memory"] = memory_curve(arch, curve, args.curve_batch)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
