r"""A weight-shared point kernel: every kept weight is one of K shared values.

.. math:: W = M \odot C[I]

with the codebook ``C`` (``K`` values, trained), each weight's fixed index ``I`` into it and the
fixed keep mask ``M`` (removed weights are exactly +0.0). It is Deep Compression's trained
quantization (Han, Mao & Dally, ICLR 2016, §3.3): automatic differentiation of the gather gives
each shared value the sum of the gradients of the weights that use it (their Eq. 3), so
fine-tuning the codebook keeps the network weight-shared. Under the flat prior its "KL" is 0,
as for :class:`~bayescomp.posteriors.delta.Delta`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.posteriors.base import Contraction, Posterior


def shared_kernel(values, index, mask) -> jax.Array:
    """``W = where(M, C[I], 0)`` (works on traced arrays). Its gradient with respect to ``C`` is
    Han et al.'s Eq. 3: the gradients of the kept weights summed per shared value."""
    return jnp.where(mask, jnp.asarray(values)[index], jnp.zeros((), jnp.float32))


class CodebookValues(nnx.Param):
    """The shared values of a weight-shared kernel (``(K,)``), trained by gradient descent."""


class CodebookIndex(nnx.Variable):
    """Each weight's index into its layer's codebook (kernel-shaped int32), fixed."""


class KeepMask(nnx.Variable):
    """A kernel's keep mask (kernel-shaped bool), fixed."""


class SharedCodebook(Posterior):
    """``q(W) = δ(W − M ⊙ C[I])``.

    Args:
        values: The codebook ``C``, ``(K,)`` float32.
        index: ``I``, kernel-shaped integer indices into ``values``.
        mask: ``M``, kernel-shaped booleans.
    """

    def __init__(self, values, index, mask):
        self.values = CodebookValues(jnp.asarray(values, jnp.float32))
        self.index = CodebookIndex(jnp.asarray(index, jnp.int32))
        self.keep = KeepMask(jnp.asarray(mask, bool))

    def mean(self) -> jax.Array:
        return shared_kernel(self.values[...], self.index[...], self.keep[...])

    def variance(self) -> jax.Array:
        return jnp.zeros(self.index[...].shape, jnp.float32)

    def log_alpha(self) -> None:
        return None

    def sample_preactivation(self, x, contract: Contraction, bias, key) -> jax.Array:
        del key  # nothing is random
        return contract(x, self.mean(), bias)
