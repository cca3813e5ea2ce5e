#!/usr/bin/env bash
# Sensitivity studies on Fashion-MNIST: one experiment rerun with config overrides, each variant
# trained (resumably, like run_lenet.sh), compressed and published to
# results/studies/fashion_mnist/<study>/<variant>/seed<seed>/, then tabulated beside the
# experiment's own runs in results/studies/<study>.md.
#
# Studies (the overrides of each variant after the colon, separated by spaces):
#   lenet5_ghs_tau0     lenet5_ghs with the horseshoe's global scale tau0 = 1e-7, 1e-3, 1e-1
#                       (the experiment's own runs use 1e-5)
#   lenet300_gnj_100ep  lenet300_gnj trained for 100 epochs (the experiment's recipe: 200; the runs
#                       in results/ predate its [-1, 1] inputs and used mean-image ones), the
#                       budget of the authors' PyTorch reference run on this machine (issue 3)
#   lenet300_gnj_bc_recipe
#                       lenet300_gnj (inputs in [-1, 1] as the authors' BC tutorial) with the
#                       mean training image subtracted instead (data.preprocess=reference, the
#                       Sparse VD preprocessing this experiment used until 2026-11-22), and with
#                       the rest of the tutorial's recipe (example.py): batch 128, constant Adam
#                       1e-3, no KL warm-up, 100 epochs, the recipe of the reference run of
#                       issue 3. The experiment otherwise follows the Sparse VD recipe (batch 100,
#                       warm-up over epochs 5-20, linear decay over the second half, 200 epochs).
#   lenet300_ghs_inputs lenet300_ghs with the mean training image subtracted instead of [-1, 1]
#   lenet5_dense_widths lenet5_dense with narrower layers (model.widths), trained from scratch:
#                       how well can a dense LeNet-5 with >= 30x fewer weights do at all?
#                       (the issue-3 bar asks LeNet-5 BC-GHS for Pruning >= 30 within 1 point
#                       of dense). conv1-conv2-fc1 = 8-16-40 (14,040 weights, 30.7x fewer),
#                       6-20-32 (13,710, 31.4x), 10-12-50 (13,350, 32.2x) and 8-24-22
#                       (13,668, 31.5x; few fc units, more conv2 channels); and 6-40-100
#                       (535K multiply-adds: lenet5_dirichlet_budget's architecture trained from
#                       scratch). The ratios in its table are relative to each narrow network's
#                       own weights; what to read there is the error at each architecture.
#   lenet5_dirichlet_switches
#                       lenet5_dirichlet (point switches, widths 5-8-45) with integral switches
#                       (one Dirichlet draw per example, the paper's main variant and this
#                       experiment's recipe until 2026-12-06) started at theta = -1 (phi = 0.31,
#                       the reference's LeNet value), 3 (phi = 3.05) and 20 (phi = 20): less
#                       sampling noise on the frozen network. Each variant's channel ranking is
#                       also compared with random rankings (python -m bayescomp.ranking_control,
#                       ranking_control.json beside its metrics).
#   lenet5_dirichlet_fractions
#                       lenet5_dirichlet (point switches) keeping a share of every group instead
#                       of the paper's 5-8-45 (method.keep_fraction = 0.3, 0.4, 0.5: 6-15-150,
#                       8-20-200, 10-25-250, about 268K, 437K and 646K multiply-adds against
#                       the dense 2,293K), for Dirichlet pruning's curve on the structured
#                       frontier (python -m bayescomp.frontier ... --measure macs).
#   lenet5_dirichlet_budget
#                       lenet5_dirichlet (point switches) at given architectures chosen for
#                       multiply-adds: 70 % of a LeNet-5's are conv2's, which cost
#                       1,600 conv1 x conv2 channels, so conv1 is cut hardest and conv2 least:
#                       6-40-100 (535K, 4.3x fewer than dense; BC-GHS seed 0 needs 631K) and
#                       5-30-100 (361K, 6.4x fewer); and 6-40-100 retrained with the reference
#                       code's LeNet recipe, SGD 1e-3, momentum 0.9, weight decay 5e-4, constant
#                       (the experiment's: Adam 1e-3, no weight decay, decayed over the second
#                       half; 6-40-100 overfits under it: training accuracy 99.5 % by epoch 27).
#                       And widths chosen from the switches at a budget of 600,000 multiply-adds
#                       (method.budget.macs; below BC-GHS seed 0's 630,930, the fewest of any
#                       structured point within a point of the dense error): one share of every
#                       group (budget_600k_uniform: 10-23-230, 598,940) or one threshold on the
#                       switches relative to their group's uniform share (budget_600k_global).
#                       budget_600k_uniform retrained as a fine-tuning, at a tenth of the
#                       learning rate (1e-4): at 1e-3 the pruned network's first retraining
#                       epoch loses what the dense weights knew (test error 10.6 %, training
#                       accuracy 91 %) and the phase ends memorising (100 %) at 9.29 %.
#   lenet5_dirichlet_regularized
#                       lenet5_dirichlet (point switches) at 8-25-200 (517,200 multiply-adds,
#                       below the 520,120 of BC-GHS's fewest within a point of the dense error):
#                       the experiment's retraining (Adam 1e-3, no weight decay) and the same with
#                       an L2 penalty of 5e-4 on the weights (optimizer.weight_decay, the
#                       reference's retraining value, there under SGD). Why: under the
#                       experiment's recipe the wider pruned LeNet-5s reach training accuracy
#                       100 % and a loss below 1e-4 by the end of retraining (keep_0.5,
#                       budget_600k_*), an overfitting that a penalty on the weights may curb.
#   lenet5_vcnn_start   lenet5_vcnn (trained from scratch with the dense recipe; its conv
#                       saliencies all stay near 1) started from the seed's lenet5_dense run as
#                       the paper does (method.start_from), and with a proper Gaussian prior
#                       N(0, 0.1^2) on the saliencies instead of the tied one (a fixed pull of
#                       mu/0.01 per nat towards zero).
#   lenet5_ghs_local_scales, lenet300_ghs_local_scales
#                       lenet5_ghs / lenet300_ghs with the fix results/studies/lenet5_ghs_cause.md
#                       proposes (issue 23): the size of z in the local scales
#                       (scale_init=local), the scales' learning rate 10x (local_c10; local_c1:
#                       without it), groups pruned on the shrinkage statistic; 200 epochs as the
#                       experiments, thresholds within 0.5 points (the tolerance of the
#                       published recipe, which these runs were set beside). Since these seeds
#                       confirmed it, the fix is bc_ghs.yaml's default.
#   lenet5_vcnn_budget, lenet5_slimming_budget
#                       the finished lenet5_vcnn / lenet5_slimming run of each seed pruned to
#                       600,000 multiply-adds (method.budget) instead of its tau / percentile,
#                       over all layers at once (macs_600k_global) or one share of every layer
#                       (macs_600k_uniform), for a comparison of the three channel methods at
#                       lenet5_dirichlet_budget's budget: VCNN without retraining (its claim),
#                       slimming with its 50 fine-tuning epochs. No training is repeated.
#
# A *_dirichlet study retrains the seed's $runs_root/fashion_mnist/<model>_dense/seed<seed>;
# @DENSE@ in a variant's overrides stands for that run's directory. @RERUN@ in a variant's
# overrides: the variant re-evaluates a copy of the seed's finished <experiment> run.
#
# Usage: [SEEDS="0 1 2"] [VARIANTS="name ..."] bash experiments/fashion_mnist/study.sh STUDY
# (VARIANTS: run only these of the study's variants; the study's table lists every published one)
set -uo pipefail
cd "$(dirname "$0")/../.."
runs_root=${BAYESCOMP_RUNS:-$HOME/bayescomp-runs}
study=${1:?usage: study.sh STUDY (lenet5_ghs_tau0 | lenet300_gnj_100ep | lenet300_gnj_bc_recipe | lenet300_ghs_inputs | lenet5_dense_widths | lenet5_dirichlet_switches | lenet5_dirichlet_fractions | lenet5_dirichlet_budget | lenet5_dirichlet_regularized | lenet5_vcnn_start | lenet5_ghs_local_scales | lenet300_ghs_local_scales | lenet5_vcnn_budget | lenet5_slimming_budget)}
case "$study" in
  lenet5_ghs_tau0)
    experiment=lenet5_ghs_published  # run when it was lenet5_ghs's default
    variants=("tau0_1e-7:method.prior.tau0=1e-7" "tau0_1e-3:method.prior.tau0=1e-3"
              "tau0_1e-1:method.prior.tau0=1e-1") ;;
  lenet300_gnj_100ep)
    experiment=lenet300_gnj
    # data.preprocess pinned: the published runs used mean-image inputs, the recipe's default
    # before lenet300_gnj moved to [-1, 1]; rerunning reproduces them.
    variants=("epochs_100:trainer.epochs=100 data.preprocess=reference") ;;
  lenet300_gnj_bc_recipe)
    experiment=lenet300_gnj
    variants=("mean_image_inputs:data.preprocess=reference"
              "bc_tutorial:trainer.batch_size=128 optimizer.schedule=constant trainer.kl_warmup.start_epoch=0 trainer.kl_warmup.end_epoch=0 trainer.epochs=100") ;;
  lenet300_ghs_inputs)
    experiment=lenet300_ghs_published  # run when it was lenet300_ghs's default
    variants=("mean_image_inputs:data.preprocess=reference") ;;
  lenet5_dense_widths)
    experiment=lenet5_dense
    variants=("widths_8_16_40:model.widths=[8,16,40]" "widths_6_20_32:model.widths=[6,20,32]"
              "widths_10_12_50:model.widths=[10,12,50]" "widths_8_24_22:model.widths=[8,24,22]"
              "widths_6_40_100:model.widths=[6,40,100]") ;;
  lenet5_dirichlet_switches)
    experiment=lenet5_dirichlet
    variants=("integral:method.channel.mode=integral"
              "integral_init_logit_3:method.channel.mode=integral method.channel.init_logit=3"
              "integral_init_logit_20:method.channel.mode=integral method.channel.init_logit=20") ;;
  lenet5_dirichlet_fractions)
    experiment=lenet5_dirichlet
    variants=("keep_0.3:method.widths=null method.keep_fraction=0.3"
              "keep_0.4:method.widths=null method.keep_fraction=0.4"
              "keep_0.5:method.widths=null method.keep_fraction=0.5") ;;
  lenet5_dirichlet_budget)
    experiment=lenet5_dirichlet
    variants=("widths_6_40_100:method.widths=[6,40,100]" "widths_5_30_100:method.widths=[5,30,100]"
              "widths_6_40_100_sgd:method.widths=[6,40,100] optimizer=sgd method.retrain.schedule=constant"
              "budget_600k_uniform:method.widths=null method.budget.macs=600000 method.budget.allocate=uniform"
              "budget_600k_global:method.widths=null method.budget.macs=600000 method.budget.allocate=global"
              "budget_600k_uniform_ft_lr1e-4:method.widths=null method.budget.macs=600000 method.budget.allocate=uniform method.retrain.lr=1e-4 method.retrain.bias_lr=1e-4") ;;
  lenet5_dirichlet_regularized)
    experiment=lenet5_dirichlet
    variants=("widths_8_25_200:method.widths=[8,25,200]"
              "widths_8_25_200_wd5e-4:method.widths=[8,25,200] optimizer.weight_decay=5e-4") ;;
  lenet5_ghs_local_scales|lenet300_ghs_local_scales)
    # The fix set beside the recipe it was compared with (tolerance 0.5, the posterior bits).
    experiment=${study%_local_scales}_published
    local="method.posterior_init.scale_init=local method.posterior_init.prune_statistic=shrinkage"
    variants=("local_c10:$local method.posterior_init.scale_lr_multiplier=10" "local_c1:$local") ;;
  lenet5_vcnn_start)
    experiment=lenet5_vcnn
    variants=("from_dense:method.start_from=@DENSE@"
              "gaussian_prior_0.1:method.channel.prior=gaussian method.channel.prior_std=0.1") ;;
  lenet5_vcnn_budget|lenet5_slimming_budget)
    experiment=${study%_budget}
    variants=("macs_600k_uniform:@RERUN@ method.budget.macs=600000 method.budget.allocate=uniform"
              "macs_600k_global:@RERUN@ method.budget.macs=600000 method.budget.allocate=global") ;;
  *) echo "unknown study '$study'; known: lenet5_ghs_tau0, lenet300_gnj_100ep," \
       "lenet300_gnj_bc_recipe, lenet300_ghs_inputs, lenet5_dense_widths," \
       "lenet5_dirichlet_switches, lenet5_dirichlet_fractions, lenet5_dirichlet_budget," \
       "lenet5_dirichlet_regularized," \
       "lenet5_vcnn_start, lenet5_ghs_local_scales, lenet300_ghs_local_scales," \
       "lenet5_vcnn_budget, lenet5_slimming_budget" >&2
     exit 2 ;;
