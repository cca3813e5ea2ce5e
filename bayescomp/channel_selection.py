r"""Which channels the channel methods keep: pure decisions from learned per-channel values.

Every function takes per-channel arrays by name (a BatchNorm's path, a switch's path, or a channel
group's name: :func:`per_group` turns per-BatchNorm values into per-group ones) and returns boolean
keep masks of the same shapes, by the same names. Nothing here touches a model: a procedure reads
the values, calls one of these, and hands the masks to pruning, which propagates them through the
channel groups (:mod:`bayescomp.models.graph`).

* **Variational CNN pruning** (Zhao et al., "Variational Convolutional Neural Network Pruning",
  CVPR 2019): remove channel c when its saliency mean is small, |μ_c| < τ, and where θ is given
  also σ_c < θ, the paper's "concentrated at zero" (:func:`vcnn_keep`; why θ is optional:
  :mod:`bayescomp.procedures.vcnn`); or, scale-free, when |μ_c|/σ_c < τ (:func:`vcnn_score`).
  The paper does not print the values of τ and θ used for its tables; τ = 0.02 is the only
  public implementation's, a third-party drop-in BatchNorm (keep if |μ| > 0.02 or σ > 0.01).
* **Network slimming** (Liu et al., "Learning Efficient Convolutional Networks through Network
  Slimming", ICCV 2017): one global threshold over the |γ| of every BatchNorm, the value below
  which a fraction ``percent`` of all scales lies (:func:`slimming_keep`).
* **Dirichlet pruning** (Adamczewski & Park, "Dirichlet Pruning for Convolutional Neural
  Networks", AISTATS 2021): the k channels with the largest switch per layer (:func:`top_k_keep`),
  k given (the paper's architectures, e.g. LeNet-5 ``5-8-45-15``; or one share of every layer,
  :func:`fraction_widths`) or chosen from the switches (:func:`mass_widths`,
  :func:`ratio_widths`).

**No layer is emptied.** A layer with no channel left cuts the network: everything after it sees
a constant. Every rule keeps at least ``min_keep`` channels per entry (default 1), the ones with
the largest score (|γ| for slimming, |μ| or |μ|/σ for VCNN), lower index first among equal scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from bayescomp.errors import ConfigError

#: The third-party VCNN code's τ (it keeps a channel if |μ| > 0.02 or σ > 0.01); the paper's
#: values are unverified. Its θ = 0.01 is not the default (:mod:`bayescomp.procedures.vcnn`).
VCNN_TAU = 0.02


def _ranking(score: np.ndarray) -> np.ndarray:
    """Indices from the largest score down; equal scores keep index order (stable)."""
    return np.argsort(-score, kind="stable")


def _top(score: np.ndarray, k: int) -> np.ndarray:
    keep = np.zeros(score.shape, bool)
    keep[_ranking(score)[:k]] = True
    return keep


def _at_least(keep: np.ndarray, score: np.ndarray, min_keep: int) -> np.ndarray:
    """``keep``, or the ``min_keep`` largest scores where ``keep`` has fewer."""
    if int(keep.sum()) >= min_keep:
        return keep
    return keep | _top(score, min(min_keep, score.size))


def _vectors(values: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    out = {}
    for name, value in values.items():
        array = np.asarray(value, np.float64)
        if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
            raise ValueError(f"{what} of {name!r} must be a non-empty finite vector (one entry "
                             f"per channel), got shape {array.shape}")
        out[name] = array
    return out


def per_group(values: Mapping[str, np.ndarray], norms_by_group: Mapping[str, Sequence[str]],
              reduce: Callable = np.max) -> dict[str, np.ndarray]:
    """Per-BatchNorm values combined into one per channel group.

    In a residual group several BatchNorms normalise one set of channels, and a channel is
    removed from all of them or from none. ``reduce=np.max`` over |γ| or switch values (and
    ``np.any`` over keep masks) keeps a channel that any of its BatchNorms needs.

    Args:
        values: Per-channel arrays by BatchNorm path.
        norms_by_group: The BatchNorm paths of each group (``ChannelGroup.norms``); groups without
            BatchNorms are left out.
        reduce: Combines the stacked ``(len(norms), C)`` arrays along axis 0.
    """
    return {group: reduce(np.stack([np.asarray(values[n]) for n in norms]), axis=0)
            for group, norms in norms_by_group.items() if norms}


#: What VCNN thresholds and ranks (``method.prune.statistic``): ``mean``, the paper's |μ|, or
#: ``snr``, the signal-to-noise ratio |μ|/σ (:func:`vcnn_score`).
VCNN_STATISTICS = ("mean", "snr")


def vcnn_score(mu: np.ndarray, log_var: np.ndarray, statistic: str = "mean") -> np.ndarray:
    r"""The per-channel value VCNN compares with τ: |μ| (``mean``) or |μ|/σ (``snr``).

    |μ|/σ is the inverse of the square root of the dropout rate α = σ²/μ² that sparse
    variational dropout thresholds (Molchanov, Ashukha & Vetrov, ICML 2017). Unlike |μ| it does
    not change when one module's μ and σ are scaled together by c > 0, which a BatchNorm (or any
    positively homogeneous path) after the channel's consumer divides away
    (:mod:`bayescomp.procedures.vcnn`), so one global threshold compares like with like.

    Args:
        mu: Saliency means.
        log_var: Saliency log-variances log σ², same shape.
        statistic: ``"mean"`` or ``"snr"`` (:data:`VCNN_STATISTICS`).
    """
    if statistic not in VCNN_STATISTICS:
        raise ConfigError(f"unknown method.prune.statistic {statistic!r}; known: "
                          f"{', '.join(VCNN_STATISTICS)} (conf/method/vcnn.yaml)")
    magnitude = np.abs(np.asarray(mu, np.float64))
    if statistic == "mean":
        return magnitude
    return magnitude * np.exp(-0.5 * np.asarray(log_var, np.float64))


def vcnn_keep(means: Mapping[str, np.ndarray], log_vars: Mapping[str, np.ndarray], *,
              tau: float = VCNN_TAU, theta: float | None = None,
              min_keep: int = 1, statistic: str = "mean") -> dict[str, np.ndarray]:
    """VCNN: keep channel c unless its score (|μ_c|, or |μ_c|/σ_c: :func:`vcnn_score`) is below
    τ (and σ_c < θ where θ is given).

    Args:
        means: μ per channel, by name.
        log_vars: log σ² per channel, same names.
        tau: Threshold τ on the score.
        theta: Threshold θ on σ; ``None``: no condition on σ.
        min_keep: Channels kept at least per entry (largest score first).
        statistic: ``"mean"`` (|μ|, the paper's) or ``"snr"`` (|μ|/σ).
    """
    means, log_vars = _vectors(means, "saliency means"), _vectors(log_vars, "log-variances")
    if set(means) != set(log_vars):
        raise ValueError(f"means and log-variances name different BatchNorms: "
                         f"{sorted(set(means) ^ set(log_vars))}")
    keep = {}
    for name, mu in means.items():
        sigma = np.exp(0.5 * log_vars[name])
        score = vcnn_score(mu, log_vars[name], statistic)
        concentrated_at_zero = score < tau
        if theta is not None:
            concentrated_at_zero &= sigma < theta
        keep[name] = _at_least(~concentrated_at_zero, score, min_keep)
    return keep


def slimming_threshold(scales: Mapping[str, np.ndarray], percent: float) -> float | None:
    """The global threshold t on |γ|: the ⌊percent·n⌋-th smallest of all n scales.

    ``None`` when that is no scale (percent·n < 1: nothing is pruned). The reference takes the
    ``int(n·percent)``-th entry of the ascending sort counted from 0 and keeps ``|γ| > t``, so it
    prunes one scale more than ``percent`` of them (``vggprune.py`` of
    github.com/Eric-mingjie/network-slimming); here exactly ⌊percent·n⌋ are at or below t.
    """
    if not 0.0 <= percent < 1.0:
        raise ConfigError(f"the slimming percent must be in [0, 1) (the fraction of all BatchNorm "
                          f"channels to prune, e.g. 0.7), got {percent}")
    magnitudes = np.sort(np.abs(np.concatenate(list(_vectors(scales, "scales").values()))))
    count = int(np.floor(percent * magnitudes.size))
    return None if count == 0 else float(magnitudes[count - 1])


def slimming_keep(scales: Mapping[str, np.ndarray], percent: float, *,
                  min_keep: int = 1) -> dict[str, np.ndarray]:
    """Network slimming: keep |γ| > t for the one global threshold t over every scale.

    Channels at the threshold go together (a tie at t prunes them all). A layer left with fewer
    than ``min_keep`` channels keeps its ``min_keep`` largest |γ| instead, so no layer is emptied
    whatever ``percent`` is (the reference has no such guard; a VGG at percent 0.999 would have
    layers of width 0).

    Args:
        scales: BatchNorm scales γ, by name (BatchNorm path or group).
        percent: Fraction of all channels to prune, in [0, 1).
        min_keep: Channels kept at least per entry.
    """
    threshold = slimming_threshold(scales, percent)
    keep = {}
    for name, gamma in _vectors(scales, "scales").items():
        magnitude = np.abs(gamma)
        kept = np.ones(gamma.shape, bool) if threshold is None else magnitude > threshold
        keep[name] = _at_least(kept, magnitude, min_keep)
    return keep


def top_k_keep(scores: Mapping[str, np.ndarray],
               widths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Dirichlet pruning: the ``widths[name]`` largest scores of each entry.

    Equal scores are kept in index order (the lower index first), so the result is determined
    by the scores alone.

    Args:
        scores: Switch values (the Dirichlet mean φ/Σφ) by name.
        widths: Channels to keep per name, 1 ≤ k ≤ C.
    """
    scores = _vectors(scores, "switch values")
    if set(scores) != set(widths):
        raise ConfigError(f"the kept widths must name exactly the switches "
                          f"{sorted(scores)}; got {sorted(widths)}")
    keep = {}
    for name, score in scores.items():
        k = widths[name]
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= score.size):
            raise ConfigError(f"kept width of {name!r} must be an integer in [1, {score.size}], "
                              f"got {k!r}")
        keep[name] = _top(score, int(k))
    return keep


