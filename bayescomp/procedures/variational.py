"""The variational procedure: train, prune by log α, round to posterior-derived bits.

Dense baselines, sparse variational dropout (Molchanov, Ashukha & Vetrov, ICML 2017) and
Bayesian Compression (Louizos, Ullrich & Welling, NeurIPS 2017) are one phase of
:class:`bayescomp.loop.Phase` — the negative ELBO ``mean NLL + β_t·KL/N`` with the KL warm-up
β_t of ``trainer.kl_warmup`` (:func:`bayescomp.objectives.kl_weight`) — followed by pure
decisions: thresholds (chosen on training data within an error tolerance, the default of the
group methods, or fixed in the config; :mod:`bayescomp.threshold_selection`), masks propagated
across the model's channel groups (:mod:`bayescomp.pruning`), and the kept posterior means
rounded to the bits their posterior variances allow (:mod:`bayescomp.bit_precision`). Entry
point :func:`run`.

*Start.* From scratch by default (the LeNets of both papers). ``method.start_from=DIR`` of a
finished ``<model>_dense`` run starts from its network instead: the posterior means take its
weights, the variances their initialisation, BatchNorms its parameters and statistics
(:func:`bayescomp.pretrained.start_from`), as Louizos et al. (NeurIPS 2017, §5) and Molchanov
et al. (ICML 2017, §5.4) start their VGG-like networks. The loaded network's test error is
checked against the dense run's before training and written to ``metrics.json``
(``start_from``).

Fixed thresholds are checked before anything is written: thresholds that empty a layer, or
raise the training-subset error of the posterior-mean network by more than
``method.prune.max_error_rise`` points, end the run with one line naming the layer and the fix
(:func:`bayescomp.threshold_selection.ruin`); the checkpoints stay, so the fix is a re-evaluation.
The check's measurements are written to ``metrics.json`` as ``pruning_check``.

The per-epoch ``pruned_test_error`` of the training history is the test error at the
thresholds the run would report if it ended at that epoch: the configured ones, or, under
selection, thresholds selected at that epoch exactly as at the end (every
``trainer.pruned_eval_every`` epochs and at the last; one selection evaluates the selection
subset about log2(groups + 1) times per layer, some 30 passes over 10,000 images for LeNet-5,
roughly the forward passes of one training epoch), so the last epoch's value equals
``metrics.json``'s: the run's end takes the thresholds that last selection chose, made on the
same parameters, instead of selecting again.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from bayescomp import (bit_selection, counting, metrics, models, objectives, pretrained,
                       pruning, runs, threshold_selection)
from bayescomp.bit_precision import bit_precision
from bayescomp.compression import quantize as quantize_lib
from bayescomp.compression.report import compression_report
from bayescomp.evaluation import Evaluator
from bayescomp.loop import Phase, TrainingRun


def run(cfg: DictConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train ``cfg.model`` with ``cfg.method`` on ``cfg.data``, prune, quantize, write metrics.

    Rerunning with the same ``workdir`` resumes from the last epoch checkpoint (a finished run
    is re-evaluated, e.g. at new pruning thresholds, without training).

    Args:
        cfg: The composed configuration (see ``conf/config.yaml``).
        workdir: Output directory: checkpoints, TensorBoard events, ``metrics.json``.

    Returns:
        The metrics dictionary also written to ``workdir/metrics.json``.

    Raises:
        BayescompError: Bad configuration, missing data, or a diverged run.
    """
    workdir = runs.prepare_run_directory(cfg, workdir)
    dataset = runs.load_run_dataset(cfg)
    model = runs.build_model(cfg, dataset.x_train.shape[1:], dataset.num_classes,
                                int(cfg.seed))
    started = pretrained.start_from(cfg, model)
    training = TrainingRun(cfg, workdir, dataset,
                           start_from=None if started is None else started["run"])
    if started is not None:
        started["start_test_error"] = pretrained.check_start(started, training.error(model))
    warmup = cfg.trainer.kl_warmup
    epochs, every = int(cfg.trainer.epochs), int(cfg.trainer.pruned_eval_every)
    selection = prune_settings(cfg).select
    final_selection = None  # (thresholds, trace) selected on the last epoch's parameters

    def selected_pruned_record(model_now) -> dict[str, float]:
        # The loop's own pruned evaluation would use the configured thresholds, which selection
        # replaces at the end; under selection the error at thresholds selected now is logged.
        nonlocal final_selection
        epoch = len(training.history)  # the epoch being recorded (the run has one phase)
        if (epoch + 1) % every and epoch + 1 != epochs:
            return {}
        error, selected = selected_pruned_error(cfg, model_now, dataset, training.evaluator)
        if epoch + 1 == epochs:  # the parameters the run ends with: no need to select again
            final_selection = selected
        return {"pruned_test_error": error}

    phase = Phase(
        runs.TRAIN_PHASE, epochs,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        key=jax.random.key(int(cfg.seed)),
        kl_weight=lambda epoch: objectives.kl_weight(
            epoch, objectives.warmup_epoch(warmup.start_epoch, epochs),
            objectives.warmup_epoch(warmup.end_epoch, epochs)),
        record=selected_pruned_record if selection else None,
        pruned_eval_every=None if selection else every)
    try:
        training.fit(model, phase)
    finally:
        training.close()
    snapshot = prune_and_quantize(cfg, model, dataset, training.evaluator, refuse=True,
                                  run_dir=workdir, selected=final_selection)
    pruning.save_log_alpha_histograms(model, workdir / "plots")
    return metrics.finish_run(
        cfg, workdir, dataset=dataset, quantized=snapshot.quantized, history=training.history,
        train_seconds=training.train_seconds,
        images_per_epoch=training.steps_per_epoch * training.batch_size,
        test_error=training.error(model), pruned_test_error=snapshot.pruned_test_error,
        quantized_test_error=snapshot.quantized_test_error,
        prune_thresholds=snapshot.prune_thresholds,
        threshold_selection=snapshot.threshold_selection,
        extra={"pruning_check": snapshot.pruning_check, "bit_selection": snapshot.bit_selection,
               **({"start_from": started} if started is not None else {})})


