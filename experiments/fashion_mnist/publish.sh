#!/usr/bin/env bash
# Compress finished runs and copy what results/ keeps (metrics.json, run.log, config, model.bcz,
# log-alpha plots) from the run root into results/fashion_mnist/<experiment>/seed<seed>/.
# Usage: [SEEDS="0 1 2"] bash experiments/fashion_mnist/publish.sh EXPERIMENT ...
set -uo pipefail
cd "$(dirname "$0")/../.."
runs_root=${BAYESCOMP_RUNS:-$HOME/bayescomp-runs}
for experiment in "$@"; do
  for seed in ${SEEDS:-0}; do
    run_dir="$runs_root/fashion_mnist/$experiment/seed$seed"
    published="results/fashion_mnist/$experiment/seed$seed"
    python -m bayescomp.compress "$run_dir" || { echo "compress $run_dir failed" >&2; continue; }
    mkdir -p "$published"
    cp "$run_dir/metrics.json" "$run_dir/run.log" "$run_dir/model.bcz" "$published/"
    if [ -f "$run_dir/config.yaml" ]; then cp "$run_dir/config.yaml" "$published/"; fi
    rm -rf "$published/.hydra" "$published/plots"
    cp -r "$run_dir/.hydra" "$run_dir/plots" "$published/"
  done
done
