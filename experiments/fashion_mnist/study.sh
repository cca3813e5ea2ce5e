#!/usr/bin/env bash
# Sensitivity studies on Fashion-MNIST: one experiment rerun with config overrides, each variant
# trained (resumably, like run_lenet.sh), compressed and published to
# results/studies/fashion_mnist/<study>/<variant>/seed<seed>/, then tabulated beside the
# experiment's own runs in results/studies/<study>.md.
#
# Studies (the override of each variant after the colon):
#   lenet5_ghs_tau0     lenet5_ghs with the horseshoe's global scale tau0 = 1e-7, 1e-3, 1e-1
#                       (the experiment's own runs use 1e-5)
#   lenet300_gnj_100ep  lenet300_gnj trained for 100 epochs (the experiment's recipe: 200), the
#                       budget of the authors' PyTorch reference run on this machine (issue 3)
#
# Usage: [SEEDS="0 1 2"] bash experiments/fashion_mnist/study.sh STUDY
set -uo pipefail
cd "$(dirname "$0")/../.."
runs_root=${BAYESCOMP_RUNS:-$HOME/bayescomp-runs}
study=${1:?usage: study.sh STUDY (lenet5_ghs_tau0 | lenet300_gnj_100ep)}
case "$study" in
  lenet5_ghs_tau0)
    experiment=lenet5_ghs
    variants=("tau0_1e-7:method.prior.tau0=1e-7" "tau0_1e-3:method.prior.tau0=1e-3"
              "tau0_1e-1:method.prior.tau0=1e-1") ;;
  lenet300_gnj_100ep)
    experiment=lenet300_gnj
    variants=("epochs_100:trainer.epochs=100") ;;
  *) echo "unknown study '$study'; known: lenet5_ghs_tau0, lenet300_gnj_100ep" >&2; exit 2 ;;
esac
for variant in "${variants[@]}"; do
  name=${variant%%:*}
  override=${variant#*:}
  for seed in ${SEEDS:-0}; do
    run_dir="$runs_root/fashion_mnist/studies/$study/$name/seed$seed"
    if python -m bayescomp.run +experiment="$experiment" data=fashion_mnist seed="$seed" \
        trainer.progress_bar=false hydra.run.dir="$run_dir" "$override"; then
      bash experiments/fashion_mnist/publish_run.sh "$run_dir" \
        "results/studies/fashion_mnist/$study/$name/seed$seed"
    else
      echo "run $study/$name seed $seed failed (exit $?); see $run_dir/run.log" >&2
    fi
  done
done
python -m bayescomp.tables "results/fashion_mnist/$experiment" \
  "results/studies/fashion_mnist/$study" --out "results/studies/$study.md"
