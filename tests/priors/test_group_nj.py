r"""BC-GNJ: the group-normal posterior and the group normal-Jeffreys KL (Louizos et al. 2017, §3.1).

* The KL equals a float64 hand sum of Molchanov's Eq. 14 at the group log α plus the closed-form
  ½(−log σ² + σ² + μ² − 1) per weight (independent numpy code, not the library's functions).
* E[w] and Var[w] of w = z·w̃ against Monte Carlo samples of z and w̃.
* The sampled pre-activations (local reparameterization with z drawn per example) against naive
  sampling of z and W for every example: dense layers scale inputs, conv layers scale output
  channels (bias included).

Monte Carlo tolerances: means within 5 standard errors; variances within 5 standard errors of
the sample variance, estimated from the samples themselves as sqrt(Var[(x − x̄)²] / n) (the
products z·w̃ are not Gaussian, so the Gaussian √(2/n) rule would be too tight).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.nn import VariationalConv, VariationalDense
from bayescomp.posteriors import GroupNormal
from bayescomp.priors import GroupNormalJeffreys, kl_divergence

N = 20_000


def _layer(kind, key):
    rngs = nnx.Rngs(params=0)
    if kind == "dense":
        layer = VariationalDense(6, 4, posterior_cls=GroupNormal, prior=GroupNormalJeffreys(),
                                 rngs=rngs)
    else:
        layer = VariationalConv(3, 4, (3, 3), posterior_cls=GroupNormal,
                                prior=GroupNormalJeffreys(), rngs=rngs)
    q = layer.posterior
    k = jax.random.split(key, 5)
    # Moderate noise everywhere so every term of the variance matters.
    q.w_mean[...] = jax.random.normal(k[0], q.w_mean[...].shape) * 0.5
    q.w_log_var[...] = jax.random.uniform(k[1], q.w_log_var[...].shape, minval=-3.0, maxval=-1.0)
    q.z_mean_param[...] = 1.0 + 0.3 * jax.random.normal(k[2], (q.num_groups,))
    q.z_log_var[...] = jax.random.uniform(k[3], (q.num_groups,), minval=-3.0, maxval=-1.0)
    layer.bias[...] = jax.random.normal(k[4], layer.bias[...].shape)
    return layer


def _assert_moments(a, b, axis=0):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = a.shape[axis]
    se_mean = np.sqrt((a.var(axis) + b.var(axis)) / n)
    np.testing.assert_array_less(np.abs(a.mean(axis) - b.mean(axis)), 5 * se_mean + 1e-6)
    da, db = (a - a.mean(axis)) ** 2, (b - b.mean(axis)) ** 2
    se_var = np.sqrt((da.var(axis) + db.var(axis)) / n)
    np.testing.assert_array_less(np.abs(a.var(axis) - b.var(axis)), 5 * se_var + 1e-6)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_kl_is_eq14_on_groups_plus_gaussian_weights(kind, key):
    key = key()
    layer = _layer(kind, key)
    q = layer.posterior
    mu_z = np.asarray(q.z_mean_param[...], np.float64)
    log_alpha = np.asarray(q.z_log_var[...], np.float64) - np.log(mu_z**2 + 1e-8)
    k1, k2, k3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. 2017, Eq. 14
    neg_kl_z = k1 / (1 + np.exp(-(k2 + k3 * log_alpha))) - 0.5 * np.log1p(np.exp(-log_alpha)) - k1
    mu = np.asarray(q.w_mean[...], np.float64)
    log_var = np.asarray(q.w_log_var[...], np.float64)
    kl_w = 0.5 * (-log_var + np.exp(log_var) + mu**2 - 1.0)
    want = -neg_kl_z.sum() + kl_w.sum()
    # float32 sums of a few hundred O(1) terms: relative rounding ~1e-6.
    np.testing.assert_allclose(float(kl_divergence(q, layer.prior)), want, rtol=1e-5)
    assert float(layer.kl()) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_weight_moments_against_monte_carlo(kind, key):
    key = key()
    q = _layer(kind, key).posterior
    k_z, k_w = jax.random.split(jax.random.fold_in(key, 1))
    z = q.sample_z(k_z, N)  # (N, groups)
    shape = [N] + [1] * len(q.kernel_shape)
    shape[1 + len(q.kernel_shape) + q.group_axis] = q.num_groups
    w_tilde = q.w_mean[...] + jnp.exp(0.5 * q.w_log_var[...]) * jax.random.normal(
        k_w, (N, *q.kernel_shape))
    w = z.reshape(shape) * w_tilde
    mean_err = jnp.abs(w.mean(0) - q.mean())
    assert bool(jnp.all(mean_err < 5 * jnp.sqrt(w.var(0) / N) + 1e-6))
    d = (w - w.mean(0)) ** 2
    assert bool(jnp.all(jnp.abs(w.var(0) - q.variance()) < 5 * jnp.sqrt(d.var(0) / N) + 1e-6))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_preactivations_against_naive_sampling(kind, key):
    key = key()
    layer = _layer(kind, key)
    q = layer.posterior
    x_shape = (2, 6) if kind == "dense" else (2, 5, 5, 3)
    x = jax.random.normal(jax.random.fold_in(key, 2), x_shape)
    graphdef, state = nnx.split(nnx.view(layer, deterministic=False))

    def lrt(k):
        return nnx.merge(graphdef, state)(x, rngs=nnx.Rngs(noise=k))

    def naive(k):
        k_z, k_w = jax.random.split(k)
        z = q.sample_z(k_z, x.shape[0])  # one z per example and group, as in training
        w_tilde = q.w_mean[...] + jnp.exp(0.5 * q.w_log_var[...]) * jax.random.normal(
            k_w, (x.shape[0], *q.kernel_shape))
        outs = []
        for n in range(x.shape[0]):
            if kind == "dense":  # z on inputs: w_ij = z_i w̃_ij; the bias is not scaled
                outs.append(x[n:n + 1] @ (z[n][:, None] * w_tilde[n]) + layer.bias[...])
            else:  # z on output channels: the whole channel, bias included, is scaled
                outs.append(z[n] * (layer.contract(x[n:n + 1], w_tilde[n]) + layer.bias[...]))
        return jnp.concatenate(outs)

    keys = jax.random.split(jax.random.fold_in(key, 3), N)
    a = jax.jit(jax.vmap(lrt))(keys)
    b = jax.jit(jax.vmap(naive))(jax.random.split(jax.random.fold_in(key, 4), N))
    _assert_moments(a, b)


def test_variance_clip_projects_log_variances():
    q = GroupNormal((4, 3), group_axis=-2, rngs=nnx.Rngs(params=0), max_weight_var=0.04)
    q.w_log_var[...] = jnp.full((4, 3), 1.0)
    q.project()
    np.testing.assert_allclose(np.asarray(q.w_log_var[...]), np.log(0.04), rtol=1e-6)
