"""oneDNN's batch normalisation (:mod:`bayescomp.nn.onednn_batch_norm`) against XLA's.

The reference is :func:`bayescomp.nn.norm.batch_norm_with_dot_sums` (itself checked against
float64 autodiff of the textbook formula in ``tests/test_batch_norm.py``) followed by
``jax.nn.relu``, differentiated by JAX: an independent implementation of the same maths.
Tolerance: 2e-5 of each result's largest value, above float32 rounding of these per-channel sums
over at most 4·6·6 = 144 positions (each ~1e-6 relative) and far below a wrong statistic, layout
or ReLU mask (O(1)). Inputs whose pre-ReLU value lies within 1e-2 of zero are moved off the
kink, so that no ReLU decision rests on rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from onednn_helpers import need_onednn as _need_onednn  # tests/nn is on sys.path

from bayescomp.nn import norm, onednn_batch_norm, onednn_conv

RTOL = 2e-5
EPSILON = 1e-5


def _off_the_kink(x, scale, bias):
    """``x`` with every channel's normalised value kept at least 1e-2 from the ReLU's kink."""
    flat = x.reshape(-1, x.shape[-1])
    pre = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + EPSILON) * scale + bias
    return np.where(np.abs(pre) < 1e-2, flat + 0.05, flat).reshape(x.shape).astype(np.float32)


def _operands(shape, seed=0):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, shape[-1]).astype(np.float32)
    x = _off_the_kink((1.5 + 2.0 * rng.standard_normal(shape)).astype(np.float32), scale, bias)
    return x, scale, bias, rng


def _reference(x, scale, bias, relu):
    y, mean, var = norm.batch_norm_with_dot_sums(x, scale, bias, EPSILON)
    return (jax.nn.relu(y) if relu else y), mean, var


def _relative(got, want) -> float:
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


# Channel counts below, at and above one AVX-512 vector (oneDNN's kernel depends on it; the
# networks' layers have 16-512), maps and (n, c) batches (VGG's hidden layer).
@pytest.mark.parametrize("shape", [(4, 6, 6, 8), (2, 3, 5, 3), (4, 6, 6, 16), (2, 4, 4, 64),
                                   (16, 12), (32, 512)])
@pytest.mark.parametrize("relu", [False, True])
def test_values_and_gradients_equal_xlas(shape, relu):
    _need_onednn()
    x, scale, bias, rng = _operands(shape)
    cotangents = (rng.standard_normal(shape).astype(np.float32),
                  rng.standard_normal(shape[-1]).astype(np.float32),
                  rng.standard_normal(shape[-1]).astype(np.float32))

    def run(function):
        # Every output read: the statistics' cotangents are non-zero, as a loss on them gives.
        outputs, vjp = jax.vjp(lambda a, b, c: function(a, b, c, relu), x, scale, bias)
        return outputs, vjp(cotangents)

    ours = jax.jit(lambda: run(lambda a, b, c, r: onednn_batch_norm.batch_norm(
        a, b, c, EPSILON, relu=r)))()
    want = run(_reference)
    for got, expected in zip(jax.tree.leaves(ours), jax.tree.leaves(want)):
        assert got.shape == expected.shape
        assert _relative(got, expected) < RTOL


def test_only_the_output_read_gives_the_same_gradients():
    """The usual case (the statistics read only through ``stop_gradient``): their cotangents
    are symbolic zeros and the backward adds nothing for them."""
    _need_onednn()
    x, scale, bias, rng = _operands((4, 6, 6, 8), seed=1)
    weights = rng.standard_normal(x.shape).astype(np.float32)

    def loss(function):
        return lambda a, b, c: jnp.vdot(function(a, b, c)[0], weights)

    ours = jax.jit(jax.grad(loss(lambda a, b, c: onednn_batch_norm.batch_norm(
        a, b, c, EPSILON, relu=True)), argnums=(0, 1, 2)))(x, scale, bias)
    want = jax.grad(loss(lambda a, b, c: _reference(a, b, c, True)), argnums=(0, 1, 2))(
        x, scale, bias)
    for got, expected in zip(ours, want):
        assert _relative(got, expected) < RTOL


def test_vmap_runs_the_call_once_per_element():
    _need_onednn()
    x, scale, bias, _ = _operands((3, 4, 5, 5, 6))  # 3 draws of a (4, 5, 5, 6) batch
    x = np.stack([_off_the_kink(draw, scale, bias) for draw in x])
    got = jax.jit(jax.vmap(lambda a: onednn_batch_norm.batch_norm(a, scale, bias, EPSILON,
                                                                   relu=True)[0]))(x)
    for draw, y in zip(x, got):
        assert _relative(y, _reference(draw, scale, bias, True)[0]) < RTOL


def test_a_batch_norm_module_hands_its_relu_to_onednn_and_keeps_its_running_averages(
        monkeypatch):
    """The module with ``relu=True`` equals ``relu`` of its output, on either path; the running
    averages (PyTorch's convention, unbiased variance) move the same."""
    _need_onednn()
    x, scale, bias, _ = _operands((4, 6, 6, 8), seed=2)
    calls = []
    real = onednn_batch_norm.batch_norm
    monkeypatch.setattr(onednn_batch_norm, "batch_norm",
                        lambda *a, **k: calls.append(k["relu"]) or real(*a, **k))

    def apply(use_onednn, relu):
        monkeypatch.setattr(norm, "ONEDNN", use_onednn)
        module = norm.BatchNorm(8)
        module.scale[...], module.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
        y = module(jnp.asarray(x), relu=relu)
        y = y if relu else jax.nn.relu(y)
        return y, module.mean[...], module.var[...]

    fused = apply(True, True)
    assert calls == [True]
    for got, want in zip(fused, apply(False, False)):
        assert _relative(got, want) < RTOL
    assert calls == [True]  # the XLA path did not call it
    # The evaluation view applies the ReLU too.
    module = norm.BatchNorm(8, use_running_average=True)
    np.testing.assert_array_equal(module(jnp.asarray(x), relu=True),
                                  jax.nn.relu(module(jnp.asarray(x))))


def test_what_it_does_not_take():
    _need_onednn()
    assert not onednn_batch_norm.applies(jnp.zeros((2, 3, 4), jnp.float32))  # rank 3
    assert not onednn_batch_norm.applies(jnp.zeros((0, 4), jnp.float32))
    assert not onednn_batch_norm.applies(jnp.zeros((2, 4), jnp.float16))
    assert onednn_batch_norm.applies(jnp.zeros((2, 4), jnp.float32))
    with pytest.raises(ValueError, match="non-empty float32"):
        onednn_batch_norm.batch_norm(jnp.zeros((2, 3, 4)), jnp.ones(4), jnp.zeros(4), EPSILON)
    with pytest.raises(ValueError, match="scale and bias must have shape"):
        onednn_batch_norm.batch_norm(jnp.zeros((2, 4)), jnp.ones(3), jnp.zeros(4), EPSILON)


def test_xla_kernels_keep_xlas_batch_norm(monkeypatch):
    """``BAYESCOMP_CPU_CONV=xla`` (or several devices, or no oneDNN) keeps XLA's BatchNorm."""
    monkeypatch.setenv(onednn_conv.KERNEL_ENV, "xla")
    onednn_conv.cpu_conv_kernel.cache_clear()
    try:
        assert not onednn_batch_norm.applies(jnp.zeros((2, 4), jnp.float32))
    finally:
        monkeypatch.undo()
        onednn_conv.cpu_conv_kernel.cache_clear()


def test_the_self_checks_reference_is_xlas_batch_norm():
    """The load-time check's NumPy reference equals the XLA path and its gradients."""
    x, scale, bias, rng = _operands((3, 4, 5, 8), seed=3)
    cotangent = rng.standard_normal(x.shape).astype(np.float32)
    for relu in (False, True):
        (y, mean, var), vjp = jax.vjp(lambda a, b, c, r=relu: _reference(a, b, c, r), x,
                                      scale, bias)
        zero = jnp.zeros(x.shape[-1:], jnp.float32)
        want = (y, mean, var, *vjp((cotangent, zero, zero)))
        got = onednn_batch_norm._numpy_reference(x, scale, bias, cotangent, EPSILON, relu)
        for ours, theirs in zip(got, want):
            assert _relative(jnp.asarray(ours, jnp.float32).reshape(theirs.shape), theirs) < RTOL


def test_a_wrong_batch_norm_fails_the_self_check(monkeypatch):
    _need_onednn()
    real = onednn_batch_norm._batch_norm
    # the mean shifted: right shapes, wrong values
    def shifted(x, scale, bias, epsilon, relu):
        y, mean, var = real(x, scale, bias, epsilon, relu)
        return y, mean + 0.1, var

    monkeypatch.setattr(onednn_batch_norm, "_batch_norm", shifted)
    with pytest.raises(onednn_conv.OnednnUnavailable, match="mean differs from the reference"):
        onednn_batch_norm.compare_with_numpy()