esac
for variant in "${variants[@]}"; do
  name=${variant%%:*}
  if [[ -n ${VARIANTS:-} && " $VARIANTS " != *" $name "* ]]; then
    continue
  fi
  read -ra overrides <<< "${variant#*:}"
  for seed in ${SEEDS:-0}; do
    dense="$runs_root/fashion_mnist/${experiment%%_*}_dense/seed$seed"
    seed_overrides=("${overrides[@]//@DENSE@/$dense}")
    run_dir="$runs_root/fashion_mnist/studies/$study/$name/seed$seed"
    published="results/studies/fashion_mnist/$study/$name/seed$seed"
    if [[ " ${seed_overrides[*]} " == *" @RERUN@ "* ]]; then
      # A re-evaluation: the seed's finished run, copied, is rerun with the variant's pruning
      # settings, so its training is restored and only the decision (and fine-tuning) runs.
      finished="$runs_root/fashion_mnist/$experiment/seed$seed"
      kept=()
      for override in "${seed_overrides[@]}"; do
        [[ $override == @RERUN@ ]] || kept+=("$override")
      done
      seed_overrides=("${kept[@]}")
      if [[ ! -d $run_dir ]]; then
        if [[ ! -f $finished/metrics.json ]]; then
          echo "study $study/$name seed $seed re-evaluates $finished, which has no finished" \
               "run; run its experiment first (run_lenet.sh $experiment)" >&2
          continue
        fi
        mkdir -p "$(dirname "$run_dir")" && cp -r "$finished" "$run_dir"
      fi
    fi
    pretrained=()
    if [[ $experiment == *_dirichlet ]]; then
      pretrained=("method.pretrained_run=$dense")
    fi
    if python -m bayescomp.run +experiment="$experiment" data=fashion_mnist seed="$seed" \
        trainer.progress_bar=false hydra.run.dir="$run_dir" "${pretrained[@]}" "${seed_overrides[@]}"; then
      if bash experiments/fashion_mnist/publish_run.sh "$run_dir" "$published" \
          && [[ $experiment == *_dirichlet ]]; then
        python -m bayescomp.ranking_control "$run_dir" --out "$published/ranking_control.json"
      fi
    else
      echo "run $study/$name seed $seed failed (exit $?); see $run_dir/run.log" >&2
    fi
  done
done
python -m bayescomp.tables "results/fashion_mnist/$experiment" \
  "results/studies/fashion_mnist/$study" --out "results/studies/$study.md"
