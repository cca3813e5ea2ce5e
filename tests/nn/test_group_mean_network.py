r"""The posterior-mean view of a group-scaled layer is the expectation of its training samples.

Bayesian Compression's layers (Louizos et al. 2017, §3) sample z per example and group and then
W given z by the local reparameterization trick. Whatever q(z) is, the pre-activation b they
sample in training is linear in z and in the Gaussian noise, so its expectation under q is the
deterministic pre-activation of the mean view: contract(x, E[W]) + (effective bias), where the
bias of an output-channel group is scaled by E[z] (the sample is z·(contract(x, μ) + bias + ...)).
Monte Carlo check: the mean of N sampled pre-activations must lie within 5 standard errors of
the deterministic one (a false failure has probability ≲ 1e-6 per entry; a few hundred entries),
for both group axes and both q(z) families. The test has power: it asserts that the raw
(unscaled) bias, the bug this guards against, would fall outside the tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.compression import quantize
from bayescomp.nn import VariationalConv, VariationalDense
from bayescomp.posteriors import GroupLogNormal, GroupNormal
from bayescomp.priors import GroupHorseshoe, GroupNormalJeffreys

N_SAMPLES = 20_000


def _layer(kind: str, posterior: str):
    posterior_cls, prior = {"gnj": (GroupNormal, GroupNormalJeffreys()),
                            "ghs": (GroupLogNormal, GroupHorseshoe(tau0=1e-5))}[posterior]
    kwargs = dict(posterior_cls=posterior_cls, prior=prior, rngs=nnx.Rngs(params=0))
    if posterior == "ghs":
        kwargs["posterior_kwargs"] = {"tau0": 1e-5}
    if kind == "dense":
        return VariationalDense(5, 4, **kwargs)
    return VariationalConv(2, 3, (3, 3), **kwargs)


def _move_away_from_init(layer, key):
    """E[z] spread over roughly 0.3-1.5 and visibly noisy z; weight variances and bias random."""
    k_z, k_v, k_w, k_b = jax.random.split(key, 4)
    q = layer.posterior
    g = q.num_groups
    if isinstance(q, GroupNormal):
        q.z_mean_param[...] = jax.random.uniform(k_z, (g,), minval=0.3, maxval=1.5)
        q.z_log_var[...] = jnp.full((g,), jnp.log(0.05))
    else:
        q.a_mu[...] = jax.random.uniform(k_z, (g,), minval=-2.0, maxval=0.8)
        q.a_log_var[...] = jnp.full((g,), jnp.log(0.2))
    q.w_log_var[...] = jnp.log(jax.random.uniform(k_v, q.w_log_var[...].shape, minval=0.01,
                                                  maxval=0.1))
    q.w_mean[...] = jax.random.normal(k_w, q.w_mean[...].shape) * 0.5
    layer.bias[...] = 2.0 + jax.random.normal(k_b, layer.bias[...].shape)  # far from 0


@pytest.mark.parametrize("posterior", ["gnj", "ghs"])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_mean_view_is_the_expectation_of_the_training_samples(kind, posterior):
    key = jax.random.key(3)
    layer = _layer(kind, posterior)
    _move_away_from_init(layer, jax.random.fold_in(key, 1))
    x_shape = (6, 5) if kind == "dense" else (2, 5, 5, 2)
    x = jax.random.normal(jax.random.fold_in(key, 2), x_shape)

    graphdef, state = nnx.split(nnx.view(layer, deterministic=False))
    sample = jax.jit(jax.vmap(lambda k: nnx.merge(graphdef, state)(x, rngs=nnx.Rngs(noise=k))))
    samples = np.asarray(sample(jax.random.split(jax.random.fold_in(key, 3), N_SAMPLES)),
                         np.float64)
    deterministic = np.asarray(nnx.view(layer, deterministic=True, pruned=False)(x), np.float64)

    mc_mean = samples.mean(0)
    standard_error = samples.std(0, ddof=1) / np.sqrt(N_SAMPLES)
    tolerance = 5 * standard_error + 1e-5  # 1e-5: float32 rounding of O(1) sums
    np.testing.assert_array_less(np.abs(mc_mean - deterministic), tolerance)

    # Power: with the raw bias (no E[z] on output-channel groups) conv layers would fail.
    if kind == "conv":
        raw = deterministic - np.asarray(layer.mean_bias()) + np.asarray(layer.bias[...])
        assert np.any(np.abs(mc_mean - raw) > tolerance)


class _OneConv(nnx.Module):
    def __init__(self):
        self.conv = _layer("conv", "ghs")


def test_quantized_network_uses_the_mean_bias():
    # The compressed file stores the quantised network's biases: they must be E[z]·bias too.
    model = _OneConv()
    _move_away_from_init(model.conv, jax.random.key(5))
    q = model.conv.posterior
    quantized = quantize.quantize(model, {"conv": np.ones(q.w_mean[...].shape, bool)})
    expected = np.asarray(model.conv.bias[...] * q.z_mean(), np.float32)
    np.testing.assert_allclose(quantized.biases[0], expected, rtol=1e-6)
    assert not np.allclose(expected, np.asarray(model.conv.bias[...]), rtol=1e-2)
