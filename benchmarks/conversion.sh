#!/usr/bin/env bash
# Calibration-only conversion (no finetuning): robust LeNet (TRADES, eps=0.1) -> SNN at T in {4, 8, 16, 32}.
# Usage: benchmarks/conversion.sh DATA EPOCHS WORKDIR   (e.g. fashion-mnist 3 /tmp/bench-fm)
set -euo pipefail
data=${1:-mnist5k}; epochs=${2:-5}; work=${3:-/tmp/spikeshield-bench}
bin=${SPIKESHIELD:-.venv/bin/spikeshield}
mkdir -p "$work"
start=$(date +%s)
"$bin" train --arch lenet --data "$data" --objective trades --eps 0.1 --epochs "$epochs" --out "$work/lenet.pt2"
for t in 4 8 16 32; do
  "$bin" compile "$work/lenet.pt2" --data "$data" -T "$t" --finetune none --robustness none --out "$work/snn-T$t"
done
echo "total seconds: $(( $(date +%s) - start ))"
