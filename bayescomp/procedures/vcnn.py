r"""Variational CNN pruning: Gaussian channel saliencies trained by the ELBO, pruned without retraining.

Zhao, Ni, Zhang, Zhao, Zhang & Tian, "Variational Convolutional Neural Network Pruning", CVPR
2019 (CVF open access; no arXiv version). Every prunable channel c carries a saliency
:math:`\gamma_c` with posterior :math:`q(\gamma_c) = \mathcal N(\mu_c, \sigma_c^2)`:

* in a BatchNorm network, inside BatchNorm, y = γ(x̂ + β̃) (``method.norm.kind: vcnn``,
  :class:`~bayescomp.nn.saliency_norm.SaliencyBatchNorm`);
* in LeNet-5, which has no BatchNorm, as a factor after the channel's ReLU (and pool)
  (``method.channel.kind: vcnn``, :class:`~bayescomp.nn.saliency_scale.SaliencyScale`).

1. **Training** (phase ``train``). Weights, biases, β̃ and the saliencies (μ, log σ²) train
   jointly on the loop's negative ELBO per training example,

   .. math::

       \mathcal L = \frac1B\sum_{n\in\text{batch}} -\log p(y_n\mid x_n, \gamma_n)
                    + \beta_t\,\frac{\sum_c \mathrm{KL}(q(\gamma_c)\,\|\,p(\gamma_c))}{N},

   γ drawn per example with the reparameterisation γ = μ + σε (the weights are point
   estimates, as in the paper), the KL closed-form and zero-mean (default: the tied prior,
   μ²/(2σ²); or ``prior: gaussian`` with ``prior_std``), β_t the run's KL warm-up
   (``trainer.kl_warmup``), with the run's optimiser and ``trainer.epochs``.

   *Start.* The paper trains the saliencies jointly with the weights of a network that has
   been trained before. Here ``method.start_from: null`` (the default) trains from scratch with
   the dense recipe of the same experiment (same optimiser, schedule and epochs, so the run is
   directly comparable to its ``*_dense`` baseline and needs nothing else), and
   ``method.start_from=DIR`` of a finished ``<model>_dense`` run starts from its weights and
   BatchNorms (μ = γ, β̃ = β/γ: :func:`bayescomp.nn.fold.load_plain`; LeNet-5's saliencies start
   at μ = 1, the identity), which is the paper's setting.

2. **Pruning decision** (``method.prune``): channel c is removed when :math:`|\mu_c| < \tau`
   (:func:`bayescomp.channel_selection.vcnn_keep`; a layer keeps at least its largest |μ|).
   The paper removes a channel when its posterior is concentrated at zero, |μ| < τ *and*
   σ < θ; ``method.prune.theta`` adds that condition, but the default (``null``) leaves it
   out, because under the tied prior nothing pulls σ of a switched-off channel down: the KL
   μ²/(2σ²) is flat in σ at μ = 0, σ starts at 0.05, above the third-party θ = 0.01, and the
   deployed posterior-mean network multiplies the channel by μ alone, so σ does not change what
   pruning it does. (Measured: LeNet-5 on Fashion-MNIST, seed 0, ended with 166 of fc1's 500
   channels at |μ| < 0.02, every σ ≥ 0.065; θ = 0.01 pruned none of them, and removing them
   left the test error at 8.05 %.) The paper does not print τ and θ; τ = 0.02 is the
   third-party drop-in BatchNorm's. Or, with ``method.prune.select: {tolerance, examples}``,
   τ is chosen on training data as BC-GHS's thresholds are (:mod:`bayescomp.threshold_selection`):
   one global τ (as slimming's global threshold is one for γ), the largest whose pruned network
   keeps the error of
   ``examples`` seeded training examples within ``tolerance`` points of the unpruned network's,
   found by bisection over the midpoints between consecutive |μ| of the eligible channels (those
   with σ < θ where θ is set; pruning one more channel per candidate); θ stays the configured
   one. Or, with ``method.budget.macs``, no τ: the channels ranked by |μ| and the widest
   network within that many multiply-adds kept (:func:`bayescomp.procedures.channel_pruning.
   budget_keep`). Which groups are prunable (``method.prune.groups``: block-internal channels,
   or residual streams too) is :mod:`bayescomp.procedures.channel_pruning`'s rule; only
   those channels carry saliencies (:meth:`bayescomp.nn.factory.LayerFactory.norm`).

   *One scale across layers?* Not where the channel's consumer is followed by another
   batch-statistics BatchNorm (a ResNet block's ``bn1``, every VGG BatchNorm but the last):
   scaling one BatchNorm's μ and σ by c > 0 changes neither the likelihood (ReLU is positively
   homogeneous, the next BatchNorm divides c away) nor the tied KL μ²/(2σ²). Nothing in the
   objective ties the layers' scales together; they share their start (μ = 1) and drift apart
   by training alone, so a global τ on |μ| (fixed, selected, or ``allocate: global``) compares
   scales the model does not pin down. Two ways out, both without retraining (``metrics.json``
   keeps every μ and σ, and a finished run can be re-evaluated): a per-group rule
   (``method.budget.allocate=uniform``), or a statistic the scaling leaves alone,
   ``method.prune.statistic=snr``: τ then thresholds (and budgets rank) the signal-to-noise
   ratio |μ|/σ, which is c|μ|/(cσ) (:func:`bayescomp.channel_selection.vcnn_score`; sparse
   variational dropout prunes on the same ratio, as log α = log σ²/μ²). The default stays the
   paper's |μ|.

3. **No retraining** (the paper's claim): the pruned network is the trained one's posterior-mean
   network, saliencies folded into plain BatchNorms (scale μ, shift μβ̃) or into the
   consumers' input rows (LeNet-5), with the removed channels cut out of their producers and
   consumers. An optional **fine-tuning** phase (``method.finetune.epochs``, default 0) trains
   the kept weights, biases and BatchNorm parameters of that plain network with the masks fixed.

4. **Diagnostic: BatchNorm statistics.** γ is sampled in training, so every BatchNorm after a
   saliency collects its running statistics from noisier activations than the posterior-mean
   network (γ = μ) produces; nothing in the paper re-estimates them. ``metrics.json`` reports
   the errors before and after pruning as the paper's procedure gives them, and beside them the
   same two networks with their BatchNorm statistics re-estimated on 2,000 seeded training images
   (:func:`bayescomp.nn.norm.reestimate_statistics`, "adaptive BatchNorm"; nothing trained), so
   the cost of the mismatch, and of the stale statistics after channels are removed, is
   visible. The network that is exported and compressed keeps the trained statistics.

5. **Artifacts**, as every channel method: the quantized network (float32 point weights; VCNN
   derives no bit widths), counting dense → pruned, the errors before pruning, after pruning and
   after fine-tuning, and ``quantized_network.npz`` for ``python -m bayescomp.compress``.

``metrics.json`` gets ``vcnn`` (τ, θ, the selection's trace, μ and σ per saliency module, the KL
per module, kept widths and channels per group, the errors) and ``counting``. Rerunning in the
same directory skips finished phases; a finished run rerun with other ``method.prune`` or
``method.budget`` settings is re-evaluated without training, except ``method.prune.groups``,
which decides which BatchNorms carry saliencies and so what was trained (a rerun with another
is refused, naming it: :data:`RESUMABLE_CHANGES`) (fine-tuning, if any, is its own
phase per set of kept channels).

Entry point: :func:`run` (procedure ``vcnn``, ``conf/method/vcnn.yaml``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from bayescomp import channel_selection, objectives, pretrained, runs, threshold_selection
from bayescomp.errors import ConfigError
from bayescomp.loop import Phase, TrainingRun
from bayescomp.models.graph import batch_norms, channel_graph
from bayescomp.nn.norm import reestimate_statistics
from bayescomp.nn.saliency_norm import SaliencyBatchNorm
from bayescomp.nn.saliency_scale import SaliencyScale
from bayescomp.procedures import channel_pruning as cp

log = logging.getLogger(__name__)

SALIENCY_TYPES = (SaliencyBatchNorm, SaliencyScale)


def thresholds(cfg: DictConfig) -> tuple[float, float | None]:
    """``(τ, θ)`` of ``method.prune`` (τ default: the third-party code's 0.02; θ default
    ``None``: no condition on σ)."""
    prune = cfg.method.get("prune") or {}
    tau = prune.get("tau")
    theta = prune.get("theta")
    tau = channel_selection.VCNN_TAU if tau is None else float(tau)
    theta = None if theta is None else float(theta)
    for name, value in (("tau", tau), ("theta", theta)):
        if value is not None and not (value >= 0.0 and math.isfinite(value)):
            raise ConfigError(f"method.prune.{name}={value} must be finite and >= 0 "
                              "(conf/method/vcnn.yaml)")
    return tau, theta


def statistic(cfg: DictConfig) -> str:
    """``method.prune.statistic``: what τ thresholds and budgets rank, ``mean`` (|μ|, the
    paper's; the default) or ``snr`` (|μ|/σ) (:func:`bayescomp.channel_selection.vcnn_score`;
    an unknown name is refused up front by :mod:`bayescomp.settings`)."""
    return (cfg.method.get("prune") or {}).get("statistic") or "mean"


def saliencies(factors: Mapping[str, Mapping[str, nnx.Module]]
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """μ and log σ² of every saliency module of the prunable groups, by module path."""
    means, log_vars = {}, {}
    for modules in factors.values():
        for path, module in modules.items():
            means[path] = np.asarray(module.saliency_mean[...], np.float64)
            log_vars[path] = np.asarray(module.saliency_log_var[...], np.float64)
    return means, log_vars


def scores(factors, statistic_name: str = "mean") -> dict[str, np.ndarray]:
    """The statistic τ thresholds (|μ| or |μ|/σ), by saliency module path."""
    means, log_vars = saliencies(factors)
    return {p: channel_selection.vcnn_score(means[p], log_vars[p], statistic_name)
            for p in means}


def decide(graph, factors, tau: float, theta: float | None, statistic_name: str = "mean"
           ) -> dict[str, np.ndarray]:
    """Keep vectors by group at (τ, θ): per module :func:`~bayescomp.channel_selection.
    vcnn_keep`, combined per group by :func:`~bayescomp.procedures.channel_pruning.group_keep`."""
    means, log_vars = saliencies(factors)
    per_module = channel_selection.vcnn_keep(means, log_vars, tau=tau, theta=theta,
                                             statistic=statistic_name)
    return cp.group_keep(graph, {group: {path: per_module[path] for path in modules}
                                 for group, modules in factors.items()})


def select_tau(graph, factors, theta: float | None, error_of, tolerance: float,
               statistic_name: str = "mean") -> tuple[float, dict[str, Any]]:
    """The largest τ (at fixed θ) whose pruned network's selection error is within
    ``tolerance`` points of the unpruned one's (module docstring).

    Args:
        graph: The model's channel graph.
        factors: The saliency modules of the prunable groups.
        theta: θ (``None``: every channel is eligible).
        error_of: ``keep by group -> selection-subset error (%)``.
        tolerance: Allowed rise in percentage points.
        statistic_name: What τ thresholds: ``"mean"`` (|μ|) or ``"snr"`` (|μ|/σ).

    Returns:
        ``(τ, trace)``; τ = 0 prunes nothing.
    """
    _, log_vars = saliencies(factors)
    score = scores(factors, statistic_name)
    eligible = np.concatenate([score[p][np.exp(0.5 * log_vars[p]) < theta]
                               if theta is not None else score[p] for p in score])
    everything = {group: np.ones(graph.sizes[group], bool) for group in factors}
    reference = float(error_of(everything))
    values = np.unique(eligible)
    # Candidate i prunes the eligible channels with |μ| below it: 0 prunes none, then one more
    # distinct |μ| per step (midpoints, never on a value), the last one all of them.
    candidates = np.concatenate([[0.0], (values[:-1] + values[1:]) / 2,
                                 [values[-1] * 2 + 1.0] if values.size else []])
    bound = reference + float(tolerance)
    lo, hi, best_error, evaluations = 0, len(candidates) - 1, reference, 1
    while lo < hi:  # the last candidate meeting the bound; candidate 0 always does
        mid = (lo + hi + 1) // 2
        err = float(error_of(decide(graph, factors, float(candidates[mid]), theta,
                                    statistic_name)))
        evaluations += 1
        if err <= bound:
            lo, best_error = mid, err
        else:
            hi = mid - 1
    tau = float(candidates[lo])
    log.info("τ selection (%s): τ = %.4g (θ = %s), selection error %.3f %% (unpruned %.3f %%, "
             "bound %.3f %%, %d evaluations)", statistic_name, tau, theta, best_error, reference,
             bound, evaluations)
    return tau, {"statistic": statistic_name,
                 "reference_error": reference, "tolerance": float(tolerance), "bound": bound,
                 "tau": tau, "error": best_error, "evaluations": evaluations}


def subset_error_of(cfg: DictConfig, plain: nnx.Module, dataset, evaluator, examples: int):
    """``error_of(keep)``: the error (%) of ``plain`` with the channels ``~keep`` cut, on the
    seeded training subset thresholds are chosen on (never the test set)."""
    x, y = threshold_selection.selection_subset(dataset.x_train, dataset.y_train, examples,
                                                int(cfg.seed))
    x, y = jnp.asarray(x), jnp.asarray(y)
    kernels = {name: layer.posterior.weight[...]
               for name, layer in objectives.variational_layers(plain)}

    def error_of(keep) -> float:
        masks = cp.pruned_masks(plain, keep)
        try:
            cp.apply_masks_in_place(plain, masks)
            return evaluator.error(plain, x, y)
        finally:
            for name, layer in objectives.variational_layers(plain):
                layer.posterior.weight[...] = kernels[name]

    return error_of


#: Settings a run directory may be rerun with (:func:`bayescomp.runs.trajectory_config`): the
#: channel methods' (:data:`bayescomp.procedures.channel_pruning.RESUMABLE_CHANGES`) but for
#: ``method.prune.groups``: in a ResNet it decides whether the streams' BatchNorms carry
#: saliencies (:meth:`bayescomp.nn.factory.LayerFactory.norm`), so a checkpoint trained under one
#: value has other parameters than the model built under the other.
RESUMABLE_CHANGES = tuple(k for k in cp.RESUMABLE_CHANGES if k != "method.prune.") + tuple(
    f"method.prune.{key}{suffix}"
    for key in ("threshold", "per_layer", "tau", "theta", "select", "statistic")
    for suffix in ("", "."))

#: Training images the diagnostic re-estimation of BatchNorm statistics uses (module docstring).
RESTAT_EXAMPLES = 2000


def reestimated_error(cfg: DictConfig, plain: nnx.Module, dataset, training) -> float | None:
    """Test error of a copy of ``plain`` whose BatchNorm statistics are re-estimated on
    :data:`RESTAT_EXAMPLES` seeded training images (:func:`bayescomp.nn.norm.
    reestimate_statistics`); ``None`` for a network without BatchNorms. ``plain`` is unchanged."""
    if not batch_norms(plain):
        return None
    images, _ = threshold_selection.selection_subset(dataset.x_train, dataset.y_train,
                                                     RESTAT_EXAMPLES, int(cfg.seed))
    copy = nnx.clone(plain)
    reestimate_statistics(copy, jnp.asarray(images))
    return training.error(copy)


def _kl_weight(cfg: DictConfig, epochs: int):
    warmup = cfg.trainer.kl_warmup
    return lambda epoch: objectives.kl_weight(
        epoch, objectives.warmup_epoch(warmup.start_epoch, epochs),
        objectives.warmup_epoch(warmup.end_epoch, epochs))


def run(cfg: DictConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Variational CNN pruning of ``cfg.model`` on ``cfg.data`` (module docstring).

    Rerunning in the same ``workdir`` resumes (finished phases are restored, not retrained).
    Writes ``metrics.json`` (keys as every run, plus ``vcnn`` and ``counting``),
    ``quantized_network.npz``, ``config.yaml`` and TensorBoard events.

    Args:
        cfg: The composed configuration (``conf/method/vcnn.yaml``).
        workdir: The run directory.

    Returns:
        The metrics.
    """
    workdir = runs.prepare_run_directory(cfg, workdir)
    method = cfg.method
    if (method.get("norm") or {}).get("kind") != "vcnn" and \
            (method.get("channel") or {}).get("kind") != "vcnn":
        raise ConfigError("the vcnn procedure needs method.norm.kind=vcnn (BatchNorm networks) "
                          "and/or method.channel.kind=vcnn (LeNet-5) (conf/method/vcnn.yaml)")
    mode = cp.group_mode(cfg)
    tau, theta = thresholds(cfg)
    statistic_name = statistic(cfg)
    dataset = runs.load_run_dataset(cfg)
    model = runs.build_model(cfg, dataset.x_train.shape[1:], dataset.num_classes, int(cfg.seed))
    factors = cp.prunable_factors(model, SALIENCY_TYPES, mode)
    input_shape = tuple(int(d) for d in dataset.x_train.shape[1:])
    budget = cp.budget_settings(cfg)
    if budget is not None and (method.get("prune") or {}).get("select") is not None:
        raise ConfigError("method.budget.macs and method.prune.select both choose what VCNN "
                          "prunes; set one of them to null")
    if statistic_name == "snr" and theta is not None:
        raise ConfigError(f"method.prune.theta={theta} compares sigma in absolute units, which "
                          "method.prune.statistic=snr is meant to be free of; set theta to null")
    if budget is not None and theta is not None:
        raise ConfigError(f"method.budget.macs ranks channels by their statistic alone, so "
                          f"method.prune.theta={theta} would be ignored; set it to null")
    cp.check_budget(cfg, model, input_shape, factors)
    started = pretrained.start_from(cfg, model)
    start = None if started is None else started["run"]
    training = TrainingRun(cfg, workdir, dataset, resumable=RESUMABLE_CHANGES,
                           start_from=start)
    if started is not None:
        pretrained.check_start(started, training.error(model))
    epochs = int(cfg.trainer.epochs)
    finetune_epochs = cp.phase_epochs((method.get("finetune") or {}).get("epochs", 0), cfg)
    try:
        # 1. Weights and saliencies, jointly, on the ELBO.
        training.fit(model, Phase(
            cp.TRAIN_PHASE, epochs, optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
            key=cp.phase_key(cfg, cp.TRAIN_PHASE), kl_weight=_kl_weight(cfg, epochs),
            resumable=RESUMABLE_CHANGES + cp.LATER_PHASE_SETTINGS,
            record=_record))
        trained_error = training.error(model)
        # 2. The decision, on the posterior-mean network folded into a plain one.
        plain = cp.plain_network(cfg, model, dataset)
        graph = channel_graph(plain)
        select = (method.get("prune") or {}).get("select")
        selection = None
        if select is not None:
            examples = int(select.get("examples") or threshold_selection.DEFAULT_EXAMPLES)
            tau, selection = select_tau(
                graph, factors, theta,
                subset_error_of(cfg, plain, dataset, training.evaluator, examples),
                float(select.tolerance), statistic_name)
        if budget is None:
            keep = decide(graph, factors, tau, theta, statistic_name)
        else:  # the statistic ranked against a multiply-add budget instead of the threshold τ
            score = scores(factors, statistic_name)
            tau = theta = None
            keep = cp.budget_keep(cfg, plain, input_shape, {
                group: np.max(np.stack([score[p] for p in modules]), axis=0)
                for group, modules in factors.items()})
        masks = cp.pruned_masks(plain, keep)
        restat_before = reestimated_error(cfg, plain, dataset, training)
        cp.apply_masks_in_place(plain, masks)
        pruned_error = training.error(plain)
        restat_after = reestimated_error(cfg, plain, dataset, training)
        summary = cp.keep_summary(keep)
        log.info("VCNN: test error %.2f %% with the saliency means, %.2f %% after pruning %d of "
                 "%d prunable channels (%s); kept widths %s", trained_error,
                 pruned_error, summary["pruned_channels"], summary["prunable_channels"],
                 f"τ = {tau:.4g}, θ = {theta}" if budget is None
                 else f"budget {budget[0]:,} multiply-adds, {budget[1]}", summary["kept_widths"])
        # 3. No retraining by default; optional fine-tuning of the pruned plain network.
        if finetune_epochs:
            training.fit(plain, cp.finetune_phase(cfg, masks, keep, finetune_epochs))
    finally:
        training.close()
    finetuned_error = training.error(plain) if finetune_epochs else None
    final_error = pruned_error if finetuned_error is None else finetuned_error
    means, log_vars = saliencies(factors)
    info = {
        "groups": mode,
        "prior": type(next(iter(next(iter(factors.values())).values())).prior).__name__,
        "start_from": start,
        "start_loaded_from": None if started is None else started["loaded_from"],
        "statistic": statistic_name,
        "tau": tau,
        "theta": theta,
        "selection": selection,
        "budget": None if budget is None else {"macs": budget[0], "allocate": budget[1]},
        **summary,
        "saliency_means": {p: m.tolist() for p, m in means.items()},
        "saliency_stds": {p: np.exp(0.5 * v).tolist() for p, v in log_vars.items()},
        "kl": {p: float(module.kl()) for modules in factors.values()
               for p, module in modules.items()},
        "error_before_pruning": trained_error,
        "error_after_pruning": pruned_error,
        # Diagnostics (module docstring, 4.): the same two networks with BatchNorm statistics
        # re-estimated on RESTAT_EXAMPLES training images; None without BatchNorms.
        "restat_examples": (None if restat_before is None
                            else min(RESTAT_EXAMPLES, int(dataset.x_train.shape[0]))),
        "error_before_pruning_statistics_reestimated": restat_before,
        "error_after_pruning_statistics_reestimated": restat_after,
        "finetune_epochs": finetune_epochs,
        "error_after_finetuning": finetuned_error,
    }
    return cp.finish(cfg, workdir, training=training, dataset=dataset, plain=plain, keep=keep,
                     masks=masks, test_error=trained_error, final_error=final_error,
                     extra={"vcnn": info})


def _record(model) -> dict[str, float]:
    """Per-epoch history entries: the saliency KL and the share of channels with
    |μ| < τ₀ = 0.02 (the default rule's prunable share, to watch it grow)."""
    total, prunable, kl = 0, 0, 0.0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, SALIENCY_TYPES):
            mu = np.abs(np.asarray(module.saliency_mean[...]))
            total += mu.size
            prunable += int((mu < channel_selection.VCNN_TAU).sum())
            kl += float(module.kl())
    return {"saliency_kl": kl, "prunable_share": prunable / max(total, 1)}
