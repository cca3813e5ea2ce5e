"""A variational layer with zero posterior variance is an ordinary Flax layer.

Compared with ``nnx.Linear`` and ``nnx.Conv(padding="VALID")`` holding the same kernel and bias
(the consistency pattern of flax's ``TestLinenConsistency``):

* the deterministic (posterior-mean) view of a Gaussian layer: exact up to float rounding;
* the training (sampling) view of a Gaussian layer whose variance is ~0: the local
  reparameterization adds sqrt(var + 1e-8)·ε, i.e. noise of standard deviation ~1e-4;
* a ``Delta`` (point) posterior in every view: exact up to float rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.nn import VariationalConv, VariationalDense
from bayescomp.posteriors import Delta, FactorizedGaussian
from bayescomp.priors import Flat, LogUniform

# x @ W by the same XLA dot on the same float32 data: results agree to a few ulps at most
# (outputs are O(1), so 1e-6 absolute / relative is float rounding only).
ROUNDING = dict(rtol=1e-6, atol=1e-6)

# The LRT adds sqrt(var + 1e-8)·ε: with var ≈ 0 the noise has standard deviation 1e-4 per
# output. Over the ≤ 540 outputs compared, |ε| < 6 except with probability ~1e-6, so 6e-4.
LRT_FLOOR = 6e-4

DENSE_IN, DENSE_OUT = 7, 4
CONV_IN, CONV_OUT, KERNEL = 3, 5, (3, 3)


def _dense(posterior_cls, prior, **posterior_kwargs):
    return VariationalDense(DENSE_IN, DENSE_OUT, posterior_cls=posterior_cls, prior=prior,
                            rngs=nnx.Rngs(params=0), posterior_kwargs=posterior_kwargs)


def _conv(posterior_cls, prior, **posterior_kwargs):
    return VariationalConv(CONV_IN, CONV_OUT, KERNEL, posterior_cls=posterior_cls, prior=prior,
                           rngs=nnx.Rngs(params=0), posterior_kwargs=posterior_kwargs)


def _flax_twin(layer, kernel, bias):
    """nnx.Linear / nnx.Conv with the given kernel and bias."""
    if isinstance(layer, VariationalConv):
        twin = nnx.Conv(CONV_IN, CONV_OUT, KERNEL, padding="VALID", rngs=nnx.Rngs(0))
    else:
        twin = nnx.Linear(DENSE_IN, DENSE_OUT, rngs=nnx.Rngs(0))
    assert twin.kernel[...].shape == kernel.shape  # same layout: (in, out) / HWIO
    twin.kernel[...] = kernel
    twin.bias[...] = bias
    return twin


def _inputs(layer, key):
    shape = (3, 8, 8, CONV_IN) if isinstance(layer, VariationalConv) else (3, DENSE_IN)
    return jax.random.normal(key, shape)


def _set_gaussian(layer, key, log_sigma2):
    k1, k2 = jax.random.split(key)
    kernel = jax.random.normal(k1, layer.posterior.theta[...].shape)
    bias = jax.random.normal(k2, layer.bias[...].shape)
    layer.posterior.theta[...] = kernel
    layer.posterior.log_sigma2[...] = jnp.full(kernel.shape, log_sigma2)
    layer.bias[...] = bias
    return kernel, bias


LAYERS = [pytest.param(_dense, id="dense"), pytest.param(_conv, id="conv")]


@pytest.mark.parametrize("make", LAYERS)
def test_gaussian_deterministic_view_equals_flax(make, key):
    # The posterior mean view ignores the variance entirely; use a large one to show it.
    layer = make(FactorizedGaussian, LogUniform())
    kernel, bias = _set_gaussian(layer, key(), log_sigma2=0.0)
    x = _inputs(layer, key())
    want = _flax_twin(layer, kernel, bias)(x)
    got = nnx.view(layer, deterministic=True)(x)
    np.testing.assert_allclose(got, want, **ROUNDING)


@pytest.mark.parametrize("make", LAYERS)
def test_gaussian_sampling_view_with_zero_variance_equals_flax(make, key):
    # log σ² = -60 makes σ² ~ 1e-26 only if log α is not clipped from below: the default clip
    # [-8, 8] floors the forward variance at e⁻⁸·θ² (the Sparse VD authors' nets/layers.py), so widen it.
    layer = make(FactorizedGaussian, LogUniform(), log_alpha_clip=(-100.0, 8.0))
    kernel, bias = _set_gaussian(layer, key(), log_sigma2=-60.0)
    assert float(layer.posterior.variance().max()) < 1e-20
    x = _inputs(layer, key())
    want = _flax_twin(layer, kernel, bias)(x)
    got = nnx.view(layer, deterministic=False)(x, rngs=nnx.Rngs(noise=key()))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=LRT_FLOOR)
    assert not np.array_equal(got, want)  # the sampling path (with its 1e-4 noise) did run


@pytest.mark.parametrize("make", LAYERS)
def test_default_clip_keeps_a_variance_floor(make, key):
    # With the default clip, log σ² = -60 still gives α = e⁻⁸: the forward variance is
    # e⁻⁸·θ², not 0 (documented behaviour of the Sparse VD authors' nets/layers.py).
    layer = make(FactorizedGaussian, LogUniform())
    kernel, _ = _set_gaussian(layer, key(), log_sigma2=-60.0)
    np.testing.assert_allclose(layer.posterior.variance(), np.exp(-8.0) * kernel**2, rtol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True], ids=["sampling", "deterministic"])
@pytest.mark.parametrize("make", LAYERS)
def test_delta_posterior_equals_flax(make, deterministic, key):
    layer = make(Delta, Flat())
    k1, k2 = jax.random.split(key())
    kernel = jax.random.normal(k1, layer.posterior.weight[...].shape)
    bias = jax.random.normal(k2, layer.bias[...].shape)
    layer.posterior.weight[...] = kernel
    layer.bias[...] = bias
    x = _inputs(layer, key())
    want = _flax_twin(layer, kernel, bias)(x)
    # A point posterior needs no rngs, in either view.
    got = nnx.view(layer, deterministic=deterministic)(x)
    np.testing.assert_allclose(got, want, **ROUNDING)
    # ... and pruning never applies to it (no log α).
    pruned = nnx.view(layer, deterministic=True, pruned=True)(x)
    np.testing.assert_allclose(pruned, want, **ROUNDING)