@dataclasses.dataclass(frozen=True)
class PruneSettings:
    """``cfg.method.prune`` as the procedure reads it (``conf/method/*.yaml``).

    Attributes:
        select: ``{tolerance, examples}`` of threshold selection, or ``None``: the fixed
            thresholds ``threshold`` / ``per_layer`` (already on the model's layers).
        examples: Training examples thresholds are selected and checked on.
        max_error_rise: Largest rise (percentage points) of that subset's error that fixed
            thresholds may cause (:func:`bayescomp.threshold_selection.ruin`).
        bits_tolerance: ``cfg.method.bits.tolerance``: the share (%) of that subset whose
            predicted class rounding to the bit widths may change (:mod:`bayescomp.
            bit_selection`); ``None``: the posterior rule's bits as they are.
    """

    select: Any
    examples: int
    max_error_rise: float
    bits_tolerance: float | None = None


def prune_settings(cfg: DictConfig) -> PruneSettings:
    """Read ``cfg.method.prune``; a config written before a key existed gets its default."""
    prune = cfg.method.get("prune") or {}
    select = prune.get("select") or None
    examples = threshold_selection.DEFAULT_EXAMPLES
    if select is not None and select.get("examples") is not None:
        examples = int(select.examples)
    max_rise = prune.get("max_error_rise")
    bits_tolerance = (cfg.method.get("bits") or {}).get("tolerance")
    return PruneSettings(select=select, examples=examples,
                         max_error_rise=threshold_selection.DEFAULT_MAX_ERROR_RISE
                         if max_rise is None else float(max_rise),
                         bits_tolerance=None if bits_tolerance is None else float(bits_tolerance))


