#!/usr/bin/env bash
# Full LeNet runs on Fashion-MNIST, one after the other (two at once on 2 cores are no faster).
#
# Each run trains in $BAYESCOMP_RUNS/fashion_mnist/<experiment>/seed<seed>/ (default
# ~/bayescomp-runs, outside the repository, so its per-epoch checkpoints survive a fresh checkout
# of the work tree) and, once finished, its metrics.json, run.log, resolved config (.hydra/) and
# log-alpha plots are copied to results/fashion_mnist/<experiment>/seed<seed>/ by publish.sh,
# after `python -m bayescomp.compress` wrote the run's model.bcz (copied too). Rerunning this
# script resumes unfinished runs from their checkpoints and re-evaluates finished ones.
#
# Retraining experiments (Deep Compression *_dc, soft weight-sharing *_sws, Dirichlet pruning
# *_dirichlet, *_dirichlet_*) start from the finished dense run of their model and seed, which
# must have run first:
# lenet300_* from $runs_root/fashion_mnist/lenet300_dense/seed<seed>, lenet5_* from lenet5_dense;
# where that directory is absent, from the published results/fashion_mnist/<model>_dense/seed<seed>
# (no checkpoints there: the retraining starts from its model.bcz).
#
# Usage: [SEEDS="0 1 2"] bash experiments/fashion_mnist/run_lenet.sh [EXPERIMENT ...]
set -uo pipefail  # one failed run does not stop the others
cd "$(dirname "$0")/../.."
runs_root=${BAYESCOMP_RUNS:-$HOME/bayescomp-runs}
experiments=("$@")
if [ ${#experiments[@]} -eq 0 ]; then
  # Every experiment of results/fashion_mnist/ (lenet5_dirichlet_8_25_200: not yet published);
  # each retraining after its dense run.
  experiments=(lenet300_dense lenet300_svd lenet300_gnj lenet5_dense lenet300_ghs lenet5_svd
               lenet5_gnj lenet5_ghs lenet300_dc lenet300_sws lenet5_dc lenet5_sws
               lenet5_vcnn lenet5_slimming lenet5_dirichlet lenet5_dirichlet_8_25_200)
fi
seeds=${SEEDS:-0}
for experiment in "${experiments[@]}"; do
  for seed in $seeds; do
    run_dir="$runs_root/fashion_mnist/$experiment/seed$seed"
    published="results/fashion_mnist/$experiment/seed$seed"
    extra=()
    case "$experiment" in
      *_dc|*_sws|*_dirichlet|*_dirichlet_*)  # the model's dense run: lenet300_dc -> lenet300_dense
        dense="$runs_root/fashion_mnist/${experiment%%_*}_dense/seed$seed"
        published_dense="$PWD/results/fashion_mnist/${experiment%%_*}_dense/seed$seed"
        [ ! -d "$dense" ] && [ -d "$published_dense" ] && dense=$published_dense
        extra=("method.pretrained_run=$dense") ;;
    esac
    if python -m bayescomp.run +experiment="$experiment" data=fashion_mnist seed="$seed" \
        trainer.progress_bar=false hydra.run.dir="$run_dir" "${extra[@]}"; then
      SEEDS=$seed bash experiments/fashion_mnist/publish.sh "$experiment"
    else
      echo "run $experiment seed $seed failed (exit $?); see $run_dir/run.log" >&2
    fi
  done
done