def mass_widths(scores: Mapping[str, np.ndarray], mass: float) -> dict[str, int]:
    """Automatic k: per entry, the fewest channels whose scores sum to ≥ ``mass`` of the total.

    For Dirichlet switches (mean φ/Σφ, one simplex per layer) this keeps the channels carrying
    the fraction ``mass`` of the layer's importance. It never empties a layer (k ≥ 1), is
    monotone in ``mass``, reads the same in layers of any width, and drops the channels whose
    switches the data pushed to ≈0 first. A layer whose switches stayed uniform keeps ⌈mass·C⌉,
    so ``mass`` belongs close to 1 (0.95–0.99); like Bayesian Compression's thresholds it is
    best chosen on training data within an error tolerance
    (:mod:`bayescomp.threshold_selection`).

    Args:
        scores: Non-negative switch values by name.
        mass: Fraction in (0, 1].
    """
    if not 0.0 < mass <= 1.0:
        raise ConfigError(f"the switch mass to keep must be in (0, 1], e.g. 0.95; got {mass}")
    widths = {}
    for name, score in _vectors(scores, "switch values").items():
        if np.any(score < 0):
            raise ValueError(f"switch values of {name!r} must be non-negative")
        cumulative = np.cumsum(score[_ranking(score)])
        # The first prefix reaching the mass; a tiny relative slack absorbs float rounding of
        # the sum (mass = 1 must not demand more than the whole total).
        target = mass * cumulative[-1] * (1.0 - 1e-12)
        widths[name] = int(min(np.searchsorted(cumulative, target, side="left") + 1, score.size))
    return widths


