#!/usr/bin/env bash
# CIFAR runs on cifar10_jpeg (the CIFAR-10 images re-encoded as JPEG; results are named
# cifar10_jpeg, never cifar10), one after the other (two at once on 2 cores are no faster).
#
# Each run trains in $BAYESCOMP_RUNS/cifar10_jpeg/<experiment>/seed<seed>/ (default
# ~/bayescomp-runs, outside the repository, so its per-epoch checkpoints survive a fresh checkout)
# and, once finished, is compressed and copied to results/cifar10_jpeg/<experiment>/seed<seed>/
# (experiments/fashion_mnist/publish_run.sh). Rerunning resumes unfinished runs from their last
# checkpoint and re-evaluates finished ones. The archive is found as data.dir or ~/data says
# (conf/data/cifar10_jpeg.yaml).
#
# Usage: [SEEDS="0 1 2"] bash experiments/cifar10_jpeg/run_cifar.sh EXPERIMENT [OVERRIDE ...]
#   e.g. bash experiments/cifar10_jpeg/run_cifar.sh resnet20_dense_cpu
set -uo pipefail
cd "$(dirname "$0")/../.."
runs_root=${BAYESCOMP_RUNS:-$HOME/bayescomp-runs}
experiment=${1:?usage: run_cifar.sh EXPERIMENT [OVERRIDE ...]}
shift
for seed in ${SEEDS:-0}; do
  run_dir="$runs_root/cifar10_jpeg/$experiment/seed$seed"
  if python -m bayescomp.run +experiment="$experiment" data=cifar10_jpeg seed="$seed" \
      trainer.progress_bar=false hydra.run.dir="$run_dir" "$@"; then
    bash experiments/fashion_mnist/publish_run.sh "$run_dir" "results/cifar10_jpeg/$experiment/seed$seed"
  else
    echo "run $experiment seed $seed failed (exit $?); see $run_dir/run.log" >&2
  fi
done
