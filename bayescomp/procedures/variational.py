"""The variational procedure: train, prune by log α, round to posterior-derived bits.

Dense baselines, sparse variational dropout (Molchanov, Ashukha & Vetrov, ICML 2017) and
Bayesian Compression (Louizos, Ullrich & Welling, NeurIPS 2017) are one phase of
:class:`bayescomp.loop.Phase` — the negative ELBO ``mean NLL + β_t·KL/N`` with the KL warm-up
β_t of ``trainer.kl_warmup`` (:func:`bayescomp.objectives.kl_weight`) — followed by pure
decisions: thresholds (configured, or chosen on training data within an error tolerance,
:mod:`bayescomp.threshold_selection`), masks propagated across the model's channel groups
(:mod:`bayescomp.pruning`), and the kept posterior means rounded to the bits their posterior
variances allow (:mod:`bayescomp.bit_precision`). Entry point :func:`run`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from omegaconf import DictConfig, OmegaConf

from bayescomp import metrics, models, objectives, pruning, runs, threshold_selection
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
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runs.check_settings(cfg)
    runs.check_run_identity(cfg, workdir)
    dataset = runs.load_run_dataset(cfg)
    model = runs.build_model(cfg, dataset.x_train.shape[1:], dataset.num_classes,
                                int(cfg.seed))
    training = TrainingRun(cfg, workdir, dataset)
    warmup = cfg.trainer.kl_warmup
    phase = Phase(
        runs.TRAIN_PHASE, int(cfg.trainer.epochs),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        key=jax.random.key(int(cfg.seed)),
        kl_weight=lambda epoch: objectives.kl_weight(epoch, warmup.start_epoch,
                                                     warmup.end_epoch),
        pruned_eval_every=int(cfg.trainer.pruned_eval_every))
    try:
        training.fit(model, phase)
    finally:
        training.close()
    snapshot = prune_and_quantize(cfg, model, dataset, training.evaluator)
    pruning.save_log_alpha_histograms(model, workdir / "plots")
    return metrics.finish_run(
        cfg, workdir, dataset=dataset, quantized=snapshot.quantized, history=training.history,
        train_seconds=training.train_seconds,
        images_per_epoch=training.steps_per_epoch * training.batch_size,
        test_error=training.error(model), pruned_test_error=snapshot.pruned_test_error,
        quantized_test_error=snapshot.quantized_test_error,
        prune_thresholds=snapshot.prune_thresholds,
        threshold_selection=snapshot.threshold_selection)


@dataclasses.dataclass
class Snapshot:
    """What a trained variational model compresses to now (:func:`prune_and_quantize`)."""

    prune_thresholds: dict[str, float | None]
    threshold_selection: Any
    masks: dict
    pruned_test_error: float
    quantized: quantize_lib.QuantizedNetwork
    quantized_test_error: float


def prune_and_quantize(cfg: DictConfig, model, dataset, evaluator: Evaluator) -> Snapshot:
    """Prune, quantize and score ``model`` as it stands: what the run reports at its end.

    Thresholds come from threshold selection on training data when ``cfg.method.prune.select``
    is set (the chosen ones are set on ``model``), else from the layers' own thresholds. Then
    the masks are propagated across layers and the kept posterior means rounded to their
    posterior-derived bits; both networks are evaluated on the test set.
    """
    model_cls = models.get(cfg.model.name)
    x_test, y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    selection = (cfg.method.get("prune") or {}).get("select")
    selection_trace = None
    if selection:
        # Thresholds chosen on training data within an error tolerance (threshold_selection).
        x_subset, y_subset = threshold_selection.selection_subset(
            dataset.x_train, dataset.y_train, int(selection.get("examples", 10000)),
            int(cfg.seed))
        point = quantize_lib.point_model(
            model_cls, *threshold_selection.masked_mean_params(model, pruning.own_masks(model)),
            input_shape=dataset.x_train.shape[1:], num_classes=dataset.num_classes)

        x_subset, y_subset = jnp.asarray(x_subset), jnp.asarray(y_subset)

        def error_of(kernels, biases) -> float:
            for (_, layer), kernel, bias in zip(objectives.variational_layers(point), kernels,
                                                biases):
                layer.posterior.weight[...] = jnp.asarray(kernel)
                layer.bias[...] = jnp.asarray(bias)
            return evaluator.error(point, x_subset, y_subset)

        _, selection_trace = threshold_selection.select_thresholds(
            model, error_of, tolerance=float(selection.tolerance))
    pruned_error = evaluator.error(model, x_test, y_test, pruned=True)
    masks = pruning.propagated_masks(model)
    quantized = quantize_lib.quantize(model, masks)
    quantized_model = quantize_lib.point_model(
        model_cls, quantized.kernels, quantized.biases, input_shape=dataset.x_train.shape[1:],
        num_classes=dataset.num_classes)
    return Snapshot(
        prune_thresholds={name: layer.prune_threshold
                          for name, layer in objectives.variational_layers(model)},
        threshold_selection=selection_trace, masks=masks, pruned_test_error=pruned_error,
        quantized=quantized,
        quantized_test_error=evaluator.error(quantized_model, x_test, y_test))


def compression_snapshot(cfg: DictConfig, model, dataset, workdir: pathlib.Path,
                         evaluator: Evaluator | None = None) -> dict[str, Any]:
    """:func:`prune_and_quantize` as the ``metrics.json`` keys it determines (and the log α
    histograms saved in ``workdir/plots``): what ``diagnose`` and ``tradeoff`` report."""
    evaluator = evaluator or Evaluator(int(cfg.trainer.eval_batch_size))
    snapshot = prune_and_quantize(cfg, model, dataset, evaluator)
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
        **metrics.compression_metrics(snapshot.masks, report.to_dict()),
        "quantized_test_error": snapshot.quantized_test_error,
    }
