"""Variational fully connected layer: ``contract(x, W) = x @ W`` with W of shape (in, out)."""

from __future__ import annotations

import jax
from flax import nnx

from bayescomp.nn.layer import VariationalLayer
from bayescomp.posteriors.base import Posterior
from bayescomp.priors.base import Prior


class VariationalDense(VariationalLayer):
    """Dense layer whose kernel has a variational posterior.

    Group posteriors put one scale per *input* unit (Louizos et al. 2017, §3: a removed input unit
    removes a column of this layer and the matching row of the previous one).

    Args:
        in_features: Input width.
        out_features: Output width.
        posterior_cls: Posterior class, constructed as ``posterior_cls(kernel_shape, group_axis=-2,
            rngs=rngs, **posterior_kwargs)``.
        prior: Prior over the kernel.
        rngs: Random streams for initialisation.
        posterior_kwargs: Initialisation options of the posterior.
        prune_threshold: See :class:`VariationalLayer`.
    """

    group_axis = -2  # input units

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        posterior_cls: type[Posterior],
        prior: Prior,
        rngs: nnx.Rngs,
        posterior_kwargs: dict | None = None,
        prune_threshold: float | None = None,
        rng_collection: str = "noise",
    ):
        self.in_features = in_features
        self.out_features = out_features
        posterior = posterior_cls(
            (in_features, out_features), group_axis=self.group_axis, rngs=rngs,
            **(posterior_kwargs or {}),
        )
        super().__init__(
            posterior, prior, out_features, prune_threshold=prune_threshold,
            rng_collection=rng_collection,
        )

    def contract(self, x: jax.Array, kernel: jax.Array,
                 bias: jax.Array | None = None) -> jax.Array:
        y = x @ kernel  # (batch, in) @ (in, out) -> (batch, out)
        return y if bias is None else y + bias
