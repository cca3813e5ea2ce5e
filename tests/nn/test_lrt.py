r"""Local reparameterization trick vs naive weight sampling (Kingma et al. 2015, Eq. 6).

A variational layer in training mode samples its pre-activation b directly,
b ~ N(contract(x, θ) + bias, contract(x², σ²)). The naive alternative draws a whole kernel
W ~ N(θ, σ²) and computes contract(x, W) + bias. Per example and output unit both give the same
Gaussian, so their sample means and variances must agree. Both sides are Monte Carlo estimates;
the tolerances are 5 standard errors of the difference (a false failure has probability ≲ 1e-6
per compared entry, and there are at most a few hundred entries per test).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.nn import VariationalConv, VariationalDense
from bayescomp.posteriors import FactorizedGaussian
from bayescomp.priors import LogUniform

N_SAMPLES = 10_000


def _randomise(layer, key, log_alpha_range=(-2.0, 1.0)):
    """Random θ, bias and log σ² with log α uniform in ``log_alpha_range`` (variance matters)."""
    k_theta, k_alpha, k_bias = jax.random.split(key, 3)
    shape = layer.posterior.theta[...].shape
    theta = jax.random.normal(k_theta, shape) * 0.5
    log_alpha = jax.random.uniform(k_alpha, shape, minval=log_alpha_range[0],
                                   maxval=log_alpha_range[1])
    layer.posterior.theta[...] = theta
    layer.posterior.log_sigma2[...] = log_alpha + jnp.log(theta * theta)
    layer.bias[...] = jax.random.normal(k_bias, layer.bias[...].shape)


def _lrt_samples(layer, x, key):
    """N_SAMPLES calls of the layer in training mode, one noise key each; (n, *out_shape)."""
    graphdef, state = nnx.split(nnx.view(layer, deterministic=False))

    def one(k):
        return nnx.merge(graphdef, state)(x, rngs=nnx.Rngs(noise=k))

    return jax.jit(jax.vmap(one))(jax.random.split(key, N_SAMPLES))


def _naive_samples(layer, x, key):
    """Draw W ~ N(θ, σ²_eff) (σ²_eff = posterior.variance()) and compute contract(x, W) + b."""
    theta = layer.posterior.mean()
    std = jnp.sqrt(layer.posterior.variance())
    bias = layer.bias[...]

    def one(k):
        w = theta + std * jax.random.normal(k, theta.shape)
        return layer.contract(x, w) + bias

    return jax.jit(jax.vmap(one))(jax.random.split(key, N_SAMPLES))


def _assert_same_moments(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = a.shape[0]
    mean_a, mean_b = a.mean(0), b.mean(0)
    var_a, var_b = a.var(0, ddof=1), b.var(0, ddof=1)
    # Standard error of a mean: sqrt(var/n); of a Gaussian sample variance: var·sqrt(2/(n-1)).
    se_mean = np.sqrt(var_a / n + var_b / n)
    se_var = np.sqrt(2.0 / (n - 1)) * np.sqrt(var_a**2 + var_b**2)
    # The 1e-5 floors absorb float32 rounding of the sums (relative ~1e-6 of O(1) values).
    np.testing.assert_array_less(np.abs(mean_a - mean_b), 5 * se_mean + 1e-5)
    np.testing.assert_array_less(np.abs(var_a - var_b), 5 * se_var + 1e-5)
    # The test has power: it would catch a pre-activation variance off by 30 % anywhere.
    assert np.all(5 * se_var < 0.3 * var_b)


def _variational(cls, *args, **kwargs):
    return cls(*args, posterior_cls=FactorizedGaussian, prior=LogUniform(),
               rngs=nnx.Rngs(params=0), **kwargs)


def test_dense_lrt_matches_naive_sampling(key):
    layer = _variational(VariationalDense, 6, 5)
    _randomise(layer, key())
    x = jax.random.normal(key(), (3, 6))  # a small batch: 3 examples x 5 units
    _assert_same_moments(_lrt_samples(layer, x, key()), _naive_samples(layer, x, key()))


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_conv_lrt_matches_naive_sampling(key, padding):
    layer = _variational(VariationalConv, 2, 3, (3, 3), padding=padding)
    _randomise(layer, key())
    x = jax.random.normal(key(), (2, 5, 5, 2))  # 2 examples; VALID -> (2, 3, 3, 3) outputs
    lrt, naive = _lrt_samples(layer, x, key()), _naive_samples(layer, x, key())
    assert lrt.shape == naive.shape
    _assert_same_moments(lrt, naive)


def test_lrt_moments_equal_the_closed_form(key):
    # The same samples against the exact moments contract(x, θ) + b and contract(x², σ²) (+1e-8,
    # the VARIANCE_EPS of the reference code). Same 5-standard-error tolerance, one-sided MC.
    layer = _variational(VariationalDense, 6, 5)
    _randomise(layer, key())
    x = jax.random.normal(key(), (3, 6))
    samples = np.asarray(_lrt_samples(layer, x, key()), np.float64)
    mean = np.asarray(layer.contract(x, layer.posterior.mean()) + layer.bias[...])
    var = np.asarray(layer.contract(x * x, layer.posterior.variance())) + 1e-8
    n = samples.shape[0]
    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * np.sqrt(var / n) + 1e-5)
    np.testing.assert_array_less(np.abs(samples.var(0, ddof=1) - var),
                                 5 * np.sqrt(2.0 / (n - 1)) * var + 1e-5)


def test_noise_is_independent_across_keys_and_examples(key):
    layer = _variational(VariationalDense, 4, 3)
    _randomise(layer, key())
    x = jnp.ones((2, 4))  # two identical examples
    a = layer(x, rngs=nnx.Rngs(noise=key()))
    b = layer(x, rngs=nnx.Rngs(noise=key()))
    assert not np.allclose(a, b)  # a new key draws new noise
    assert not np.allclose(a[0], a[1])  # one draw per example, not one kernel per batch
    k = key()
    np.testing.assert_array_equal(layer(x, rngs=nnx.Rngs(noise=k)),
                                  layer(x, rngs=nnx.Rngs(noise=k)))  # same key, same draw


def test_training_mode_without_rngs_is_a_clear_error():
    layer = _variational(VariationalDense, 4, 3)
    with pytest.raises(ValueError, match="needs `rngs`"):
        layer(jnp.ones((1, 4)))
