#!/usr/bin/env bash
# Accuracy cost of adapting a compiled SNN to hardware targets (weight quantisation, reset switch).
# Usage: benchmarks/targets.sh WORKDIR [EPOCHS]   (mnist5k, LeNet, T=8; prints one line per target)
set -euo pipefail
WORK=${1:?workdir}; EPOCHS=${2:-5}
S=.venv/bin/spikeshield
mkdir -p "$WORK"
[ -f "$WORK/ann.pt2" ] || $S train --arch lenet --data mnist5k --objective trades --eps 0.1 \
    --epochs "$EPOCHS" --out "$WORK/ann.pt2"
[ -d "$WORK/snn" ] || $S compile "$WORK/ann.pt2" --data mnist5k -T 8 --finetune none \
    --robustness none --out "$WORK/snn"
for bits in 8 6 4 3; do
  printf '{"name": "int%s", "description": "%s-bit weights", "weight_bits": %s}\n' \
    "$bits" "$bits" "$bits" > "$WORK/int$bits.json"
done
printf '{"name": "subtract-int8", "description": "", "weight_bits": 8, "reset_modes": ["subtract"]}\n' \
  > "$WORK/subtract-int8.json"
for target in loihi2 "$WORK/int6.json" "$WORK/int4.json" "$WORK/int3.json" "$WORK/subtract-int8.json"; do
  $S export "$WORK/snn" --format nir --target "$target" --out "$WORK/$(basename "$target" .json).nir"
done
for target in speck xylo; do
  $S export "$WORK/snn" --format nir --target "$target" --out "$WORK/$target.nir" 2>&1 | cut -c1-160 || true
done
