r"""Fusion boundaries for XLA:CPU: compute a value once, into its own buffers.

XLA fuses element-wise producers into their consumers and, on the CPU backend, treats most
element-wise work as cheap enough to *recompute* in every consumer rather than write to memory
once. Two places in a training step paid for that:

* the reparameterization noise ε (:mod:`bayescomp.posteriors.noise`): its Threefry hash and
  erf⁻¹ were recomputed inside every fusion that reads ε;
* the gradients of a factorized Gaussian posterior's θ and log σ², long expressions of matmul
  cotangents and clipped-variance, log α and KL terms, rebuilt inside each of Adam's fusions
  (first moment, second moment, update): see
  :func:`bayescomp.step.materialize_posterior_gradients`.

:func:`materialized` puts a computation inside ``lax.cond`` with the same function in both
branches. Whichever branch runs, the result is the function's value; but a conditional is a
fusion boundary, so the value is computed once and written out, and consumers read it.
``lax.optimization_barrier`` would say the same thing more directly, but it does not survive to
XLA:CPU's fusion passes and does not prevent the recomputation. The function must do real work
that XLA cannot fold away: a conditional whose branches only pass their operands through is
turned into a select and removed, boundary and all.

Two costs limit where it pays. XLA:CPU runs convolutions inside control flow an order of
magnitude slower (jax-ml/jax#12868), so a branch must not hold one. And the boundary itself
costs a pass over memory: around the gradients of the dense, group normal-Jeffreys and group
horseshoe posteriors, whose expressions are short, it made those steps 4–8 % slower, so only
the factorized Gaussian asks for it (one-process A/B runs on the 2-core development CPU, the
two variants called alternately).

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
    branches, so the result is ``fn(*operands)`` either way. Under ``vmap`` the conditional
    becomes a select of the two (equal) branches. Elsewhere: ``fn(*operands)``.

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

