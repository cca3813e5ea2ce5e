"""``metrics.json``: its one writer, and the keys every procedure writes.

Every procedure ends with :func:`finish_run`, which writes the quantized network
(``quantized_network.npz``, what ``python -m bayescomp.compress`` encodes), ``config.yaml`` and
``metrics.json`` with the same keys: which run it is, its errors, what was kept and how well it
compresses (Louizos et al. 2017, Table 1 columns), parameters and multiply-adds dense → pruned
(``counting``, :func:`run_counting`), speed, provenance, history and config.
"""

from __future__ import annotations

import json
import pathlib
import resource
import sys
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bayescomp import atomic, counting, provenance, pruning
from bayescomp.errors import ConfigError


def median_epoch_seconds(history: list[dict]) -> float:
    """Median training time of one epoch, leaving out epochs that include compilation.

    Those are the first epoch of every process (a resumed run compiles again), flagged
    ``includes_compilation``; in histories written before the flag existed, the first epoch.
    With no other epoch, the median of all of them.
    """
    compiled = [h.get("includes_compilation", float(i == 0)) for i, h in enumerate(history)]
    epoch_times = [h["seconds"] for h, c in zip(history, compiled) if not c]
    return float(np.median(epoch_times or [h["seconds"] for h in history]))


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage`` ``ru_maxrss``).

    On an accelerator this is host memory only; device memory is not included.
    """
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes vs KiB


def code_metrics(history) -> dict[str, Any]:
    """The provenance keys of ``metrics.json``: this process's commit, its local changes, and
    which commit trained which epochs (a resumed run may span several)."""
    return {
        "git_commit": provenance.git_commit(),
        "git_dirty_files": provenance.dirty_files(),
        "code_history": provenance.code_history(history),
    }


def run_identity(cfg: DictConfig, dataset) -> dict[str, Any]:
    """The keys of ``metrics.json`` that say which run it is (shared by every procedure)."""
    return {
        "experiment": cfg.get("experiment_name") or "custom",
        "model": cfg.model.name,
        "method": cfg.method.name,
        "dataset": dataset.name,
        "data_source": dataset.source,
        "seed": int(cfg.seed),
    }


def compression_metrics(masks: dict[str, np.ndarray], report: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` keys of what was kept and how well it compresses.

    Args:
        masks: Keep masks by layer path, in layer order.
        report: ``CompressionReport.to_dict()`` of the compressed network.
    """
    weights_total, weights_kept, total_per_layer, kept_per_layer = \
        pruning.kept_weight_counts(masks)
    return {
        "weights_total": weights_total,
        "weights_kept": weights_kept,
        "percent_kept": 100.0 * weights_kept / weights_total,
        "compression_sparsity": weights_total / max(weights_kept, 1),
        "layers": list(masks),
        "total_per_layer": total_per_layer,
        "kept_per_layer": kept_per_layer,
        "architecture": report["architecture"],
        "architecture_string": report["architecture_string"],
        "bits_per_layer": report["bits_per_layer"],
        "exponent_bits": report["exponent_bits"],
        "compression": report["compression"],
        "compression_details": {k: v for k, v in report.items() if k not in (
            "compression", "architecture", "bits_per_layer", "exponent_bits")},
    }


