r"""BatchNorm with a Laplace prior on its scales (network slimming).

Liu, Li, Shen, Huang, Yan & Zhang, "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017: an L1 penalty s·Σ|γ| on every BatchNorm scale drives the scales of
unneeded channels towards 0; one global threshold on |γ| then prunes them
(:func:`bayescomp.channel_selection.slimming_keep`). Here the penalty is the −log of a Laplace
prior on the point-estimated γ (:mod:`bayescomp.priors.laplace`), returned by ``kl()`` so the
one objective ``NLL_mean + β·KL/N`` carries it: with ``Laplace.matching_l1(s, N)`` and β = 1 the
gradient on γ is the reference's s·sign(γ) per batch.

The scales start at 0.5, the reference's initialisation (``models/vgg.py`` of
github.com/Eric-mingjie/network-slimming, ``m.weight.data.fill_(0.5)``), not BatchNorm's 1.
Everything else (normalisation, running statistics, views, the Variable types γ = NormScale and
β = NormBias) is :class:`~bayescomp.nn.norm.BatchNorm`'s; export reads it as a plain BatchNorm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.nn.norm import BatchNorm
from bayescomp.priors.laplace import Laplace

#: The reference's initial BatchNorm scale.
INIT_SCALE = 0.5


class SlimmingBatchNorm(BatchNorm):
    """BatchNorm whose scales carry a Laplace prior; ``kl()`` = Σ|γ| / b.

    Args:
        num_features: Channels.
        prior: The Laplace prior on γ (``Laplace.matching_l1(s, n_train)`` for slimming's s).
        init_scale: Initial γ (the reference's 0.5).
        momentum: Weight of the new batch in the running averages (PyTorch's convention).
        epsilon: Added to the variance.
        use_running_average: Initial statistics view.
    """

    def __init__(self, num_features: int, *, prior: Laplace, init_scale: float = INIT_SCALE,
                 momentum: float = 0.1, epsilon: float = 1e-5, use_running_average: bool = False):
        super().__init__(num_features, momentum=momentum, epsilon=epsilon,
                         use_running_average=use_running_average)
        self.scale[...] = jnp.full((num_features,), init_scale, jnp.float32)
        self.prior = prior

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None,
                 relu: bool = False) -> jax.Array:
        """BatchNorm's output (through a ReLU where ``relu``); ``rngs`` is accepted (and unused)
        so models pass it uniformly."""
        del rngs
        return super().__call__(x, relu=relu)

    def kl(self) -> jax.Array:
        """−log p(γ) up to a constant: Σ|γ| / b (nats; N·s·Σ|γ| for ``matching_l1(s, N)``)."""
        return self.prior.penalty(self.scale[...])
