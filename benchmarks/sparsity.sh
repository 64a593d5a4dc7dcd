#!/usr/bin/env bash
# Sparsity sweep: one robust dense ANN, pruned by HYDRA and by magnitude to each sparsity, converted,
# robustly finetuned as an SNN, profiled, and attacked with the `paper` ensemble.
# Usage: benchmarks/sparsity.sh WORKDIR [DATA] [EPOCHS] [MAX_TRAIN] [N_ROBUST] [SPARSITIES] [METHODS]
#                                [FT_EPOCHS] [PRUNE_EPOCHS]
#   e.g. benchmarks/sparsity.sh /tmp/sparsity fashion-mnist 3 10000 300 "0.9 0.95 0.99 0.995"
# WIDTH (environment, default 1) is LeNet's channel width multiplier.
# Runs already finished in WORKDIR (robustness.json present) are skipped, so a sweep can be extended.
# MAX_TRAIN limits ANN training, pruning and SNN finetuning to the first N training images (2-core
# budget); clean accuracy and the profile use the first 1000 test images, the attacks N_ROBUST.
set -euo pipefail
work=${1:-/tmp/spikeshield-sparsity}; data=${2:-fashion-mnist}; epochs=${3:-3}
max_train=${4:-10000}; n_robust=${5:-300}; sparsities=${6:-"0.9 0.95 0.99 0.995"}
methods=${7:-"hydra magnitude"}; ft_epochs=${8:-5}; prune_epochs=${9:-2}
bin=${SPIKESHIELD:-.venv/bin/spikeshield}
python=${PYTHON:-.venv/bin/python}
common=(--data "$data" -T 8 --eps-train 0.1 --finetune-epochs "$ft_epochs"
        --finetune-max-train "$max_train" --prune-epochs "$prune_epochs" --robustness none --n 1000)
mkdir -p "$work"
start=$(date +%s)
[[ -f "$work/dense.pt2" ]] || "$bin" train --arch lenet --width "${WIDTH:-1}" --data "$data" --objective trades --eps 0.1 \
  --epochs "$epochs" --max-train "$max_train" --out "$work/dense.pt2"
run() {  # name, extra compile options...
  local name=$1; shift
  [[ -f "$work/$name/robustness.json" ]] && return
  "$bin" compile "$work/dense.pt2" "${common[@]}" "$@" --out "$work/$name"
  "$bin" eval "$work/$name" --preset paper --eps 0.1 --n "$n_robust"
}
run dense --prune-sparsity 0
for s in $sparsities; do
  for m in $methods; do
    run "$m-$s" --prune-sparsity "$s" --prune-method "$m"
  done
done
echo "total seconds: $(( $(date +%s) - start ))"
"$python" benchmarks/summarise_sparsity.py "$work"
