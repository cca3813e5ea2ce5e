"""The interface every weight posterior implements.

A posterior is an ``nnx.Module`` that owns the variational parameters of one layer's kernel and
knows how to turn an input into a sampled pre-activation. It does not know whether the layer is
dense or convolutional: the layer passes its contraction ``contract(x, kernel)`` (``x @ W`` or a
convolution), and the local reparameterization trick is written once in terms of it
(Kingma, Salimans & Welling 2015, "Variational Dropout and the Local Reparameterization Trick",
Eq. 6; Molchanov et al. 2017, Eqs. 17-18):

.. math::

    b \\sim \\mathcal{N}\\big(\\mathrm{contract}(x, \\theta),\\; \\mathrm{contract}(x^2, \\sigma^2)\\big).

Kernel layout: dense ``(in, out)``, conv ``(kh, kw, in, out)`` (HWIO), so the output axis is
always the last one and the input axis the second to last.
"""

from __future__ import annotations

import abc
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

#: The layer's contraction ``contract(x, kernel, bias=None)``: ``x @ kernel`` or a convolution,
#: plus ``bias`` where given (a conv on CPU adds it inside the oneDNN call that writes the output,
#: :func:`bayescomp.nn.onednn_conv.conv`, instead of in another pass over it).
Contraction = Callable[..., jax.Array]

#: Added to pre-activation variances before the square root, as the reference code does
#: (``sqrt(var + 1e-8)``): keeps the gradient finite where a variance underflows to 0.
VARIANCE_EPS = 1e-8


class Posterior(nnx.Module, abc.ABC):
    """Abstract variational posterior over one layer's kernel.

    Args (of every concrete ``__init__``):
        kernel_shape: Shape of the kernel, ``(in, out)`` or ``(kh, kw, in, out)``.
        group_axis: Kernel axis that a group posterior puts one scale on: ``-2`` (inputs, dense
            layers) or ``-1`` (output channels, conv layers). Per-weight posteriors ignore it.
        rngs: Random streams for initialisation.
    """

    #: A hint to the training step: this posterior's parameter gradients are long element-wise
    #: expressions (clipped variances, KL terms) that the optimiser's fusions would each
    #: recompute on XLA:CPU, so the step writes them to memory once first
    #: (:func:`bayescomp.step.materialize_posterior_gradients`). Set where measured to pay.
    materialize_gradients: ClassVar[bool] = False

    #: Whether a pruned group also removes the layer's bias (a group on the output axis does).
    @property
    def masks_bias(self) -> bool:
        return False

    @abc.abstractmethod
    def mean(self) -> jax.Array:
        """Posterior mean of the kernel, E_q[W], with the kernel's shape."""

    @abc.abstractmethod
    def variance(self) -> jax.Array:
        """Posterior variance of every kernel entry, Var_q[W], with the kernel's shape."""

    @abc.abstractmethod
    def log_alpha(self) -> jax.Array | None:
        """Log dropout rate per weight (or per group), or ``None`` for a point estimate."""

    def mean_bias(self, bias: jax.Array) -> jax.Array:
        """The bias of the posterior-mean network, E_q of the bias term of a pre-activation.

        ``bias`` itself unless the posterior scales the bias (group scales on output channels,
        :class:`~bayescomp.posteriors.group_scaled.GroupScaledGaussian`). Every deterministic
        use of a layer (the mean and pruned views, threshold selection, the quantised network
        and the compressed file) takes its bias from here, so that it is the expectation of the
        pre-activation the layer was trained on.

        Args:
            bias: The layer's bias parameter, ``(out,)``.

        Returns:
            The effective bias, ``(out,)``.
        """
        return bias

    def load_mean(self, kernel: jax.Array, bias: jax.Array) -> jax.Array:
        """Set the kernel's posterior mean to ``kernel`` (a dense network's weights), the
        variance parameters keeping their values, so that training can start from a finished
        dense run.

        The inverse of :meth:`mean` and :meth:`mean_bias`: afterwards ``mean() == kernel``, and
        the returned bias parameter ``b`` has ``mean_bias(b) == bias``.

        Args:
            kernel: The dense kernel, with this posterior's kernel shape.
            bias: The dense bias, ``(out,)``.

        Returns:
            The value the layer's bias parameter must take.

        Raises:
            NotImplementedError: A posterior that cannot start from a dense network.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot start from a dense network")

    def keep_mask(self, threshold: float) -> jax.Array:
        """Kernel-shaped float mask: 1 where ``log_alpha < threshold`` (kept), else 0.

        Args:
            threshold: Pruning threshold on ``log_alpha``.

        Returns:
            A float array broadcastable to the kernel.
        """
        log_alpha = self.log_alpha()
        if log_alpha is None:
            return jnp.ones((), jnp.float32)
        return (log_alpha < threshold).astype(jnp.float32)

    def project(self) -> None:
        """Project the parameters back onto their feasible set after an optimiser step (no-op)."""

    @abc.abstractmethod
    def sample_preactivation(
        self, x: jax.Array, contract: Contraction, bias: jax.Array, key: jax.Array
    ) -> jax.Array:
        """Draw one pre-activation per example with the local reparameterization trick.

        Args:
            x: Layer inputs, ``(batch, in)`` or ``(batch, h, w, in)``.
            contract: The layer's contraction, ``contract(x, kernel)``.
            bias: The layer's bias, ``(out,)``.
            key: PRNG key for this layer and step.

        Returns:
            Pre-activations of shape ``contract(x, kernel).shape``.
        """

    def mean_preactivation(
        self, x: jax.Array, contract: Contraction, bias: jax.Array, mask: jax.Array | None
    ) -> jax.Array:
        """Deterministic pre-activation with the posterior-mean kernel and an optional mask.

        Args:
            x: Layer inputs.
            contract: The layer's contraction.
            bias: The layer's bias, ``(out,)``.
            mask: Kernel-shaped (or broadcastable) keep mask, or ``None`` for no pruning.

        Returns:
            ``contract(x, E[W] masked) + mean_bias(bias)`` (the bias masked too where a pruned
            group is a whole output channel); removed weights are exactly 0.
        """
        kernel = self.mean()
        bias = self.mean_bias(bias)
        if mask is not None:
            # where, not a product: a removed group is exactly 0 even where its posterior mean
            # has overflowed (inf * 0 would be NaN), as in the compressed file.
            keep = jnp.broadcast_to(mask, kernel.shape) != 0
            kernel = jnp.where(keep, kernel, 0.0)
            if self.masks_bias:
                bias = jnp.where(keep.reshape(-1, kernel.shape[-1]).any(0), bias, 0.0)
        return contract(x, kernel, bias)
