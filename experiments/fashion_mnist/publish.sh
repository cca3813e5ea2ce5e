#!/usr/bin/env bash
# Compress finished runs and copy what results/ keeps (metrics.json, run.log, config, model.bcz,
# log-alpha plots) from the run root into results/fashion_mnist/<experiment>/seed<seed>/.
# Usage: [SEEDS="0 1 2"] bash experiments/fashion_mnist/publish.sh EXPERIMENT ...
set -uo pipefail
cd "$(dirname "$0")/../.."
runs_root=${BAYESCOMP_RUNS:-$HOME/bayescomp-runs}
for experiment in "$@"; do
  for seed in ${SEEDS:-0}; do
    bash experiments/fashion_mnist/publish_run.sh "$runs_root/fashion_mnist/$experiment/seed$seed" \
      "results/fashion_mnist/$experiment/seed$seed"
  done
done
