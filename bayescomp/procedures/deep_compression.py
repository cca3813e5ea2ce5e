r"""Deep Compression: iterative magnitude pruning, k-means weight sharing, centroid fine-tuning.

Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained
Quantization and Huffman Coding", ICLR 2016, arXiv:1510.00149 (§2 pruning, §3 trained quantization,
§4 Huffman coding). From a finished dense run
(``method.pretrained_run``):

1. **Pruning** (§2; Han et al., "Learning both Weights and Connections", NIPS 2015): the
   weights of smallest magnitude are removed and the network is retrained with the mask fixed,
   in ``R`` rounds. Round ``r`` keeps the fraction ``ρ_l^{r/R}`` of layer ``l``'s weights, so
   every round removes the same share of what is left and the last reaches the paper's per-layer
   target ``ρ_l`` (LeNet-300-100: 8 / 9 / 26 %; LeNet-5: 66 / 12 / 8 / 19 %; Han et al. 2016,
   Tables 2 and 3). The paper prunes below a threshold ``quality × std(W_l)`` and tunes the
   quality to reach those fractions; we prune to the fractions directly (the ``k`` largest
   ``|w|`` of the weights still kept, ties to the lower index), which makes the result exact and
   the schedule independent of the weight scale. Removed weights stay ``+0.0`` (their gradient
   and value are masked, :func:`bayescomp.step.apply_masks`).
2. **Weight sharing** (§3.1): per layer, 1-D k-means over the kept weights with ``k = 2^b``
   clusters, ``b`` = 8 for conv and 5 for fully connected layers (§3; Tables 2–3 use 6 bits for
   LeNet-300-100), initialised linearly between the smallest and largest kept weight (§3.2: the
   linear initialisation keeps the few large weights, which matter most, represented), then
   Lloyd's iterations :math:`\min_C \sum_{i=1}^{k} \sum_{w \in c_i} |w - c_i|^2` (Eq. 1).
   An empty cluster is refilled with the farthest value (as scikit-learn's k-means does, see
   :func:`kmeans_1d`); clusters that cannot be filled (fewer distinct weights than ``k``) are
   dropped, and the layer's bit precision is ``ceil(log2)`` of the clusters it uses.
3. **Fine-tuning of the shared weights** (§3.3): the kept weight ``w_i`` is ``c_{I_i}`` for its
   fixed cluster ``I_i``, so the gradient of centroid ``c_k`` is (Eq. 3)

   .. math:: \frac{\partial \mathcal L}{\partial c_k} = \sum_i
             \frac{\partial \mathcal L}{\partial w_i}\, \mathbb 1(I_i = k),

   the sum of the gradients of the weights that share it (group by index, reduce): exactly what
   automatic differentiation of the gather ``W = C[I]`` gives (its transpose is a scatter-add).
   Weights never change cluster, so the network stays weight-shared; biases train alongside.
4. **The quantized network**: kernels ``C[I]`` (removed weights ``+0.0``), its test error, and a
   :class:`~bayescomp.compression.quantize.QuantizedNetwork` with one float32 codebook per layer,
   which ``python -m bayescomp.compress`` entropy-codes (ANS over the indices; the paper's third
   stage, Huffman coding, §4).

Entry point: :func:`run` (procedure ``deep_compression``, ``conf/method/dc.yaml``).
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from bayescomp import histogram_figure, metrics, models, objectives, pretrained, runs
from bayescomp.bit_precision import codebook_precision
from bayescomp.compression import quantize as quantize_lib
from bayescomp.compression.quantize import QuantizedNetwork
from bayescomp.errors import ConfigError
from bayescomp.loop import Phase, TrainingRun
from bayescomp.posteriors.codebook import CodebookValues, SharedCodebook
from bayescomp.posteriors.variables import Bias, PointWeight

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Pruning


def keep_schedule(target: float, rounds: int) -> list[float]:
    """Kept fraction after each pruning round: ``target^(r/R)`` for ``r = 1 … R``.

    Geometric, so every round removes the same share of the weights still kept; the last round
    reaches ``target`` exactly.
    """
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"a kept fraction must be in (0, 1], got {target}")
    if rounds < 1:
        raise ConfigError(f"method.prune_rounds must be >= 1, got {rounds}")
    return [target ** (r / rounds) for r in range(1, rounds)] + [float(target)]


def magnitude_mask(weights: np.ndarray, keep_fraction: float,
                   previous: np.ndarray | None = None) -> np.ndarray:
    """Keep the ``round(keep_fraction · n)`` weights of largest magnitude (at least one).

    Args:
        weights: One layer's kernel.
        keep_fraction: Fraction of the layer's ``n`` weights to keep.
        previous: The layer's current mask; only weights it keeps are candidates, so a removed
            weight never comes back (and masks shrink round by round).

    Returns:
        A boolean mask of ``weights``' shape. Ties in ``|w|`` go to the lower flat index.
    """
    weights = np.asarray(weights)
    count = min(weights.size, max(1, int(round(keep_fraction * weights.size))))
    magnitude = np.abs(weights.astype(np.float64)).ravel()
    if previous is not None:
        candidates = np.asarray(previous, bool).ravel()
        count = min(count, int(candidates.sum()))
        magnitude = np.where(candidates, magnitude, -1.0)  # below every kept |w|
    order = np.argsort(-magnitude, kind="stable")
    mask = np.zeros(weights.size, bool)
    mask[order[:count]] = True
    return mask.reshape(weights.shape)


# --------------------------------------------------------------------------------------------
# Weight sharing


def kmeans_1d(values, clusters: int, max_iterations: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """One-dimensional k-means with linear initialisation (Han et al. 2016, §3.1–3.2).

    Centroids start at ``linspace(min, max, k)``. Each Lloyd iteration assigns every value to its
    nearest centroid (the centroids are kept sorted, so the boundaries are the midpoints between
    neighbours; a value on a midpoint goes to the lower centroid) and moves each centroid to the
    mean of its values.

    Empty clusters: pruning leaves a gap around 0 (and the tails are sparse), so some linearly
    initialised centroids start with no value and Lloyd's update never moves them. As scikit-learn's
    ``KMeans`` does (which the third-party DC code calls with this linear initialisation,
    ``net/quantization.py`` of github.com/mightydeveloper/Deep-Compression-PyTorch), an empty
    cluster is moved onto the value farthest from its current centroid (distinct values, farthest
    first), so that all ``k = 2^b`` shared values the index width pays for are used where the data
    allow. It stops when no assignment changes and no cluster can be refilled, or after
    ``max_iterations``.

    Args:
        values: The values (any shape; flattened), finite.
        clusters: ``k``. With fewer distinct values than ``k`` some clusters stay empty.
        max_iterations: Upper bound on Lloyd iterations.

    Returns:
        ``(centroids, assignment)``: float64 centroids ``(k,)`` in increasing order, and the
        index of each value's centroid (int64, ``values``' flattened order). Clusters that are
        still empty keep their centroid here (:func:`shared_weights` drops them).
    """
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0:
        raise ConfigError("k-means needs at least one value (a layer keeps no weight)")
    if not np.all(np.isfinite(values)):
        raise ConfigError("k-means got a NaN or infinite weight")
    if clusters < 1:
        raise ConfigError(f"k-means needs at least one cluster, got {clusters}")
    centroids = np.linspace(values.min(), values.max(), clusters)
    assignment = None
    for _ in range(max(1, max_iterations)):
        centroids = np.sort(centroids)
        midpoints = (centroids[1:] + centroids[:-1]) / 2
        new_assignment = np.searchsorted(midpoints, values, side="left")
        counts = np.bincount(new_assignment, minlength=clusters)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            distance = np.abs(values - centroids[new_assignment])
            far = values[np.argsort(-distance, kind="stable")]
            far = far[np.sort(np.unique(far, return_index=True)[1])]  # distinct, farthest first
            far = far[np.abs(far - centroids[np.searchsorted(midpoints, far)]) > 0][: empty.size]
            if far.size:  # refill, then assign again
                centroids[empty[: far.size]] = far
                assignment = None
                continue
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = np.bincount(assignment, weights=values, minlength=clusters)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    centroids = np.sort(centroids)
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return centroids, np.searchsorted(midpoints, values, side="left")


def shared_weights(weights: np.ndarray, mask: np.ndarray, bits: int,
                   max_iterations: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Cluster a layer's kept weights into at most ``2^bits`` shared values.

    Returns:
        ``(centroids, index)``: float32 centroids of the non-empty clusters, increasing, and an
        int32 kernel-shaped array with each kept weight's centroid (0 at removed weights).
    """
    mask = np.asarray(mask, bool)
    centroids, assignment = kmeans_1d(np.asarray(weights)[mask], 2 ** int(bits), max_iterations)
    used = np.unique(assignment)
    relabel = np.zeros(centroids.size, np.int64)
    relabel[used] = np.arange(used.size)
    index = np.zeros(mask.shape, np.int32)
    index[mask] = relabel[assignment]
    return centroids[used].astype(np.float32), index


