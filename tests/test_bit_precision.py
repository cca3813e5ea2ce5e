"""Tests of bayescomp.bit_precision against hand-computed values.

Louizos, Ullrich & Welling 2017, section "Bit precision"; tutorial compression.py.
"""

import math

import numpy as np
import pytest

from bayescomp.bit_precision import (
    BitPrecision,
    bit_precision,
    exponent_bits,
    layer_significand_bits,
    round_to_bits,
    significand_bits_per_weight,
    unit_roundoff,
)
from bayescomp.errors import ConfigError


def _bits_by_definition(variance):
    """The reference's definition, literally: count t in 1..23 with 2·Var < 2^-t."""
    thresholds = 2.0 ** -np.arange(1, 24)
    return (2.0 * np.asarray(variance, dtype=np.float64)[..., None] < thresholds).sum(axis=-1)


def test_unit_roundoff():
    # u(t) = ½·2^(1-t) = 2^-t.
    assert unit_roundoff(1) == 0.5
    assert unit_roundoff(23) == 2.0**-23
    np.testing.assert_array_equal(unit_roundoff(np.array([0, 2, 10])), [1.0, 0.25, 2.0**-10])


@pytest.mark.parametrize(
    "variance, expected_bits",
    [
        # 2·0.1 = 0.2 < 0.5 (t=1), < 0.25 (t=2), not < 0.125 (t=3): 2 bits.
        (0.1, 2),
        # 2·1e-3 = 0.002 < 2^-8 = 0.0039, not < 2^-9 = 0.00195: 8 bits.
        (1e-3, 8),
        # 2·2^-10 = 2^-9 < 2^-t for t = 1..8 only (2^-9 < 2^-9 is false): 8 bits, the boundary.
        (2.0**-10, 8),
        # 2·0.25 = 0.5, not < 2^-1: 0 bits.
        (0.25, 0),
        # 2·10 = 20: 0 bits.
        (10.0, 0),
        # 2·1e-12 < 2^-23 = 1.19e-7: all 23 bits.
        (1e-12, 23),
        # A weight known exactly keeps all 23 bits (0 < 2^-t for every t).
        (0.0, 23),
    ],
)
def test_significand_bits_hand_examples(variance, expected_bits):
    assert significand_bits_per_weight(variance) == expected_bits
    assert significand_bits_per_weight(np.float32(variance)) == expected_bits


def test_significand_bits_match_the_definition_everywhere():
    # Log-uniform variances over the whole range plus exact powers of two (the boundaries) and
    # their float neighbours: the frexp formula must equal the 23 comparisons bit for bit.
    rng = np.random.default_rng(0)
    random = 10.0 ** rng.uniform(-12, 2, size=5000)
    powers = 2.0 ** np.arange(-30, 3, dtype=np.float64)
    neighbours = np.concatenate([np.nextafter(powers, 0), np.nextafter(powers, 1)])
    variance = np.concatenate([random, powers, neighbours, [0.0]])
    np.testing.assert_array_equal(
        significand_bits_per_weight(variance), _bits_by_definition(variance)
    )
    # float32 input (what a trained posterior holds) too.
    variance32 = variance.astype(np.float32)
    np.testing.assert_array_equal(
        significand_bits_per_weight(variance32), _bits_by_definition(variance32)
    )


def test_significand_bits_match_the_closed_form_away_from_boundaries():
    # clip(ceil(-log2(2·Var)) - 1, 0, 23) is the closed form; floating log2 can be off by one only
    # where -log2(2·Var) is (nearly) an integer, so those draws are excluded.
    rng = np.random.default_rng(1)
    variance = 10.0 ** rng.uniform(-10, 1, size=20000)
    minus_log2 = -np.log2(2.0 * variance)
    away = np.abs(minus_log2 - np.round(minus_log2)) > 1e-9
    closed_form = np.clip(np.ceil(minus_log2) - 1, 0, 23).astype(int)
    np.testing.assert_array_equal(significand_bits_per_weight(variance)[away], closed_form[away])
    assert away.mean() > 0.99


