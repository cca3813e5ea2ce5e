r"""Dirichlet pruning: importance switches on a frozen pretrained network, top-k channels, retraining.

Adamczewski & Park, "Dirichlet Pruning for Convolutional Neural Networks", AISTATS 2021
(arXiv:2011.05985). From a finished dense run (``method.pretrained_run``):

1. **Switches** (phase ``switches``). Every prunable channel group ``l`` of ``C_l`` channels gets
   an importance switch :math:`s_l \sim \mathrm{Dir}(\varphi_l)`, :math:`\varphi_l =
   \mathrm{softplus}(\theta_l)`, prior :math:`\mathrm{Dir}(\alpha_0\mathbf 1)`, that scales
   channel ``j`` by :math:`C_l s_{lj}` (:class:`~bayescomp.nn.switch.DirichletSwitch`; the
   factor ``C_l`` makes uniform switches the identity, so training starts from the pretrained
   network). The pretrained weights, biases and BatchNorms (γ, β and running statistics) are
   copied in (:func:`bayescomp.nn.fold.load_plain`) and frozen: only the
   :class:`~bayescomp.nn.switch.SwitchLogit` s train (``trains=SwitchLogit``: a selection by
   Variable type), with Adam. The objective is the loop's negative ELBO per training example,

   .. math::

       \mathcal L = \frac1B\sum_{n\in\text{batch}} -\log p(y_n\mid x_n, s_n)
                    + \beta_e\,\frac{\sum_l \mathrm{KL}(\mathrm{Dir}(\varphi_l)\,\|\,
                    \mathrm{Dir}(\alpha_0\mathbf 1))}{N},

   with one switch draw per example in the ``integral`` mode (the Monte Carlo estimate of the
   expected log-likelihood; the reference averages the logits of 5 draws shared by the batch) or
   the Dirichlet mean in the ``point`` mode (KL still on φ, not on the normalised mean as the
   reference's point script has it: ``methods/lenet5_switch_pointest.py`` of
   github.com/kamadforge/dirichlet_pruning).

   *Which mode* (``conf/method/dirichlet.yaml`` defaults to ``point``). The weights are frozen,
   so a sampled switch can only trade the network's fit against the noise its draws inject.
   The absolute noise on channel j grows with φ_j (the standard deviation of C s_j is about
   C√φ_j / Σφ for many channels), and it costs most on the channels the output depends on most;
   the integral objective lowers their φ_j, and ranks them last. The point switches see no
   noise: their gradient is the loss's sensitivity to each channel's scale. Measured by
   :mod:`bayescomp.ranking_control` (the pruned network's error against random channels of the
   same widths, before retraining), the integral switches of LeNet-5 and ResNet-20 rank worse
   than random, the point switches of LeNet-5 better and those of ResNet-20 as random.

   *KL scale.* The KL is divided by the number of training examples ``N``, the ELBO's own scale
   (:mod:`bayescomp.objectives`). The reference divides it by the batch size (100), i.e. weighs
   it ``N/B`` = 600 times more on MNIST -- had its annealing not kept it at ≈ 0 (next point).

   *KL annealing.* β grows linearly **per epoch** over the phase, β_e = min(1, (e+1)/A) for
   phase epoch ``e`` = 0, 1, … and ``A`` = ``method.switches.anneal_epochs`` (default: the
   phase's epochs), so the phase ends at the full KL (3 epochs: β = 1/3, 2/3, 1). The
   reference computes ``min(epoch, 8000·200)/(8000·200)`` from the *epoch* (a step counter's
   formula fed epochs), so its β never exceeds ≈ 2·10⁻⁶ and the prior is effectively off
   (``methods/lenet5_switch_integral.py`` of github.com/kamadforge/dirichlet_pruning).

   *Placement and groups.* The model places the switches (``layers.channel``): after the
   group's ReLU (and pool, which commutes with a positive scale), so nothing normalises them
   away (the reference's switch sits before a train-mode BatchNorm, which cancels it, in the
   same script). LeNet-5: conv1, conv2, fc1. The CIFAR VGGs (:mod:`bayescomp.models.vgg`):
   every conv's channels after its BatchNorm and ReLU, and fc1's. The CIFAR ResNets
   (:mod:`bayescomp.models.resnet`): the block-internal channels, ``relu(bn1(conv1(x)))`` of a
   basic block (and both inner groups of a bottleneck), the groups
   ``method.prune.groups=internal`` names for VCNN and slimming
   (:mod:`bayescomp.procedures.channel_pruning`); the residual streams get no switch (one
   channel index through a whole stage, written by several convs: no one place for its
   switch), so ``method.prune.groups=all`` is refused.

   *BatchNorm.* The phase runs every BatchNorm on its running averages
   (``batch_norm="running"``, :func:`bayescomp.loop.train_view`): it normalises by the
   pretrained statistics and never updates them, so the network the switches see is the
   pretrained network's evaluation function (batch statistics would make each switch's effect
   depend on the batch, and updating the statistics would change the network being pruned).

2. **Pruning decision.** The channels of group ``l`` are ranked by the switch mean
   :math:`\varphi_{lj}/\sum_k\varphi_{lk}` and the top :math:`k_l` kept
   (:func:`bayescomp.channel_selection.top_k_keep`), with

   * ``method.widths`` given: :math:`k_l` per prunable group, in the model's group order
     (``channel_modules()``; LeNet-5: conv1, conv2, fc1; ResNet-20: the nine
     ``stage<s>.<b>.conv1``). The paper's LeNet-5 result ``5-8-45-15`` has four numbers
     because its LeNet has a second hidden dense layer (10-20-100-25); ours (LeNet-5-Caffe,
     20-50-500) has three prunable groups, so its analogue is ``[5, 8, 45]``; or
   * ``method.keep_fraction`` given: :math:`k_l = \lceil f C_l\rceil` in every group
     (:func:`bayescomp.channel_selection.fraction_widths`), the switches choosing only *which*
     channels stay. Switches trained for a few epochs can rank channels well and still stay
     close to uniform in value (the point switches of ``results/studies/
     lenet5_dirichlet_switches.md``), where a rule on their values keeps nearly everything; or
   * ``method.budget.macs`` given: the widest network within that many multiply-adds per
     example (:func:`bayescomp.channel_selection.budget_widths`): one share of every group
     (``method.budget.allocate: uniform``) or one global threshold on the switches relative to
     their group's uniform share, :math:`C_l s_{lj}` (``global``); or
   * all null: :math:`k_l` chosen from the switches, the fewest channels whose
     means sum to at least ``method.mass`` of the layer's total
     (:func:`bayescomp.channel_selection.mass_widths`; default 0.95). The paper supplies the
     widths by hand and has no automatic rule.

3. **Retraining** (phase ``retrain``). The switches are *dropped*, not folded: the pruned
   network is the pretrained dense network with the removed channels cut out of their producers
   and consumers (:func:`bayescomp.pruning.apply_group_masks`), and its kept weights, biases and
   BatchNorm γ, β are retrained with the masks fixed, with the run's optimiser (its momentum and
   weight decay) at ``method.retrain.lr`` (``bias_lr`` for biases and β) on the schedule
   ``method.retrain.schedule``, BatchNorm in its training mode (batch statistics, running
   averages updated), as the dense recipe trains. This is what the reference does (it loads the
   pretrained weights, zeroes the dropped channels and retrains with masked gradients); folding
   the switch means :math:`C_l s_{lj}` into the consumers would start the retraining from the
   switch-trained function instead, which the paper does not describe. The error "after
   pruning" is measured before the retraining, with the pretrained running statistics.

4. **The quantized network**: the retrained point weights in their float32 values (a point
   weight has posterior variance 0, which :func:`bayescomp.compression.quantize.quantize` turns
   into the full 23 significand bits, as for the dense runs: Dirichlet pruning derives no bit
   widths), and the exported, physically smaller network.

``metrics.json`` gets, besides the keys every run has, ``dirichlet`` (switch means and the
:math:`C_l s_l` values per group, kept widths and channel indices, KL per group, the errors
with the mean switches, after pruning and after retraining) and ``counting`` (parameters and
multiply-adds of the dense and the pruned network, :mod:`bayescomp.counting`).

Every phase goes through :meth:`bayescomp.loop.TrainingRun.fit`, with checkpoints per phase:
rerunning in the same directory skips finished phases, recomputes the pruning decision from the
restored switches (it is a deterministic function of them) and resumes an unfinished phase.

Entry point: :func:`run` (procedure ``dirichlet``, ``conf/method/dirichlet.yaml``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from bayescomp import channel_selection, counting, metrics, models, pretrained, runs
from bayescomp.compression import quantize as quantize_lib
from bayescomp.errors import ConfigError
from bayescomp.loop import Phase, TrainingRun
from bayescomp.nn import fold
from bayescomp.nn.norm import NormBias, NormScale
from bayescomp.nn.switch import SwitchLogit
from bayescomp.posteriors.variables import Bias, PointWeight
from bayescomp.procedures import channel_pruning

log = logging.getLogger(__name__)

SWITCH_PHASE = "switches"
RETRAIN_PHASE = "retrain"

#: ``method.mass`` when the config leaves it out: the switches' share of importance kept.
DEFAULT_MASS = 0.95


# --------------------------------------------------------------------------------------------
# Pieces


def kl_weight(phase_epoch: int, anneal_epochs: int) -> float:
    """β of phase epoch ``phase_epoch`` (0-based): ``min(1, (e+1)/A)``, linear per epoch.

    ``A = 0`` gives β = 1 from the start. The last epoch of an ``A``-epoch phase has β = 1.
    """
    if anneal_epochs <= 0:
        return 1.0
    return min(1.0, (int(phase_epoch) + 1) / int(anneal_epochs))


def switches_of(model: nnx.Module) -> dict[str, nnx.Module]:
    """The model's channel modules by channel group (``model.channel_modules()``).

    Raises:
        ConfigError: The model has no channel modules (it does not support Dirichlet pruning,
            or the method has no ``channel`` section).
    """
    modules = fold.channel_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no channel switches; Dirichlet pruning "
                          "needs a model with channel_modules() (LeNet-5, the CIFAR ResNets and "
                          "VGGs) and method.channel.kind=dirichlet")
    return modules


def check_groups(cfg: DictConfig) -> None:
    """Refuse ``method.prune.groups=all``: the switches sit on the block-internal groups only.

    Raises:
        ConfigError: ``method.prune.groups`` is not ``internal``.
    """
    mode = channel_pruning.group_mode(cfg)
    if mode != "internal":
        raise ConfigError(f"method.prune.groups={mode}: Dirichlet pruning switches the groups "
                          "written by one layer (a ResNet's block-internal channels) and has no "
                          "switch on a residual stream; use method.prune.groups=internal")


def switch_model(cfg: DictConfig, dense: nnx.Module, input_shape, num_classes: int
                 ) -> nnx.Module:
    """The network with switches, the pretrained ``dense`` network's weights, biases and
    BatchNorms (γ, β, running statistics) loaded (:func:`bayescomp.nn.fold.load_plain`); the
    switch logits keep their initial value (uniform switches: the pretrained function)."""
    model = runs.build_model(cfg, tuple(input_shape), num_classes, int(cfg.seed))
    switches_of(model)
    return fold.load_plain(model, dense)


def kept_widths(cfg: DictConfig, means: Mapping[str, np.ndarray],
                macs: Callable[[Mapping[str, int]], int] | None = None
                ) -> tuple[dict[str, int], str]:
    """Channels to keep per group, and how they were chosen: ``"given"`` (``method.widths``),
    ``"fraction"`` (``method.keep_fraction``) or ``"budget"`` (``method.budget.macs``), at most
    one of them set, else ``"mass"`` (``method.mass``).

    Args:
        cfg: The run's configuration.
        means: Switch means by group, in the model's group order.
        macs: Multiply-adds per example at given widths
            (:func:`bayescomp.counting.macs_of_widths`); needed for a budget.
    """
    method = cfg.method
    widths = method.get("widths")
    names = list(means)
    fraction = method.get("keep_fraction")
    budget = channel_pruning.budget_settings(cfg, default_allocate="uniform")
    rules = {"method.widths": widths, "method.keep_fraction": fraction,
             "method.budget.macs": None if budget is None else budget[0]}
    chosen = [f"{key}={value if not OmegaConf.is_config(value) else list(value)}"
              for key, value in rules.items() if value is not None]
    if len(chosen) > 1:
        listed = ", ".join(chosen[:-1]) + " and " + chosen[-1]
        raise ConfigError(f"{listed} each set the kept widths; keep one and set the "
                          f"other{'s' if len(chosen) > 2 else ''} to null")
    if budget is not None:
        if macs is None:
            raise ValueError("a multiply-add budget needs the network's macs function")
        return channel_selection.budget_widths(means, macs, *budget), "budget"
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ConfigError(f"method.keep_fraction must be a number in (0, 1], e.g. 0.6, "
                              f"got {fraction!r}")
        return channel_selection.fraction_widths(means, float(fraction)), "fraction"
    if widths is not None:
        widths = list(OmegaConf.to_container(widths, resolve=True)
                      if OmegaConf.is_config(widths) else widths)
        if len(widths) != len(names):
            raise ConfigError(f"method.widths={widths} must give one width per prunable group "
                              f"{names} (e.g. [5, 8, 45] for LeNet-5), or be null to choose "
                              "them from the switches (method.mass)")
        out = {}
        for name, width in zip(names, widths):
            size = int(np.size(means[name]))
            if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= size:
                raise ConfigError(f"method.widths: the width of {name} must be an integer in "
                                  f"[1, {size}], got {width!r}")
            out[name] = width
        return out, "given"
    mass = method.get("mass")
    return channel_selection.mass_widths(means, DEFAULT_MASS if mass is None else float(mass)), \
        "mass"


def switch_phase(cfg: DictConfig) -> Phase:
    """Phase 1: the switches alone, Adam at ``method.switches.lr``, β annealed per epoch."""
    settings = cfg.method.switches
    epochs = channel_pruning.phase_epochs(settings.epochs, cfg)
    anneal = settings.get("anneal_epochs")
    anneal = epochs if anneal is None else int(anneal)
    optimizer = {"name": "adam", "lr": float(settings.lr), "b1": 0.9, "b2": 0.999,
                 "schedule": "constant", "weight_decay": 0.0, "decay": [],
                 "warmup_epochs": 0}
    return Phase(SWITCH_PHASE, epochs, optimizer=optimizer,
                 key=channel_pruning.phase_key(cfg, SWITCH_PHASE),
                 trains=SwitchLogit, kl_weight=lambda e: kl_weight(e, anneal),
                 batch_norm="running", record=_switch_record)


def retrain_phase(cfg: DictConfig, masks: Mapping[str, np.ndarray],
                  keep: Mapping[str, np.ndarray] | None = None) -> Phase:
    """Phase 2: the kept weights, biases and BatchNorm γ, β, masks fixed, the run's optimiser;
    BatchNorm on batch statistics (the default mode), as the dense recipe trains.

    ``keep`` given (widths from a multiply-add budget): the phase is named after the kept
    channels, ``retrain-<crc32>`` as :func:`bayescomp.procedures.channel_pruning.finetune_phase`,
    so that a checkpoint retrained on other channels (a run written before budgets existed,
    whose stored settings cannot show the difference) is never restored for these.

    Weights and γ train at ``method.retrain.lr``, biases and β at ``bias_lr``. A model without
    BatchNorm (LeNet-5) has no γ, β: its groups stay empty and add no optimiser state.
    """
    settings = cfg.method.retrain
    optimizer = {**OmegaConf.to_container(cfg.optimizer, resolve=True),
                 "schedule": str(settings.get("schedule", "constant")),
                 "decay_start": float(settings.get("decay_start", 0.0))}
    lr = float(settings.lr)
    bias_lr = float(settings.get("bias_lr", lr))
    rates = ((PointWeight, lr), (Bias, bias_lr), (NormScale, lr), (NormBias, bias_lr))
    name = RETRAIN_PHASE if keep is None else channel_pruning.phase_name(RETRAIN_PHASE, keep)
    return Phase(name, channel_pruning.phase_epochs(settings.epochs, cfg),
                 optimizer=optimizer, key=channel_pruning.phase_key(cfg, RETRAIN_PHASE),
                 trains=(PointWeight, Bias, NormScale, NormBias), learning_rates=rates,
                 masks=dict(masks))


def _switch_record(model) -> dict[str, float]:
    """Per-epoch history entries: each group's KL and the largest C·s_j."""
    record = {}
    for group, switch in model.channel_modules().items():
        record[f"kl_{group}"] = float(switch.kl())
        record[f"max_scaled_switch_{group}"] = float(switch.num_channels * jnp.max(switch.mean()))
    return record