def run_counting(cfg: DictConfig, dataset, quantized,
                 given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``counting`` key of ``metrics.json``: parameters and multiply-adds of the dense
    network and of the pruned one, per layer and in total (:func:`bayescomp.counting.summary`).

    Counted on the model ``cfg`` builds, abstractly (shapes only), pruned by the quantized
    network's masks, so every procedure is counted alike from what it wrote.

    Args:
        cfg: The run's configuration (model and widths).
        dataset: The dataset (input shape, classes).
        quantized: The compressed network (``names``, ``masks``).
        given: The procedure's own ``counting`` (the channel procedures count their keep
            vectors): kept as it is, with the ``nonzero_macs`` keys added where it lacks them.

    Returns:
        The entry.
    """
    from bayescomp import runs  # late: runs imports this module

    input_shape = tuple(int(d) for d in dataset.x_train.shape[1:])
    model = counting.shape_model(cfg.model.name, input_shape, dataset.num_classes,
                                 runs.model_widths(cfg))
    masks = dict(zip(quantized.names, quantized.masks))
    if given is None:
        return counting.summary(model, input_shape, masks)
    nonzero = counting.nonzero_summary(model, input_shape, masks, int(given["dense"]["macs"]))
    return {**nonzero, **dict(given)}


def read_metrics(workdir: pathlib.Path) -> dict:
    """A run's ``metrics.json``.

    Raises:
        ConfigError: it cannot be read or is not a JSON object (nothing is written first, so
            a caller that reads it before writing anything loses nothing).
    """
    path = pathlib.Path(workdir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} cannot be read as JSON ({error}); rerun the run's command in "
                          "its directory to rewrite it") from None
    if not isinstance(metrics, dict):
        raise ConfigError(f"{path} holds a JSON {type(metrics).__name__}, not an object; rerun "
                          "the run's command in its directory to rewrite it")
    return metrics


def write_metrics(workdir: pathlib.Path, metrics: dict) -> None:
    """Write ``metrics.json`` atomically (a crash never leaves a half-written file)."""
    atomic.write_text(pathlib.Path(workdir) / "metrics.json",
                      json.dumps(metrics, indent=2, sort_keys=False) + "\n")


def planned_epochs(history: list[dict]) -> list[int]:
    """The run lengths the run's epochs were trained for, each listed once.

    A run of several phases reports their total; a single phase resumed with another
    ``trainer.epochs`` reports each length it was trained for, in order (more than one value
    gives the run its own row in the tables, :mod:`bayescomp.tables`).
    """
    per_phase: dict[str, list[int]] = {}
    for record in history:
        planned = per_phase.setdefault(str(record.get("phase", "")), [])
        value = int(record.get("planned_epochs", 0))
        if value not in planned:
            planned.append(value)
    if len(per_phase) == 1:
        return next(iter(per_phase.values()))
    return [sum(values[-1] for values in per_phase.values())]


def finish_run(cfg: DictConfig, workdir, *, dataset, quantized, history: list[dict],
               train_seconds: float, images_per_epoch: int, test_error: float,
               pruned_test_error: float, quantized_test_error: float,
               pruning_accounting: str = "structured",
               prune_thresholds: Mapping[str, float] | None = None,
               threshold_selection: Any = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write a finished run's ``quantized_network.npz``, ``config.yaml`` and ``metrics.json``.

    The one place every procedure ends, so the tables and ``python -m bayescomp.compress``
    treat every method alike. The errors (%) are: ``test_error`` of the network before
    compression (posterior mean; for a retraining, the pretrained network),
    ``pruned_test_error`` after pruning, ``quantized_test_error`` of ``quantized``, the network
    the compression columns describe and the file encodes.

    Args:
        cfg: The run's configuration.
        workdir: The run directory.
        dataset: The dataset (name, source).
        quantized: The compressed network (:class:`~bayescomp.compression.quantize.
            QuantizedNetwork`); a codebook network is reported with ``sign_bits = 0`` (the index
            is the whole code).
        history: Every epoch's record, over all phases.
        train_seconds: Training time, all phases.
        images_per_epoch: Training images seen per epoch (steps · batch size).
        test_error, pruned_test_error, quantized_test_error: See above.
        pruning_accounting: ``"structured"`` (groups) or ``"unstructured"`` (one index per
            kept weight, magnitude pruning and soft weight-sharing),
            :func:`~bayescomp.compression.report.compression_report`.
        prune_thresholds: The log α thresholds a variational run pruned at.
        threshold_selection: The trace of the thresholds' selection, if they were chosen.
        extra: Method-specific entries (e.g. per-round errors). A ``counting`` entry here is
            the procedure's own count, kept (:func:`run_counting`).

    Returns:
        The metrics written.
    """
    from bayescomp.compression import quantize as quantize_lib
    from bayescomp.compression.report import compression_report

    from bayescomp import runs

    workdir = pathlib.Path(workdir)
    codebook_network = quantized.codebooks is not None
    report = compression_report(
        quantized.masks, quantized.precision.bits_per_layer, quantized.precision.exponent_bits,
        sign_bits=0 if codebook_network else 1, weights=quantized.kernels,
        pruning_accounting=pruning_accounting)
    # No epoch trained (every phase of 0 epochs): no time to report, and NaN is not JSON.
    seconds_per_epoch = median_epoch_seconds(history) if history else None
    metrics = {
        **run_identity(cfg, dataset),
        "epochs": len(history),
        "planned_epochs": planned_epochs(history),
        "test_error": float(test_error),
        "pruned_test_error": float(pruned_test_error),
        "prune_thresholds": None if prune_thresholds is None else dict(prune_thresholds),
        "threshold_selection": threshold_selection,
        # The trace of bit selection (bayescomp/bit_selection.py), where a variational run's
        # method.bits set it (in ``extra``); present in every run's metrics, for the tables.
        "bit_selection": None,
        **compression_metrics(dict(zip(quantized.names, quantized.masks)), report.to_dict()),
        "quantized_test_error": float(quantized_test_error),
        "codebook_sizes": None if not codebook_network else [
            None if c is None else int(np.size(c)) for c in quantized.codebooks],
        # Median over epochs of the training time of one epoch (excluding each process's
        # first of a phase, which includes compilation); evaluation and checkpoints excluded.
        "seconds_per_epoch": seconds_per_epoch,
        "images_per_second": (None if seconds_per_epoch is None
                              else images_per_epoch / seconds_per_epoch),
        "peak_memory_mib": peak_memory_mib(),
        "train_seconds": float(train_seconds),
        **code_metrics(history),
        **provenance.runtime(),
        **dict(extra or {}),
        "counting": run_counting(cfg, dataset, quantized, (extra or {}).get("counting")),
        "history": history,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    quantize_lib.save_quantized(workdir / quantize_lib.QUANTIZED_FILE, quantized)
    runs.write_config(workdir, cfg)
    write_metrics(workdir, metrics)
    return metrics
