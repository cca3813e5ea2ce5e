"""Variational 2-D convolution: ``contract(x, W) = conv(x, W)``, NHWC inputs, HWIO kernels.

With the local reparameterization trick a sampled conv costs two convolutions: one of x with
the kernel means and one of x² with the kernel variances (Molchanov et al. 2017, Eq. 18).
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from bayescomp.nn.layer import VariationalLayer
from bayescomp.posteriors.base import Posterior
from bayescomp.priors.base import Prior


class VariationalConv(VariationalLayer):
    """2-D convolution whose kernel has a variational posterior.

    Group posteriors put one scale per *output channel* (Louizos et al. 2017; the authors'
    ``Conv2dGroupNJ``).

    Args:
        in_features: Input channels.
        out_features: Output channels.
        kernel_size: ``(kh, kw)``.
        posterior_cls: Posterior class, constructed as ``posterior_cls((kh, kw, in, out),
            group_axis=-1, rngs=rngs, **posterior_kwargs)``.
        prior: Prior over the kernel.
        rngs: Random streams for initialisation.
        strides: Convolution strides ``(sh, sw)`` (2 where a ResNet stage halves the map).
        padding: ``"VALID"`` (LeNet-5-Caffe), ``"SAME"``, or explicit ``(low, high)`` pairs per
            spatial axis (the CIFAR ResNets' symmetric ``((1, 1), (1, 1))``).
        posterior_kwargs: Initialisation options of the posterior.
        prune_threshold: See :class:`VariationalLayer`.
    """

    group_axis = -1  # output channels

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        *,
        posterior_cls: type[Posterior],
        prior: Prior,
        rngs: nnx.Rngs,
        strides: Sequence[int] = (1, 1),
        padding: str | Sequence[tuple[int, int]] = "VALID",
        posterior_kwargs: dict | None = None,
        prune_threshold: float | None = None,
        rng_collection: str = "noise",
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = tuple(kernel_size)
        self.strides = tuple(strides)
        self.padding = padding
        posterior = posterior_cls(
            (*self.kernel_size, in_features, out_features), group_axis=self.group_axis,
            rngs=rngs, **(posterior_kwargs or {}),
        )
        super().__init__(
            posterior, prior, out_features, prune_threshold=prune_threshold,
            rng_collection=rng_collection,
        )

    def contract(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=self.strides, padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # (batch, h', w', out)