def share_weights(model, masks: Mapping[str, np.ndarray], bits: Mapping[str, int],
                  max_iterations: int) -> None:
    """Replace every layer's kernel by a weight-shared one, in place (§3.1).

    Each layer's kept weights are clustered (:func:`shared_weights`) and its posterior becomes a
    :class:`~bayescomp.posteriors.codebook.SharedCodebook` of the centroids, the weights'
    cluster indices and the mask, so the next phase trains the centroids (Eq. 3).
    """
    for name, layer in objectives.variational_layers(model):
        centroids, index = shared_weights(np.asarray(layer.posterior.mean()), masks[name],
                                          bits[name], max_iterations)
        layer.posterior = SharedCodebook(centroids, index, masks[name])


def codebook_network(model, widths=None) -> QuantizedNetwork:
    """The final :class:`QuantizedNetwork` of a weight-shared model: kernels with codebooks.

    A layer's codebook is the sorted distinct values its kept weights take (a fine-tuned centroid
    can meet another; a centroid of exactly ``-0.0`` is stored as ``+0.0``, so that kernels and
    codebook agree bit for bit).
    """
    names, kernels, biases, codebooks, masks = [], [], [], [], []
    for name, layer in objectives.variational_layers(model):
        mask = np.asarray(layer.posterior.keep[...], bool)
        # + 0.0 turns a -0.0 centroid into +0.0 (IEEE: -0 + +0 = +0); removed weights are +0.0.
        values = np.asarray(layer.posterior.values[...], np.float32) + np.float32(0.0)
        kernel = np.where(mask, values[np.asarray(layer.posterior.index[...])], np.float32(0.0))
        names.append(name)
        kernels.append(kernel.astype(np.float32))
        biases.append(np.asarray(layer.bias[...], np.float32))
        codebooks.append(np.unique(kernel[mask]).astype(np.float32))
        masks.append(mask)
    precision = codebook_precision(codebooks, kernels, masks)
    return QuantizedNetwork(names, kernels, biases, masks, precision, codebooks,
                            norms=quantize_lib.norm_params(model, dict(zip(names, masks))),
                            widths=widths)


