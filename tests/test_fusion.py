"""``bayescomp.fusion``: a fusion boundary that must never change a value.

Both branches of the conditional are the same function, so the result must equal the plain
function whichever branch the run-time predicate (the first element's lowest bit) picks; the
operands below are chosen to take each branch. Equality is exact: the same operations on the
same inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from bayescomp.fusion import materialized


def _low_bit(x) -> int:
    first = np.ravel(np.asarray(x))[0]
    return int(first.view(f"uint{8 * first.itemsize}")) & 1


def _fn(x, y):
    return jnp.exp(x) * y + jnp.sin(x), jnp.sum(x * y)


@pytest.mark.parametrize("first", [1.0, 1.0000001, -3.0, 2.5000002])
def test_materialized_equals_the_function_on_either_branch(first):
    x = jnp.asarray([first, 0.5, -2.0, 3.0], jnp.float32)
    y = jnp.arange(4.0, dtype=jnp.float32)
    got = jax.jit(lambda a, b: materialized(_fn, a, b))(x, y)
    want = jax.jit(_fn)(x, y)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_both_branches_are_exercised_by_the_parametrization():
    bits = {_low_bit(np.float32(v)) for v in [1.0, 1.0000001, -3.0, 2.5000002]}
    assert bits == {0, 1}


def test_integer_bool_and_vmapped_operands():
    words = jnp.asarray([[2, 7], [3, 9]], jnp.uint32)  # low bits 0 and 1: both branches
    got = jax.vmap(lambda w: materialized(lambda v: v * 3 + 1, w))(words)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(words * 3 + 1))
    mask = jnp.asarray([True, False])
    np.testing.assert_array_equal(np.asarray(materialized(jnp.logical_not, mask)), [False, True])


def test_gradient_through_the_boundary():
    # d/dx Σ exp(x)·x = exp(x)·(1 + x), through the conditional; float32 rounding only.
    x = jnp.linspace(-1.0, 1.0, 6)
    grad = jax.grad(lambda v: jnp.sum(materialized(lambda u: jnp.exp(u) * u, v)))(x)
    np.testing.assert_allclose(np.asarray(grad), np.exp(np.asarray(x)) * (1 + np.asarray(x)),
                               rtol=1e-6)


def test_on_cpu_the_boundary_is_a_conditional():
    jaxpr = jax.make_jaxpr(lambda x: materialized(jnp.exp, x))(jnp.ones(3))
    primitives = {eqn.primitive for eqn in jaxpr.jaxpr.eqns}
    assert (lax.cond_p in primitives) == (jax.default_backend() == "cpu")
