r"""Batch normalisation with its own Variable types (Ioffe & Szegedy, ICML 2015).

.. math::

    y = \gamma\,\frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

over every axis but the last (the channels, NHWC). In a *batch-statistics* view μ and σ² are
the batch's (biased variance) and the running averages move towards them; in a
*running-average* view (evaluation, or a training phase that freezes the statistics) μ and σ²
are the stored running averages and nothing is updated.

Momentum is written in PyTorch's convention, the weight of the new batch:
``running = (1 − momentum) · running + momentum · batch`` with ``momentum = 0.1`` by default
(Flax's ``nnx.BatchNorm`` writes the same update with the weight of the old value, 0.9). As in
PyTorch the running variance averages the *unbiased* batch variance ``n/(n−1)·σ²_B``, so a model
trained here and one trained by the CIFAR reference codes store the same statistics.

Variable types say what each array is, so a training phase selects by type (never by name):
:class:`NormScale` γ and :class:`NormBias` β are parameters (``nnx.Param`` subclasses); the
running mean and variance are ``nnx.BatchStat``, never differentiated, decayed or optimised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class NormScale(nnx.Param):
    """γ of a normalisation layer (one per channel)."""


class NormBias(nnx.Param):
    """β of a normalisation layer (one per channel)."""


class BatchNorm(nnx.Module):
    """Batch normalisation over the last axis.

    Args:
        num_features: Channels.
        momentum: Weight of the new batch in the running averages (PyTorch's convention; Flax's
            ``momentum`` is ``1 − this``).
        epsilon: Added to the variance.
        use_running_average: Initial view (``nnx.view(model, use_running_average=...)``
            changes it).
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
                 use_running_average: bool = False):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"batch-norm momentum must be in [0, 1] (PyTorch convention: the "
                             f"weight of the new batch), got {momentum}")
        self.num_features = int(num_features)
        self.scale = NormScale(jnp.ones((num_features,), jnp.float32))
        self.bias = NormBias(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.use_running_average = bool(use_running_average)

    def set_view(self, use_running_average: bool | None = None):
        """Select batch statistics (``False``) or the running averages (``True``)."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Normalise ``x`` (``(..., channels)``); in a batch-statistics view also update the
        running averages in place. ``rngs`` is accepted and unused, so a model may pass its
        noise streams to whatever normalisation its method gives it (a saliency BatchNorm
        samples)."""
        del rngs
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            count = x.size // x.shape[-1]
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            self.mean[...] = (1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
