r"""KL(Dir(φ) ‖ Dir(α)) of :mod:`bayescomp.priors.dirichlet` against independent references.

* **distrax's closed form** (``distrax.Dirichlet(φ).kl_divergence(distrax.Dirichlet(α))``),
  evaluated in float64, against the library in float32. Tolerance: float32 rounding of the
  library, 1e-5 relative to Σ|terms| (each lnΓ/ψ term is computed to a few ulp, 6e-8, and there
  are ≈4C of them) plus 1e-5 nats absolute.
* **Monte Carlo** E_q[log q(s) − log p(s)] with numpy's float64 Dirichlet sampler and distrax
  float64 densities. Tolerance: 5 Monte Carlo standard errors (a two-sided 5σ miss has
  probability 6e-7; the seed is fixed, so the outcome is deterministic) plus the float32
  rounding above.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import digamma, gammaln

from bayescomp.errors import ConfigError
from bayescomp.priors.dirichlet import Dirichlet, kl_dirichlet

distrax = pytest.importorskip("distrax", reason="the independent reference is distrax")

K_SE = 5.0


def _terms_magnitude(phi: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Σ|terms| of the closed form per row (float64), the scale of its float32 rounding."""
    phi_sum, alpha_sum = phi.sum(-1), alpha.sum(-1)
    elog = digamma(phi) - digamma(phi_sum)[..., None]
    return (np.abs(gammaln(phi_sum)) + np.abs(gammaln(phi)).sum(-1) + np.abs(gammaln(alpha_sum))
            + np.abs(gammaln(alpha)).sum(-1) + np.abs((phi - alpha) * elog).sum(-1))


def _distrax_kl64(phi: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    with jax.enable_x64(True):
        q = distrax.Dirichlet(jnp.asarray(phi, jnp.float64))
        p = distrax.Dirichlet(jnp.asarray(alpha, jnp.float64))
        return np.asarray(q.kl_divergence(p), np.float64)


@pytest.mark.parametrize("alpha0", [0.05, 0.7, 2.0])
def test_kl_matches_distrax_closed_form(alpha0):
    rng = np.random.default_rng(0)
    # Rows of one batch: concentrations from 1e-3 to 1e3 (what softplus(θ) meets in training).
    phi = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), (6, 7)))
    alpha = np.full_like(phi, alpha0)
    library = np.asarray(kl_dirichlet(jnp.asarray(phi, jnp.float32), alpha0), np.float64)
    reference = _distrax_kl64(phi, alpha)
    assert library.shape == (6,)
    tolerance = 1e-5 * _terms_magnitude(phi, alpha) + 1e-5
    assert np.all(np.abs(library - reference) <= tolerance), (library, reference, tolerance)


def test_kl_with_a_non_symmetric_prior_and_leading_axes():
    rng = np.random.default_rng(1)
    phi = rng.uniform(0.2, 5.0, (2, 3, 4))
    alpha = rng.uniform(0.2, 5.0, (2, 3, 4))
    library = np.asarray(kl_dirichlet(jnp.asarray(phi, jnp.float32),
                                      jnp.asarray(alpha, jnp.float32)))
    reference = _distrax_kl64(phi, alpha)
    assert library.shape == (2, 3)
    np.testing.assert_array_less(np.abs(library - reference),
                                 1e-5 * _terms_magnitude(phi, alpha) + 1e-5)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    phi = jnp.full((5,), 0.3)
    assert abs(float(kl_dirichlet(phi, 0.3))) < 1e-5
    assert float(kl_dirichlet(phi.at[0].set(0.9), 0.3)) > 0.0


@pytest.mark.parametrize("phi,alpha0", [((0.5, 1.0, 2.0, 4.0, 1.5), 0.7),
                                        ((3.0, 0.8, 1.2), 1.5)])
def test_kl_matches_monte_carlo(phi, alpha0):
    phi = np.asarray(phi)
    n = 200_000
    s = np.random.default_rng(2).dirichlet(phi, n)
    with jax.enable_x64(True):
        log_q = np.asarray(distrax.Dirichlet(jnp.asarray(phi)).log_prob(jnp.asarray(s)))
        log_p = np.asarray(distrax.Dirichlet(jnp.full(phi.shape, alpha0)).log_prob(
            jnp.asarray(s)))
    d = log_q - log_p
    assert np.all(np.isfinite(d))
    estimate, standard_error = d.mean(), d.std(ddof=1) / np.sqrt(n)
    library = float(Dirichlet(alpha0).kl(jnp.asarray(phi, jnp.float32)))
    tolerance = K_SE * standard_error + 1e-5 * float(
        _terms_magnitude(phi, np.full_like(phi, alpha0))) + 1e-5
    assert abs(library - estimate) <= tolerance, (library, estimate, tolerance)


def test_kl_gradient_is_finite_over_the_training_range():
    phi = jnp.asarray([1e-3, 1e-1, 1.0, 10.0, 1e3], jnp.float32)
    grad = jax.grad(lambda p: Dirichlet(0.05).kl(p))(phi)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_prior_sums_over_rows_and_refuses_a_non_positive_alpha0():
    phi = jnp.asarray([[0.5, 1.0], [2.0, 3.0]], jnp.float32)
    np.testing.assert_allclose(float(Dirichlet(0.7).kl(phi)),
                               float(jnp.sum(kl_dirichlet(phi, 0.7))), rtol=1e-6)
    with pytest.raises(ConfigError, match="alpha0"):
        Dirichlet(0.0)
