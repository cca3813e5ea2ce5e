#!/usr/bin/env bash
# Full LeNet runs on Fashion-MNIST, one after the other (two at once on 2 cores are no faster).
# Each run writes results/fashion_mnist/<experiment>/seed<seed>/ (metrics.json, run.log, the
# resolved config in .hydra/); rerunning this script resumes unfinished runs from their
# checkpoints and re-evaluates finished ones.
# Usage: bash experiments/fashion_mnist/run_lenet.sh [EXPERIMENT ...] (default: all below)
set -uo pipefail  # one failed run does not stop the others
cd "$(dirname "$0")/../.."
experiments=("$@")
if [ ${#experiments[@]} -eq 0 ]; then
  experiments=(lenet300_dense lenet300_svd lenet300_gnj lenet5_dense lenet300_ghs lenet5_svd
               lenet5_gnj lenet5_ghs)
fi
seeds=${SEEDS:-0}
for experiment in "${experiments[@]}"; do
  for seed in $seeds; do
    python -m bayescomp.run +experiment="$experiment" data=fashion_mnist seed="$seed" \
      trainer.progress_bar=false \
      hydra.run.dir="results/fashion_mnist/$experiment/seed$seed" \
      || echo "run $experiment seed $seed failed (exit $?)" >&2
  done
done
