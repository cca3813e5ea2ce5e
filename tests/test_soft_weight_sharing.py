"""Soft weight-sharing: post-processing (merging, quantisation), the figure, and smoke runs.

The prior's maths is tested in ``tests/priors/test_gaussian_mixture.py``.
"""

import math

import numpy as np
import pytest
import scipy.stats

from bayescomp.errors import ConfigError
from bayescomp.priors.gaussian_mixture import GaussianMixture, MixtureParams
from bayescomp.soft_weight_sharing import (MergedMixture, assign_components, layer_codebooks,
                                           merge_components, post_process, quantize_to_mixture,
                                           save_weight_figure)


def _log(values):
    return np.log(np.asarray(values, np.float64))


def test_merging_a_hand_made_mixture():
    # Components 1 and 3 are identical, 2 is within 1e-4 nats of them, 4 is far; component 0
    # sits at 0 and 5 is a near-zero twin of it.
    means = np.array([0.0, 0.5, 0.5 + 1e-4, 0.5, -0.7, 1e-3])
    log_precisions = np.array([8.0, 4.0, 4.0, 4.0, 5.0, 8.0])
    pis = np.array([0.9, 0.02, 0.03, 0.01, 0.03, 0.01])
    kl_12 = 0.5 * math.exp(4.0) * 1e-4 ** 2  # equal precisions: KL = λ(Δμ)²/2 = 2.7e-7

    merged = merge_components(means, log_precisions, _log(pis), tolerance=1e-10)
    assert merged.groups == [[0], [1, 3], [2], [4], [5]]  # only the identical pair merges
    np.testing.assert_allclose(np.exp(merged.log_pis), [0.9, 0.03, 0.03, 0.03, 0.01])
    assert merged.means[1] == pytest.approx(0.5)

    merged = merge_components(means, log_precisions, _log(pis), tolerance=10 * kl_12)
    assert merged.groups == [[0], [1, 2, 3], [4], [5]]
    assert merged.means[1] == pytest.approx((0.02 * 0.5 + 0.03 * (0.5 + 1e-4) + 0.01 * 0.5) / 0.06)
    assert np.exp(merged.log_precisions[1]) == pytest.approx(math.exp(4.0))
    assert np.exp(merged.log_pis).sum() == pytest.approx(1.0)

    # A wide tolerance pulls the near-zero twin into the zero group, whose mean is then reset
    # to exactly 0 (the π-weighted average would be 1e-3 · 0.01 / 0.91).
    kl_05 = 0.5 * math.exp(8.0) * 1e-3 ** 2
    merged = merge_components(means, log_precisions, _log(pis), tolerance=2 * kl_05)
    assert merged.groups[merged.zero_index] == [0, 5]
    assert merged.means[merged.zero_index] == 0.0
    assert np.exp(merged.log_pis[merged.zero_index]) == pytest.approx(0.91)


def test_merging_is_transitive_and_zero_tolerance_merges_nothing():
    # 0.00 ~ 0.01 ~ 0.02 pairwise-adjacent (KL 0.5·e^4·1e-4 = 2.7e-3), 0 and 0.02 are not.
    means = np.array([0.0, 0.01, 0.02])
    merged = merge_components(means, np.full(3, 4.0), _log([0.5, 0.3, 0.2]), tolerance=5e-3)
    assert merged.groups == [[0, 1, 2]]
    merged = merge_components(means, np.full(3, 4.0), _log([0.5, 0.3, 0.2]), tolerance=0.0)
    assert merged.groups == [[0], [1], [2]]


@pytest.mark.parametrize("tolerance", [-1.0, float("nan"), "1e-10"])
def test_bad_tolerance_is_a_config_error(tolerance):
    with pytest.raises(ConfigError, match="merge_tolerance"):
        merge_components(np.zeros(2), np.zeros(2), _log([0.5, 0.5]), tolerance)


def _mixture():
    means = np.array([0.0, -0.4, 0.3, 0.8])
    log_precisions = np.array([7.0, 4.0, 5.0, 3.0])
    return MergedMixture(means, log_precisions, _log([0.7, 0.1, 0.15, 0.05]),
                         [[0], [1], [2], [3]], zero_index=0)


def test_quantization_picks_the_argmax_responsibility_component():
    mixture = _mixture()
    weights = np.random.default_rng(0).normal(0, 0.5, (40, 25))
    # Responsibilities from scipy densities: π_k N(w | μ_k, λ_k⁻¹).
    stds = np.exp(-0.5 * mixture.log_precisions)
    densities = np.exp(mixture.log_pis) * scipy.stats.norm(mixture.means, stds).pdf(
        weights.reshape(-1, 1))
    expected = densities.argmax(axis=1).reshape(weights.shape)
    np.testing.assert_array_equal(assign_components(weights, mixture, chunk=7), expected)

    quantized = quantize_to_mixture(weights, mixture)
    assert quantized.dtype == np.float32 and quantized.shape == weights.shape
    np.testing.assert_array_equal(quantized, mixture.means[expected].astype(np.float32))
    zero = expected == 0
    assert zero.any() and (~zero).any()
    assert np.all(quantized[zero] == 0.0) and not np.any(np.signbit(quantized[zero]))
    assert np.all(quantized[~zero] != 0.0)


def test_post_process_uses_the_training_normalisation():
    # Shifting every ρ by a constant changes neither the loss nor the quantisation.
    prior = GaussianMixture(num_components=4, pi_zero=0.9)
    params = MixtureParams(np.array([-0.4, 0.3, 0.8], np.float32), np.array([7.0, 4.0, 5.0, 3.0],
                           np.float32), np.array([0.1, 2.0, -1.0], np.float32))
    shifted = params._replace(rhos=params.rhos + 5.0)
    a, b = post_process(params, prior, 1e-10), post_process(shifted, prior, 1e-10)
    np.testing.assert_allclose(a.log_pis, b.log_pis, rtol=1e-6)
    assert np.exp(a.log_pis[0]) == pytest.approx(0.9, rel=1e-6)
    weights = np.linspace(-1, 1, 201)
    np.testing.assert_array_equal(quantize_to_mixture(weights, a), quantize_to_mixture(weights, b))


def test_layer_codebooks_are_sorted_distinct_kept_values():
    kernels = [np.array([[0.3, 0.0], [-0.4, 0.3]], np.float32), np.zeros((2, 2), np.float32)]
    books = layer_codebooks(kernels)
    np.testing.assert_array_equal(books[0], np.array([-0.4, 0.3], np.float32))
    assert books[0].dtype == np.float32 and books[1].size == 0


def test_weight_figure_is_written(tmp_path):
    rng = np.random.default_rng(1)
    pretrained = rng.normal(0, 0.3, 5000)
    retrained = quantize_to_mixture(pretrained, _mixture()) + rng.normal(0, 0.01, 5000)
    path = save_weight_figure(pretrained, retrained, _mixture(), tmp_path / "plots" / "w.png",
                              max_points=1000)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="differ in number"):
        save_weight_figure(pretrained, retrained[:10], _mixture(), tmp_path / "x.png")