# --------------------------------------------------------------------------------------------
# The procedure


def _per_layer(cfg_value, names: Sequence[str], what: str) -> dict[str, Any]:
    values = dict(OmegaConf.to_container(cfg_value, resolve=True) if isinstance(
        cfg_value, DictConfig) else (cfg_value or {}))
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{what} names unknown layers {unknown}; this model's layers are "
                          f"{list(names)}")
    return values


def _settings(cfg: DictConfig, names: Sequence[str], kinds: Mapping[str, str]) -> dict:
    """Per-layer targets and bits from ``cfg.method``, checked."""
    method = cfg.method
    keep = _per_layer(method.get("keep"), names, "method.keep")
    missing = [n for n in names if n not in keep]
    if missing:
        raise ConfigError(f"method.keep has no kept fraction for layers {missing}; set "
                          f"method.keep.<layer> (a fraction in (0, 1]) for each of {list(names)}")
    quantize = method.quantize
    bits_by_kind = dict(quantize.bits)
    bits = {n: int(bits_by_kind[kinds[n]]) for n in names if kinds[n] in bits_by_kind}
    bits.update({k: int(v) for k, v in _per_layer(quantize.get("per_layer"), names,
                                                   "method.quantize.per_layer").items()})
    for name in names:
        if not 0 <= bits.get(name, -1) <= 16:
            raise ConfigError(f"layer {name}: quantization bits {bits.get(name)} outside 0..16; "
                              f"set method.quantize.bits.{kinds[name]} or per_layer.{name}")
    rounds = int(method.prune_rounds)
    return {"keep": {n: float(keep[n]) for n in names}, "bits": bits, "rounds": rounds,
            "schedule": {n: keep_schedule(float(keep[n]), rounds) for n in names}}


