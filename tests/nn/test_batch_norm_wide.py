"""BatchNorm's batch statistics summed over wide rows (``bayescomp.nn.norm._wide_rows``) equal
the plain per-channel formula: outputs, running averages and gradients, to float32 rounding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayescomp.nn import norm
from bayescomp.nn.norm import BatchNorm

# Only the summation order differs from the plain formula: a few float32 ulps of the largest
# value, relative to it.
RTOL = 2e-6


def plain(x, scale, bias, epsilon=1e-5):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var


def relative(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("shape, k", [
    ((2, 8, 8, 16), 64),   # 1024-float rows: 64 positions of 16 channels
    ((6, 4, 4, 64), 16),   # 96 positions, divisible by 32, but 16 x 64 channels fill a row
    ((3, 5, 5, 7), 1),     # 75 positions: odd
    ((16, 512), 2),        # BatchNorm1d after a dense layer
])
def test_batch_statistics_and_gradients_match_the_plain_formula(shape, k):
    x = jax.random.normal(jax.random.key(0), shape) * 3.0 + 1.5
    channels = shape[-1]
    scale = jnp.linspace(0.5, 1.5, channels)
    bias = jnp.linspace(-1.0, 1.0, channels)
    weights = jax.random.normal(jax.random.key(1), shape)
    assert norm._wide_rows(x)[1] == k

    def ours(x, scale, bias):
        layer = BatchNorm(channels, momentum=0.25)
        layer.scale[...], layer.bias[...] = scale, bias
        y = layer(x)
        return y, (layer.mean[...], layer.var[...])

    def both(x, scale, bias):
        ours_grads = jax.grad(lambda *a: jnp.sum(weights * ours(*a)[0]), argnums=(0, 1, 2))
        plain_grads = jax.grad(lambda *a: jnp.sum(weights * plain(*a)[0]), argnums=(0, 1, 2))
        return (ours(x, scale, bias), plain(x, scale, bias), ours_grads(x, scale, bias),
                plain_grads(x, scale, bias))

    # One compilation: op-by-op dispatch would take most of the test's time.
    (y, (running_mean, running_var)), (y_ref, mean, var), grads, grads_ref = jax.jit(both)(
        x, scale, bias)
    count = x.size // channels
    assert relative(y, y_ref) < RTOL
    np.testing.assert_allclose(running_mean, 0.25 * mean, rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(running_var, 0.75 + 0.25 * var * count / (count - 1), rtol=RTOL)
    for got, want in zip(grads, grads_ref):
        assert relative(got, want) < 1e-5


def test_running_average_view_is_unchanged():
    layer = BatchNorm(4, use_running_average=True)
    layer.mean[...] = jnp.arange(4.0)
    layer.var[...] = jnp.full((4,), 4.0)
    x = jnp.ones((2, 3, 3, 4))
    want = jnp.broadcast_to((1.0 - jnp.arange(4.0)) / jnp.sqrt(4.0 + 1e-5), x.shape)
    np.testing.assert_allclose(layer(x), want, rtol=1e-5)