def test_significand_bits_keep_shape_and_reject_invalid():
    assert significand_bits_per_weight(np.full((2, 3, 4), 1e-3)).shape == (2, 3, 4)
    for bad in (np.nan, -1e-3, np.inf):
        with pytest.raises(ConfigError):
            significand_bits_per_weight(np.array([1e-3, bad]))


def test_layer_significand_bits_mean_and_max():
    # Variances 1e-3, 1e-3, 2^-11 give 8, 8, 9 bits (2·2^-11 = 2^-10 < 2^-t for t <= 9).
    variance = np.array([1e-3, 1e-3, 2.0**-11])
    np.testing.assert_array_equal(significand_bits_per_weight(variance), [8, 8, 9])
    assert layer_significand_bits(variance) == 9  # ceil(25/3 = 8.33)
    assert layer_significand_bits(variance, reduce="max") == 9
    assert layer_significand_bits(variance[:2]) == 8  # an exact mean is not rounded up
    assert layer_significand_bits(np.array([0.1, 1e-3])) == 5  # ceil((2 + 8)/2)
    assert layer_significand_bits(np.array([])) == 0
    with pytest.raises(ConfigError):
        layer_significand_bits(variance, reduce="median")


def _unguarded_exponent(m):
    """The reference formula without a guard (NaN where log2 of a non-positive number)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.ceil(np.log2(np.log2(m) + 1.0) + 1.0) + 0.0  # + 0.0 turns -0.0 into 0.0


@pytest.mark.parametrize(
    "max_abs_weight, reference, guarded",
    [
        (0.25, math.nan, 1),  # log2(0.25) + 1 = -1: log2 of a negative number
        (0.5, -math.inf, 1),  # log2(0.5) + 1 = 0: log2(0)
        (0.57, -1, 1),  # log2(1 - 0.8110) + 1 = -1.403 -> -1 bits
        (0.6, 0, 1),  # log2(1 - 0.7370) + 1 = -0.927 -> 0 bits
        (0.75, 1, 1),  # log2(1 - 0.4150) + 1 = 0.226 -> 1
        (1.0, 1, 1),  # log2(0 + 1) + 1 = 1
        (2.0, 2, 2),  # log2(1 + 1) + 1 = 2
        (3.0, 3, 3),  # log2(1.585 + 1) + 1 = 2.370 -> 3
        (8.0, 3, 3),  # log2(3 + 1) + 1 = 3
        (10.0, 4, 4),  # log2(3.322 + 1) + 1 = 3.112 -> 4
        (1e39, 9, 9),  # the reference's default overflow 10e38: log2(130.55) + 1 = 8.03 -> 9
    ],
)
def test_exponent_bits_hand_values_and_guard(max_abs_weight, reference, guarded):
    np.testing.assert_equal(_unguarded_exponent(max_abs_weight), reference)
    assert exponent_bits(max_abs_weight) == guarded


def test_exponent_bits_is_monotone_and_at_least_one():
    magnitudes = np.geomspace(1e-6, 1e6, 2001)
    widths = [exponent_bits(m) for m in magnitudes]
    assert min(widths) == 1
    assert all(a <= b for a, b in zip(widths, widths[1:]))
    # Above 1 the guard changes nothing.
    above_one = magnitudes[magnitudes > 1]
    np.testing.assert_array_equal(
        [exponent_bits(m) for m in above_one], _unguarded_exponent(above_one)
    )


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_exponent_bits_rejects_non_positive_and_non_finite(bad):
    with pytest.raises(ConfigError):
        exponent_bits(bad)


def test_round_to_bits_hand_examples():
    # t = 3, step 2^-3 = 0.125: floor(w/0.125 + 0.5)·0.125.
    #  0.3    -> floor( 2.4 + 0.5) =  2 ->  0.25
    # -0.3    -> floor(-2.4 + 0.5) = -2 -> -0.25
    #  0.0625 -> floor( 0.5 + 0.5) =  1 ->  0.125  (half rounds up)
    # -0.0625 -> floor(-0.5 + 0.5) =  0 ->  0      (half rounds up, towards +inf)
    #  1.26   -> floor(10.08 + 0.5) = 10 -> 1.25   (absolute step, not relative)
    #  0.05   -> floor( 0.4 + 0.5) =  0 ->  0      (small weights vanish)
    w = np.array([0.3, -0.3, 0.0625, -0.0625, 1.26, 0.05])
    np.testing.assert_array_equal(round_to_bits(w, 3), [0.25, -0.25, 0.125, 0.0, 1.25, 0.0])
    # t = 0, step 1: 2.5 -> 3, -2.5 -> floor(-2.0) = -2.
    np.testing.assert_array_equal(round_to_bits(np.array([2.5, -2.5]), 0), [3.0, -2.0])


def test_round_to_bits_dtype_grid_and_broadcast():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 5)).astype(np.float32)
    rounded = round_to_bits(w, 7)
    assert rounded.dtype == np.float32
    assert np.all(np.abs(rounded - w) <= 2.0**-8)  # at most half a step
    np.testing.assert_array_equal(rounded * 2**7, np.round(rounded * 2**7))  # on the grid
    per_column = round_to_bits(w, np.array([1, 2, 3, 4, 5]))
    np.testing.assert_array_equal(per_column[:, 2], round_to_bits(w[:, 2], 3))
    assert round_to_bits([1, 2], 1).dtype == np.float64
    with pytest.raises(ConfigError):
        round_to_bits(w, -1)


def test_round_to_bits_on_jax_arrays():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    w = np.array([0.3, -0.3, 0.0625, 1.26], dtype=np.float32)
    rounded = jax.jit(round_to_bits, static_argnums=1)(jnp.asarray(w), 3)
    assert isinstance(rounded, jax.Array)
    np.testing.assert_array_equal(np.asarray(rounded), round_to_bits(w, 3))


def test_bit_precision_two_layers_by_hand():
    # Layer A, all but the last weight kept: variances 1e-3, 1e-3, 2^-10 give 8, 8, 8 bits
    # -> t_A = 8. The pruned weight (variance 0.25, 0 bits) is ignored.
    mean_a = np.array([[0.5, -1.5], [0.1, 0.0]])
    variance_a = np.array([[1e-3, 1e-3], [2.0**-10, 0.25]])
    mask_a = np.array([[1, 1], [1, 0]])
    # Layer B keeps 0.2 (variance 0.1 -> 2 bits) and -0.7 (1e-3 -> 8 bits): t_B = ceil(5) = 5.
    # Its pruned weight 3.0 must not set the overflow.
    mean_b = np.array([[3.0, 0.2, -0.7]])
    variance_b = np.array([[0.1, 0.1, 1e-3]])
    mask_b = np.array([[0, 1, 1]])
    result = bit_precision([mean_a, mean_b], [variance_a, variance_b], [mask_a, mask_b])
    # m = max(0.5, 1.5, 0.1, 0.2, 0.7) = 1.5: log2(1.5) = 0.585, log2(1.585) = 0.664,
    # ceil(1.664) = 2. (With 3.0 it would be ceil(log2(2.585) + 1) = 3.)
    assert result == BitPrecision(
        bits_per_layer=[8, 5], exponent_bits=2, bits_per_weight=[11, 8], max_abs_weight=1.5
    )


def test_bit_precision_small_weights_use_the_guard():
    # All kept |E[w]| <= 0.3 < 0.5: the reference formula is NaN; the guard gives E = 1.
    mean = np.array([[0.3, -0.1]])
    result = bit_precision([mean], [np.full((1, 2), 1e-3)], [np.ones((1, 2))])
    assert result.exponent_bits == 1
    assert result.bits_per_weight == [1 + 1 + 8]


def test_bit_precision_rejects_bad_input():
    ones = np.ones((2, 2))
    with pytest.raises(ConfigError):
        bit_precision([ones], [ones], [])
    with pytest.raises(ConfigError):
        bit_precision([ones], [np.ones((2, 3))], [ones])
    with pytest.raises(ConfigError):  # nothing kept: no overflow level
        bit_precision([ones], [ones], [np.zeros((2, 2))])