def _epochs(value, cfg: DictConfig) -> int:
    """A phase's epochs: ``null`` means ``trainer.epochs`` (one knob for every phase)."""
    epochs = int(cfg.trainer.epochs if value is None else value)
    if epochs < 0:
        raise ConfigError(f"a phase cannot train {epochs} epochs")
    return epochs


def _phase(cfg: DictConfig, name: str, epochs, settings, trains, learning_rates,
           masks=None, record=None) -> Phase:
    """A retraining phase: the run's optimiser with the phase's schedule and per-type rates."""
    return Phase(
        name, _epochs(epochs, cfg),
        optimizer={**OmegaConf.to_container(cfg.optimizer, resolve=True),
                   "schedule": str(settings.schedule),
                   "decay_start": float(settings.get("decay_start", 0.0))},
        key=jax.random.fold_in(jax.random.key(int(cfg.seed)), zlib.crc32(name.encode())),
        trains=trains, learning_rates=learning_rates, masks=masks, record=record)


def _prune_rounds(cfg, model, training: TrainingRun, settings: dict) -> tuple[dict, list]:
    """Iterative magnitude pruning, each round followed by retraining with the mask fixed."""
    retrain_cfg = cfg.method.retrain
    rates = ((PointWeight, float(retrain_cfg.lr)), (Bias, float(retrain_cfg.bias_lr)))
    layers = objectives.variational_layers(model)
    masks: dict = {name: None for name, _ in layers}
    rounds = []
    for r in range(settings["rounds"]):
        for name, layer in layers:
            kernel = np.asarray(layer.posterior.weight[...])
            masks[name] = magnitude_mask(kernel, settings["schedule"][name][r], masks[name])
            layer.posterior.weight[...] = jnp.where(masks[name], kernel, 0.0)
        kept = sum(int(m.sum()) for m in masks.values())
        percent_kept = 100.0 * kept / sum(m.size for m in masks.values())
        before = training.error(model)
        phase = _phase(cfg, f"prune{r + 1}", retrain_cfg.epochs, retrain_cfg,
                       (PointWeight, Bias), rates, masks=dict(masks),
                       record=lambda _, p=percent_kept: {"percent_kept": p})
        training.fit(model, phase)
        after = training.error(model)
        rounds.append({"round": r + 1, "percent_kept": percent_kept,
                       "percent_kept_per_layer": {n: 100.0 * float(m.mean())
                                                  for n, m in masks.items()},
                       "error_after_pruning": before, "error_after_retraining": after})
        log.info("pruning round %d: %.2f %% kept, test error %.2f %% after pruning, %.2f %% after "
                 "%d retraining epochs", r + 1, percent_kept, before, after, phase.epochs)
    return masks, rounds