def fraction_widths(scores: Mapping[str, np.ndarray], fraction: float) -> dict[str, int]:
    """Given k by share: ⌈f·C⌉ channels of every entry (at least 1), whatever the scores.

    The uniform per-layer ratio of many structured-pruning papers (e.g. Li, Kadav, Durdanovic,
    Samet & Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017): the widths are set by
    hand as one number, the scores only decide *which* channels stay. Use it where the scores
    rank channels well but do not separate them in value (Dirichlet switches trained for a few
    epochs move little from uniform, so :func:`mass_widths` keeps nearly all of them).

    Args:
        scores: Scores by name (only their sizes are read).
        fraction: Share of each entry's channels to keep, in (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"the share of channels to keep must be in (0, 1], e.g. 0.6; got "
                          f"{fraction}")
    # The small slack keeps f·C that is an integer in exact arithmetic (0.55 · 100) from rounding
    # up to the next channel through its float error.
    return {name: max(1, math.ceil(fraction * score.size - 1e-9))
            for name, score in _vectors(scores, "switch values").items()}


def ratio_widths(scores: Mapping[str, np.ndarray], ratio: float) -> dict[str, int]:
    """Automatic k, the alternative rule: channels with C·s_j ≥ ``ratio`` (at least 1).

    C·s_j is the switch relative to the layer's uniform share 1/C (the scale
    :class:`~bayescomp.nn.switch.DirichletSwitch` applies), so ``ratio = 0.5`` keeps the channels
    at least half as important as an average channel. A layer with uniform switches keeps all of
    them for ``ratio ≤ 1``.
    """
    if not ratio > 0.0:
        raise ConfigError(f"the switch ratio must be > 0, e.g. 0.5; got {ratio}")
    widths = {}
    for name, score in _vectors(scores, "switch values").items():
        relative = score.size * score / np.sum(score)
        widths[name] = max(1, int(np.sum(relative >= ratio)))
    return widths


#: How :func:`budget_widths` shares a multiply-add budget among the groups.
BUDGET_ALLOCATIONS = ("uniform", "global")


def budget_widths(scores: Mapping[str, np.ndarray], macs: Callable[[Mapping[str, int]], int],
                  budget: int, allocate: str = "uniform", *,
                  relative: bool = True) -> dict[str, int]:
    r"""Automatic k at a compute budget: the widest network with at most ``budget`` multiply-adds.

    The CIFAR pruning papers compare methods at a share of the dense network's multiply-adds
    ("FLOPs"); this picks the widths that meet such a target. ``macs(widths)`` counts the
    network (:func:`bayescomp.counting.macs_of_widths`); removing a channel never adds
    multiply-adds, so both rules below are monotone searches (bisection), exact, not greedy
    approximations of themselves.

    * ``uniform``: the largest share f with :math:`k_l = \lceil f C_l\rceil`
      (:func:`fraction_widths`) within the budget: every group keeps the same share, the scores
      choose only which channels (the per-layer ratio of e.g. Li et al., "Pruning Filters for
      Efficient ConvNets", ICLR 2017). f only matters at the values k/C_l, which are searched.
    * ``global``: the channels ranked over all groups by their score relative to their group's
      mean, :math:`C_l s_{lj}/\sum_k s_{lk}` (``relative``: for Dirichlet switches, one simplex
      per group, the switch against the uniform share 1/C_l), or by the score itself
      (``relative=False``: BatchNorm scales |γ| and saliencies |μ|, which network slimming
      already compares across layers with one threshold), and removed from the lowest up until
      the network fits, the last channel of a group never. It spends the budget where the scores
      are least sure of a channel, but ignores what a channel costs: a conv channel and a dense
      unit of equal score go in score order.

    Args:
        scores: Non-negative scores by prunable group (switch means), in the model's order.
        macs: Multiply-adds of the network at given widths (group → kept channels).
        budget: Multiply-adds per example allowed, > 0.
        allocate: ``"uniform"`` or ``"global"``.
        relative: ``global`` ranks scores relative to their group's mean (else as they are).

    Returns:
        Channels to keep per group (for :func:`top_k_keep`).

    Raises:
        ConfigError: an unknown ``allocate``, a budget ≤ 0, or one below the smallest network
            the rule reaches (one channel per group for ``global``).
        ValueError: negative scores, or (relative ``global``) a group whose scores sum to 0.
    """
    if allocate not in BUDGET_ALLOCATIONS:
        raise ConfigError(f"unknown budget allocation {allocate!r}; known: "
                          f"{', '.join(BUDGET_ALLOCATIONS)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise ConfigError(f"the multiply-add budget must be a positive integer (per example), "
                          f"got {budget!r}")
    scores = _vectors(scores, "switch values")
    for name, score in scores.items():
        if np.any(score < 0):
            raise ValueError(f"scores of {name!r} must be non-negative")
        if allocate == "global" and relative and not np.sum(score) > 0:
            raise ValueError(f"scores of {name!r} sum to 0: no score relative to their mean")
    full = {name: score.size for name, score in scores.items()}
    if allocate == "uniform":
        shares = sorted({k / size for size in full.values() for k in range(1, size + 1)})
        candidates = [fraction_widths(scores, f) for f in shares]
    else:
        ranked = [size * score / np.sum(score) if relative else score
                  for score, size in zip(scores.values(), full.values())]
        # Rounded to 12 significant digits, so that equal scores are equal whatever the
        # rounding of C·s/Σs in groups of different sizes (uniform switches are 1 in all).
        values = np.concatenate(ranked)
        values = np.round(values, 12 - np.floor(np.log10(np.max(np.abs(values)) or 1.0)
                                               ).astype(int))
        owners = np.concatenate([np.full(r.size, i) for i, r in enumerate(ranked)])
        names = list(scores)
        # Ties leave the earlier group first; which of its channels go is top_k_keep's choice.
        order = np.argsort(values, kind="stable")
        widths = dict(full)
        candidates = [dict(widths)]
        for i in order:
            name = names[owners[i]]
            if widths[name] > 1:
                widths[name] -= 1
                candidates.append(dict(widths))
        candidates.reverse()  # from the smallest network up, as the uniform shares
    # The widest candidate within the budget: candidates grow, their multiply-adds never fall.
    low, high = 0, len(candidates) - 1
    if macs(candidates[low]) > budget:
        raise ConfigError(f"no network within {budget:,} multiply-adds: the smallest the "
                          f"{allocate} rule reaches, {candidates[low]}, has "
                          f"{macs(candidates[low]):,}; raise the budget")
    while low < high:
        middle = (low + high + 1) // 2
        if macs(candidates[middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return {name: int(k) for name, k in candidates[low].items()}
