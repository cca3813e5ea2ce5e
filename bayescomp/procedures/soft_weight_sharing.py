r"""Soft weight-sharing: retrain a dense network under a learned Gaussian-mixture prior, then
quantise every weight to the mean of its most responsible component.

Ullrich, Meeds & Welling, "Soft Weight-Sharing for Neural Network Compression", ICLR 2017;
the authors' tutorial ``KarenUllrich/Tutorial-SoftWeightSharingForNNCompression``
(arXiv:1702.04008). Procedure key ``soft_weight_sharing`` (:mod:`bayescomp.procedures`).

**Retraining.** Starting from a finished dense run (``method.pretrained_run``), the weights
``w`` and the mixture parameters θ = (μ, γ, ρ) of
:class:`bayescomp.priors.gaussian_mixture.GaussianMixture` are trained jointly by Adam with one
learning rate per group (tutorial: w 5e-4, μ 1e-4, γ 3e-3, ρ 3e-3) on

.. math::

    \mathcal L(w, \theta) = \frac1B\sum_{n\in\text{batch}} -\log p(y_n \mid x_n, w)
        + \frac{\tau}{N}\Big(-\log p(w \mid \theta) - \log p(\lambda)\Big),

N the training-set size, τ the complexity weight (paper 5e-3, tutorial 3e-3).

**Post-processing** (the tutorial's ``discretesize``, its ``helpers.py``), :func:`post_process`:

1. Merge components whose Gaussian KL is below ``merge_tolerance`` (either direction; merging
   is transitive). A merged component has the summed π, and the π-weighted means of μ and λ.
2. The merged component holding component 0 gets mean exactly 0 (the reference sets the merged
   mean *nearest* 0 to 0; that is the same component whenever component 0 is unmerged, since
   its mean is 0 exactly, and naming it directly keeps the pruning component the pruning
   component whatever else lies near 0).
3. Each weight becomes the mean of ``argmax_j π_j √λ_j exp(−λ_j (w−μ_j)²/2)``, with the same
   normalised π as in training. Weights won by the zero component become exactly 0: they are
   pruned (unstructured).

The result is a :class:`~bayescomp.compression.quantize.QuantizedNetwork` whose ``codebooks``
hold, per layer, the sorted distinct non-zero means its weights took.

Entry point: :func:`run`: one phase ``sws`` of the training loop (:mod:`bayescomp.loop`),
checkpointed every epoch; rerunning resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
from typing import Any, Sequence

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from bayescomp import atomic, metrics, models, objectives, pretrained, priors, runs
from bayescomp.bit_precision import codebook_precision
from bayescomp.compression import quantize as quantize_lib
from bayescomp.compression.quantize import QuantizedNetwork
from bayescomp.errors import ConfigError
from bayescomp.loop import Phase, TrainingRun
from bayescomp.nn.norm import NormBias, NormScale
from bayescomp.posteriors.variables import Bias, PointWeight
from bayescomp.priors.gaussian_mixture import (GaussianMixture, MixtureParams, component_means,
                                               gaussian_kl, init_mixture, log_mixing_proportions,
                                               negative_log_prior)

log = logging.getLogger(__name__)

#: Parameter groups with their own Adam learning rate (``method.learning_rates``).
LEARNING_RATE_GROUPS = ("weights", "means", "log_precisions", "rhos")
#: The figure written into ``RUN_DIR/plots/``.
FIGURE_NAME = "sws_weights.png"

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Post-processing


@dataclasses.dataclass(frozen=True)
class MergedMixture:
    """The mixture after merging near-identical components (float64).

    Attributes:
        means: ``(K,)`` merged means; ``means[zero_index]`` is exactly 0.
        log_precisions: ``(K,)`` log λ of the merged components.
        log_pis: ``(K,)`` log π of the merged components (they sum to 1).
        groups: For each merged component, the original component indices it holds.
        zero_index: The merged component that holds component 0 (the pruning component).
    """

    means: np.ndarray
    log_precisions: np.ndarray
    log_pis: np.ndarray
    groups: list[list[int]]
    zero_index: int


def merge_components(means, log_precisions, log_pis, tolerance: float) -> MergedMixture:
    r"""Merge components whose KL divergence is below ``tolerance``; zero the pruning component.

    Components i and j are linked when KL(i‖j) < tolerance or KL(j‖i) < tolerance
    (:func:`~bayescomp.priors.gaussian_mixture.gaussian_kl`); the merged components are the
    connected groups. A group G gets

    .. math:: \pi_G = \sum_{j\in G}\pi_j,\quad \mu_G = \frac{\sum_{j\in G}\pi_j\mu_j}{\pi_G},
              \quad \lambda_G = \frac{\sum_{j\in G}\pi_j\lambda_j}{\pi_G}

    (the reference's π-weighted averages of means and precisions), then the group holding
    component 0 gets ``μ_G = 0`` exactly.

    Args:
        means: ``(J,)`` all means, component 0 first.
        log_precisions: ``(J,)`` log λ_j.
        log_pis: ``(J,)`` normalised log π_j.
        tolerance: KL threshold in nats (the reference uses 1e-10: only practically identical
            components merge). 0 merges nothing.

    Returns:
        A :class:`MergedMixture`, groups ordered by their smallest original index (so the zero
        component's group comes first).

    Raises:
        ConfigError: ``tolerance`` is negative or not finite, or the inputs disagree in length.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"merge_tolerance must be a finite number >= 0 (nats), got {tolerance!r}")
    means = np.asarray(means, np.float64)
    log_precisions = np.asarray(log_precisions, np.float64)
    log_pis = np.asarray(log_pis, np.float64)
    if not (means.shape == log_precisions.shape == log_pis.shape and means.ndim == 1):
        raise ConfigError(f"mixture parameters disagree in shape: means {means.shape}, "
                          f"log precisions {log_precisions.shape}, log pis {log_pis.shape}")
    count = means.shape[0]
    kl = gaussian_kl(means[:, None], log_precisions[:, None], means[None, :],
                     log_precisions[None, :])
    linked = (kl < tolerance) | (kl.T < tolerance)

    # Union-find over the linked pairs: groups are the connected components.
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(linked)):
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    by_root: dict[int, list[int]] = {}
    for i in range(count):
        by_root.setdefault(root(i), []).append(i)
    groups = sorted(by_root.values(), key=min)

    merged_means, merged_log_precisions, merged_log_pis = [], [], []
    for group in groups:
        log_pi = scipy.special.logsumexp(log_pis[group])
        weights = np.exp(log_pis[group] - log_pi)  # π_j / π_G, stable for tiny π
        merged_log_pis.append(log_pi)
        merged_means.append(float(np.sum(weights * means[group])))
        merged_log_precisions.append(float(np.log(np.sum(weights * np.exp(log_precisions[group])))))
    zero_index = next(k for k, group in enumerate(groups) if 0 in group)
    merged_means[zero_index] = 0.0
    return MergedMixture(np.array(merged_means), np.array(merged_log_precisions),
                         np.array(merged_log_pis), groups, zero_index)


