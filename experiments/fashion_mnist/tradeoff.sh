#!/usr/bin/env bash
# Threshold trade-off curves (python -m bayescomp.tradeoff) of the finished variational runs in
# $BAYESCOMP_RUNS (default ~/bayescomp-runs), written to results/tradeoff/fashion_mnist/<exp>/seed<s>/.
# Runs whose checkpoints are elsewhere (e.g. trained on a lent GPU machine) are skipped, named.
#
# Usage: [SEEDS="0 1 2"] bash experiments/fashion_mnist/tradeoff.sh [EXPERIMENT ...]
set -uo pipefail
cd "$(dirname "$0")/../.."
runs_root=${BAYESCOMP_RUNS:-$HOME/bayescomp-runs}
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=(lenet300_svd lenet300_gnj lenet300_ghs lenet5_svd
                                             lenet5_gnj lenet5_ghs)
tolerances="0.25 0.5 1 2 4"
status=0
for experiment in "${experiments[@]}"; do
  case "$experiment" in
    *_svd) thresholds="0 1 2 3 4 5 6" ;;       # Sparse VD prunes at log alpha >= 3
    *_gnj|*_ghs) thresholds="-5 -4 -3 -2 -1 0" ;; # BC: the authors' example uses -5 .. -2.8
    *) echo "no trade-off for $experiment (not a variational experiment)" >&2; status=2; continue ;;
  esac
  for seed in ${SEEDS:-0 1 2}; do
    run_dir="$runs_root/fashion_mnist/$experiment/seed$seed"
    if [ ! -d "$run_dir/checkpoints" ]; then
      echo "skip $experiment seed $seed: no checkpoints in $run_dir" >&2
      continue
    fi
    out="results/tradeoff/fashion_mnist/$experiment/seed$seed"
    mkdir -p "$(dirname "$out")"
    # shellcheck disable=SC2086  # the point lists are meant to split into arguments
    python -m bayescomp.tradeoff "$run_dir" --thresholds $thresholds --tolerances $tolerances \
      --out "$out" || status=$?
  done
done
exit $status
