r"""Per-channel point scale with a Laplace prior, for network slimming without BatchNorm.

Liu, Li, Shen, Huang, Yan & Zhang, "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017 (arXiv:1708.06519), penalise BatchNorm's scale γ with s·Σ|γ| and prune the
channels whose |γ| falls under one global threshold (:class:`~bayescomp.nn.slimming_norm.
SlimmingBatchNorm`). LeNet-5 has no BatchNorm; its ``layers.channel`` hook places this module
after each prunable channel's ReLU (and pool), where it multiplies channel c by a point
estimate γ_c (a :class:`ChannelScale`), y_c = γ_c x_c, with the same Laplace prior
(:mod:`bayescomp.priors.laplace`): ``kl()`` = Σ|γ|/b, so ``Laplace.matching_l1(s, N)`` adds
slimming's s·sign(γ) to every batch's gradient.

**Initial value 1.0, not the reference's 0.5.** The reference's 0.5 is a BatchNorm scale, and
the next BatchNorm renormalises whatever the scale does to the activations. Here nothing
renormalises: three scales of 0.5 in LeNet-5 would shrink the logits eightfold at the start,
and the network would no longer start as the plain LeNet-5 of the same seed (nor could a
pretrained one be loaded unchanged). At 1.0 the module is the identity at the start.

**A caveat the reference shares in part.** γ_c and the consumer's input rows of channel c only
matter through their product, so the L1 on γ can be dodged by growing those rows. BatchNorm
networks have the same symmetry through the next BatchNorm; there the weight decay on the
convolutions (the reference's SGD with 1e-4) makes the shrinking of γ the cheaper way.
Without weight decay (the LeNet recipes' Adam) the penalty still orders the channels (what the
global threshold reads), but ``optimizer.weight_decay`` > 0 makes it bite as in the paper.

In the evaluation view the module is the fixed factor γ, which :mod:`bayescomp.nn.fold`
multiplies into the input rows of the channel's consumers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.priors.laplace import Laplace

#: The initial γ (module docstring).
INIT_SCALE = 1.0


class ChannelScale(nnx.Param):
    """γ of a per-channel point scale (one per channel); carries slimming's L1 penalty."""


class SlimmingScale(nnx.Module):
    """Multiplies channel c of ``x`` (last axis) by γ_c, with a Laplace prior on γ.

    Args:
        num_channels: C.
        prior: The Laplace prior (``Laplace.matching_l1(s, n_train)`` for slimming's s).
        init_scale: Initial γ (:data:`INIT_SCALE`).
    """

    def __init__(self, num_channels: int, *, prior: Laplace, init_scale: float = INIT_SCALE):
        self.num_channels = int(num_channels)
        self.scale = ChannelScale(jnp.full((num_channels,), init_scale, jnp.float32))
        self.prior = prior

    def eval_scale(self) -> jax.Array:
        """The factor γ, shape ``(C,)`` (the module is the same in every view)."""
        return self.scale[...]

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """``x · γ`` over the last axis; ``rngs`` is accepted (and unused) so models pass it."""
        del rngs
        return x * self.scale[...]

    def kl(self) -> jax.Array:
        """−log p(γ) up to a constant: Σ|γ|/b (nats)."""
        return self.prior.penalty(self.scale[...])