def subset_error_of(cfg: DictConfig, model, dataset, evaluator: Evaluator, examples: int, *,
                    agree_with: tuple[list, list] | None = None):
    """``error_of(kernels, biases)``: the error (%) of a point copy of ``model`` with these
    kernels and biases on the seeded training subset thresholds are selected and checked on
    (:func:`bayescomp.threshold_selection.selection_subset`; never the test set).

    With ``agree_with=(kernels, biases)`` the labels are that network's predicted classes
    instead: ``error_of`` is then the share (%) of the subset on which the two disagree."""
    x_subset, y_subset = threshold_selection.selection_subset(
        dataset.x_train, dataset.y_train, examples, int(cfg.seed))
    x_subset, y_subset = jnp.asarray(x_subset), jnp.asarray(y_subset)
    # Every channel's BatchNorm values: a candidate threshold may keep more than the current.
    every_weight = {name: np.ones(np.shape(layer.posterior.mean()), bool)
                    for name, layer in objectives.variational_layers(model)}
    point = quantize_lib.point_model(
        models.get(cfg.model.name),
        *threshold_selection.masked_mean_params(model, pruning.own_masks(model)),
        input_shape=dataset.x_train.shape[1:], num_classes=dataset.num_classes,
        norms=quantize_lib.norm_params(model, every_weight), widths=runs.model_widths(cfg))

    def set_params(kernels, biases) -> None:
        for (_, layer), kernel, bias in zip(objectives.variational_layers(point), kernels,
                                            biases):
            layer.posterior.weight[...] = jnp.asarray(kernel)
            layer.bias[...] = jnp.asarray(bias)

    if agree_with is not None:
        set_params(*agree_with)
        y_subset = jnp.asarray(evaluator.predictions(point, x_subset), y_subset.dtype)

    def error_of(kernels, biases) -> float:
        set_params(kernels, biases)
        return evaluator.error(point, x_subset, y_subset)

    return error_of


def selected_pruned_error(cfg: DictConfig, model, dataset, evaluator: Evaluator
                          ) -> tuple[float, tuple[dict[str, float | None], dict]]:
    """Test error (%) of ``model`` pruned at thresholds selected now, as :func:`prune_and_quantize`
    would select them; the model's thresholds are left as they were.

    Returns:
        ``(error, (thresholds, trace))``: the error and the selection
        (:func:`bayescomp.threshold_selection.select_thresholds`), which
        :func:`prune_and_quantize` takes as ``selected`` while the parameters stay these.
    """
    settings = prune_settings(cfg)
    own = {name: layer.prune_threshold for name, layer in objectives.variational_layers(model)}
    try:
        selected = threshold_selection.select_thresholds(
            model, subset_error_of(cfg, model, dataset, evaluator, settings.examples),
            tolerance=float(settings.select.tolerance))
        return evaluator.error(model, jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test),
                               pruned=True), selected
    finally:
        threshold_selection.set_thresholds(model, own)


@dataclasses.dataclass
class Snapshot:
    """What a trained variational model compresses to now (:func:`prune_and_quantize`)."""

    prune_thresholds: dict[str, float | None]
    threshold_selection: Any
    pruning_check: Any
    bit_selection: Any
    masks: dict
    pruned_test_error: float
    quantized: quantize_lib.QuantizedNetwork
    quantized_test_error: float