# --------------------------------------------------------------------------------------------
# The procedure


def run(cfg: DictConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Dirichlet pruning of ``cfg.method.pretrained_run``: switches, top-k, retraining.

    Rerunning in the same ``workdir`` resumes (finished phases are restored from their
    checkpoints, not retrained). Writes ``metrics.json`` (keys as every run, plus ``dirichlet``
    and ``counting``), ``quantized_network.npz``, ``config.yaml`` and TensorBoard events.

    Args:
        cfg: The composed configuration (``conf/method/dirichlet.yaml``).
        workdir: The run directory.

    Returns:
        The metrics.
    """
    workdir = runs.prepare_run_directory(cfg, workdir)
    method = cfg.method
    if (method.get("channel") or {}).get("kind") != "dirichlet":
        raise ConfigError("the dirichlet procedure needs method.channel.kind=dirichlet "
                          "(conf/method/dirichlet.yaml)")
    check_groups(cfg)
    dense, pretrained_metrics = pretrained.load_pretrained(cfg)
    dataset = runs.load_run_dataset(cfg)
    input_shape = tuple(int(d) for d in dataset.x_train.shape[1:])
    # The same network with switches, the pretrained network loaded into it.
    model = switch_model(cfg, dense, input_shape, dataset.num_classes)
    switches = switches_of(model)
    macs_of_widths = counting.macs_of_widths(dense, input_shape)
    if any(value is not None for value in (method.get("widths"), method.get("keep_fraction"),
                                           (method.get("budget") or {}).get("macs"))):
        # Given widths and budgets are checked now, not after the switch phase trained.
        kept_widths(cfg, {group: np.asarray(s.mean()) for group, s in switches.items()},
                    macs_of_widths)
    training = TrainingRun(cfg, workdir, dataset, resumable=runs.RESUMABLE_CHANGES_RETRAINING,
                           pretrained_run=str(method.pretrained_run))
    dense_error = pretrained.check_loaded(pretrained_metrics, training.error(dense))
    log.info("pretrained %s: test error %.2f %% (its run reported %.2f %%)",
             method.pretrained_run, dense_error, pretrained_metrics.get("test_error", math.nan))
    try:
        # 1. The switches, on the frozen pretrained network.
        training.fit(model, switch_phase(cfg))
        switch_error = training.error(model)  # with the switch means
        means = {group: np.asarray(s.mean(), np.float64) for group, s in switches.items()}
        # 2. The pruning decision: top k per group by the switch means.
        widths, rule = kept_widths(cfg, means, macs_of_widths)
        if rule == "budget":  # here, not in the check before training: these are the switches
            channel_pruning.warn_single_channel_groups(widths, means)
        keep = channel_selection.top_k_keep(means, widths)
        masks = channel_pruning.pruned_masks(dense, keep)
        # 3. The switches dropped; the pretrained network with the channels cut, retrained.
        channel_pruning.apply_masks_in_place(dense, masks)
        pruned_error = training.error(dense)
        log.info("switches (%s): test error %.2f %% with the switch means; kept widths %s "
                 "(%s), %.2f %% after pruning", method.channel.mode, switch_error, widths, rule,
                 pruned_error)
        training.fit(dense, retrain_phase(cfg, masks, keep if rule == "budget" else None))
    finally:
        training.close()
    retrained_error = training.error(dense)
    # 4. The quantized network (point weights: float32 values) and the exported one.
    quantized = quantize_lib.quantize(dense, masks, widths=runs.model_widths(cfg))
    model_cls = models.get(cfg.model.name)
    quantized_error = training.error(quantize_lib.quantized_model(
        model_cls, quantized, input_shape=input_shape, num_classes=dataset.num_classes))
    log.info("retrained %d epochs: test error %.2f %% (quantized %.2f %%)",
             channel_pruning.phase_epochs(method.retrain.epochs, cfg), retrained_error,
             quantized_error)
    dense_count = counting.count(dense, input_shape)
    pruned_count = counting.count(dense, input_shape, keep=keep)
    extra = {
        "pruning_check": None,  # no log α thresholds: the switches decide
        "pretrained_run": str(method.pretrained_run),
        "pretrained_loaded_from": pretrained_metrics["loaded_from"],
        "pretrained_test_error": dense_error,
        "dirichlet": {
            "mode": str(method.channel.mode),
            "alpha0": float(method.channel.alpha0),
            "width_rule": rule,
            "mass": float(method.get("mass") or DEFAULT_MASS) if rule == "mass" else None,
            "keep_fraction": (float(method.keep_fraction) if rule == "fraction" else None),
            "budget": (OmegaConf.to_container(method.budget, resolve=True)
                       if rule == "budget" else None),
            "kept_widths": {g: int(k) for g, k in widths.items()},
            "kept_channels": {g: np.flatnonzero(k).tolist() for g, k in keep.items()},
            "switch_means": {g: m.tolist() for g, m in means.items()},
            "scaled_switches": {g: (m.size * m).tolist() for g, m in means.items()},
            "kl": {g: float(s.kl()) for g, s in switches.items()},
            "error_with_switches": switch_error,
            "error_after_pruning": pruned_error,
            "error_after_retraining": retrained_error,
        },
        "counting": {
            "dense": _count_summary(dense_count),
            "pruned": _count_summary(pruned_count),
            "params_ratio": dense_count.params / pruned_count.params,
            "macs_ratio": dense_count.macs / pruned_count.macs,
        },
    }
    return metrics.finish_run(
        cfg, workdir, dataset=dataset, quantized=quantized, history=training.history,
        train_seconds=training.train_seconds,
        images_per_epoch=training.steps_per_epoch * training.batch_size,
        test_error=dense_error, pruned_test_error=retrained_error,
        quantized_test_error=quantized_error, pruning_accounting="structured", extra=extra)


def _count_summary(count: counting.Count) -> dict[str, Any]:
    """Totals and per-layer weights and multiply-adds (:meth:`bayescomp.counting.Count.as_dict`)."""
    return count.as_dict()
