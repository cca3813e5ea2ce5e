#!/usr/bin/env bash
# Several Fashion-MNIST runs at once, for a machine with spare capacity (a GPU: one LeNet run
# uses a small part of it). Each run is the same command as in run_lenet.sh, in the same run
# directory, so it resumes from its checkpoints and is published the same way when it finishes.
# Retraining runs (*_dc, *_sws, *_dirichlet, *_dirichlet_*) wait until the dense run of their
# model and seed has finished.
#
# Usage: [PARALLEL=4] [EXTRA="override ..."] bash experiments/fashion_mnist/run_parallel.sh \
#            EXPERIMENT:SEED ...
#   e.g. PARALLEL=6 bash experiments/fashion_mnist/run_parallel.sh \
#            lenet5_gnj:1 lenet5_gnj:2 lenet5_dense:1 lenet5_dc:1 lenet5_sws:1
# PARALLEL: runs at once (default 4; on one H100, 3 to 7 LeNet-5 runs ran at about 1 s per epoch
#   each, 13 at once slowed to a crawl). EXTRA: overrides added to every run (data.dir=..., say).
# On a GPU set XLA_PYTHON_CLIENT_PREALLOCATE=false, or the first process takes 75 % of its memory.
set -uo pipefail
cd "$(dirname "$0")/../.."
runs_root=${BAYESCOMP_RUNS:-$HOME/bayescomp-runs}
results_root=${BAYESCOMP_RESULTS:-results}
parallel=${PARALLEL:-4}
read -r -a extra <<< "${EXTRA:-}"

run_one() {  # run_one EXPERIMENT SEED: train (or resume), then publish
  local experiment=$1 seed=$2 run_dir pretrained=()
  run_dir="$runs_root/fashion_mnist/$experiment/seed$seed"
  case "$experiment" in
    *_dc|*_sws|*_dirichlet|*_dirichlet_*)
      local dense="$runs_root/fashion_mnist/${experiment%%_*}_dense/seed$seed"
      while [ ! -f "$dense/metrics.json" ]; do  # its dense run is still training (or queued)
        if [ -f "$dense.failed" ]; then
          echo "run $experiment seed $seed skipped: its dense run failed" >&2; return 1
        fi
        sleep 10
      done
      pretrained=("method.pretrained_run=$dense") ;;
  esac
  mkdir -p "$run_dir"
  rm -f "$run_dir.failed"
  if python -m bayescomp.run +experiment="$experiment" data=fashion_mnist seed="$seed" \
      trainer.progress_bar=false hydra.run.dir="$run_dir" "${pretrained[@]}" "${extra[@]}" \
      > "$run_dir.stdout" 2>&1; then
    bash experiments/fashion_mnist/publish_run.sh "$run_dir" \
      "$results_root/fashion_mnist/$experiment/seed$seed" >> "$run_dir.stdout" 2>&1
    echo "done $experiment seed $seed"
  else
    touch "$run_dir.failed"
    echo "run $experiment seed $seed failed; see $run_dir.stdout and $run_dir/run.log" >&2
    return 1
  fi
}

# Dense runs first, so that the retraining runs waiting for them never hold every slot.
specs=()
for spec in "$@"; do case "${spec%%:*}" in *_dense) specs+=("$spec") ;; esac; done
for spec in "$@"; do case "${spec%%:*}" in *_dense) ;; *) specs+=("$spec") ;; esac; done
for spec in "${specs[@]}"; do
  if [[ "$spec" != *:* ]]; then echo "expected EXPERIMENT:SEED, got '$spec'" >&2; exit 2; fi
  experiment=${spec%%:*} seed=${spec##*:}
  case "$experiment" in
    *_dc|*_sws|*_dirichlet|*_dirichlet_*)  # its dense run must be finished or in this list
      dense=${experiment%%_*}_dense
      if [ ! -f "$runs_root/fashion_mnist/$dense/seed$seed/metrics.json" ] \
          && [[ " ${specs[*]} " != *" $dense:$seed "* ]]; then
        echo "$spec retrains $dense seed $seed, which has not run: add $dense:$seed" >&2; exit 2
      fi ;;
  esac
done
for spec in "${specs[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n; done
  run_one "${spec%%:*}" "${spec##*:}" &
done
wait
