r"""Fusion boundaries for XLA:CPU: compute a value once, into its own buffers.

XLA fuses element-wise producers into their consumers and, on the CPU backend, treats most
element-wise work as cheap enough to *recompute* in every consumer rather than write to memory
once. The reparameterization noise ε (:mod:`bayescomp.posteriors.noise`) paid for that: its
Threefry hash and erf⁻¹ were recomputed inside every fusion that reads ε.

:func:`materialized` puts a computation inside ``lax.cond`` with the same function in both
branches. Whichever branch runs, the result is the function's value; but a conditional is a
fusion boundary, so the value is computed once and written out, and consumers read it.
``lax.optimization_barrier`` would say the same thing more directly, but it does not survive to
XLA:CPU's fusion passes and does not prevent the recomputation. The function must do real work:
XLA turns a conditional with trivial branches (an identity, say) into a select and removes it.

Two costs limit where it pays. XLA:CPU runs convolutions inside control flow an order of
magnitude slower (jax-ml/jax#12868), so a branch must not hold one. And the boundary itself
costs: materializing the whole gradient of a step (``grad`` inside the conditional) took a
LeNet-300-100 Sparse VD step from 3.19 to 3.00 ms but made the dense, BC-GNJ and BC-GHS steps
3–6 % slower, so the training step does not use it (one-process A/B runs on the 2-core
development CPU, the two variants called alternately).

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

