#!/usr/bin/env bash
# Full LeNet runs on Fashion-MNIST, one after the other (two at once on 2 cores are no faster).
# Each run writes results/fashion_mnist/<experiment>/seed<seed>/ (metrics.json, run.log, the
# resolved config in .hydra/); rerunning this script resumes unfinished runs from their
# checkpoints and re-evaluates finished ones.
# Usage: bash experiments/fashion_mnist/run_lenet.sh [EXPERIMENT ...] (default: all below)
set -euo pipefail
cd "$(dirname "$0")/../.."
experiments=("$@")
if [ ${#experiments[@]} -eq 0 ]; then
  experiments=(lenet300_dense lenet300_svd lenet5_dense lenet5_svd)
fi
seeds=${SEEDS:-0}
for experiment in "${experiments[@]}"; do
  for seed in $seeds; do
    python -m bayescomp.run +experiment="$experiment" data=fashion_mnist seed="$seed" \
      trainer.progress_bar=false \
      hydra.run.dir="results/fashion_mnist/$experiment/seed$seed"
  done
done
