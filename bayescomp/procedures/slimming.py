r"""Network slimming: L1 on channel scales, one global percentile threshold, fine-tuning.

Liu, Li, Shen, Huang, Yan & Zhang, "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017 (arXiv:1708.06519), the deterministic baseline of the channel methods.

1. **Sparsity training** (phase ``train``), from scratch as the paper: every channel factor γ
   (BatchNorm's scale, ``method.norm.kind: slimming``, :class:`~bayescomp.nn.slimming_norm.
   SlimmingBatchNorm`, initialised to the reference's 0.5; in LeNet-5, which has no BatchNorm, a
   point scale after the channel's ReLU and pool, ``method.channel.kind: slimming``,
   :class:`~bayescomp.nn.slimming_scale.SlimmingScale`, initialised to 1) carries an L1 penalty
   written as a Laplace prior on a point estimate (:mod:`bayescomp.priors.laplace`):

   .. math::

       \mathcal L = \frac1B\sum_{n\in\text{batch}} -\log p(y_n\mid x_n)
                    + \frac{N s\sum|\gamma|}{N}
                  = \text{CE}_\text{mean} + s\sum|\gamma|,

   the loop's objective at β = 1 from the first step (the reference adds s·sign(γ) to every
   batch's gradient; no warm-up), s = ``method.norm.penalty`` (the paper's 1e-4 for VGG, 1e-5
   for ResNets) or ``method.channel.penalty``, with the run's optimiser for ``trainer.epochs``.

2. **Pruning**: one global threshold t over the |γ| of every prunable channel, the value below
   which the fraction ``method.prune.percent`` of them lies, keeping |γ| > t
   (:func:`bayescomp.channel_selection.slimming_keep`: a layer keeps at least its largest |γ|, so
   no layer is emptied whatever the percentile). The percentile is taken over the channels of
   the groups the method prunes (``method.prune.groups``,
   :mod:`bayescomp.procedures.channel_pruning`; a group with several BatchNorms scores a
   channel by its largest |γ|), so ``percent`` is the share of *prunable* channels removed. (The
   reference's percentile for its ResNet is over every BatchNorm, including those whose channels
   it does not remove.) Or, with ``method.budget.macs``, the same |γ| ranked against a
   multiply-add budget instead of a percentile (:func:`bayescomp.procedures.channel_pruning.
   budget_keep`).

3. **Fine-tuning** (phase ``finetune-<kept channels>``): the pruned network, its scales folded
   into plain BatchNorms (a BatchNorm already) or into the consumers' input rows (LeNet-5),
   the removed channels cut out of producers and consumers, its kept weights, biases and
   BatchNorm parameters trained with the masks fixed and no penalty, for
   ``method.finetune.epochs`` (null: ``trainer.epochs``, the paper's "same epochs as training")
   with the run's optimiser and schedule (``method.finetune.lr`` overrides the rate).

4. **Artifacts**, as every channel method: counting dense → pruned, the errors before pruning,
   after pruning and after fine-tuning, the quantized network (float32 point weights) for
   ``python -m bayescomp.compress``.

``metrics.json`` gets ``slimming`` (s, percent or budget, the threshold, γ per factor module,
kept widths and channels per group, the errors) and ``counting``. Rerunning in the same
directory skips finished phases; another ``method.prune.percent`` or ``method.budget`` on a
finished run reuses the sparsity training and fine-tunes the new channels in a phase of their
own.

Entry point: :func:`run` (procedure ``slimming``, ``conf/method/slimming.yaml``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from bayescomp import channel_selection, runs
from bayescomp.errors import ConfigError
from bayescomp.loop import Phase, TrainingRun
from bayescomp.models.graph import channel_graph
from bayescomp.nn.slimming_norm import SlimmingBatchNorm
from bayescomp.nn.slimming_scale import SlimmingScale
from bayescomp.procedures import channel_pruning as cp

log = logging.getLogger(__name__)

SCALE_TYPES = (SlimmingBatchNorm, SlimmingScale)

#: ``method.prune.percent`` when the config leaves it out (the reference's ResNet value).
DEFAULT_PERCENT = 0.4


def scale_of(module: nnx.Module) -> np.ndarray:
    """γ of a slimming BatchNorm or scale module."""
    return np.asarray(module.scale[...], np.float64)


def group_scores(factors: Mapping[str, Mapping[str, nnx.Module]]) -> dict[str, np.ndarray]:
    """|γ| per group: the largest over the group's factor modules."""
    return {group: np.max(np.stack([np.abs(scale_of(m)) for m in modules.values()]), axis=0)
            for group, modules in factors.items()}


def decide(graph, factors, percent: float) -> tuple[dict[str, np.ndarray], float | None]:
    """Keep vectors by group and the global threshold t (``None``: nothing below it)."""
    scores = group_scores(factors)
    threshold = channel_selection.slimming_threshold(scores, percent)
    keep = channel_selection.slimming_keep(scores, percent)
    return cp.group_keep(graph, {group: {"score": k} for group, k in keep.items()}), threshold


