"""``FactorizedGaussian.variance``: the hand-written VJP equals autodiff of the plain formula.

The reference is ``exp(clip(log σ² − log(θ² + 1e-8), −8, 8)) · θ²`` differentiated by
``jax.grad`` (the Sparse VD authors' formula, nets/layers.py, written without a custom VJP). Points are chosen
on both sides of both clip bounds, where the log σ² gradient must be exactly zero. Tolerance:
both sides evaluate the same float32 expressions in a different order, so they agree to a few
ulps (1e-6) relative to the terms summed. Inside the clip range the θ-gradient is a difference of
two nearly equal terms, 2θα − 2θα · θ²/(θ² + 1e-8) (analytically ~0), so there the absolute
error is float32 rounding of 2θα: 1e-6 · max|2θα|.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp.posteriors import FactorizedGaussian
from bayescomp.posteriors.gaussian import THETA_SQ_EPS

LOW, HIGH = -8.0, 8.0


def _plain_variance(theta, log_sigma2):
    log_alpha = log_sigma2 - jnp.log(theta * theta + THETA_SQ_EPS)
    return jnp.exp(jnp.clip(log_alpha, LOW, HIGH)) * theta * theta


def _posterior_with(theta, log_sigma2):
    q = FactorizedGaussian(theta.shape, rngs=nnx.Rngs(0), log_alpha_clip=(LOW, HIGH))
    q.theta[...] = theta
    q.log_sigma2[...] = log_sigma2
    return q


def _points():
    theta = jax.random.normal(jax.random.key(0), (6, 50))
    # log α from −12 to 12: a third below the clip range, a third inside, a third above.
    log_alpha = jnp.linspace(-12.0, 12.0, theta.size).reshape(theta.shape)
    return theta, log_alpha + jnp.log(theta * theta + THETA_SQ_EPS)


def test_value_matches_plain_formula():
    theta, log_sigma2 = _points()
    got = _posterior_with(theta, log_sigma2).variance()
    np.testing.assert_allclose(got, _plain_variance(theta, log_sigma2), rtol=1e-6)


def test_gradient_matches_autodiff_of_plain_formula():
    theta, log_sigma2 = _points()
    weights = jax.random.uniform(jax.random.key(1), theta.shape)  # a generic cotangent

    def ours(theta, log_sigma2):
        return jnp.sum(weights * _posterior_with(theta, log_sigma2).variance())

    def plain(theta, log_sigma2):
        return jnp.sum(weights * _plain_variance(theta, log_sigma2))

    got = jax.grad(ours, argnums=(0, 1))(theta, log_sigma2)
    want = jax.grad(plain, argnums=(0, 1))(theta, log_sigma2)
    log_alpha = log_sigma2 - jnp.log(theta * theta + THETA_SQ_EPS)
    cancelling_term = jnp.max(jnp.abs(weights * 2 * theta * jnp.exp(jnp.clip(log_alpha, LOW, HIGH))))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6 * float(cancelling_term))
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-12)
    clipped = np.asarray((log_alpha < LOW) | (log_alpha > HIGH))
    assert clipped.sum() >= 100  # the clip regions (a third of the points) are exercised
    assert np.all(np.asarray(got[1])[clipped] == 0.0)
