"""Bit precision of the kept weights from their posterior variance.

Louizos, Ullrich & Welling, "Bayesian Compression for Deep Learning", NIPS 2017, section
"Bit precision" (paper Table 2 prints the result per layer). The posterior says how precisely a
weight is known; storing it more precisely than that wastes bits. The rule, as the authors'
tutorial code implements it (``KarenUllrich/Tutorial_BayesianCompressionForDL``,
``compression.py``; Louizos et al., NIPS 2017, arXiv:1705.08665, derive it from the unit
round-off), is:

1. The unit round-off of a float with ``t`` significand bits is ``u(t) = 2^-t`` (Heath,
   *Scientific Computing*, ch. 1: ``u = ½·β^(1-t)`` for base ``β = 2``).
2. A weight gets ``t`` significand bits for every ``t ∈ {1, …, 23}`` whose round-off still exceeds
   twice its posterior variance: ``bits(w) = #{t : 2·Var[w] < 2^-t}``. The code compares
   **2·Var[w]**, not the standard deviation; we keep that so that our bit widths are the
   reference's.
3. A layer gets ``ceil(mean over its kept weights of bits(w))`` significand bits (the mean, not the
   max, as in the reference).
4. All layers share one exponent width ``E = ceil(log2(log2(m) + 1) + 1)`` with
   ``m = max_l max_i |E[w_li]|`` over the kept weights of all layers, guarded for ``m <= 1``
   (see :func:`exponent_bits`).
5. A weight then costs ``1 + E + t_l`` bits (sign, exponent, significand) in the "Fast Prediction"
   accounting of :mod:`bayescomp.compression.report`.
6. At test time the weights are rounded with an *absolute* step ``2^-t_l`` (fixed point,
   :func:`round_to_bits`), although step 5 charges them as floats.

Everything here is plain numpy on host arrays; it runs once after training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from bayescomp.errors import ConfigError

#: Largest significand width considered: the 23 explicit significand bits of IEEE float32.
MAX_SIGNIFICAND_BITS = 23


def unit_roundoff(t):
    """Unit round-off of a binary float with ``t`` significand bits.

    .. math:: u(t) = \\tfrac{1}{2}\\, 2^{1-t} = 2^{-t}

    (Heath, *Scientific Computing: An Introductory Survey*, 2nd ed., ch. 1, rounding to nearest.)

    Args:
        t: Number of significand bits (a scalar or an array).

    Returns:
        ``2^-t``: a float for a scalar input, else a float64 array.
    """
    rounded = np.exp2(-np.asarray(t, dtype=np.float64))
    return float(rounded) if rounded.ndim == 0 else rounded


def _checked_variance(variance) -> np.ndarray:
    variance = np.asarray(variance, dtype=np.float64)
    if not np.all(np.isfinite(variance)) or np.any(variance < 0):
        raise ConfigError(
            "posterior variances must be finite and >= 0; got NaN, infinite or negative values. "
            "Check that the posterior was trained without divergence and that log-variances, "
            "not variances, were not passed by mistake."
        )
    return variance


def significand_bits_per_weight(variance) -> np.ndarray:
    """Significand bits each weight needs, given its posterior variance.

    .. math:: t(w) = \\#\\{t \\in \\{1, \\dots, 23\\} : 2\\,\\mathrm{Var}[w] < 2^{-t}\\}
              = \\mathrm{clip}(\\lceil -\\log_2(2\\,\\mathrm{Var}[w]) \\rceil - 1,\\ 0,\\ 23)

    Following the reference code, the test compares **twice the variance** with the unit
    round-off (not the standard deviation, as the paper's prose might suggest): a weight is stored
    with as many significand bits as keep the rounding error above its posterior spread in this
    sense. A weight with zero variance gets the full 23 bits; one with ``2·Var >= 1/2`` gets 0.

    The count is computed exactly from the binary exponent of ``2·Var`` rather than with a
    floating-point logarithm: if ``2·Var = f·2^e`` with ``f ∈ [½, 1)`` (``np.frexp``), then
    ``2·Var < 2^-t  ⟺  t <= -e`` (for ``f = ½`` and ``f > ½`` alike), so the count is
    ``clip(-e, 0, 23)``. This agrees with the reference's 23 comparisons bit for bit, also at
    powers of two where ``ceil(-log2(·))`` can be off by one after rounding.

    Args:
        variance: Posterior variances ``Var[w]`` (any shape, finite, ``>= 0``). float32 input is
            widened to float64 first, so ``2·Var`` is exact.

    Returns:
        An int array of the same shape with values in ``0 … 23``.

    Raises:
        ConfigError: If a variance is NaN, infinite or negative.
    """
    variance = _checked_variance(variance)
    twice_variance = 2.0 * variance
    _, binary_exponent = np.frexp(twice_variance)
    bits = np.clip(-binary_exponent, 0, MAX_SIGNIFICAND_BITS)
    # frexp(0) gives exponent 0, but 0 < 2^-t for every t: a weight known exactly keeps all bits.
    bits = np.where(twice_variance == 0.0, MAX_SIGNIFICAND_BITS, bits)
    return bits.astype(np.int64)


def layer_significand_bits(
    variance_of_kept_weights, reduce: Literal["mean", "max"] = "mean"
) -> int:
    """Significand bits of one layer: the rounded-up mean of the per-weight bits.

    .. math:: t_l = \\Big\\lceil \\tfrac{1}{|K_l|} \\sum_{i \\in K_l} t(w_i) \\Big\\rceil

    over the kept weights ``K_l`` of layer ``l``. The mean is what the reference uses
    (``dist_fun=np.mean``); ``reduce="max"`` gives the conservative variant in which no weight is
    stored below its own precision.

    Deviation from the reference: it averages over the whole pruned *dense* matrix, where a pruned
    weight inside a kept row and column has variance 0 and counts 23 bits. We average over the
    kept weights only. For group (structured) masks both sets are the same.

    Args:
        variance_of_kept_weights: Posterior variances of the layer's kept weights (any shape).
        reduce: ``"mean"`` (reference) or ``"max"``.

    Returns:
        The layer's significand bits, ``0 … 23``; 0 for a layer with no kept weight (it stores
        nothing, so its width does not matter).

    Raises:
        ConfigError: For an unknown ``reduce`` or an invalid variance.
    """
    bits = significand_bits_per_weight(variance_of_kept_weights).ravel()
    if reduce not in ("mean", "max"):
        raise ConfigError(f"unknown reduce {reduce!r} for layer bits; use 'mean' or 'max'")
    if bits.size == 0:
        return 0
    if reduce == "max":
        return int(bits.max())
    # Integer ceiling division: a float mean can land a hair above an integer and round up.
    return int(-(-int(bits.sum()) // bits.size))


def exponent_bits(max_abs_weight: float) -> int:
    """Exponent width shared by all layers, from the largest kept weight magnitude.

    Reference formula (tutorial ``compression.py``), with ``m`` the largest ``|E[w]|`` over the
    kept weights of **all** layers (the "overflow" level):

    .. math:: E_\\text{ref}(m) = \\lceil \\log_2(\\log_2 m + 1) + 1 \\rceil

    Read: exponents ``0 … log2 m`` are ``log2 m + 1`` values, ``log2`` of that is the bits for
    their magnitude, and ``+1`` is the exponent's sign bit. The formula only thinks about
    exponents up to ``log2 m`` and breaks when all weights are below 1: for ``m <= 1`` it falls to
    ``1, 0, -1, …`` (``m = 0.6`` gives 0, ``m = 0.57`` gives -1, i.e. a negative number of bits),
    at ``m = ½`` it is ``-∞`` and below ``½`` it is NaN (``log2`` of a negative number).

    **Guard chosen here.** ``E = E_ref(max(m, 1))``, which equals ``max(1, E_ref(m))`` wherever
    ``E_ref`` is defined. So ``E >= 1`` always (at least the exponent's sign bit, which weights
    below 1 need), ``E`` never decreases as ``m`` grows, it is unchanged for every ``m > 1`` and
    it is NaN-free for every positive ``m``. A non-finite or non-positive ``m`` (no kept weight,
    or a diverged posterior) is an error rather than a silent width.

    Hand-computed values (``E_ref`` → guarded ``E``):

    ======  =======================================================  ===========
    m       log2(log2 m + 1) + 1                                      E_ref → E
    ======  =======================================================  ===========
    0.25    log2(-2 + 1) = log2(-1): NaN                              NaN → 1
    0.5     log2(-1 + 1) = log2(0) = -∞                               -∞ → 1
    0.57    log2(-0.8110 + 1) + 1 = log2(0.1890) + 1 = -1.403         -1 → 1
    0.6     log2(-0.7370 + 1) + 1 = log2(0.2630) + 1 = -0.927         0 → 1
    0.75    log2(-0.4150 + 1) + 1 = log2(0.5850) + 1 = 0.226          1 → 1
    1       log2(0 + 1) + 1 = 1                                       1 → 1
    2       log2(1 + 1) + 1 = 2                                       2 → 2
    3       log2(1.585 + 1) + 1 = 2.370                               3 → 3
    8       log2(3 + 1) + 1 = 3                                       3 → 3
    10      log2(3.322 + 1) + 1 = 3.112                               4 → 4
    1e39    log2(129.55 + 1) + 1 = 8.028 (the reference's default)    9 → 9
    ======  =======================================================  ===========

    Note that the published Fast Prediction ratios of the paper are reproduced only with *zero*
    sign and exponent bits on top of its printed per-layer widths, i.e. ``E_ref = -1``; see
    ``tests/compression/test_report.py``.

    Args:
        max_abs_weight: ``m``, the largest ``|E[w]|`` over the kept weights of all layers.

    Returns:
        The exponent width ``E >= 1``.

    Raises:
        ConfigError: If ``m`` is NaN, infinite, zero or negative.
    """
    m = float(max_abs_weight)
    if not math.isfinite(m) or m <= 0.0:
        raise ConfigError(
            f"the largest kept weight magnitude must be finite and > 0 to size the exponent, got "
            f"{m!r}; a model with no kept weight (or a diverged one) has no bit precision. Raise "
            "the pruning thresholds (log α >= threshold is removed) or check the posterior."
        )
    m = max(m, 1.0)
    return int(math.ceil(math.log2(math.log2(m) + 1.0) + 1.0))


def round_to_bits(w, significand_bits):
    """Round weights to the fixed-point grid of step ``2^-t`` (the reference's test-time rounding).

    .. math:: \\operatorname{round}(w; t) = \\lfloor w / 2^{-t} + \\tfrac12 \\rfloor \\cdot 2^{-t}

    This is an **absolute** step (round half up), as in the tutorial's ``special_round``, even
    though :func:`bit_precision` charges each weight ``1 + E + t`` bits as if it were a float with
    ``t`` significand bits. Weights with ``|w| < 2^-(t+1)`` round to 0 (exactly ``-2^-(t+1)``
    rounds to 0 as well, ``2^-(t+1)`` rounds up to ``2^-t``).

    Args:
        w: Weights: a numpy array (or anything ``np.asarray`` accepts) or a JAX array.
        significand_bits: ``t >= 0``, a scalar or an array broadcastable against ``w`` (e.g. per
            layer).

    Returns:
        The rounded weights: a numpy array for numpy input (same floating dtype; integers become
        float64), a JAX array for JAX input.
    """
    if hasattr(w, "__array_namespace__") and not isinstance(w, np.ndarray):
        # A JAX array: use jax.numpy throughout, so this also works under jit (no host checks).
        xp = w.__array_namespace__()
        step = xp.exp2(-xp.asarray(significand_bits, dtype=w.dtype))
        return xp.floor(w / step + 0.5) * step
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        w = w.astype(np.float64)
    t = np.asarray(significand_bits)
    if np.any(t < 0):
        raise ConfigError(f"significand bits must be >= 0, got {significand_bits!r}")
    # 2^-t is exact in float32 for t <= 126, so the step keeps the weights' dtype.
    step = np.exp2(-t.astype(np.float64)).astype(w.dtype)
    return np.floor(w / step + 0.5) * step


@dataclasses.dataclass(frozen=True)
class BitPrecision:
    """Bit widths of a pruned network (Louizos et al. 2017, Table 2 and "Fast Prediction").

    Attributes:
        bits_per_layer: Significand bits ``t_l`` per layer.
        exponent_bits: The shared exponent width ``E`` (guarded, ``>= 1``).
        bits_per_weight: ``1 + E + t_l`` per layer: sign, exponent, significand.
        max_abs_weight: The overflow level ``m`` that ``E`` was computed from.
    """

    bits_per_layer: list[int]
    exponent_bits: int
    bits_per_weight: list[int]
    max_abs_weight: float = float("nan")


def bit_precision(
    layers_mean: Sequence[np.ndarray],
    layers_variance: Sequence[np.ndarray],
    layers_mask: Sequence[np.ndarray],
    reduce: Literal["mean", "max"] = "mean",
) -> BitPrecision:
    """Per-layer significand bits, the global exponent bits and the bits per weight.

    ``t_l`` = :func:`layer_significand_bits` of the kept variances of layer ``l``;
    ``E`` = :func:`exponent_bits` of ``max_l max_{i kept} |E[w_li]|``; bits per weight
    ``1 + E + t_l`` (Louizos et al. 2017, "Bit precision"; tutorial ``compression.py``).

    Args:
        layers_mean: Posterior means ``E[w]`` per layer (any layout; only magnitudes matter).
        layers_variance: Posterior variances ``Var[w]`` per layer, same shapes.
        layers_mask: Kept-weight masks per layer (nonzero = kept), same shapes, after group
            pruning.
        reduce: How a layer pools its per-weight bits: ``"mean"`` (reference) or ``"max"``.

    Returns:
        A :class:`BitPrecision`.

    Raises:
        ConfigError: If the three lists differ in length or shapes, a variance is invalid, or no
            weight is kept anywhere.
    """
    if not len(layers_mean) == len(layers_variance) == len(layers_mask):
        raise ConfigError(
            f"bit_precision needs one mean, variance and mask per layer; got "
            f"{len(layers_mean)}, {len(layers_variance)} and {len(layers_mask)}"
        )
    bits_per_layer = []
    max_abs_weight = 0.0
    for index, (mean, variance, mask) in enumerate(
        zip(layers_mean, layers_variance, layers_mask)
    ):
        mean, variance = np.asarray(mean), np.asarray(variance)
        kept = np.asarray(mask) != 0
        if not mean.shape == variance.shape == kept.shape:
            raise ConfigError(
                f"layer {index}: mean {mean.shape}, variance {variance.shape} and mask "
                f"{kept.shape} must have the same shape"
            )
        bits_per_layer.append(layer_significand_bits(variance[kept], reduce=reduce))
        if kept.any():
            max_abs_weight = max(max_abs_weight, float(np.max(np.abs(mean[kept]))))
    exponent = exponent_bits(max_abs_weight)
    return BitPrecision(
        bits_per_layer=bits_per_layer,
        exponent_bits=exponent,
        bits_per_weight=[1 + exponent + bits for bits in bits_per_layer],
        max_abs_weight=max_abs_weight,
    )


def codebook_precision(codebooks, kernels, masks) -> BitPrecision:
    """The :class:`~bayescomp.bit_precision.BitPrecision` of a weight-shared network.

    A codebook layer stores for each kept weight an index into ``K`` shared values, so its
    "bits per layer" (Table 2's bit precision) is the width of a fixed-length index,
    ``ceil(log2 K)`` (Han et al. 2016, §3: ``log2(k)`` bits per weight for ``k`` clusters; 0 for
    ``K = 1``). The index is the whole code (the shared value carries sign and magnitude), so
    there are no sign or exponent bits: ``exponent_bits = 0`` and ``bits_per_weight`` equals
    the index width. ``max_abs_weight`` is the largest kept magnitude.
    """
    bits = [(int(np.size(c)) - 1).bit_length() if c is not None else 0 for c in codebooks]
    kept = [np.abs(np.asarray(k))[np.asarray(m, bool)] for k, m in zip(kernels, masks)]
    max_abs = max((float(k.max()) for k in kept if k.size), default=0.0)
    return BitPrecision(bits_per_layer=bits, exponent_bits=0, bits_per_weight=list(bits),
                        max_abs_weight=max_abs)