def _percent(cfg: DictConfig) -> float:
    value = (cfg.method.get("prune") or {}).get("percent")
    percent = DEFAULT_PERCENT if value is None else float(value)
    if not 0.0 <= percent < 1.0:
        raise ConfigError(f"method.prune.percent={value!r} must be in [0, 1): the share of the "
                          "prunable channels to remove, e.g. 0.4")
    return percent


def run(cfg: DictConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Network slimming of ``cfg.model`` on ``cfg.data`` (module docstring).

    Rerunning in the same ``workdir`` resumes (finished phases are restored, not retrained).
    Writes ``metrics.json`` (keys as every run, plus ``slimming`` and ``counting``),
    ``quantized_network.npz``, ``config.yaml`` and TensorBoard events.

    Args:
        cfg: The composed configuration (``conf/method/slimming.yaml``).
        workdir: The run directory.

    Returns:
        The metrics.
    """
    workdir = runs.prepare_run_directory(cfg, workdir)
    method = cfg.method
    if (method.get("norm") or {}).get("kind") != "slimming" and \
            (method.get("channel") or {}).get("kind") != "slimming":
        raise ConfigError("the slimming procedure needs method.norm.kind=slimming (BatchNorm "
                          "networks) and/or method.channel.kind=slimming (LeNet-5) "
                          "(conf/method/slimming.yaml)")
    mode = cp.group_mode(cfg)
    percent = _percent(cfg)
    dataset = runs.load_run_dataset(cfg)
    n_train = int(dataset.x_train.shape[0])
    # The L1 is per example (s·Σ|γ| added to the mean cross-entropy), so its Laplace prior
    # needs N, which only the data know.
    model = runs.build_model(cp.with_n_train(cfg, n_train), dataset.x_train.shape[1:],
                             dataset.num_classes, int(cfg.seed))
    factors = cp.prunable_factors(model, SCALE_TYPES, mode)
    input_shape = tuple(int(d) for d in dataset.x_train.shape[1:])
    budget = cp.budget_settings(cfg)
    cp.check_budget(cfg, model, input_shape, factors)
    training = TrainingRun(cfg, workdir, dataset, resumable=cp.RESUMABLE_CHANGES)
    epochs = int(cfg.trainer.epochs)
    finetune_epochs = cp.phase_epochs((method.get("finetune") or {}).get("epochs"), cfg)
    try:
        # 1. Sparsity training: the penalty at full weight from the first step.
        training.fit(model, Phase(
            cp.TRAIN_PHASE, epochs, optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
            key=cp.phase_key(cfg, cp.TRAIN_PHASE), kl_weight=lambda epoch: 1.0,
            resumable=cp.RESUMABLE_CHANGES + cp.LATER_PHASE_SETTINGS,
            record=_record))
        trained_error = training.error(model)
        # 2. One global threshold; the scales folded into a plain network, channels cut.
        plain = cp.plain_network(cfg, model, dataset)
        graph = channel_graph(plain)
        if budget is None:
            keep, threshold = decide(graph, factors, percent)
        else:  # the same |γ|, ranked against a multiply-add budget instead of a percentile
            keep, threshold = cp.budget_keep(cfg, plain, input_shape, group_scores(factors)), None
        masks = cp.pruned_masks(plain, keep)
        cp.apply_masks_in_place(plain, masks)
        pruned_error = training.error(plain)
        summary = cp.keep_summary(keep)
        log.info("slimming: test error %.2f %% before pruning, %.2f %% after pruning %d of %d "
                 "prunable channels (%s); kept widths %s", trained_error, pruned_error,
                 summary["pruned_channels"], summary["prunable_channels"],
                 f"|γ| <= {threshold}" if budget is None
                 else f"budget {budget[0]:,} multiply-adds, {budget[1]}", summary["kept_widths"])
        # 3. Fine-tuning of the pruned network.
        training.fit(plain, cp.finetune_phase(cfg, masks, keep, finetune_epochs))
    finally:
        training.close()
    finetuned_error = training.error(plain) if finetune_epochs else None
    final_error = pruned_error if finetuned_error is None else finetuned_error
    modules = {path: module for per in factors.values() for path, module in per.items()}
    info = {
        "groups": mode,
        "penalty": {path: float(1.0 / (module.prior.scale * n_train))
                    for path, module in modules.items()},
        "percent": percent if budget is None else None,
        "threshold": threshold,
        "budget": None if budget is None else {"macs": budget[0], "allocate": budget[1]},
        **summary,
        "scales": {path: scale_of(module).tolist() for path, module in modules.items()},
        "error_before_pruning": trained_error,
        "error_after_pruning": pruned_error,
        "finetune_epochs": finetune_epochs,
        "error_after_finetuning": finetuned_error,
    }
    return cp.finish(cfg, workdir, training=training, dataset=dataset, plain=plain, keep=keep,
                     masks=masks, test_error=trained_error, final_error=final_error,
                     extra={"slimming": info})


def _record(model) -> dict[str, float]:
    """Per-epoch history entries: the L1 penalty term (nats) and the mean |γ|."""
    penalty, total, count = 0.0, 0.0, 0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, SCALE_TYPES):
            penalty += float(module.kl())
            gamma = np.abs(scale_of(module))
            total, count = total + float(gamma.sum()), count + gamma.size
    return {"l1_penalty": penalty, "mean_abs_scale": total / max(count, 1)}