def log_responsibilities(weights, mixture: MergedMixture) -> np.ndarray:
    r"""Unnormalised log responsibilities ``log π_k + ½ log λ_k − ½ λ_k (w − μ_k)²`` (float64).

    Args:
        weights: Any shape; flattened.
        mixture: The merged mixture.

    Returns:
        ``(n, K)``; the argmax of a row is the component that quantises that weight.
    """
    w = np.asarray(weights, np.float64).reshape(-1, 1)
    return (mixture.log_pis + 0.5 * mixture.log_precisions - _HALF_LOG_2PI
            - 0.5 * np.exp(mixture.log_precisions) * (w - mixture.means) ** 2)


def assign_components(weights, mixture: MergedMixture, chunk: int = 1 << 16) -> np.ndarray:
    """The most responsible merged component of every weight (same shape as ``weights``).

    Computed in chunks of ``chunk`` weights so that a large layer never holds an ``(n, K)``
    float64 array of more than ``chunk·K`` entries.
    """
    flat = np.asarray(weights, np.float64).ravel()
    indices = np.empty(flat.shape, np.int64)
    for start in range(0, flat.size, chunk):
        indices[start:start + chunk] = np.argmax(
            log_responsibilities(flat[start:start + chunk], mixture), axis=1)
    return indices.reshape(np.shape(weights))


