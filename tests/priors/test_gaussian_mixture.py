"""The soft weight-sharing mixture prior against independent computations.

log p(w) against a mixture of ``scipy.stats.norm`` densities summed in float64, the hyper-prior
against ``scipy.stats.gamma``, gradients against central finite differences, and the
configuration checks.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from bayescomp import priors
from bayescomp.errors import ConfigError
from bayescomp.priors.gaussian_mixture import (
    GaussianMixture, MixtureParams, component_means, gaussian_kl, init_mixture, log_hyper_prior,
    log_mixing_proportions, log_prior, negative_log_prior)

PRIOR = GaussianMixture(num_components=5, pi_zero=0.9)


def _random_params(seed: int = 0, num_components: int = 5) -> MixtureParams:
    rng = np.random.default_rng(seed)
    return MixtureParams(
        means=jnp.asarray(np.sort(rng.uniform(-1, 1, num_components - 1)), jnp.float32),
        log_precisions=jnp.asarray(rng.uniform(1.0, 6.0, num_components), jnp.float32),
        rhos=jnp.asarray(rng.normal(size=num_components - 1), jnp.float32))


def _scipy_mixture(weights, params: MixtureParams, pi_zero: float) -> float:
    """Σ_i log Σ_j π_j N(w_i|μ_j, σ_j²) with scipy densities in float64 (π from its definition)."""
    rhos = np.asarray(params.rhos, np.float64)
    softmax = np.exp(rhos - rhos.max()) / np.exp(rhos - rhos.max()).sum()
    pis = np.concatenate([[pi_zero], (1 - pi_zero) * softmax])
    means = np.concatenate([[0.0], np.asarray(params.means, np.float64)])
    stds = np.exp(-0.5 * np.asarray(params.log_precisions, np.float64))
    w = np.asarray(weights, np.float64).ravel()
    log_terms = np.log(pis) + scipy.stats.norm(means, stds).logpdf(w[:, None])
    return float(scipy.special.logsumexp(log_terms, axis=1).sum())


def test_mixing_proportions_sum_to_one_with_fixed_pi_zero():
    log_pis = log_mixing_proportions(jnp.array([0.3, -2.0, 5.0]), 0.99)
    assert float(jnp.exp(log_pis[0])) == pytest.approx(0.99, rel=1e-6)
    assert float(jnp.sum(jnp.exp(log_pis))) == pytest.approx(1.0, rel=1e-6)
    # A constant shift of ρ changes nothing (the reference's post-processing differed here).
    shifted = log_mixing_proportions(jnp.array([0.3, -2.0, 5.0]) + 7.0, 0.99)
    np.testing.assert_allclose(shifted, log_pis, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_prior_matches_scipy_mixture(seed):
    params = _random_params(seed)
    w = np.random.default_rng(10 + seed).normal(0, 0.5, 300).astype(np.float32)
    expected = _scipy_mixture(w, params, PRIOR.pi_zero)
    assert float(log_prior(jnp.asarray(w), params, PRIOR.pi_zero)) == pytest.approx(
        expected, rel=1e-5)


def test_log_prior_is_finite_far_from_every_component():
    # Sharp components (σ = e^-5) and weights ±50 away: the naive Σ π N underflows to 0.
    params = MixtureParams(means=jnp.array([-0.5, 0.5]), log_precisions=jnp.full((3,), 10.0),
                           rhos=jnp.zeros(2))
    w = jnp.array([50.0, -50.0, 0.25])
    value = float(log_prior(w, params, 0.9))
    assert math.isfinite(value)
    assert value == pytest.approx(_scipy_mixture(w, params, 0.9), rel=1e-5)


def test_hyper_prior_matches_scipy_gamma():
    params = _random_params(3)
    lam = np.exp(np.asarray(params.log_precisions, np.float64))
    expected = sum(scipy.stats.gamma(a, scale=1.0 / b).logpdf(x) for a, b, x in zip(
        PRIOR.gamma_shapes, PRIOR.gamma_rates, lam))
    with jax.enable_x64(True):
        exact = float(log_hyper_prior(jnp.asarray(params.log_precisions, jnp.float64), PRIOR))
    assert exact == pytest.approx(expected, rel=1e-10)
    # In float32 the terms α log β − log Γ(α) ~ 4e4 cancel: absolute rounding ~ 4e4 · 6e-8.
    assert float(log_hyper_prior(params.log_precisions, PRIOR)) == pytest.approx(
        expected, abs=0.05)


def test_hyper_prior_is_the_tutorial_term_up_to_a_constant():
    # Tutorial (empirical_priors.py): loss += (1 − α)γ + βλ. Differences between two γ agree.
    gamma_a, gamma_b = jnp.linspace(2.0, 8.0, 5), jnp.linspace(3.0, 7.0, 5)

    def tutorial(g):
        return float(jnp.sum((1 - PRIOR.gamma_shapes) * g + PRIOR.gamma_rates * jnp.exp(g)))

    ours = float(log_hyper_prior(gamma_b, PRIOR) - log_hyper_prior(gamma_a, PRIOR))
    assert -ours == pytest.approx(tutorial(gamma_b) - tutorial(gamma_a), rel=1e-4)


def test_gradient_matches_finite_differences():
    params = _random_params(4)
    weights = jnp.asarray(np.random.default_rng(5).normal(0, 0.4, 50), jnp.float32)

    def loss(flat):
        w, means, gammas, rhos = flat[:50], flat[50:54], flat[54:59], flat[59:63]
        return negative_log_prior([w], MixtureParams(means, gammas, rhos), PRIOR)

    with jax.enable_x64(True):
        flat = jnp.concatenate([weights, *params]).astype(jnp.float64)
        grad = np.asarray(jax.grad(loss)(flat))
        eps = 1e-4  # the loss holds terms ~4e4: rounding 4e4·1e-16/eps must stay small
        for index in range(flat.shape[0]):
            step = jnp.zeros_like(flat).at[index].set(eps)
            numeric = (float(loss(flat + step)) - float(loss(flat - step))) / (2 * eps)
            assert grad[index] == pytest.approx(numeric, rel=1e-5, abs=1e-6), index


def test_init_mixture_spans_the_pretrained_range_or_the_given_width():
    weights = [np.array([[-1.5, 0.2]]), np.array([0.9])]
    params = init_mixture(PRIOR, weights)
    np.testing.assert_allclose(params.means, np.linspace(-1.5, 0.9, 4), rtol=1e-6)
    np.testing.assert_allclose(np.exp(-0.5 * np.asarray(params.log_precisions)),
                               np.std([-1.5, 0.2, 0.9]), rtol=1e-6)  # init_std=None: their std
    fixed = init_mixture(GaussianMixture(num_components=5, pi_zero=0.9, init_std=0.25), weights)
    np.testing.assert_allclose(np.exp(-0.5 * np.asarray(fixed.log_precisions)), 0.25, rtol=1e-6)
    pis = np.exp(np.asarray(log_mixing_proportions(params.rhos, PRIOR.pi_zero)))
    np.testing.assert_allclose(pis[1:], (1 - 0.9) / 4, rtol=1e-5)
    tutorial = init_mixture(GaussianMixture(num_components=16, pi_zero=0.99,
                                            init_means_half_width=0.6), weights)
    np.testing.assert_allclose(tutorial.means, np.linspace(-0.6, 0.6, 15), rtol=1e-6)
    assert float(component_means(tutorial)[0]) == 0.0


def test_gaussian_kl_matches_quadrature_free_formula():
    # KL(N(m1, s1²) || N(m2, s2²)) = log(s2/s1) + (s1² + (m1 − m2)²)/(2 s2²) − 1/2.
    m1, s1, m2, s2 = 0.3, 0.1, -0.2, 0.4
    expected = math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
    got = gaussian_kl(m1, -2 * math.log(s1), m2, -2 * math.log(s2))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert float(gaussian_kl(m1, 3.0, m1, 3.0)) == 0.0


@pytest.mark.parametrize("kwargs", [
    dict(num_components=1), dict(num_components=2.5), dict(pi_zero=1.0), dict(pi_zero="0.9"),
    dict(init_std=0.0), dict(init_std=-0.25), dict(gamma_shape=-1.0), dict(zero_gamma_rate=float("inf")),
    dict(init_means_half_width=-0.6), dict(include_biases="yes"), dict(components=3),
])
def test_bad_hyper_parameters_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        priors.get("gaussian_mixture", **kwargs)


def test_init_rejects_non_finite_or_constant_weights():
    with pytest.raises(ConfigError, match="not finite"):
        init_mixture(PRIOR, [np.array([0.1, np.nan])])
    with pytest.raises(ConfigError, match="init_std"):
        init_mixture(PRIOR, [np.full(3, 0.5)])
