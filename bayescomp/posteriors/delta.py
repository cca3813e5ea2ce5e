"""Point-estimate ("delta") posterior: q(W) = δ(W − Ŵ).

Used by the dense baseline (no prior, maximum likelihood) and by soft weight-sharing (Ullrich,
Meeds & Welling 2017), whose Gaussian-mixture prior enters the loss as −log p(Ŵ).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.posteriors.variables import PointWeight
from bayescomp.posteriors.base import Contraction, Posterior


class Delta(Posterior):
    """A point-estimated kernel, initialised as Flax's default (LeCun-normal) kernel init.

    Args:
        kernel_shape: ``(in, out)`` or ``(kh, kw, in, out)``.
        group_axis: Unused.
        rngs: Random streams; ``rngs.params`` initialises the kernel.
    """

    def __init__(self, kernel_shape: tuple[int, ...], *, group_axis: int = -1, rngs: nnx.Rngs):
        del group_axis
        init = nnx.initializers.lecun_normal()
        self.weight = PointWeight(init(rngs.params(), kernel_shape, jnp.float32))

    def mean(self) -> jax.Array:
        return self.weight[...]

    def variance(self) -> jax.Array:
        return jnp.zeros_like(self.weight[...])

    def log_alpha(self) -> None:
        return None

    def load_mean(self, kernel: jax.Array, bias: jax.Array) -> jax.Array:
        self.weight[...] = jnp.asarray(kernel, jnp.float32).reshape(self.weight.shape)
        return bias

    def sample_preactivation(self, x, contract: Contraction, bias, key) -> jax.Array:
        del key  # nothing is random
        return contract(x, self.weight[...], bias)