def run(cfg: DictConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Deep Compression of ``cfg.method.pretrained_run``: prune, retrain, share, fine-tune.

    Rerunning in the same ``workdir`` resumes (finished phases are restored from their
    checkpoints, not retrained). Writes ``metrics.json`` (keys as the variational runs; per-round
    errors under ``deep_compression``), ``quantized_network.npz``, ``config.yaml``, TensorBoard
    events and ``plots/weights_<layer>.png``.

    Args:
        cfg: The composed configuration (``conf/method/dc.yaml``).
        workdir: The run directory.

    Returns:
        The metrics.
    """
    workdir = runs.prepare_run_directory(cfg, workdir)
    model, pretrained_metrics = pretrained.load_pretrained(cfg)
    dataset = runs.load_run_dataset(cfg)
    layers = objectives.variational_layers(model)
    names = [name for name, _ in layers]
    kinds = {n: "conv" if layer.posterior.weight[...].ndim == 4 else "dense" for n, layer in layers}
    settings = _settings(cfg, names, kinds)
    method = cfg.method
    training = TrainingRun(cfg, workdir, dataset, resumable=runs.RESUMABLE_CHANGES_RETRAINING,
                           pretrained_run=str(method.pretrained_run))
    pretrained_kernels = {n: np.asarray(layer.posterior.weight[...]) for n, layer in layers}
    dense_error = pretrained.check_loaded(pretrained_metrics, training.error(model))
    log.info("pretrained %s: test error %.2f %% (its run reported %.2f %%)",
             method.pretrained_run, dense_error, pretrained_metrics.get("test_error", math.nan))
    try:
        masks, rounds = _prune_rounds(cfg, model, training, settings)
        pruned_error = training.error(model)
        # 2. Weight sharing: k-means per layer over the kept weights, linear initialisation.
        quantize_cfg = method.quantize
        share_weights(model, masks, settings["bits"], int(quantize_cfg.kmeans_iterations))
        kmeans_error = training.error(model)
        # 3. Fine-tuning of the centroids (gradients summed per cluster, Eq. 3) and the biases.
        finetune = quantize_cfg.finetune
        phase = _phase(cfg, "finetune", finetune.epochs, finetune, (CodebookValues, Bias),
                       ((CodebookValues, float(finetune.lr)), (Bias, float(finetune.bias_lr))))
        training.fit(model, phase)
    finally:
        training.close()
    # 4. The quantized network and its error.
    quantized = codebook_network(model, runs.model_widths(cfg))
    quantized_error = training.error(quantize_lib.quantized_model(
        models.get(cfg.model.name), quantized, input_shape=dataset.x_train.shape[1:],
        num_classes=dataset.num_classes))
    log.info("weight sharing (%s bits): test error %.2f %% after k-means, %.2f %% after %d "
             "epochs of centroid fine-tuning", settings["bits"], kmeans_error, quantized_error,
             phase.epochs)
    _save_weight_plots(workdir / "plots", names, pretrained_kernels, quantized)
    extra = {
        # The variational procedure's check of fixed pruning thresholds does not apply: this
        # procedure prunes to its own targets and measures the result itself.
        "pruning_check": None,
        "pretrained_run": str(method.pretrained_run),
        "pretrained_loaded_from": pretrained_metrics["loaded_from"],
        "pretrained_test_error": dense_error,  # measured here, as soft weight-sharing does
        "deep_compression": {
            "keep_target": settings["keep"], "bits": settings["bits"], "rounds": rounds,
            "error_after_kmeans": kmeans_error, "error_after_finetuning": quantized_error,
        },
    }
    return metrics.finish_run(
        cfg, workdir, dataset=dataset, quantized=quantized, history=training.history,
        train_seconds=training.train_seconds,
        images_per_epoch=training.steps_per_epoch * training.batch_size,
        test_error=dense_error, pruned_test_error=pruned_error,
        quantized_test_error=quantized_error, pruning_accounting="unstructured", extra=extra)


def _save_weight_plots(directory: pathlib.Path, names, pretrained: Mapping[str, np.ndarray],
                       quantized: QuantizedNetwork) -> None:
    """Per layer: histogram of the pretrained weights, of the kept ones, and the shared values.

    Han et al. (2016), Fig. 4 shows the same view (weight distribution with the linearly
    initialised and the fine-tuned centroids).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name, mask, codebook in zip(quantized.names, quantized.masks, quantized.codebooks):
        weights = pretrained[name].ravel()
        fig, ax = histogram_figure.log_count_axes(
            title=f"{name}: {codebook.size} shared values (red)", xlabel="weight",
            ylabel="count")
        bins = np.linspace(weights.min(), weights.max(), 120)
        histogram_figure.add_histogram(ax, weights, bins, color="tab:gray", alpha=0.6,
                                       label="pretrained")
        histogram_figure.add_histogram(ax, pretrained[name][mask], bins, color="tab:blue",
                                       alpha=0.8,
                                       label=f"kept by pruning ({100 * mask.mean():.1f} %)")
        for value in codebook:
            ax.axvline(value, color="tab:red", linewidth=0.5, alpha=0.7)
        ax.legend(fontsize=8, loc="upper right")  # "best" scans every patch: slow
        histogram_figure.save(fig, directory / f"weights_{name}.png")
