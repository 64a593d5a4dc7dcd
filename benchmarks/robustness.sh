#!/usr/bin/env bash
# Robust ANN (AT / TRADES / MART) vs converted SNN vs robustly finetuned SNN: clean, PGD-20 and
# paper-ensemble worst-case robust accuracy at eps = 0.1 on the first N test images.
# Usage: benchmarks/robustness.sh DATA EPOCHS N WORKDIR [OBJECTIVES] [TIMESTEPS] [FT_EPOCHS] [MAX_TRAIN]
#   e.g. benchmarks/robustness.sh mnist5k 5 500 /tmp/rob-mnist "trades at mart" "8 4" 5
#        benchmarks/robustness.sh fashion-mnist 3 500 /tmp/rob-fm trades "8 4" 5 10000
# MAX_TRAIN limits ANN training and SNN finetuning to the first N training images (2-core budget).
set -euo pipefail
data=${1:-mnist5k}; epochs=${2:-5}; n=${3:-500}; work=${4:-/tmp/spikeshield-robustness}
objectives=${5:-"trades at mart"}; steps=${6:-"8 4"}; ft_epochs=${7:-5}; max_train=${8:-}
bin=${SPIKESHIELD:-.venv/bin/spikeshield}
python=${PYTHON:-.venv/bin/python}
limit_train=(); limit_ft=()
if [[ -n "$max_train" ]]; then limit_train=(--max-train "$max_train"); limit_ft=(--finetune-max-train "$max_train"); fi
mkdir -p "$work"
start=$(date +%s)
for obj in $objectives; do
  "$bin" train --arch lenet --data "$data" --objective "$obj" --eps 0.1 --epochs "$epochs" \
    "${limit_train[@]}" --out "$work/$obj.pt2"
  for t in $steps; do
    "$bin" compile "$work/$obj.pt2" --data "$data" -T "$t" --finetune none --robustness none \
      --n "$n" --out "$work/$obj-T$t-converted"
    "$bin" eval "$work/$obj-T$t-converted" --preset paper --eps 0.1 --n "$n"
    "$bin" compile "$work/$obj.pt2" --data "$data" -T "$t" --finetune trades \
      --finetune-epochs "$ft_epochs" "${limit_ft[@]}" --robustness none --n "$n" \
      --out "$work/$obj-T$t-finetuned"
    "$bin" eval "$work/$obj-T$t-finetuned" --preset paper --eps 0.1 --n "$n"
  done
done
echo "total seconds: $(( $(date +%s) - start ))"
"$python" benchmarks/summarise_robustness.py "$work"/*/robustness.json
