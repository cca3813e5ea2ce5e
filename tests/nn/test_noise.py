"""``standard_normal``: JAX's own normal sampler, with both Threefry output words used.

The independent reference is ``jax.random.normal`` itself under
``jax_threefry_partitionable=False``, JAX's original bit-generation scheme, which uses both
words of every Threefry-2x32 block exactly as ``standard_normal`` does: the samples must be
bit-for-bit equal, so the distribution is JAX's well-tested one. A Kolmogorov–Smirnov test and
moment checks guard the transform independently of JAX, and the two halves of the counter range
(which come from the two words of the same blocks) are checked for correlation. Our unrolled
Threefry block function is compared with JAX's ``threefry_2x32`` on random and edge counters.
"""

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bayescomp.posteriors.noise import standard_normal, threefry2x32


@pytest.mark.parametrize("shape", [(7,), (4, 5), (3, 24, 24, 20), (2, 3, 1)])
def test_bit_identical_to_jax_original_threefry_scheme(shape):
    key = jax.random.key(11)
    ours = jax.jit(standard_normal, static_argnums=1)(key, shape)
    with jax.threefry_partitionable(False):
        reference = jax.jit(jax.random.normal, static_argnums=1)(key, shape)
    assert ours.shape == shape and ours.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))


def test_both_branches_of_the_materializing_conditional_and_vmap():
    """On CPU the draw sits in a ``lax.cond`` on the key's low bit; both branches draw the same ε.

    Keys are chosen so that the first key word is even for one and odd for the other, so each
    branch of the conditional runs; under ``vmap`` over keys the conditional becomes a select.
    """
    keys = jax.random.split(jax.random.key(0), 8)
    low_bits = {int(w) & 1 for w in np.asarray(jax.random.key_data(keys))[:, 0]}
    assert low_bits == {0, 1}, "the test needs keys that take both branches"
    draw = jax.jit(standard_normal, static_argnums=1)
    with jax.threefry_partitionable(False):
        reference = [np.asarray(jax.random.normal(k, (5, 6))) for k in keys]
    for key, expected in zip(keys, reference):
        np.testing.assert_array_equal(np.asarray(draw(key, (5, 6))), expected)
    batched = jax.jit(jax.vmap(lambda k: standard_normal(k, (5, 6))))(keys)
    np.testing.assert_array_equal(np.asarray(batched), np.stack(reference))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the conditional is CPU-only")
def test_draw_is_a_conditional_on_cpu():
    """The optimisation itself: ε is computed inside a conditional, not fused into consumers."""
    hlo = jax.jit(lambda k, m: m + standard_normal(k, m.shape)).lower(
        jax.random.key(0), jnp.zeros((4, 4))).compile().as_text()
    assert "conditional(" in hlo


def test_distribution_and_pairwise_independence():
    n = 200_000
    z = np.asarray(standard_normal(jax.random.key(3), (n,)))
    # KS at n = 2e5: a false failure at p < 1e-4 has probability 1e-4 by construction.
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # Moments: standard errors are 1/sqrt(n) = 0.0022 (mean) and sqrt(2/n) = 0.0032 (variance);
    # 5 standard errors each.
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2 / n)
    # Entry i and entry i + n/2 are the two output words of one Threefry block.
    first, second = z[: n // 2], z[n // 2:]
    assert abs(np.corrcoef(first, second)[0, 1]) < 5 / np.sqrt(n // 2)


def test_keys_give_different_streams_and_same_key_repeats():
    a = standard_normal(jax.random.key(0), (1000,))
    b = standard_normal(jax.random.key(1), (1000,))
    again = standard_normal(jax.random.key(0), (1000,))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(again))
    assert np.mean(np.asarray(a) == np.asarray(b)) < 0.01


def test_other_dtypes_and_implementations_fall_back_to_jax():
    key = jax.random.key(5)
    np.testing.assert_array_equal(np.asarray(standard_normal(key, (9,), jnp.bfloat16)),
                                  np.asarray(jax.random.normal(key, (9,), jnp.bfloat16)))
    rbg_key = jax.random.key(5, impl="rbg")
    np.testing.assert_array_equal(np.asarray(standard_normal(rbg_key, (9,))),
                                  np.asarray(jax.random.normal(rbg_key, (9,))))
    assert standard_normal(key, (0, 3)).shape == (0, 3)


def test_threefry_block_function_equals_jax():
    counts = jax.random.randint(jax.random.key(2), (2, 257), 0, 2**31 - 1).astype(jnp.uint32)
    counts = counts.at[:, :3].set(jnp.array([[0, 1, 2**32 - 1], [0, 2**31, 7]], jnp.uint32))
    for key in (jax.random.key(0), jax.random.key(123456789)):
        k0, k1 = jax.random.key_data(key)
        ours = threefry2x32(k0, k1, counts[0], counts[1])
        reference = jax.extend.random.threefry_2x32((k0, k1), counts.ravel())
        np.testing.assert_array_equal(np.concatenate([np.asarray(w) for w in ours]),
                                      np.asarray(reference))
