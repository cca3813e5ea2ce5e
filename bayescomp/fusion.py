r"""Fusion boundaries for XLA:CPU: compute a value once, into its own buffers.

XLA fuses element-wise producers into their consumers and, on the CPU backend, treats most
element-wise work as cheap enough to *recompute* in every consumer rather than write to memory
once. Two places in a training step pay for that:

* the reparameterization noise ε (:mod:`bayescomp.posteriors.noise`): its Threefry hash and
  erf⁻¹ were recomputed inside every fusion that reads ε;
* the gradients: Adam reads each gradient three times (first moment, second moment, update),
  and XLA:CPU rebuilt the whole gradient expression of a variational kernel (matmul cotangents,
  clipped-variance and KL terms: nine arrays in) inside each of those fusions.

:func:`materialized` puts a computation inside ``lax.cond`` with the same function in both
branches. Whichever branch runs, the result is the function's value; but a conditional is a
fusion boundary, so the value is computed once and written out, and consumers read it.
``lax.optimization_barrier`` would say the same thing more directly, but it does not survive to
XLA:CPU's fusion passes and does not prevent the recomputation.

Measured on the 2-core development CPU (``benchmarks/train_speed.py`` and one-process A/B runs
that alternate the two variants): ε materialized, a LeNet-5 Sparse VD step 87 → 74 ms;
gradients materialized, a LeNet-300-100 Sparse VD step 3.15 → 2.94 ms.

Other backends get the plain computation: there a conditional can cost a device-to-host read of
its predicate, and GPU fusion heuristics do not recompute expensive producers this way.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax


def materialized(fn: Callable, *operands) -> Any:
    """``fn(*operands)``, computed once into its own buffers instead of fused into consumers.

    On CPU: ``lax.cond`` on a predicate known only at run time (the lowest bit of the first
    element of the first operand, so both branches are taken in practice), with ``fn`` as both
    branches, so the result is ``fn(*operands)`` either
    way. Under ``vmap`` the conditional becomes a select of the two (equal) branches. Elsewhere:
    ``fn(*operands)``.

    Args:
        fn: A function of ``operands`` (pytrees of arrays).
        *operands: Its arguments; at least one array leaf.

    Returns:
        ``fn(*operands)``.
    """
    if jax.default_backend() != "cpu":
        return fn(*operands)
    first = jnp.ravel(jax.tree.leaves(operands)[0])[0]
    if first.dtype != jnp.bool_:
        first = lax.bitcast_convert_type(first, jnp.dtype(f"uint{8 * first.dtype.itemsize}"))
    runtime_predicate = (first & 1) == 1
    return lax.cond(runtime_predicate, fn, fn, *operands)


def computed_once(tree: Any) -> Any:
    """``tree`` unchanged, each array written to memory once (see :func:`materialized`)."""
    return materialized(lambda t: t, tree)