def prune_and_quantize(cfg: DictConfig, model, dataset, evaluator: Evaluator, *,
                       refuse: bool = True, run_dir: pathlib.Path | None = None,
                       selected: tuple[dict, dict] | None = None) -> Snapshot:
    """Prune, quantize and score ``model`` as it stands: what the run reports at its end.

    Thresholds come from threshold selection on training data when ``cfg.method.prune.select``
    is set (the chosen ones are set on ``model``), else from the layers' own thresholds, which
    are checked on the same training subset (:func:`bayescomp.threshold_selection.ruin`). Then
    the masks are propagated across layers and the kept posterior means rounded to their
    posterior-derived bits, raised where rounding would change more than
    ``method.bits.tolerance`` % of the same training subset's predictions
    (:mod:`bayescomp.bit_selection`); both networks are evaluated on the test set.

    Args:
        cfg, model, dataset, evaluator: The run's config, trained model, data and evaluator.
        refuse: Refuse fixed thresholds that raise the training-subset error by more than
            ``method.prune.max_error_rise`` (a run's end); ``False`` only records the rise
            (a threshold sweep, a diagnosis). Thresholds that empty a layer are always refused:
            there is nothing to quantize.
        run_dir: The run's directory, named in a refusal's advice (rerun there to re-evaluate).
        selected: ``(thresholds, trace)`` already selected on exactly these parameters (the
            last epoch's record, :func:`selected_pruned_error`): set, not selected again.

    Raises:
        RuinousPruningError: As above, in one line naming the layer and the fix.
    """
    model_cls = models.get(cfg.model.name)
    x_test, y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    settings = prune_settings(cfg)
    selection_trace = check = bits_trace = None
    thresholded = any(layer.prune_threshold is not None and layer.log_alpha() is not None
                      for _, layer in objectives.variational_layers(model))
    if settings.select or thresholded:
        error_of = subset_error_of(cfg, model, dataset, evaluator, settings.examples)
        if selected is not None:
            if not settings.select:
                raise ValueError("selected thresholds given to a run without threshold "
                                 "selection (method.prune.select)")
            thresholds, selection_trace = selected
            threshold_selection.set_thresholds(model, thresholds)
        elif settings.select:
            # Thresholds chosen on training data within an error tolerance (threshold_selection).
            _, selection_trace = threshold_selection.select_thresholds(
                model, error_of, tolerance=float(settings.select.tolerance))
        check = threshold_selection.pruning_check(model, error_of)
        check["max_error_rise"] = None if settings.select else settings.max_error_rise
        problem = threshold_selection.ruin(check, None if settings.select or not refuse
                                           else settings.max_error_rise)
        if problem is not None:
            raise pruning.RuinousPruningError(
                _refusal(problem, bool(check["emptied"]), settings, run_dir),
                emptied=check["emptied"])
    pruned_error = evaluator.error(model, x_test, y_test, pruned=True)
    masks = pruning.propagated_masks(model)
    bits = None
    if settings.bits_tolerance is not None:
        bits, bits_trace = selected_bits(cfg, model, dataset, evaluator, masks,
                                         settings.bits_tolerance, settings.examples)
    quantized = quantize_lib.quantize(model, masks, widths=runs.model_widths(cfg), bits=bits)
    quantized_model = quantize_lib.quantized_model(
        model_cls, quantized, input_shape=dataset.x_train.shape[1:],
        num_classes=dataset.num_classes)
    return Snapshot(
        prune_thresholds={name: layer.prune_threshold
                          for name, layer in objectives.variational_layers(model)},
        threshold_selection=selection_trace, pruning_check=check, bit_selection=bits_trace,
        masks=masks,
        pruned_test_error=pruned_error, quantized=quantized,
        quantized_test_error=evaluator.error(quantized_model, x_test, y_test))


