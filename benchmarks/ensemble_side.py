"""One side of an attack preset, as `spikeshield eval` runs it, without the other side or the
diagnostics: the SNN ensemble (the source ANN for transfer members) or, with ``--ann``, the ANN's.
For a quick comparison of two compiled networks on the same first N test images.

    .venv/bin/python benchmarks/ensemble_side.py RUN_DIR --preset paper --n 256 [--ann]
        [--members K] [--split test|val] [--start S]

``--members K`` runs the preset's first K members only (``--members 1``: the paper preset's
PGD-20 through triangle γ=1 alone); ``--split val`` attacks the first N validation images (carved
from the training data, as finetuning's epoch selection scores them) instead of test images;
``--start S`` takes images S to S+N-1 instead (``--split val --start 1000``: validation images that
finetuning's epoch selection, which scores the first 1,000, never saw).

Prints clean and robust counts and each member's breaks; writes
RUN_DIR/<snn|ann>_<preset>_<n>.json (``_<K>members``, ``_val`` and ``_from<S>`` added when set).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from spikeshield.compiler.driver.data import load_data
from spikeshield.compiler.ir.serialize import load_graph
from spikeshield.runtime.attacks import base_attack, members_for_ann, preset_members
from spikeshield.runtime.ensemble import run_ensemble
from spikeshield.runtime.executor import GraphExecutor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a compile output directory (snn.ir, ann.ir)")
    p.add_argument("--preset", default="paper")
    p.add_argument("--n", type=int, default=64, help="the first N test images")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--ann", action="store_true", help="attack the ANN (ann.ir) instead")
    p.add_argument("--members", type=int, default=None, help="the preset's first K members only")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--start", type=int, default=0, help="the first image attacked")
    args = p.parse_args()
    splits = load_data(args.data, seed=0)
    snn, ann = load_graph(args.run / "snn.ir"), load_graph(args.run / "ann.ir")
    members = preset_members(args.preset, base_attack("pgd"))[:args.members]
    split = splits.val if args.split == "val" else splits.test
    if not 0 <= args.start < len(split):
        p.error(f"--start {args.start} is outside the {args.split} split's {len(split)} images")
    test = split.slice(args.start, args.start + args.n)
    started = time.perf_counter()
    if args.ann:
        ann_members = members_for_ann(members, base_attack("pgd"))
        result = run_ensemble(GraphExecutor(ann), test, ann_members, args.eps, None,
                              splits.num_classes, desc=args.preset)
    else:
        spec = snn.run_spec()
        result = run_ensemble(GraphExecutor(snn, encoding=spec.encoding), test, members, args.eps,
                              spec.timesteps, splits.num_classes, source=GraphExecutor(ann),
                              desc=args.preset)
    out = result.to_json()
    out["seconds"] = time.perf_counter() - started
    side = "ann" if args.ann else "snn"
    tag = f"{side}_{args.preset}_{args.n}" + (
        f"_{args.members}members" if args.members else "") + (
        "_val" if args.split == "val" else "") + (f"_from{args.start}" if args.start else "")
    (args.run / f"{tag}.json").write_text(json.dumps(out, indent=1))
    print(tag, "clean", result.clean_correct, "robust", result.robust, f"{out['seconds']:.0f}s")
    for member in out["members"]:
        print(member)


if __name__ == "__main__":
    main()
