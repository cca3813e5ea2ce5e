r"""Soft weight-sharing: retrain a dense network under a learned Gaussian-mixture prior, then
quantise every weight to the mean of its most responsible component.

Ullrich, Meeds & Welling, "Soft Weight-Sharing for Neural Network Compression", ICLR 2017;
the authors' tutorial ``KarenUllrich/Tutorial-SoftWeightSharingForNNCompression``
(methods.md §4). Procedure key ``soft_weight_sharing`` (:mod:`bayescomp.procedures`).

**Retraining.** Starting from a finished dense run (``method.pretrained_run``), the weights
``w`` and the mixture parameters θ = (μ, γ, ρ) of
:class:`bayescomp.priors.gaussian_mixture.GaussianMixture` are trained jointly by Adam with one
learning rate per group (tutorial: w 5e-4, μ 1e-4, γ 3e-3, ρ 3e-3) on

.. math::

    \mathcal L(w, \theta) = \frac1B\sum_{n\in\text{batch}} -\log p(y_n \mid x_n, w)
        + \frac{\tau}{N}\Big(-\log p(w \mid \theta) - \log p(\lambda)\Big),

N the training-set size, τ the complexity weight (paper 5e-3, tutorial 3e-3).

**Post-processing** (the tutorial's ``discretesize``, methods.md §4.2), :func:`post_process`:

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
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Sequence

import numpy as np
import scipy.special

from bayescomp.errors import ConfigError
from bayescomp.priors.gaussian_mixture import (GaussianMixture, MixtureParams, component_means,
                                               gaussian_kl, log_mixing_proportions)

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
    return [np.unique(np.asarray(kernel, np.float32)[np.asarray(kernel) != 0]) for kernel in kernels]


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
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