def selected_bits(cfg: DictConfig, model, dataset, evaluator: Evaluator,
                  masks: dict[str, np.ndarray], tolerance: float, examples: int
                  ) -> tuple[list[int], dict]:
    """Bits per layer for :func:`~bayescomp.compression.quantize.quantize`: the posterior
    rule's, raised until rounding changes the predicted class of at most ``tolerance`` % of
    the training subset thresholds are selected on, against the pruned, unrounded network
    (:func:`bayescomp.bit_selection.select_bits`).

    Args:
        cfg, model, dataset, evaluator: The run's config, trained model, data and evaluator.
        masks: The model's propagated keep masks.
        tolerance: ``method.bits.tolerance``.
        examples: Size of the training subset.
    """
    layers = objectives.variational_layers(model)
    names = [name for name, _ in layers]
    means = [np.asarray(layer.posterior.mean(), np.float64) for _, layer in layers]
    variances = [np.asarray(layer.posterior.variance(), np.float64) for _, layer in layers]
    mask_list = [np.asarray(masks[name], bool) for name in names]
    kernels, biases = threshold_selection.masked_mean_params(model, masks)
    disagreement_of = subset_error_of(cfg, model, dataset, evaluator, examples,
                                      agree_with=(kernels, biases))
    posterior = bit_precision(means, variances, mask_list).bits_per_layer

    rounded: dict[tuple[int, int], np.ndarray] = {}  # (layer, bits) -> kernel: each made once

    def kernel(index: int, bits: int | None) -> np.ndarray:
        if bits is None:  # this layer unrounded
            return kernels[index]
        if (index, bits) not in rounded:
            rounded[index, bits] = quantize_lib.rounded_kernel(means[index], mask_list[index], bits)
        return rounded[index, bits]

    def rounded_disagreement(bits) -> float:
        return disagreement_of([kernel(i, b) for i, b in enumerate(bits)], biases)

    return bit_selection.select_bits(
        posterior, [int(mask.sum()) for mask in mask_list], rounded_disagreement,
        tolerance=tolerance, names=names)


def _refusal(problem: tuple[str, list[str]], emptied: bool, settings: PruneSettings,
             run_dir: pathlib.Path | None) -> str:
    """The one line of a refused pruning: what is wrong, what was kept, what to do."""
    what, layers = problem
    raise_them = " or ".join(f"method.prune.per_layer.{name}" for name in layers)
    select = ("select thresholds on training data instead (method.prune.select='{tolerance: "
              f"0.5, examples: {settings.examples}}}')")
    fixes = [select, f"raise {raise_them}"]
    if not emptied:
        fixes.append(f"raise method.prune.max_error_rise (now {settings.max_error_rise:g})")
    where = ("" if run_dir is None else
             f"; rerun with hydra.run.dir={run_dir} to re-evaluate the trained checkpoint "
             "without training")
    return (f"pruning refused, no metrics written: {what}. Fix: {', or '.join(fixes)}{where}")


def compression_snapshot(cfg: DictConfig, model, dataset, workdir: pathlib.Path,
                         evaluator: Evaluator | None = None) -> dict[str, Any]:
    """:func:`prune_and_quantize` as the ``metrics.json`` keys it determines (and the log α
    histograms saved in ``workdir/plots``): what ``diagnose`` and ``tradeoff`` report, with the
    pruned network's ``counting`` (:func:`bayescomp.counting.summary` of its masks)."""
    evaluator = evaluator or Evaluator(int(cfg.trainer.eval_batch_size))
    snapshot = prune_and_quantize(cfg, model, dataset, evaluator, refuse=False)
    quantized = snapshot.quantized
    report = compression_report(quantized.masks, quantized.precision.bits_per_layer,
                                quantized.precision.exponent_bits, weights=quantized.kernels)
    # Last, once everything above has succeeded: a re-evaluation that fails (say, thresholds
    # that remove every weight) leaves the plots describing the metrics that are still there.
    pruning.save_log_alpha_histograms(model, pathlib.Path(workdir) / "plots")
    return {
        "pruned_test_error": snapshot.pruned_test_error,
        "prune_thresholds": snapshot.prune_thresholds,
        "threshold_selection": snapshot.threshold_selection,
        "pruning_check": snapshot.pruning_check,
        "bit_selection": snapshot.bit_selection,
        **metrics.compression_metrics(snapshot.masks, report.to_dict()),
        "quantized_test_error": snapshot.quantized_test_error,
        "counting": counting.summary(model, dataset.x_train.shape[1:],
                                     dict(zip(quantized.names, quantized.masks))),
    }
