#!/usr/bin/env bash
# Issue 41: conversion on eight ANNs of both training kinds (BENCHMARKS.md, "Conversion on ANNs of
# both training kinds"). Resumable: each cell is a JSON file under WORK; a rerun skips what is there.
# Usage: benchmarks/conversion_unseen.sh WORK [h2h|rows|finetune|finetune-default]
#   h2h      today's default against SpikingJelly's best recipe at T = 1, 2, 4, 8
#   rows     the old default, issue 19's default and Paper A's neuron at T = 8
#   finetune Paper A's neuron after the default finetuning (10 epochs, all training images;
#            clean accuracy), residual ANNs, T = 8; about 25 min a cell alone
#   finetune-default  the same for today's default neuron
set -euo pipefail
work=${1:?usage: benchmarks/conversion_unseen.sh WORK [h2h|rows|finetune|finetune-default]}; stage=${2:-h2h}
run() { OMP_NUM_THREADS=2 .venv/bin/python benchmarks/conversion.py --work "$work" --data mnist5k \
          --n 1000 "$@"; }
for objective in standard trades; do
  vgg_epochs=5; [ "$objective" = trades ] && vgg_epochs=2  # TRADES vgg11: the 2-core budget
  nets=(
    "--arch lenet --epochs 5"
    "--arch resnet20 --width 0.5 --epochs 4"
    "--arch kuangliu-resnet --epochs 5"
    "--arch vgg11 --width 0.5 --epochs $vgg_epochs --lr 0.02"
  )
  for net in "${nets[@]}"; do
    # shellcheck disable=SC2086
    case "$stage" in
      h2h) run --objective "$objective" $net --head-to-head -T 1,2,4,8 ;;
      rows) run --objective "$objective" $net --no-spikingjelly -T 8 ;;
      finetune) case "$net" in *resnet*)  # Paper A's neuron on every net first, then the default
        run --objective "$objective" $net --no-spikingjelly -T 8 --robust 8 --robust-preset none \
            --robust-n 1000 --robust-variants "paper-a fit uniform" ;; esac ;;
      finetune-default) case "$net" in *resnet*)
        run --objective "$objective" $net --no-spikingjelly -T 8 --robust 8 --robust-preset none \
            --robust-n 1000 --robust-variants "default fit" ;; esac ;;
      *) echo "unknown stage $stage" >&2; exit 2 ;;
    esac
  done
done