def quantize_to_mixture(weights, mixture: MergedMixture) -> np.ndarray:
    """Every weight replaced by the mean of its most responsible component (float32).

    Weights of the zero component become +0.0 exactly (never −0.0: ``np.where``).
    """
    indices = assign_components(weights, mixture)
    values = mixture.means[indices].astype(np.float32)
    return np.where(indices == mixture.zero_index, np.float32(0.0), values)


def post_process(params: MixtureParams, prior: GaussianMixture,
                 merge_tolerance: float) -> MergedMixture:
    """Merge the trained mixture (:func:`merge_components`) with the training π normalisation."""
    log_pis = log_mixing_proportions(params.rhos, prior.pi_zero)
    return merge_components(np.asarray(component_means(params)),
                            np.asarray(params.log_precisions), np.asarray(log_pis),
                            merge_tolerance)


def layer_codebooks(kernels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per layer, the sorted distinct float32 values of its kept (non-zero) weights."""
    return [np.unique(np.asarray(kernel, np.float32)[np.asarray(kernel) != 0])
            for kernel in kernels]


# --------------------------------------------------------------------------------------------
# The paper's figure


def save_weight_figure(pretrained: np.ndarray, retrained: np.ndarray, mixture: MergedMixture,
                       path: str | pathlib.Path, *, max_points: int = 200_000,
                       seed: int = 0) -> pathlib.Path:
    """Pretrained vs retrained weights with marginal histograms and the mixture components.

    Ullrich et al. (2017), Figure 1 (and the tutorial's retraining animation): a scatter of every
    weight's pretrained value (x) against its retrained value (y); above it the histogram of
    the pretrained weights, to its right the histogram of the retrained weights (log counts,
    otherwise the zero spike hides the rest). Each merged component's mean is a horizontal line
    across the scatter and the right histogram with a ±2σ band; the zero component is drawn in
    its own colour.

    Args:
        pretrained: The weights before retraining (flattened).
        retrained: The same weights after retraining.
        mixture: The merged mixture (its means and precisions).
        path: PNG file to write (parent directories are created).
        max_points: At most this many weights are scattered (a random subset, for file size and
            speed); the histograms use all.
        seed: Seed of that subset.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pretrained = np.asarray(pretrained, np.float64).ravel()
    retrained = np.asarray(retrained, np.float64).ravel()
    if pretrained.shape != retrained.shape:
        raise ConfigError(f"pretrained ({pretrained.size}) and retrained ({retrained.size}) "
                          "weights differ in number")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = np.arange(pretrained.size)
    if pretrained.size > max_points:
        shown = np.random.default_rng(seed).choice(pretrained.size, max_points, replace=False)

    figure = plt.figure(figsize=(8, 8))
    grid = figure.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4), wspace=0.05,
                               hspace=0.05)
    scatter = figure.add_subplot(grid[1, 0])
    top = figure.add_subplot(grid[0, 0], sharex=scatter)
    right = figure.add_subplot(grid[1, 1], sharey=scatter)

    stds = np.exp(-0.5 * mixture.log_precisions)
    for k, (mean, std) in enumerate(zip(mixture.means, stds)):
        colour = "tab:red" if k == mixture.zero_index else "tab:blue"
        for axis in (scatter, right):
            axis.axhline(mean, color=colour, linewidth=0.6)
            axis.axhspan(mean - 2 * std, mean + 2 * std, color=colour, alpha=0.12, linewidth=0)
    scatter.scatter(pretrained[shown], retrained[shown], s=1, alpha=0.3, color="k",
                    linewidths=0, rasterized=True)
    scatter.set_xlabel("pretrained weight")
    scatter.set_ylabel("retrained weight")
    bins = 200
    top.hist(pretrained, bins=bins, color="tab:green", log=True)
    right.hist(retrained, bins=bins, color="tab:green", orientation="horizontal", log=True)
    top.set_ylabel("count")
    right.set_xlabel("count")
    top.tick_params(labelbottom=False)
    right.tick_params(labelleft=False)
    low = min(pretrained.min(), retrained.min())
    high = max(pretrained.max(), retrained.max())
    margin = 0.05 * (high - low or 1.0)
    scatter.set_xlim(low - margin, high + margin)
    scatter.set_ylim(low - margin, high + margin)
    top.set_title(f"soft weight-sharing: {len(mixture.means)} components "
                  f"(red: zero component, ±2σ bands)", fontsize=10)
    atomic.save_figure(figure, path, dpi=120, bbox_inches="tight")  # no truncated PNG on a full disk
    plt.close(figure)
    return path


