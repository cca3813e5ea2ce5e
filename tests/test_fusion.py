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

from bayescomp.fusion import computed_once, materialized


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


def test_computed_once_keeps_a_tree_and_its_gradient():
    tree = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "n": jnp.asarray([4, 5], jnp.int32)}
    out = jax.jit(computed_once)(tree)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    for g, w in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    # d/dw Σ w² = 2w through the conditional (exact in float32).
    grad = jax.grad(lambda w: jnp.sum(computed_once(w) ** 2))(tree["w"])
    np.testing.assert_array_equal(np.asarray(grad), 2 * np.asarray(tree["w"]))


def test_on_cpu_the_boundary_is_a_conditional():
    jaxpr = jax.make_jaxpr(lambda x: materialized(jnp.exp, x))(jnp.ones(3))
    primitives = {eqn.primitive for eqn in jaxpr.jaxpr.eqns}
    assert (lax.cond_p in primitives) == (jax.default_backend() == "cpu")
