#!/usr/bin/env bash
# Compress one finished run and copy what results/ keeps (metrics.json, run.log, config, model.bcz,
# log-alpha plots) into a results directory. Used by publish.sh and study.sh.
# Usage: bash experiments/fashion_mnist/publish_run.sh RUN_DIR RESULTS_DIR
set -uo pipefail
run_dir=$1
published=$2
python -m bayescomp.compress "$run_dir" || { echo "compress $run_dir failed" >&2; exit 1; }
mkdir -p "$published"
cp "$run_dir/metrics.json" "$run_dir/run.log" "$run_dir/model.bcz" "$published/"
# Never leave an earlier publish's config, or a ranking control measured on it, beside new metrics.
rm -f "$published/config.yaml" "$published"/ranking_control*.json
if [ -f "$run_dir/config.yaml" ]; then cp "$run_dir/config.yaml" "$published/"; fi
rm -rf "$published/.hydra" "$published/plots"
cp -r "$run_dir/.hydra" "$published/"
# Channel methods (VCNN, slimming, Dirichlet) draw no log-alpha plots.
if [ -d "$run_dir/plots" ]; then cp -r "$run_dir/plots" "$published/"; fi