# --------------------------------------------------------------------------------------------
# The procedure


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated ``cfg.method`` of a soft weight-sharing run.

    Attributes:
        prior: The mixture's hyper-parameters.
        tau: Weight τ of the complexity term (``loss = CE + τ/N·(−log p(w) − log p(λ))``) in
            the first epoch.
        tau_final: τ in the last epoch, reached geometrically (:func:`tau_at`); ``None``: τ
            stays constant.
        learning_rates: Adam learning rate of each group of :data:`LEARNING_RATE_GROUPS`.
        merge_tolerance: KL below which components merge in post-processing (nats).
    """

    prior: GaussianMixture
    tau: float
    tau_final: float | None
    learning_rates: dict[str, float]
    merge_tolerance: float


def tau_at(settings: Settings, epoch: int, epochs: int) -> float:
    """The complexity weight of ``epoch`` (0-based) of ``epochs``.

    Constant ``settings.tau``, or, with ``tau_final``, the geometric path
    ``τ_e = τ·(τ_final/τ)^(e/(E−1))`` from ``tau`` in the first epoch to ``tau_final`` in the
    last. Annealing τ upwards is the tutorial's first suggested improvement over a fixed τ
    (its last notebook cell): a small τ early lets the network keep its accuracy while the mixture
    forms; a large τ late pulls the weights onto the component means, so quantising to the
    means (post-processing) moves them little.
    """
    if settings.tau_final is None or epochs <= 1:
        return settings.tau
    return settings.tau * (settings.tau_final / settings.tau) ** (epoch / (epochs - 1))


def _finite_number(value, what: str, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low:
        raise ConfigError(f"{what} must be a finite number >= {low:g}, got {value!r}")
    return float(value)


def settings_from_config(method_cfg) -> Settings:
    """Validate ``cfg.method`` of ``conf/method/sws.yaml``.

    Raises:
        ConfigError: A prior other than ``gaussian_mixture``, a bad hyper-parameter, a negative
            or non-finite τ, learning rate or tolerance, a zero τ with ``tau_final``, or
            missing / unknown learning-rate groups.
    """
    method = OmegaConf.to_container(method_cfg, resolve=True) if isinstance(
        method_cfg, DictConfig) else dict(method_cfg)
    prior_cfg = dict(method.get("prior") or {})
    name = prior_cfg.pop("name", None)
    if name != "gaussian_mixture":
        raise ConfigError(f"soft weight-sharing needs method.prior.name=gaussian_mixture, got "
                          f"{name!r}")
    prior = priors.get(name, **prior_cfg)
    rates = method.get("learning_rates")
    if not isinstance(rates, dict) or set(rates) != set(LEARNING_RATE_GROUPS):
        raise ConfigError(f"method.learning_rates must give exactly the groups "
                          f"{list(LEARNING_RATE_GROUPS)}, got {rates!r}")
    tau = _finite_number(method.get("tau"), "method.tau")
    tau_final = method.get("tau_final")
    if tau_final is not None:
        tau_final = _finite_number(tau_final, "method.tau_final")
        if tau == 0.0 or tau_final == 0.0:
            raise ConfigError(f"an annealed tau (method.tau_final={tau_final:g}) follows a "
                              f"geometric path and needs method.tau and method.tau_final > 0; "
                              f"got method.tau={tau:g}. Set method.tau_final=null for a "
                              "constant tau.")
    return Settings(
        prior=prior,
        tau=tau,
        tau_final=tau_final,
        learning_rates={g: _finite_number(rates[g], f"method.learning_rates.{g}")
                        for g in LEARNING_RATE_GROUPS},
        merge_tolerance=_finite_number(method.get("merge_tolerance"), "method.merge_tolerance"),
    )


def quantize_network(names: Sequence[str], kernels, biases, mixture: MergedMixture,
                     include_biases: bool) -> QuantizedNetwork:
    """The :class:`~bayescomp.compression.quantize.QuantizedNetwork` of the retrained weights.

    Kernels (and, with ``include_biases``, biases) are quantised to ``mixture``
    (:func:`quantize_to_mixture`); the masks are the weights that did not quantise to 0; each
    layer's codebook is the sorted distinct non-zero values it uses (``None`` for a layer with
    nothing kept); bits per layer are the index widths ``ceil(log2 K)``
    (:func:`bayescomp.bit_precision.codebook_precision`).
    """
    q_kernels = [quantize_to_mixture(np.asarray(kernels[n]), mixture) for n in names]
    q_biases = [quantize_to_mixture(np.asarray(biases[n]), mixture) if include_biases
                else np.asarray(biases[n], np.float32) for n in names]
    masks = [kernel != 0 for kernel in q_kernels]
    codebooks = [book if book.size else None for book in layer_codebooks(q_kernels)]
    precision = codebook_precision(codebooks, q_kernels, masks)
    return QuantizedNetwork(list(names), q_kernels, q_biases, masks, precision, codebooks)


def _mixture_summary(mixture: MergedMixture) -> dict[str, Any]:
    """The merged mixture as JSON-ready lists (means, standard deviations, mixing proportions)."""
    return {"means": [float(m) for m in mixture.means],
            "stds": [float(s) for s in np.exp(-0.5 * mixture.log_precisions)],
            "pis": [float(p) for p in np.exp(mixture.log_pis)],
            "groups": [list(map(int, g)) for g in mixture.groups],
            "zero_index": int(mixture.zero_index)}


class MixtureMeans(nnx.Param):
    """μ_1..μ_{J−1} of the learned mixture prior."""


class MixtureLogPrecisions(nnx.Param):
    """γ_j = log λ_j of the learned mixture prior, zero component first."""


class MixtureRhos(nnx.Param):
    """Logits ρ of π_1..π_{J−1} of the learned mixture prior."""


class MixturePriorNetwork(nnx.Module):
    """A point-weight network under a learned Gaussian-mixture prior.

    Its :meth:`kl` is the complexity term ``−log p(w | θ) − log p(λ)`` (the KL of a point
    posterior against the prior, up to the delta's constant entropy), so the one training loop
    minimises ``mean NLL + τ·KL/N`` with the phase's KL weight β = τ.

    Args:
        network: The point-weight model (its kernels, and with ``prior.include_biases`` its
            biases, are under the prior).
        mixture: The mixture's starting parameters.
        prior: The mixture's hyper-parameters.
    """

    def __init__(self, network: nnx.Module, mixture: MixtureParams, prior: GaussianMixture):
        self.network = network
        self.means = MixtureMeans(jnp.asarray(mixture.means))
        self.log_precisions = MixtureLogPrecisions(jnp.asarray(mixture.log_precisions))
        self.rhos = MixtureRhos(jnp.asarray(mixture.rhos))
        self.prior = prior

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.network(x, rngs=rngs)

    def mixture(self) -> MixtureParams:
        return MixtureParams(self.means[...], self.log_precisions[...], self.rhos[...])

    def under_prior(self) -> list:
        """The tensors the mixture covers, in a fixed order (kernels, then biases)."""
        layers = objectives.variational_layers(self.network)
        tensors = [layer.posterior.weight[...] for _, layer in layers]
        if self.prior.include_biases:
            tensors += [layer.bias[...] for _, layer in layers]
        return tensors

    def kl(self) -> jax.Array:
        return negative_log_prior(self.under_prior(), self.mixture(), self.prior)


def _layer_arrays(network) -> tuple[list[str], dict, dict]:
    layers = objectives.variational_layers(network)
    return ([name for name, _ in layers],
            {n: np.asarray(layer.posterior.weight[...]) for n, layer in layers},
            {n: np.asarray(layer.bias[...]) for n, layer in layers})


def _retrain(cfg, training: TrainingRun, root: MixturePriorNetwork, settings: Settings,
             quantized_error) -> None:
    """The one retraining phase: weights and mixture under ``τ_e``, every epoch recorded."""
    prior, epochs = settings.prior, int(cfg.trainer.epochs)
    rates = settings.learning_rates

    def record(model) -> dict[str, float]:
        # Where post-processing would stand after this epoch: weights in the zero component and
        # the error of the quantised network (cheap next to an epoch; shows when to stop).
        names, kernels, biases = _layer_arrays(model.network)
        mixture = MixtureParams(*(np.asarray(a) for a in model.mixture()))
        quantized = quantize_network(names, kernels, biases,
                                     post_process(mixture, prior, settings.merge_tolerance),
                                     prior.include_biases)
        total = sum(m.size for m in quantized.masks)
        kept = sum(int(m.sum()) for m in quantized.masks)
        return {"percent_kept": 100.0 * kept / total,
                "quantized_test_error": quantized_error(quantized),
                "zero_component_std": float(np.exp(-0.5 * float(mixture.log_precisions[0]))),
                "components_used": float(len({float(v) for book in quantized.codebooks
                                              if book is not None for v in book}))}

    training.fit(root, Phase(
        "sws", epochs,
        optimizer={**OmegaConf.to_container(cfg.optimizer, resolve=True),
                   "schedule": "constant"},
        key=jax.random.fold_in(jax.random.key(int(cfg.seed)), zlib.crc32(b"sws")),
        # BatchNorm's γ and β (networks that have them) train with the weights they scale.
        learning_rates=(((PointWeight, Bias, NormScale, NormBias), rates["weights"]),
                        (MixtureMeans, rates["means"]),
                        (MixtureLogPrecisions, rates["log_precisions"]),
                        (MixtureRhos, rates["rhos"])),
        kl_weight=lambda epoch: tau_at(settings, epoch, epochs), record=record))


def run(cfg: DictConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Soft weight-sharing of ``cfg.method.pretrained_run``: retrain, merge, quantise, report.

    Rerunning in the same ``workdir`` resumes the retraining from its last epoch checkpoint (a
    finished retraining is restored, not repeated). Writes ``metrics.json`` (keys as the
    variational runs, :func:`bayescomp.metrics.finish_run`; SWS specifics under ``sws``),
    ``quantized_network.npz``, ``config.yaml``, TensorBoard events and
    ``plots/sws_weights.png``.

    Errors in ``metrics.json``:

    * ``test_error``: the pretrained dense network;
    * ``pruned_test_error``: the retrained network with the zero component's weights set to 0
      and every other weight as retrained (pruning alone);
    * ``quantized_test_error``: the post-processed network (pruned and quantised), which the
      compression columns describe;
    * ``sws.retrained_test_error``: the retrained network before post-processing.

    Args:
        cfg: The composed configuration (``conf/method/sws.yaml``).
        workdir: The run directory.

    Returns:
        The metrics.

    Raises:
        BayescompError: Bad configuration, no usable pretrained run, missing data, a diverged
            retraining, or a post-processed network that keeps no weight.
    """
    workdir = runs.prepare_run_directory(cfg, workdir)
    settings = settings_from_config(cfg.method)
    prior = settings.prior
    model, pretrained_metrics = pretrained.load_pretrained(cfg)
    dataset = runs.load_run_dataset(cfg)
    training = TrainingRun(cfg, workdir, dataset, resumable=runs.RESUMABLE_CHANGES_RETRAINING,
                           pretrained_run=str(cfg.method.pretrained_run))
    dense_error = pretrained.check_loaded(pretrained_metrics, training.error(model))
    log.info("pretrained %s: test error %.2f %% (its run reported %.2f %%)",
             cfg.method.pretrained_run, dense_error,
             pretrained_metrics.get("test_error", math.nan))
    model_cls = models.get(cfg.model.name)

    widths = runs.model_widths(cfg)

    def point_error(kernels, biases) -> float:
        # The BatchNorms as they are now (they train with the weights), every channel.
        every_weight = {name: np.ones(np.shape(k), bool)
                        for name, k in zip(model_cls.layer_names, kernels)}
        return training.error(quantize_lib.point_model(
            model_cls, kernels, biases, input_shape=dataset.x_train.shape[1:],
            num_classes=dataset.num_classes, widths=widths,
            norms=quantize_lib.norm_params(model, every_weight)))

    names, kernels0, biases0 = _layer_arrays(model)
    root = MixturePriorNetwork(model, init_mixture(prior, [np.asarray(t) for t in (
        [kernels0[n] for n in names] + ([biases0[n] for n in names] if prior.include_biases
                                        else []))]), prior)
    pretrained_flat = np.concatenate([np.ravel(t) for t in root.under_prior()])
    try:
        _retrain(cfg, training, root, settings,
                 lambda q: point_error(q.kernels, q.biases))
    finally:
        training.close()
    return _post_process_and_report(cfg, workdir, training, root, settings, dense_error,
                                    pretrained_flat, point_error, dataset,
                                    pretrained_metrics["loaded_from"])


def _post_process_and_report(cfg, workdir, training, root, settings, dense_error,
                             pretrained_flat, point_error, dataset,
                             loaded_from: str) -> dict[str, Any]:
    """Merge the mixture, quantise the retrained weights, evaluate, write the results."""
    prior = settings.prior
    names, kernels, biases = _layer_arrays(root.network)
    mixture_params = MixtureParams(*(np.asarray(a) for a in root.mixture()))
    retrained_error = training.error(root)
    merged = post_process(mixture_params, prior, settings.merge_tolerance)
    quantized = quantize_network(names, kernels, biases, merged, prior.include_biases)
    quantized = dataclasses.replace(
        quantized, widths=runs.model_widths(cfg),
        norms=quantize_lib.norm_params(root.network, dict(zip(names, quantized.masks))))
    if not any(mask.any() for mask in quantized.masks):
        raise ConfigError(
            f"soft weight-sharing assigned every weight to the zero component (sigma "
            f"{math.exp(-0.5 * float(merged.log_precisions[merged.zero_index])):.3g}), so the "
            "quantised network is empty; retrain longer (trainer.epochs), or lower method.tau or "
            "method.prior.pi_zero. The retraining checkpoints in "
            f"{workdir / 'checkpoints'} are kept; rerun in a new hydra.run.dir to change them.")
    pruned_error = point_error([np.where(m, kernels[n], np.float32(0.0))
                                for n, m in zip(names, quantized.masks)],
                               [biases[n] for n in names])
    quantized_error = point_error(quantized.kernels, quantized.biases)
    retrained_flat = np.concatenate([np.ravel(np.asarray(t)) for t in root.under_prior()])
    figure = save_weight_figure(pretrained_flat, retrained_flat, merged,
                                workdir / "plots" / FIGURE_NAME)
    metrics_ = metrics.finish_run(
        cfg, workdir, dataset=dataset, quantized=quantized, history=training.history,
        train_seconds=training.train_seconds,
        images_per_epoch=training.steps_per_epoch * training.batch_size,
        test_error=dense_error, pruned_test_error=pruned_error,
        quantized_test_error=quantized_error, pruning_accounting="unstructured",
        # The variational procedure's check of fixed pruning thresholds does not apply: the
        # mixture decides what is pruned.
        extra={"pruning_check": None, "sws": {
            "pretrained_run": str(cfg.method.pretrained_run),
            "pretrained_loaded_from": loaded_from,
            "pretrained_test_error": dense_error,
            "retrained_test_error": retrained_error,
            "tau": settings.tau,
            "tau_final": settings.tau_final,
            "merge_tolerance": settings.merge_tolerance,
            "components": prior.num_components,
            "merged_components": len(merged.means),
            "mixture": _mixture_summary(merged),
            "figure": str(figure.relative_to(workdir)),
        }})
    log.info("soft weight-sharing: retrained %.2f %%, pruned %.2f %%, quantized %.2f %% test "
             "error; %d of %d weights kept (%.2f %%), %d merged components", retrained_error,
             pruned_error, quantized_error, metrics_["weights_kept"], metrics_["weights_total"],
             metrics_["percent_kept"], len(merged.means))
    return metrics_
