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

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.nn import onednn_batch_norm

#: Whether batch-statistics BatchNorm on XLA:CPU uses :func:`batch_norm_with_dot_sums` (a switch
#: for ``benchmarks/kernel_ab.py``; the two agree up to float32 summation order).
DOT_SUMS = True

#: Whether batch-statistics BatchNorm (and its ReLU) goes to oneDNN where
#: :func:`bayescomp.nn.onednn_batch_norm.applies` (a switch for ``benchmarks/kernel_ab.py``;
#: equal to the others up to float32 summation order).
ONEDNN = True


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

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None,
                 relu: bool = False) -> jax.Array:
        """Normalise ``x`` (``(..., channels)``), then ``max(·, 0)`` where ``relu``; in a
        batch-statistics view also update the running averages in place. ``rngs`` is accepted
        and unused, so a model may pass its noise streams to whatever normalisation its method
        gives it (a saliency BatchNorm samples). ``relu`` lets a model hand over the ReLU that
        follows, which oneDNN applies in the same pass (:mod:`bayescomp.nn.onednn_batch_norm`)."""
        del rngs
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
            y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
            return jax.nn.relu(y) if relu else y
        if ONEDNN and jax.default_backend() == "cpu" and onednn_batch_norm.applies(x):
            y, mean, var = onednn_batch_norm.batch_norm(x, self.scale[...], self.bias[...],
                                                        self.epsilon, relu=relu)
            relu = False  # applied
        elif DOT_SUMS and jax.default_backend() == "cpu":
            y, mean, var = batch_norm_with_dot_sums(x, self.scale[...], self.bias[...],
                                                    self.epsilon)
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        count = x.size // x.shape[-1]
        unbiased = var * (count / max(count - 1, 1))
        m = self.momentum
        self.mean[...] = (1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
        self.var[...] = (1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        return jax.nn.relu(y) if relu else y


def reestimate_statistics(model: nnx.Module, x: jax.Array) -> int:
    """Replace the running mean and variance of every BatchNorm of ``model`` by the statistics
    of one batch ``x`` passed through it, in place; returns how many BatchNorms there were.

    Removing channels shifts the inputs of the layers after them, so a pruned network's stored
    statistics no longer describe its activations; re-estimating them on training images, with
    nothing trained, is "adaptive BatchNorm" (Li, Wu, Su, Wang & Lin, "EagleEye: Fast Sub-net
    Evaluation for Efficient Neural Network Pruning", ECCV 2020, §3), which they show ranks
    pruned candidates far better than the stale statistics do. One batch with the new batch's
    weight set to 1 (:class:`BatchNorm`'s momentum) stores exactly that batch's mean and
    unbiased variance, layer after layer as the re-estimated earlier layers feed the later ones.

    Args:
        model: A model with :class:`BatchNorm` s (subclasses included); left in the view it had.
        x: The images, one batch (it runs eagerly: memory grows with its size).

    Returns:
        The number of BatchNorms re-estimated (0: ``model`` has none, nothing changed).
    """
    norms = [module for _, module in nnx.iter_modules(model) if isinstance(module, BatchNorm)]
    if not norms:
        return 0
    saved = [(norm, norm.momentum) for norm in norms]
    try:
        for norm in norms:
            norm.momentum = 1.0
        nnx.view(model, deterministic=True, use_running_average=False,
                 raise_if_not_found=False)(x)
    finally:
        for norm, momentum in saved:
            norm.momentum = momentum
    return len(norms)


def channel_sum(a: jax.Array) -> jax.Array:
    """Σ over every axis but the last, as a matrix-vector product with a vector of ones.

    On XLA:CPU a reduction of an NHWC activation over N, H and W (keeping a minor axis of 16-64
    channels) becomes a tree of ``reduce-window`` s that runs ~1.5-2x slower than this dot
    (``benchmarks/README.md``). Contracting the axes in place (no reshape that merges the batch
    axis) keeps a batch-sharded array partitionable. ``HIGHEST`` precision: a full float32
    product on every backend.
    """
    ones = jnp.ones(a.shape[:-1], a.dtype)
    axes = tuple(range(a.ndim - 1))
    # ones on the left: XLA:CPU then reads ``a`` as the right operand of a matrix-vector product
    # in its stored layout; on the right it would first copy ``a`` with the channels major.
    return jax.lax.dot_general(ones, a, ((axes, axes), ((), ())),
                               precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_with_dot_sums(x: jax.Array, scale: jax.Array, bias: jax.Array,
                             epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Batch-statistics BatchNorm ``(y, μ_B, σ²_B)`` with every per-channel sum a dot.

    Forward: :math:`\mu = \tfrac1M\sum x`, :math:`\sigma^2 = \tfrac1M\sum (x-\mu)^2`,
    :math:`\hat x = (x-\mu)/\sqrt{\sigma^2+\epsilon}`, :math:`y = \gamma\hat x + \beta`, over the
    :math:`M` positions of each channel. Backward (Ioffe & Szegedy, ICML 2015, §3), with
    :math:`g = \partial L/\partial y` and :math:`r = (\sigma^2+\epsilon)^{-1/2}`:

    .. math::

        \frac{\partial L}{\partial\beta} = \sum g,\quad
        \frac{\partial L}{\partial\gamma} = \sum g\hat x,\quad
        \frac{\partial L}{\partial x} = \frac{\gamma r}{M}\Big(Mg - \sum g
            - \hat x\sum g\hat x\Big) + \frac{\bar\mu}{M} + \frac{2\bar v}{M}(x-\mu),

    the last two terms for cotangents :math:`\bar\mu, \bar v` of the returned statistics (zero
    where only the running averages read them, through ``stop_gradient``). Written out so that
    autodiff's reductions (transposes of the per-channel broadcasts) are :func:`channel_sum`
    dots as well. Equal to the plain formula up to float32 summation order
    (``tests/test_batch_norm.py``).
    """
    return _batch_norm_forward(x, scale, bias, epsilon)[0]


def _batch_norm_forward(x, scale, bias, epsilon):
    count = x.size // x.shape[-1]
    mean = channel_sum(x) / count
    centred = x - mean
    var = channel_sum(jnp.square(centred)) / count
    rstd = jax.lax.rsqrt(var + epsilon)
    y = centred * (rstd * scale) + bias
    return (y, mean, var), (x, mean, rstd, scale)


def _batch_norm_backward(epsilon, residuals, cotangents):
    del epsilon
    x, mean, rstd, scale = residuals
    g, g_mean, g_var = cotangents
    count = x.size // x.shape[-1]
    centred = x - mean
    x_hat = centred * rstd
    d_bias = channel_sum(g)
    d_scale = channel_sum(g * x_hat)
    d_x = ((scale * rstd / count) * (count * g - d_bias - x_hat * d_scale)
           + g_mean / count + (2.0 * g_var / count) * centred)
    return d_x, d_scale, d_bias


batch_norm_with_dot_sums.defvjp(_batch_norm_forward, _batch_norm_backward)
